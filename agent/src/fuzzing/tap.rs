//! The `tap` target: both directions between the tunnel and the TAP, with three live sessions.
//!
//! Records `op ‖ who ‖ len ‖ bytes` (op: 0 a frame the kernel wrote to the TAP, 1 a packet
//! a client sealed and sent from its own or another address, 2 a decrypted packet framed for
//! the TAP directly). What must hold (docs/security.md, defect 1):
//! - a frame from the TAP is sealed only for the session holding its destination, with that
//!   session's keys: its client opens it to the same IP packet, no other client opens it;
//! - a decrypted packet becomes a TAP frame only with the sending session's own source
//!   address, with the TAP's MAC as destination and the session's slot in the source MAC;
//! - a packet reaches the TAP as session S only if S's client sealed it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_common::session_mac;

use crate::io::tap::{frame, from_tap, NotForTap, NotForTunnel};
use crate::io::{ETH_HLEN, HEADROOM};
use crate::openvpn::crypto::{Cipher, DataFormat, DirectionKey};
use crate::openvpn::keys::DataKeys;
use crate::openvpn::peer::{DataPeer, DataVerdict, Link, Opened, PeerTable};

const TAP_MAC: [u8; 6] = [0x02, 0x50, 10, 8, 0, 1];
const SESSIONS: u8 = 3;
/// Largest packet a record carries (a TAP frame of a 1500-byte MTU and then some).
const MAX_RECORD: usize = 1600;

fn key(session: u8, dir: u8) -> DirectionKey {
    let cipher = Cipher::ALL[usize::from(session) % Cipher::ALL.len()];
    DirectionKey::new(cipher, &[0x40 + session * 2 + dir; 32], [session; 8])
        .expect("32 bytes is enough for any cipher")
}

fn link(port: u16) -> Link {
    Link::Udp {
        listener: 0,
        addr: SocketAddr::from(([192, 0, 2, 10], port)),
    }
}

/// One connected session: the server's peer (in the table) and its client's mirror.
struct Session {
    server: Arc<DataPeer>,
    client: DataPeer,
    addr: Ipv4Addr,
}

fn sessions(peers: &PeerTable, base: Instant) -> Vec<Session> {
    (0..SESSIONS)
        .map(|i| {
            let (c2s, s2c) = (key(i, 0), key(i, 1));
            let id = u32::from(i) + 1;
            let server = Arc::new(DataPeer::for_session(
                id,
                id.into(),
                link(40_000 + u16::from(i)),
                base,
            ));
            let to_server = DataKeys {
                send: s2c.clone(),
                recv: c2s.clone(),
            };
            server
                .install(0, &to_server, DataFormat::V2 { peer_id: id }, base)
                .expect("valid key");
            server.set_owner(format!("user{i}"));
            peers.insert(server.clone());
            let addr = Ipv4Addr::new(10, 8, 0, 2 + i);
            peers.set_addr(&server, addr);
            let client = DataPeer::new(id, link(1194), base);
            let to_client = DataKeys {
                send: c2s,
                recv: s2c,
            };
            client
                .install(0, &to_client, DataFormat::V2 { peer_id: id }, base)
                .expect("valid key");
            Session {
                server,
                client,
                addr,
            }
        })
        .collect()
}

/// Splits fuzz bytes into records; past the end, nothing.
fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> {
    std::iter::from_fn(move || {
        let [op, who, len, rest @ ..] = data else {
            return None;
        };
        let n = (usize::from(*len) * 8).min(rest.len()).min(MAX_RECORD);
        let body = &rest[..n];
        data = &rest[n..];
        Some((*op, *who, body))
    })
}

pub fn tap(data: &[u8]) {
    let base = Instant::now();
    let peers = PeerTable::default();
    let s = sessions(&peers, base);
    let mut now = base;
    for (op, who, body) in records(data) {
        now += Duration::from_millis(1);
        match op % 3 {
            0 => from_the_tap(&peers, &s, body, now),
            1 => from_a_client(&peers, &s, who, body, now),
            _ => framed(&s[usize::from(who % SESSIONS)], who, body),
        }
    }
}

/// A frame the kernel wrote: `body` as the whole frame.
fn from_the_tap(peers: &PeerTable, s: &[Session], body: &[u8], now: Instant) {
    let mut buf = vec![0u8; HEADROOM + body.len()];
    buf[HEADROOM - ETH_HLEN..HEADROOM - ETH_HLEN + body.len()].copy_from_slice(body);
    let ip = body.get(ETH_HLEN..).unwrap_or_default().to_vec();
    let is_ipv4 = body.len() >= ETH_HLEN + 20 && body[12..14] == [8, 0] && ip[0] >> 4 == 4;
    match from_tap(peers, &mut buf, HEADROOM, body.len(), now) {
        Err(NotForTunnel::NotIpv4) => assert!(!is_ipv4, "an IPv4 frame refused as not IPv4"),
        Err(NotForTunnel::NoPeer) => {
            assert!(is_ipv4);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            assert!(s.iter().all(|x| x.addr != dst), "{dst} has a session");
        }
        Err(NotForTunnel::Seal) => panic!("every session has a send key and room"),
        Ok((range, to)) => {
            assert!(is_ipv4);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            let owner = s
                .iter()
                .position(|x| x.addr == dst)
                .expect("sealed for a holder");
            assert_eq!(to, s[owner].server.link(), "sent to the holder's link");
            for (i, x) in s.iter().enumerate() {
                let mut pkt = buf[range.clone()].to_vec();
                let opened = x.client.open(&mut pkt, now);
                if i == owner {
                    match opened {
                        Ok(Opened::Ip(r)) => assert_eq!(pkt[r], ip[..], "the same IP packet"),
                        other => panic!("the holder cannot open its packet: {other:?}"),
                    }
                } else {
                    assert!(
                        opened.is_err(),
                        "session {i} opened session {owner}'s packet"
                    );
                }
            }
        }
    }
}

/// Client `who % 3` seals `body` and sends it from its own address (`who` below 128) or
/// from another session's address (128 and above): the worker's path through the table and `frame`.
fn from_a_client(peers: &PeerTable, s: &[Session], who: u8, body: &[u8], now: Instant) {
    let sender = &s[usize::from(who % SESSIONS)];
    let from = if who & 0x80 == 0 {
        sender.server.link()
    } else {
        // In usize: `who` 255 plus one overflows a u8.
        s[(usize::from(who) + 1) % usize::from(SESSIONS)]
            .server
            .link()
    };
    let overhead = sender.client.overhead();
    let mut buf = vec![0u8; overhead + body.len()];
    buf[overhead..].copy_from_slice(body);
    let Ok((range, _)) = sender.client.seal(&mut buf, overhead, body.len(), now) else {
        return;
    };
    // The worker's buffer: the data packet at HEADROOM, room for the Ethernet header before.
    let mut wire = vec![0u8; HEADROOM + range.len()];
    wire[HEADROOM..].copy_from_slice(&buf[range]);
    let (verdict, floated) = peers.open(from, &mut wire[HEADROOM..], now);
    assert!(floated.is_none(), "no float onto another session's address");
    if let DataVerdict::Tunnel {
        range,
        peer_id,
        addr,
    } = verdict
    {
        assert_eq!(
            peer_id, sender.server.peer_id,
            "judged as the sealing session"
        );
        assert_eq!(addr, sender.addr);
        assert_eq!(from, sender.server.link());
        let range = HEADROOM + range.start..HEADROOM + range.end;
        check_frame(&mut wire, range, sender.addr, peer_id);
    }
}

/// A decrypted packet of session `sender` framed for the TAP directly.
fn framed(sender: &Session, who: u8, body: &[u8]) {
    let mut buf = vec![0u8; ETH_HLEN + body.len()];
    buf[ETH_HLEN..].copy_from_slice(body);
    let slot = u32::from(who);
    check_frame(&mut buf, ETH_HLEN..ETH_HLEN + body.len(), sender.addr, slot);
}

fn check_frame(buf: &mut [u8], range: std::ops::Range<usize>, own: Ipv4Addr, slot: u32) {
    let ip = buf[range.clone()].to_vec();
    let ok = ip.len() >= 20 && ip[0] >> 4 == 4;
    match frame(buf, range.clone(), TAP_MAC, own, slot) {
        Ok(f) => {
            assert!(ok);
            assert_eq!(
                Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
                own,
                "spoofed source framed"
            );
            assert_eq!(f, range.start - ETH_HLEN..range.end);
            let fr = &buf[f];
            assert_eq!(fr[0..6], TAP_MAC);
            assert_eq!(fr[6..12], session_mac(slot));
            assert_eq!(fr[12..14], [8, 0]);
            assert_eq!(fr[ETH_HLEN..], ip[..]);
        }
        Err(NotForTap::NotIpv4) => assert!(!ok),
        Err(NotForTap::Spoofed) => {
            assert!(ok);
            assert_ne!(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]), own);
        }
    }
}
