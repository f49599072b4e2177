//! The flow audit log: one JSON object per denied flow, from the data path's rate-limited
//! `deny_events` ring buffer, with the user, the 5-tuple, the drop reason and — for policy
//! denials — the deciding authorization rule or missing route, as `policy explain` names it.
//! Optionally (`[logging] allowed_flows`) also a record when an allowed flow appears in the
//! conntrack map and one with its counters when it is gone ([`FlowTracker`]).
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use portcullis_common::{DenyEvent, DropReason, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use serde_json::json;

use crate::datapath::maps::Flow;

use crate::explain::{explain_with_groups, Destination};
use crate::policy::PolicyInput;

/// Who a session is, for the log: its user name and every group it has (local and
/// directory), which is what the deciding rule is worked out with.
#[derive(Clone, Debug, Default)]
pub struct FlowUser {
    pub name: String,
    pub groups: Vec<String>,
}

pub struct FlowLog {
    out: Box<dyn Write + Send>,
}

fn proto_name(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        PROTO_ICMP => "icmp",
        _ => "other",
    }
}

impl FlowLog {
    pub fn open(path: &Path) -> std::io::Result<FlowLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(FlowLog { out: Box::new(f) })
    }

    pub fn to_writer(out: Box<dyn Write + Send>) -> FlowLog {
        FlowLog { out }
    }

    /// One record. `user` is the session of the event's slot; `policy` explains policy
    /// denials.
    pub fn record(&mut self, ev: &DenyEvent, user: Option<&FlowUser>, policy: &PolicyInput) {
        let reason = DropReason::from_u8(ev.reason);
        let f = &ev.flow;
        let mut rule = serde_json::Value::Null;
        if let (Some(u), Some(r)) = (user, reason) {
            let policy_reason = matches!(
                r,
                DropReason::NotAuthorized
                    | DropReason::NoAuthzRule
                    | DropReason::NoRoute
                    | DropReason::SecurityGroup
            );
            if policy_reason {
                let t = Destination {
                    dst: f.dst_v4(),
                    proto: f.proto,
                    port: if f.proto == PROTO_ICMP { 0 } else { f.dport },
                };
                if let Ok(e) = explain_with_groups(policy, &u.name, u.groups.clone(), t) {
                    rule = json!(e.steps.last().cloned().unwrap_or_default());
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut v = flow_json("flow-denied", f, user.map(|u| u.name.as_str()));
        v["time"] = json!(now);
        v["reason"] = json!(reason.map_or("unknown", |r| r.name()));
        v["deciding-rule"] = rule;
        self.write(&v);
    }

    fn write(&mut self, v: &serde_json::Value) {
        let mut line = v.to_string();
        line.push('\n');
        if let Err(e) = self.out.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "writing the flow log");
        }
        let _ = self.out.flush();
    }
}

/// Allowed flows, from successive scans of the conntrack map: a `flow-start` record (with the
/// rule that allowed it) for each new entry, a `flow-end` record (with its last counters) for
/// each entry gone since the previous scan. Scans are periodic, so a flow that starts and
/// expires between two scans is not seen, and `flow-end` carries the counters of the last scan.
#[derive(Default)]
pub struct FlowTracker {
    seen: HashMap<FlowKey, (Flow, Option<String>)>,
}

impl FlowTracker {
    /// One scan: `flows` is the conntrack map now, `now_ns` its clock (CLOCK_MONOTONIC),
    /// `user` resolves a session slot.
    pub fn scan(
        &mut self,
        flows: &[(FlowKey, Flow)],
        now_ns: u64,
        user: &dyn Fn(u32) -> Option<FlowUser>,
        policy: &PolicyInput,
        log: &mut FlowLog,
    ) {
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let at = |ns: u64| wall - now_ns.saturating_sub(ns) as f64 / 1e9;
        let mut next = HashMap::with_capacity(flows.len());
        for (k, e) in flows {
            let known = self
                .seen
                .remove(k)
                .filter(|(old, _)| old.created_ns == e.created_ns);
            let u = match known {
                Some((_, u)) => u,
                None => {
                    let fu = user(e.slot);
                    let rule = fu.as_ref().and_then(|u| {
                        let t = Destination {
                            dst: k.dst_v4(),
                            proto: k.proto,
                            port: if k.proto == PROTO_ICMP { 0 } else { k.dport },
                        };
                        explain_with_groups(policy, &u.name, u.groups.clone(), t)
                            .ok()?
                            .steps
                            .first()
                            .cloned()
                    });
                    let u = fu.map(|u| u.name);
                    let mut v = allowed_json("flow-start", k, e, u.as_deref());
                    v["time"] = json!(at(e.created_ns) as u64);
                    v["deciding-rule"] = json!(rule);
                    log.write(&v);
                    u
                }
            };
            next.insert(*k, (*e, u));
        }
        // Whatever is left was not in this scan: ended (expired, closed or cut).
        for (k, (e, u)) in self.seen.drain() {
            let mut v = allowed_json("flow-end", &k, &e, u.as_deref());
            v["time"] = json!(wall as u64);
            v["duration-s"] = json!((e.last_seen_ns.saturating_sub(e.created_ns)) / 1_000_000_000);
            v["packets-out"] = json!(e.packets_out);
            v["bytes-out"] = json!(e.bytes_out);
            v["packets-in"] = json!(e.packets_in);
            v["bytes-in"] = json!(e.bytes_in);
            log.write(&v);
        }
        self.seen = next;
    }
}

/// The fields every record has: event, user and 5-tuple.
fn flow_json(event: &str, k: &FlowKey, user: Option<&str>) -> serde_json::Value {
    json!({
        "event": event,
        "user": user,
        "src": k.src_v4().to_string(),
        "dst": k.dst_v4().to_string(),
        "protocol": proto_name(k.proto),
        "src-port": k.sport,
        "dst-port": k.dport,
    })
}

/// An allowed flow's record: [`flow_json`] and its translated source.
fn allowed_json(event: &str, k: &FlowKey, e: &Flow, user: Option<&str>) -> serde_json::Value {
    let mut v = flow_json(event, k, user);
    let a = e.nat_addr;
    v["snat-address"] = json!(std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string());
    v["snat-port"] = json!(e.nat_port);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connlog::tests::Shared;
    use portcullis_common::FlowKey;
    use std::sync::{Arc, Mutex};

    #[test]
    fn denial_names_user_tuple_reason_and_rule() {
        let p: PolicyInput = toml::from_str(include_str!("demo/policy.toml")).unwrap();
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut log = FlowLog::to_writer(Box::new(Shared(buf.clone())));
        let flow = FlowKey::v4(PROTO_TCP, [10, 100, 0, 3], 40000, [10, 0, 0, 10], 80);
        let ev = DenyEvent {
            timestamp_ns: 1,
            flow,
            slot: 1,
            reason: DropReason::NotAuthorized as u8,
            _pad: [0; 3],
        };
        let bob = FlowUser {
            name: "bob".into(),
            groups: p.local_groups_of("bob"),
        };
        log.record(&ev, Some(&bob), &p);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["user"], "bob");
        assert_eq!(v["dst"], "10.0.0.10");
        assert_eq!(v["dst-port"], 80);
        assert_eq!(v["reason"], "not_authorized");
        assert!(v["deciding-rule"].as_str().unwrap().contains("/32"), "{v}");
        assert_eq!(v["event"], "flow-denied");
    }

    #[test]
    fn allowed_flows_start_and_end() {
        let p: PolicyInput = toml::from_str(include_str!("demo/policy.toml")).unwrap();
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut log = FlowLog::to_writer(Box::new(Shared(buf.clone())));
        let k = FlowKey::v4(PROTO_TCP, [10, 100, 0, 3], 40000, [10, 0, 0, 10], 80);
        let e = Flow {
            created_ns: 1_000_000_000,
            last_seen_ns: 4_000_000_000,
            packets_out: 5,
            bytes_out: 500,
            slot: 7,
            nat_addr: [10, 0, 0, 1],
            nat_port: 40000,
            ..Flow::default()
        };
        // A directory user: no local groups, "engineering" from the directory. The rule that
        // allowed the flow is worked out with the groups the session has.
        let user = |slot: u32| {
            (slot == 7).then(|| FlowUser {
                name: "dave".into(),
                groups: vec!["engineering".into()],
            })
        };
        let mut t = FlowTracker::default();
        t.scan(&[(k, e)], 5_000_000_000, &user, &p, &mut log);
        // Seen again: nothing new.
        t.scan(&[(k, e)], 6_000_000_000, &user, &p, &mut log);
        // Gone: its end, with the last counters.
        t.scan(&[], 7_000_000_000, &user, &p, &mut log);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let v: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v.len(), 2, "{text}");
        assert_eq!(v[0]["event"], "flow-start");
        assert_eq!(v[0]["user"], "dave");
        assert_eq!(v[0]["snat-address"], "10.0.0.1");
        assert!(
            v[0]["deciding-rule"]
                .as_str()
                .unwrap()
                .starts_with("authorization"),
            "{}",
            v[0]
        );
        assert_eq!(v[1]["event"], "flow-end");
        assert_eq!(v[1]["user"], "dave");
        assert_eq!(v[1]["bytes-out"], 500);
        assert_eq!(v[1]["duration-s"], 3);
    }
}
