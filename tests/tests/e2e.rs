//! End-to-end tests: client namespaces with their own kernel stacks send real traffic
//! (TCP, UDP, ICMP echo) through the relay into the TAP, the real XDP programs decide, and
//! servers in the server namespace answer. See `tests::clients` for the topology.
//!
//! Run serially as root: `cargo test -p tests --test e2e -- --test-threads=1`.
#[path = "e2e/host_sockets.rs"]
mod host_sockets;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/policy.rs"]
mod policy;
#[path = "e2e/traffic.rs"]
mod traffic;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use portcullis_common::{DropReason, Event};
use tests::{
    clients::{silent, wait_until, RECV_TIMEOUT, SILENCE},
    gateway::Gateway,
};

pub const C1: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
pub const C2: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 3);
pub const C3: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 4);
pub const C4: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 5);
pub const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const SERVER_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);

pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

pub fn drops(gw: &Gateway) -> BTreeMap<DropReason, u64> {
    gw.dp.maps.drop_counters().unwrap()
}

pub fn drop_count(gw: &Gateway, r: DropReason) -> u64 {
    drops(gw)[&r]
}

pub fn events(gw: &Gateway) -> BTreeMap<Event, u64> {
    gw.dp.maps.event_counters().unwrap()
}

pub fn event_count(gw: &Gateway, e: Event) -> u64 {
    events(gw)[&e]
}

/// Every drop reason with a non-zero count.
pub fn nonzero_drops(gw: &Gateway) -> BTreeMap<DropReason, u64> {
    drops(gw).into_iter().filter(|(_, n)| *n > 0).collect()
}

/// Wait (bounded) until `reason` has been counted `n` times, then give stragglers 50 ms
/// and return the final count, so callers can assert it is exactly `n`.
pub fn settle_drops(gw: &Gateway, reason: DropReason, n: u64) -> u64 {
    wait_until(Duration::from_secs(2), || drop_count(gw, reason) >= n);
    std::thread::sleep(Duration::from_millis(50));
    drop_count(gw, reason)
}
