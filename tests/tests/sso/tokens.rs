//! Session tokens after a web login (`auth.token_secret_file`).
use super::*;

/// Session tokens after a web login (`auth.token_secret_file`): the client renegotiates every
/// 4 s and then reconnects (SIGUSR1), each time with the pushed token: no second
/// `WEB_AUTH` reaches the GUI, the provider sees one login, and the session keeps the
/// provider's groups.
#[test]
fn sso_session_tokens_spare_the_web_login() {
    require_root!();
    require_sso_tools();
    let mut idp = Idp::prepare(
        IDP_PORT,
        &callback_url(),
        &[User {
            name: "alice",
            password: "alice-pw",
            groups: &["idp-engineering"],
        }],
    );
    let token_secret = idp.secret_file.with_file_name("token.secret");
    std::fs::write(&token_secret, format!("{}\n", "s".repeat(48))).unwrap();
    let policy = policy(&idp, r#"["oidc"]"#).replacen(
        "[auth]\n",
        &format!(
            "[auth]\ntoken_secret_file = \"{}\"\n",
            token_secret.display()
        ),
        1,
    );
    let lab = AgentLab::new(1, &["unused"], &policy);
    idp.launch(&lab.gw);
    let gateway_cert = lab.pki.dir.join("server.crt");
    let mut browser = Browser::start(&lab.gw, DRIVER_PORT, &[&idp.cert_file, &gateway_cert]);
    let (idp, browser) = (&idp, &mut browser);
    lab.add_net_address(OTHER);

    let p = profile(&lab, 0, true);
    assert!(p.contains("\nverb 3\n"), "{p}");
    let p = p.replacen("\nverb 3\n", "\nreneg-sec 4\nverb 3\n", 1);
    let (alice, mut gui, url) = start_with(&lab, 0, &p);
    let (text, _) = callback_text(browser.login(&url, "alice", "alice-pw"));
    assert!(text.contains("Signed in as alice"), "{text}");
    connected(&lab, &alice, "alice");
    assert!(reaches(&lab, 0, OTHER), "alice (eng) → {OTHER}");

    let agent = lab.agent();
    let renewed = poll(Duration::from_secs(20), || {
        (agent.log_count("session token accepted") >= 2).then_some(())
    });
    assert!(
        renewed.is_some(),
        "no renegotiation with the token:\n{}\nagent:\n{}",
        alice.log(),
        agent.log_tail(30)
    );
    // Reads what the GUI was sent so far (no such line: waits the whole second).
    let _ = gui.wait_line(">NOTHING", Duration::from_secs(1));
    let mut transcript = gui.transcript();
    // management-hold holds every restart, not only the first (2.6's management_hold clears
    // the release each time): the GUI reattaches once the restarted client waits, and
    // releases it again. Any new WEB_AUTH would reach this second connection.
    drop(gui);
    // SAFETY: the pid of a client this test started.
    unsafe { libc::kill(alice.proc.pid() as i32, libc::SIGUSR1) };
    assert!(
        alice.proc.wait_log("SIGUSR1", Duration::from_secs(5)),
        "{}",
        alice.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut gui = Gui::attach(lab.client_ns(0), MGMT_PORT);
    let again = poll(Duration::from_secs(30), || {
        (alice.proc.log_count(COMPLETED) >= 2).then_some(())
    });
    assert!(
        again.is_some(),
        "alice did not reconnect with her token:\n{}\nagent:\n{}",
        alice.log(),
        agent.log_tail(30)
    );
    assert!(
        reaches(&lab, 0, OTHER),
        "alice (eng, from her web login) → {OTHER} after reconnecting"
    );
    let _ = gui.wait_line(">NOTHING", Duration::from_secs(1));
    transcript.push_str(&gui.transcript());
    let web_auths = transcript.matches(">INFOMSG:WEB_AUTH::").count();
    assert_eq!(web_auths, 1, "{transcript}");
    assert_eq!(
        idp.log().matches("login ok for alice").count(),
        1,
        "{}",
        idp.log()
    );
    assert!(!alice.log().contains("AUTH_FAILED"), "{}", alice.log());
}
