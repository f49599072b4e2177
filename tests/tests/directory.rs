//! Directory authentication end to end: `portcullis run` with `auth.methods = ["certificate",
//! "ldap"]` against a real OpenLDAP `slapd` (fixture in `tests::ldap`, StartTLS with its own
//! CA), stock `openvpn` clients with `auth-user-pass`, and authorization rules written with
//! AD-style group SIDs.
//!
//! ```text
//!  rules: 10.0.0.0/24  → eng (SID …-1101)        alice, and carol through contractors ⊂ eng
//!         10.0.0.10/32 → finance (SID …-1102)    bob; hides the /24 from eng on 10.0.0.10
//! ```
//!
//! Needs `target/debug/portcullis` and Debian's `slapd` + `ldap-utils` (`cargo xtask setup`).
//! slapd runs on 127.0.0.1 inside the gateway namespace; every wait is bounded.
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use tests::agent::{poll, scrape_metrics, AgentLab, ProfileClient, COMPLETED};
use tests::gateway::{fmt_mac, SERVER};
use tests::ldap::{self, group_dn, group_sid, user_dn, Slapd};
use tests::openvpn::ping;
use tests::{mac_of, require_root};

const LDAP_PORT: u16 = 3890;
/// A second host in the private network, inside eng's /24 but outside finance's /32.
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

fn policy(slapd: &Slapd, secret: &Path) -> String {
    format!(
        r#"
[auth]
methods = ["certificate", "ldap"]
failed_logins_per_user = 2
failed_logins_per_source = 50

[directory]
url = "{url}"
starttls = true
ca_file = "{ca}"
connect_timeout_secs = 2
timeout_secs = 3
bind_dn = "{svc}"
bind_password_file = "{secret}"
user_base = "ou=people,{suffix}"
group_source = "member-of"
nested = "recursive"
group_id = "sid"
recheck_interval_secs = 1

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["{eng}"]
description = "engineering reaches the private network"

[[authorization_rule]]
destination = "10.0.0.10/32"
groups = ["{finance}"]
description = "only finance reaches the ledger host"
"#,
        url = slapd.url,
        ca = slapd.ca_file.as_ref().expect("TLS on").display(),
        svc = ldap::SERVICE_DN,
        secret = secret.display(),
        suffix = ldap::SUFFIX,
        eng = group_sid("eng"),
        finance = group_sid("finance"),
    )
}

/// `openvpn` in client namespace `i` with `cert_cn`'s exported profile and `user`/`pass`
/// in a credentials file (the profile's bare `auth-user-pass` would prompt).
fn login(lab: &AgentLab, i: usize, cert_cn: &str, user: &str, pass: &str) -> ProfileClient {
    ProfileClient::start(
        lab.client_ns(i),
        &login_profile(lab, i, cert_cn, user, pass),
    )
}

/// `cert_cn`'s exported profile reading `user`/`pass` from a file.
fn login_profile(lab: &AgentLab, i: usize, cert_cn: &str, user: &str, pass: &str) -> String {
    let profile = lab.export_profile(cert_cn);
    assert!(
        profile.contains("\nauth-user-pass\n"),
        "the exported profile asks for no password:\n{profile}"
    );
    let creds = lab
        .dir
        .path()
        .join(format!("creds-{i}-{}", tests::unique("c")));
    std::fs::write(&creds, format!("{user}\n{pass}\n")).unwrap();
    profile.replace(
        "\nauth-user-pass\n",
        &format!("\nauth-user-pass {}\n", creds.display()),
    )
}

fn connected(lab: &AgentLab, c: &ProfileClient, who: &str) {
    if let Err(e) = c.wait_connected(Duration::from_secs(20)) {
        panic!(
            "{who} does not connect: {e}\nagent log:\n{}",
            lab.agent().log_tail(40)
        );
    }
}

/// The client got `AUTH_FAILED` carrying `reason` and never connected.
fn refused(c: &ProfileClient, reason: &str, within: Duration) {
    let got = poll(within, || c.log().contains("AUTH_FAILED").then_some(()));
    assert!(got.is_some(), "not refused within {within:?}:\n{}", c.log());
    assert!(
        c.log().contains(reason),
        "AUTH_FAILED without {reason:?}:\n{}",
        c.log()
    );
    assert!(!c.log().contains(COMPLETED), "{}", c.log());
}

/// The connection log has a failed attempt with this code, certificate name and tried user
/// name. A refused session is logged when it ends, about 5 s after AUTH_FAILED (doc §8.4).
fn failure_logged(lab: &AgentLab, reason: &str, cn: &str, user: &str) {
    let path = lab.dir.path().join("connections.log");
    let found = poll(Duration::from_secs(10), || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| {
                r["connection-attempt-status"] == "failed"
                    && r["connection-attempt-failure-reason"] == reason
                    && r["common-name"] == cn
                    && r["username"] == user
            })
    });
    assert!(
        found.is_some(),
        "no failed attempt ({reason}, common-name {cn}, username {user}) in the connection log:
{}",
        std::fs::read_to_string(&path).unwrap_or_default()
    );
}

fn reaches(lab: &AgentLab, i: usize, dst: Ipv4Addr) -> bool {
    ping(lab.client_ns(i), dst, 3, Duration::from_secs(3))
}

fn blocked(lab: &AgentLab, i: usize, dst: Ipv4Addr) -> bool {
    !ping(lab.client_ns(i), dst, 1, Duration::from_millis(800))
}

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
    lab.net
        .ip(&["addr", "add", &format!("{OTHER}/24"), "dev", "eth0"]);
    let net_mac = fmt_mac(&mac_of(&lab.net, "eth0"));
    lab.gw.ip(&[
        "neigh",
        "replace",
        &OTHER.to_string(),
        "lladdr",
        &net_mac,
        "dev",
        tests::gateway::GW_IF,
        "nud",
        "permanent",
    ]);

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
    lab.net
        .ip(&["addr", "add", &format!("{OTHER}/24"), "dev", "eth0"]);
    let net_mac = fmt_mac(&mac_of(&lab.net, "eth0"));
    lab.gw.ip(&[
        "neigh",
        "replace",
        &OTHER.to_string(),
        "lladdr",
        &net_mac,
        "dev",
        tests::gateway::GW_IF,
        "nud",
        "permanent",
    ]);
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

const HOOK_PORT: u16 = 8089;

/// The client-connect hook as a small HTTP server on 127.0.0.1:[`HOOK_PORT`] inside a test
/// namespace: it refuses requests whose `groups` is empty. It serves until stopped (at most
/// two minutes), each request bounded in time; drop stops it.
struct HookServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl HookServer {
    fn start(ns: &tests::NetNs) -> HookServer {
        use std::io::{BufRead, Read, Write};
        use std::sync::atomic::Ordering;
        let l = tests::clients::run_in_ns(&ns.name, || {
            std::net::TcpListener::bind(("127.0.0.1", HOOK_PORT)).expect("hook listener")
        });
        l.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut served = 0;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let s = match l.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    Err(_) => break,
                };
                s.set_nonblocking(false).ok();
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                served += 1;
                let answer = if String::from_utf8_lossy(&body).contains("\"groups\":[]") {
                    r#"{"allow":false,"error-msg-on-denied-connection":"no VPN group"}"#
                } else {
                    r#"{"allow":true}"#
                };
                let mut w = s;
                let _ = write!(
                    w,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
            served
        });
        HookServer {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the server; how many requests it answered.
    fn stop(mut self) -> usize {
        self.halt()
    }

    fn halt(&mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.halt();
    }
}

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
