//! A gateway cut off from etcd past its lease while etcd and the other gateway run on (a
//! partition, made by `FleetLab::cut_from_etcd`: an nftables drop in its namespace), unlike
//! `outage.rs`, where all of etcd stops and nobody can take anything:
//! - once its lease validity has passed it admits nobody (`AUTH_FAILED,TEMP`) and its
//!   established sessions keep passing traffic; etcd expires its lease and its blocks and
//!   registry entries with it; the other gateway stays in the fleet;
//! - back, it takes a NEW lease (the old one is gone), claims its blocks again, registers its
//!   live sessions again under the new lease and admits again;
//! - when another gateway claimed one of its blocks meanwhile (only once etcd had expired the
//!   lease), it gives that block up: its sessions there are told `RESTART` and come back with
//!   addresses of a block it holds, so no address is in use twice in the fleet.
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use ipnet::Ipv4Net;
use portcullis::fleet::{blocks, Keys};
use portcullis::openvpn::fence::SHORT_RETRY;
use tests::agent::{poll, ProfileClient, COMPLETED};
use tests::fleet::{gateway_addresses, pinned, FleetLab};
use tests::gateway::SERVER;
use tests::openvpn::ping;

use super::{have_etcd, ENG_ALLOWED};

/// The lab's lease TTL.
const TTL: Duration = Duration::from_secs(3);

fn policy() -> String {
    format!("{}{ENG_ALLOWED}", gateway_addresses(2))
}

/// Gateway `i`'s status: `(lease valid, error, blocks)`.
fn member(lab: &FleetLab, i: usize) -> (bool, Option<String>, Vec<Ipv4Net>) {
    let m = lab.gateways[i].fleet_status()["member"].clone();
    let blocks = m["blocks"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b.as_str()?.parse().ok()).collect())
        .unwrap_or_default();
    (
        m["lease_valid"] == true,
        m["error"].as_str().map(str::to_owned),
        blocks,
    )
}

/// The lease of `key`, if the key exists.
fn lease_of(rt: &tokio::runtime::Runtime, c: &mut Client, key: &str) -> Option<i64> {
    rt.block_on(c.get(key, None))
        .unwrap()
        .kvs()
        .first()
        .map(|kv| kv.lease())
}

/// `(value, lease)` of every key under `prefix`.
fn under(rt: &tokio::runtime::Runtime, c: &mut Client, prefix: &str) -> Vec<(String, i64)> {
    rt.block_on(c.get(prefix, Some(GetOptions::new().with_prefix())))
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
        .collect()
}

fn lease_alive(rt: &tokio::runtime::Runtime, c: &mut Client, lease: i64) -> bool {
    rt.block_on(c.lease_time_to_live(lease, None))
        .is_ok_and(|r| r.ttl() > 0)
}

/// `user@gateway` and the address of every session gateway `i` lists (the whole fleet).
fn in_use(lab: &FleetLab, i: usize) -> Vec<(String, Ipv4Addr)> {
    lab.gateways[i]
        .connections()
        .iter()
        .map(|c| {
            (
                tests::fleet::who(c),
                c["client_address"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(Ipv4Addr::UNSPECIFIED),
            )
        })
        .collect()
}

/// The address of `who` (`user@gateway`) as gateway `i` lists it.
fn address_of(lab: &FleetLab, i: usize, who: &str) -> Option<Ipv4Addr> {
    in_use(lab, i)
        .into_iter()
        .find(|(w, _)| w == who)
        .map(|(_, a)| a)
}

/// No address twice among the sessions gateway `i` lists, and exactly `want` listed.
fn no_address_twice(lab: &FleetLab, i: usize, want: &[&str]) {
    let rows = in_use(lab, i);
    let mut who: Vec<&str> = rows.iter().map(|(w, _)| w.as_str()).collect();
    who.sort();
    assert_eq!(who, want, "gw-{i} lists {rows:?}");
    let addrs: HashSet<Ipv4Addr> = rows.iter().map(|(_, a)| *a).collect();
    assert_eq!(addrs.len(), rows.len(), "an address in use twice: {rows:?}");
}

/// Cut gateway `i` off and wait until it says its lease is no longer valid; when the cut
/// was made and how long the closing took. (Only the lease: `member.error` may come later,
/// when the member was in a registry write at the cut, which waits for the client's 5 s
/// request timeout.)
fn cut_until_closed(lab: &FleetLab, i: usize) -> (Instant, Duration) {
    lab.cut_from_etcd(i);
    let cut = Instant::now();
    poll(TTL + Duration::from_secs(2), || {
        let (valid, _, _) = member(lab, i);
        (!valid).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "gw-{i} still says its lease is valid {:?} after the cut: {}",
            cut.elapsed(),
            lab.gateways[i].fleet_status()
        )
    });
    (cut, cut.elapsed())
}

/// Give gateway `i` its path back and wait until it is a member again; the time taken.
fn heal_until_member(lab: &FleetLab, i: usize) -> Duration {
    lab.heal(i);
    let healed = Instant::now();
    poll(Duration::from_secs(15), || {
        let (valid, error, _) = member(lab, i);
        (valid && error.is_none()).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "gw-{i} not back in the fleet: {}\n{}",
            lab.gateways[i].fleet_status(),
            lab.gateways[i].agent().log_tail(30)
        )
    });
    healed.elapsed()
}

#[test]
fn a_gateway_cut_off_past_its_lease_refuses_new_clients_and_comes_back_under_a_new_lease() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let lab = FleetLab::new(2, 1, &["alice", "bob"], &policy());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = Keys::new(tests::agent::ENDPOINT);
    let mut etcd = rt
        .block_on(portcullis::fleet::connect(&lab.etcd.fleet_section("probe")))
        .expect("connect to etcd");
    let alice = lab.connect_to("alice", 0);
    assert!(
        ping(&lab.client, SERVER, 3, Duration::from_secs(5)),
        "{}",
        alice.log()
    );
    // Listed by gw-1: alice's record is in etcd.
    let addr = poll(Duration::from_secs(5), || address_of(&lab, 1, "alice@gw-0"))
        .expect("alice never registered");
    let old_lease = lease_of(&rt, &mut etcd, &keys.gateway("gw-0")).expect("gw-0's presence");
    let (_, _, held) = member(&lab, 0);
    assert!(
        held.iter().any(|b| b.contains(&addr)),
        "{addr} outside {held:?}"
    );

    let (cut, closed) = cut_until_closed(&lab, 0);
    // A new client is refused as temporary, not admitted into blocks it may not hold.
    let bob = ProfileClient::start(&lab.client, &pinned(&lab.export_profile("bob"), 0));
    poll(Duration::from_secs(15), || {
        bob.log().contains("AUTH_FAILED,TEMP").then_some(())
    })
    .unwrap_or_else(|| panic!("bob not refused as temporary:\n{}", bob.log()));
    assert!(!bob.log().contains(COMPLETED), "{}", bob.log());
    // etcd expires the lease (nobody keeps it alive now): gw-0's presence, blocks and
    // sessions go with it; gw-1 stays in the fleet, alone.
    let expired = poll(TTL + Duration::from_secs(3), || {
        (!lease_alive(&rt, &mut etcd, old_lease)
            && under(&rt, &mut etcd, &keys.blocks())
                .iter()
                .all(|(gw, _)| gw != "gw-0")
            && under(&rt, &mut etcd, &keys.sessions_of("gw-0")).is_empty())
        .then(|| cut.elapsed())
    })
    .expect("etcd never expired gw-0's lease and keys");
    poll(Duration::from_secs(5), || {
        let m = lab.gateways[1].fleet_status()["member"].clone();
        (m["lease_valid"] == true && m["gateways"] == serde_json::json!(["gw-1"])).then_some(())
    })
    .unwrap_or_else(|| panic!("gw-1: {}", lab.gateways[1].fleet_status()));
    // The established session never noticed.
    assert!(
        ping(&lab.client, SERVER, 3, Duration::from_secs(5)),
        "alice's traffic stopped with gw-0 cut off:\n{}",
        alice.log()
    );

    let back = heal_until_member(&lab, 0);
    let new_lease = lease_of(&rt, &mut etcd, &keys.gateway("gw-0")).expect("gw-0's presence");
    assert_ne!(new_lease, old_lease, "the expired lease was taken up again");
    // Nobody took its blocks: claimed again, under the new lease.
    for b in &held {
        let kv = rt.block_on(etcd.get(keys.block(*b), None)).unwrap();
        let kv = kv.kvs().first().unwrap_or_else(|| panic!("{b} not held"));
        assert_eq!((kv.value(), kv.lease()), (&b"gw-0"[..], new_lease), "{b}");
    }
    assert_eq!(member(&lab, 0).2, held);
    // alice's session registered again, under the new lease, with her address.
    poll(Duration::from_secs(5), || {
        (address_of(&lab, 1, "alice@gw-0") == Some(addr)).then_some(())
    })
    .unwrap_or_else(|| panic!("alice not registered again: {:?}", in_use(&lab, 1)));
    let records = under(&rt, &mut etcd, &keys.sessions_of("gw-0"));
    assert!(
        !records.is_empty() && records.iter().all(|(_, l)| *l == new_lease),
        "gw-0's records not under its new lease {new_lease:x}: {records:?}"
    );
    // Admitting again: bob gets in on his client's own retry.
    bob.wait_connected(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("bob after gw-0 came back: {e}"));
    poll(Duration::from_secs(5), || {
        (in_use(&lab, 1).len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}", in_use(&lab, 1)));
    no_address_twice(&lab, 1, &["alice@gw-0", "bob@gw-0"]);
    no_address_twice(&lab, 0, &["alice@gw-0", "bob@gw-0"]);
    drop(bob);
    assert!(
        ping(&lab.client, SERVER, 3, Duration::from_secs(5)),
        "{}",
        alice.log()
    );
    eprintln!(
        "partition: admission closed {closed:?} after the cut, lease and keys gone from etcd \
         by {expired:?}; back in the fleet {back:?} after the heal, new lease {new_lease:x} \
         (was {old_lease:x})"
    );
}

#[test]
fn a_block_taken_while_its_gateway_was_cut_off_is_given_up_and_its_sessions_move() {
    tests::require_root!();
    if !have_etcd() {
        return;
    }
    let mut lab = FleetLab::new(1, 1, &["alice", "carol"], &policy());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let keys = Keys::new(tests::agent::ENDPOINT);
    let mut etcd = rt
        .block_on(portcullis::fleet::connect(&lab.etcd.fleet_section("probe")))
        .expect("connect to etcd");
    let (_, _, held) = member(&lab, 0);
    assert_eq!(held.len(), 1, "gw-0 holds {held:?}");
    let taken = held[0];
    // Every other block of the pool parked by the test, so the gateway started next holds
    // none and is short of addresses: it claims the first block that comes free, gw-0's.
    let parked = rt.block_on(etcd.lease_grant(60, None)).unwrap().id();
    let pool: Ipv4Net = "10.100.0.0/24".parse().unwrap();
    for b in blocks::blocks_of(pool).into_iter().filter(|b| *b != taken) {
        assert!(rt
            .block_on(blocks::try_claim(&mut etcd, &keys, "parked", parked, b))
            .unwrap());
    }
    let other = lab.add(&policy());
    assert_eq!(member(&lab, other).2, vec![], "gw-1 found a free block");

    let alice = lab.connect_to("alice", 0);
    let addr = poll(Duration::from_secs(5), || address_of(&lab, 0, "alice@gw-0"))
        .expect("alice not listed");
    assert!(taken.contains(&addr), "{addr} outside {taken}");
    let old_lease = lease_of(&rt, &mut etcd, &keys.gateway("gw-0")).expect("gw-0's presence");

    let (cut, _) = cut_until_closed(&lab, 0);
    // gw-1 claims gw-0's block once etcd expired gw-0's lease, never while it lives.
    let bound = TTL + SHORT_RETRY + Duration::from_secs(3);
    poll(bound, || {
        let holder = under(&rt, &mut etcd, &keys.block(taken));
        match holder.first().map(|(gw, _)| gw.as_str()) {
            Some("gw-1") => Some(()),
            Some(_) => None,
            None => {
                assert!(
                    !lease_alive(&rt, &mut etcd, old_lease),
                    "{taken} free while gw-0's lease lives"
                );
                None
            }
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "gw-1 did not claim {taken} within {bound:?}: {}\n{}",
            lab.gateways[other].fleet_status(),
            lab.gateways[other].agent().log_tail(20)
        )
    });
    assert!(
        !lease_alive(&rt, &mut etcd, old_lease),
        "gw-1 holds {taken} while gw-0's lease lives"
    );
    let claimed = cut.elapsed();
    // carol on gw-1 gets an address of that block: while gw-0 is cut off the two gateways
    // use the same addresses (each behind its own SNAT address, so nothing collides on the
    // private network; no registry lists both). Her client configures no tunnel address in
    // the shared client namespace, where alice's may be the same.
    let profile = pinned(&lab.export_profile("carol"), other) + "ifconfig-noexec\nroute-noexec\n";
    let carol = ProfileClient::start(&lab.client, &profile);
    carol
        .wait_connected(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("carol on gw-1: {e}"));
    let carol_addr = poll(Duration::from_secs(5), || {
        address_of(&lab, other, "carol@gw-1")
    })
    .expect("carol not listed");
    assert!(taken.contains(&carol_addr), "{carol_addr} outside {taken}");
    assert!(
        ping(&lab.client, SERVER, 3, Duration::from_secs(5)),
        "alice's traffic stopped with gw-0 cut off:\n{}",
        alice.log()
    );

    // The parked blocks free again (for gw-0 to move to), then gw-0's path comes back.
    rt.block_on(etcd.lease_revoke(parked)).unwrap();
    let back = heal_until_member(&lab, 0);
    let new_lease = lease_of(&rt, &mut etcd, &keys.gateway("gw-0")).expect("gw-0's presence");
    assert_ne!(new_lease, old_lease);
    // The block stays gw-1's; gw-0 holds another one.
    assert_eq!(
        under(&rt, &mut etcd, &keys.block(taken))
            .first()
            .map(|(gw, _)| gw.clone()),
        Some("gw-1".to_owned())
    );
    // alice is told to reconnect and is back on gw-0 with an address of a block it holds.
    let moved = Instant::now();
    let new_addr = poll(Duration::from_secs(20), || {
        let a = address_of(&lab, 0, "alice@gw-0")?;
        (alice.log().matches(COMPLETED).count() >= 2 && a != addr).then_some(a)
    })
    .unwrap_or_else(|| {
        panic!(
            "alice not back with a new address ({:?}):\n{}\n{}",
            in_use(&lab, 0),
            alice.log(),
            lab.gateways[0].agent().log_tail(20)
        )
    });
    let (_, _, now_held) = member(&lab, 0);
    assert!(
        !now_held.contains(&taken),
        "gw-0 kept {taken}: {now_held:?}"
    );
    assert!(
        now_held.iter().any(|b| b.contains(&new_addr)),
        "{new_addr} outside gw-0's {now_held:?}"
    );
    // No address in use twice, as either gateway lists the fleet.
    for i in [0, other] {
        poll(Duration::from_secs(5), || {
            (in_use(&lab, i).len() == 2).then_some(())
        })
        .unwrap_or_else(|| panic!("gw-{i}: {:?}", in_use(&lab, i)));
        no_address_twice(&lab, i, &["alice@gw-0", "carol@gw-1"]);
    }
    let records = under(&rt, &mut etcd, &keys.sessions_of("gw-0"));
    assert!(
        records.len() == 1 && records[0].1 == new_lease,
        "gw-0's records: {records:?}"
    );
    assert!(
        ping(&lab.client, SERVER, 3, Duration::from_secs(5)),
        "{}",
        alice.log()
    );
    eprintln!(
        "block taken: gw-1 held {taken} {claimed:?} after the cut; gw-0 back \
         {back:?} after the heal; alice ({addr} -> {new_addr}, carol {carol_addr}) passing \
         traffic again {:?} after that",
        moved.elapsed()
    );
}
