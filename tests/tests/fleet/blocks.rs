//! Address blocks against a real etcd: a race for one block has one winner; two gateways
//! fill the whole pool between them without one address twice; a dead gateway's blocks stay
//! held until its lease has expired and then go to the other; a gateway cut off from etcd
//! stops admitting once its TTL has run out.
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use portcullis::fleet::{blocks, connect, Keys, Member};
use portcullis::openvpn::fence::{AddressFence, Closed};
use portcullis::openvpn::pool::AddressPool;
use tests::etcd::EtcdCluster;

use super::have_etcd;

const POOL: &str = "10.100.0.0/24";

fn pool() -> Ipv4Net {
    POOL.parse().unwrap()
}

/// A gateway's admission side: the pool of its server and its fence, as the endpoint wires
/// them, with the member that fills the fence from etcd.
struct Gateway {
    pool: AddressPool,
    fence: Arc<AddressFence>,
    member: Option<Member>,
}

impl Gateway {
    fn start(etcd: &EtcdCluster, id: &str) -> Gateway {
        let fence = AddressFence::new();
        let member = Member::start(
            etcd.fleet_section(id),
            Keys::new("corp"),
            pool(),
            fence.clone(),
            None,
        );
        Gateway {
            pool: AddressPool::new(pool()).unwrap(),
            fence,
            member: Some(member),
        }
    }

    /// One admission, as `Server::assign` does it.
    fn admit(&mut self, user: &str) -> Result<Ipv4Addr, Closed> {
        let r = self
            .fence
            .open_blocks(Instant::now())
            .and_then(|b| self.pool.acquire_in(user, &b).ok_or(Closed::NoFreeAddress));
        self.fence
            .report_free(self.pool.free_in(&self.fence.blocks()));
        r
    }

    async fn wait_open(&self) {
        let start = Instant::now();
        while self
            .fence
            .open_blocks(Instant::now())
            .map_or(true, |b| b.is_empty())
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no block leased within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_race_for_one_block_has_one_winner() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let keys = Keys::new("corp");
    let block: Ipv4Net = "10.100.0.64/26".parse().unwrap();
    let mut racers = Vec::new();
    for i in 0..8 {
        let section = etcd.fleet_section(&format!("gw-{i}"));
        let keys = keys.clone();
        racers.push(tokio::spawn(async move {
            let mut c = connect(&section).await.unwrap();
            let lease = c.lease_grant(30, None).await.unwrap().id();
            blocks::try_claim(&mut c, &keys, &section.gateway_id, lease, block)
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for r in racers {
        winners += usize::from(r.await.unwrap());
    }
    assert_eq!(winners, 1, "one block, {winners} holders");
}

#[tokio::test]
async fn two_gateways_share_the_pool_without_one_address_twice() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let mut a = Gateway::start(&etcd, "gw-a");
    let mut b = Gateway::start(&etcd, "gw-b");
    a.wait_open().await;
    b.wait_open().await;
    // Both admit in turn until neither gets an address for 2 s (the pool is all held).
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let mut idle_since = Instant::now();
    let mut n = 0;
    while idle_since.elapsed() < Duration::from_secs(2) {
        n += 1;
        let mut progress = false;
        if let Ok(x) = a.admit(&format!("user{n}")) {
            got_a.push(x);
            progress = true;
        }
        if let Ok(x) = b.admit(&format!("user{n}")) {
            got_b.push(x);
            progress = true;
        }
        if progress {
            idle_since = Instant::now();
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(n < 10_000, "runaway admission loop");
    }
    let all: HashSet<Ipv4Addr> = got_a.iter().chain(&got_b).copied().collect();
    assert_eq!(
        all.len(),
        got_a.len() + got_b.len(),
        "an address was handed out twice"
    );
    // 256 addresses less network, gateway and broadcast, every one of them used.
    assert_eq!(all.len(), 253, "a: {}, b: {}", got_a.len(), got_b.len());
    assert!(!got_a.is_empty() && !got_b.is_empty());
    let (ba, bb): (HashSet<_>, HashSet<_>) = (
        a.fence.blocks().into_iter().collect(),
        b.fence.blocks().into_iter().collect(),
    );
    assert!(ba.is_disjoint(&bb), "{ba:?} {bb:?}");
    assert_eq!(ba.len() + bb.len(), 4);
}

#[tokio::test]
async fn a_dead_gateways_blocks_return_after_its_lease_never_before() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let keys = Keys::new("corp");
    let mut a = Gateway::start(&etcd, "gw-a");
    a.wait_open().await;
    // gw-a takes every block: it admits until the pool is dry.
    let start = Instant::now();
    while a.fence.blocks().len() < 4 || a.admit("x").is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "gw-a never filled the pool"
        );
        let _ = a.admit("x");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held_by_a = a.fence.blocks();
    let mut c = connect(&etcd.fleet_section("probe")).await.unwrap();
    let lease_of_a = c.get(keys.block(held_by_a[0]), None).await.unwrap().kvs()[0].lease();
    // Whether gw-a's lease still lives in etcd: "never before" means never while it does (a
    // wall-clock bound from the kill would depend on when the last keep-alive went out).
    let lease_alive = |c: &mut etcd_client::Client| {
        let mut c = c.clone();
        async move {
            c.lease_time_to_live(lease_of_a, None)
                .await
                .map(|r| r.ttl() > 0)
                .unwrap_or(false)
        }
    };
    let mut b = Gateway::start(&etcd, "gw-b");
    // gw-a dies without a word (no revoke: its keep-alives just stop).
    drop(a.member.take());
    let died = Instant::now();
    loop {
        b.fence.report_free(0); // b wants a block, all the time
        if let Ok(blocks) = b.fence.open_blocks(Instant::now()) {
            if !blocks.is_empty() {
                break;
            }
        }
        // While the lease lives the blocks are gw-a's (read the key, then the lease: a key
        // gone while the lease still lives afterwards was released early).
        let got = c.get(keys.block(held_by_a[0]), None).await.unwrap();
        if got.kvs().is_empty() {
            assert!(
                !lease_alive(&mut c).await,
                "gw-a's block released while its lease lives"
            );
        } else {
            assert_eq!(got.kvs()[0].value(), b"gw-a");
        }
        assert!(
            died.elapsed() < Duration::from_secs(10),
            "gw-a's blocks never returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !lease_alive(&mut c).await,
        "gw-b got a block {:?} after gw-a died, while gw-a's lease still lived",
        died.elapsed()
    );
    assert!(held_by_a.contains(&b.fence.blocks()[0]));
    assert!(b.admit("y").is_ok());
}

#[tokio::test]
async fn a_gateway_cut_off_from_etcd_stops_admitting_within_its_ttl() {
    if !have_etcd() {
        return;
    }
    let mut etcd = EtcdCluster::start(1).await;
    let mut a = Gateway::start(&etcd, "gw-a");
    a.wait_open().await;
    assert!(a.admit("alice").is_ok());
    etcd.kill(0);
    let cut = Instant::now();
    // Still admitting from its blocks for a while (the lease is valid in etcd too)...
    assert!(a.admit("bob").is_ok(), "refused right after the cut");
    // ...but never past the TTL (3 s) after the cut.
    loop {
        match a.admit("carol") {
            Err(Closed::NoLease) => break,
            _ => assert!(
                cut.elapsed() < Duration::from_millis(3200),
                "still admitting {:?} after etcd went away (TTL 3 s)",
                cut.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cut.elapsed() >= Duration::from_millis(1000),
        "closed too early: {:?}",
        cut.elapsed()
    );
}

/// Claimants racing for one pool, each on its own connection.
const CLAIMANTS: usize = 6;
/// A /22: 16 blocks per round.
const RACE_POOL: &str = "10.101.0.0/22";

/// `CLAIMANTS` gateways, each with its own connection and lease (30 s: alive for the test).
async fn claimants(etcd: &EtcdCluster) -> Vec<(String, etcd_client::Client, i64)> {
    let mut out = Vec::new();
    for i in 0..CLAIMANTS {
        let section = etcd.fleet_section(&format!("gw-{i}"));
        let mut c = connect(&section).await.unwrap();
        let lease = c.lease_grant(30, None).await.unwrap().id();
        out.push((section.gateway_id, c, lease));
    }
    out
}

/// Round after round, every claimant goes through all blocks of a fresh pool in the same
/// order at the same moment (the worst case: `claim_one` spreads gateways out, this does not),
/// claiming each with [`blocks::try_claim`]. Every block must end with exactly one winner,
/// the gateway etcd names, under that gateway's lease; and the addresses each winner hands
/// out of its blocks (the server's own pool) never meet another's. Fails at once if the
/// claim's compare is dropped or turned into a read-then-write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_claimants_never_hold_one_block_twice() {
    if !have_etcd() {
        return;
    }
    const ROUNDS: usize = 25;
    let etcd = EtcdCluster::start(1).await;
    let racers = claimants(&etcd).await;
    let mut probe = connect(&etcd.fleet_section("probe")).await.unwrap();
    let pool: Ipv4Net = RACE_POOL.parse().unwrap();
    let all = blocks::blocks_of(pool);
    let started = Instant::now();
    for round in 0..ROUNDS {
        let keys = Keys::new(&format!("race{round}"));
        let go = Arc::new(tokio::sync::Barrier::new(CLAIMANTS));
        let tasks: Vec<_> = racers
            .iter()
            .map(|(gw, c, lease)| {
                let (gw, mut c, lease) = (gw.clone(), c.clone(), *lease);
                let (keys, all, go) = (keys.clone(), all.clone(), go.clone());
                tokio::spawn(async move {
                    go.wait().await;
                    let mut won = Vec::new();
                    for b in all {
                        if blocks::try_claim(&mut c, &keys, &gw, lease, b)
                            .await
                            .unwrap()
                        {
                            won.push(b);
                        }
                    }
                    (gw, lease, won)
                })
            })
            .collect();
        let mut holder = std::collections::HashMap::new();
        let mut addresses = HashSet::new();
        let mut handed = 0;
        for t in tasks {
            let (gw, lease, won) = t.await.unwrap();
            let mut pool = AddressPool::new(pool).unwrap();
            while let Some(a) = pool.acquire_in(&gw, &won) {
                addresses.insert(a);
                handed += 1;
            }
            for b in won {
                if let Some(other) = holder.insert(b, (gw.clone(), lease)) {
                    panic!("round {round}: {b} won by {} and {gw}", other.0);
                }
            }
        }
        assert_eq!(holder.len(), all.len(), "round {round}: a block nobody won");
        assert_eq!(
            addresses.len(),
            handed,
            "round {round}: an address was handed out twice"
        );
        for (b, (gw, lease)) in &holder {
            let got = probe.get(keys.block(*b), None).await.unwrap();
            let kv = &got.kvs()[0];
            assert_eq!(
                (kv.value(), kv.lease()),
                (gw.as_bytes(), *lease),
                "round {round}: etcd does not name {b}'s winner"
            );
        }
    }
    eprintln!(
        "{ROUNDS} rounds of {CLAIMANTS} claimants x {} blocks: one winner each, {:?}",
        all.len(),
        started.elapsed()
    );
}

/// A block held under a lease nobody keeps alive (a dead gateway), with `CLAIMANTS` claimants
/// trying it all the time: it is won once, and only after etcd expired the holder's lease
/// (every win checks that the lease is gone, and comes no earlier than the TTL after the
/// last keep-alive, here the grant).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_holders_block_is_won_once_and_only_after_its_lease_expired() {
    if !have_etcd() {
        return;
    }
    let etcd = EtcdCluster::start(1).await;
    let keys = Keys::new("corp");
    let block: Ipv4Net = "10.100.0.64/26".parse().unwrap();
    let mut dead = connect(&etcd.fleet_section("gw-dead")).await.unwrap();
    let granted = Instant::now();
    let lease = dead.lease_grant(3, None).await.unwrap().id();
    assert!(blocks::try_claim(&mut dead, &keys, "gw-dead", lease, block)
        .await
        .unwrap());
    let racers = claimants(&etcd).await;
    let tasks: Vec<_> = racers
        .into_iter()
        .map(|(gw, mut c, mine)| {
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut tries = 0u32;
                while granted.elapsed() < Duration::from_secs(8) {
                    tries += 1;
                    if blocks::try_claim(&mut c, &keys, &gw, mine, block)
                        .await
                        .unwrap()
                    {
                        let at = granted.elapsed();
                        // An expired lease is answered with TTL -1 (or not found).
                        let ttl = c
                            .lease_time_to_live(lease, None)
                            .await
                            .map_or(-1, |r| r.ttl());
                        return (tries, Some((gw, at, ttl)));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (tries, None)
            })
        })
        .collect();
    let mut wins = Vec::new();
    let mut tries = 0;
    for t in tasks {
        let (n, won) = t.await.unwrap();
        tries += n;
        wins.extend(won);
    }
    assert_eq!(wins.len(), 1, "{wins:?}");
    let (gw, at, ttl) = &wins[0];
    assert!(
        *ttl <= 0,
        "{gw} won while the holder's lease had {ttl} s left"
    );
    assert!(
        *at >= Duration::from_secs(3),
        "{gw} won {at:?} after the grant, before the 3 s TTL"
    );
    eprintln!("{tries} tries by {CLAIMANTS} claimants; {gw} won {at:?} after the grant");
}
