//! Report helpers shared by the benchmark programs: the provenance of a run (commit, binary,
//! machine, load; see [`machine`]) and a tiny
//! hand-written SVG line plotter (no plotting dependency: the output is a few hundred lines
//! of SVG anyone can read).
use std::{fmt::Write, path::Path};

use serde_json::{json, Value};

/// A number from JSON, NaN when absent.
pub fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A figure for a Markdown table: "n/a" when not finite, fewer decimals for larger values.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A file's contents, trimmed (empty if unreadable).
pub fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The first line a command prints (stdout, else stderr).
pub fn first_line_of(cmd: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .ok()?;
    let text = if o.stdout.is_empty() {
        o.stderr
    } else {
        o.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// `git` on the repository this crate was built from (wherever the program runs from).
/// `safe.directory=*`: the benchmarks run as root in a tree another user may own, which git
/// otherwise refuses to read.
fn git(args: &[&str]) -> Option<String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let o = std::process::Command::new("git")
        .args(["-c", "safe.directory=*", "-C"])
        .arg(repo)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A program's path, its modification time and its build profile (`release`/`debug`, from
/// the `target/<profile>/` directory it sits in).
fn binary(path: &Path) -> Value {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let profile = path
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| n == "release" || n == "debug");
    json!({
        "path": path.display().to_string(),
        "modified_unix_time": modified,
        "build_profile": profile,
    })
}

/// Where a run comes from and what it ran on; every suite's JSON has it as `machine`.
/// Captured when a suite starts; [`write_suite_reports`] completes it when the JSON is
/// written (`loadavg_after`, `finished_unix_time`).
///
/// - the source: `git_commit` and `git_dirty` (tracked files changed since that commit:
///   then the commit alone does not reproduce the run) of the repository this program was
///   built from, read at run time (`cargo xtask bench` builds right before it runs);
/// - the binaries: this program (`binary`: path, modification time, build profile, and
///   `debug_assertions` of the build) and the agent it runs, when `PORTCULLIS_BIN` names one;
/// - the machine: kernel, CPU model and clock, cores, memory, openvpn version, and the load
///   average at the start and at the end.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemTotal:"))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    });
    let commit = git(&["rev-parse", "HEAD"]).map(|s| s.trim().to_string());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| {
        s.lines()
            .map(|l| l.get(3..).unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    });
    let mut this = std::env::current_exe()
        .map(|p| binary(&p))
        .unwrap_or(Value::Null);
    if this.is_object() {
        this["debug_assertions"] = json!(cfg!(debug_assertions));
    }
    json!({
        "kernel": read_trim("/proc/sys/kernel/osrelease"),
        "kernel_version": read_trim("/proc/version"),
        "cpu_model": model,
        "cpu_mhz": crate::benchsys::cpu_mhz(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": mem_kib.map(|k| k as f64 / 1024.0 / 1024.0),
        "loadavg_before": read_trim("/proc/loadavg"),
        "started_unix_time": unix_now(),
        "git_commit": commit,
        "git_dirty": dirty.as_ref().map(|d| !d.is_empty()),
        "git_dirty_files": dirty,
        "binary": this,
        "agent_binary": std::env::var_os("PORTCULLIS_BIN").map(|p| binary(Path::new(&p))),
        "openvpn_version": first_line_of(&["openvpn", "--version"]),
    })
}

/// Completes a report's `machine` at the end of the run: the load average now (unless the
/// suite recorded its own) and the time.
pub fn finish_machine(report: &mut Value) {
    if !report["machine"].is_object() {
        report["machine"] = machine();
    }
    let m = &mut report["machine"];
    if m["loadavg_after"].is_null() {
        m["loadavg_after"] = json!(read_trim("/proc/loadavg"));
    }
    m["finished_unix_time"] = json!(unix_now());
}

/// One line of the provenance for a Markdown report: commit (and whether the tree was
/// dirty), the binary and its profile, load average before and after.
pub fn provenance_line(m: &Value) -> String {
    let commit = m["git_commit"]
        .as_str()
        .map_or("unknown".into(), |c| c.get(..12).unwrap_or(c).to_string());
    let dirty = match m["git_dirty"].as_bool() {
        Some(true) => format!(
            " + uncommitted changes to {} file(s)",
            m["git_dirty_files"].as_array().map_or(0, Vec::len)
        ),
        Some(false) => String::new(),
        None => " (tree state unknown)".into(),
    };
    format!(
        "commit {commit}{dirty}; binary `{}` ({} build); kernel {}, {} ({} cores); load average before / after: {} / {}",
        m["binary"]["path"].as_str().unwrap_or("?"),
        m["binary"]["build_profile"].as_str().unwrap_or("unknown"),
        m["kernel"].as_str().unwrap_or("?"),
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cores"],
        m["loadavg_before"].as_str().unwrap_or("?"),
        m["loadavg_after"].as_str().unwrap_or("?"),
    )
}

/// One line of a plot.
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// A line plot with markers; log axes optional.
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
    /// Shown under the title (e.g. "--quick: figures not meaningful").
    pub note: Option<String>,
}

pub const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

fn nice_ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        return (a..=b).map(|e| 10f64.powi(e)).collect();
    }
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).floor() * step;
    let mut out = Vec::new();
    while t <= hi + step * 0.5 && out.len() < 20 {
        out.push(t);
        t += step;
    }
    out
}

fn tick_label(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

impl Plot {
    /// The plot as an SVG group at `(x, y)` of size `w` × `h` (axes, ticks, lines, legend).
    pub fn render(&self, x: f64, y: f64, w: f64, h: f64) -> String {
        let mut s = String::new();
        // Room below the axes for the tick labels, the axis label and one legend row per series.
        let legend = 14.0 * self.series.len() as f64;
        let (px, py, pw, ph) = (x + 60.0, y + 40.0, w - 80.0, h - 90.0 - legend);
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
            y + 16.0,
            esc(&self.title)
        );
        if let Some(n) = &self.note {
            let _ = writeln!(
                s,
                r##"<text x="{x}" y="{}" font-size="11" fill="#d62728">{}</text>"##,
                y + 32.0,
                esc(n)
            );
        }
        let pts: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(a, b)| {
                a.is_finite()
                    && b.is_finite()
                    && (!self.log_x || *a > 0.0)
                    && (!self.log_y || *b > 0.0)
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        if pts.is_empty() {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">no data (suite not run)</text>"#,
                px + pw / 2.0,
                py + ph / 2.0
            );
            return s;
        }
        let (mut x0, mut x1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (mut y0, mut y1) = pts
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        if !self.log_y {
            y0 = y0.min(0.0);
        }
        if x1 <= x0 {
            // One x value: centre it.
            if self.log_x {
                (x0, x1) = (x0 / 3.0, x1 * 3.0);
            } else {
                (x0, x1) = (0.0, x0 * 2.0 + 1.0);
            }
        }
        if y1 <= y0 {
            y1 = y0 * 2.0 + 1.0;
        }
        let xt = nice_ticks(x0, x1, self.log_x);
        let yt = nice_ticks(y0, y1 * 1.05, self.log_y);
        let (x0, x1) = (xt[0].min(x0), xt.last().copied().unwrap_or(x1).max(x1));
        let (y0, y1) = (yt[0].min(y0), yt.last().copied().unwrap_or(y1).max(y1));
        let map = |v: f64, lo: f64, hi: f64, log: bool| {
            if log {
                (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
            } else {
                (v - lo) / (hi - lo)
            }
        };
        let sx = |v: f64| px + map(v, x0, x1, self.log_x) * pw;
        let sy = |v: f64| py + ph - map(v, y0, y1, self.log_y) * ph;
        for t in &xt {
            let tx = sx(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{tx:.1}" y1="{py}" x2="{tx:.1}" y2="{}" stroke="#dddddd"/><text x="{tx:.1}" y="{}" text-anchor="middle" font-size="10">{}</text>"##,
                py + ph,
                py + ph + 14.0,
                tick_label(*t)
            );
        }
        for t in &yt {
            let ty = sy(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{px}" y1="{ty:.1}" x2="{}" y2="{ty:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end" font-size="10">{}</text>"##,
                px + pw,
                px - 4.0,
                ty + 3.0,
                tick_label(*t)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="11">{}</text>"#,
            px + pw / 2.0,
            py + ph + 30.0,
            esc(&self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="11" transform="rotate(-90 {} {})" text-anchor="middle">{}</text>"#,
            x + 12.0,
            py + ph / 2.0,
            x + 12.0,
            py + ph / 2.0,
            esc(&self.y_label)
        );
        for (i, ser) in self.series.iter().enumerate() {
            let p: Vec<(f64, f64)> = ser
                .points
                .iter()
                .copied()
                .filter(|(a, b)| {
                    a.is_finite()
                        && b.is_finite()
                        && (!self.log_x || *a > 0.0)
                        && (!self.log_y || *b > 0.0)
                })
                .collect();
            let line: Vec<String> = p
                .iter()
                .map(|(a, b)| format!("{:.1},{:.1}", sx(*a), sy(*b)))
                .collect();
            if line.len() > 1 {
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                    line.join(" "),
                    ser.color
                );
            }
            for (a, b) in &p {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: {} → {}</title></circle>"#,
                    sx(*a),
                    sy(*b),
                    ser.color,
                    esc(&ser.name),
                    num(*a),
                    num(*b)
                );
            }
            let ly = py + ph + 50.0 + i as f64 * 14.0;
            let _ = writeln!(
                s,
                r#"<rect x="{px}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{}" y="{ly:.1}" font-size="11">{}</text>"#,
                ly - 9.0,
                ser.color,
                px + 14.0,
                esc(&ser.name)
            );
        }
        s
    }
}

/// A whole SVG document of plots laid out in a grid of `cols` columns, each `w` × `h`.
pub fn svg_grid(plots: &[Plot], cols: usize, w: f64, h: f64) -> String {
    let cols = cols.max(1);
    let rows = plots.len().div_ceil(cols).max(1);
    let (width, height) = (cols as f64 * w, rows as f64 * h);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, p) in plots.iter().enumerate() {
        let (c, r) = (i % cols, i / cols);
        s.push_str(&p.render(c as f64 * w + 10.0, r as f64 * h + 6.0, w - 20.0, h - 10.0));
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `<out>/<suite>.md` and `.svg` from `report` (and `.json` when `write_json`; not when
/// re-rendering a saved report). A new report's provenance is completed first
/// ([`finish_machine`]).
pub fn write_suite_reports(
    out: &std::path::Path,
    suite: &str,
    report: &Value,
    write_json: bool,
    markdown: fn(&Value) -> String,
    svg: fn(&Value) -> String,
) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut finished;
    let report = if write_json {
        finished = report.clone();
        finish_machine(&mut finished);
        &finished
    } else {
        report
    };
    if write_json {
        std::fs::write(
            out.join(format!("{suite}.json")),
            serde_json::to_string_pretty(report)? + "\n",
        )?;
    }
    std::fs::write(out.join(format!("{suite}.md")), markdown(report))?;
    std::fs::write(out.join(format!("{suite}.svg")), svg(report))?;
    Ok(())
}

/// A saved `<suite>.json` read back for `--render`.
pub fn read_report(path: &std::path::Path) -> anyhow::Result<Value> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).context("parsing the report")
}

/// The in-process tunnel's IO counters, as both tunnel benchmarks report them.
pub fn tunnel_stats(st: &portcullis::io::TunnelStats) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "udp_rx": st.udp_rx.load(Relaxed), "udp_tx": st.udp_tx.load(Relaxed),
        "tap_rx": st.tap_rx.load(Relaxed), "tap_tx": st.tap_tx.load(Relaxed),
        "data_unknown_peer": st.data_unknown_peer.load(Relaxed),
        "data_rejected": st.data_rejected.load(Relaxed),
        "data_spoofed": st.data_spoofed.load(Relaxed),
        "data_not_ipv4": st.data_not_ipv4.load(Relaxed),
        "tap_no_peer": st.tap_no_peer.load(Relaxed),
        "control_queue_full": st.control_queue_full.load(Relaxed),
        "tcp_connections": st.tcp_connections.load(Relaxed),
        "tcp_refused": st.tcp_refused.load(Relaxed),
        "tcp_timed_out": st.tcp_timed_out.load(Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finishing_a_report_completes_its_provenance() {
        let mut r = json!({"machine": {"loadavg_before": "1.00 1.00 1.00 1/1 1"}});
        finish_machine(&mut r);
        assert!(r["machine"]["loadavg_after"].is_string());
        assert!(r["machine"]["finished_unix_time"].as_u64().unwrap() > 0);
        // A load average the suite recorded itself is kept.
        let mut r = json!({"machine": {"loadavg_after": "mine"}});
        finish_machine(&mut r);
        assert_eq!(r["machine"]["loadavg_after"], "mine");
        // A report without a machine gets one.
        let mut r = json!({});
        finish_machine(&mut r);
        assert!(r["machine"]["cores"].as_u64().unwrap() >= 1);
        assert!(r["machine"]["binary"]["path"].is_string());
    }

    #[test]
    fn provenance_line_says_commit_dirty_binary_and_load() {
        let m = json!({
            "git_commit": "0123456789abcdef0123", "git_dirty": true,
            "git_dirty_files": ["a.rs", "b.rs"],
            "binary": {"path": "/t/release/bench-x", "build_profile": "release"},
            "kernel": "6.18", "cpu_model": "CPU", "cores": 2,
            "loadavg_before": "0.5", "loadavg_after": "0.7",
        });
        assert_eq!(
            provenance_line(&m),
            "commit 0123456789ab + uncommitted changes to 2 file(s); binary `/t/release/bench-x` (release build); kernel 6.18, CPU (2 cores); load average before / after: 0.5 / 0.7"
        );
        let unknown = provenance_line(&json!({}));
        assert!(
            unknown.starts_with("commit unknown (tree state unknown); binary `?` (unknown build)"),
            "{unknown}"
        );
    }

    #[test]
    fn plot_renders_lines_and_handles_empty() {
        let p = Plot {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: true,
            log_y: false,
            series: vec![Series {
                name: "a<b".into(),
                color: COLORS[0],
                points: vec![(1.0, 2.0), (4.0, 3.0), (16.0, f64::NAN)],
            }],
            note: None,
        };
        let s = svg_grid(&[p], 1, 400.0, 300.0);
        assert!(s.contains("<polyline"), "{s}");
        assert!(s.contains("a&lt;b"));
        let empty = Plot {
            title: "e".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: false,
            log_y: false,
            series: vec![],
            note: None,
        };
        assert!(empty.render(0.0, 0.0, 300.0, 200.0).contains("no data"));
    }
}
