//! Part (b): packets/s the gateway forwards, the XDP data path against its nftables twin,
//! interleaved window by window, then plain kernel forwarding for reference.
//!
//! Why interleaved: on a shared two-core machine the background load drifts over a minute,
//! and two modes measured a minute apart gave ratios from 1.7x to 4.4x for one point. Here
//! every round measures one XDP window and one nftables window back to back (the order
//! alternates between rounds, so neither mode always runs first), the ratio is taken per
//! round, and the report gives the median ratio with its minimum and maximum.
//!
//! Switching modes costs no reload: the nftables twin stays loaded throughout (frames the
//! XDP program redirects never reach netfilter), and the data path's TAP program is attached
//! to and detached from the gateway's input through a BPF link this module owns. The data
//! path's maps, with their flows, stay as they are.
use std::{
    os::fd::{AsFd, OwnedFd},
    path::Path,
    sync::Arc,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use portcullis::{datapath::Datapath, policy::PolicyInput};
use portcullis_common::PROG_TAP;
use serde_json::{json, Value};
use tests::nft;

use crate::{
    event_counters,
    generator::{Generator, Kind, GEN_CPU},
    policy::client_groups,
    rate::{self, Mode, Sample, FORWARD_CPU},
    rawbpf, stop_requested,
    topo::{self, in_ns, Topology, GW_IN},
    Settings, FLOW_COUNTS, FRAME_SIZES, RATIO_TARGET,
};

/// The data path's TAP program on the gateway's input, attached or not.
struct TapSwitch {
    program: aya::programs::ProgramFd,
    ifindex: u32,
    gw_ns: String,
    link: Option<OwnedFd>,
}

impl TapSwitch {
    /// Take the TAP program's attachment over from the data path: remove its pinned link
    /// (which detaches it) and attach the same program through a link of our own.
    fn take_over(d: &mut Datapath, topo: &Topology) -> Result<TapSwitch> {
        let pin = d.options.pin_dir().join(format!("link_{GW_IN}"));
        if !pin.exists() {
            bail!(
                "the data path's link pin {} is missing: cannot detach the TAP program for the nftables windows",
                pin.display()
            );
        }
        let program = d
            .program(PROG_TAP)
            .context("the TAP program")?
            .fd()?
            .try_clone()
            .context("duplicating the TAP program's fd")?;
        // Detach first: releasing the link's last reference (the pin) detaches it only
        // later, from a work queue, and our own link could not be created before that.
        let pinned = rawbpf::obj_get(&pin).with_context(|| format!("opening {}", pin.display()))?;
        rawbpf::detach_link(&pinned).context("detaching the data path's TAP link")?;
        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        let mut s = TapSwitch {
            program,
            ifindex: topo::ifindex(&topo.gw, GW_IN)?,
            gw_ns: topo.gw.name.clone(),
            link: None,
        };
        s.set(true)?;
        Ok(s)
    }

    fn set(&mut self, attached: bool) -> Result<()> {
        match (attached, self.link.take()) {
            (true, Some(l)) => self.link = Some(l),
            (true, None) => {
                let l = in_ns(&self.gw_ns, || {
                    rawbpf::attach_xdp(self.program.as_fd(), self.ifindex)
                })
                .context("attaching the TAP program to the gateway's input")?;
                self.link = Some(l);
            }
            // Detached now, not when the link's last reference goes.
            (false, Some(l)) => rawbpf::detach_link(&l).context("detaching the TAP program")?,
            (false, None) => {}
        }
        Ok(())
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Whether the gateway, not the generator, limited a window: its input ring refused frames,
/// or the generator's sends were refused, for more than 1% of what was offered.
fn gateway_saturated(r: &Sample) -> bool {
    r.gw_input_drop_pps + r.generator_refused_pps.unwrap_or(0.0) > 0.01 * r.offered_pps
}

fn sample_json(r: &Sample, round: usize) -> Value {
    json!({
        "round": round,
        "gateway_saturated": gateway_saturated(r),
        "seconds": r.seconds,
        "delivered_pps": r.delivered_pps,
        "offered_pps": r.offered_pps,
        "gw_input_drop_pps": r.gw_input_drop_pps,
        "sink_drop_pps": r.sink_drop_pps,
        "generator_sent_pps": r.generator_sent_pps,
        "generator_refused_pps": r.generator_refused_pps,
        "cpu_busy": r.cpu_busy,
    })
}

fn print_sample(mode: Mode, round: usize, r: &Sample) {
    println!(
        "  round {round} {:<8} delivered {:.3} Mpps, offered {:.3}, input drops {:.3}, sink drops {:.3}, CPU busy {:?}",
        mode.name(),
        r.delivered_pps / 1e6,
        r.offered_pps / 1e6,
        r.gw_input_drop_pps / 1e6,
        r.sink_drop_pps / 1e6,
        r.cpu_busy.iter().map(|c| (c * 100.0).round()).collect::<Vec<_>>()
    );
}

/// One (mode, frame size, flows) point and its windows.
struct Point {
    mode: Mode,
    frame_len: usize,
    flows: u32,
    runs: Vec<(usize, Sample)>,
    napi_pinned: bool,
    xdp_counters: Option<(u64, u64, u64, u64)>,
}

impl Point {
    fn new(mode: Mode, g: &Generator) -> Point {
        Point {
            mode,
            frame_len: g.frame_len,
            flows: g.flows,
            runs: Vec::new(),
            napi_pinned: true,
            xdp_counters: None,
        }
    }

    fn delivered(&self) -> f64 {
        median(
            &self
                .runs
                .iter()
                .map(|r| r.1.delivered_pps)
                .collect::<Vec<_>>(),
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "mode": self.mode.name(),
            "frame_bytes": self.frame_len,
            "flows": self.flows,
            "delivered_pps": self.delivered(),
            "napi_pinned": self.napi_pinned,
            "xdp_counters": self.xdp_counters.map(|c| json!({
                "fast_path": c.0, "new_flows": c.1, "pass_no_neighbour": c.2, "drops": c.3,
            })),
            "runs": self.runs.iter().map(|(round, r)| sample_json(r, *round)).collect::<Vec<_>>(),
        })
    }
}

fn add_counters(a: (u64, u64, u64, u64), b: (u64, u64, u64, u64)) -> (u64, u64, u64, u64) {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2, a.3 + b.3)
}

fn delta(after: (u64, u64, u64, u64), before: (u64, u64, u64, u64)) -> (u64, u64, u64, u64) {
    (
        after.0 - before.0,
        after.1 - before.1,
        after.2 - before.2,
        after.3 - before.3,
    )
}

fn place_napi(topo: &Topology, mode: Mode, notes: &mut Vec<String>) -> bool {
    let placed = rate::place_napi(topo);
    if !placed {
        let note = format!(
            "{}: could not run and pin the NAPI threads (threaded NAPI); CPU placement was left to the kernel",
            mode.name()
        );
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    placed
}

/// Measure part (b) with generators of `kind`. On return the data path is shut down
/// (`dp` is `None`): the kernel reference runs without it.
pub fn run(
    topo: &Topology,
    dp: &mut Option<Datapath>,
    input: &PolicyInput,
    kind: Kind,
    s: &Settings,
    out: &Path,
    notes: &mut Vec<String>,
) -> Result<Value> {
    let mut generators = Vec::new();
    for size in FRAME_SIZES {
        for flows in FLOW_COUNTS {
            generators.push(Arc::new(Generator::new(topo, kind, size, flows)?));
        }
    }
    let counters = rate::Counters::open(topo)?;

    // The twin is loaded once, next to the attached data path.
    let nft_path = out.join("datapath-nftables.nft");
    let text = nft::render(input, GW_IN, &client_groups());
    std::fs::write(&nft_path, &text).with_context(|| format!("writing {}", nft_path.display()))?;
    let t = Instant::now();
    topo::exec(&topo.gw, &["nft", "-f", &nft_path.to_string_lossy()])
        .context("loading the nftables twin")?;
    let mut nft_info = json!({
        "ruleset_file": nft_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "ruleset_lines": text.lines().count(),
        "load_seconds": t.elapsed().as_secs_f64(),
    });

    let d = dp.as_mut().context("the data path is not loaded")?;
    let mut tap = TapSwitch::take_over(d, topo)?;
    let d = dp.as_ref().context("the data path is not loaded")?;
    let mut points: Vec<Point> = Vec::new();
    let mut round_ratios: Vec<Vec<f64>> = Vec::new();
    for g in &generators {
        println!(
            "bench-datapath: (b) {} B {} flow(s), XDP and nftables interleaved over {} rounds",
            g.frame_len, g.flows, s.rounds
        );
        let mut xdp = Point::new(Mode::Xdp, g);
        let mut twin = Point::new(Mode::Nft, g);
        let mut ratios = Vec::new();
        for round in 0..s.rounds {
            if stop_requested() {
                bail!("interrupted");
            }
            let order = if round % 2 == 0 {
                [Mode::Xdp, Mode::Nft]
            } else {
                [Mode::Nft, Mode::Xdp]
            };
            let mut delivered = [f64::NAN; 2];
            for mode in order {
                tap.set(mode == Mode::Xdp)?;
                let placed = place_napi(topo, mode, notes);
                let before = event_counters(d)?;
                let r = rate::measure(&counters, g, s.warmup, s.window)?;
                let seen = delta(event_counters(d)?, before);
                print_sample(mode, round, &r);
                let p = if mode == Mode::Xdp {
                    delivered[0] = r.delivered_pps;
                    &mut xdp
                } else {
                    // The data path must not see a frame while the twin is measured.
                    let handled = seen.0 + seen.1 + seen.2 + seen.3;
                    if handled > 0 {
                        bail!(
                            "the data path handled {handled} packets during an nftables window: it was not detached"
                        );
                    }
                    delivered[1] = r.delivered_pps;
                    &mut twin
                };
                p.napi_pinned &= placed;
                if mode == Mode::Xdp {
                    p.xdp_counters = Some(add_counters(p.xdp_counters.unwrap_or_default(), seen));
                }
                p.runs.push((round, r));
            }
            ratios.push(delivered[0] / delivered[1]);
        }
        points.push(xdp);
        points.push(twin);
        round_ratios.push(ratios);
    }
    tap.set(false)?;
    let ct = topo::exec(
        &topo.gw,
        &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
    )
    .unwrap_or_default();
    nft_info["conntrack_entries_after"] = json!(ct.trim().parse::<u64>().ok());

    // ---- plain kernel forwarding, for reference ----------------------------------------------
    drop(tap);
    if let Some(d) = dp.take() {
        d.shutdown(false)?;
    }
    // The data path's shutdown stops the "TAP" forwarding; the kernel must forward here.
    topo::exec(
        &topo.gw,
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{GW_IN}.forwarding=1"),
        ],
    )?;
    topo::exec(&topo.gw, &["nft", "delete", "table", "inet", nft::TABLE])?;
    for g in &generators {
        println!(
            "bench-datapath: (b) kernel forwarding {} B {} flow(s)",
            g.frame_len, g.flows
        );
        let mut p = Point::new(Mode::Kernel, g);
        p.napi_pinned = place_napi(topo, Mode::Kernel, notes);
        for rep in 0..s.repetitions {
            let r = rate::measure(&counters, g, s.warmup, s.window)?;
            print_sample(Mode::Kernel, rep, &r);
            p.runs.push((rep, r));
        }
        points.push(p);
    }

    for p in &points {
        let unsaturated = p.runs.iter().filter(|(_, r)| !gateway_saturated(r)).count();
        if unsaturated > 0 {
            let ratio = match p.mode {
                Mode::Xdp => ", and the XDP/nftables ratio with it",
                Mode::Nft => ", and the XDP/nftables ratio an upper bound",
                Mode::Kernel => "",
            };
            notes.push(format!(
                "{} at {} B, {} flow(s): in {unsaturated} of {} windows the gateway refused (almost) no frame: the generator may have been the limit, so the figure may be a lower bound{ratio}",
                p.mode.name(),
                p.frame_len,
                p.flows,
                p.runs.len()
            ));
        }
    }
    let get = |m: Mode, size: usize, flows: u32| {
        points
            .iter()
            .find(|p| p.mode == m && p.frame_len == size && p.flows == flows)
            .map(Point::delivered)
            .unwrap_or(f64::NAN)
    };
    let mut ratios = Vec::new();
    let mut min_ratio = f64::INFINITY;
    for (g, rr) in generators.iter().zip(&round_ratios) {
        let (size, flows) = (g.frame_len, g.flows);
        let ratio = median(rr);
        min_ratio = min_ratio.min(ratio);
        ratios.push(json!({
            "frame_bytes": size, "flows": flows,
            "xdp_pps": get(Mode::Xdp, size, flows),
            "nftables_pps": get(Mode::Nft, size, flows),
            "kernel_forwarding_pps": get(Mode::Kernel, size, flows),
            "ratio": ratio,
            "ratio_min": rr.iter().copied().fold(f64::INFINITY, f64::min),
            "ratio_max": rr.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            "round_ratios": rr,
        }));
    }
    Ok(json!({
        "measured": true,
        "method": format!("generator namespace -> gateway namespace -> sink namespace over veth pairs; the generator is {}; the sink's veth runs an XDP_DROP program and packets/s is the delta of its rx_packets over the window; the gateway's input NAPI runs in a kernel thread pinned to the forwarding CPU, the generator and the sink share the other CPU. XDP and the nftables twin alternate window by window (XDP first in even rounds, nftables first in odd ones); the twin stays loaded and the TAP program is attached for the XDP windows and detached for the nftables ones; ratio = median over rounds of XDP/nftables in the same round. Kernel forwarding (no rules) runs afterwards, for reference", kind.describe()),
        "frame_bytes_note": "frame length without the 4-byte FCS (veth has none)",
        "warmup_seconds": s.warmup.as_secs_f64(),
        "measure_seconds": s.window.as_secs_f64(),
        "rounds": s.rounds,
        "repetitions": s.repetitions,
        "forward_cpu": FORWARD_CPU,
        "generator_cpu": GEN_CPU,
        "points": points.iter().map(Point::to_json).collect::<Vec<_>>(),
        "ratios": ratios,
        "min_ratio": min_ratio,
        "target_ratio": RATIO_TARGET,
        "meets_target": min_ratio >= RATIO_TARGET,
        "nftables": nft_info,
    }))
}

#[cfg(test)]
mod checks {
    use super::*;

    #[test]
    fn median_of_odd_even_and_with_non_finite_values() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0, f64::INFINITY]), 5.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn saturated_when_the_gateway_or_the_generator_refused_frames() {
        let s = |drops: f64, refused: Option<f64>| Sample {
            offered_pps: 1e6,
            gw_input_drop_pps: drops,
            generator_refused_pps: refused,
            ..Sample::default()
        };
        assert!(!gateway_saturated(&s(0.0, None)));
        assert!(!gateway_saturated(&s(5e3, Some(4e3))));
        assert!(gateway_saturated(&s(2e4, None)));
        assert!(gateway_saturated(&s(0.0, Some(2e4))));
    }
}
