//! The benchmark topology: three network namespaces joined by two veth pairs.
//!
//! ```text
//!  generator ns            gateway ns                                   sink ns
//!  [pcbgen] ──veth── [pcbin] 10.100.0.1/16     [pcbout] 198.18.0.1/24 ──veth── [pcbsink] 198.18.0.2/24
//!  live-frames XDP          XDP TAP program     XDP egress program               XDP_DROP, counts
//!  generator                (or nftables twin + kernel forwarding)
//! ```
//!
//! Everything lives in namespaces named `pct-*` (removed on drop, and by `cargo xtask
//! cleanup` after a crash); the devices are created inside them, never in the root
//! namespace, so their fixed names cannot collide with anything outside.
//! 198.18.0.0/15 is the range RFC 2544 reserves for benchmarking. Offloads, neighbours and
//! routes are those of every lab (`docs/topology.md`); the sink's own offloads do not matter,
//! its XDP program drops every frame.
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
};

use anyhow::{bail, Context, Result};
use portcullis::netns::{self, Netns, Offloads, PrivateNetwork, Veth, VethEnd};
use tests::NetNs;

pub const GEN_IF: &str = "pcbgen";
pub const GW_IN: &str = "pcbin";
pub const GW_OUT: &str = "pcbout";
pub const SINK_IF: &str = "pcbsink";
pub const GW_IN_ADDR: &str = "10.100.0.1/16";
pub const GW_OUT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const SINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// Field order is drop order: the links, then the namespaces.
pub struct Topology {
    _links: Vec<Veth>,
    pub gen: NetNs,
    pub gw: NetNs,
    pub sink: NetNs,
    pub gw_in_mac: [u8; 6],
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip netns exec <ns> <args>`.
pub fn exec(ns: &NetNs, args: &[&str]) -> Result<String> {
    run(Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args))
}

impl Topology {
    /// The gateway and the sink are the product's lab topology (`portcullis::netns::Topology`:
    /// the sink is the private network, with a static neighbour for every address the
    /// benchmark sends to, so the XDP FIB lookup succeeds from the first packet); the
    /// generator hangs on one more veth pair, in place of the underlay clients.
    pub fn build() -> Result<Topology> {
        let (gw, sink) = (tests::unique("bw"), tests::unique("bs"));
        let sink_addrs: Vec<Ipv4Addr> = (3..=254).map(|h| Ipv4Addr::new(198, 18, 0, h)).collect();
        let t = netns::Topology::builder(
            &gw,
            &sink,
            PrivateNetwork {
                gw_if: GW_OUT,
                gw_addr: GW_OUT_ADDR,
                prefix_len: 24,
                net_if: SINK_IF,
                hosts: vec![SINK_ADDR],
                extra_neighbours: sink_addrs,
            },
        )
        .build()?;
        let gen = Netns::create(&tests::unique("bg"))?;
        gen.disable_ipv6()?;
        // NAPI on the gateway's input even without XDP (the nftables run): frames that the
        // generator's XDP redirects into a veth need NAPI (an XDP program or GRO) on the peer.
        let gen_link = Veth::create(
            VethEnd::new(&gen, GEN_IF, Offloads::KERNEL),
            VethEnd::new(&t.gw, GW_IN, Offloads::KERNEL.receive_redirects()),
        )?;
        t.gw.ip(&["addr", "add", GW_IN_ADDR, "dev", GW_IN])?;
        // The client pool is routed to pcbin (connected route); no reverse-path filtering of
        // the generator's client addresses.
        for k in ["all", "default", GW_IN] {
            t.gw.sysctl(&format!("net.ipv4.conf.{k}.rp_filter"), "0")?;
        }
        let gw_in_mac = t.gw.mac(GW_IN)?;
        Ok(Topology {
            _links: vec![gen_link, t.private_link],
            gen: NetNs::from(gen),
            gw: NetNs::from(t.gw),
            sink: NetNs::from(t.net),
            gw_in_mac,
        })
    }
}

/// Run `f` on the calling thread inside `ns`, then come back.
pub fn in_ns<T>(ns_name: &str, f: impl FnOnce() -> T) -> T {
    let guard = NetNs::open(ns_name).enter();
    let r = f();
    drop(guard);
    r
}

/// ifindex of `dev` in `ns`.
pub fn ifindex(ns: &NetNs, dev: &str) -> Result<u32> {
    Ok(ns.netns().ifindex(dev)?)
}

/// Receive counters of a device. On a veth with XDP, `rx_packets` counts
/// every frame its XDP program saw (dropped ones too); `rx_dropped` counts frames refused
/// because its receive ring was full.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
}

/// Reads a device's counters over rtnetlink (`RTM_GETLINK`, `IFLA_STATS64`) from a socket
/// opened inside the device's namespace: a couple of microseconds per read, where spawning
/// `ip -s link` takes tens to hundreds of milliseconds on a busy machine and would blur the
/// measurement windows.
pub struct LinkCounter {
    sock: OwnedFd,
    ifindex: u32,
    seq: std::cell::Cell<u32>,
}

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const IFLA_STATS64: u16 = 23;

impl LinkCounter {
    pub fn open(ns: &NetNs, dev: &str) -> Result<LinkCounter> {
        let ifindex = ifindex(ns, dev)?;
        let sock = in_ns(&ns.name, || {
            // SAFETY: plain socket(2); the fd is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .context("opening an rtnetlink socket")?;
        Ok(LinkCounter {
            sock,
            ifindex,
            seq: std::cell::Cell::new(1),
        })
    }

    pub fn read(&self) -> Result<LinkStats> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        // nlmsghdr (16 bytes) + ifinfomsg (16 bytes).
        let mut req = [0u8; 32];
        req[0..4].copy_from_slice(&32u32.to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
        req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        req[20..24].copy_from_slice(&(self.ifindex as i32).to_ne_bytes());
        // SAFETY: send/recv on our socket with buffers of the given lengths.
        let sent = unsafe { libc::send(self.sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("rtnetlink send");
        }
        let mut buf = vec![0u8; 32 * 1024];
        for _ in 0..16 {
            // SAFETY: as above.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error()).context("rtnetlink recv");
            }
            let msg = &buf[..n as usize];
            let mut off = 0;
            while off + 16 <= msg.len() {
                let len = u32::from_ne_bytes(msg[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(msg[off + 4..off + 6].try_into().unwrap());
                let mseq = u32::from_ne_bytes(msg[off + 8..off + 12].try_into().unwrap());
                if len < 16 || off + len > msg.len() {
                    break;
                }
                let body = &msg[off + 16..off + len];
                if mseq == seq && ty == NLMSG_ERROR {
                    let err = i32::from_ne_bytes(body[0..4].try_into().unwrap());
                    bail!("RTM_GETLINK: error {err}");
                }
                if mseq == seq && ty == RTM_NEWLINK && body.len() >= 16 {
                    let mut a = 16;
                    while a + 4 <= body.len() {
                        let alen = u16::from_ne_bytes(body[a..a + 2].try_into().unwrap()) as usize;
                        let aty = u16::from_ne_bytes(body[a + 2..a + 4].try_into().unwrap());
                        if alen < 4 || a + alen > body.len() {
                            break;
                        }
                        if aty & 0x3fff == IFLA_STATS64 && alen >= 4 + 64 {
                            let v = |i: usize| {
                                u64::from_ne_bytes(
                                    body[a + 4 + i * 8..a + 12 + i * 8].try_into().unwrap(),
                                )
                            };
                            // struct rtnl_link_stats64: rx_packets, tx_packets, rx_bytes,
                            // tx_bytes, rx_errors, tx_errors, rx_dropped, ...
                            return Ok(LinkStats {
                                rx_packets: v(0),
                                rx_dropped: v(6),
                            });
                        }
                        a += (alen + 3) & !3;
                    }
                    bail!("RTM_NEWLINK without IFLA_STATS64");
                }
                off += (len + 3) & !3;
            }
        }
        bail!("no answer to RTM_GETLINK")
    }
}

/// Run a device's NAPI in a kernel thread (`/sys/class/net/<dev>/threaded`) so it can be
/// pinned to a CPU. Returns false when the kernel refuses.
pub fn set_threaded_napi(ns: &NetNs, dev: &str) -> bool {
    exec(
        ns,
        &[
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{dev}/threaded"),
        ],
    )
    .is_ok()
}

/// Kernel threads running the NAPI of `dev` (named `napi/<dev>-<id>`, cut to 15 bytes).
pub fn napi_threads(dev: &str) -> Vec<i32> {
    let prefix = format!("napi/{dev}-");
    let mut pids = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                let comm = comm.trim_end();
                if comm.starts_with(&prefix) {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

/// Pin a task (or the calling thread, pid 0) to one CPU.
pub fn pin_to_cpu(pid: i32, cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Give a task (or the calling thread, pid 0) the highest CFS weight (nice -20), so that
/// background load on the machine (builds, other tests) takes little of its CPU. Not a
/// real-time priority: nothing on the machine is starved.
pub fn boost(pid: i32) -> bool {
    // SAFETY: gettid and setpriority have no memory preconditions.
    unsafe {
        let id = if pid == 0 { libc::gettid() } else { pid };
        libc::setpriority(libc::PRIO_PROCESS, id as libc::id_t, -20) == 0
    }
}

/// SCHED_FIFO priority 1 for a task whose work is bounded by its input (the sink's NAPI).
pub fn realtime(pid: i32) -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: sched_setscheduler reads `param`.
    unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) == 0 }
}

/// Per-CPU (busy, total) jiffies from /proc/stat.
pub fn cpu_times() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle + iowait
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Busy fraction per CPU between two [`cpu_times`] samples.
pub fn cpu_busy(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let total = y.1.saturating_sub(x.1);
            if total == 0 {
                0.0
            } else {
                y.0.saturating_sub(x.0) as f64 / total as f64
            }
        })
        .collect()
}
