//! `BPF_PROG_TEST_RUN` tables for both XDP programs: frame in → expected action, expected
//! frame out (byte for byte, so addresses, ports, TTL, MACs from the FIB and every checksum)
//! and expected drop/event counter deltas (exact: every other counter must stay put).
//!
//! One gateway for the whole table (namespaces are slow to make). Before each case the
//! runner restores the base policy and empties conntrack, so every case states its own
//! preconditions in `setup` (packets that open flows, policy changes, ageing a flow), and
//! counters are read after the setup.
//!
//! The test thread is inside the gateway namespace, and `ctx_in` names the TAP (or the
//! target veth) as the ingress device, so `bpf_fib_lookup` resolves the server's MAC from
//! the static neighbour entries and the program returns `XDP_REDIRECT`.
use std::{
    net::Ipv4Addr,
    panic::{catch_unwind, AssertUnwindSafe},
    time::Instant,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use portcullis::{datapath::maps::Flow, policy::PolicyInput};
use portcullis_common::{
    ct_state, map_names, CtEntry, DenyEvent, DropReason, DropReason as D, Event, FlowKey,
    RouteValue, NO_SLOT, PROG_EGRESS, PROG_TAP,
};
use tests::{
    frames::{self, tcp, *},
    gateway::*,
    mac_of, require_root, unique,
};

const A: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
/// Member of `admins`.
const B: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 3);
/// A client with a flow quota of one.
const Q: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 4);
const SNAT: Ipv4Addr = GW_NET_ADDR;
/// A second server address: security group "all protocols" applies to it.
const SERVER2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
/// Inside the /24 rule but hidden by a /32 rule for `admins`; no neighbour entry.
const ADMIN_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
/// Authorized, routed by the policy, but the gateway namespace has no kernel route.
const NO_FIB: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 5);
/// Authorized and routed, the kernel routes it through a device outside the devmap.
const OTHER_DEV: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 2);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
const PAT: [u16; 2] = [62000, 62001];
/// The client's next sequence number after the SYN `Pkt::tcp` builds (seq 0x1000_0000).
const SYN_END: u32 = 0x1000_0001;
/// The server's initial sequence number in [`handshake`].
const SERVER_ISN: u32 = 0x7000_0000;

/// Setup: the client's SYN out, the server's SYN-ACK (acknowledging it) back.
fn handshake(env: &mut Env, syn: &Pkt) {
    env.send(syn);
    let synack = Pkt::tcp(SERVER, 80, SNAT, syn.sport(), tcp::SYN | tcp::ACK)
        .seq_ack(SERVER_ISN, SYN_END)
        .macs(env.gw.server_mac, env.gw.gw_mac);
    let (a, _) = env.run(Prog::Egress, &synack.frame());
    assert_eq!(a, XDP_REDIRECT, "SYN-ACK of the handshake");
}
const MAX_FLOWS: u32 = 8;

fn policy_toml(extra: &str, with_lan_rule: bool) -> PolicyInput {
    let lan_rule = if with_lan_rule {
        "[[authorization_rules]]\ndestination = \"10.0.0.0/24\"\nall_users = true\n"
    } else {
        ""
    };
    toml_policy(&format!(
        r#"
client_cidr = "10.100.0.0/24"
gateway_addr = "10.100.0.1"
applied_security_groups = ["sg"]

[[target_networks]]
name = "private"
interface = "{GW_IF}"
snat_address = "{SNAT}"
pat_port_min = {}
pat_port_max = {}

[[routes]]
destination = "10.0.0.0/24"
target_network = "private"
[[routes]]
destination = "192.168.77.0/24"
target_network = "private"
[[routes]]
destination = "172.16.0.0/24"
target_network = "private"

{lan_rule}
[[authorization_rules]]
destination = "10.0.0.20/32"
groups = ["admins"]
[[authorization_rules]]
destination = "10.100.0.0/24"
all_users = true
[[authorization_rules]]
destination = "10.50.0.0/16"
all_users = true
[[authorization_rules]]
destination = "192.168.77.0/24"
all_users = true
[[authorization_rules]]
destination = "172.16.0.0/24"
all_users = true
{extra}

[[security_groups]]
name = "sg"
[[security_groups.egress]]
protocol = "tcp"
from_port = 1
to_port = 1000
destination = "10.0.0.0/24"
[[security_groups.egress]]
protocol = "udp"
destination = "10.0.0.0/24"
[[security_groups.egress]]
protocol = "icmp"
destination = "10.0.0.0/24"
[[security_groups.egress]]
protocol = "-1"
destination = "10.0.0.11/32"
[[security_groups.egress]]
protocol = "-1"
destination = "10.100.0.0/24"
[[security_groups.egress]]
protocol = "-1"
destination = "192.168.77.0/24"
[[security_groups.egress]]
protocol = "-1"
destination = "172.16.0.0/24"
"#,
        PAT[0], PAT[1]
    ))
}

fn base() -> PolicyInput {
    policy_toml("", true)
}

/// The base policy without the rule for 10.0.0.0/24: flows to the servers are revoked.
fn revoked() -> PolicyInput {
    policy_toml("", false)
}

/// The base policy plus an unrelated rule: a new generation that still allows everything.
fn extended() -> PolicyInput {
    policy_toml(
        "[[authorization_rules]]\ndestination = \"10.60.0.0/16\"\nall_users = true\n",
        true,
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prog {
    Tap,
    Egress,
}

struct Env {
    gw: Gateway,
    tap_if: u32,
    gw_if: u32,
    tap_mac: [u8; 6],
    /// Deny events the TAP program should have emitted, in order.
    denies: Vec<(DropReason, FlowKey)>,
    /// Host sockets a case's setup opened (closed before the next case).
    sockets: Vec<std::net::UdpSocket>,
}

/// The session slot of each test client (as `add_client` wrote it); other sources get 0.
fn slot_of(a: Ipv4Addr) -> u32 {
    match a {
        B => 1,
        Q => 2,
        _ => 0,
    }
}

/// `p` as the agent writes it for its sender's session.
fn sent(p: &Pkt) -> Pkt {
    p.clone().session(slot_of(p.src))
}

/// Give client `a`'s address to session `slot` (its `clients` entry only, as the agent does
/// before it moves the flows), or back.
fn move_client(env: &mut Env, a: Ipv4Addr, slot: u32) {
    let mut info = env.gw.dp.maps.client(a).unwrap().expect("client entry");
    info.slot = slot;
    env.gw.dp.maps.upsert_client(a, info).unwrap();
}

/// A host socket on the SNAT address, port `port`, connected to the server's DNS port (a
/// UDP connect sends nothing).
fn host_socket(env: &mut Env, port: u16) {
    let s = std::net::UdpSocket::bind((SNAT, port)).expect("bind host socket");
    s.connect((SERVER, 53)).expect("connect host socket");
    env.sockets.push(s);
}

/// The conntrack key of a packet as the client sends it.
fn key_of(p: &Pkt) -> FlowKey {
    let (sport, dport) = match p.l4 {
        L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (sport, dport),
        L4::Icmp { ty, rest, .. } if ty == ICMP_ECHO_REQUEST => {
            (u16::from_be_bytes([rest[0], rest[1]]), 0)
        }
        _ => (0, 0),
    };
    FlowKey::v4(p.proto(), p.src.octets(), sport, p.dst.octets(), dport)
}

impl Env {
    fn run(&mut self, prog: Prog, frame: &[u8]) -> (u32, Vec<u8>) {
        let (name, ifindex) = match prog {
            Prog::Tap => (PROG_TAP, self.tap_if),
            Prog::Egress => (PROG_EGRESS, self.gw_if),
        };
        let p = self.gw.dp.program(name).expect("program loaded");
        frames::test_run(p, ifindex, frame)
    }

    /// Setup step: `p` from a client must be admitted and forwarded.
    fn send(&mut self, p: &Pkt) {
        let (a, _) = self.run(Prog::Tap, &sent(p).frame());
        assert!(
            a == XDP_REDIRECT || a == XDP_TX,
            "setup packet {p:?} got {}",
            action_name(a)
        );
    }

    fn flow(&self, p: &Pkt) -> Flow {
        let k = key_of(p);
        self.gw
            .dp
            .maps
            .flows()
            .unwrap()
            .into_iter()
            .find(|(fk, _)| *fk == k)
            .unwrap_or_else(|| panic!("no conntrack entry for {k:?}"))
            .1
    }

    /// Age a flow by `secs` seconds (its `last_seen_ns`), through the pinned map.
    fn age(&mut self, p: &Pkt, secs: u64) {
        let path = self.gw.dp.options.pin_dir().join(map_names::CONNTRACK);
        let map = Map::from_map_data(MapData::from_pin(path).unwrap()).unwrap();
        let mut ct: BpfHashMap<_, FlowKey, CtEntry> = BpfHashMap::try_from(map).unwrap();
        let k = key_of(p);
        let mut e = ct.get(&k, 0).expect("flow to age");
        e.last_seen_ns -= secs * 1_000_000_000;
        ct.insert(k, e, 0).unwrap();
    }

    fn set_policy(&mut self, p: PolicyInput) {
        self.gw.set_policy(p);
    }
}

enum Out {
    /// The program must not have touched the frame.
    Unchanged,
    /// Not looked at (dropped after a partial rewrite).
    Any,
    /// Exactly these bytes.
    Frame(Vec<u8>),
    /// Exactly these bytes, computed after the run (e.g. from the port PAT picked).
    Lazy(Lazy),
}

type Hook = Box<dyn Fn(&mut Env)>;
/// A frame computed after the setup ran (e.g. addressed to the port PAT picked).
type Lazy = Box<dyn Fn(&Env) -> Vec<u8>>;

struct Case {
    name: &'static str,
    prog: Prog,
    setup: Option<Hook>,
    frame: Lazy,
    action: u32,
    out: Out,
    delta: Delta,
    /// More assertions after the run (conntrack contents, session counters).
    check: Option<Hook>,
    /// For the deny-event check: the flow the TAP program reports.
    deny_key: Option<FlowKey>,
}

fn tap(name: &'static str, p: &Pkt) -> Case {
    case(name, Prog::Tap, sent(p).frame()).key(key_of(p))
}

fn egress(name: &'static str, p: &Pkt) -> Case {
    case(name, Prog::Egress, p.frame())
}

fn case(name: &'static str, prog: Prog, frame: Vec<u8>) -> Case {
    lazy(name, prog, move |_| frame.clone())
}

fn lazy(name: &'static str, prog: Prog, frame: impl Fn(&Env) -> Vec<u8> + 'static) -> Case {
    Case {
        name,
        prog,
        setup: None,
        frame: Box::new(frame),
        action: XDP_DROP,
        out: Out::Unchanged,
        delta: Delta::default(),
        check: None,
        deny_key: None,
    }
}

impl Case {
    fn key(mut self, k: FlowKey) -> Case {
        self.deny_key = Some(k);
        self
    }
    fn setup(mut self, f: impl Fn(&mut Env) + 'static) -> Case {
        self.setup = Some(Box::new(f));
        self
    }
    fn check(mut self, f: impl Fn(&mut Env) + 'static) -> Case {
        self.check = Some(Box::new(f));
        self
    }
    /// Dropped with `r`, counted once, and no event.
    fn drops(mut self, r: DropReason) -> Case {
        self.action = XDP_DROP;
        self.delta = Delta::new(&[(r, 1)], &[]);
        self
    }
    /// Dropped after a rewrite: the output is not compared.
    fn drops_after(self, r: DropReason, events: &[Event]) -> Case {
        let mut c = self.drops(r);
        c.delta = Delta::new(&[(r, 1)], &ones(events));
        c.out = Out::Any;
        c
    }
    fn gives(mut self, action: u32, out: Out, events: &[Event]) -> Case {
        self.action = action;
        self.out = out;
        self.delta = Delta::new(&[], &ones(events));
        self
    }
}

fn ones(events: &[Event]) -> Vec<(Event, u64)> {
    events.iter().map(|e| (*e, 1)).collect()
}

/// Drop reasons the TAP program reports as deny events (policy decisions, not parsing).
fn is_deny(r: DropReason) -> bool {
    !matches!(
        r,
        D::Malformed
            | D::NotIp
            | D::Ipv6Unsupported
            | D::IpOptions
            | D::Fragment
            | D::FibLookupFailed
            | D::RedirectFailed
    )
}

/// Run one case; returns the failures found.
fn run_case(env: &mut Env, c: &Case) -> Vec<String> {
    let mut errs = Vec::new();
    if env.gw.policy != base() {
        env.set_policy(base());
    }
    env.gw.dp.maps.delete_flows(|_, _| true).unwrap();
    env.sockets.clear();
    if let Some(s) = &c.setup {
        s(env);
    }
    let frame = (c.frame)(env);
    let before = Counters::read(&env.gw.dp.maps);
    let (action, out) = env.run(c.prog, &frame);
    let delta = Counters::read(&env.gw.dp.maps).since(&before);
    if action != c.action {
        errs.push(format!(
            "action {} != expected {}",
            action_name(action),
            action_name(c.action)
        ));
    }
    if delta != c.delta {
        errs.push(format!("counters moved {delta:?}, expected {:?}", c.delta));
    }
    let want = match &c.out {
        Out::Unchanged => Some(frame.clone()),
        Out::Any => None,
        Out::Frame(f) => Some(f.clone()),
        Out::Lazy(f) => Some(f(env)),
    };
    if let Some(want) = want {
        if out != want {
            errs.push(format!("output differs: {}", frames::diff(&out, &want)));
        }
        // The expected frames are built with correct checksums; say which one is off.
        if action != XDP_DROP && verify_checksums(&frame).is_ok() {
            if let Err(bad) = verify_checksums(&out) {
                errs.push(format!("wrong checksums in output: {bad:?}"));
            }
        }
    }
    if let Some(f) = &c.check {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(env))) {
            errs.push(format!("check: {}", panic_msg(&p)));
        }
    }
    if c.prog == Prog::Tap && action == XDP_DROP && c.delta.drops.len() == 1 {
        let r = c.delta.drops[0].0;
        if is_deny(r) {
            env.denies
                .push((r, c.deny_key.expect("tap case has a key")));
        }
    }
    errs
}

fn panic_msg(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn xdp_programs_on_a_table_of_frames() {
    require_root!();
    let t0 = Instant::now();
    let gw = Gateway::new(
        base(),
        Options {
            extra_server_addrs: vec![SERVER2],
            max_flows: Some(MAX_FLOWS),
            deny_events_per_sec: 1000,
        },
    );
    // A device the kernel routes 172.16.0.0/24 through, which is not in the devmap.
    let (xa, xb) = (unique("xa"), unique("xb"));
    gw.gw
        .ip(&["link", "add", &xa, "type", "veth", "peer", "name", &xb]);
    gw.gw.ip(&["addr", "add", "172.16.0.1/24", "dev", &xa]);
    gw.gw.ip(&["link", "set", &xa, "up"]);
    gw.gw.ip(&["link", "set", &xb, "up"]);
    let xb_mac = mac_of(&gw.gw, &xb);
    gw.gw.ip(&[
        "neigh",
        "replace",
        &OTHER_DEV.to_string(),
        "lladdr",
        &fmt_mac(&xb_mac),
        "dev",
        &xa,
        "nud",
        "permanent",
    ]);
    let tap_if = gw.tap.ifindex;
    let tap_mac = gw.tap.mac;
    let gw_if = portcullis::datapath::ifindex(GW_IF).expect("gw veth");
    let mut env = Env {
        gw,
        tap_if,
        gw_if,
        tap_mac,
        denies: Vec::new(),
        sockets: Vec::new(),
    };
    env.gw.add_client(A, &[], 0);
    env.gw.add_client(B, &["admins"], 1);
    env.gw.add_client_with_quota(Q, &[], 2, 1);

    let cases = table(&env);
    let n = cases.len();
    let mut failures = Vec::new();
    for c in &cases {
        let errs = match catch_unwind(AssertUnwindSafe(|| run_case(&mut env, c))) {
            Ok(e) => e,
            Err(p) => vec![format!("panicked: {}", panic_msg(&p))],
        };
        if !errs.is_empty() {
            failures.push(format!("{}:\n    {}", c.name, errs.join("\n    ")));
        }
    }

    // Deny events: one per policy drop on the TAP, in order, with the flow and the slot.
    let mut ring = env.gw.dp.maps.take_deny_events().unwrap();
    let mut got = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), std::mem::size_of::<DenyEvent>());
        // SAFETY: the record is exactly one DenyEvent (checked above), a #[repr(C)]
        // plain-integer type for which every bit pattern is valid.
        let ev: DenyEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        got.push(ev);
    }
    let want: Vec<(DropReason, FlowKey)> = env.denies.clone();
    let got_pairs: Vec<(DropReason, FlowKey)> = got
        .iter()
        .map(|e| (DropReason::from_u8(e.reason).unwrap(), e.flow))
        .collect();
    if got_pairs != want {
        failures.push(format!(
            "deny events:\n    got  {:?}\n    want {:?}",
            got_pairs.iter().map(|p| p.0).collect::<Vec<_>>(),
            want.iter().map(|p| p.0).collect::<Vec<_>>()
        ));
    }
    for e in &got {
        let spoofed = e.reason == D::Spoofed as u8 || e.reason == D::ForgedSource as u8;
        let expect_slot = if spoofed {
            NO_SLOT
        } else {
            match e.flow.src_v4() {
                A => 0,
                B => 1,
                Q => 2,
                other => panic!("deny event from {other}"),
            }
        };
        if e.slot != expect_slot {
            failures.push(format!(
                "deny event {e:?}: slot {} != {expect_slot}",
                e.slot
            ));
        }
    }

    eprintln!(
        "{n} cases, {} deny events, in {:?}",
        got.len(),
        t0.elapsed()
    );
    assert!(n >= 30, "the table has {n} cases");
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Frame helpers for malformed inputs: start from a valid frame and break one thing.
fn edit(p: &Pkt, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = p.frame();
    f(&mut v);
    v
}

fn set_tot_len(v: &mut [u8], len: u16) {
    v[16..18].copy_from_slice(&len.to_be_bytes());
    fix_ip_csum(v);
}

fn table(env: &Env) -> Vec<Case> {
    use Event::*;
    let tap_mac = env.tap_mac;
    let server_mac = env.gw.server_mac;
    let gw_mac = env.gw.gw_mac;
    // What leaves for the network: source translated, TTL - 1, MACs from the FIB.
    let out_net = move |p: &Pkt, sport: u16| {
        p.clone()
            .src(SNAT)
            .set_sport(sport)
            .ttl(p.ttl - 1)
            .macs(gw_mac, server_mac)
    };
    // What comes in from the network, addressed to the SNAT address.
    let from_net = move |p: Pkt| p.macs(server_mac, gw_mac);
    // What goes into the TAP for client `c`.
    let to_client = move |p: Pkt, c: Ipv4Addr| {
        let ttl = p.ttl - 1;
        p.dst(c).ttl(ttl).macs(tap_mac, client_mac(c))
    };
    // The port PAT gave the flow of `p` (read after the run).
    let nat_port = |env: &Env, p: &Pkt| env.flow(p).nat_port;

    let syn = Pkt::tcp(A, 40000, SERVER, 80, tcp::SYN);
    let syn_b = Pkt::tcp(B, 40000, SERVER, 80, tcp::SYN);
    let udp = Pkt::udp(A, 40000, SERVER, 53, b"query");
    let udp_b = Pkt::udp(B, 40000, SERVER, 53, b"query");
    let ping = Pkt::echo_request(A, SERVER, 7, 1);
    let ping_b = Pkt::echo_request(B, SERVER, 7, 1);

    let mut t = vec![
        // ---- parsing ----------------------------------------------------------------------
        case(
            "ARP is not IP",
            Prog::Tap,
            eth(tap_mac, CLIENT_MAC, ETH_P_ARP, &[0u8; 28]),
        )
        .drops(D::NotIp),
        case(
            "IPv6 is dropped until it is enforced",
            Prog::Tap,
            eth(tap_mac, CLIENT_MAC, ETH_P_IPV6, &{
                let mut h = [0u8; 48];
                h[0] = 0x60;
                h[5] = 8;
                h[6] = 17;
                h[7] = 64;
                h
            }),
        )
        .drops(D::Ipv6Unsupported),
        case(
            "IPv4 header cut short",
            Prog::Tap,
            syn.frame()[..14 + 12].to_vec(),
        )
        .drops(D::Malformed),
        case(
            "IPv4 ethertype with version 6",
            Prog::Tap,
            edit(&syn, |v| {
                v[14] = 0x65;
                fix_ip_csum(v)
            }),
        )
        .drops(D::Malformed),
        case("IHL below 5", Prog::Tap, edit(&syn, |v| v[14] = 0x44)).drops(D::Malformed),
        case(
            "total length beyond the frame",
            Prog::Tap,
            edit(&syn, |v| {
                let l = (v.len() - 14 + 1) as u16;
                set_tot_len(v, l)
            }),
        )
        .drops(D::Malformed),
        case(
            "total length below the header",
            Prog::Tap,
            edit(&syn, |v| set_tot_len(v, 19)),
        )
        .drops(D::Malformed),
        case(
            "TCP header cut short by the total length",
            Prog::Tap,
            edit(&syn, |v| set_tot_len(v, 30)),
        )
        .drops(D::Malformed),
        case(
            "TCP data offset 4",
            Prog::Tap,
            edit(&syn, |v| v[14 + 20 + 12] = 4 << 4),
        )
        .drops(D::Malformed),
        case(
            "TCP data offset past the segment",
            Prog::Tap,
            edit(&syn, |v| v[14 + 20 + 12] = 15 << 4),
        )
        .drops(D::Malformed),
        case(
            "UDP header cut short",
            Prog::Tap,
            edit(&udp, |v| set_tot_len(v, 24)),
        )
        .drops(D::Malformed),
        case(
            "ICMP header cut short",
            Prog::Tap,
            edit(&ping, |v| set_tot_len(v, 27)),
        )
        .drops(D::Malformed),
        case(
            "IP options",
            Prog::Tap,
            edit(&syn, |v| {
                // Four NOP options: IHL 6, total length + 4.
                v.splice(34..34, [1u8, 1, 1, 1]);
                v[14] = 0x46;
                let l = (v.len() - 14) as u16;
                v[16..18].copy_from_slice(&l.to_be_bytes());
                fix_ip_csum(v);
            }),
        )
        .drops(D::IpOptions),
        case(
            "first fragment (MF)",
            Prog::Tap,
            syn.clone().frag(0x2000).frame(),
        )
        .drops(D::Fragment),
        case(
            "later fragment (offset)",
            Prog::Tap,
            udp.clone().frag(0x0010).frame(),
        )
        .drops(D::Fragment),
        // ---- anti-spoofing and local delivery -----------------------------------------------
        tap(
            "source in the pool without a session",
            &syn.clone().src(Ipv4Addr::new(10, 100, 0, 99)),
        )
        .drops(D::Spoofed),
        tap("source outside the pool", &udp.clone().src(SERVER)).drops(D::Spoofed),
        tap("ping to the gateway", &Pkt::echo_request(A, GATEWAY, 1, 1)).gives(
            XDP_PASS,
            Out::Unchanged,
            &[PassLocal],
        ),
        tap("TTL 1 goes to the kernel", &syn.clone().ttl(1)).gives(
            XDP_PASS,
            Out::Unchanged,
            &[PassLocal],
        ),
        tap("TTL 0 goes to the kernel", &udp.clone().ttl(0)).gives(
            XDP_PASS,
            Out::Unchanged,
            &[PassLocal],
        ),
        case(
            "another session's address: forged",
            Prog::Tap,
            Pkt::udp(B, 40000, SERVER, 53, b"query").session(0).frame(),
        )
        .key(key_of(&Pkt::udp(B, 40000, SERVER, 53, b"")))
        .drops(D::ForgedSource),
        tap(
            "TCP to a closed port of the gateway",
            &Pkt::tcp(A, 40000, GATEWAY, 22, tcp::SYN),
        )
        .drops(D::GatewayPortClosed),
        tap(
            "UDP to the gateway (no DNS forwarder configured)",
            &Pkt::udp(A, 40000, GATEWAY, 53, b"query"),
        )
        .drops(D::GatewayPortClosed),
        tap(
            "TTL 1 to a destination the client may not reach",
            &Pkt::tcp(A, 40000, ADMIN_HOST, 22, tcp::SYN).ttl(1),
        )
        .drops(D::NotAuthorized),
        tap(
            "TTL 1 to the gateway's target-network address",
            &Pkt::udp(A, 40000, SNAT, 53, b"query").ttl(1),
        )
        .drops(D::LocalDestination),
        tap(
            "kept port: a host socket already holds it, PAT instead",
            &udp,
        )
        .setup(|env| host_socket(env, 40000))
        .gives(
            XDP_REDIRECT,
            Out::Lazy({
                let udp = udp.clone();
                Box::new(move |env: &Env| out_net(&udp, env.flow(&udp).nat_port).frame())
            }),
            &[NewFlow, PortTranslated],
        ),
        // ---- policy -------------------------------------------------------------------------
        tap(
            "no rule covers the destination",
            &udp.clone().dst(Ipv4Addr::new(8, 8, 8, 8)),
        )
        .drops(D::NoAuthzRule),
        tap(
            "a /32 rule for admins hides the /24 all-users rule",
            &Pkt::tcp(A, 40000, ADMIN_HOST, 22, tcp::SYN),
        )
        .drops(D::NotAuthorized),
        tap(
            "authorized without a route",
            &udp.clone().dst(Ipv4Addr::new(10, 50, 0, 1)),
        )
        .drops(D::NoRoute),
        tap(
            "TCP port outside the security group",
            &Pkt::tcp(A, 40000, SERVER, 8080, tcp::SYN),
        )
        .drops(D::SecurityGroup),
        tap(
            "TCP port just above the security group's range",
            &Pkt::tcp(A, 40000, SERVER, 1001, tcp::SYN),
        )
        .drops(D::SecurityGroup),
        tap(
            "TCP port just below the security group's range",
            &Pkt::tcp(A, 40000, SERVER, 0, tcp::SYN),
        )
        .drops(D::SecurityGroup),
        tap(
            "TCP port at the top of the security group's range",
            &Pkt::tcp(A, 40000, SERVER, 1000, tcp::SYN),
        )
        .gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&Pkt::tcp(A, 40000, SERVER, 1000, tcp::SYN), 40000).frame()),
            &[NewFlow, PortKept],
        ),
        tap(
            "TCP port at the bottom of the security group's range",
            &Pkt::tcp(A, 40000, SERVER, 1, tcp::SYN),
        )
        .gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&Pkt::tcp(A, 40000, SERVER, 1, tcp::SYN), 40000).frame()),
            &[NewFlow, PortKept],
        ),
        tap(
            "GRE is authorized but cannot be translated",
            &Pkt::raw(A, SERVER2, 47, &[0, 0, 8, 0, 1, 2, 3, 4]),
        )
        .drops(D::UnsupportedProtocol),
        tap(
            "ICMP timestamp cannot open a flow",
            &Pkt::icmp(A, SERVER, ICMP_TIMESTAMP, 0, [0, 1, 0, 1], &[0; 12]),
        )
        .drops(D::UnsupportedProtocol),
        tap(
            "ICMP echo reply cannot open a flow",
            &Pkt::echo_reply(A, SERVER, 9, 1),
        )
        .drops(D::UnsupportedProtocol),
        tap(
            "TCP ACK without a flow",
            &Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK),
        )
        .drops(D::TcpNoSyn),
        tap(
            "TCP SYN-ACK without a flow",
            &Pkt::tcp(A, 40000, SERVER, 80, tcp::SYN | tcp::ACK),
        )
        .drops(D::TcpNoSyn),
        tap(
            "client-to-client to an address without a session",
            &udp.clone().dst(Ipv4Addr::new(10, 100, 0, 77)),
        )
        .drops(D::ClientUnreachable),
        tap(
            "routed by the policy, no kernel route",
            &udp.clone().dst(NO_FIB),
        )
        .drops_after(D::FibLookupFailed, &[NewFlow, PortKept]),
        tap(
            "the kernel routes it through a device outside the devmap",
            &udp.clone().dst(OTHER_DEV),
        )
        .drops_after(D::RedirectFailed, &[NewFlow, PortKept]),
        tap(
            "route to a target slot that is not configured",
            &Pkt::tcp(A, 40000, Ipv4Addr::new(10, 0, 0, 99), 80, tcp::SYN),
        )
        .setup(|env| {
            let slot = (env.gw.dp.maps.active_generation().unwrap() % 2) as u8;
            env.gw
                .dp
                .maps
                .route_upsert(slot, 32, [10, 0, 0, 99], RouteValue { target: 9, _pad: 0 })
                .unwrap();
        })
        .check(|env| {
            let slot = (env.gw.dp.maps.active_generation().unwrap() % 2) as u8;
            env.gw
                .dp
                .maps
                .route_delete(slot, 32, [10, 0, 0, 99])
                .unwrap();
        })
        .drops(D::BadTarget),
        // ---- new flows ------------------------------------------------------------------------
        tap("TCP SYN: translated, port kept", &syn)
            .gives(
                XDP_REDIRECT,
                Out::Frame(out_net(&syn, 40000).frame()),
                &[NewFlow, PortKept],
            )
            .check({
                let syn = syn.clone();
                move |env| {
                    let e = env.flow(&syn);
                    assert_eq!(
                        (e.nat_addr[..4].to_vec(), e.nat_port, e.state, e.target),
                        (SNAT.octets().to_vec(), 40000, ct_state::NEW, 0)
                    );
                    let s = env.gw.dp.maps.session_stats(0).unwrap();
                    assert!(s.ingress_packets >= 1 && s.ingress_bytes >= 40, "{s:?}");
                }
            }),
        tap("UDP with payload: translated, port kept", &udp).gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&udp, 40000).frame()),
            &[NewFlow, PortKept],
        ),
        tap(
            "UDP without checksum keeps a zero checksum",
            &udp.clone().zero_udp_csum(),
        )
        .gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&udp.clone().zero_udp_csum(), 40000).frame()),
            &[NewFlow, PortKept],
        ),
        tap("ICMP echo request: translated, identifier kept", &ping).gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&ping, 7).frame()),
            &[NewFlow, PortKept],
        ),
        tap("UDP to the second server", &udp.clone().dst(SERVER2)).gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&udp.clone().dst(SERVER2), 40000).frame()),
            &[NewFlow, PortKept],
        ),
        tap(
            "next hop without a neighbour: translated, passed to the kernel",
            &Pkt::tcp(B, 40000, ADMIN_HOST, 22, tcp::SYN),
        )
        .gives(
            XDP_PASS,
            // Translated but not yet forwarded: TTL and MACs are the kernel's business.
            Out::Frame(
                sent(&Pkt::tcp(B, 40000, ADMIN_HOST, 22, tcp::SYN))
                    .src(SNAT)
                    .frame(),
            ),
            &[NewFlow, PortKept, PassNoNeighbour],
        ),
        // ---- PAT ------------------------------------------------------------------------------
        tap(
            "TCP: same source port from another client is translated",
            &syn_b,
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Lazy(Box::new({
                let syn_b = syn_b.clone();
                move |env| out_net(&syn_b, nat_port(env, &syn_b)).frame()
            })),
            &[NewFlow, PortTranslated],
        )
        .check({
            let syn_b = syn_b.clone();
            move |env| assert!(PAT.contains(&env.flow(&syn_b).nat_port))
        }),
        tap("UDP: colliding source port is translated", &udp_b)
            .setup({
                let udp = udp.clone();
                move |env| {
                    env.send(&udp);
                }
            })
            .gives(
                XDP_REDIRECT,
                Out::Lazy(Box::new({
                    let udp_b = udp_b.clone();
                    move |env| out_net(&udp_b, nat_port(env, &udp_b)).frame()
                })),
                &[NewFlow, PortTranslated],
            ),
        tap("ICMP: colliding echo identifier is translated", &ping_b)
            .setup({
                let ping = ping.clone();
                move |env| {
                    env.send(&ping);
                }
            })
            .gives(
                XDP_REDIRECT,
                Out::Lazy(Box::new({
                    let ping_b = ping_b.clone();
                    move |env| out_net(&ping_b, nat_port(env, &ping_b)).frame()
                })),
                &[NewFlow, PortTranslated],
            ),
        tap(
            "PAT range used up by flows that kept their ports",
            &Pkt::tcp(B, PAT[0], SERVER, 80, tcp::SYN),
        )
        .setup(|env| {
            for p in PAT {
                env.send(&Pkt::tcp(A, p, SERVER, 80, tcp::SYN));
            }
        })
        .drops(D::PortsExhausted),
        // ---- capacity ---------------------------------------------------------------------
        tap(
            "conntrack full: new flow refused",
            &Pkt::tcp(B, 2000, SERVER, 80, tcp::SYN),
        )
        .setup(|env| {
            for i in 0..MAX_FLOWS as u16 {
                env.send(&Pkt::tcp(A, 1000 + i, SERVER, 80, tcp::SYN));
            }
        })
        .drops(D::ConntrackFull),
        tap(
            "conntrack full: a live flow keeps working",
            &Pkt::tcp(A, 1000, SERVER, 80, tcp::ACK),
        )
        .setup(|env| {
            for i in 0..MAX_FLOWS as u16 {
                env.send(&Pkt::tcp(A, 1000 + i, SERVER, 80, tcp::SYN));
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&Pkt::tcp(A, 1000, SERVER, 80, tcp::ACK), 1000).frame()),
            &[FastPath],
        ),
        tap(
            "flow quota reached",
            &Pkt::tcp(Q, 1001, SERVER, 80, tcp::SYN),
        )
        .setup(|env| {
            env.send(&Pkt::tcp(Q, 1000, SERVER, 80, tcp::SYN));
        })
        .drops(D::FlowQuota),
        // ---- established flows --------------------------------------------------------------
        tap(
            "established: fast path",
            &Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK | tcp::PSH).payload(b"GET / HTTP/1.0\r\n"),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(
                out_net(
                    &Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK | tcp::PSH)
                        .payload(b"GET / HTTP/1.0\r\n"),
                    40000,
                )
                .frame(),
            ),
            &[FastPath],
        ),
        // The fast path skips the `clients` lookup only while `clients_epoch` vouches for the
        // entry's slot: once the address belongs to another session, the old session's
        // frames are refused as before, and the new owner's take the full checks.
        case(
            "established, address moved to another session: the old session is refused",
            Prog::Tap,
            Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK).session(0).frame(),
        )
        .key(key_of(&Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK)))
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
                move_client(env, A, 5);
            }
        })
        .drops(D::ForgedSource)
        .check(|env| move_client(env, A, 0)),
        case(
            "established, address moved to another session: the new owner passes",
            Prog::Tap,
            Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK).session(5).frame(),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
                move_client(env, A, 5);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK), 40000).frame()),
            &[FastPath],
        )
        .check(|env| move_client(env, A, 0)),
        tap(
            "established, PAT: fast path keeps the translated port",
            &Pkt::tcp(B, 40000, SERVER, 80, tcp::ACK),
        )
        .setup({
            let (syn, syn_b) = (syn.clone(), syn_b.clone());
            move |env| {
                env.send(&syn);
                env.send(&syn_b);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Lazy(Box::new(move |env| {
                let p = Pkt::tcp(B, 40000, SERVER, 80, tcp::ACK);
                out_net(&p, nat_port(env, &p)).frame()
            })),
            &[FastPath],
        ),
        tap(
            "client FIN on an established flow: forwarded, flow closing",
            &Pkt::tcp(A, 40000, SERVER, 80, tcp::FIN | tcp::ACK),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
                let synack = Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::SYN | tcp::ACK);
                let (a, _) = env.run(Prog::Egress, &from_net(synack).frame());
                assert_eq!(a, XDP_REDIRECT);
                assert_eq!(env.flow(&syn).state, ct_state::ESTABLISHED);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(
                out_net(&Pkt::tcp(A, 40000, SERVER, 80, tcp::FIN | tcp::ACK), 40000).frame(),
            ),
            &[FastPath],
        )
        .check({
            let syn = syn.clone();
            move |env| assert_eq!(env.flow(&syn).state, ct_state::CLOSING)
        }),
        tap(
            "policy revoked: the established flow is cut",
            &Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
                env.set_policy(revoked());
            }
        })
        .drops(D::PolicyRevoked)
        .check({
            let syn = syn.clone();
            move |env| {
                assert_ne!(
                    env.flow(&syn).flags & portcullis_common::ct_flags::REVOKED,
                    0
                )
            }
        }),
        tap(
            "policy revoked: later packets stay cut",
            &Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
                env.set_policy(revoked());
                let ack = Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK);
                let (a, _) = env.run(Prog::Tap, &ack.frame());
                assert_eq!(a, XDP_DROP);
                env.denies.push((D::PolicyRevoked, key_of(&ack)));
            }
        })
        .drops(D::PolicyRevoked),
        tap(
            "new generation that still allows the flow",
            &Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
                env.set_policy(extended());
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(out_net(&Pkt::tcp(A, 40000, SERVER, 80, tcp::ACK), 40000).frame()),
            &[Revalidated, FastPath],
        ),
        tap("expired flow is re-checked and revived", &udp)
            .setup({
                let udp = udp.clone();
                move |env| {
                    env.send(&udp);
                    env.age(&udp, 200);
                }
            })
            .gives(
                XDP_REDIRECT,
                Out::Frame(out_net(&udp, 40000).frame()),
                &[Revived, Revalidated, FastPath],
            ),
        // ---- client to client -------------------------------------------------------------
        tap(
            "client to client: back out of the TAP",
            &Pkt::udp(A, 5000, B, 6000, b"hi"),
        )
        .gives(
            XDP_TX,
            Out::Frame(
                to_client(
                    Pkt::udp(A, 5000, B, 6000, b"hi").macs(CLIENT_MAC, tap_mac),
                    B,
                )
                .frame(),
            ),
            &[NewFlow, ClientToClient],
        )
        .check(|env| {
            let e = env.flow(&Pkt::udp(A, 5000, B, 6000, b""));
            assert_ne!(e.flags & portcullis_common::ct_flags::LOCAL, 0);
            assert_eq!(e.nat_addr[..4], A.octets());
        }),
        tap(
            "client to client: the peer's reply",
            &Pkt::udp(B, 6000, A, 5000, b"ho"),
        )
        .setup(|env| {
            env.send(&Pkt::udp(A, 5000, B, 6000, b"hi"));
        })
        .gives(
            XDP_TX,
            Out::Frame(to_client(Pkt::udp(B, 6000, A, 5000, b"ho"), A).frame()),
            &[ClientToClient],
        ),
        tap("client to client: ping", &Pkt::echo_request(A, B, 3, 1)).gives(
            XDP_TX,
            Out::Frame(to_client(Pkt::echo_request(A, B, 3, 1), B).frame()),
            &[NewFlow, ClientToClient],
        ),
    ];

    // ---- egress: network -> client ----------------------------------------------------------
    let synack = |dport: u16| from_net(Pkt::tcp(SERVER, 80, SNAT, dport, tcp::SYN | tcp::ACK));
    let udp_reply = |dport: u16| from_net(Pkt::udp(SERVER, 53, SNAT, dport, b"answer"));
    let echo_reply = |id: u16| from_net(Pkt::echo_reply(SERVER, SNAT, id, 1));
    t.extend([
        egress("reverse NAT: TCP SYN-ACK to the client", &synack(40000))
            .setup({
                let syn = syn.clone();
                move |env| {
                    env.send(&syn);
                }
            })
            .gives(
                XDP_REDIRECT,
                Out::Frame(
                    to_client(Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::SYN | tcp::ACK), A).frame(),
                ),
                &[ReverseNat],
            )
            .check({
                let syn = syn.clone();
                move |env| {
                    let e = env.flow(&syn);
                    assert_eq!((e.state, e.packets_in), (ct_state::ESTABLISHED, 1));
                    assert!(env.gw.dp.maps.session_stats(0).unwrap().egress_packets >= 1);
                }
            }),
        egress(
            "reverse NAT: UDP without checksum stays without",
            &udp_reply(40000).zero_udp_csum(),
        )
        .setup({
            let udp = udp.clone();
            move |env| {
                env.send(&udp);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(
                to_client(
                    Pkt::udp(SERVER, 53, SNAT, 40000, b"answer").zero_udp_csum(),
                    A,
                )
                .frame(),
            ),
            &[ReverseNat],
        ),
        egress("reverse NAT: ICMP echo reply", &echo_reply(7))
            .setup({
                let ping = ping.clone();
                move |env| {
                    env.send(&ping);
                }
            })
            .gives(
                XDP_REDIRECT,
                Out::Frame(to_client(Pkt::echo_reply(SERVER, SNAT, 7, 1), A).frame()),
                &[ReverseNat],
            ),
        egress(
            "unrelated TCP to the gateway itself",
            &from_net(Pkt::tcp(SERVER, 51000, SNAT, 22, tcp::SYN)),
        )
        .gives(XDP_PASS, Out::Unchanged, &[EgressPassHost]),
        egress(
            "reply from another port than the flow's",
            &from_net(Pkt::tcp(SERVER, 81, SNAT, 40000, tcp::SYN | tcp::ACK)),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
            }
        })
        .gives(XDP_PASS, Out::Unchanged, &[EgressPassHost]),
        case(
            "ARP on the target interface",
            Prog::Egress,
            eth([0xff; 6], server_mac, ETH_P_ARP, &[0u8; 28]),
        )
        .gives(XDP_PASS, Out::Unchanged, &[EgressPassHost]),
        case(
            "malformed IPv4 on the target interface",
            Prog::Egress,
            edit(&synack(40000), |v| set_tot_len(v, 2000)),
        )
        .gives(XDP_PASS, Out::Unchanged, &[EgressPassHost]),
        egress(
            "reply to an expired flow is not translated",
            &udp_reply(40000),
        )
        .setup({
            let udp = udp.clone();
            move |env| {
                env.send(&udp);
                env.age(&udp, 200);
            }
        })
        .gives(XDP_PASS, Out::Unchanged, &[EgressPassHost]),
        egress("reply to a revoked flow is dropped", &synack(40000))
            .setup({
                let syn = syn.clone();
                move |env| {
                    env.send(&syn);
                    env.set_policy(revoked());
                }
            })
            .drops(D::PolicyRevoked),
        egress(
            "reply after a new generation that still allows the flow",
            &synack(40000),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
                env.set_policy(extended());
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(
                to_client(Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::SYN | tcp::ACK), A).frame(),
            ),
            &[Revalidated, ReverseNat],
        ),
        egress(
            "server RST closes the flow",
            &from_net(Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::RST | tcp::ACK).seq_ack(0, SYN_END)),
        )
        .setup({
            let syn = syn.clone();
            move |env| {
                env.send(&syn);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(
                to_client(
                    Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::RST | tcp::ACK).seq_ack(0, SYN_END),
                    A,
                )
                .frame(),
            ),
            &[ReverseNat],
        )
        .check({
            let syn = syn.clone();
            move |env| assert_eq!(env.flow(&syn).state, ct_state::CLOSED)
        }),
        egress(
            "spoofed RST before the handshake (does not acknowledge the SYN)",
            &from_net(Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::RST | tcp::ACK)),
        )
        .setup({
            let syn = syn.clone();
            move |env| env.send(&syn)
        })
        .drops(D::TcpOutOfWindow)
        .check({
            let syn = syn.clone();
            move |env| assert_eq!(env.flow(&syn).state, ct_state::NEW)
        }),
        egress(
            "spoofed RST far outside the server's window",
            &from_net(
                Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::RST | tcp::ACK)
                    .seq_ack(SERVER_ISN.wrapping_add(0x4000_0000), SYN_END),
            ),
        )
        .setup({
            let syn = syn.clone();
            move |env| handshake(env, &syn)
        })
        .drops(D::TcpOutOfWindow)
        .check({
            let syn = syn.clone();
            move |env| assert_eq!(env.flow(&syn).state, ct_state::ESTABLISHED)
        }),
        egress(
            "spoofed FIN far outside the server's window",
            &from_net(
                Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::FIN | tcp::ACK)
                    .seq_ack(SERVER_ISN.wrapping_sub(0x0100_0000), SYN_END),
            ),
        )
        .setup({
            let syn = syn.clone();
            move |env| handshake(env, &syn)
        })
        .drops(D::TcpOutOfWindow),
        egress(
            "RST in the server's window closes the flow",
            &from_net(
                Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::RST | tcp::ACK)
                    .seq_ack(SERVER_ISN.wrapping_add(1000), SYN_END),
            ),
        )
        .setup({
            let syn = syn.clone();
            move |env| handshake(env, &syn)
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(
                to_client(
                    Pkt::tcp(SERVER, 80, SNAT, 40000, tcp::RST | tcp::ACK)
                        .seq_ack(SERVER_ISN.wrapping_add(1000), SYN_END),
                    A,
                )
                .frame(),
            ),
            &[ReverseNat],
        )
        .check({
            let syn = syn.clone();
            move |env| assert_eq!(env.flow(&syn).state, ct_state::CLOSED)
        }),
        egress(
            "reply to a kept port a host socket took later goes to the host",
            &udp_reply(40000),
        )
        .setup({
            let udp = udp.clone();
            move |env| {
                env.send(&udp);
                host_socket(env, 40000);
            }
        })
        .gives(XDP_PASS, Out::Unchanged, &[HostSocketWins]),
        egress("reply with TTL 1 goes to the kernel", &synack(40000).ttl(1))
            .setup({
                let syn = syn.clone();
                move |env| {
                    env.send(&syn);
                }
            })
            .gives(XDP_PASS, Out::Unchanged, &[PassLocal]),
    ]);

    // Replies to flows whose port PAT picked (B collides with A's source port): the
    // reply's destination port is read from conntrack after the setup.
    for which in 0..3u8 {
        let fwd = move |c: Ipv4Addr| match which {
            0 => Pkt::tcp(c, 40000, SERVER, 80, tcp::SYN),
            1 => Pkt::udp(c, 40000, SERVER, 53, b"query"),
            _ => Pkt::echo_request(c, SERVER, 7, 1),
        };
        let reply = move |port: u16| match which {
            0 => Pkt::tcp(SERVER, 80, SNAT, port, tcp::SYN | tcp::ACK),
            1 => Pkt::udp(SERVER, 53, SNAT, port, b"answer"),
            _ => Pkt::echo_reply(SERVER, SNAT, port, 1),
        };
        let name = match which {
            0 => "reverse NAT: TCP, translated port restored",
            1 => "reverse NAT: UDP, translated port restored",
            _ => "reverse NAT: ICMP echo reply, translated identifier restored",
        };
        t.push(
            lazy(name, Prog::Egress, move |env| {
                from_net(reply(nat_port(env, &fwd(B)))).frame()
            })
            .setup(move |env| {
                env.send(&fwd(A));
                env.send(&fwd(B));
                assert!(PAT.contains(&env.flow(&fwd(B)).nat_port));
            })
            .gives(
                XDP_REDIRECT,
                // The client's own port (ICMP: identifier) comes back.
                Out::Frame(to_client(reply(fwd(B).sport()), B).frame()),
                &[ReverseNat],
            ),
        );
    }

    // ---- ICMP errors about translated flows ---------------------------------------------------
    t.extend(icmp_error_cases(env));
    t
}

fn icmp_error_cases(env: &Env) -> Vec<Case> {
    use Event::*;
    let tap_mac = env.tap_mac;
    let server_mac = env.gw.server_mac;
    let gw_mac = env.gw.gw_mac;
    // An ICMP error from `from` to the SNAT address quoting `quoted` (what the gateway sent).
    let err_in = move |from: Ipv4Addr, ty: u8, code: u8, quoted: &[u8]| {
        Pkt::icmp_error(from, SNAT, ty, code, quoted).macs(server_mac, gw_mac)
    };
    let err_out = move |from: Ipv4Addr, ty: u8, code: u8, quoted: &[u8], client: Ipv4Addr| {
        Pkt::icmp_error(from, client, ty, code, quoted)
            .ttl(63)
            .macs(tap_mac, client_mac(client))
    };

    let tcp_a = Pkt::tcp(A, 40000, SERVER, 80, tcp::SYN);
    // What the gateway sent for it (port kept), as a router quotes it (TTL 1 on arrival).
    let tcp_sent = tcp_a.clone().src(SNAT).ttl(1).ip_bytes();
    let tcp_restored = tcp_a.clone().ttl(1).ip_bytes();

    let mut v = vec![
        egress(
            "time exceeded about a TCP flow (whole header quoted)",
            &err_in(ROUTER, ICMP_TIME_EXCEEDED, 0, &tcp_sent),
        )
        .setup({
            let tcp_a = tcp_a.clone();
            move |env| {
                env.send(&tcp_a);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(err_out(ROUTER, ICMP_TIME_EXCEEDED, 0, &tcp_restored, A).frame()),
            &[IcmpErrorTranslated],
        ),
        egress(
            "time exceeded about a TCP flow (8 bytes quoted)",
            &err_in(ROUTER, ICMP_TIME_EXCEEDED, 0, &tcp_sent[..28]),
        )
        .setup({
            let tcp_a = tcp_a.clone();
            move |env| {
                env.send(&tcp_a);
            }
        })
        .gives(
            XDP_REDIRECT,
            Out::Frame(err_out(ROUTER, ICMP_TIME_EXCEEDED, 0, &tcp_restored[..28], A).frame()),
            &[IcmpErrorTranslated],
        ),
        egress(
            "ICMP error about a flow this gateway does not know",
            &err_in(
                ROUTER,
                ICMP_DEST_UNREACH,
                1,
                &Pkt::tcp(SNAT, 33333, SERVER, 80, tcp::SYN).ip_bytes(),
            ),
        )
        .gives(XDP_PASS, Out::Unchanged, &[EgressPassHost]),
        egress(
            "ICMP error about an expired flow is not translated",
            &err_in(ROUTER, ICMP_TIME_EXCEEDED, 0, &tcp_sent),
        )
        .setup({
            let tcp_a = tcp_a.clone();
            move |env| {
                env.send(&tcp_a);
                env.age(&tcp_a, 300);
            }
        })
        .gives(XDP_PASS, Out::Unchanged, &[EgressPassHost]),
        egress(
            "ICMP error about a flow the new policy revokes is not translated",
            &err_in(ROUTER, ICMP_TIME_EXCEEDED, 0, &tcp_sent),
        )
        .setup({
            let tcp_a = tcp_a.clone();
            move |env| {
                env.send(&tcp_a);
                env.set_policy(revoked());
            }
        })
        .gives(XDP_PASS, Out::Unchanged, &[EgressPassHost]),
    ];

    // Port unreachable about a UDP flow whose port PAT translated, and time exceeded about
    // a ping whose identifier PAT translated: the quote carries the port PAT picked.
    for icmp in [false, true] {
        let fwd = move |c: Ipv4Addr| {
            if icmp {
                Pkt::echo_request(c, SERVER, 7, 1)
            } else {
                Pkt::udp(c, 40000, SERVER, 53, b"query")
            }
        };
        let (name, ty, code, from) = if icmp {
            (
                "time exceeded about a ping with a translated identifier",
                ICMP_TIME_EXCEEDED,
                0,
                ROUTER,
            )
        } else {
            (
                "port unreachable about a UDP flow with a translated port",
                ICMP_DEST_UNREACH,
                3,
                SERVER,
            )
        };
        v.push(
            lazy(name, Prog::Egress, move |env| {
                let port = env.flow(&fwd(B)).nat_port;
                let sent = fwd(B).src(SNAT).set_sport(port).ttl(63).ip_bytes();
                err_in(from, ty, code, &sent).frame()
            })
            .setup(move |env| {
                env.send(&fwd(A));
                env.send(&fwd(B));
                assert!(PAT.contains(&env.flow(&fwd(B)).nat_port));
            })
            .gives(
                XDP_REDIRECT,
                Out::Frame(err_out(from, ty, code, &fwd(B).ttl(63).ip_bytes(), B).frame()),
                &[IcmpErrorTranslated],
            ),
        );
    }
    v
}
