//! The console in a fleet: the connections table names each session's gateway (escaped),
//! identifies a row by (gateway, id) in its terminate form and confirm question, says when
//! only this gateway's sessions are listed, and the dashboard's fleet table shows each
//! gateway's revision; a terminate posted with a gateway reaches the admin API with it and
//! is audited naming it.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::config::Role;
use super::query::ConnQuery;
use super::sessions::Session;
use super::tests::{admin, csrf_of, lab};
use super::views;
use crate::admin::{ConnectionInfo, ConnectionsReply, FleetMember, FleetPeer, FleetStatus};

const XSS_GATEWAY: &str = "<img src=x onerror=alert(1)>";

fn row(gateway: Option<&str>, id: u32, user: &str) -> ConnectionInfo {
    ConnectionInfo {
        id,
        user: Some(user.into()),
        client_address: Some("10.100.0.70".into()),
        public_address: "192.0.2.11:40000".into(),
        transport: "udp".into(),
        established: true,
        since_secs: 30,
        ingress_bytes: 10,
        egress_bytes: 20,
        ingress_packets: 1,
        egress_packets: 1,
        username: None,
        directory_groups: vec![],
        gateway: gateway.map(str::to_owned),
    }
}

fn operator() -> Session {
    Session {
        admin: "ann".into(),
        role: Role::Operator,
        csrf: "tok".into(),
        expires: Instant::now() + Duration::from_secs(60),
    }
}

fn live(reply: &ConnectionsReply, q: &ConnQuery) -> String {
    let rows = q.apply(reply.connections.clone());
    views::connections_live(&operator(), reply, &rows, &BTreeMap::new(), &[], q).into_string()
}

#[test]
fn rows_name_their_gateway_escaped_and_carry_it_in_the_terminate_form() {
    let reply = ConnectionsReply {
        connections: vec![
            row(Some("gw-a"), 3, "alice"),
            row(Some(XSS_GATEWAY), 3, "bob"),
        ],
        fleet_error: None,
    };
    let html = live(&reply, &ConnQuery::default());
    assert!(html.contains(r#"<td class="gateway">gw-a</td>"#), "{html}");
    assert!(
        html.contains(r#"<input type="hidden" name="gateway" value="gw-a">"#),
        "{html}"
    );
    assert!(
        html.contains(r#"data-confirm="Terminate session 3 of alice on gateway gw-a?""#),
        "{html}"
    );
    // Same id on two gateways: two rows, each with its own gateway.
    assert_eq!(html.matches(r#"<tr data-id="3""#).count(), 2, "{html}");
    // A gateway name is data: escaped in the cell, the attribute and the question.
    assert!(!html.contains("<img"), "{html}");
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(!html.contains("fleet-error"), "{html}");
}

#[test]
fn a_standalone_row_has_no_gateway_field_and_a_partial_list_says_so() {
    let reply = ConnectionsReply {
        connections: vec![row(None, 1, "alice")],
        fleet_error: None,
    };
    let html = live(&reply, &ConnQuery::default());
    assert!(!html.contains(r#"name="gateway""#), "{html}");
    assert!(html.contains("this host"), "{html}");
    let partial = ConnectionsReply {
        connections: vec![row(Some("gw-a"), 1, "alice")],
        fleet_error: Some("only this gateway's sessions: etcd is out of reach".into()),
    };
    let html = live(&partial, &ConnQuery::default());
    assert!(
        html.contains(r#"id="fleet-error""#) && html.contains("etcd is out of reach"),
        "{html}"
    );
}

#[test]
fn filter_and_sort_by_gateway() {
    let reply = ConnectionsReply {
        connections: vec![
            row(Some("gw-b"), 1, "bob"),
            row(Some("gw-a"), 2, "alice"),
            row(Some("gw-a"), 1, "carol"),
        ],
        fleet_error: None,
    };
    let only_b = ConnQuery {
        q: "gw-b".into(),
        ..ConnQuery::default()
    };
    let got: Vec<_> = only_b
        .apply(reply.connections.clone())
        .into_iter()
        .map(|c| c.user.unwrap())
        .collect();
    assert_eq!(got, ["bob"]);
    // Default order: (gateway, id).
    let got: Vec<_> = ConnQuery::default()
        .apply(reply.connections.clone())
        .into_iter()
        .map(|c| (c.gateway.unwrap(), c.id))
        .collect();
    assert_eq!(
        got,
        [
            ("gw-a".into(), 1),
            ("gw-a".into(), 2),
            ("gw-b".to_string(), 1)
        ]
    );
}

#[test]
fn the_dashboard_shows_each_gateways_revision_and_the_fleet_wide_count() {
    let peer = |g: &str, r: Option<i64>| FleetPeer {
        gateway: g.into(),
        version: "0.1.0".into(),
        revision: r,
        since: 1,
    };
    let fleet = FleetStatus {
        revision: Some(9),
        degraded: None,
        member: FleetMember {
            lease_valid: true,
            blocks: vec!["10.100.0.0/26".into()],
            gateways: vec!["gw-a".into(), "gw-b".into(), XSS_GATEWAY.into()],
            peers: vec![
                peer("gw-a", Some(9)),
                peer("gw-b", Some(7)),
                peer(XSS_GATEWAY, None),
            ],
            error: Some("etcd <unreachable>".into()),
            token_secret_mismatch: vec!["gw-b".into()],
        },
    };
    let conns = [
        row(Some("gw-a"), 1, "alice"),
        row(Some("gw-b"), 1, "bob"),
        row(Some("gw-b"), 2, "carol"),
    ];
    let html = views::fleet(&fleet, Some(&conns)).into_string();
    let tr = |g: &str| {
        let at = html.find(&format!(r#"<tr data-gateway="{g}">"#)).unwrap();
        html[at..at + html[at..].find("</tr>").unwrap()].to_owned()
    };
    assert!(
        tr("gw-a").contains(r#"<td class="revision">9</td>"#),
        "{html}"
    );
    assert!(
        tr("gw-b").contains("7 <strong class=\"error\">(behind)"),
        "{html}"
    );
    assert!(
        tr("gw-b").contains(r#"<td class="sessions">2</td>"#),
        "{html}"
    );
    assert!(
        html.contains("published policy revision <strong>9</strong>"),
        "{html}"
    );
    assert!(!html.contains("<img"), "{html}");
    // Why the gateway is out of the fleet (escaped), and the gateways whose tokens it refuses.
    assert!(
        html.contains("Out of the fleet, reconnecting: etcd &lt;unreachable&gt;"),
        "{html}"
    );
    assert!(
        html.contains("Another session-token secret on gw-b"),
        "{html}"
    );
}

#[test]
fn terminate_of_another_gateways_row_is_asked_and_audited_with_its_gateway() {
    let lab = lab(
        "fleet-term",
        vec![admin("ann", "pw", Role::Operator)],
        Duration::from_secs(60),
        5,
    );
    let ann = lab.login("ann", "pw");
    let page = lab.get("/connections", Some(&ann)).body;
    let g = lab.post(
        "/connections/terminate",
        &[("csrf", &csrf_of(&page)), ("id", "7"), ("gateway", "gw-b")],
        Some(&ann),
    );
    assert_eq!(g.status, 200, "{}", g.body);
    assert!(
        g.body.contains("Terminated session 7 on gateway gw-b."),
        "{}",
        g.body
    );
    let lines = lab.audit_lines();
    let t: Vec<_> = lines
        .iter()
        .filter(|v| v["action"] == "terminate")
        .collect();
    assert_eq!(t.len(), 1, "{lines:?}");
    assert_eq!(t[0]["target"], "session 7 on gateway gw-b");
}

/// A session that ends while no administrator has a page open still shows as ended: the
/// console's watcher lists the sessions every two seconds by itself. (Without it, the first
/// page after the end never saw the session and shows nothing ended.)
#[test]
fn a_session_that_ends_with_no_page_open_shows_as_ended() {
    let lab = lab(
        "watcher",
        vec![admin("ann", "pw", Role::Operator)],
        Duration::from_secs(60),
        5,
    );
    // Two watcher rounds see session 7 live, then the CLI ends it.
    std::thread::sleep(super::monitor::WATCH_EVERY * 2 + Duration::from_millis(500));
    let mut cli = crate::admin::AdminClient::connect(&lab.socket).unwrap();
    cli.terminate(Some(7), None, None).unwrap();
    std::thread::sleep(super::monitor::WATCH_EVERY * 2 + Duration::from_millis(500));
    let ann = lab.login("ann", "pw");
    let page = lab.get("/connections", Some(&ann)).body;
    let ended = &page[page.find(r#"<table id="ended""#).expect("an ended table")..];
    assert!(ended.contains(r#"<td class="user">alice</td>"#), "{page}");
}
