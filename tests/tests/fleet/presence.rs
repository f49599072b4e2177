//! Session tokens across a fleet: the secret is a host-local file (never in etcd); each
//! gateway publishes its fingerprint in its presence and names the gateways whose secret
//! differs (their tokens would be refused after a failover). Three fleet members on a real
//! etcd: two with one secret, one with another.
use std::time::{Duration, Instant};

use portcullis::fleet::presence::fingerprint;
use portcullis::fleet::{Keys, Member};
use portcullis::openvpn::fence::AddressFence;
use tests::etcd::EtcdCluster;

use super::have_etcd;

#[tokio::test]
async fn gateways_with_another_token_secret_are_named() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let same = fingerprint("the fleet's secret, at least thirty-two characters");
    let other = fingerprint("a stale secret left on one host, 32+ characters");
    let members: Vec<(String, Member)> = [("gw-a", &same), ("gw-b", &other), ("gw-c", &same)]
        .into_iter()
        .map(|(id, fp)| {
            let m = Member::start_with_token(
                etcd.fleet_section(id),
                Keys::new("corp"),
                "10.100.0.0/24".parse().unwrap(),
                AddressFence::new(),
                None,
                Some(fp.clone()),
                None,
            );
            (id.to_owned(), m)
        })
        .collect();
    let want = |id: &str| -> Vec<String> {
        match id {
            "gw-b" => vec!["gw-a".into(), "gw-c".into()],
            _ => vec!["gw-b".into()],
        }
    };
    let start = Instant::now();
    for (id, m) in &members {
        loop {
            let seen = m.shared.token_mismatch();
            if m.shared.gateways().len() == 3 && seen == want(id) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{id} names {seen:?} (alive: {:?}), not {:?}",
                m.shared.gateways(),
                want(id)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The secret is not in etcd: only the fingerprints are.
    let mut c = portcullis::fleet::connect(&etcd.fleet_section("probe"))
        .await
        .unwrap();
    let all = c
        .get("/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    for kv in all.kvs() {
        let v = String::from_utf8_lossy(kv.value());
        assert!(!v.contains("thirty-two") && !v.contains("32+"), "{v}");
    }
}
