//! Directory logins in progress, bounded: each holds an authorizer thread while the directory
//! answers (or waits out its timeouts), so past [`MAX_LOGINS_IN_FLIGHT`] a new login is
//! refused at once, and a renegotiation waits a bounded time for a free slot.
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Directory logins at once.
pub const MAX_LOGINS_IN_FLIGHT: usize = 64;

#[derive(Debug, Default)]
pub struct LoginSlots {
    busy: Mutex<usize>,
    freed: Condvar,
}

/// A slot held until dropped, however the login ends.
#[derive(Debug)]
pub struct Slot<'a>(&'a LoginSlots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.lock() -= 1;
        self.0.freed.notify_one();
    }
}

impl LoginSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot now, or `None` when all are taken.
    pub fn try_take(&self) -> Option<Slot<'_>> {
        self.take_within(Duration::ZERO)
    }

    /// A slot within `wait`, or `None` when none came free in time.
    pub fn take_within(&self, wait: Duration) -> Option<Slot<'_>> {
        let end = Instant::now() + wait;
        let mut busy = self.lock();
        while *busy >= MAX_LOGINS_IN_FLIGHT {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *busy += 1;
        Some(Slot(self))
    }

    /// Logins holding a slot now.
    pub fn busy(&self) -> usize {
        *self.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_slots_refuse_at_once_and_queue_within_the_wait() {
        let s = LoginSlots::default();
        let held: Vec<_> = (0..MAX_LOGINS_IN_FLIGHT)
            .map(|_| s.try_take().unwrap())
            .collect();
        assert!(s.try_take().is_none());
        assert!(s.take_within(Duration::from_millis(50)).is_none());
        std::thread::scope(|sc| {
            let waiter = sc.spawn(|| s.take_within(Duration::from_secs(10)).is_some());
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
            assert!(waiter.join().unwrap(), "a freed slot goes to the waiter");
        });
        assert_eq!(s.busy(), 0, "every slot is given back");
    }
}
