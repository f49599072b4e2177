//! The server state machine against the in-memory [`TestClient`]: whole handshakes, pushes,
//! data, renegotiation, exits, and the named bad inputs of issue 3 at the server level.
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::env::{Env, WallClock};
use super::packet::{ControlPacket, KeyId, Opcode, SessionId};
use super::peer::{DataVerdict, DropCause, Link};
use super::server::{PushSettings, Server, ServerEvent, ServerSettings};
use super::session::{CloseReason, FailureCode, Refusal, TlsProvider};
use super::testclient::{client_tls, TestClient};
use super::tls::{TlsContext, TlsOptions};
use super::tls_crypt::{StaticKey, TlsCryptKey};
use crate::openvpn::packet::Role;
use crate::pki::{CertificateAuthority, IssuedCert, Validity};

struct Pki {
    ca: CertificateAuthority,
    server: IssuedCert,
}

fn pki() -> Pki {
    let ca = CertificateAuthority::generate("test CA", Validity::days_from_now(30)).unwrap();
    let server = ca
        .issue_server("server", Validity::days_from_now(30))
        .unwrap();
    Pki { ca, server }
}

/// The test PKI issues certificates valid from the real now.
fn system_clock() -> WallClock {
    Arc::new(rustls::time_provider::DefaultTimeProvider)
}

/// Seeded randomness: runs repeat the server's session ids, cookies and key-method-2 randoms.
fn replay_env() -> Env {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    Env::replay(7, unix)
}

fn link(port: u16) -> Link {
    Link::Udp {
        listener: 0,
        addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 11), port)),
    }
}

struct Lab {
    pki: Pki,
    server: Server,
    tc: Option<StaticKey>,
    now: Instant,
}

impl Lab {
    fn new(tls_crypt: bool) -> Lab {
        Self::with(tls_crypt, |_| {})
    }

    fn with(tls_crypt: bool, f: impl FnOnce(&mut ServerSettings)) -> Lab {
        let pki = pki();
        let ctx = TlsContext::from_pem(
            &pki.ca.cert_pem(),
            &pki.server.cert_pem,
            &pki.server.key_pem,
            &[],
            &TlsOptions::default(),
            system_clock(),
        )
        .unwrap();
        let provider: Arc<dyn TlsProvider> = Arc::new(ctx.server_config());
        let tc = tls_crypt.then(|| StaticKey::generate(&*replay_env().rng).unwrap());
        let mut settings = ServerSettings {
            push: PushSettings {
                routes: vec!["10.0.0.0/24".parse().unwrap()],
                dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
                ..PushSettings::default()
            },
            ..ServerSettings::default()
        };
        f(&mut settings);
        let now = Instant::now();
        let server = Server::new(
            settings,
            provider,
            tc.as_ref()
                .map(|k| Arc::new(TlsCryptKey::new(k, Role::Server))),
            replay_env(),
            now,
        )
        .unwrap();
        Lab {
            pki,
            server,
            tc,
            now,
        }
    }

    fn client(&self, cn: &str) -> TestClient {
        let c = self
            .pki
            .ca
            .issue_client(cn, Validity::days_from_now(30))
            .unwrap();
        TestClient::new(
            client_tls(&self.pki.ca.cert_pem(), &c.cert_pem, &c.key_pem),
            "server",
            self.tc.as_ref(),
        )
    }

    /// Moves packets both ways until quiet (bounded), advancing time a little per round.
    fn pump(&mut self, c: &mut TestClient, l: Link) {
        for _ in 0..64 {
            let mut moved = false;
            for p in c.poll_transmit(self.now) {
                moved = true;
                self.server.handle_control(l, &p, self.now);
            }
            while let Some((to, p)) = self.server.poll_transmit() {
                if to == l {
                    moved = true;
                    c.on_packet(&p, self.now);
                }
            }
            if !moved {
                break;
            }
            self.now += Duration::from_millis(1);
            self.server.handle_timeout(self.now);
        }
    }

    /// `secs` seconds of a client that pings every second (so only a session limit ends it).
    fn keep_alive(&mut self, c: &mut TestClient, l: Link, secs: u32) {
        for _ in 0..secs {
            self.now += Duration::from_secs(1);
            let mut ping = c.seal(&super::crypto::PING_MAGIC).unwrap();
            let _ = self.server.peers().open(l, &mut ping, self.now);
            self.server.handle_timeout(self.now);
            self.pump(c, l);
        }
    }

    fn events(&mut self) -> Vec<ServerEvent> {
        std::iter::from_fn(|| self.server.poll_event()).collect()
    }

    fn connect(&mut self, cn: &str, l: Link) -> TestClient {
        let mut c = self.client(cn);
        self.pump(&mut c, l);
        assert!(
            c.push_reply.is_some(),
            "no push for {cn}: {:?}",
            self.events()
        );
        c
    }
}

fn connected(evs: &[ServerEvent]) -> Vec<(u32, String, Ipv4Addr)> {
    evs.iter()
        .filter_map(|e| match e {
            ServerEvent::Connected {
                peer_id,
                common_name,
                tunnel_addr,
                ..
            } => Some((*peer_id, common_name.clone(), *tunnel_addr)),
            _ => None,
        })
        .collect()
}

fn disconnected(evs: &[ServerEvent]) -> Vec<CloseReason> {
    evs.iter()
        .filter_map(|e| match e {
            ServerEvent::Disconnected { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

/// An IPv4/UDP packet from `src` (checksums are not the tunnel's business).
fn ip_packet(src: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 32];
    p[0] = 0x45;
    p[3] = 32;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&[10, 0, 0, 10]);
    p
}

#[test]
fn handshake_push_and_data_in_memory_with_and_without_tls_crypt() {
    for tc in [false, true] {
        let mut lab = Lab::new(tc);
        let l = link(40000);
        let mut c = lab.connect("alice", l);
        let push = c.push_reply.clone().unwrap();
        for want in [
            "route 10.0.0.0 255.255.255.0",
            "dhcp-option DNS 10.0.0.2",
            "route-gateway 10.100.0.1",
            "topology subnet",
            "peer-id 0",
            "cipher AES-256-GCM",
            "protocol-flags cc-exit tls-ekm",
            "ping 10",
            "ping-restart 60",
        ] {
            assert!(push.contains(want), "{want:?} missing in {push}");
        }
        let evs = lab.events();
        let conn = connected(&evs);
        assert_eq!(conn.len(), 1, "{evs:?}");
        assert_eq!(conn[0].1, "alice");
        let addr = c.pushed_addr().unwrap();
        assert_eq!(conn[0].2, addr);
        // Client → server: the decrypted IP packet comes out for the TAP.
        let mut pkt = c.seal(&ip_packet(addr)).unwrap();
        let peers = lab.server.peers();
        let (v, floated) = peers.open(l, &mut pkt, lab.now);
        assert!(floated.is_none());
        let DataVerdict::Tunnel { range, peer_id, .. } = v else {
            panic!("{v:?}");
        };
        assert_eq!(peer_id, 0);
        assert_eq!(&pkt[range], &ip_packet(addr)[..]);
        // Server → client.
        let peer = peers.by_addr(addr).unwrap();
        let mut buf = vec![0u8; 24 + 32];
        buf[24..].copy_from_slice(&ip_packet(Ipv4Addr::new(10, 0, 0, 10)));
        let (r, to) = peer.seal(&mut buf, 24, 32, lab.now).unwrap();
        assert_eq!(to, l);
        assert_eq!(
            c.on_packet(&buf[r], lab.now).unwrap(),
            ip_packet(Ipv4Addr::new(10, 0, 0, 10))
        );
    }
}

fn tcp_link(conn: u64, port: u16) -> Link {
    Link::Tcp {
        conn,
        addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 12), port)),
    }
}

#[test]
fn tcp_session_starts_only_after_the_cookie() {
    let mut lab = Lab::new(true);
    let l = tcp_link(7, 5555);
    let mut c = lab.client("bob");
    for p in c.poll_transmit(lab.now) {
        lab.server.handle_control(l, &p, lab.now);
    }
    assert_eq!(lab.server.session_count(), 0, "no state for a bare reset");
    assert_eq!(lab.server.stats.stateless_replies, 1);
    let replies: Vec<_> = std::iter::from_fn(|| lab.server.poll_transmit()).collect();
    assert_eq!(replies.len(), 1);
    c.on_packet(&replies[0].1, lab.now);
    lab.pump(&mut c, l);
    assert!(c.push_reply.is_some(), "{:?}", lab.events());
    assert_eq!(connected(&lab.events()).len(), 1);
}

#[test]
fn tcp_connection_carries_one_session() {
    let mut lab = Lab::new(false);
    let l = tcp_link(8, 5556);
    let mut c = lab.connect("bob", l);
    lab.events();
    // A second reset on the live connection neither replaces nor disturbs the session.
    let mut intruder = lab.client("mallory");
    lab.pump(&mut intruder, l);
    assert_eq!(lab.server.session_count(), 1);
    assert!(disconnected(&lab.events()).is_empty());
    // Once its session ended, the connection starts no other.
    c.send_message("EXIT");
    lab.pump(&mut c, l);
    assert_eq!(disconnected(&lab.events()), vec![CloseReason::ClientExit]);
    let mut again = lab.client("bob");
    lab.pump(&mut again, l);
    assert_eq!(lab.server.session_count(), 0);
    assert!(again.push_reply.is_none());
    assert!(connected(&lab.events()).is_empty());
}

#[test]
fn half_open_sessions_per_source_are_limited() {
    use super::server::AuthMode;
    // External authorization that never answers keeps every session half-open.
    let mut lab = Lab::with(false, |s| {
        s.max_sessions = 64;
        s.auth = AuthMode::External;
    });
    assert_eq!(lab.server.half_open_limit(), 16);
    for port in 0..40 {
        let mut c = lab.client("mallory");
        lab.pump(&mut c, link(20_000 + port));
    }
    assert_eq!(lab.server.session_count(), 16);
    assert_eq!(lab.server.stats.half_open_limit, 24);
    // Another host still gets a session, and connects once authorized.
    let other = Link::Udp {
        listener: 0,
        addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 99), 1194)),
    };
    let mut c = lab.client("alice");
    lab.pump(&mut c, other);
    let (session, key_id) = lab
        .events()
        .iter()
        .find_map(|e| match e {
            ServerEvent::AuthRequired { link, request } if *link == other => {
                Some((request.session, request.key_id))
            }
            _ => None,
        })
        .expect("alice's authentication is asked for");
    lab.server
        .authorize_external(other, session, key_id, Ok(()), true, lab.now);
    lab.pump(&mut c, other);
    assert!(c.push_reply.is_some());
    // Connected, her session no longer counts as half-open: her host has its full share.
    for port in 0..16 {
        let mut c = lab.client("alice");
        let l = Link::Udp {
            listener: 0,
            addr: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 99), 2000 + port)),
        };
        lab.pump(&mut c, l);
    }
    assert_eq!(lab.server.session_count(), 33);
    assert_eq!(lab.server.stats.half_open_limit, 24);
}

#[test]
fn renegotiation_server_and_client_initiated_keeps_data_flowing() {
    let mut lab = Lab::new(true);
    let l = link(40001);
    let mut c = lab.connect("alice", l);
    let addr = c.pushed_addr().unwrap();
    let peers = lab.server.peers();
    lab.events();
    // Server-initiated, then client-initiated, then a few more to wrap past key id 7.
    for round in 0..9 {
        if round % 2 == 0 {
            lab.server.renegotiate_all(lab.now);
        } else {
            // Client-initiated renegotiations are rate-limited: one per interval.
            lab.keep_alive(&mut c, l, 20);
            c.renegotiate();
        }
        lab.pump(&mut c, l);
        let evs = lab.events();
        assert!(
            evs.iter().any(|e| matches!(e, ServerEvent::Rekeyed { .. })),
            "round {round}: {evs:?}"
        );
        let mut pkt = c.seal(&ip_packet(addr)).unwrap();
        let (v, _) = peers.open(l, &mut pkt, lab.now);
        assert!(
            matches!(v, DataVerdict::Tunnel { .. }),
            "round {round}: {v:?}"
        );
    }
    // 0 → 1..7 → 1 → 2: never 0 again.
    assert_eq!(c.key_id(), KeyId::new(2));
}

#[test]
fn same_user_gets_the_same_address_back() {
    let mut lab = Lab::new(false);
    let mut c = lab.connect("carol", link(40002));
    let first = c.pushed_addr().unwrap();
    c.send_message("EXIT");
    lab.pump(&mut c, link(40002));
    assert_eq!(disconnected(&lab.events()), vec![CloseReason::ClientExit]);
    assert_eq!(lab.server.pool().in_use(), 0);
    let c2 = lab.connect("carol", link(40003));
    assert_eq!(c2.pushed_addr(), Some(first));
}

#[test]
fn handshake_times_out_and_ping_timeout_closes() {
    let mut lab = Lab::with(false, |s| {
        s.udp.ping = Duration::from_secs(1);
        s.udp.ping_restart = Duration::from_secs(2);
    });
    let l = link(40009);
    let mut c = lab.connect("alice", l);
    lab.events();
    // The server pings a silent client, then drops it after 2 × ping-restart.
    let mut pings = 0;
    for _ in 0..60 {
        lab.now += Duration::from_millis(100);
        lab.server.handle_timeout(lab.now);
        while let Some((_, p)) = lab.server.poll_transmit() {
            if p[0] >> 3 == 9 {
                assert_eq!(c.on_packet(&p, lab.now).unwrap(), super::crypto::PING_MAGIC);
                pings += 1;
            }
        }
    }
    assert!(pings >= 3, "{pings}");
    assert_eq!(disconnected(&lab.events()), vec![CloseReason::PingTimeout]);
}

#[test]
fn no_shared_cipher_is_auth_failed_after_the_key_exchange() {
    let mut lab = Lab::with(false, |s| {
        s.udp.ciphers = vec![super::crypto::Cipher::Aes128Gcm]
    });
    let mut c = lab.client("alice");
    c.peer_info = c
        .peer_info
        .replace(
            "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
            "IV_CIPHERS=CHACHA20-POLY1305",
        )
        .replace("IV_NCP=2\n", "");
    lab.pump(&mut c, link(40010));
    assert!(c.push_reply.is_none());
    assert!(
        c.auth_failed.as_deref().unwrap_or("").contains("cipher"),
        "{:?}",
        c.auth_failed
    );
    lab.now += Duration::from_secs(6);
    lab.server.handle_timeout(lab.now);
    assert!(matches!(
        disconnected(&lab.events()).as_slice(),
        [CloseReason::AuthFailed(Refusal {
            code: FailureCode::Negotiation,
            ..
        })]
    ));
}

#[test]
fn session_timeout_is_pushed_and_enforced() {
    let mut lab = Lab::with(false, |s| {
        s.push.session_timeout = Some(Duration::from_secs(30))
    });
    let l = link(40011);
    let mut c = lab.connect("alice", l);
    assert!(c
        .push_reply
        .as_ref()
        .unwrap()
        .contains("session-timeout 30"));
    lab.events();
    // Keep the client alive with pings until the session limit hits.
    lab.keep_alive(&mut c, l, 40);
    assert!(
        c.messages.iter().any(|m| m == "RESTART"),
        "{:?}",
        c.messages
    );
    assert_eq!(
        disconnected(&lab.events()),
        vec![CloseReason::SessionTimeout]
    );

    // disconnect_on_session_timeout: the client is told to stop instead.
    let mut lab = Lab::with(false, |s| {
        s.push.session_timeout = Some(Duration::from_secs(30));
        s.udp.halt_on_session_timeout = true;
    });
    let mut c = lab.connect("alice", l);
    lab.keep_alive(&mut c, l, 40);
    assert!(
        c.messages.iter().any(|m| m == "HALT,session timeout"),
        "{:?}",
        c.messages
    );
}

#[test]
fn a_closed_session_is_not_revived_by_its_clients_retransmissions() {
    let mut lab = Lab::new(true);
    let l = link(40012);
    let mut c = lab.client("alice");
    // The client's reset and the stateless reply, then its first TLS packet (with the cookie).
    let reset = c.poll_transmit(lab.now).remove(0);
    lab.server.handle_control(l, &reset, lab.now);
    let (_, reply) = lab.server.poll_transmit().unwrap();
    c.on_packet(&reply, lab.now);
    let hello = c.poll_transmit(lab.now);
    for p in &hello {
        lab.server.handle_control(l, p, lab.now);
    }
    assert_eq!(lab.server.session_count(), 1);
    // The operator (or a failed handshake) ends it; the client, unaware, retransmits.
    lab.server
        .close_peer(0, CloseReason::Server("test".into()), lab.now);
    assert_eq!(lab.server.session_count(), 0);
    while lab.server.poll_transmit().is_some() {}
    for p in &hello {
        lab.server
            .handle_control(l, p, lab.now + Duration::from_secs(2));
    }
    assert_eq!(lab.server.session_count(), 0, "revived from the cookie");
    assert!(
        lab.server.poll_transmit().is_none(),
        "a revived session answered"
    );
    // A fresh connection from the same address (new session id) is still welcome.
    lab.connect("alice", l);
}

/// A TLS provider whose CRL "changes" on demand.
struct Revoking {
    config: Arc<rustls::ServerConfig>,
    revoked_cn: std::sync::Mutex<Option<String>>,
}

impl TlsProvider for Revoking {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }
    fn is_revoked(&self, id: &super::tls::ClientIdentity) -> bool {
        self.revoked_cn.lock().unwrap().as_deref() == Some(id.common_name.as_str())
    }
}

#[test]
fn a_crl_reload_cuts_the_revoked_live_sessions_only() {
    let pki = pki();
    let ctx = TlsContext::from_pem(
        &pki.ca.cert_pem(),
        &pki.server.cert_pem,
        &pki.server.key_pem,
        &[],
        &TlsOptions::default(),
        system_clock(),
    )
    .unwrap();
    let provider = Arc::new(Revoking {
        config: ctx.server_config(),
        revoked_cn: std::sync::Mutex::new(None),
    });
    let now = Instant::now();
    let server = Server::new(
        ServerSettings::default(),
        provider.clone(),
        None,
        replay_env(),
        now,
    )
    .unwrap();
    let mut lab = Lab {
        pki,
        server,
        tc: None,
        now,
    };
    let mut alice = lab.connect("alice", link(40020));
    let mut bob = lab.connect("bob", link(40021));
    lab.events();
    *provider.revoked_cn.lock().unwrap() = Some("bob".into());
    assert_eq!(lab.server.cut_revoked(lab.now), 1);
    lab.pump(&mut bob, link(40021));
    lab.pump(&mut alice, link(40020));
    assert!(
        bob.messages.iter().any(|m| m.starts_with("HALT")),
        "{:?}",
        bob.messages
    );
    lab.now += Duration::from_secs(3);
    lab.server.handle_timeout(lab.now);
    let d = disconnected(&lab.events());
    assert_eq!(d, vec![CloseReason::Server("certificate revoked".into())]);
    assert_eq!(lab.server.session_count(), 1, "alice stays");
}

/// A stopping server tells each client RESTART and lets the session go as soon as the client
/// acked it, rather than after the 2 s linger; a client that never answers is dropped at the
/// linger's end.
#[test]
fn shutdown_ends_sessions_once_restart_is_acked() {
    let mut lab = Lab::new(false);
    let (a, b) = (link(40020), link(40021));
    let mut ca = lab.connect("alice", a);
    let _cb = lab.connect("bob", b);
    lab.events();
    lab.server.shutdown(lab.now);
    // alice gets (and acks) RESTART; bob's client is gone and answers nothing.
    lab.pump(&mut ca, a);
    while lab.server.poll_transmit().is_some() {}
    assert!(
        ca.messages.iter().any(|m| m == "RESTART"),
        "{:?}",
        ca.messages
    );
    assert_eq!(
        lab.server.session_count(),
        1,
        "alice's session outlived her ack"
    );
    assert_eq!(
        disconnected(&lab.events()),
        vec![CloseReason::Server("server shutdown".into())]
    );
    lab.now += Duration::from_millis(2100);
    lab.server.handle_timeout(lab.now);
    assert_eq!(lab.server.session_count(), 0);
}

/// New settings reach sessions that start afterwards; a connected session keeps its push.
#[test]
fn updated_settings_apply_to_new_sessions() {
    let mut lab = Lab::new(false);
    let (a, b) = (link(40030), link(40031));
    let ca = lab.connect("alice", a);
    let mut s = lab.server.settings().clone();
    s.push.dns = vec!["10.9.9.9".parse().unwrap()];
    s.client_cidr = "10.200.0.0/24".parse().unwrap();
    lab.server.update_settings(s);
    let cb = lab.connect("bob", b);
    let (pa, pb) = (ca.push_reply.unwrap(), cb.push_reply.unwrap());
    assert!(!pa.contains("10.9.9.9"), "{pa}");
    assert!(pb.contains("dhcp-option DNS 10.9.9.9"), "{pb}");
    // The pool is fixed at start.
    assert!(!pb.contains("10.200.0."), "{pb}");
    assert_eq!(
        lab.server.settings().client_cidr,
        "10.100.0.0/24".parse::<ipnet::Ipv4Net>().unwrap()
    );
}

/// External authentication (directory, hook): nothing is pushed and no address is handed out
/// before the verdict (the CVE-2020-15078 class), other sessions proceed meanwhile, a
/// temporary refusal goes out as `AUTH_FAILED,TEMP[backoff N]:…`, and the ended attempt
/// carries the refusal's code and the user name that was tried.
#[test]
fn external_auth_waits_for_the_verdict_and_temporary_refusals() {
    use super::server::AuthMode;
    let mut lab = Lab::with(false, |s| s.auth = AuthMode::External);
    let (la, lb) = (link(40020), link(40021));
    let mut a = lab.client("alice");
    a.username = "alice.smith".into();
    a.password = "pw".into();
    let mut b = lab.client("bob");
    lab.pump(&mut a, la);
    lab.pump(&mut b, lb);
    let evs = lab.events();
    let pending: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            ServerEvent::AuthRequired { link, request } => {
                Some((*link, request.key_id, request.session))
            }
            _ => None,
        })
        .collect();
    assert_eq!(pending.len(), 2, "{evs:?}");
    assert!(connected(&evs).is_empty());
    // Waiting a while changes nothing: no push, no address.
    lab.now += Duration::from_secs(2);
    lab.server.handle_timeout(lab.now);
    lab.pump(&mut a, la);
    assert!(a.push_reply.is_none() && a.pushed_addr().is_none());
    // Bob is admitted while alice still waits.
    let (_, kb, sb) = *pending.iter().find(|(l, _, _)| *l == lb).unwrap();
    lab.server
        .authorize_external(lb, sb, kb, Ok(()), true, lab.now);
    lab.pump(&mut b, lb);
    assert!(b.push_reply.is_some());
    assert!(a.push_reply.is_none());
    let (_, ka, sa) = *pending.iter().find(|(l, _, _)| *l == la).unwrap();
    lab.server.authorize_external(
        la,
        sa,
        ka,
        Err(Refusal::temporary(
            FailureCode::DirectoryUnavailable,
            "directory unavailable",
        )),
        true,
        lab.now,
    );
    lab.pump(&mut a, la);
    assert_eq!(
        a.auth_failed.as_deref(),
        Some("TEMP[backoff 10]:directory unavailable")
    );
    assert!(a.push_reply.is_none());
    lab.now += Duration::from_secs(6);
    lab.server.handle_timeout(lab.now);
    let evs = lab.events();
    let ended = evs
        .iter()
        .find_map(|e| match e {
            ServerEvent::Disconnected {
                link,
                reason,
                username,
                common_name,
                tunnel_addr,
                ..
            } if *link == la => Some((reason, username, common_name, tunnel_addr)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("alice's attempt did not end: {evs:?}"));
    assert_eq!(ended.0.failure_code(), FailureCode::DirectoryUnavailable);
    assert_eq!(
        ended.0.to_string(),
        "authentication failed: directory unavailable"
    );
    assert_eq!(ended.1.as_deref(), Some("alice.smith"));
    assert_eq!(ended.2.as_deref(), Some("alice"));
    assert_eq!(*ended.3, None, "no address for a refused attempt");
}

/// The user name of key 0 is the session's: a renegotiation with another one ends it (its
/// groups were granted to the first), the same one keeps it.
#[test]
fn user_name_cannot_change_on_renegotiation() {
    let mut lab = Lab::new(false);
    let l = link(40030);
    let mut c = lab.client("alice");
    c.username = "alice".into();
    c.password = "pw".into();
    lab.pump(&mut c, l);
    assert!(c.push_reply.is_some());
    lab.events();
    c.renegotiate();
    lab.pump(&mut c, l);
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::Rekeyed { .. })));
    c.username = "mallory".into();
    c.renegotiate();
    lab.pump(&mut c, l);
    let evs = lab.events();
    assert!(
        disconnected(&evs)
            .iter()
            .any(|r| matches!(r, CloseReason::ProtocolError(e) if e.contains("user name changed"))),
        "{evs:?}"
    );
}

/// A client that restarts from the same address and port replaces its session at the same
/// link, with key id 0 again: a verdict meant for the replaced session must not admit the new
/// one (which might be another user), and the new one's own verdict decides.
#[test]
fn a_verdict_for_a_replaced_session_is_dropped() {
    use super::server::AuthMode;
    let mut lab = Lab::with(false, |s| s.auth = AuthMode::External);
    let l = link(40040);
    let auth_required = |evs: &[ServerEvent]| {
        evs.iter()
            .find_map(|e| match e {
                ServerEvent::AuthRequired { request, .. } => Some((
                    request.key_id,
                    request.session,
                    request.identity.common_name.clone(),
                )),
                _ => None,
            })
            .expect("an AuthRequired event")
    };
    let mut a = lab.client("alice");
    lab.pump(&mut a, l);
    let (ka, sa, _) = auth_required(&lab.events());
    // A new session from the same address (as a restarting client, or someone else).
    let mut b = lab.client("bob");
    lab.pump(&mut b, l);
    let (kb, sb, cn) = auth_required(&lab.events());
    assert_eq!(cn, "bob");
    assert_ne!(sa, sb, "sessions on one link share a serial");
    // alice's (late) allowing verdict: nothing happens to bob's session.
    lab.server
        .authorize_external(l, sa, ka, Ok(()), true, lab.now);
    lab.pump(&mut b, l);
    assert!(
        b.push_reply.is_none(),
        "bob was admitted by alice's verdict"
    );
    assert!(connected(&lab.events()).is_empty());
    // bob's own refusal is what he gets.
    lab.server.authorize_external(
        l,
        sb,
        kb,
        Err(Refusal::new(FailureCode::HookDenied, "not allowed")),
        true,
        lab.now,
    );
    lab.pump(&mut b, l);
    assert!(b.push_reply.is_none());
    assert_eq!(b.auth_failed.as_deref(), Some("not allowed"));
}

/// With external authentication, a renegotiation waits for its own verdict (the directory
/// checks the resent password): the old key carries on meanwhile, an accepted one rekeys, a
/// refused one sends AUTH_FAILED and ends the established session with that code.
#[test]
fn renegotiation_verdicts_under_external_auth() {
    use super::server::AuthMode;
    let mut lab = Lab::with(false, |s| s.auth = AuthMode::External);
    let l = link(40040);
    let mut c = lab.client("alice");
    c.username = "alice".into();
    c.password = "pw".into();
    lab.pump(&mut c, l);
    let pending = |evs: &[ServerEvent]| {
        evs.iter()
            .find_map(|e| match e {
                ServerEvent::AuthRequired { request, .. } => Some((
                    request.key_id,
                    request.initial,
                    request.password.expose().to_owned(),
                    request.session,
                )),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no AuthRequired: {evs:?}"))
    };
    let (k0, initial, _, s0) = pending(&lab.events());
    assert!(initial);
    lab.server
        .authorize_external(l, s0, k0, Ok(()), true, lab.now);
    lab.pump(&mut c, l);
    assert!(c.push_reply.is_some());
    lab.events();

    c.renegotiate();
    lab.pump(&mut c, l);
    let evs = lab.events();
    let (k1, initial, pw, s1) = pending(&evs);
    assert!(
        !initial && pw == "pw",
        "the renegotiation carries the password again"
    );
    assert!(
        !evs.iter().any(|e| matches!(e, ServerEvent::Rekeyed { .. })),
        "rekeyed before the verdict: {evs:?}"
    );
    lab.server
        .authorize_external(l, s1, k1, Ok(()), false, lab.now);
    lab.pump(&mut c, l);
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::Rekeyed { .. })));

    // The password changed in the directory meanwhile: the next renegotiation is refused.
    c.renegotiate();
    lab.pump(&mut c, l);
    let (k2, _, _, s2) = pending(&lab.events());
    lab.server.authorize_external(
        l,
        s2,
        k2,
        Err(Refusal::new(
            FailureCode::InvalidCredentials,
            "invalid username or password",
        )),
        false,
        lab.now,
    );
    lab.pump(&mut c, l);
    assert_eq!(
        c.auth_failed.as_deref(),
        Some("invalid username or password")
    );
    lab.now += Duration::from_secs(6);
    lab.server.handle_timeout(lab.now);
    let evs = lab.events();
    let ended = evs
        .iter()
        .find_map(|e| match e {
            ServerEvent::Disconnected {
                reason,
                tunnel_addr,
                ..
            } => Some((reason.failure_code(), *tunnel_addr)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the session did not end: {evs:?}"));
    assert_eq!(ended.0, FailureCode::InvalidCredentials);
    assert!(ended.1.is_some(), "it was an established session");
}

mod auth_token;
mod bad_input;
mod fence;
mod hardening;
mod pending_auth;
mod tls_crypt_v2;
