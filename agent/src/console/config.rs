//! The `[console]` section: where the web console listens, its certificate, how long a login
//! lasts, and the local administrator accounts.
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// `[console]`: absent means no console (the default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// HTTPS listener, e.g. "127.0.0.1:8443". The console speaks HTTPS only.
    pub listen: SocketAddr,
    /// Server certificate chain (PEM) for the console.
    pub tls_cert: PathBuf,
    /// Its private key (PEM).
    pub tls_key: PathBuf,
    /// A login lasts this long; the session ends at it whatever the activity.
    #[serde(default = "default_session_minutes")]
    pub session_minutes: u32,
    /// Failed logins allowed per minute, per account and per source address (0 = no limit).
    #[serde(default = "default_login_failures_per_minute")]
    pub login_failures_per_minute: u32,
    /// Local administrator accounts.
    #[serde(default, rename = "admin")]
    pub admins: Vec<AdminAccount>,
    /// The self-service portal (`/portal`): users sign in with their directory password
    /// (and one-time code) and download their own profile. Needs `"ldap"` in `auth.methods`.
    #[serde(default)]
    pub self_service: bool,
    /// The portal also issues each download a personal client certificate from the built-in
    /// PKI (`[tls] pki_dir`), embedded with its key (not kept on the gateway).
    #[serde(default)]
    pub self_service_issue_certificates: bool,
    /// The most valid (unexpired, unrevoked) client certificates a user may hold for the
    /// portal to issue them another (0 = no limit): each download mints one, and a key
    /// that leaves the gateway is a credential until it is revoked.
    #[serde(default = "default_self_service_max_certificates")]
    pub self_service_max_certificates: u32,
}

/// `[[console.admin]]`: one local administrator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminAccount {
    pub name: String,
    /// An argon2 PHC string, as `portcullis console hash-password` prints it.
    pub password_hash: String,
    #[serde(default)]
    pub role: Role,
    /// Base32 TOTP secret: when set, a login also needs the current one-time code.
    #[serde(default)]
    pub totp_secret: Option<String>,
}

/// What an administrator may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Sees every page; changes nothing.
    #[default]
    ReadOnly,
    /// Also terminates sessions and reloads the policy.
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
        }
    }
}

fn default_session_minutes() -> u32 {
    30
}
fn default_login_failures_per_minute() -> u32 {
    5
}
fn default_self_service_max_certificates() -> u32 {
    3
}

/// What the portal needs from the rest of the endpoint's file.
pub fn portal_problems(cfg: &crate::config::EndpointConfig) -> Vec<ConfigError> {
    let Some(c) = &cfg.console else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if c.self_service && !cfg.auth.uses_directory() {
        out.push(err(
            "console.self_service".into(),
            "the portal signs users in with their directory password, and this endpoint has \
             no directory: add \"ldap\" to auth.methods (and a [directory]), or remove \
             self_service"
                .into(),
        ));
    }
    if c.self_service_issue_certificates {
        let at = "console.self_service_issue_certificates".to_string();
        if !c.self_service {
            out.push(err(
                at.clone(),
                "certificates are issued from the portal: set self_service = true too".into(),
            ));
        }
        if cfg.tls.pki_dir.is_none() {
            out.push(err(
                at.clone(),
                "needs the built-in PKI that issues the certificates: set [tls] pki_dir".into(),
            ));
        }
        if !cfg.auth.methods.iter().any(|m| m == "certificate") {
            out.push(err(
                at,
                "this endpoint does not use client certificates (\"certificate\" is not in \
                 auth.methods): remove the option"
                    .into(),
            ));
        }
    }
    out
}

fn err(path: String, message: String) -> ConfigError {
    ConfigError { path, message }
}

impl ConsoleSection {
    /// Every problem of the section, with its field path and the fix.
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        if !(1..=24 * 60).contains(&self.session_minutes) {
            out.push(err(
                "console.session_minutes".into(),
                format!(
                    "{} is out of range: give 1 to 1440 minutes",
                    self.session_minutes
                ),
            ));
        }
        if self.admins.is_empty() {
            out.push(err(
                "console.admin".into(),
                "the console has no administrator: add a [[console.admin]] with a name and the \
                 password_hash printed by `portcullis console hash-password`"
                    .into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, a) in self.admins.iter().enumerate() {
            let at = format!("console.admin[{i}]");
            if a.name.is_empty() || a.name.len() > 64 || a.name.chars().any(char::is_control) {
                out.push(err(
                    format!("{at}.name"),
                    "give a name of 1 to 64 printable characters".into(),
                ));
            }
            if !seen.insert(a.name.as_str()) {
                out.push(err(
                    format!("{at}.name"),
                    format!("\"{}\" is defined twice: names must be unique", a.name),
                ));
            }
            if argon2::PasswordHash::new(&a.password_hash).is_err()
                || !a.password_hash.starts_with("$argon2")
            {
                out.push(err(
                    format!("{at}.password_hash"),
                    "not an argon2 hash: make one with `portcullis console hash-password`".into(),
                ));
            }
            if let Some(s) = &a.totp_secret {
                if crate::auth::otp::base32_decode(s).is_none_or(|b| b.len() < 10) {
                    out.push(err(
                        format!("{at}.totp_secret"),
                        "not a base32 secret of at least 80 bits (16 characters)".into(),
                    ));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_parses_with_defaults() {
        let c: ConsoleSection = toml::from_str(
            r#"
            listen = "127.0.0.1:8443"
            tls_cert = "console.pem"
            tls_key = "console.key"
            [[admin]]
            name = "ann"
            password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2oP0i4M1HMCF7CZLd2tv7b2Gy7TaOMvyBkBXeIZcg0M"
            role = "operator"
            "#,
        )
        .unwrap();
        assert_eq!((c.session_minutes, c.login_failures_per_minute), (30, 5));
        assert_eq!(c.admins[0].role, Role::Operator);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
    }

    /// The portal's options need a directory, and certificates from the portal need the
    /// built-in PKI and certificate logins.
    #[test]
    fn the_portal_needs_a_directory_and_issuing_needs_the_pki() {
        let file = |auth: &str, pki: &str, portal: &str| {
            crate::config::EndpointConfig::parse(&format!(
                r#"
name = "e"
client_cidr = "10.100.0.0/22"
listen = ["udp://0.0.0.0:1194"]
[tls]
cert = "s.crt"
key = "s.key"
client_ca = "ca.crt"
{pki}
[auth]
methods = {auth}
[console]
listen = "127.0.0.1:8443"
tls_cert = "c"
tls_key = "k"
{portal}
"#
            ))
            .unwrap()
        };
        let problems = |c: &crate::config::EndpointConfig| -> Vec<String> {
            portal_problems(c)
                .into_iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect()
        };
        let ok = file(
            r#"["certificate", "ldap"]"#,
            r#"pki_dir = "pki""#,
            "self_service = true\nself_service_issue_certificates = true",
        );
        assert!(problems(&ok).is_empty(), "{:?}", problems(&ok));
        let p = problems(&file(r#"["certificate"]"#, "", "self_service = true"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("console.self_service: ") && p[0].contains("\"ldap\""));
        let p = problems(&file(
            r#"["ldap"]"#,
            "",
            "self_service_issue_certificates = true",
        ));
        assert_eq!(p.len(), 3, "{p:?}");
        for says in ["self_service = true", "pki_dir", "client certificates"] {
            assert!(p.iter().any(|m| m.contains(says)), "{says}: {p:?}");
        }
    }

    #[test]
    fn problems_name_the_field_and_the_fix() {
        let c: ConsoleSection = toml::from_str(
            r#"
            listen = "127.0.0.1:8443"
            tls_cert = "c"
            tls_key = "k"
            session_minutes = 0
            [[admin]]
            name = "ann"
            password_hash = "hunter2"
            totp_secret = "not base32!"
            [[admin]]
            name = "ann"
            password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2oP0i4M1HMCF7CZLd2tv7b2Gy7TaOMvyBkBXeIZcg0M"
            "#,
        )
        .unwrap();
        let paths: Vec<String> = c.problems().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "console.session_minutes",
                "console.admin[0].password_hash",
                "console.admin[0].totp_secret",
                "console.admin[1].name",
            ]
        );
        assert!(c.problems()[1].message.contains("hash-password"));
        let none: ConsoleSection =
            toml::from_str("listen = \"127.0.0.1:1\"\ntls_cert = \"c\"\ntls_key = \"k\"").unwrap();
        assert_eq!(none.problems()[0].path, "console.admin");
        assert!(toml::from_str::<ConsoleSection>(
            "listen = \"127.0.0.1:1\"\ntls_cert = \"c\"\ntls_key = \"k\"\nport = 1"
        )
        .is_err());
    }
}
