//! Single sign-on end to end: `portcullis run` with `auth.methods = ["oidc"]`, a real OpenID
//! provider (npm `oidc-provider` under Node, HTTPS with its own CA, users with a `groups`
//! claim; `tests::idp`), a real browser (headless Chromium through chromedriver, driven with
//! fantoccini; `tests::idp_browser`) and stock openvpn 2.6 clients with the profile exactly as
//! `portcullis client-config export` writes it for an SSO endpoint, plus what a GUI adds:
//! `setenv IV_SSO webauth` and a management client that reads `>INFOMSG:WEB_AUTH::<url>`.
//!
//! ```text
//!  claim idp-engineering → eng      rule 10.0.0.0/24  → eng
//!  claim idp-finance     → finance  rule 10.0.0.10/32 → finance (hides the /24 there)
//! ```
//!
//! Everything runs inside the lab's namespaces: the provider and the browser on 127.0.0.1 of
//! the gateway namespace (where the callback listener is), the clients in theirs. Needs
//! `target/debug/portcullis`, and from `cargo xtask setup`: nodejs, the npm packages in
//! /var/cache/portcullis/idp, chromium and chromium-driver. Every wait is bounded.
//!
//! Also: [`tokens`] (session tokens after a web login), [`renegotiation`] (the web login is
//! not asked again at renegotiations) and [`ovpn3`] (the OpenVPN 3 core client's web login).
#[path = "sso/ovpn3.rs"]
mod ovpn3;
#[path = "sso/renegotiation.rs"]
mod renegotiation;
#[path = "sso/tokens.rs"]
mod tokens;

use std::net::Ipv4Addr;
use std::time::Duration;

use tests::agent::{cli_ok, poll, scrape_metrics, AgentLab, ProfileClient, COMPLETED};
use tests::gateway::SERVER;
use tests::idp::{Idp, User, CLIENT_ID};
use tests::idp_browser::{Browser, Gui, LoginResult};
use tests::openvpn::ping;
use tests::require_root;

const IDP_PORT: u16 = 9443;
const CALLBACK_PORT: u16 = 8443;
const DRIVER_PORT: u16 = 9515;
const MGMT_PORT: u16 = 7505;
/// A second host in the private network, inside eng's /24 but outside finance's /32.
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const PENDING_TIMEOUT: u64 = 12;

/// alice, of the provider's `idp-engineering` group (the rule group `eng`).
const ALICE: User<'static> = User {
    name: "alice",
    password: "alice-pw",
    groups: &["idp-engineering"],
};

/// Starts the provider in the gateway's namespace and a browser that trusts it and the
/// gateway's callback. Bind it after the lab: the browser stops before the namespaces go.
fn launch(idp: &mut Idp, lab: &AgentLab) -> Browser {
    idp.launch(&lab.gw);
    let gateway_cert = lab.pki.dir.join("server.crt");
    Browser::start(&lab.gw, DRIVER_PORT, &[&idp.cert_file, &gateway_cert])
}

/// The login URL `ovpncli` wrote to `url_file` (its `-Z`, where Connect opens a browser),
/// without the `WEB_AUTH::` prefix.
fn ovpn3_login_url(c: &tests::ovpn3::Ovpn3, url_file: &std::path::Path, lab: &AgentLab) -> String {
    let url = poll(Duration::from_secs(20), || {
        std::fs::read_to_string(url_file)
            .ok()
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
    })
    .unwrap_or_else(|| {
        panic!(
            "ovpncli wrote no login URL:\n{}\nagent:\n{}",
            c.log(),
            lab.agent().log_tail(20)
        )
    });
    url.strip_prefix("WEB_AUTH::").unwrap_or(&url).to_owned()
}

fn callback_url() -> String {
    format!("https://127.0.0.1:{CALLBACK_PORT}/callback")
}

fn policy(idp: &Idp, methods: &str) -> String {
    format!(
        r#"
[auth]
methods = {methods}

[oidc]
issuer = "{issuer}"
client_id = "{CLIENT_ID}"
client_secret_file = "{secret}"
ca_file = "{ca}"
scopes = ["profile", "groups"]
groups_claim = "groups"
redirect_listen = "127.0.0.1:{CALLBACK_PORT}"
redirect_url = "{callback}"
pending_timeout_secs = {PENDING_TIMEOUT}

[oidc.group_mapping]
idp-engineering = "eng"
idp-finance = "finance"

# "sso" is the name every test client types into its unchecked auth-user-pass prompt: a
# local group for that name must grant nothing (else anyone could type a member's name).
[groups]
finance = ["sso"]

[[authorization_rule]]
destination = "10.0.0.0/24"
groups = ["eng"]
description = "engineering reaches the private network"

[[authorization_rule]]
destination = "10.0.0.10/32"
groups = ["finance"]
description = "only finance reaches the ledger host"
"#,
        issuer = idp.issuer,
        secret = idp.secret_file.display(),
        ca = idp.ca_file.display(),
        callback = callback_url(),
    )
}

/// The SSO endpoint's exported profile (no certificate: none is needed), its dummy
/// `auth-user-pass` answered from a file, and, with `gui`, what an SSO-capable GUI adds.
fn profile(lab: &AgentLab, i: usize, gui: bool) -> String {
    let p = cli_ok(&["client-config", "export", "--config", &lab.config_arg()]);
    assert!(
        p.contains("\nauth-user-pass\n") && !p.contains("<cert>"),
        "an SSO-only profile carries auth-user-pass and no certificate:\n{p}"
    );
    let creds = lab.dir.path().join(format!("sso-creds-{i}"));
    std::fs::write(&creds, "sso\nnot-checked\n").unwrap();
    let mut p = p.replace(
        "\nauth-user-pass\n",
        &format!("\nauth-user-pass {}\n", creds.display()),
    );
    if gui {
        p.push_str(&format!(
            "setenv IV_SSO webauth\nmanagement 127.0.0.1 {MGMT_PORT}\nmanagement-hold\n"
        ));
    }
    p
}

/// A client with the GUI's management connection, and the login URL it was sent.
fn start(lab: &AgentLab, i: usize) -> (ProfileClient, Gui, String) {
    start_with(lab, i, &profile(lab, i, true))
}

/// `cn`'s exported profile (with its certificate) and what an SSO-capable GUI adds.
fn cert_profile(lab: &AgentLab, cn: &str) -> String {
    let p = lab.export_profile(cn);
    assert!(
        !p.contains("auth-user-pass") && p.contains("<cert>"),
        "a certificate + SSO profile needs no auth-user-pass:\n{p}"
    );
    format!("{p}setenv IV_SSO webauth\nmanagement 127.0.0.1 {MGMT_PORT}\nmanagement-hold\n")
}

fn start_with(lab: &AgentLab, i: usize, profile: &str) -> (ProfileClient, Gui, String) {
    let c = ProfileClient::start(lab.client_ns(i), profile);
    let mut gui = Gui::attach(lab.client_ns(i), MGMT_PORT);
    let url = gui
        .web_auth_url(Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "no >INFOMSG:WEB_AUTH:: from openvpn\nmanagement:\n{}\nclient:\n{}\nagent:\n{}",
                gui.transcript(),
                c.log(),
                lab.agent().log_tail(30)
            )
        });
    (c, gui, url)
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

/// The connection log has a failed attempt with this code.
fn failure_logged(lab: &AgentLab, reason: &str) {
    let path = lab.dir.path().join("connections.log");
    let found = poll(Duration::from_secs(12), || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| {
                r["connection-attempt-status"] == "failed"
                    && r["connection-attempt-failure-reason"] == reason
            })
    });
    assert!(
        found.is_some(),
        "no failed attempt ({reason}) in the connection log:\n{}",
        std::fs::read_to_string(&path).unwrap_or_default()
    );
}

fn reaches(lab: &AgentLab, i: usize, dst: Ipv4Addr) -> bool {
    ping(lab.client_ns(i), dst, 3, Duration::from_secs(3))
}

fn blocked(lab: &AgentLab, i: usize, dst: Ipv4Addr) -> bool {
    !ping(lab.client_ns(i), dst, 1, Duration::from_millis(800))
}

fn callback_text(r: LoginResult) -> (String, String) {
    match r {
        LoginResult::Callback(text, url) => (text, url),
        LoginResult::ProviderError(e) => panic!("the provider refused the login: {e}"),
    }
}

/// Where the short URL the client got sends the browser (the provider's authorization URL),
/// read with curl in the gateway namespace (`-k`: only the Location header of our own
/// listener is read).
fn provider_url(lab: &AgentLab, short: &str) -> String {
    let out = tests::sh(&[
        "ip",
        "netns",
        "exec",
        &lab.gw.name,
        "curl",
        "-sk",
        "--max-time",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{redirect_url}",
        short,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `state=<id>.<secret>` of a login URL with the secret changed.
fn tamper_state(url: &str) -> String {
    let start = url.find("state=").expect("state in the login URL") + "state=".len();
    let end = url[start..].find('&').map_or(url.len(), |e| start + e);
    let state = &url[start..end];
    let (id, _) = state.split_once('.').expect("state is <id>.<secret>");
    format!("{}{id}.forged{}", &url[..start], &url[end..])
}

/// The OpenID provider (Node) and the browser (chromium, chromedriver) every SSO test
/// drives: a machine without them fails the test with what to install.
fn require_sso_tools() {
    for check in [tests::idp::available(), tests::idp_browser::available()] {
        if let Err(e) = check {
            panic!("{e}");
        }
    }
}

#[test]
fn sso_web_login_groups_and_refusals() {
    require_root!();
    require_sso_tools();
    let mut idp = Idp::prepare(
        IDP_PORT,
        &callback_url(),
        &[
            User {
                name: "alice",
                password: "alice-pw",
                groups: &["idp-engineering", "idp-everyone"],
            },
            User {
                name: "bob",
                password: "bob-pw",
                groups: &["idp-finance"],
            },
        ],
    );
    let lab = AgentLab::new(3, &["unused"], &policy(&idp, r#"["oidc"]"#));
    let mut browser = launch(&mut idp, &lab);
    // Declared after the lab: Node and the browser stop before the namespaces go.
    let (idp, browser) = (&idp, &mut browser);
    lab.add_net_address(OTHER);

    // Alice: the client is sent to the provider (code flow with PKCE), she signs in, the
    // callback admits the session with her claim's groups.
    let (alice, _gui_a, url) = start(&lab, 0);
    assert!(
        url.starts_with(&format!("https://127.0.0.1:{CALLBACK_PORT}/login/")),
        "login URL: {url}"
    );
    let auth = provider_url(&lab, &url);
    assert!(
        auth.starts_with(&format!("{}/auth?", idp.issuer))
            && auth.contains("code_challenge_method=S256")
            && auth.contains("nonce=")
            && auth.contains("state="),
        "authorization URL: {auth}"
    );
    assert!(
        !alice.log().contains(COMPLETED) && tests::agent::tunnel_addr(lab.client_ns(0)).is_none(),
        "a tunnel before the web login"
    );
    let (text, alice_callback) = callback_text(browser.login(&url, "alice", "alice-pw"));
    assert!(text.contains("Signed in as alice"), "{text}");
    connected(&lab, &alice, "alice");
    assert!(reaches(&lab, 0, OTHER), "alice (eng) → {OTHER}");
    assert!(
        blocked(&lab, 0, SERVER),
        "alice reached {SERVER}: finance's /32 must hide eng's /24 there, and the name she \
         typed (in finance's local group) must grant nothing"
    );
    let conns = lab.connections();
    let a = conns
        .iter()
        .find(|c| c["username"] == "alice")
        .unwrap_or_else(|| panic!("no session of SSO user alice: {conns:?}"));
    assert_eq!(a["directory_groups"], serde_json::json!(["eng"]), "{a}");

    // Her callback again (a replayed state): refused, her session untouched.
    let (text, _) = callback_text(browser.open(&alice_callback));
    assert!(text.contains("sso_state"), "replayed callback: {text}");
    assert!(reaches(&lab, 0, OTHER), "alice lost her tunnel to a replay");

    // Bob types a wrong password: the provider asks again, nothing reaches the gateway;
    // then he cancels: the provider's error ends the session with its own code.
    let (bob, _gui_b, url) = start(&lab, 1);
    match browser.login(&url, "bob", "wrong") {
        LoginResult::ProviderError(e) => assert!(e.contains("Invalid"), "{e}"),
        r => panic!("a wrong password at the provider got through: {r:?}"),
    }
    assert!(!bob.log().contains("AUTH_FAILED") && !bob.log().contains(COMPLETED));
    let (text, _) = callback_text(browser.cancel(&url));
    assert!(text.contains("sso_denied"), "{text}");
    refused(
        &bob,
        "login refused by the identity provider",
        Duration::from_secs(10),
    );
    drop(bob);
    failure_logged(&lab, "sso_denied");

    // A callback whose state was tampered with (right login at the provider): refused, and
    // the session it named ends.
    let (bob, _gui_b, url) = start(&lab, 1);
    let forged = tamper_state(&provider_url(&lab, &url));
    let (text, _) = callback_text(browser.login(&forged, "bob", "bob-pw"));
    assert!(text.contains("sso_state"), "{text}");
    refused(&bob, "login state mismatch", Duration::from_secs(10));
    drop(bob);
    failure_logged(&lab, "sso_state");

    // Bob for real: finance's host only.
    let (bob, _gui_b, url) = start(&lab, 1);
    let (text, _) = callback_text(browser.login(&url, "bob", "bob-pw"));
    assert!(text.contains("Signed in as bob"), "{text}");
    connected(&lab, &bob, "bob");
    assert!(reaches(&lab, 1, SERVER), "bob (finance) → {SERVER}");
    assert!(blocked(&lab, 1, OTHER), "bob is not in eng");

    // Nobody logs in: the pending timeout refuses.
    let (late, _gui_c, _url) = start(&lab, 2);
    refused(
        &late,
        "web login not completed in time",
        Duration::from_secs(PENDING_TIMEOUT + 10),
    );
    drop(late);
    failure_logged(&lab, "sso_timeout");

    // A client that cannot open a web login (no IV_SSO): a clear refusal at once.
    let plain = ProfileClient::start(lab.client_ns(2), &profile(&lab, 2, false));
    refused(&plain, "web browser", Duration::from_secs(15));
    drop(plain);
    failure_logged(&lab, "sso_unsupported_client");

    let metrics = scrape_metrics(&lab.gw);
    for r in [
        "sso_denied",
        "sso_state",
        "sso_timeout",
        "sso_unsupported_client",
    ] {
        assert!(
            metrics.contains(&format!("reason=\"{r}\"")),
            "no auth failure metric for {r}:\n{metrics}"
        );
    }
    assert!(
        idp.log().contains("login ok for alice") && idp.log().contains("login failed for \"bob\""),
        "{}",
        idp.log()
    );
}

/// `["certificate", "oidc"]`: the certificate's name keeps its local groups next to the
/// provider's; and a code obtained for one session's login, delivered with another session's
/// state, is refused at the exchange (its PKCE verifier belongs to the other login) and ends
/// only the session the state named.
#[test]
fn sso_with_certificates_and_a_callback_for_another_session() {
    require_root!();
    require_sso_tools();
    let mut idp = Idp::prepare(
        IDP_PORT,
        &callback_url(),
        &[User {
            name: "bob",
            password: "bob-pw",
            groups: &["idp-finance"],
        }],
    );
    let policy = format!(
        "{}\n[groups]\neng = [\"carol\"]\n",
        policy(&idp, r#"["certificate", "oidc"]"#).replace("[groups]\nfinance = [\"sso\"]\n", "")
    );
    let lab = AgentLab::new(3, &["carol", "dave", "erin"], &policy);
    let mut browser = launch(&mut idp, &lab);
    let (idp, browser) = (&idp, &mut browser);
    lab.add_net_address(OTHER);

    // Two sessions wait; dave's login code arrives with erin's state.
    let (dave, _gd, dave_url) = start_with(&lab, 1, &cert_profile(&lab, "dave"));
    let (erin, _ge, erin_url) = start_with(&lab, 2, &cert_profile(&lab, "erin"));
    let dave_auth = provider_url(&lab, &dave_url);
    let erin_auth = provider_url(&lab, &erin_url);
    let state_of = |u: &str| {
        let s = u.find("state=").unwrap() + "state=".len();
        let e = u[s..].find('&').map_or(u.len(), |e| s + e);
        (s, e, u[s..e].to_owned())
    };
    let (s, e, _) = state_of(&dave_auth);
    let (_, _, erin_state) = state_of(&erin_auth);
    let crossed = format!("{}{erin_state}{}", &dave_auth[..s], &dave_auth[e..]);
    let (text, _) = callback_text(browser.login(&crossed, "bob", "bob-pw"));
    assert!(text.contains("sso_token"), "{text}");
    refused(
        &erin,
        "code refused by the provider",
        Duration::from_secs(10),
    );
    failure_logged(&lab, "sso_token");
    // Dave's own login still waits and completes.
    assert!(!dave.log().contains("AUTH_FAILED"), "{}", dave.log());
    let (text, _) = callback_text(browser.login(&dave_url, "bob", "bob-pw"));
    assert!(text.contains("Signed in as bob"), "{text}");
    connected(&lab, &dave, "dave");
    drop((dave, erin));

    // Carol's certificate is in the local group eng, bob's claim maps to finance: both count.
    let (carol, _gc, url) = start_with(&lab, 0, &cert_profile(&lab, "carol"));
    let (text, _) = callback_text(browser.login(&url, "bob", "bob-pw"));
    assert!(text.contains("Signed in as bob"), "{text}");
    connected(&lab, &carol, "carol");
    assert!(
        reaches(&lab, 0, OTHER),
        "carol (eng by certificate) → {OTHER}"
    );
    assert!(
        reaches(&lab, 0, SERVER),
        "carol (finance by claim) → {SERVER}"
    );
    let conns = lab.connections();
    assert!(
        conns
            .iter()
            .any(|c| c["user"] == "carol" && c["username"] == "bob"),
        "{conns:?}"
    );
    assert!(idp.log().contains("login ok for bob"), "{}", idp.log());
}
