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
#[path = "directory/challenge.rs"]
mod challenge;
#[path = "directory/logins.rs"]
mod logins;
#[path = "directory/tokens.rs"]
mod tokens;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use tests::agent::{poll, scrape_metrics, AgentLab, ProfileClient, COMPLETED};
use tests::gateway::SERVER;
use tests::ldap::{self, group_dn, group_sid, user_dn, Slapd};
use tests::openvpn::ping;
use tests::require_root;

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
