//! All of etcd stopped under a fleet of two gateways with clients connected, then started
//! again on its data, with no gateway restarted:
//! - established sessions keep passing traffic;
//! - once a gateway's lease may have expired, new sessions are refused as temporary
//!   (`AUTH_FAILED,TEMP`; `fleet_unavailable` or `address_block_unavailable` in the
//!   connection log), so no address block another gateway may hold is used and no per-user
//!   cap is decided without etcd; `status` (JSON and text) and the metrics say so;
//! - when etcd is back each gateway takes up its own lease again (etcd expired nothing while
//!   it had no leader), admission resumes (the refused client gets in on its own retry, the
//!   user over the cap is refused for good), and the registry matches reality: a session
//!   that ended during the outage is gone, every live one is listed once.
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use portcullis::fleet::Keys;
use tests::agent::{cli_ok, poll, scrape_metrics, ProfileClient, COMPLETED};
use tests::fleet::{gateway_addresses, pinned, FleetLab};
use tests::gateway::SERVER;
use tests::openvpn::ping;

use super::{have_etcd, ENG_ALLOWED};

/// The lab's lease TTL.
const TTL: Duration = Duration::from_secs(3);

fn keys_under(rt: &tokio::runtime::Runtime, c: &mut Client, prefix: &str) -> Vec<String> {
    rt.block_on(c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_keys_only()),
    ))
    .unwrap()
    .kvs()
    .iter()
    .map(|kv| kv.key_str().unwrap().to_owned())
    .collect()
}

fn lease_of(rt: &tokio::runtime::Runtime, c: &mut Client, key: &str) -> i64 {
    rt.block_on(c.get(key, None))
        .unwrap()
        .kvs()
        .first()
        .map(|kv| kv.lease())
        .unwrap_or_else(|| panic!("no key {key}"))
}

/// `cn`'s stock client on gateway `i` only.
fn start(lab: &FleetLab, cn: &str, i: usize) -> ProfileClient {
    ProfileClient::start(&lab.client, &pinned(&lab.export_profile(cn), i))
}

/// Gateway `i`'s metrics show `line` within 3 s (the gauges follow the status each tick).
fn metric_is(lab: &FleetLab, i: usize, line: &str) {
    poll(Duration::from_secs(3), || {
        scrape_metrics(&lab.gateways[i].ns)
            .lines()
            .any(|l| l == line)
            .then_some(())
    })
    .unwrap_or_else(|| {
        let m = scrape_metrics(&lab.gateways[i].ns);
        let fleet: Vec<&str> = m.lines().filter(|l| l.contains("fleet")).collect();
        panic!("gw-{i}: no {line:?} in its metrics: {fleet:#?}")
    });
}

fn connection_log(lab: &FleetLab, i: usize) -> String {
    std::fs::read_to_string(lab.gateways[i].dir.path().join("connections.log")).unwrap_or_default()
}

#[test]
fn all_of_etcd_stopped_and_back_without_a_gateway_restart() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    // A gateway notices a vanished client within 5 s (carol, below).
    let policy = format!(
        "keepalive_interval_secs = 1\nkeepalive_timeout_secs = 5\n{}{ENG_ALLOWED}",
        gateway_addresses(2)
    );
    let mut lab = FleetLab::new_with(
        2,
        3,
        &["alice", "bob", "carol"],
        &policy,
        "max_connections_per_user = 1\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = Keys::new(tests::agent::ENDPOINT);
    let connected = |c: &ProfileClient, what: &str| {
        c.wait_connected(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    };
    let alice = start(&lab, "alice", 0);
    connected(&alice, "alice on gw-0");
    let carol = start(&lab, "carol", 1);
    connected(&carol, "carol on gw-1");
    assert!(
        ping(&lab.client, SERVER, 3, Duration::from_secs(5)),
        "{}",
        alice.log()
    );
    let mut etcd = rt
        .block_on(portcullis::fleet::connect(&lab.etcd.fleet_section("probe")))
        .expect("connect to etcd");
    poll(Duration::from_secs(5), || {
        (keys_under(&rt, &mut etcd, &keys.sessions()).len() == 2).then_some(())
    })
    .expect("alice and carol registered");
    let leases: Vec<i64> = (0..2)
        .map(|i| lease_of(&rt, &mut etcd, &keys.gateway(&lab.gateways[i].id)))
        .collect();
    drop(etcd);

    // All of etcd goes.
    for m in 0..3 {
        lab.etcd.kill(m);
    }
    let stopped = Instant::now();
    for gw in &lab.gateways {
        poll(TTL + Duration::from_secs(3), || {
            let m = gw.fleet_status()["member"].clone();
            (m["lease_valid"] == false && m["error"].is_string()).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{} still says it is in the fleet: {}",
                gw.id,
                gw.fleet_status()
            )
        });
    }
    eprintln!(
        "etcd stopped: both gateways out of the fleet, admission closed {:?} after",
        stopped.elapsed()
    );
    metric_is(&lab, 1, "portcullis_fleet_degraded 1");
    metric_is(&lab, 1, "portcullis_fleet_lease_valid 0");
    let text = cli_ok(&["status", "--config", &lab.gateways[1].config_arg()]);
    assert!(
        text.contains("fleet member       out of the fleet"),
        "{text}"
    );
    assert!(
        text.contains("fleet lease        none: new clients refused"),
        "{text}"
    );
    // Established sessions carry on.
    assert!(
        ping(&lab.client, SERVER, 3, Duration::from_secs(5)),
        "alice's traffic stopped with etcd:\n{}",
        alice.log()
    );
    // New clients are refused as temporary: bob (no session anywhere) and alice's second
    // connection (the cap cannot be decided without etcd).
    let bob = start(&lab, "bob", 1);
    let alice2 = start(&lab, "alice", 1);
    for (c, who) in [(&bob, "bob"), (&alice2, "alice's second")] {
        poll(Duration::from_secs(15), || {
            c.log().contains("AUTH_FAILED,TEMP").then_some(())
        })
        .unwrap_or_else(|| panic!("{who} not refused as temporary:\n{}", c.log()));
        assert!(!c.log().contains(COMPLETED), "{who} admitted without etcd");
    }
    poll(Duration::from_secs(10), || {
        let log = connection_log(&lab, 1);
        (log.contains("fleet_unavailable") || log.contains("address_block_unavailable"))
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no fleet reason in gw-1's connection log:\n{}",
            connection_log(&lab, 1)
        )
    });
    // Carol leaves during the outage: gw-1 drops her session (ping-restart 5 s).
    drop(carol);
    poll(Duration::from_secs(10), || {
        (!lab.gateways[1]
            .connections()
            .iter()
            .any(|c| c["user"] == "carol"))
        .then_some(())
    })
    .expect("gw-1 still lists carol");

    // etcd comes back on its data.
    let outage = stopped.elapsed();
    rt.block_on(lab.etcd.restart(&[0, 1, 2]));
    let back = Instant::now();
    for gw in &lab.gateways {
        poll(Duration::from_secs(15), || {
            let m = gw.fleet_status()["member"].clone();
            (m["lease_valid"] == true && m["error"].is_null()).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{} not back in the fleet: {}\n{}",
                gw.id,
                gw.fleet_status(),
                gw.agent().log_tail(30)
            )
        });
    }
    eprintln!(
        "etcd back after a {outage:?} outage: both gateways members again {:?} later",
        back.elapsed()
    );
    metric_is(&lab, 1, "portcullis_fleet_degraded 0");
    metric_is(&lab, 1, "portcullis_fleet_lease_valid 1");
    let mut etcd = rt
        .block_on(portcullis::fleet::connect(&lab.etcd.fleet_section("probe")))
        .expect("connect to etcd");
    for (gw, lease) in lab.gateways.iter().zip(&leases) {
        let id = &gw.id;
        assert_eq!(
            lease_of(&rt, &mut etcd, &keys.gateway(id)),
            *lease,
            "{id} did not take up its own lease again"
        );
    }
    // Admission resumes: bob gets in on his own retry; alice's second is over her cap.
    connected(&bob, "bob after etcd came back");
    eprintln!(
        "bob (refused during the outage) connected {:?} after etcd was back",
        back.elapsed()
    );
    poll(Duration::from_secs(30), || {
        connection_log(&lab, 1)
            .contains("user_connection_limit")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "alice's second connection not refused by the cap after the outage:\n{}\n{}",
            alice2.log(),
            connection_log(&lab, 1)
        )
    });
    assert!(!alice2.log().contains(COMPLETED), "{}", alice2.log());
    // The registry is reality: alice and bob once each, carol gone (her record was under
    // gw-1's lease, which lives on), one cap key each.
    let want_sessions = poll(Duration::from_secs(5), || {
        let s = keys_under(&rt, &mut etcd, &keys.sessions());
        (s.len() == 2).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "registry after the outage: {:?}",
            keys_under(&rt, &mut etcd, &keys.sessions())
        )
    });
    let listed: Vec<String> = lab.gateways[0]
        .connections()
        .iter()
        .map(tests::fleet::who)
        .collect();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, ["alice@gw-0", "bob@gw-1"], "{want_sessions:?}");
    for (user, n) in [("alice", 1), ("bob", 1), ("carol", 0)] {
        let held = keys_under(&rt, &mut etcd, &keys.user_connections(user));
        assert_eq!(held.len(), n, "{user}'s cap keys: {held:?}");
    }
    assert!(
        ping(&lab.client, SERVER, 2, Duration::from_secs(5)),
        "{}",
        alice.log()
    );
}
