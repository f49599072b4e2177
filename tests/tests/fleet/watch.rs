//! The policy watch on a quiet fleet: etcd's server refuses HTTP/2 pings more often than its
//! `--grpc-keepalive-min-time` (5 s by default) and, after two strikes, closes the connection
//! with GOAWAY `ENHANCE_YOUR_CALM` ("too_many_pings"), which the client sees as "h2 protocol
//! error" on the watch. With the gateway's keep-alive interval at 2 s an idle follower lost
//! its watch every few seconds (and said `degraded` each time). The follower must stay on
//! one watch while nothing is published, and still get the next publish at once.
use std::time::{Duration, Instant};

use portcullis::fleet::{connect, Keys, PolicyUpdate};
use tests::etcd::EtcdCluster;

use super::{have_etcd, shared};

/// Longer than a few rounds of ping strikes at any interval under etcd's 5 s minimum.
const QUIET: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_idle_policy_watch_is_not_dropped_by_etcds_ping_policy() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let keys = Keys::new("corp");
    let mut admin = connect(&etcd.fleet_section("admin")).await.unwrap();
    let r1 = portcullis::fleet::publish(&mut admin, &keys, &shared("corp", "10.0.0.1"))
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let task = tokio::spawn(portcullis::fleet::follow(
        etcd.fleet_section("gw-a"),
        keys.clone(),
        0,
        tx,
    ));
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(PolicyUpdate::Published(p))) => assert_eq!(p.revision, r1),
        other => panic!("no current policy: {other:?}"),
    }
    // Nothing is published: the follower has nothing to say (a Degraded here is the watch
    // dropping under it).
    let quiet_from = Instant::now();
    match tokio::time::timeout(QUIET, rx.recv()).await {
        Err(_) => {}
        Ok(u) => panic!(
            "the idle follower reported {u:?} after {:?} of quiet",
            quiet_from.elapsed()
        ),
    }
    let r2 = portcullis::fleet::publish(&mut admin, &keys, &shared("corp", "10.0.0.2"))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
        Ok(Some(PolicyUpdate::Published(p))) => assert_eq!(p.revision, r2),
        other => panic!("the publish after {QUIET:?} of quiet did not arrive in 1 s: {other:?}"),
    }
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the follower stops")
        .unwrap();
}
