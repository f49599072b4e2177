//! Session tokens across gateways, restarts and revocations.
use super::*;

use crate::auth::authenticator::tests::{request, token_link};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-fleet";

fn gateway(revoked: Option<std::path::PathBuf>) -> SessionTokens {
    SessionTokens::new(
        TokenKey::new(SECRET, 3600, 600),
        Revoked::load(revoked, unix_now()).unwrap(),
    )
}

fn sso_grant() -> Grant {
    Grant {
        username: "alice@idp".into(),
        groups: vec!["eng".into(), "finance".into()],
        name_unverified: false,
    }
}

/// A web login's token names its user and groups: a gateway that never saw the login (the
/// fleet's next one, or this one restarted) admits the reconnect with them, without a
/// provider; a renegotiation must still show its own session's token.
#[test]
fn a_web_login_is_resumed_by_a_gateway_that_never_saw_it() {
    let l = token_link();
    let a = gateway(None);
    let login = request("alice", "", "");
    let t = a
        .issue(l, &login, Some(sso_grant()), false, &Pending::detached(l))
        .unwrap();
    assert_eq!(t.user, "alice@idp", "auth-token-user: the provider's user");
    let b = gateway(None);
    let reconnect = request("alice", &t.user, &t.token);
    let got = b
        .check(l, &reconnect, &t.token)
        .unwrap_or_else(|r| panic!("{r:?}"));
    assert_eq!(got.sso, Some(sso_grant()));
    assert_eq!(got.claims.granted.kind, Kind::Sso);
    // Renegotiations on b need the token b's session holds.
    let mut reneg = reconnect.clone();
    reneg.initial = false;
    assert_eq!(
        b.check(l, &reneg, &t.token).err().map(|r| r.code),
        Some(FailureCode::TokenInvalid)
    );
    b.accepted(l, &reconnect, &got.claims, &Pending::detached(l));
    assert!(b.check(l, &reneg, &t.token).is_ok());
    // Sent with another name than the one pushed: refused.
    let other = request("alice", "mallory", &t.token);
    assert_eq!(
        b.check(l, &other, &t.token).err().map(|r| r.code),
        Some(FailureCode::TokenInvalid)
    );
}

/// `connections terminate` revokes the session's token: refused here, after a restart
/// (the file), and its renewals with it; other sessions' tokens still work.
#[test]
fn a_terminated_sessions_token_is_refused_also_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("pc-sessions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token.secret.revoked");
    let a = gateway(Some(file.clone()));
    let l = token_link();
    let other_link = Link::Udp {
        listener: 0,
        addr: "192.0.2.51:4000".parse().unwrap(),
    };
    let t = a
        .issue(
            l,
            &request("alice", "alice", "pw"),
            None,
            true,
            &Pending::detached(l),
        )
        .unwrap();
    let kept = a
        .issue(
            other_link,
            &request("bob", "bob", "pw"),
            None,
            true,
            &Pending::detached(other_link),
        )
        .unwrap();
    assert!(a
        .check(l, &request("alice", "alice", &t.token), &t.token)
        .is_ok());
    assert_eq!(a.revoke_link(l), 1);
    for g in [&a, &gateway(Some(file.clone()))] {
        assert_eq!(
            g.check(l, &request("alice", "alice", &t.token), &t.token)
                .err()
                .map(|r| r.code),
            Some(FailureCode::TokenRevoked)
        );
        assert!(g
            .check(other_link, &request("bob", "bob", &kept.token), &kept.token)
            .is_ok());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
