//! `max_connections_per_user` against a real etcd, through the gates the authorizer uses:
//! connections of one user racing on two gateways are admitted up to the cap and not one
//! more; an ended connection frees its place; a dead gateway's connections stop counting
//! when its lease expires.
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::fleet::registry::unix_now;
use portcullis::fleet::{Keys, Member, SessionRecord, UserGate};
use portcullis::openvpn::fence::AddressFence;
use portcullis::openvpn::session::{FailureCode, Refusal};
use tests::etcd::EtcdCluster;

use super::have_etcd;

const MAX: usize = 5;

fn gateway(etcd: &EtcdCluster, id: &str) -> (Member, UserGate) {
    let gate = UserGate::new(MAX);
    let m = Member::start(
        etcd.fleet_section(id),
        Keys::new("corp"),
        "10.100.0.0/24".parse().unwrap(),
        AddressFence::new(),
        Some(gate.clone()),
    );
    (m, gate)
}

/// One admission as an authorizer thread asks it; a temporary refusal (a lost race, the
/// member still connecting) is retried as a client would.
fn admit(gate: &UserGate, user: &str, serial: u64) -> Result<(), Refusal> {
    let start = Instant::now();
    loop {
        match gate.admit_blocking(user, serial) {
            Err(r) if r.temporary && start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            v => return v,
        }
    }
}

/// Admits `serials` of `user` concurrently, half on each gate; returns the admitted serials.
fn race(gates: &[UserGate; 2], user: &str, serials: std::ops::Range<u64>) -> Vec<u64> {
    let handles: Vec<_> = serials
        .map(|s| {
            let gate = gates[(s % 2) as usize].clone();
            let user = user.to_owned();
            std::thread::spawn(move || (s, admit(&gate, &user, s)))
        })
        .collect();
    let mut admitted = Vec::new();
    for h in handles {
        match h.join().unwrap() {
            (s, Ok(())) => admitted.push(s),
            (_, Err(r)) => assert_eq!(r.code, FailureCode::UserConnectionLimit, "{r:?}"),
        }
    }
    admitted
}

fn live(gateway: &str, serials: &[u64]) -> Vec<SessionRecord> {
    serials
        .iter()
        .map(|&s| SessionRecord {
            gateway: gateway.into(),
            id: s as u32,
            serial: s,
            user: Some("alice".into()),
            username: None,
            groups: vec![],
            client_address: None,
            public_address: "192.0.2.1:1".into(),
            transport: "udp".into(),
            started: unix_now(),
            ingress_bytes: 0,
            egress_bytes: 0,
            ingress_packets: 0,
            egress_packets: 0,
            updated: unix_now(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_never_admit_one_connection_over_the_cap() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let (a, ga) = gateway(&etcd, "gw-a");
    let (b, gb) = gateway(&etcd, "gw-b");
    let gates = Arc::new([ga, gb]);

    // Twelve connections of alice at once, six on each gateway: five get in.
    let g = gates.clone();
    let admitted = tokio::task::spawn_blocking(move || race(&g, "alice", 0..12))
        .await
        .unwrap();
    assert_eq!(admitted.len(), MAX, "admitted {admitted:?}");
    // Another user is not affected.
    let g = gates.clone();
    let bob = tokio::task::spawn_blocking(move || race(&g, "bob", 100..102))
        .await
        .unwrap();
    assert_eq!(bob.len(), 2);

    // One of alice's connections on gw-a ends: its place is free again (once).
    let on_a: Vec<u64> = admitted.iter().copied().filter(|s| s % 2 == 0).collect();
    let on_b: Vec<u64> = admitted.iter().copied().filter(|s| s % 2 == 1).collect();
    a.sessions.send_replace(live("gw-a", &on_a));
    b.sessions.send_replace(live("gw-b", &on_b));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!on_a.is_empty() || !on_b.is_empty());
    let (ended_on, rest, member) = if on_a.is_empty() {
        ("gw-b", &on_b[1..], &b)
    } else {
        ("gw-a", &on_a[1..], &a)
    };
    member.sessions.send_replace(live(ended_on, rest));
    let g = gates.clone();
    let again = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            let got = race(&g, "alice", 200..202);
            if !got.is_empty() || start.elapsed() > Duration::from_secs(5) {
                return got;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert_eq!(again.len(), 1, "{again:?}");

    // gw-b dies: its connections of alice stop counting once its lease (3 s) has expired.
    let mut c = portcullis::fleet::connect(&etcd.fleet_section("probe"))
        .await
        .unwrap();
    let b_keys = c
        .get(
            Keys::new("corp").user_connections("alice") + "gw-b/",
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count();
    let b_count = usize::try_from(b_keys).unwrap();
    drop(b);
    let died = Instant::now();
    let ga = gates[0].clone();
    let freed = tokio::task::spawn_blocking(move || {
        let mut n = 0;
        let start = Instant::now();
        while n < b_count && start.elapsed() < Duration::from_secs(10) {
            if admit(&ga, "alice", 300 + n as u64).is_ok() {
                n += 1;
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        n
    })
    .await
    .unwrap();
    assert_eq!(freed, b_count);
    if b_count > 0 {
        assert!(
            died.elapsed() >= Duration::from_millis(2000),
            "{:?}",
            died.elapsed()
        );
    }
    drop(a);
}

/// The transaction itself: twenty admissions of one user from twenty connections at once
/// (each reads the count before any has written), cap five: exactly five get in. Without
/// the compare on the user's prefix every one of them would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admissions_are_serialized_by_the_transaction() {
    use portcullis::fleet::limits::{admit, Admission};
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let keys = Keys::new("corp");
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = portcullis::fleet::connect(&etcd.fleet_section(&format!("gw-{i}")))
            .await
            .unwrap();
        let lease = c.lease_grant(30, None).await.unwrap().id();
        clients.push((c, lease, i));
    }
    // All start together: the reads happen before the first write lands.
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|(mut c, lease, i)| {
            let (keys, barrier) = (keys.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                admit(
                    &mut c,
                    &keys,
                    &format!("gw-{i}"),
                    lease,
                    "alice",
                    1,
                    portcullis::fleet::gate::Caps::per_user(MAX),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let admitted = outcomes
        .iter()
        .filter(|o| **o == Admission::Admitted)
        .count();
    assert_eq!(admitted, MAX, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Admission::Admitted | Admission::OverCap(_))),
        "{outcomes:?}"
    );
}

/// `[fleet] max_connections` (the whole endpoint) through the gates of two gateways: twelve
/// connections of twelve users at once, cap five: exactly five get in, the others are refused
/// as temporary with `endpoint_connection_limit`; with the per-user cap on as well, both
/// prefixes are compared in the one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_never_admit_one_connection_over_the_endpoint_cap() {
    use portcullis::fleet::gate::Caps;
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let caps = Caps {
        per_user: Some(2),
        total: Some(MAX),
    };
    let start = |id: &str| {
        let gate = UserGate::with_caps(caps);
        let m = Member::start(
            etcd.fleet_section(id),
            Keys::new("corp"),
            "10.100.0.0/24".parse().unwrap(),
            AddressFence::new(),
            Some(gate.clone()),
        );
        (m, gate)
    };
    let (a, ga) = start("gw-a");
    let (b, gb) = start("gw-b");
    let gates = Arc::new([ga, gb]);
    let handles: Vec<_> = (0..12u64)
        .map(|s| {
            let gate = gates[(s % 2) as usize].clone();
            std::thread::spawn(move || (s, admit(&gate, &format!("user{s}"), s)))
        })
        .collect();
    let outcomes: Vec<_> = tokio::task::spawn_blocking(move || {
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let admitted: Vec<u64> = outcomes
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(admitted.len(), MAX, "{outcomes:?}");
    for (_, r) in &outcomes {
        if let Err(r) = r {
            // `admit` retries temporary refusals for 10 s: a full endpoint stays full.
            assert_eq!(r.code, FailureCode::EndpointConnectionLimit, "{r:?}");
        }
    }
    let mut c = portcullis::fleet::connect(&etcd.fleet_section("probe"))
        .await
        .unwrap();
    let n = c
        .get(
            Keys::new("corp").admissions(),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count();
    assert_eq!(n, MAX as i64);
    drop((a, b));
}
