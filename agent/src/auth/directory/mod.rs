//! Directory authentication (LDAP / Active Directory): a username and password from the
//! key-method-2 exchange are checked against a directory, and the user's groups come back
//! for the authorization rules.
//!
//! - Finding the user: a search with a service account (`bind_dn`, `user_base`,
//!   `user_filter`) or, without a service account, a DN template (`user_dn_template`).
//! - Checking the password: a simple bind as the user on a connection of its own, so the
//!   pooled service connections never change identity.
//! - Groups: the user's `memberOf`-style attribute, or a group search (`member` /
//!   `uniqueMember`), optionally nested: a client-side walk (bounded depth, cycle-safe; works
//!   on any directory) or Active Directory's in-chain matching rule. Groups are named by an
//!   attribute (`cn`), by DN or by `objectSid` (`S-1-5-21-…`, so rules can use AD SIDs as in
//!   AWS), and at most `max_groups` are kept (AWS: 200).
//! - Transport: `ldap://` (optionally StartTLS) or `ldaps://`, the directory's CA from a file,
//!   a connect timeout and an operation timeout, a small pool of service connections that are
//!   dropped on any error and re-made on the next request.
//!
//! The LDAP client is `ldap3` in its blocking form (each connection drives its own small
//! runtime): lookups run on the authorizer's thread, never on the tunnel's control thread.
//! TLS is rustls with the ring provider, the same rustls as the OpenVPN side.
use std::sync::{Arc, Mutex};

use ldap3::{LdapConn, LdapError};

use crate::config::directory::load_roots;
use crate::config::{DirectoryConfig, GroupId, GroupSource, Nested};
use crate::openvpn::verdict::{FailureCode, Refusal};

mod groups;
mod pool;
mod user;

pub use groups::{sid_from_string, sid_to_string};

/// Why a login failed. [`DirError::client_message`] goes into `AUTH_FAILED` and the
/// connection log; it does not tell a wrong password from an unknown user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirError {
    #[error("wrong password")]
    InvalidCredentials,
    #[error("unknown user")]
    UnknownUser,
    #[error("account disabled")]
    Disabled,
    #[error("empty username or password")]
    Missing,
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    #[error("directory answer not usable: {0}")]
    Protocol(String),
    /// The static-challenge response did not check out.
    #[error("{0}")]
    Otp(&'static str),
}

impl DirError {
    pub fn client_message(&self) -> &'static str {
        match self {
            DirError::InvalidCredentials | DirError::UnknownUser | DirError::Missing => {
                "invalid username or password"
            }
            DirError::Disabled => "account disabled",
            DirError::Unavailable(_) => "directory unavailable",
            DirError::Protocol(_) => "directory error",
            // Not told apart from a wrong password, which would confirm the password to
            // someone guessing it; the agent's log has the detail.
            DirError::Otp(_) => "invalid username or password",
        }
    }

    /// What the client is told, with the code logs and metrics use; an outage is temporary.
    pub fn refusal(&self) -> Refusal {
        let code = match self {
            DirError::InvalidCredentials | DirError::UnknownUser | DirError::Missing => {
                FailureCode::InvalidCredentials
            }
            DirError::Disabled => FailureCode::AccountDisabled,
            DirError::Unavailable(_) => {
                return Refusal::temporary(FailureCode::DirectoryUnavailable, self.client_message())
            }
            DirError::Protocol(_) => FailureCode::DirectoryError,
            DirError::Otp(_) => FailureCode::OneTimeCode,
        };
        Refusal::new(code, self.client_message())
    }
}

fn unavailable(e: LdapError) -> DirError {
    DirError::Unavailable(e.to_string())
}

/// A user the directory vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirUser {
    pub dn: String,
    /// Group identifiers as `group_id` says (names, DNs or SIDs), sorted, at most
    /// `max_groups`.
    pub groups: Vec<String>,
    /// The user's TOTP secret (base32), when `totp_secret_attribute` is set and present.
    pub totp_secret: Option<String>,
}

/// A directory client with a small pool of service connections.
pub struct Directory {
    cfg: DirectoryConfig,
    bind_password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    pool: Mutex<Vec<LdapConn>>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("url", &self.cfg.url)
            .finish()
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        // Each LdapConn owns a small tokio runtime, which must not be dropped inside another
        // runtime (the tunnel's control thread drops the authorizer from within its own).
        let conns = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
        if !conns.is_empty() {
            let _ = std::thread::spawn(move || drop(conns)).join();
        }
    }
}

impl Directory {
    pub fn new(cfg: &DirectoryConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let bind_password = match &cfg.bind_password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| {
                        format!("reading directory.bind_password_file {}", p.display())
                    })?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            None => None,
        };
        let tls = match &cfg.ca_file {
            Some(p) => {
                let pem = std::fs::read(p)
                    .with_context(|| format!("reading directory.ca_file {}", p.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in load_roots(&pem).unwrap_or_default() {
                    roots
                        .add(c)
                        .with_context(|| format!("a CA in {} is not usable", p.display()))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .context("TLS versions for the directory")?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(Arc::new(config))
            }
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            bind_password,
            tls,
            pool: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &DirectoryConfig {
        &self.cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn cfg() -> DirectoryConfig {
        toml::from_str(
            r#"
            url = "ldap://127.0.0.1:3890"
            bind_dn = "cn=svc,dc=example,dc=org"
            bind_password_file = "/etc/hostname"
            user_base = "ou=people,dc=example,dc=org"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn empty_password_never_reaches_the_directory() {
        // The URL is never connected: the check comes first (an empty password would be an
        // anonymous bind that succeeds).
        let mut c = cfg();
        c.url = "ldap://192.0.2.1:1".into();
        c.bind_password_file = None;
        c.bind_dn = None;
        c.user_dn_template = Some("uid={username},dc=org".into());
        let d = Directory::new(&c).unwrap();
        assert_eq!(d.authenticate("alice", ""), Err(DirError::Missing));
        assert_eq!(d.authenticate("", "pw"), Err(DirError::Missing));
    }

    #[test]
    fn messages_do_not_reveal_which_part_was_wrong() {
        assert_eq!(
            DirError::UnknownUser.client_message(),
            DirError::InvalidCredentials.client_message()
        );
        // With a one-time code, a wrong code must not confirm the password.
        for otp in ["invalid one-time code", "one-time code already used"] {
            assert_eq!(
                DirError::Otp(otp).client_message(),
                DirError::InvalidCredentials.client_message()
            );
        }
        assert_eq!(
            DirError::Unavailable("x".into()).client_message(),
            "directory unavailable"
        );
        // Nor do the codes in logs and metrics; only an outage is temporary.
        assert_eq!(DirError::UnknownUser.refusal(), DirError::Missing.refusal());
        assert_eq!(
            DirError::UnknownUser.refusal(),
            DirError::InvalidCredentials.refusal()
        );
        assert_eq!(
            DirError::Unavailable("x".into()).refusal(),
            Refusal::temporary(FailureCode::DirectoryUnavailable, "directory unavailable")
        );
        assert!(!DirError::Disabled.refusal().temporary);
        assert_eq!(
            DirError::Disabled.refusal().code,
            FailureCode::AccountDisabled
        );
    }
}
