//! The agent's loop: it only selects (signals, the one-second tick, admin requests) and hands
//! each to the module that owns it.
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::fleet::FleetGlue;
use super::live::{self, lock};
use super::status::{self, Connections};
use super::telemetry::Telemetry;
use super::{handoff, Endpoint};
use crate::admin::{
    AdminApi, AdminServer, CertificatesReply, ConnectionsReply, ErrorReply, ExplainReply, LogKind,
    LogQuery, LogsReply, PolicyReply, ProfileReply, ReloadReply, RevokeReply, StatusReply,
    TerminateReply,
};
use crate::auth::recheck::{self, Change, Recheck};
use crate::config::SharedConfig;
use crate::datapath::{self, Datapath};
use crate::fleet::{Keys, PolicyUpdate};
use crate::io::{Command, SessionInfo};

/// The admin API over a running endpoint and its connection table.
struct Api<'a> {
    ep: &'a mut Endpoint,
    connections: &'a Connections,
}

impl Endpoint {
    /// Reloads the file (without one, there is nothing to reload); in a fleet, with the
    /// published part this gateway runs.
    fn reload(&mut self) -> Result<u32, String> {
        let shared = lock(&self.live)
            .fleet
            .as_ref()
            .and_then(|f| f.applied.as_ref())
            .map(|p| p.shared.clone());
        self.reload_with(shared.as_ref())
    }

    fn reload_with(&mut self, shared: Option<&SharedConfig>) -> Result<u32, String> {
        let Some(path) = self.opts.config_path.clone() else {
            return Err("this endpoint was built without a configuration file".into());
        };
        let tunnel = self.tunnel.as_ref().expect("running");
        let logins = live::Logins {
            auth: &self.auth,
            tls: &self.tls,
            capped: self.user_gate.is_some(),
        };
        live::reload(
            &path,
            shared,
            &self.cfg,
            &mut self.dp,
            tunnel,
            &self.live,
            &logins,
        )
    }

    /// Applies what the fleet policy follower reports: a published revision goes through
    /// the same reload as a file edit (and is the one this gateway runs only if it applies).
    fn on_fleet(&mut self, update: PolicyUpdate) {
        match update {
            PolicyUpdate::Published(p) => match self.reload_with(Some(&p.shared)) {
                Ok(generation) => {
                    tracing::info!(revision = p.revision, generation, "fleet policy applied");
                    // The published CA bundle and CRLs replace this gateway's files (not
                    // published: the files again); the control thread's next tick cuts the
                    // revoked.
                    let published = crate::io::tls_files::PublishedTls {
                        ca: p.shared.ca_pem.clone(),
                        crls: (!p.shared.crl_pem.is_empty()).then(|| p.shared.crl_pem.clone()),
                    };
                    if let Err(e) = self.tls.set_published(published) {
                        tracing::error!(
                            revision = p.revision,
                            "the published CA bundle or CRLs were refused, the previous ones stay: {e}"
                        );
                    }
                    if let Some(f) = lock(&self.live).fleet.as_mut() {
                        f.applied = Some(*p);
                    }
                }
                Err(e) => tracing::error!(
                    revision = p.revision,
                    "fleet policy refused on this gateway, the running policy stays: {e}"
                ),
            },
            PolicyUpdate::Unreadable { revision, error } => tracing::error!(
                revision,
                "the fleet policy key holds no published policy, the running policy stays: {error}"
            ),
            PolicyUpdate::Degraded(error) => {
                tracing::warn!("fleet degraded: running the last policy applied: {error}");
                if let Some(f) = lock(&self.live).fleet.as_mut() {
                    f.degraded = Some(error);
                }
            }
            PolicyUpdate::Following => {
                tracing::info!("fleet: following the published policy again");
                if let Some(f) = lock(&self.live).fleet.as_mut() {
                    f.degraded = None;
                }
            }
        }
    }

    fn file_changed(&self) -> bool {
        self.opts
            .config_path
            .as_deref()
            .is_some_and(|p| live::stamp(p) != lock(&self.live).config_stamp)
    }
}

impl AdminApi for Api<'_> {
    fn status(&mut self) -> StatusReply {
        status::status(
            &self.ep.cfg.name,
            &self.ep.dp,
            &self.ep.live,
            self.ep.tunnel(),
        )
    }

    fn reload(&mut self) -> Result<ReloadReply, ErrorReply> {
        let generation = self.ep.reload().map_err(ErrorReply::new)?;
        let l = lock(&self.ep.live);
        Ok(ReloadReply {
            generation,
            timing: l.last_reload_timing,
            pending_restart: l.pending_restart.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    fn connections(&mut self) -> ConnectionsReply {
        // The grants outside the live lock: listing waits for the control thread.
        let grants = self.ep.grants();
        ConnectionsReply {
            connections: status::list(&self.ep.dp, self.ep.tunnel(), self.connections, &grants),
            fleet_error: None,
        }
    }

    fn terminate(
        &mut self,
        id: Option<u32>,
        user: Option<&str>,
        gateway: Option<&str>,
    ) -> Result<TerminateReply, ErrorReply> {
        // A fleet gateway answers terminate in `endpoint::fleet` (other gateways' sessions);
        // here only this gateway's.
        if let Some(g) = gateway {
            return Err(ErrorReply::new(format!(
                "session on gateway {g}: this gateway is not in a fleet (no [fleet] section)"
            )));
        }
        let grants = self.ep.grants();
        // A user is its certificate name or its directory user name.
        let is_user = |s: &SessionInfo| {
            user.is_some_and(|u| {
                s.common_name.as_deref() == Some(u)
                    || grants.get(s.peer_id).is_some_and(|g| g.username == u)
            })
        };
        let tunnel = self.ep.tunnel();
        let ended: Vec<SessionInfo> = tunnel
            .sessions()
            .into_iter()
            .filter(|s| Some(s.peer_id) == id || is_user(s))
            .collect();
        if ended.is_empty() {
            return Err(ErrorReply::new("no such session"));
        }
        // Their session tokens too, before the sessions end: the client's automatic
        // reconnect with the token must log in again.
        if let Some(t) = self.ep.auth.tokens() {
            let revoked: usize = ended.iter().map(|s| t.revoke_link(s.link)).sum();
            if revoked > 0 {
                tracing::info!(revoked, "session tokens of the terminated sessions revoked");
            }
        }
        let ids: Vec<u32> = ended.iter().map(|s| s.peer_id).collect();
        for i in &ids {
            tunnel.command(Command::Disconnect(*i));
        }
        Ok(TerminateReply {
            terminated: ids,
            remote: Vec::new(),
        })
    }

    fn policy(&mut self) -> PolicyReply {
        let l = lock(&self.ep.live);
        PolicyReply {
            generation: l.generation,
            policy: (*l.policy).clone(),
        }
    }

    /// A directory user's groups are known while they are connected: those of their live
    /// session (its certificate's and user's local groups and its directory groups) decide;
    /// otherwise the policy's local groups of `user`, and the first step says which.
    fn explain(&mut self, user: &str, to: &str) -> Result<ExplainReply, ErrorReply> {
        let to: crate::explain::Destination = to.parse().map_err(ErrorReply::new)?;
        let policy = lock(&self.ep.live).policy.clone();
        let grants = self.ep.grants();
        let live = self.ep.tunnel().sessions().into_iter().find_map(|s| {
            let g = grants.get(s.peer_id)?;
            let cn = s.common_name.unwrap_or_default();
            (!g.username.is_empty() && g.username == user).then_some((cn, g))
        });
        let fail = |e: anyhow::Error| ErrorReply::new(e.to_string());
        let (e, source) = match live {
            Some((cn, g)) => {
                let local = |u: &str| policy.local_groups_of(u);
                let groups = crate::auth::combined_groups(&local, &cn, &g);
                let e = crate::explain::explain_with_groups(&policy, user, groups, to)
                    .map_err(fail)?;
                (
                    e,
                    format!("groups: those of {user}'s live session (certificate {cn:?}), directory groups included"),
                )
            }
            None => (
                crate::explain::explain(&policy, user, to).map_err(fail)?,
                format!("groups: the policy's local groups of {user} (no live directory session of {user}: directory groups are known while connected)"),
            ),
        };
        let mut steps = vec![source];
        steps.extend(e.steps);
        Ok(ExplainReply {
            user: e.user,
            groups: e.groups,
            destination: e.destination,
            verdict: e.verdict,
            reason: e.reason,
            steps,
        })
    }

    fn certificates(&mut self) -> Result<CertificatesReply, ErrorReply> {
        crate::pki::store::api_list(self.ep.cfg.tls.pki_dir.as_deref())
    }

    /// The CRL is republished in `[tls] pki_dir`; the control thread's one-second TLS check
    /// reloads it and ends the revoked sessions with `HALT`, as for a CRL published by hand.
    fn revoke(
        &mut self,
        name: Option<&str>,
        serial: Option<&str>,
    ) -> Result<RevokeReply, ErrorReply> {
        crate::pki::store::api_revoke(self.ep.cfg.tls.pki_dir.as_deref(), name, serial)
    }

    fn logs(&mut self, log: LogKind, query: &LogQuery) -> Result<LogsReply, ErrorReply> {
        let l = &self.ep.cfg.logging;
        let path = match log {
            LogKind::Connections => l.connection_log.as_deref(),
            LogKind::Flows => l.flow_log.as_deref(),
        };
        crate::logsearch::api(log, path, query)
    }

    fn profile(&mut self, user: &str, certificate: bool) -> Result<ProfileReply, ErrorReply> {
        let cfg = crate::profile::in_force(&self.ep.cfg, lock(&self.ep.live).in_force.as_ref());
        crate::profile::api(&cfg, user, certificate)
    }
}

/// SIGTERM, SIGINT and SIGHUP, when the endpoint handles signals.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Waits for a signal of `s` (true: stop, false: reload); never without signals.
async fn next_signal(s: &mut Option<Signals>) -> bool {
    match s {
        Some(s) => tokio::select! {
            _ = s.term.recv() => true,
            _ = s.int.recv() => true,
            _ = s.hup.recv() => false,
        },
        None => std::future::pending().await,
    }
}

/// Applies a re-check pass's changes to the data path and the tunnel.
fn apply_recheck(ep: &mut Endpoint, results: recheck::RecheckResults, connections: &Connections) {
    use crate::openvpn::server::ServerEvent;
    let l = lock(&ep.live);
    let session = |peer: u32| match connections.get(&peer) {
        Some((
            ServerEvent::Connected {
                tunnel_addr,
                common_name,
                ..
            },
            _,
        )) => Some((*tunnel_addr, common_name.clone())),
        _ => None,
    };
    let bitmap = |cn: &str, g: &crate::auth::Grant| l.session_groups(cn, g);
    let changes = recheck::decide(results, &l.grants, &session, &bitmap);
    let dp: &mut Datapath = &mut ep.dp;
    let tunnel = ep.tunnel.as_ref().expect("running");
    for change in changes {
        match change {
            Change::End {
                peer_id,
                addr,
                reason,
            } => {
                // Out of the data path now, not when the client has taken the HALT.
                let _ = dp.maps.remove_client(addr);
                tunnel.command(Command::Halt {
                    peer_id,
                    reason: reason.into(),
                });
            }
            Change::Regroup {
                peer_id,
                addr,
                groups,
                lost,
            } => {
                if let Ok(Some(mut info)) = dp.maps.client(addr) {
                    info.groups = groups;
                    if let Err(e) = dp.maps.upsert_client(addr, info) {
                        tracing::error!(peer_id, error = %e, "updating the groups of a live session");
                    }
                }
                if lost {
                    let src = addr.octets();
                    let cut = dp.maps.delete_flows(|k, _| {
                        if k.src != src {
                            return false;
                        }
                        let dst = std::net::Ipv4Addr::new(k.dst[0], k.dst[1], k.dst[2], k.dst[3]);
                        !crate::policy::compiled_eval::lpm(&l.compiled.authz, dst).is_some_and(
                            |v| {
                                v.all_users != 0
                                    || v.groups.iter().zip(groups.iter()).any(|(r, u)| r & u != 0)
                            },
                        )
                    });
                    if let Err(e) = cut {
                        tracing::error!(peer_id, error = %e, "cutting flows of a session that lost groups");
                    }
                }
            }
        }
    }
}

/// The portal signs users in with the authenticator in force.
fn portal_auth(auth: &Arc<crate::auth::LiveAuth>) -> crate::console::state::PortalAuth {
    let auth = auth.clone();
    Arc::new(move || auth.current())
}

pub(super) async fn serve(ep: &mut Endpoint, stop: Option<Arc<tokio::sync::Notify>>) -> Result<()> {
    let mut admin = AdminServer::bind(&ep.cfg.admin_socket())?;
    let audit = match &ep.cfg.logging.admin_audit_log {
        Some(p) => Some(Arc::new(
            crate::admin::audit::AuditLog::open(p)
                .with_context(|| format!("opening the admin audit trail {}", p.display()))?,
        )),
        None => None,
    };
    if let Some(a) = &audit {
        admin.set_audit(a.clone());
    }
    // Validation requires the audit trail with the console.
    let _console_task = match (&ep.cfg.console, &audit) {
        (Some(c), Some(a)) => Some(
            crate::console::spawn(c, a.clone(), admin.handle(), Some(portal_auth(&ep.auth)))
                .await?,
        ),
        _ => None,
    };
    let mut signals = if ep.opts.signals {
        Some(Signals::install()?)
    } else {
        None
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut telemetry = Telemetry::open(&ep.cfg, &mut ep.dp, &ep.live)?;
    let _metrics_task = match ep.cfg.metrics.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            Some(tokio::spawn(crate::metrics::serve(
                l,
                telemetry.metrics.clone(),
            )))
        }
        None => None,
    };
    let mut last_gc = Instant::now();
    let mut recheck = Recheck::default();
    // In a fleet, the follower hands over each published revision; it stops when `fleet`
    // is dropped (the loop returns).
    let (fleet_tx, mut fleet) = tokio::sync::mpsc::channel(8);
    let _follower = ep.cfg.fleet.clone().map(|section| {
        let keys = Keys::new(&ep.cfg.name);
        tokio::spawn(crate::fleet::follow(section, keys, 0, fleet_tx))
    });
    // In a fleet: the lease, address blocks, registry and terminate requests.
    let mut glue = FleetGlue::start(ep);
    loop {
        tokio::select! {
            stop_now = next_signal(&mut signals) => {
                if stop_now {
                    return Ok(());
                }
                let _ = ep.reload();
            }
            _ = async {
                match &stop {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            } => return Ok(()),
            _ = tick.tick() => {
                let mut changed = false;
                while let Ok(ev) = ep.events.try_recv() {
                    changed = true;
                    telemetry.on_event(ev, &ep.dp);
                }
                if let Some(g) = &mut glue {
                    g.tick(ep, &telemetry.connections, changed);
                }
                telemetry.tick(&ep.dp, &ep.live, &ep.tunnel().stats);
                if last_gc.elapsed() >= Duration::from_secs(5) {
                    last_gc = Instant::now();
                    // The expiry scans conntrack anyway: its count (taken before it deleted
                    // anything) is the fill level, without a second scan.
                    let scanned = match ep.dp.maps.gc(datapath::maps::monotonic_ns()) {
                        Ok(st) => Some(st.scanned as usize),
                        Err(e) => {
                            tracing::warn!(error = %e, "expiring flows");
                            None
                        }
                    };
                    telemetry.after_gc(&ep.dp, &ep.live, &ep.tls, scanned);
                    let tunnel = ep.tunnel.as_ref().expect("running");
                    if ep.auth.retired() > 0 {
                        // Sessions that kept a replaced authenticator and ended since.
                        let links: Vec<_> = tunnel.sessions().iter().map(|s| s.link).collect();
                        ep.auth.prune(&links);
                    }
                    {
                        // Taken out under the lock, expired outside it (the map writes).
                        let mut kept = live::lock(&ep.live).kept.take();
                        handoff::expire_kept(&mut ep.dp, tunnel, &mut kept);
                        live::lock(&ep.live).kept = kept;
                    }
                }
                // The directory in force (a reload may change it or its interval).
                let dir = ep.auth.directory();
                let every = dir
                    .as_ref()
                    .map(|d| Duration::from_secs(d.config().recheck_interval_secs))
                    .filter(|d| !d.is_zero());
                if let (Some(every), Some(dir)) = (every, dir) {
                    if let Some(results) = recheck.finished() {
                        apply_recheck(ep, results, &telemetry.connections);
                    }
                    recheck.start_if_due(every, &dir, &ep.grants());
                }
                if ep.file_changed() {
                    let _ = ep.reload();
                }
            }
            Some(update) = fleet.recv() => ep.on_fleet(update),
            Some(id) = FleetGlue::next_terminate(&mut glue) => {
                let mut api = Api { ep, connections: &telemetry.connections };
                match api.terminate(Some(id), None, None) {
                    Ok(_) => tracing::info!(peer_id = id, "session ended at the fleet's request"),
                    Err(e) => tracing::info!(peer_id = id, "fleet terminate request: {}", e.error),
                }
            }
            call = admin.next() => {
                let mut api = Api { ep, connections: &telemetry.connections };
                let call = match &glue {
                    Some(g) => g.take_call(call, &mut api),
                    None => Some(call),
                };
                if let Some(call) = call {
                    call.answer(&mut api);
                }
            }
        }
    }
}
