//! The hook against scripts and local HTTP(S) servers.
use super::*;
use crate::openvpn::crypto::Cipher;
use crate::openvpn::keys::Password;
use crate::openvpn::options::PeerInfo;
use crate::openvpn::packet::KeyId;
use crate::openvpn::tls::ClientIdentity;
use std::os::unix::fs::PermissionsExt;

fn req() -> AuthRequest {
    AuthRequest {
        session: 1,
        key_id: KeyId::ZERO,
        initial: true,
        identity: ClientIdentity {
            common_name: "alice".into(),
            serial_hex: "01".into(),
            not_after: std::time::SystemTime::now(),
            issuer: "CN=test".into(),
        },
        username: String::new(),
        password: Password::default(),
        peer_info: PeerInfo::parse("IV_VER=2.6.14\nIV_PLAT=linux\n"),
        cipher: Cipher::Aes256Gcm,
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[test]
fn allow_deny_timeout_and_garbage() {
    let dir = std::env::temp_dir().join(format!("pc-hook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = Link::Udp {
        listener: 0,
        addr: "192.0.2.11:5000".parse().unwrap(),
    };
    // The request reaches the program: it allows alice on linux only.
    let allow = script(
        &dir,
        "allow",
        r#"in=$(cat); case "$in" in *'"common-name":"alice"'*'"platform":"linux"'*) echo '{"allow":true,"schema-version":"v1"}';; *) echo '{"allow":false}';; esac"#,
    );
    let deny = script(
        &dir,
        "deny",
        r#"cat >/dev/null; echo '{"allow":false,"error-msg-on-denied-connection":"device not compliant"}'"#,
    );
    let garbage = script(&dir, "garbage", "cat >/dev/null; echo hello");
    let fails = script(&dir, "fails", "cat >/dev/null; exit 3");
    let slow = script(&dir, "slow", "sleep 5");
    let h = |p: &Path| ConnectHook::new(p, "corp");
    assert_eq!(h(&allow).decide(link, &req(), &[]), Ok(()));
    assert_eq!(
        h(&deny).decide(link, &req(), &[]),
        Err(Refusal::new(
            FailureCode::HookDenied,
            "device not compliant"
        ))
    );
    assert!(h(&garbage).decide(link, &req(), &[]).is_err());
    assert!(h(&fails).decide(link, &req(), &[]).is_err());
    let mut s = h(&slow);
    s.timeout = Duration::from_millis(300);
    assert_eq!(s.decide(link, &req(), &[]), Err(timed_out()));
    assert!(h(&dir.join("missing")).decide(link, &req(), &[]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The program sees PATH and nothing else of the agent's environment (the shell adds
/// only its own PWD, SHLVL, OLDPWD and `_`).
#[test]
fn the_program_gets_no_agent_environment() {
    let dir = std::env::temp_dir().join(format!("pc-hook-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = Link::Udp {
        listener: 0,
        addr: "192.0.2.12:5000".parse().unwrap(),
    };
    let env = script(
        &dir,
        "env",
        r#"cat >/dev/null
extra=$(env | cut -d= -f1 | grep -v -x -e PATH -e PWD -e OLDPWD -e SHLVL -e _ | tr '\n' ' ')
if [ -z "$extra" ] && [ -n "$PATH" ]; then echo '{"allow":true}'
else echo "{\"allow\":false,\"error-msg-on-denied-connection\":\"env: $extra\"}"; fi"#,
    );
    assert!(
        std::env::vars_os().any(|(k, _)| k != "PATH"),
        "the test process has more than PATH in its environment"
    );
    assert_eq!(
        ConnectHook::new(&env, "corp").decide(link, &req(), &[]),
        Ok(())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads one HTTP/1.1 request from `s` and answers by path; the request body, or None if
/// the request did not arrive (a refused TLS handshake).
fn answer(s: &mut (impl Read + Write)) -> Option<String> {
    let mut req = Vec::new();
    let mut byte = [0u8; 1];
    while !req.ends_with(b"\r\n\r\n") {
        if req.len() > 16 * 1024 || s.read(&mut byte).ok()? == 0 {
            return None;
        }
        req.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&req).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let len = head
        .lines()
        .find_map(|h| {
            h.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    s.read_exact(&mut body).ok()?;
    let (status, answer) = match path.as_str() {
        "/allow" => ("200 OK", r#"{"allow":true}"#),
        "/deny" => (
            "200 OK",
            r#"{"allow":false,"error-msg-on-denied-connection":"outside office hours"}"#,
        ),
        "/garbage" => ("200 OK", "hello"),
        "/slow" => {
            std::thread::sleep(Duration::from_millis(1500));
            ("200 OK", r#"{"allow":true}"#)
        }
        _ => ("500 Internal Server Error", r#"{"allow":true}"#),
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = s.flush();
    Some(String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn big_answers_and_leftover_children() {
    let dir = std::env::temp_dir().join(format!("pc-hook-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = Link::Udp {
        listener: 0,
        addr: "192.0.2.11:5000".parse().unwrap(),
    };
    // More than a pipe holds: no valid answer, at once (not a timeout).
    let big = script(
        &dir,
        "big",
        "cat >/dev/null; head -c 200000 /dev/zero | tr '\\0' ' '; echo '{\"allow\":true}'",
    );
    let mut h = ConnectHook::new(&big, "corp");
    h.timeout = Duration::from_secs(3);
    let t = Instant::now();
    assert_eq!(
        h.decide(link, &req(), &[]).map_err(|r| r.message),
        Err("connection handler gave no valid answer".into())
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // A timeout kills the hook's whole process group, not just the shell.
    let pidfile = dir.join("pid");
    let wrapper = script(
        &dir,
        "wrapper",
        &format!("sleep 30 & echo $! > {}; wait", pidfile.display()),
    );
    let mut h = ConnectHook::new(&wrapper, "corp");
    h.timeout = Duration::from_millis(500);
    assert_eq!(
        h.decide(link, &req(), &[]).map_err(|r| r.message),
        Err("connection handler timed out".into())
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    let t = Instant::now();
    while !gone() && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive = !gone();
    if alive {
        // SAFETY: the test's own leftover; do not leave it running.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(!alive, "the hook's child {pid} survived the timeout");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn url_secrets_stay_out_of_the_log() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://hookuser:s3cret-pass@{closed}/allow?code=s3cret-key");
    let h = ConnectHook::http(&url, None, "corp", Duration::from_secs(2)).unwrap();
    let link = Link::Udp {
        listener: 0,
        addr: "192.0.2.11:5000".parse().unwrap(),
    };
    let r = tracing::subscriber::with_default(sub, || h.decide(link, &req(), &[]));
    assert_eq!(
        r.map_err(|r| r.message),
        Err("connection handler unavailable".into())
    );
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains(&format!("http://{closed}/allow")), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
    assert!(!format!("{:?}", h.target).contains("s3cret"));
    assert_eq!(
        loggable("https://u:p@h.example:8443/a/b?code=x#f"),
        "https://h.example:8443/a/b"
    );
}

/// A one-thread HTTP/1.1 server on 127.0.0.1 answering by path; it records the request
/// bodies. Serves at most `n` requests, each bounded in time.
fn http_server(n: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { break };
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            bodies.extend(answer(&mut s));
        }
        bodies
    });
    (base, t)
}

/// The same over TLS (rustls, ring) with `cert` for 127.0.0.1; `n` connections, bodies of
/// the requests that got through the handshake.
fn https_server(
    cert: &crate::pki::IssuedCert,
    n: usize,
) -> (String, std::thread::JoinHandle<Vec<String>>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
        )
        .unwrap(),
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for _ in 0..n {
            let Ok((s, _)) = l.accept() else { break };
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, s);
            bodies.extend(answer(&mut tls));
            // close_notify, so the client reads a clean end of the answer.
            tls.conn.send_close_notify();
            let _ = tls.conn.complete_io(&mut tls.sock);
        }
        bodies
    });
    (base, t)
}

#[test]
fn http_allow_deny_error_garbage_timeout() {
    let link = Link::Udp {
        listener: 0,
        addr: "192.0.2.11:5000".parse().unwrap(),
    };
    let (base, server) = http_server(5);
    let h = |path: &str, t: Duration| {
        ConnectHook::http(&format!("{base}{path}"), None, "corp", t).unwrap()
    };
    let long = Duration::from_secs(5);
    let groups = vec!["S-1-5-21-1-2-3-1101".to_owned()];
    assert_eq!(h("/allow", long).decide(link, &req(), &groups), Ok(()));
    assert_eq!(
        h("/deny", long).decide(link, &req(), &[]),
        Err(Refusal::new(
            FailureCode::HookDenied,
            "outside office hours"
        ))
    );
    assert_eq!(
        h("/garbage", long).decide(link, &req(), &[]),
        Err(hook_error("connection handler gave no valid answer"))
    );
    // A 500 refuses even with an allowing body.
    assert_eq!(
        h("/error", long).decide(link, &req(), &[]),
        Err(hook_error("connection handler failed"))
    );
    assert_eq!(
        h("/slow", Duration::from_millis(300)).decide(link, &req(), &[]),
        Err(timed_out())
    );
    let bodies = server.join().unwrap();
    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(first["common-name"], "alice");
    assert_eq!(first["endpoint-id"], "corp");
    assert_eq!(first["groups"], serde_json::json!(groups));
    assert_eq!(first["schema-version"], "v1");
    // Nothing listens on a closed port: refused, not allowed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let h = ConnectHook::http(&format!("http://{closed}/"), None, "corp", long).unwrap();
    assert_eq!(
        h.decide(link, &req(), &[]),
        Err(hook_error("connection handler unavailable"))
    );
    assert!(ConnectHook::http("https://x/", Some(b"no pem"), "corp", long).is_err());
}

/// An `https://` hook with a private CA, configured as in an endpoint file
/// (`client_connect_url` + a relative `client_connect_ca_file`): allow and deny with its
/// message go through; a server whose certificate another CA signed is refused (fail
/// closed) and never sees the request; without the CA file the web roots do not trust
/// the private CA either.
#[test]
fn https_with_a_private_ca() {
    use crate::pki::{CertificateAuthority, Validity};
    let v = || Validity::days_from_now(1);
    let ca = CertificateAuthority::generate("hook CA", v()).unwrap();
    let other = CertificateAuthority::generate("hook CA", v()).unwrap();
    let (good, good_srv) = https_server(&ca.issue_server("127.0.0.1", v()).unwrap(), 3);
    let (rogue, rogue_srv) = https_server(&other.issue_server("127.0.0.1", v()).unwrap(), 1);
    let dir = std::env::temp_dir().join(format!("pc-hook-https-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hook-ca.pem"), ca.cert_pem()).unwrap();
    let hook = |url: &str, ca_file: bool| {
        let file = dir.join("endpoint.toml");
        let ca_line = if ca_file {
            "client_connect_ca_file = \"hook-ca.pem\"\n"
        } else {
            ""
        };
        std::fs::write(
            &file,
            format!(
                "name = \"corp\"\nclient_cidr = \"10.100.0.0/22\"\nlisten = [\"udp://0.0.0.0:1194\"]\n\
                 client_connect_url = \"{url}\"\n{ca_line}client_connect_timeout_secs = 5\n\
                 [tls]\ncert = \"s.crt\"\nkey = \"s.key\"\nclient_ca = \"ca.crt\"\n"
            ),
        )
        .unwrap();
        let cfg = crate::config::EndpointConfig::load_unvalidated(&file).unwrap();
        ConnectHook::from_config(&cfg).unwrap().expect("a hook")
    };
    let link = Link::Udp {
        listener: 0,
        addr: "192.0.2.11:5000".parse().unwrap(),
    };
    assert_eq!(
        hook(&format!("{good}/allow"), true).decide(link, &req(), &[]),
        Ok(())
    );
    assert_eq!(
        hook(&format!("{good}/deny"), true).decide(link, &req(), &[]),
        Err(Refusal::new(
            FailureCode::HookDenied,
            "outside office hours"
        ))
    );
    assert_eq!(
        hook(&format!("{rogue}/allow"), true).decide(link, &req(), &[]),
        Err(hook_error("connection handler unavailable"))
    );
    assert_eq!(
        hook(&format!("{good}/allow"), false).decide(link, &req(), &[]),
        Err(hook_error("connection handler unavailable"))
    );
    let bodies = good_srv.join().unwrap();
    assert_eq!(
        bodies.len(),
        2,
        "allow and deny reached the server: {bodies:?}"
    );
    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(first["common-name"], "alice");
    assert!(
        rogue_srv.join().unwrap().is_empty(),
        "the request went to a server the CA did not sign"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
