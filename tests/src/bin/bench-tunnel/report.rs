//! The comparison rows (Portcullis / stock per figure), the targets, and the two outputs
//! next to `tunnel.json`: `tunnel.md` (tables) and `tunnel.svg` (a hand-written chart: no
//! plotting dependency).
use std::fmt::Write as _;

use serde_json::{json, Value};

use tests::benchreport::{esc, f};

fn ratio(a: f64, b: f64) -> f64 {
    if a.is_finite() && b.is_finite() && b > 0.0 && a >= 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    group: &str,
    label: String,
    unit: &str,
    higher_is_better: bool,
    ours: f64,
    stock: f64,
    target: Option<f64>,
) -> Value {
    let r = ratio(ours, stock);
    let met = target.map(|t| {
        if !r.is_finite() {
            false
        } else if higher_is_better {
            r >= t
        } else {
            r <= t
        }
    });
    json!({
        "group": group,
        "label": label,
        "unit": unit,
        "better": if higher_is_better { "higher" } else { "lower" },
        "portcullis": ours,
        "stock": stock,
        "ratio": r,
        "target_ratio": target,
        "met": met,
    })
}

fn point<'a>(side: &'a Value, clients: u64, dir: &str) -> Option<&'a Value> {
    side["throughput"]
        .as_array()?
        .iter()
        .find(|p| p["clients"].as_u64() == Some(clients) && p["direction"] == dir)
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Every figure for both servers and the ratio Portcullis / stock.
pub fn compare(ours: &Value, stock: &Value) -> Value {
    let mut rows = Vec::new();
    let points: Vec<(u64, String)> = ours["throughput"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["clients"].as_u64().unwrap_or(0),
                p["direction"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let name = |n: u64, d: &str| format!("{d}, {n} client{}", if n == 1 { "" } else { "s" });
    for (n, d) in &points {
        let (o, s) = (point(ours, *n, d), point(stock, *n, d));
        let get = |p: Option<&Value>, k: &str| p.map_or(f64::NAN, |p| f(&p[k]));
        rows.push(row(
            "throughput",
            format!("iperf3 throughput, {}", name(*n, d)),
            "Mbit/s",
            true,
            get(o, "bits_per_second") / 1e6,
            get(s, "bits_per_second") / 1e6,
            Some(crate::TARGET_THROUGHPUT),
        ));
    }
    for (n, d) in &points {
        let (o, s) = (point(ours, *n, d), point(stock, *n, d));
        let get = |p: Option<&Value>, k: &str| p.map_or(f64::NAN, |p| f(&p[k]));
        rows.push(row(
            "cpu_per_byte",
            format!("gateway CPU per byte, {}", name(*n, d)),
            "cycles/B",
            false,
            get(o, "gateway_cycles_per_byte"),
            get(s, "gateway_cycles_per_byte"),
            Some(crate::TARGET_CYCLES_PER_BYTE),
        ));
    }
    for (n, d) in &points {
        let (o, s) = (point(ours, *n, d), point(stock, *n, d));
        let get = |p: Option<&Value>, k: &str| p.map_or(f64::NAN, |p| f(&p[k]));
        rows.push(row(
            "machine_cpu_per_byte",
            format!("whole-machine CPU per byte, {}", name(*n, d)),
            "cycles/B",
            false,
            get(o, "machine_cycles_per_byte"),
            get(s, "machine_cycles_per_byte"),
            None,
        ));
    }
    for (n, d) in &points {
        let (o, s) = (point(ours, *n, d), point(stock, *n, d));
        let get = |p: Option<&Value>, k: &str| p.map_or(f64::NAN, |p| f(&p[k]));
        rows.push(row(
            "tasks_cpu_per_byte",
            format!("all benchmark processes' CPU per byte, {}", name(*n, d)),
            "cycles/B",
            false,
            get(o, "tasks_cycles_per_byte"),
            get(s, "tasks_cycles_per_byte"),
            None,
        ));
    }
    let idle = |side: &Value, k: &str| f(&side["idle_rtt"][k]);
    rows.push(row(
        "latency",
        "RTT idle, median".into(),
        "ms",
        false,
        idle(ours, "median_ms"),
        idle(stock, "median_ms"),
        None,
    ));
    for (n, d) in points.iter().filter(|(n, _)| *n == 1) {
        let loaded =
            |side: &Value, k: &str| point(side, *n, d).map_or(f64::NAN, |p| f(&p["loaded_rtt"][k]));
        for (k, what) in [("median_ms", "median"), ("p99_ms", "p99")] {
            rows.push(row(
                "latency",
                format!("RTT under load ({}), {what}", name(*n, d)),
                "ms",
                false,
                loaded(ours, k),
                loaded(stock, k),
                None,
            ));
        }
        for (k, what) in [("median_ms", "median"), ("p99_ms", "p99")] {
            rows.push(row(
                "latency",
                format!("added latency under load ({}), {what}", name(*n, d)),
                "ms",
                false,
                loaded(ours, k) - idle(ours, k),
                loaded(stock, k) - idle(stock, k),
                None,
            ));
        }
    }
    // Handshake-rate points, matched by sessions in flight.
    let hs_points: Vec<u64> = ours["handshakes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["inflight"].as_u64())
        .collect();
    let hs = |side: &Value, inflight: u64, k: &str| {
        side["handshakes"]
            .as_array()
            .and_then(|a| a.iter().find(|h| h["inflight"].as_u64() == Some(inflight)))
            .map_or(f64::NAN, |h| f(&h[k]))
    };
    for &n in &hs_points {
        rows.push(row(
            "handshakes",
            format!("handshakes per second, {n} in flight"),
            "1/s",
            true,
            hs(ours, n, "rate_per_s"),
            hs(stock, n, "rate_per_s"),
            Some(crate::TARGET_HANDSHAKES),
        ));
    }
    for &n in &hs_points {
        rows.push(row(
            "handshake_cpu",
            format!("server CPU per handshake, {n} in flight"),
            "ms",
            false,
            hs(ours, n, "server_cpu_ms_per_handshake"),
            hs(stock, n, "server_cpu_ms_per_handshake"),
            None,
        ));
    }
    for &n in &hs_points {
        let lat = |side: &Value| {
            side["handshakes"]
                .as_array()
                .and_then(|a| a.iter().find(|h| h["inflight"].as_u64() == Some(n)))
                .map_or(f64::NAN, |h| f(&h["latency_ms"]["median"]))
        };
        rows.push(row(
            "handshake_time",
            format!("handshake time, median, {n} in flight"),
            "ms",
            false,
            lat(ours),
            lat(stock),
            None,
        ));
    }
    let ttc = |side: &Value| -> Vec<f64> {
        side["time_to_connected_s"]
            .as_array()
            .into_iter()
            .flatten()
            .map(f)
            .collect()
    };
    let slowest = |v: Vec<f64>| v.into_iter().fold(f64::NAN, f64::max);
    let n_ttc = ttc(ours).len();
    rows.push(row(
        "connect",
        format!("stock client time to connected, median of {n_ttc}"),
        "s",
        false,
        median(&ttc(ours)),
        median(&ttc(stock)),
        None,
    ));
    rows.push(row(
        "connect",
        format!("stock client time to connected, slowest of {n_ttc}"),
        "s",
        false,
        slowest(ttc(ours)),
        slowest(ttc(stock)),
        None,
    ));
    rows.push(row(
        "memory",
        "memory per idle connected session".into(),
        "KiB",
        false,
        f(&ours["memory"]["per_session_kib"]),
        f(&stock["memory"]["per_session_kib"]),
        None,
    ));
    Value::Array(rows)
}

/// The rows of every round (each from [`compare`]) as one: per figure (matched by label),
/// the median of each server's figure, the median ratio over the rounds with its minimum and
/// maximum, and every round's ratio; the target is judged on the median ratio.
pub fn combine(rounds: &[Value]) -> Value {
    let Some(first) = rounds.first().and_then(Value::as_array) else {
        return json!([]);
    };
    let rows = first
        .iter()
        .map(|r0| {
            let same: Vec<&Value> = rounds
                .iter()
                .filter_map(|rows| rows.as_array()?.iter().find(|r| r["label"] == r0["label"]))
                .collect();
            let of = |k: &str| -> Vec<f64> { same.iter().map(|r| f(&r[k])).collect() };
            let ratios = of("ratio");
            let finite: Vec<f64> = ratios.iter().copied().filter(|x| x.is_finite()).collect();
            let (lo, hi) = if finite.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                (
                    finite.iter().copied().fold(f64::INFINITY, f64::min),
                    finite.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                )
            };
            let mut r = row(
                r0["group"].as_str().unwrap_or(""),
                r0["label"].as_str().unwrap_or("").to_string(),
                r0["unit"].as_str().unwrap_or(""),
                r0["better"] == "higher",
                median_mid(&of("portcullis")),
                median_mid(&of("stock")),
                r0["target_ratio"].as_f64(),
            );
            // The median of the per-round ratios, not the ratio of the medians.
            let m = median_mid(&ratios);
            r["ratio"] = json!(m);
            if let Some(t) = r0["target_ratio"].as_f64() {
                let met = m.is_finite()
                    && if r0["better"] == "higher" {
                        m >= t
                    } else {
                        m <= t
                    };
                r["met"] = json!(met);
            }
            r["ratio_min"] = json!(lo);
            r["ratio_max"] = json!(hi);
            r["round_ratios"] = json!(ratios);
            r["rounds_measured"] = json!(finite.len());
            r
        })
        .collect();
    Value::Array(rows)
}

/// Median of the finite values (the mean of the two middle ones for an even count).
fn median_mid(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn target_summary(rows: &[&Value], target: f64, higher: bool, what: &str) -> Value {
    let ratios: Vec<f64> = rows.iter().map(|r| f(&r["ratio"])).collect();
    let met = rows.iter().filter(|r| r["met"] == true).count();
    let worst = if higher {
        ratios.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    };
    json!({
        "target": what,
        "target_ratio": target,
        "points": rows.len(),
        "points_met": met,
        "met": !rows.is_empty() && met == rows.len(),
        "worst_ratio": worst,
        "ratios": ratios,
    })
}

/// The issue's three targets, judged on every point of their group.
pub fn targets(cmp: &Value, thr: f64, cpb: f64, hs: f64) -> Value {
    let rows: Vec<&Value> = cmp
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let of =
        |g: &str| -> Vec<&Value> { rows.iter().copied().filter(|r| r["group"] == g).collect() };
    json!({
        "throughput": target_summary(&of("throughput"), thr, true, ">= 3x the stock server's throughput, at every point"),
        "cycles_per_byte": target_summary(&of("cpu_per_byte"), cpb, false, "<= 1/3 of the stock server's gateway cycles per byte, at every point"),
        "handshakes": target_summary(&of("handshakes"), hs, true, ">= 5x the stock server's connection rate, at every concurrency"),
    })
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio_s(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}x")
    } else {
        "n/a".into()
    }
}

/// The Markdown summary of `report` (the JSON document).
pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let w = &mut s;
    let m = &r["machine"];
    let _ = writeln!(
        w,
        "# Portcullis tunnel benchmark: Portcullis vs stock `openvpn --server`\n"
    );
    let _ = writeln!(
        w,
        "- command: `{}`{}\n- kernel: {}\n- CPU: {} ({} cores, {} MHz)\n- {}\n- load average before / after: {} / {}\n- cycles: {}\n- mode: {}\n",
        r["command"].as_str().unwrap_or(""),
        r["invoked_as"]
            .as_str()
            .map(|c| format!(" (via `{c}`)"))
            .unwrap_or_default(),
        m["kernel"].as_str().unwrap_or(""),
        m["cpu_model"].as_str().unwrap_or(""),
        m["cores"],
        num(f(&m["cpu_mhz"])),
        m["openvpn_version"].as_str().unwrap_or("openvpn ?"),
        m["loadavg_before"].as_str().unwrap_or(""),
        m["loadavg_after"].as_str().unwrap_or(""),
        r["cycles"]["method"].as_str().unwrap_or(""),
        if r["quick"].as_bool() == Some(true) {
            "--quick (short runs: the figures only show that the harness works)"
        } else {
            "full"
        },
    );
    let st = &r["settings"];
    let _ = writeln!(
        w,
        "Same stock openvpn 2.6 clients (`disable-dco`), AES-256-GCM, UDP with tls-crypt, same \
         namespaces and veths for both servers; iperf3 runs of {} s (one TCP stream per client); \
         {} handshakes per rate run, with {} sessions in flight; memory with {} idle sessions; {} \
         pings every {} ms.\n",
        st["iperf3_seconds"],
        st["handshakes_total"],
        st["handshakes_in_flight"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" / "),
        st["memory_sessions"],
        st["ping_count"],
        st["ping_interval_ms"],
    );
    // Both servers' UDP buffers as the kernel reports them (`ss -m`): the same, or it shows.
    let buffers = |side: &str| {
        r[side]["server"]["socket_buffers"]["sockets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("rb {} / tb {}", s["rb"], s["tb"]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        w,
        "UDP socket buffers (4 MiB asked by both; the kernel reports twice that): stock {}; \
         Portcullis {}.\n",
        buffers("stock"),
        buffers("portcullis"),
    );

    let _ = writeln!(
        w,
        "## Summary (ratio = Portcullis / stock)\n\nThe servers alternate round by round ({} \
         rounds, stock first in even rounds); each ratio is taken within a round; the table \
         gives the median of the rounds' ratios and their range, and each server's median \
         figure.\n",
        r["settings"]["rounds"]
    );
    let _ = writeln!(
        w,
        "| figure | unit | Portcullis | stock | ratio (median) | ratio min–max (rounds) | better | target |\n|---|---|---:|---:|---:|---:|---|---|"
    );
    for row in r["comparison"].as_array().into_iter().flatten() {
        let target = match row["target_ratio"].as_f64() {
            Some(t) => {
                let op = if row["better"] == "higher" {
                    ">="
                } else {
                    "<="
                };
                let met = if row["met"] == true {
                    "met"
                } else {
                    "**not met**"
                };
                format!("{op} {} : {met}", ratio_s(t))
            }
            None => String::new(),
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {}–{} ({}) | {} | {} |",
            row["label"].as_str().unwrap_or(""),
            row["unit"].as_str().unwrap_or(""),
            num(f(&row["portcullis"])),
            num(f(&row["stock"])),
            ratio_s(f(&row["ratio"])),
            ratio_s(f(&row["ratio_min"])),
            ratio_s(f(&row["ratio_max"])),
            row["rounds_measured"],
            row["better"].as_str().unwrap_or(""),
            target,
        );
    }
    let _ = writeln!(w, "\n## Targets\n");
    for (k, what) in [
        ("throughput", "Throughput"),
        ("cycles_per_byte", "Gateway cycles per byte"),
        ("handshakes", "Connection rate"),
    ] {
        let t = &r["targets"][k];
        let _ = writeln!(
            w,
            "- {what} ({}): **{}** ({} of {} points; worst ratio {})",
            t["target"].as_str().unwrap_or(""),
            if t["met"] == true { "met" } else { "NOT met" },
            t["points_met"],
            t["points"],
            ratio_s(f(&t["worst_ratio"])),
        );
    }

    let _ = writeln!(w, "\n## Throughput and CPU per point\n");
    let _ = writeln!(
        w,
        "CPU over the iperf3 run (from before the clients start until the last finishes). Gateway = \
         the stock server process, or the `portcullis run` process (all its threads). Tasks = gateway + \
         openvpn clients + iperf3 (its own report). Machine = busy time of all CPUs, including any \
         other load on the machine. Drops: UDP receive-buffer errors in the gateway namespace and in \
         the client namespaces, and device drops (rx/tx) there.\n"
    );
    let _ = writeln!(
        w,
        "| server | direction | clients | Mbit/s | per client | TCP retransmits | CPU s: gateway / clients / iperf3 | machine busy s (softirq) | wall s | cycles/B: gateway / tasks / machine | UDP rcvbuf errors: gateway / clients | device drops | RTT under load median / p99 ms |\n|---|---|---:|---:|---|---:|---|---|---:|---|---|---|---|"
    );
    for name in ["stock", "portcullis"] {
        for p in r[name]["throughput"].as_array().into_iter().flatten() {
            let per: Vec<String> = p["per_client_bits_per_second"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| num(f(x) / 1e6))
                .collect();
            let rtt = if p["loaded_rtt"].is_object() {
                format!(
                    "{} / {}",
                    num(f(&p["loaded_rtt"]["median_ms"])),
                    num(f(&p["loaded_rtt"]["p99_ms"]))
                )
            } else {
                String::new()
            };
            let dr = &p["drops"];
            let clients_rcvbuf: u64 = dr["clients"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["udp_rcvbuf_errors"].as_u64().unwrap_or(0))
                .sum();
            let links: Vec<String> = std::iter::once(&dr["gateway"])
                .chain(dr["clients"].as_array().into_iter().flatten())
                .flat_map(|ns| ns["link_drops"].as_array().cloned().unwrap_or_default())
                .map(|l| {
                    format!(
                        "{} {}/{}",
                        l["ifname"].as_str().unwrap_or(""),
                        l["rx_dropped"],
                        l["tx_dropped"]
                    )
                })
                .collect();
            let _ = writeln!(
                w,
                "| {name} | {} | {} | {} | {} | {} | {} / {} / {} | {} ({}) | {} | {} / {} / {} | {} / {} | {} | {} |",
                p["direction"].as_str().unwrap_or(""),
                p["clients"],
                num(f(&p["bits_per_second"]) / 1e6),
                per.join(", "),
                p["retransmits"],
                num(f(&p["cpu"]["gateway_cpu_s"])),
                num(f(&p["openvpn_clients_cpu_s"])),
                num(f(&p["iperf3_cpu_s"])),
                num(f(&p["cpu"]["machine_busy_s"])),
                num(f(&p["cpu"]["machine_softirq_s"])),
                num(f(&p["wall_seconds"])),
                num(f(&p["gateway_cycles_per_byte"])),
                num(f(&p["tasks_cycles_per_byte"])),
                num(f(&p["machine_cycles_per_byte"])),
                dr["gateway"]["udp_rcvbuf_errors"],
                clients_rcvbuf,
                if links.is_empty() { "none".to_string() } else { links.join(", ") },
                rtt,
            );
        }
    }

    let _ = writeln!(w, "\n## Handshakes\n");
    let _ = writeln!(
        w,
        "Busy = CPU seconds per second of the run (1.0 = one core). UDP drops = receive-buffer \
         errors in the gateway namespace during the run.\n"
    );
    let _ = writeln!(
        w,
        "| server | in flight | completed / failed | seconds | per second | server CPU ms each | server / generator busy | handshake ms median / p99 | packets sent / received by the generator | UDP drops at the server |\n|---|---:|---|---:|---:|---:|---|---|---|---:|"
    );
    for name in ["stock", "portcullis"] {
        for h in r[name]["handshakes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                w,
                "| {name} | {} | {} / {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} |",
                h["inflight"],
                h["completed"],
                h["failed"],
                num(f(&h["seconds"])),
                num(f(&h["rate_per_s"])),
                num(f(&h["server_cpu_ms_per_handshake"])),
                num(f(&h["server_busy_fraction"])),
                num(f(&h["generator_busy_fraction"])),
                num(f(&h["latency_ms"]["median"])),
                num(f(&h["latency_ms"]["p99"])),
                h["packets_sent"],
                h["packets_received"],
                h["drops"]["gateway"]["udp_rcvbuf_errors"],
            );
        }
    }
    let _ = writeln!(w, "\n## Memory and connect time\n");
    let _ = writeln!(
        w,
        "| server | idle sessions | RSS before → after KiB | KiB per session | stock client time to connected s |\n|---|---:|---|---:|---|"
    );
    for name in ["stock", "portcullis"] {
        let mem = &r[name]["memory"];
        let ttc: Vec<String> = r[name]["time_to_connected_s"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| num(f(x)))
            .collect();
        let _ = writeln!(
            w,
            "| {name} | {} | {} → {} | {} | {} |",
            mem["sessions_connected"],
            mem["rss_before_kib"],
            mem["rss_after_kib"],
            num(f(&mem["per_session_kib"])),
            ttc.join(", "),
        );
    }
    let _ = writeln!(w, "\n## Idle RTT\n");
    let _ = writeln!(
        w,
        "| server | median ms | p99 ms | min ms | max ms | lost |\n|---|---:|---:|---:|---:|---:|"
    );
    for name in ["stock", "portcullis"] {
        let i = &r[name]["idle_rtt"];
        let _ = writeln!(
            w,
            "| {name} | {} | {} | {} | {} | {} |",
            num(f(&i["median_ms"])),
            num(f(&i["p99_ms"])),
            num(f(&i["min_ms"])),
            num(f(&i["max_ms"])),
            i["lost"],
        );
    }
    if let Some(notes) = r["notes"].as_array().filter(|n| !n.is_empty()) {
        let _ = writeln!(w, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(w, "- {}", n.as_str().unwrap_or(""));
        }
    }
    s
}

/// Two panels: throughput per point for both servers, and every ratio on a log scale
/// (with 1x and the targets marked).
pub fn svg(r: &Value) -> String {
    let rows: Vec<&Value> = r["comparison"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let thr: Vec<&Value> = rows
        .iter()
        .copied()
        .filter(|x| x["group"] == "throughput")
        .collect();
    let row_h = 22.0;
    let (rx, ry, rw) = (330.0, 60.0, 420.0);
    let right_h = ry + rows.len() as f64 * row_h + 60.0;
    let (width, height) = (1240.0, right_h.max(420.0));
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(w, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let (c_ours, c_stock) = ("#1f77b4", "#ff7f0e");

    // ---- left: throughput -------------------------------------------------------------------------
    let (bx, by, bh, bw) = (50.0, 60.0, 260.0, 330.0);
    let _ = writeln!(
        w,
        r#"<text x="10" y="24" font-size="14" font-weight="bold">iperf3 throughput, Mbit/s (ratio below)</text>"#
    );
    let max = thr
        .iter()
        .flat_map(|x| [f(&x["portcullis"]), f(&x["stock"])])
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.15;
    let _ = writeln!(
        w,
        r#"<line x1="{bx}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        by + bh,
        bx + bw,
        by + bh
    );
    let gw = bw / thr.len().max(1) as f64;
    let bar = gw / 3.0;
    for (i, x) in thr.iter().enumerate() {
        let gx = bx + i as f64 * gw + bar / 2.0;
        for (j, (k, color)) in [("stock", c_stock), ("portcullis", c_ours)]
            .iter()
            .enumerate()
        {
            let v = f(&x[*k]);
            if !v.is_finite() {
                continue;
            }
            let h = v / max * bh;
            let _ = writeln!(
                w,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"#,
                gx + j as f64 * bar,
                by + bh - h,
                bar - 2.0
            );
            let _ = writeln!(
                w,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{}</text>"#,
                gx + j as f64 * bar + bar / 2.0,
                by + bh - h - 3.0,
                num(v)
            );
        }
        let label = x["label"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("iperf3 throughput, ");
        // "upload, 3 clients": one line each, so neighbouring groups do not overlap.
        for (li, part) in label.split(", ").enumerate() {
            let _ = writeln!(
                w,
                r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="10">{}</text>"#,
                gx + bar,
                by + bh + 13.0 + li as f64 * 12.0,
                esc(part)
            );
        }
        let _ = writeln!(
            w,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
            gx + bar,
            by + bh + 42.0,
            ratio_s(f(&x["ratio"]))
        );
    }
    for (i, (label, color)) in [("stock openvpn --server", c_stock), ("Portcullis", c_ours)]
        .iter()
        .enumerate()
    {
        let ly = by + bh + 66.0 + i as f64 * 16.0;
        let _ = writeln!(
            w,
            r#"<rect x="{bx}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{}" y="{:.1}">{label}</text>"#,
            ly - 10.0,
            bx + 18.0,
            ly
        );
    }
    if r["quick"].as_bool() == Some(true) {
        let _ = writeln!(
            w,
            r##"<text x="10" y="{}" fill="#d62728">--quick: figures not meaningful</text>"##,
            by + bh + 114.0
        );
    }

    // ---- right: every ratio, log scale ------------------------------------------------------------
    let ox = 440.0 + rx;
    let _ = writeln!(
        w,
        r#"<text x="440" y="24" font-size="14" font-weight="bold">Portcullis / stock, log scale (green: Portcullis better; | target)</text>"#
    );
    let (lo, hi) = (0.05f64.log10(), 50.0f64.log10());
    let xpos = |v: f64| ox + (v.clamp(0.05, 50.0).log10() - lo) / (hi - lo) * rw;
    for tick in [0.1, 0.333, 1.0, 3.0, 5.0, 10.0] {
        let x = xpos(tick);
        let _ = writeln!(
            w,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{:.1}" stroke="{}" stroke-dasharray="{}"/>"##,
            ry - 10.0,
            ry + rows.len() as f64 * row_h,
            if tick == 1.0 { "#000000" } else { "#cccccc" },
            if tick == 1.0 { "" } else { "3 3" }
        );
        let _ = writeln!(
            w,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle" font-size="10">{}x</text>"#,
            ry - 14.0,
            if tick == 0.333 {
                "1/3".to_string()
            } else {
                format!("{tick}")
            }
        );
    }
    for (i, x) in rows.iter().enumerate() {
        let y = ry + i as f64 * row_h;
        let rv = f(&x["ratio"]);
        let higher = x["better"] == "higher";
        let _ = writeln!(
            w,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"#,
            ox - 6.0,
            y + row_h * 0.65,
            esc(x["label"].as_str().unwrap_or(""))
        );
        let target_x = x["target_ratio"].as_f64().map(xpos);
        if rv.is_finite() && rv > 0.0 {
            let (x0, x1) = (xpos(1.0), xpos(rv));
            let good = if higher { rv >= 1.0 } else { rv <= 1.0 };
            let _ = writeln!(
                w,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                x0.min(x1),
                y + 3.0,
                (x1 - x0).abs().max(1.0),
                row_h - 6.0,
                if good { "#2ca02c" } else { "#d62728" }
            );
            // Right of the bar, and of the target tick when that is further right.
            let tx = x0.max(x1).max(target_x.unwrap_or(f64::MIN));
            let _ = writeln!(
                w,
                r#"<text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
                tx + 4.0,
                y + row_h * 0.65,
                ratio_s(rv)
            );
        } else {
            let _ = writeln!(
                w,
                r#"<text x="{:.1}" y="{:.1}" font-size="10">n/a</text>"#,
                xpos(1.0) + 4.0,
                y + row_h * 0.65
            );
        }
        if let Some(tx) = target_x {
            let _ = writeln!(
                w,
                r#"<line x1="{tx:.1}" y1="{:.1}" x2="{tx:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>"#,
                y + 1.0,
                y + row_h - 1.0
            );
        }
    }
    let _ = writeln!(w, "</svg>");
    s
}

#[cfg(test)]
mod combine_tests {
    use super::*;

    fn rows(ours: f64, stock: f64) -> Value {
        json!([row(
            "handshakes",
            "hs".into(),
            "1/s",
            true,
            ours,
            stock,
            Some(5.0)
        )])
    }

    #[test]
    fn combine_takes_the_median_of_the_per_round_ratios_and_their_range() {
        // Ratios 2, 6 and 8: median 6 (met), range 2-8; the servers' medians are their own.
        let c = combine(&[rows(200.0, 100.0), rows(600.0, 100.0), rows(400.0, 50.0)]);
        let r = &c[0];
        assert_eq!(f(&r["ratio"]), 6.0);
        assert_eq!((f(&r["ratio_min"]), f(&r["ratio_max"])), (2.0, 8.0));
        assert_eq!(f(&r["portcullis"]), 400.0);
        assert_eq!(f(&r["stock"]), 100.0);
        assert_eq!(r["met"], true);
        assert_eq!(r["rounds_measured"], 3);
        // A round that measured nothing does not count; an even count averages the middle two.
        let c = combine(&[
            rows(200.0, 100.0),
            rows(f64::NAN, 100.0),
            rows(800.0, 100.0),
        ]);
        assert_eq!(f(&c[0]["ratio"]), 5.0);
        assert_eq!(c[0]["rounds_measured"], 2);
        assert_eq!(c[0]["met"], true);
        let c = combine(&[rows(200.0, 100.0), rows(300.0, 100.0)]);
        assert_eq!(c[0]["met"], false);
    }
}
