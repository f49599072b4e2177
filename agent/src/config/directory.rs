//! The `[directory]` section (LDAP / Active Directory) and its validation; the client that
//! uses it is `auth::directory`.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

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

pub(crate) fn load_roots(pem: &[u8]) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
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
}
