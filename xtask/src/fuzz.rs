//! `cargo xtask fuzz [TARGET]... [--minutes N] [--jobs J]`: builds `agent/fuzz` with
//! cargo-fuzz (libFuzzer, AddressSanitizer; installed when missing) and runs each target for
//! N minutes of CPU time, J at a time. The budget is CPU time, not wall time, so a campaign
//! on a busy or niced machine still does the work it claims.
//!
//! New inputs accumulate in `<target dir>/corpus/<target>` across runs (the committed seeds in
//! `agent/fuzz/corpus/` are only read); crashes go to `<target dir>/artifacts/<target>/`. The
//! run writes `<target dir>/report.{json,md}` with its provenance and fails when a target
//! crashed. The target dir is `$CARGO_TARGET_DIR`, else `target/fuzz`. See docs/fuzzing.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use crate::util::{self, cargo, command};

/// libFuzzer's exit code when interrupted (SIGINT), as we stop a target at its budget.
const INTERRUPTED: i32 = 72;

#[derive(Args)]
pub struct FuzzArgs {
    /// Targets to run (default: every target `cargo fuzz list` names in agent/fuzz).
    targets: Vec<String>,
    /// CPU minutes per target.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Targets run at once (each is one single-threaded libFuzzer process).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Stop a target after this many minutes of wall time even if its CPU budget is not spent
    /// (default: four times the budget and a minute). The report says whether it was.
    #[arg(long)]
    max_wall_minutes: Option<f64>,
    /// Seconds (wall time) one input may take before libFuzzer reports it as a timeout. Raise
    /// it on a loaded or niced machine, where a slow input waits for the CPU.
    #[arg(long, default_value_t = 20)]
    unit_timeout: u64,
    /// Largest input libFuzzer makes (the server and reliable targets read long programs).
    #[arg(long, default_value_t = 4096)]
    max_len: usize,
}

struct Running {
    name: String,
    child: Child,
    started: Instant,
    cpu_budget: Duration,
    wall_cap: Duration,
    interrupted: bool,
    cpu: Duration,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.minutes <= 0.0 || args.jobs == 0 {
        bail!("--minutes must be above 0 and --jobs at least 1");
    }
    let fuzz_dir = util::root_dir().join("agent/fuzz");
    cargo_fuzz()?;
    let all = targets(&fuzz_dir)?;
    let chosen: Vec<String> = if args.targets.is_empty() {
        all.clone()
    } else {
        for t in &args.targets {
            if !all.contains(t) {
                bail!("no fuzz target {t:?}; the targets are: {}", all.join(", "));
            }
        }
        args.targets.clone()
    };
    let out = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::root_dir().join("target/fuzz"));
    // Sanitizer flags are nightly-only; the stable toolchain here enables them this way.
    util::run(
        shell_cargo()
            .args(["fuzz", "build", "--release"])
            .current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_DIR", &out),
    )?;
    let bin_dir = out.join("x86_64-unknown-linux-gnu/release");
    let started_at = unix_now();
    let load_before = read_trim("/proc/loadavg");
    // The source the binaries were just built from (the tree may move on during a long run).
    let commit = git(&["rev-parse", "HEAD"]);
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty());
    let mut queue: Vec<String> = chosen.iter().rev().cloned().collect();
    let mut running: Vec<Running> = Vec::new();
    let mut results = Vec::new();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < args.jobs {
            let Some(name) = queue.pop() else { break };
            running.push(start(&name, &bin_dir, &out, &fuzz_dir, args)?);
        }
        std::thread::sleep(Duration::from_millis(500));
        let mut i = 0;
        while i < running.len() {
            if let Some(mut result) = poll(&mut running[i], &out)? {
                record_in_campaign(&out, &commit, &mut result)?;
                println!("fuzz: {}", summary(&result));
                results.push(result);
                running.remove(i);
            } else {
                i += 1;
            }
        }
    }
    let report = json!({
        "provenance": {
            "git_commit": commit,
            "git_dirty": dirty,
            "hostname": read_trim("/proc/sys/kernel/hostname"),
            "kernel": read_trim("/proc/sys/kernel/osrelease"),
            "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "loadavg_before": load_before,
            "loadavg_after": read_trim("/proc/loadavg"),
            "started_unix_time": started_at,
            "finished_unix_time": unix_now(),
            "rustc": util::output(command("rustc").arg("-V")).ok().map(|s| s.trim().to_string()),
        },
        "cpu_minutes_per_target": args.minutes,
        "jobs": args.jobs,
        "targets": results,
    });
    fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    fs::write(out.join("report.md"), markdown(&report))?;
    println!(
        "fuzz: reports in {}",
        out.join("report.{json,md}").display()
    );
    let crashed: Vec<&Value> = results.iter().filter(|r| r["outcome"] != "clean").collect();
    if !crashed.is_empty() {
        for r in &crashed {
            println!(
                "fuzz: {} {}: reproduce with `cd agent/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {} <artifact>`",
                r["target"], r["outcome"], r["target"].as_str().unwrap_or("")
            );
        }
        bail!(
            "{} target(s) found a failure (see above and docs/fuzzing.md)",
            crashed.len()
        );
    }
    Ok(())
}

/// Adds a target's run to `<out>/campaign.json`, the CPU time each target has had over every
/// run that grew the same corpus (a campaign may span runs), and copies the total into
/// `result` (`campaign_cpu_seconds`, `campaign_executions`).
fn record_in_campaign(out: &Path, commit: &Option<String>, result: &mut Value) -> Result<()> {
    let path = out.join("campaign.json");
    let mut campaign: Value = fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| json!({}));
    let name = result["target"].as_str().unwrap_or("").to_string();
    let entry = &mut campaign[&name];
    let cpu = entry["cpu_seconds"].as_f64().unwrap_or(0.0)
        + result["cpu_seconds"].as_f64().unwrap_or(0.0);
    let execs = (entry["executions"].as_f64().unwrap_or(0.0)
        + result["executions"].as_f64().unwrap_or(0.0)) as u64;
    entry["cpu_seconds"] = json!(cpu);
    entry["executions"] = json!(execs);
    let run = json!({
        "git_commit": commit,
        "finished_unix_time": unix_now(),
        "cpu_seconds": result["cpu_seconds"],
        "executions": result["executions"],
        "outcome": result["outcome"],
    });
    match entry["runs"].as_array_mut() {
        Some(runs) => runs.push(run),
        None => entry["runs"] = json!([run]),
    }
    result["campaign_cpu_seconds"] = json!(cpu);
    result["campaign_executions"] = json!(execs);
    fs::write(&path, serde_json::to_string_pretty(&campaign)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// The fuzz targets, as cargo-fuzz itself lists them.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let listed = util::output(shell_cargo().args(["fuzz", "list"]).current_dir(fuzz_dir))?;
    let names: Vec<String> = listed.split_whitespace().map(str::to_string).collect();
    if names.is_empty() {
        bail!(
            "`cargo fuzz list` in {} names no targets",
            fuzz_dir.display()
        );
    }
    Ok(names)
}

/// `cargo` as a shell runs it, without what `cargo run` put in our environment for us
/// (`CARGO*`, the library path): with those, the sanitizer build's fingerprints differ from a
/// build started by hand and every crate is compiled again (half an hour on two cores).
fn shell_cargo() -> Command {
    let mut cmd = command("cargo");
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("CARGO") && k != "CARGO_HOME") || k == "LD_LIBRARY_PATH" {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// Installs cargo-fuzz when `cargo fuzz` does not run.
fn cargo_fuzz() -> Result<()> {
    if cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    println!("fuzz: cargo-fuzz is missing, installing it (about a minute)");
    util::run(shell_cargo().args(["install", "cargo-fuzz", "--locked"]))
}

fn start(
    name: &str,
    bin_dir: &Path,
    out: &Path,
    fuzz_dir: &Path,
    args: &FuzzArgs,
) -> Result<Running> {
    let corpus = out.join("corpus").join(name);
    let artifacts = out.join("artifacts").join(name);
    let logs = out.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cpu_budget = Duration::from_secs_f64(args.minutes * 60.0);
    // A bound on wall time too (loops are bounded).
    let wall_cap = match args.max_wall_minutes {
        Some(m) => Duration::from_secs_f64(m * 60.0),
        None => cpu_budget * 4 + Duration::from_secs(60),
    };
    let log = fs::File::create(logs.join(format!("{name}.log")))?;
    let child = Command::new(bin_dir.join(name))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-max_len={}", args.max_len))
        .args(["-rss_limit_mb=2048", "-print_final_stats=1"])
        .arg(format!("-timeout={}", args.unit_timeout))
        .arg(format!("-max_total_time={}", wall_cap.as_secs() + 30))
        .arg(&corpus)
        .arg(fuzz_dir.join("corpus").join(name))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting fuzz target {name} from {}", bin_dir.display()))?;
    println!(
        "fuzz: {name} started (pid {}), {:.1} CPU minutes",
        child.id(),
        args.minutes
    );
    Ok(Running {
        name: name.into(),
        child,
        started: Instant::now(),
        cpu_budget,
        wall_cap,
        interrupted: false,
        cpu: Duration::ZERO,
    })
}

/// CPU time (user + system) of a live process.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// Stops the target at its budget; returns its result once it exited.
fn poll(r: &mut Running, out: &Path) -> Result<Option<Value>> {
    if let Some(cpu) = cpu_time(r.child.id()) {
        r.cpu = cpu;
    }
    if !r.interrupted && (r.cpu >= r.cpu_budget || r.started.elapsed() >= r.wall_cap) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(r.child.id() as i32, libc::SIGINT) };
        r.interrupted = true;
    }
    let Some(status) = r.child.try_wait()? else {
        if r.interrupted && r.started.elapsed() >= r.wall_cap + Duration::from_secs(60) {
            let _ = r.child.kill();
        }
        return Ok(None);
    };
    let log =
        fs::read_to_string(out.join("logs").join(format!("{}.log", r.name))).unwrap_or_default();
    let artifacts: Vec<String> = fs::read_dir(out.join("artifacts").join(&r.name))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    let code = status.code();
    let outcome = if code == Some(INTERRUPTED) || code == Some(0) {
        "clean".to_string()
    } else {
        format!(
            "failed (exit {status}; artifacts: {})",
            artifacts.join(", ")
        )
    };
    // libFuzzer's final `stat::` lines are integers.
    let stat = |key: &str| -> Option<u64> {
        log.lines().rev().find_map(|l| {
            l.strip_prefix(&format!("stat::{key}:"))
                .and_then(|v| v.trim().parse().ok())
        })
    };
    // The last status line: `#123456  REDUCE cov: 812 ft: 2301 corp: 190/14Kb ...`.
    let field = |name: &str| -> Option<u64> {
        log.lines()
            .rev()
            .filter(|l| l.starts_with('#'))
            .find_map(|l| {
                let mut it = l.split_whitespace();
                it.position(|w| w == name)?;
                it.next()?.split('/').next()?.parse().ok()
            })
    };
    let corpus_files = fs::read_dir(out.join("corpus").join(&r.name))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(Some(json!({
        "target": r.name,
        "outcome": outcome,
        "cpu_seconds": r.cpu.as_secs_f64().round(),
        "wall_seconds": r.started.elapsed().as_secs_f64().round(),
        "budget_reached": r.cpu >= r.cpu_budget,
        "executions": stat("number_of_executed_units"),
        "executions_per_second": stat("average_exec_per_sec"),
        "new_units": stat("new_units_added"),
        "peak_rss_mb": stat("peak_rss_mb"),
        "coverage": field("cov:"),
        "features": field("ft:"),
        "corpus_files": corpus_files,
        "artifacts": artifacts,
    })))
}

fn summary(r: &Value) -> String {
    format!(
        "{}: {} after {} CPU s ({} in the campaign; {} wall s): {} executions, cov {}, ft {}, corpus {}",
        r["target"].as_str().unwrap_or(""),
        r["outcome"].as_str().unwrap_or(""),
        r["cpu_seconds"],
        r["campaign_cpu_seconds"],
        r["wall_seconds"],
        r["executions"],
        r["coverage"],
        r["features"],
        r["corpus_files"]
    )
}

fn markdown(report: &Value) -> String {
    let p = &report["provenance"];
    let mut md = format!(
        "# Fuzz campaign\n\n{} CPU minutes per target, {} at a time. Commit {}{}, {} ({} CPUs, kernel {}), load {} before and {} after, {}.\n\n",
        report["cpu_minutes_per_target"],
        report["jobs"],
        p["git_commit"].as_str().unwrap_or("?").trim(),
        if p["git_dirty"] == true { " (with uncommitted changes)" } else { "" },
        p["hostname"].as_str().unwrap_or("?"),
        p["cpus"],
        p["kernel"].as_str().unwrap_or("?"),
        p["loadavg_before"].as_str().unwrap_or("?"),
        p["loadavg_after"].as_str().unwrap_or("?"),
        p["rustc"].as_str().unwrap_or("?"),
    );
    md.push_str("| target | outcome | CPU s | campaign CPU s | executions | exec/s | coverage | features | corpus |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for t in report["targets"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t["target"].as_str().unwrap_or(""),
            t["outcome"].as_str().unwrap_or(""),
            t["cpu_seconds"],
            t["campaign_cpu_seconds"],
            t["executions"],
            t["executions_per_second"],
            t["coverage"],
            t["features"],
            t["corpus_files"],
        ));
    }
    md
}

fn git(args: &[&str]) -> Option<String> {
    util::output(command("git").args(args))
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
