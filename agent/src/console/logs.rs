//! The connection log and denied-flow views: a search form over the admin API's `logs` (a
//! bounded read of the log's tail), the matching records newest first. Every field is the
//! log's text, escaped by maud.
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::pages::layout;
use super::state::{Authed, Console};
use crate::admin::{Action, LogKind, LogQuery, LogsReply};

/// The search form as sent (all text, so an empty or bad limit is not a 400 of its own).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct LogForm {
    pub user: String,
    pub since: String,
    pub until: String,
    pub code: String,
    pub destination: String,
    pub rule: String,
    pub limit: String,
}

impl LogForm {
    fn query(&self) -> LogQuery {
        LogQuery {
            user: self.user.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            code: self.code.clone(),
            destination: self.destination.clone(),
            rule: self.rule.clone(),
            limit: self.limit.trim().parse().unwrap_or(0),
        }
    }
}

pub async fn connections(
    State(c): State<Arc<Console>>,
    a: Authed,
    Query(f): Query<LogForm>,
) -> Response {
    search(&c, &a, LogKind::Connections, f).await
}

pub async fn flows(State(c): State<Arc<Console>>, a: Authed, Query(f): Query<LogForm>) -> Response {
    search(&c, &a, LogKind::Flows, f).await
}

async fn search(c: &Console, a: &Authed, log: LogKind, f: LogForm) -> Response {
    let r: Result<LogsReply, String> = c
        .admin
        .ask(
            Action::Logs {
                log,
                query: f.query(),
            },
            a.caller("console"),
        )
        .await;
    let status = if r.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let (title, body) = match log {
        LogKind::Connections => ("Connection log", connection_view(&f, r)),
        LogKind::Flows => ("Denied flows", flow_view(&f, r)),
    };
    (
        status,
        Html(layout(title, Some(&a.session), body).into_string()),
    )
        .into_response()
}

/// A field as text (`-` when absent; numbers as written).
fn field(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn summary(r: &LogsReply) -> Markup {
    html! {
        p.summary {
            (r.records.len()) " record(s), newest first, from the last " (r.scanned) " line(s) of the log"
            @if r.truncated { " (older lines are not searched: narrow the time range or read the file)" }
        }
    }
}

fn form(action: &str, f: &LogForm, flows: bool) -> Markup {
    html! {
        form.filter method="get" action=(action) {
            input type="search" name="user" value=(f.user) placeholder="user";
            input type="text" name="since" value=(f.since) placeholder="since (UTC, YYYY-MM-DD HH:MM)";
            input type="text" name="until" value=(f.until) placeholder="until";
            @if flows {
                input type="search" name="destination" value=(f.destination) placeholder="destination (10.0.0.5:443)";
                input type="search" name="rule" value=(f.rule) placeholder="deciding rule or reason";
            } @else {
                input type="search" name="code" value=(f.code) placeholder="failure code (invalid_credentials)";
            }
            input type="number" name="limit" value=(f.limit) min="1" max="1000" placeholder="limit";
            button type="submit" { "Search" }
        }
    }
}

fn connection_view(f: &LogForm, r: Result<LogsReply, String>) -> Markup {
    html! {
        (form("/logs/connections", f, false))
        @match r {
            Err(e) => p.error { "Search failed: " (e) },
            Ok(r) => {
                (summary(&r))
                table #connection-log {
                    thead { tr {
                        th { "Time (UTC)" } th { "Record" } th { "Status" } th { "Failure" }
                        th { "User" } th { "Certificate" } th { "Client" } th { "Transport" }
                        th { "Duration (s)" } th { "Bytes in" } th { "Bytes out" }
                    } }
                    tbody {
                        @if r.records.is_empty() { tr { td colspan="11" { "No record matches." } } }
                        @for v in &r.records {
                            tr {
                                td { (field(v, "connection-last-update-time")) }
                                td { (field(v, "connection-log-type")) }
                                td { (field(v, "connection-attempt-status")) }
                                td.code title=(field(v, "connection-attempt-failure-detail")) {
                                    (field(v, "connection-attempt-failure-reason"))
                                }
                                td.user { (field(v, "username")) }
                                td { (field(v, "common-name")) }
                                td { (field(v, "client-ip")) }
                                td { (field(v, "transport-protocol")) }
                                td { (field(v, "connection-duration-seconds")) }
                                td { (field(v, "ingress-bytes")) }
                                td { (field(v, "egress-bytes")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn flow_view(f: &LogForm, r: Result<LogsReply, String>) -> Markup {
    html! {
        (form("/logs/flows", f, true))
        @match r {
            Err(e) => p.error { "Search failed: " (e) },
            Ok(r) => {
                (summary(&r))
                table #flow-log {
                    thead { tr {
                        th { "Time (UTC)" } th { "Event" } th { "User" } th { "Source" }
                        th { "Destination" } th { "Reason" } th { "Deciding rule" }
                    } }
                    tbody {
                        @if r.records.is_empty() { tr { td colspan="7" { "No record matches." } } }
                        @for v in &r.records {
                            tr {
                                td { (v["time"].as_u64().map_or("-".into(), |t| crate::pki::store::when(Some(t)))) }
                                td { (field(v, "event")) }
                                td.user { (field(v, "user")) }
                                td { (field(v, "src")) ":" (field(v, "src-port")) }
                                td { (field(v, "dst")) ":" (field(v, "dst-port")) "/" (field(v, "protocol")) }
                                td { (field(v, "reason")) }
                                td.rule { (field(v, "deciding-rule")) }
                            }
                        }
                    }
                }
            }
        }
    }
}
