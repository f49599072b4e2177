//! The console's routes: login and logout, the pages, the assets; every response carries a
//! strict Content-Security-Policy and no-store.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::accounts::LoginFailure;
use super::monitor;
use super::pages;
use super::sessions::{CsrfForm, COOKIE};
use super::state::{Authed, Console};
use super::{certs, logs, portal, signin};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

impl Console {
    /// The router over this state.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(monitor::dashboard))
            .route("/account", get(account))
            .route("/live/dashboard", get(monitor::dashboard_live))
            .route("/connections", get(monitor::connections))
            .route("/live/connections", get(monitor::connections_live))
            .route("/connections/terminate", post(monitor::terminate))
            .route("/audit", get(monitor::audit))
            .route("/endpoint", get(monitor::endpoint))
            .route("/certificates", get(certs::page))
            .route("/logs/connections", get(logs::connections))
            .route("/logs/flows", get(logs::flows))
            .route("/certificates/revoke", post(certs::revoke))
            .route("/portal", get(portal::home))
            .route("/portal/login", get(portal::login_form).post(portal::login))
            .route("/portal/profile", post(portal::profile))
            .route("/portal/logout", post(portal::logout))
            .route("/login", get(login_page).post(login))
            .route("/logout", post(logout))
            .route("/assets/console.js", get(script))
            .route("/assets/console.css", get(style))
            .fallback(not_found)
            .layer(axum::middleware::map_response(security_headers))
            .with_state(self)
    }
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "strict-transport-security",
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn account(a: Authed) -> Html<String> {
    Html(pages::home(&a.session).into_string())
}

async fn login_page() -> Response {
    signin_page(StatusCode::OK, "", None)
}

/// The sign-in page with a fresh CSRF value in its form and its cookie.
fn signin_page(status: StatusCode, name: &str, message: Option<&str>) -> Response {
    let issued = signin::ADMIN.issue();
    let mut r = (
        status,
        Html(pages::login(name, message, &issued.value).into_string()),
    )
        .into_response();
    signin::SigninGuard::set(r.headers_mut(), &issued);
    r
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

async fn login(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !signin::ADMIN.check(&headers, &f.csrf) {
        c.record(&f.name, peer.ip(), "console_login_failed", "", "csrf");
        return signin_page(
            StatusCode::FORBIDDEN,
            &f.name,
            Some("The sign-in form is stale or was not sent by this console: try again."),
        );
    }
    let now = Instant::now();
    let source = peer.ip().to_string();
    let limited = {
        let n = c.limit_name.lock().unwrap_or_else(|e| e.into_inner());
        let s = c.limit_source.lock().unwrap_or_else(|e| e.into_inner());
        !n.allowed(&f.name, now) || !s.allowed(&source, now)
    };
    if limited {
        c.record(
            &f.name,
            peer.ip(),
            "console_login_failed",
            "",
            "rate_limited",
        );
        return signin_page(
            StatusCode::TOO_MANY_REQUESTS,
            &f.name,
            Some("Too many failed sign-ins: wait a minute and try again."),
        );
    }
    // argon2 is deliberately slow: off the async workers.
    let accounts = c.accounts.clone();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (name, password, code) = (f.name.clone(), f.password, f.code);
    let checked = tokio::task::spawn_blocking(move || {
        accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(&name, &password, &code, unix)
    })
    .await
    .unwrap_or(Err(LoginFailure::BadPassword));
    match checked {
        Ok(role) => {
            let (token, lifetime) = {
                let mut s = c.sessions.lock().unwrap_or_else(|e| e.into_inner());
                (s.start(&f.name, role, now), s.lifetime())
            };
            c.record(&f.name, peer.ip(), "console_login", "", "ok");
            let cookie = format!(
                "{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                lifetime.as_secs()
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
        }
        Err(why) => {
            c.limit_name
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failed(&f.name, now);
            c.limit_source
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .failed(&source, now);
            c.record(&f.name, peer.ip(), "console_login_failed", "", why.reason());
            signin_page(StatusCode::UNAUTHORIZED, &f.name, Some("Sign-in refused."))
        }
    }
}

async fn logout(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    a: Authed,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !a.csrf_ok(&f.csrf) {
        return a.csrf_refused();
    }
    c.sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .end(&a.token);
    c.record(&a.session.admin, peer.ip(), "console_logout", "", "ok");
    let gone = format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, gone)], Redirect::to("/login")).into_response()
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/console.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/console.css"),
    )
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found\n")
}
