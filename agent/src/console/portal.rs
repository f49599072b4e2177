//! The self-service portal (`[console] self_service`): a user signs in with their directory
//! password (and one-time code) and downloads their own `.ovpn` profile.
//!
//! It shares only the listener with the administrators' console: its sessions live in their
//! own store under their own cookie (path `/portal`), so a portal login never opens an
//! administrator's page, and an administrator's cookie never opens the portal. The sign-in is
//! the VPN's own directory check (`Authenticator::portal_login`) with its failed-login limits;
//! the profile comes from the admin API's `profile` action, which the audit trail records.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::config::Role;
use super::pages::layout;
use super::sessions::{same_token, CsrfForm, Session};
use super::signin;
use super::state::{cookie_named, Console};
use crate::admin::audit::AuditEntry;
use crate::admin::{Action, Caller, ProfileReply};
use crate::openvpn::verdict::{FailureCode, Refusal};

/// The portal's session cookie (distinct from the administrators' one).
pub const COOKIE: &str = "portcullis_portal";

/// A request with a live portal session (`Session::admin` holds the directory user name).
pub struct PortalAuthed {
    pub session: Session,
    pub token: String,
}

impl FromRequestParts<Arc<Console>> for PortalAuthed {
    type Rejection = Response;

    async fn from_request_parts(p: &mut Parts, c: &Arc<Console>) -> Result<Self, Response> {
        if c.portal_auth().is_none() {
            return Err(not_found());
        }
        let found = cookie_named(&p.headers, COOKIE).and_then(|t| {
            let s = c
                .portal_sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&t, Instant::now())?;
            Some(PortalAuthed {
                session: s,
                token: t,
            })
        });
        found.ok_or_else(|| {
            if p.method == axum::http::Method::GET {
                Redirect::to("/portal/login").into_response()
            } else {
                (StatusCode::UNAUTHORIZED, "no session: sign in first\n").into_response()
            }
        })
    }
}

/// An audit line of the portal (`from`: `portal <address>`, as its downloads).
fn record(c: &Console, who: &str, ip: std::net::IpAddr, action: &str, result: &str) {
    c.record_entry(&AuditEntry::now(
        who,
        &format!("portal {ip}"),
        action,
        "",
        result,
    ));
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn frame(title: &str, body: Markup) -> Markup {
    layout(
        title,
        None,
        html! {
            p.portal { "Self-service portal: your own VPN profile." }
            (body)
        },
    )
}

fn login_page(name: &str, otp: bool, message: Option<&str>, csrf: &str) -> Markup {
    frame(
        "Sign in to download your VPN profile",
        html! {
            @if let Some(m) = message { p.error role="alert" { (m) } }
            form.login method="post" action="/portal/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Directory user name" input type="text" name="name" value=(name) autocomplete="username" required; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                @if otp {
                    label { "One-time code" input type="text" name="code" inputmode="numeric" autocomplete="one-time-code" required; }
                }
                button type="submit" { "Sign in" }
            }
        },
    )
}

fn profile_page(s: &Session, issue: bool) -> Markup {
    frame(
        "Your VPN profile",
        html! {
            p { "Signed in as " strong.user { (s.admin) } "." }
            form method="post" action="/portal/profile" {
                input type="hidden" name="csrf" value=(s.csrf);
                @if issue {
                    p { "Each download carries a new personal certificate and its private key: keep the file to yourself, and import it into your OpenVPN client." }
                } @else {
                    p { "Import the file into your OpenVPN client; it asks for your directory password when you connect." }
                }
                button #download type="submit" { "Download profile (.ovpn)" }
            }
            form method="post" action="/portal/logout" {
                input type="hidden" name="csrf" value=(s.csrf);
                button type="submit" { "Sign out" }
            }
        },
    )
}

/// `/portal`: the download page (without a session: the sign-in).
pub async fn home(State(c): State<Arc<Console>>, p: PortalAuthed) -> Html<String> {
    Html(profile_page(&p.session, c.portal_issue).into_string())
}

pub async fn login_form(State(c): State<Arc<Console>>) -> Response {
    match c.portal_auth() {
        Some(a) => signin_page(StatusCode::OK, "", a.otp, None),
        None => not_found(),
    }
}

/// The sign-in page with a fresh CSRF value in its form and its cookie.
fn signin_page(status: StatusCode, name: &str, otp: bool, message: Option<&str>) -> Response {
    let issued = signin::PORTAL.issue();
    let mut r = (
        status,
        Html(login_page(name, otp, message, &issued.value).into_string()),
    )
        .into_response();
    signin::SigninGuard::set(r.headers_mut(), &issued);
    r
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    code: String,
}

pub async fn login(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let Some(auth) = c.portal_auth() else {
        return not_found();
    };
    let otp = auth.otp;
    if !signin::PORTAL.check(&headers, &f.csrf) {
        record(&c, &f.name, peer.ip(), "portal_login_failed", "csrf");
        return signin_page(
            StatusCode::FORBIDDEN,
            &f.name,
            otp,
            Some("The sign-in form is stale or was not sent by this portal: try again."),
        );
    }
    let (name, password, code) = (f.name.clone(), f.password, f.code);
    let ip = peer.ip();
    // The directory is asked (blocking network calls): off the async workers.
    let checked =
        tokio::task::spawn_blocking(move || auth.portal_login(&name, &password, &code, ip))
            .await
            .unwrap_or_else(|_| Err(Refusal::new(FailureCode::Internal, "internal error")));
    match checked {
        Ok(u) => {
            let now = Instant::now();
            let (token, lifetime) = {
                let mut s = c.portal_sessions.lock().unwrap_or_else(|e| e.into_inner());
                // The role is unused here: portal sessions open no administrator page.
                (s.start(&u.username, Role::ReadOnly, now), s.lifetime())
            };
            record(&c, &u.username, ip, "portal_login", "ok");
            let cookie = format!(
                "{COOKIE}={token}; Path=/portal; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
                lifetime.as_secs()
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/portal")).into_response()
        }
        Err(r) => {
            record(&c, &f.name, ip, "portal_login_failed", r.code.as_str());
            let (status, message) = match r.code {
                FailureCode::RateLimited => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed sign-ins: wait a minute and try again.".to_owned(),
                ),
                _ => (
                    StatusCode::UNAUTHORIZED,
                    format!("Sign-in refused: {}.", r.message),
                ),
            };
            signin_page(status, &f.name, otp, Some(&message))
        }
    }
}

/// The download: the admin API's `profile` for the signed-in user, and no one else (the user
/// comes from the session, never from the form).
pub async fn profile(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    p: PortalAuthed,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !same_token(&f.csrf, &p.session.csrf) {
        return (
            StatusCode::FORBIDDEN,
            Html(frame(
                "Refused",
                html! { p.error role="alert" { "The form is stale or was not sent by this portal (CSRF token missing or wrong). Reload the page and try again." } },
            ).into_string()),
        )
            .into_response();
    }
    let user = p.session.admin.clone();
    let caller = Caller {
        who: format!("{user} (portal)"),
        from: format!("portal {}", peer.ip()),
    };
    let action = Action::Profile {
        user: user.clone(),
        certificate: c.portal_issue,
    };
    match c.admin.ask::<ProfileReply>(action, caller).await {
        Ok(r) => {
            let disposition = format!("attachment; filename=\"{}\"", r.file_name);
            let mut resp = r.profile.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-openvpn-profile"),
            );
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                h.insert(header::CONTENT_DISPOSITION, v);
            }
            resp
        }
        Err(e) if e.starts_with(crate::profile::CERTIFICATE_LIMIT) => {
            tracing::info!(user, "portal: certificate refused: {e}");
            (
                StatusCode::CONFLICT,
                Html(
                    frame("No new certificate", html! { p.error role="alert" { (e) } })
                        .into_string(),
                ),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(user, error = e, "portal: making a profile failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html(
                    frame(
                        "No profile",
                        html! { p.error role="alert" { "The profile could not be made: " (e) } },
                    )
                    .into_string(),
                ),
            )
                .into_response()
        }
    }
}

pub async fn logout(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    p: PortalAuthed,
    Form(f): Form<CsrfForm>,
) -> Response {
    if !same_token(&f.csrf, &p.session.csrf) {
        return (StatusCode::FORBIDDEN, "CSRF token missing or wrong\n").into_response();
    }
    c.portal_sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .end(&p.token);
    record(&c, &p.session.admin, peer.ip(), "portal_logout", "ok");
    let gone = format!("{COOKIE}=; Path=/portal; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, gone)], Redirect::to("/portal/login")).into_response()
}
