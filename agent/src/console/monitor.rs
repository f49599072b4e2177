//! The monitoring pages: dashboard, connections (with terminate), audit trail. They read and
//! act only through the admin API, as the CLI does.
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::app::{Authed, Console};
use super::config::Role;
use super::views;
use crate::admin::audit::{AuditEntry, AuditFilter};
use crate::admin::{
    Action, ConnectionInfo, ConnectionsReply, ExplainReply, PolicyReply, StatusReply,
    TerminateReply,
};

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

/// Percent-encodes a query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unavailable(e: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the agent did not answer: {e}\n"),
    )
        .into_response()
}

async fn snapshot(c: &Console, a: &Authed) -> Result<(StatusReply, Vec<ConnectionInfo>), Response> {
    let caller = a.caller("console");
    let st: StatusReply = c
        .admin
        .ask(Action::Status, caller.clone())
        .await
        .map_err(unavailable)?;
    let conns: ConnectionsReply = c
        .admin
        .ask(Action::Connections, caller)
        .await
        .map_err(unavailable)?;
    c.history().sample(&conns.connections, Instant::now());
    Ok((st, conns.connections))
}

pub async fn dashboard(State(c): State<Arc<Console>>, a: Authed) -> Response {
    match snapshot(&c, &a).await {
        Ok((st, conns)) => {
            let live = views::dashboard_live(&st, &conns, &c.history());
            Html(views::dashboard(&a.session, live).into_string()).into_response()
        }
        Err(r) => r,
    }
}

pub async fn dashboard_live(State(c): State<Arc<Console>>, a: Authed) -> Response {
    match snapshot(&c, &a).await {
        Ok((st, conns)) => {
            Html(views::dashboard_live(&st, &conns, &c.history()).into_string()).into_response()
        }
        Err(r) => r,
    }
}

/// The connections table's filter and order.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConnQuery {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub sort: String,
    #[serde(default)]
    pub desc: bool,
}

impl ConnQuery {
    fn apply(&self, mut conns: Vec<ConnectionInfo>) -> Vec<ConnectionInfo> {
        let q = self.q.to_lowercase();
        if !q.is_empty() {
            conns.retain(|c| {
                [
                    c.user.as_deref().unwrap_or(""),
                    c.username.as_deref().unwrap_or(""),
                    c.client_address.as_deref().unwrap_or(""),
                    &c.public_address,
                ]
                .iter()
                .any(|f| f.to_lowercase().contains(&q))
                    || c.directory_groups
                        .iter()
                        .any(|g| g.to_lowercase().contains(&q))
            });
        }
        match self.sort.as_str() {
            "user" => conns.sort_by(|a, b| a.user.cmp(&b.user)),
            "since" => conns.sort_by_key(|c| c.since_secs),
            "in" => conns.sort_by_key(|c| c.ingress_bytes),
            "out" => conns.sort_by_key(|c| c.egress_bytes),
            _ => conns.sort_by_key(|c| c.id),
        }
        if self.desc {
            conns.reverse();
        }
        conns
    }
}

async fn rows(c: &Console, a: &Authed, q: &ConnQuery) -> Result<maud::Markup, Response> {
    let conns: ConnectionsReply = c
        .admin
        .ask(Action::Connections, a.caller("console"))
        .await
        .map_err(unavailable)?;
    let rates = {
        let mut h = c.history();
        h.sample(&conns.connections, Instant::now());
        h.session_rates()
    };
    Ok(views::connection_rows(
        &a.session,
        &q.apply(conns.connections),
        &rates,
    ))
}

pub async fn connections(
    State(c): State<Arc<Console>>,
    a: Authed,
    Query(q): Query<ConnQuery>,
) -> Response {
    match rows(&c, &a, &q).await {
        Ok(r) => Html(views::connections(&a.session, &q, r, None).into_string()).into_response(),
        Err(r) => r,
    }
}

pub async fn connections_live(
    State(c): State<Arc<Console>>,
    a: Authed,
    Query(q): Query<ConnQuery>,
) -> Response {
    match rows(&c, &a, &q).await {
        Ok(r) => Html(r.into_string()).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct TerminateForm {
    #[serde(default)]
    csrf: String,
    id: u32,
}

pub async fn terminate(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    a: Authed,
    Form(f): Form<TerminateForm>,
) -> Response {
    if !a.csrf_ok(&f.csrf) {
        return a.csrf_refused();
    }
    let caller = a.caller(&format!("console {}", peer.ip()));
    if a.session.role != Role::Operator {
        c.record_entry(&AuditEntry::now(
            &caller.who,
            &caller.from,
            "terminate",
            &format!("session {}", f.id),
            "refused: read-only account",
        ));
        return (
            StatusCode::FORBIDDEN,
            Html(
                super::pages::refused(
                    "Refused",
                    "Your account is read-only: it cannot terminate sessions.",
                    Some(&a.session),
                )
                .into_string(),
            ),
        )
            .into_response();
    }
    let r: Result<TerminateReply, String> = c
        .admin
        .ask(
            Action::Terminate {
                id: Some(f.id),
                user: None,
                gateway: None,
            },
            caller,
        )
        .await;
    let notice = match &r {
        Ok(t) => format!("Terminated session {:?}.", t.terminated),
        Err(e) => format!("Terminating session {} failed: {e}", f.id),
    };
    let q = ConnQuery::default();
    match rows(&c, &a, &q).await {
        Ok(rows) => {
            let status = if r.is_ok() {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            (
                status,
                Html(views::connections(&a.session, &q, rows, Some(&notice)).into_string()),
            )
                .into_response()
        }
        Err(r) => r,
    }
}

pub async fn audit(
    State(c): State<Arc<Console>>,
    a: Authed,
    Query(f): Query<AuditFilter>,
) -> Response {
    let entries = c.audit_search(&f, 500);
    Html(views::audit(&a.session, &f, &entries).into_string()).into_response()
}

/// The explain form's fields.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ExplainQuery {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub to: String,
}

pub async fn endpoint(
    State(c): State<Arc<Console>>,
    a: Authed,
    Query(q): Query<ExplainQuery>,
) -> Response {
    let caller = a.caller("console");
    let policy: PolicyReply = match c.admin.ask(Action::Policy, caller.clone()).await {
        Ok(p) => p,
        Err(e) => return unavailable(e),
    };
    let answer = if q.user.is_empty() || q.to.is_empty() {
        None
    } else {
        let explain = Action::Explain {
            user: q.user.clone(),
            to: q.to.clone(),
        };
        Some(c.admin.ask::<ExplainReply>(explain, caller).await)
    };
    Html(views::endpoint(&a.session, &policy, &q, answer).into_string()).into_response()
}
