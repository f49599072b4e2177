//! The monitoring pages: dashboard, connections (with terminate), audit trail. They read and
//! act only through the admin API, as the CLI does.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use serde::Deserialize;

use super::config::Role;
use super::query::{ConnQuery, ExplainQuery};
use super::state::{Authed, Console};
use super::{attempts, views};
use crate::admin::audit::{AuditEntry, AuditFilter};
use crate::admin::{
    Action, Caller, ConnectionsReply, ExplainReply, LogKind, LogQuery, LogsReply, PolicyReply,
    StatusReply, TerminateReply,
};
use crate::connlog::rfc3339;

fn unavailable(e: String) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the agent did not answer: {e}\n"),
    )
        .into_response()
}

async fn snapshot(c: &Console, a: &Authed) -> Result<(StatusReply, ConnectionsReply), Response> {
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
    c.history().sample(
        &conns.connections,
        conns.fleet_error.is_none(),
        Instant::now(),
    );
    Ok((st, conns))
}

/// How often the console lists the sessions by itself, with or without a page open.
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Lists the sessions every [`WATCH_EVERY`] for as long as the console serves, so a session
/// that ends while no administrator has a page open still shows as ended (and the rates
/// have samples to start from). A failed listing is skipped: the next one catches up.
pub async fn watch(c: Arc<Console>) {
    let caller = Caller {
        who: "console".into(),
        from: "console session watcher".into(),
    };
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Ok(conns) = c
            .admin
            .ask::<ConnectionsReply>(Action::Connections, caller.clone())
            .await
        {
            c.history().sample(
                &conns.connections,
                conns.fleet_error.is_none(),
                Instant::now(),
            );
        }
    }
}

/// The dashboard's live part: status, connections, and attempts from the connection log.
async fn live(c: &Console, a: &Authed) -> Result<maud::Markup, Response> {
    let (st, conns) = snapshot(c, a).await?;
    let attempts = attempt_rows(c, a.caller("console")).await;
    Ok(views::dashboard_live(&st, &conns, &c.history(), &attempts))
}

pub async fn dashboard(State(c): State<Arc<Console>>, a: Authed) -> Response {
    match live(&c, &a).await {
        Ok(live) => Html(views::dashboard(&a.session, live).into_string()).into_response(),
        Err(r) => r,
    }
}

pub async fn dashboard_live(State(c): State<Arc<Console>>, a: Authed) -> Response {
    match live(&c, &a).await {
        Ok(live) => Html(live.into_string()).into_response(),
        Err(r) => r,
    }
}

async fn rows(c: &Console, a: &Authed, q: &ConnQuery) -> Result<maud::Markup, Response> {
    let conns: ConnectionsReply = c
        .admin
        .ask(Action::Connections, a.caller("console"))
        .await
        .map_err(unavailable)?;
    let (rates, ended) = {
        let mut h = c.history();
        h.sample(
            &conns.connections,
            conns.fleet_error.is_none(),
            Instant::now(),
        );
        (h.session_rates(), h.ended())
    };
    let ended: Vec<_> = ended.into_iter().filter(|e| q.matches(&e.last)).collect();
    let rows = q.apply(conns.connections.clone());
    Ok(views::connections_live(
        &a.session, &conns, &rows, &rates, &ended, q,
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
    /// The row's gateway in a fleet (ids are per gateway); none or empty: this gateway.
    #[serde(default)]
    gateway: String,
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
    let gateway = Some(f.gateway.clone()).filter(|g| !g.is_empty());
    let on = gateway
        .as_ref()
        .map(|g| format!(" on gateway {g}"))
        .unwrap_or_default();
    if a.session.role != Role::Operator {
        c.record_entry(&AuditEntry::now(
            &caller.who,
            &caller.from,
            "terminate",
            &format!("session {}{on}", f.id),
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
                gateway,
            },
            caller,
        )
        .await;
    let notice = match &r {
        Ok(t) if t.terminated.is_empty() => format!(
            "Asked {} to end session {}{on}: it ends there within a second.",
            t.remote.join(", "),
            f.id
        ),
        Ok(_) => format!("Terminated session {}{on}.", f.id),
        Err(e) => format!("Terminating session {}{on} failed: {e}", f.id),
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
    let status: StatusReply = match c.admin.ask(Action::Status, caller.clone()).await {
        Ok(s) => s,
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
    Html(views::endpoint(&a.session, status.fleet.as_ref(), &policy, &q, answer).into_string())
        .into_response()
}

/// The attempts chart's rows, from the cache when fresh; `Err` says why there are none (no connection log).
async fn attempt_rows(c: &Console, caller: Caller) -> Result<Vec<attempts::Row>, String> {
    if let Some((at, r)) = c.attempts().as_ref() {
        if at.elapsed() < attempts::REFRESH {
            return r.clone();
        }
    }
    let now = SystemTime::now();
    let query = LogQuery {
        since: rfc3339(now - attempts::BUCKET * attempts::BUCKETS as u32),
        limit: 1000,
        ..LogQuery::default()
    };
    let got: Result<LogsReply, String> = c
        .admin
        .ask(
            Action::Logs {
                log: LogKind::Connections,
                query,
            },
            caller,
        )
        .await;
    let r = got.map(|l| attempts::count(&l.records, now));
    *c.attempts() = Some((Instant::now(), r.clone()));
    r
}
