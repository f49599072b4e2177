//! Renegotiations of a web-login session without session tokens.
use super::*;

/// The skip path: without session tokens a renegotiation is not a new login. The session's
/// TLS channel is the one that logged in (its user name cannot change, the session checks),
/// so the gateway admits the new key without a second web login: the client renegotiates
/// every 4 s, the GUI is shown one `WEB_AUTH`, the provider sees one login, and the tunnel
/// keeps the claim's groups.
#[test]
fn sso_renegotiations_skip_the_web_login() {
    require_root!();
    require_sso_tools();
    let mut idp = Idp::prepare(IDP_PORT, &callback_url(), &[ALICE]);
    let lab = AgentLab::new(1, &["unused"], &policy(&idp, r#"["oidc"]"#));
    let mut browser = launch(&mut idp, &lab);
    lab.add_net_address(OTHER);
    let p = profile(&lab, 0, true).replacen("\nverb 3\n", "\nreneg-sec 4\nverb 3\n", 1);
    assert!(p.contains("reneg-sec 4"), "{p}");
    let (alice, mut gui, url) = start_with(&lab, 0, &p);
    let (text, _) = callback_text(browser.login(&url, "alice", "alice-pw"));
    assert!(text.contains("Signed in as alice"), "{text}");
    connected(&lab, &alice, "alice");
    let agent = lab.agent();
    let kept = poll(Duration::from_secs(20), || {
        (agent.log_count("renegotiation keeps the session's web login") >= 2).then_some(())
    });
    assert!(
        kept.is_some(),
        "no renegotiation admitted:\n{}\nagent:\n{}",
        alice.log(),
        agent.log_tail(30)
    );
    assert!(
        reaches(&lab, 0, OTHER),
        "alice (eng) → {OTHER} after renegotiating"
    );
    let _ = gui.wait_line(">NOTHING", Duration::from_secs(1));
    let transcript = gui.transcript();
    assert_eq!(
        transcript.matches(">INFOMSG:WEB_AUTH::").count(),
        1,
        "{transcript}"
    );
    assert_eq!(
        idp.log().matches("login ok for alice").count(),
        1,
        "{}",
        idp.log()
    );
    assert!(!alice.log().contains("AUTH_FAILED"), "{}", alice.log());
    assert_eq!(alice.proc.log_count(COMPLETED), 1, "{}", alice.log());
}
