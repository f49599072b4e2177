//! Samples of the traffic totals the dashboard and the connections page show as rates and
//! a throughput chart, and the sessions seen to end (kept by the console between refreshes).
//!
//! A session is named by (gateway, id): ids are per gateway, so in a fleet two gateways'
//! session 3 are two sessions. A standalone agent's rows have no gateway.
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use crate::admin::ConnectionInfo;

/// A session's name across the fleet: its gateway (none standalone) and its id there.
pub type RowKey = (Option<String>, u32);

pub fn key_of(c: &ConnectionInfo) -> RowKey {
    (c.gateway.clone(), c.id)
}

/// A session the console saw in one list and not in the next.
#[derive(Clone, Debug)]
pub struct Ended {
    /// As last listed (its counters then).
    pub last: ConnectionInfo,
    /// When the list without it was taken (within one refresh of the end).
    pub seen_gone: SystemTime,
    at: Instant,
}

/// How long ended sessions stay on the connections page (as AWS's console shows them).
pub const ENDED_FOR: Duration = Duration::from_secs(3600);
/// At most this many ended sessions are kept (the newest).
const ENDED_MAX: usize = 2000;

/// Samples of the traffic totals, for rates and the throughput chart.
#[derive(Default)]
pub struct History {
    /// (when, bytes in, bytes out), oldest first.
    totals: VecDeque<(Instant, u64, u64)>,
    /// Per session: the previous listing, when it was sampled and the rate since.
    sessions: BTreeMap<RowKey, (Instant, ConnectionInfo, f64, f64)>,
    /// Sessions seen to end, newest last.
    ended: VecDeque<Ended>,
}

/// Samples kept for the chart: 60 of them, one per refresh (two minutes at 2 s).
const SAMPLES: usize = 60;

/// Whether `now` lists the same session as `before` under one key: a gateway hands a freed
/// id to a later session, which then started later and may be someone else's.
fn same_session(before: &ConnectionInfo, now: &ConnectionInfo, dt: Duration) -> bool {
    before.user == now.user
        && before.public_address == now.public_address
        && now.since_secs + 2 >= before.since_secs + dt.as_secs()
}

impl History {
    /// Takes a sample of `conns` at `now` (samples closer than a second are merged).
    /// `complete`: the list has every gateway's sessions; when it has only this gateway's
    /// (etcd out of reach), the others' missing rows are not taken for ended sessions.
    pub fn sample(&mut self, conns: &[ConnectionInfo], complete: bool, now: Instant) {
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
        let listed: Vec<&Option<String>> = conns.iter().map(|c| &c.gateway).collect();
        let mut next = BTreeMap::new();
        for c in conns {
            let key = key_of(c);
            let (i, o) = (c.ingress_bytes, c.egress_bytes);
            let entry = match self.sessions.remove(&key) {
                Some((t, prev, ri, ro))
                    if same_session(&prev, c, now.saturating_duration_since(t)) =>
                {
                    let dt = now.duration_since(t).as_secs_f64();
                    if dt < 1.0 {
                        (t, prev, ri, ro)
                    } else {
                        let r = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
                        (
                            now,
                            c.clone(),
                            r(i, prev.ingress_bytes),
                            r(o, prev.egress_bytes),
                        )
                    }
                }
                Some((_, prev, _, _)) => {
                    self.end(prev, now);
                    (now, c.clone(), 0.0, 0.0)
                }
                None => (now, c.clone(), 0.0, 0.0),
            };
            next.insert(key, entry);
        }
        for (key, (t, prev, ri, ro)) in std::mem::take(&mut self.sessions) {
            // Unknown rather than ended: a gateway whose rows the list could not read.
            if !complete && key.0.is_some() && !listed.contains(&&key.0) {
                next.insert(key, (t, prev, ri, ro));
            } else {
                self.end(prev, now);
            }
        }
        self.sessions = next;
        while self
            .ended
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > ENDED_FOR)
        {
            self.ended.pop_front();
        }
    }

    fn end(&mut self, last: ConnectionInfo, now: Instant) {
        if !last.established {
            return; // an attempt that never became a session is in the connection log
        }
        self.ended.push_back(Ended {
            last,
            seen_gone: SystemTime::now(),
            at: now,
        });
        if self.ended.len() > ENDED_MAX {
            self.ended.pop_front();
        }
    }

    /// The sessions seen to end within the last hour, newest first.
    pub fn ended(&self) -> Vec<Ended> {
        self.ended.iter().rev().cloned().collect()
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

    /// Per session: bytes/s in and out.
    pub fn session_rates(&self) -> BTreeMap<RowKey, (f64, f64)> {
        self.sessions
            .iter()
            .map(|(k, s)| (k.clone(), (s.2, s.3)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(gw: Option<&str>, id: u32, user: &str, since: u64, bytes: u64) -> ConnectionInfo {
        ConnectionInfo {
            id,
            user: Some(user.into()),
            client_address: Some("10.100.0.5".into()),
            public_address: format!("192.0.2.11:{}", 40000 + id),
            transport: "udp".into(),
            established: true,
            since_secs: since,
            ingress_bytes: bytes,
            egress_bytes: bytes,
            ingress_packets: 1,
            egress_packets: 1,
            username: None,
            directory_groups: vec![],
            gateway: gw.map(str::to_owned),
        }
    }

    #[test]
    fn one_id_on_two_gateways_is_two_sessions_with_their_own_rates() {
        let mut h = History::default();
        let t0 = Instant::now();
        let a = |b| row(Some("gw-a"), 1, "alice", 10, b);
        let b = |b| row(Some("gw-b"), 1, "bob", 10, b);
        h.sample(&[a(0), b(0)], true, t0);
        let t1 = t0 + Duration::from_secs(2);
        h.sample(
            &[
                row(Some("gw-a"), 1, "alice", 12, 2000),
                row(Some("gw-b"), 1, "bob", 12, 0),
            ],
            true,
            t1,
        );
        let r = h.session_rates();
        assert_eq!(r[&(Some("gw-a".into()), 1)], (1000.0, 1000.0));
        assert_eq!(r[&(Some("gw-b".into()), 1)], (0.0, 0.0));
        assert!(h.ended().is_empty());
        // gw-b's session 1 ends: only it is listed as ended, with its gateway.
        h.sample(
            &[row(Some("gw-a"), 1, "alice", 14, 2000)],
            true,
            t1 + Duration::from_secs(2),
        );
        let ended = h.ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(key_of(&ended[0].last), (Some("gw-b".into()), 1));
    }

    #[test]
    fn a_partial_list_does_not_end_the_other_gateways_sessions() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.sample(
            &[
                row(Some("gw-a"), 1, "alice", 10, 0),
                row(Some("gw-b"), 2, "bob", 10, 0),
            ],
            true,
            t0,
        );
        // etcd out of reach: only gw-a's rows; bob is unknown, not ended.
        h.sample(
            &[row(Some("gw-a"), 1, "alice", 12, 0)],
            false,
            t0 + Duration::from_secs(2),
        );
        assert!(h.ended().is_empty());
        // Back: bob is still there, with no ending recorded.
        h.sample(
            &[
                row(Some("gw-a"), 1, "alice", 14, 0),
                row(Some("gw-b"), 2, "bob", 14, 0),
            ],
            true,
            t0 + Duration::from_secs(4),
        );
        assert!(h.ended().is_empty());
    }

    #[test]
    fn a_reused_id_ends_the_previous_session_and_old_endings_expire() {
        let mut h = History::default();
        let t0 = Instant::now();
        h.sample(&[row(None, 4, "alice", 300, 0)], true, t0);
        // Session 4 is now someone else's, connected 5 s ago.
        let t1 = t0 + Duration::from_secs(10);
        h.sample(&[row(None, 4, "bob", 5, 0)], true, t1);
        let ended = h.ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].last.user.as_deref(), Some("alice"));
        let later = ENDED_FOR + Duration::from_secs(1);
        h.sample(
            &[row(None, 4, "bob", 5 + later.as_secs(), 0)],
            true,
            t1 + later,
        );
        assert!(h.ended().is_empty(), "an hour later it is gone");
    }
}
