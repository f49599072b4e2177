//! The connection registry: every established session of the fleet under
//! `sessions/<gateway>/<id>`, written under its gateway's lease.
//!
//! A gateway hands [`Registry::sync`] the full list of its sessions whenever one came or went
//! (and at least once per refresh interval); the registry writes what changed since its last
//! write: a new or changed session at once, the counters of a session at most once per
//! interval, a deletion for each session gone. After a new lease it writes everything again,
//! so the registry matches the gateway after an etcd outage, with nothing lost or doubled.
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{FleetError, Keys};
use crate::admin::ConnectionInfo;
use crate::openvpn::fence::AddressFence;

/// One session as the fleet sees it (the value of its `sessions/` key, JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub gateway: String,
    pub id: u32,
    /// The gateway's serial of the session: unlike `id`, never reused while it runs.
    #[serde(default)]
    pub serial: u64,
    /// The certificate's common name.
    pub user: Option<String>,
    /// The directory user, if the session logged in with one.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    pub client_address: Option<String>,
    pub public_address: String,
    pub transport: String,
    /// Unix seconds.
    pub started: u64,
    pub ingress_bytes: u64,
    pub egress_bytes: u64,
    pub ingress_packets: u64,
    pub egress_packets: u64,
    /// Unix seconds of this write: a reader sees how fresh the counters are.
    pub updated: u64,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SessionRecord {
    pub fn from_info(gateway: &str, c: &ConnectionInfo, now: u64) -> SessionRecord {
        SessionRecord {
            gateway: gateway.to_owned(),
            id: c.id,
            serial: 0,
            user: c.user.clone(),
            username: c.username.clone(),
            groups: c.directory_groups.clone(),
            client_address: c.client_address.clone(),
            public_address: c.public_address.clone(),
            transport: c.transport.clone(),
            started: now.saturating_sub(c.since_secs),
            ingress_bytes: c.ingress_bytes,
            egress_bytes: c.egress_bytes,
            ingress_packets: c.ingress_packets,
            egress_packets: c.egress_packets,
            updated: now,
        }
    }

    pub fn to_info(&self, now: u64) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id,
            user: self.user.clone(),
            client_address: self.client_address.clone(),
            public_address: self.public_address.clone(),
            transport: self.transport.clone(),
            established: true,
            since_secs: now.saturating_sub(self.started),
            ingress_bytes: self.ingress_bytes,
            egress_bytes: self.egress_bytes,
            ingress_packets: self.ingress_packets,
            egress_packets: self.egress_packets,
            username: self.username.clone(),
            directory_groups: self.groups.clone(),
            gateway: Some(self.gateway.clone()),
        }
    }

    /// Same session, same identity (everything but the counters and the time of writing;
    /// the start may wobble by a second between two lists).
    fn same_session(&self, o: &SessionRecord) -> bool {
        self.user == o.user
            && self.username == o.username
            && self.groups == o.groups
            && self.client_address == o.client_address
            && self.public_address == o.public_address
            && self.transport == o.transport
            && self.started.abs_diff(o.started) <= 2
    }

    fn same_counters(&self, o: &SessionRecord) -> bool {
        (
            self.ingress_bytes,
            self.egress_bytes,
            self.ingress_packets,
            self.egress_packets,
        ) == (
            o.ingress_bytes,
            o.egress_bytes,
            o.ingress_packets,
            o.egress_packets,
        )
    }

    /// Whether `name` is this session's user (certificate name or directory user).
    pub fn is_user(&self, name: &str) -> bool {
        self.user.as_deref() == Some(name) || self.username.as_deref() == Some(name)
    }
}

/// The sessions the registry may list: all but the fence's strays (sessions on a block this
/// gateway lost while cut off from etcd past its lease; the server is ending them, and the
/// gateway that holds the block now may list the same address). Without this, a gateway back
/// in the fleet would write them again under its new lease for the second until they end.
pub fn without_strays(
    sessions: &[SessionRecord],
    fence: &AddressFence,
    now: Instant,
) -> Vec<SessionRecord> {
    sessions
        .iter()
        .filter(|s| {
            let addr = s.client_address.as_deref().and_then(|a| a.parse().ok());
            !addr.is_some_and(|a| fence.is_stray(a, now))
        })
        .cloned()
        .collect()
}

/// What this gateway has written to the registry.
#[derive(Default)]
pub struct Registry {
    written: HashMap<u32, (SessionRecord, Instant)>,
}

impl Registry {
    /// Everything must be written again (a new lease: the old keys are gone or going).
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// After a reconnect under the same lease: what etcd holds for `gateway` is what was
    /// written (a write in flight when the connection broke may or may not have landed), so
    /// the records of sessions that ended meanwhile are deleted now and the next
    /// [`Registry::sync`] writes every live one again.
    pub async fn resume(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        gateway: &str,
        live: &[SessionRecord],
    ) -> Result<(), FleetError> {
        self.forget();
        let prefix = keys.sessions_of(gateway);
        let got = client
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )
            .await
            .map_err(FleetError::Etcd)?;
        let live: HashSet<String> = live.iter().map(|s| s.id.to_string()).collect();
        let stale: Vec<TxnOp> = got
            .kvs()
            .iter()
            .filter_map(|kv| kv.key_str().ok())
            .filter(|k| k.strip_prefix(&prefix).is_some_and(|id| !live.contains(id)))
            .map(|k| TxnOp::delete(k, None))
            .collect();
        for batch in stale.chunks(BATCH) {
            client
                .txn(Txn::new().and_then(batch.to_vec()))
                .await
                .map_err(FleetError::Etcd)?;
        }
        Ok(())
    }

    /// Brings the registry in line with `sessions` (this gateway's, all of them); counters
    /// are rewritten when they changed and the last write is `refresh` old. The writes go
    /// in transactions of [`BATCH`]: a gateway re-registering thousands of sessions (a new
    /// lease, a refresh of everyone) does it in a few requests and one revision each, so it
    /// is done long before its lease needs the next keep-alive (one write per session in
    /// series took 7 s for 3,300 sessions in the benchmark, longer than a 3 s lease).
    pub async fn sync(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        lease: i64,
        sessions: &[SessionRecord],
        refresh: Duration,
    ) -> Result<(), FleetError> {
        let now = Instant::now();
        let mut ops = Vec::new();
        let mut put = Vec::new();
        for s in sessions {
            let due = match self.written.get(&s.id) {
                None => true,
                Some((w, at)) => {
                    !w.same_session(s)
                        || (!w.same_counters(s) && now.duration_since(*at) >= refresh)
                }
            };
            if due {
                let value = serde_json::to_string(s).expect("plain fields");
                ops.push(TxnOp::put(
                    keys.session(&s.gateway, &s.id.to_string()),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                ));
                put.push(s.clone());
            }
        }
        let live: HashSet<u32> = sessions.iter().map(|s| s.id).collect();
        let gone: Vec<u32> = self
            .written
            .iter()
            .filter(|(id, _)| !live.contains(id))
            .map(|(id, (w, _))| {
                ops.push(TxnOp::delete(
                    keys.session(&w.gateway, &id.to_string()),
                    None,
                ));
                *id
            })
            .collect();
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let batch: Vec<TxnOp> = ops.by_ref().take(BATCH).collect();
            client
                .txn(Txn::new().and_then(batch))
                .await
                .map_err(FleetError::Etcd)?;
        }
        for s in put {
            self.written.insert(s.id, (s, now));
        }
        for id in gone {
            self.written.remove(&id);
        }
        Ok(())
    }
}

/// Writes per registry transaction: etcd's default `--max-txn-ops` is 128.
pub const BATCH: usize = 128;

/// Sessions read per request: `connections list` of a large fleet is paged, not one reply.
const PAGE: i64 = 1000;

/// Every session of the fleet, in key order (gateway, then id as text).
pub async fn list(client: &mut Client, keys: &Keys) -> Result<Vec<SessionRecord>, FleetError> {
    let prefix = keys.sessions();
    // The end of the prefix range: the prefix with its last byte incremented (`/` + 1).
    let end = format!("{}0", prefix.trim_end_matches('/'));
    let mut from = prefix.clone();
    let mut out = Vec::new();
    loop {
        let got = client
            .get(
                from.as_str(),
                Some(
                    GetOptions::new()
                        .with_range(end.as_str())
                        .with_limit(PAGE)
                        .with_sort(SortTarget::Key, SortOrder::Ascend),
                ),
            )
            .await
            .map_err(FleetError::Etcd)?;
        for kv in got.kvs() {
            // A value that is not a record (written by something else) is skipped.
            if let Ok(r) = serde_json::from_slice::<SessionRecord>(kv.value()) {
                out.push(r);
            }
        }
        match (got.more(), got.kvs().last()) {
            (true, Some(last)) => {
                // The next page starts just after the last key read.
                let mut next = last.key().to_vec();
                next.push(0);
                from = String::from_utf8_lossy(&next).into_owned();
            }
            _ => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u32) -> ConnectionInfo {
        ConnectionInfo {
            id,
            user: Some("alice".into()),
            client_address: Some("10.8.0.2".into()),
            public_address: "192.0.2.1:1194".into(),
            transport: "udp".into(),
            established: true,
            since_secs: 10,
            ingress_bytes: 1,
            egress_bytes: 2,
            ingress_packets: 3,
            egress_packets: 4,
            username: Some("alice.d".into()),
            directory_groups: vec!["eng".into()],
            gateway: None,
        }
    }

    #[test]
    fn record_round_trip_names_the_gateway() {
        let r = SessionRecord::from_info("gw-a", &info(7), 1000);
        assert_eq!(r.started, 990);
        let back = r.to_info(1005);
        assert_eq!(back.gateway.as_deref(), Some("gw-a"));
        assert_eq!(back.since_secs, 15);
        assert_eq!(
            ConnectionInfo {
                gateway: None,
                since_secs: 10,
                ..back
            },
            info(7)
        );
        assert!(r.is_user("alice") && r.is_user("alice.d") && !r.is_user("bob"));
    }

    #[test]
    fn strays_are_not_listed() {
        let fence = AddressFence::new();
        let now = Instant::now();
        fence.set(
            vec!["10.8.0.0/26".parse().unwrap()],
            Some(now + Duration::from_secs(3)),
        );
        let at = |addr: &str| SessionRecord {
            client_address: Some(addr.into()),
            ..SessionRecord::from_info("gw-a", &info(7), 1000)
        };
        let all = [at("10.8.0.2"), at("10.8.0.66")];
        assert_eq!(without_strays(&all, &fence, now), vec![at("10.8.0.2")]);
        // Without a valid lease the gateway does not know which blocks it holds: all listed.
        assert_eq!(
            without_strays(&all, &fence, now + Duration::from_secs(4)).len(),
            2
        );
    }

    #[test]
    fn counters_are_not_identity() {
        let a = SessionRecord::from_info("gw-a", &info(7), 1000);
        let mut b = SessionRecord::from_info("gw-a", &info(7), 1001);
        b.ingress_bytes = 99;
        assert!(a.same_session(&b) && !a.same_counters(&b));
        b.client_address = Some("10.8.0.3".into());
        assert!(!a.same_session(&b));
    }
}
