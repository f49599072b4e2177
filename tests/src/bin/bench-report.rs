//! `bench-report [--dir DIR]`: the combined benchmark report, `DIR/report.md` with SVG plots
//! (`report-throughput.svg`, `report-cost-per-packet.svg`, `report-reload.svg`,
//! `report-handshakes.svg`), from whatever suite reports are in DIR (default `target/bench`):
//! `datapath.json`, `tunnel.json`, `scale.json`, `control.json`, `fleet.json`. A missing suite is reported
//! as "not run". `cargo xtask bench` runs it after the suites. Needs no privileges.
use std::{
    fmt::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tests::benchreport::{esc, f, machine, num, svg_grid, Plot, Series, COLORS};

const SUITES: [&str; 5] = ["datapath", "tunnel", "scale", "control", "fleet"];

fn load(dir: &Path, suite: &str) -> Result<Option<Value>> {
    let p = dir.join(format!("{suite}.json"));
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(Some(
            serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// The source a suite report was measured on: the short commit, "+dirty" when tracked files
/// had changed, "?" when the report does not say (older reports).
fn commit_of(r: &Value) -> String {
    let m = &r["machine"];
    let c = m["git_commit"]
        .as_str()
        .map_or("?", |c| c.get(..12).unwrap_or(c));
    if m["git_dirty"] == true {
        format!("{c}+dirty")
    } else {
        c.to_string()
    }
}

/// `YYYY-MM-DD HH:MM UTC` from unix seconds (the connection log's civil-date code).
fn utc(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    format!("{} UTC", &portcullis::connlog::rfc3339(t)[..16])
}

fn arr(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

/// Throughput vs sessions: the scale suite's emulator traffic (1/4/16 active sessions) and
/// the tunnel suite's iperf3 upload (stock clients).
fn throughput_plot(scale: Option<&Value>, tunnel: Option<&Value>) -> Plot {
    let mut series = Vec::new();
    if let Some(s) = scale {
        for (i, (key, label)) in [("portcullis", "Portcullis"), ("stock", "stock openvpn")]
            .iter()
            .enumerate()
        {
            let pts: Vec<(f64, f64)> = arr(&s[*key]["holds"])
                .flat_map(|h| arr(&h["traffic"]))
                .map(|t| {
                    (
                        f(&t["active_sessions"]),
                        f(&t["throughput_bits_per_second"]) / 1e6,
                    )
                })
                .collect();
            series.push(Series {
                name: format!("{label}: emulator UDP (scale)"),
                color: COLORS[i],
                points: pts,
            });
        }
    }
    if let Some(t) = tunnel {
        for (i, (key, label)) in [("portcullis", "Portcullis"), ("stock", "stock openvpn")]
            .iter()
            .enumerate()
        {
            let pts: Vec<(f64, f64)> = arr(&t[*key]["throughput"])
                .filter(|p| p["direction"] == "upload")
                .map(|p| (f(&p["clients"]), f(&p["bits_per_second"]) / 1e6))
                .collect();
            series.push(Series {
                name: format!("{label}: iperf3 TCP upload, stock clients (tunnel)"),
                color: COLORS[2 + i],
                points: pts,
            });
        }
    }
    Plot {
        title: "Throughput vs active sessions".into(),
        x_label: "active sessions (log)".into(),
        y_label: "Mbit/s delivered".into(),
        log_x: true,
        log_y: false,
        series,
        note: quick_note(&[scale, tunnel]),
    }
}

/// Cost per packet vs authorization rules: the datapath suite's `BPF_PROG_TEST_RUN`
/// medians, one series per case; a rule-count sweep if the suite ran one
/// (`prog_test_run.rule_sweep`), else its single rule count.
fn cost_plot(dp: Option<&Value>) -> Plot {
    let mut series = Vec::new();
    if let Some(d) = dp {
        let sweep: Vec<&Value> = arr(&d["prog_test_run"]["rule_sweep"]).collect();
        let names = [
            "fast_path",
            "fast_path_100k",
            "new_flow",
            "denied_not_authorized",
        ];
        for (i, name) in names.iter().enumerate() {
            let pts: Vec<(f64, f64)> = if sweep.is_empty() {
                arr(&d["prog_test_run"]["cases"])
                    .filter(|c| c["name"] == *name)
                    .map(|c| (f(&d["setup"]["authorization_rules"]), f(&c["median_ns"])))
                    .collect()
            } else {
                sweep
                    .iter()
                    .filter_map(|p| {
                        let c = arr(&p["cases"]).find(|c| c["name"] == *name)?;
                        Some((f(&p["rules"]), f(&c["median_ns"])))
                    })
                    .collect()
            };
            if !pts.is_empty() {
                series.push(Series {
                    name: (*name).into(),
                    color: COLORS[i],
                    points: pts,
                });
            }
        }
    }
    Plot {
        title: "XDP cost per packet vs authorization rules".into(),
        x_label: "authorization rules (log)".into(),
        y_label: "median ns per packet (BPF_PROG_TEST_RUN)".into(),
        log_x: true,
        log_y: false,
        series,
        note: quick_note(&[dp]),
    }
}

/// Reload latency vs policy size from the control suite (`replace` points; `one-rule` too).
fn reload_plot(control: Option<&Value>) -> Plot {
    let mut series = Vec::new();
    if let Some(c) = control {
        for (i, change) in ["replace", "one-rule"].iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = arr(&c["points"])
                .filter(|p| p["change"] == *change)
                .map(|p| (f(&p["rules"]), f(&p["reload_to_enforced_ms"]["median"])))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            series.push(Series {
                name: format!("{change}: median ms reload → enforced"),
                color: COLORS[i],
                points: pts,
            });
        }
    }
    Plot {
        title: "Reload latency vs policy size".into(),
        x_label: "authorization rules (log)".into(),
        y_label: "ms, reload to enforced (median)".into(),
        log_x: true,
        log_y: false,
        series,
        note: quick_note(&[control]),
    }
}

fn handshake_plot(scale: Option<&Value>) -> Plot {
    let mut series = Vec::new();
    if let Some(s) = scale {
        for (i, (key, label)) in [("portcullis", "Portcullis"), ("stock", "stock openvpn")]
            .iter()
            .enumerate()
        {
            series.push(Series {
                name: format!("{label}: achieved handshakes/s"),
                color: COLORS[i],
                points: arr(&s[*key]["sweep"]["steps"])
                    .map(|st| (f(&st["offered_per_s"]), f(&st["achieved_per_s"])))
                    .collect(),
            });
        }
    }
    Plot {
        title: "Handshakes: achieved vs offered".into(),
        x_label: "offered handshakes/s (log)".into(),
        y_label: "achieved handshakes/s".into(),
        log_x: true,
        log_y: false,
        series,
        note: quick_note(&[scale]),
    }
}

fn quick_note(reports: &[Option<&Value>]) -> Option<String> {
    reports
        .iter()
        .flatten()
        .any(|r| r["quick"] == true)
        .then(|| "--quick: figures not meaningful".into())
}

fn summary(suite: &str, r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match suite {
        "datapath" => {
            for c in arr(&r["prog_test_run"]["cases"]) {
                out.push(format!(
                    "{}: median {} ns per packet",
                    c["name"].as_str().unwrap_or("?"),
                    num(f(&c["median_ns"]))
                ));
            }
            let fw = &r["forwarding"];
            if fw["measured"] == false {
                out.push(format!(
                    "forwarding: not measured ({})",
                    fw["not_measured_reason"].as_str().unwrap_or("?")
                ));
            } else if let Some(kind) = fw["generator"]["kind"].as_str() {
                out.push(format!(
                    "forwarding generator: {kind}{}",
                    if fw["generator"]["fallback"] == true {
                        " (a fallback: see the suite report for why)"
                    } else {
                        ""
                    }
                ));
            }
            for p in arr(&fw["ratios"]) {
                let spread = if f(&p["ratio_min"]).is_finite() {
                    format!(
                        ", rounds {:.2}-{:.2}x",
                        f(&p["ratio_min"]),
                        f(&p["ratio_max"])
                    )
                } else {
                    String::new()
                };
                out.push(format!(
                    "forwarding, {} B frames, {} flow(s): XDP {:.2} Mpps, nftables {:.2} Mpps ({:.2}x{spread}), kernel without rules {:.2} Mpps",
                    p["frame_bytes"],
                    p["flows"],
                    f(&p["xdp_pps"]) / 1e6,
                    f(&p["nftables_pps"]) / 1e6,
                    f(&p["ratio"]),
                    f(&p["kernel_forwarding_pps"]) / 1e6
                ));
            }
            for p in arr(&r["tap_input"]["points"]) {
                out.push(format!(
                    "TAP input (the deployed path: frames written into the TAP, XDP in each write), {} B frames, {} flow(s): {:.2} Mpps delivered, {:.0} ns writer CPU per frame",
                    p["frame_bytes"],
                    p["flows"],
                    f(&p["delivered_pps"]) / 1e6,
                    f(&p["writer_cpu_ns_per_frame"]),
                ));
            }
        }
        "tunnel" | "scale" => {
            for row in arr(&r["comparison"]) {
                let label = row["label"].as_str().unwrap_or("?");
                let unit = row["unit"].as_str().unwrap_or("");
                out.push(format!(
                    "{label}{}: Portcullis {}, stock {} ({})",
                    if unit.is_empty() {
                        String::new()
                    } else {
                        format!(" ({unit})")
                    },
                    num(f(&row["portcullis"])),
                    num(f(&row["stock"])),
                    match (f(&row["ratio"]), f(&row["ratio_min"]), f(&row["ratio_max"])) {
                        (r, lo, hi) if r.is_finite() && lo.is_finite() => format!(
                            "{r:.2}x, median of {} rounds, range {lo:.2}-{hi:.2}x",
                            row["rounds_measured"]
                        ),
                        (r, _, _) if r.is_finite() => format!("{r:.2}x"),
                        _ => "n/a".into(),
                    }
                ));
            }
        }
        "control" => {
            for p in arr(&r["points"]) {
                out.push(format!(
                    "{} rules, {}: reload → enforced median {} ms, max {} ms; {} of {} probe packets lost",
                    p["rules"],
                    p["change"].as_str().unwrap_or("?"),
                    num(f(&p["reload_to_enforced_ms"]["median"])),
                    num(f(&p["reload_to_enforced_ms"]["max"])),
                    p["lost_packets"],
                    p["sent_packets"]
                ));
            }
        }
        "fleet" => {
            for g in arr(&r["publish"]["gateways"]) {
                out.push(format!(
                    "publish → enforced on {}: p50 {} ms, max {} ms",
                    g["gateway"].as_str().unwrap_or("?"),
                    num(f(&g["ms"]["p50"])),
                    num(f(&g["ms"]["max"]))
                ));
            }
            let reg = &r["registry"];
            for phase in ["connect", "refresh", "disconnect"] {
                let p = &reg[phase];
                out.push(format!(
                    "registry, {} sessions over {} gateways, {phase}: {} s, {} writes/s, {} etcd requests per session",
                    reg["sessions"],
                    reg["gateways"],
                    num(f(&p["secs"])),
                    num(f(&p["writes_per_sec"])),
                    num(f(&p["etcd_requests_per_session"]))
                ));
            }
            let fo = &r["failover"];
            out.push(format!(
                "failover after SIGKILL: traffic again in {} s (pushed ping-restart {} s), registry clean in {} s (lease TTL {} s)",
                num(f(&fo["traffic_again_secs"])),
                fo["pushed_ping_restart_secs"],
                num(f(&fo["registry_clean_secs"])),
                fo["lease_ttl_secs"]
            ));
        }
        _ => {}
    }
    for t in arr(&r["targets"]) {
        if let Some(name) = t["target"].as_str() {
            out.push(format!(
                "target {name}: {}",
                if t["met"] == true { "met" } else { "not met" }
            ));
        }
    }
    out
}

fn run(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "{} does not exist: run `cargo xtask bench` first",
            dir.display()
        );
    }
    let mut reports = Vec::new();
    for s in SUITES {
        reports.push((s, load(dir, s)?));
    }
    let get = |name: &str| {
        reports
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, r)| r.as_ref())
    };
    let plots = [
        (
            "report-throughput.svg",
            throughput_plot(get("scale"), get("tunnel")),
        ),
        ("report-cost-per-packet.svg", cost_plot(get("datapath"))),
        ("report-reload.svg", reload_plot(get("control"))),
        ("report-handshakes.svg", handshake_plot(get("scale"))),
    ];
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "# Portcullis benchmark report\n");
    let m = machine();
    let _ = writeln!(
        w,
        "Machine: {} cores, {} ({} MHz), {:.1} GiB memory, kernel {} (`{}`); load average now {}; git {}.\n",
        m["cores"],
        m["cpu_model"].as_str().unwrap_or("?"),
        num(f(&m["cpu_mhz"])),
        f(&m["memory_gib"]),
        m["kernel"].as_str().unwrap_or("?"),
        esc(m["kernel_version"].as_str().unwrap_or("?")),
        m["loadavg_before"].as_str().unwrap_or("?"),
        m["git_commit"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        w,
        "Reproduce everything with `cargo xtask bench` (root; `--quick` for the short harness check), one suite with `cargo xtask bench <suite>`. Method: docs/benchmarks.md.\n"
    );
    let _ = writeln!(
        w,
        "| suite | status | command | commit | finished | seconds | load average before → after | files |"
    );
    let _ = writeln!(w, "|---|---|---|---|---:|---:|---|---|");
    for (name, r) in &reports {
        match r {
            None => {
                let _ = writeln!(w, "| {name} | not run | | | | | | |");
            }
            Some(r) => {
                let cmd = r["invoked_as"]
                    .as_str()
                    .map(|c| format!("`{c}` (`{}`)", r["command"].as_str().unwrap_or("")))
                    .unwrap_or_else(|| format!("`{}`", r["command"].as_str().unwrap_or("?")));
                let _ = writeln!(
                    w,
                    "| {name} | {} | {cmd} | {} | {} | {} | {} → {} | [{name}.md]({name}.md), [{name}.json]({name}.json) |",
                    if r["quick"] == true { "ran (--quick)" } else { "ran" },
                    commit_of(r),
                    r["unix_time"].as_u64().map(utc).unwrap_or_default(),
                    num(f(&r["elapsed_seconds"])),
                    r["machine"]["loadavg_before"].as_str().unwrap_or("?"),
                    r["machine"]["loadavg_after"].as_str().unwrap_or("?"),
                );
            }
        }
    }
    let commits: std::collections::BTreeSet<String> = reports
        .iter()
        .flat_map(|(_, r)| r.as_ref())
        .map(commit_of)
        .collect();
    if commits.len() > 1 {
        let _ = writeln!(
            w,
            "\n**The suite reports come from {} different source states ({}): compare their figures with care.**",
            commits.len(),
            commits.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let _ = writeln!(w, "\n## Plots\n");
    for (file, p) in &plots {
        let _ = writeln!(w, "### {}\n\n![{}]({file})\n", p.title, p.title);
    }
    let _ = writeln!(w, "## Figures by suite\n");
    for (name, r) in &reports {
        let _ = writeln!(w, "### {name}\n");
        match r {
            None => {
                let _ = writeln!(w, "not run (no {name}.json)\n");
            }
            Some(r) => {
                if r["quick"] == true {
                    let _ = writeln!(
                        w,
                        "**--quick run: the figures only show that the harness works.**\n"
                    );
                }
                for line in summary(name, r) {
                    let _ = writeln!(w, "- {line}");
                }
                for n in arr(&r["notes"]) {
                    let _ = writeln!(w, "- note: {}", n.as_str().unwrap_or(""));
                }
                let _ = writeln!(w);
            }
        }
    }
    std::fs::write(dir.join("report.md"), md)?;
    for (file, p) in plots {
        std::fs::write(dir.join(file), svg_grid(&[p], 1, 640.0, 420.0))?;
    }
    println!(
        "bench-report: wrote {}/report.md ({})",
        dir.display(),
        reports
            .iter()
            .map(|(n, r)| format!("{n}: {}", if r.is_some() { "yes" } else { "not run" }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let mut dir = PathBuf::from("target/bench");
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => match it.next() {
                Some(d) => dir = d.into(),
                None => {
                    eprintln!("bench-report: --dir needs a directory");
                    return ExitCode::FAILURE;
                }
            },
            "-h" | "--help" => {
                println!("usage: bench-report [--dir DIR]   (default target/bench)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("bench-report: unknown argument {other:?}");
                return ExitCode::FAILURE;
            }
        }
    }
    match run(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-report: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod unit {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(super::utc(1_795_976_564), "2026-11-29 18:22 UTC");
    }
}
