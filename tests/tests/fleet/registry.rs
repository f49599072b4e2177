//! The connection registry and fleet-wide terminate against a real etcd, with the fleet
//! member a gateway runs: sessions appear under their gateway and go on disconnect, counters
//! are refreshed, any gateway lists the whole fleet, a terminate request reaches the owning
//! gateway within 1 s, and a dead gateway's sessions leave with its lease.
use std::time::{Duration, Instant};

use portcullis::admin::ConnectionInfo;
use portcullis::fleet::admin::{connections, terminate, RemoteTarget};
use portcullis::fleet::registry::{self, unix_now};
use portcullis::fleet::{connect, Keys, Member, SessionRecord};
use portcullis::openvpn::fence::AddressFence;
use tests::etcd::EtcdCluster;

use super::have_etcd;

fn session(gateway: &str, id: u32, user: &str, bytes: u64) -> SessionRecord {
    let info = ConnectionInfo {
        id,
        user: Some(user.into()),
        // No address: which block each member claims is etcd's choice, and a member leaves
        // out sessions on addresses outside its own blocks (strays, `registry::without_strays`).
        client_address: None,
        public_address: "192.0.2.7:40000".into(),
        transport: "udp".into(),
        established: true,
        since_secs: 5,
        ingress_bytes: bytes,
        egress_bytes: bytes,
        ingress_packets: 1,
        egress_packets: 1,
        username: None,
        directory_groups: vec!["eng".into()],
        gateway: None,
    };
    SessionRecord::from_info(gateway, &info, unix_now())
}

fn member(etcd: &EtcdCluster, id: &str) -> Member {
    Member::start(
        etcd.fleet_section(id),
        Keys::new("corp"),
        "10.100.0.0/24".parse().unwrap(),
        AddressFence::new(),
        None,
    )
}

/// Polls the registry until `f` holds (5 s at most).
async fn until(
    c: &mut etcd_client::Client,
    what: &str,
    f: impl Fn(&[SessionRecord]) -> bool,
) -> Vec<SessionRecord> {
    let start = Instant::now();
    loop {
        let all = registry::list(c, &Keys::new("corp")).await.unwrap();
        if f(&all) {
            return all;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{what}: {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn registry_lists_the_fleet_and_terminate_reaches_the_owner() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let keys = Keys::new("corp");
    let mut a = member(&etcd, "gw-a");
    let b = member(&etcd, "gw-b");
    let mut c = connect(&etcd.fleet_section("probe")).await.unwrap();

    a.sessions.send_replace(vec![
        session("gw-a", 1, "alice", 10),
        session("gw-a", 2, "carol", 10),
    ]);
    b.sessions.send_replace(vec![session("gw-b", 1, "bob", 10)]);
    until(&mut c, "three sessions registered", |s| s.len() == 3).await;

    // Any gateway lists the fleet: its own sessions as it sees them, the others' from etcd.
    let start = Instant::now();
    let listed = loop {
        let r = connections(&b.shared, &keys, "gw-b", vec![]).await;
        if r.fleet_error.is_none() || start.elapsed() > Duration::from_secs(5) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed.fleet_error, None);
    let mut seen: Vec<(String, u32, String)> = listed
        .connections
        .iter()
        .map(|c| (c.gateway.clone().unwrap(), c.id, c.user.clone().unwrap()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("gw-a".into(), 1, "alice".into()),
            ("gw-a".into(), 2, "carol".into())
        ],
        "gw-b's own sessions come from gw-b itself (none passed here)"
    );

    // Counters are rewritten once the refresh interval (1 s in the harness) has passed.
    a.sessions.send_replace(vec![
        session("gw-a", 1, "alice", 999),
        session("gw-a", 2, "carol", 10),
    ]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    a.sessions.send_replace(vec![
        session("gw-a", 1, "alice", 999),
        session("gw-a", 2, "carol", 10),
    ]);
    until(&mut c, "counters refreshed", |s| {
        s.iter()
            .any(|r| r.id == 1 && r.gateway == "gw-a" && r.ingress_bytes == 999)
    })
    .await;

    // Terminate from gw-b: gw-a's member hands the id to its gateway within 1 s.
    let asked = Instant::now();
    let r = terminate(
        &b.shared,
        &keys,
        "gw-b",
        Err(portcullis::admin::ErrorReply::new("no such session")),
        RemoteTarget {
            id: Some(2),
            gateway: Some("gw-a"),
            user: None,
        },
    )
    .await
    .expect("terminate gw-a/2");
    assert_eq!(r.remote, vec!["gw-a/2".to_string()]);
    let id = tokio::time::timeout(Duration::from_secs(1), a.terminates.recv())
        .await
        .expect("gw-a not told within 1 s")
        .unwrap();
    assert_eq!(id, 2);
    assert!(asked.elapsed() < Duration::from_secs(1));
    // By user, fleet-wide: bob's session on gw-b, asked from gw-a.
    let r = terminate(
        &a.shared,
        &keys,
        "gw-a",
        Err(portcullis::admin::ErrorReply::new("no such session")),
        RemoteTarget {
            id: None,
            gateway: None,
            user: Some("bob"),
        },
    )
    .await
    .unwrap();
    assert_eq!(r.remote, vec!["gw-b/1".to_string()]);
    // Nothing matches: an error, as for a local terminate.
    let none = terminate(
        &a.shared,
        &keys,
        "gw-a",
        Err(portcullis::admin::ErrorReply::new("no such session")),
        RemoteTarget {
            id: None,
            gateway: None,
            user: Some("mallory"),
        },
    )
    .await;
    assert_eq!(none.unwrap_err().error, "no such session");

    // The session ends: its key goes.
    a.sessions
        .send_replace(vec![session("gw-a", 1, "alice", 999)]);
    until(&mut c, "carol's session removed", |s| {
        s.len() == 2 && !s.iter().any(|r| r.id == 2 && r.gateway == "gw-a")
    })
    .await;

    // gw-b dies silently: its session leaves with its lease (3 s), not before.
    drop(b);
    let died = Instant::now();
    let all = until(&mut c, "gw-b's session expired", |s| {
        !s.iter().any(|r| r.gateway == "gw-b")
    })
    .await;
    assert!(
        died.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        died.elapsed()
    );
    assert_eq!(all.len(), 1);
}
