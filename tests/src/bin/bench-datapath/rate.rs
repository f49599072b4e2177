//! Part (b): forwarding rate of the gateway namespace, XDP data path vs the nftables twin
//! (and plain kernel forwarding, for reference), with one generator for all of them.
//!
//! CPU placement on this 2-core machine: the gateway's input NAPI (where the XDP program
//! runs, or where the kernel forwards and nftables filters) runs in a kernel thread pinned to
//! CPU 1; the generator and the sink's NAPI share CPU 0. So the figure is what one core of
//! forwarding does, as long as the generator offers more than that (the report shows the
//! offered rate and the drops at the gateway's input to tell).
use std::{
    os::{fd::OwnedFd, unix::thread::JoinHandleExt},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use portcullis::netns::inet_checksum;

use crate::{
    policy::BENCH_CLIENT,
    progrun::udp_frame,
    rawbpf, stop_requested,
    topo::{self, Topology, GEN_IF, GW_IN, SINK_ADDR, SINK_IF},
};

/// First UDP source port of the generator's flows (flows = consecutive ports).
pub const GEN_BASE_PORT: u16 = 20_000;
pub const GEN_CPU: usize = 0;
pub const FORWARD_CPU: usize = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Xdp,
    Nft,
    Kernel,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::Nft => "nftables",
            Mode::Kernel => "kernel_forwarding",
        }
    }
}

/// A generator program for one (frame size, flows) point.
pub struct Generator {
    pub frame_len: usize,
    pub flows: u32,
    frame: Vec<u8>,
    prog: OwnedFd,
    gen_ifindex: u32,
    gen_ns: String,
}

impl Generator {
    pub fn new(topo: &Topology, frame_len: usize, flows: u32) -> Result<Generator> {
        let gen_ifindex = topo::ifindex(&topo.gen, GEN_IF)?;
        let mut frame = udp_frame(topo.gw_in_mac, BENCH_CLIENT, GEN_BASE_PORT, SINK_ADDR, 9);
        // Grow to the frame size: fix the IPv4 and UDP lengths, recompute the IPv4 header
        // checksum; the UDP checksum is 0 ("none"), so the generator may change the port.
        frame.resize(frame_len, 0);
        frame[0..6].copy_from_slice(&topo.gw_in_mac);
        frame[6..12].copy_from_slice(&topo.gen_mac);
        let ip_len = (frame_len - 14) as u16;
        frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
        frame[24..26].copy_from_slice(&[0, 0]);
        let csum = inet_checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&csum.to_be_bytes());
        frame[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
        frame[40..42].copy_from_slice(&[0, 0]);
        let header: [u8; rawbpf::HEADER_LEN] = frame[..rawbpf::HEADER_LEN].try_into().unwrap();
        let insns = rawbpf::generator_program(&header, GEN_BASE_PORT, flows, gen_ifindex);
        let prog = rawbpf::load_xdp("pcb_gen", &insns)?;
        Ok(Generator {
            frame_len,
            flows,
            frame,
            prog,
            gen_ifindex,
            gen_ns: topo.gen.name.clone(),
        })
    }
}

/// A running generator thread; stops (and is joined) on drop.
struct Running {
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

    fn finish(mut self) -> Result<()> {
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

/// Start the generator: one live-frames `BPF_PROG_RUN` call that runs until SIGUSR1 stops
/// it. One long call and not many short ones: each call sets up and tears down a page pool,
/// and the teardown waits for an RCU grace period, during which nothing would be sent.
/// Bounded all the same: by `max_time` at 10 Mpps in frames, and by the loop count.
fn start(generator: &Arc<Generator>, max_time: Duration) -> Running {
    let stop = Arc::new(AtomicBool::new(false));
    let (g, st) = (generator.clone(), stop.clone());
    let handle = thread::spawn(move || -> Result<()> {
        topo::pin_to_cpu(0, GEN_CPU);
        topo::boost(0);
        topo::in_ns(&g.gen_ns, || {
            let deadline = Instant::now() + max_time;
            let frames = (max_time.as_secs_f64() * 10e6).min(f64::from(u32::MAX)) as u32;
            let mut calls = 0;
            while !st.load(Ordering::Relaxed)
                && !stop_requested()
                && Instant::now() < deadline
                && calls < 1_000
            {
                calls += 1;
                match rawbpf::run_live(&g.prog, &g.frame, g.gen_ifindex, frames) {
                    // EINTR: stopped by SIGUSR1 (or Ctrl-C); the loop condition decides.
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(e).context("generator BPF_PROG_RUN (live frames)"),
                }
            }
            Ok(())
        })
    });
    Running {
        stop,
        handle: Some(handle),
    }
}

/// One measurement window.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub seconds: f64,
    pub delivered_pps: f64,
    pub offered_pps: f64,
    /// Frames the gateway's input ring refused (the gateway was saturated).
    pub gw_input_drop_pps: f64,
    /// Frames the sink's ring refused (the sink, not the gateway, was the limit).
    pub sink_drop_pps: f64,
    pub cpu_busy: Vec<f64>,
}

/// Counters sampled at both ends of a window.
struct Snap {
    at: Instant,
    sink: topo::LinkStats,
    gw_in: topo::LinkStats,
    cpu: Vec<(u64, u64)>,
}

/// The two devices a window reads.
pub struct Counters {
    sink: topo::LinkCounter,
    gw_in: topo::LinkCounter,
}

impl Counters {
    pub fn open(topo: &Topology) -> Result<Counters> {
        Ok(Counters {
            sink: topo::LinkCounter::open(&topo.sink, SINK_IF)?,
            gw_in: topo::LinkCounter::open(&topo.gw, GW_IN)?,
        })
    }
}

fn snap(c: &Counters) -> Result<Snap> {
    let sink = c.sink.read()?;
    let gw_in = c.gw_in.read()?;
    Ok(Snap {
        at: Instant::now(),
        sink,
        gw_in,
        cpu: topo::cpu_times(),
    })
}

/// Run the generator, wait `warmup`, measure over `measure`.
pub fn measure(
    counters: &Counters,
    generator: &Arc<Generator>,
    warmup: Duration,
    window: Duration,
) -> Result<Sample> {
    let running = start(generator, warmup + window + Duration::from_secs(5));
    sleep_checked(warmup)?;
    let a = snap(counters)?;
    if std::env::var_os("PORTCULLIS_BENCH_DIAG").is_some() {
        let mut prev = snap(counters)?;
        for _ in 0..10 {
            sleep_checked(window / 10)?;
            let cur = snap(counters)?;
            let dt = cur.at.duration_since(prev.at).as_secs_f64();
            println!(
                "  [diag] dt {:.3}s sink {:.3} Mpps gw_in {:.3} Mpps gw_in_drop {:.3}",
                dt,
                (cur.sink.rx_packets - prev.sink.rx_packets) as f64 / dt / 1e6,
                (cur.gw_in.rx_packets - prev.gw_in.rx_packets) as f64 / dt / 1e6,
                (cur.gw_in.rx_dropped - prev.gw_in.rx_dropped) as f64 / dt / 1e6,
            );
            prev = cur;
        }
    } else {
        sleep_checked(window)?;
    }
    let b = snap(counters)?;
    running.finish()?;
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    Ok(Sample {
        seconds: secs,
        delivered_pps: per_s(a.sink.rx_packets, b.sink.rx_packets),
        // What reached the gateway's input: processed plus refused for a full ring.
        offered_pps: per_s(
            a.gw_in.rx_packets + a.gw_in.rx_dropped,
            b.gw_in.rx_packets + b.gw_in.rx_dropped,
        ),
        gw_input_drop_pps: per_s(a.gw_in.rx_dropped, b.gw_in.rx_dropped),
        sink_drop_pps: per_s(a.sink.rx_dropped, b.sink.rx_dropped),
        cpu_busy: topo::cpu_busy(&a.cpu, &b.cpu),
    })
}

fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop_requested() {
            bail!("interrupted");
        }
        thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Give the gateway's input and the sink their NAPI threads, pin them (the gateway's to the
/// forwarding CPU, the sink's next to the generator) and raise their priority.
/// Returns whether it worked.
pub fn place_napi(topo: &Topology) -> bool {
    let mut ok =
        topo::set_threaded_napi(&topo.gw, GW_IN) && topo::set_threaded_napi(&topo.sink, SINK_IF);
    // The kernel threads appear when the flag is set (or when NAPI is re-created).
    thread::sleep(Duration::from_millis(50));
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if cpus < 2 {
        return false;
    }
    for (dev, cpu) in [(GW_IN, FORWARD_CPU), (SINK_IF, GEN_CPU)] {
        let pids = topo::napi_threads(dev);
        ok &= !pids.is_empty();
        for pid in pids {
            ok &= topo::pin_to_cpu(pid, cpu);
            // The sink must never be the bottleneck: its NAPI thread preempts the generator
            // whenever frames arrive (real-time priority 1; its work is bounded by what the
            // gateway forwards). The gateway's thread gets the generator's nice -20.
            ok &= if dev == SINK_IF {
                topo::realtime(pid)
            } else {
                topo::boost(pid)
            };
        }
    }
    ok
}
