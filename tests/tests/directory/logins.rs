//! Directory logins, groups and outages; renegotiation; directory-only endpoints.
use super::*;

#[test]
fn directory_logins_groups_and_outages() {
    require_root!();
    let t0 = Instant::now();
    let mut slapd = Slapd::prepare(LDAP_PORT, true);
    let secret = slapd.dir().join("svc.pw");
    std::fs::write(&secret, format!("{}\n", ldap::SERVICE_PW)).unwrap();
    let lab = AgentLab::new(
        5,
        &["alice", "bob", "carol", "dave", "erin"],
        &policy(&slapd, &secret),
    );
    slapd.launch(&lab.gw);
    // Declared after the lab: slapd stops before the lab's namespaces go.
    let slapd = &mut slapd;
    lab.add_net_address(OTHER);

    // The AWS worked scenario, groups by SID from a real directory.
    let alice = login(&lab, 0, "alice", "alice", &ldap::password("alice"));
    let bob = login(&lab, 1, "bob", "bob", &ldap::password("bob"));
    let carol = login(&lab, 2, "carol", "carol", &ldap::password("carol"));
    connected(&lab, &alice, "alice");
    connected(&lab, &bob, "bob");
    connected(&lab, &carol, "carol");
    assert!(reaches(&lab, 0, OTHER), "alice (eng) → {OTHER}");
    assert!(
        blocked(&lab, 0, SERVER),
        "alice reached {SERVER}: finance's /32 must hide eng's /24 there"
    );
    assert!(reaches(&lab, 1, SERVER), "bob (finance) → {SERVER}");
    assert!(blocked(&lab, 1, OTHER), "bob is not in eng");
    assert!(
        reaches(&lab, 2, OTHER),
        "carol (contractors, nested in eng) → {OTHER}"
    );
    let log = lab.agent().log();
    assert!(
        log.contains("directory login"),
        "{}",
        lab.agent().log_tail(20)
    );
    // `connections list` shows the directory user and groups of each session.
    let conns = lab.connections();
    let bob_conn = conns
        .iter()
        .find(|c| c["username"] == "bob")
        .unwrap_or_else(|| panic!("no session of directory user bob: {conns:?}"));
    assert_eq!(
        bob_conn["directory_groups"],
        serde_json::json!([group_sid("finance")])
    );

    // Refusals, each with its short reason; the refused client never gets a tunnel.
    let dave = login(&lab, 3, "dave", "dave", &ldap::password("dave"));
    refused(&dave, "account disabled", Duration::from_secs(10));
    drop(dave);
    let nobody = login(&lab, 3, "erin", "nobody", "whatever");
    refused(
        &nobody,
        "invalid username or password",
        Duration::from_secs(10),
    );
    drop(nobody);
    for _ in 0..2 {
        let wrong = login(&lab, 3, "erin", "alice", "not-her-password");
        refused(
            &wrong,
            "invalid username or password",
            Duration::from_secs(10),
        );
    }
    // Two failures for alice: even her right password is refused for a while.
    let limited = login(&lab, 3, "erin", "alice", &ldap::password("alice"));
    refused(&limited, "too many failed logins", Duration::from_secs(10));
    drop(limited);
    // Each failure is logged with its code and the user name that was tried (the unknown
    // one too), next to the certificate's name.
    failure_logged(&lab, "account_disabled", "dave", "dave");
    failure_logged(&lab, "invalid_credentials", "erin", "nobody");
    failure_logged(&lab, "invalid_credentials", "erin", "alice");
    failure_logged(&lab, "rate_limited", "erin", "alice");
    let metrics = scrape_metrics(&lab.gw);
    for r in ["account_disabled", "invalid_credentials", "rate_limited"] {
        assert!(
            metrics.contains(&format!("reason=\"{r}\"")),
            "no auth failure metric for {r}:\n{metrics}"
        );
    }

    // Group changes reach live sessions: bob moves from finance to eng (bitmap rewritten,
    // his flows re-checked); carol's contractors leave eng (no rule group left: HALT).
    // Alice joins finance only because a groupOfNames needs one member.
    slapd.modify(&format!(
        "dn: {fin}\nchangetype: modify\ndelete: member\nmember: {bob}\n-\nadd: member\nmember: {alice}\n\n\
         dn: {eng}\nchangetype: modify\nadd: member\nmember: {bob}\n-\ndelete: member\nmember: {contractors}\n",
        fin = group_dn("finance"),
        eng = group_dn("eng"),
        bob = user_dn("bob"),
        alice = user_dn("alice"),
        contractors = group_dn("contractors"),
    ));
    let halted = poll(Duration::from_secs(10), || {
        carol
            .log()
            .contains("no longer in an authorized group")
            .then_some(())
    });
    assert!(
        halted.is_some(),
        "carol kept her session after losing every rule group:\n{}\nagent:\n{}",
        carol.log(),
        lab.agent().log_tail(30)
    );
    let moved = poll(Duration::from_secs(10), || {
        (reaches(&lab, 1, OTHER) && blocked(&lab, 1, SERVER)).then_some(())
    });
    assert!(
        moved.is_some(),
        "bob's groups were not updated live\n{}",
        lab.agent().log_tail(30)
    );
    assert!(bob.proc.is_running(), "bob still has groups: not cut");
    // An account disabled in the directory is ended at the next re-check.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n",
        user_dn("alice")
    ));
    let halted = poll(Duration::from_secs(10), || {
        alice
            .log()
            .contains("account disabled or removed")
            .then_some(())
    });
    assert!(
        halted.is_some(),
        "alice kept her session after being disabled:\n{}",
        lab.agent().log_tail(30)
    );

    // A directory that hangs (SIGSTOP): erin's login waits out the timeouts and fails, while
    // connected users' traffic and the admin socket carry on.
    slapd.pause();
    let t_pause = Instant::now();
    let erin = login(&lab, 4, "erin", "erin", &ldap::password("erin"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        reaches(&lab, 1, OTHER),
        "bob's traffic stalls behind a slow directory"
    );
    let t = Instant::now();
    assert!(!lab.connections().is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the admin socket waited for the directory"
    );
    refused(&erin, "directory unavailable", Duration::from_secs(20));
    assert!(
        t_pause.elapsed() < Duration::from_secs(15),
        "the directory timeouts did not bound the login"
    );
    drop(erin);
    slapd.resume();

    // A directory that is down: refused at once with the reason; the agent stays up and the
    // connected users stay connected (a failed re-check keeps their groups).
    slapd.stop();
    let erin = login(&lab, 4, "erin", "erin", &ldap::password("erin"));
    refused(&erin, "directory unavailable", Duration::from_secs(15));
    failure_logged(&lab, "directory_unavailable", "erin", "erin");
    assert!(lab.agent().is_running());
    std::thread::sleep(Duration::from_secs(2));
    assert!(bob.proc.is_running());
    assert!(
        reaches(&lab, 1, OTHER),
        "bob lost his groups while the directory was down"
    );
    eprintln!("directory e2e took {:?}", t0.elapsed());
}

/// Renegotiations re-check the password the client sends again: alice's password changes in
/// the directory while she is connected, and her next renegotiation (every 4 s here) ends the
/// session with AUTH_FAILED; bob renegotiates with his unchanged one and keeps his session.
#[test]
fn renegotiation_rechecks_the_password() {
    require_root!();
    let mut slapd = Slapd::prepare(LDAP_PORT, true);
    let secret = slapd.dir().join("svc.pw");
    std::fs::write(&secret, format!("{}\n", ldap::SERVICE_PW)).unwrap();
    let lab = AgentLab::new(2, &["alice", "bob"], &policy(&slapd, &secret));
    slapd.launch(&lab.gw);
    let slapd = &mut slapd;
    let with_reneg = |i: usize, who: &str| {
        let profile = login_profile(&lab, i, who, who, &ldap::password(who));
        assert!(profile.contains("\nverb 3\n"), "{profile}");
        // The client renegotiates every 4 s and resends its cached password each time (no
        // auth-token is pushed).
        ProfileClient::start(
            lab.client_ns(i),
            &profile.replacen("\nverb 3\n", "\nreneg-sec 4\nverb 3\n", 1),
        )
    };
    let alice = with_reneg(0, "alice");
    let bob = with_reneg(1, "bob");
    connected(&lab, &alice, "alice");
    connected(&lab, &bob, "bob");
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: userPassword\nuserPassword: changed-by-helpdesk\n",
        user_dn("alice")
    ));
    let cut = poll(Duration::from_secs(15), || {
        alice.log().contains("AUTH_FAILED").then_some(())
    });
    assert!(
        cut.is_some(),
        "alice kept her session after her password changed:\n{}\nagent:\n{}",
        alice.log(),
        lab.agent().log_tail(30)
    );
    assert!(
        alice.log().contains("invalid username or password"),
        "{}",
        alice.log()
    );
    let ended = poll(Duration::from_secs(10), || {
        (!alice.proc.is_running()).then_some(())
    });
    assert!(
        ended.is_some(),
        "alice's client did not stop: {}",
        alice.log()
    );
    assert!(
        bob.log().contains("soft reset"),
        "bob did not renegotiate:\n{}",
        bob.log()
    );
    assert!(bob.proc.is_running(), "{}", bob.log());
    assert!(
        reaches(&lab, 1, SERVER),
        "bob (finance) → {SERVER} after renegotiating"
    );
    assert!(
        lab.agent()
            .log()
            .contains("renegotiation refused by the directory"),
        "{}",
        lab.agent().log_tail(30)
    );
}

/// Directory only (AWS's Active Directory mode): stock clients with `auth-user-pass` and no
/// certificate, over ldaps with a direct bind (no service account), groups found by a group
/// search and named by `cn`, combined with a local group; the client-connect hook (over HTTP)
/// gets the directory groups and refuses a user who has none.
#[test]
fn directory_only_without_certificates() {
    require_root!();
    let mut slapd = Slapd::prepare(LDAP_PORT, true);
    let policy = format!(
        r#"client_connect_url = "http://127.0.0.1:{HOOK_PORT}/connect"
client_connect_timeout_secs = 5

[auth]
methods = ["ldap"]

[directory]
url = "{url}"
ca_file = "{ca}"
connect_timeout_secs = 2
timeout_secs = 3
user_dn_template = "uid={{username}},ou=people,{suffix}"
group_source = "search"
group_base = "ou=groups,{suffix}"
group_filter = "(member={{dn}})"
nested = "recursive"
group_id = "name"

[groups]
ledger = ["bob"]

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["eng"]

[[authorization_rule]]
destination = "10.0.0.10/32"
groups = ["ledger"]
"#,
        url = slapd.ldaps_url.as_deref().expect("TLS on"),
        ca = slapd.ca_file.as_ref().expect("TLS on").display(),
        suffix = ldap::SUFFIX,
    );
    let lab = AgentLab::new(4, &[], &policy);
    slapd.launch(&lab.gw);
    let hook = HookServer::start(&lab.gw);
    let slapd = &mut slapd;
    lab.add_net_address(OTHER);
    let profile = tests::agent::cli_ok(&["client-config", "export", "--config", &lab.config_arg()]);
    assert!(
        profile.contains("\nverify-x509-name server name\n"),
        "{profile}"
    );
    assert!(
        !profile.contains("<cert>") && !profile.contains("# cert"),
        "{profile}"
    );
    let start = |i: usize, user: &str, pass: &str| {
        let creds = lab.dir.path().join(format!("creds-{i}-{user}"));
        std::fs::write(&creds, format!("{user}\n{pass}\n")).unwrap();
        let p = profile.replace(
            "\nauth-user-pass\n",
            &format!("\nauth-user-pass {}\n", creds.display()),
        );
        ProfileClient::start(lab.client_ns(i), &p)
    };
    let alice = start(0, "alice", &ldap::password("alice"));
    let bob = start(1, "bob", &ldap::password("bob"));
    let carol = start(2, "carol", &ldap::password("carol"));
    connected(&lab, &alice, "alice");
    connected(&lab, &bob, "bob");
    connected(&lab, &carol, "carol");
    assert!(reaches(&lab, 0, OTHER), "alice (eng) → {OTHER}");
    assert!(blocked(&lab, 0, SERVER), "ledger's /32 hides eng's /24");
    assert!(
        reaches(&lab, 1, SERVER),
        "bob (local group ledger) → {SERVER}"
    );
    assert!(blocked(&lab, 1, OTHER), "bob is not in eng");
    assert!(reaches(&lab, 2, OTHER), "carol (nested in eng) → {OTHER}");
    // The session is named by the user name (no certificate).
    let users: Vec<String> = lab
        .connections()
        .iter()
        .filter_map(|c| c["user"].as_str().map(str::to_owned))
        .collect();
    for u in ["alice", "bob", "carol"] {
        assert!(users.iter().any(|x| x == u), "{u} not listed: {users:?}");
    }
    // erin authenticates but is in no group: the hook refuses with its message.
    let erin = start(3, "erin", &ldap::password("erin"));
    refused(&erin, "no VPN group", Duration::from_secs(10));
    drop(erin);
    let wrong = start(3, "bob", "nope");
    refused(
        &wrong,
        "invalid username or password",
        Duration::from_secs(10),
    );
    drop(wrong);
    // Without a certificate the session's name is the user name tried.
    failure_logged(&lab, "hook_denied", "erin", "erin");
    failure_logged(&lab, "invalid_credentials", "bob", "bob");
    let metrics = scrape_metrics(&lab.gw);
    assert!(
        metrics.contains("portcullis_authentication_failures_total{reason=\"hook_denied\"} 1"),
        "{metrics}"
    );
    // Without a password the client cannot even try (no anonymous bind through the VPN).
    let empty = start(3, "alice", "");
    let got = poll(Duration::from_secs(10), || {
        (!empty.proc.is_running() || empty.log().contains("AUTH_FAILED")).then_some(())
    });
    assert!(got.is_some(), "{}", empty.log());
    assert!(!empty.log().contains(COMPLETED), "{}", empty.log());
    slapd.stop();
    // alice, bob, carol and erin reached the hook; the wrong and empty passwords did not.
    assert_eq!(hook.stop(), 4);
}
