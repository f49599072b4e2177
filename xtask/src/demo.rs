//! `cargo xtask demo [--keep | --fleet]`: set up, build the agent in release mode and hand
//! over to `portcullis demo`, whose exit status becomes ours (`--fleet`: two gateways and a
//! one-member etcd, see `agent/src/demo/fleet.rs`).

use std::{ffi::OsString, os::unix::process::CommandExt};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    setup,
    util::{self, cargo, command},
};

#[derive(Args)]
pub struct DemoArgs {
    /// Arguments passed on to `portcullis demo`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

pub fn run(args: DemoArgs) -> Result<()> {
    setup::run()?;
    util::run(cargo().args(["build", "--release", "--package", "portcullis-agent"]))?;
    let binary = util::target_dir()?.join("release/portcullis");
    let mut cmd = command(&binary);
    cmd.arg("demo").args(&args.args);
    println!("+ {}", util::display(&cmd));
    // exec: signals (Ctrl-C) and the exit status belong to the demo itself.
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not run {}", binary.display()))
}
