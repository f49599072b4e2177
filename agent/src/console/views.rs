//! The monitoring pages' HTML: the dashboard (cards and server-side SVG charts), the
//! connections table, the audit trail. maud escapes every interpolated string.
use std::collections::BTreeMap;

use maud::{html, Markup};

use super::attempts::Row;
use super::config::Role;
use super::history::{key_of, Ended, History, RowKey};
use super::pages::layout;
use super::query::{url_encode, ConnQuery, ExplainQuery};
use super::sessions::Session;
use crate::admin::audit::AuditEntry;
use crate::admin::{ConnectionInfo, ConnectionsReply, FleetStatus, StatusReply};
use crate::connlog::rfc3339;

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn since(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h {m:02}m")
    } else {
        format!("{m}m {s:02}s")
    }
}

/// Horizontal bars, one per (label, value, of): the value's share of `of` (or of the
/// largest value when `of` is 0).
fn bars(rows: &[(String, u64, u64)], unit: &str) -> Markup {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let h = 22 * rows.len().max(1);
    html! {
        svg.chart viewBox={"0 0 420 " (h)} width="420" height=(h) role="img" {
            @if rows.is_empty() {
                text x="0" y="15" { "none" }
            }
            @for (i, (label, v, of)) in rows.iter().enumerate() {
                @let frac = if *of > 0 { *v as f64 / *of as f64 } else { *v as f64 / max as f64 };
                @let w = (frac.clamp(0.0, 1.0) * 200.0).max(if *v > 0 { 2.0 } else { 0.0 });
                @let y = i * 22;
                text x="0" y=(y + 15) { (label) }
                rect.track x="150" y=(y + 4) width="200" height="14" {}
                rect.bar x="150" y=(y + 4) width=(format!("{w:.1}")) height="14" {}
                text x="356" y=(y + 15) {
                    (v) @if *of > 0 { " / " (of) } " " (unit)
                }
            }
        }
    }
}

/// A line chart of the recent throughput (bytes per second each way).
fn throughput(h: &History) -> Markup {
    let pts = h.rates();
    let max = pts.iter().map(|(i, o)| i.max(*o)).fold(1.0f64, f64::max);
    let line = |pick: fn(&(f64, f64)) -> f64| {
        pts.iter()
            .enumerate()
            .map(|(x, p)| format!("{},{:.1}", x * 7, 100.0 - pick(p) / max * 95.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    html! {
        svg.chart viewBox="0 0 420 110" width="420" height="110" role="img" {
            rect.track x="0" y="0" width="420" height="100" {}
            polyline.in points=(line(|p| p.0)) {}
            polyline.out points=(line(|p| p.1)) {}
            text x="4" y="12" { "peak " (bytes(max as u64)) "/s" }
        }
        p.legend { span.in { "■ in (from clients)" } " " span.out { "■ out (to clients)" } }
    }
}

/// Connection attempts of the last hour, one row per outcome (successful, then each failure
/// code), twelve five-minute bars each, all on one scale.
fn attempts_chart(rows: &Result<Vec<Row>, String>) -> Markup {
    let rows = match rows {
        Ok(r) => r,
        Err(e) => return html! { p.muted { "No attempts to show: " (e) } },
    };
    let max = rows.iter().flat_map(|r| r.1).max().unwrap_or(0).max(1);
    let h = 22 * rows.len().max(1);
    html! {
        svg.chart #attempts viewBox={"0 0 420 " (h)} width="420" height=(h) role="img" {
            @for (i, (label, counts)) in rows.iter().enumerate() {
                @let y = i * 22;
                text x="0" y=(y + 15) { (label) }
                @for (k, n) in counts.iter().enumerate() {
                    @let bh = (*n as f64 / max as f64 * 16.0).max(if *n > 0 { 2.0 } else { 0.0 });
                    rect.track x=(150 + k * 17) y=(y + 2) width="14" height="16" {}
                    rect class=(if label == "successful" { "bar" } else { "bar bad" })
                        x=(150 + k * 17) y=(format!("{:.1}", y as f64 + 18.0 - bh)) width="14"
                        height=(format!("{bh:.1}")) { title { (n) " in 5 min" } }
                }
                text x="360" y=(y + 15) { (counts.iter().sum::<u64>()) }
            }
        }
        p.legend { "Last hour, five minutes a bar (oldest left); the total on the right." }
    }
}

/// The part of the dashboard that refreshes every 2 s.
pub fn dashboard_live(
    st: &StatusReply,
    conns: &ConnectionsReply,
    h: &History,
    attempts: &Result<Vec<Row>, String>,
) -> Markup {
    let fleet_error = conns.fleet_error.as_deref();
    let conns = &conns.connections[..];
    // In a fleet the list is every gateway's (or says it is not): count it, not this host.
    let active = match &st.fleet {
        Some(_) => conns.iter().filter(|c| c.established).count() as u64,
        None => st.established,
    };
    let bin: u64 = conns.iter().map(|c| c.ingress_bytes).sum();
    let bout: u64 = conns.iter().map(|c| c.egress_bytes).sum();
    let pin: u64 = conns.iter().map(|c| c.ingress_packets).sum();
    let pout: u64 = conns.iter().map(|c| c.egress_packets).sum();
    let drops: Vec<(String, u64, u64)> = st
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.clone(), *n, 0))
        .collect();
    let maps: Vec<(String, u64, u64)> = st
        .maps
        .iter()
        .map(|(k, m)| (k.clone(), m.entries, m.capacity))
        .collect();
    html! {
        div.cards {
            div.card { div.k { "Active connections" } div.n id="active" { (active) }
                @if st.fleet.is_some() {
                    div { "in the fleet; " (st.established) " on this gateway" }
                } @else {
                    div { (st.sessions) " sessions in all" }
                }
            }
            div.card { div.k { "Bytes in / out" } div.n id="bytes" { (bytes(bin)) " / " (bytes(bout)) } div { (pin) " / " (pout) " packets" } }
            div.card { div.k { "Flows" } div.n { (st.flows) } }
            div.card { div.k { "Policy generation" } div.n { (st.generation) }
                div { (st.reloads) " reloads; last: "
                    @match (&st.last_reload_error, &st.last_reload_timing) {
                        (Some(e), _) => span.error { "failed: " (e) },
                        (None, Some(t)) => { "ok in " (format!("{:.1}", t.total_ms)) " ms" },
                        (None, None) => "none yet",
                    }
                }
            }
        }
        @if let Some(e) = fleet_error { p.error role="alert" { "Fleet: " (e) } }
        @if let Some(f) = &st.fleet { section #fleet { h2 { "Fleet" } (fleet(f, Some(conns))) } }
        div.charts {
            section { h2 { "Throughput" } (throughput(h)) }
            section { h2 { "Connection attempts and authentication failures by reason" } (attempts_chart(attempts)) }
            section { h2 { "Data-path drops by reason" } (bars(&drops, "packets")) }
            section { h2 { "Map fill" } (bars(&maps, "")) }
        }
    }
}

pub fn dashboard(s: &Session, live: Markup) -> Markup {
    layout(
        "Dashboard",
        Some(s),
        html! { div #dashboard data-refresh="/live/dashboard" { (live) } },
    )
}

fn sort_link(q: &ConnQuery, key: &str, label: &str) -> Markup {
    let desc = q.sort == key && !q.desc;
    let href = format!("/connections?q={}&sort={key}&desc={desc}", url_encode(&q.q));
    html! { a href=(href) { (label) @if q.sort == key { (if q.desc { " ▼" } else { " ▲" }) } } }
}

/// A session's gateway as a cell: standalone rows have none (this host).
fn gateway_cell(g: &Option<String>) -> Markup {
    html! { @match g { Some(g) => (g), None => span.muted { "this host" } } }
}

/// The rows of the connections table.
fn connection_rows(
    s: &Session,
    conns: &[ConnectionInfo],
    rates: &BTreeMap<RowKey, (f64, f64)>,
) -> Markup {
    html! {
        @if conns.is_empty() { tr { td colspan="12" { "No connection matches." } } }
        @for c in conns {
            @let rate = rates.get(&key_of(c)).copied().unwrap_or((0.0, 0.0));
            @let on = c.gateway.as_ref().map(|g| format!(" on gateway {g}")).unwrap_or_default();
            tr data-id=(c.id) data-gateway=[c.gateway.as_deref()] {
                td { (c.id) }
                td.user { (c.user.as_deref().unwrap_or("-")) }
                td { (c.username.as_deref().unwrap_or("-")) }
                td { (c.directory_groups.join(", ")) }
                td.gateway { (gateway_cell(&c.gateway)) }
                td { (c.client_address.as_deref().unwrap_or("-")) }
                td { (c.public_address) " " small { (c.transport) } }
                td { (since(c.since_secs)) @if !c.established { " (connecting)" } }
                td.bytes-in { (bytes(c.ingress_bytes)) }
                td.bytes-out { (bytes(c.egress_bytes)) }
                td { (bytes(rate.0 as u64)) "/s ↑ " (bytes(rate.1 as u64)) "/s ↓" }
                td {
                    @if s.role == Role::Operator {
                        form method="post" action="/connections/terminate"
                            data-confirm={"Terminate session " (c.id) " of " (c.user.as_deref().unwrap_or("?")) (on) "?"} {
                            input type="hidden" name="csrf" value=(s.csrf);
                            input type="hidden" name="id" value=(c.id);
                            @if let Some(g) = &c.gateway { input type="hidden" name="gateway" value=(g); }
                            button.danger type="submit" { "Terminate" }
                        }
                    }
                }
            }
        }
    }
}

/// The sessions this console saw end within the last hour.
fn ended_rows(ended: &[Ended]) -> Markup {
    html! {
        @if ended.is_empty() { tr { td colspan="8" { "None seen." } } }
        @for e in ended {
            @let c = &e.last;
            tr data-id=(c.id) data-gateway=[c.gateway.as_deref()] {
                td { (rfc3339(e.seen_gone)) }
                td { (c.id) }
                td.user { (c.user.as_deref().unwrap_or("-")) }
                td { (c.username.as_deref().unwrap_or("-")) }
                td.gateway { (gateway_cell(&c.gateway)) }
                td { (c.client_address.as_deref().unwrap_or("-")) " from " (c.public_address) }
                td { (since(c.since_secs)) }
                td { (bytes(c.ingress_bytes)) " / " (bytes(c.egress_bytes)) }
            }
        }
    }
}

/// The part of the connections page that refreshes every 2 s: the live sessions, and those
/// seen to end within the last hour (both filtered as asked).
pub fn connections_live(
    s: &Session,
    reply: &ConnectionsReply,
    rows: &[ConnectionInfo],
    rates: &BTreeMap<RowKey, (f64, f64)>,
    ended: &[Ended],
    q: &ConnQuery,
) -> Markup {
    html! {
        @if let Some(e) = &reply.fleet_error {
            p.error #fleet-error role="alert" {
                "Only this gateway's sessions are listed: the fleet registry is out of reach (" (e) ")."
            }
        }
        table #connections {
            thead { tr {
                th { (sort_link(q, "id", "Id")) }
                th { (sort_link(q, "user", "User")) }
                th { "Directory user" }
                th { "Groups" }
                th { (sort_link(q, "gateway", "Gateway")) }
                th { "Client address" }
                th { "Public address" }
                th { (sort_link(q, "since", "Connected for")) }
                th { (sort_link(q, "in", "Bytes in")) }
                th { (sort_link(q, "out", "Bytes out")) }
                th { "Rate" }
                th {}
            } }
            tbody { (connection_rows(s, rows, rates)) }
        }
        h2 { "Ended in the last hour" }
        p.muted { "Sessions this console saw end (every gateway's, while a console page was refreshing); "
            "each gateway's connection log has every disconnect with its reason." }
        table #ended {
            thead { tr { th { "Gone by (UTC)" } th { "Id" } th { "User" } th { "Directory user" } th { "Gateway" }
                th { "Addresses" } th { "Lasted at least" } th { "Bytes in / out" } } }
            tbody { (ended_rows(ended)) }
        }
    }
}

pub fn connections(s: &Session, q: &ConnQuery, live: Markup, notice: Option<&str>) -> Markup {
    let url = format!(
        "/live/connections?q={}&sort={}&desc={}",
        url_encode(&q.q),
        url_encode(&q.sort),
        q.desc
    );
    layout(
        "Connections",
        Some(s),
        html! {
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            form.filter method="get" action="/connections" {
                input type="search" name="q" value=(q.q) placeholder="user, group, address or gateway";
                input type="hidden" name="sort" value=(q.sort);
                button type="submit" { "Filter" }
            }
            div #live-connections data-refresh=(url) { (live) }
        },
    )
}

/// When a gateway's lease began, as "for 2h 05m".
fn member_for(start: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if start == 0 || start > now {
        "?".into()
    } else {
        since(now - start)
    }
}

/// A fleet gateway's view of the fleet: its own lease and blocks, and each gateway alive
/// with the policy revision it runs (and, given the fleet's sessions, how many it serves).
pub fn fleet(f: &FleetStatus, conns: Option<&[ConnectionInfo]>) -> Markup {
    let m = &f.member;
    let newest = m
        .peers
        .iter()
        .filter_map(|p| p.revision)
        .max()
        .max(f.revision);
    html! {
        p {
            "This gateway runs "
            @match f.revision {
                Some(r) => { "published policy revision " strong { (r) } }
                None => "its local file's policy (nothing published applied yet)",
            }
            "; its lease is "
            @if m.lease_valid { "valid" } @else { strong.error { "not valid: new clients are refused (AUTH_FAILED,TEMP)" } }
            "; address blocks: " (if m.blocks.is_empty() { "none".to_owned() } else { m.blocks.join(", ") }) "."
        }
        @if let Some(d) = &f.degraded { p.error role="alert" { "Degraded: " (d) } }
        @if let Some(e) = &m.error { p.error role="alert" #fleet-member-error { "Out of the fleet, reconnecting: " (e) } }
        @if !m.token_secret_mismatch.is_empty() {
            p.error role="alert" #token-secret-mismatch {
                "Another session-token secret on " (m.token_secret_mismatch.join(", "))
                ": their tokens are refused here (copy auth.token_secret_file to every gateway)."
            }
        }
        table #fleet-gateways {
            thead { tr { th { "Gateway" } th { "Policy revision" } th { "Version" } th { "Member for" }
                @if conns.is_some() { th { "Sessions" } } } }
            tbody {
                @if m.peers.is_empty() { tr { td colspan="5" { "No gateway's presence read yet." } } }
                @for p in &m.peers {
                    tr data-gateway=(p.gateway) {
                        td.gateway { (p.gateway) }
                        td.revision {
                            @match p.revision {
                                Some(r) => { (r) @if Some(r) < newest { " " strong.error { "(behind)" } } }
                                None => span.muted { "local file" },
                            }
                        }
                        td { (p.version) }
                        td { (member_for(p.since)) }
                        @if let Some(cs) = conns {
                            td.sessions { (cs.iter().filter(|c| c.established && c.gateway.as_deref() == Some(p.gateway.as_str())).count()) }
                        }
                    }
                }
            }
        }
    }
}

pub fn audit(s: &Session, f: &crate::admin::audit::AuditFilter, entries: &[AuditEntry]) -> Markup {
    layout(
        "Audit trail",
        Some(s),
        html! {
            form.filter method="get" action="/audit" {
                input type="search" name="who" value=(f.who) placeholder="who";
                input type="search" name="action" value=(f.action) placeholder="action";
                input type="search" name="result" value=(f.result) placeholder="result";
                input type="search" name="text" value=(f.text) placeholder="target or source";
                button type="submit" { "Filter" }
            }
            table #audit {
                thead { tr { th { "Time (UTC)" } th { "Who" } th { "From" } th { "Action" } th { "Target" } th { "Result" } } }
                tbody {
                    @if entries.is_empty() { tr { td colspan="6" { "No entry matches." } } }
                    @for e in entries {
                        tr { td { (e.time) } td { (e.who) } td { (e.from) } td.action { (e.action) } td { (e.target) } td { (e.result) } }
                    }
                }
            }
        },
    )
}

/// The endpoint's running policy and the "can user U reach IP:port/proto?" form.
pub fn endpoint(
    s: &Session,
    fleet_status: Option<&FleetStatus>,
    p: &crate::admin::PolicyReply,
    q: &ExplainQuery,
    answer: Option<Result<crate::admin::ExplainReply, String>>,
) -> Markup {
    let pol = &p.policy;
    layout(
        "Endpoint",
        Some(s),
        html! {
            section #explain {
                h2 { "Can a user reach a destination?" }
                form.filter method="get" action="/endpoint" {
                    input type="text" name="user" value=(q.user) placeholder="user" required;
                    input type="text" name="to" value=(q.to) placeholder="10.0.0.5:443/tcp" required;
                    button type="submit" { "Explain" }
                }
                @match &answer {
                    Some(Ok(e)) => {
                        p.verdict { strong { (e.user) } " → " (e.destination) ": "
                            strong class=(if e.reason.is_none() { "allow" } else { "drop" }) { (e.verdict) }
                            " — groups: " (if e.groups.is_empty() { "none".to_string() } else { e.groups.join(", ") })
                        }
                        ol.steps { @for st in &e.steps { li { (st) } } }
                    }
                    Some(Err(e)) => p.error role="alert" { (e) },
                    None => {},
                }
            }
            p { "Policy generation " (p.generation) "; client pool " (pol.client_cidr) ", gateway " (pol.gateway_addr) "." }
            @if let Some(f) = fleet_status {
                section #fleet {
                    h2 { "Fleet" }
                    p.muted { "The policy below is this gateway's; every gateway on the newest revision runs the same shared part (fleet publish)." }
                    (fleet(f, None))
                }
            }
            h2 { "Authorization rules" }
            table #authz { thead { tr { th { "#" } th { "Destination" } th { "Who" } th { "Description" } } }
                tbody { @for (i, r) in pol.authorization_rules.iter().enumerate() {
                    tr { td { (i) } td { (r.destination) }
                         td { @if r.all_users { "all users" } @else { (r.groups.join(", ")) } }
                         td { (r.description.as_deref().unwrap_or("")) } }
                } } }
            h2 { "Routes" }
            table #routes { thead { tr { th { "Destination" } th { "Target network" } th { "Description" } } }
                tbody { @for r in &pol.routes {
                    tr { td { (r.destination) } td { (r.target_network) } td { (r.description.as_deref().unwrap_or("")) } }
                } } }
            h2 { "Groups (local)" }
            table #groups { thead { tr { th { "Group" } th { "Users" } } }
                tbody { @for (g, users) in &pol.groups { tr { td { (g) } td { (users.join(", ")) } } } } }
            h2 { "Security groups and everything else, as running" }
            pre.policy { (serde_json::to_string_pretty(pol).unwrap_or_default()) }
        },
    )
}
