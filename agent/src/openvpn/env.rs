//! What the protocol core takes from the world besides bytes and `now`: randomness (session
//! ids, cookie secrets, key-method-2 randoms) and the wall clock (tls-crypt timestamps,
//! certificate and CRL validity). Both are injected, so tests choose them (TLS's own randoms
//! stay rustls's).
use std::sync::Arc;

use rustls::time_provider::TimeProvider;

/// A source of secure random bytes (ring's own trait is sealed, so tests could not replace it).
pub trait Random: Send + Sync {
    fn fill(&self, out: &mut [u8]) -> Result<(), ring::error::Unspecified>;
}

impl Random for ring::rand::SystemRandom {
    fn fill(&self, out: &mut [u8]) -> Result<(), ring::error::Unspecified> {
        ring::rand::SecureRandom::fill(self, out)
    }
}

pub type Rng = Arc<dyn Random>;
/// The wall clock (rustls's trait, so the TLS verifier reads the same one).
pub type WallClock = Arc<dyn TimeProvider>;

/// Randomness and wall clock, handed to the server at construction.
#[derive(Clone)]
pub struct Env {
    pub rng: Rng,
    pub clock: WallClock,
}

impl Env {
    /// The operating system's randomness and clock: what the binary passes in.
    pub fn system() -> Env {
        Env {
            rng: Arc::new(ring::rand::SystemRandom::new()),
            clock: Arc::new(rustls::time_provider::DefaultTimeProvider),
        }
    }

    /// Seconds since 1970 by the injected clock (0 if it cannot tell).
    pub fn unix_secs(&self) -> u64 {
        self.clock.current_time().map_or(0, |t| t.as_secs())
    }

    /// Random bytes; ring's sources only fail without any OS entropy at all.
    pub fn fill(&self, out: &mut [u8]) -> Result<(), ring::error::Unspecified> {
        self.rng.fill(out)
    }
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").field("clock", &self.clock).finish()
    }
}

/// Replayable randomness and a fixed wall clock, for tests and fuzzing.
#[cfg(any(test, feature = "testing"))]
mod replay {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::UnixTime;
    use rustls::time_provider::TimeProvider;

    use super::{Env, Random};

    /// SHA-256 of (seed, counter) blocks: the same seed gives the same bytes.
    pub struct SeededRandom {
        seed: u64,
        counter: AtomicU64,
    }

    impl SeededRandom {
        pub fn new(seed: u64) -> SeededRandom {
            SeededRandom {
                seed,
                counter: AtomicU64::new(0),
            }
        }
    }

    impl Random for SeededRandom {
        fn fill(&self, out: &mut [u8]) -> Result<(), ring::error::Unspecified> {
            for chunk in out.chunks_mut(32) {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let mut input = [0u8; 16];
                input[..8].copy_from_slice(&self.seed.to_be_bytes());
                input[8..].copy_from_slice(&n.to_be_bytes());
                let d = ring::digest::digest(&ring::digest::SHA256, &input);
                chunk.copy_from_slice(&d.as_ref()[..chunk.len()]);
            }
            Ok(())
        }
    }

    /// A wall clock that stands still.
    #[derive(Debug)]
    pub struct FixedClock(pub UnixTime);

    impl TimeProvider for FixedClock {
        fn current_time(&self) -> Option<UnixTime> {
            Some(self.0)
        }
    }

    impl Env {
        /// Seeded randomness and a wall clock fixed at `unix_secs`.
        pub fn replay(seed: u64, unix_secs: u64) -> Env {
            Env {
                rng: Arc::new(SeededRandom::new(seed)),
                clock: Arc::new(FixedClock(UnixTime::since_unix_epoch(Duration::from_secs(
                    unix_secs,
                )))),
            }
        }
    }
}
#[cfg(any(test, feature = "testing"))]
pub use replay::{FixedClock, SeededRandom};
