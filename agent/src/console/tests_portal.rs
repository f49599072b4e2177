//! The self-service portal through HTTPS: a user signs in against a (fake, on-the-wire) LDAP
//! directory and downloads their profile with a freshly issued certificate; the portal's
//! sessions never open an administrator's page; CSRF and the shared login limit hold.
use std::sync::Arc;
use std::time::Duration;

use super::config::Role;
use super::tests::{admin, csrf_of, lab, lab_with_portal, Lab};
use crate::auth::authenticator::tests::{fake_ldap, service_authenticator};

/// A lab whose portal signs in `alice` (password `right`), at most `per_user` failures.
fn portal_lab(tag: &str, per_user: u32) -> Lab {
    let f = fake_ldap("uid=alice,dc=x", None, Duration::ZERO);
    let auth = Arc::new(service_authenticator(&f, per_user, false));
    lab_with_portal(
        tag,
        vec![admin("ann", "admin-pass", Role::Operator)],
        Duration::from_secs(600),
        5,
        Some(auth),
    )
}

/// Signs `name` in to the portal; returns the cookie to send back.
fn portal_login(l: &Lab, name: &str) -> String {
    let g = l.signin(
        "/portal/login",
        &[("name", name), ("password", "right"), ("code", "")],
    );
    assert_eq!(g.status, 303, "{}", g.body);
    assert_eq!(g.location.as_deref(), Some("/portal"));
    let c = g.set_cookie.expect("a portal cookie");
    for attr in ["Path=/portal", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(c.contains(attr), "{c}");
    }
    assert!(c.starts_with("portcullis_portal="), "{c}");
    c.split(';').next().unwrap().to_owned()
}

fn common_name(pem: &str) -> String {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let c = p.parse_x509().unwrap();
    let cn = c.subject().iter_common_name().next().unwrap();
    cn.as_str().unwrap().to_owned()
}

#[test]
fn a_user_downloads_their_profile_with_a_personal_certificate() {
    let l = portal_lab("download", 5);
    let page = l.get("/portal/login", None);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Directory user name"), "{}", page.body);
    let cookie = portal_login(&l, "alice");
    let page = l.get("/portal", Some(&cookie));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Signed in as"), "{}", page.body);
    assert!(page.body.contains("alice"), "{}", page.body);
    assert!(
        !page.body.contains("/connections"),
        "no administrator navigation"
    );
    let csrf = csrf_of(&page.body);
    // A `user` field is ignored: the profile is always the session's user's.
    let g = l.post(
        "/portal/profile",
        &[("csrf", &csrf), ("user", "bob")],
        Some(&cookie),
    );
    assert_eq!(g.status, 200, "{}", g.body);
    let p = &g.body;
    assert!(p.contains("\nremote vpn.lab 1194 udp\n"), "{p}");
    assert!(p.contains("\nauth-user-pass\n"), "{p}");
    let cert =
        &p[p.find("<cert>\n").expect("an embedded certificate") + 7..p.find("</cert>").unwrap()];
    assert_eq!(common_name(cert), "alice");
    assert!(p.contains("<key>\n-----BEGIN PRIVATE KEY-----"), "{p}");
    // The issue is in the audit trail, with the portal user and the serial; the key is not
    // kept on the gateway (alice's file in the PKI is still the one issued before).
    let audit = l.audit_lines();
    let issue = audit
        .iter()
        .find(|e| e["action"] == "certificate_issue")
        .unwrap_or_else(|| panic!("no certificate_issue in {audit:?}"));
    assert_eq!(issue["who"], "alice (portal)");
    assert_eq!(issue["target"], "user alice");
    assert!(issue["from"]
        .as_str()
        .unwrap()
        .starts_with("portal 127.0.0.1"));
    let serial = issue["result"]
        .as_str()
        .unwrap()
        .strip_prefix("ok: serial ")
        .unwrap_or_else(|| panic!("{issue}"))
        .to_owned();
    let kept = std::fs::read_to_string(l.pki.join("alice.crt")).unwrap();
    assert_ne!(
        crate::pki::store::hex(
            x509_parser::pem::parse_x509_pem(kept.as_bytes())
                .unwrap()
                .1
                .parse_x509()
                .unwrap()
                .raw_serial()
        ),
        serial
    );
    let listed = crate::pki::store::PkiDir::new(&l.pki).list().unwrap();
    assert!(
        listed
            .certificates
            .iter()
            .any(|c| c.name == "alice" && c.serial == serial),
        "the issued certificate is listed (and revocable) in the console"
    );
    assert!(
        audit.iter().any(|e| e["action"] == "portal_login"
            && e["who"] == "alice"
            && e["from"] == "portal 127.0.0.1"),
        "{audit:?}"
    );
}

/// A user cannot mint certificates without end: past `self_service_max_certificates` (3 in
/// the lab) valid ones, the download is refused with the reason, audited, and issues none;
/// once one is revoked, the next download issues again.
#[test]
fn portal_certificates_are_limited_per_user() {
    let l = portal_lab("cert-limit", 50);
    let cookie = portal_login(&l, "alice");
    let csrf = csrf_of(&l.get("/portal", Some(&cookie)).body);
    let valid = || {
        crate::pki::store::PkiDir::new(&l.pki)
            .list()
            .unwrap()
            .certificates
            .into_iter()
            .filter(|c| c.name == "alice" && !c.revoked)
            .count()
    };
    let before = valid();
    let mut refused = None;
    for _ in 0..5 {
        let g = l.post("/portal/profile", &[("csrf", &csrf)], Some(&cookie));
        if g.status != 200 {
            refused = Some(g);
            break;
        }
    }
    let g = refused.expect("no refusal after five downloads");
    assert_eq!(g.status, 409, "{}", g.body);
    assert!(
        g.body.contains("already holds 3 valid certificates")
            && g.body.contains("self_service_max_certificates"),
        "{}",
        g.body
    );
    assert_eq!(
        valid(),
        3,
        "issued up to the limit from {before}, not past it"
    );
    let audit = l.audit_lines();
    let last = audit
        .iter()
        .rev()
        .find(|e| e["action"] == "certificate_issue")
        .unwrap();
    assert!(
        last["result"]
            .as_str()
            .unwrap()
            .starts_with("error: certificate limit reached"),
        "{last}"
    );
    // A revoked certificate no longer counts.
    let serial = crate::pki::store::PkiDir::new(&l.pki)
        .list()
        .unwrap()
        .certificates
        .into_iter()
        .find(|c| c.name == "alice" && !c.revoked)
        .unwrap()
        .serial;
    crate::pki::store::api_revoke(Some(&l.pki), None, Some(&serial)).unwrap();
    let g = l.post("/portal/profile", &[("csrf", &csrf)], Some(&cookie));
    assert_eq!(g.status, 200, "{}", g.body);
    assert_eq!(valid(), 3);
}

#[test]
fn portal_sessions_are_not_admin_sessions_and_need_csrf() {
    let l = portal_lab("separate", 5);
    // Without a session.
    let g = l.get("/portal", None);
    assert_eq!(
        (g.status, g.location.as_deref()),
        (303, Some("/portal/login"))
    );
    let g = l.post("/portal/profile", &[("csrf", "x")], None);
    assert_eq!(g.status, 401);
    let cookie = portal_login(&l, "alice");
    let token = cookie.split_once('=').unwrap().1;
    // The portal's token opens no administrator's page, under either cookie name.
    for c in [cookie.clone(), format!("portcullis_console={token}")] {
        for page in ["/", "/connections", "/audit", "/certificates", "/account"] {
            let g = l.get(page, Some(&c));
            assert_eq!(
                (g.status, g.location.as_deref()),
                (303, Some("/login")),
                "{page} with {c}"
            );
        }
        let g = l.post(
            "/certificates/revoke",
            &[("csrf", "x"), ("name", "alice")],
            Some(&c),
        );
        assert_eq!(g.status, 401, "revoke with {c}");
    }
    // And an administrator's session opens no portal page.
    let admin_cookie = l.login("ann", "admin-pass");
    let g = l.get("/portal", Some(&admin_cookie));
    assert_eq!(g.location.as_deref(), Some("/portal/login"));
    // A download without the CSRF token is refused and issues nothing.
    for form in [vec![], vec![("csrf", "0000")]] {
        let g = l.post("/portal/profile", &form, Some(&cookie));
        assert_eq!(g.status, 403, "{}", g.body);
    }
    assert!(!l
        .audit_lines()
        .iter()
        .any(|e| e["action"] == "certificate_issue"));
    // Sign out ends the session.
    let csrf = csrf_of(&l.get("/portal", Some(&cookie)).body);
    let g = l.post("/portal/logout", &[("csrf", &csrf)], Some(&cookie));
    assert_eq!(g.status, 303);
    assert_eq!(l.get("/portal", Some(&cookie)).status, 303);
}

#[test]
fn portal_logins_are_rate_limited_with_the_vpn_logins() {
    let l = portal_lab("limit", 2);
    for _ in 0..2 {
        let g = l.signin("/portal/login", &[("name", "alice"), ("password", "guess")]);
        assert_eq!(g.status, 401, "{}", g.body);
        assert!(g.body.contains("Sign-in refused"), "{}", g.body);
        assert!(!g
            .set_cookie
            .unwrap_or_default()
            .starts_with("portcullis_portal="));
    }
    let g = l.signin("/portal/login", &[("name", "alice"), ("password", "right")]);
    assert_eq!(g.status, 429, "{}", g.body);
    assert!(!g
        .set_cookie
        .unwrap_or_default()
        .starts_with("portcullis_portal="));
    let reasons: Vec<String> = l
        .audit_lines()
        .iter()
        .filter(|e| e["action"] == "portal_login_failed")
        .map(|e| e["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        reasons,
        ["invalid_credentials", "invalid_credentials", "rate_limited"]
    );
}

#[test]
fn without_self_service_there_is_no_portal() {
    let l = lab(
        "noportal",
        vec![admin("ann", "admin-pass", Role::Operator)],
        Duration::from_secs(600),
        5,
    );
    for p in ["/portal", "/portal/login"] {
        assert_eq!(l.get(p, None).status, 404, "{p}");
    }
    let g = l.post(
        "/portal/login",
        &[("name", "alice"), ("password", "right")],
        None,
    );
    assert_eq!(g.status, 404);
}

#[test]
fn a_portal_sign_in_without_the_forms_csrf_value_is_refused() {
    let l = portal_lab("signin-csrf", 5);
    let g = l.post(
        "/portal/login",
        &[("name", "alice"), ("password", "right")],
        None,
    );
    assert_eq!(g.status, 403, "{}", g.body);
    assert!(!g
        .set_cookie
        .unwrap_or_default()
        .starts_with("portcullis_portal="));
    let refused = l
        .audit_lines()
        .iter()
        .filter(|e| e["action"] == "portal_login_failed" && e["result"] == "csrf")
        .count();
    assert_eq!(refused, 1);
    portal_login(&l, "alice");
}
