//! The web console (`[console]`, off by default): administrators sign in over HTTPS and see
//! the endpoint; every action is recorded in the admin audit trail.
//!
//! Layout: [`config`] (the section and its checks), [`accounts`] (argon2 passwords, TOTP),
//! [`sessions`] (login sessions, CSRF tokens), [`pages`]
//! (maud templates, auto-escaped), [`app`] (routes and their guards), [`server`] (TLS and
//! HTTP/1 over the agent's tokio runtime), [`portal`] (the users' self-service portal).
pub mod accounts;
pub mod app;
pub mod attempts;
pub mod certs;
pub mod config;
pub mod history;
pub mod logs;
pub mod monitor;
pub mod pages;
pub mod portal;
pub mod query;
pub mod server;
pub mod sessions;
pub mod signin;
pub mod state;
pub mod views;

pub use config::{AdminAccount, ConsoleSection, Role};
pub use state::Console;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_certs;
#[cfg(test)]
mod tests_fleet;
#[cfg(test)]
mod tests_logs;
#[cfg(test)]
mod tests_portal;
#[cfg(test)]
mod tests_security;

/// Starts the console of `cfg` on the running runtime: binds its listener, reads its
/// certificate, and serves until the returned guard is dropped. `portal` gives the endpoint's
/// authenticator in force, for the self-service portal's sign-in.
pub async fn spawn(
    cfg: &ConsoleSection,
    audit: std::sync::Arc<crate::admin::audit::AuditLog>,
    admin: crate::admin::AdminHandle,
    portal: Option<state::PortalAuth>,
) -> anyhow::Result<Running> {
    use anyhow::Context;
    let tls = server::tls_config(&cfg.tls_cert, &cfg.tls_key)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding the console listener {}", cfg.listen))?;
    let console = std::sync::Arc::new(Console::new(cfg, audit, admin).with_portal(cfg, portal));
    tracing::info!(listen = %cfg.listen, "console: serving https://{}/", cfg.listen);
    let watcher = tokio::spawn(monitor::watch(console.clone()));
    Ok(Running(
        tokio::spawn(server::serve(listener, tls, console.router())),
        watcher,
    ))
}

/// The serving console (listener and session watcher); dropping it stops both (the
/// endpoint stopped).
pub struct Running(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
        self.1.abort();
    }
}
