//! `bench-datapath`: the data-path benchmark behind `cargo xtask bench datapath`.
//!
//! ```text
//! bench-datapath [--quick] [--out DIR] [--generator auto|live-frames|af-packet]
//!                [--prog-test-run-only]
//! ```
//!
//! Builds three network namespaces (generator, gateway, sink), loads the XDP data path in
//! the gateway with 10,000 authorization rules and 1,000 security-group rules, and measures
//! (a) ns/packet with BPF_PROG_TEST_RUN (100,000 conntrack entries loaded) and (b) packets/s
//! forwarded by the gateway running the data path, then an nftables twin of the same policy,
//! interleaved window by window, then plain kernel forwarding, and (c) the deployed input:
//! frames written into a TAP carrying the data path (`tapwrite`). The traffic generator is the
//! first that works here (live frames, else AF_PACKET; see `generator`); with none, (b) is
//! reported as not measured and the program still succeeds. Writes `datapath.json`, `datapath.md` and `datapath.svg` to
//! DIR (default `target/bench`). Needs root. See docs/benchmarks.md for the method.
//!
//! All traffic stays inside the namespaces it creates; every loop is bounded in count and
//! time; namespaces, links and pins are removed on exit, on error and on Ctrl-C (and by
//! `cargo xtask cleanup` if the process is killed outright).
mod forwarding;
mod generator;
mod policy;
mod progrun;
mod rate;
mod rawbpf;
mod report;
mod tapwrite;
mod topo;

use std::{
    os::fd::AsFd,
    path::PathBuf,
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::programs::XdpMode;
use portcullis::{
    datapath::{Datapath, DatapathOptions},
    policy::{compile, compile_with_previous},
    reconcile,
};
use portcullis_common::{ClientInfo, DropReason, Event, DEFAULT_FLOWS_PER_CLIENT};
use serde_json::{json, Value};
use tests::gateway::PinRoot;

use crate::{
    generator::Request,
    policy::{
        bench_policy, bench_policy_with_rules, fill_client, BENCH_CLIENT, BENCH_MAX_FLOWS,
        BENCH_SLOT, FILL_CLIENTS,
    },
    topo::{in_ns, Topology, GW_IN, GW_OUT, SINK_IF},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGUSR1 only interrupts the generator's long BPF_PROG_RUN call (see `rate::start`).
extern "C" fn on_wakeup(_: libc::c_int) {}

/// True after SIGINT/SIGTERM: every loop checks it and unwinds, so cleanup runs.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

const FAST_PATH_TARGET_NS: f64 = 250.0;
pub const RATIO_TARGET: f64 = 3.0;
pub const FRAME_SIZES: [usize; 2] = [64, 1400];
pub const FLOW_COUNTS: [u32; 2] = [1, 10_000];

struct Args {
    quick: bool,
    out: PathBuf,
    generator: Request,
    /// Only part (a), the `BPF_PROG_TEST_RUN` cases: a data-path change is judged in seconds,
    /// not in the suite's minutes.
    prog_test_run_only: bool,
}

/// Why (a')-(c) are missing from a `--prog-test-run-only` report.
const PROG_TEST_RUN_ONLY: &str = "not run: --prog-test-run-only (part (a) only)";

pub struct Settings {
    runs_per_case: usize,
    /// Authorization rule counts of the cost-per-packet sweep, and runs per case per point.
    rule_counts: Vec<usize>,
    rule_sweep_runs: usize,
    pub warmup: Duration,
    pub window: Duration,
    /// Rounds of one XDP and one nftables window per forwarding point.
    pub rounds: usize,
    /// Windows per point of the kernel-forwarding reference.
    pub repetitions: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        out: PathBuf::from("target/bench"),
        generator: Request::Auto,
        prog_test_run_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--prog-test-run-only" => args.prog_test_run_only = true,
            "--out" => args.out = it.next().context("--out needs a directory")?.into(),
            "--generator" => {
                args.generator = Request::parse(&it.next().context("--generator needs a name")?)?
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench-datapath [--quick] [--out DIR] [--generator auto|live-frames|af-packet]\n\
                     \x20                     [--prog-test-run-only]\n\n\
                     Data-path benchmark (needs root): BPF_PROG_TEST_RUN ns/packet and forwarding\n\
                     rate of XDP vs an nftables twin. Writes DIR/datapath.{{json,md,svg}}\n\
                     (default DIR: target/bench). --quick: short runs (about a minute) whose\n\
                     figures only show that the harness works. --generator: the forwarding\n\
                     benchmark's traffic generator; auto (default) takes live frames, else\n\
                     AF_PACKET, else reports the forwarding rate as not measured; naming one\n\
                     uses only that one and fails if it cannot send. --prog-test-run-only: part (a)\n\
                     alone (the BPF_PROG_TEST_RUN cases, about a minute), no rule sweep,\n\
                     forwarding or TAP input."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.prog_test_run_only && args.generator != Request::Auto {
        bail!("--generator applies to part (b), which --prog-test-run-only leaves out");
    }
    Ok(args)
}

fn main() -> ExitCode {
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR1, on_wakeup as *const () as libc::sighandler_t);
    }
    match parse_args().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-datapath: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The data path's (fast path, new flows, pass_no_neighbour, drops) counters so far.
pub fn event_counters(dp: &Datapath) -> Result<(u64, u64, u64, u64)> {
    let ev = dp.maps.event_counters()?;
    let drops: u64 = dp.maps.drop_counters()?.values().sum();
    Ok((
        ev[&Event::FastPath],
        ev[&Event::NewFlow],
        ev[&Event::PassNoNeighbour],
        drops,
    ))
}

/// Compile `policy` keeping the group bits of `prev` and apply it (a new generation).
fn apply_policy(
    d: &mut Datapath,
    policy: &portcullis::policy::PolicyInput,
    prev: &std::collections::BTreeMap<String, u16>,
) -> Result<portcullis::policy::CompiledPolicy> {
    let c = compile_with_previous(policy, &|x| portcullis::datapath::ifindex(x), Some(prev))
        .map_err(|errs| anyhow!("does not compile: {} errors", errs.len()))?;
    reconcile::reconcile(&mut d.maps, &c).map_err(|e| anyhow!("applying: {e}"))?;
    Ok(c)
}

fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP, nftables): run `cargo xtask bench` as root");
    }
    let started = Instant::now();
    let mut s = if args.quick {
        Settings {
            runs_per_case: 2_000,
            rule_counts: vec![100, 10_000],
            rule_sweep_runs: 500,
            warmup: Duration::from_millis(300),
            window: Duration::from_millis(700),
            rounds: 3,
            repetitions: 1,
        }
    } else {
        Settings {
            runs_per_case: 20_000,
            rule_counts: vec![10, 100, 1_000, 10_000],
            rule_sweep_runs: 5_000,
            warmup: Duration::from_secs(1),
            window: Duration::from_secs(4),
            rounds: 5,
            repetitions: 3,
        }
    };
    if args.prog_test_run_only {
        s.rule_counts.clear();
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let machine = tests::benchreport::machine();
    let mut notes: Vec<String> = Vec::new();

    // ---- topology, sink, data path ----------------------------------------------------------
    println!("bench-datapath: building namespaces");
    let topo = Topology::build()?;
    let pins = PinRoot(PathBuf::from(format!(
        "/sys/fs/bpf/portcullis-test-bench-{}",
        std::process::id()
    )));
    let sink_prog = rawbpf::load_xdp("pcb_sink", &rawbpf::drop_program())?;
    let sink_ifindex = topo::ifindex(&topo.sink, SINK_IF)?;
    let _sink_link = in_ns(&topo.sink.name, || {
        rawbpf::attach_xdp(sink_prog.as_fd(), sink_ifindex)
    })
    .context("attaching the sink's XDP_DROP program")?;
    // Before the data path is loaded: the probes' frames are forwarded by the kernel.
    let generator = if args.prog_test_run_only {
        generator::Choice::skipped(args.generator, PROG_TEST_RUN_ONLY)
    } else {
        generator::choose(&topo, args.generator)?
    };
    match (generator.kind, args.generator) {
        (Some(k), _) => {
            println!("bench-datapath: traffic generator for (b): {}", k.name());
            if !generator.refused.is_empty() {
                notes.push(format!(
                    "forwarding generator: {} (fallback; {})",
                    k.name(),
                    generator
                        .refused
                        .iter()
                        .map(|(k, why)| format!("{} refused: {why}", k.name()))
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
        (None, Request::Only(k)) => bail!(
            "the {} generator was asked for and does not work here: {}",
            k.name(),
            generator.refusals()
        ),
        (None, Request::Auto) => {
            println!(
                "bench-datapath: (b) will not be measured: {}",
                generator.not_measured_reason()
            );
            notes.push(format!(
                "forwarding rate not measured: {}",
                generator.not_measured_reason()
            ));
        }
    }
    let gw_in_ifindex = topo::ifindex(&topo.gw, GW_IN)?;

    let input = bench_policy();
    println!(
        "bench-datapath: loading the data path and {} authorization rules",
        input.authorization_rules.len()
    );
    let (dp, compiled) = in_ns(&topo.gw.name, || -> Result<_> {
        let dp = Datapath::load(DatapathOptions {
            endpoint: "bench".into(),
            pin_root: pins.0.clone(),
            tap_ifindex: gw_in_ifindex,
            tap_name: GW_IN.into(),
            tap_mac: topo.gw_in_mac,
            gateway: input.gateway_addr,
            gateway_ports: input.gateway_ports.clone(),
            targets: vec![GW_OUT.into()],
            max_flows: None,
            deny_events_per_sec: 100,
            mode: XdpMode::Driver,
        })?;
        let compiled = compile(&input, &|n| portcullis::datapath::ifindex(n)).map_err(|errs| {
            anyhow!(
                "the benchmark policy does not compile: {}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        Ok((dp, compiled))
    })?;
    let mut dp = Some(dp);
    {
        let d = dp.as_mut().expect("loaded");
        reconcile::reconcile(&mut d.maps, &compiled)
            .map_err(|e| anyhow!("applying the policy: {e}"))?;
        let bench_groups = compiled.groups_bitmap(["bench"]);
        d.maps.upsert_client(
            BENCH_CLIENT,
            ClientInfo {
                groups: bench_groups,
                slot: BENCH_SLOT,
                max_flows: BENCH_MAX_FLOWS,
            },
        )?;
        for i in 0..FILL_CLIENTS {
            d.maps.upsert_client(
                fill_client(i),
                ClientInfo {
                    groups: bench_groups,
                    slot: i + 1,
                    max_flows: DEFAULT_FLOWS_PER_CLIENT,
                },
            )?;
        }
    }
    let setup = json!({
        "authorization_rules": input.authorization_rules.len(),
        "authorization_prefixes": compiled.authz.len(),
        "groups": compiled.group_bits.len(),
        "security_group_rules": input.security_groups.iter().map(|g| g.egress.len()).sum::<usize>(),
        "security_group_prefixes": compiled.sg_nodes.len(),
        "security_group_port_ranges": compiled.sg_ranges.len(),
        "routes": input.routes.len(),
        "client_sessions": 1 + FILL_CLIENTS,
        "deny_events_per_sec": 100,
        "xdp_mode": "native (veth driver)",
    });

    // ---- (a) BPF_PROG_TEST_RUN --------------------------------------------------------------
    println!(
        "bench-datapath: (a) BPF_PROG_TEST_RUN: pre-loading 100,000 flows, {} runs per case",
        s.runs_per_case
    );
    let gw_name = topo.gw.name.clone();
    let gw_in_mac = topo.gw_in_mac;
    let runs_per_case = s.runs_per_case;
    let d = dp.as_mut().expect("loaded");
    let pr = std::thread::scope(|sc| {
        sc.spawn(|| {
            topo::pin_to_cpu(0, rate::FORWARD_CPU);
            topo::boost(0);
            in_ns(&gw_name, || {
                progrun::run(d, gw_in_ifindex, gw_in_mac, runs_per_case)
            })
        })
        .join()
        .map_err(|_| anyhow!("BPF_PROG_TEST_RUN thread panicked"))?
    })?;
    let case_json: Vec<Value> = pr
        .cases
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "description": c.description, "verdict": c.verdict,
                "runs": c.runs, "median_ns": c.median, "mean_ns": c.mean, "p10_ns": c.p10,
                "p90_ns": c.p90, "p99_ns": c.p99, "min_ns": c.min,
                "program_only_mean_ns": c.prog_only_mean,
            })
        })
        .collect();
    let median_of = |n: &str| {
        pr.cases
            .iter()
            .find(|c| c.name == n)
            .map(|c| c.median)
            .unwrap_or(f64::NAN)
    };
    let (fast, fast100k) = (median_of("fast_path"), median_of("fast_path_100k"));
    // The ratio to XDP_PASS measured in the same interleaved rounds: the figure that carries
    // over between machines (the baseline holds the test-run glue and the clock reads).
    let baseline = median_of("baseline");
    let prog_test_run = json!({
        "method": "BPF_PROG_TEST_RUN via aya TestRun, repeat = 1 per run (the data path rewrites the packet, so a second repetition would see its own translation), ctx_in names the gateway's input veth, kernel-reported duration per run; cases interleaved in 10 rounds; runs on a thread pinned to CPU 1 at nice -20. program_only_mean_ns: a second pass with BPF_ENABLE_STATS (run time), mean of the program's own run time (half as many runs)",
        "runs_per_case": s.runs_per_case,
        "conntrack_entries": pr.conntrack_entries,
        "preload_seconds": pr.fill_seconds,
        "cases": case_json,
        "target_fast_path_ns": FAST_PATH_TARGET_NS,
        "fast_path_median_ns": fast,
        "fast_path_100k_median_ns": fast100k,
        "baseline_median_ns": baseline,
        "fast_path_over_baseline": fast / baseline,
        "fast_path_100k_over_baseline": fast100k / baseline,
        "fast_path_meets_target": fast <= FAST_PATH_TARGET_NS && fast100k <= FAST_PATH_TARGET_NS,
    });
    for c in &pr.cases {
        println!(
            "  {:<24} median {:>6.0} ns  p90 {:>6.0} ns  program alone (bpf_stats) {:>6.0} ns",
            c.name, c.median, c.p90, c.prog_only_mean
        );
    }
    println!(
        "  fast path / baseline: hot {:.2}x, 100k flows {:.2}x",
        fast / baseline,
        fast100k / baseline
    );

    // ---- (a') cost per packet vs authorization rules ----------------------------------------
    // The same program with smaller policies (group bits kept), then the full one again for
    // (b). The 100,000 pre-loaded flows stay in conntrack throughout.
    let mut rule_sweep = Vec::new();
    let mut prev_bits = compiled.group_bits.clone();
    for (i, &n) in s.rule_counts.iter().enumerate() {
        if stop_requested() {
            bail!("interrupted");
        }
        let policy = bench_policy_with_rules(n);
        let d = dp.as_mut().expect("loaded");
        // Inside the gateway namespace: the compiler looks up the target's ifindex.
        let c = in_ns(&topo.gw.name, || {
            apply_policy(d, &policy, &prev_bits).with_context(|| format!("the {n}-rule policy"))
        })?;
        prev_bits = c.group_bits.clone();
        let runs = s.rule_sweep_runs;
        let cases = std::thread::scope(|sc| {
            sc.spawn(|| {
                topo::pin_to_cpu(0, rate::FORWARD_CPU);
                topo::boost(0);
                in_ns(&gw_name, || {
                    progrun::rule_point(d, gw_in_ifindex, gw_in_mac, runs, i as u8)
                })
            })
            .join()
            .map_err(|_| anyhow!("rule sweep thread panicked"))?
        })?;
        println!(
            "  {n:>6} rules: {}",
            cases
                .iter()
                .map(|c| format!("{} {:.0} ns", c.name, c.median))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rule_sweep.push(json!({
            "rules": n,
            "authorization_prefixes": c.authz.len(),
            "cases": cases.iter().map(|c| json!({
                "name": c.name, "runs": c.runs, "median_ns": c.median, "p90_ns": c.p90,
                "p99_ns": c.p99, "mean_ns": c.mean,
            })).collect::<Vec<_>>(),
        }));
    }
    {
        let d = dp.as_mut().expect("loaded");
        in_ns(&topo.gw.name, || apply_policy(d, &input, &prev_bits))
            .context("re-applying the benchmark policy")?;
    }
    let mut prog_test_run = prog_test_run;
    prog_test_run["rule_sweep"] = json!(rule_sweep);
    prog_test_run["rule_sweep_method"] = json!("after the cases above: the policy replaced by one with N authorization rules (the two deciding for the sink plus N-2 /30 rules; security groups unchanged), then fast path (hot flow), new flow and denied-by-authorization, rule_sweep_runs runs each interleaved in 10 rounds, same thread placement; the 100,000 pre-loaded flows stay");

    // ---- (b) forwarding rate ----------------------------------------------------------------
    let mut forwarding = match generator.kind {
        Some(kind) => forwarding::run(&topo, &mut dp, &input, kind, &s, &args.out, &mut notes)?,
        None => json!({
            "measured": false,
            "not_measured_reason": generator.not_measured_reason(),
        }),
    };
    forwarding["generator"] = generator.to_json();

    // ---- (c) the deployed input: frames written into a TAP --------------------------------------
    // Needs no generator. The veth's data path goes first (one program per target device).
    if let Some(d) = dp.take() {
        d.shutdown(false)?;
    }
    let tap_input = if args.prog_test_run_only {
        json!({ "measured": false, "not_measured_reason": PROG_TEST_RUN_ONLY })
    } else {
        println!("bench-datapath: (c) frames written into a TAP carrying the data path");
        tapwrite::run(&topo, &input, &pins.0, &s).unwrap_or_else(|e| {
            let why = format!("{e:#}");
            println!("bench-datapath: (c) not measured: {why}");
            notes.push(format!("TAP input not measured: {why}"));
            json!({ "measured": false, "not_measured_reason": why })
        })
    };
    // ---- reports -------------------------------------------------------------------------------
    if std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        < 2
    {
        notes.push("fewer than 2 CPUs: the generator and the gateway share one core".into());
    }
    let command: Vec<String> = std::env::args().collect();
    let report = json!({
        "suite": "datapath",
        "command": command.join(" "),
        "invoked_as": std::env::var("PORTCULLIS_BENCH_COMMAND").ok(),
        "quick": args.quick,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "elapsed_seconds": started.elapsed().as_secs_f64(),
        "machine": machine,
        "setup": setup,
        "prog_test_run": prog_test_run,
        "forwarding": forwarding,
        "tap_input": tap_input,
        "drop_reasons_note": format!("deny verdicts measured: {} and {}", DropReason::NotAuthorized.name(), DropReason::SecurityGroup.name()),
        "notes": notes,
    });
    tests::benchreport::write_suite_reports(
        &args.out,
        "datapath",
        &report,
        true,
        report::markdown,
        report::svg,
    )?;
    // A generator asked for by name must produce figures: that is how the fallback is kept
    // from rotting on machines where live frames work.
    if let Request::Only(k) = args.generator {
        let empty: Vec<String> = forwarding["ratios"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| {
                !(tests::benchreport::f(&x["xdp_pps"]) > 0.0
                    && tests::benchreport::f(&x["nftables_pps"]) > 0.0)
            })
            .map(|x| format!("{} B {} flow(s)", x["frame_bytes"], x["flows"]))
            .collect();
        if !empty.is_empty() {
            bail!(
                "the {} generator delivered nothing to the sink at: {}",
                k.name(),
                empty.join(", ")
            );
        }
    }

    println!(
        "bench-datapath: wrote {}/datapath.{{json,md,svg}} in {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );

    // Detach and unpin; the sink link, the pins and the namespaces go when they drop
    // (in reverse order of creation), also on every error path above.
    if let Some(d) = dp.take() {
        d.shutdown(false)?;
    }
    Ok(())
}
