//! The connection log: one JSON object per line, with AWS Client VPN's field names, so tools
//! written for AWS connection logs read it unchanged. A record is written when a connection
//! attempt succeeds or fails, every `update_every` while it lasts (byte and packet counters
//! from the data path's per-session counters), and when it ends (`connection-reset`).
//!
//! A failed attempt's `connection-attempt-failure-reason` is a stable code
//! ([`FailureCode`](crate::openvpn::verdict::FailureCode): `invalid_credentials`, `rate_limited`, `hook_denied`, …, the same as the
//! authentication-failure metric's label), its `username` the user name that was tried, and
//! `connection-attempt-failure-detail` (ours, not AWS's) the human-readable reason.
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use portcullis_common::SessionStats;
use serde_json::{json, Value};

use crate::openvpn::peer::Link;
use crate::openvpn::server::ServerEvent;

struct Active {
    id: String,
    link: Link,
    common_name: String,
    /// The directory user name, or the common name without directory authentication.
    username: String,
    device_ip: Ipv4Addr,
    device_type: String,
    start: SystemTime,
    last_update: Instant,
}

pub struct ConnectionLog {
    out: Box<dyn Write + Send>,
    endpoint: String,
    active: BTreeMap<u32, Active>,
    update_every: Duration,
    seq: u64,
    /// The directory user name of a session (by peer id), when it has one.
    usernames: Option<Box<dyn Fn(u32) -> Option<String> + Send>>,
}

/// `YYYY-MM-DD HH:MM:SS` (UTC), the connection log's time format.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    // Civil date from days since the epoch (Howard Hinnant's algorithm), to avoid a date crate.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl ConnectionLog {
    pub fn open(path: &Path, endpoint: &str) -> std::io::Result<ConnectionLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self::to_writer(Box::new(f), endpoint))
    }

    pub fn to_writer(out: Box<dyn Write + Send>, endpoint: &str) -> ConnectionLog {
        ConnectionLog {
            out,
            endpoint: endpoint.to_owned(),
            active: BTreeMap::new(),
            usernames: None,
            update_every: Duration::from_secs(60),
            seq: 0,
        }
    }

    pub fn with_update_interval(mut self, d: Duration) -> Self {
        self.update_every = d;
        self
    }

    /// A connection id unique within this agent's life (pid and sequence number).
    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("cvpn-connection-{:08x}{:08x}", std::process::id(), self.seq)
    }

    fn write(&mut self, v: Value) {
        let mut line = v.to_string();
        line.push('\n');
        if let Err(e) = self.out.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "writing the connection log");
        }
        let _ = self.out.flush();
    }

    /// Where the `username` field comes from for sessions with a directory login.
    pub fn with_usernames(mut self, f: Box<dyn Fn(u32) -> Option<String> + Send>) -> Self {
        self.usernames = Some(f);
        self
    }

    fn record(
        &self,
        a: &Active,
        kind: &str,
        status: &str,
        reason: &str,
        stats: &SessionStats,
        end: Option<SystemTime>,
    ) -> Value {
        let now = SystemTime::now();
        let dur = end
            .unwrap_or(now)
            .duration_since(a.start)
            .map_or(0, |d| d.as_secs());
        json!({
            "connection-log-type": kind,
            "connection-attempt-status": status,
            "connection-attempt-failure-reason": reason,
            "connection-id": a.id,
            "client-vpn-endpoint-id": self.endpoint,
            "transport-protocol": if a.link.is_tcp() { "tcp" } else { "udp" },
            "connection-start-time": rfc3339(a.start),
            "connection-last-update-time": rfc3339(now),
            "client-ip": a.link.addr().ip().to_string(),
            "common-name": a.common_name,
            "device-type": a.device_type,
            "device-ip": a.device_ip.to_string(),
            "port": a.link.addr().port().to_string(),
            // Ingress = from the client into the network, as the data path counts it.
            "ingress-bytes": stats.ingress_bytes.to_string(),
            "egress-bytes": stats.egress_bytes.to_string(),
            "ingress-packets": stats.ingress_packets.to_string(),
            "egress-packets": stats.egress_packets.to_string(),
            "connection-end-time": end.map_or("NA".to_owned(), rfc3339),
            "username": a.username,
            "connection-duration-seconds": dur.to_string(),
        })
    }

    /// One server event; `stats` reads a session slot's data-path counters.
    pub fn on_event(&mut self, ev: &ServerEvent, stats: &dyn Fn(u32) -> SessionStats) {
        match ev {
            ServerEvent::Connected {
                link,
                peer_id,
                common_name,
                tunnel_addr,
                peer_info,
                ..
            } => {
                let username = self
                    .usernames
                    .as_ref()
                    .and_then(|f| f(*peer_id))
                    .filter(|u| !u.is_empty())
                    .unwrap_or_else(|| common_name.clone());
                let a = Active {
                    id: self.next_id(),
                    link: *link,
                    common_name: common_name.clone(),
                    username,
                    device_ip: *tunnel_addr,
                    device_type: peer_info.platform().unwrap_or("NA").to_owned(),
                    start: SystemTime::now(),
                    last_update: Instant::now(),
                };
                let v = self.record(
                    &a,
                    "connection-attempt",
                    "successful",
                    "NA",
                    &SessionStats::default(),
                    None,
                );
                self.write(v);
                self.active.insert(*peer_id, a);
            }
            ServerEvent::Disconnected {
                link,
                peer_id,
                common_name,
                username,
                tunnel_addr,
                reason,
                duration,
                ..
            } => match self.active.remove(peer_id) {
                Some(a) => {
                    let v = self.record(
                        &a,
                        "connection-reset",
                        "NA",
                        &reason.to_string(),
                        &stats(*peer_id),
                        Some(SystemTime::now()),
                    );
                    self.write(v);
                }
                None => {
                    // Never established: a failed attempt (TLS refused, AUTH_FAILED, timeout).
                    // The user name tried is recorded even when it does not exist: who is
                    // being guessed is what an audit of failures looks for.
                    let start = SystemTime::now() - *duration;
                    let cn = common_name.clone().unwrap_or_else(|| "NA".into());
                    let a = Active {
                        id: self.next_id(),
                        link: *link,
                        username: username.clone().unwrap_or_else(|| cn.clone()),
                        common_name: cn,
                        device_ip: tunnel_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        device_type: "NA".into(),
                        start,
                        last_update: Instant::now(),
                    };
                    let mut v = self.record(
                        &a,
                        "connection-attempt",
                        "failed",
                        reason.failure_code().as_str(),
                        &SessionStats::default(),
                        Some(SystemTime::now()),
                    );
                    v["connection-attempt-failure-detail"] = reason.to_string().into();
                    self.write(v);
                }
            },
            _ => {}
        }
    }

    /// Periodic counter updates of live connections.
    pub fn tick(&mut self, stats: &dyn Fn(u32) -> SessionStats) {
        let due: Vec<u32> = self
            .active
            .iter()
            .filter(|(_, a)| a.last_update.elapsed() >= self.update_every)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let s = stats(id);
            if let Some(a) = self.active.get(&id) {
                let v = self.record(a, "connection-attempt", "NA", "NA", &s, None);
                self.write(v);
            }
            if let Some(a) = self.active.get_mut(&id) {
                a.last_update = Instant::now();
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::openvpn::crypto::Cipher;
    use crate::openvpn::options::PeerInfo;
    use crate::openvpn::verdict::{CloseReason, FailureCode, Refusal};
    use std::sync::{Arc, Mutex};

    /// A log sink tests can read back (the flow log's tests use it too).
    pub(crate) struct Shared(pub Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn attempt_update_reset_and_failure_records() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut log = ConnectionLog::to_writer(Box::new(Shared(buf.clone())), "corp")
            .with_update_interval(Duration::ZERO)
            // Session 4 logged in to the directory as alice.smith with the certificate "alice".
            .with_usernames(Box::new(|peer| {
                (peer == 4).then(|| "alice.smith".to_owned())
            }));
        let link = Link::Udp {
            listener: 0,
            addr: "192.0.2.11:5000".parse().unwrap(),
        };
        let stats = |_| SessionStats {
            ingress_bytes: 100,
            ingress_packets: 2,
            egress_bytes: 300,
            egress_packets: 3,
        };
        log.on_event(
            &ServerEvent::Connected {
                link,
                session: 1,
                peer_id: 4,
                common_name: "alice".into(),
                tunnel_addr: Ipv4Addr::new(10, 100, 0, 7),
                cipher: Cipher::Aes256Gcm,
                tls_version: "TLSv1_3".into(),
                peer_info: PeerInfo::parse("IV_PLAT=linux\n"),
                handshake: Duration::from_millis(20),
            },
            &stats,
        );
        log.tick(&stats);
        let dis = |tunnel_addr, username: Option<&str>, reason| ServerEvent::Disconnected {
            link,
            peer_id: 4,
            common_name: Some("alice".into()),
            username: username.map(str::to_owned),
            tunnel_addr,
            reason,
            rx_bytes: 0,
            tx_bytes: 0,
            duration: Duration::from_secs(3),
        };
        log.on_event(
            &dis(
                Some(Ipv4Addr::new(10, 100, 0, 7)),
                Some("alice.smith"),
                CloseReason::ClientExit,
            ),
            &stats,
        );
        // Failed attempts: a revoked certificate (no user name sent), a wrong password for
        // a user name other than the certificate's, a hook's denial, a TLS failure before any
        // certificate.
        log.on_event(
            &dis(
                None,
                None,
                CloseReason::CertificateRefused {
                    code: FailureCode::CertificateRevoked,
                    detail: "client certificate is revoked".into(),
                },
            ),
            &stats,
        );
        log.on_event(
            &dis(
                None,
                Some("mallory"),
                CloseReason::AuthFailed(Refusal::new(
                    FailureCode::InvalidCredentials,
                    "invalid username or password",
                )),
            ),
            &stats,
        );
        log.on_event(
            &dis(
                None,
                Some("alice.smith"),
                CloseReason::AuthFailed(Refusal::new(
                    FailureCode::HookDenied,
                    "outside office hours",
                )),
            ),
            &stats,
        );
        log.on_event(
            &ServerEvent::Disconnected {
                link,
                peer_id: 5,
                common_name: None,
                username: None,
                tunnel_addr: None,
                reason: CloseReason::TlsError("peer sent no certificates".into()),
                rx_bytes: 0,
                tx_bytes: 0,
                duration: Duration::from_secs(1),
            },
            &stats,
        );
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let recs: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(recs.len(), 7, "{text}");
        assert_eq!(recs[0]["connection-attempt-status"], "successful");
        assert_eq!(recs[0]["device-ip"], "10.100.0.7");
        assert_eq!(recs[0]["device-type"], "linux");
        assert_eq!(recs[0]["client-ip"], "192.0.2.11");
        assert_eq!(recs[0]["common-name"], "alice");
        assert_eq!(recs[0]["username"], "alice.smith");
        assert_eq!(recs[2]["username"], "alice.smith");
        assert_eq!(recs[1]["egress-bytes"], "300");
        assert_eq!(recs[2]["connection-log-type"], "connection-reset");
        assert_eq!(recs[2]["connection-id"], recs[0]["connection-id"]);
        assert_eq!(recs[2]["connection-attempt-failure-reason"], "client exit");
        let failed = |i: usize, reason: &str, cn: &str, user: &str, detail: &str| {
            let r = &recs[i];
            assert_eq!(r["connection-log-type"], "connection-attempt", "{r}");
            assert_eq!(r["connection-attempt-status"], "failed", "{r}");
            assert_eq!(r["connection-attempt-failure-reason"], reason, "{r}");
            assert_eq!(r["common-name"], cn, "{r}");
            assert_eq!(r["username"], user, "{r}");
            assert_eq!(r["device-ip"], "0.0.0.0", "{r}");
            assert!(
                r["connection-attempt-failure-detail"]
                    .as_str()
                    .unwrap()
                    .contains(detail),
                "{r}"
            );
            assert_ne!(r["connection-id"], recs[0]["connection-id"]);
        };
        failed(3, "certificate_revoked", "alice", "alice", "revoked");
        failed(
            4,
            "invalid_credentials",
            "alice",
            "mallory",
            "authentication failed: invalid username or password",
        );
        failed(
            5,
            "hook_denied",
            "alice",
            "alice.smith",
            "outside office hours",
        );
        failed(6, "tls", "NA", "NA", "no certificates");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18 11:06:40");
    }
}
