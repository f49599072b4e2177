//! The `[fleet]` section: how this gateway reaches etcd and names itself in the fleet.
//!
//! Without the section the gateway is standalone (the file is the whole truth, no etcd). The
//! section belongs to the host: it is never published to etcd (each gateway has its own id and
//! its own client certificate).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::errors::{err, ConfigError};

/// Bounds of `lease_ttl_secs`: below 3 s a busy etcd or a GC pause expires a live gateway's
/// lease (its sessions and address blocks would be dropped); above 300 s a dead gateway's
/// addresses and registry entries linger for minutes.
pub const LEASE_TTL_SECS: std::ops::RangeInclusive<u64> = 3..=300;
/// Bounds of `registry_refresh_secs`: the registry's counters are at most a minute old.
pub const REGISTRY_REFRESH_SECS: std::ops::RangeInclusive<u64> = 1..=60;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// etcd client URLs, `https://HOST:PORT` (or `http://` for a lab without TLS); several
    /// members of one cluster, the client fails over between them.
    pub endpoints: Vec<String>,
    /// This gateway's name in the fleet: unique per gateway, it names the gateway's keys.
    pub gateway_id: String,
    /// The TTL of this gateway's etcd lease: its sessions and address blocks outlive a crash
    /// by at most this long.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
    /// How often a session's counters are rewritten in the registry (when they changed):
    /// one put per session per interval.
    #[serde(default = "default_registry_refresh")]
    pub registry_refresh_secs: u64,
    /// The most connections one user (directory user, else certificate name) may hold
    /// across the fleet, checked atomically in etcd; none: no cap.
    #[serde(default)]
    pub max_connections_per_user: Option<u32>,
    /// The most connections the endpoint admits across the fleet (every gateway together),
    /// checked atomically in etcd like the per-user cap; none: only each gateway's own
    /// `max_connections`.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// CA bundle (PEM) that issued the etcd servers' certificates (required with https://).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's `--client-cert-auth`; both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_lease_ttl() -> u64 {
    10
}

fn default_registry_refresh() -> u64 {
    60
}

impl FleetSection {
    /// True when the endpoints are reached over TLS.
    pub fn uses_tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Every problem in the section, with its field path (`fleet.…`) and the fix.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.endpoints.is_empty() {
            errs.push(err(
                "fleet.endpoints",
                "empty: list the etcd client URLs, e.g. [\"https://10.0.0.1:2379\"]",
            ));
        }
        let mut schemes = std::collections::BTreeSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            match parse_endpoint(e) {
                Ok(scheme) => {
                    schemes.insert(scheme);
                }
                Err(why) => errs.push(err(format!("fleet.endpoints[{i}]"), why)),
            }
        }
        if schemes.len() > 1 {
            errs.push(err(
                "fleet.endpoints",
                "mixes http:// and https://: one cluster is reached one way, use https:// for all",
            ));
        }
        if !valid_gateway_id(&self.gateway_id) {
            errs.push(err(
                "fleet.gateway_id",
                format!(
                    "`{}` is not a usable gateway id: 1-63 characters of letters, digits, `-`, `_` \
                     (it names this gateway's keys in etcd)",
                    self.gateway_id
                ),
            ));
        }
        if !LEASE_TTL_SECS.contains(&self.lease_ttl_secs) {
            errs.push(err(
                "fleet.lease_ttl_secs",
                format!(
                    "{} is outside {} ... {}: a dead gateway's sessions and addresses return \
                     after this long (default 10)",
                    self.lease_ttl_secs,
                    LEASE_TTL_SECS.start(),
                    LEASE_TTL_SECS.end()
                ),
            ));
        }
        if !REGISTRY_REFRESH_SECS.contains(&self.registry_refresh_secs) {
            errs.push(err(
                "fleet.registry_refresh_secs",
                format!(
                    "{} is outside {} ... {}: how often session counters are written to etcd \
                     (default 60)",
                    self.registry_refresh_secs,
                    REGISTRY_REFRESH_SECS.start(),
                    REGISTRY_REFRESH_SECS.end()
                ),
            ));
        }
        if self.max_connections_per_user == Some(0) {
            errs.push(err(
                "fleet.max_connections_per_user",
                "0 would admit nobody: use 1 or more, or leave it out for no cap",
            ));
        }
        if self.max_connections == Some(0) {
            errs.push(err(
                "fleet.max_connections",
                "0 would admit nobody: use 1 or more, or leave it out for no fleet-wide cap",
            ));
        }
        let tls = self.uses_tls();
        if tls && self.ca_file.is_none() {
            errs.push(err(
                "fleet.ca_file",
                "https:// endpoints need the CA that issued the etcd server certificates: set ca_file",
            ));
        }
        if !tls && schemes.contains("http") {
            for (field, f) in [
                ("fleet.ca_file", &self.ca_file),
                ("fleet.cert_file", &self.cert_file),
                ("fleet.key_file", &self.key_file),
            ] {
                if f.is_some() {
                    errs.push(err(
                        field,
                        "set, but the endpoints are http:// (no TLS): use https:// endpoints",
                    ));
                }
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => errs.push(err(
                "fleet.key_file",
                "cert_file is set without key_file: set both (client certificate and its key) or neither",
            )),
            (None, Some(_)) => errs.push(err(
                "fleet.cert_file",
                "key_file is set without cert_file: set both (client certificate and its key) or neither",
            )),
            _ => {}
        }
        for (field, f) in [
            ("fleet.ca_file", &self.ca_file),
            ("fleet.cert_file", &self.cert_file),
            ("fleet.key_file", &self.key_file),
        ] {
            if let Some(p) = f {
                if let Err(e) = std::fs::File::open(p) {
                    errs.push(err(field, format!("cannot read {}: {e}", p.display())));
                }
            }
        }
        errs
    }
}

/// A gateway id names etcd keys: no `/`, nothing a key parser could confuse.
pub fn valid_gateway_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The scheme of `http(s)://HOST:PORT`, or why it is not one.
fn parse_endpoint(e: &str) -> Result<&'static str, String> {
    let (scheme, rest) = if let Some(r) = e.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = e.strip_prefix("http://") {
        ("http", r)
    } else {
        return Err(format!(
            "`{e}` is not an etcd client URL: use https://HOST:PORT (http:// only in a lab)"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let port_ok = rest
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty() && !host.contains('/'))
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .is_some_and(|p| p != 0);
    if port_ok {
        Ok(scheme)
    } else {
        Err(format!(
            "`{e}` has no HOST:PORT after the scheme: write it as {scheme}://HOST:2379"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(endpoints: &[&str]) -> FleetSection {
        FleetSection {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            gateway_id: "gw-a".into(),
            lease_ttl_secs: 10,
            registry_refresh_secs: 60,
            max_connections_per_user: None,
            max_connections: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }

    fn paths(s: &FleetSection) -> Vec<String> {
        s.validate().into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn plain_lab_section_is_valid() {
        assert_eq!(
            section(&["http://127.0.0.1:2379", "http://127.0.0.1:2381"]).validate(),
            vec![]
        );
    }

    #[test]
    fn defaults_from_toml() {
        let s: FleetSection =
            toml::from_str("endpoints = [\"http://127.0.0.1:2379\"]\ngateway_id = \"gw-1\"\n")
                .unwrap();
        assert_eq!(s.lease_ttl_secs, 10);
        assert_eq!(s.registry_refresh_secs, 60);
        assert!(!s.uses_tls());
        assert!(toml::from_str::<FleetSection>(
            "endpoints = []\ngateway_id = \"g\"\nlease_ttl = 5\n"
        )
        .is_err());
    }

    #[test]
    fn bad_endpoints_are_named_by_index() {
        let s = section(&[
            "127.0.0.1:2379",
            "http://127.0.0.1",
            "https://h:0",
            "http://h:2379",
        ]);
        let p = paths(&s);
        assert!(p.contains(&"fleet.endpoints[0]".to_string()), "{p:?}");
        assert!(p.contains(&"fleet.endpoints[1]".to_string()), "{p:?}");
        assert!(p.contains(&"fleet.endpoints[2]".to_string()), "{p:?}");
        assert!(!p.contains(&"fleet.endpoints[3]".to_string()), "{p:?}");
        assert_eq!(paths(&section(&[])), vec!["fleet.endpoints"]);
    }

    #[test]
    fn mixed_schemes_and_missing_ca_are_refused() {
        let p = paths(&section(&["http://a:2379", "https://b:2379"]));
        assert!(p.contains(&"fleet.endpoints".to_string()), "{p:?}");
        assert!(p.contains(&"fleet.ca_file".to_string()), "{p:?}");
    }

    #[test]
    fn tls_files_without_tls_and_half_pairs_are_refused() {
        let mut s = section(&["http://a:2379"]);
        s.cert_file = Some("/nonexistent/c.pem".into());
        let e = s.validate();
        let p: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert!(p.contains(&"fleet.cert_file"), "{p:?}");
        assert!(p.contains(&"fleet.key_file"), "{p:?}");
        assert!(e.iter().any(|e| e.message.contains("cannot read")), "{e:?}");
    }

    #[test]
    fn gateway_id_and_ttl_bounds() {
        let mut s = section(&["http://a:2379"]);
        for bad in ["", "a/b", "gw a", &"x".repeat(64)] {
            s.gateway_id = bad.into();
            assert_eq!(paths(&s), vec!["fleet.gateway_id"], "{bad:?}");
        }
        s.gateway_id = "gw_01-A".into();
        assert_eq!(paths(&s), Vec::<String>::new());
        for ttl in [0, 2, 301] {
            s.lease_ttl_secs = ttl;
            assert_eq!(paths(&s), vec!["fleet.lease_ttl_secs"], "{ttl}");
        }
        for ttl in [3, 300] {
            s.lease_ttl_secs = ttl;
            assert_eq!(paths(&s), Vec::<String>::new(), "{ttl}");
        }
        s.max_connections_per_user = Some(0);
        assert_eq!(paths(&s), vec!["fleet.max_connections_per_user"]);
        s.max_connections_per_user = Some(5);
        s.max_connections = Some(0);
        assert_eq!(paths(&s), vec!["fleet.max_connections"]);
        s.max_connections = Some(100);
        for r in [0, 61] {
            s.registry_refresh_secs = r;
            assert_eq!(paths(&s), vec!["fleet.registry_refresh_secs"], "{r}");
        }
    }
}
