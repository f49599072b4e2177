//! The console's security over real HTTPS on loopback: sessions, CSRF, escaping, expiry,
//! the login rate limit, the audit trail, the monitoring pages.
use std::time::Duration;

use super::config::Role;
use super::tests::{admin, csrf_of, lab};

#[test]
fn nothing_is_served_without_a_session() {
    let lab = lab(
        "nosession",
        vec![admin("ann", "pw-ann", Role::Operator)],
        Duration::from_secs(60),
        5,
    );
    let g = lab.get("/", None);
    assert_eq!((g.status, g.location.as_deref()), (303, Some("/login")));
    assert!(!g.body.contains("Signed in"));
    let g = lab.post("/logout", &[("csrf", "x")], None);
    assert_eq!(g.status, 401);
    // A made-up cookie is no session either.
    let g = lab.get("/", Some("portcullis_console=00ff"));
    assert_eq!(g.status, 303);
    let g = lab.get("/login", None);
    assert_eq!(g.status, 200);
    let csp = g.csp.expect("a CSP on every page");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(!g.body.contains("<script>"), "no inline script: {}", g.body);
}

#[test]
fn login_sets_a_strict_cookie_and_logout_needs_the_csrf_token() {
    let lab = lab(
        "login",
        vec![admin("ann", "pw-ann", Role::Operator)],
        Duration::from_secs(60),
        5,
    );
    let g = lab.signin("/login", &[("name", "ann"), ("password", "pw-ann")]);
    assert_eq!((g.status, g.location.as_deref()), (303, Some("/")));
    let set = g.set_cookie.unwrap();
    for flag in [
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=60",
        "Path=/",
    ] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let home = lab.get("/account", Some(&cookie));
    assert_eq!(home.status, 200);
    assert!(
        home.body.contains("Signed in as <strong>ann</strong>"),
        "{}",
        home.body
    );
    // A state change without (or with a wrong) CSRF token is refused and changes nothing.
    assert_eq!(lab.post("/logout", &[], Some(&cookie)).status, 403);
    assert_eq!(
        lab.post("/logout", &[("csrf", "0000")], Some(&cookie))
            .status,
        403
    );
    assert_eq!(lab.get("/", Some(&cookie)).status, 200);
    let g = lab.post("/logout", &[("csrf", &csrf_of(&home.body))], Some(&cookie));
    assert_eq!((g.status, g.location.as_deref()), (303, Some("/login")));
    assert!(g.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(lab.get("/", Some(&cookie)).status, 303, "the session ended");
    let actions: Vec<(String, String)> = lab
        .audit_lines()
        .iter()
        .map(|v| {
            (
                v["action"].as_str().unwrap().into(),
                v["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("console_login".into(), "ok".into()),
            ("console_logout".into(), "ok".into())
        ]
    );
    assert_eq!(lab.audit_lines()[0]["from"], "console 127.0.0.1");
}

#[test]
fn a_script_name_is_rendered_as_text() {
    let evil = "<script>alert(1)</script>";
    let lab = lab(
        "xss",
        vec![admin(evil, "pw", Role::ReadOnly)],
        Duration::from_secs(60),
        5,
    );
    let cookie = lab.login(evil, "pw");
    let home = lab.get("/account", Some(&cookie));
    assert_eq!(home.status, 200);
    assert!(!home.body.contains(evil), "{}", home.body);
    assert!(
        home.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        home.body
    );
    let g = lab.signin(
        "/login",
        &[("name", "\"><script>x()</script>"), ("password", "no")],
    );
    assert_eq!(g.status, 401);
    assert!(!g.body.contains("<script>x()"), "{}", g.body);
    assert!(g.body.contains("&quot;&gt;&lt;script&gt;x()"), "{}", g.body);
}

#[test]
fn sessions_expire() {
    let lab = lab(
        "expiry",
        vec![admin("ann", "pw", Role::Operator)],
        Duration::from_millis(800),
        5,
    );
    let cookie = lab.login("ann", "pw");
    assert_eq!(lab.get("/", Some(&cookie)).status, 200);
    std::thread::sleep(Duration::from_millis(1000));
    let g = lab.get("/", Some(&cookie));
    assert_eq!((g.status, g.location.as_deref()), (303, Some("/login")));
}

#[test]
fn failed_logins_are_rate_limited_and_audited() {
    let lab = lab(
        "ratelimit",
        vec![admin("ann", "pw", Role::Operator)],
        Duration::from_secs(60),
        3,
    );
    for _ in 0..3 {
        let g = lab.signin("/login", &[("name", "ann"), ("password", "guess")]);
        assert_eq!(g.status, 401);
    }
    // Even the right password is refused until the bucket refills.
    let g = lab.signin("/login", &[("name", "ann"), ("password", "pw")]);
    assert_eq!(g.status, 429, "{}", g.body);
    assert!(!g
        .set_cookie
        .unwrap_or_default()
        .starts_with("portcullis_console="));
    // The limit is per source too: another name from the same address is refused.
    let g = lab.signin("/login", &[("name", "bob"), ("password", "x")]);
    assert_eq!(g.status, 429);
    let results: Vec<String> = lab
        .audit_lines()
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                v["action"].as_str().unwrap(),
                v["result"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            "console_login_failed bad_password",
            "console_login_failed bad_password",
            "console_login_failed bad_password",
            "console_login_failed rate_limited",
            "console_login_failed rate_limited",
        ]
    );
}

#[test]
fn every_page_and_action_is_refused_without_a_session() {
    let lab = lab(
        "refused",
        vec![admin("ann", "pw", Role::Operator)],
        Duration::from_secs(60),
        5,
    );
    for page in [
        "/",
        "/account",
        "/connections",
        "/audit",
        "/endpoint",
        "/certificates",
        "/logs/connections",
        "/logs/flows",
    ] {
        let g = lab.get(page, None);
        assert_eq!(
            (g.status, g.location.as_deref()),
            (303, Some("/login")),
            "{page}"
        );
    }
    for live in ["/live/dashboard", "/live/connections"] {
        assert_eq!(lab.get(live, None).status, 401, "{live}");
    }
    let g = lab.post(
        "/connections/terminate",
        &[("csrf", "x"), ("id", "7")],
        None,
    );
    assert_eq!(g.status, 401);
    let cookie = lab.login("ann", "pw");
    assert!(
        lab.get("/connections", Some(&cookie))
            .body
            .contains("alice"),
        "nothing was terminated"
    );
}

#[test]
fn the_dashboard_and_connections_show_the_endpoint_live() {
    let lab = lab(
        "pages",
        vec![admin("ann", "pw", Role::ReadOnly)],
        Duration::from_secs(60),
        5,
    );
    let cookie = lab.login("ann", "pw");
    let d = lab.get("/", Some(&cookie));
    assert_eq!(d.status, 200);
    assert!(
        d.body.contains(r#"data-refresh="/live/dashboard""#),
        "{}",
        d.body
    );
    assert!(
        d.body.contains(r#"<div class="n" id="active">2</div>"#),
        "{}",
        d.body
    );
    assert!(
        d.body.contains("no_authz_rule") && d.body.contains("<svg"),
        "{}",
        d.body
    );
    let live = lab.get("/live/dashboard", Some(&cookie));
    assert_eq!(live.status, 200);
    assert!(!live.body.contains("<html"), "a fragment: {}", live.body);
    let c = lab.get("/connections?q=alice", Some(&cookie));
    assert!(
        c.body.contains("alice") && !c.body.contains("alert("),
        "{}",
        c.body
    );
    let all = lab.get("/connections?sort=user&desc=true", Some(&cookie));
    assert!(!all.body.contains("<script>alert"), "{}", all.body);
    assert!(
        all.body
            .contains("&lt;script&gt;alert('bob')&lt;/script&gt;"),
        "{}",
        all.body
    );
    // Byte counts grow between two looks (the fake's counters grow per call).
    let bytes = |b: &str| {
        let at = b.find(r#"<td class="bytes-in">"#).unwrap() + 21;
        b[at..].split('<').next().unwrap().to_owned()
    };
    let first = bytes(&lab.get("/live/connections?q=alice", Some(&cookie)).body);
    let second = bytes(&lab.get("/live/connections?q=alice", Some(&cookie)).body);
    assert_ne!(first, second);
    // A read-only account is offered no terminate button.
    assert!(!all.body.contains("Terminate"), "{}", all.body);
}

/// The live sessions' table of the connections page.
fn live_rows(page: &str) -> &str {
    let t = &page[page.find(r#"<table id="connections""#).expect("the table")..];
    &t[..t.find("</table>").unwrap()]
}

#[test]
fn terminate_needs_an_operator_and_the_csrf_token_and_is_audited() {
    let lab = lab(
        "terminate",
        vec![
            admin("ann", "pw", Role::Operator),
            admin("rob", "pw", Role::ReadOnly),
        ],
        Duration::from_secs(60),
        5,
    );
    let rob = lab.login("rob", "pw");
    let page = lab.get("/account", Some(&rob)).body;
    let g = lab.post(
        "/connections/terminate",
        &[("csrf", &csrf_of(&page)), ("id", "7")],
        Some(&rob),
    );
    assert_eq!(g.status, 403, "{}", g.body);
    let ann = lab.login("ann", "pw");
    let page = lab.get("/connections", Some(&ann)).body;
    assert!(
        page.contains(r#"data-confirm="Terminate session 7 of alice?""#),
        "{page}"
    );
    assert_eq!(
        lab.post("/connections/terminate", &[("id", "7")], Some(&ann))
            .status,
        403
    );
    assert!(lab.get("/connections", Some(&ann)).body.contains("alice"));
    let g = lab.post(
        "/connections/terminate",
        &[("csrf", &csrf_of(&page)), ("id", "7")],
        Some(&ann),
    );
    assert_eq!(g.status, 200, "{}", g.body);
    assert!(g.body.contains("Terminated session 7."), "{}", g.body);
    let after = lab.get("/connections", Some(&ann)).body;
    assert!(!live_rows(&after).contains("alice"), "{after}");
    // It stays visible among the sessions that ended within the hour.
    let ended = &after[after.find(r#"<table id="ended""#).unwrap()..];
    assert!(ended.contains(r#"<td class="user">alice</td>"#), "{after}");
    // The same action from the admin socket is recorded with the socket peer's identity.
    let mut cli = crate::admin::AdminClient::connect(&lab.socket).unwrap();
    cli.terminate(Some(8), None, None).unwrap();
    let lines = lab.audit_lines();
    let terminates: Vec<_> = lines
        .iter()
        .filter(|v| v["action"] == "terminate")
        .collect();
    assert_eq!(terminates.len(), 3, "{lines:?}");
    assert_eq!(terminates[0]["who"], "rob");
    assert_eq!(terminates[0]["result"], "refused: read-only account");
    assert_eq!(terminates[1]["who"], "ann");
    assert_eq!(terminates[1]["from"], "console 127.0.0.1");
    assert_eq!(terminates[1]["target"], "session 7");
    assert_eq!(terminates[1]["result"], "ok: terminated 7");
    let uid = nix::unistd::getuid();
    assert!(
        terminates[2]["who"]
            .as_str()
            .unwrap()
            .contains(&format!("uid {uid}")),
        "{:?}",
        terminates[2]
    );
    assert!(
        terminates[2]["from"]
            .as_str()
            .unwrap()
            .starts_with("admin socket, pid "),
        "{:?}",
        terminates[2]
    );
    // The audit page shows and filters them.
    let a = lab.get("/audit?action=terminate&who=ann", Some(&ann));
    assert_eq!(a.status, 200);
    assert!(
        a.body.contains("ok: terminated 7") && !a.body.contains("read-only account"),
        "{}",
        a.body
    );
}

#[test]
fn the_endpoint_page_shows_the_policy_and_explains_a_flow() {
    let lab = lab(
        "endpoint",
        vec![admin("ann", "pw", Role::ReadOnly)],
        Duration::from_secs(60),
        5,
    );
    let cookie = lab.login("ann", "pw");
    let p = lab.get("/endpoint", Some(&cookie));
    assert_eq!(p.status, 200);
    assert!(
        p.body.contains("engineering reaches the app server only"),
        "{}",
        p.body
    );
    let yes = lab.get(
        "/endpoint?user=alice&to=10.0.0.10%3A80%2Ftcp",
        Some(&cookie),
    );
    assert!(
        yes.body.contains(r#"<strong class="allow">ALLOWED"#),
        "{}",
        yes.body
    );
    assert!(
        yes.body.contains("engineering reaches the app server only"),
        "{}",
        yes.body
    );
    // The /32 rule for engineering hides the /24 rule for finance: bob is refused there.
    let no = lab.get("/endpoint?user=bob&to=10.0.0.10%3A80%2Ftcp", Some(&cookie));
    assert!(no.body.contains(r#"<strong class="drop">"#), "{}", no.body);
    let bad = lab.get("/endpoint?user=%3Cb%3E&to=nowhere", Some(&cookie));
    assert!(
        bad.body.contains("is not an IPv4 address") && !bad.body.contains("<b>"),
        "{}",
        bad.body
    );
}

/// A sign-in posted without the form's CSRF value (as a page elsewhere would post it), or with
/// a value that is not the cookie's, is refused before any password check and audited.
#[test]
fn a_sign_in_without_the_forms_csrf_value_is_refused() {
    let lab = lab(
        "signin-csrf",
        vec![admin("ann", "pw", Role::Operator)],
        Duration::from_secs(60),
        5,
    );
    let g = lab.post("/login", &[("name", "ann"), ("password", "pw")], None);
    assert_eq!(g.status, 403, "{}", g.body);
    assert!(!g
        .set_cookie
        .unwrap_or_default()
        .starts_with("portcullis_console="));
    let page = lab.get("/login", None);
    let cookie = page.set_cookie.unwrap();
    let cookie = cookie.split(';').next().unwrap();
    let g = lab.post(
        "/login",
        &[
            ("csrf", "0123456789abcdef0123456789abcdef"),
            ("name", "ann"),
            ("password", "pw"),
        ],
        Some(cookie),
    );
    assert_eq!(g.status, 403, "a value that is not the cookie's");
    let g = lab.post(
        "/login",
        &[
            ("csrf", &csrf_of(&page.body)),
            ("name", "ann"),
            ("password", "pw"),
        ],
        None,
    );
    assert_eq!(g.status, 403, "the form's value without its cookie");
    let csrf_refusals = lab
        .audit_lines()
        .iter()
        .filter(|e| e["action"] == "console_login_failed" && e["result"] == "csrf")
        .count();
    assert_eq!(csrf_refusals, 3);
    // The same form, as sent by the console's own page, signs in.
    lab.login("ann", "pw");
}
