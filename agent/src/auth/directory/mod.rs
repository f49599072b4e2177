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
use std::collections::{BTreeSet, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{LdapConn, LdapConnSettings, LdapError, Scope, SearchEntry};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::openvpn::session::{FailureCode, Refusal};

/// Active Directory's LDAP_MATCHING_RULE_IN_CHAIN: transitive membership in one filter.
const AD_IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// LDAP result code invalidCredentials (RFC 4511 A.1).
const RC_INVALID_CREDENTIALS: u32 = 49;
/// AD's userAccountControl ACCOUNTDISABLE bit.
const UAC_ACCOUNT_DISABLE: u64 = 0x2;
/// `pwdAccountLockedTime` of an account locked until an administrator unlocks it
/// (draft-behera-ldap-password-policy 5.3.3).
const PPOLICY_LOCKED_FOR_GOOD: &str = "000001010000Z";
/// Upper bound on group entries visited while resolving nested groups, whatever the cap.
const MAX_GROUPS_VISITED: usize = 2000;

/// The `[directory]` section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `ldap://HOST:PORT` or `ldaps://HOST:PORT`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before anything is sent.
    #[serde(default)]
    pub starttls: bool,
    /// PEM CA bundle that issued the directory's certificate (ldaps / StartTLS).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    /// Per LDAP operation (bind, one search).
    #[serde(default = "default_op_timeout")]
    pub timeout_secs: u64,
    /// Service connections kept open between logins.
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    /// Service account that searches for users (and groups). Without it, `user_dn_template`
    /// is used and the lookups run with the user's own bind.
    #[serde(default)]
    pub bind_dn: Option<String>,
    /// File holding the service account's password (first line).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Direct bind: e.g. `uid={username},ou=people,dc=example,dc=org`.
    #[serde(default)]
    pub user_dn_template: Option<String>,
    #[serde(default)]
    pub user_base: Option<String>,
    /// `{username}` is replaced by the escaped user name. AD: `(sAMAccountName={username})`.
    #[serde(default = "default_user_filter")]
    pub user_filter: String,
    /// Where groups come from: "member-of" (an attribute of the user) or "search".
    #[serde(default)]
    pub group_source: GroupSource,
    #[serde(default = "default_member_of")]
    pub member_of_attribute: String,
    #[serde(default)]
    pub group_base: Option<String>,
    /// `{dn}` is the escaped member DN, `{username}` the escaped user name.
    #[serde(default = "default_group_filter")]
    pub group_filter: String,
    #[serde(default)]
    pub nested: Nested,
    #[serde(default = "default_nested_depth")]
    pub nested_depth: usize,
    /// How rules name groups: "name" (`group_name_attribute`), "dn" or "sid" (`objectSid`).
    #[serde(default)]
    pub group_id: GroupId,
    #[serde(default = "default_group_name_attribute")]
    pub group_name_attribute: String,
    /// Groups kept per user (AWS: 200); the rest are dropped (and logged).
    #[serde(default = "default_max_groups")]
    pub max_groups: usize,
    /// Re-read each connected user's groups this often (0 = never); a user who lost every
    /// rule group, was disabled or removed is disconnected.
    #[serde(default)]
    pub recheck_interval_secs: u64,
    /// Attribute holding each user's base32 TOTP secret, for `auth.static_challenge`.
    #[serde(default)]
    pub totp_secret_attribute: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupSource {
    #[default]
    MemberOf,
    Search,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nested {
    #[default]
    None,
    /// Walk groups of groups from the client (any directory).
    Recursive,
    /// One search with AD's in-chain matching rule (Active Directory only).
    AdInChain,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupId {
    #[default]
    Name,
    Dn,
    Sid,
}

fn default_connect_timeout() -> u64 {
    5
}
fn default_op_timeout() -> u64 {
    10
}
fn default_pool() -> usize {
    4
}
fn default_user_filter() -> String {
    "(uid={username})".into()
}
fn default_member_of() -> String {
    "memberOf".into()
}
fn default_group_filter() -> String {
    "(|(member={dn})(uniqueMember={dn}))".into()
}
fn default_nested_depth() -> usize {
    8
}
fn default_group_name_attribute() -> String {
    "cn".into()
}
fn default_max_groups() -> usize {
    200
}

fn err(path: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

impl DirectoryConfig {
    /// Every problem, with its field path (`directory.*`) and the fix.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let ldaps = self.url.starts_with("ldaps://");
        if !(ldaps || self.url.starts_with("ldap://")) {
            errs.push(err(
                "directory.url",
                format!(
                    "`{}` is not an LDAP URL: write `ldap://HOST:389` or `ldaps://HOST:636`",
                    self.url
                ),
            ));
        }
        if ldaps && self.starttls {
            errs.push(err(
                "directory.starttls",
                "ldaps:// is already TLS: remove `starttls` or use an ldap:// URL",
            ));
        }
        if let Some(ca) = &self.ca_file {
            match std::fs::read(ca) {
                Err(e) => errs.push(err(
                    "directory.ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                )),
                Ok(pem) => {
                    if load_roots(&pem).is_none_or(|r| r.is_empty()) {
                        errs.push(err(
                            "directory.ca_file",
                            format!("{} holds no PEM CERTIFICATE", ca.display()),
                        ));
                    }
                }
            }
        }
        if self.connect_timeout_secs == 0 || self.connect_timeout_secs > 60 {
            errs.push(err("directory.connect_timeout_secs", "use 1 ... 60"));
        }
        if self.timeout_secs == 0 || self.timeout_secs > 120 {
            errs.push(err("directory.timeout_secs", "use 1 ... 120"));
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            errs.push(err("directory.pool_size", "use 1 ... 64"));
        }
        match (&self.bind_dn, &self.bind_password_file) {
            (Some(_), None) => errs.push(err(
                "directory.bind_password_file",
                "bind_dn needs its password: add `bind_password_file = \"FILE\"`",
            )),
            (None, Some(_)) => errs.push(err(
                "directory.bind_dn",
                "bind_password_file without bind_dn: add the service account's DN",
            )),
            (Some(_), Some(p)) => {
                if let Err(e) = std::fs::read_to_string(p) {
                    errs.push(err(
                        "directory.bind_password_file",
                        format!("cannot read {}: {e}", p.display()),
                    ));
                }
            }
            (None, None) => {}
        }
        match (&self.bind_dn, &self.user_dn_template, &self.user_base) {
            (None, None, _) => errs.push(err(
                "directory",
                "no way to find users: set `bind_dn` + `user_base` (search) or `user_dn_template` (direct bind)",
            )),
            (Some(_), None, None) => errs.push(err(
                "directory.user_base",
                "searching users needs a base: add e.g. `user_base = \"ou=people,dc=example,dc=org\"`",
            )),
            _ => {}
        }
        if let Some(t) = &self.user_dn_template {
            if !t.contains("{username}") {
                errs.push(err(
                    "directory.user_dn_template",
                    "must contain `{username}`, e.g. `uid={username},ou=people,dc=example,dc=org`",
                ));
            }
        }
        if !self.user_filter.contains("{username}") || !balanced(&self.user_filter) {
            errs.push(err(
                "directory.user_filter",
                "must be a parenthesised LDAP filter with `{username}`, e.g. `(uid={username})`",
            ));
        }
        let needs_group_base =
            self.group_source == GroupSource::Search || self.nested == Nested::AdInChain;
        if needs_group_base && self.group_base.is_none() {
            errs.push(err(
                "directory.group_base",
                "group_source = \"search\" and nested = \"ad-in-chain\" need a base: add e.g. `group_base = \"ou=groups,dc=example,dc=org\"`",
            ));
        }
        if self.group_source == GroupSource::Search
            && (!self.group_filter.contains("{dn}") && !self.group_filter.contains("{username}")
                || !balanced(&self.group_filter))
        {
            errs.push(err(
                "directory.group_filter",
                "must be a parenthesised LDAP filter with `{dn}` or `{username}`, e.g. `(member={dn})`",
            ));
        }
        if self.nested_depth == 0 || self.nested_depth > 32 {
            errs.push(err("directory.nested_depth", "use 1 ... 32"));
        }
        if self.max_groups == 0 || self.max_groups > 1000 {
            errs.push(err(
                "directory.max_groups",
                "use 1 ... 1000 (AWS allows 200 groups per user)",
            ));
        }
        if self.recheck_interval_secs > 0 && self.bind_dn.is_none() {
            errs.push(err(
                "directory.recheck_interval_secs",
                "re-checking groups of connected users needs a service account: set `bind_dn` or use 0",
            ));
        }
        errs
    }
}

fn balanced(filter: &str) -> bool {
    let mut depth = 0i32;
    for c in filter.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0 && filter.starts_with('(')
}

fn load_roots(pem: &[u8]) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
}

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

    fn op_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.timeout_secs)
    }

    fn connect(&self) -> Result<LdapConn, DirError> {
        let mut s = LdapConnSettings::new()
            .set_conn_timeout(Duration::from_secs(self.cfg.connect_timeout_secs))
            .set_starttls(self.cfg.starttls);
        if let Some(t) = &self.tls {
            s = s.set_config(t.clone());
        }
        LdapConn::with_settings(s, &self.cfg.url).map_err(unavailable)
    }

    /// A bound service connection from the pool, or a new one.
    fn service(&self) -> Result<LdapConn, DirError> {
        if let Some(c) = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        self.new_service()
    }

    /// A new bound service connection (never one from the pool).
    fn new_service(&self) -> Result<LdapConn, DirError> {
        let mut c = self.connect()?;
        if let (Some(dn), Some(pw)) = (&self.cfg.bind_dn, &self.bind_password) {
            let t = self.op_timeout();
            let r = c.with_timeout(t).simple_bind(dn, pw).map_err(unavailable)?;
            if r.rc != 0 {
                return Err(DirError::Unavailable(format!(
                    "service account bind refused (result {}: {})",
                    r.rc, r.text
                )));
            }
        }
        Ok(c)
    }

    /// Service connections waiting in the pool.
    pub fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn give_back(&self, c: LdapConn) {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < self.cfg.pool_size {
            p.push(c);
        }
    }

    /// Runs `f` on a service connection. After a connection-level failure the whole pool is
    /// dropped (a directory restart cut every pooled connection, not just this one) and `f`
    /// is tried once more on a new connection.
    fn with_service<T>(
        &self,
        f: impl Fn(&Self, &mut LdapConn) -> Result<T, DirError>,
    ) -> Result<T, DirError> {
        let mut last = None;
        for attempt in 0..2 {
            let mut c = if attempt == 0 {
                self.service()?
            } else {
                self.new_service()?
            };
            match f(self, &mut c) {
                Ok(v) => {
                    self.give_back(c);
                    return Ok(v);
                }
                Err(e @ DirError::Unavailable(_)) => {
                    let stale =
                        std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
                    drop(stale);
                    last = Some(e);
                }
                Err(e) => {
                    self.give_back(c);
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| DirError::Unavailable("no connection".into())))
    }

    fn search(
        &self,
        c: &mut LdapConn,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> Result<Vec<SearchEntry>, DirError> {
        let r = c
            .with_timeout(self.op_timeout())
            .search(base, scope, filter, attrs.to_vec())
            .map_err(unavailable)?;
        // noSuchObject (32) is an empty answer, not an outage.
        if r.1.rc == 32 {
            return Ok(Vec::new());
        }
        if r.1.rc != 0 {
            return Err(DirError::Protocol(format!(
                "search {filter} under {base}: result {} {}",
                r.1.rc, r.1.text
            )));
        }
        // Active Directory answers searches at a domain root with continuation references
        // (DomainDnsZones, Configuration, ...). ldap3's search already leaves them out (its
        // EntriesOnly adapter); the filter keeps SearchEntry::construct, which panics on
        // them, safe should that change.
        Ok(r.0
            .into_iter()
            .filter(|e| !e.is_ref() && !e.is_intermediate())
            .map(SearchEntry::construct)
            .collect())
    }

    fn user_attrs(&self) -> Vec<&str> {
        let mut a = vec![
            "userAccountControl",
            "pwdAccountLockedTime",
            "nsAccountLock",
        ];
        if self.cfg.group_source == GroupSource::MemberOf {
            a.push(self.cfg.member_of_attribute.as_str());
        }
        if let Some(t) = &self.cfg.totp_secret_attribute {
            a.push(t.as_str());
        }
        a
    }

    /// Checks `username`/`password` and returns the user's groups.
    pub fn authenticate(&self, username: &str, password: &str) -> Result<DirUser, DirError> {
        self.authenticate_checked(username, password, |_| true)
    }

    /// [`Directory::authenticate`], asking `admit` with the user's DN once it is known and
    /// before the password is checked; `false` ends the login there with an error (the
    /// caller knows why).
    pub fn authenticate_checked(
        &self,
        username: &str,
        password: &str,
        admit: impl FnOnce(&str) -> bool,
    ) -> Result<DirUser, DirError> {
        // An empty password is an anonymous bind, which most directories accept (RFC 4513
        // 5.1.2): never let it through as a login.
        if username.is_empty() || password.is_empty() {
            return Err(DirError::Missing);
        }
        if username.len() > 256 || username.chars().any(char::is_control) {
            return Err(DirError::UnknownUser);
        }
        if self.cfg.bind_dn.is_some() {
            let entry = self.with_service(|d, c| d.find_user(c, username))?;
            if !admit(&entry.dn) {
                return Err(DirError::Protocol("login not admitted".into()));
            }
            let mut uc = self.connect()?;
            self.bind_user(&mut uc, &entry.dn, password)?;
            let _ = uc.unbind();
            check_enabled(&entry)?;
            let groups = self.with_service(|d, c| d.groups_of(c, &entry, username))?;
            Ok(DirUser {
                totp_secret: self.totp_secret(&entry),
                dn: entry.dn,
                groups,
            })
        } else {
            // Direct bind: the user's own connection reads its entry and groups.
            let template = self.cfg.user_dn_template.as_deref().unwrap_or_default();
            let dn = template.replace("{username}", &ldap3::dn_escape(username));
            if !admit(&dn) {
                return Err(DirError::Protocol("login not admitted".into()));
            }
            let mut uc = self.connect()?;
            self.bind_user(&mut uc, &dn, password)?;
            let entries = self.search(
                &mut uc,
                &dn,
                Scope::Base,
                "(objectClass=*)",
                &self.user_attrs(),
            )?;
            let entry = entries.into_iter().next().ok_or(DirError::UnknownUser)?;
            check_enabled(&entry)?;
            let groups = self.groups_of(&mut uc, &entry, username);
            let _ = uc.unbind();
            Ok(DirUser {
                totp_secret: self.totp_secret(&entry),
                dn: entry.dn,
                groups: groups?,
            })
        }
    }

    /// The current groups of a connected user (periodic re-check): `Err(UnknownUser)` or
    /// `Err(Disabled)` when the account is gone or disabled. Needs a service account.
    pub fn refresh(&self, username: &str) -> Result<DirUser, DirError> {
        if self.cfg.bind_dn.is_none() {
            return Err(DirError::Protocol(
                "re-checking groups needs a service account (bind_dn)".into(),
            ));
        }
        self.with_service(|d, c| {
            let entry = d.find_user(c, username)?;
            check_enabled(&entry)?;
            let groups = d.groups_of(c, &entry, username)?;
            Ok(DirUser {
                totp_secret: None,
                dn: entry.dn,
                groups,
            })
        })
    }

    fn totp_secret(&self, e: &SearchEntry) -> Option<String> {
        let a = self.cfg.totp_secret_attribute.as_deref()?;
        attr(e, a).into_iter().next()
    }

    fn find_user(&self, c: &mut LdapConn, username: &str) -> Result<SearchEntry, DirError> {
        let base = self.cfg.user_base.as_deref().unwrap_or_default();
        let filter = self
            .cfg
            .user_filter
            .replace("{username}", &ldap3::ldap_escape(username));
        let mut found = self.search(c, base, Scope::Subtree, &filter, &self.user_attrs())?;
        match found.len() {
            0 => Err(DirError::UnknownUser),
            1 => Ok(found.remove(0)),
            n => Err(DirError::Protocol(format!(
                "{n} entries match {filter}: make user_filter unique"
            ))),
        }
    }

    fn bind_user(&self, c: &mut LdapConn, dn: &str, password: &str) -> Result<(), DirError> {
        let r = c
            .with_timeout(self.op_timeout())
            .simple_bind(dn, password)
            .map_err(unavailable)?;
        match r.rc {
            0 => Ok(()),
            // With a direct bind this also covers an unknown DN: the directory does not say.
            RC_INVALID_CREDENTIALS => Err(DirError::InvalidCredentials),
            // unwillingToPerform / inappropriateAuthentication: disabled or locked accounts.
            48 | 53 => Err(DirError::Disabled),
            rc => Err(DirError::Protocol(format!("bind result {rc}: {}", r.text))),
        }
    }

    /// The user's group identifiers (sorted, capped).
    fn groups_of(
        &self,
        c: &mut LdapConn,
        user: &SearchEntry,
        username: &str,
    ) -> Result<Vec<String>, DirError> {
        let cfg = &self.cfg;
        let group_base = cfg.group_base.as_deref().unwrap_or_default();
        // Group DNs, in discovery order; entries we already read (for names and SIDs).
        let mut dns: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut entries: std::collections::HashMap<String, SearchEntry> = Default::default();
        let id_attrs = self.id_attrs();
        let mut push = |dn: String, dns: &mut Vec<String>| {
            if seen.insert(dn.to_ascii_lowercase()) {
                dns.push(dn);
                true
            } else {
                false
            }
        };
        if cfg.nested == Nested::AdInChain {
            let filter = format!(
                "(member:{AD_IN_CHAIN}:={})",
                ldap3::ldap_escape(user.dn.as_str())
            );
            for e in self.search(c, group_base, Scope::Subtree, &filter, &id_attrs)? {
                push(e.dn.clone(), &mut dns);
                entries.insert(e.dn.to_ascii_lowercase(), e);
            }
        } else {
            // Direct groups first.
            let direct: Vec<String> = match cfg.group_source {
                GroupSource::MemberOf => attr(user, &cfg.member_of_attribute),
                GroupSource::Search => {
                    let filter = self.group_filter(&user.dn, username);
                    let found = self.search(c, group_base, Scope::Subtree, &filter, &id_attrs)?;
                    let mut v = Vec::new();
                    for e in found {
                        v.push(e.dn.clone());
                        entries.insert(e.dn.to_ascii_lowercase(), e);
                    }
                    v
                }
            };
            let mut queue: VecDeque<(String, usize)> = VecDeque::new();
            for dn in direct {
                if push(dn.clone(), &mut dns) {
                    queue.push_back((dn, 1));
                }
            }
            if cfg.nested == Nested::Recursive {
                // Breadth first, bounded in depth and in entries read; `seen` breaks cycles.
                while let Some((dn, depth)) = queue.pop_front() {
                    if depth >= cfg.nested_depth || dns.len() >= MAX_GROUPS_VISITED {
                        continue;
                    }
                    let parents: Vec<String> = match cfg.group_source {
                        GroupSource::MemberOf => {
                            let mut want = id_attrs.clone();
                            want.push(cfg.member_of_attribute.as_str());
                            let e = self.search(c, &dn, Scope::Base, "(objectClass=*)", &want)?;
                            let Some(e) = e.into_iter().next() else {
                                continue;
                            };
                            let p = attr(&e, &cfg.member_of_attribute);
                            entries.insert(e.dn.to_ascii_lowercase(), e);
                            p
                        }
                        GroupSource::Search => {
                            let filter = self.group_filter(&dn, username);
                            let found =
                                self.search(c, group_base, Scope::Subtree, &filter, &id_attrs)?;
                            let mut v = Vec::new();
                            for e in found {
                                v.push(e.dn.clone());
                                entries.insert(e.dn.to_ascii_lowercase(), e);
                            }
                            v
                        }
                    };
                    for p in parents {
                        if push(p.clone(), &mut dns) {
                            queue.push_back((p, depth + 1));
                        }
                    }
                }
            }
        }
        let mut ids = BTreeSet::new();
        for dn in &dns {
            let id = match cfg.group_id {
                GroupId::Dn => Some(dn.clone()),
                GroupId::Name | GroupId::Sid => {
                    let key = dn.to_ascii_lowercase();
                    if !entries.contains_key(&key) {
                        let found =
                            self.search(c, dn, Scope::Base, "(objectClass=*)", &id_attrs)?;
                        if let Some(e) = found.into_iter().next() {
                            entries.insert(key.clone(), e);
                        }
                    }
                    entries.get(&key).and_then(|e| self.group_ident(e))
                }
            };
            if let Some(id) = id {
                ids.insert(id);
            }
        }
        let mut ids: Vec<String> = ids.into_iter().collect();
        if ids.len() > cfg.max_groups {
            tracing::warn!(
                user = username,
                groups = ids.len(),
                kept = cfg.max_groups,
                "user is in more groups than directory.max_groups: the rest are ignored"
            );
            ids.truncate(cfg.max_groups);
        }
        Ok(ids)
    }

    fn group_filter(&self, dn: &str, username: &str) -> String {
        self.cfg
            .group_filter
            .replace("{dn}", &ldap3::ldap_escape(dn))
            .replace("{username}", &ldap3::ldap_escape(username))
    }

    fn id_attrs(&self) -> Vec<&str> {
        match self.cfg.group_id {
            GroupId::Dn => vec!["1.1"],
            GroupId::Name => vec![self.cfg.group_name_attribute.as_str()],
            GroupId::Sid => vec!["objectSid"],
        }
    }

    fn group_ident(&self, e: &SearchEntry) -> Option<String> {
        match self.cfg.group_id {
            GroupId::Dn => Some(e.dn.clone()),
            GroupId::Name => attr(e, &self.cfg.group_name_attribute).into_iter().next(),
            GroupId::Sid => sid_of(e),
        }
    }
}

/// Values of an attribute, matched case-insensitively (servers echo their own spelling).
fn attr(e: &SearchEntry, name: &str) -> Vec<String> {
    e.attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

fn check_enabled(e: &SearchEntry) -> Result<(), DirError> {
    let uac = attr(e, "userAccountControl")
        .first()
        .and_then(|v| v.trim().parse::<i64>().ok());
    if uac.is_some_and(|v| (v as u64) & UAC_ACCOUNT_DISABLE != 0) {
        return Err(DirError::Disabled);
    }
    // OpenLDAP ppolicy: only 000001010000Z locks for good (until an administrator unlocks);
    // any other time is a lockout that may have expired (pwdLockoutDuration), which the
    // server decides at the bind (refused with invalidCredentials or unwillingToPerform).
    // 389-DS/FreeIPA lock.
    if attr(e, "pwdAccountLockedTime")
        .iter()
        .any(|v| v.trim() == PPOLICY_LOCKED_FOR_GOOD)
        || attr(e, "nsAccountLock")
            .first()
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(DirError::Disabled);
    }
    Ok(())
}

/// `objectSid` as `S-1-5-21-…`: AD sends it binary; a textual value is taken as it is.
fn sid_of(e: &SearchEntry) -> Option<String> {
    if let Some(b) = e
        .bin_attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("objectSid"))
        .and_then(|(_, v)| v.first())
    {
        return sid_to_string(b);
    }
    // ldap3 files values that happen to be valid UTF-8 under text attributes, binary or not.
    let v = attr(e, "objectSid").into_iter().next()?;
    if v.starts_with("S-") {
        Some(v)
    } else {
        sid_to_string(v.as_bytes())
    }
}

/// MS-DTYP 2.4.2.2: revision, sub-authority count, 48-bit big-endian authority, then
/// little-endian 32-bit sub-authorities.
pub fn sid_to_string(b: &[u8]) -> Option<String> {
    if b.len() < 8 || b[0] != 1 {
        return None;
    }
    let n = usize::from(b[1]);
    if b.len() != 8 + 4 * n {
        return None;
    }
    let authority = b[2..8].iter().fold(0u64, |a, &x| (a << 8) | u64::from(x));
    let mut s = format!("S-1-{authority}");
    for i in 0..n {
        let o = 8 + 4 * i;
        let v = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        s.push_str(&format!("-{v}"));
    }
    Some(s)
}

/// The inverse of [`sid_to_string`] (fixtures and tests write binary SIDs with it).
pub fn sid_from_string(s: &str) -> Option<Vec<u8>> {
    let mut parts = s.strip_prefix("S-1-")?.split('-');
    let authority: u64 = parts.next()?.parse().ok()?;
    if authority >= 1 << 48 {
        return None;
    }
    let subs: Vec<u32> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if subs.len() > 15 {
        return None;
    }
    let mut b = vec![1, subs.len() as u8];
    b.extend_from_slice(&authority.to_be_bytes()[2..]);
    for v in subs {
        b.extend_from_slice(&v.to_le_bytes());
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DirectoryConfig {
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
    fn sid_round_trip() {
        // A well-known AD domain SID layout.
        let s = "S-1-5-21-3623811015-3361044348-30300820-1013";
        let b = sid_from_string(s).unwrap();
        assert_eq!(b.len(), 8 + 4 * 5);
        assert_eq!(&b[..8], &[1, 5, 0, 0, 0, 0, 0, 5]);
        assert_eq!(sid_to_string(&b).as_deref(), Some(s));
        assert_eq!(sid_to_string(&b[..b.len() - 1]), None);
        assert_eq!(sid_from_string("S-2-5"), None);
        assert_eq!(sid_from_string("S-1-5-x"), None);
    }

    #[test]
    fn defaults_validate() {
        assert_eq!(cfg().validate(), vec![]);
        let c = cfg();
        assert_eq!(c.max_groups, 200);
        assert_eq!(c.group_source, GroupSource::MemberOf);
    }

    #[test]
    fn validation_names_every_field() {
        let mut c = cfg();
        c.url = "http://x".into();
        c.bind_password_file = None;
        c.user_filter = "uid=x".into();
        c.group_source = GroupSource::Search;
        c.max_groups = 0;
        let paths: Vec<String> = c.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "directory.url",
                "directory.bind_password_file",
                "directory.user_filter",
                "directory.group_base",
                "directory.max_groups",
            ]
        );
        let mut c = cfg();
        c.bind_dn = None;
        c.bind_password_file = None;
        let e = c.validate();
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("user_dn_template"), "{e:?}");
        c.user_dn_template = Some("uid=x,dc=org".into());
        assert_eq!(c.validate()[0].path, "directory.user_dn_template");
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
    fn only_a_permanent_ppolicy_lock_is_disabled() {
        let entry = |attrs: &[(&str, &str)]| SearchEntry {
            dn: "uid=alice,dc=x".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            bin_attrs: Default::default(),
        };
        assert_eq!(check_enabled(&entry(&[])), Ok(()));
        // A lockout with a time may have expired: the bind decides.
        assert_eq!(
            check_enabled(&entry(&[("pwdAccountLockedTime", "20260101120000Z")])),
            Ok(())
        );
        assert_eq!(
            check_enabled(&entry(&[("pwdAccountLockedTime", "000001010000Z")])),
            Err(DirError::Disabled)
        );
        assert_eq!(
            check_enabled(&entry(&[("nsAccountLock", "TRUE")])),
            Err(DirError::Disabled)
        );
        assert_eq!(
            check_enabled(&entry(&[("userAccountControl", "514")])),
            Err(DirError::Disabled)
        );
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
