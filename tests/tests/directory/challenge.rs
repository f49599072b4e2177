//! Static challenge (TOTP) and the directory client's configurations.
use super::*;

/// Static challenge with the built-in TOTP verifier: the exported profile has
/// `static-challenge`, the password arrives as `SCRV1:<password>:<code>`, the code is checked
/// against the secret in the user's directory entry and works once.
///
/// The stock client prompts for the code on its console, which a test has none of: the
/// credentials file carries the SCRV1 string the client would build, byte for byte what it
/// sends.
#[test]
fn static_challenge_totp() {
    require_root!();
    use portcullis::auth::otp;
    let mut slapd = Slapd::prepare(LDAP_PORT, false);
    // The secret is read by the service account; the user's own bind cannot read it.
    let secret_file = slapd.dir().join("svc.pw");
    std::fs::write(&secret_file, format!("{}\n", ldap::SERVICE_PW)).unwrap();
    let policy = format!(
        r#"
[auth]
methods = ["ldap"]
static_challenge = "Enter your authenticator code"

[directory]
url = "{url}"
connect_timeout_secs = 2
timeout_secs = 3
bind_dn = "{svc}"
bind_password_file = "{secret}"
user_base = "ou=people,{suffix}"
totp_secret_attribute = "pcTotpSecret"

[[authorization_rule]]
destination = "10.0.0.0/24"
all_users = true
"#,
        url = slapd.url,
        suffix = ldap::SUFFIX,
        svc = ldap::SERVICE_DN,
        secret = secret_file.display(),
    );
    let lab = AgentLab::new(2, &[], &policy);
    slapd.launch(&lab.gw);
    let slapd = &mut slapd;
    let profile = tests::agent::cli_ok(&["client-config", "export", "--config", &lab.config_arg()]);
    let challenge = "\nstatic-challenge \"Enter your authenticator code\" 1\n";
    assert!(profile.contains(challenge), "{profile}");
    // Renegotiations every 3 s: alice's client resends the SCRV1 string of her login.
    let profile =
        profile
            .replace(challenge, "\n")
            .replacen("\nverb 3\n", "\nreneg-sec 3\nverb 3\n", 1);
    let mut n = 0;
    let mut start = |i: usize, user: &str, password: &str| {
        n += 1;
        let creds = lab.dir.path().join(format!("creds-{n}"));
        std::fs::write(&creds, format!("{user}\n{password}\n")).unwrap();
        let p = profile.replace(
            "\nauth-user-pass\n",
            &format!("\nauth-user-pass {}\n", creds.display()),
        );
        ProfileClient::start(lab.client_ns(i), &p)
    };
    let scrv1 = |password: &str, code: &str| {
        format!(
            "SCRV1:{}:{}",
            otp::base64_encode(password.as_bytes()),
            otp::base64_encode(code.as_bytes())
        )
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secret = otp::base32_decode(ldap::ALICE_TOTP).unwrap();
    let code = format!("{:06}", otp::totp_at(&secret, now / otp::STEP_SECS));
    let wrong = format!(
        "{:06}",
        (otp::totp_at(&secret, now / otp::STEP_SECS) + 1) % 1_000_000
    );

    let no_code = start(1, "alice", &ldap::password("alice"));
    refused(&no_code, "one-time code required", Duration::from_secs(10));
    drop(no_code);
    // A wrong code is told as a wrong password: the password is not confirmed.
    let bad = start(1, "alice", &scrv1(&ldap::password("alice"), &wrong));
    refused(
        &bad,
        "invalid username or password",
        Duration::from_secs(10),
    );
    assert!(!bad.log().contains("one-time code"), "{}", bad.log());
    drop(bad);
    let bob = start(1, "bob", &scrv1(&ldap::password("bob"), &code));
    refused(
        &bob,
        "invalid username or password",
        Duration::from_secs(10),
    );
    drop(bob);
    let alice = start(0, "alice", &scrv1(&ldap::password("alice"), &code));
    connected(&lab, &alice, "alice");
    assert!(reaches(&lab, 0, SERVER));
    let replay = start(1, "alice", &scrv1(&ldap::password("alice"), &code));
    refused(
        &replay,
        "invalid username or password",
        Duration::from_secs(10),
    );
    drop(replay);
    // The agent's log keeps the detail.
    let log = lab.agent().log_tail(200);
    assert!(log.contains("one-time code already used"), "{log}");
    assert!(log.contains("invalid one-time code"), "{log}");
    // Her renegotiations re-check the password only (the code was used at login): two
    // soft resets later she is still connected.
    let renegotiated = poll(Duration::from_secs(12), || {
        (alice.log().matches("soft reset").count() >= 2).then_some(())
    });
    assert!(renegotiated.is_some(), "{}", alice.log());
    assert!(!alice.log().contains("AUTH_FAILED"), "{}", alice.log());
    assert!(reaches(&lab, 0, SERVER), "alice after renegotiating");
    slapd.stop();
}

/// The directory client alone against the fixture (no tunnel): every way of finding groups
/// and naming them, the cap, escaping of user input in filters and DNs, and the refusals.
#[test]
fn directory_client_configurations() {
    require_root!();
    use portcullis::auth::directory::{DirError, Directory};
    use portcullis::config::DirectoryConfig;
    let ns = tests::NetNs::new("l");
    let mut slapd = Slapd::prepare(LDAP_PORT, true);
    slapd.launch(&ns);
    let secret = slapd.dir().join("svc.pw");
    std::fs::write(&secret, ldap::SERVICE_PW).unwrap();
    let base = format!(
        "url = \"{url}\"\nstarttls = true\nca_file = \"{ca}\"\nconnect_timeout_secs = 2\ntimeout_secs = 3\n\
         bind_dn = \"{svc}\"\nbind_password_file = \"{secret}\"\nuser_base = \"ou=people,{s}\"\n\
         group_base = \"ou=groups,{s}\"\n",
        url = slapd.url,
        ca = slapd.ca_file.as_ref().unwrap().display(),
        svc = ldap::SERVICE_DN,
        secret = secret.display(),
        s = ldap::SUFFIX,
    );
    let root_base = base.replace(
        &format!("user_base = \"ou=people,{}\"", ldap::SUFFIX),
        &format!("user_base = \"{}\"", ldap::SUFFIX),
    );
    assert_ne!(root_base, base);
    let base2 = base.clone();
    let dir = move |extra: &str| {
        let cfg: DirectoryConfig = toml::from_str(&format!("{base2}{extra}")).unwrap();
        assert_eq!(cfg.validate(), vec![], "{extra}");
        Directory::new(&cfg).unwrap()
    };
    // (configuration, carol's groups): carol is in contractors, which is in eng.
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("", vec!["contractors".into()]),
        (
            "nested = \"recursive\"\n",
            vec!["contractors".into(), "eng".into()],
        ),
        (
            "group_source = \"search\"\nnested = \"recursive\"\n",
            vec!["contractors".into(), "eng".into()],
        ),
        (
            "group_source = \"search\"\ngroup_id = \"dn\"\n",
            vec![group_dn("contractors")],
        ),
        (
            "nested = \"recursive\"\ngroup_id = \"sid\"\n",
            vec![group_sid("eng"), group_sid("contractors")],
        ),
        (
            "nested = \"recursive\"\nmax_groups = 1\n",
            vec!["contractors".into()],
        ),
        (
            "nested = \"recursive\"\nnested_depth = 1\n",
            vec!["contractors".into()],
        ),
    ];
    let name = ns.name.clone();
    let results = tests::clients::run_in_ns(&name, move || {
        let mut out = Vec::new();
        for (extra, _) in &cases {
            let d = dir(extra);
            let mut got = d
                .authenticate("carol", &ldap::password("carol"))
                .map(|u| u.groups);
            if let Ok(g) = &mut got {
                g.sort();
            }
            out.push((extra.to_string(), got));
        }
        let d = dir("");
        let refusals = vec![
            d.authenticate("carol", "wrong").err(),
            d.authenticate("nobody", "x").err(),
            d.authenticate("dave", &ldap::password("dave")).err(),
            // Filter metacharacters are escaped: "*" is no wildcard, "a*" matches no alice.
            d.authenticate("*", "x").err(),
            d.authenticate("ali*", &ldap::password("alice")).err(),
            d.authenticate("alice)(uid=*", &ldap::password("alice"))
                .err(),
        ];
        // Direct bind: the DN template escapes too; a wrong password is just that.
        let t = dir(&format!(
            "user_dn_template = \"uid={{username}},ou=people,{}\"\n",
            ldap::SUFFIX
        ));
        let template = vec![
            t.authenticate("bob", &ldap::password("bob"))
                .map(|u| u.groups)
                .ok(),
            t.authenticate("bob", "wrong").ok().map(|u| u.groups),
        ];
        let refresh = d.refresh("bob").map(|u| u.groups);
        // A user search from the root meets the referral's continuation reference.
        let root_cfg: DirectoryConfig = toml::from_str(&root_base).unwrap();
        let root = Directory::new(&root_cfg).unwrap();
        let from_root = root
            .authenticate("bob", &ldap::password("bob"))
            .map(|u| u.groups);
        (out, refusals, template, refresh, from_root, cases)
    });
    let (out, refusals, template, refresh, from_root, cases) = results;
    assert_eq!(from_root, Ok(vec!["finance".to_owned()]));
    for ((extra, got), (_, want)) in out.iter().zip(cases.iter()) {
        let mut want = want.clone();
        want.sort();
        assert_eq!(got.as_ref().ok(), Some(&want), "with {extra:?}: {got:?}");
    }
    assert_eq!(
        refusals,
        vec![
            Some(DirError::InvalidCredentials),
            Some(DirError::UnknownUser),
            Some(DirError::Disabled),
            Some(DirError::UnknownUser),
            Some(DirError::UnknownUser),
            Some(DirError::UnknownUser),
        ]
    );
    assert_eq!(template, vec![Some(vec!["finance".to_owned()]), None]);
    assert_eq!(refresh, Ok(vec!["finance".to_owned()]));

    // Down: refused as unavailable, quickly; back up: the pool reconnects by itself.
    slapd.stop();
    let name = ns.name.clone();
    let dir_cfg = base.clone();
    let (down, took, up_again) = {
        let slapd_ns = &ns;
        let d = std::sync::Arc::new(
            Directory::new(&toml::from_str::<DirectoryConfig>(&dir_cfg).unwrap()).unwrap(),
        );
        let d2 = d.clone();
        let (down, took) = tests::clients::run_in_ns(&name, move || {
            let t = Instant::now();
            (
                d2.authenticate("bob", &ldap::password("bob")).err(),
                t.elapsed(),
            )
        });
        slapd.restart(slapd_ns);
        let d3 = d.clone();
        let up = tests::clients::run_in_ns(&name, move || {
            d3.authenticate("bob", &ldap::password("bob"))
                .map(|u| u.groups)
        });
        // The pool's connections must not be dropped on a runtime thread.
        let _ = std::thread::spawn(move || drop(d)).join();
        (down, took, up)
    };
    assert!(matches!(down, Some(DirError::Unavailable(_))), "{down:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(up_again, Ok(vec!["finance".to_owned()]));

    // A restart while the pool is full: every pooled connection is dead, and the next login
    // still succeeds (the pool is dropped and the retry uses a new connection).
    let d = std::sync::Arc::new(
        Directory::new(
            &toml::from_str::<DirectoryConfig>(&format!("{base}pool_size = 4\n")).unwrap(),
        )
        .unwrap(),
    );
    let d2 = d.clone();
    let filled = tests::clients::run_in_ns(&name, move || {
        // Concurrent logins each take a connection of their own and give it back.
        for _ in 0..20 {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (d, b) = (d2.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        b.wait();
                        d.authenticate("bob", &ldap::password("bob")).is_ok()
                    })
                })
                .collect();
            assert!(threads.into_iter().all(|t| t.join().unwrap()));
            if d2.pooled() == 4 {
                break;
            }
        }
        d2.pooled()
    });
    assert_eq!(filled, 4, "could not fill the pool");
    slapd.restart(&ns);
    let d3 = d.clone();
    let after_restart = tests::clients::run_in_ns(&name, move || {
        d3.authenticate("bob", &ldap::password("bob"))
            .map(|u| u.groups)
    });
    let _ = std::thread::spawn(move || drop(d)).join();
    assert_eq!(after_restart, Ok(vec!["finance".to_owned()]));
}
