//! The web console and the self-service portal in a real browser (Debian's headless
//! `chromium`, driven through `chromedriver` with fantoccini) against `portcullis run` with
//! stock `openvpn` clients and a real OpenLDAP directory:
//!
//! - an administrator signs in, sees alice and bob connected (and their logins on the
//!   dashboard's attempts chart) with byte counts that grow
//!   while the page stays loaded, explains a flow (with alice's directory groups), terminates bob's session (his client logs
//!   the HALT), revokes alice's certificate (hers too), and finds each action in the audit
//!   trail;
//! - erin, a directory user with no certificate, signs in to the portal, downloads her profile
//!   (a personal certificate issued into it), and a stock client connects with it and reaches
//!   the private network.
//!
//! Each page is saved as `target/console/<nn>-<page>.png` and checked for what it must show.
//! Needs root, `target/debug/portcullis`, `chromium` + `chromium-driver` and `slapd`
//! (`cargo xtask setup`); hold `/tmp/portcullis-priv.lock`.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use tests::agent::{AgentLab, ProfileClient};
use tests::browser::Chromium;
use tests::gateway::SERVER;
use tests::ldap::{self, Slapd};
use tests::openvpn::ping;
use tests::require_root;

const LDAP_PORT: u16 = 3891;
const DRIVER_PORT: u16 = 9516;
const CONSOLE: &str = "https://127.0.0.1:8443";
const ADMIN: &str = "ann";
const ADMIN_PASSWORD: &str = "console-pass-1";
const HALT: &str = "Halt command was pushed by server";

fn policy(slapd: &Slapd, secret: &Path) -> String {
    let hash = portcullis::console::accounts::hash_password(ADMIN_PASSWORD).unwrap();
    format!(
        r#"
[auth]
methods = ["certificate", "ldap"]

[directory]
url = "{url}"
connect_timeout_secs = 2
timeout_secs = 3
bind_dn = "{svc}"
bind_password_file = "{secret}"
user_base = "ou=people,{suffix}"

[console]
listen = "127.0.0.1:8443"
tls_cert = "pki/server.crt"
tls_key = "pki/server.key"
self_service = true
self_service_issue_certificates = true

[[console.admin]]
name = "{ADMIN}"
password_hash = "{hash}"
role = "operator"

[[authorization_rule]]
destination = "10.0.0.0/24"
all_users = true
description = "everyone reaches the private network"
"#,
        url = slapd.url,
        svc = ldap::SERVICE_DN,
        secret = secret.display(),
        suffix = ldap::SUFFIX,
    )
}

/// `cn`'s exported profile, signing in to the directory as `user`.
fn start_client(lab: &AgentLab, i: usize, profile: &str, user: &str) -> ProfileClient {
    let creds = lab.dir.path().join(format!("creds-{user}"));
    std::fs::write(&creds, format!("{user}\n{}\n", ldap::password(user))).unwrap();
    assert!(profile.contains("\nauth-user-pass\n"), "{profile}");
    let p = profile.replace(
        "\nauth-user-pass\n",
        &format!("\nauth-user-pass {}\n", creds.display()),
    );
    ProfileClient::start(lab.client_ns(i), &p)
}

fn connected(lab: &AgentLab, c: &ProfileClient, who: &str) {
    if let Err(e) = c.wait_connected(Duration::from_secs(30)) {
        panic!(
            "{who} does not connect: {e}\nagent log:\n{}",
            lab.agent().log_tail(40)
        );
    }
}

/// `target/console/`, where the screenshots go.
fn shots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let d = target.join("console");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, dir: &Path, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element matching `css` once `ok` holds for it (20 s at most).
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if ok(&t) {
                    return t;
                }
                last = t;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let src = c.source().await.unwrap_or_default();
    panic!("{css}: never as expected (last text {last:?}); page:\n{src}");
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.expect(css);
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .expect("click");
}

/// A JS expression's value in the page (WebDriver scripts are not page scripts: the CSP does
/// not apply to them).
async fn js(c: &Client, script: &str) -> serde_json::Value {
    c.execute(script, vec![]).await.expect(script)
}

/// The `Bytes in` cell of `user`'s row in the connections table (`null`: no row).
const BYTES_OF: &str = "return Array.from(document.querySelectorAll('#connections tbody tr')).filter(r => (r.querySelector('td.user')||{}).textContent === arguments[0]).map(r => r.querySelector('td.bytes-in').textContent + ' / ' + r.querySelector('td.bytes-out').textContent)[0] || null;";

#[test]
fn console_and_portal_in_a_real_browser() {
    require_root!();
    if let Err(e) = tests::browser::available() {
        panic!("{e}");
    }
    let mut slapd = Slapd::prepare(LDAP_PORT, false);
    let secret = slapd.dir().join("svc.pw");
    std::fs::write(&secret, format!("{}\n", ldap::SERVICE_PW)).unwrap();
    let lab = AgentLab::new(3, &["alice", "bob"], &policy(&slapd, &secret));
    slapd.launch(&lab.gw);
    let alice = start_client(&lab, 0, &lab.export_profile("alice"), "alice");
    let bob = start_client(&lab, 1, &lab.export_profile("bob"), "bob");
    connected(&lab, &alice, "alice");
    connected(&lab, &bob, "bob");
    let shots = shots_dir();
    let server_crt = lab.dir.path().join("pki/server.crt");
    let mut chrome = Chromium::start(&lab.gw, DRIVER_PORT, &[&server_crt]);
    let admin = chrome.session();

    // Sign in.
    let d = shots.clone();
    admin.step(move |c| {
        Box::pin(async move {
            c.goto(&format!("{CONSOLE}/login")).await.unwrap();
            wait_text(&c, "h1", |t| t == "Sign in").await;
            shot(&c, &d, "01-login").await;
            fill(&c, "input[name=name]", ADMIN).await;
            fill(&c, "input[name=password]", ADMIN_PASSWORD).await;
            click(&c, "form.login button[type=submit]").await;
            wait_text(&c, "h1", |t| t == "Dashboard").await;
            // Both sessions, live: the cards come from /live/dashboard every 2 s.
            wait_text(&c, "#active", |t| t == "2").await;
            let charts = c.find_all(Locator::Css("svg.chart")).await.unwrap();
            assert!(charts.len() >= 3, "the dashboard's charts");
            // alice's and bob's logins, from the connection log.
            wait_text(&c, "#attempts", |t| t.contains("successful")).await;
            wait_text(&c, "span.who", |t| {
                t.contains(ADMIN) && t.contains("operator")
            })
            .await;
            shot(&c, &d, "02-dashboard").await;
        })
    });

    // Connections: both users with byte counts that grow without a reload.
    let d = shots.clone();
    let before: (String, String) = admin.step(move |c| {
        Box::pin(async move {
            c.goto(&format!("{CONSOLE}/connections")).await.unwrap();
            wait_text(&c, "h1", |t| t == "Connections").await;
            let mut got = (String::new(), String::new());
            for (u, slot) in [("alice", &mut got.0), ("bob", &mut got.1)] {
                let v = js(&c, &BYTES_OF.replace("arguments[0]", &format!("'{u}'"))).await;
                *slot = v
                    .as_str()
                    .unwrap_or_else(|| panic!("no row for {u}"))
                    .to_owned();
            }
            // A mark in the page: still there later means the page was not reloaded.
            js(&c, "window.pcMark = 42; return null;").await;
            shot(&c, &d, "03-connections").await;
            got
        })
    });
    for i in 0..2 {
        for _ in 0..5 {
            assert!(ping(lab.client_ns(i), SERVER, 3, Duration::from_secs(5)));
        }
    }
    let d = shots.clone();
    admin.step(move |c| {
        Box::pin(async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let a = js(&c, &BYTES_OF.replace("arguments[0]", "'alice'")).await;
                let b = js(&c, &BYTES_OF.replace("arguments[0]", "'bob'")).await;
                if a.as_str() != Some(before.0.as_str()) && b.as_str() != Some(before.1.as_str()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "byte counts did not move live: {a} {b} (before {before:?})"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert_eq!(
                js(&c, "return window.pcMark;").await,
                42,
                "the page reloaded"
            );
            shot(&c, &d, "04-connections-live").await;
        })
    });

    // Explain a flow.
    let d = shots.clone();
    admin.step(move |c| {
        Box::pin(async move {
            c.goto(&format!("{CONSOLE}/endpoint")).await.unwrap();
            wait_text(&c, "h1", |t| t == "Endpoint").await;
            fill(&c, "#explain input[name=user]", "alice").await;
            fill(&c, "#explain input[name=to]", "10.0.0.10:443/tcp").await;
            click(&c, "#explain button[type=submit]").await;
            let v = wait_text(&c, "p.verdict", |t| t.contains("10.0.0.10")).await;
            assert!(v.contains("ALLOWED"), "{v}");
            let steps = wait_text(&c, "ol.steps", |_| true).await;
            assert!(steps.contains("10.0.0.0/24"), "the deciding rule: {steps}");
            // alice is a directory user: her live session's directory groups are used.
            assert!(steps.contains("live session"), "{steps}");
            assert!(v.contains("groups: eng"), "alice's directory group: {v}");
            wait_text(&c, "#authz", |t| {
                t.contains("everyone reaches the private network")
            })
            .await;
            shot(&c, &d, "05-endpoint-explain").await;
        })
    });

    // Terminate bob's session, confirming the browser's dialog.
    let d = shots.clone();
    admin.step(move |c| {
        Box::pin(async move {
            c.goto(&format!("{CONSOLE}/connections")).await.unwrap();
            wait_text(&c, "#connections", |t| t.contains("bob")).await;
            js(&c, "Array.from(document.querySelectorAll('#connections tbody tr')).find(r => (r.querySelector('td.user')||{}).textContent === 'bob').querySelector('button.danger').click(); return null;").await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.get_alert_text().await.is_err() {
                assert!(Instant::now() < deadline, "no confirmation asked");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let q = c.get_alert_text().await.unwrap();
            assert!(q.contains("Terminate session") && q.contains("bob"), "{q}");
            c.accept_alert().await.unwrap();
            wait_text(&c, "p.notice", |t| t.starts_with("Terminated session")).await;
            shot(&c, &d, "06-terminated").await;
        })
    });
    assert!(
        bob.proc.wait_log(HALT, Duration::from_secs(10)),
        "bob's client was not told to stop:\n{}",
        bob.log()
    );

    // Revoke alice's certificate: her session ends through the CRL.
    let d = shots.clone();
    admin.step(move |c| {
        Box::pin(async move {
            c.goto(&format!("{CONSOLE}/certificates")).await.unwrap();
            wait_text(&c, "#crl", |t| t.starts_with("CRL #")).await;
            js(&c, "Array.from(document.querySelectorAll('#certificates tbody tr')).find(r => (r.querySelector('td.name')||{}).textContent === 'alice').querySelector('button.danger').click(); return null;").await;
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.get_alert_text().await.is_err() {
                assert!(Instant::now() < deadline, "no confirmation asked");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            c.accept_alert().await.unwrap();
            wait_text(&c, "p.notice", |t| t.starts_with("Revoked serial")).await;
            wait_text(&c, "#certificates", |t| t.contains("revoked")).await;
            shot(&c, &d, "07-revoked").await;
        })
    });
    assert!(
        alice.proc.wait_log(HALT, Duration::from_secs(10)),
        "alice's client was not told to stop after the revoke:\n{}",
        alice.log()
    );

    // The portal: erin (no certificate yet) downloads her profile.
    let portal = chrome.session();
    let d = shots.clone();
    let downloads = chrome.download_dir();
    let file = portal.step(move |c| {
        Box::pin(async move {
            c.goto(&format!("{CONSOLE}/portal")).await.unwrap();
            wait_text(&c, "h1", |t| t.contains("download your VPN profile")).await;
            shot(&c, &d, "08-portal-login").await;
            fill(&c, "input[name=name]", "erin").await;
            fill(&c, "input[name=password]", &ldap::password("erin")).await;
            click(&c, "form.login button[type=submit]").await;
            wait_text(&c, "strong.user", |t| t == "erin").await;
            assert!(
                c.find(Locator::Css("nav")).await.is_err(),
                "no administrator navigation in the portal"
            );
            shot(&c, &d, "09-portal-profile").await;
            click(&c, "#download").await;
            // The download ends the form's navigation; then an administrator's page stays
            // closed to the portal's session.
            let deadline = Instant::now() + Duration::from_secs(20);
            let file = loop {
                let found = std::fs::read_dir(&downloads).ok().and_then(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .find(|p| p.extension().is_some_and(|x| x == "ovpn"))
                });
                if let Some(f) = found {
                    break f;
                }
                assert!(Instant::now() < deadline, "the profile was not downloaded");
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            c.goto(&format!("{CONSOLE}/connections")).await.unwrap();
            wait_text(&c, "h1", |t| t == "Sign in").await;
            file
        })
    });
    assert!(
        file.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("-erin.ovpn"),
        "{file:?}"
    );
    let profile = std::fs::read_to_string(&file).unwrap();
    assert!(
        profile.contains("<cert>") && profile.contains("<key>"),
        "{profile}"
    );
    let erin = start_client(&lab, 2, &profile, "erin");
    connected(&lab, &erin, "erin (portal profile)");
    assert!(
        ping(lab.client_ns(2), SERVER, 3, Duration::from_secs(10)),
        "erin's tunnel passes no traffic"
    );
    drop(portal);

    // The audit trail has every action, by whom.
    let d = shots.clone();
    admin.step(move |c| {
        Box::pin(async move {
            c.goto(&format!("{CONSOLE}/audit")).await.unwrap();
            let t = wait_text(&c, "#audit", |t| t.contains("certificate_issue")).await;
            for (action, target) in [
                ("console_login", ""),
                ("terminate", "session"),
                ("revoke", "serial"),
                ("portal_login", "portal 127.0.0.1"),
                ("certificate_issue", "user erin"),
            ] {
                assert!(
                    t.lines().any(|l| l.contains(action) && l.contains(target)),
                    "{action} {target} not in the audit trail:\n{t}"
                );
            }
            assert!(t.contains("erin (portal)"), "{t}");
            shot(&c, &d, "10-audit").await;
        })
    });
    drop(admin);
    drop(chrome);
}
