//! A float onto an address:port another session holds, with stock clients: a client whose
//! old session is still live on the gateway (it vanished without a word) and a new client on
//! the same host whose packets come to use the old one's exact source port (as a NAT that
//! reuses a mapping does). The old session ends properly when it is the same client (same
//! certificate), and survives when it is another one; a floated session keeps its timers.
//!
//! Both clients run in one namespace, one after the other (the old one killed first, so the
//! tun device and the routes are the new one's); nftables rewrites the new client's source
//! port to the old one's on the way out, and back on the way in.
use portcullis::io::SessionInfo;
use portcullis::openvpn::session::CloseReason;
use tests::clients::wait_until;

use super::*;

/// Server keepalive: the client pings every 2 s; a silent session ends after twice
/// `ping_restart`.
const PING_RESTART: Duration = Duration::from_secs(10);

fn lab() -> TunnelLab {
    TunnelLab::new(TunnelOpts {
        clients: 2,
        // Two sessions at most: the one that floats and the stale one; a third connects only
        // once the stale one's slot is free.
        max_sessions: Some(2),
        ping: Duration::from_secs(2),
        ping_restart: PING_RESTART,
        ..TunnelOpts::default()
    })
}

fn session_of(lab: &TunnelLab, addr: Ipv4Addr) -> SessionInfo {
    lab.tunnel()
        .sessions()
        .into_iter()
        .find(|s| s.tunnel_addr == Some(addr))
        .unwrap_or_else(|| panic!("no session with {addr}: {:?}", lab.tunnel().sessions()))
}

/// What [`stale_and_floating`] leaves: the killed client's session and the live client's,
/// as they were before the rewrite, and the live client.
struct Float {
    stale: SessionInfo,
    live: SessionInfo,
    client: OvpnClient,
}

/// `stale_cn` connects from client namespace 0 and is killed (SIGKILL: no exit message);
/// `live_cn` connects from the same namespace, and from then on its packets leave with the
/// stale session's source port (and replies to that port come back to it).
fn stale_and_floating(lab: &TunnelLab, stale_cn: &str, live_cn: &str) -> Float {
    let ns = &lab.underlay.client(0).ns;
    let (old, old_addr) = connect(
        lab,
        0,
        &ClientConfig::new(&lab.pki, stale_cn, Proto::Udp),
        stale_cn,
    );
    let stale = session_of(lab, old_addr);
    // SAFETY: kill(2) on the client's own pid (ours, still a child: not reaped).
    unsafe { libc::kill(old.pid() as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(5), || !old.is_running()),
        "the old client did not die"
    );
    let (client, live_addr) = connect(
        lab,
        0,
        &ClientConfig::new(&lab.pki, live_cn, Proto::Udp),
        live_cn,
    );
    let live = session_of(lab, live_addr);
    assert_eq!(
        lab.tunnel().sessions().len(),
        2,
        "the stale session must still be live for the float (the machine is too slow for \
         a {PING_RESTART:?} ping-restart?)"
    );
    let (old_port, new_port) = (stale.link.addr().port(), live.link.addr().port());
    // Before conntrack (priority -300) and stateless: the packets are rewritten, not NATed.
    nft(
        ns,
        &format!(
            "table ip pct_float {{\n\
             chain out {{ type filter hook output priority -300; \
             ip daddr {UNDERLAY_GW} udp sport {new_port} udp dport {OVPN_PORT} counter \
             udp sport set {old_port}; }}\n\
             chain pre {{ type filter hook prerouting priority -300; \
             ip saddr {UNDERLAY_GW} udp sport {OVPN_PORT} udp dport {old_port} counter \
             udp dport set {new_port}; }}\n}}"
        ),
    );
    drop(old);
    Float {
        stale,
        live,
        client,
    }
}

/// The same client (same certificate) floats onto its own stale session's address: that
/// session ends with a `Disconnected` event naming its address, its `clients` entry and its
/// session slot go (a third client connects under `max_connections = 2`), the floated one
/// passes traffic from the new port, and its ping timeout still ends it once it is silent.
#[test]
fn a_float_onto_the_same_clients_stale_session_ends_it_properly() {
    require_root!();
    let lab = lab();
    let mark = lab.mark();
    let f = stale_and_floating(&lab, "alice", "alice");
    let ns = &lab.underlay.client(0).ns;
    let stale_addr = f.stale.tunnel_addr.unwrap();
    assert!(
        lab.maps.client(stale_addr).unwrap().is_some(),
        "the stale session has its clients entry before the float"
    );
    assert!(
        ping(ns, SERVER, 5, Duration::from_secs(10)),
        "the floating client passes traffic\n{}",
        f.client.log()
    );
    let ended = lab.wait_event_since(
        mark,
        Duration::from_secs(10),
        |e| matches!(e, ServerEvent::Disconnected { peer_id, .. } if *peer_id == f.stale.peer_id),
    );
    let Some(ServerEvent::Disconnected {
        tunnel_addr,
        reason,
        common_name,
        ..
    }) = ended
    else {
        panic!(
            "no Disconnected event for the stale session: {:#?}",
            lab.seen_since(mark)
        );
    };
    assert_eq!(tunnel_addr, Some(stale_addr));
    assert_eq!(common_name.as_deref(), Some("alice"));
    assert!(
        matches!(&reason, CloseReason::Server(r) if r.contains("replaced")),
        "ended by the float, not by its ping timeout: {reason:?}"
    );
    let floated = lab.seen_since(mark).into_iter().any(|e| {
        matches!(e, ServerEvent::Floated { peer_id, to, .. }
            if peer_id == f.live.peer_id && to.addr() == f.stale.link.addr())
    });
    assert!(floated, "a Floated event onto the stale session's address");
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .maps
            .client(stale_addr)
            .unwrap()
            .is_none()),
        "the stale session's clients entry is gone"
    );
    let sessions = lab.tunnel().sessions();
    assert!(
        sessions.len() == 1
            && sessions[0].peer_id == f.live.peer_id
            && sessions[0].link.addr() == f.stale.link.addr(),
        "one session, the floated one, at its new address: {sessions:?}"
    );
    let rewritten = nft_packets(ns, &["ip", "pct_float", "out"]);
    assert!(rewritten > 0, "the rewrite was used");
    // The stale session's slot is free: a second client connects under max_connections 2.
    let (_bob, _) = connect(
        &lab,
        1,
        &ClientConfig::new(&lab.pki, "bob", Proto::Udp),
        "bob",
    );
    assert!(
        ping(ns, SERVER, 3, Duration::from_secs(5)),
        "the floated client still passes traffic"
    );
    // The floated session keeps its timers: silent (killed), it ends on its ping timeout.
    let before = lab.mark();
    // SAFETY: kill(2) on our child's pid.
    unsafe { libc::kill(f.client.pid() as i32, libc::SIGKILL) };
    let timed_out = lab.wait_event_since(
        before,
        PING_RESTART * 2 + Duration::from_secs(10),
        |e| matches!(e, ServerEvent::Disconnected { peer_id, .. } if *peer_id == f.live.peer_id),
    );
    assert!(
        matches!(
            timed_out,
            Some(ServerEvent::Disconnected {
                reason: CloseReason::PingTimeout,
                ..
            })
        ),
        "the floated session ends on its ping timeout: {timed_out:?}"
    );
}

/// Another client's packets arriving from a live session's exact address and port do not
/// take that session over: it stays where it is, with its `clients` entry, and the floating
/// client's own session stays at its own address (the float is refused).
#[test]
fn a_float_onto_another_clients_session_is_refused() {
    require_root!();
    let lab = lab();
    let mark = lab.mark();
    let f = stale_and_floating(&lab, "bob", "alice");
    let ns = &lab.underlay.client(0).ns;
    let bob_addr = f.stale.tunnel_addr.unwrap();
    let rejected = lab.tunnel().stats.data_rejected.load(Ordering::Relaxed);
    // The worker drops alice's packets from bob's address (and the control thread would
    // refuse the float too): these pings get no answer.
    let _ = ping(ns, SERVER, 3, Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        nft_packets(ns, &["ip", "pct_float", "out"]) > 0,
        "the rewrite was used"
    );
    let seen = lab.seen_since(mark);
    assert!(
        !seen.iter().any(|e| matches!(
            e,
            ServerEvent::Floated { .. } | ServerEvent::Disconnected { .. }
        )),
        "no float and no session ended: {seen:#?}"
    );
    assert_eq!(
        session_of(&lab, bob_addr).link.addr(),
        f.stale.link.addr(),
        "bob's stays"
    );
    let alice = session_of(&lab, f.live.tunnel_addr.unwrap());
    assert_eq!(
        alice.link.addr(),
        f.live.link.addr(),
        "alice's stays at her address"
    );
    assert!(
        lab.maps.client(bob_addr).unwrap().is_some(),
        "bob's clients entry stays"
    );
    assert!(
        lab.tunnel().stats.data_rejected.load(Ordering::Relaxed) > rejected,
        "the gateway refused alice's packets from bob's address"
    );
    // Without the rewrite, alice's traffic passes as before.
    ns.exec(&["nft", "delete", "table", "ip", "pct_float"]);
    assert!(
        ping(ns, SERVER, 5, Duration::from_secs(10)),
        "alice passes traffic\n{}",
        f.client.log()
    );
}
