//! The flow audit log: one JSON object per denied flow, from the data path's rate-limited
//! `deny_events` ring buffer, with the user, the 5-tuple, the drop reason and — for policy
//! denials — the deciding authorization rule or missing route, as `policy explain` names it.
use std::io::Write;
use std::path::Path;
use std::time::SystemTime;

use portcullis_common::{DenyEvent, DropReason, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use serde_json::json;

use crate::explain::{explain, Target};
use crate::policy::PolicyInput;

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

    /// One record. `user` resolves a session slot to its user name; `policy` explains policy
    /// denials.
    pub fn record(&mut self, ev: &DenyEvent, user: Option<&str>, policy: &PolicyInput) {
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
                let t = Target {
                    dst: f.dst_v4(),
                    proto: f.proto,
                    port: if f.proto == PROTO_ICMP { 0 } else { f.dport },
                };
                if let Ok(e) = explain(policy, u, t) {
                    rule = json!(e.steps.last().cloned().unwrap_or_default());
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let v = json!({
            "time": now,
            "user": user,
            "src": f.src_v4().to_string(),
            "dst": f.dst_v4().to_string(),
            "protocol": proto_name(f.proto),
            "src-port": f.sport,
            "dst-port": f.dport,
            "reason": reason.map_or("unknown", |r| r.name()),
            "deciding-rule": rule,
        });
        let mut line = v.to_string();
        line.push('\n');
        if let Err(e) = self.out.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "writing the flow log");
        }
        let _ = self.out.flush();
    }
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
        let (mut src, mut dst) = ([0u8; 16], [0u8; 16]);
        src[..4].copy_from_slice(&[10, 100, 0, 3]);
        dst[..4].copy_from_slice(&[10, 0, 0, 10]);
        let flow = FlowKey {
            src,
            dst,
            sport: 40000,
            dport: 80,
            proto: PROTO_TCP,
            family: portcullis_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let ev = DenyEvent {
            timestamp_ns: 1,
            flow,
            slot: 1,
            reason: DropReason::NotAuthorized as u8,
            _pad: [0; 3],
        };
        log.record(&ev, Some("bob"), &p);
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["user"], "bob");
        assert_eq!(v["dst"], "10.0.0.10");
        assert_eq!(v["dst-port"], 80);
        assert_eq!(v["reason"], "not_authorized");
        assert!(v["deciding-rule"].as_str().unwrap().contains("/32"), "{v}");
    }
}
