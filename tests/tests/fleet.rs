//! Fleet foundations against a real etcd (Debian's etcd-server on loopback, started and
//! removed by each test): the gateway's client reaches it as a `[fleet]` section says, plain
//! and with TLS client certificates; keys under a gateway's lease vanish with the lease; a
//! three-member cluster keeps taking writes with one member killed.
use std::time::{Duration, Instant};

use etcd_client::{GetOptions, PutOptions};
use portcullis::fleet::{connect, FleetError, Keys};
use tests::etcd::EtcdCluster;

fn have_etcd() -> bool {
    let ok = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: etcd not installed (cargo xtask setup installs etcd-server)");
    }
    ok
}

#[tokio::test]
async fn client_from_fleet_section_and_lease_bound_keys() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let dir = etcd.dir().to_owned();
    let mut c = connect(&etcd.fleet_section("gw-a")).await.expect("connect");
    let keys = Keys::new("corp");

    c.put(keys.policy(), "name = \"corp\"", None).await.unwrap();
    let got = c.get(keys.policy(), None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"name = \"corp\"");

    // A gateway's presence lives under its lease: revoking (or letting it expire) removes it.
    let lease = c.lease_grant(3, None).await.unwrap().id();
    c.put(
        keys.gateway("gw-a"),
        "{}",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let listed = c
        .get(keys.gateways(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(listed.kvs().len(), 1);
    c.lease_revoke(lease).await.unwrap();
    let listed = c
        .get(keys.gateways(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(listed.kvs().len(), 0, "the lease took its keys along");
    // The published policy is not under a lease: it stays.
    assert_eq!(c.get(keys.policy(), None).await.unwrap().kvs().len(), 1);

    drop(etcd);
    assert!(!dir.exists(), "the cluster removed its data on drop");
}

#[tokio::test]
async fn lease_expiry_removes_a_silent_gateways_keys() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let mut c = connect(&etcd.fleet_section("gw-a")).await.expect("connect");
    let keys = Keys::new("corp");
    let lease = c.lease_grant(3, None).await.unwrap().id();
    let block = keys.block("10.100.4.0/24".parse().unwrap());
    c.put(
        block.as_str(),
        "gw-a",
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .unwrap();
    let start = Instant::now();
    // Nobody keeps the lease alive (a dead gateway): the block returns within the TTL plus
    // etcd's expiry check, never before the TTL.
    loop {
        let n = c.get(block.as_str(), None).await.unwrap().kvs().len();
        if n == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(2500),
        "block returned after {:?}, before the 3 s TTL",
        start.elapsed()
    );
}

#[tokio::test]
async fn tls_with_client_certificates() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start_tls(1).await;
    let section = etcd.fleet_section("gw-a");
    assert!(section.uses_tls());
    assert_eq!(
        section.validate(),
        vec![],
        "the harness writes a valid section"
    );
    let mut c = connect(&section)
        .await
        .expect("connect with a client certificate");
    c.put("/portcullis/corp/policy", "x", None).await.unwrap();

    // Without the client certificate etcd refuses the connection.
    let mut anonymous = section.clone();
    anonymous.cert_file = None;
    anonymous.key_file = None;
    match connect(&anonymous).await {
        Err(FleetError::Unreachable { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("etcd accepted a client without a certificate"),
    }
    // A missing file is named by its field before any connection is tried.
    let mut missing = section.clone();
    missing.ca_file = Some(etcd.dir().join("nope.pem"));
    let e = connect(&missing).await.err().expect("missing CA refused");
    assert!(
        e.to_string().starts_with("fleet.ca_file: cannot read"),
        "{e}"
    );
}

#[tokio::test]
async fn three_members_keep_writing_with_one_killed() {
    if !have_etcd() {
        return;
    }
    let mut etcd = EtcdCluster::start(3).await;
    assert_eq!(etcd.endpoints().len(), 3);
    let mut c = connect(&etcd.fleet_section("gw-a")).await.expect("connect");
    c.put("/portcullis/corp/policy", "v1", None).await.unwrap();
    etcd.kill(0);
    // The client fails over to the two live members (a quorum of three).
    let start = Instant::now();
    loop {
        match c.put("/portcullis/corp/policy", "v2", None).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no write with 2 of 3 members: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut fresh = connect(&etcd.fleet_section("gw-b"))
        .await
        .expect("reconnect");
    let got = fresh.get("/portcullis/corp/policy", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v2");
}
