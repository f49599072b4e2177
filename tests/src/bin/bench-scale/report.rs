//! `scale.md` and `scale.svg` from the report JSON.
use std::fmt::Write;

use serde_json::{json, Value};
use tests::benchreport::{f, num, provenance_line, svg_grid, Plot, Series, COLORS};

fn ratio(a: f64, b: f64) -> f64 {
    if a.is_finite() && b.is_finite() && b != 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn row(label: String, unit: &str, better: &str, p: f64, s: f64) -> Value {
    json!({ "label": label, "unit": unit, "better": better, "portcullis": p, "stock": s, "ratio": ratio(p, s) })
}

fn holds(side: &Value) -> Vec<&Value> {
    side["holds"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn hold_for(side: &Value, n: u64) -> Option<&Value> {
    holds(side)
        .into_iter()
        .find(|h| h["open"]["requested"].as_u64() == Some(n))
}

fn traffic_for(side: &Value, k: u64) -> Option<&Value> {
    holds(side)
        .into_iter()
        .flat_map(|h| h["traffic"].as_array().into_iter().flatten())
        .find(|t| t["requested"].as_u64() == Some(k))
}

/// Side-by-side rows: Portcullis, stock, ratio.
pub fn compare(r: &Value) -> Value {
    let (p, s) = (&r["portcullis"], &r["stock"]);
    let mut rows = Vec::new();
    let ns: Vec<u64> = r["settings"]["idle_sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .collect();
    for n in &ns {
        let g = |side: &Value, path: &[&str]| {
            hold_for(side, *n).map_or(f64::NAN, |h| {
                let mut v = h;
                for k in path {
                    v = &v[*k];
                }
                f(v)
            })
        };
        let both = |path: &[&str]| (g(p, path), g(s, path));
        let (a, b) = both(&["sessions_up"]);
        rows.push(row(format!("{n} idle: sessions up"), "", "higher", a, b));
        let (a, b) = both(&["open", "seconds"]);
        rows.push(row(
            format!("{n} idle: time to establish"),
            "s",
            "lower",
            a,
            b,
        ));
        let (a, b) = both(&["open", "rate_per_s"]);
        rows.push(row(
            format!("{n} idle: connects per second while establishing"),
            "/s",
            "higher",
            a,
            b,
        ));
        let (a, b) = both(&["open", "latency_ms", "p99"]);
        rows.push(row(
            format!("{n} idle: connect latency p99"),
            "ms",
            "lower",
            a,
            b,
        ));
        let (a, b) = both(&["rss_per_session_kib"]);
        rows.push(row(
            format!("{n} idle: memory per session"),
            "KiB",
            "lower",
            a,
            b,
        ));
        let (a, b) = both(&["rest", "server_core_fraction"]);
        rows.push(row(
            format!("{n} idle: keepalive CPU at rest"),
            "% of a core",
            "lower",
            a * 100.0,
            b * 100.0,
        ));
        let (a, b) = both(&["rest", "machine_core_fraction"]);
        rows.push(row(
            format!("{n} idle: whole machine busy at rest"),
            "% of a core",
            "lower",
            a * 100.0,
            b * 100.0,
        ));
    }
    for k in [1u64, 4, 16] {
        let g = |side: &Value, key: &str| traffic_for(side, k).map_or(f64::NAN, |t| f(&t[key]));
        rows.push(row(
            format!("throughput, {k} active session(s)"),
            "Mbit/s",
            "higher",
            g(p, "throughput_bits_per_second") / 1e6,
            g(s, "throughput_bits_per_second") / 1e6,
        ));
        rows.push(row(
            format!("server cycles per byte, {k} active session(s)"),
            "cycles/B",
            "lower",
            g(p, "server_cycles_per_byte"),
            g(s, "server_cycles_per_byte"),
        ));
        rows.push(row(
            format!("whole-machine cycles per byte, {k} active session(s)"),
            "cycles/B",
            "lower",
            g(p, "machine_cycles_per_byte"),
            g(s, "machine_cycles_per_byte"),
        ));
    }
    let sw = |side: &Value, path: &[&str]| {
        let mut v = &side["sweep"];
        for k in path {
            v = &v[*k];
        }
        f(v)
    };
    rows.push(row(
        "handshakes per second, highest sustained".into(),
        "/s",
        "higher",
        sw(p, &["max_achieved_per_s"]),
        sw(s, &["max_achieved_per_s"]),
    ));
    rows.push(row(
        "connect latency p50 at that rate".into(),
        "ms",
        "lower",
        sw(p, &["at_max", "latency_ms", "p50"]),
        sw(s, &["at_max", "latency_ms", "p50"]),
    ));
    rows.push(row(
        "connect latency p99 at that rate".into(),
        "ms",
        "lower",
        sw(p, &["at_max", "latency_ms", "p99"]),
        sw(s, &["at_max", "latency_ms", "p99"]),
    ));
    rows.push(row(
        "server CPU at that rate".into(),
        "% of a core",
        "lower",
        sw(p, &["at_max", "server_core_fraction"]) * 100.0,
        sw(s, &["at_max", "server_core_fraction"]) * 100.0,
    ));
    rows.push(row(
        "whole machine busy at that rate".into(),
        "% of a core",
        "lower",
        sw(p, &["at_max", "machine_core_fraction"]) * 100.0,
        sw(s, &["at_max", "machine_core_fraction"]) * 100.0,
    ));
    Value::Array(rows)
}

pub fn targets(r: &Value, hs: f64, sessions: usize, kib: f64) -> Value {
    let p = &r["portcullis"];
    let biggest = holds(p)
        .into_iter()
        .max_by_key(|h| h["sessions_up"].as_u64().unwrap_or(0));
    let up = biggest.and_then(|h| h["sessions_up"].as_u64()).unwrap_or(0);
    let per = biggest.map_or(f64::NAN, |h| f(&h["rss_per_session_kib"]));
    let rate = ratio(
        f(&p["sweep"]["max_achieved_per_s"]),
        f(&r["stock"]["sweep"]["max_achieved_per_s"]),
    );
    json!([
        { "target": format!("≥ {sessions} concurrent sessions (Portcullis)"), "value": up, "met": up as usize >= sessions },
        { "target": format!("≤ {kib} KiB per idle session (Portcullis, at {up} sessions)"), "value": per, "met": per.is_finite() && per <= kib },
        { "target": format!("≥ {hs}x the stock server's handshake rate"), "value": rate, "met": rate.is_finite() && rate >= hs },
    ])
}

fn ratio_s(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}x")
    } else {
        "n/a".into()
    }
}

pub fn markdown(r: &Value) -> String {
    let mut m = String::new();
    let w = &mut m;
    let _ = writeln!(w, "# Scale: Portcullis vs the stock `openvpn --server`\n");
    if r["quick"] == true {
        let _ = writeln!(
            w,
            "**--quick run: short windows and few sessions; the figures only show that the harness works.**\n"
        );
    }
    let mc = &r["machine"];
    let _ = writeln!(
        w,
        "Provenance: {}; agent `{}`; {:.1} GiB. Command: `{}`{}. {:.0} s.\n",
        provenance_line(mc),
        mc["agent_binary"]["path"].as_str().unwrap_or("?"),
        f(&mc["memory_gib"]),
        r["command"].as_str().unwrap_or(""),
        r["invoked_as"]
            .as_str()
            .map(|c| format!(" (`{c}`)"))
            .unwrap_or_default(),
        f(&r["elapsed_seconds"]),
    );
    let _ = writeln!(w, "| figure | Portcullis | stock | Portcullis / stock |");
    let _ = writeln!(w, "|---|---:|---:|---:|");
    for x in r["comparison"].as_array().into_iter().flatten() {
        let unit = x["unit"].as_str().unwrap_or("");
        let label = if unit.is_empty() {
            x["label"].as_str().unwrap_or("").to_string()
        } else {
            format!("{} ({unit})", x["label"].as_str().unwrap_or(""))
        };
        let _ = writeln!(
            w,
            "| {label} | {} | {} | {} |",
            num(f(&x["portcullis"])),
            num(f(&x["stock"])),
            ratio_s(f(&x["ratio"]))
        );
    }
    let _ = writeln!(w, "\n## Targets\n");
    for t in r["targets"].as_array().into_iter().flatten() {
        let _ = writeln!(
            w,
            "- {}: {} ({})",
            t["target"].as_str().unwrap_or(""),
            num(f(&t["value"])),
            if t["met"] == true {
                "met"
            } else {
                "**not met**"
            }
        );
    }
    let _ = writeln!(w, "\n## Handshake sweep\n");
    let _ = writeln!(
        w,
        "| server | offered /s | achieved /s | connected / started | p50 ms | p99 ms | server % of a core | emulator % of a core | machine busy % of a core | saturated |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for name in ["portcullis", "stock"] {
        for st in r[name]["sweep"]["steps"].as_array().into_iter().flatten() {
            let _ = writeln!(
                w,
                "| {name} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} |",
                num(f(&st["offered_per_s"])),
                num(f(&st["achieved_per_s"])),
                st["completed"],
                st["started"],
                num(f(&st["latency_ms"]["p50"])),
                num(f(&st["latency_ms"]["p99"])),
                num(f(&st["server_core_fraction"]) * 100.0),
                num(f(&st["generator_core_fraction"]) * 100.0),
                num(f(&st["machine_core_fraction"]) * 100.0),
                if st["saturated"] == true { "yes" } else { "" }
            );
        }
    }
    let _ = writeln!(w, "\n## Traffic through k of the idle sessions\n");
    let _ = writeln!(
        w,
        "| server | k | sent pkts | delivered | Mbit/s | server % of a core | server cycles/B | machine cycles/B |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for name in ["portcullis", "stock"] {
        for h in holds(&r[name]) {
            for t in h["traffic"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    w,
                    "| {name} | {} | {} | {:.1}% | {} | {} | {} | {} |",
                    t["active_sessions"],
                    t["sent_packets"],
                    f(&t["delivered_fraction"]) * 100.0,
                    num(f(&t["throughput_bits_per_second"]) / 1e6),
                    num(f(&t["server_core_fraction"]) * 100.0),
                    num(f(&t["server_cycles_per_byte"])),
                    num(f(&t["machine_cycles_per_byte"])),
                );
            }
        }
    }
    let _ = writeln!(w, "\n## Keepalive at rest\n");
    let _ = writeln!(
        w,
        "| server | sessions | window s | server CPU s | % of a core | machine busy % of a core | pings sent / received | silent past ping-restart |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for name in ["portcullis", "stock"] {
        for h in holds(&r[name]) {
            let rs = &h["rest"];
            let _ = writeln!(
                w,
                "| {name} | {} | {} | {} | {} | {} | {} / {} | {} |",
                rs["sessions_up"],
                num(f(&rs["window_s"])),
                num(f(&rs["server_cpu_s"])),
                num(f(&rs["server_core_fraction"]) * 100.0),
                num(f(&rs["machine_core_fraction"]) * 100.0),
                rs["pings_sent"],
                rs["pings_received"],
                rs["sessions_silent_past_ping_restart"],
            );
        }
    }
    map_fill(w, r);
    let notes: Vec<&Value> = r["notes"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if !notes.is_empty() {
        let _ = writeln!(w, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(w, "- {}", n.as_str().unwrap_or(""));
        }
    }
    let _ = writeln!(w, "\n## Method\n");
    for (k, v) in r["method"].as_object().into_iter().flatten() {
        let _ = writeln!(w, "- **{k}**: {}", v.as_str().unwrap_or(""));
    }
    m
}

/// The agent's sessions, conntrack entries and BPF map fill at each hold (from its `status`
/// once the sessions were up); nothing for a report without them.
fn map_fill(w: &mut String, r: &Value) {
    let snaps: Vec<(&Value, &Value)> = holds(&r["portcullis"])
        .into_iter()
        .map(|h| (h, &h["server_at_hold"]))
        .filter(|(_, s)| s.is_object())
        .collect();
    if snaps.is_empty() {
        return;
    }
    let mut names: Vec<&String> = snaps
        .iter()
        .flat_map(|(_, s)| s["maps"].as_object().into_iter().flat_map(|m| m.keys()))
        .collect();
    names.sort();
    names.dedup();
    let _ = writeln!(w, "\n## Portcullis at each hold: sessions and BPF maps\n");
    let _ = write!(w, "| sessions up | agent sessions | established | flows |");
    for n in &names {
        let _ = write!(w, " {n} |");
    }
    let _ = write!(w, "\n|---:|---:|---:|---:|");
    for _ in &names {
        let _ = write!(w, "---:|");
    }
    let _ = writeln!(w);
    for (h, s) in snaps {
        let _ = write!(
            w,
            "| {} | {} | {} | {} |",
            h["sessions_up"], s["sessions"], s["established"], s["flows"]
        );
        for n in &names {
            let m = &s["maps"][n.as_str()];
            let _ = write!(w, " {} / {} |", m["entries"], m["capacity"]);
        }
        let _ = writeln!(w);
    }
    let _ = writeln!(w, "\nMaps: entries / capacity.");
}

/// Throughput points `(active sessions, Mbit/s)` of one server (used by the combined report).
pub fn throughput_points(side: &Value) -> Vec<(f64, f64)> {
    holds(side)
        .into_iter()
        .flat_map(|h| h["traffic"].as_array().into_iter().flatten())
        .map(|t| {
            (
                f(&t["active_sessions"]),
                f(&t["throughput_bits_per_second"]) / 1e6,
            )
        })
        .collect()
}

pub fn plots(r: &Value) -> Vec<Plot> {
    let note = (r["quick"] == true).then(|| "--quick: figures not meaningful".to_string());
    let sides = [
        ("Portcullis", "portcullis", COLORS[0]),
        ("stock openvpn", "stock", COLORS[1]),
    ];
    let series = |pick: &dyn Fn(&Value) -> Vec<(f64, f64)>| -> Vec<Series> {
        sides
            .iter()
            .map(|(label, key, color)| Series {
                name: (*label).into(),
                color,
                points: pick(&r[*key]),
            })
            .collect()
    };
    let cpb = |side: &Value| -> Vec<(f64, f64)> {
        holds(side)
            .into_iter()
            .flat_map(|h| h["traffic"].as_array().into_iter().flatten())
            .map(|t| (f(&t["active_sessions"]), f(&t["server_cycles_per_byte"])))
            .collect()
    };
    let steps = |side: &Value, key: &str| -> Vec<(f64, f64)> {
        side["sweep"]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let y = match key {
                    "p99" => f(&s["latency_ms"]["p99"]),
                    _ => f(&s[key]),
                };
                (f(&s["offered_per_s"]), y)
            })
            .collect()
    };
    let mem = |side: &Value| -> Vec<(f64, f64)> {
        holds(side)
            .into_iter()
            .map(|h| (f(&h["sessions_up"]), f(&h["rss_per_session_kib"])))
            .collect()
    };
    vec![
        Plot {
            title: "Throughput vs active sessions".into(),
            x_label: "active sessions (log)".into(),
            y_label: "Mbit/s delivered".into(),
            log_x: true,
            log_y: false,
            series: series(&throughput_points),
            note: note.clone(),
        },
        Plot {
            title: "Server cycles per byte vs active sessions".into(),
            x_label: "active sessions (log)".into(),
            y_label: "cycles/byte".into(),
            log_x: true,
            log_y: false,
            series: series(&cpb),
            note: note.clone(),
        },
        Plot {
            title: "Handshakes: achieved vs offered rate".into(),
            x_label: "offered handshakes/s (log)".into(),
            y_label: "achieved handshakes/s".into(),
            log_x: true,
            log_y: false,
            series: series(&|s| steps(s, "achieved_per_s")),
            note: note.clone(),
        },
        Plot {
            title: "Connect latency p99 vs offered rate".into(),
            x_label: "offered handshakes/s (log)".into(),
            y_label: "p99 ms (log)".into(),
            log_x: true,
            log_y: true,
            series: series(&|s| steps(s, "p99")),
            note: note.clone(),
        },
        Plot {
            title: "Memory per idle session".into(),
            x_label: "idle sessions (log)".into(),
            y_label: "KiB per session".into(),
            log_x: true,
            log_y: false,
            series: series(&mem),
            note,
        },
    ]
}

pub fn svg(r: &Value) -> String {
    svg_grid(&plots(r), 2, 560.0, 360.0)
}
