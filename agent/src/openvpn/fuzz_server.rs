//! The `server` fuzz target: arbitrary packets from a few addresses, over UDP and TCP, into a
//! whole [`Server`] — optionally after a real client (the in-memory [`TestClient`]) has
//! connected, so the fuzzed packets also reach an established session, its reliability layer,
//! TLS and data channel. Invariants: nothing panics, the session count stays within the
//! limit, nothing the server sends is larger than a control packet may be, a packet from an
//! address without a session is answered by at most one reply no more than 12 bytes longer
//! (no amplification), and the connected client is never disconnected by packets that do not
//! come from it.
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::env::Env;
use super::packet::{Role, MAX_CONTROL_PACKET_LEN};
use super::peer::Link;
use super::server::{Server, ServerEvent, ServerSettings};
use super::session::TlsProvider;
use super::testclient::{client_tls, TestClient};
use super::tls::{TlsContext, TlsOptions};
use super::tls_crypt::{StaticKey, TlsCryptKey};
use crate::pki::{CertificateAuthority, Validity};

struct Fixture {
    server_tls: Arc<rustls::ServerConfig>,
    client_tls: Arc<rustls::ClientConfig>,
    tls_crypt: StaticKey,
}

/// Certificates are made once per process: key generation would dominate every run.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ca =
            CertificateAuthority::generate("fuzz CA", Validity::days_from_now(3650)).expect("CA");
        let server = ca
            .issue_server("server", Validity::days_from_now(3650))
            .expect("server");
        let client = ca
            .issue_client("alice", Validity::days_from_now(3650))
            .expect("client");
        let ctx = TlsContext::from_pem(
            &ca.cert_pem(),
            &server.cert_pem,
            &server.key_pem,
            &[],
            &TlsOptions::default(),
            Arc::new(rustls::time_provider::DefaultTimeProvider),
        )
        .expect("server TLS");
        Fixture {
            server_tls: ctx.server_config(),
            client_tls: client_tls(&ca.cert_pem(), &client.cert_pem, &client.key_pem),
            tls_crypt: StaticKey::from_bytes([0x5a; 256]),
        }
    })
}

const MAX_SESSIONS: usize = 6;

fn links(i: u8) -> Link {
    let addr = SocketAddr::from((
        Ipv4Addr::new(192, 0, 2, 10 + (i % 4)),
        40000 + u16::from(i % 3),
    ));
    if i & 0x80 != 0 {
        Link::Tcp {
            conn: u64::from(i % 5),
            addr,
        }
    } else {
        Link::Udp { listener: 0, addr }
    }
}

pub fn server(data: &[u8]) {
    let f = fixture();
    let flags = data.first().copied().unwrap_or(0);
    let mut data = data.get(1..).unwrap_or(&[]);
    let tc = flags & 2 != 0;
    let settings = ServerSettings {
        max_sessions: MAX_SESSIONS,
        ..ServerSettings::default()
    };
    let provider: Arc<dyn TlsProvider> = Arc::new(f.server_tls.clone());
    let mut now = Instant::now();
    let Ok(mut server) = Server::new(
        settings,
        provider,
        tc.then(|| Arc::new(TlsCryptKey::new(&f.tls_crypt, Role::Server))),
        // Seeded: cookies, session ids and key-method-2 randoms repeat run to run (TLS's own
        // randomness is rustls's).
        Env::replay(1, 1_700_000_000),
        now,
    ) else {
        return;
    };
    let home = Link::Udp {
        listener: 0,
        addr: SocketAddr::from((Ipv4Addr::new(198, 51, 100, 1), 1194)),
    };
    let mut client = None;
    // The client's own packets, replayed at the end.
    let mut sent = Vec::new();
    if flags & 1 != 0 {
        let mut c = TestClient::new(f.client_tls.clone(), "server", tc.then_some(&f.tls_crypt));
        for _ in 0..64 {
            let mut moved = false;
            for p in c.poll_transmit(now) {
                moved = true;
                server.handle_control(home, &p, now);
                sent.push(p);
            }
            while let Some((to, p)) = server.poll_transmit() {
                if to == home {
                    moved = true;
                    c.on_packet(&p, now);
                }
            }
            if !moved {
                break;
            }
            now += Duration::from_millis(1);
            server.handle_timeout(now);
        }
        assert!(c.push_reply.is_some(), "the in-memory client must connect");
        client = Some(c);
    }
    while let Some(event) = server.poll_event() {
        drop(event);
    }
    let peers = server.peers();
    let mut buf = [0u8; 2048];
    // Bounded by the input length: every round consumes at least one byte.
    while let Some((&head, rest)) = data.split_first() {
        let len = usize::from(rest.first().copied().unwrap_or(0)) * 8 % 1700;
        let body = rest
            .get(1..1 + len.min(rest.len().saturating_sub(1)))
            .unwrap_or(&[]);
        data = rest.get(1 + body.len()..).unwrap_or(&[]);
        now += Duration::from_millis(u64::from(head & 0x0f) * 300);
        let link = links(head >> 4 | (head & 0x80));
        let known = server.sessions().any(|(l, _, _)| *l == link);
        let is_data = body.first().is_some_and(|b| b >> 3 == 6 || b >> 3 == 9);
        if is_data {
            let n = body.len().min(buf.len());
            buf[..n].copy_from_slice(&body[..n]);
            let (_, floated) = peers.open(link, &mut buf[..n], now);
            // Fuzz bytes cannot authenticate as the client, so nobody floats.
            assert!(floated.is_none(), "a forged data packet moved a peer");
        } else {
            // Earlier output is drained, so what follows answers this packet.
            while server.poll_transmit().is_some() {}
            server.handle_control(link, body, now);
            let mut replies = 0;
            while let Some((to, p)) = server.poll_transmit() {
                assert!(p.len() <= MAX_CONTROL_PACKET_LEN + 64, "oversized packet");
                if !known && to == link && !link.is_tcp() {
                    replies += 1;
                    assert!(
                        p.len() <= body.len() + 12,
                        "amplification: {} → {}",
                        body.len(),
                        p.len()
                    );
                }
            }
            assert!(
                replies <= 1,
                "{replies} replies to one packet from a new address"
            );
        }
        server.handle_timeout(now);
        while server.poll_transmit().is_some() {}
        assert!(server.session_count() <= MAX_SESSIONS);
        check_home(&mut server, home);
    }
    // Duplicates of the client's own packets (a network that duplicates them, or a replay)
    // never end its session either (issue 12).
    for p in &sent {
        server.handle_control(home, p, now);
    }
    check_home(&mut server, home);
    drop(client);
}

fn check_home(server: &mut Server, home: Link) {
    while let Some(ev) = server.poll_event() {
        if let ServerEvent::Disconnected { link, reason, .. } = &ev {
            // Time passes in big steps, so the real client may time out; anything else
            // that ends its session came from someone else's packets.
            if *link == home {
                let timeout = matches!(
                    reason,
                    super::session::CloseReason::PingTimeout
                        | super::session::CloseReason::HandshakeTimeout
                );
                assert!(timeout, "the connected client was disconnected: {reason}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_body_runs_on_simple_inputs() {
        for input in [
            &[][..],
            &[1],
            &[3, 0x10, 2, 0x38, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0],
        ] {
            super::server(input);
        }
    }
}
