//! Part (b)'s traffic generators and the choice between them.
//!
//! Two ways to push the same frames out of the generator's veth (`pcbgen`):
//! - **live frames** (preferred): a raw XDP program run with `BPF_PROG_RUN` in live-frames
//!   mode (see `rawbpf`); frames leave without an skb, so it offers the most.
//! - **AF_PACKET**: a raw packet socket bound to `pcbgen` with `PACKET_QDISC_BYPASS`, frames
//!   sent 64 at a time with `sendmmsg`. One skb per frame, so it offers less, and a veth with
//!   XDP copies each such skb into an XDP buffer first (the skb lacks XDP headroom), a cost
//!   the gateway pays on the XDP side only: its figures are not those of live frames.
//!
//! Some kernels refuse live frames (`Operation not permitted` on a fresh machine of this
//! project's kind). Then the benchmark falls back to AF_PACKET and records why; when neither
//! can send, the forwarding figures are reported as not measured, with the reasons.
use portcullis::netns::inet_checksum;
use std::{
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::thread::JoinHandleExt,
    },
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    policy::BENCH_CLIENT,
    progrun::udp_frame,
    rawbpf, stop_requested,
    topo::{self, Topology, GEN_IF, GW_IN, SINK_ADDR},
};

/// First UDP source port of the generator's flows (flows = consecutive ports).
pub const GEN_BASE_PORT: u16 = 20_000;
pub const GEN_CPU: usize = 0;
/// Frames per `sendmmsg` call of the AF_PACKET generator.
const BATCH: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    LiveFrames,
    AfPacket,
}

impl Kind {
    /// Preference order when the choice is automatic.
    pub const ALL: [Kind; 2] = [Kind::LiveFrames, Kind::AfPacket];

    pub fn name(self) -> &'static str {
        match self {
            Kind::LiveFrames => "live_frames",
            Kind::AfPacket => "af_packet",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::LiveFrames => "a raw XDP program run with BPF_PROG_RUN in live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES), one long call per window: it rewrites the header (UDP source port random over the flows, UDP checksum 0) and redirects out of its veth, so frames leave without an skb",
            Kind::AfPacket => "an AF_PACKET raw socket bound to the generator's veth with PACKET_QDISC_BYPASS, sendmmsg of 64 frames per call (UDP source port cycling over the flows, UDP checksum 0): one skb per frame, and the gateway's veth copies each into an XDP buffer when XDP is attached",
        }
    }
}

/// Which generator the command line asks for (`--generator auto|live-frames|af-packet`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The first generator that works, in [`Kind::ALL`] order.
    Auto,
    /// This one or fail: how the fallback is exercised on a machine where live frames work.
    Only(Kind),
}

impl Request {
    pub fn parse(s: &str) -> Result<Request> {
        Ok(match s {
            "auto" => Request::Auto,
            "live-frames" => Request::Only(Kind::LiveFrames),
            "af-packet" => Request::Only(Kind::AfPacket),
            other => bail!("unknown generator {other:?}: auto, live-frames or af-packet"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Request::Auto => "auto",
            Request::Only(Kind::LiveFrames) => "live-frames",
            Request::Only(Kind::AfPacket) => "af-packet",
        }
    }
}

/// The generator chosen for part (b), and those tried before it with the reason each failed.
#[derive(Clone, Debug)]
pub struct Choice {
    pub request: Request,
    /// `None`: no generator works; forwarding is not measured.
    pub kind: Option<Kind>,
    pub refused: Vec<(Kind, String)>,
    /// Set when no generator was tried because part (b) was not asked for.
    pub skipped: Option<&'static str>,
}

impl Choice {
    /// Each generator tried and refused, with the reason: `kind: reason; ...`.
    pub fn refusals(&self) -> String {
        self.refused
            .iter()
            .map(|(k, why)| format!("{}: {why}", k.name()))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// No generator tried: part (b) was not asked for (`why` says so in the report).
    pub fn skipped(request: Request, why: &'static str) -> Choice {
        Choice {
            request,
            kind: None,
            refused: Vec::new(),
            skipped: Some(why),
        }
    }

    /// Why part (b) was not measured (when no generator works, or none was asked for).
    pub fn not_measured_reason(&self) -> String {
        match self.skipped {
            Some(why) => why.to_string(),
            None => format!("no traffic generator works here: {}", self.refusals()),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "requested": self.request.name(),
            "kind": self.kind.map(Kind::name),
            "method": self.kind.map(Kind::describe),
            "fallback": self.kind.is_some() && !self.refused.is_empty(),
            "refused": self.refused.iter().map(|(k, why)| json!({
                "kind": k.name(), "reason": why,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Try the requested generators in order: each sends 64-byte frames for 200 ms from the
/// generator namespace, and passes when frames reached the gateway's input. The first that
/// passes is chosen. Run before the data path is loaded: the kernel forwards the probe's
/// frames to the sink, which drops them.
pub fn choose(topo: &Topology, request: Request) -> Result<Choice> {
    let candidates: Vec<Kind> = match request {
        Request::Auto => Kind::ALL.to_vec(),
        Request::Only(k) => vec![k],
    };
    let gw_in = topo::LinkCounter::open(&topo.gw, GW_IN)?;
    let mut refused = Vec::new();
    for kind in candidates {
        match probe(topo, &gw_in, kind) {
            Ok(()) => {
                return Ok(Choice {
                    request,
                    kind: Some(kind),
                    refused,
                    skipped: None,
                })
            }
            Err(e) => {
                if stop_requested() {
                    bail!("interrupted");
                }
                println!(
                    "bench-datapath: generator {} does not work: {e:#}",
                    kind.name()
                );
                refused.push((kind, format!("{e:#}")));
            }
        }
    }
    Ok(Choice {
        request,
        kind: None,
        refused,
        skipped: None,
    })
}

fn probe(topo: &Topology, gw_in: &topo::LinkCounter, kind: Kind) -> Result<()> {
    if kind == Kind::AfPacket {
        // A veth hands an skb to its peer's NAPI (the gateway's input thread, pinned to the
        // forwarding CPU) only when the sending veth has no TSO; otherwise it goes through
        // netif_rx on the sender's CPU (veth_skb_is_eligible_for_gro), and the nftables and
        // kernel modes would forward on the generator's core. Attaching XDP to the gateway's
        // veth turns TSO off on this peer anyway: off for every mode, they are alike.
        topo::exec(&topo.gen, &["ethtool", "-K", GEN_IF, "tso", "off"])
            .context("turning TSO off on the generator's veth")?;
    }
    let g = Arc::new(Generator::new(topo, kind, 64, 1)?);
    let reached = |s: topo::LinkStats| s.rx_packets + s.rx_dropped;
    let before = reached(gw_in.read()?);
    let running = start(&g, Duration::from_secs(2));
    thread::sleep(Duration::from_millis(200));
    running.finish()?;
    let arrived = reached(gw_in.read()?).saturating_sub(before);
    if arrived == 0 {
        bail!("ran without error, but no frame reached the gateway's input in 200 ms");
    }
    Ok(())
}

/// A generator for one (frame size, flows) point.
pub struct Generator {
    pub kind: Kind,
    pub frame_len: usize,
    pub flows: u32,
    frame: Vec<u8>,
    /// The live-frames program (`Kind::LiveFrames` only).
    program: Option<OwnedFd>,
    gen_ifindex: u32,
    gen_ns: String,
    /// AF_PACKET only: frames the kernel took, and frames it refused (`ENOBUFS`: the
    /// gateway's input ring was full), so far.
    sent: AtomicU64,
    refused: AtomicU64,
}

/// Frames a generator reports having sent and having had refused (AF_PACKET only).
#[derive(Clone, Copy, Debug)]
pub struct SendCounts {
    pub sent: u64,
    pub refused: u64,
}

impl Generator {
    pub fn new(topo: &Topology, kind: Kind, frame_len: usize, flows: u32) -> Result<Generator> {
        let gen_ifindex = topo::ifindex(&topo.gen, GEN_IF)?;
        let mut frame = udp_frame(topo.gw_in_mac, BENCH_CLIENT, GEN_BASE_PORT, SINK_ADDR, 9);
        // Grow to the frame size: fix the IPv4 and UDP lengths, recompute the IPv4 header
        // checksum; the UDP checksum is 0 ("none"), so the generator may change the port.
        frame.resize(frame_len, 0);
        // The source MAC stays the bench client's session MAC (`udp_frame`): the data path
        // takes only frames that carry their session's slot there, as the agent writes them.
        frame[0..6].copy_from_slice(&topo.gw_in_mac);
        let ip_len = (frame_len - 14) as u16;
        frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let csum = inet_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&csum.to_be_bytes());
        frame[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        frame[40..42].copy_from_slice(&[0, 0]);
        let program = match kind {
            Kind::LiveFrames => {
                let header: [u8; rawbpf::HEADER_LEN] =
                    frame[..rawbpf::HEADER_LEN].try_into().expect("42 bytes");
                let insns = rawbpf::generator_program(&header, GEN_BASE_PORT, flows, gen_ifindex);
                Some(rawbpf::load_xdp("pcb_gen", &insns)?)
            }
            Kind::AfPacket => None,
        };
        Ok(Generator {
            kind,
            frame_len,
            flows,
            frame,
            program,
            gen_ifindex,
            gen_ns: topo.gen.name.clone(),
            sent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// What the generator counted so far (`None` for live frames, which counts nothing).
    pub fn counts(&self) -> Option<SendCounts> {
        (self.kind == Kind::AfPacket).then(|| SendCounts {
            sent: self.sent.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        })
    }
}

/// A running generator thread; stops (and is joined) on drop.
pub struct Running {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Result<()>>>,
}

impl Running {
    /// Stop the generator: set the flag, then interrupt its syscall with SIGUSR1 until the
    /// thread is gone (repeatedly, in case a signal lands just before the syscall starts).
    fn stop_and_join(&mut self) -> Option<thread::Result<Result<()>>> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take()?;
        for _ in 0..1_000 {
            if h.is_finished() {
                break;
            }
            // SAFETY: the thread has not been joined, so its pthread_t is valid.
            unsafe { libc::pthread_kill(h.as_pthread_t(), libc::SIGUSR1) };
            thread::sleep(Duration::from_millis(5));
        }
        Some(h.join())
    }

    pub fn finish(mut self) -> Result<()> {
        match self.stop_and_join() {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(anyhow!("generator thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// Start the generator on its own thread (pinned to [`GEN_CPU`], nice -20, inside the
/// generator namespace) until [`Running::finish`], bounded by `max_time`.
pub fn start(generator: &Arc<Generator>, max_time: Duration) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let (g, st) = (generator.clone(), stop.clone());
    let handle = thread::spawn(move || -> Result<()> {
        topo::pin_to_cpu(0, GEN_CPU);
        topo::boost(0);
        topo::in_ns(&g.gen_ns, || {
            let deadline = Instant::now() + max_time;
            let go =
                || !st.load(Ordering::Relaxed) && !stop_requested() && Instant::now() < deadline;
            match g.kind {
                Kind::LiveFrames => send_live_frames(&g, max_time, go),
                Kind::AfPacket => send_af_packet(&g, go),
            }
        })
    });
    Running {
        stop,
        handle: Some(handle),
    }
}

/// One live-frames `BPF_PROG_RUN` call that runs until SIGUSR1 stops it. One long call and
/// not many short ones: each call sets up and tears down a page pool, and the teardown waits
/// for an RCU grace period, during which nothing would be sent. Bounded all the same: by
/// `max_time` at 10 Mpps in frames, and by the loop count.
fn send_live_frames(g: &Generator, max_time: Duration, go: impl Fn() -> bool) -> Result<()> {
    let prog = g
        .program
        .as_ref()
        .context("live-frames generator without its program")?;
    let frames = (max_time.as_secs_f64() * 10e6).min(f64::from(u32::MAX)) as u32;
    let mut calls = 0;
    while go() && calls < 1_000 {
        calls += 1;
        match rawbpf::run_live(prog, &g.frame, g.gen_ifindex, frames) {
            // EINTR: stopped by SIGUSR1 (or Ctrl-C); the loop condition decides.
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e).context("generator BPF_PROG_RUN (live frames)"),
        }
    }
    Ok(())
}

/// `sendmmsg` of [`BATCH`] frames at a time on an AF_PACKET socket opened in the calling
/// thread's namespace (the generator's), bypassing the qdisc so each frame goes straight to
/// the veth's transmit. A full receive ring at the gateway refuses frames with `ENOBUFS`:
/// counted, and sending goes on.
fn send_af_packet(g: &Generator, go: impl Fn() -> bool) -> Result<()> {
    // Protocol 0: the socket only sends, it receives nothing.
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET, SOCK_RAW)");
    }
    // SAFETY: a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads an int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(PACKET_QDISC_BYPASS)");
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid value for every field.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = g.gen_ifindex as i32;
    // SAFETY: bind reads a sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .context("bind(AF_PACKET) to the generator's veth");
    }

    let mut frames: Vec<Vec<u8>> = vec![g.frame.clone(); BATCH];
    let mut iov: Vec<libc::iovec> = frames
        .iter_mut()
        .map(|f| libc::iovec {
            iov_base: f.as_mut_ptr().cast(),
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zero (no name, no control) is valid.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let sport_off = 34;
    let mut next: u32 = 0;
    while go() {
        for f in &mut frames {
            let port = GEN_BASE_PORT + (next % g.flows) as u16;
            next = next.wrapping_add(1);
            f[sport_off..sport_off + 2].copy_from_slice(&port.to_be_bytes());
        }
        // SAFETY: every mmsghdr points at one iovec over a live frame buffer of its length;
        // `frames`, `iov` and `msgs` outlive the call and are not moved during it.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    g.refused.fetch_add(1, Ordering::Relaxed);
                }
                Some(libc::EINTR) => {}
                _ => return Err(e).context("sendmmsg on the AF_PACKET socket"),
            }
            continue;
        }
        g.sent.fetch_add(n as u64, Ordering::Relaxed);
        if (n as usize) < BATCH {
            // The next frame failed (its error is not reported): the ring was full.
            g.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

#[cfg(test)]
mod checks {
    use super::*;

    #[test]
    fn request_names_round_trip_and_unknown_is_an_error() {
        for r in [
            Request::Auto,
            Request::Only(Kind::LiveFrames),
            Request::Only(Kind::AfPacket),
        ] {
            assert_eq!(Request::parse(r.name()).unwrap(), r);
        }
        assert!(Request::parse("pktgen").is_err());
    }

    #[test]
    fn a_fallback_records_what_was_refused_and_why() {
        let c = Choice {
            request: Request::Auto,
            kind: Some(Kind::AfPacket),
            refused: vec![(Kind::LiveFrames, "Operation not permitted".into())],
            skipped: None,
        };
        let j = c.to_json();
        assert_eq!(j["kind"], "af_packet");
        assert_eq!(j["fallback"], true);
        assert_eq!(j["refused"][0]["kind"], "live_frames");
        assert_eq!(j["refused"][0]["reason"], "Operation not permitted");
        let none = Choice {
            kind: None,
            refused: vec![
                (Kind::LiveFrames, "EPERM".into()),
                (Kind::AfPacket, "EACCES".into()),
            ],
            ..c
        };
        assert_eq!(none.to_json()["fallback"], false);
        assert_eq!(
            none.not_measured_reason(),
            "no traffic generator works here: live_frames: EPERM; af_packet: EACCES"
        );
        // --prog-test-run-only: nothing tried, and the report says why.
        let skipped = Choice::skipped(Request::Auto, "not asked for");
        assert_eq!(skipped.not_measured_reason(), "not asked for");
        assert_eq!(skipped.to_json()["kind"], serde_json::Value::Null);
    }
}
