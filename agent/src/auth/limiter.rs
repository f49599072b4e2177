//! The failed-login rate limit: token buckets per user and per source.
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// `capacity / window`; with no token left, logins are refused before the directory is asked.
#[derive(Debug)]
pub struct FailureLimiter {
    capacity: f64,
    per_sec: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

/// Entries kept per limiter. Past it, full buckets are dropped first; if the map is still at
/// the cap (a spray of distinct names or sources, whose buckets are not full yet), the
/// least recently used eighth is forgotten, so memory stays bounded. A forgotten key starts
/// with a full bucket again: an attacker must fail this many times across other keys to
/// reset one, which the other limiter (per source, per user) still counts.
const LIMITER_ENTRIES: usize = 10_000;

impl FailureLimiter {
    /// `capacity` failures per `window`; 0 = no limit.
    pub fn new(capacity: u32, window: Duration) -> Self {
        Self {
            capacity: f64::from(capacity),
            per_sec: f64::from(capacity) / window.as_secs_f64().max(1.0),
            buckets: HashMap::new(),
        }
    }

    fn level(&self, key: &str, now: Instant) -> f64 {
        match self.buckets.get(key) {
            None => self.capacity,
            Some((t, at)) => (t + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
                .min(self.capacity),
        }
    }

    pub fn allowed(&self, key: &str, now: Instant) -> bool {
        self.capacity == 0.0 || self.level(key, now) >= 1.0
    }

    pub fn failed(&mut self, key: &str, now: Instant) {
        if self.capacity == 0.0 {
            return;
        }
        let t = (self.level(key, now) - 1.0).max(0.0);
        self.set(key, t, now);
    }

    /// Takes a token when one is left (true), before the directory is asked: logins in
    /// flight at once cannot all pass one check. [`FailureLimiter::give_back`] returns it.
    pub fn try_take(&mut self, key: &str, now: Instant) -> bool {
        if self.capacity == 0.0 {
            return true;
        }
        let l = self.level(key, now);
        if l < 1.0 {
            return false;
        }
        self.set(key, l - 1.0, now);
        true
    }

    /// New limits (a reload): each key keeps the failures it has counted so far, so
    /// changing the limits never hands an attacker a fresh allowance.
    pub fn set_limit(&mut self, capacity: u32, window: Duration) {
        let capacity = f64::from(capacity);
        let per_sec = capacity / window.as_secs_f64().max(1.0);
        if capacity == self.capacity && per_sec == self.per_sec {
            return;
        }
        let now = Instant::now();
        let old = self.capacity;
        let levels: Vec<(String, f64)> = self
            .buckets
            .keys()
            .map(|k| (k.clone(), self.level(k, now)))
            .collect();
        self.capacity = capacity;
        self.per_sec = per_sec;
        self.buckets.clear();
        if capacity == 0.0 {
            return;
        }
        for (k, level) in levels {
            let failures = old - level;
            let left = (capacity - failures).clamp(0.0, capacity);
            if left < capacity {
                self.buckets.insert(k, (left, now));
            }
        }
    }

    /// Returns a token taken by [`FailureLimiter::try_take`] (the login did not fail).
    pub fn give_back(&mut self, key: &str, now: Instant) {
        if self.capacity == 0.0 {
            return;
        }
        let l = (self.level(key, now) + 1.0).min(self.capacity);
        if l >= self.capacity {
            // A full bucket is the same as no entry.
            self.buckets.remove(key);
        } else {
            self.set(key, l, now);
        }
    }

    fn set(&mut self, key: &str, tokens: f64, now: Instant) {
        if self.buckets.len() >= LIMITER_ENTRIES && !self.buckets.contains_key(key) {
            let (cap, per_sec) = (self.capacity, self.per_sec);
            self.buckets.retain(|_, (t, at)| {
                t.to_owned() + now.saturating_duration_since(*at).as_secs_f64() * per_sec < cap
            });
            if self.buckets.len() >= LIMITER_ENTRIES {
                // Still full: forget the least recently used eighth (one O(n) pass per
                // LIMITER_ENTRIES / 8 new keys).
                let mut by_age: Vec<(Instant, String)> = self
                    .buckets
                    .iter()
                    .map(|(k, (_, at))| (*at, k.clone()))
                    .collect();
                let n = LIMITER_ENTRIES / 8;
                by_age.select_nth_unstable_by_key(n, |(at, _)| *at);
                for (_, k) in &by_age[..n] {
                    self.buckets.remove(k);
                }
            }
        }
        self.buckets.insert(key.to_owned(), (tokens, now));
    }
}

/// Rate-limit key of a source: the IPv4 address (IPv4-mapped IPv6 as IPv4), or the /64 of
/// an IPv6 address (one subnet hands its holder 2^64 addresses).
pub(super) fn source_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("src:{v4}"),
            None => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                format!("src:{}/64", std::net::Ipv6Addr::from(net))
            }
        },
        v4 => format!("src:{v4}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_capacity_and_refills() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(3, Duration::from_secs(30));
        for _ in 0..3 {
            assert!(l.allowed("u", t0));
            l.failed("u", t0);
        }
        assert!(!l.allowed("u", t0));
        assert!(l.allowed("other", t0));
        // One token back every 10 s.
        assert!(!l.allowed("u", t0 + Duration::from_secs(9)));
        assert!(l.allowed("u", t0 + Duration::from_secs(10)));
        let off = FailureLimiter::new(0, Duration::from_secs(30));
        assert!(off.allowed("u", t0));
    }

    /// A reload that changes the limits keeps what was counted: two failures of three stay
    /// two failures under a limit of five (three left), and use up a limit of two.
    #[test]
    fn new_limits_keep_the_failures_counted() {
        let now = Instant::now();
        let mut l = FailureLimiter::new(3, Duration::from_secs(3000));
        l.failed("u", now);
        l.failed("u", now);
        l.set_limit(5, Duration::from_secs(5000));
        let left = |l: &mut FailureLimiter| {
            let now = Instant::now();
            (0..10).take_while(|_| l.try_take("u", now)).count()
        };
        assert_eq!(left(&mut l), 3);
        let mut l = FailureLimiter::new(3, Duration::from_secs(3000));
        l.failed("u", now);
        l.failed("u", now);
        l.set_limit(2, Duration::from_secs(2000));
        assert_eq!(left(&mut l), 0);
        assert!(l.allowed("fresh", Instant::now()));
        l.set_limit(0, Duration::from_secs(1));
        assert!(l.allowed("u", Instant::now()));
    }

    #[test]
    fn limiter_memory_is_bounded() {
        // A spray of distinct keys 1 ms apart with the defaults: no bucket refills in time
        // (one token per minute), so dropping full buckets alone frees nothing.
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(5, Duration::from_secs(300));
        let n = LIMITER_ENTRIES + LIMITER_ENTRIES / 2;
        for i in 0..n {
            let at = t0 + Duration::from_millis(i as u64);
            l.failed(&format!("k{i}"), at);
            assert!(l.try_take(&format!("t{i}"), at));
        }
        assert!(l.buckets.len() <= LIMITER_ENTRIES, "{}", l.buckets.len());
        // The newest keys are kept (the least recently used ones went).
        let end = t0 + Duration::from_millis(n as u64);
        assert!(l.buckets.contains_key(&format!("k{}", n - 1)));
        assert!(l.level(&format!("t{}", n - 1), end) < 5.0);
    }

    #[test]
    fn tokens_taken_before_and_given_back() {
        let t0 = Instant::now();
        let mut l = FailureLimiter::new(2, Duration::from_secs(60));
        assert!(l.try_take("u", t0));
        assert!(l.try_take("u", t0));
        assert!(!l.try_take("u", t0), "both tokens are out");
        l.give_back("u", t0);
        assert!(l.try_take("u", t0));
        l.give_back("u", t0);
        l.give_back("u", t0);
        l.give_back("u", t0);
        assert!(l.buckets.is_empty(), "a full bucket is no entry");
    }

    #[test]
    fn ipv6_sources_share_a_key_per_64() {
        let k = |s: &str| source_key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff:1:2:3"));
        assert_eq!(k("2001:db8:1:2::1"), "src:2001:db8:1:2::/64");
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("192.0.2.1"), "src:192.0.2.1");
    }

    #[test]
    fn mapped_sources_share_a_key() {
        assert_eq!(
            source_key("::ffff:192.0.2.1".parse().unwrap()),
            source_key("192.0.2.1".parse().unwrap())
        );
    }
}
