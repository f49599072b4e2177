//! Log search: filters, newest first, limits, the bounded tail, bad times.
use std::io::Write;

use serde_json::json;

use super::*;
use crate::pki::tests::TempDir;

fn conn(user: &str, time: &str, status: &str, code: &str) -> Value {
    json!({
        "connection-log-type": "connection-attempt",
        "connection-attempt-status": status,
        "connection-attempt-failure-reason": code,
        "connection-last-update-time": time,
        "common-name": "NA",
        "username": user,
    })
}

fn write(path: &Path, records: &[Value]) {
    let mut f = std::fs::File::create(path).unwrap();
    for r in records {
        writeln!(f, "{r}").unwrap();
    }
}

#[test]
fn connection_log_by_user_time_and_code() {
    let dir = TempDir::new("logsearch-conn");
    let p = dir.0.join("conn.log");
    write(
        &p,
        &[
            conn("alice", "2026-12-06 10:00:00", "successful", "NA"),
            conn(
                "bob",
                "2026-12-07 09:00:00",
                "failed",
                "invalid_credentials",
            ),
            conn("Alice", "2026-12-07 10:00:00", "failed", "rate_limited"),
            conn("carol", "2026-12-08 00:00:01", "successful", "NA"),
        ],
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(b"not json\n[1]\n")
        .unwrap();
    let q = |f: &dyn Fn(&mut LogQuery)| {
        let mut q = LogQuery::default();
        f(&mut q);
        search(&p, LogKind::Connections, &q)
            .unwrap()
            .records
            .iter()
            .map(|r| r["username"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(q(&|_| {}), ["carol", "Alice", "bob", "alice"]);
    assert_eq!(q(&|q| q.user = "ALI".into()), ["Alice", "alice"]);
    assert_eq!(q(&|q| q.code = "invalid_credentials".into()), ["bob"]);
    assert_eq!(
        q(&|q| q.since = "2026-12-07".into()),
        ["carol", "Alice", "bob"]
    );
    assert_eq!(
        q(&|q| q.until = "2026-12-07".into()),
        ["Alice", "bob", "alice"]
    );
    assert_eq!(
        q(&|q| {
            q.since = "2026-12-07T09:30".into();
            q.until = "2026-12-07 23:59".into();
        }),
        ["Alice"]
    );
    assert_eq!(q(&|q| q.limit = 1), ["carol"]);
    let e = search(
        &p,
        LogKind::Connections,
        &LogQuery {
            since: "yesterday".into(),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.contains("YYYY-MM-DD"), "{e}");
}

#[test]
fn flow_log_by_user_destination_and_rule() {
    let dir = TempDir::new("logsearch-flow");
    let p = dir.0.join("flow.log");
    let flow = |user: &str, dst: &str, port: u16, rule: &str, reason: &str| {
        json!({"event": "flow-denied", "user": user, "dst": dst, "dst-port": port,
               "protocol": "tcp", "time": 1_796_000_000u64, "reason": reason,
               "deciding-rule": rule})
    };
    write(
        &p,
        &[
            flow(
                "alice",
                "10.0.0.5",
                22,
                "no authorization rule for 10.0.0.0/24",
                "no_authz_rule",
            ),
            flow(
                "bob",
                "10.0.0.5",
                443,
                "security group web: no rule for 443/tcp",
                "security_group",
            ),
            flow("bob", "10.9.0.1", 80, "no route", "no_route"),
        ],
    );
    let q = |f: &dyn Fn(&mut LogQuery)| {
        let mut q = LogQuery::default();
        f(&mut q);
        search(&p, LogKind::Flows, &q).unwrap().records.len()
    };
    assert_eq!(q(&|_| {}), 3);
    assert_eq!(q(&|q| q.user = "bob".into()), 2);
    assert_eq!(q(&|q| q.destination = "10.0.0.5".into()), 2);
    assert_eq!(q(&|q| q.destination = "10.0.0.5:443".into()), 1);
    assert_eq!(q(&|q| q.rule = "security group".into()), 1);
    assert_eq!(q(&|q| q.rule = "no_route".into()), 1);
    assert_eq!(q(&|q| q.since = "2027-01-01".into()), 0);
}

#[test]
fn only_the_tail_is_read_and_a_missing_log_is_empty() {
    let dir = TempDir::new("logsearch-tail");
    let p = dir.0.join("big.log");
    let line = format!("{}\n", conn("x", "2026-12-07 10:00:00", "successful", "NA"));
    std::fs::write(&p, line.repeat(100)).unwrap();
    let (lines, truncated) = tail(&p, line.len() as u64 * 10 + 5).unwrap();
    assert!(truncated);
    assert_eq!(lines.len(), 10, "the cut line is dropped");
    assert!(lines
        .iter()
        .all(|l| serde_json::from_str::<Value>(l).is_ok()));
    let r = search(
        &dir.0.join("none.log"),
        LogKind::Flows,
        &LogQuery::default(),
    )
    .unwrap();
    assert!(r.records.is_empty() && !r.truncated);
    let e = api(LogKind::Flows, None, &LogQuery::default()).unwrap_err();
    assert!(e.error.contains("[logging] flow_log"), "{}", e.error);
}
