//! The shared part of an endpoint file: what a fleet publishes once and every gateway applies.
//!
//! It is exactly what a live reload applies (the policy, the pushed options, and who may log
//! in: see [`super::shared_login`] for how `[auth]`, `[directory]` and `[oidc]` split), so a
//! gateway applies a published revision through the same reload as a file edit. Everything
//! that needs a restart or names something on one host (listeners, target network
//! interfaces and SNAT addresses, TLS files, secrets, logs, the admin socket, `[fleet]`)
//! stays in each gateway's file.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::shared_login::{SharedAuth, SharedOidc};
use super::{DirectoryConfig, EndpointConfig};
use crate::policy::model::{AuthzRule, Route, SecurityGroup};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// The endpoint the part belongs to: a gateway refuses a part of another endpoint.
    pub name: String,
    pub split_tunnel: bool,
    pub dns_servers: Vec<Ipv4Addr>,
    pub session_timeout_hours: u32,
    pub disconnect_on_session_timeout: bool,
    // Defaults: a revision published before these existed still reads.
    #[serde(default = "super::model::default_keepalive_interval_secs")]
    pub keepalive_interval_secs: u32,
    #[serde(default = "super::model::default_keepalive_timeout_secs")]
    pub keepalive_timeout_secs: u32,
    #[serde(default = "super::model::default_renegotiate_secs")]
    pub renegotiate_secs: u32,
    #[serde(default)]
    pub gateway_addresses: Vec<String>,
    #[serde(default)]
    pub banner: Option<String>,
    pub data_ciphers: Vec<String>,
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub route: Vec<Route>,
    #[serde(default)]
    pub authorization_rule: Vec<AuthzRule>,
    #[serde(default)]
    pub security_group: Vec<SecurityGroup>,
    #[serde(default)]
    pub applied_security_groups: Vec<String>,
    /// The CRLs (PEM text) `fleet publish` read from the publisher's `[tls] crl` files:
    /// every gateway checks clients against these instead of its own CRL files, and cuts
    /// the live sessions they revoke. Empty: each gateway's own files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_pem: Vec<String>,
    /// The CA bundle (PEM text) `fleet publish` read from the publisher's `[tls] ca`: every
    /// gateway verifies client certificates against it instead of its own `ca` file, from
    /// the next handshake on (a CA added or rotated is one publish). `None`: each
    /// gateway's own file. Only certificates; the CA key never leaves the CA's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Who may log in: the endpoint-wide part of `[auth]`. `None` (a revision published
    /// before login settings were shared): each gateway keeps its own `[auth]`,
    /// `[directory]` and `[oidc]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SharedAuth>,
    /// `[directory]`, whole (read with `auth`). Its files are paths each gateway must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryConfig>,
    /// The provider part of `[oidc]` (read with `auth`); each gateway's own file keeps its
    /// callback listener and URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<SharedOidc>,
}

impl EndpointConfig {
    /// The part of this file a fleet shares.
    pub fn shared(&self) -> SharedConfig {
        SharedConfig {
            name: self.name.clone(),
            split_tunnel: self.split_tunnel,
            dns_servers: self.dns_servers.clone(),
            session_timeout_hours: self.session_timeout_hours,
            disconnect_on_session_timeout: self.disconnect_on_session_timeout,
            keepalive_interval_secs: self.keepalive_interval_secs,
            keepalive_timeout_secs: self.keepalive_timeout_secs,
            renegotiate_secs: self.renegotiate_secs,
            gateway_addresses: self.gateway_addresses.clone(),
            banner: self.banner.clone(),
            data_ciphers: self.data_ciphers.clone(),
            groups: self.groups.clone(),
            route: self.route.clone(),
            authorization_rule: self.authorization_rule.clone(),
            security_group: self.security_group.clone(),
            applied_security_groups: self.applied_security_groups.clone(),
            // The file names CRL files; `fleet publish` reads them in (this stays pure).
            crl_pem: Vec::new(),
            ca_pem: None,
            auth: Some(self.auth.shared()),
            directory: self.directory.clone(),
            oidc: self.oidc.as_ref().map(|o| o.shared()),
        }
    }

    /// This (host-local) file with the shared part replaced by `shared`; the caller validates
    /// the result as any file (`validate` and the policy compiler). A part published for
    /// another endpoint is refused, and so is one that signs in through OIDC on a gateway
    /// whose file has no callback for it.
    pub fn with_shared(mut self, shared: SharedConfig) -> Result<EndpointConfig, SharedRefused> {
        if shared.name != self.name {
            return Err(SharedRefused::OtherEndpoint {
                published: shared.name,
                local: self.name,
            });
        }
        let SharedConfig {
            name: _,
            split_tunnel,
            dns_servers,
            session_timeout_hours,
            disconnect_on_session_timeout,
            keepalive_interval_secs,
            keepalive_timeout_secs,
            renegotiate_secs,
            gateway_addresses,
            banner,
            data_ciphers,
            groups,
            route,
            authorization_rule,
            security_group,
            applied_security_groups,
            // TLS material, applied to the gateway's TLS context, not the file.
            crl_pem: _,
            ca_pem: _,
            auth,
            directory,
            oidc,
        } = shared;
        if let Some(auth) = auth {
            self.oidc = match (oidc, self.oidc) {
                (None, _) => None,
                (Some(provider), Some(local)) => Some(local.with_shared(provider)),
                (Some(_), None) => return Err(SharedRefused::NoOidcCallback),
            };
            self.auth = self.auth.with_shared(auth);
            self.directory = directory;
        }
        self.split_tunnel = split_tunnel;
        self.dns_servers = dns_servers;
        self.session_timeout_hours = session_timeout_hours;
        self.disconnect_on_session_timeout = disconnect_on_session_timeout;
        self.keepalive_interval_secs = keepalive_interval_secs;
        self.keepalive_timeout_secs = keepalive_timeout_secs;
        self.renegotiate_secs = renegotiate_secs;
        self.gateway_addresses = gateway_addresses;
        self.banner = banner;
        self.data_ciphers = data_ciphers;
        self.groups = groups;
        self.route = route;
        self.authorization_rule = authorization_rule;
        self.security_group = security_group;
        self.applied_security_groups = applied_security_groups;
        Ok(self)
    }
}

/// Why a shared part cannot be merged into this gateway's file.
#[derive(Debug, thiserror::Error)]
pub enum SharedRefused {
    #[error("the published policy is for endpoint {published:?}, this file is for {local:?}")]
    OtherEndpoint { published: String, local: String },
    #[error(
        "oidc: the published policy signs in through OIDC, and this gateway's file has no \
         [oidc] section for its own callback: add one with its redirect_listen and \
         redirect_url (the provider sends each browser back to the gateway that started its \
         login; the provider settings there are replaced by the published ones)"
    )]
    NoOidcCallback,
}

impl SharedConfig {
    /// The text stored in etcd (TOML, readable with `etcdctl get`).
    pub fn to_text(&self) -> String {
        toml::to_string(self).expect("the shared part always serializes")
    }

    pub fn from_text(text: &str) -> Result<SharedConfig, toml::de::Error> {
        toml::from_str(text)
    }
}
