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
