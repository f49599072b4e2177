//! The console's shared state and who is asking: [`Console`] (accounts, sessions, login
//! limits, the audit trail and the admin handle) and [`Authed`], a request with a live
//! session. The pages build on these; the router (`app.rs`) on the pages.
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderMap};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::accounts::Accounts;
use super::config::ConsoleSection;
use super::history::History;
use super::pages;
use super::sessions::{same_token, Session, Sessions, COOKIE};
use crate::admin::audit::{AuditEntry, AuditFilter, AuditLog};
use crate::admin::{AdminHandle, Caller};
use crate::auth::limiter::FailureLimiter;
use crate::auth::Authenticator;

/// The console's state, shared by every request.
/// The endpoint's authenticator in force, asked at each portal sign-in.
pub type PortalAuth = Arc<dyn Fn() -> Option<Arc<Authenticator>> + Send + Sync>;

pub struct Console {
    pub(super) accounts: Arc<Mutex<Accounts>>,
    pub(super) sessions: Mutex<Sessions>,
    /// Failed logins per account name and per source address.
    pub(super) limit_name: Mutex<FailureLimiter>,
    pub(super) limit_source: Mutex<FailureLimiter>,
    pub(super) audit: Arc<AuditLog>,
    /// The admin API: every read and action goes through it.
    pub(super) admin: AdminHandle,
    pub(super) history: Mutex<History>,
    /// The self-service portal's sign-in (`[console] self_service`), `None` when off.
    pub(super) portal: Option<PortalAuth>,
    /// Portal logins: a store of their own, so they never pass for an administrator's.
    pub(super) portal_sessions: Mutex<Sessions>,
    /// `[console] self_service_issue_certificates`.
    pub(super) portal_issue: bool,
    /// The dashboard's attempts chart as last counted (see `attempts.rs`).
    pub(super) attempts: Mutex<Option<AttemptsCache>>,
}

/// When the attempts chart was counted, and its rows or why there are none.
pub(super) type AttemptsCache = (Instant, Result<Vec<super::attempts::Row>, String>);

impl Console {
    pub fn new(cfg: &ConsoleSection, audit: Arc<AuditLog>, admin: AdminHandle) -> Self {
        Self::with_session_lifetime(
            cfg,
            audit,
            admin,
            Duration::from_secs(u64::from(cfg.session_minutes) * 60),
        )
    }

    /// As `new`, with a session lifetime below the file's one-minute floor (tests).
    pub fn with_session_lifetime(
        cfg: &ConsoleSection,
        audit: Arc<AuditLog>,
        admin: AdminHandle,
        lifetime: Duration,
    ) -> Self {
        let window = Duration::from_secs(60);
        Self {
            accounts: Arc::new(Mutex::new(Accounts::new(cfg.admins.clone()))),
            sessions: Mutex::new(Sessions::new(lifetime)),
            limit_name: Mutex::new(FailureLimiter::new(cfg.login_failures_per_minute, window)),
            limit_source: Mutex::new(FailureLimiter::new(cfg.login_failures_per_minute, window)),
            audit,
            admin,
            history: Mutex::new(History::default()),
            portal: None,
            portal_sessions: Mutex::new(Sessions::new(lifetime)),
            portal_issue: cfg.self_service && cfg.self_service_issue_certificates,
            attempts: Mutex::new(None),
        }
    }

    /// Serves the self-service portal with `auth` when the section turns it on (validation
    /// makes sure an endpoint with the portal on has a directory, hence an authenticator).
    pub fn with_portal(mut self, cfg: &ConsoleSection, auth: Option<PortalAuth>) -> Self {
        self.portal = auth.filter(|_| cfg.self_service);
        self
    }

    /// The portal's sign-in as of now (a reload may have changed the directory): `None`
    /// when the portal is off or the endpoint has no directory any more.
    pub(super) fn portal_auth(&self) -> Option<Arc<Authenticator>> {
        self.portal
            .as_ref()
            .and_then(|f| f())
            .filter(|a| a.directory.is_some())
    }

    pub(super) fn record(&self, who: &str, from: IpAddr, action: &str, target: &str, result: &str) {
        self.audit.record(&AuditEntry::now(
            who,
            &format!("console {from}"),
            action,
            target,
            result,
        ));
    }

    pub(super) fn record_entry(&self, e: &AuditEntry) {
        self.audit.record(e);
    }

    pub(super) fn audit_search(&self, f: &AuditFilter, limit: usize) -> Vec<AuditEntry> {
        self.audit.search(f, limit)
    }

    pub(super) fn attempts(&self) -> std::sync::MutexGuard<'_, Option<AttemptsCache>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, COOKIE)
}

/// The value of cookie `name`.
pub(super) fn cookie_named(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A request with a live session. Without one, a page redirects to the login page and any
/// other request gets 401.
pub struct Authed {
    pub session: Session,
    pub token: String,
}

impl FromRequestParts<Arc<Console>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(p: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        let found = cookie_token(&p.headers).and_then(|t| {
            let s = c
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&t, Instant::now())?;
            Some(Authed {
                session: s,
                token: t,
            })
        });
        found.ok_or_else(|| {
            let wants_page = p.method == axum::http::Method::GET
                && p.headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_none_or(|a| !a.contains("application/json"));
            if wants_page && !p.uri.path().starts_with("/live/") {
                Redirect::to("/login").into_response()
            } else {
                (StatusCode::UNAUTHORIZED, "no session: sign in first\n").into_response()
            }
        })
    }
}

impl Authed {
    /// This administrator as the admin API's caller.
    pub fn caller(&self, from: &str) -> Caller {
        Caller {
            who: self.session.admin.clone(),
            from: from.to_owned(),
        }
    }

    /// Whether a state change's form carries this session's CSRF token.
    pub fn csrf_ok(&self, sent: &str) -> bool {
        same_token(sent, &self.session.csrf)
    }

    /// The answer to a state change without the right CSRF token.
    pub fn csrf_refused(&self) -> Response {
        (
                StatusCode::FORBIDDEN,
                Html(
                    pages::refused(
                        "Refused",
                        "The form is stale or was not sent by this console (CSRF token missing or wrong). Reload the page and try again.",
                        Some(&self.session),
                    )
                    .into_string(),
                ),
            )
                .into_response()
    }
}
