//! The callback listener: HTTPS (the console's rustls + hyper server) with two routes:
//! `GET /login/<id>`, the short URL the client opens, which redirects to the provider, and
//! `GET /callback?state=…&code=…` (or `&error=…`), where the provider sends the browser after
//! the login. The page only says whether the VPN connection may proceed; the verdict goes to
//! the session that waits (see [`super::Sso::callback`]).
use std::sync::{Arc, Weak};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::{CallbackOutcome, Sso};

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// Serves the callback route until the runtime stops. Holds the [`Sso`] weakly: the listener
/// must not keep the authenticator alive.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    sso: Weak<Sso>,
) {
    let app = Router::new()
        .route("/callback", get(callback))
        .route("/login/{id}", get(login))
        .with_state(sso);
    crate::console::server::serve(listener, tls, app).await;
}

/// The short URL the client was sent: on to the provider while the login waits.
async fn login(State(sso): State<Weak<Sso>>, Path(id): Path<String>) -> Response {
    let Some(sso) = sso.upgrade() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The VPN gateway is stopping.",
        );
    };
    match sso.auth_url(&id) {
        Some(url) => (
            StatusCode::FOUND,
            [("location", url.as_str()), ("cache-control", "no-store")],
        )
            .into_response(),
        None => page(
            StatusCode::NOT_FOUND,
            "This sign-in link is unknown, used or expired: connect again.",
        ),
    }
}

async fn callback(State(sso): State<Weak<Sso>>, Query(q): Query<CallbackQuery>) -> Response {
    let Some(sso) = sso.upgrade() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "The VPN gateway is stopping.",
        );
    };
    let Some(state) = q.state.filter(|s| !s.is_empty() && s.len() <= 256) else {
        return page(StatusCode::BAD_REQUEST, "Missing or invalid state.");
    };
    match sso.callback(&state, q.code, q.error).await {
        CallbackOutcome::SignedIn(user) => page(
            StatusCode::OK,
            &format!(
                "Signed in as {}. The VPN connection continues; you can close this window.",
                escape(&user)
            ),
        ),
        CallbackOutcome::Refused(r) => page(
            StatusCode::FORBIDDEN,
            &format!(
                "Sign-in refused ({}): {}.",
                r.code.as_str(),
                escape(&r.message)
            ),
        ),
    }
}

fn page(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>VPN sign-in</title></head>\
         <body><p id=\"result\">{text}</p></body></html>"
    );
    (
        status,
        [
            ("cache-control", "no-store"),
            ("content-security-policy", "default-src 'none'"),
        ],
        Html(body),
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '&' => "&amp;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}
