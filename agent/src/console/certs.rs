//! The certificates page: what the built-in PKI issued, what is revoked, the CRL's dates, and
//! revoke (operators, confirmed, CSRF-checked). Read and revoke go through the admin API, so
//! the audit trail records a revoke from here as it does one from the CLI.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;

use super::config::Role;
use super::pages::{layout, refused};
use super::sessions::Session;
use super::state::{Authed, Console};
use crate::admin::audit::AuditEntry;
use crate::admin::{Action, CertificatesReply, RevokeReply, StatusReply};
use crate::pki::store::when;

/// A CRL this close to its nextUpdate is flagged: past it, the endpoint refuses every client.
const CRL_WARN_SECS: u64 = 7 * 86400;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub async fn page(State(c): State<Arc<Console>>, a: Authed) -> Response {
    render(&c, &a, None, StatusCode::OK).await
}

/// Whether this gateway is in a fleet (where a revocation needs a publish to act).
async fn in_fleet(c: &Console, a: &Authed) -> bool {
    c.admin
        .ask::<StatusReply>(Action::Status, a.caller("console"))
        .await
        .is_ok_and(|s| s.fleet.is_some())
}

async fn render(c: &Console, a: &Authed, notice: Option<String>, status: StatusCode) -> Response {
    let r = c
        .admin
        .ask::<CertificatesReply>(Action::Certificates, a.caller("console"))
        .await;
    let fleet = in_fleet(c, a).await;
    let page = view(&a.session, r, notice.as_deref(), now(), fleet);
    (status, Html(page.into_string())).into_response()
}

#[derive(Deserialize)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    serial: String,
}

pub async fn revoke(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    a: Authed,
    Form(f): Form<RevokeForm>,
) -> Response {
    if !a.csrf_ok(&f.csrf) {
        return a.csrf_refused();
    }
    let caller = a.caller(&format!("console {}", peer.ip()));
    let (name, serial) = (
        Some(f.name.trim().to_owned()).filter(|s| !s.is_empty()),
        Some(f.serial.trim().to_owned()).filter(|s| !s.is_empty()),
    );
    if a.session.role != Role::Operator {
        c.record_entry(&AuditEntry::now(
            &caller.who,
            &caller.from,
            "revoke",
            &format!(
                "certificate {}",
                name.as_deref().or(serial.as_deref()).unwrap_or("")
            ),
            "refused: read-only account",
        ));
        let why = "Your account is read-only: it cannot revoke certificates.";
        return (
            StatusCode::FORBIDDEN,
            Html(refused("Refused", why, Some(&a.session)).into_string()),
        )
            .into_response();
    }
    let r: Result<RevokeReply, String> = c.admin.ask(Action::Revoke { name, serial }, caller).await;
    match r {
        Ok(r) if in_fleet(&c, &a).await => {
            let n = format!(
                "Revoked serial {} in this gateway's PKI (CRL #{}). In a fleet the gateways \
                 enforce the CRLs of the last fleet publish: run `portcullis fleet publish` \
                 with this PKI's CRL to end its sessions on every gateway (within a second \
                 of the publish); until then they go on.",
                r.revoked.join(", "),
                r.crl_number
            );
            render(&c, &a, Some(n), StatusCode::OK).await
        }
        Ok(r) => {
            let n = format!(
                "Revoked serial {} (CRL #{}); its sessions end within a second.",
                r.revoked.join(", "),
                r.crl_number
            );
            render(&c, &a, Some(n), StatusCode::OK).await
        }
        Err(e) => {
            render(
                &c,
                &a,
                Some(format!("Revoke failed: {e}")),
                StatusCode::CONFLICT,
            )
            .await
        }
    }
}

/// What a revoke does in a fleet, said on the page before anyone presses Revoke.
const FLEET_NOTE: &str = "This gateway is in a fleet: a revoke here writes this gateway's PKI \
    and CRL only. Every gateway enforces the CRLs of the last `portcullis fleet publish`, so \
    the certificate's sessions end, on every gateway, when the next publish carries this CRL.";

/// The page; `now` (Unix seconds) judges expiry; `fleet`: the gateway is in a fleet.
pub fn view(
    s: &Session,
    r: Result<CertificatesReply, String>,
    notice: Option<&str>,
    now: u64,
    fleet: bool,
) -> Markup {
    let body = match r {
        Err(e) => html! {
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            p.error { "The agent cannot list certificates: " (e) }
        },
        Ok(r) => html! {
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            @if fleet { p.error #fleet-crl { (FLEET_NOTE) } }
            (crl(&r, now))
            table #certificates {
                thead { tr {
                    th { "Name" } th { "Serial" } th { "Kind" } th { "Not after (UTC)" }
                    th { "Status" } th {}
                } }
                tbody {
                    @if r.certificates.is_empty() { tr { td colspan="6" { "No certificate issued yet." } } }
                    @for c in &r.certificates {
                        @let expired = c.not_after.is_some_and(|t| t <= now);
                        tr data-serial=(c.serial) {
                            td.name { (c.name) }
                            td { code { (c.serial) } }
                            td { (c.kind) }
                            td { (when(c.not_after)) @if expired { " (expired)" } }
                            td { @if c.revoked { span.bad { "revoked" } } @else { "valid" } }
                            td {
                                @if s.role == Role::Operator && !c.revoked && c.kind == "client" {
                                    form method="post" action="/certificates/revoke"
                                        data-confirm={"Revoke certificate " (c.serial) " of " (c.name) (if fleet { "? It can never connect again; in a fleet its sessions end with the next fleet publish." } else { "? Its sessions end now and it can never connect again." })} {
                                        input type="hidden" name="csrf" value=(s.csrf);
                                        input type="hidden" name="serial" value=(c.serial);
                                        button.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    };
    layout("Certificates", Some(s), body)
}

fn crl(r: &CertificatesReply, now: u64) -> Markup {
    html! {
        @match &r.crl {
            None => p.bad { "No CRL is published: run `portcullis pki crl`." },
            Some(c) => {
                @let next = c.next_update;
                @let state = match next {
                    Some(t) if t <= now => "expired: the endpoint refuses clients until a fresh CRL is published",
                    Some(t) if t <= now + CRL_WARN_SECS => "expires within a week: republish it (`portcullis pki crl`)",
                    _ => "current",
                };
                p #crl {
                    "CRL #" (c.number) ": " (c.revoked) " revoked, published " (when(Some(c.this_update)))
                    ", next update " (when(next)) " — " (state)
                }
            }
        }
    }
}
