//! The endpoint configuration file: one TOML file describes an endpoint (listeners, TLS,
//! authentication, the client pool, what is pushed to clients, logging) and its policy
//! (target networks, routes, authorization rules, security groups, local groups).
//!
//! [`EndpointConfig::load`] parses and validates everything at once: every problem is
//! reported with its field path and the fix, so an operator fixes a file in one round. The
//! policy part is validated by the policy compiler (`policy::compile`); this module checks the
//! rest (listeners, files, ciphers, names, overlaps) and builds the settings the tunnel and the
//! data path take.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::openvpn::crypto::Cipher;
use crate::openvpn::options::banner_echo_options;
use crate::openvpn::server::{PushSettings, ServerSettings};
use crate::openvpn::tls::{CrlExpiredPolicy, TlsFiles, TlsOptions, TlsVersion};
use crate::policy::model::{AuthzRule, PolicyInput, Route, SecurityGroup, TargetNetwork};

/// The whole file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Endpoint name: names the pin directory (`/sys/fs/bpf/portcullis/<name>`), the TAP
    /// device and the admin socket.
    pub name: String,
    /// Pool of client tunnel addresses (AWS: /12 to /22; here up to /28).
    pub client_cidr: Ipv4Net,
    /// The gateway's own address in the pool (default: the first host).
    #[serde(default)]
    pub gateway_addr: Option<Ipv4Addr>,
    /// What clients may reach on the gateway address (default: ping only).
    #[serde(default = "crate::policy::model::default_gateway_ports")]
    pub gateway_ports: Vec<crate::policy::model::GatewayPort>,
    /// `udp://ADDR:PORT` / `tcp://ADDR:PORT`, several allowed.
    pub listen: Vec<String>,
    /// Host name or address clients connect to, for exported profiles.
    #[serde(default)]
    pub public_address: Option<String>,
    /// Split tunnel (push the routes) or full tunnel (`redirect-gateway def1`, the AWS
    /// default).
    #[serde(default)]
    pub split_tunnel: bool,
    #[serde(default)]
    pub dns_servers: Vec<Ipv4Addr>,
    /// Maximum session length in hours (AWS: 8, 10, 12 or 24; default 24).
    #[serde(default = "default_session_timeout_hours")]
    pub session_timeout_hours: u32,
    /// At the timeout, disconnect (true, AWS default) or let the client reconnect at once.
    #[serde(default = "default_true")]
    pub disconnect_on_session_timeout: bool,
    /// Text shown to clients after connecting (AWS: up to 1,400 characters).
    #[serde(default)]
    pub banner: Option<String>,
    /// Data-channel ciphers in preference order.
    #[serde(default = "default_ciphers")]
    pub data_ciphers: Vec<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    pub tls: TlsSection,
    #[serde(default)]
    pub auth: AuthSection,
    /// LDAP / Active Directory for `auth.methods = ["certificate", "ldap"]`.
    #[serde(default)]
    pub directory: Option<crate::directory::DirectoryConfig>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(default, alias = "target_networks")]
    pub target_network: Vec<TargetNetworkEntry>,
    #[serde(default, alias = "routes")]
    pub route: Vec<Route>,
    #[serde(default, alias = "authorization_rules")]
    pub authorization_rule: Vec<AuthzRule>,
    #[serde(default, alias = "security_groups")]
    pub security_group: Vec<SecurityGroup>,
    #[serde(default)]
    pub applied_security_groups: Vec<String>,
    #[serde(default)]
    pub logging: LoggingSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Admin socket path (default `/run/portcullis/<name>.sock`).
    #[serde(default)]
    pub admin_socket: Option<PathBuf>,
    /// Program run at every connection (AWS client-connect handler): the request JSON on
    /// stdin, the answer JSON on stdout; a non-zero exit or no valid answer refuses.
    #[serde(default)]
    pub client_connect: Option<PathBuf>,
    /// The client-connect hook as an HTTP POST (`http://` or `https://`) instead of a program.
    #[serde(default)]
    pub client_connect_url: Option<String>,
    /// CA bundle (PEM) for an `https://` hook with a private CA (default: the web roots).
    #[serde(default)]
    pub client_connect_ca_file: Option<PathBuf>,
    /// How long the hook may take (default 30, as AWS); a timeout refuses the connection.
    #[serde(default = "default_hook_timeout")]
    pub client_connect_timeout_secs: u64,
}

fn default_hook_timeout() -> u64 {
    30
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Server certificate (PEM; intermediates may follow).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that issues client certificates.
    pub client_ca: PathBuf,
    /// CRL files (PEM or DER), checked on every connection and reloaded when they change.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// What an expired CRL does: "refuse" (default, as AWS) or "allow".
    #[serde(default)]
    pub crl_expired: CrlExpired,
    /// tls-crypt (v1) static key: unauthenticated control packets are dropped before TLS.
    #[serde(default)]
    pub tls_crypt_key: Option<PathBuf>,
    /// "1.2" (default) or "1.3".
    #[serde(default = "default_tls_min")]
    pub min_version: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlExpired {
    #[default]
    Refuse,
    Allow,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// "certificate" (mutual TLS; the certificate CN is the user name) and/or "ldap".
    #[serde(default = "default_auth_methods")]
    pub methods: Vec<String>,
    /// With "ldap": the directory user name must equal the certificate's common name.
    #[serde(default)]
    pub username_must_match_cn: bool,
    /// Failed logins allowed per user name within `failed_login_window_secs` (0 = no limit).
    #[serde(default = "default_failures_per_user")]
    pub failed_logins_per_user: u32,
    /// Failed logins allowed per source address within the window (0 = no limit).
    #[serde(default = "default_failures_per_source")]
    pub failed_logins_per_source: u32,
    #[serde(default = "default_failure_window")]
    pub failed_login_window_secs: u64,
    /// Ask for a one-time code with this prompt (OpenVPN `static-challenge`): the response
    /// is checked as TOTP against `directory.totp_secret_attribute`.
    #[serde(default)]
    pub static_challenge: Option<String>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            methods: default_auth_methods(),
            username_must_match_cn: false,
            failed_logins_per_user: default_failures_per_user(),
            failed_logins_per_source: default_failures_per_source(),
            failed_login_window_secs: default_failure_window(),
            static_challenge: None,
        }
    }
}

impl AuthSection {
    pub fn uses_directory(&self) -> bool {
        self.methods.iter().any(|m| m == "ldap")
    }
}

fn default_failures_per_user() -> u32 {
    5
}
fn default_failures_per_source() -> u32 {
    20
}
fn default_failure_window() -> u64 {
    300
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// Connection log (JSON lines, AWS field names).
    #[serde(default)]
    pub connection_log: Option<PathBuf>,
    /// Denied-flow audit log (JSON lines).
    #[serde(default)]
    pub flow_log: Option<PathBuf>,
    /// Also record allowed flows in the flow log (start and end, from conntrack scans).
    #[serde(default)]
    pub allowed_flows: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Prometheus endpoint, e.g. "127.0.0.1:9108".
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

fn default_session_timeout_hours() -> u32 {
    24
}
fn default_true() -> bool {
    true
}
fn default_ciphers() -> Vec<String> {
    Cipher::ALL.iter().map(|c| c.name().to_owned()).collect()
}
fn default_max_connections() -> usize {
    4096
}
fn default_tls_min() -> String {
    "1.2".into()
}
fn default_auth_methods() -> Vec<String> {
    vec!["certificate".into()]
}

/// The field path (`route[1].destination`, `tls.key`, `client_cidr`) of the key on line
/// `line` (1-based) of a TOML text, from the table headers above it; the table alone when
/// the line holds no `key = ...` (a continuation of a multi-line value).
fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut table: Option<String> = None;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    // Headers up to and including `line`: an error on a header line (a missing field of
    // that table) belongs to that table.
    for l in lines.iter().take(line) {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = Some(format!("{name}[{n}]"));
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = Some(name.trim().to_owned());
        }
    }
    let key = lines
        .get(line.checked_sub(1)?)
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim())
        .filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        });
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k.to_owned()),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// A `[[target_network]]`: the policy's target network, with the SNAT address optional
/// (default: the interface's first IPv4 address, as AWS uses the association's ENI address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetNetworkEntry {
    pub name: String,
    pub interface: String,
    #[serde(default)]
    pub snat_address: Option<Ipv4Addr>,
    #[serde(default = "default_pat_port_min")]
    pub pat_port_min: u16,
    #[serde(default = "default_pat_port_max")]
    pub pat_port_max: u16,
}

fn default_pat_port_min() -> u16 {
    crate::policy::model::DEFAULT_PAT_PORT_MIN
}
fn default_pat_port_max() -> u16 {
    crate::policy::model::DEFAULT_PAT_PORT_MAX
}

/// The first IPv4 address of interface `name` in this network namespace.
pub fn interface_ipv4(name: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != name {
            return None;
        }
        a.address?.as_sockaddr_in().map(|sin| sin.ip())
    })
}

/// The settings that differ between `old` and `new` and only take effect when the agent
/// restarts (they shape its sockets, files, address pool or session table). Everything else
/// in the file applies on reload: the policy at once to every session, the pushed options
/// (routes, DNS, tunnel mode, banner, ciphers, session timeout) to sessions that start after.
pub fn restart_only_changes(old: &EndpointConfig, new: &EndpointConfig) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut check = |changed: bool, name: &'static str| {
        if changed {
            v.push(name);
        }
    };
    check(old.name != new.name, "name");
    check(old.client_cidr != new.client_cidr, "client_cidr");
    check(old.gateway_addr != new.gateway_addr, "gateway_addr");
    check(old.gateway_ports != new.gateway_ports, "gateway_ports");
    check(old.listen != new.listen, "listen");
    check(
        old.max_connections != new.max_connections,
        "max_connections",
    );
    check(old.tls != new.tls, "tls");
    check(old.auth != new.auth, "auth");
    check(old.logging != new.logging, "logging");
    check(old.metrics != new.metrics, "metrics");
    check(old.admin_socket != new.admin_socket, "admin_socket");
    check(old.client_connect != new.client_connect, "client_connect");
    check(
        old.client_connect_url != new.client_connect_url,
        "client_connect_url",
    );
    check(
        old.client_connect_ca_file != new.client_connect_ca_file,
        "client_connect_ca_file",
    );
    check(
        old.client_connect_timeout_secs != new.client_connect_timeout_secs,
        "client_connect_timeout_secs",
    );
    check(old.directory != new.directory, "directory");
    v
}

/// Each target network's interface and PAT range: the egress XDP program and the reserved
/// ports are set up for them at start, so a reload that changes them is refused (the SNAT
/// address may change live).
pub fn target_attachments(c: &EndpointConfig) -> Vec<(String, u16, u16)> {
    c.target_network
        .iter()
        .map(|t| (t.interface.clone(), t.pat_port_min, t.pat_port_max))
        .collect()
}

/// A policy compiler message with its field paths as the endpoint file spells them (the
/// compiler names the policy model's lists: `routes[2]` is the file's third `[[route]]`).
pub fn endpoint_paths(msg: &str) -> String {
    const MAP: &[(&str, &str)] = &[
        // First, so `security_groups[` below does not catch it.
        ("applied_security_groups[", "\u{0}applied["),
        ("target_networks[", "target_network["),
        ("routes[", "route["),
        ("authorization_rules[", "authorization_rule["),
        ("security_groups[", "security_group["),
        ("\u{0}applied[", "applied_security_groups["),
        ("add it to target_networks", "add a [[target_network]]"),
    ];
    MAP.iter()
        .fold(msg.to_owned(), |m, (from, to)| m.replace(from, to))
}

/// A listener from `listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

/// One problem in the file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

/// Every problem found, printed one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl EndpointConfig {
    /// Reads, parses and validates `path`. Relative file paths inside are relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<EndpointConfig, ConfigErrors> {
        let cfg = Self::load_unvalidated(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses `path` and resolves the relative paths in it, without [`validate`]
    /// (for the admin socket path of a file being edited, or to collect the file's and the
    /// policy compiler's errors together).
    ///
    /// [`validate`]: EndpointConfig::validate
    pub fn load_unvalidated(path: &Path) -> Result<EndpointConfig, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![err(
                path.display().to_string(),
                format!("cannot read the configuration file: {e}"),
            )])
        })?;
        let mut cfg = Self::parse(&text)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses without checking files (syntax and types only).
    pub fn parse(text: &str) -> Result<EndpointConfig, ConfigErrors> {
        toml::from_str(text).map_err(|e| {
            let path = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    match key_path_at(text, line) {
                        Some(k) => format!("line {line}, {k}"),
                        None => format!("line {line}"),
                    }
                })
                .unwrap_or_else(|| "file".into());
            ConfigErrors(vec![err(path, e.message().to_owned())])
        })
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.client_ca);
        self.tls.crl.iter_mut().for_each(fix);
        if let Some(p) = &mut self.tls.tls_crypt_key {
            fix(p);
        }
        if let Some(p) = &mut self.client_connect {
            fix(p);
        }
        if let Some(p) = &mut self.client_connect_ca_file {
            fix(p);
        }
        if let Some(d) = &mut self.directory {
            if let Some(p) = &mut d.ca_file {
                fix(p);
            }
            if let Some(p) = &mut d.bind_password_file {
                fix(p);
            }
        }
        if let Some(p) = &mut self.admin_socket {
            fix(p);
        }
        if let Some(p) = &mut self.logging.connection_log {
            fix(p);
        }
        if let Some(p) = &mut self.logging.flow_log {
            fix(p);
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway_addr.unwrap_or_else(|| {
            let n = u32::from(self.client_cidr.network());
            Ipv4Addr::from(n.wrapping_add(1))
        })
    }

    /// The policy part, as the compiler takes it.
    pub fn policy(&self) -> PolicyInput {
        PolicyInput {
            client_cidr: self.client_cidr,
            gateway_addr: self.gateway(),
            gateway_ports: self.gateway_ports.clone(),
            groups: self.groups.clone(),
            target_networks: self
                .target_network
                .iter()
                .map(|t| TargetNetwork {
                    name: t.name.clone(),
                    interface: t.interface.clone(),
                    // Unresolved only where validation already said so (or on a machine
                    // without the interface, for `check`).
                    snat_address: t
                        .snat_address
                        .or_else(|| interface_ipv4(&t.interface))
                        .unwrap_or(Ipv4Addr::UNSPECIFIED),
                    pat_port_min: t.pat_port_min,
                    pat_port_max: t.pat_port_max,
                })
                .collect(),
            routes: self.route.clone(),
            authorization_rules: self.authorization_rule.clone(),
            security_groups: self.security_group.clone(),
            applied_security_groups: self.applied_security_groups.clone(),
        }
    }

    pub fn listeners(&self) -> Result<Vec<Listener>, Vec<ConfigError>> {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for (i, l) in self.listen.iter().enumerate() {
            let path = format!("listen[{i}]");
            let (proto, rest) = match l.split_once("://") {
                Some(x) => x,
                None => {
                    errs.push(err(
                        path,
                        format!("`{l}` has no scheme: write `udp://{l}` or `tcp://{l}`"),
                    ));
                    continue;
                }
            };
            let Ok(addr) = rest.parse::<SocketAddr>() else {
                errs.push(err(
                    path,
                    format!("`{rest}` is not ADDRESS:PORT (e.g. `0.0.0.0:1194` or `[::]:1194`)"),
                ));
                continue;
            };
            match proto {
                "udp" => out.push(Listener::Udp(addr)),
                "tcp" => out.push(Listener::Tcp(addr)),
                other => errs.push(err(
                    path,
                    format!("unknown transport `{other}`: use `udp` or `tcp`"),
                )),
            }
        }
        if self.listen.is_empty() {
            errs.push(err(
                "listen",
                "no listener: add e.g. `listen = [\"udp://0.0.0.0:1194\"]`",
            ));
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }

    pub fn ciphers(&self) -> Result<Vec<Cipher>, Vec<ConfigError>> {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for (i, c) in self.data_ciphers.iter().enumerate() {
            match Cipher::from_name(c) {
                Some(c) => out.push(c),
                None => errs.push(err(
                    format!("data_ciphers[{i}]"),
                    format!(
                        "`{c}` is not supported: use AES-256-GCM, AES-128-GCM or CHACHA20-POLY1305"
                    ),
                )),
            }
        }
        if self.data_ciphers.is_empty() {
            errs.push(err("data_ciphers", "empty: list at least AES-256-GCM"));
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }

    /// Everything except the policy compiler's checks (run `policy::compile` for those; the
    /// agent and `portcullis check` run both and print all errors together).
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errs = Vec::new();
        for (i, t) in self.target_network.iter().enumerate() {
            // Only where the interface exists: `check` may run on another machine.
            if t.snat_address.is_none()
                && crate::datapath::ifindex(&t.interface).is_some()
                && interface_ipv4(&t.interface).is_none()
            {
                errs.push(err(
                    format!("target_network[{i}].snat_address"),
                    format!(
                        "not set, and interface `{}` has no IPv4 address to use instead: set \
                         snat_address or give the interface an address",
                        t.interface
                    ),
                ));
            }
        }
        if self.name.is_empty()
            || self.name.len() > 32
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errs.push(err(
                "name",
                format!(
                    "`{}` is not a usable endpoint name: 1-32 characters of letters, digits, `-`, `_`",
                    self.name
                ),
            ));
        }
        if !(12..=28).contains(&self.client_cidr.prefix_len()) {
            errs.push(err(
                "client_cidr",
                format!(
                    "a /{} pool is outside /12 ... /28: pick a pool in that range (twice the peak connections)",
                    self.client_cidr.prefix_len()
                ),
            ));
        }
        if let Err(e) = self.listeners() {
            errs.extend(e);
        }
        if let Err(e) = self.ciphers() {
            errs.extend(e);
        }
        if ![8, 10, 12, 24].contains(&self.session_timeout_hours) {
            errs.push(err(
                "session_timeout_hours",
                format!(
                    "{} is not allowed: use 8, 10, 12 or 24 (as AWS)",
                    self.session_timeout_hours
                ),
            ));
        }
        if let Some(b) = &self.banner {
            // Pushed as `echo` options: printable ASCII, no commas (the push separator);
            // newlines separate lines.
            let bad = b
                .chars()
                .any(|c| c == ',' || !(c == '\n' || c == ' ' || c.is_ascii_graphic()));
            if b.len() > 1400 || bad {
                errs.push(err(
                    "banner",
                    "at most 1,400 characters of printable ASCII and newlines, without commas \
                     (it is pushed to clients as OpenVPN `echo` options)",
                ));
            }
        }
        if self.max_connections == 0
            || self.max_connections > portcullis_common::MAX_CLIENTS as usize
        {
            errs.push(err(
                "max_connections",
                format!("must be 1 ... {}", portcullis_common::MAX_CLIENTS),
            ));
        }
        if !["1.2", "1.3"].contains(&self.tls.min_version.as_str()) {
            errs.push(err("tls.min_version", "use \"1.2\" or \"1.3\""));
        }
        for (i, m) in self.auth.methods.iter().enumerate() {
            if !["certificate", "ldap"].contains(&m.as_str()) {
                errs.push(err(
                    format!("auth.methods[{i}]"),
                    format!("unknown method `{m}`: use \"certificate\" and/or \"ldap\""),
                ));
            }
        }
        match (self.auth.uses_directory(), &self.directory) {
            (true, None) => errs.push(err(
                "directory",
                "auth.methods has \"ldap\" but there is no [directory] section: add one (url, bind_dn or user_dn_template, ...)",
            )),
            (false, Some(_)) => errs.push(err(
                "auth.methods",
                "a [directory] section is set but not used: add \"ldap\" to auth.methods or remove [directory]",
            )),
            (true, Some(d)) => errs.extend(d.validate()),
            (false, None) => {}
        }
        if self.auth.methods.is_empty() {
            errs.push(err(
                "auth.methods",
                "empty: use [\"certificate\"], [\"ldap\"] or both (both must then pass)",
            ));
        }
        if self.auth.username_must_match_cn && !self.auth.uses_directory() {
            errs.push(err(
                "auth.username_must_match_cn",
                "only meaningful with \"ldap\" in auth.methods",
            ));
        }
        if let Some(c) = &self.auth.static_challenge {
            if c.is_empty() || c.len() > 200 || c.contains('"') || c.chars().any(char::is_control) {
                errs.push(err(
                    "auth.static_challenge",
                    "a prompt of 1-200 printable characters without double quotes",
                ));
            }
            if self
                .directory
                .as_ref()
                .and_then(|d| d.totp_secret_attribute.as_ref())
                .is_none()
            {
                errs.push(err(
                    "auth.static_challenge",
                    "the one-time code is checked against a TOTP secret in the directory: set `directory.totp_secret_attribute` (and \"ldap\" in auth.methods)",
                ));
            }
            if self.directory.as_ref().is_some_and(|d| d.bind_dn.is_none()) {
                errs.push(err(
                    "auth.static_challenge",
                    "the TOTP secret must be read by a service account, never with the user's own bind (whoever has the password could read it): set `directory.bind_dn` and `bind_password_file`, and make the secret attribute readable only by that account",
                ));
            }
        }
        if self.auth.failed_login_window_secs == 0 {
            errs.push(err(
                "auth.failed_login_window_secs",
                "must be at least 1 (set failed_logins_per_user = 0 to turn the limit off)",
            ));
        }
        let mut files: Vec<(String, &Path)> = vec![
            ("tls.cert".into(), &self.tls.cert),
            ("tls.key".into(), &self.tls.key),
            ("tls.client_ca".into(), &self.tls.client_ca),
        ];
        for (i, c) in self.tls.crl.iter().enumerate() {
            files.push((format!("tls.crl[{i}]"), c));
        }
        if let Some(k) = &self.tls.tls_crypt_key {
            files.push(("tls.tls_crypt_key".into(), k));
        }
        for (path, f) in files {
            if let Err(e) = std::fs::File::open(f) {
                errs.push(err(path, format!("cannot read {}: {e}", f.display())));
            }
        }
        if let Some(k) = &self.tls.tls_crypt_key {
            if let Ok(text) = std::fs::read_to_string(k) {
                if let Err(e) = crate::openvpn::tls_crypt::StaticKey::parse(&text) {
                    errs.push(err(
                        "tls.tls_crypt_key",
                        format!(
                            "{}: {e} (make one with `openvpn --genkey tls-crypt FILE`)",
                            k.display()
                        ),
                    ));
                }
            }
        }
        if let Some(h) = &self.client_connect {
            if !h.is_file() {
                errs.push(err(
                    "client_connect",
                    format!("{} is not a file", h.display()),
                ));
            }
        }
        if let Some(u) = &self.client_connect_url {
            if self.client_connect.is_some() {
                errs.push(err(
                    "client_connect_url",
                    "both client_connect (a program) and client_connect_url are set: keep one",
                ));
            }
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                errs.push(err(
                    "client_connect_url",
                    format!("`{u}` is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(ca) = &self.client_connect_ca_file {
            if self.client_connect_url.is_none() {
                errs.push(err(
                    "client_connect_ca_file",
                    "only used with client_connect_url: remove it or set the URL",
                ));
            }
            if let Err(e) = std::fs::read(ca) {
                errs.push(err(
                    "client_connect_ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                ));
            }
        }
        if self.client_connect_timeout_secs == 0 || self.client_connect_timeout_secs > 300 {
            errs.push(err(
                "client_connect_timeout_secs",
                "use 1 ... 300 (AWS allows 30)",
            ));
        }
        // Routes that overlap the client pool would send client traffic back to clients.
        for (i, r) in self.route.iter().enumerate() {
            if let IpNet::V4(d) = r.destination {
                if d.contains(&self.client_cidr.network())
                    || self.client_cidr.contains(&d.network())
                {
                    errs.push(err(
                        format!("route[{i}].destination"),
                        format!(
                            "{d} overlaps client_cidr {}: pick a client pool outside your networks",
                            self.client_cidr
                        ),
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errs))
        }
    }

    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.tls.client_ca.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
            crls: self.tls.crl.clone(),
        }
    }

    pub fn tls_options(&self) -> TlsOptions {
        TlsOptions {
            min_version: if self.tls.min_version == "1.3" {
                TlsVersion::V1_3
            } else {
                TlsVersion::V1_2
            },
            crl_expired: match self.tls.crl_expired {
                CrlExpired::Refuse => CrlExpiredPolicy::Refuse,
                CrlExpired::Allow => CrlExpiredPolicy::Allow,
            },
            // Directory only: the password is the credential, a certificate is optional.
            client_cert_optional: !self.auth.methods.iter().any(|m| m == "certificate"),
        }
    }

    /// The tunnel's settings. The pushed routes are the route table's IPv4 destinations (split
    /// tunnel), as AWS pushes its route table.
    pub fn server_settings(&self) -> ServerSettings {
        let ciphers = self.ciphers().unwrap_or_else(|_| Cipher::ALL.to_vec());
        let mut s = ServerSettings {
            client_cidr: self.client_cidr,
            push: PushSettings {
                routes: self
                    .route
                    .iter()
                    .filter_map(|r| match r.destination {
                        IpNet::V4(n) => Some(n),
                        IpNet::V6(_) => None,
                    })
                    .collect(),
                dns: self.dns_servers.clone(),
                full_tunnel: !self.split_tunnel,
                session_timeout: Some(Duration::from_secs(
                    u64::from(self.session_timeout_hours) * 3600,
                )),
                echo: self
                    .banner
                    .as_deref()
                    .map(|b| banner_echo_options(&self.name, b))
                    .unwrap_or_default(),
            },
            max_sessions: self.max_connections,
            ..ServerSettings::default()
        };
        s.udp.ciphers = ciphers.clone();
        s.tcp.ciphers = ciphers;
        s.udp.halt_on_session_timeout = self.disconnect_on_session_timeout;
        s.tcp.halt_on_session_timeout = self.disconnect_on_session_timeout;
        s
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/portcullis/{}.sock", self.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_files() -> tempdir::Dir {
        tempdir::Dir::new()
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                let p = std::env::temp_dir().join(format!(
                    "pc-config-test-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_nanos()
                ));
                std::fs::create_dir_all(&p).unwrap();
                for f in ["server.crt", "server.key", "ca.crt"] {
                    std::fs::write(p.join(f), "x").unwrap();
                }
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const GOOD: &str = r#"
name = "corp"
client_cidr = "10.100.0.0/22"
listen = ["udp://0.0.0.0:1194", "tcp://0.0.0.0:443"]
public_address = "vpn.example.com"
split_tunnel = true
dns_servers = ["10.0.0.2"]
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
[groups]
engineering = ["alice"]
[[target_network]]
name = "private"
interface = "eth1"
snat_address = "10.0.0.1"
[[route]]
destination = "10.0.0.0/16"
target_network = "private"
[[authorization_rule]]
destination = "10.0.0.0/16"
groups = ["engineering"]
"#;

    #[test]
    fn good_file_loads_and_maps_to_settings() {
        let d = dir_with_files();
        let f = d.0.join("corp.toml");
        std::fs::write(&f, GOOD).unwrap();
        let c = EndpointConfig::load(&f).unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(
            c.listeners().unwrap(),
            vec![
                Listener::Udp("0.0.0.0:1194".parse().unwrap()),
                Listener::Tcp("0.0.0.0:443".parse().unwrap())
            ]
        );
        let s = c.server_settings();
        assert_eq!(
            s.push.routes,
            vec!["10.0.0.0/16".parse::<Ipv4Net>().unwrap()]
        );
        assert!(!s.push.full_tunnel);
        assert_eq!(s.push.session_timeout, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(c.tls.cert, d.0.join("server.crt"));
        let p = c.policy();
        assert_eq!(p.local_groups_of("alice"), vec!["engineering".to_owned()]);
        assert_eq!(c.admin_socket(), PathBuf::from("/run/portcullis/corp.sock"));
        // A relative admin socket is relative to the file, as every other path.
        std::fs::write(&f, format!("admin_socket = \"corp.sock\"\n{GOOD}")).unwrap();
        let c = EndpointConfig::load(&f).unwrap();
        assert_eq!(c.admin_socket(), d.0.join("corp.sock"));
    }

    #[test]
    fn every_error_is_reported_at_once_with_its_path() {
        let d = dir_with_files();
        let f = d.0.join("bad.toml");
        let bad = GOOD
            .replace("name = \"corp\"", "name = \"bad name!\"")
            .replace("udp://0.0.0.0:1194", "0.0.0.0:1194")
            .replace("tcp://0.0.0.0:443", "sctp://0.0.0.0:443")
            .replace("client_ca = \"ca.crt\"", "client_ca = \"missing.crt\"")
            .replace("10.100.0.0/22", "10.0.0.0/22")
            + "data_ciphers = [\"BF-CBC\"]\nsession_timeout_hours = 5\n";
        // Top-level keys must precede tables in TOML: put them first.
        let (head, tail) = bad.split_at(bad.find("[tls]").unwrap());
        let extra = "data_ciphers = [\"BF-CBC\"]\nsession_timeout_hours = 5\n";
        let text = format!("{head}{extra}{}", tail.replace(extra, ""));
        std::fs::write(&f, text).unwrap();
        let e = EndpointConfig::load(&f).unwrap_err();
        let paths: Vec<&str> = e.0.iter().map(|e| e.path.as_str()).collect();
        for want in [
            "name",
            "listen[0]",
            "listen[1]",
            "data_ciphers[0]",
            "session_timeout_hours",
            "tls.client_ca",
            "route[0].destination",
        ] {
            assert!(paths.contains(&want), "{want} missing in {e}");
        }
    }

    /// The cross-field rules of authentication: each names its field.
    #[test]
    fn auth_errors_name_their_fields() {
        let d = dir_with_files();
        let f = d.0.join("auth.toml");
        let check = |top: &str, tables: &str| -> Vec<String> {
            let (head, tail) = GOOD.split_at(GOOD.find("[tls]").unwrap());
            std::fs::write(&f, format!("{top}{head}{tail}{tables}")).unwrap();
            match EndpointConfig::load(&f) {
                Ok(_) => Vec::new(),
                Err(e) => e.0.into_iter().map(|e| e.path).collect(),
            }
        };
        let dir = "[directory]\nurl = \"ldap://127.0.0.1:389\"\nuser_dn_template = \"uid={username},dc=x\"\n";
        assert_eq!(
            check("", &format!("[auth]\nmethods = [\"ldap\"]\n{dir}")),
            Vec::<String>::new()
        );
        assert_eq!(check("", "[auth]\nmethods = [\"ldap\"]\n"), ["directory"]);
        assert_eq!(check("", dir), ["auth.methods"]);
        assert_eq!(check("", "[auth]\nmethods = []\n"), ["auth.methods"]);
        assert_eq!(
            check(
                "",
                &format!("[auth]\nmethods = [\"ldap\"]\nstatic_challenge = \"Code\"\n{dir}")
            ),
            ["auth.static_challenge", "auth.static_challenge"]
        );
        // A TOTP secret read with the user's own bind is readable with the password alone.
        let totp = "[auth]\nmethods = [\"ldap\"]\nstatic_challenge = \"Code\"\n";
        assert_eq!(
            check(
                "",
                &format!("{totp}{dir}totp_secret_attribute = \"pcTotpSecret\"\n")
            ),
            ["auth.static_challenge"]
        );
        let svc = format!(
            "[directory]\nurl = \"ldap://127.0.0.1:389\"\nbind_dn = \"cn=svc\"\nbind_password_file = \"{}\"\nuser_base = \"dc=x\"\ntotp_secret_attribute = \"pcTotpSecret\"\n",
            f.display()
        );
        assert_eq!(check("", &format!("{totp}{svc}")), Vec::<String>::new());
        assert_eq!(
            check("", "[auth]\nusername_must_match_cn = true\n"),
            ["auth.username_must_match_cn"]
        );
        assert_eq!(
            check(
                "client_connect_url = \"ftp://x\"\nclient_connect_timeout_secs = 0\n",
                ""
            ),
            ["client_connect_url", "client_connect_timeout_secs"]
        );
        // Directory-only makes the client certificate optional in TLS; with certificates not.
        std::fs::write(&f, format!("{GOOD}[auth]\nmethods = [\"ldap\"]\n{dir}")).unwrap();
        assert!(
            EndpointConfig::load(&f)
                .unwrap()
                .tls_options()
                .client_cert_optional
        );
        std::fs::write(&f, GOOD).unwrap();
        assert!(
            !EndpointConfig::load(&f)
                .unwrap()
                .tls_options()
                .client_cert_optional
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = EndpointConfig::parse("name = \"x\"\nclient_cidr = 5\n").unwrap_err();
        assert!(e.0[0].path.starts_with("line 2"), "{e}");
        let e = EndpointConfig::parse("name = \"x\"\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        // The field path of the bad value, from the table headers above it.
        let bad = GOOD.replace(
            "destination = \"10.0.0.0/16\"\ntarget",
            "destination = \"10.0.0.0/33\"\ntarget",
        );
        let e = EndpointConfig::parse(&bad).unwrap_err();
        assert!(e.0[0].path.ends_with(", route[0].destination"), "{e}");
        let e = EndpointConfig::parse(&GOOD.replace("10.100.0.0/22", "10.100.0.0/x")).unwrap_err();
        assert!(e.0[0].path.ends_with(", client_cidr"), "{e}");
        // A missing field is reported on its table's header line: that table, not the one
        // above it.
        let e = EndpointConfig::parse(&GOOD.replace("name = \"private\"\n", "")).unwrap_err();
        assert!(e.0[0].path.ends_with(", target_network[0]"), "{e}");
        assert!(e.to_string().contains("`name`"), "{e}");
    }

    #[test]
    fn snat_address_defaults_to_the_interface_address() {
        let text = GOOD
            .replace("interface = \"eth1\"", "interface = \"lo\"")
            .replace("snat_address = \"10.0.0.1\"\n", "");
        let c = EndpointConfig::parse(&text).unwrap();
        assert_eq!(c.target_network[0].snat_address, None);
        assert_eq!(
            c.policy().target_networks[0].snat_address,
            Ipv4Addr::LOCALHOST
        );
        assert_eq!(interface_ipv4("no-such-if0"), None);
    }

    #[test]
    fn compiler_paths_are_spelled_as_in_the_file() {
        assert_eq!(
            endpoint_paths("routes[1].target_network: no target network is named `x`: use one of [`a`] or add it to target_networks"),
            "route[1].target_network: no target network is named `x`: use one of [`a`] or add a [[target_network]]"
        );
        assert_eq!(
            endpoint_paths(
                "applied_security_groups[0] and security_groups[2].name and authorization_rules[3]"
            ),
            "applied_security_groups[0] and security_group[2].name and authorization_rule[3]"
        );
    }

    #[test]
    fn the_documented_example_parses_and_compiles() {
        let text = include_str!("../../docs/example-endpoint.toml");
        let c = EndpointConfig::parse(text).unwrap();
        assert!(c.listeners().is_ok());
        assert_eq!(c.ciphers().unwrap().len(), 2);
        crate::policy::compile(&c.policy(), &|_| Some(1)).unwrap();
    }
}
