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
    let mut idp = Idp::prepare(IDP_PORT, &callback_url(), &[ALICE]);
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
    let mut browser = launch(&mut idp, &lab);
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

/// The endpoint file of a token test: `methods`, and the token secret beside the provider's.
fn token_policy(idp: &Idp, methods: &str) -> String {
    let secret = idp.secret_file.with_file_name("token.secret");
    std::fs::write(&secret, format!("{}\n", "s".repeat(48))).unwrap();
    policy(idp, methods).replacen(
        "[auth]\n",
        &format!("[auth]\ntoken_secret_file = \"{}\"\n", secret.display()),
        1,
    )
}

/// A client with no user name of its own (certificate + web login, no `auth-user-pass`):
/// without `auth-token-user` openvpn 2.6 never sends the pushed token. With it, its
/// renegotiations (every 4 s) and its reconnect to a restarted gateway (kept sessions; the
/// web login's user and groups come from the token, not from the old process) ask the
/// provider nothing: one `WEB_AUTH`, one login at the provider, the claim's groups after.
#[test]
fn sso_tokens_for_a_certificate_client_survive_a_gateway_restart() {
    require_root!();
    require_sso_tools();
    let mut idp = Idp::prepare(IDP_PORT, &callback_url(), &[ALICE]);
    let policy = token_policy(&idp, r#"["certificate", "oidc"]"#)
        .replace("[groups]\nfinance = [\"sso\"]\n", "");
    let mut lab = AgentLab::new_with(1, &["carol"], &policy, &["--keep-maps"]);
    let mut browser = launch(&mut idp, &lab);
    lab.add_net_address(OTHER);
    let p = cert_profile(&lab, "carol").replacen("\nverb 3\n", "\nreneg-sec 4\nverb 3\n", 1);
    assert!(p.contains("reneg-sec 4"), "{p}");
    let (carol, mut gui, url) = start_with(&lab, 0, &p);
    let (text, _) = callback_text(browser.login(&url, "alice", "alice-pw"));
    assert!(text.contains("Signed in as alice"), "{text}");
    connected(&lab, &carol, "carol");
    let renewed = poll(Duration::from_secs(20), || {
        (lab.agent().log_count("session token accepted") >= 2).then_some(())
    });
    assert!(
        renewed.is_some(),
        "the client sent no token (auth-token-user?):\n{}\nagent:\n{}",
        carol.log(),
        lab.agent().log_tail(30)
    );
    let _ = gui.wait_line(">NOTHING", Duration::from_secs(1));
    let mut transcript = gui.transcript();
    // The restarted client waits in management-hold again: the GUI reattaches.
    drop(gui);
    lab.restart_agent();
    std::thread::sleep(Duration::from_secs(2));
    let mut gui = Gui::attach(lab.client_ns(0), MGMT_PORT);
    let again = poll(Duration::from_secs(40), || {
        (carol.proc.log_count(COMPLETED) >= 2).then_some(())
    });
    assert!(
        again.is_some(),
        "carol did not reconnect with her token:\n{}\nagent:\n{}",
        carol.log(),
        lab.agent().log_tail(30)
    );
    assert!(
        lab.agent().log_count("session token accepted") >= 1,
        "{}",
        lab.agent().log_tail(30)
    );
    assert!(
        reaches(&lab, 0, OTHER),
        "carol (eng from the web login in her token) → {OTHER} after the restart"
    );
    let _ = gui.wait_line(">NOTHING", Duration::from_secs(1));
    transcript.push_str(&gui.transcript());
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
}

/// The OpenVPN 3 core client (certificate + web login, no user name): it takes the user
/// name from `auth-token-user`, renegotiates and reconnects (SIGHUP) with the token; no
/// second login URL and one login at the provider.
#[test]
fn sso_tokens_with_the_openvpn3_client() {
    require_root!();
    tests::require_ovpn3!("sso_tokens_with_the_openvpn3_client");
    require_sso_tools();
    let mut idp = Idp::prepare(IDP_PORT, &callback_url(), &[ALICE]);
    let policy = token_policy(&idp, r#"["certificate", "oidc"]"#)
        .replace("[groups]\nfinance = [\"sso\"]\n", "");
    let lab = AgentLab::new(1, &["carol"], &policy);
    let mut browser = launch(&mut idp, &lab);
    lab.add_net_address(OTHER);
    let p = lab
        .export_profile("carol")
        .replacen("\nverb 3\n", "\nreneg-sec 4\nverb 3\n", 1);
    let url_file = lab.dir.path().join("ovpn3-url");
    let c = tests::ovpn3::Ovpn3::start(
        lab.client_ns(0),
        &p,
        &[
            "--sso-methods",
            "webauth,openurl",
            "-Z",
            &url_file.to_string_lossy(),
        ],
    );
    let url = ovpn3_login_url(&c, &url_file, &lab);
    let (text, _) = callback_text(browser.login(&url, "alice", "alice-pw"));
    assert!(text.contains("Signed in as alice"), "{text}");
    if let Err(e) = c.wait_connected(Duration::from_secs(20)) {
        panic!("ovpncli: {e}\nagent:\n{}", lab.agent().log_tail(30));
    }
    std::fs::remove_file(&url_file).unwrap();
    let renewed = poll(Duration::from_secs(20), || {
        (lab.agent().log_count("session token accepted") >= 2).then_some(())
    });
    assert!(
        renewed.is_some(),
        "no renegotiation with the token:\n{}\nagent:\n{}",
        c.log(),
        lab.agent().log_tail(30)
    );
    // SAFETY: the pid of a client this test started (ovpncli reconnects on SIGHUP).
    unsafe { libc::kill(c.proc.pid() as i32, libc::SIGHUP) };
    let again = poll(Duration::from_secs(30), || {
        (c.log().matches(tests::ovpn3::CONNECTED).count() >= 2).then_some(())
    });
    assert!(
        again.is_some(),
        "ovpncli did not reconnect with its token:\n{}\nagent:\n{}",
        c.log(),
        lab.agent().log_tail(30)
    );
    assert!(!url_file.exists(), "a second login URL:\n{}", c.log());
    assert!(
        reaches(&lab, 0, OTHER),
        "carol (eng by her web login) → {OTHER}"
    );
    assert_eq!(
        idp.log().matches("login ok for alice").count(),
        1,
        "{}",
        idp.log()
    );
}

/// `connections terminate` revokes the session's token: a stock client sending that token
/// (as openvpn 2.6 does on its own reconnects; here the token the GUI was given,
/// `>PASSWORD:Auth-Token:`) is refused with `token_revoked` and must log in on the web again.
#[test]
fn sso_a_terminated_sessions_token_is_refused() {
    require_root!();
    require_sso_tools();
    let mut idp = Idp::prepare(IDP_PORT, &callback_url(), &[ALICE]);
    let lab = AgentLab::new(2, &["unused"], &token_policy(&idp, r#"["oidc"]"#));
    let mut browser = launch(&mut idp, &lab);
    let (first, mut gui, url) = start_with(&lab, 0, &profile(&lab, 0, true));
    let (text, _) = callback_text(browser.login(&url, "alice", "alice-pw"));
    assert!(text.contains("Signed in as alice"), "{text}");
    connected(&lab, &first, "alice");
    let token = gui
        .wait_line(">PASSWORD:Auth-Token:", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no token shown to the GUI:\n{}", gui.transcript()));
    assert!(token.starts_with("SESS_ID_AT_"), "{token}");
    cli_ok(&[
        "connections",
        "terminate",
        "--config",
        &lab.config_arg(),
        "--user",
        "alice",
    ]);
    drop((first, gui));
    // The token, sent by a stock client with the name the gateway pushed with it.
    let creds = lab.dir.path().join("replayed-token");
    std::fs::write(&creds, format!("alice\n{token}\n")).unwrap();
    let p = profile(&lab, 1, false).replace(
        &format!(
            "auth-user-pass {}",
            lab.dir.path().join("sso-creds-1").display()
        ),
        &format!("auth-user-pass {}", creds.display()),
    );
    let replay = ProfileClient::start(lab.client_ns(1), &p);
    refused(
        &replay,
        "ended by the administrator",
        Duration::from_secs(15),
    );
    failure_logged(&lab, "token_revoked");
    assert_eq!(
        idp.log().matches("login ok for alice").count(),
        1,
        "{}",
        idp.log()
    );
}
