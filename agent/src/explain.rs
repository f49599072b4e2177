//! `portcullis policy explain --user U --to IP[:PORT/PROTO]`: the policy decision for a new
//! flow, with the authorization rule, route and security-group rule that decided it — a dry
//! run of the configuration, without a running agent.
//!
//! The walk names rules by their index in the file; the verdict is cross-checked against the
//! reference evaluator (`policy::eval`), which the data path is tested against.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use ipnet::IpNet;
use portcullis_common::{DropReason, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use serde::Serialize;

use crate::policy::eval::{evaluate_new_flow, Decision, ICMP_ECHO_REQUEST};
use crate::policy::model::{PolicyInput, Proto};

/// A flow to explain: `10.0.0.5`, `10.0.0.5:443/tcp`, `10.0.0.5:53/udp`, `10.0.0.5/icmp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Destination {
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
}

impl std::str::FromStr for Destination {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr_port, proto) = match s.rsplit_once('/') {
            Some((a, p)) => (a, p.to_ascii_lowercase()),
            None => (s, "icmp".to_owned()),
        };
        let (addr, port) = match addr_port.split_once(':') {
            Some((a, p)) => (
                a,
                p.parse::<u16>()
                    .map_err(|_| format!("`{p}` is not a port (0-65535)"))?,
            ),
            None => (addr_port, 0),
        };
        let dst: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let proto = match proto.as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            "icmp" => PROTO_ICMP,
            other => return Err(format!("protocol `{other}`: use tcp, udp or icmp")),
        };
        if proto != PROTO_ICMP && port == 0 {
            return Err(format!("give a port for {s}: e.g. {addr}:443/tcp"));
        }
        Ok(Destination { dst, proto, port })
    }
}

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub user: String,
    pub groups: Vec<String>,
    pub destination: String,
    pub verdict: String,
    /// `drop reason` name when dropped.
    pub reason: Option<String>,
    pub steps: Vec<String>,
}

fn rule_name(i: usize, desc: &Option<String>) -> String {
    match desc {
        Some(d) => format!("#{i} ({d})"),
        None => format!("#{i}"),
    }
}

/// With the user's local groups from the policy (`policy explain`).
pub fn explain(input: &PolicyInput, user: &str, t: Destination) -> Result<Explanation> {
    explain_with_groups(input, user, input.local_groups_of(user), t)
}

/// With the groups a session actually has (local and directory groups combined).
pub fn explain_with_groups(
    input: &PolicyInput,
    user: &str,
    groups: Vec<String>,
    t: Destination,
) -> Result<Explanation> {
    let set: BTreeSet<String> = groups.iter().cloned().collect();
    let mut steps = Vec::new();
    let contains = |n: &IpNet| matches!(n, IpNet::V4(n) if n.contains(&t.dst));
    let mut reason: Option<DropReason> = None;

    // Authorization: the longest prefix decides, over every group's rules.
    let covering: Vec<(usize, _)> = input
        .authorization_rules
        .iter()
        .enumerate()
        .filter(|(_, r)| contains(&r.destination))
        .collect();
    match covering
        .iter()
        .map(|(_, r)| r.destination.prefix_len())
        .max()
    {
        None => {
            steps.push(format!("authorization: no rule covers {}", t.dst));
            reason = Some(DropReason::NoAuthzRule);
        }
        Some(longest) => {
            let at: Vec<_> = covering
                .iter()
                .filter(|(_, r)| r.destination.prefix_len() == longest)
                .collect();
            let allow = at
                .iter()
                .find(|(_, r)| r.all_users || r.groups.iter().any(|g| set.contains(g)));
            match allow {
                Some((i, r)) => steps.push(format!(
                    "authorization: rule {} for {} allows ({})",
                    rule_name(*i, &r.description),
                    r.destination,
                    if r.all_users {
                        "all users".to_owned()
                    } else {
                        format!("groups {:?}", r.groups)
                    }
                )),
                None => {
                    let names: Vec<String> = at
                        .iter()
                        .map(|(i, r)| {
                            format!("{} groups {:?}", rule_name(*i, &r.description), r.groups)
                        })
                        .collect();
                    steps.push(format!(
                        "authorization: the longest prefix /{longest} has rules {} and none is for {user} (groups {groups:?}); shorter prefixes never apply",
                        names.join(", ")
                    ));
                    reason = Some(DropReason::NotAuthorized);
                }
            }
        }
    }
    if reason.is_none() {
        let best = input
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| contains(&r.destination))
            .max_by_key(|(_, r)| r.destination.prefix_len());
        match best {
            Some((i, r)) if !input.client_cidr.contains(&t.dst) => steps.push(format!(
                "route: {} {} via target network {}",
                rule_name(i, &r.description),
                r.destination,
                r.target_network
            )),
            _ if input.client_cidr.contains(&t.dst) => steps.push(format!(
                "route: {} is in the client pool (client to client)",
                t.dst
            )),
            _ => {
                steps.push(format!("route: no route covers {}", t.dst));
                reason = Some(DropReason::NoRoute);
            }
        }
    }
    if reason.is_none() {
        if input.applied_security_groups.is_empty() {
            steps.push("security groups: none applied, all egress allowed".into());
        } else {
            let mut hit = None;
            for name in &input.applied_security_groups {
                for g in input.security_groups.iter().filter(|g| &g.name == name) {
                    for (i, rule) in g.egress.iter().enumerate() {
                        let (from, to) = rule.port_range();
                        let m = contains(&rule.destination)
                            && match rule.protocol {
                                Proto::All => true,
                                Proto::Icmp => t.proto == PROTO_ICMP,
                                Proto::Tcp => {
                                    t.proto == PROTO_TCP && from <= t.port && t.port <= to
                                }
                                Proto::Udp => {
                                    t.proto == PROTO_UDP && from <= t.port && t.port <= to
                                }
                            };
                        if m && hit.is_none() {
                            hit = Some(format!(
                                "security group {name} egress {} ({} {} {}-{}) allows",
                                rule_name(i, &rule.description),
                                rule.protocol,
                                rule.destination,
                                from,
                                to
                            ));
                        }
                    }
                }
            }
            match hit {
                Some(h) => steps.push(h),
                None => {
                    steps.push(format!(
                        "security groups: no egress rule of {:?} allows this protocol and port",
                        input.applied_security_groups
                    ));
                    reason = Some(DropReason::SecurityGroup);
                }
            }
        }
    }
    let icmp = (t.proto == PROTO_ICMP).then_some(ICMP_ECHO_REQUEST);
    let reference = evaluate_new_flow(input, &set, t.dst, t.proto, t.port, icmp, &BTreeSet::new());
    // Client-to-client needs a live peer, which a dry run does not have: allowed by policy.
    let reference_reason = match &reference {
        Decision::Drop(DropReason::ClientUnreachable) => None,
        Decision::Drop(r) => Some(*r),
        _ => None,
    };
    if reference_reason != reason {
        bail!(
            "internal error: the explanation ({reason:?}) disagrees with the reference evaluator ({reference:?}); please report it"
        );
    }
    let verdict = match &reference {
        Decision::Forward {
            target_name, snat, ..
        } => format!("ALLOWED: out through {target_name}, source translated to {snat}"),
        Decision::ClientToClient | Decision::Drop(DropReason::ClientUnreachable) => {
            "ALLOWED: client to client (if that address is connected)".into()
        }
        Decision::Drop(r) => format!("DENIED: {}", r.name()),
    };
    Ok(Explanation {
        user: user.to_owned(),
        groups,
        destination: format!(
            "{}{}/{}",
            t.dst,
            if t.proto == PROTO_ICMP {
                String::new()
            } else {
                format!(":{}", t.port)
            },
            match t.proto {
                PROTO_TCP => "tcp",
                PROTO_UDP => "udp",
                _ => "icmp",
            }
        ),
        verdict,
        reason: reason.map(|r| r.name().to_owned()),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = include_str!("demo/policy.toml");

    #[test]
    fn names_the_deciding_rules_like_the_demo() {
        let p: PolicyInput = toml::from_str(POLICY).unwrap();
        let e = explain(&p, "bob", "10.0.0.10:80/tcp".parse().unwrap()).unwrap();
        assert_eq!(e.reason.as_deref(), Some("not_authorized"));
        assert!(e.steps[0].contains("/32"), "{:?}", e.steps);
        let e = explain(&p, "alice", "10.0.0.10:80/tcp".parse().unwrap()).unwrap();
        assert!(e.verdict.starts_with("ALLOWED"), "{e:?}");
        assert!(e.steps.iter().any(|s| s.contains("web-and-dns")), "{e:?}");
        let e = explain(&p, "alice", "10.0.0.10:22/tcp".parse().unwrap()).unwrap();
        assert_eq!(e.reason.as_deref(), Some("security_group"));
        let e = explain(&p, "bob", "192.168.77.7:53/udp".parse().unwrap()).unwrap();
        assert_eq!(e.reason.as_deref(), Some("no_authorization_rule"));
    }

    #[test]
    fn targets_parse_with_clear_errors() {
        assert!("10.0.0.1".parse::<Destination>().is_ok());
        assert!("10.0.0.1:443/tcp".parse::<Destination>().is_ok());
        assert!("10.0.0.1/tcp"
            .parse::<Destination>()
            .unwrap_err()
            .contains("port"));
        assert!("x:1/tcp"
            .parse::<Destination>()
            .unwrap_err()
            .contains("IPv4"));
        assert!("10.0.0.1:1/sctp"
            .parse::<Destination>()
            .unwrap_err()
            .contains("protocol"));
    }
}
