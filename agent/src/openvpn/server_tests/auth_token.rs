//! Session tokens on the wire (doc §8.3): a token the authenticator issued goes out with the
//! PUSH_REPLY of a new session, and after a renegotiation alone (`PUSH_REPLY,auth-token …`
//! on the new key), as OpenVPN's `auth-gen-token` renews it; a token issued for a session that
//! is gone reaches no one.
use super::*;
use crate::openvpn::verdict::IssuedToken;

fn issued(token: &str, user: &str) -> IssuedToken {
    IssuedToken {
        token: token.into(),
        user: user.into(),
    }
}

#[test]
fn issued_tokens_are_pushed_and_renewed_alone() {
    use crate::openvpn::server::AuthMode;
    let mut lab = Lab::with(false, |s| s.auth = AuthMode::External);
    let l = link(40200);
    let mut c = lab.client("alice");
    c.username = "alice".into();
    c.password = "pw".into();
    lab.pump(&mut c, l);
    let pending = |evs: &[ServerEvent]| {
        evs.iter()
            .find_map(|e| match e {
                ServerEvent::AuthRequired { request, .. } => {
                    Some((request.key_id, request.session))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no AuthRequired: {evs:?}"))
    };
    let (k0, s0) = pending(&lab.events());
    // For another serial (a session replaced at this link): dropped.
    lab.server
        .set_auth_token(l, s0 + 1, issued("SESS_ID_AT_stale", "alice"));
    lab.server
        .set_auth_token(l, s0, issued("SESS_ID_AT_first", "alice"));
    lab.server
        .authorize_external(l, s0, k0, Ok(()), true, lab.now);
    lab.pump(&mut c, l);
    let push = c.push_reply.clone().expect("pushed");
    // With the name to send it with (base64 "alice"), as the 2.6 server pushes it.
    assert!(
        push.ends_with(",auth-token SESS_ID_AT_first,auth-token-user YWxpY2U="),
        "{push}"
    );
    assert!(!push.contains("stale"), "{push}");
    lab.events();

    c.renegotiate();
    lab.pump(&mut c, l);
    let (k1, s1) = pending(&lab.events());
    lab.server
        .set_auth_token(l, s1, issued("SESS_ID_AT_renewed", "alice"));
    lab.server
        .authorize_external(l, s1, k1, Ok(()), false, lab.now);
    lab.pump(&mut c, l);
    let push = c.push_reply.clone().expect("pushed");
    // The test client appends each PUSH_REPLY's options to what it had: the renewal came as
    // a message of its own holding only the token.
    assert!(
        push.ends_with(",auth-token-user YWxpY2U=,auth-token SESS_ID_AT_renewed"),
        "the renewal goes alone, after the first push: {push}"
    );
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::Rekeyed { .. })));
}

/// A client with no user name of its own (a certificate and a web login, no
/// `auth-user-pass`) is told the name to send with its token (`auth-token-user`), and its
/// renegotiations send that name: the session accepts it (the authenticator admitted that
/// user), but still no other.
#[test]
fn the_pushed_token_user_may_renegotiate_and_no_other_name() {
    use crate::openvpn::server::AuthMode;
    let mut lab = Lab::with(false, |s| s.auth = AuthMode::External);
    let l = link(40201);
    let mut c = lab.client("alice");
    c.username = String::new();
    c.password = String::new();
    lab.pump(&mut c, l);
    let pending = |evs: &[ServerEvent]| {
        evs.iter()
            .find_map(|e| match e {
                ServerEvent::AuthRequired { request, .. } => {
                    Some((request.key_id, request.session, request.username.clone()))
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no AuthRequired: {evs:?}"))
    };
    let (k0, s0, u0) = pending(&lab.events());
    assert_eq!(u0, "");
    lab.server
        .set_auth_token(l, s0, issued("SESS_ID_AT_first", "alice@idp"));
    lab.server
        .authorize_external(l, s0, k0, Ok(()), true, lab.now);
    lab.pump(&mut c, l);
    let push = c.push_reply.clone().expect("pushed");
    assert!(push.contains(",auth-token-user YWxpY2VAaWRw"), "{push}");
    lab.events();

    c.username = "alice@idp".into();
    c.password = "SESS_ID_AT_first".into();
    c.renegotiate();
    lab.pump(&mut c, l);
    let (k1, s1, u1) = pending(&lab.events());
    assert_eq!(
        u1, "alice@idp",
        "the authenticator checks the token for this name"
    );
    lab.server
        .authorize_external(l, s1, k1, Ok(()), false, lab.now);
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
        evs.iter().any(|e| matches!(e, ServerEvent::Disconnected { reason: CloseReason::ProtocolError(m), .. } if m.contains("user name changed"))),
        "{evs:?}"
    );
}
