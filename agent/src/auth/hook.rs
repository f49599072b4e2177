//! The client-connect hook, like AWS Client VPN's client-connect handler: a program run for
//! every new connection after the certificate checked out. It gets a JSON request on stdin
//! (`connection-id`, `endpoint-id`, `common-name`, `username`, `platform`,
//! `platform-version`, `public-ip`, `client-openvpn-version`, `groups`, `schema-version`) and
//! answers with a JSON object on stdout (`allow`, `error-msg-on-denied-connection`,
//! `schema-version`). It has 30 s; anything else — a timeout, a non-zero exit, output that is
//! not such an object — refuses the connection (fail closed, as AWS).
//!
//! The same exchange also works as an HTTP POST (`client_connect_url`): the request JSON is the
//! body, the answer must come with a 2xx status; any other status, a transport error, a
//! timeout or an answer that is not such an object refuses. `https://` uses rustls (ring) with
//! the public web roots, or the CA bundle in `client_connect_ca_file`.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::openvpn::peer::Link;
use crate::openvpn::verdict::{AuthRequest, FailureCode, Refusal};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the hook's decision comes from.
#[derive(Clone)]
pub enum HookTarget {
    Program(PathBuf),
    Http { url: String, agent: ureq::Agent },
}

impl std::fmt::Debug for HookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookTarget::Program(p) => write!(f, "program {}", p.display()),
            HookTarget::Http { url, .. } => write!(f, "POST {}", loggable(url)),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ConnectHook {
    pub target: HookTarget,
    pub endpoint: String,
    pub timeout: Duration,
}

/// PATH for the hook when the agent has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bound on the answer, which is a small object.
const MAX_ANSWER: u64 = 64 * 1024;

impl ConnectHook {
    pub fn new(program: &Path, endpoint: &str) -> Self {
        Self {
            target: HookTarget::Program(program.to_path_buf()),
            endpoint: endpoint.to_owned(),
            timeout: TIMEOUT,
        }
    }

    /// The hook an endpoint's configuration asks for, if any: `client_connect` (a program) or
    /// `client_connect_url` (with `client_connect_ca_file` for a private CA).
    pub fn from_config(cfg: &crate::config::EndpointConfig) -> anyhow::Result<Option<Self>> {
        use anyhow::Context as _;
        let timeout = Duration::from_secs(cfg.client_connect_timeout_secs);
        Ok(match (&cfg.client_connect, &cfg.client_connect_url) {
            (Some(p), _) => {
                let mut h = Self::new(p, &cfg.name);
                h.timeout = timeout;
                Some(h)
            }
            (None, Some(url)) => {
                let ca = match &cfg.client_connect_ca_file {
                    Some(p) => Some(std::fs::read(p).with_context(|| {
                        format!("reading client_connect_ca_file {}", p.display())
                    })?),
                    None => None,
                };
                Some(Self::http(url, ca.as_deref(), &cfg.name, timeout)?)
            }
            (None, None) => None,
        })
    }

    /// The HTTP variant: `url` is `http://…` or `https://…`; `ca_pem` replaces the web roots
    /// for https (a private CA).
    pub fn http(
        url: &str,
        ca_pem: Option<&[u8]>,
        endpoint: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = ca_pem {
            let certs = ureq::tls::parse_pem(pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            if certs.is_empty() {
                anyhow::bail!("client_connect_ca_file holds no PEM CERTIFICATE");
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(Self {
            target: HookTarget::Http {
                url: url.to_owned(),
                agent,
            },
            endpoint: endpoint.to_owned(),
            timeout,
        })
    }

    /// Asks the program or the URL about one connection; `Err` carries the message for
    /// `AUTH_FAILED`: the hook's own on a denial (`hook_denied`), ours on any failure
    /// (`hook_timeout`, `hook_error`).
    pub fn decide(&self, link: Link, req: &AuthRequest, groups: &[String]) -> Result<(), Refusal> {
        let request = json!({
            "connection-id": format!("{link}"),
            "endpoint-id": self.endpoint,
            "common-name": req.identity.common_name,
            "username": if req.username.is_empty() { &req.identity.common_name } else { &req.username },
            "platform": req.peer_info.platform().unwrap_or(""),
            "platform-version": req.peer_info.get("IV_PLAT_VER").unwrap_or(""),
            "public-ip": link.addr().ip().to_string(),
            "client-openvpn-version": req.peer_info.version().unwrap_or(""),
            "groups": groups,
            "schema-version": "v1",
        });
        let out = match &self.target {
            HookTarget::Program(p) => self.run_program(p, &request)?,
            HookTarget::Http { url, agent } => self.post(url, agent, &request)?,
        };
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|_| hook_error("connection handler gave no valid answer"))?;
        if v["allow"] == serde_json::Value::Bool(true) {
            Ok(())
        } else {
            let msg = v["error-msg-on-denied-connection"]
                .as_str()
                .unwrap_or("connection refused by policy");
            // It goes into AUTH_FAILED: printable, no commas needed, bounded.
            Err(Refusal::new(
                FailureCode::HookDenied,
                crate::openvpn::options::sanitize_text(msg, 200),
            ))
        }
    }

    fn run_program(&self, program: &Path, request: &serde_json::Value) -> Result<String, Refusal> {
        use std::os::unix::process::CommandExt;
        // Not the agent's environment (it may hold secrets, and a program a hook author
        // wrote should not depend on how the agent was started): the request is on stdin,
        // and only PATH is passed, so `#!/usr/bin/env` scripts and bare commands resolve.
        let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
        let mut child = Command::new(program)
            .env_clear()
            .env("PATH", path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: a timeout kills what it started too (`sh -c` wrappers).
            .process_group(0)
            .spawn()
            .map_err(|e| {
                tracing::error!(program = %program.display(), error = %e, "client-connect hook cannot start");
                hook_error("connection handler unavailable")
            })?;
        let group = child.id() as libc::pid_t;
        // stdin and stdout on threads of their own: a hook that writes more than the pipe
        // holds (or reads late) must not stall until the timeout.
        if let Some(mut stdin) = child.stdin.take() {
            let body = request.to_string();
            std::thread::spawn(move || {
                let _ = stdin.write_all(body.as_bytes());
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(mut so) = child.stdout.take() {
            std::thread::spawn(move || {
                // Bounded: the answer is a small object; the rest is read and dropped.
                let mut out = Vec::new();
                let _ = so.by_ref().take(MAX_ANSWER + 1).read_to_end(&mut out);
                let _ = std::io::copy(&mut so, &mut std::io::sink());
                let _ = tx.send(out);
            });
        }
        let end = Instant::now() + self.timeout;
        let give_up = |child: &mut std::process::Child| {
            // SAFETY: kill(2) of the group led by our own child, which is not reaped yet.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            tracing::warn!(program = %program.display(), "client-connect hook timed out");
            Err(timed_out())
        };
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => return give_up(&mut child),
            }
        };
        // The answer is complete when every writer closed stdout (a background process of
        // the hook may hold it): within the same deadline.
        let out = match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(out) => out,
            Err(_) => return give_up(&mut child),
        };
        if !status.success() {
            return Err(hook_error("connection handler failed"));
        }
        if out.len() as u64 > MAX_ANSWER {
            tracing::warn!(program = %program.display(), "client-connect hook answered more than 64 KiB");
            return Err(hook_error("connection handler gave no valid answer"));
        }
        String::from_utf8(out).map_err(|_| hook_error("connection handler gave no valid answer"))
    }

    fn post(
        &self,
        url: &str,
        agent: &ureq::Agent,
        request: &serde_json::Value,
    ) -> Result<String, Refusal> {
        let resp = agent
            .post(url)
            .header("content-type", "application/json")
            .send(request.to_string());
        let mut resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Timeout(_)) => {
                tracing::warn!(url = %loggable(url), "client-connect hook timed out");
                return Err(timed_out());
            }
            Err(e) => {
                // ureq's error text can quote the URL too.
                let e = e.to_string().replace(url, &loggable(url));
                tracing::error!(url = %loggable(url), error = %e, "client-connect hook unreachable");
                return Err(hook_error("connection handler unavailable"));
            }
        };
        if !resp.status().is_success() {
            tracing::warn!(url = %loggable(url), status = %resp.status(), "client-connect hook answered with an error status");
            return Err(hook_error("connection handler failed"));
        }
        match resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
        {
            Ok(body) => Ok(body),
            Err(ureq::Error::Timeout(_)) => Err(timed_out()),
            Err(_) => Err(hook_error("connection handler gave no valid answer")),
        }
    }
}

fn hook_error(message: &str) -> Refusal {
    Refusal::new(FailureCode::HookError, message)
}

fn timed_out() -> Refusal {
    Refusal::new(FailureCode::HookTimeout, "connection handler timed out")
}

/// `scheme://host[:port]/path` of a hook URL: userinfo and query often carry a key
/// (`https://user:pass@…`, `?code=…`), which must not reach the logs.
fn loggable(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..end];
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
#[path = "hook_tests.rs"]
mod tests;
