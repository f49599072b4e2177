//! Revocation everywhere: alice is connected to two gateways at once (a stock client on
//! each), bob to the second. Her certificate is revoked in the PKI, which alone changes
//! nothing on the gateways (their own CRL files never change); `fleet publish` carries the
//! new CRL to every gateway: both of alice's sessions are told `HALT` within 1 s of the
//! publish; bob's stays.
use std::time::Duration;

use tests::agent::poll;
use tests::fleet::FleetLab;

use super::{have_etcd, ENG_ALLOWED};

const HALT: &str = "Halt command was pushed by server";

#[test]
fn a_published_crl_cuts_the_revoked_on_every_gateway_within_a_second() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let policy = tests::fleet::gateway_addresses(2) + ENG_ALLOWED;
    let lab = FleetLab::new(2, 1, &["alice", "bob"], &policy);
    let start = |cn: &str, i: usize| lab.connect_to(cn, i);
    let alice0 = start("alice", 0);
    let alice1 = start("alice", 1);
    let bob1 = start("bob", 1);

    lab.pki.revoke("alice");
    // The PKI's CRL alone reaches no gateway (each reads its own file): nobody is cut.
    std::thread::sleep(Duration::from_millis(1500));
    for c in [&alice0, &alice1] {
        assert!(
            !c.log().contains(HALT),
            "cut before the publish:\n{}",
            c.log()
        );
    }
    let (revision, published) = lab.publish(&policy);
    for (c, gw) in [(&alice0, 0), (&alice1, 1)] {
        poll(
            Duration::from_secs(1).saturating_sub(published.elapsed()),
            || c.log().contains(HALT).then_some(()),
        )
        .unwrap_or_else(|| {
            panic!(
                "alice on gw-{gw} not cut within 1 s of publishing revision {revision}:\n{}\n{}",
                c.log(),
                lab.gateways[gw].agent().log_tail(30)
            )
        });
    }
    eprintln!(
        "revocation: both of alice's sessions HALTed {:?} after the publish started",
        published.elapsed()
    );
    // Each gateway runs the revision, and its own CRL file was not touched.
    for gw in &lab.gateways {
        assert_eq!(gw.fleet_status()["revision"], revision, "{}", gw.id);
        let own = std::fs::read_to_string(gw.dir.path().join("crl.pem")).unwrap();
        let pki = std::fs::read_to_string(lab.pki.dir.join("crl.pem")).unwrap();
        assert_ne!(own, pki, "{}'s own CRL file changed", gw.id);
    }
    // bob is not revoked: still connected.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!bob1.log().contains(HALT), "{}", bob1.log());
    assert!(
        lab.gateways[1]
            .connections()
            .iter()
            .any(|c| c["user"] == "bob" && c["gateway"] == "gw-1"),
        "{:#?}",
        lab.gateways[1].connections()
    );
}
