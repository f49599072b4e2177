//! Session tokens on the wire (doc §8.3): a token the authenticator issued goes out with the
//! PUSH_REPLY of a new session, and after a renegotiation alone (`PUSH_REPLY,auth-token …`
//! on the new key), as OpenVPN's `auth-gen-token` renews it; a token issued for a session that
//! is gone reaches no one.
use super::*;
use crate::openvpn::verdict::IssuedToken;

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
        .set_auth_token(l, s0 + 1, IssuedToken("SESS_ID_AT_stale".into()));
    lab.server
        .set_auth_token(l, s0, IssuedToken("SESS_ID_AT_first".into()));
    lab.server
        .authorize_external(l, s0, k0, Ok(()), true, lab.now);
    lab.pump(&mut c, l);
    let push = c.push_reply.clone().expect("pushed");
    assert!(push.ends_with(",auth-token SESS_ID_AT_first"), "{push}");
    assert!(!push.contains("stale"), "{push}");
    lab.events();

    c.renegotiate();
    lab.pump(&mut c, l);
    let (k1, s1) = pending(&lab.events());
    lab.server
        .set_auth_token(l, s1, IssuedToken("SESS_ID_AT_renewed".into()));
    lab.server
        .authorize_external(l, s1, k1, Ok(()), false, lab.now);
    lab.pump(&mut c, l);
    let push = c.push_reply.clone().expect("pushed");
    // The test client appends each PUSH_REPLY's options to what it had: the renewal came as
    // a message of its own holding only the token.
    assert!(
        push.ends_with(",auth-token SESS_ID_AT_first,auth-token SESS_ID_AT_renewed"),
        "the renewal goes alone, after the first push: {push}"
    );
    assert!(lab
        .events()
        .iter()
        .any(|e| matches!(e, ServerEvent::Rekeyed { .. })));
}
