//! Pending authentication (doc §8.2): a verdict that waits for a web login tells the client
//! (`AUTH_PENDING,timeout N`, `INFO_PRE,WEB_AUTH::<url>`) and still keeps back address, push
//! and data path until the verdict.
use super::*;

#[test]
fn auth_pending_tells_the_client_and_keeps_everything_back() {
    use crate::openvpn::server::AuthMode;
    let mut lab = Lab::with(false, |s| s.auth = AuthMode::External);
    let l = link(40100);
    let mut a = lab.client("alice");
    lab.pump(&mut a, l);
    let (key_id, session) = lab
        .events()
        .iter()
        .find_map(|e| match e {
            ServerEvent::AuthRequired { request, .. } => Some((request.key_id, request.session)),
            _ => None,
        })
        .expect("an AuthRequired event");
    // A stale serial (a session that restarted at this link) tells nobody anything.
    lab.server.auth_pending(
        l,
        session + 1,
        key_id,
        Duration::from_secs(90),
        "WEB_AUTH::https://stale.example/",
        lab.now,
    );
    let url = "WEB_AUTH::https://idp.example/auth?state=abc.def";
    lab.server
        .auth_pending(l, session, key_id, Duration::from_secs(90), url, lab.now);
    lab.pump(&mut a, l);
    // The test client announces IV_PROTO=990 (bit 4: AUTH_PENDING with arguments).
    assert!(
        a.messages.iter().any(|m| m == "AUTH_PENDING,timeout 90"),
        "{:?}",
        a.messages
    );
    assert!(
        a.messages.iter().any(|m| m == &format!("INFO_PRE,{url}")),
        "{:?}",
        a.messages
    );
    assert!(!a.messages.iter().any(|m| m.contains("stale")));
    assert!(a.push_reply.is_none() && a.pushed_addr().is_none());
    assert!(connected(&lab.events()).is_empty());
    // The web login completes: the push follows.
    lab.server
        .authorize_external(l, session, key_id, Ok(()), true, lab.now);
    lab.pump(&mut a, l);
    assert!(a.push_reply.is_some() && a.pushed_addr().is_some());
}
