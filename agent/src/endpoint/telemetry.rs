//! What the endpoint tells operators about its traffic: session events into Prometheus
//! metrics and the connection log, per-session counters into traffic totals, and the data
//! path's deny events (and, opt-in, allowed flows) into the flow log.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use portcullis_common::{DenyEvent, SessionStats};

use super::live::{lock, SharedLive};
use super::status::{map_fill, Connections};
use crate::config::EndpointConfig;
use crate::connlog::ConnectionLog;
use crate::datapath::{self, Datapath};
use crate::flowlog::{FlowLog, FlowTracker, FlowUser};
use crate::metrics::Metrics;
use crate::openvpn::server::ServerEvent;

pub struct Telemetry {
    pub metrics: Arc<Mutex<Metrics>>,
    /// The live sessions (for `connections list` and the flow log's user names).
    pub connections: Connections,
    connlog: Option<ConnectionLog>,
    flowlog: Option<(FlowLog, RingBuf<MapData>)>,
    allowed_flows: Option<FlowTracker>,
    /// Traffic of sessions that ended.
    ended: SessionStats,
    /// Traffic already counted into the metrics.
    counted: SessionStats,
}

fn add(total: &mut SessionStats, s: SessionStats) {
    total.ingress_bytes += s.ingress_bytes;
    total.egress_bytes += s.egress_bytes;
    total.ingress_packets += s.ingress_packets;
    total.egress_packets += s.egress_packets;
}

/// The session in counter slot `slot`, for the flow log: its directory user name where there
/// is one, and every group it has (local and directory), as the data path sees them.
fn flow_user(live: &SharedLive, connections: &Connections, slot: u32) -> Option<FlowUser> {
    let Some((ServerEvent::Connected { common_name, .. }, _)) = connections.get(&slot) else {
        return None;
    };
    let l = lock(live);
    let grant = l.grants.get(slot).unwrap_or_default();
    let groups =
        crate::auth::combined_groups(&|u: &str| l.policy.local_groups_of(u), common_name, &grant);
    let name = if grant.username.is_empty() {
        common_name.clone()
    } else {
        grant.username
    };
    Some(FlowUser { name, groups })
}

impl Telemetry {
    /// Opens the logs the file asks for (the flow log takes the data path's deny events).
    pub fn open(cfg: &EndpointConfig, dp: &mut Datapath, live: &SharedLive) -> Result<Self> {
        let flowlog = match &cfg.logging.flow_log {
            Some(p) => Some((
                FlowLog::open(p)
                    .with_context(|| format!("opening the flow log {}", p.display()))?,
                dp.maps.take_deny_events()?,
            )),
            None => None,
        };
        let connlog = match &cfg.logging.connection_log {
            Some(p) => Some(
                ConnectionLog::open(p, &cfg.name)
                    .with_context(|| format!("opening the connection log {}", p.display()))?
                    .with_usernames({
                        let grants = lock(live).grants.clone();
                        Box::new(move |peer| grants.get(peer).map(|g| g.username))
                    }),
            ),
            None => None,
        };
        let allowed_flows =
            (cfg.logging.allowed_flows && flowlog.is_some()).then(FlowTracker::default);
        Ok(Self {
            metrics: Arc::new(Mutex::new(Metrics::new())),
            connections: Connections::new(),
            connlog,
            flowlog,
            allowed_flows,
            ended: SessionStats::default(),
            counted: SessionStats::default(),
        })
    }

    fn metrics(&self) -> std::sync::MutexGuard<'_, Metrics> {
        self.metrics.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One session event: logs, metrics, the connection table.
    pub fn on_event(&mut self, ev: ServerEvent, dp: &Datapath) {
        let stats = |slot| dp.maps.session_stats(slot).unwrap_or_default();
        if let Some(log) = &mut self.connlog {
            log.on_event(&ev, &stats);
        }
        let hs = match &ev {
            ServerEvent::Connected { handshake, .. } => Some(*handshake),
            _ => None,
        };
        self.metrics().on_event(&ev, hs);
        if let ServerEvent::Disconnected {
            peer_id,
            tunnel_addr: Some(_),
            ..
        } = &ev
        {
            add(&mut self.ended, stats(*peer_id));
        }
        match &ev {
            ServerEvent::Connected { peer_id, .. } => {
                self.connections
                    .insert(*peer_id, (ev.clone(), Instant::now()));
            }
            ServerEvent::Disconnected { peer_id, .. } => {
                self.connections.remove(peer_id);
            }
            _ => {}
        }
    }

    /// Every second: the connection log's interim records, the flow log, traffic totals,
    /// drop counters and the policy generation.
    pub fn tick(&mut self, dp: &Datapath, live: &SharedLive, tunnel: &crate::io::TunnelStats) {
        let stats = |slot| dp.maps.session_stats(slot).unwrap_or_default();
        if let Some(log) = &mut self.connlog {
            log.tick(&stats);
        }
        // Every second, so short flows are seen too (it reads the whole map: opt-in).
        if let (Some(t), Some((log, _)), Ok(flows)) =
            (&mut self.allowed_flows, &mut self.flowlog, dp.maps.flows())
        {
            let policy = lock(live).policy.clone();
            let connections = &self.connections;
            let user = |slot: u32| flow_user(live, connections, slot);
            t.scan(&flows, datapath::maps::monotonic_ns(), &user, &policy, log);
        }
        if let Some((log, rb)) = &mut self.flowlog {
            let policy = lock(live).policy.clone();
            // Bounded by the ring buffer's size (and its rate limit in XDP).
            while let Some(item) = rb.next() {
                // The XDP program writes whole records; a short one is not ours.
                let Some(bytes) = item.get(..std::mem::size_of::<DenyEvent>()) else {
                    continue;
                };
                let ev: DenyEvent = bytemuck::pod_read_unaligned(bytes);
                let user = flow_user(live, &self.connections, ev.slot);
                log.record(&ev, user.as_ref(), &policy);
            }
        }
        // Totals: ended sessions plus the live ones, fed as counter increments.
        let mut total = self.ended;
        for id in self.connections.keys() {
            add(&mut total, stats(*id));
        }
        let counted = self.counted;
        let mut m = self.metrics();
        m.ingress_bytes
            .inc_by(total.ingress_bytes.saturating_sub(counted.ingress_bytes));
        m.egress_bytes
            .inc_by(total.egress_bytes.saturating_sub(counted.egress_bytes));
        m.ingress_packets.inc_by(
            total
                .ingress_packets
                .saturating_sub(counted.ingress_packets),
        );
        m.egress_packets
            .inc_by(total.egress_packets.saturating_sub(counted.egress_packets));
        m.set_tunnel(&tunnel.totals());
        if let Ok(d) = dp.maps.drop_counters() {
            m.set_drops(
                &d.iter()
                    .map(|(r, n)| (r.name().to_owned(), *n))
                    .collect::<Vec<_>>(),
            );
        }
        let l = lock(live);
        m.policy_generation.set(i64::from(l.generation));
        m.reconcile_seconds.set(l.last_reconcile.as_secs_f64());
        if let Some(f) = &l.fleet {
            let out = f.degraded.is_some() || f.member.error.is_some();
            m.fleet_degraded.set(i64::from(out));
            m.fleet_lease_valid.set(i64::from(f.member.lease_valid));
        }
        drop(l);
        drop(m);
        self.counted = SessionStats {
            ingress_bytes: counted.ingress_bytes.max(total.ingress_bytes),
            egress_bytes: counted.egress_bytes.max(total.egress_bytes),
            ingress_packets: counted.ingress_packets.max(total.ingress_packets),
            egress_packets: counted.egress_packets.max(total.egress_packets),
        };
    }

    /// After a conntrack expiry pass (`scanned`: the entries it counted): TLS reload, CRL and
    /// map-fill gauges.
    pub fn after_gc(
        &self,
        dp: &Datapath,
        live: &SharedLive,
        tls: &crate::io::tls_files::ReloadableTls,
        scanned: Option<usize>,
    ) {
        let m = self.metrics();
        m.set_crls(tls.current().crls());
        m.tls_reload_failing
            .set(i64::from(tls.reload_failure().is_some()));
        let fill = map_fill(dp, &lock(live).compiled, scanned);
        for (map, entries, capacity) in fill {
            let k = crate::metrics::Map { map: map.into() };
            m.map_entries.get_or_create(&k).set(entries as i64);
            m.map_capacity.get_or_create(&k).set(i64::from(capacity));
        }
    }
}
