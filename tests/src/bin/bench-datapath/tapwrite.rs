//! Part (c): the deployed input. In production the tunnel's worker writes each decrypted frame
//! into the TAP device, and the data path's XDP program runs inside that `write()` (tun's
//! native XDP), redirecting the frame to the target network's device. Part (b) feeds a veth
//! instead (frames arrive by NAPI, in softirq). Here a thread in the gateway namespace writes
//! the same UDP frames into a TAP device (`pcbtap`, multi-queue, no packet information, as
//! `portcullis::io::tap`) that carries the data path with the same policy and clients, and the
//! sink counts what arrives. Reported per point: writes per second, frames per second at the
//! sink, and the writer's CPU time per frame (its thread's `CLOCK_THREAD_CPUTIME_ID`: the
//! write syscall, XDP, the redirect and the veth transmit, all charged to the writer).
use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::XdpMode;
use portcullis::{
    datapath::{Datapath, DatapathOptions},
    policy::{compile, PolicyInput},
    reconcile,
};
use portcullis_common::ClientInfo;
use serde_json::{json, Value};

use crate::{
    policy::{BENCH_CLIENT, BENCH_MAX_FLOWS, BENCH_SLOT},
    progrun::udp_frame,
    rate::FORWARD_CPU,
    stop_requested,
    topo::{self, in_ns, Topology, GW_OUT, SINK_ADDR, SINK_IF},
    Settings, FLOW_COUNTS, FRAME_SIZES,
};

pub const TAP_NAME: &str = "pcbtap";
/// First UDP source port; the flows are the ports above it.
const GEN_BASE_PORT: u16 = 10_000;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One queue of a new TAP device in the calling thread's namespace (gone when it closes).
fn open_tap(name: &str) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        // Non-blocking, as the agent opens it: tun runs native XDP on a written frame only
        // for a non-blocking write (`tun_can_build_skb`); otherwise it falls back to generic
        // XDP on an skb, which is not the deployed path.
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error()).context("TUNSETIFF (creating the TAP)");
    }
    Ok(file)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One window of writes: (writes, failed writes, writer CPU ns, seconds, frames at the sink).
fn window(
    tap: &File,
    frame: &[u8],
    flows: u32,
    sink: &topo::LinkCounter,
    warmup: Duration,
    len: Duration,
) -> Result<(u64, u64, u64, f64, u64)> {
    let mut f = frame.to_vec();
    let mut i: u64 = 0;
    let mut write = |i: u64| -> bool {
        let port = GEN_BASE_PORT.wrapping_add((i % u64::from(flows)) as u16);
        f[34..36].copy_from_slice(&port.to_be_bytes());
        // SAFETY: write(2) of a buffer we own.
        unsafe { libc::write(tap.as_raw_fd(), f.as_ptr().cast(), f.len()) == f.len() as isize }
    };
    let end = Instant::now() + warmup;
    while Instant::now() < end {
        for _ in 0..256 {
            write(i);
            i += 1;
        }
    }
    let (s0, c0, t0) = (sink.read()?.rx_packets, thread_cpu_ns(), Instant::now());
    let (mut n, mut failed) = (0u64, 0u64);
    let end = t0 + len;
    while Instant::now() < end && !stop_requested() {
        for _ in 0..256 {
            if !write(i) {
                failed += 1;
            }
            i += 1;
            n += 1;
        }
    }
    let (c1, secs) = (thread_cpu_ns(), t0.elapsed().as_secs_f64());
    // Frames still in flight to the sink land within a moment.
    std::thread::sleep(Duration::from_millis(50));
    let s1 = sink.read()?.rx_packets;
    Ok((n, failed, c1 - c0, secs, s1.saturating_sub(s0)))
}

/// Creates the TAP, loads the data path on it, measures every point and removes both.
/// Runs after (b): the veth's data path must be shut down (one program per target device).
pub fn run(topo: &Topology, input: &PolicyInput, pins: &Path, s: &Settings) -> Result<Value> {
    let tap = in_ns(&topo.gw.name, || open_tap(TAP_NAME))?;
    let mac = portcullis::io::tap::tap_mac(input.gateway_addr);
    let mac_s = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    topo::exec(
        &topo.gw,
        &["ip", "link", "set", TAP_NAME, "address", &mac_s, "up"],
    )?;
    for key in ["forwarding=1", "accept_local=1", "rp_filter=0"] {
        topo::exec(
            &topo.gw,
            &["sysctl", "-qw", &format!("net.ipv4.conf.{TAP_NAME}.{key}")],
        )?;
    }
    let tap_ifindex = topo::ifindex(&topo.gw, TAP_NAME)?;
    let (mut dp, compiled) = in_ns(&topo.gw.name, || -> Result<_> {
        let dp = Datapath::load(DatapathOptions {
            endpoint: "benchtap".into(),
            pin_root: pins.to_path_buf(),
            tap_ifindex,
            tap_name: TAP_NAME.into(),
            tap_mac: mac,
            gateway: input.gateway_addr,
            gateway_ports: input.gateway_ports.clone(),
            targets: vec![GW_OUT.into()],
            max_flows: None,
            deny_events_per_sec: 100,
            mode: XdpMode::Driver,
        })?;
        let c = compile(input, &|n| portcullis::datapath::ifindex(n))
            .map_err(|e| anyhow!("the benchmark policy does not compile: {} errors", e.len()))?;
        Ok((dp, c))
    })
    .context("loading the data path on the TAP")?;
    reconcile::reconcile(&mut dp.maps, &compiled).map_err(|e| anyhow!("applying: {e}"))?;
    dp.maps.upsert_client(
        BENCH_CLIENT,
        ClientInfo {
            groups: compiled.groups_bitmap(["bench"]),
            slot: BENCH_SLOT,
            max_flows: BENCH_MAX_FLOWS,
        },
    )?;
    let mut points = Vec::new();
    for size in FRAME_SIZES {
        for flows in FLOW_COUNTS {
            if stop_requested() {
                bail!("interrupted");
            }
            let mut frame = udp_frame(mac, BENCH_CLIENT, GEN_BASE_PORT, SINK_ADDR, 9);
            resize_udp(&mut frame, size);
            // Opened per point and moved to the writer (it is not `Sync`).
            let sink = topo::LinkCounter::open(&topo.sink, SINK_IF)?;
            let (tap, frame) = (&tap, &frame);
            let ev0 = crate::event_counters(&dp)?;
            let r = std::thread::scope(|sc| {
                sc.spawn(move || {
                    topo::pin_to_cpu(0, FORWARD_CPU);
                    topo::boost(0);
                    window(tap, frame, flows, &sink, s.warmup, s.window)
                })
                .join()
                .map_err(|_| anyhow!("TAP writer panicked"))?
            })?;
            let ev1 = crate::event_counters(&dp)?;
            let (n, failed, cpu_ns, secs, delivered) = r;
            let p = json!({
                "frame_bytes": size,
                "flows": flows,
                "seconds": secs,
                "writes_per_s": n as f64 / secs,
                "failed_writes": failed,
                "delivered_pps": delivered as f64 / secs,
                "writer_cpu_ns_per_frame": cpu_ns as f64 / n.max(1) as f64,
                "writer_cpu_fraction": cpu_ns as f64 / 1e9 / secs,
                "fast_path": ev1.0 - ev0.0,
                "new_flows": ev1.1 - ev0.1,
                "pass_no_neighbour": ev1.2 - ev0.2,
                "drops": ev1.3 - ev0.3,
            });
            println!(
                "  TAP {size} B {flows} flow(s): {:.3} M writes/s, {:.3} Mpps at the sink, {:.0} ns writer CPU per frame",
                n as f64 / secs / 1e6,
                delivered as f64 / secs / 1e6,
                cpu_ns as f64 / n.max(1) as f64
            );
            points.push(p);
        }
    }
    dp.shutdown(false)?;
    drop(tap);
    Ok(json!({
        "method": format!("one thread in the gateway namespace (pinned to CPU {FORWARD_CPU}, nice -20) writes UDP frames from the bench client to the sink, one write() per frame, into a TAP device ({TAP_NAME}: IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE, the agent's flags) carrying the data path (native XDP on tun: the program runs inside each write) with the same policy; the source port cycles over the flows; writes/s over the window, frames/s = the sink's rx_packets delta, writer CPU = its thread CPU time (write syscall + XDP + redirect + veth transmit) per frame; the event counters cover the warm-up and the window. (b) feeds a veth instead (NAPI, softirq)"),
        "points": points,
    }))
}

/// Grow a UDP frame to `len` bytes, fixing the IPv4 and UDP lengths and the IPv4 checksum;
/// the UDP checksum is 0 ("none") so the source port may change per frame.
fn resize_udp(frame: &mut Vec<u8>, len: usize) {
    frame.resize(len, 0);
    let ip_len = (len - 14) as u16;
    frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
    frame[24..26].copy_from_slice(&[0, 0]);
    let mut sum: u32 = frame[14..34]
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    frame[40..42].copy_from_slice(&[0, 0]);
}
