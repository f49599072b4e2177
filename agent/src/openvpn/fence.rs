//! The part of the client pool one gateway of a fleet may lease from: the blocks it holds in
//! etcd, valid until a deadline (its etcd lease, counted from the last keep-alive etcd
//! answered). A standalone gateway has no fence and leases from the whole pool.
//!
//! The fence is shared between the control thread (which admits sessions and must never wait
//! on etcd) and the fleet task (which claims blocks and keeps the lease alive): a mutex around
//! a few words, taken once per admission, once per keep-alive and once a second by the
//! control thread's maintenance.
//!
//! A block can leave the fence: after this gateway was cut off from etcd past its lease,
//! another gateway may have claimed one of its blocks, and the member then sets the fence to
//! the blocks it got back. The sessions still on addresses of a lost block are *strays*
//! ([`AddressFence::is_stray`]): the other gateway hands out the same addresses, so the
//! server ends them (`RESTART`: the client comes back with an address of a held block) and
//! the registry never lists them again.
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

/// When a gateway holds fewer free addresses than this in its blocks, it claims another
/// block ahead of demand, so a burst of clients is not refused while a claim is in flight.
pub const LOW_WATER: usize = 16;

/// A gateway still short of addresses after a claim found every block held asks again this
/// often (from the control thread's recount), so a block freed by a dead gateway's expired
/// lease is picked up without waiting for a client to be refused; not more often, as each
/// try reads the whole `blocks/` prefix and logs that the pool is held.
pub const SHORT_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct State {
    blocks: Vec<Ipv4Net>,
    /// Past this instant the lease may have expired in etcd and another gateway may hold
    /// these blocks: nothing is admitted. `None`: no lease yet.
    valid_until: Option<Instant>,
    /// Free addresses in `blocks`, as the pool last counted them.
    free: usize,
    /// When the fleet task was last asked for a block by [`AddressFence::recount`], and the
    /// count it was asked with.
    last_ask: Option<(Instant, usize)>,
}

/// Why the fence admits nothing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// No live lease (never granted, or not renewed within its TTL).
    NoLease,
    /// A lease, but every held block is full (a claim is under way).
    NoFreeAddress,
}

/// The blocks a fleet gateway may lease addresses from, and until when.
#[derive(Debug, Default)]
pub struct AddressFence {
    state: Mutex<State>,
    /// Wakes the fleet task: the gateway needs another block.
    wanted: tokio::sync::Notify,
}

impl AddressFence {
    pub fn new() -> Arc<AddressFence> {
        Arc::new(AddressFence::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fleet task: these blocks are held, under a lease valid until `valid_until`.
    pub fn set(&self, blocks: Vec<Ipv4Net>, valid_until: Option<Instant>) {
        let mut s = self.lock();
        s.blocks = blocks;
        s.valid_until = valid_until;
    }

    /// The fleet task: a block was claimed (`blocks` holds it), adding `free` addresses.
    pub fn add(&self, blocks: Vec<Ipv4Net>, free: usize, valid_until: Option<Instant>) {
        let mut s = self.lock();
        s.blocks = blocks;
        s.free += free;
        s.valid_until = valid_until;
    }

    /// The fleet task: a keep-alive was answered; the lease runs until `valid_until`.
    pub fn extend(&self, valid_until: Instant) {
        self.lock().valid_until = Some(valid_until);
    }

    /// The blocks held now (whatever the lease's state).
    pub fn blocks(&self) -> Vec<Ipv4Net> {
        self.lock().blocks.clone()
    }

    /// Free addresses in the held blocks, as last counted by the pool.
    pub fn free(&self) -> usize {
        self.lock().free
    }

    /// Whether the lease is valid at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        self.lock().valid_until.is_some_and(|t| now < t)
    }

    /// The fleet task waits here for a gateway that runs short of addresses.
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// The pool: the blocks it may lease from at `now`.
    pub fn open_blocks(&self, now: Instant) -> Result<Vec<Ipv4Net>, Closed> {
        let s = self.lock();
        match s.valid_until {
            Some(t) if now < t => Ok(s.blocks.clone()),
            _ => Err(Closed::NoLease),
        }
    }

    /// The pool: `free` addresses are left in the held blocks; below [`LOW_WATER`] the fleet
    /// task is asked for another block.
    pub fn report_free(&self, free: usize) {
        self.lock().free = free;
        if free < LOW_WATER {
            self.wanted.notify_one();
        }
    }

    /// The control thread's count, once a second: `free` addresses are left in the held
    /// blocks. Corrects a count that went stale when blocks were lost (the member cannot count
    /// the pool), and asks for a block when short: at once when the count changed, else every
    /// [`SHORT_RETRY`] while every block of the pool was held at the last try.
    pub fn recount(&self, free: usize, now: Instant) {
        let mut s = self.lock();
        s.free = free;
        if free >= LOW_WATER {
            s.last_ask = None;
            return;
        }
        let due = match s.last_ask {
            Some((at, n)) => n != free || now.duration_since(at) >= SHORT_RETRY,
            None => true,
        };
        if due {
            s.last_ask = Some((now, free));
            self.wanted.notify_one();
        }
    }

    /// Whether `addr` lies in a held block.
    pub fn holds(&self, addr: Ipv4Addr) -> bool {
        self.lock().blocks.iter().any(|b| b.contains(&addr))
    }

    /// Whether a session on `addr` is a stray at `now`: the lease is valid (this gateway is in
    /// the fleet and knows which blocks it holds) and `addr` lies in none of them (a block
    /// lost to another gateway while this one was cut off). Never while the lease is not
    /// valid: a gateway cut off from etcd does not know yet and keeps its sessions.
    pub fn is_stray(&self, addr: Ipv4Addr, now: Instant) -> bool {
        let s = self.lock();
        s.valid_until.is_some_and(|t| now < t) && !s.blocks.iter().any(|b| b.contains(&addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn closed_without_a_live_lease() {
        let f = AddressFence::new();
        let now = Instant::now();
        assert_eq!(f.open_blocks(now), Err(Closed::NoLease));
        let b: Ipv4Net = "10.9.0.0/26".parse().unwrap();
        f.set(vec![b], Some(now + Duration::from_secs(3)));
        assert_eq!(f.open_blocks(now), Ok(vec![b]));
        assert!(f.holds("10.9.0.63".parse().unwrap()));
        assert!(!f.holds("10.9.0.64".parse().unwrap()));
        // Past the deadline nothing is admitted until a keep-alive is answered again.
        let later = now + Duration::from_secs(4);
        assert_eq!(f.open_blocks(later), Err(Closed::NoLease));
        f.extend(later + Duration::from_secs(3));
        assert_eq!(f.open_blocks(later), Ok(vec![b]));
    }

    #[test]
    fn strays_are_addresses_outside_the_blocks_under_a_valid_lease() {
        let f = AddressFence::new();
        let now = Instant::now();
        let (kept, lost): (Ipv4Net, Ipv4Net) = (
            "10.9.0.0/26".parse().unwrap(),
            "10.9.0.64/26".parse().unwrap(),
        );
        let (a, b) = ("10.9.0.5".parse().unwrap(), "10.9.0.70".parse().unwrap());
        f.set(vec![kept, lost], Some(now + Duration::from_secs(3)));
        assert!(!f.is_stray(a, now) && !f.is_stray(b, now));
        // Cut off past the lease: nothing is known, nothing is a stray.
        f.set(vec![kept], Some(now - Duration::from_millis(1)));
        assert!(!f.is_stray(b, now));
        // Back under a new lease with `lost` held elsewhere now: its sessions are strays.
        f.set(vec![kept], Some(now + Duration::from_secs(3)));
        assert!(!f.is_stray(a, now) && f.is_stray(b, now));
    }

    #[tokio::test]
    async fn recount_asks_at_once_on_a_change_and_then_every_short_retry() {
        let f = AddressFence::new();
        let now = Instant::now();
        let asked = |f: &Arc<AddressFence>| {
            let f = f.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(20), f.wanted())
                    .await
                    .is_ok()
            }
        };
        // Stale after a lost block: the member counted 61, the pool has 0 in what is left.
        f.add(vec![], 61, None);
        f.recount(0, now);
        assert_eq!(f.free(), 0);
        assert!(asked(&f).await, "a short count asks at once");
        f.recount(0, now + Duration::from_secs(1));
        assert!(
            !asked(&f).await,
            "the same count asks again only after SHORT_RETRY"
        );
        f.recount(0, now + SHORT_RETRY);
        assert!(asked(&f).await);
        f.recount(3, now + SHORT_RETRY + Duration::from_secs(1));
        assert!(asked(&f).await, "a changed count asks at once");
        f.recount(40, now + SHORT_RETRY * 2);
        assert!(!asked(&f).await, "not short: nothing asked");
    }

    #[test]
    fn pool_leases_only_inside_the_blocks() {
        use crate::openvpn::pool::AddressPool;
        let mut pool = AddressPool::new("10.9.0.0/24".parse().unwrap()).unwrap();
        let first: Ipv4Net = "10.9.0.0/26".parse().unwrap();
        let second: Ipv4Net = "10.9.0.64/26".parse().unwrap();
        // The first block lacks the network and gateway addresses.
        assert_eq!(pool.free_in(&[first]), 62);
        let mut got = std::collections::HashSet::new();
        while let Some(a) = pool.acquire_in("u", &[first]) {
            assert!(first.contains(&a), "{a}");
            assert!(got.insert(a), "{a} twice");
        }
        assert_eq!(got.len(), 62);
        // The user's last address is outside a block it may use now: not reused.
        let a = pool.acquire_in("u", &[second]).unwrap();
        assert!(second.contains(&a), "{a}");
        assert_eq!(pool.free_in(&[first, second]), 63);
    }
}
