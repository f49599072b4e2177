//! Duplicated and replayed tls-crypt control packets from a live client's own address: the
//! established session stays (its replay check once failed, the packet fell through to the
//! cookie path and a new session replaced the live one).
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use portcullis::openvpn::session::Renegotiation;

use super::*;

/// What the stock client logs when it restarts its connection.
const RESTART: &str = "SIGUSR1";
const COMPLETED: &str = "Initialization Sequence Completed";

/// The client session's single `Connected` event and its end, if any, since `mark`; panics
/// unless there was exactly one connect and no disconnect, and the tunnel holds exactly that
/// one session.
fn assert_one_session(lab: &TunnelLab, mark: usize, client: &OvpnClient, peer_id: u32) {
    let seen = comings_and_goings(lab, mark);
    assert_eq!(
        seen,
        [(true, peer_id)],
        "exactly one Connected and no Disconnected: {:#?}\n{}",
        lab.seen_since(mark),
        client.log()
    );
    let sessions = lab.tunnel().sessions();
    assert!(
        sessions.len() == 1 && sessions[0].peer_id == peer_id && sessions[0].established,
        "the one session lives on: {sessions:?}"
    );
    assert_eq!(client.log_count(COMPLETED), 1, "{}", client.log());
    assert_eq!(
        client.log_count(RESTART),
        0,
        "the client restarted\n{}",
        client.log()
    );
}

fn peer_id_of(lab: &TunnelLab, mark: usize) -> u32 {
    lab.seen_since(mark)
        .iter()
        .find_map(|e| match e {
            ServerEvent::Connected { peer_id, .. } => Some(*peer_id),
            _ => None,
        })
        .expect("a Connected event")
}

/// A network that duplicates every packet both ways (nftables `dup`: the kernel here has no
/// netem): a stock client connects, renegotiates (server-initiated every 4 s) and passes
/// traffic, with one `Connected` event, no `Disconnected` and no restart on the client.
#[test]
fn a_duplicating_network_does_not_replace_the_session() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts {
        clients: 1,
        reneg: Renegotiation {
            interval: Some(Duration::from_secs(4)),
            ..Renegotiation::default()
        },
        ..TunnelOpts::default()
    });
    let client_addr = lab.underlay.client(0).addr;
    // `sch_netem` is not in this kernel (no modules): `dup to` clones each packet after the
    // original, on the client (toward the gateway) and on the gateway (toward the client).
    nft(
        &lab.underlay.client(0).ns,
        &format!(
            "table ip pct_dup {{\n chain out {{\n type filter hook output priority 0;\n \
             ip daddr {UNDERLAY_GW} udp dport {OVPN_PORT} counter dup to {UNDERLAY_GW}\n }}\n}}\n"
        ),
    );
    nft(
        &lab.gw.gw,
        &format!(
            "table ip pct_dup {{\n chain out {{\n type filter hook output priority 0;\n \
             ip daddr {client_addr} udp sport {OVPN_PORT} counter dup to {client_addr}\n }}\n}}\n"
        ),
    );
    let mark = lab.mark();
    let (client, _) = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "alice", Proto::Udp),
        "alice",
    );
    let peer_id = peer_id_of(&lab, mark);
    let mut rekeys = 0;
    let end = Instant::now() + Duration::from_secs(30);
    while rekeys < 2 && Instant::now() < end {
        if lab
            .wait_event(
                Duration::from_secs(1),
                |e| matches!(e, ServerEvent::Rekeyed { peer_id: p, .. } if *p == peer_id),
            )
            .is_some()
        {
            rekeys += 1;
        }
    }
    assert!(
        rekeys >= 2,
        "two renegotiations through the duplicating network: {rekeys}\n{}",
        client.log()
    );
    assert!(
        ping(
            &lab.underlay.client(0).ns,
            SERVER,
            5,
            Duration::from_secs(10)
        ),
        "traffic passes with the renegotiated keys\n{}",
        client.log()
    );
    // The rule counts each packet twice: the original, and its clone on the way out again
    // (which is not cloned once more).
    let duplicated = nft_packets(&lab.underlay.client(0).ns, &["ip", "pct_dup", "out"]) / 2;
    let duplicated_back = nft_packets(&lab.gw.gw, &["ip", "pct_dup", "out"]) / 2;
    std::thread::sleep(Duration::from_millis(300));
    let received = lab.tunnel().stats.udp_rx.load(Ordering::Relaxed);
    eprintln!(
        "{duplicated} packets duplicated toward the gateway, {duplicated_back} toward the \
         client; the gateway received {received} datagrams, rejected {} data packets",
        lab.tunnel().stats.data_rejected.load(Ordering::Relaxed)
    );
    assert!(duplicated > 5 && duplicated_back > 5);
    assert!(
        received >= 2 * duplicated,
        "the duplicates reached the gateway: {received} received, {duplicated} duplicated"
    );
    assert_one_session(&lab, mark, &client, peer_id);
}

/// An `AF_PACKET` socket in `ns` that sees the IPv4 packets leaving it.
fn capture(ns: &tests::NetNs) -> OwnedFd {
    ns.run(|| {
        // ETH_P_ALL: a socket bound to one protocol does not see outgoing packets.
        let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
        // SAFETY: plain socket(2); the fd is owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto,
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fresh fd.
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

/// The UDP payloads of the control packets (any opcode but the data ones, 6 and 9) the
/// namespace sent to `to`, in order, from `capture`'s queue.
fn sent_control_packets(fd: &OwnedFd, to: SocketAddrV4) -> Vec<(SocketAddrV4, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    for _ in 0..100_000 {
        // SAFETY: all-zero sockaddr_ll is valid; recvfrom fills it.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom into live buffers of their sizes.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        let Ok(n) = usize::try_from(n) else { break };
        let p = &buf[..n];
        if from.sll_pkttype != libc::PACKET_OUTGOING
            || from.sll_protocol != (libc::ETH_P_IP as u16).to_be()
            || n < 29
            || p[9] != 17
        {
            continue;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let sport = u16::from_be_bytes([p[ihl], p[ihl + 1]]);
        let dport = u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]);
        let payload = &p[ihl + 8..];
        let op = payload.first().map_or(0, |b| b >> 3);
        if SocketAddrV4::new(dst, dport) == to && op != 6 && op != 9 {
            out.push((SocketAddrV4::new(src, sport), payload.to_vec()));
        }
    }
    out
}

/// Every tls-crypt control packet a stock client sent during its handshake (its hard reset,
/// its cookie echo, TLS records, acks), captured on its host and sent again from its own
/// address and port once the session is up: the session survives (no new `Connected`, no
/// `Disconnected`, the same single session, traffic passes, the client does not restart).
#[test]
fn a_replayed_control_packet_does_not_replace_the_session() {
    require_root!();
    let lab = TunnelLab::new(TunnelOpts {
        clients: 1,
        ..TunnelOpts::default()
    });
    let ns = &lab.underlay.client(0).ns;
    let cap = capture(ns);
    let mark = lab.mark();
    let (client, _) = connect(
        &lab,
        0,
        &ClientConfig::new(&lab.pki, "alice", Proto::Udp),
        "alice",
    );
    let peer_id = peer_id_of(&lab, mark);
    let gw = SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT);
    let packets = sent_control_packets(&cap, gw);
    let ops: Vec<u8> = packets.iter().map(|(_, p)| p[0] >> 3).collect();
    assert!(
        ops.contains(&7) && ops.contains(&4),
        "captured the hard reset and TLS records: opcodes {ops:?}"
    );
    let link = lab.tunnel().sessions()[0].link;
    assert!(
        packets
            .iter()
            .all(|(src, _)| SocketAddr::V4(*src) == link.addr()),
        "captured from the session's own address {}",
        link.addr()
    );
    let rx = lab.tunnel().stats.udp_rx.load(Ordering::Relaxed);
    let n = packets.len();
    run_in_ns(&ns.name, move || {
        let raw = raw_socket();
        // Twice in order, then once more in reverse (a reordering network).
        for (src, p) in packets.iter().chain(&packets).chain(packets.iter().rev()) {
            assert!(send_raw(&raw, &ipv4_udp(*src, gw, p)));
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let got = lab.tunnel().stats.udp_rx.load(Ordering::Relaxed) - rx;
    assert!(
        got >= 3 * n as u64,
        "the {n} replayed packets (three times) reached the gateway: {got} datagrams"
    );
    assert!(
        ping(ns, SERVER, 5, Duration::from_secs(10)),
        "traffic still passes\n{}",
        client.log()
    );
    assert_one_session(&lab, mark, &client, peer_id);
    assert_eq!(
        lab.tunnel().sessions()[0].link,
        link,
        "the session stays where it was"
    );
}
