//! `cargo xtask bench [SUITE] [--quick]`: set up, build the benchmark programs (release) and
//! run them; each writes `target/bench/<suite>.{json,md,svg}`. Then `bench-report` writes the
//! combined `target/bench/report.md` (with SVG plots) from every suite report present.
//!
//! The benchmark programs live in the `tests` package (they need the agent, which xtask
//! must not depend on: setup has to run before anything builds eBPF).

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    setup,
    util::{self, cargo, command},
};

/// Suites: name, binary in the `tests` package.
const SUITES: &[(&str, &str)] = &[
    ("datapath", "bench-datapath"),
    ("tunnel", "bench-tunnel"),
    ("scale", "bench-scale"),
    ("control", "bench-control"),
    ("fleet", "bench-fleet"),
];
/// Writes the combined report from the suites' JSON files.
const REPORT_BIN: &str = "bench-report";

#[derive(Args)]
pub struct BenchArgs {
    /// Suite to run (default: every suite). Known: datapath, tunnel, scale, control.
    suite: Option<String>,
    /// Short runs (about 3 minutes for every suite on a quiet machine) that prove the harness
    /// works; figures not meaningful.
    #[arg(long)]
    quick: bool,
    /// The datapath suite's traffic generator: auto (default: live frames, else AF_PACKET,
    /// else the forwarding rate is reported as not measured), live-frames or af-packet (only
    /// that one; the suite fails if it cannot send).
    #[arg(long, value_name = "auto|live-frames|af-packet")]
    generator: Option<String>,
    /// Skip `cargo xtask setup` (when it just ran, e.g. from `cargo xtask test`).
    #[arg(long, hide = true)]
    no_setup: bool,
    /// Build and run the programs in the dev profile (for `cargo xtask test`'s harness proof:
    /// the privileged tests just built its dependencies, a release build would add minutes;
    /// figures of such a run mean nothing, as with any `--quick` run).
    #[arg(long, hide = true)]
    dev_build: bool,
    /// Write the reports under `target/bench/<SUBDIR>` instead of `target/bench`.
    #[arg(long, hide = true, value_name = "SUBDIR")]
    out_subdir: Option<String>,
    /// Arguments after `--` go to the one suite's program as they are, e.g.
    /// `cargo xtask bench tunnel -- --handshakes-only --rounds 4` (see the program's `--help`).
    #[arg(last = true, value_name = "SUITE ARGS")]
    suite_args: Vec<String>,
}

impl BenchArgs {
    /// Every suite, `--quick`, without running setup again (for `cargo xtask test`).
    pub fn quick_after_setup() -> BenchArgs {
        BenchArgs {
            suite: None,
            quick: true,
            generator: None,
            no_setup: true,
            dev_build: true,
            out_subdir: None,
            suite_args: Vec::new(),
        }
    }

    /// The datapath suite, `--quick`, with the AF_PACKET generator forced, reports under
    /// `target/bench/generator-af-packet` (for `cargo xtask test`: on a machine where live
    /// frames work, the fallback generator would otherwise never run).
    pub fn quick_fallback_generator() -> BenchArgs {
        BenchArgs {
            suite: Some("datapath".into()),
            quick: true,
            generator: Some("af-packet".into()),
            no_setup: true,
            dev_build: true,
            out_subdir: Some("generator-af-packet".into()),
            suite_args: Vec::new(),
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    util::require_root(
        "cargo xtask bench",
        "it creates network namespaces, loads XDP programs and nftables rules",
    )?;
    let suites: Vec<&(&str, &str)> = match &args.suite {
        None => SUITES.iter().collect(),
        Some(name) => match SUITES.iter().find(|(n, _)| n == name) {
            Some(s) => vec![s],
            None => bail!(
                "unknown benchmark suite {name:?}; known: {}",
                SUITES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    if args.generator.is_some() && !suites.iter().any(|(n, _)| *n == "datapath") {
        bail!("--generator applies to the datapath suite only");
    }
    if !args.suite_args.is_empty() && suites.len() != 1 {
        bail!(
            "arguments after `--` go to one suite's program: name the suite (e.g. `cargo xtask bench tunnel -- --handshakes-only`)"
        );
    }
    if !args.no_setup {
        setup::run()?;
    }
    let target = util::target_dir()?;
    let mut out = target.join("bench");
    if let Some(sub) = &args.out_subdir {
        out = out.join(sub);
    }
    // One build for every program: one cargo invocation links them all in parallel.
    let mut build = cargo();
    build.arg("build");
    if !args.dev_build {
        build.arg("--release");
    }
    build.args(["--package", "tests", "--bin", REPORT_BIN]);
    let bin_dir = target.join(if args.dev_build { "debug" } else { "release" });
    for (_, bin) in &suites {
        build.args(["--bin", bin]);
    }
    // The control suite runs `portcullis run` itself, as shipped: the release binary (the
    // dev one in `cargo xtask test`).
    build.args(["--package", "portcullis-agent", "--bin", "portcullis"]);
    util::run(&mut build)?;
    let started = std::time::Instant::now();
    for (name, bin) in suites {
        let t = std::time::Instant::now();
        let mut cmd = command(bin_dir.join(bin));
        cmd.env("PORTCULLIS_BIN", bin_dir.join("portcullis"));
        if args.quick {
            cmd.arg("--quick");
        }
        cmd.arg("--out").arg(&out);
        // Recorded in the report as the command that reproduces it.
        let mut invoked = format!("cargo xtask bench {name}");
        if args.quick {
            invoked.push_str(" --quick");
        }
        if let (Some(g), "datapath") = (&args.generator, *name) {
            cmd.args(["--generator", g]);
            invoked.push_str(&format!(" --generator {g}"));
        }
        if !args.suite_args.is_empty() {
            cmd.args(&args.suite_args);
            invoked.push_str(&format!(" -- {}", args.suite_args.join(" ")));
        }
        cmd.env("PORTCULLIS_BENCH_COMMAND", invoked);
        util::run(&mut cmd).with_context(|| format!("benchmark suite {name}"))?;
        println!(
            "bench: {name} ({:.0} s): {}",
            t.elapsed().as_secs_f64(),
            ["json", "md", "svg"]
                .iter()
                .map(|ext| out.join(format!("{name}.{ext}")))
                .filter(|p| p.exists())
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // The combined report covers whatever suite reports exist (a suite never run here, or
    // run on another branch such as `control`, is listed as "not run").
    util::run(command(bin_dir.join(REPORT_BIN)).arg("--dir").arg(&out))?;
    println!(
        "bench: suites ran in {:.0} s; combined report {}",
        started.elapsed().as_secs_f64(),
        out.join("report.md").display()
    );
    Ok(())
}
