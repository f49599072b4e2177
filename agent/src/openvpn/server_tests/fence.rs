//! A fleet gateway's server: addresses only from the blocks its fence holds, a full block or
//! a lost lease refused with `AUTH_FAILED,TEMP` (the client retries, perhaps elsewhere), and
//! the fence told how many addresses are left.
use super::*;
use crate::openvpn::fence::AddressFence;

#[test]
fn addresses_come_from_leased_blocks_and_a_lost_lease_refuses_temporarily() {
    let mut lab = Lab::new(false);
    let fence = AddressFence::new();
    let block: ipnet::Ipv4Net = "10.100.0.128/26".parse().unwrap();
    fence.set(vec![block], Some(Instant::now() + Duration::from_secs(60)));
    lab.server.set_address_fence(Some(fence.clone()));
    assert_eq!(fence.free(), 64);

    let mut a = lab.client("alice");
    lab.pump(&mut a, link(40100));
    let addr = a.pushed_addr().expect("alice admitted");
    assert!(block.contains(&addr), "{addr} outside the leased {block}");
    assert_eq!(fence.free(), 63);

    // The lease ran out (no keep-alive answered within the TTL): nobody new is admitted.
    fence.set(vec![block], Some(Instant::now() - Duration::from_millis(1)));
    let mut b = lab.client("bob");
    lab.pump(&mut b, link(40101));
    assert!(b.pushed_addr().is_none());
    assert_eq!(
        b.auth_failed.as_deref(),
        Some("TEMP[backoff 10]:gateway lost its fleet lease, try another")
    );

    // A live lease without blocks (every block of the pool held elsewhere): the same.
    fence.set(vec![], Some(Instant::now() + Duration::from_secs(60)));
    let mut c = lab.client("carol");
    lab.pump(&mut c, link(40102));
    assert_eq!(
        c.auth_failed.as_deref(),
        Some("TEMP[backoff 10]:no leased address free on this gateway")
    );
    // alice's session was not touched by any of it.
    assert!(lab.server.pool().contains(addr));
}

/// Back in the fleet after a cut-off past its lease, the gateway lost one of its blocks to
/// another gateway: the sessions on that block's addresses are told `RESTART` (the other
/// gateway hands out the same addresses) and end once they ack it; the others stay. While the
/// lease is not valid nothing is cut, whatever the blocks.
#[test]
fn sessions_on_a_lost_block_are_told_to_reconnect_the_others_stay() {
    let mut lab = Lab::new(false);
    let fence = AddressFence::new();
    let lost: ipnet::Ipv4Net = "10.100.0.128/26".parse().unwrap();
    let kept: ipnet::Ipv4Net = "10.100.0.192/26".parse().unwrap();
    let valid = || Some(Instant::now() + Duration::from_secs(60));
    fence.set(vec![lost], valid());
    lab.server.set_address_fence(Some(fence.clone()));
    let (la, lb) = (link(40110), link(40111));
    let mut alice = lab.connect("alice", la);
    fence.set(vec![kept], valid());
    let mut bob = lab.connect("bob", lb);
    let (a, b) = (alice.pushed_addr().unwrap(), bob.pushed_addr().unwrap());
    assert!(lost.contains(&a) && kept.contains(&b), "{a} {b}");
    lab.events();

    // Cut off: the lease ran out; the member still lists both blocks. Nothing is cut.
    fence.set(
        vec![lost, kept],
        Some(Instant::now() - Duration::from_millis(1)),
    );
    assert_eq!(lab.server.fence_maintenance(lab.now), 0);
    fence.set(vec![kept], Some(Instant::now() - Duration::from_millis(1)));
    assert_eq!(lab.server.fence_maintenance(lab.now), 0);

    // A new lease, and only `kept` came back: alice is a stray, told once.
    fence.set(vec![kept], valid());
    assert_eq!(lab.server.fence_maintenance(lab.now), 1);
    assert_eq!(lab.server.fence_maintenance(lab.now), 0, "told twice");
    lab.pump(&mut alice, la);
    lab.pump(&mut bob, lb);
    assert_eq!(alice.messages, vec!["RESTART".to_owned()]);
    assert!(bob.messages.is_empty(), "{:?}", bob.messages);
    assert_eq!(
        disconnected(&lab.events()),
        vec![CloseReason::Server(
            "address block lost to another gateway".into()
        )]
    );
    assert_eq!(lab.server.session_count(), 1, "bob stays");
    // Her address is free in the pool again, and never handed out here (not a held block);
    // the fence's count is the pool's (kept's 63, the broadcast address aside, less bob's).
    assert!(!lab.server.pool().contains(a));
    assert_eq!(fence.free(), 62);
}
