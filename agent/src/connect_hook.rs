//! The client-connect hook, like AWS Client VPN's client-connect handler: a program run for
//! every new connection after the certificate checked out. It gets a JSON request on stdin
//! (`connection-id`, `endpoint-id`, `common-name`, `username`, `platform`,
//! `platform-version`, `public-ip`, `client-openvpn-version`, `groups`, `schema-version`) and
//! answers with a JSON object on stdout (`allow`, `error-msg-on-denied-connection`,
//! `schema-version`). It has 30 s; anything else — a timeout, a non-zero exit, output that is
//! not such an object — refuses the connection (fail closed, as AWS).
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::openvpn::peer::Link;
use crate::openvpn::session::AuthRequest;

pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct ConnectHook {
    pub program: PathBuf,
    pub endpoint: String,
    pub timeout: Duration,
}

impl ConnectHook {
    pub fn new(program: &Path, endpoint: &str) -> Self {
        Self {
            program: program.to_path_buf(),
            endpoint: endpoint.to_owned(),
            timeout: TIMEOUT,
        }
    }

    /// Runs the program for one connection; `Err` is the message for `AUTH_FAILED`.
    pub fn decide(&self, link: Link, req: &AuthRequest, groups: &[String]) -> Result<(), String> {
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
        let mut child = Command::new(&self.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                tracing::error!(program = %self.program.display(), error = %e, "client-connect hook cannot start");
                "connection handler unavailable".to_owned()
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(request.to_string().as_bytes());
        }
        let end = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    tracing::warn!(program = %self.program.display(), "client-connect hook timed out");
                    return Err("connection handler timed out".into());
                }
            }
        };
        let mut out = String::new();
        if let Some(mut so) = child.stdout.take() {
            // Bounded: the answer is a small object.
            let _ = so.by_ref().take(64 * 1024).read_to_string(&mut out);
        }
        if !status.success() {
            return Err("connection handler failed".into());
        }
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .map_err(|_| "connection handler gave no valid answer".to_owned())?;
        if v["allow"] == serde_json::Value::Bool(true) {
            Ok(())
        } else {
            let msg = v["error-msg-on-denied-connection"]
                .as_str()
                .unwrap_or("connection refused by policy");
            // It goes into AUTH_FAILED: printable, no commas needed, bounded.
            Err(crate::openvpn::options::sanitize_text(msg, 200))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openvpn::crypto::Cipher;
    use crate::openvpn::keys::Password;
    use crate::openvpn::options::PeerInfo;
    use crate::openvpn::packet::KeyId;
    use crate::openvpn::tls::ClientIdentity;
    use std::os::unix::fs::PermissionsExt;

    fn req() -> AuthRequest {
        AuthRequest {
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
            Err("device not compliant".into())
        );
        assert!(h(&garbage).decide(link, &req(), &[]).is_err());
        assert!(h(&fails).decide(link, &req(), &[]).is_err());
        let mut s = h(&slow);
        s.timeout = Duration::from_millis(300);
        assert_eq!(
            s.decide(link, &req(), &[]),
            Err("connection handler timed out".into())
        );
        assert!(h(&dir.join("missing")).decide(link, &req(), &[]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
