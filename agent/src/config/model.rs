//! The file's model: what an endpoint file says, section by section, with its defaults.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{DirectoryConfig, FleetSection};
use crate::openvpn::crypto::Cipher;
use crate::policy::model::{AuthzRule, Route, SecurityGroup};

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
    /// Every gateway's host name or address, for exported profiles of a fleet: a `remote`
    /// line each (with `remote-random`), so a client spreads over the gateways and moves to
    /// another when its gateway stops answering. Overrides `public_address`; unnecessary
    /// when `public_address` is one name that resolves to every gateway.
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
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
    /// Keepalive pushed to clients as `ping` (seconds between pings when idle, both ways).
    #[serde(default = "default_keepalive_interval_secs")]
    pub keepalive_interval_secs: u32,
    /// Pushed as `ping-restart`: a client that hears nothing for this long reconnects (in a
    /// fleet, to another gateway: lower it for faster failover). The gateway drops a silent
    /// client after twice this, as an OpenVPN server with `keepalive` does.
    #[serde(default = "default_keepalive_timeout_secs")]
    pub keepalive_timeout_secs: u32,
    /// Data-channel keys are renegotiated this often (`reneg-sec`; 0: not by time).
    #[serde(default = "default_renegotiate_secs")]
    pub renegotiate_secs: u32,
    /// Text shown to clients after connecting (AWS: up to 1,400 characters).
    #[serde(default)]
    pub banner: Option<String>,
    /// Data-channel ciphers in preference order.
    #[serde(default = "default_ciphers")]
    pub data_ciphers: Vec<String>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Stateless handshake replies (the HMAC-cookie reset, every new UDP client's first
    /// answer) per second and burst, all sources together; one source address gets an eighth
    /// of each. What OpenVPN 2.6 calls `connect-freq-initial`.
    #[serde(default = "default_handshake_rate")]
    pub handshake_rate_per_second: u32,
    #[serde(default = "default_handshake_burst")]
    pub handshake_burst: u32,
    /// A TCP connection whose session has not connected within this many seconds is closed
    /// (before authentication a connection costs memory and holds a connection slot).
    #[serde(default = "default_tcp_handshake_timeout")]
    pub tcp_handshake_timeout_secs: u64,
    /// A TCP connection that sends nothing for this many seconds is closed (connected
    /// clients ping every few seconds).
    #[serde(default = "default_tcp_idle_timeout")]
    pub tcp_idle_timeout_secs: u64,
    pub tls: TlsSection,
    #[serde(default)]
    pub auth: AuthSection,
    /// LDAP / Active Directory for `auth.methods = ["certificate", "ldap"]`.
    #[serde(default)]
    pub directory: Option<DirectoryConfig>,
    /// OpenID Connect single sign-on for `auth.methods = ["oidc"]` (alone or with
    /// "certificate").
    #[serde(default)]
    pub oidc: Option<super::oidc::OidcConfig>,
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
    /// The web console (`[console]`); absent means none.
    #[serde(default)]
    pub console: Option<crate::console::ConsoleSection>,
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
    /// Fleet mode (several gateways on one etcd); absent: standalone, no etcd.
    #[serde(default)]
    pub fleet: Option<FleetSection>,
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
    /// tls-crypt-v2 server key (`portcullis pki tls-crypt-v2-server`): per-client wrapped
    /// keys, opened from the client's first packet before any state or TLS. Alone, or next to
    /// `tls_crypt_key` for clients with the v1 key.
    #[serde(default)]
    pub tls_crypt_v2_server_key: Option<PathBuf>,
    /// Refuse tls-crypt-v2 client keys older than this many days (by the timestamp the key
    /// carries; keys without one are refused too). Unset: any age.
    #[serde(default)]
    pub tls_crypt_v2_max_age_days: Option<u32>,
    /// "1.2" (default) or "1.3".
    #[serde(default = "default_tls_min")]
    pub min_version: String,
    /// The `portcullis pki` directory that issues the client certificates: the admin API
    /// (CLI `certificates`, the console) then lists and revokes them, and the self-service
    /// portal may issue them. Its `crl.pem` must be one of `crl`.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
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
    /// "certificate" (mutual TLS; the certificate CN is the user name) and/or "ldap", or
    /// "oidc" (web login, alone or with "certificate").
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
    /// Session tokens (`auth-token`, as OpenVPN's `auth-gen-token`): the HMAC secret's file
    /// (host-local, like every secret file; the same content on every gateway that should
    /// accept the others' tokens). Unset: no tokens.
    #[serde(default)]
    pub token_secret_file: Option<PathBuf>,
    /// A token dies this long after the real login, however often it was renewed.
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime_secs: u64,
    /// Tokens are renewed at each renegotiation; one not renewed for twice this is stale.
    /// Default: `renegotiate_secs`.
    #[serde(default)]
    pub token_renewal_secs: Option<u64>,
    /// Where the tokens of terminated sessions are kept as revoked (across restarts).
    /// Default: the secret file's path with `.revoked` appended.
    #[serde(default)]
    pub token_revocation_file: Option<PathBuf>,
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
            token_secret_file: None,
            token_lifetime_secs: default_token_lifetime(),
            token_renewal_secs: None,
            token_revocation_file: None,
        }
    }
}

impl AuthSection {
    pub fn uses_directory(&self) -> bool {
        self.methods.iter().any(|m| m == "ldap")
    }

    pub fn uses_oidc(&self) -> bool {
        self.methods.iter().any(|m| m == "oidc")
    }
}

fn default_token_lifetime() -> u64 {
    12 * 3600
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
    /// The admin audit trail (JSON lines): every administrative action from the admin socket
    /// and the console, who did it, from where, and the result.
    #[serde(default)]
    pub admin_audit_log: Option<PathBuf>,
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
pub(super) fn default_keepalive_interval_secs() -> u32 {
    10
}
pub(super) fn default_keepalive_timeout_secs() -> u32 {
    60
}
pub(super) fn default_renegotiate_secs() -> u32 {
    3600
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
fn default_handshake_rate() -> u32 {
    crate::openvpn::server::DEFAULT_RESET_RATE.0
}
fn default_handshake_burst() -> u32 {
    crate::openvpn::server::DEFAULT_RESET_RATE.1
}
fn default_tcp_handshake_timeout() -> u64 {
    60
}
fn default_tcp_idle_timeout() -> u64 {
    300
}
fn default_tls_min() -> String {
    "1.2".into()
}
fn default_auth_methods() -> Vec<String> {
    vec!["certificate".into()]
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

impl EndpointConfig {
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway_addr.unwrap_or_else(|| {
            let n = u32::from(self.client_cidr.network());
            Ipv4Addr::from(n.wrapping_add(1))
        })
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/portcullis/{}.sock", self.name)))
    }
}
