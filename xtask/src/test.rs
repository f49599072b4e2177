//! `cargo xtask test`: every check CI runs, in order, with a summary at the end.
//!
//! The output of each `cargo test` is passed through untouched (CI reads its
//! "test result:" lines). A failing step does not stop the others unless `--fail-fast`
//! is given, so one run shows every problem; the exit status is non-zero if any step failed.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use clap::Args;

use crate::{
    bench, cleanup, setup,
    util::{self, cargo},
};

/// The eBPF crate only builds for bpfel-unknown-none (the agent's build script builds it).
const EBPF_PACKAGE: &str = "portcullis-ebpf";
/// Integration tests that need root and network namespaces.
const PRIVILEGED_PACKAGE: &str = "tests";
const AGENT_PACKAGE: &str = "portcullis-agent";

#[derive(Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    skip_lint: bool,
    /// Skip the privileged integration tests (the `tests` crate).
    #[arg(long)]
    skip_privileged: bool,
    /// Stop at the first failing step (cleanup after privileged tests still runs).
    #[arg(long)]
    fail_fast: bool,
}

enum Outcome {
    Ok,
    Failed(String),
    Skipped,
}

struct Runner {
    fail_fast: bool,
    results: Vec<(String, Outcome, Duration)>,
}

impl Runner {
    fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|(_, outcome, _)| matches!(outcome, Outcome::Failed(_)))
    }

    /// Runs a step unless an earlier one failed under `--fail-fast` (`always` steps run anyway).
    fn step(&mut self, name: &str, always: bool, f: impl FnOnce() -> Result<()>) {
        if self.fail_fast && self.failed() && !always {
            self.results
                .push((name.into(), Outcome::Skipped, Duration::ZERO));
            return;
        }
        println!("\n==> xtask test: {name}");
        let start = Instant::now();
        let outcome = match f() {
            Ok(()) => Outcome::Ok,
            Err(err) => {
                eprintln!("xtask test: {name} failed: {err:#}");
                Outcome::Failed(format!("{err:#}"))
            }
        };
        self.results.push((name.into(), outcome, start.elapsed()));
    }

    fn cargo(&mut self, name: &str, args: &[&str]) {
        let mut cmd = cargo();
        cmd.args(args);
        self.command(name, cmd);
    }

    fn command(&mut self, name: &str, mut cmd: Command) {
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        self.step(name, false, || util::run(&mut cmd));
    }

    fn summary(&self) -> Result<()> {
        // Deliberately not in the "N passed, N failed" shape: these are steps, not tests,
        // and CI should read cargo test's own closing lines.
        println!("\nxtask test summary:");
        for (name, outcome, elapsed) in &self.results {
            let (state, detail) = match outcome {
                Outcome::Ok => ("ok", String::new()),
                Outcome::Failed(err) => ("FAILED", format!("  {err}")),
                Outcome::Skipped => ("skipped", String::new()),
            };
            println!(
                "  {state:<8} {name:<40} {:>7.1}s{detail}",
                elapsed.as_secs_f64()
            );
        }
        let failed: Vec<&str> = self
            .results
            .iter()
            .filter(|(_, outcome, _)| matches!(outcome, Outcome::Failed(_)))
            .map(|(name, _, _)| name.as_str())
            .collect();
        if failed.is_empty() {
            println!("xtask test: every step succeeded");
            Ok(())
        } else {
            bail!("xtask test: failed steps: {}", failed.join(", "))
        }
    }
}

pub fn run(args: &TestArgs) -> Result<()> {
    let mut runner = Runner {
        fail_fast: args.fail_fast,
        results: Vec::new(),
    };

    // Without the toolchain nothing below can build: stop here.
    runner.step("setup", false, setup::run);
    if runner.failed() {
        return runner.summary();
    }

    if args.skip_lint {
        runner
            .results
            .push(("fmt".into(), Outcome::Skipped, Duration::ZERO));
        runner
            .results
            .push(("clippy".into(), Outcome::Skipped, Duration::ZERO));
    } else {
        runner.cargo("fmt", &["fmt", "--all", "--", "--check"]);
        runner.cargo(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_PACKAGE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        );
    }

    runner.cargo(
        "unprivileged tests (unit, property)",
        &[
            "test",
            "--workspace",
            "--exclude",
            EBPF_PACKAGE,
            "--exclude",
            PRIVILEGED_PACKAGE,
        ],
    );

    if args.skip_privileged {
        runner
            .results
            .push(("privileged tests".into(), Outcome::Skipped, Duration::ZERO));
    } else {
        // End-to-end tests run target/debug/portcullis; `cargo test` alone may not build it.
        runner.cargo("build agent binary", &["build", "--package", AGENT_PACKAGE]);
        // From the first cleanup to the last: no other privileged run on this machine.
        let _lock = match util::lock_privileged() {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("xtask test: running without the machine lock: {e:#}");
                None
            }
        };
        runner.step("cleanup before privileged tests", false, cleanup::run);
        // Serial: the tests create network namespaces, links and pins. `--tests` leaves out
        // the (empty) doc-tests so cargo's last "test result:" line is the real one;
        // `--no-fail-fast` runs every test file even when an earlier one fails.
        runner.cargo(
            "privileged tests (netns, root)",
            &[
                "test",
                "--package",
                PRIVILEGED_PACKAGE,
                "--tests",
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ],
        );
        // The main job end to end: it exits non-zero when a flow does not get the verdict
        // the reference evaluator prescribes.
        match util::target_dir() {
            Ok(t) => {
                let mut demo = util::command(t.join("debug/portcullis"));
                demo.arg("demo");
                runner.command("demo (portcullis demo)", demo);
            }
            Err(e) => runner.step("demo (portcullis demo)", false, || Err(e)),
        }
        // The benchmark harness, in --quick mode: its figures are not checked, only that it
        // builds, runs end to end (namespaces, XDP, nftables twin) and writes its reports.
        runner.step("benchmark harness (bench --quick)", false, || {
            bench::run(&bench::BenchArgs::quick_after_setup())
        });
        // The forwarding benchmark's fallback generator (AF_PACKET), forced: where live
        // frames work it would otherwise never run. Forced, the suite fails unless it sends.
        runner.step(
            "benchmark fallback generator (bench datapath --quick --generator af-packet)",
            false,
            || bench::run(&bench::BenchArgs::quick_fallback_generator()),
        );
        runner.step("cleanup after privileged tests", true, cleanup::run);
    }

    runner.summary()
}
