//! Who may log in, as a fleet shares it: the endpoint-wide part of `[auth]` and `[oidc]`
//! (the whole `[directory]` is endpoint-wide), split from what belongs to one gateway.
//!
//! The split, field by field (docs/fleet.md, "What is shared"):
//! - `[auth]`: the methods, `username_must_match_cn`, the failed-login limits and the
//!   static challenge are the endpoint's (a user must get the same answer from every
//!   gateway). The session-token settings (`token_*`) stay with the token secret, which is a
//!   host-local file read at start: all four are host-local and restart-only.
//! - `[directory]`: all of it (one directory serves the endpoint). Its two files travel as
//!   *paths* only (`bind_password_file`, `ca_file`): each gateway must hold them at that
//!   path; the password never reaches etcd.
//! - `[oidc]`: the provider and its claims are the endpoint's; the callback listener is the
//!   gateway's own (`redirect_listen`, `callback_cert`, `callback_key`) and so is
//!   `redirect_url`, since a login's state lives on the gateway that started it and the
//!   provider must send the browser back to that one. `client_secret_file` and `ca_file`
//!   travel as paths, as the directory's.
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AuthSection, OidcConfig};

/// The endpoint-wide part of `[auth]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedAuth {
    pub methods: Vec<String>,
    pub username_must_match_cn: bool,
    pub failed_logins_per_user: u32,
    pub failed_logins_per_source: u32,
    pub failed_login_window_secs: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_challenge: Option<String>,
}

impl AuthSection {
    pub fn shared(&self) -> SharedAuth {
        SharedAuth {
            methods: self.methods.clone(),
            username_must_match_cn: self.username_must_match_cn,
            failed_logins_per_user: self.failed_logins_per_user,
            failed_logins_per_source: self.failed_logins_per_source,
            failed_login_window_secs: self.failed_login_window_secs,
            static_challenge: self.static_challenge.clone(),
        }
    }

    /// This gateway's `[auth]` with the endpoint-wide part replaced; the session-token
    /// fields stay.
    pub fn with_shared(self, s: SharedAuth) -> AuthSection {
        let SharedAuth {
            methods,
            username_must_match_cn,
            failed_logins_per_user,
            failed_logins_per_source,
            failed_login_window_secs,
            static_challenge,
        } = s;
        // Named one by one, so a new field must be placed on one side or the other.
        let AuthSection {
            token_secret_file,
            token_lifetime_secs,
            token_renewal_secs,
            token_revocation_file,
            methods: _,
            username_must_match_cn: _,
            failed_logins_per_user: _,
            failed_logins_per_source: _,
            failed_login_window_secs: _,
            static_challenge: _,
        } = self;
        AuthSection {
            methods,
            username_must_match_cn,
            failed_logins_per_user,
            failed_logins_per_source,
            failed_login_window_secs,
            static_challenge,
            token_secret_file,
            token_lifetime_secs,
            token_renewal_secs,
            token_revocation_file,
        }
    }
}

/// The endpoint-wide part of `[oidc]`: the provider and what its tokens mean.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedOidc {
    pub issuer: String,
    pub client_id: String,
    /// A path: each gateway holds the secret in this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub groups_claim: String,
    #[serde(default)]
    pub group_mapping: BTreeMap<String, String>,
    pub allowed_clock_skew_secs: u64,
    pub pending_timeout_secs: u64,
    pub max_pending: usize,
}

impl OidcConfig {
    pub fn shared(&self) -> SharedOidc {
        SharedOidc {
            issuer: self.issuer.clone(),
            client_id: self.client_id.clone(),
            client_secret_file: self.client_secret_file.clone(),
            ca_file: self.ca_file.clone(),
            scopes: self.scopes.clone(),
            username_claim: self.username_claim.clone(),
            groups_claim: self.groups_claim.clone(),
            group_mapping: self.group_mapping.clone(),
            allowed_clock_skew_secs: self.allowed_clock_skew_secs,
            pending_timeout_secs: self.pending_timeout_secs,
            max_pending: self.max_pending,
        }
    }

    /// This gateway's `[oidc]` (its callback listener and URL) with the provider part
    /// replaced.
    pub fn with_shared(self, s: SharedOidc) -> OidcConfig {
        let SharedOidc {
            issuer,
            client_id,
            client_secret_file,
            ca_file,
            scopes,
            username_claim,
            groups_claim,
            group_mapping,
            allowed_clock_skew_secs,
            pending_timeout_secs,
            max_pending,
        } = s;
        let OidcConfig {
            redirect_listen,
            redirect_url,
            callback_cert,
            callback_key,
            issuer: _,
            client_id: _,
            client_secret_file: _,
            ca_file: _,
            scopes: _,
            username_claim: _,
            groups_claim: _,
            group_mapping: _,
            allowed_clock_skew_secs: _,
            pending_timeout_secs: _,
            max_pending: _,
        } = self;
        OidcConfig {
            issuer,
            client_id,
            client_secret_file,
            ca_file,
            scopes,
            username_claim,
            groups_claim,
            group_mapping,
            allowed_clock_skew_secs,
            pending_timeout_secs,
            max_pending,
            redirect_listen,
            redirect_url,
            callback_cert,
            callback_key,
        }
    }
}

#[cfg(test)]
#[path = "shared_login_tests.rs"]
mod tests;
