//! The `[oidc]` section (single sign-on through an OpenID Connect provider, `"oidc"` in
//! `auth.methods`) and its validation; what uses it is `auth::oidc`.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::errors::err;
use super::ConfigError;

/// The `[oidc]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL (`https://…`); its discovery document is
    /// `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret (first line); absent: a public client (PKCE only).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// PEM CA bundle that issued the provider's certificate (default: the web roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Scopes asked for besides `openid` (which is always asked).
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID-token claim that names the user (default `preferred_username`; `sub` if absent).
    #[serde(default = "default_username_claim")]
    pub username_claim: String,
    /// The ID-token claim holding the user's groups (a list of strings, or one string).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim value -> rule group. Empty: the claim's values are the groups. Otherwise only
    /// mapped values grant groups (as AWS maps SAML group attributes).
    #[serde(default)]
    pub group_mapping: BTreeMap<String, String>,
    /// The callback listener (HTTPS, the endpoint's server certificate unless
    /// `callback_cert`/`callback_key` are set).
    pub redirect_listen: SocketAddr,
    /// The callback URL as the browser reaches it (registered at the provider), ending in
    /// `/callback`, e.g. `https://vpn.example.com:8443/callback`.
    pub redirect_url: String,
    #[serde(default)]
    pub callback_cert: Option<PathBuf>,
    #[serde(default)]
    pub callback_key: Option<PathBuf>,
    /// Clock difference tolerated on the ID token's times.
    #[serde(default = "default_skew")]
    pub allowed_clock_skew_secs: u64,
    /// How long a session waits for the web login (`AUTH_PENDING,timeout N`).
    #[serde(default = "default_pending_timeout")]
    pub pending_timeout_secs: u64,
    /// Web logins waiting at once; more are refused for now (each holds a thread).
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_scopes() -> Vec<String> {
    vec!["profile".into(), "email".into()]
}
fn default_username_claim() -> String {
    "preferred_username".into()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_skew() -> u64 {
    60
}
fn default_pending_timeout() -> u64 {
    120
}
fn default_max_pending() -> usize {
    256
}

/// The longest wait the 2.6 server allows too (half of its default 3600 s renegotiation).
pub const MAX_PENDING_TIMEOUT_SECS: u64 = 1800;

impl OidcConfig {
    /// Every problem, with its field path (`oidc.*`) and the fix.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let https = |u: &str| u.starts_with("https://") && u.len() > "https://".len();
        if !https(&self.issuer) {
            errs.push(err(
                "oidc.issuer",
                format!(
                    "`{}` is not an https:// URL: write the provider's issuer, e.g. `https://login.example.com/realms/corp`",
                    self.issuer
                ),
            ));
        }
        if self.client_id.is_empty() {
            errs.push(err(
                "oidc.client_id",
                "empty: the client id registered at the provider",
            ));
        }
        if let Some(f) = &self.client_secret_file {
            match std::fs::read_to_string(f) {
                Err(e) => errs.push(err(
                    "oidc.client_secret_file",
                    format!("cannot read {}: {e}", f.display()),
                )),
                Ok(s) if s.lines().next().unwrap_or("").trim().is_empty() => errs.push(err(
                    "oidc.client_secret_file",
                    format!("{}: the first line (the secret) is empty", f.display()),
                )),
                Ok(_) => {}
            }
        }
        if let Some(ca) = &self.ca_file {
            match std::fs::read(ca) {
                Err(e) => errs.push(err(
                    "oidc.ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                )),
                Ok(pem) if !String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE") => errs
                    .push(err(
                        "oidc.ca_file",
                        format!("{} holds no PEM CERTIFICATE", ca.display()),
                    )),
                Ok(_) => {}
            }
        }
        for (i, s) in self.scopes.iter().enumerate() {
            if s.is_empty() || s.contains(char::is_whitespace) {
                errs.push(err(
                    format!("oidc.scopes[{i}]"),
                    "one scope per entry, without spaces",
                ));
            }
        }
        if self.groups_claim.is_empty() {
            errs.push(err(
                "oidc.groups_claim",
                "empty: the ID-token claim holding the groups, e.g. \"groups\"",
            ));
        }
        if self.username_claim.is_empty() {
            errs.push(err(
                "oidc.username_claim",
                "empty: e.g. \"preferred_username\", \"email\" or \"sub\"",
            ));
        }
        for (k, v) in &self.group_mapping {
            if k.is_empty() || v.is_empty() {
                errs.push(err(
                    format!("oidc.group_mapping.{k:?}"),
                    "claim value and rule group must both be non-empty",
                ));
            }
        }
        if !https(&self.redirect_url) || !self.redirect_url.ends_with("/callback") {
            errs.push(err(
                "oidc.redirect_url",
                format!(
                    "`{}`: the public https:// URL of the callback listener, ending in /callback (e.g. `https://vpn.example.com:{}/callback`), registered at the provider",
                    self.redirect_url,
                    self.redirect_listen.port()
                ),
            ));
        }
        match (&self.callback_cert, &self.callback_key) {
            (Some(_), None) | (None, Some(_)) => errs.push(err(
                "oidc.callback_cert",
                "set both callback_cert and callback_key, or neither (the endpoint's tls.cert is used)",
            )),
            _ => {}
        }
        for (path, f) in [
            ("oidc.callback_cert", &self.callback_cert),
            ("oidc.callback_key", &self.callback_key),
        ] {
            if let Some(f) = f {
                if let Err(e) = std::fs::File::open(f) {
                    errs.push(err(path, format!("cannot read {}: {e}", f.display())));
                }
            }
        }
        if self.allowed_clock_skew_secs > 600 {
            errs.push(err(
                "oidc.allowed_clock_skew_secs",
                "at most 600: fix the clocks (NTP) rather than accept old tokens",
            ));
        }
        if !(10..=MAX_PENDING_TIMEOUT_SECS).contains(&self.pending_timeout_secs) {
            errs.push(err(
                "oidc.pending_timeout_secs",
                format!("must be 10 ... {MAX_PENDING_TIMEOUT_SECS} (seconds a user has to log in)"),
            ));
        }
        if self.max_pending == 0 {
            errs.push(err("oidc.max_pending", "must be at least 1"));
        }
        errs
    }

    pub(super) fn resolve_paths(&mut self, fix: &dyn Fn(&mut PathBuf)) {
        for p in [
            &mut self.client_secret_file,
            &mut self.ca_file,
            &mut self.callback_cert,
            &mut self.callback_key,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }
}

impl super::EndpointConfig {
    /// `"oidc"` in `auth.methods` against the `[oidc]` section and the other methods.
    pub(super) fn validate_oidc(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        match (self.auth.uses_oidc(), &self.oidc) {
            (true, None) => errs.push(err(
                "oidc",
                "auth.methods has \"oidc\" but there is no [oidc] section: add one (issuer, client_id, redirect_listen, redirect_url, ...)",
            )),
            (false, Some(_)) => errs.push(err(
                "auth.methods",
                "an [oidc] section is set but not used: add \"oidc\" to auth.methods or remove [oidc]",
            )),
            (true, Some(o)) => errs.extend(o.validate()),
            (false, None) => {}
        }
        if self.auth.uses_oidc() && self.auth.uses_directory() {
            errs.push(err(
                "auth.methods",
                "\"oidc\" and \"ldap\" together: the web login replaces the directory password; use [\"oidc\"] or [\"certificate\", \"oidc\"] (connect the provider to the directory instead)",
            ));
        }
        if self.auth.uses_oidc() && self.auth.static_challenge.is_some() {
            errs.push(err(
                "auth.static_challenge",
                "not used with \"oidc\": the provider asks for the second factor during the web login",
            ));
        }
        errs
    }
}

#[cfg(test)]
#[path = "oidc_tests.rs"]
mod tests;
