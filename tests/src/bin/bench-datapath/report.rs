//! The three outputs: `datapath.json` (every figure), `datapath.md` (tables with ratios) and
//! `datapath.svg` (a hand-written bar chart: no plotting dependency).
use std::fmt::Write as _;

use serde_json::Value;

use tests::benchreport::{esc, f, provenance_line};

fn mpps(pps: f64) -> String {
    format!("{:.3}", pps / 1e6)
}

/// The Markdown summary of `report` (the JSON document).
pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let w = &mut s;
    let m = &r["machine"];
    let _ = writeln!(w, "# Portcullis data path benchmark\n");
    let _ = writeln!(
        w,
        "- command: `{}`{}\n- provenance: {}\n- mode: {}\n",
        r["command"].as_str().unwrap_or(""),
        r["invoked_as"]
            .as_str()
            .map(|c| format!(" (via `{c}`)"))
            .unwrap_or_default(),
        provenance_line(m),
        if r["quick"].as_bool() == Some(true) {
            "--quick (short runs: the figures only show that the harness works)"
        } else {
            "full"
        },
    );
    let st = &r["setup"];
    let _ = writeln!(
        w,
        "Loaded while measuring: {} authorization rules ({} prefixes in the trie), {} security-group \
         rules ({} trie prefixes, {} port ranges), {} conntrack entries.\n",
        st["authorization_rules"],
        st["authorization_prefixes"],
        st["security_group_rules"],
        st["security_group_prefixes"],
        st["security_group_port_ranges"],
        r["prog_test_run"]["conntrack_entries"],
    );

    let p = &r["prog_test_run"];
    let _ = writeln!(
        w,
        "## (a) ns per packet, BPF_PROG_TEST_RUN (repeat = 1, kernel-reported duration, {} runs per case)\n",
        p["runs_per_case"]
    );
    let _ = writeln!(
        w,
        "| case | verdict | median ns | mean | p10 | p90 | p99 | median minus baseline | x baseline | program alone, mean ns (bpf_stats) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let base = p["cases"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "baseline"))
        .map(|c| f(&c["median_ns"]))
        .unwrap_or(f64::NAN);
    for c in p["cases"].as_array().into_iter().flatten() {
        let med = f(&c["median_ns"]);
        let _ = writeln!(
            w,
            "| {} ({}) | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} |",
            c["name"].as_str().unwrap_or(""),
            c["description"].as_str().unwrap_or(""),
            c["verdict"].as_str().unwrap_or(""),
            med,
            f(&c["mean_ns"]),
            f(&c["p10_ns"]),
            f(&c["p90_ns"]),
            f(&c["p99_ns"]),
            med - base,
            med / base,
            f(&c["program_only_mean_ns"]),
        );
    }
    let _ = writeln!(
        w,
        "\nTarget: established fast path <= {} ns/packet: **{}** (median {:.0} ns hot, {:.0} ns over 100k flows).\n",
        p["target_fast_path_ns"],
        if p["fast_path_meets_target"].as_bool() == Some(true) {
            "met"
        } else {
            "NOT met"
        },
        f(&p["fast_path_median_ns"]),
        f(&p["fast_path_100k_median_ns"]),
    );

    let fw = &r["forwarding"];
    let gen = &fw["generator"];
    if fw["measured"].as_bool() == Some(false) {
        let _ = writeln!(
            w,
            "## (b) forwarding rate: not measured\n\n{}\n",
            fw["not_measured_reason"]
                .as_str()
                .unwrap_or("no reason recorded")
        );
    } else {
        markdown_forwarding(w, fw, gen);
    }
    markdown_tap(w, &r["tap_input"]);
    if let Some(notes) = r["notes"].as_array() {
        let _ = writeln!(w, "\n## Notes\n");
        for n in notes {
            let _ = writeln!(w, "- {}", n.as_str().unwrap_or(""));
        }
    }
    s
}

/// Part (c): frames written into the TAP, as the agent's workers do.
fn markdown_tap(w: &mut String, tap: &Value) {
    if tap.is_null() {
        return;
    }
    if tap["measured"].as_bool() == Some(false) {
        let _ = writeln!(
            w,
            "\n## (c) the deployed input, frames written into a TAP: not measured\n\n{}\n",
            tap["not_measured_reason"]
                .as_str()
                .unwrap_or("no reason recorded")
        );
        return;
    }
    let _ = writeln!(
        w,
        "\n## (c) the deployed input: frames written into a TAP (XDP inside each write)\n\n\
         (b) above feeds a veth (frames arrive by NAPI); this is the path production uses. Method: {}\n\n\
         | frame | flows | writes/s | delivered pps | writer CPU per frame (ns) | fast path | new flows | pass, no neighbour | drops (events: warm-up + window) |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        tap["method"].as_str().unwrap_or("")
    );
    for p in tap["points"].as_array().into_iter().flatten() {
        let _ = writeln!(
            w,
            "| {} B | {} | {:.3} M | {:.3} M | {:.0} | {} | {} | {} | {} |",
            p["frame_bytes"],
            p["flows"],
            f(&p["writes_per_s"]) / 1e6,
            f(&p["delivered_pps"]) / 1e6,
            f(&p["writer_cpu_ns_per_frame"]),
            p["fast_path"],
            p["new_flows"],
            p["pass_no_neighbour"],
            p["drops"],
        );
    }
}

fn markdown_forwarding(w: &mut String, fw: &Value, gen: &Value) {
    let _ = writeln!(
        w,
        "## (b) forwarding rate, packets/s delivered to the sink (XDP and nftables interleaved: {} rounds of one {} s window each after {} s warm-up; kernel forwarding: median of {} windows)\n",
        fw["rounds"], fw["measure_seconds"], fw["warmup_seconds"], fw["repetitions"]
    );
    let refused: Vec<String> = gen["refused"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            format!(
                "{} refused: {}",
                x["kind"].as_str().unwrap_or("?"),
                x["reason"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let _ = writeln!(
        w,
        "Generator: **{}**{} ({}; requested: {}).\n",
        gen["kind"].as_str().unwrap_or("?"),
        if refused.is_empty() {
            String::new()
        } else {
            format!(", a fallback: {}", refused.join("; "))
        },
        gen["method"].as_str().unwrap_or(""),
        gen["requested"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        w,
        "| frame bytes | flows | XDP Mpps | nftables Mpps | XDP / nftables, median of rounds | min - max | kernel forwarding, no rules, Mpps |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for x in fw["ratios"].as_array().into_iter().flatten() {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | **{:.2}x** | {:.2} - {:.2} | {} |",
            x["frame_bytes"],
            x["flows"],
            mpps(f(&x["xdp_pps"])),
            mpps(f(&x["nftables_pps"])),
            f(&x["ratio"]),
            f(&x["ratio_min"]),
            f(&x["ratio_max"]),
            mpps(f(&x["kernel_forwarding_pps"])),
        );
    }
    let _ = writeln!(
        w,
        "\nTarget: XDP >= {}x nftables: **{}** (lowest median ratio {:.2}x).\n",
        fw["target_ratio"],
        if fw["meets_target"].as_bool() == Some(true) {
            "met"
        } else {
            "NOT met"
        },
        f(&fw["min_ratio"]),
    );
    let _ = writeln!(
        w,
        "Details per run (offered = what the generator pushed; input drops = frames the gateway's \
         input ring refused, i.e. the gateway was saturated; sink drops = frames the sink refused, \
         i.e. the sink was the limit; CPU = busy share per core, the gateway forwards on CPU {}):\n",
        fw["forward_cpu"]
    );
    let _ = writeln!(
        w,
        "| mode | frame | flows | round | delivered Mpps | offered Mpps | input drops Mpps | sink drops Mpps | generator sent / refused Mpps | CPU busy |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for pnt in fw["points"].as_array().into_iter().flatten() {
        for run in pnt["runs"].as_array().into_iter().flatten() {
            let cpu: Vec<String> = run["cpu_busy"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| format!("{:.0}%", f(c) * 100.0))
                .collect();
            let generator = if run["generator_sent_pps"].is_number() {
                format!(
                    "{} / {}",
                    mpps(f(&run["generator_sent_pps"])),
                    mpps(f(&run["generator_refused_pps"]))
                )
            } else {
                "n/a".into()
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {generator} | {} |",
                pnt["mode"].as_str().unwrap_or(""),
                pnt["frame_bytes"],
                pnt["flows"],
                run["round"],
                mpps(f(&run["delivered_pps"])),
                mpps(f(&run["offered_pps"])),
                mpps(f(&run["gw_input_drop_pps"])),
                mpps(f(&run["sink_drop_pps"])),
                cpu.join(" / "),
            );
        }
    }
}

/// Two panels: ns/packet per case (with the 250 ns target), and Mpps per forwarding point.
pub fn svg(r: &Value) -> String {
    let (width, height) = (980.0, 480.0);
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(w, r#"<rect width="100%" height="100%" fill="white"/>"#);

    // ---- left: ns per packet ----------------------------------------------------------------
    let cases: Vec<&Value> = r["prog_test_run"]["cases"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let target = f(&r["prog_test_run"]["target_fast_path_ns"]);
    let max_ns = cases.iter().map(|c| f(&c["p90_ns"])).fold(target, f64::max) * 1.1;
    let (x0, y0, pw) = (150.0, 50.0, 300.0);
    let bar_h = 22.0;
    let _ = writeln!(
        w,
        r#"<text x="{}" y="24" font-size="14" font-weight="bold">(a) ns per packet, BPF_PROG_TEST_RUN (median, p10-p90)</text>"#,
        10
    );
    for (i, c) in cases.iter().enumerate() {
        let y = y0 + i as f64 * (bar_h + 14.0);
        let med = f(&c["median_ns"]);
        let bw = med / max_ns * pw;
        let color = match c["verdict"].as_str() {
            Some("XDP_PASS") => "#999999",
            Some("XDP_DROP") => "#d62728",
            _ => "#1f77b4",
        };
        let _ = writeln!(
            w,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + bar_h * 0.7,
            esc(c["name"].as_str().unwrap_or(""))
        );
        let _ = writeln!(
            w,
            r#"<rect x="{x0}" y="{y}" width="{bw:.1}" height="{bar_h}" fill="{color}"/>"#
        );
        let (l, h) = (
            x0 + f(&c["p10_ns"]) / max_ns * pw,
            x0 + f(&c["p90_ns"]) / max_ns * pw,
        );
        let ym = y + bar_h / 2.0;
        let _ = writeln!(
            w,
            r#"<line x1="{l:.1}" y1="{ym}" x2="{h:.1}" y2="{ym}" stroke="black"/>"#
        );
        let _ = writeln!(
            w,
            r#"<text x="{:.1}" y="{}">{med:.0} ns</text>"#,
            x0 + bw.max(h - x0) + 6.0,
            y + bar_h * 0.7
        );
    }
    let tx = x0 + target / max_ns * pw;
    let y_end = y0 + cases.len() as f64 * (bar_h + 14.0);
    let _ = writeln!(
        w,
        r##"<line x1="{tx:.1}" y1="{}" x2="{tx:.1}" y2="{y_end}" stroke="#2ca02c" stroke-dasharray="4 3"/>"##,
        y0 - 8.0
    );
    let _ = writeln!(
        w,
        r##"<text x="{tx:.1}" y="{}" fill="#2ca02c" text-anchor="middle">target {target:.0} ns</text>"##,
        y_end + 14.0
    );

    // ---- right: Mpps per point ----------------------------------------------------------------
    let ratios: Vec<&Value> = r["forwarding"]["ratios"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let series = [
        ("xdp_pps", "XDP data path", "#1f77b4"),
        ("nftables_pps", "nftables twin", "#ff7f0e"),
        ("kernel_forwarding_pps", "kernel, no rules", "#bbbbbb"),
    ];
    let max_pps = ratios
        .iter()
        .flat_map(|x| series.iter().map(move |(k, _, _)| f(&x[*k])))
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.15;
    let (bx, by, bh, bwid) = (560.0, 60.0, 280.0, 400.0);
    let _ = writeln!(
        w,
        r#"<text x="{}" y="24" font-size="14" font-weight="bold">(b) forwarding, Mpps delivered (XDP / nftables)</text>"#,
        bx - 40.0
    );
    let _ = writeln!(
        w,
        r#"<line x1="{bx}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        by + bh,
        bx + bwid,
        by + bh
    );
    let group_w = bwid / ratios.len().max(1) as f64;
    let bar_w = group_w / (series.len() as f64 + 1.0);
    for (gi, x) in ratios.iter().enumerate() {
        let gx = bx + gi as f64 * group_w + bar_w / 2.0;
        for (si, (key, _, color)) in series.iter().enumerate() {
            let v = f(&x[*key]);
            if !v.is_finite() {
                continue;
            }
            let h = v / max_pps * bh;
            let _ = writeln!(
                w,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"/>"#,
                gx + si as f64 * bar_w,
                by + bh - h,
                bar_w - 2.0
            );
            let _ = writeln!(
                w,
                r#"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle">{:.2}</text>"#,
                gx + si as f64 * bar_w + bar_w / 2.0,
                by + bh - h - 3.0,
                v / 1e6
            );
        }
        let _ = writeln!(
            w,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{} B, {} fl.</text>"#,
            gx + bar_w * 1.5,
            by + bh + 16.0,
            x["frame_bytes"],
            x["flows"]
        );
        let _ = writeln!(
            w,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" font-weight="bold">{:.2}x</text>"#,
            gx + bar_w * 1.5,
            by + bh + 32.0,
            f(&x["ratio"])
        );
        if f(&x["ratio_min"]).is_finite() {
            let _ = writeln!(
                w,
                r#"<text x="{:.1}" y="{}" text-anchor="middle" font-size="9">{:.2}-{:.2}</text>"#,
                gx + bar_w * 1.5,
                by + bh + 44.0,
                f(&x["ratio_min"]),
                f(&x["ratio_max"])
            );
        }
    }
    for (si, (_, label, color)) in series.iter().enumerate() {
        let ly = by + bh + 62.0 + si as f64 * 16.0;
        let _ = writeln!(
            w,
            r#"<rect x="{bx}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{}" y="{:.1}">{label}</text>"#,
            ly - 10.0,
            bx + 18.0,
            ly
        );
    }
    let _ = writeln!(w, "</svg>");
    s
}

#[cfg(test)]
mod checks {
    use super::*;
    use serde_json::json;

    fn report(forwarding: Value) -> Value {
        json!({
            "command": "bench-datapath --quick",
            "quick": true,
            "machine": {"git_commit": "0123456789abcdef", "git_dirty": false, "cores": 2},
            "setup": {},
            "prog_test_run": {"cases": []},
            "forwarding": forwarding,
            "notes": [],
        })
    }

    #[test]
    fn forwarding_not_measured_says_why() {
        let md = markdown(&report(json!({
            "measured": false,
            "not_measured_reason": "no traffic generator works here: live_frames: EPERM",
            "generator": {"requested": "auto", "kind": null, "refused": []},
        })));
        assert!(md.contains("## (b) forwarding rate: not measured"), "{md}");
        assert!(md.contains("live_frames: EPERM"), "{md}");
        assert!(md.contains("commit 0123456789ab;"), "{md}");
        assert!(!md.contains("XDP / nftables"), "{md}");
        // The chart has no forwarding bars, and still renders.
        assert!(svg(&report(json!({"measured": false}))).ends_with("</svg>\n"));
    }

    #[test]
    fn forwarding_names_the_generator_and_the_spread() {
        let md = markdown(&report(json!({
            "measured": true,
            "rounds": 3,
            "generator": {
                "requested": "auto", "kind": "af_packet", "method": "sendmmsg",
                "refused": [{"kind": "live_frames", "reason": "EPERM"}],
            },
            "ratios": [{
                "frame_bytes": 64, "flows": 1, "xdp_pps": 2.0e6, "nftables_pps": 1.0e6,
                "ratio": 2.0, "ratio_min": 1.5, "ratio_max": 2.5,
                "kernel_forwarding_pps": 1.2e6,
            }],
            "points": [],
        })));
        assert!(
            md.contains("Generator: **af_packet**, a fallback: live_frames refused: EPERM"),
            "{md}"
        );
        assert!(
            md.contains("| 64 | 1 | 2.000 | 1.000 | **2.00x** | 1.50 - 2.50 | 1.200 |"),
            "{md}"
        );
    }
}
