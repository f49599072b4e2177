//! What the file means for the other parts: the policy compiler's input, the tunnel's
//! settings and TLS files, and which changes need a restart.
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::IpNet;

use super::errors::err;
use super::{ConfigError, CrlExpired, EndpointConfig};
use crate::io::tls_files::TlsFiles;
use crate::openvpn::crypto::Cipher;
use crate::openvpn::options::banner_echo_options;
use crate::openvpn::server::{PushSettings, ServerSettings};
use crate::openvpn::tls::{CrlExpiredPolicy, TlsOptions, TlsVersion};
use crate::policy::model::{PolicyInput, TargetNetwork};

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
    check(
        old.handshake_rate_per_second != new.handshake_rate_per_second,
        "handshake_rate_per_second",
    );
    check(
        old.handshake_burst != new.handshake_burst,
        "handshake_burst",
    );
    check(
        old.tcp_handshake_timeout_secs != new.tcp_handshake_timeout_secs,
        "tcp_handshake_timeout_secs",
    );
    check(
        old.tcp_idle_timeout_secs != new.tcp_idle_timeout_secs,
        "tcp_idle_timeout_secs",
    );
    check(old.tls != new.tls, "tls");
    check(old.auth != new.auth, "auth");
    check(old.logging != new.logging, "logging");
    check(old.metrics != new.metrics, "metrics");
    check(old.console != new.console, "console");
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
    check(old.oidc != new.oidc, "oidc");
    check(old.fleet != new.fleet, "fleet");
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

impl EndpointConfig {
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
            reset_rate: (self.handshake_rate_per_second, self.handshake_burst),
            tcp_handshake_timeout: Duration::from_secs(self.tcp_handshake_timeout_secs),
            tcp_idle_timeout: Duration::from_secs(self.tcp_idle_timeout_secs),
            ..ServerSettings::default()
        };
        s.udp.ciphers = ciphers.clone();
        s.tcp.ciphers = ciphers;
        for t in [&mut s.udp, &mut s.tcp] {
            t.halt_on_session_timeout = self.disconnect_on_session_timeout;
            t.ping = Duration::from_secs(self.keepalive_interval_secs.into());
            t.ping_restart = Duration::from_secs(self.keepalive_timeout_secs.into());
            t.reneg.interval = (self.renegotiate_secs != 0)
                .then(|| Duration::from_secs(self.renegotiate_secs.into()));
        }
        s
    }
}
