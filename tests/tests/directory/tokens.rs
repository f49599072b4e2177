//! Session tokens (`auth.token_secret_file`) with a directory: after alice's password login
//! the gateway pushes `auth-token`; the stock 2.6 client sends it instead of her password at
//! every renegotiation and on a reconnect, and none of these binds as her in slapd. Tokens
//! from another secret, expired, tampered with, or for a disabled user are refused with their
//! codes, and count against the failed-login limit (then `rate_limited`); a disabled user is
//! still cut by the re-check.
//!
//! Run: `flock /tmp/portcullis-priv.lock cargo test -p tests --test directory -- --test-threads=1 tokens`.
use super::*;
use portcullis::auth::token::{unix_now, Granted, Kind, TokenKey};

const SECRET: &str = "the fleet's session token secret, shared by every gateway";

fn token_policy(slapd: &Slapd, secret: &Path, token_secret: &Path) -> String {
    policy(slapd, secret).replacen(
        "[auth]\n",
        &format!(
            "[auth]\ntoken_secret_file = \"{}\"\ntoken_lifetime_secs = 600\n",
            token_secret.display()
        ),
        1,
    )
}

/// `who`'s client with a credentials file holding `pass`, renegotiating every 4 s.
fn with_reneg(lab: &AgentLab, i: usize, cn: &str, who: &str, pass: &str) -> ProfileClient {
    let profile = login_profile(lab, i, cn, who, pass);
    assert!(profile.contains("\nverb 3\n"), "{profile}");
    ProfileClient::start(
        lab.client_ns(i),
        &profile.replacen("\nverb 3\n", "\nreneg-sec 4\nverb 3\n", 1),
    )
}

#[test]
fn session_tokens_spare_the_directory_and_bad_ones_are_refused() {
    require_root!();
    let mut slapd = Slapd::prepare(LDAP_PORT, true);
    let secret = slapd.dir().join("svc.pw");
    std::fs::write(&secret, format!("{}\n", ldap::SERVICE_PW)).unwrap();
    let token_secret = slapd.dir().join("token.secret");
    std::fs::write(&token_secret, format!("{SECRET}\n")).unwrap();
    let lab = AgentLab::new(
        3,
        &["alice", "dave", "erin"],
        &token_policy(&slapd, &secret, &token_secret),
    );
    slapd.launch(&lab.gw);
    let slapd = &mut slapd;
    lab.add_net_address(OTHER);
    let alice_dn = user_dn("alice");

    // One password login: one bind as alice.
    let alice = with_reneg(&lab, 0, "alice", "alice", &ldap::password("alice"));
    connected(&lab, &alice, "alice");
    assert!(reaches(&lab, 0, OTHER), "alice (eng) → {OTHER}");
    assert_eq!(slapd.binds(&alice_dn), 1, "binds as alice after her login");

    // Renegotiations (every 4 s) send the token: accepted, renewed, no bind.
    let agent = lab.agent();
    let renewed = poll(Duration::from_secs(20), || {
        (agent.log_count("session token accepted") >= 2).then_some(())
    });
    assert!(
        renewed.is_some(),
        "no renegotiation with the token:\nclient:\n{}\nagent:\n{}",
        alice.log(),
        agent.log_tail(30)
    );
    assert!(reaches(&lab, 0, OTHER), "alice after renegotiating");
    assert_eq!(
        slapd.binds(&alice_dn),
        1,
        "a renegotiation with a token bound as alice"
    );
    assert!(!alice.log().contains("AUTH_FAILED"), "{}", alice.log());

    // A reconnect (SIGUSR1: the client restarts and keeps its token): admitted with the
    // token, groups read again by the service account, still no bind as alice.
    let before = agent.log_count("session token accepted");
    // SAFETY: the pid of a client this test started.
    unsafe { libc::kill(alice.proc.pid() as i32, libc::SIGUSR1) };
    let again = poll(Duration::from_secs(30), || {
        (alice.proc.log_count(COMPLETED) >= 2).then_some(())
    });
    assert!(
        again.is_some(),
        "alice did not reconnect:\n{}\nagent:\n{}",
        alice.log(),
        agent.log_tail(30)
    );
    assert!(agent.log_count("session token accepted") > before);
    assert!(reaches(&lab, 0, OTHER), "alice (eng) after reconnecting");
    assert_eq!(
        slapd.binds(&alice_dn),
        1,
        "a reconnect with a token bound as alice"
    );

    // The same right token on a second client works (another gateway of the fleet with the
    // same secret file would take it the same way), without a bind.
    let key = TokenKey::new(SECRET.as_bytes(), 600, 3600);
    let other = TokenKey::new(b"another gateway's secret, also 32+ bytes", 600, 3600);
    let now = unix_now();
    let sid = key.new_session_id();
    let mint = |k: &TokenKey, user: &str, initial: u64, renewed: u64| {
        let granted = Granted {
            kind: Kind::Directory,
            user: user.into(),
            groups: Vec::new(),
        };
        k.mint(user, sid, initial, renewed, &granted).unwrap().0
    };
    let good = mint(&key, "alice", now, now);
    let twin = login(&lab, 2, "erin", "alice", &good);
    connected(&lab, &twin, "alice's token on a second client");
    assert!(
        reaches(&lab, 2, OTHER),
        "the token's session (eng) → {OTHER}"
    );
    drop(twin);
    assert_eq!(slapd.binds(&alice_dn), 1);

    // Tokens the client did not get from this gateway's secret, typed as the password (a
    // client without a pushed token exits on AUTH_FAILED): each refused with its code, and
    // none costs a bind. Refused tokens count against the failed-login limit as passwords
    // do (failed_logins_per_user = 2): the third guess for alice, and then even her right
    // token, are refused as rate_limited before any check.
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (token, code, what) in [
        (
            mint(&other, "alice", now, now),
            "token_invalid",
            "another secret",
        ),
        (
            mint(&key, "alice", now - 700, now - 10),
            "token_expired",
            "past its lifetime",
        ),
        (tampered, "rate_limited", "tampered, past the limit"),
        (good.clone(), "rate_limited", "right, past the limit"),
        (
            mint(&key, "dave", now, now),
            "account_disabled",
            "disabled user",
        ),
    ] {
        let (cn, user) = if what == "disabled user" {
            ("dave", "dave")
        } else {
            ("erin", "alice")
        };
        let c = login(&lab, 1, cn, user, &token);
        refused(&c, "AUTH_FAILED", Duration::from_secs(10));
        drop(c);
        failure_logged(&lab, code, cn, user);
        assert!(reaches(&lab, 0, OTHER), "alice lost her tunnel ({what})");
    }
    assert_eq!(slapd.binds(&alice_dn), 1, "a refused token bound as alice");
    assert_eq!(slapd.binds(&user_dn("dave")), 0, "a token bound as dave");
    let metrics = scrape_metrics(&lab.gw);
    for r in ["token_invalid", "token_expired", "rate_limited"] {
        assert!(
            metrics.contains(&format!("reason=\"{r}\"")),
            "no auth failure metric for {r}:\n{metrics}"
        );
    }

    // Disabled while connected with a token: the re-check still ends the session.
    slapd.modify(&format!(
        "dn: {alice_dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n"
    ));
    // The agent's log, not the client's: the client may be in a renegotiation the server
    // has not taken yet (client renegotiations are rate-limited), and a 2.6 client drops
    // control packets of its old key then, the HALT among them.
    let halted = poll(Duration::from_secs(15), || {
        (agent.log_count("closed by server: account disabled or removed") >= 1).then_some(())
    });
    assert!(
        halted.is_some(),
        "alice kept her token session after being disabled:\n{}",
        agent.log_tail(30)
    );
    assert!(blocked(&lab, 0, OTHER), "alice still reaches {OTHER}");
}
