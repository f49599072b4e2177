//! Fleet-wide session-token revocation, two (then three) fleet members on a real etcd, each
//! with the real session-token checker of a gateway (`SessionTokens`, one shared secret):
//! a token revoked on gateway A (what `connections terminate` does) is refused by gateway B
//! as `token_revoked` within 1 s; a gateway that joins later reads it at its join; the key
//! has its own lease of the token's remaining lifetime (it outlives A); a revocation made
//! while etcd is down applies on A at once and reaches B after etcd comes back.
//!
//! Not a VPN end to end: the fleet lab has no login that issues tokens (no directory or
//! provider in it); the pieces below are the gateway's own, only the tunnel is left out.
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use portcullis::auth::revoked::Revoked;
use portcullis::auth::sessions::SessionTokens;
use portcullis::auth::token::{unix_now, TokenKey};
use portcullis::fleet::presence::fingerprint;
use portcullis::fleet::{Keys, Member};
use portcullis::io::Pending;
use portcullis::openvpn::fence::AddressFence;
use portcullis::openvpn::peer::Link;
use portcullis::openvpn::verdict::{AuthRequest, FailureCode, IssuedToken};
use tests::etcd::EtcdCluster;

use super::have_etcd;

const SECRET: &[u8] = b"the fleet's token secret, 32 characters or more";
const LIFETIME: u64 = 3600;

struct Gateway {
    tokens: SessionTokens,
    member: Option<Member>,
}

fn gateway() -> Gateway {
    Gateway {
        tokens: SessionTokens::new(
            TokenKey::new(SECRET, LIFETIME, 600),
            Revoked::load(None, unix_now()).unwrap(),
        ),
        member: None,
    }
}

fn join(g: &mut Gateway, etcd: &EtcdCluster, id: &str) {
    g.member = Some(Member::start_with_token(
        etcd.fleet_section(id),
        Keys::new("corp"),
        "10.100.0.0/24".parse().unwrap(),
        AddressFence::new(),
        None,
        Some(fingerprint(std::str::from_utf8(SECRET).unwrap())),
        Some(g.tokens.revoked()),
    ));
}

fn link(port: u16) -> Link {
    Link::Udp {
        listener: 0,
        addr: format!("192.0.2.50:{port}").parse().unwrap(),
    }
}

/// A new connection of alice sending `password`.
fn request(user: &str, password: &str) -> AuthRequest {
    use portcullis::openvpn::{crypto::Cipher, keys::Password, options::PeerInfo, packet::KeyId};
    AuthRequest {
        session: 1,
        key_id: KeyId::ZERO,
        initial: true,
        identity: portcullis::openvpn::tls::ClientIdentity {
            common_name: "alice".into(),
            serial_hex: "01".into(),
            not_after: std::time::SystemTime::now(),
            issuer: "CN=test".into(),
        },
        username: user.into(),
        password: Password::new(password),
        peer_info: PeerInfo::parse("IV_VER=2.6.14\n"),
        cipher: Cipher::Aes256Gcm,
    }
}

/// A directory login of alice on `g` at `l`: its token.
fn login(g: &Gateway, l: Link) -> IssuedToken {
    g.tokens
        .issue(
            l,
            &request("alice", "pw"),
            None,
            true,
            &Pending::detached(l),
        )
        .expect("a token")
}

/// What `g` says to a reconnect with `t`: `None` admitted, else the refusal's code.
fn verdict(g: &Gateway, t: &IssuedToken) -> Option<FailureCode> {
    let l = link(9999);
    g.tokens
        .check(l, &request(&t.user, &t.token), &t.token)
        .err()
        .map(|r| r.code)
}

/// Waits up to `within` for `g` to refuse `t` as revoked; returns how long it took.
async fn refused_within(g: &Gateway, t: &IssuedToken, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        match verdict(g, t) {
            Some(FailureCode::TokenRevoked) => return start.elapsed(),
            other => assert!(
                start.elapsed() < within,
                "{what}: still {other:?} after {within:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn members_see(gws: &[&Gateway], n: usize) {
    let start = Instant::now();
    for g in gws {
        let m = g.member.as_ref().unwrap();
        while m.shared.gateways().len() != n || m.shared.error().is_some() {
            assert!(start.elapsed() < Duration::from_secs(15), "no fleet of {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_on_one_gateway_is_refused_by_the_others() {
    if !have_etcd() {
        return;
    }
    let mut etcd = EtcdCluster::start(1).await;
    let (mut a, mut b) = (gateway(), gateway());
    join(&mut a, &etcd, "gw-a");
    join(&mut b, &etcd, "gw-b");
    members_see(&[&a, &b], 2).await;

    let la = link(4000);
    let t = login(&a, la);
    assert_eq!(verdict(&b, &t), None, "one secret: B admits A's token");
    assert_eq!(a.tokens.revoke_link(la), 1);
    assert_eq!(verdict(&a, &t), Some(FailureCode::TokenRevoked));
    let took = refused_within(&b, &t, Duration::from_secs(1), "B after A's terminate").await;
    eprintln!("B refused the revoked token after {took:?}");

    // One key, under a lease of its own of the token's remaining lifetime.
    let mut c = portcullis::fleet::connect(&etcd.fleet_section("probe"))
        .await
        .unwrap();
    let keys = Keys::new("corp");
    let got = c
        .get(keys.revoked_tokens(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1);
    let lease = got.kvs()[0].lease();
    let ttl = c.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(
        (LIFETIME as i64 - 60..=LIFETIME as i64).contains(&ttl),
        "lease TTL {ttl}"
    );
    // It outlives A: A's member is gone (its own lease and keys expire), the key stays.
    a.member = None;
    let mut c2 = gateway();
    join(&mut c2, &etcd, "gw-c");
    refused_within(&c2, &t, Duration::from_secs(15), "C, read at its join").await;

    // etcd down: A's next revocation applies on A at once, reaches B after etcd is back.
    join(&mut a, &etcd, "gw-a");
    members_see(&[&a, &b, &c2], 3).await;
    let la2 = link(4001);
    let t2 = login(&a, la2);
    assert_eq!(verdict(&b, &t2), None);
    etcd.kill(0);
    assert_eq!(a.tokens.revoke_link(la2), 1);
    assert_eq!(verdict(&a, &t2), Some(FailureCode::TokenRevoked));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(verdict(&b, &t2), None, "B cannot know while etcd is down");
    etcd.restart(&[0]).await;
    let took = refused_within(&b, &t2, Duration::from_secs(20), "B after etcd came back").await;
    eprintln!("B refused the token revoked during the outage {took:?} after etcd came back");
}
