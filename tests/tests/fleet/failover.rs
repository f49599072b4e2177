//! Failover in a fleet of three gateways on one shared private network, with a three-member
//! etcd: a stock client with the exported profile (a `remote` per gateway, `remote-random`)
//! passes traffic; its gateway is SIGKILLed; the client is back on another gateway, passing
//! traffic, within the pushed ping-restart plus a few seconds; the dead gateway's sessions
//! leave the registry within its lease TTL, and its address blocks return only once the lease
//! has expired. Then one etcd member is killed and the fleet goes on: the registry still
//! lists the session, a publish is running on both living gateways within 1 s of the
//! command's return, and a terminate from another gateway reaches the session at the first
//! try.
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use portcullis::fleet::Keys;
use tests::agent::{poll, COMPLETED};
use tests::fleet::{gateway_addresses, FleetLab};
use tests::gateway::SERVER;
use tests::openvpn::ping;

use super::{have_etcd, ENG_ALLOWED};

/// Pushed `ping 1` / `ping-restart 5`: a client notices a dead gateway after 5 s.
const PING_RESTART_SECS: u64 = 5;
/// "A few seconds" past ping-restart: a stock 2.6 client first retries the same (dead)
/// remote after its 1 s restart pause ("Preserving recently used remote address") until the
/// profile's `server-poll-timeout` (4 s), then takes the next remote; plus the handshake with
/// the next gateway (the debug build, on a loaded 2-core machine).
const RECONNECT_SLACK: Duration = Duration::from_secs(1 + 4 + 3);
/// The lab's lease TTL (`tests::fleet::fleet_section`).
const TTL: Duration = Duration::from_secs(3);

/// The keys under `prefix` whose value is `value` (blocks held by a gateway).
fn keys_valued(rt: &tokio::runtime::Runtime, c: &mut Client, prefix: &str, value: &str) -> usize {
    let got = rt
        .block_on(c.get(prefix, Some(GetOptions::new().with_prefix())))
        .unwrap();
    got.kvs()
        .iter()
        .filter(|kv| kv.value() == value.as_bytes())
        .count()
}

fn count(rt: &tokio::runtime::Runtime, c: &mut Client, prefix: &str) -> i64 {
    rt.block_on(c.get(
        prefix,
        Some(GetOptions::new().with_prefix().with_count_only()),
    ))
    .unwrap()
    .count()
}

/// The gateway alice's session is registered on, as `gw` lists the fleet.
fn alice_on(lab: &FleetLab, gw: usize, not: Option<&str>) -> Option<String> {
    lab.gateways[gw]
        .connections()
        .iter()
        .filter(|c| c["user"] == "alice")
        .filter_map(|c| c["gateway"].as_str().map(str::to_owned))
        .find(|g| Some(g.as_str()) != not)
}

#[test]
fn a_killed_gateways_client_moves_to_another_and_its_keys_expire_with_its_lease() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let policy = format!(
        "keepalive_interval_secs = 1\nkeepalive_timeout_secs = {PING_RESTART_SECS}\n{}{ENG_ALLOWED}",
        gateway_addresses(3)
    );
    let mut lab = FleetLab::new(3, 3, &["alice"], &policy);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = Keys::new(tests::agent::ENDPOINT);
    let mut etcd = rt
        .block_on(portcullis::fleet::connect(&lab.etcd.fleet_section("probe")))
        .expect("connect to etcd");

    let profile = lab.export_profile("alice");
    let remotes = profile.lines().filter(|l| l.starts_with("remote ")).count();
    assert_eq!(remotes, 3, "a remote per gateway:\n{profile}");
    assert!(profile.contains("\nremote-random\n"), "{profile}");
    let alice = lab.connect("alice");
    assert!(
        ping(&lab.client, SERVER, 3, Duration::from_secs(5)),
        "no traffic through the first gateway:\n{}",
        alice.log()
    );
    let first = poll(Duration::from_secs(5), || alice_on(&lab, 0, None)).unwrap_or_else(|| {
        panic!(
            "alice not in the registry: {:#?}",
            lab.gateways[0].connections()
        )
    });
    let dead = lab.index_of(&first);
    let lease = rt
        .block_on(etcd.get(keys.gateway(&first), None))
        .unwrap()
        .kvs()
        .first()
        .map(|kv| kv.lease())
        .expect("the gateway's presence key");
    // Registered (within a second of the connect) before the kill, so its removal means
    // something.
    poll(Duration::from_secs(5), || {
        (count(&rt, &mut etcd, &keys.sessions_of(&first)) == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("alice's session on {first} never registered"));
    let blocks_held = keys_valued(&rt, &mut etcd, &keys.blocks(), &first);
    assert!(blocks_held > 0, "{first} holds no address block");
    eprintln!("alice on {first} (lease {lease:x}, {blocks_held} block(s)); SIGKILL");

    lab.gateways[dead].kill();
    let killed = Instant::now();

    // First etcd (its clock is the lease's: about TTL): the dead gateway's sessions leave
    // the registry with its lease (etcd checks expiry every 500 ms); its address blocks are
    // seen held while the lease lives and go with it, never before.
    let sessions = keys.sessions_of(&first);
    let (mut sessions_gone, mut blocks_gone, mut seen_held) = (None, None, false);
    poll(TTL + Duration::from_secs(2), || {
        if sessions_gone.is_none() && count(&rt, &mut etcd, &sessions) == 0 {
            sessions_gone = Some(killed.elapsed());
        }
        if blocks_gone.is_none() {
            let held = keys_valued(&rt, &mut etcd, &keys.blocks(), &first);
            let ttl = rt
                .block_on(etcd.lease_time_to_live(lease, None))
                .map(|r| r.ttl())
                .unwrap_or(-1);
            if held > 0 {
                seen_held |= ttl > 0;
            } else {
                assert!(
                    ttl <= 0,
                    "{first}'s blocks returned while its lease lives ({ttl} s left)"
                );
                blocks_gone = Some(killed.elapsed());
            }
        }
        (sessions_gone.is_some() && blocks_gone.is_some()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!("{first}'s keys still in etcd {:?} after the kill (sessions gone: {sessions_gone:?}, blocks gone: {blocks_gone:?})", killed.elapsed())
    });
    let (sessions_gone, blocks_gone) = (sessions_gone.unwrap(), blocks_gone.unwrap());
    eprintln!("registry: {first}'s sessions gone {sessions_gone:?}, blocks {blocks_gone:?} after SIGKILL (lease TTL {TTL:?})");
    assert!(
        sessions_gone <= TTL + Duration::from_secs(1),
        "{sessions_gone:?}"
    );
    assert!(
        seen_held,
        "{first}'s blocks were never seen under its living lease"
    );
    assert!(
        blocks_gone >= TTL - Duration::from_secs(1),
        "blocks returned {blocks_gone:?} after the kill: before the lease could expire"
    );

    // The client moves to another gateway and passes traffic again within the bound.
    let bound = Duration::from_secs(PING_RESTART_SECS) + RECONNECT_SLACK;
    let back = poll(bound.saturating_sub(killed.elapsed()), || {
        (alice.log().matches(COMPLETED).count() >= 2
            && ping(&lab.client, SERVER, 1, Duration::from_millis(300)))
        .then(Instant::now)
    })
    .unwrap_or_else(|| {
        panic!(
            "alice not passing traffic again within {bound:?} of the kill:\n{}",
            alice.log()
        )
    });
    eprintln!(
        "failover: traffic again {:?} after SIGKILL (pushed ping-restart {PING_RESTART_SECS} s)",
        back - killed
    );

    // Alice is registered on a living gateway, as every living gateway lists.
    let alive: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    let second = poll(Duration::from_secs(5), || {
        alice_on(&lab, alive[0], Some(&first))
    })
    .unwrap_or_else(|| panic!("{:#?}", lab.gateways[alive[0]].connections()));
    assert_ne!(second, first);
    let other = *alive
        .iter()
        .find(|&&i| lab.gateways[i].id != second)
        .expect("a third gateway");

    // One etcd member of three dies: the fleet goes on. The gateways keep (or renew) their
    // leases, the registry still lists alice, and a terminate on the third gateway ends her
    // session on the second.
    lab.etcd.kill(0);
    std::thread::sleep(TTL);
    for &i in &alive {
        let gw = &lab.gateways[i];
        poll(Duration::from_secs(10), || {
            (gw.fleet_status()["member"]["lease_valid"] == true).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{} lost its lease with 2 of 3 etcd members: {}",
                gw.id,
                gw.fleet_status()
            )
        });
    }
    assert!(
        ping(&lab.client, SERVER, 2, Duration::from_secs(3)),
        "{}",
        alice.log()
    );
    let row = poll(Duration::from_secs(10), || {
        lab.gateways[other]
            .connections()
            .into_iter()
            .find(|c| c["user"] == "alice" && c["gateway"] == second.as_str())
    })
    .unwrap_or_else(|| {
        panic!(
            "alice not listed with 2 of 3 members: {:#?}",
            lab.gateways[other].connections()
        )
    });
    // A publish with one member dead reaches both living gateways (their policy watches
    // may have been on the dead member: they resume from the last revision they saw).
    let (revision, started) = lab.publish(&policy);
    let returned = Instant::now();
    for &i in &alive {
        let gw = &lab.gateways[i];
        poll(Duration::from_secs(1), || {
            (gw.fleet_status()["revision"] == revision).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{} does not run revision {revision} 1 s after the publish with 2 of 3 members: {}",
                gw.id,
                gw.fleet_status()
            )
        });
    }
    eprintln!(
        "publish with one etcd member dead: the command took {:?}, both gateways ran it {:?} after it returned",
        returned - started,
        returned.elapsed()
    );
    // The terminate goes through at the first try: a request the gateway's etcd client
    // still routes to the dead member ("operation was canceled ... connection closed") is
    // sent again inside the gateway.
    let asked = Instant::now();
    let target = format!("{second}/{}", row["id"]);
    let o = tests::agent::cli(&[
        "connections",
        "terminate",
        "--config",
        &lab.gateways[other].config_arg(),
        &target,
    ]);
    assert!(
        o.success(),
        "terminate failed with 2 of 3 etcd members: {o}\n{}",
        lab.gateways[other].agent().log_tail(20)
    );
    poll(Duration::from_secs(2), || {
        alice
            .log()
            .contains("Halt command was pushed by server")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no HALT with 2 of 3 etcd members:\n{}", alice.log()));
    eprintln!(
        "terminate across gateways with one etcd member dead: HALT after {:?}",
        asked.elapsed()
    );
}
