//! The live authenticator across a reload: new logins follow the new settings, sessions
//! live at the reload keep the authenticator that admitted them.
use super::*;
use crate::auth::authenticator::tests::request;

/// An endpoint file with `extra` (login sections); the TLS files are never read here.
fn cfg(extra: &str) -> EndpointConfig {
    toml::from_str(&format!(
        r#"
name = "corp"
client_cidr = "10.100.0.0/24"
listen = ["udp://127.0.0.1:1194"]
[tls]
cert = "/nonexistent/server.pem"
key = "/nonexistent/server.key"
client_ca = "/nonexistent/ca.pem"
{extra}
"#
    ))
    .unwrap()
}

/// A directory nothing listens on (port 1 on loopback): a login it decides is refused as
/// "directory unavailable" at once, which tells it apart from the certificate alone.
const DIRECTORY: &str = r#"
[auth]
methods = ["certificate", "ldap"]
[directory]
url = "ldap://127.0.0.1:1"
user_dn_template = "uid={username},dc=example,dc=org"
connect_timeout_secs = 1
timeout_secs = 1
"#;

fn link(port: u16) -> Link {
    Link::Udp {
        listener: 0,
        addr: std::net::SocketAddr::from(([192, 0, 2, 60], port)),
    }
}

fn live(c: &EndpointConfig) -> Arc<LiveAuth> {
    Arc::new(LiveAuth::start(c, Arc::default(), Arc::new(|_: &str| Vec::new())).unwrap())
}

fn renegotiation(cn: &str, user: &str, password: &str) -> AuthRequest {
    AuthRequest {
        initial: false,
        ..request(cn, user, password)
    }
}

fn code(r: Result<(), Refusal>) -> Option<FailureCode> {
    r.err().map(|r| r.code)
}

#[test]
fn a_reload_changes_new_logins_and_leaves_live_sessions_alone() {
    let certificate_only = cfg("");
    let auth = live(&certificate_only);
    assert!(!auth.external());
    let decide = auth.authorizer();
    let (old, new) = (link(1000), link(1001));
    let ask = |l: Link, r: &AuthRequest| decide(l, r, &Pending::detached(l));
    assert_eq!(ask(old, &request("alice", "", "")), Ok(()));

    // The directory is turned on while `old`'s session is live.
    let p = auth.prepare(&cfg(DIRECTORY)).unwrap();
    assert!(p.pending_restart.is_empty(), "{:?}", p.pending_restart);
    assert!(auth.install(p, &[old]));
    assert!(auth.external());
    assert_eq!(auth.retired(), 1);
    // A new login asks the directory (unreachable here: refused for now)...
    assert_eq!(
        code(ask(new, &request("bob", "bob", "pw"))),
        Some(FailureCode::DirectoryUnavailable)
    );
    // ... the live session's renegotiation is decided as it was admitted: by its
    // certificate, without a password it never had.
    assert_eq!(ask(old, &renegotiation("alice", "", "")), Ok(()));
    // A new session on the same link is a new login.
    assert_eq!(
        code(ask(old, &request("alice", "alice", "pw"))),
        Some(FailureCode::DirectoryUnavailable)
    );
    assert_eq!(auth.retired(), 0);

    // The same settings again: nothing is rebuilt.
    let p = auth.prepare(&cfg(DIRECTORY)).unwrap();
    assert!(!auth.install(p, &[new]));
    assert_eq!(auth.retired(), 0);

    // Back to the certificate alone: new logins without one are refused, `new`'s session
    // keeps the directory for its renegotiations until it ends.
    let p = auth.prepare(&certificate_only).unwrap();
    assert!(auth.install(p, &[new]));
    assert!(!auth.external());
    let mut no_certificate = request("carol", "carol", "pw");
    no_certificate.identity =
        crate::openvpn::tls::ClientIdentity::without_certificate("carol").unwrap();
    assert_eq!(
        code(ask(link(1002), &no_certificate)),
        Some(FailureCode::CertificateRequired)
    );
    assert_eq!(auth.retired(), 1);
    auth.prune(&[]);
    assert_eq!(auth.retired(), 0);
}

/// A prepared authenticator that is never installed changes nothing; the settings only a
/// restart applies are named.
#[test]
fn a_refused_reload_changes_nothing_and_restart_only_settings_are_named() {
    let auth = live(&cfg(""));
    let p = auth.prepare(&cfg(DIRECTORY)).unwrap();
    drop(p);
    assert!(!auth.external());
    let p = auth
        .prepare(&cfg("[auth]\ntoken_lifetime_secs = 7200\n"))
        .unwrap();
    assert_eq!(p.pending_restart, ["auth.token_lifetime_secs"]);
    // A directory whose CA file cannot be read now refuses the reload.
    let bad = format!("{DIRECTORY}ca_file = \"/nonexistent/ldap-ca.pem\"\n");
    let e = auth.prepare(&cfg(&bad)).err().expect("refused");
    assert!(format!("{e:#}").contains("directory.ca_file"), "{e:#}");
    assert!(!auth.external());
}
