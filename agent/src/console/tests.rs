//! The console's security over real HTTPS on loopback: sessions, CSRF, escaping, expiry,
//! the login rate limit, the audit trail.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::accounts::hash_password;
use super::config::{AdminAccount, ConsoleSection, Role};
use super::{server, Console};
use crate::admin::audit::AuditLog;
use crate::admin::{
    AdminApi, AdminServer, ConnectionInfo, ConnectionsReply, ErrorReply, ExplainReply, PolicyReply,
    ReloadReply, StatusReply, TerminateReply,
};

/// The endpoint's side of the admin API: two sessions whose counters grow with every look.
struct FakeEndpoint {
    sessions: Vec<ConnectionInfo>,
}

fn session(id: u32, user: &str, addr: &str) -> ConnectionInfo {
    ConnectionInfo {
        id,
        user: Some(user.into()),
        client_address: Some(addr.into()),
        public_address: "192.0.2.10:51000".into(),
        transport: "udp".into(),
        established: true,
        since_secs: 65,
        ingress_bytes: 1000,
        egress_bytes: 2000,
        ingress_packets: 10,
        egress_packets: 20,
        username: None,
        directory_groups: vec!["engineering".into()],
        gateway: None,
    }
}

impl AdminApi for FakeEndpoint {
    fn status(&mut self) -> StatusReply {
        StatusReply {
            endpoint: "lab".into(),
            generation: 3,
            reloads: 2,
            last_reload_error: None,
            last_reload_timing: None,
            pending_restart: vec![],
            sessions: self.sessions.len() as u64,
            established: self.sessions.len() as u64,
            flows: 4,
            drops: [("no_authz_rule".to_string(), 9u64)].into_iter().collect(),
            maps: Default::default(),
            fleet: None,
        }
    }
    fn reload(&mut self) -> Result<ReloadReply, ErrorReply> {
        Err(ErrorReply::new("no file"))
    }
    fn connections(&mut self) -> ConnectionsReply {
        for s in &mut self.sessions {
            s.ingress_bytes += 1500;
            s.egress_bytes += 3000;
        }
        ConnectionsReply {
            connections: self.sessions.clone(),
            fleet_error: None,
        }
    }
    fn terminate(
        &mut self,
        id: Option<u32>,
        _user: Option<&str>,
        _gateway: Option<&str>,
    ) -> Result<TerminateReply, ErrorReply> {
        let before = self.sessions.len();
        self.sessions.retain(|s| Some(s.id) != id);
        if self.sessions.len() == before {
            return Err(ErrorReply::new("no such session"));
        }
        Ok(TerminateReply {
            terminated: id.into_iter().collect(),
            remote: vec![],
        })
    }
    fn policy(&mut self) -> PolicyReply {
        PolicyReply {
            generation: 3,
            policy: demo_policy(),
        }
    }
    fn explain(&mut self, user: &str, to: &str) -> Result<ExplainReply, ErrorReply> {
        let to = to.parse().map_err(ErrorReply::new)?;
        let e = crate::explain::explain(&demo_policy(), user, to)
            .map_err(|e| ErrorReply::new(e.to_string()))?;
        Ok(ExplainReply {
            user: e.user,
            groups: e.groups,
            destination: e.destination,
            verdict: e.verdict,
            reason: e.reason,
            steps: e.steps,
        })
    }
}

fn demo_policy() -> crate::policy::model::PolicyInput {
    toml::from_str(include_str!("../demo/policy.toml")).unwrap()
}

pub(super) struct Lab {
    pub base: String,
    pub socket: PathBuf,
    pub agent: ureq::Agent,
    pub audit: PathBuf,
    dir: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn admin(name: &str, password: &str, role: Role) -> AdminAccount {
    AdminAccount {
        name: name.into(),
        password_hash: hash_password(password).unwrap(),
        role,
        totp_secret: None,
    }
}

pub(super) fn lab(tag: &str, admins: Vec<AdminAccount>, lifetime: Duration, failures: u32) -> Lab {
    let dir = std::env::temp_dir().join(format!("pc-console-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let audit = dir.join("audit.log");
    let cfg = ConsoleSection {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: dir.join("cert.pem"),
        tls_key: dir.join("key.pem"),
        session_minutes: 30,
        login_failures_per_minute: failures,
        admins,
    };
    assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(&cfg.tls_cert, ck.cert.pem()).unwrap();
    std::fs::write(&cfg.tls_key, ck.signing_key.serialize_pem()).unwrap();
    let tls = server::tls_config(&cfg.tls_cert, &cfg.tls_key).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let log = Arc::new(AuditLog::open(&audit).unwrap());
    let socket = dir.join("admin.sock");
    let mut server = rt.block_on(async { AdminServer::bind(&socket) }).unwrap();
    server.set_audit(log.clone());
    let console = Arc::new(Console::with_session_lifetime(
        &cfg,
        log,
        server.handle(),
        lifetime,
    ));
    let mut endpoint = FakeEndpoint {
        sessions: vec![
            session(7, "alice", "10.100.0.2"),
            session(8, "<script>alert('bob')</script>", "10.100.0.3"),
        ],
    };
    rt.spawn(async move {
        loop {
            server.next().await.answer(&mut endpoint);
        }
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(cfg.listen))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    rt.spawn(server::serve(listener, tls, console.router()));
    let certs = ureq::tls::parse_pem(ck.cert.pem().as_bytes())
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect::<Vec<_>>();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(20)))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                .build(),
        )
        .build()
        .into();
    Lab {
        base: format!("https://{addr}"),
        socket,
        agent,
        audit,
        dir,
        rt: Some(rt),
    }
}

/// Status, the `Set-Cookie` and `Location` headers, the body.
pub(super) struct Got {
    pub status: u16,
    pub set_cookie: Option<String>,
    pub location: Option<String>,
    pub csp: Option<String>,
    pub body: String,
}

fn got(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Got {
    let mut r = r.expect("an HTTPS answer");
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (set_cookie, location, csp) =
        (h("set-cookie"), h("location"), h("content-security-policy"));
    Got {
        status: r.status().as_u16(),
        set_cookie,
        location,
        csp,
        body: r.body_mut().read_to_string().unwrap_or_default(),
    }
}

impl Lab {
    pub fn get(&self, path: &str, cookie: Option<&str>) -> Got {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        got(req.call())
    }

    pub fn post(&self, path: &str, form: &[(&str, &str)], cookie: Option<&str>) -> Got {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        got(req.send_form(form.iter().copied()))
    }

    /// Signs in; returns the cookie (`name=value`) to send back.
    pub fn login(&self, name: &str, password: &str) -> String {
        let g = self.post(
            "/login",
            &[("name", name), ("password", password), ("code", "")],
            None,
        );
        assert_eq!(g.status, 303, "login of {name}: {}", g.body);
        let c = g.set_cookie.expect("a session cookie");
        c.split(';').next().unwrap().to_owned()
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The CSRF token of the first form on a page.
pub(super) fn csrf_of(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token")
        + 19;
    page[at..].split('"').next().unwrap().to_owned()
}

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
    let g = lab.post("/login", &[("name", "ann"), ("password", "pw-ann")], None);
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
    let g = lab.post(
        "/login",
        &[("name", "\"><script>x()</script>"), ("password", "no")],
        None,
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
        let g = lab.post("/login", &[("name", "ann"), ("password", "guess")], None);
        assert_eq!(g.status, 401);
    }
    // Even the right password is refused until the bucket refills.
    let g = lab.post("/login", &[("name", "ann"), ("password", "pw")], None);
    assert_eq!(g.status, 429, "{}", g.body);
    assert!(g.set_cookie.is_none());
    // The limit is per source too: another name from the same address is refused.
    let g = lab.post("/login", &[("name", "bob"), ("password", "x")], None);
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
    for page in ["/", "/account", "/connections", "/audit"] {
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
    assert!(g.body.contains("Terminated session [7]"), "{}", g.body);
    assert!(!lab.get("/connections", Some(&ann)).body.contains("alice"));
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
