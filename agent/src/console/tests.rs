//! The console's test lab: a real HTTPS console on loopback in front of a real admin server,
//! whose endpoint side ([`FakeEndpoint`]) answers from fixed sessions and a policy, and from a
//! real PKI directory and real log files. The tests are in `tests_*.rs`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::accounts::hash_password;
use super::config::{AdminAccount, ConsoleSection, Role};
use super::{server, Console};
use crate::admin::audit::AuditLog;
use crate::admin::{
    AdminApi, AdminServer, CertificatesReply, ConnectionInfo, ConnectionsReply, ErrorReply,
    ExplainReply, LogKind, LogQuery, LogsReply, PolicyReply, ProfileReply, ReloadReply,
    RevokeReply, StatusReply, TerminateReply,
};

/// The endpoint's side of the admin API: two sessions whose counters grow with every look.
struct FakeEndpoint {
    sessions: Vec<ConnectionInfo>,
    /// A real `portcullis pki` directory: certificates and revoke are the endpoint's code.
    pki: PathBuf,
    /// For `profile`, the endpoint's code too: certificates and a directory, the PKI above.
    config: crate::config::EndpointConfig,
}

fn endpoint_config(
    pki: &std::path::Path,
    console: &ConsoleSection,
) -> crate::config::EndpointConfig {
    let mut c = crate::config::EndpointConfig::parse(
        r#"
name = "lab"
client_cidr = "10.100.0.0/22"
listen = ["udp://0.0.0.0:1194"]
public_address = "vpn.lab"
[tls]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"
[auth]
methods = ["certificate", "ldap"]
"#,
    )
    .unwrap();
    c.tls.cert = pki.with_file_name("vpn.lab.crt");
    c.tls.client_ca = pki.join("ca.crt");
    c.tls.pki_dir = Some(pki.to_path_buf());
    c.console = Some(console.clone());
    c
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
    fn logs(&mut self, log: LogKind, query: &LogQuery) -> Result<LogsReply, ErrorReply> {
        let name = match log {
            LogKind::Connections => "connections.log",
            LogKind::Flows => "flows.log",
        };
        crate::logsearch::api(log, Some(&self.pki.with_file_name(name)), query)
    }
    fn certificates(&mut self) -> Result<CertificatesReply, ErrorReply> {
        crate::pki::store::api_list(Some(&self.pki))
    }
    fn revoke(
        &mut self,
        name: Option<&str>,
        serial: Option<&str>,
    ) -> Result<RevokeReply, ErrorReply> {
        crate::pki::store::api_revoke(Some(&self.pki), name, serial)
    }
    fn profile(&mut self, user: &str, certificate: bool) -> Result<ProfileReply, ErrorReply> {
        crate::profile::api(&self.config, user, certificate)
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
    /// The connection log (`connections.log`) and flow log (`flows.log`) the endpoint
    /// searches are in `dir`, next to `pki`.
    pub dir: PathBuf,
    /// The endpoint's PKI directory: a CA with client certificates `alice` and
    /// [`XSS_CERT`].
    pub pki: PathBuf,
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

/// A certificate name that a console without escaping would run as script.
pub(super) const XSS_CERT: &str = "<script>alert('cert')";

pub(super) fn admin(name: &str, password: &str, role: Role) -> AdminAccount {
    AdminAccount {
        name: name.into(),
        password_hash: hash_password(password).unwrap(),
        role,
        totp_secret: None,
    }
}

pub(super) fn lab(tag: &str, admins: Vec<AdminAccount>, lifetime: Duration, failures: u32) -> Lab {
    lab_with_portal(tag, admins, lifetime, failures, None)
}

/// [`lab`] with the self-service portal signing users in through `portal`.
pub(super) fn lab_with_portal(
    tag: &str,
    admins: Vec<AdminAccount>,
    lifetime: Duration,
    failures: u32,
    portal: Option<Arc<crate::auth::Authenticator>>,
) -> Lab {
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
        self_service: true,
        self_service_issue_certificates: true,
        self_service_max_certificates: 3,
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
    let console = Arc::new(
        Console::with_session_lifetime(&cfg, log, server.handle(), lifetime).with_portal(
            &cfg,
            portal.map(|a| Arc::new(move || Some(a.clone())) as super::state::PortalAuth),
        ),
    );
    let pki = dir.join("pki");
    let store = crate::pki::store::PkiDir::new(&pki);
    store.init("Lab CA", 30).unwrap();
    for cn in ["alice", XSS_CERT] {
        store.issue(cn, false, 30, true).unwrap();
    }
    // The profile names the server certificate's CN; kept out of the PKI's index, which the
    // certificate tests count.
    let other = crate::pki::CertificateAuthority::generate(
        "server CA",
        crate::pki::Validity::days_from_now(2),
    )
    .unwrap();
    let server_cert = other
        .issue_server("vpn.lab", crate::pki::Validity::days_from_now(2))
        .unwrap();
    std::fs::write(dir.join("vpn.lab.crt"), &server_cert.cert_pem).unwrap();
    let mut endpoint = FakeEndpoint {
        config: endpoint_config(&pki, &cfg),
        pki: pki.clone(),
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
    // As `console::spawn` does: the watcher lists the sessions with no page open.
    rt.spawn(super::monitor::watch(console.clone()));
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
        pki,
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

    /// Posts a sign-in form as a browser does: fetches the form page first and sends back its
    /// CSRF value, in the form and in the cookie the page set.
    pub fn signin(&self, path: &str, form: &[(&str, &str)]) -> Got {
        let page = self.get(path, None);
        assert_eq!(page.status, 200, "{path}: {}", page.body);
        let cookie = page.set_cookie.expect("the sign-in form's cookie");
        let cookie = cookie.split(';').next().unwrap().to_owned();
        let csrf = csrf_of(&page.body);
        let mut fields = vec![("csrf", csrf.as_str())];
        fields.extend_from_slice(form);
        self.post(path, &fields, Some(&cookie))
    }

    /// Signs in; returns the cookie (`name=value`) to send back.
    pub fn login(&self, name: &str, password: &str) -> String {
        let g = self.signin(
            "/login",
            &[("name", name), ("password", password), ("code", "")],
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
