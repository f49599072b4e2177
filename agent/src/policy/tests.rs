//! Policy tests: AWS worked scenarios, validation, compiler output, frame parsing, and the
//! property test "compiled maps, interpreted like the XDP program == reference evaluator".
#[path = "tests/compiler.rs"]
mod compiler;
#[path = "tests/frames.rs"]
mod frames;
#[path = "tests/scenarios.rs"]
mod scenarios;
#[path = "tests/validation.rs"]
mod validation;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::IpNet;
use portcullis_common::{
    group_test, sg_flags, DropReason, PortRange, GROUP_WORDS, MAX_AUTHZ_PREFIXES, MAX_GROUPS,
    MAX_ROUTES, MAX_SG_RANGES, MAX_TARGETS, PROTO_ICMP, PROTO_TCP, PROTO_UDP, TARGET_TUNNEL,
};
use proptest::prelude::*;

use super::compile::{coalesce, compile, compile_with_previous, CompiledPolicy, ErrorKind};
use super::compiled_eval::{self, CompiledView};
use super::eval::{evaluate_frame, evaluate_new_flow, tcp_flags, Decision, FrameDecision, Verdict};
use super::model::{
    AuthzRule, GatewayPort, PolicyInput, Proto, Route, SecurityGroup, SgRule, TargetNetwork,
};
use super::testgen::{self, live_clients, resolver, LIVE};
use crate::reconcile::SlotContents;

// Glob-imported for brevity; `SecurityGroup` (also a model type) is written in full.
use DropReason::*;

// ---- helpers ------------------------------------------------------------------------------

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn groups(g: &[&str]) -> BTreeSet<String> {
    g.iter().map(|s| s.to_string()).collect()
}

fn rule(dest: &str, g: &[&str]) -> AuthzRule {
    AuthzRule {
        destination: net(dest),
        groups: g.iter().map(|s| s.to_string()).collect(),
        all_users: false,
        description: None,
    }
}

fn all_users(dest: &str) -> AuthzRule {
    AuthzRule {
        destination: net(dest),
        groups: vec![],
        all_users: true,
        description: None,
    }
}

fn route(dest: &str, target: &str) -> Route {
    Route {
        destination: net(dest),
        target_network: target.into(),
        description: None,
    }
}

fn target(name: &str, interface: &str, snat: &str) -> TargetNetwork {
    TargetNetwork {
        name: name.into(),
        interface: interface.into(),
        snat_address: ip(snat),
        pat_port_min: 61000,
        pat_port_max: 65535,
    }
}

fn sg_rule(proto: Proto, ports: Option<(u16, u16)>, dest: &str) -> SgRule {
    SgRule {
        protocol: proto,
        from_port: ports.map(|p| p.0),
        to_port: ports.map(|p| p.1),
        destination: net(dest),
        description: None,
    }
}

/// Pool 10.100.0.0/22, one target network `vpc` (eth1, SNAT 10.0.0.5), route 10.0.0.0/8.
fn base() -> PolicyInput {
    PolicyInput {
        client_cidr: testgen::pool(),
        gateway_addr: ip("10.100.0.1"),
        gateway_ports: super::model::default_gateway_ports(),
        groups: BTreeMap::new(),
        target_networks: vec![target("vpc", "eth1", "10.0.0.5")],
        routes: vec![route("10.0.0.0/8", "vpc")],
        authorization_rules: vec![],
        security_groups: vec![],
        applied_security_groups: vec![],
    }
}

fn vpc() -> Decision {
    Decision::Forward {
        target_index: 0,
        target_name: "vpc".into(),
        snat: ip("10.0.0.5"),
    }
}

/// The reference decision, after asserting that the compiled maps (interpreted as a
/// `CompiledPolicy` and as a data-path slot) decide the same.
fn decide(input: &PolicyInput, user: &[&str], dst: &str, proto: u8, dport: u16) -> Decision {
    let icmp_type = (proto == PROTO_ICMP).then_some(8);
    decide_icmp(input, user, dst, proto, dport, icmp_type)
}

fn decide_icmp(
    input: &PolicyInput,
    user: &[&str],
    dst: &str,
    proto: u8,
    dport: u16,
    icmp_type: Option<u8>,
) -> Decision {
    let live = live_clients();
    let user = groups(user);
    let reference = evaluate_new_flow(input, &user, ip(dst), proto, dport, icmp_type, &live);
    let compiled = compile(input, &resolver).expect("policy compiles");
    let bits = compiled.groups_bitmap(user.iter().map(String::as_str));
    let slot = SlotContents::from_compiled(&compiled, 1);
    for view in [&compiled as &dyn ViewRef, &slot] {
        let got = view.eval(&bits, ip(dst), proto, dport, icmp_type, &live);
        assert_eq!(
            got,
            reference.verdict(),
            "compiled vs reference for {dst} proto {proto}"
        );
    }
    reference
}

/// Object-safe wrapper so one loop can run both views.
trait ViewRef {
    fn eval(
        &self,
        bits: &portcullis_common::GroupBits,
        dst: Ipv4Addr,
        proto: u8,
        dport: u16,
        icmp_type: Option<u8>,
        live: &BTreeSet<Ipv4Addr>,
    ) -> Verdict;
}

impl<T: CompiledView> ViewRef for T {
    fn eval(
        &self,
        bits: &portcullis_common::GroupBits,
        dst: Ipv4Addr,
        proto: u8,
        dport: u16,
        icmp_type: Option<u8>,
        live: &BTreeSet<Ipv4Addr>,
    ) -> Verdict {
        compiled_eval::evaluate_new_flow(self, bits, dst, proto, dport, icmp_type, live)
    }
}

fn errors(input: &PolicyInput) -> Vec<(String, ErrorKind)> {
    compile(input, &resolver)
        .expect_err("policy must be rejected")
        .into_iter()
        .map(|e| (e.path, e.kind))
        .collect()
}

fn has(errs: &[(String, ErrorKind)], path: &str, pred: impl Fn(&ErrorKind) -> bool) -> bool {
    errs.iter().any(|(p, k)| p == path && pred(k))
}

// ---- AWS worked scenarios (architecture.md) -----------------------------------------------
