//! `ovpncli -u/-p` against a directory endpoint with session tokens: the login binds once;
//! renegotiations (`reneg-sec 5` in the profile) are checked with the pushed token (or, if
//! the client resent its password, a bind each), and traffic keeps flowing.
use super::*;
use tests::ldap::{self, group_sid, user_dn, Slapd};

const LDAP_PORT: u16 = 3890;

fn policy(slapd: &Slapd, secret: &std::path::Path, token_secret: &std::path::Path) -> String {
    format!(
        r#"
[auth]
methods = ["certificate", "ldap"]
token_secret_file = "{token}"

[directory]
url = "{url}"
starttls = true
ca_file = "{ca}"
bind_dn = "{svc}"
bind_password_file = "{secret}"
user_base = "ou=people,{suffix}"
group_source = "member-of"
nested = "recursive"
group_id = "sid"

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["{eng}"]
"#,
        token = token_secret.display(),
        url = slapd.url,
        ca = slapd.ca_file.as_ref().expect("TLS on").display(),
        svc = ldap::SERVICE_DN,
        secret = secret.display(),
        suffix = ldap::SUFFIX,
        eng = group_sid("eng"),
    )
}

#[test]
fn ovpn3_directory_login_renegotiation_and_session_tokens() {
    require_root!();
    require_ovpn3!("ovpn3_directory_login_renegotiation_and_session_tokens");
    let mut slapd = Slapd::prepare(LDAP_PORT, true);
    let secret = slapd.dir().join("svc.pw");
    std::fs::write(&secret, format!("{}\n", ldap::SERVICE_PW)).unwrap();
    let token_secret = slapd.dir().join("token.secret");
    std::fs::write(&token_secret, format!("{}\n", "t".repeat(40))).unwrap();
    let lab = AgentLab::new(1, &["alice"], &policy(&slapd, &secret, &token_secret));
    slapd.launch(&lab.gw);
    let slapd = &mut slapd;
    let profile = lab.export_profile("alice");
    assert!(profile.contains("\nauth-user-pass\n"), "{profile}");
    let profile = profile.replacen("\nverb 3\n", "\nreneg-sec 5\nverb 3\n", 1);

    let pw = ldap::password("alice");
    let c = connect(&lab, 0, &profile, &["-u", "alice", "-p", &pw]);
    assert!(reaches(&lab, 0), "alice (eng) through ovpncli");
    let alice = user_dn("alice");
    assert_eq!(slapd.binds(&alice), 1, "binds after the login");

    // Two renegotiations, each checked by the agent: with the token (no bind) or the password.
    let agent = lab.agent();
    let checked = || agent.log_count("session token accepted") + slapd.binds(&alice) - 1;
    let renegotiated = poll(Duration::from_secs(25), || (checked() >= 2).then_some(()));
    assert!(
        renegotiated.is_some(),
        "no two renegotiations in 25 s:\n{}\nagent:\n{}",
        c.log(),
        agent.log_tail(30)
    );
    assert!(reaches(&lab, 0), "alice after renegotiating");
    assert!(!c.log().contains("AUTH_FAILED"), "{}", c.log());
    eprintln!(
        "ovpncli renegotiations: {} with the session token, {} binds with the password",
        agent.log_count("session token accepted"),
        slapd.binds(&alice) - 1
    );
    // OpenVPN 3 uses a pushed auth-token for renegotiations as 2.6 does.
    assert_eq!(
        slapd.binds(&alice),
        1,
        "ovpncli resent its password instead of the token"
    );
    drop(c);

    // A wrong password: refused, never connected.
    let bad = Ovpn3::start(
        lab.client_ns(0),
        &profile,
        &["-u", "alice", "-p", "wrong", "-t", "8"],
    );
    assert!(
        bad.wait_connected(Duration::from_secs(10)).is_err(),
        "{}",
        bad.log()
    );
    assert!(bad.log().contains("AUTH_FAILED"), "{}", bad.log());
}
