//! Part (a): nanoseconds per packet from `BPF_PROG_TEST_RUN`, with the full policy and
//! 100,000 conntrack entries loaded.
//!
//! Every run uses `repeat = 1` and the duration the kernel reports for it (it reads the clock
//! right before and after the program, so the figure includes one clock read, ~20-40 ns,
//! which the baseline program shows). `repeat > 1` would be wrong for the forwarding cases:
//! the program would see its own rewrite (the translated source address) on the second run
//! and drop the packet as spoofed. A second pass reads the kernel's BPF run-time statistics
//! (`BPF_ENABLE_STATS`), which time the program alone.
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::PacketBuilder;
use portcullis::datapath::Datapath;
use portcullis_common::{PROG_BASELINE, PROG_TAP};

use crate::{
    policy::{fill_client, BENCH_CLIENT, BENCH_SLOT, FILL_CLIENTS, FILL_FLOWS_PER_CLIENT},
    rawbpf::xdp_md,
    stop_requested,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// Frames are 64 bytes (Ethernet + IPv4 + UDP/TCP + payload, no FCS).
pub const FRAME_LEN: usize = 64;

/// The session slot of a bench or fill client (as `main` writes the clients map): frames
/// carry it in their source MAC, as the agent's worker writes them.
fn sender_mac(src: Ipv4Addr) -> [u8; 6] {
    let slot = if src == BENCH_CLIENT {
        BENCH_SLOT
    } else {
        (0..FILL_CLIENTS)
            .find(|i| fill_client(*i) == src)
            .map_or(u32::MAX, |i| i + 1)
    };
    portcullis_common::session_mac(slot)
}

pub fn udp_frame(
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    PacketBuilder::ethernet2(sender_mac(src), dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut f, &[0u8; FRAME_LEN - 42])
        .expect("building a UDP frame");
    f
}

fn tcp_syn_frame(
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_LEN);
    PacketBuilder::ethernet2(sender_mac(src), dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1, 64_240)
        .syn()
        .write(&mut f, &[0u8; FRAME_LEN - 54])
        .expect("building a TCP frame");
    f
}

fn run_once(prog: &Xdp, frame: &[u8], ctx: &[u8]) -> Result<(u32, u32)> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(ctx),
            repeat: 1,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as u32))
}

/// Summary of one case's per-run durations.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub name: &'static str,
    pub description: &'static str,
    pub verdict: &'static str,
    pub runs: usize,
    pub median: f64,
    pub mean: f64,
    pub p10: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    /// Mean run time of the program alone from the kernel's BPF run-time statistics.
    pub prog_only_mean: f64,
}

fn summarize(
    name: &'static str,
    description: &'static str,
    verdict: &'static str,
    mut d: Vec<u32>,
) -> CaseResult {
    d.sort_unstable();
    let q = |p: f64| f64::from(d[((d.len() - 1) as f64 * p).round() as usize]);
    CaseResult {
        name,
        description,
        verdict,
        runs: d.len(),
        median: q(0.5),
        mean: d.iter().map(|&x| f64::from(x)).sum::<f64>() / d.len() as f64,
        p10: q(0.1),
        p90: q(0.9),
        p99: q(0.99),
        min: f64::from(d[0]),
        prog_only_mean: f64::NAN,
    }
}

pub struct ProgRun {
    pub fill_seconds: f64,
    pub conntrack_entries: usize,
    pub cases: Vec<CaseResult>,
}

/// Frame of pre-loaded flow `i` (client `i % FILL_CLIENTS`, a port per flow, and a
/// destination per client so no two flows claim the same SNAT reply tuple).
fn fill_frame(mac: [u8; 6], i: u32) -> Vec<u8> {
    let c = i % FILL_CLIENTS;
    let k = i / FILL_CLIENTS;
    udp_frame(
        mac,
        fill_client(c),
        1024 + k as u16,
        Ipv4Addr::new(198, 18, 0, 10 + c as u8),
        9,
    )
}

/// Must run on a thread inside the gateway namespace (the context names `pcbin`).
pub fn run(
    dp: &mut Datapath,
    gw_in_ifindex: u32,
    gw_in_mac: [u8; 6],
    runs_per_case: usize,
) -> Result<ProgRun> {
    let ctx = xdp_md(FRAME_LEN, gw_in_ifindex);
    let fills = FILL_CLIENTS * FILL_FLOWS_PER_CLIENT;

    // ---- 100,000 conntrack entries, admitted by the program itself -----------------------
    let t = std::time::Instant::now();
    {
        let tap = dp.program(PROG_TAP).context("TAP program")?;
        for i in 0..fills {
            if i % 4096 == 0 && stop_requested() {
                bail!("interrupted");
            }
            let (verdict, _) = run_once(tap, &fill_frame(gw_in_mac, i), &ctx)?;
            if verdict != XDP_REDIRECT {
                bail!("pre-loading flow {i}: verdict {verdict}, expected XDP_REDIRECT (4)");
            }
        }
    }
    let fill_seconds = t.elapsed().as_secs_f64();
    let conntrack_entries = dp.maps.ct_entries()?.len();

    // ---- the cases ------------------------------------------------------------------------
    let sink = Ipv4Addr::new(198, 18, 0, 2);
    let established = udp_frame(gw_in_mac, BENCH_CLIENT, 40_000, sink, 9);
    let not_authorized = udp_frame(
        gw_in_mac,
        BENCH_CLIENT,
        40_001,
        Ipv4Addr::new(198, 19, 0, 1),
        9,
    );
    let sg_denied = tcp_syn_frame(gw_in_mac, BENCH_CLIENT, 40_002, sink, 80);
    // Admit the established flow.
    {
        let tap = dp.program(PROG_TAP).context("TAP program")?;
        let (v, _) = run_once(tap, &established, &ctx)?;
        if v != XDP_REDIRECT {
            bail!("opening the established flow: verdict {v}");
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Case {
        Baseline,
        FastHot,
        FastSpread,
        NewFlow,
        NotAuthorized,
        SgDenied,
    }
    let cases = [
        Case::Baseline,
        Case::FastHot,
        Case::FastSpread,
        Case::NewFlow,
        Case::NotAuthorized,
        Case::SgDenied,
    ];
    let mut durations: Vec<Vec<u32>> = vec![Vec::with_capacity(runs_per_case); cases.len()];
    let mut new_port: u32 = 1024;
    let mut spread: u32 = 0;
    let mut frame_for = |case: Case| -> Result<(Vec<u8>, u32)> {
        Ok(match case {
            Case::Baseline => (established.clone(), XDP_PASS),
            Case::FastHot => (established.clone(), XDP_REDIRECT),
            Case::FastSpread => {
                // Walk the pre-loaded flows with a stride, so consecutive runs touch
                // unrelated hash buckets.
                spread = (spread + 7_919) % fills;
                (fill_frame(gw_in_mac, spread), XDP_REDIRECT)
            }
            Case::NewFlow => {
                // A source port never used before: conntrack has no entry for it.
                new_port += 1;
                if new_port > 65_535 {
                    bail!("ran out of fresh source ports for new flows");
                }
                let sport = new_port as u16;
                let dst = Ipv4Addr::new(198, 18, 0, 3);
                (
                    udp_frame(gw_in_mac, BENCH_CLIENT, sport, dst, 9),
                    XDP_REDIRECT,
                )
            }
            Case::NotAuthorized => (not_authorized.clone(), XDP_DROP),
            Case::SgDenied => (sg_denied.clone(), XDP_DROP),
        })
    };
    let prog_of = |case: Case| {
        if case == Case::Baseline {
            PROG_BASELINE
        } else {
            PROG_TAP
        }
    };

    // Pass 1: kernel-reported duration per run. Interleave the cases in rounds so drift
    // (frequency, other load) hits them alike.
    let rounds = 10;
    let per_round = runs_per_case.div_ceil(rounds);
    for _ in 0..rounds {
        if stop_requested() {
            bail!("interrupted");
        }
        for (ci, case) in cases.iter().enumerate() {
            let prog = dp.program(prog_of(*case)).context("program")?;
            for _ in 0..per_round {
                let (frame, want) = frame_for(*case)?;
                let (verdict, ns) = run_once(prog, &frame, &ctx)?;
                if verdict != want {
                    bail!("case {ci}: verdict {verdict}, expected {want}: the benchmark would measure another path");
                }
                durations[ci].push(ns);
            }
        }
    }

    // Pass 2: the kernel's own run-time accounting of the program (BPF_ENABLE_STATS), which
    // times the program alone, without BPF_PROG_TEST_RUN's setup around it. Enabled only
    // for this pass (the fd switches it off again), since it costs a clock read per run.
    let mut prog_only = Vec::with_capacity(cases.len());
    {
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (run time)")?;
        let runs = (runs_per_case / 2).max(100);
        for case in cases {
            let prog = dp.program(prog_of(case)).context("program")?;
            let before = prog.info().context("program info")?;
            for _ in 0..runs {
                let (frame, _) = frame_for(case)?;
                run_once(prog, &frame, &ctx)?;
            }
            let after = prog.info().context("program info")?;
            let n = after.run_count().saturating_sub(before.run_count());
            let t = after.run_time().saturating_sub(before.run_time());
            prog_only.push(if n == 0 {
                f64::NAN
            } else {
                t.as_nanos() as f64 / n as f64
            });
        }
    }
    let mut it = durations.into_iter();
    let mut next = || it.next().expect("one duration list per case");
    let mut cases = vec![
        summarize(
            "baseline",
            "XDP_PASS baseline program (portcullis_baseline_pass), same frame",
            "XDP_PASS",
            next(),
        ),
        summarize(
            "fast_path",
            "established flow, same flow every run (hot caches)",
            "XDP_REDIRECT",
            next(),
        ),
        summarize(
            "fast_path_100k",
            "established flow, walking the 100,000 pre-loaded flows",
            "XDP_REDIRECT",
            next(),
        ),
        summarize(
            "new_flow",
            "new flow: authorization, route, security groups, SNAT claim, conntrack insert",
            "XDP_REDIRECT",
            next(),
        ),
        summarize(
            "denied_not_authorized",
            "denied by authorization (longest prefix names other groups)",
            "XDP_DROP",
            next(),
        ),
        summarize(
            "denied_security_group",
            "TCP SYN denied by the security groups (after authorization and route)",
            "XDP_DROP",
            next(),
        ),
    ];
    for (c, p) in cases.iter_mut().zip(prog_only) {
        c.prog_only_mean = p;
    }
    Ok(ProgRun {
        fill_seconds,
        conntrack_entries,
        cases,
    })
}

/// Cost per packet at one policy size (the rule-count sweep, after [`run`]): the hot fast
/// path, a new flow and a packet denied by authorization, `runs` each, interleaved in 10
/// rounds. `point` picks a sink address of its own, so new flows never repeat a 5-tuple of
/// an earlier point. Must run on a thread inside the gateway namespace.
pub fn rule_point(
    dp: &mut Datapath,
    gw_in_ifindex: u32,
    gw_in_mac: [u8; 6],
    runs: usize,
    point: u8,
) -> Result<Vec<CaseResult>> {
    let ctx = xdp_md(FRAME_LEN, gw_in_ifindex);
    let sink = Ipv4Addr::new(198, 18, 0, 2);
    let established = udp_frame(gw_in_mac, BENCH_CLIENT, 40_000, sink, 9);
    let not_authorized = udp_frame(
        gw_in_mac,
        BENCH_CLIENT,
        40_001,
        Ipv4Addr::new(198, 19, 0, 1),
        9,
    );
    let new_dst = Ipv4Addr::new(198, 18, 0, 200u8.saturating_add(point));
    let tap = dp.program(PROG_TAP).context("TAP program")?;
    // The policy generation changed: the first packet of the flow re-validates it.
    let (v, _) = run_once(tap, &established, &ctx)?;
    if v != XDP_REDIRECT {
        bail!("re-validating the established flow: verdict {v}");
    }
    let mut d: [Vec<u32>; 3] = Default::default();
    let mut port: u32 = 1024;
    let per_round = runs.div_ceil(10);
    for _ in 0..10 {
        if stop_requested() {
            bail!("interrupted");
        }
        for (ci, dur) in d.iter_mut().enumerate() {
            for _ in 0..per_round {
                let (frame, want) = match ci {
                    0 => (established.clone(), XDP_REDIRECT),
                    1 => {
                        port += 1;
                        if port > 65_535 {
                            bail!("ran out of fresh source ports for new flows");
                        }
                        (
                            udp_frame(gw_in_mac, BENCH_CLIENT, port as u16, new_dst, 9),
                            XDP_REDIRECT,
                        )
                    }
                    _ => (not_authorized.clone(), XDP_DROP),
                };
                let (verdict, ns) = run_once(tap, &frame, &ctx)?;
                if verdict != want {
                    bail!("rule sweep case {ci}: verdict {verdict}, expected {want}");
                }
                dur.push(ns);
            }
        }
    }
    let [a, b, c] = d;
    Ok(vec![
        summarize("fast_path", "established flow, hot", "XDP_REDIRECT", a),
        summarize("new_flow", "new flow", "XDP_REDIRECT", b),
        summarize(
            "denied_not_authorized",
            "denied by authorization",
            "XDP_DROP",
            c,
        ),
    ])
}
