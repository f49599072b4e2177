//! The demo's namespaces, links and servers. Everything is removed on drop, also when the
//! demo fails half-way.
use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{bail, Context, Result};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (install iproute2: cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn in_ns(ns: &str, args: &[&str]) -> Result<()> {
    let mut v = vec!["-n", ns];
    v.extend_from_slice(args);
    ip(&v)
}

fn sysctl(ns: &str, key: &str, val: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let val = val.to_string();
    Ns::open(ns)?.run(move || std::fs::write(&path, val))??;
    Ok(())
}

/// A handle on a named network namespace.
pub struct Ns {
    file: File,
}

impl Ns {
    pub fn open(name: &str) -> Result<Ns> {
        Ok(Ns {
            file: File::open(format!("/run/netns/{name}"))
                .with_context(|| format!("opening netns {name}"))?,
        })
    }

    /// Run `f` on a fresh thread inside this namespace (sockets it creates live there).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let fd = self.file.try_clone()?;
        std::thread::spawn(move || {
            // SAFETY: setns on a valid netns fd; affects only this new thread.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!(
                    "setns: {}",
                    std::io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    /// Move the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> Result<NsGuard> {
        let orig = File::open("/proc/thread-self/ns/net")?;
        // SAFETY: setns on a valid netns fd; affects only this thread.
        if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(NsGuard { orig })
    }
}

pub struct NsGuard {
    orig: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        // SAFETY: back to the namespace we came from.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Gateway, private network and client namespaces.
pub struct Topology {
    names: Vec<String>,
    pub gw: Ns,
    pub net: Ns,
}

pub const GW: &str = "pc-demo-gw";
pub const NET: &str = "pc-demo-net";
/// The gateway's address on the client underlay, where the OpenVPN server listens.
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

impl Topology {
    /// `clients`: (namespace, gateway-side interface, client underlay address).
    pub fn build(clients: &[(&str, &str, Ipv4Addr)]) -> Result<Topology> {
        let mut names: Vec<String> = vec![GW.into(), NET.into()];
        names.extend(clients.iter().map(|c| c.0.to_string()));
        for n in &names {
            // Leftovers from an interrupted run.
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        let mut topo = Topology {
            names: Vec::new(),
            gw: Ns {
                file: File::open("/dev/null")?,
            },
            net: Ns {
                file: File::open("/dev/null")?,
            },
        };
        for n in &names {
            ip(&["netns", "add", n])?;
            topo.names.push(n.clone());
            in_ns(n, &["link", "set", "lo", "up"])?;
            sysctl(n, "net.ipv6.conf.all.disable_ipv6", "1")?;
            sysctl(n, "net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        topo.gw = Ns::open(GW)?;
        topo.net = Ns::open(NET)?;
        sysctl(GW, "net.ipv4.ip_forward", "1")?;
        // Private network: gateway 10.0.0.1, app 10.0.0.10 and db 10.0.0.20 on one link.
        in_ns(
            GW,
            &[
                "link", "add", "pc-dgw0", "type", "veth", "peer", "name", "eth0", "netns", NET,
            ],
        )?;
        in_ns(GW, &["addr", "add", "10.0.0.1/24", "dev", "pc-dgw0"])?;
        in_ns(NET, &["addr", "add", "10.0.0.10/24", "dev", "eth0"])?;
        in_ns(NET, &["addr", "add", "10.0.0.20/24", "dev", "eth0"])?;
        in_ns(GW, &["link", "set", "pc-dgw0", "up"])?;
        in_ns(NET, &["link", "set", "eth0", "up"])?;
        // XDP-redirected frames into a veth are dropped unless the peer has GRO (or XDP).
        ethtool(NET, "eth0", &["gro", "on"])?;
        // veth hands partially computed (offloaded) checksums across; a real NIC or a tunnel
        // peer sends complete ones, which is what the incremental NAT updates assume.
        ethtool(NET, "eth0", &["tx", "off"])?;
        // Clients reach the gateway over an "underlay" (the internet, in real life): one
        // point-to-point veth pair per client. The gateway side does not forward, so client
        // traffic can only reach the private network through the tunnel.
        for (ns, gw_if, addr) in clients {
            in_ns(
                GW,
                &[
                    "link", "add", gw_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
                ],
            )?;
            in_ns(
                GW,
                &[
                    "addr",
                    "add",
                    &format!("{UNDERLAY_GW}/32"),
                    "peer",
                    &format!("{addr}/32"),
                    "dev",
                    gw_if,
                ],
            )?;
            in_ns(
                ns,
                &[
                    "addr",
                    "add",
                    &format!("{addr}/32"),
                    "peer",
                    &format!("{UNDERLAY_GW}/32"),
                    "dev",
                    "eth0",
                ],
            )?;
            in_ns(GW, &["link", "set", gw_if, "up"])?;
            in_ns(ns, &["link", "set", "eth0", "up"])?;
            // openvpn's redirect-gateway keeps a host route to the server via this one.
            in_ns(
                ns,
                &["route", "add", "default", "via", &UNDERLAY_GW.to_string()],
            )?;
            ethtool(ns, "eth0", &["tx", "off"])?;
            sysctl(GW, &format!("net.ipv4.conf.{gw_if}.forwarding"), "0")?;
        }
        Ok(topo)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn ethtool(ns: &str, iface: &str, features: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-K", iface])
        .args(features)
        .output()
        .context("running ethtool (install it: cargo xtask setup)")?;
    if !out.status.success() {
        bail!(
            "ethtool -K {iface} {}: {}",
            features.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Tiny services on the private network: each answers with its name and address.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(net: &Ns) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (addr, port, name) in [
            ("10.0.0.10", 80, "app http"),
            ("10.0.0.10", 22, "app ssh"),
            ("10.0.0.20", 80, "db http"),
            ("10.0.0.20", 5432, "db postgres"),
            ("10.0.0.20", 22, "db ssh"),
        ] {
            let l = net.run(move || TcpListener::bind((addr, port)))??;
            l.set_nonblocking(true)?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            // One write, so the client's single read sees the whole line.
                            let line = format!("{name} on {addr}:{port}, you are {peer}\n");
                            let _ = s.write_all(line.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }));
        }
        for addr in ["10.0.0.10", "10.0.0.20"] {
            let u = net.run(move || UdpSocket::bind((addr, 53)))??;
            u.set_read_timeout(Some(Duration::from_millis(100)))?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = u.recv_from(&mut buf) {
                        let _ =
                            u.send_to(format!("dns on {addr}:53, you are {peer}").as_bytes(), peer);
                    }
                }
            }));
        }
        Ok(Servers { stop, threads })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One ICMP echo over a raw socket; Ok once the matching reply arrives.
pub fn ping(dst: Ipv4Addr, timeout: Duration) -> Result<()> {
    // SAFETY: raw ICMP socket (root); closed below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        bail!("raw socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: we own fd.
    let mut sock = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let id = (std::process::id() & 0xffff) as u16;
    let mut pkt = [
        8u8,
        0,
        0,
        0,
        (id >> 8) as u8,
        id as u8,
        0,
        1,
        b'p',
        b'c',
        b'd',
        b'm',
    ];
    let c = inet_checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    // SAFETY: sockaddr_in for sendto.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
    let rc = unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc < 0 {
        bail!("sendto: {}", std::io::Error::last_os_error());
    }
    let deadline = std::time::Instant::now() + timeout;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO with a timeval.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut buf = [0u8; 1500];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = sock.read(&mut buf) {
            // Raw sockets deliver the IP header too.
            if n >= 28 {
                let ihl = usize::from(buf[0] & 0xf) * 4;
                let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                if src == dst
                    && n >= ihl + 8
                    && buf[ihl] == 0
                    && u16::from_be_bytes([buf[ihl + 4], buf[ihl + 5]]) == id
                {
                    return Ok(());
                }
            }
        }
    }
    bail!("no echo reply")
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
