//! Who may log in is one policy too: two gateways start with the certificate alone; a
//! publish turns a real directory (slapd in a namespace of its own, relayed to each
//! gateway's loopback) on, and a second publish narrows its user filter to finance. Each
//! time both gateways run the revision within 1 s of the publish, and the next logins on
//! both follow it with stock clients; sessions established before a change stay.
use std::path::Path;
use std::time::Duration;

use tests::agent::{poll, ProfileClient};
use tests::fleet::{gateway_addresses, pinned, FleetLab};
use tests::ldap::{self, Slapd};
use tests::NetNs;

use super::{have_etcd, ENG_ALLOWED};

const LDAP_PORT: u16 = 3893;

/// The published login settings: the directory, with `filter` as its user filter.
fn directory(secret: &Path, filter: &str) -> String {
    format!(
        r#"
[auth]
methods = ["certificate", "ldap"]
failed_logins_per_user = 50
failed_logins_per_source = 200

[directory]
url = "ldap://127.0.0.1:{LDAP_PORT}"
connect_timeout_secs = 2
timeout_secs = 3
bind_dn = "{svc}"
bind_password_file = "{secret}"
user_base = "ou=people,{suffix}"
user_filter = "{filter}"
"#,
        svc = ldap::SERVICE_DN,
        secret = secret.display(),
        suffix = ldap::SUFFIX,
    )
}

/// `cn`'s exported profile cut to gateway `i`, with `user`/`pass` from a file when given
/// (the gateways' own files are certificate-only, so the export asks for no password).
fn client(lab: &FleetLab, cn: &str, i: usize, login: Option<(&str, String)>) -> ProfileClient {
    let mut profile = pinned(&lab.export_profile(cn), i);
    if let Some((user, pass)) = login {
        let creds = lab.dir().join(tests::unique("creds"));
        std::fs::write(&creds, format!("{user}\n{pass}\n")).unwrap();
        profile.push_str(&format!("auth-user-pass {}\n", creds.display()));
    }
    ProfileClient::start(&lab.client, &profile)
}

fn admitted(lab: &FleetLab, c: &ProfileClient, who: &str, i: usize) {
    if let Err(e) = c.wait_connected(Duration::from_secs(20)) {
        panic!(
            "{who} not admitted by gw-{i}: {e}\n{}",
            lab.gateways[i].agent().log_tail(30)
        );
    }
}

fn refused(lab: &FleetLab, c: &ProfileClient, who: &str, i: usize) {
    poll(Duration::from_secs(15), || {
        c.log().contains("AUTH_FAILED").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{who} not refused by gw-{i}:\n{}\n{}",
            c.log(),
            lab.gateways[i].agent().log_tail(30)
        )
    });
    assert!(!c.log().contains(tests::agent::COMPLETED), "{}", c.log());
}

/// Publishes `policy` and waits until every gateway runs it: within 1 s of the command's
/// start.
fn publish(lab: &FleetLab, policy: &str) {
    let (revision, started) = lab.publish(policy);
    for gw in &lab.gateways {
        poll(
            Duration::from_secs(1).saturating_sub(started.elapsed()),
            || (gw.fleet_status()["revision"] == revision).then_some(()),
        )
        .unwrap_or_else(|| {
            panic!(
                "{} does not run revision {revision} within 1 s of the publish: {}\n{}",
                gw.id,
                gw.fleet_status(),
                gw.agent().log_tail(30)
            )
        });
    }
    eprintln!(
        "login: revision {revision} on both gateways {:?} after the publish started",
        started.elapsed()
    );
}

#[test]
fn a_published_directory_setting_changes_who_logs_in_on_every_gateway() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    // Declared first, dropped last: slapd stops before its namespace goes.
    let directory_ns = NetNs::new("fd");
    let slapd = Slapd::start(&directory_ns, LDAP_PORT, false);
    // The secret file is named by its path in the publish: both gateways (one machine
    // here) hold it there.
    let secret = slapd.dir().join("svc.pw");
    std::fs::write(&secret, format!("{}\n", ldap::SERVICE_PW)).unwrap();
    let certificate_only = gateway_addresses(2) + ENG_ALLOWED;
    let lab = FleetLab::new(2, 1, &["alice", "bob"], &certificate_only);
    for gw in &lab.gateways {
        tests::etcd::forward_between(&gw.ns, &directory_ns, LDAP_PORT);
    }
    // Admitted by its certificate alone, before any login setting is published.
    let bob_certificate = client(&lab, "bob", 1, None);
    admitted(&lab, &bob_certificate, "bob (certificate only)", 1);

    // The directory on: a password is required on every gateway.
    publish(
        &lab,
        &(certificate_only.clone() + &directory(&secret, "(uid={username})")),
    );
    let alice = client(&lab, "alice", 0, Some(("alice", ldap::password("alice"))));
    admitted(&lab, &alice, "alice (directory)", 0);
    for i in [0, 1] {
        let c = client(&lab, "bob", i, None);
        refused(&lab, &c, "bob without a password", i);
    }

    // Only finance may log in now: alice (eng) is refused everywhere, bob (finance) is in.
    let finance = format!(
        "(&(uid={{username}})(memberOf={}))",
        ldap::group_dn("finance")
    );
    publish(
        &lab,
        &(certificate_only.clone() + &directory(&secret, &finance)),
    );
    for i in [1, 0] {
        let c = client(&lab, "alice", i, Some(("alice", ldap::password("alice"))));
        refused(&lab, &c, "alice (eng)", i);
    }
    let bob = client(&lab, "bob", 1, Some(("bob", ldap::password("bob"))));
    admitted(&lab, &bob, "bob (finance)", 1);

    // Sessions established before each change were left alone.
    for (c, who) in [
        (&bob_certificate, "bob (certificate only)"),
        (&alice, "alice"),
    ] {
        assert!(
            !c.log().contains("AUTH_FAILED") && !c.log().contains("SIGUSR1"),
            "{who}'s session was disturbed:\n{}",
            c.log()
        );
    }
    // Each asked on its own gateway (the other gateways' records come from etcd and may
    // lag on a loaded machine).
    for (user, i) in [("alice", 0), ("bob", 1)] {
        let listed = lab.gateways[i].connections();
        assert!(
            listed
                .iter()
                .any(|c| c["user"] == user && c["established"] == true),
            "{user} on gw-{i} not listed: {listed:#?}"
        );
    }
}
