//! The console's HTML: maud templates, which escape every interpolated string, so a user
//! or certificate named `<script>` is shown as text.
use maud::{html, Markup, DOCTYPE};

use super::config::Role;
use super::sessions::Session;

/// The frame around every page (no inline script or style: the CSP forbids both).
pub fn layout(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Portcullis console" }
                link rel="stylesheet" href="/assets/console.css";
                script src="/assets/console.js" defer {}
            }
            body {
                header {
                    span.brand { "Portcullis" }
                    @if let Some(s) = session {
                        nav {
                            a href="/" { "Dashboard" }
                            a href="/connections" { "Connections" }
                            a href="/endpoint" { "Endpoint" }
                            a href="/certificates" { "Certificates" }
                            a href="/logs/connections" { "Connection log" }
                            a href="/logs/flows" { "Denied flows" }
                            a href="/audit" { "Audit trail" }
                            a href="/account" { "Account" }
                        }
                        span.who { (s.admin) " (" (s.role.name()) ")" }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

pub fn login(name: &str, message: Option<&str>, csrf: &str) -> Markup {
    layout(
        "Sign in",
        None,
        html! {
            @if let Some(m) = message { p.error role="alert" { (m) } }
            form.login method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Name" input type="text" name="name" value=(name) autocomplete="username" required; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                label { "One-time code (if your account has one)" input type="text" name="code" inputmode="numeric" autocomplete="one-time-code"; }
                button type="submit" { "Sign in" }
            }
        },
    )
}

pub fn home(s: &Session) -> Markup {
    layout(
        "Account",
        Some(s),
        html! {
            p { "Signed in as " strong { (s.admin) } "." }
            p { @match s.role {
                Role::Operator => "You may terminate sessions and reload the policy.",
                Role::ReadOnly => "Your account is read-only: you see every page and change nothing.",
            } }
        },
    )
}

pub fn refused(title: &str, why: &str, s: Option<&Session>) -> Markup {
    layout(title, s, html! { p.error role="alert" { (why) } })
}
