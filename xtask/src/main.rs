//! `cargo xtask`: the developer and CI entry point for Portcullis.
//!
//! This crate must never depend on the agent, `common` or anything that builds eBPF: the
//! agent's build script needs the BPF toolchain that `cargo xtask setup` installs, so
//! `cargo xtask` has to compile on a machine that has none of it yet.

mod bench;
mod cleanup;
mod demo;
mod fuzz;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Portcullis developer tasks: setup, test, cleanup, demo, bench, fuzz"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing (apt packages, bpf-linker) and mount bpffs. Needs root.
    /// Idempotent: a second run only checks and takes about a second.
    Setup,
    /// Run setup, then fmt, clippy, the unprivileged tests and the privileged
    /// integration tests (serially, as root), and print a summary.
    Test(test::TestArgs),
    /// Remove test leftovers: network namespaces and links named `pct-*`, pinned
    /// directories /sys/fs/bpf/portcullis-test*. Needs root.
    Cleanup,
    /// Run setup, build the agent (release) and run `portcullis demo [ARGS]...`.
    Demo(demo::DemoArgs),
    /// Run setup and the benchmarks (release builds, as root); each suite writes
    /// target/bench/<suite>.{json,md,svg}. `--quick` for short runs that prove the harness.
    Bench(bench::BenchArgs),
    /// Build agent/fuzz with cargo-fuzz (installed when missing) and run every fuzz target
    /// (or the ones named) for `--minutes` of CPU time each; writes report.{json,md} and
    /// fails when a target crashed. Not root. See docs/fuzzing.md.
    Fuzz(fuzz::FuzzArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test(args) => test::run(&args),
        // These tear down or build labs: one privileged run on the machine at a time.
        Command::Cleanup => util::lock_privileged().and_then(|_l| cleanup::run()),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => util::lock_privileged().and_then(|_l| bench::run(&args)),
        Command::Fuzz(args) => fuzz::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain of causes, without anyhow's backtrace: these are user-facing errors.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
