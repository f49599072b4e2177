//! The policy as an administrator writes it: AWS Client VPN's authorization rules, route
//! table, target networks (associations) and security groups, for one endpoint.
//!
//! Field names follow AWS where there is an AWS equivalent. Every struct rejects unknown
//! fields so a typo in the config file is an error, not a silently ignored rule.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

/// The whole policy of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Pool the client tunnel addresses are taken from.
    pub client_cidr: Ipv4Net,
    /// The gateway's own address inside `client_cidr` (the TAP address), usually the first
    /// host. The only address of the gateway host clients can reach, and only on
    /// `gateway_ports`.
    pub gateway_addr: Ipv4Addr,
    /// What clients may reach on `gateway_addr` (default: ping only). Every other port of it,
    /// and every other local address of the host, is dropped by the data path.
    #[serde(default = "default_gateway_ports")]
    pub gateway_ports: Vec<GatewayPort>,
    /// Local groups: group name -> user names. Directory groups come from LDAP instead.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub target_networks: Vec<TargetNetwork>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub authorization_rules: Vec<AuthzRule>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    /// Names of the security groups applied to the endpoint. Empty means no security group,
    /// which (as in AWS) allows all egress.
    #[serde(default)]
    pub applied_security_groups: Vec<String>,
}

/// Where routed traffic leaves the gateway (an AWS "target network association").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetNetwork {
    pub name: String,
    /// Egress interface name (e.g. `eth1`).
    pub interface: String,
    /// Source address translated flows get.
    pub snat_address: Ipv4Addr,
    /// PAT range used when a client's source port collides (inclusive). Reserve it on the
    /// host (`net.ipv4.ip_local_reserved_ports`) so local sockets never take these ports.
    #[serde(default = "default_pat_port_min")]
    pub pat_port_min: u16,
    #[serde(default = "default_pat_port_max")]
    pub pat_port_max: u16,
}

pub const DEFAULT_PAT_PORT_MIN: u16 = 61_000;
pub const DEFAULT_PAT_PORT_MAX: u16 = 65_535;

fn default_pat_port_min() -> u16 {
    DEFAULT_PAT_PORT_MIN
}

fn default_pat_port_max() -> u16 {
    DEFAULT_PAT_PORT_MAX
}

/// A service of the gateway address open to clients: `"icmp"` (echo), `"tcp/PORT"` or
/// `"udp/PORT"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GatewayPort {
    IcmpEcho,
    Tcp(u16),
    Udp(u16),
}

pub fn default_gateway_ports() -> Vec<GatewayPort> {
    vec![GatewayPort::IcmpEcho]
}

impl GatewayPort {
    /// Protocol number and port (for ICMP: the message type) of the packets it admits.
    pub fn proto_port(self) -> (u8, u16) {
        match self {
            GatewayPort::IcmpEcho => (portcullis_common::PROTO_ICMP, 8),
            GatewayPort::Tcp(p) => (portcullis_common::PROTO_TCP, p),
            GatewayPort::Udp(p) => (portcullis_common::PROTO_UDP, p),
        }
    }
}

impl std::fmt::Display for GatewayPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GatewayPort::IcmpEcho => f.write_str("icmp"),
            GatewayPort::Tcp(p) => write!(f, "tcp/{p}"),
            GatewayPort::Udp(p) => write!(f, "udp/{p}"),
        }
    }
}

impl TryFrom<String> for GatewayPort {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not \"icmp\", \"tcp/PORT\" or \"udp/PORT\"");
        if s == "icmp" {
            return Ok(GatewayPort::IcmpEcho);
        }
        let (proto, port) = s.split_once('/').ok_or_else(bad)?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        match proto {
            "tcp" => Ok(GatewayPort::Tcp(port)),
            "udp" => Ok(GatewayPort::Udp(port)),
            _ => Err(bad()),
        }
    }
}

impl From<GatewayPort> for String {
    fn from(p: GatewayPort) -> String {
        p.to_string()
    }
}

/// A route-table entry: destination CIDR -> target network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub destination: IpNet,
    /// Name of a [`TargetNetwork`].
    pub target_network: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// An authorization rule: destination CIDR x (groups | all users).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRule {
    pub destination: IpNet,
    /// Groups allowed by this rule. AWS takes one group per rule; several here are the same
    /// as several rules with the same destination.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Allow every authenticated user (AWS `AuthorizeAllGroups`).
    #[serde(default)]
    pub all_users: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// A security group: a stateful egress allow-list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub name: String,
    /// No rules means nothing is allowed (when the group is applied).
    #[serde(default)]
    pub egress: Vec<SgRule>,
}

/// One egress rule. Ports apply to TCP and UDP only; leaving both out means every port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgRule {
    pub protocol: Proto,
    #[serde(default)]
    pub from_port: Option<u16>,
    #[serde(default)]
    pub to_port: Option<u16>,
    pub destination: IpNet,
    #[serde(default)]
    pub description: Option<String>,
}

impl SgRule {
    /// The inclusive port range the rule allows (whole range when no port is given).
    pub fn port_range(&self) -> (u16, u16) {
        (
            self.from_port.unwrap_or(0),
            self.to_port.unwrap_or(u16::MAX),
        )
    }
}

/// Security-group rule protocol. `"-1"` is AWS's spelling of "all".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    #[serde(alias = "-1")]
    All,
}

impl std::fmt::Display for Proto {
    /// The spelling used in the config file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
            Proto::All => "all",
        })
    }
}

impl PolicyInput {
    /// The local groups `user` is a member of, sorted.
    pub fn local_groups_of(&self, user: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m == user))
            .map(|(group, _)| group.clone())
            .collect()
    }
}
