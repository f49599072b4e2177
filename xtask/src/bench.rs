//! `cargo xtask bench [SUITE] [--quick]`: set up, build the benchmark programs (release) and
//! run them; each writes `target/bench/<suite>.{json,md,svg}`.
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
    ("control", "bench-control"),
];

#[derive(Args)]
pub struct BenchArgs {
    /// Suite to run (default: every suite). Known: datapath, tunnel, control.
    suite: Option<String>,
    /// Short runs (well under 3 minutes) that prove the harness works; figures not meaningful.
    #[arg(long)]
    quick: bool,
    /// Skip `cargo xtask setup` (when it just ran, e.g. from `cargo xtask test`).
    #[arg(long, hide = true)]
    no_setup: bool,
}

impl BenchArgs {
    /// Every suite, `--quick`, without running setup again (for `cargo xtask test`).
    pub fn quick_after_setup() -> BenchArgs {
        BenchArgs {
            suite: None,
            quick: true,
            no_setup: true,
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
    if !args.no_setup {
        setup::run()?;
    }
    let target = util::target_dir()?;
    let out = target.join("bench");
    for (name, bin) in suites {
        util::run(cargo().args(["build", "--release", "--package", "tests", "--bin", bin]))?;
        // The control suite runs `portcullis run` itself, as shipped: the release binary.
        util::run(cargo().args(["build", "--release", "--package", "portcullis-agent"]))?;
        let mut cmd = command(target.join("release").join(bin));
        cmd.env("PORTCULLIS_BIN", target.join("release").join("portcullis"));
        if args.quick {
            cmd.arg("--quick");
        }
        cmd.arg("--out").arg(&out);
        // Recorded in the report as the command that reproduces it.
        let mut invoked = format!("cargo xtask bench {name}");
        if args.quick {
            invoked.push_str(" --quick");
        }
        cmd.env("PORTCULLIS_BENCH_COMMAND", invoked);
        util::run(&mut cmd).with_context(|| format!("benchmark suite {name}"))?;
        println!(
            "bench: {name}: {}",
            ["json", "md", "svg"]
                .iter()
                .map(|ext| out.join(format!("{name}.{ext}")))
                .filter(|p| p.exists())
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}
