//! Samples of the traffic totals the dashboard and the connections page show as rates and
//! a throughput chart (kept by the console between refreshes).
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::admin::ConnectionInfo;

/// Samples of the traffic totals, for rates and the throughput chart.
#[derive(Default)]
pub struct History {
    /// (when, bytes in, bytes out), oldest first.
    totals: VecDeque<(Instant, u64, u64)>,
    /// Per session: (when, bytes in, bytes out) of the previous sample and the rate since.
    sessions: BTreeMap<u32, (Instant, u64, u64, f64, f64)>,
}

/// Samples kept for the chart: 60 of them, one per refresh (two minutes at 2 s).
const SAMPLES: usize = 60;

impl History {
    /// Takes a sample of `conns` at `now` (samples closer than a second are merged).
    pub fn sample(&mut self, conns: &[ConnectionInfo], now: Instant) {
        let bin: u64 = conns.iter().map(|c| c.ingress_bytes).sum();
        let bout: u64 = conns.iter().map(|c| c.egress_bytes).sum();
        if self
            .totals
            .back()
            .is_none_or(|(t, _, _)| now.duration_since(*t).as_millis() >= 1000)
        {
            self.totals.push_back((now, bin, bout));
            if self.totals.len() > SAMPLES {
                self.totals.pop_front();
            }
        }
        let mut next = BTreeMap::new();
        for c in conns {
            let (i, o) = (c.ingress_bytes, c.egress_bytes);
            let entry = match self.sessions.get(&c.id) {
                Some(&(t, pi, po, ri, ro)) => {
                    let dt = now.duration_since(t).as_secs_f64();
                    if dt < 1.0 {
                        (t, pi, po, ri, ro)
                    } else {
                        let r = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                        (now, i, o, r(i, pi), r(o, po))
                    }
                }
                None => (now, i, o, 0.0, 0.0),
            };
            next.insert(c.id, entry);
        }
        self.sessions = next;
    }

    /// Bytes per second each way between consecutive samples.
    pub fn rates(&self) -> Vec<(f64, f64)> {
        self.totals
            .iter()
            .zip(self.totals.iter().skip(1))
            .map(|(a, b)| {
                let dt = b.0.duration_since(a.0).as_secs_f64().max(0.001);
                (
                    b.1.saturating_sub(a.1) as f64 / dt,
                    b.2.saturating_sub(a.2) as f64 / dt,
                )
            })
            .collect()
    }

    /// Per session: (id, bytes/s in, bytes/s out).
    pub fn session_rates(&self) -> Vec<(u32, f64, f64)> {
        self.sessions
            .iter()
            .map(|(id, s)| (*id, s.3, s.4))
            .collect()
    }
}
