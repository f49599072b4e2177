//! Two `portcullis run` gateways of one fleet with stock clients: the fleet hands them
//! addresses from different blocks, `connections list` on either shows both sessions with
//! their gateway, and `connections terminate GATEWAY/ID` on one ends the other's session
//! (the stock client gets HALT) within 1 s; `status` shows the lease, blocks and gateways.
use std::time::{Duration, Instant};

use tests::agent::{cli, cli_ok, poll, tunnel_addr, AgentLab};
use tests::etcd::EtcdCluster;

use super::{have_etcd, two_gateways, with_fleet, ENG_ALLOWED};

fn fleet_list(lab: &AgentLab) -> Vec<serde_json::Value> {
    lab.connections()
}

#[test]
fn any_gateway_lists_the_fleet_and_terminates_a_session_on_another() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let (_etcd, a, b) = two_gateways([&["alice"], &["bob"]], "");
    // Each gateway's status shows its lease, its blocks and both gateways' presence.
    for lab in [&a, &b] {
        let m = poll(Duration::from_secs(5), || {
            let m = lab.agent().status()["fleet"]["member"].clone();
            (m["gateways"].as_array().map(Vec::len) == Some(2)).then_some(m)
        })
        .unwrap_or_else(|| panic!("presence: {}", lab.agent().status()));
        assert_eq!(m["lease_valid"], true, "{m}");
        assert!(!m["blocks"].as_array().unwrap().is_empty(), "{m}");
    }
    let st = cli_ok(&["status", "--config", &a.config_arg()]);
    assert!(st.contains("fleet gateways     gw-a gw-b"), "{st}");
    // The member leases its first block right after it connects; a client that comes before
    // is refused with AUTH_FAILED,TEMP and retries, so connect() still succeeds.
    let alice = a.connect(0, "alice");
    let bob = b.connect(0, "bob");
    let (ta, tb) = (
        tunnel_addr(a.client_ns(0)).expect("alice's address"),
        tunnel_addr(b.client_ns(0)).expect("bob's address"),
    );
    // Different blocks (/26) of the one client CIDR: never the same address.
    assert_ne!(ta.octets()[3] / 64, tb.octets()[3] / 64, "{ta} and {tb}");

    // Either gateway lists both sessions (registered within a tick of the connect).
    let both = |lab: &AgentLab| {
        poll(Duration::from_secs(5), || {
            let l = fleet_list(lab);
            (l.len() == 2).then_some(l)
        })
        .unwrap_or_else(|| panic!("fleet list on {}: {:#?}", lab.config_arg(), fleet_list(lab)))
    };
    let on_b = both(&b);
    both(&a);
    let alice_row = on_b
        .iter()
        .find(|c| c["user"] == "alice")
        .unwrap_or_else(|| panic!("{on_b:#?}"));
    assert_eq!(alice_row["gateway"], "gw-a", "{alice_row}");
    assert_eq!(alice_row["client_address"], ta.to_string(), "{alice_row}");
    let table = cli_ok(&["connections", "list", "--config", &b.config_arg()]);
    assert!(table.starts_with("gateway"), "{table}");
    assert!(table.contains("gw-a") && table.contains("gw-b"), "{table}");

    // A session id of another gateway that does not exist: refused, nothing ended.
    let o = cli(&[
        "connections",
        "terminate",
        "--config",
        &b.config_arg(),
        "gw-a/4000",
    ]);
    assert!(!o.success() && o.stderr.contains("no such session"), "{o}");

    // Terminate alice's session (on gw-a) from gw-b.
    let id = alice_row["id"].as_u64().unwrap();
    let asked = Instant::now();
    let out = cli_ok(&[
        "connections",
        "terminate",
        "--config",
        &b.config_arg(),
        &format!("gw-a/{id}"),
    ]);
    assert!(out.contains(&format!("gw-a/{id}")), "{out}");
    // The stock client is told to stop within 1 s of the request on the other gateway.
    poll(Duration::from_secs(1), || {
        alice
            .log()
            .contains("Halt command was pushed by server")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "alice's client got no HALT within 1 s of the terminate on gw-b:\n{}\ngw-a:\n{}",
            alice.log(),
            a.agent().log_tail(20)
        )
    });
    eprintln!(
        "HALT on gw-a's client {:?} after the request on gw-b",
        asked.elapsed()
    );
    poll(Duration::from_secs(3), || {
        (!a.connections().iter().any(|c| c["gateway"] == "gw-a")).then_some(())
    })
    .unwrap_or_else(|| panic!("alice's session still on gw-a: {:#?}", a.connections()));
    // bob is untouched; the registry drops alice.
    let left = poll(Duration::from_secs(3), || {
        let l = fleet_list(&b);
        (l.len() == 1).then_some(l)
    })
    .unwrap_or_else(|| panic!("{:#?}", fleet_list(&b)));
    assert_eq!(left[0]["user"], "bob", "{left:#?}");
    drop(bob);
}

/// `max_connections_per_user = 1` on two gateways with stock clients: alice connected to
/// gw-a is refused on gw-b (`AUTH_FAILED`, `user_connection_limit` in gw-b's connection
/// log); once her session on gw-a is terminated, gw-b admits her.
#[test]
fn the_per_user_cap_holds_across_gateways() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (etcd, a, b) = two_gateways([&["alice"], &["alice"]], "max_connections_per_user = 1\n");
    let _first = a.connect(0, "alice");
    let second = b.start_client(0, "alice");
    poll(Duration::from_secs(15), || {
        second.log().contains("AUTH_FAILED").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "alice's second connection was not refused:\n{}",
            second.log()
        )
    });
    // The attempt is logged when it ends (the refused session lingers to deliver AUTH_FAILED).
    poll(Duration::from_secs(10), || {
        std::fs::read_to_string(b.dir.path().join("connections.log"))
            .unwrap_or_default()
            .contains("user_connection_limit")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no user_connection_limit in gw-b's connection log: {}",
            std::fs::read_to_string(b.dir.path().join("connections.log")).unwrap_or_default()
        )
    });
    drop(second);

    // Her session on gw-a ends: the place is free for gw-b.
    cli_ok(&[
        "connections",
        "terminate",
        "--config",
        &a.config_arg(),
        "--user",
        "alice",
    ]);
    // Released in etcd within a couple of ticks of the disconnect.
    let mut c = rt
        .block_on(portcullis::fleet::connect(&etcd.fleet_section("probe")))
        .unwrap();
    let prefix = portcullis::fleet::Keys::new(tests::agent::ENDPOINT).user_connections("alice");
    poll(Duration::from_secs(5), || {
        let n = rt
            .block_on(
                c.get(
                    prefix.as_str(),
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                ),
            )
            .unwrap()
            .count();
        (n == 0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "alice's connection on gw-a still counted: {}",
            a.agent().log_tail(20)
        )
    });
    let third = b.connect(0, "alice");
    assert!(third.log().contains("Initialization Sequence Completed"));
}

/// A gateway that loses etcd keeps its established sessions but, once its lease's TTL has
/// run out, refuses new clients with `AUTH_FAILED,TEMP` (its blocks may be another
/// gateway's by then); `status` says the lease is gone.
#[test]
fn a_gateway_without_its_lease_refuses_new_clients_temporarily() {
    use tests::gateway::SERVER;
    use tests::openvpn::ping;
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut etcd = rt.block_on(EtcdCluster::start(1));
    let port = tests::fleet::port_of(&etcd.endpoints()[0]);
    let lab = AgentLab::new(2, &["alice", "bob"], &with_fleet(ENG_ALLOWED, port, "gw-a"));
    tests::etcd::forward_into(&lab.gw, port);
    poll(Duration::from_secs(10), || {
        (lab.agent().status()["fleet"]["member"]["lease_valid"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("no lease: {}", lab.agent().log_tail(30)));
    let alice = lab.connect(0, "alice");

    etcd.kill(0);
    let cut = Instant::now();
    poll(Duration::from_secs(6), || {
        (lab.agent().status()["fleet"]["member"]["lease_valid"] == false).then_some(())
    })
    .unwrap_or_else(|| panic!("lease still valid: {}", lab.agent().status()));
    assert!(
        cut.elapsed() < Duration::from_secs(5),
        "{:?}",
        cut.elapsed()
    );
    let bob = lab.start_client(1, "bob");
    poll(Duration::from_secs(15), || {
        bob.log().contains("AUTH_FAILED,TEMP").then_some(())
    })
    .unwrap_or_else(|| panic!("bob was not refused as temporary:\n{}", bob.log()));
    assert!(!bob.log().contains("Initialization Sequence Completed"));
    // alice's session carries on without etcd.
    assert!(
        ping(lab.client_ns(0), SERVER, 3, Duration::from_secs(5)),
        "{}",
        alice.log()
    );
    let st = cli_ok(&["status", "--config", &lab.config_arg()]);
    assert!(st.contains("fleet lease        none"), "{st}");
}

/// `[fleet] max_connections = 1` on two gateways with stock clients: alice connected on gw-a
/// fills the endpoint, so bob on gw-b is refused as temporary (`AUTH_FAILED,TEMP`,
/// `endpoint_connection_limit` in gw-b's connection log) and his client keeps retrying; once
/// alice's session ends, bob's next try gets in.
#[test]
fn the_endpoint_cap_holds_across_gateways() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let (_etcd, a, b) = two_gateways([&["alice"], &["bob"]], "max_connections = 1\n");
    let _alice = a.connect(0, "alice");
    let bob = b.start_client(0, "bob");
    poll(Duration::from_secs(15), || {
        bob.log().contains("AUTH_FAILED,TEMP").then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "bob was not refused while the endpoint is full:\n{}",
            bob.log()
        )
    });
    assert!(
        !bob.log().contains(tests::agent::COMPLETED),
        "{}",
        bob.log()
    );
    poll(Duration::from_secs(10), || {
        std::fs::read_to_string(b.dir.path().join("connections.log"))
            .unwrap_or_default()
            .contains("endpoint_connection_limit")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no endpoint_connection_limit in gw-b's connection log: {}",
            std::fs::read_to_string(b.dir.path().join("connections.log")).unwrap_or_default()
        )
    });
    cli_ok(&[
        "connections",
        "terminate",
        "--config",
        &a.config_arg(),
        "--user",
        "alice",
    ]);
    // The client retries after the pushed backoff (10 s) plus its own reconnect delay.
    bob.wait_connected(Duration::from_secs(40))
        .unwrap_or_else(|e| {
            panic!(
                "bob not admitted once alice left: {e}\n{}",
                b.agent().log_tail(30)
            )
        });
}
