//! The web console (`[console]`, off by default): administrators sign in over HTTPS and see
//! the endpoint; every action is recorded in the admin audit trail.
//!
//! Layout: [`config`] (the section and its checks), [`accounts`] (argon2 passwords, TOTP),
//! [`sessions`] (login sessions, CSRF tokens), [`audit`] (the JSON-lines trail), [`pages`]
//! (maud templates, auto-escaped), [`app`] (routes and their guards), [`server`] (TLS and
//! HTTP/1 over the agent's tokio runtime).
pub mod accounts;
pub mod app;
pub mod audit;
pub mod config;
pub mod pages;
pub mod server;
pub mod sessions;

pub use app::Console;
pub use config::{AdminAccount, ConsoleSection, Role};

#[cfg(test)]
mod tests;
