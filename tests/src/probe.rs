//! Timed UDP probe streams through the tunnel, for reload and restart measurements.
//!
//! A [`Sender`] in a client namespace sends numbered datagrams at a fixed rate, round robin
//! over its streams (one destination address and port each); a [`Sink`] in the private
//! network records, per stream, which sequence numbers arrived and when each was sent. Every
//! datagram carries its send time on `CLOCK_MONOTONIC`, which all namespaces share, so the
//! analysis can say when a stream stopped or started getting through relative to an instant
//! the test took (a reload, a restart) without any clock skew.
//!
//! Datagram: `magic u32 | stream u8 | seq u64 | sent_ns u64` (big endian).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::NetNs;

const MAGIC: u32 = 0x5052_4f42; // "PROB"
const LEN: usize = 4 + 1 + 8 + 8;

/// Nanoseconds on `CLOCK_MONOTONIC` (the same clock in every namespace and process).
pub use portcullis::datapath::maps::monotonic_ns as mono_ns;

/// What arrived of one stream: `seq -> sent_ns`.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub packets: BTreeMap<u64, u64>,
}

impl Received {
    /// Send time of the last packet sent before `t` (ns) that got through.
    pub fn last_before(&self, t: u64) -> Option<u64> {
        self.packets.values().copied().filter(|&s| s < t).max()
    }

    /// Send time of the first packet sent at or after `t` that got through.
    pub fn first_after(&self, t: u64) -> Option<u64> {
        self.packets.values().copied().filter(|&s| s >= t).min()
    }

    /// Send time of the last packet that got through, at any time.
    pub fn last(&self) -> Option<u64> {
        self.packets.values().copied().max()
    }

    /// The longest stretch of send times from `t` on with nothing getting through: the send
    /// times of the packets that got through on either side of it (the one before may be
    /// before `t`).
    pub fn longest_gap_after(&self, t: u64) -> Option<(u64, u64)> {
        let before = self.last_before(t);
        let mut times: Vec<u64> = before
            .into_iter()
            .chain(self.packets.values().copied().filter(|&s| s >= t))
            .collect();
        times.sort_unstable();
        times
            .windows(2)
            .map(|w| (w[0], w[1]))
            .max_by_key(|(a, b)| b - a)
    }

    /// How many arrived that were sent in `[from, to)`.
    pub fn count_between(&self, from: u64, to: u64) -> usize {
        self.packets
            .values()
            .filter(|&&s| s >= from && s < to)
            .count()
    }
}

/// Records datagrams on `0.0.0.0:<port>` for every port given, in a thread inside `ns`.
pub struct Sink {
    stop: Arc<AtomicBool>,
    data: Arc<Mutex<Vec<Received>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Sink {
    /// `ports[i]` receives stream `i`'s datagrams (any stream id is accepted on any port:
    /// the id in the datagram decides).
    pub fn start(ns: &NetNs, ports: &[u16], streams: usize) -> Sink {
        let stop = Arc::new(AtomicBool::new(false));
        let data = Arc::new(Mutex::new(vec![Received::default(); streams]));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let threads = ports
            .iter()
            .map(|&port| {
                let (stop, data, ready) = (stop.clone(), data.clone(), ready_tx.clone());
                let name = ns.name.clone();
                std::thread::spawn(move || {
                    let guard = NetNs::open(&name).enter();
                    let sock = UdpSocket::bind(("0.0.0.0", port)).expect("bind the probe sink");
                    drop(guard);
                    sock.set_read_timeout(Some(Duration::from_millis(50))).ok();
                    let _ = ready.send(());
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(n) = sock.recv(&mut buf) else { continue };
                        if n != LEN || buf[..4] != MAGIC.to_be_bytes() {
                            continue;
                        }
                        let stream = buf[4] as usize;
                        let seq = u64::from_be_bytes(buf[5..13].try_into().expect("8 bytes"));
                        let sent = u64::from_be_bytes(buf[13..21].try_into().expect("8 bytes"));
                        let mut d = data.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(r) = d.get_mut(stream) {
                            r.packets.insert(seq, sent);
                        }
                    }
                })
            })
            .collect();
        for _ in ports {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("probe sink ready");
        }
        Sink {
            stop,
            data,
            threads,
        }
    }

    /// A copy of what arrived so far.
    pub fn snapshot(&self) -> Vec<Received> {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stop and return what arrived.
    pub fn stop(mut self) -> Vec<Received> {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What a sender sent: per stream, `seq -> sent_ns`.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    pub streams: Vec<BTreeMap<u64, u64>>,
}

impl Sent {
    /// Sequence numbers of `stream` sent in `[from, to)` that are not in `got`.
    pub fn lost_between(&self, stream: usize, got: &Received, from: u64, to: u64) -> usize {
        self.streams[stream]
            .iter()
            .filter(|(_, &t)| t >= from && t < to)
            .filter(|(seq, _)| !got.packets.contains_key(seq))
            .count()
    }

    /// Send time of the first packet of `stream` sent after `t` (ns).
    pub fn next_after(&self, stream: usize, t: u64) -> Option<u64> {
        self.streams[stream].values().copied().find(|&s| s > t)
    }
}

/// Sends datagrams to each destination in turn, one every `interval`, from a thread inside
/// `ns`, until stopped (or `max` elapses: the bound on every run).
pub struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Sent>>,
}

impl Sender {
    pub fn start(ns: &NetNs, dests: &[SocketAddrV4], interval: Duration, max: Duration) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let dests = dests.to_vec();
        let name = ns.name.clone();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let guard = NetNs::open(&name).enter();
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the probe sender");
            drop(guard);
            let mut sent = Sent {
                streams: vec![BTreeMap::new(); dests.len()],
            };
            let t0 = mono_ns();
            let step = interval.as_nanos() as u64;
            let mut seq = 0u64;
            let mut next = t0;
            while !stop2.load(Ordering::Relaxed) && mono_ns() - t0 < max.as_nanos() as u64 {
                for (i, d) in dests.iter().enumerate() {
                    let now = mono_ns();
                    let mut b = [0u8; LEN];
                    b[..4].copy_from_slice(&MAGIC.to_be_bytes());
                    b[4] = i as u8;
                    b[5..13].copy_from_slice(&seq.to_be_bytes());
                    b[13..21].copy_from_slice(&now.to_be_bytes());
                    // A send error (no route while the tunnel is down) is a lost packet.
                    if sock.send_to(&b, d).is_ok() {
                        sent.streams[i].insert(seq, now);
                    }
                }
                seq += 1;
                next += step;
                let now = mono_ns();
                if next > now {
                    std::thread::sleep(Duration::from_nanos(next - now));
                } else if now - next > 100 * step {
                    // Far behind (the machine was busy): don't burst to catch up.
                    next = now;
                }
            }
            sent
        });
        Sender {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop and return what was sent.
    pub fn stop(mut self) -> Sent {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Adds `addr` to the private network's `eth0` and a permanent neighbour entry for it on the
/// gateway (the XDP redirect needs a resolved neighbour; the lab's entries are static).
pub fn add_server_address(gw: &NetNs, net: &NetNs, addr: Ipv4Addr) {
    use crate::gateway::GW_IF;
    net.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    let mac = crate::gateway::fmt_mac(&crate::mac_of(net, "eth0"));
    gw.ip(&[
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &mac,
        "dev",
        GW_IF,
        "nud",
        "permanent",
    ]);
}

/// Stream A's destination: allowed by every [`probe_policy`].
pub const STREAM_A: SocketAddrV4 = SocketAddrV4::new(crate::gateway::SERVER, 5001);
/// Stream B's destination (add it with [`add_server_address`]): allowed only when asked.
pub const STREAM_B: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 11), 5002);

/// The policy part of an endpoint file (for `agent::endpoint_toml`, which has the
/// `private` target network and its route to 10.0.0.0/24): a rule for stream A, one for
/// stream B when `allow_b`, and `fillers` (at most 16,384) further /32 rules (all users)
/// behind a route to 10.128.0.0/9, numbered from 10.128.0.0 + `variant` × 16,384 (`variant` <
/// 512), so that another variant replaces every filler rule at once.
pub fn probe_policy(fillers: usize, variant: u32, allow_b: bool) -> String {
    assert!(
        fillers <= 16_384 && variant < 512,
        "filler rules out of 10.128.0.0/9"
    );
    use std::fmt::Write;
    let mut p = String::from(
        "[[route]]\ndestination = \"10.128.0.0/9\"\ntarget_network = \"private\"\n\
         description = \"filler rules\"\n\n\
         [[authorization_rule]]\ndestination = \"10.0.0.10/32\"\nall_users = true\n\
         description = \"stream A: always allowed\"\n",
    );
    if allow_b {
        p.push_str(
            "\n[[authorization_rule]]\ndestination = \"10.0.0.11/32\"\nall_users = true\n\
             description = \"stream B\"\n",
        );
    }
    // Each variant has its own /18 of the /9 (16,384 fillers at most, 512 variants), so a
    // new variant replaces every filler rule (variants 1, 2, ... used to share one block,
    // which made the control suite's "replace" changes after the first no-ops for the fillers).
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + variant * 16_384;
    for i in 0..fillers as u32 {
        let _ = write!(
            p,
            "\n[[authorization_rule]]\ndestination = \"{}/32\"\nall_users = true\n",
            Ipv4Addr::from(base + i)
        );
    }
    p
}

/// Streams A and B from client 0 of `lab` (which runs a [`probe_policy`] that allows B), one
/// datagram per stream every `interval`, bounded by `max`; B's address is added to the private
/// network. Returns once both get through (an error after 5 s if they do not).
pub fn start_ab(
    lab: &crate::agent::AgentLab,
    interval: Duration,
    max: Duration,
) -> Result<(Sink, Sender), String> {
    add_server_address(&lab.gw, &lab.net, *STREAM_B.ip());
    let sink = Sink::start(&lab.net, &[STREAM_A.port(), STREAM_B.port()], 2);
    let sender = Sender::start(lab.client_ns(0), &[STREAM_A, STREAM_B], interval, max);
    crate::agent::poll(Duration::from_secs(5), || {
        let r = sink.snapshot();
        (r[0].packets.len() > 100 && r[1].packets.len() > 100).then_some(())
    })
    .ok_or("the probe streams do not get through")?;
    Ok((sink, sender))
}
