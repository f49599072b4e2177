//! `portcullis logs connections|flows`: the running agent's search of its connection log or
//! flow log (the same admin action as the console's log pages), one JSON record per line,
//! newest first.
use anyhow::Result;

use super::Admin;
use crate::admin::{LogKind, LogQuery};

#[derive(clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub admin: Admin,
    /// Part of the user name (directory user or certificate name).
    #[arg(long, default_value = "")]
    pub user: String,
    /// UTC, `YYYY-MM-DD[ HH:MM[:SS]]`.
    #[arg(long, default_value = "")]
    pub since: String,
    #[arg(long, default_value = "")]
    pub until: String,
    /// Connection log: the failure code (`invalid_credentials`, `rate_limited`, ...).
    #[arg(long, default_value = "")]
    pub code: String,
    /// Flow log: part of the destination (`10.0.0.5`, `10.0.0.5:443`).
    #[arg(long, default_value = "")]
    pub destination: String,
    /// Flow log: part of the deciding rule, or the drop reason.
    #[arg(long, default_value = "")]
    pub rule: String,
    /// At most this many records (default 200, at most 1000).
    #[arg(long, default_value_t = 0)]
    pub limit: u32,
}

pub fn run(kind: LogKind, a: LogsArgs) -> Result<()> {
    let q = LogQuery {
        user: a.user,
        since: a.since,
        until: a.until,
        code: a.code,
        destination: a.destination,
        rule: a.rule,
        limit: a.limit,
    };
    let r = super::client(&a.admin)?
        .logs(kind, q)
        .map_err(super::refused)?;
    for v in &r.records {
        println!("{v}");
    }
    if r.truncated {
        eprintln!(
            "(searched the last {} lines of the log only: older records are not included)",
            r.scanned
        );
    }
    Ok(())
}
