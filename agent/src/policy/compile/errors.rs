//! What the compiler reports: each problem with its field path and the fix, warnings apart.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use portcullis_common::MAX_GROUPS;

use super::{CLIENT_CIDR_MAX_LEN, CLIENT_CIDR_MIN_LEN};
use crate::policy::model::Proto;

/// One validation problem: where it is and what is wrong (the message says the fix).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}", if .kind.is_warning() { "warning: " } else { "" }, .path, .kind)]
pub struct CompileError {
    /// Field path, e.g. `authorization_rules[3].destination`.
    pub path: String,
    pub kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("`{given}` has host bits set: write `{canonical}` (or fix the prefix length)")]
    HostBitsSet { given: IpNet, canonical: IpNet },
    #[error(
        "a /{len} client pool is outside /{CLIENT_CIDR_MIN_LEN} ... /{CLIENT_CIDR_MAX_LEN}: \
         pick a pool in that range (size it at twice the peak number of connections)"
    )]
    ClientCidrSize { len: u8 },
    #[error(
        "{gateway} is not a usable host address of client_cidr {pool}: use an address inside \
         the pool other than its network and broadcast address, usually {suggested}"
    )]
    GatewayOutsidePool {
        gateway: Ipv4Addr,
        pool: Ipv4Net,
        suggested: Ipv4Addr,
    },
    #[error(
        "IPv6 destination `{0}` is not enforced by the data path yet (IPv6 packets are \
         dropped): remove this entry or use an IPv4 CIDR"
    )]
    Ipv6NotEnforced(IpNet),
    #[error(
        "route {route} lies inside client_cidr {pool}, which is reserved for client-to-client \
         traffic: remove the route or use a destination outside the pool"
    )]
    RouteInsideClientCidr { route: Ipv4Net, pool: Ipv4Net },
    #[error("{destination} already has a route (routes[{first}]); keep only one of them")]
    DuplicateRoute { destination: Ipv4Net, first: usize },
    #[error(
        "no target network is named `{name}`: use one of [{known}] or add it to target_networks"
    )]
    UnknownTargetNetwork { name: String, known: String },
    #[error(
        "no security group is named `{name}`: use one of [{known}] or define it in security_groups"
    )]
    UnknownSecurityGroup { name: String, known: String },
    #[error("interface `{0}` does not exist on this host: check the name with `ip link`")]
    UnknownInterface(String),
    #[error("the name is empty: give it a name")]
    EmptyName,
    #[error("`{name}` is already used by {first}: names must be unique, rename or remove one")]
    DuplicateName { name: String, first: String },
    #[error("`{name}` is listed twice (first at index {first}): remove the duplicate")]
    DuplicateListEntry { name: String, first: usize },
    #[error(
        "PAT range {min}..={max} is empty or includes port 0: use 1 <= pat_port_min <= \
         pat_port_max (default {}..={})",
        crate::policy::model::DEFAULT_PAT_PORT_MIN,
        crate::policy::model::DEFAULT_PAT_PORT_MAX
    )]
    BadPatRange { min: u16, max: u16 },
    #[error(
        "{addr} cannot be a source address ({why}): use the egress interface's unicast address"
    )]
    BadSnatAddress { addr: Ipv4Addr, why: &'static str },
    #[error(
        "the rule names no group and all_users is false, so it allows nobody: add groups or \
         set all_users = true"
    )]
    AllowsNobody,
    #[error(
        "no route covers {destination}, so this rule allows nothing until one does (a packet \
         needs a rule and a route, as in AWS): add a route or remove the rule"
    )]
    AuthzWithoutRoute { destination: Ipv4Net },
    #[error(
        "{count} distinct groups are named by authorization rules; the data path tells at most \
         {MAX_GROUPS} apart: merge groups or use all_users"
    )]
    TooManyGroups { count: usize },
    #[error(
        "group `{group}` reuses bit {bit}, freed by `{previous}` in the previous generation: \
         rewrite the bitmaps of live sessions so members of `{previous}` do not gain its access"
    )]
    GroupBitReused {
        group: String,
        bit: u16,
        previous: String,
    },
    #[error("from_port {from} is greater than to_port {to}: swap them")]
    PortsReversed { from: u16, to: u16 },
    #[error(
        "give both from_port and to_port (equal for a single port), or neither for every port"
    )]
    HalfPortRange,
    #[error("ports apply only to tcp and udp: remove from_port/to_port from this {proto} rule")]
    PortsOnPortlessProtocol { proto: Proto },
    #[error("{count} {what} exceed the data path's capacity of {max}: {fix}")]
    Capacity {
        what: &'static str,
        count: usize,
        max: u32,
        fix: &'static str,
    },
}

impl ErrorKind {
    /// Warnings are reported but do not stop compilation.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            ErrorKind::AuthzWithoutRoute { .. } | ErrorKind::GroupBitReused { .. }
        )
    }
}

#[derive(Default)]
pub(super) struct Diags {
    pub(super) list: Vec<CompileError>,
}

impl Diags {
    pub(super) fn push(&mut self, path: impl Into<String>, kind: ErrorKind) {
        self.list.push(CompileError {
            path: path.into(),
            kind,
        });
    }

    pub(super) fn has_errors(&self) -> bool {
        self.list.iter().any(|e| !e.kind.is_warning())
    }

    /// An IPv4, canonical destination as `(prefix_len, network)`, or a diagnostic.
    pub(super) fn v4_destination(&mut self, path: &str, net: &IpNet) -> Option<(u8, u32)> {
        match net {
            IpNet::V6(_) => {
                self.push(path, ErrorKind::Ipv6NotEnforced(*net));
                None
            }
            IpNet::V4(v4) => {
                let canonical = v4.trunc();
                if canonical != *v4 {
                    self.push(
                        path,
                        ErrorKind::HostBitsSet {
                            given: *net,
                            canonical: IpNet::V4(canonical),
                        },
                    );
                    return None;
                }
                Some((v4.prefix_len(), u32::from(v4.network())))
            }
        }
    }

    pub(super) fn check_name<'a>(
        &mut self,
        path: &str,
        name: &'a str,
        seen: &mut BTreeMap<&'a str, usize>,
        index: usize,
        describe: impl Fn(usize) -> String,
    ) {
        if name.is_empty() {
            self.push(path, ErrorKind::EmptyName);
        } else if let Some(&first) = seen.get(name) {
            self.push(
                path,
                ErrorKind::DuplicateName {
                    name: name.to_string(),
                    first: describe(first),
                },
            );
        } else {
            seen.insert(name, index);
        }
    }

    pub(super) fn capacity(
        &mut self,
        path: &str,
        what: &'static str,
        count: usize,
        max: u32,
        fix: &'static str,
    ) {
        if count > max as usize {
            self.push(
                path,
                ErrorKind::Capacity {
                    what,
                    count,
                    max,
                    fix,
                },
            );
        }
    }
}
