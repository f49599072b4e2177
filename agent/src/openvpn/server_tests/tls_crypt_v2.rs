//! tls-crypt-v2 at the server: the 2.6 stateless handshake with the wrapped key resent, and
//! wrapped keys that must be refused before any state exists.
use super::*;
use crate::openvpn::tls_crypt_v2::{ClientKey, ServerKey, TlsCryptV2Server};

fn v2_lab(max_age_days: Option<u32>) -> (Lab, ServerKey) {
    let mut lab = Lab::new(false);
    let key = ServerKey::generate(&*replay_env().rng).unwrap();
    let again = ServerKey::parse(&key.to_pem()).unwrap();
    lab.server
        .set_tls_crypt_v2(Some(Arc::new(TlsCryptV2Server { key, max_age_days })));
    (lab, again)
}

fn v2_client(lab: &Lab, cn: &str, key: &ClientKey) -> TestClient {
    let c = lab
        .pki
        .ca
        .issue_client(cn, Validity::days_from_now(30))
        .unwrap();
    TestClient::with_tls_crypt_v2(
        client_tls(&lab.pki.ca.cert_pem(), &c.cert_pem, &c.key_pem),
        "server",
        key,
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_v2_client_connects_through_the_stateless_handshake() {
    let (mut lab, server_key) = v2_lab(Some(30));
    let ck = server_key
        .new_client_key(&*replay_env().rng, unix_now())
        .unwrap();
    let l = link(42000);
    let mut c = v2_client(&lab, "alice", &ck);
    // The V3 reset alone creates nothing: the reply carries the resend-WKc TLV.
    for p in c.poll_transmit(lab.now) {
        assert_eq!(p[0] >> 3, Opcode::HardResetClientV3 as u8);
        lab.server.handle_control(l, &p, lab.now);
    }
    assert_eq!(lab.server.session_count(), 0);
    assert_eq!(lab.server.stats.stateless_replies, 1);
    lab.pump(&mut c, l);
    assert!(c.push_reply.is_some(), "{:?}", lab.events());
    assert_eq!(connected(&lab.events())[0].1, "alice");
    assert_eq!(lab.server.stats.tls_crypt_v2_rejected, 0);
    // Data flows with the session's keys.
    let addr = c.pushed_addr().unwrap();
    let mut pkt = c.seal(&ip_packet(addr)).unwrap();
    let (v, _) = lab.server.peers().open(l, &mut pkt, lab.now);
    assert!(matches!(v, DataVerdict::Tunnel { .. }), "{v:?}");
    // Renegotiation keeps using the client's key.
    c.renegotiate();
    lab.pump(&mut c, l);
    assert_eq!(c.key_id(), Some(KeyId::ZERO.next()));
    assert!(c.key_exchanged());
}

#[test]
fn keys_from_another_server_key_too_old_or_without_early_negotiation_create_nothing() {
    let (mut lab, server_key) = v2_lab(Some(30));
    let other = ServerKey::generate(&Fixed(5)).unwrap();
    let cases = [
        (
            "other server key",
            other.new_client_key(&Fixed(6), unix_now()).unwrap(),
        ),
        (
            "31 days old",
            server_key
                .new_client_key(&Fixed(7), unix_now() - 31 * 86_400)
                .unwrap(),
        ),
    ];
    for (i, (what, ck)) in cases.iter().enumerate() {
        let l = link(42100 + i as u16);
        let mut c = v2_client(&lab, "mallory", ck);
        for _ in 0..3 {
            lab.pump(&mut c, l);
            lab.now += Duration::from_secs(2);
        }
        assert!(c.push_reply.is_none(), "{what}");
        assert_eq!(lab.server.session_count(), 0, "{what}");
        assert_eq!(lab.server.stats.stateless_replies, 0, "{what}");
    }
    assert!(lab.server.stats.tls_crypt_v2_rejected >= 2);
    // A good key, but a client that does not announce early negotiation (2.5): refused too,
    // since its third packet could not be opened without state.
    let ck = server_key.new_client_key(&Fixed(8), unix_now()).unwrap();
    let mut c = v2_client(&lab, "old", &ck);
    let reset = c.poll_transmit(lab.now).remove(0);
    // A V3 reset (opcode 10, session id, no acks, message id 0) wrapped with the client's
    // key, but with replay id 1 instead of EARLY_NEG_START + 1.
    let plain = [0x50, 0x81, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0];
    let mut no_early = vec![0u8; plain.len() + crate::openvpn::tls_crypt::OVERHEAD];
    TlsCryptKey::new(&ck.key, Role::Client)
        .wrap(&plain, 1, 1_700_000_000, &mut no_early)
        .unwrap();
    no_early.extend_from_slice(&ck.wkc);
    let rejected = lab.server.stats.tls_crypt_v2_rejected;
    let before = lab.server.stats.stateless_replies;
    lab.server.handle_control(link(42200), &no_early, lab.now);
    assert_eq!(lab.server.stats.stateless_replies, before);
    assert_eq!(lab.server.stats.tls_crypt_v2_rejected, rejected + 1);
    // And the good client's own reset is answered.
    lab.server.handle_control(link(42201), &reset, lab.now);
    assert_eq!(lab.server.stats.stateless_replies, before + 1);
    assert_eq!(lab.server.session_count(), 0);
}

#[test]
fn without_a_v1_key_unwrapped_and_v1_clients_are_refused() {
    let (mut lab, _) = v2_lab(None);
    let mut c = lab.client("plain");
    lab.pump(&mut c, link(42300));
    assert!(c.push_reply.is_none());
    assert_eq!(lab.server.session_count(), 0);
    assert_eq!(lab.server.stats.stateless_replies, 0);
}

struct Fixed(u8);
impl crate::openvpn::env::Random for Fixed {
    fn fill(&self, out: &mut [u8]) -> Result<(), ring::error::Unspecified> {
        out.fill(self.0);
        Ok(())
    }
}
