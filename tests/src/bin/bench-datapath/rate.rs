//! Part (b): forwarding rate of the gateway namespace, XDP data path vs the nftables twin
//! (and plain kernel forwarding, for reference), with one generator for all of them.
//!
//! CPU placement on this 2-core machine: the gateway's input NAPI (where the XDP program
//! runs, or where the kernel forwards and nftables filters) runs in a kernel thread pinned to
//! CPU 1; the generator and the sink's NAPI share CPU 0. So the figure is what one core of
//! forwarding does, as long as the generator offers more than that (the report shows the
//! offered rate and the drops at the gateway's input to tell).
use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    generator::{self, Generator, GEN_CPU},
    stop_requested,
    topo::{self, Topology, GW_IN, SINK_IF},
};

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
    /// AF_PACKET generator only: frames it sent, and frames the kernel refused at its veth
    /// (the gateway's input ring was full), per second.
    pub generator_sent_pps: Option<f64>,
    pub generator_refused_pps: Option<f64>,
}

/// Counters sampled at both ends of a window.
struct Snap {
    at: Instant,
    sink: topo::LinkStats,
    gw_in: topo::LinkStats,
    cpu: Vec<(u64, u64)>,
    generator: Option<generator::SendCounts>,
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

fn snap(c: &Counters, g: &Generator) -> Result<Snap> {
    let sink = c.sink.read()?;
    let gw_in = c.gw_in.read()?;
    Ok(Snap {
        at: Instant::now(),
        sink,
        gw_in,
        cpu: topo::cpu_times(),
        generator: g.counts(),
    })
}

/// Run the generator, wait `warmup`, measure over `measure`.
pub fn measure(
    counters: &Counters,
    generator: &Arc<Generator>,
    warmup: Duration,
    window: Duration,
) -> Result<Sample> {
    let running = generator::start(generator, warmup + window + Duration::from_secs(5));
    sleep_checked(warmup)?;
    let a = snap(counters, generator)?;
    if std::env::var_os("PORTCULLIS_BENCH_DIAG").is_some() {
        let mut prev = snap(counters, generator)?;
        for _ in 0..10 {
            sleep_checked(window / 10)?;
            let cur = snap(counters, generator)?;
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
    let b = snap(counters, generator)?;
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
        generator_sent_pps: a
            .generator
            .zip(b.generator)
            .map(|(x, y)| per_s(x.sent, y.sent)),
        generator_refused_pps: a
            .generator
            .zip(b.generator)
            .map(|(x, y)| per_s(x.refused, y.refused)),
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
