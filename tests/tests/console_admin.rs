//! The admin actions behind the console's certificates and log pages, on a real
//! `portcullis run` with stock clients, through the CLI (the console asks the same typed
//! actions in-process): `certificates list|revoke` ends the revoked user's live session and
//! is audited with the caller, and `logs connections|flows` finds the user's records.
//!
//! Needs `target/debug/portcullis` (`cargo build -p portcullis-agent`) and root; hold
//! `/tmp/portcullis-priv.lock`.
use std::time::Duration;

use tests::agent::{cli, cli_ok, poll, AgentLab};
use tests::require_root;

const POLICY: &str = r#"
[groups]
eng = ["alice"]

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["eng"]
"#;

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn revoke_through_the_admin_api_cuts_the_session_and_logs_are_searchable() {
    require_root!();
    let lab = AgentLab::new(2, &["alice", "bob"], POLICY);
    let config = lab.config.to_string_lossy().to_string();
    let bob = lab.connect(1, "bob");

    let list = json(&cli_ok(&[
        "certificates",
        "list",
        "--json",
        "--config",
        &config,
    ]));
    let certs = list["certificates"].as_array().expect("certificates");
    let of = |name: &str| {
        certs
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
            .clone()
    };
    assert_eq!(of("bob")["revoked"], false, "{list}");
    assert!(of("bob")["not_after"].as_u64().is_some(), "{list}");
    assert!(list["crl"]["next_update"].as_u64().is_some(), "{list}");
    let table = cli_ok(&["certificates", "list", "--config", &config]);
    assert!(table.contains("bob") && table.contains("CRL #"), "{table}");

    // The connection log has bob's successful attempt.
    let found = poll(Duration::from_secs(5), || {
        let out = cli_ok(&["logs", "connections", "--user", "bob", "--config", &config]);
        out.lines()
            .any(|l| json(l)["connection-attempt-status"] == "successful")
            .then_some(())
    });
    assert!(found.is_some(), "bob's connection is not found in the log");
    let bad = cli(&[
        "logs",
        "connections",
        "--since",
        "soon",
        "--config",
        &config,
    ]);
    assert!(!bad.success() && bad.stderr.contains("YYYY-MM-DD"), "{bad}");

    let out = cli_ok(&["certificates", "revoke", "bob", "--config", &config]);
    assert!(out.contains(of("bob")["serial"].as_str().unwrap()), "{out}");
    let cut = poll(Duration::from_secs(4), || {
        (!lab
            .connections()
            .iter()
            .any(|c| c["user"].as_str() == Some("bob")))
        .then_some(())
    });
    assert!(
        cut.is_some(),
        "bob's live session survived the revoke:\n{}",
        lab.agent().log_tail(30)
    );
    assert!(
        poll(Duration::from_secs(3), || bob
            .log()
            .contains("Halt command was pushed by server")
            .then_some(()))
        .is_some(),
        "bob was not told to stop:\n{}",
        bob.log()
    );
    let list = json(&cli_ok(&[
        "certificates",
        "list",
        "--json",
        "--config",
        &config,
    ]));
    let bob_cert = list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bob")
        .cloned()
        .unwrap();
    assert_eq!(bob_cert["revoked"], true, "{list}");
    assert_eq!(list["crl"]["revoked"], 1, "{list}");
    // Again: refused, saying why.
    let again = cli(&["certificates", "revoke", "bob", "--config", &config]);
    assert!(
        !again.success() && again.stderr.contains("already revoked"),
        "{again}"
    );

    // The audit trail names the caller (SO_PEERCRED) and the serial.
    let audit = std::fs::read_to_string(lab.dir.path().join("audit.log")).unwrap();
    let revokes: Vec<serde_json::Value> = audit
        .lines()
        .map(json)
        .filter(|v| v["action"] == "revoke")
        .collect();
    assert_eq!(revokes.len(), 2, "{audit}");
    assert_eq!(revokes[0]["target"], "certificate bob");
    assert!(
        revokes[0]["who"].as_str().unwrap().contains("uid 0")
            && revokes[0]["from"]
                .as_str()
                .unwrap()
                .starts_with("admin socket"),
        "{audit}"
    );
    assert!(revokes[0]["result"]
        .as_str()
        .unwrap()
        .starts_with("ok: revoked "));
    assert!(revokes[1]["result"]
        .as_str()
        .unwrap()
        .starts_with("error: "));
}
