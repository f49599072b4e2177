//! The stock `openvpn` client against our server, in namespaces, through the XDP data path.
//!
//! Every test builds its own [`TunnelLab`] (gateway, private network, underlay clients, our
//! tunnel in-process) and removes it on drop. The waits are bounded; the slow parts (the
//! tls-crypt mismatch checks, the revoked and expired clients) run next to the positive
//! checks instead of after them.
#[path = "tunnel/connect.rs"]
mod connect;
#[path = "tunnel/lifecycle.rs"]
mod lifecycle;
#[path = "tunnel/traffic.rs"]
mod traffic;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use portcullis::io::Command;
use portcullis::openvpn::server::ServerEvent;
use portcullis::openvpn::session::{CloseReason, FailureCode, Renegotiation};
use portcullis::pki::Validity;
use portcullis_common::DropReason;
use tests::clients::{echo_round_trip, read_line, run_in_ns, wait_until, TcpServer, UdpServer};
use tests::gateway::{base_policy, fmt_mac, toml_policy, GW_IF, GW_NET_ADDR, SERVER};
use tests::openvpn::{
    iperf3_client, iperf3_server, ping, Cipher, ClientConfig, Connected, OvpnClient, Proto,
};
use tests::tunnel::{TunnelLab, TunnelOpts, STOP_LIMIT};
use tests::{require_root, NetNs};

/// What the stock client logs once the tunnel is up.
const COMPLETED: &str = "Initialization Sequence Completed";
/// Upper bound for a client to connect (the host is shared with other builds).
const CONNECT: Duration = Duration::from_secs(20);
/// What the stock client logs when the server pushes `RESTART`.
const PUSHED_RESET: &str = "Connection reset command was pushed by server";
/// How long a refused client gets to (wrongly) complete before we call it refused.
const REFUSED: Duration = Duration::from_secs(8);

fn client_cidr() -> Ipv4Net {
    "10.100.0.0/24".parse().unwrap()
}

/// A stock client connected to the lab: its process, what its up script saw and what our
/// server's `Connected` event said.
struct Conn {
    client: OvpnClient,
    up: Connected,
    peer_id: u32,
    tunnel_addr: Ipv4Addr,
    cipher: String,
}

/// Start a client as `cn` in underlay namespace `i`, wait for it and for the server's
/// `Connected` event with the address the client got.
fn connect(lab: &TunnelLab, i: usize, cfg: &ClientConfig, cn: &str) -> Conn {
    let mark = lab.mark();
    let client = OvpnClient::start(ns(lab, i), cfg);
    let up = client
        .wait_connected(CONNECT)
        .unwrap_or_else(|e| panic!("{cn} does not connect: {e}"));
    let ev = lab.wait_event_since(mark, Duration::from_secs(5), |ev| {
        matches!(ev, ServerEvent::Connected { common_name, tunnel_addr, .. }
            if common_name == cn && *tunnel_addr == up.tun_addr)
    });
    let Some(ServerEvent::Connected {
        peer_id,
        tunnel_addr,
        cipher,
        ..
    }) = ev
    else {
        panic!(
            "no Connected event for {cn} at {}; events: {:#?}\n{}",
            up.tun_addr,
            lab.seen_since(mark),
            client.log()
        );
    };
    Conn {
        client,
        up,
        peer_id,
        tunnel_addr,
        cipher: cipher.to_string(),
    }
}

fn ns(lab: &TunnelLab, i: usize) -> &NetNs {
    &lab.underlay.client(i).ns
}

/// Wait for the `Disconnected` event of `peer_id` (after `mark`).
fn wait_disconnected(
    lab: &TunnelLab,
    mark: usize,
    peer_id: u32,
    timeout: Duration,
) -> Option<(CloseReason, Option<Ipv4Addr>)> {
    match lab.wait_event_since(
        mark,
        timeout,
        |ev| matches!(ev, ServerEvent::Disconnected { peer_id: p, .. } if *p == peer_id),
    ) {
        Some(ServerEvent::Disconnected {
            reason,
            tunnel_addr,
            ..
        }) => Some((reason, tunnel_addr)),
        _ => None,
    }
}

/// The first `Disconnected` event after `mark` from underlay client `i` whose certificate was
/// refused with code `what`; its reason as text.
fn wait_tls_refusal(
    lab: &TunnelLab,
    mark: usize,
    i: usize,
    what: FailureCode,
    timeout: Duration,
) -> Option<String> {
    let from = lab.underlay.client(i).addr;
    match lab.wait_event_since(mark, timeout, |ev| {
        matches!(ev, ServerEvent::Disconnected { reason: CloseReason::CertificateRefused { code, .. }, link, .. }
            if *code == what && link.addr().ip() == from)
    }) {
        Some(ServerEvent::Disconnected { reason, .. }) => Some(reason.to_string()),
        _ => None,
    }
}

fn connected_events(lab: &TunnelLab, mark: usize, cn: &str) -> usize {
    lab.seen_since(mark)
        .iter()
        .filter(|ev| matches!(ev, ServerEvent::Connected { common_name, .. } if common_name == cn))
        .count()
}

fn rekeys(lab: &TunnelLab, mark: usize, peer_id: u32) -> usize {
    lab.seen_since(mark)
        .iter()
        .filter(|ev| matches!(ev, ServerEvent::Rekeyed { peer_id: p, .. } if *p == peer_id))
        .count()
}

fn in_clients_map(lab: &TunnelLab, addr: Ipv4Addr) -> bool {
    lab.maps
        .client(addr)
        .expect("read the clients map")
        .is_some()
}

fn drops(lab: &TunnelLab, reason: DropReason) -> u64 {
    lab.maps
        .drop_counters()
        .expect("read the drop counters")
        .get(&reason)
        .copied()
        .unwrap_or(0)
}

/// Check that the client did not reach "Initialization Sequence Completed".
fn assert_never_connected(client: &OvpnClient, what: &str) {
    let log = client.log();
    assert!(
        !log.contains(COMPLETED),
        "{what}: the client connected although it must be refused:\n{log}"
    );
}
