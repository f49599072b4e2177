//! `cargo xtask bench control`: how fast a policy change reaches the data path, with traffic
//! flowing, and what a restart with kept maps costs.
//!
//! One `portcullis run --keep-maps` (the release binary, `$PORTCULLIS_BIN`) in a gateway
//! namespace, one stock openvpn client, and two probe streams through the tunnel into the
//! private network (`tests::probe`): stream A to a destination every policy allows, stream B
//! to one that each change removes or adds back. The policy has N filler rules as well.
//!
//! - `one-rule`: only B's rule changes (N fillers stay).
//! - `replace`: B's rule changes and all N filler rules are replaced by N others.
//!
//! Latency is from the moment the new file is in place (then `reload` on the admin socket) to
//! the send time of the first B datagram that shows the new verdict (the first to get through
//! after an add; the first not to after a removal): an upper bound, to within the probe
//! interval. Lost: datagrams of stream A (allowed all along) that did not arrive.
//!
//! Writes `<out>/control.json` and `<out>/control.md`.
use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tests::{
    agent::{AgentLab, COMPLETED},
    probe::{self, mono_ns, Received},
};

struct Settings {
    quick: bool,
    sizes: Vec<usize>,
    reps: usize,
    interval: Duration,
    out: PathBuf,
}

fn parse_args(args: &[String]) -> Result<Settings> {
    let mut s = Settings {
        quick: false,
        sizes: vec![1, 100, 1_000, 10_000],
        reps: 6,
        interval: Duration::from_micros(500),
        out: PathBuf::from("target/bench"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {
                s.quick = true;
                s.sizes = vec![10, 1_000];
                s.reps = 2;
            }
            "--out" => s.out = PathBuf::from(it.next().context("--out needs a directory")?),
            // For a before/after comparison of one point (the full run takes all four).
            "--sizes" => {
                s.sizes = it
                    .next()
                    .context("--sizes needs a list such as 1000,10000")?
                    .split(',')
                    .map(|n| n.trim().parse().context("--sizes: not a number"))
                    .collect::<Result<_>>()?;
            }
            "--reps" => s.reps = it.next().context("--reps needs a number")?.parse()?,
            "--help" | "-h" => {
                println!("bench-control [--quick] [--sizes N,M,...] [--reps K] [--out DIR]: reload-to-enforced latency and restart time");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(s)
}

fn main() -> ExitCode {
    if !tests::is_root() {
        eprintln!("bench-control: error: needs root (network namespaces, XDP)");
        return ExitCode::FAILURE;
    }
    let argv: Vec<String> = std::env::args().collect();
    match parse_args(&argv[1..]).and_then(|s| run(&s)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-control: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// When B's new verdict showed, as a send time: the first datagram through after `at` (B
/// added), or the first sent after the last one through (B removed).
fn enforced_at(
    b: &Received,
    sent_b: &probe::Sent,
    at: u64,
    until: u64,
    allowed: bool,
) -> Option<u64> {
    if allowed {
        b.first_after(at)
    } else {
        let last = b.last_before(until)?;
        sent_b.next_after(1, last.max(at))
    }
}

fn run(s: &Settings) -> Result<()> {
    std::fs::create_dir_all(&s.out)?;
    let t_start = Instant::now();
    let mut lab = AgentLab::new_with(
        1,
        &["alice"],
        &probe::probe_policy(s.sizes[0], 0, true),
        &["--keep-maps"],
    );
    let client = lab.connect(0, "alice");
    let (sink, sender) = probe::start_ab(&lab, s.interval, Duration::from_secs(20 * 60))
        .map_err(|e| anyhow::anyhow!("{e}:\n{}", client.log()))?;

    // Each change: (size, kind, at_ns, b_allowed_after, reply_ms, the agent's timing).
    let mut changes: Vec<(usize, &str, u64, bool, f64, Value)> = Vec::new();
    let mut allow_b = true;
    let mut variant = 0u32;
    for &size in &s.sizes {
        // Move to this size first, not measured: twice, so that both policy slots hold it
        // (each reload writes the inactive slot; the next diffs against it).
        for _ in 0..2 {
            allow_b = !allow_b;
            lab.write_policy(&probe::probe_policy(size, variant, allow_b));
            reload(&lab)?;
            std::thread::sleep(Duration::from_millis(300));
        }
        for kind in ["one-rule", "replace"] {
            for _ in 0..s.reps {
                allow_b = !allow_b;
                if kind == "replace" {
                    // A variant never used before: every filler rule is new.
                    variant += 1;
                }
                let text =
                    tests::agent::endpoint_toml(&probe::probe_policy(size, variant, allow_b));
                let at = mono_ns();
                tests::agent::write_atomic(&lab.config, &text);
                let t = Instant::now();
                let timing = reload(&lab)?;
                let reply_ms = t.elapsed().as_secs_f64() * 1e3;
                changes.push((size, kind, at, allow_b, reply_ms, timing));
                std::thread::sleep(Duration::from_millis(400));
            }
        }
    }
    let changes_end = mono_ns();

    // Restart with kept maps: stop, start, wait for the client to come back.
    let stop_ns = mono_ns();
    let stopped_at = lab.restart_agent();
    let agent_up = stopped_at.elapsed();
    if !client
        .proc
        .wait_log_count(COMPLETED, 2, Duration::from_secs(60))
    {
        bail!(
            "the client did not reconnect after the restart:\n{}",
            client.log()
        );
    }
    let reconnected = stopped_at.elapsed();
    let back = tests::agent::poll(Duration::from_secs(10), || {
        let r = &sink.snapshot()[0];
        r.longest_gap_after(stop_ns)
            .and_then(|(_, end)| (r.count_between(end, u64::MAX) > 100).then_some(()))
    });
    if back.is_none() {
        bail!("stream A does not get through after the restart");
    }
    let sent = sender.stop();
    std::thread::sleep(Duration::from_millis(500));
    let got = sink.stop();

    let mut points = Vec::new();
    let mut all_lost = 0usize;
    for &size in &s.sizes {
        for kind in ["one-rule", "replace"] {
            let mut lat = Vec::new();
            let mut replies = Vec::new();
            let mut samples = Vec::new();
            let mut lost = 0;
            let mut sent_a = 0;
            for (i, (sz, k, at, allowed, reply_ms, timing)) in changes.iter().enumerate() {
                let (sz, k, at, allowed, reply_ms) = (*sz, *k, *at, *allowed, *reply_ms);
                if sz != size || k != kind {
                    continue;
                }
                let until = changes.get(i + 1).map_or(changes_end, |c| c.2);
                let l = sent.lost_between(0, &got[0], at, until);
                lost += l;
                sent_a += sent.streams[0]
                    .range(..)
                    .filter(|(_, &t)| t >= at && t < until)
                    .count();
                let enforced = enforced_at(&got[1], &sent, at, until, allowed)
                    .filter(|&e| e < until)
                    .map(|e| ms(e.saturating_sub(at)));
                if let Some(e) = enforced {
                    lat.push(e);
                }
                replies.push(reply_ms);
                samples.push(json!({
                    "b_allowed_after": allowed,
                    "enforced_ms": enforced,
                    "reply_ms": reply_ms,
                    "agent_timing": timing,
                    "lost_a": l,
                }));
            }
            all_lost += lost;
            // The agent's own phases, median over the changes of this point.
            let phase = |k: &str| {
                let mut v: Vec<f64> = samples
                    .iter()
                    .filter_map(|s| s["agent_timing"][k].as_f64())
                    .collect();
                median(&mut v)
            };
            let agent_ms = json!({
                "parse": phase("parse_ms"),
                "validate": phase("validate_ms"),
                "compile": phase("compile_ms"),
                "load": phase("load_ms"),
                "reconcile": phase("reconcile_ms"),
                "sessions": phase("sessions_ms"),
                "total": phase("total_ms"),
                "rule_sections_parsed": phase("rule_sections_parsed"),
                "compiled_incrementally": samples
                    .iter()
                    .filter(|s| s["agent_timing"]["compile_incremental"] == true)
                    .count(),
            });
            let max = lat.iter().copied().fold(f64::NAN, f64::max);
            let missed = samples.len() - lat.len();
            points.push(json!({
                "rules": size,
                "change": kind,
                "reload_to_enforced_ms": {"median": median(&mut lat), "max": max},
                "reload_reply_ms": {"median": median(&mut replies)},
                "agent_phases_ms_median": agent_ms,
                "not_enforced": missed,
                "lost_packets": lost,
                "sent_packets": sent_a,
                "samples": samples,
            }));
        }
    }
    let (gap_from, gap_to) = got[0]
        .longest_gap_after(stop_ns)
        .context("no stream A datagram after the restart")?;
    let restart = json!({
        "agent_answering_ms": agent_up.as_secs_f64() * 1e3,
        "client_reconnected_ms": reconnected.as_secs_f64() * 1e3,
        "outage_ms": ms(gap_to - gap_from),
        "service_back_after_stop_ms": ms(gap_to.saturating_sub(stop_ns)),
        "lost_during_restart": sent.lost_between(0, &got[0], stop_ns, u64::MAX),
    });
    let report = json!({
        "suite": "control",
        "quick": s.quick,
        "command": std::env::var("PORTCULLIS_BENCH_COMMAND").unwrap_or_else(|_| "bench-control".into()),
        "machine": tests::benchreport::machine(),
        "probe_interval_us": s.interval.as_micros() as u64,
        "points": points,
        "lost_allowed_total": all_lost,
        "restart": restart,
        "targets": {
            "one_rule_ms": 10.0,
            "replace_10000_ms": 1000.0,
            "lost": 0,
        },
        "duration_s": t_start.elapsed().as_secs_f64(),
    });
    std::fs::write(
        s.out.join("control.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(s.out.join("control.md"), markdown(&report))?;
    println!("{}", markdown(&report));
    Ok(())
}

/// `reload` on the admin socket; the agent's own timing of its phases.
fn reload(lab: &AgentLab) -> Result<Value> {
    let v = lab
        .agent()
        .admin(&json!({"cmd": "reload"}))
        .map_err(|e| anyhow::anyhow!("reload: {e}"))?;
    if v["ok"] != true {
        bail!("reload refused: {v}");
    }
    Ok(v["timing"].clone())
}

fn num2(v: &Value) -> String {
    v.as_f64()
        .filter(|x| x.is_finite())
        .map_or("–".into(), |x| format!("{x:.2}"))
}

fn num(v: &Value) -> String {
    v.as_f64()
        .filter(|x| x.is_finite())
        .map_or("–".into(), |x| format!("{x:.1}"))
}

fn markdown(r: &Value) -> String {
    let mut md = String::from("# Control plane: reload to enforcement\n\n");
    md.push_str(&format!(
        "`{}` — {} cores, kernel {}; probe every {} µs per stream{}.\n\n",
        r["command"].as_str().unwrap_or_default(),
        r["machine"]["cores"],
        r["machine"]["kernel"].as_str().unwrap_or_default(),
        r["probe_interval_us"],
        if r["quick"] == true {
            " (quick run: figures not meaningful)"
        } else {
            ""
        }
    ));
    md.push_str("| Rules | Change | Reload → enforced, median (ms) | max (ms) | Admin reply, median (ms) | agent: parse / validate / compile / map writes, median (ms) | rule sections parsed | compiled incrementally | Allowed datagrams lost |\n|---:|---|---:|---:|---:|---|---:|---:|---:|\n");
    for p in r["points"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} / {} / {} | {} | {} of {} | {} of {} |\n",
            p["rules"],
            p["change"].as_str().unwrap_or_default(),
            num(&p["reload_to_enforced_ms"]["median"]),
            num(&p["reload_to_enforced_ms"]["max"]),
            num(&p["reload_reply_ms"]["median"]),
            num2(&p["agent_phases_ms_median"]["parse"]),
            num2(&p["agent_phases_ms_median"]["validate"]),
            num2(&p["agent_phases_ms_median"]["compile"]),
            num2(&p["agent_phases_ms_median"]["reconcile"]),
            p["agent_phases_ms_median"]["rule_sections_parsed"]
                .as_f64()
                .map_or("–".into(), |x| format!("{x:.0}")),
            p["agent_phases_ms_median"]["compiled_incrementally"],
            p["samples"].as_array().map_or(0, Vec::len),
            p["lost_packets"],
            p["sent_packets"],
        ));
    }
    let rs = &r["restart"];
    md.push_str(&format!(
        "\nRestart with `--keep-maps` (SIGTERM, new agent, the stock client reconnects by itself): \
         new agent answering after {} ms, client reconnected after {} ms, stream A interrupted \
         for {} ms ({} datagrams lost), full service {} ms after the stop.\n\n\
         Targets: one rule ≤ 10 ms, 10,000 rules replaced ≤ 1 s, no allowed datagram lost.\n",
        num(&rs["agent_answering_ms"]),
        num(&rs["client_reconnected_ms"]),
        num(&rs["outage_ms"]),
        rs["lost_during_restart"],
        num(&rs["service_back_after_stop_ms"]),
    ));
    md
}
