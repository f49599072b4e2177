//! The client address pool: one tunnel address per session out of the client CIDR, in
//! `topology subnet` (protocol doc §8.3), as AWS Client VPN hands them out of its client CIDR.
//!
//! Layout of the block: the network address, then the gateway (the first host, our own tun
//! address and the pushed `route-gateway`), the assignable hosts, and the broadcast address.
//! Only the assignable hosts are ever leased.
//!
//! Memory is a bitmap over the assignable hosts (128 KiB for a /12) plus a bounded memory of
//! which address each user held last, so a reconnecting user gets its old address back while it
//! is still free. Users are remembered by a keyed 64-bit hash of the name, not by the name:
//! entries have a fixed size and no user names are kept. A hash collision only changes which
//! free address is preferred, never whether an address is free.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use ring::hmac;
use thiserror::Error;

/// Largest client CIDR (AWS allows /12).
pub const MIN_PREFIX: u8 = 12;
/// Smallest client CIDR: a /30 has exactly one assignable host (AWS stops at /22).
pub const MAX_PREFIX: u8 = 30;
/// Upper bound of the per-user memory, whatever the pool size.
pub const MAX_REMEMBERED_USERS: usize = 65_536;
/// Key of the user hash when none is given: fixed, so a restarted gateway hands users the same
/// start addresses as before.
pub const DEFAULT_HASH_KEY: [u8; 16] = *b"portcullis-pool1";

/// Network address, gateway and broadcast: never leased.
const RESERVED: u32 = 3;
/// Host index (offset in the block) of the first assignable address; 0 is the network address
/// and 1 the gateway.
const FIRST_HOST: u32 = 2;

/// Why a client CIDR cannot be a pool; each names the fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum PoolError {
    #[error("client CIDR {cidr} has prefix /{}: use a prefix from /{MIN_PREFIX} to /{MAX_PREFIX}", .cidr.prefix_len())]
    PrefixOutOfRange { cidr: Ipv4Net },
    #[error("client CIDR {cidr} has host bits set: use the network address, {}", .cidr.trunc())]
    NotNetworkAddress { cidr: Ipv4Net },
}

/// Leases tunnel addresses out of a client CIDR. Not thread-safe by itself: one owner (the
/// session table) calls it.
#[derive(Debug)]
pub struct AddressPool {
    cidr: Ipv4Net,
    base: u32,
    capacity: usize,
    /// Bit `i` set: host `FIRST_HOST + i` is leased. Padding bits past `capacity` in the last
    /// word are set, so a scan never returns them.
    bits: Vec<u64>,
    in_use: usize,
    hash_key: hmac::Key,
    memory: LastLease,
}

impl AddressPool {
    pub fn new(cidr: Ipv4Net) -> Result<Self, PoolError> {
        Self::with_hash_key(cidr, &DEFAULT_HASH_KEY)
    }

    /// Like [`AddressPool::new`] with a deployment-specific key for the user hash, so users
    /// cannot predict (or aim at) each other's start addresses.
    pub fn with_hash_key(cidr: Ipv4Net, key: &[u8]) -> Result<Self, PoolError> {
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&cidr.prefix_len()) {
            return Err(PoolError::PrefixOutOfRange { cidr });
        }
        if cidr.addr() != cidr.network() {
            return Err(PoolError::NotNetworkAddress { cidr });
        }
        let size = 1u32 << (32 - cidr.prefix_len());
        let capacity = (size - RESERVED) as usize;
        let mut bits = vec![0u64; capacity.div_ceil(64)];
        let tail = capacity % 64;
        if tail != 0 {
            if let Some(last) = bits.last_mut() {
                *last = !0u64 << tail;
            }
        }
        Ok(Self {
            cidr,
            base: u32::from(cidr.network()),
            capacity,
            bits,
            in_use: 0,
            hash_key: hmac::Key::new(hmac::HMAC_SHA256, key),
            memory: LastLease::new((2 * capacity).min(MAX_REMEMBERED_USERS)),
        })
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// Our own tun address and the pushed `route-gateway`: the first host of the block.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base + 1)
    }

    pub fn netmask(&self) -> Ipv4Addr {
        self.cidr.netmask()
    }

    /// Number of assignable addresses: the block less network, gateway and broadcast.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Leases an address for a new session of `user`: the address this user held last if it
    /// is free, else the first free one from a start derived from a keyed hash of the name.
    /// Every call gives a distinct address (a user may hold several sessions). `None` when the
    /// pool is full.
    pub fn acquire(&mut self, user: &str) -> Option<Ipv4Addr> {
        if self.in_use >= self.capacity {
            return None;
        }
        let h = self.user_hash(user);
        let slot = match self.memory.get(h) {
            Some(s) if !self.is_set(s) => s,
            _ => self.find_free_from((h % self.capacity as u64) as usize)?,
        };
        self.set(slot, true);
        self.in_use += 1;
        self.memory.remember(h, slot);
        Some(self.addr_of(slot))
    }

    /// Like [`AddressPool::acquire`], but only inside `blocks` (a fleet gateway's leased
    /// blocks of the pool): the user's last address if it is free and inside, else the first
    /// free one of the blocks in order. `None` when they are full.
    pub fn acquire_in(&mut self, user: &str, blocks: &[Ipv4Net]) -> Option<Ipv4Addr> {
        let h = self.user_hash(user);
        let inside = |a: Ipv4Addr| blocks.iter().any(|b| b.contains(&a));
        let slot = match self.memory.get(h) {
            Some(s) if !self.is_set(s) && inside(self.addr_of(s)) => s,
            _ => self.free_slots_in(blocks).next()?,
        };
        self.set(slot, true);
        self.in_use += 1;
        self.memory.remember(h, slot);
        Some(self.addr_of(slot))
    }

    /// Free addresses inside `blocks`.
    pub fn free_in(&self, blocks: &[Ipv4Net]) -> usize {
        self.free_slots_in(blocks).count()
    }

    fn free_slots_in<'a>(&'a self, blocks: &'a [Ipv4Net]) -> impl Iterator<Item = usize> + 'a {
        blocks
            .iter()
            .flat_map(|b| u32::from(b.network())..=u32::from(b.broadcast()))
            .filter_map(|a| self.slot_of(Ipv4Addr::from(a)))
            .filter(|&s| !self.is_set(s))
    }

    /// Returns a leased address; `false` (and no change) when it is not leased or not ours.
    pub fn release(&mut self, addr: Ipv4Addr) -> bool {
        match self.slot_of(addr) {
            Some(s) if self.is_set(s) => {
                self.set(s, false);
                self.in_use -= 1;
                true
            }
            _ => false,
        }
    }

    /// Whether `addr` is currently leased.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.slot_of(addr).is_some_and(|s| self.is_set(s))
    }

    /// Whether `addr` is one the pool can lease at all (inside the CIDR, not network, gateway
    /// or broadcast), leased or not.
    pub fn is_assignable(&self, addr: Ipv4Addr) -> bool {
        self.slot_of(addr).is_some()
    }

    fn user_hash(&self, user: &str) -> u64 {
        let tag = hmac::sign(&self.hash_key, user.as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_be_bytes(b)
    }

    fn slot_of(&self, addr: Ipv4Addr) -> Option<usize> {
        let off = u32::from(addr).wrapping_sub(self.base);
        let s = usize::try_from(off.checked_sub(FIRST_HOST)?).ok()?;
        (s < self.capacity).then_some(s)
    }

    fn addr_of(&self, slot: usize) -> Ipv4Addr {
        // `slot < capacity < 2^20`, so the cast and the sum stay inside the block.
        Ipv4Addr::from(self.base + FIRST_HOST + slot as u32)
    }

    fn is_set(&self, slot: usize) -> bool {
        self.bits[slot / 64] & (1 << (slot % 64)) != 0
    }

    fn set(&mut self, slot: usize, on: bool) {
        let w = &mut self.bits[slot / 64];
        if on {
            *w |= 1 << (slot % 64);
        } else {
            *w &= !(1 << (slot % 64));
        }
    }

    /// First clear bit at or after `start`, wrapping around; a word at a time.
    fn find_free_from(&self, start: usize) -> Option<usize> {
        let words = self.bits.len();
        let (w0, b0) = (start / 64, start % 64);
        let free = !self.bits[w0] & (!0u64 << b0);
        if free != 0 {
            return Some(w0 * 64 + free.trailing_zeros() as usize);
        }
        for i in 1..=words {
            let w = (w0 + i) % words;
            let mut free = !self.bits[w];
            if w == w0 {
                // Back at the start word: only the bits before `start` are left.
                free &= (1u64 << b0) - 1;
            }
            if free != 0 {
                return Some(w * 64 + free.trailing_zeros() as usize);
            }
        }
        None
    }
}

/// LRU map user hash → slot last leased, at most `cap` entries.
#[derive(Debug)]
struct LastLease {
    cap: usize,
    by_user: HashMap<u64, (usize, u64)>,
    /// Use tick → user hash, oldest first, for eviction.
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl LastLease {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            by_user: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    fn get(&self, user: u64) -> Option<usize> {
        self.by_user.get(&user).map(|&(slot, _)| slot)
    }

    fn remember(&mut self, user: u64, slot: usize) {
        self.tick += 1;
        if let Some((_, old)) = self.by_user.insert(user, (slot, self.tick)) {
            self.order.remove(&old);
        }
        self.order.insert(self.tick, user);
        if self.by_user.len() > self.cap {
            if let Some((_, evict)) = self.order.pop_first() {
                self.by_user.remove(&evict);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_user.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn pool(s: &str) -> AddressPool {
        AddressPool::new(s.parse().unwrap()).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn layout_of_a_slash_24() {
        let p = pool("10.99.0.0/24");
        assert_eq!(p.gateway(), ip("10.99.0.1"));
        assert_eq!(p.netmask(), ip("255.255.255.0"));
        assert_eq!(p.capacity(), 253);
        assert_eq!(p.in_use(), 0);
        for reserved in [
            "10.99.0.0",
            "10.99.0.1",
            "10.99.0.255",
            "10.98.255.255",
            "10.99.1.2",
        ] {
            assert!(!p.is_assignable(ip(reserved)), "{reserved}");
        }
        assert!(p.is_assignable(ip("10.99.0.2")) && p.is_assignable(ip("10.99.0.254")));
    }

    #[test]
    fn prefix_and_network_address_are_checked() {
        for bad in [
            "10.0.0.0/11",
            "10.0.0.0/8",
            "10.0.0.0/31",
            "10.0.0.0/32",
            "0.0.0.0/0",
        ] {
            let cidr: Ipv4Net = bad.parse().unwrap();
            let e = AddressPool::new(cidr).unwrap_err();
            assert_eq!(e, PoolError::PrefixOutOfRange { cidr });
            assert!(e.to_string().contains("/12 to /30"), "{e}");
        }
        let cidr: Ipv4Net = "10.99.0.7/24".parse().unwrap();
        let e = AddressPool::new(cidr).unwrap_err();
        assert_eq!(e, PoolError::NotNetworkAddress { cidr });
        assert!(e.to_string().contains("10.99.0.0/24"), "{e}");
        assert!(AddressPool::new("10.0.0.0/12".parse().unwrap()).is_ok());
        assert!(AddressPool::new("10.0.0.0/30".parse().unwrap()).is_ok());
    }

    #[test]
    fn slash_30_has_one_address() {
        let mut p = pool("192.168.5.4/30");
        assert_eq!(p.capacity(), 1);
        assert_eq!(p.gateway(), ip("192.168.5.5"));
        assert_eq!(p.acquire("alice"), Some(ip("192.168.5.6")));
        assert_eq!(p.acquire("bob"), None);
        assert!(p.release(ip("192.168.5.6")));
        assert_eq!(p.acquire("bob"), Some(ip("192.168.5.6")));
    }

    #[test]
    fn slash_12_uses_a_bitmap() {
        let mut p = pool("100.64.0.0/12");
        assert_eq!(p.capacity(), (1 << 20) - 3);
        // 2^20 bits, not a set of a million addresses.
        assert_eq!(p.bits.len(), (1 << 20) / 64);
        let a = p.acquire("alice").unwrap();
        assert!(p.is_assignable(a) && p.contains(a));
        assert_eq!(p.in_use(), 1);
        assert!(p.release(a));
        assert!(!p.contains(a));
    }

    #[test]
    fn same_user_gets_distinct_addresses_and_the_old_one_back() {
        let mut p = pool("10.99.0.0/24");
        let a = p.acquire("alice").unwrap();
        let b = p.acquire("alice").unwrap();
        assert_ne!(a, b, "concurrent sessions of one user");
        assert_eq!(p.in_use(), 2);
        assert!(p.release(b));
        for u in 0..20 {
            p.acquire(&format!("user{u}")).unwrap();
        }
        // Unless another user took it meanwhile, alice gets her last address back.
        if !p.contains(b) {
            assert_eq!(p.acquire("alice"), Some(b));
        }
    }

    #[test]
    fn start_address_depends_on_the_key() {
        let net: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        let a = AddressPool::with_hash_key(net, b"k1")
            .unwrap()
            .acquire("alice");
        let a2 = AddressPool::with_hash_key(net, b"k1")
            .unwrap()
            .acquire("alice");
        assert_eq!(a, a2, "stable across restarts with the same key");
        let others: HashSet<_> = (0..8)
            .map(|i| {
                AddressPool::with_hash_key(net, format!("key{i}").as_bytes())
                    .unwrap()
                    .acquire("alice")
            })
            .collect();
        assert!(others.len() > 1, "the key moves the start address");
    }

    #[test]
    fn release_refuses_what_is_not_leased() {
        let mut p = pool("10.99.0.0/28");
        let a = p.acquire("alice").unwrap();
        for addr in [
            "10.99.0.0",
            "10.99.0.1",
            "10.99.0.15",
            "10.99.0.16",
            "9.9.9.9",
        ] {
            assert!(!p.release(ip(addr)), "{addr}");
        }
        let free = (2..15)
            .map(|i| Ipv4Addr::new(10, 99, 0, i))
            .find(|&x| x != a)
            .unwrap();
        assert!(!p.release(free));
        assert_eq!(p.in_use(), 1);
        assert!(p.release(a));
        assert!(!p.release(a), "double release");
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn full_pool_and_wraparound() {
        let mut p = pool("10.1.0.0/22");
        let mut got = HashSet::new();
        for i in 0..p.capacity() {
            let a = p.acquire(&format!("u{i}")).expect("not full yet");
            assert!(got.insert(a));
        }
        assert_eq!(p.in_use(), 1021);
        assert_eq!(p.acquire("late"), None);
        assert_eq!(p.acquire("u0"), None);
        // One freed address anywhere is found, whatever the start of the probe.
        let last = ip("10.1.3.254");
        assert!(p.release(last));
        assert_eq!(p.acquire("late"), Some(last));
        let first = ip("10.1.0.2");
        assert!(p.release(first));
        assert_eq!(p.acquire("another"), Some(first));
    }

    #[test]
    fn user_memory_is_bounded() {
        let mut p = pool("10.0.0.0/29");
        assert_eq!(p.capacity(), 5);
        for i in 0..1000 {
            let a = p.acquire(&format!("u{i}")).unwrap();
            p.release(a);
        }
        assert_eq!(p.memory.len(), 10, "2 × capacity");
        let big = pool("10.0.0.0/12");
        assert_eq!(big.memory.cap, MAX_REMEMBERED_USERS);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire(u8),
        /// Release the n-th held address (mod the number held).
        Release(usize),
        /// Release an arbitrary address, probably not leased.
        ReleaseRaw(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..8).prop_map(Op::Acquire),
            2 => any::<usize>().prop_map(Op::Release),
            1 => any::<u32>().prop_map(Op::ReleaseRaw),
        ]
    }

    proptest! {
        #[test]
        fn leases_are_exclusive_and_sticky(
            prefix in prop::sample::select(vec![30u8, 29, 28, 27, 24]),
            ops in prop::collection::vec(op(), 0..400),
        ) {
            let net = Ipv4Net::new(Ipv4Addr::new(10, 20, 0, 0), prefix).unwrap().trunc();
            let mut p = AddressPool::new(net).unwrap();
            let reserved = [net.network(), p.gateway(), net.broadcast()];
            // Address → user for the leases the model holds.
            let mut held: Vec<(Ipv4Addr, u8)> = vec![];
            let mut last: HashMap<u8, Ipv4Addr> = HashMap::new();
            let mut users_seen: HashSet<u8> = HashSet::new();
            for op in ops {
                match op {
                    Op::Acquire(u) => {
                        users_seen.insert(u);
                        let got = p.acquire(&format!("user{u}"));
                        if held.len() == p.capacity() {
                            prop_assert_eq!(got, None);
                            continue;
                        }
                        let a = got.expect("free addresses left");
                        prop_assert!(net.contains(&a) && !reserved.contains(&a));
                        prop_assert!(held.iter().all(|&(h, _)| h != a), "{} handed out twice", a);
                        // While no user was forgotten, a user's last address comes back
                        // whenever it is free.
                        if users_seen.len() <= p.memory.cap {
                            if let Some(&prev) = last.get(&u) {
                                if held.iter().all(|&(h, _)| h != prev) {
                                    prop_assert_eq!(a, prev);
                                }
                            }
                        }
                        held.push((a, u));
                        last.insert(u, a);
                    }
                    Op::Release(i) => {
                        if held.is_empty() {
                            continue;
                        }
                        let (a, _) = held.swap_remove(i % held.len());
                        prop_assert!(p.release(a));
                        prop_assert!(!p.contains(a));
                    }
                    Op::ReleaseRaw(x) => {
                        let a = Ipv4Addr::from(x);
                        let was_held = held.iter().position(|&(h, _)| h == a);
                        prop_assert_eq!(p.release(a), was_held.is_some());
                        if let Some(i) = was_held {
                            held.swap_remove(i);
                        }
                    }
                }
                prop_assert_eq!(p.in_use(), held.len());
                for &(a, _) in &held {
                    prop_assert!(p.contains(a));
                }
                for r in reserved {
                    prop_assert!(!p.contains(r));
                }
            }
        }
    }
}
