//! Prometheus metrics of a running endpoint, served at `GET /metrics` on `[metrics] listen`.
//!
//! The agent's main loop updates the values every second from the tunnel's events and the
//! data path's counters; the HTTP side only encodes the registry. The HTTP handling is the
//! minimum a scraper needs (one request per connection, bounded read, `Connection: close`).
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::openvpn::server::ServerEvent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Kind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Crl {
    pub crl: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Map {
    pub map: String,
}

pub struct Metrics {
    registry: Registry,
    pub active_connections: Gauge,
    pub connection_attempts: Family<Reason, Counter>,
    pub auth_failures: Family<Reason, Counter>,
    pub handshake_seconds: Histogram,
    pub crl_days_to_expiry: Family<Crl, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// 1 while the last reload of the TLS files (CA, certificate, key, CRLs) failed.
    pub tls_reload_failing: Gauge,
    pub ingress_bytes: Counter,
    pub egress_bytes: Counter,
    pub ingress_packets: Counter,
    pub egress_packets: Counter,
    pub drops: Family<Reason, Counter>,
    pub policy_generation: Gauge,
    /// Fleet mode: 1 while this gateway is out of the fleet (etcd out of reach, its lease
    /// lost, or the policy not followed); 0 in the fleet and standalone.
    pub fleet_degraded: Gauge,
    /// Fleet mode: 1 while the gateway's lease is valid (new sessions can be admitted).
    pub fleet_lease_valid: Gauge,
    pub reconcile_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub map_entries: Family<Map, Gauge>,
    pub map_capacity: Family<Map, Gauge>,
    pub tunnel_packets: Family<Kind, Counter>,
    pub tunnel_drops: Family<Reason, Counter>,
    pub tcp_connections: Family<Outcome, Counter>,
    /// Last absolute values of monotonic sources (by family and label), to turn them into
    /// counter increments.
    last: std::collections::BTreeMap<(&'static str, String), u64>,
}

/// Adds to `family` what each monotonic total grew by since the last call.
fn add_growth<L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug>(
    last: &mut std::collections::BTreeMap<(&'static str, String), u64>,
    family_name: &'static str,
    family: &Family<L, Counter>,
    totals: impl IntoIterator<Item = (String, u64)>,
    label: impl Fn(String) -> L,
) {
    for (name, v) in totals {
        let seen = last.entry((family_name, name.clone())).or_insert(0);
        // Created at 0 too, so that `rate()` sees a series before the first event.
        family
            .get_or_create(&label(name))
            .inc_by(v.saturating_sub(*seen));
        *seen = (*seen).max(v);
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let m = Metrics {
            active_connections: Gauge::default(),
            connection_attempts: Family::default(),
            auth_failures: Family::default(),
            handshake_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            crl_days_to_expiry: Family::default(),
            tls_reload_failing: Gauge::default(),
            ingress_bytes: Counter::default(),
            egress_bytes: Counter::default(),
            ingress_packets: Counter::default(),
            egress_packets: Counter::default(),
            drops: Family::default(),
            policy_generation: Gauge::default(),
            fleet_degraded: Gauge::default(),
            fleet_lease_valid: Gauge::default(),
            reconcile_seconds: Gauge::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            tunnel_packets: Family::default(),
            tunnel_drops: Family::default(),
            tcp_connections: Family::default(),
            last: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "active_connections",
            "Established sessions",
            m.active_connections.clone(),
        );
        registry.register(
            "connection_attempts",
            "Connection attempts by status (successful, failed)",
            m.connection_attempts.clone(),
        );
        registry.register(
            "authentication_failures",
            "Refused or failed connection attempts by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "From the first packet to the push",
            m.handshake_seconds.clone(),
        );
        registry.register(
            "crl_days_to_expiry",
            "Days until each CRL's nextUpdate (negative: expired)",
            m.crl_days_to_expiry.clone(),
        );
        registry.register(
            "tls_reload_failing",
            "1 while the last reload of the TLS files failed (the previous ones stay in force, retried every second)",
            m.tls_reload_failing.clone(),
        );
        registry.register(
            "ingress_bytes",
            "Bytes from clients into the networks (ended sessions included)",
            m.ingress_bytes.clone(),
        );
        registry.register(
            "egress_bytes",
            "Bytes from the networks to clients (ended sessions included)",
            m.egress_bytes.clone(),
        );
        registry.register(
            "ingress_packets",
            "Packets from clients into the networks",
            m.ingress_packets.clone(),
        );
        registry.register(
            "egress_packets",
            "Packets from the networks to clients",
            m.egress_packets.clone(),
        );
        registry.register(
            "datapath_drops",
            "Packets dropped by the XDP data path, by reason",
            m.drops.clone(),
        );
        registry.register(
            "policy_generation",
            "Active policy generation",
            m.policy_generation.clone(),
        );
        registry.register(
            "fleet_degraded",
            "1 while this fleet gateway is out of the fleet (etcd out of reach, lease lost)",
            m.fleet_degraded.clone(),
        );
        registry.register(
            "fleet_lease_valid",
            "1 while this fleet gateway's etcd lease is valid (new sessions admitted)",
            m.fleet_lease_valid.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of the last policy reconcile",
            m.reconcile_seconds.clone(),
        );
        registry.register(
            "map_entries",
            "Entries in data-path maps",
            m.map_entries.clone(),
        );
        registry.register(
            "map_capacity",
            "Maximum entries of data-path maps (fill = map_entries / map_capacity)",
            m.map_capacity.clone(),
        );
        registry.register(
            "tunnel_packets",
            "Datagrams and TAP frames the tunnel moved, and stateless handshake replies",
            m.tunnel_packets.clone(),
        );
        registry.register(
            "tunnel_drops",
            "Packets the tunnel refused before the data path, by reason",
            m.tunnel_drops.clone(),
        );
        registry.register(
            "tcp_connections",
            "TCP connections accepted, refused at a limit, or closed at a timeout",
            m.tcp_connections.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn on_event(&self, ev: &ServerEvent, handshake: Option<Duration>) {
        match ev {
            ServerEvent::Connected { .. } => {
                self.active_connections.inc();
                self.connection_attempts
                    .get_or_create(&Reason {
                        reason: "successful".into(),
                    })
                    .inc();
                if let Some(h) = handshake {
                    self.handshake_seconds.observe(h.as_secs_f64());
                }
            }
            ServerEvent::Disconnected {
                tunnel_addr,
                reason,
                ..
            } => {
                if tunnel_addr.is_some() {
                    self.active_connections.dec();
                } else {
                    self.connection_attempts
                        .get_or_create(&Reason {
                            reason: "failed".into(),
                        })
                        .inc();
                    self.auth_failures
                        .get_or_create(&Reason {
                            reason: reason.failure_code().as_str().into(),
                        })
                        .inc();
                }
            }
            _ => {}
        }
    }

    /// Sets monotonic drop totals (as the data path counts them).
    pub fn set_drops(&mut self, totals: &[(String, u64)]) {
        add_growth(
            &mut self.last,
            "datapath_drops",
            &self.drops,
            totals.iter().cloned(),
            |reason| Reason { reason },
        );
    }

    /// Sets the tunnel's monotonic totals.
    pub fn set_tunnel(&mut self, t: &crate::io::TunnelTotals) {
        let owned = |v: &[(&str, u64)]| {
            v.iter()
                .map(|(k, n)| ((*k).to_owned(), *n))
                .collect::<Vec<_>>()
        };
        add_growth(
            &mut self.last,
            "tunnel_packets",
            &self.tunnel_packets,
            owned(&t.packets),
            |kind| Kind { kind },
        );
        add_growth(
            &mut self.last,
            "tunnel_drops",
            &self.tunnel_drops,
            owned(&t.drops),
            |reason| Reason { reason },
        );
        add_growth(
            &mut self.last,
            "tcp_connections",
            &self.tcp_connections,
            owned(&t.tcp),
            |outcome| Outcome { outcome },
        );
    }

    pub fn set_crls(&self, crls: &[crate::openvpn::tls::CrlStatus]) {
        let now = SystemTime::now();
        for c in crls {
            let days = match c.next_update {
                Some(n) => match n.duration_since(now) {
                    Ok(d) => d.as_secs_f64() / 86_400.0,
                    Err(e) => -(e.duration().as_secs_f64() / 86_400.0),
                },
                None => f64::INFINITY,
            };
            self.crl_days_to_expiry
                .get_or_create(&Crl {
                    crl: c.path.display().to_string(),
                })
                .set(days);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Mutex<Metrics>>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            // A request line and headers, bounded in size and time.
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics ") || req.starts_with("GET / ") {
                let body = metrics.lock().unwrap_or_else(|e| e.into_inner()).encode();
                ("200 OK", body)
            } else {
                ("404 Not Found", "only GET /metrics is served\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label is the refusal's code, whatever its message says (a hook's denial text that
    /// mentions "directory" is still `hook_denied`).
    #[test]
    fn failure_labels_are_the_refusal_codes() {
        use crate::openvpn::peer::Link;
        use crate::openvpn::verdict::{CloseReason, FailureCode, Refusal};
        let m = Metrics::new();
        let failed = |reason| ServerEvent::Disconnected {
            link: Link::Udp {
                listener: 0,
                addr: "192.0.2.1:1000".parse().unwrap(),
            },
            peer_id: 1,
            common_name: Some("alice".into()),
            username: Some("alice".into()),
            tunnel_addr: None,
            reason,
            rx_bytes: 0,
            tx_bytes: 0,
            duration: Duration::from_secs(1),
        };
        m.on_event(
            &failed(CloseReason::AuthFailed(Refusal::new(
                FailureCode::HookDenied,
                "directory group missing",
            ))),
            None,
        );
        m.on_event(
            &failed(CloseReason::AuthFailed(Refusal::temporary(
                FailureCode::DirectoryUnavailable,
                "directory unavailable",
            ))),
            None,
        );
        m.on_event(
            &failed(CloseReason::CertificateRefused {
                code: FailureCode::CertificateExpired,
                detail: "client certificate has expired".into(),
            }),
            None,
        );
        m.on_event(&failed(CloseReason::HandshakeTimeout), None);
        let out = m.encode();
        for label in [
            "hook_denied",
            "directory_unavailable",
            "certificate_expired",
            "handshake_timeout",
        ] {
            assert!(
                out.contains(&format!(
                    "portcullis_authentication_failures_total{{reason=\"{label}\"}} 1"
                )),
                "{label}: {out}"
            );
        }
        assert!(
            out.contains("portcullis_connection_attempts_total{reason=\"failed\"} 4"),
            "{out}"
        );
    }

    #[tokio::test]
    async fn scrape_over_http() {
        let mut m = Metrics::new();
        m.set_drops(&[("not_authorized".into(), 3)]);
        m.set_drops(&[("not_authorized".into(), 5)]);
        m.policy_generation.set(7);
        let m = Arc::new(Mutex::new(m));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(serve(l, m));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        task.abort();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(
            out.contains("portcullis_datapath_drops_total{reason=\"not_authorized\"} 5"),
            "{out}"
        );
        assert!(out.contains("portcullis_policy_generation 7"), "{out}");
        assert!(out.contains("portcullis_active_connections 0"), "{out}");
    }

    #[test]
    fn tunnel_counters_are_exported_as_growth() {
        use std::sync::atomic::Ordering;
        let stats = crate::io::TunnelStats::default();
        stats.data_spoofed.store(2, Ordering::Relaxed);
        stats.tcp_refused.store(1, Ordering::Relaxed);
        stats.server.lock().unwrap().reset_rate_limited = 4;
        let mut m = Metrics::new();
        m.set_tunnel(&stats.totals());
        stats.data_spoofed.store(5, Ordering::Relaxed);
        m.set_tunnel(&stats.totals());
        let out = m.encode();
        for line in [
            "portcullis_tunnel_drops_total{reason=\"data_spoofed_source\"} 5",
            "portcullis_tunnel_drops_total{reason=\"reset_rate_limited\"} 4",
            "portcullis_tcp_connections_total{outcome=\"refused\"} 1",
            "portcullis_tunnel_packets_total{kind=\"udp_rx\"} 0",
        ] {
            assert!(out.contains(line), "{line}: {out}");
        }
    }
}
