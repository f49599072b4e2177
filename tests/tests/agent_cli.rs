//! The `portcullis` binary end to end: `check` on good and bad files, and `portcullis run`
//! in a gateway namespace driven by the CLI (`pki`, `client-config export`, `connections`,
//! `reload`) and signals, with stock `openvpn` clients using the exported profiles unchanged.
//!
//! Needs `target/debug/portcullis` (`cargo build -p portcullis-agent`; `cargo xtask test`
//! builds it). The topology is in `tests::agent`. Every wait is bounded.
#[path = "agent_cli/check.rs"]
mod check;
#[path = "agent_cli/lifecycle.rs"]
mod lifecycle;
#[path = "agent_cli/reload.rs"]
mod reload;
#[path = "agent_cli/sessions.rs"]
mod sessions;

use std::time::{Duration, Instant};

use tests::agent::{
    cli, cli_ok, endpoint_toml, poll, tunnel_addr, write_atomic, AgentLab, CliPki, Output,
    COMPLETED, ENDPOINT, TAP,
};
use tests::gateway::{GW_IF, SERVER};
use tests::openvpn::{ping, TempDir};
use tests::probe::{self, mono_ns, Sender, Sink, STREAM_A};
use tests::require_root;

/// The policy part most tests run: `alice` (and `carol`) in `eng`, which may reach the
/// private network.
const ENG_ALLOWED: &str = r#"
[groups]
eng = ["alice", "carol"]

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["eng"]
description = "engineering reaches the private network"
"#;

/// A two-line login banner (TOML basic string: `\n` is a newline).
const BANNER: &str = "Authorized use only.\\nActivity is logged.";

/// How long a refused client gets to (wrongly) complete before we call it refused.
const REFUSED: Duration = Duration::from_secs(8);

fn check(path: &std::path::Path, json: bool) -> Output {
    let p = path.to_string_lossy();
    let mut args = vec!["check", "--config", &p];
    if json {
        args.push("--json");
    }
    cli(&args)
}

/// `check` fails and its error output names every one of `paths`.
fn assert_check_names(file: &std::path::Path, text: &str, paths: &[&str]) {
    write_atomic(file, text);
    let o = check(file, false);
    assert!(!o.success(), "check accepted a bad file:\n{text}\n{o}");
    assert!(!o.stdout.contains("valid"), "{o}");
    for p in paths {
        assert!(
            o.stderr.contains(p),
            "the error output does not name {p:?}:\n{o}"
        );
    }
}
