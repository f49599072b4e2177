//! The connection log and denied-flow pages over real HTTPS: search by user, time and code
//! (by destination and rule), bounded answers, every field escaped, no page without a session.
use std::time::Duration;

use serde_json::json;

use super::config::Role;
use super::tests::{admin, lab, Lab};

const XSS: &str = "<img src=x onerror=alert(1)>";

fn logs(lab: &Lab) {
    let conn = |user: &str, time: &str, status: &str, code: &str| {
        json!({"connection-log-type": "connection-attempt", "connection-attempt-status": status,
               "connection-attempt-failure-reason": code, "connection-last-update-time": time,
               "connection-attempt-failure-detail": format!("detail of {user}"),
               "username": user, "common-name": "NA", "client-ip": "192.0.2.7",
               "transport-protocol": "udp", "ingress-bytes": "0", "egress-bytes": "0"})
        .to_string()
    };
    let lines = [
        conn("alice", "2026-12-06 10:00:00", "successful", "NA"),
        conn(
            "bob",
            "2026-12-07 09:00:00",
            "failed",
            "invalid_credentials",
        ),
        conn(XSS, "2026-12-07 10:00:00", "failed", "hook_denied"),
    ];
    std::fs::write(lab.dir.join("connections.log"), lines.join("\n") + "\n").unwrap();
    let flow = |user: &str, dst: &str, port: u16, rule: &str| {
        json!({"event": "flow-denied", "user": user, "src": "10.100.0.2", "src-port": 40000,
               "dst": dst, "dst-port": port, "protocol": "tcp", "time": 1_796_000_000u64,
               "reason": "no_authz_rule", "deciding-rule": rule})
        .to_string()
    };
    let lines = [
        flow(
            "alice",
            "10.0.0.5",
            22,
            "authorization: no rule for 10.0.0.0/24",
        ),
        flow("bob", "10.0.0.9", 443, XSS),
    ];
    std::fs::write(lab.dir.join("flows.log"), lines.join("\n") + "\n").unwrap();
}

fn rows(body: &str) -> usize {
    body.matches("<tr>").count() - 1
}

#[test]
fn the_connection_log_is_searchable_and_escaped() {
    let lab = lab(
        "logs-conn",
        vec![admin("rob", "pw", Role::ReadOnly)],
        Duration::from_secs(60),
        5,
    );
    logs(&lab);
    assert_eq!(lab.get("/logs/connections", None).status, 303);
    let rob = lab.login("rob", "pw");
    let all = lab.get("/logs/connections", Some(&rob));
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(rows(&all.body), 3, "{}", all.body);
    assert!(!all.body.contains(XSS), "{}", all.body);
    assert!(
        all.body.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{}",
        all.body
    );
    // Newest first.
    assert!(all.body.find("hook_denied").unwrap() < all.body.find(">alice<").unwrap());
    let g = lab.get("/logs/connections?user=bob", Some(&rob)).body;
    assert_eq!(rows(&g), 1, "{g}");
    assert!(
        g.contains("invalid_credentials") && g.contains("detail of bob"),
        "{g}"
    );
    let g = lab
        .get("/logs/connections?code=hook_denied", Some(&rob))
        .body;
    assert_eq!(rows(&g), 1, "{g}");
    let g = lab
        .get(
            "/logs/connections?since=2026-12-07&until=2026-12-07+09%3A30&limit=",
            Some(&rob),
        )
        .body;
    assert_eq!(rows(&g), 1, "{g}");
    assert!(g.contains(">bob<"), "{g}");
    let g = lab.get("/logs/connections?limit=1", Some(&rob)).body;
    assert_eq!(rows(&g), 1, "{g}");
    let g = lab.get("/logs/connections?since=%3Cb%3Ebad", Some(&rob));
    assert_eq!(g.status, 400, "{}", g.body);
    assert!(
        g.body.contains("YYYY-MM-DD") && !g.body.contains("<b>bad"),
        "{}",
        g.body
    );
}

#[test]
fn denied_flows_are_searchable_and_escaped() {
    let lab = lab(
        "logs-flow",
        vec![admin("rob", "pw", Role::ReadOnly)],
        Duration::from_secs(60),
        5,
    );
    logs(&lab);
    let rob = lab.login("rob", "pw");
    let all = lab.get("/logs/flows", Some(&rob));
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(rows(&all.body), 2, "{}", all.body);
    assert!(!all.body.contains(XSS), "{}", all.body);
    let g = lab.get("/logs/flows?user=alice", Some(&rob)).body;
    assert_eq!(rows(&g), 1, "{g}");
    assert!(g.contains("10.0.0.5:22/tcp"), "{g}");
    let g = lab
        .get("/logs/flows?destination=10.0.0.9%3A443", Some(&rob))
        .body;
    assert_eq!(rows(&g), 1, "{g}");
    let g = lab
        .get("/logs/flows?rule=no+rule+for+10.0.0.0", Some(&rob))
        .body;
    assert_eq!(rows(&g), 1, "{g}");
    assert!(g.contains(">alice<"), "{g}");
    let g = lab
        .get("/logs/flows?rule=nothing-like-this", Some(&rob))
        .body;
    assert!(g.contains("No record matches."), "{g}");
}

/// The dashboard charts attempts of the last hour by outcome and failure code, from the
/// connection log; older records and escaped codes included as text only.
#[test]
fn the_dashboard_charts_attempts_and_failures_by_reason() {
    let lab = lab(
        "attempts",
        vec![admin("ann", "pw-attempts-1", Role::ReadOnly)],
        Duration::from_secs(600),
        5,
    );
    let now = std::time::SystemTime::now();
    let at = |ago: u64| crate::connlog::rfc3339(now - Duration::from_secs(ago));
    let rec = |ago: u64, status: &str, code: &str| {
        json!({"connection-log-type": "connection-attempt", "connection-attempt-status": status,
               "connection-attempt-failure-reason": code, "connection-last-update-time": at(ago)})
        .to_string()
    };
    let lines = [
        rec(30, "successful", "NA"),
        rec(60, "failed", "invalid_credentials"),
        rec(90, "failed", XSS),
        rec(7200, "failed", "rate_limited"),
    ];
    std::fs::write(lab.dir.join("connections.log"), lines.join("\n") + "\n").unwrap();
    let cookie = lab.login("ann", "pw-attempts-1");
    let page = lab.get("/", Some(&cookie)).body;
    let chart = &page[page.find(r#"id="attempts""#).expect("the attempts chart")..];
    let chart = &chart[..chart.find("</svg>").unwrap()];
    assert!(chart.contains(">successful<"), "{chart}");
    assert!(chart.contains(">invalid_credentials<"), "{chart}");
    assert!(
        !chart.contains("rate_limited"),
        "older than the hour: {chart}"
    );
    assert!(!chart.contains(XSS) && chart.contains("&lt;img"), "{chart}");
    let live = lab.get("/live/dashboard", Some(&cookie)).body;
    assert!(live.contains(r#"id="attempts""#), "the chart refreshes too");
}
