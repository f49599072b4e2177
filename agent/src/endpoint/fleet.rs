//! The endpoint's side of fleet mode: it hands its sessions to the fleet member (for the
//! registry), ends the sessions other gateways ask it to end, and answers the admin commands
//! that span the fleet (`connections list` and `terminate`) after asking etcd, without
//! holding up the loop.
use std::time::{Duration, Instant};

use super::status::{self, Connections};
use super::Endpoint;
use crate::admin::{Action, AdminApi, Call, FleetPeer};
use crate::fleet::admin::RemoteTarget;
use crate::fleet::registry::unix_now;
use crate::fleet::{Keys, Member, SessionRecord};
use crate::openvpn::server::ServerEvent;

pub(super) struct FleetGlue {
    member: Member,
    refresh: Duration,
    last_sent: Instant,
}

impl FleetGlue {
    /// The member of a gateway with `[fleet]`; `None` standalone.
    pub fn start(ep: &Endpoint) -> Option<FleetGlue> {
        let section = ep.cfg.fleet.clone()?;
        let fence = ep.fence.clone()?;
        let refresh = Duration::from_secs(section.registry_refresh_secs);
        // The secret itself stays in its local file; only its fingerprint is published.
        let token =
            crate::fleet::presence::fingerprint_file(ep.cfg.auth.token_secret_file.as_deref());
        let revoked = ep.auth.tokens().map(|t| t.revoked());
        let member = Member::start_with_token(
            section,
            Keys::new(&ep.cfg.name),
            ep.cfg.client_cidr,
            fence,
            ep.user_gate.clone(),
            token,
            revoked,
        );
        Some(FleetGlue {
            member,
            refresh,
            last_sent: Instant::now(),
        })
    }

    /// After a tick: the session list goes to the registry when sessions came or went, and
    /// once per refresh interval (for the counters).
    pub fn tick(&mut self, ep: &Endpoint, connections: &Connections, changed: bool) {
        if let (Some(fence), Some(f)) = (&ep.fence, super::live::lock(&ep.live).fleet.as_mut()) {
            let shared = &self.member.shared;
            shared.set_revision(f.applied.as_ref().map(|p| p.revision));
            let peers: Vec<FleetPeer> = shared
                .gateways()
                .into_iter()
                .map(|p| FleetPeer {
                    gateway: p.gateway,
                    version: p.version,
                    revision: p.revision,
                    since: p.since,
                })
                .collect();
            f.member = crate::admin::FleetMember {
                lease_valid: fence.valid_at(Instant::now()),
                blocks: fence.blocks().iter().map(|b| b.to_string()).collect(),
                gateways: peers.iter().map(|p| p.gateway.clone()).collect(),
                peers,
                error: shared.error(),
                token_secret_mismatch: shared.token_mismatch(),
            };
        }
        if !changed && self.last_sent.elapsed() < self.refresh {
            return;
        }
        self.last_sent = Instant::now();
        let grants = ep.grants();
        let now = unix_now();
        let records: Vec<SessionRecord> = status::list(&ep.dp, ep.tunnel(), connections, &grants)
            .iter()
            .filter(|c| c.established && c.client_address.is_some())
            .map(|c| {
                let mut r = SessionRecord::from_info(&self.member.gateway, c, now);
                // The serial names the session's `users/` key (per-user cap).
                if let Some((ServerEvent::Connected { session, .. }, _)) = connections.get(&c.id) {
                    r.serial = *session;
                }
                r
            })
            .collect();
        let records = match &ep.fence {
            Some(fence) => crate::fleet::registry::without_strays(&records, fence, Instant::now()),
            None => records,
        };
        self.member.sessions.send_replace(records);
    }

    /// The next session another gateway asked this one to end.
    pub async fn next_terminate(glue: &mut Option<FleetGlue>) -> Option<u32> {
        match glue {
            Some(g) => g.member.terminates.recv().await,
            None => std::future::pending().await,
        }
    }

    /// Answers a call that spans the fleet (its local part now, the rest on a task of its
    /// own); gives any other call back.
    pub fn take_call(&self, call: Call, api: &mut dyn AdminApi) -> Option<Call> {
        let shared = self.member.shared.clone();
        let keys = self.member.keys.clone();
        let own = self.member.gateway.clone();
        match call.action() {
            Some(Action::Connections) => {
                let local = api.connections().connections;
                tokio::spawn(async move {
                    let r = crate::fleet::admin::connections(&shared, &keys, &own, local).await;
                    call.finish(Ok(r));
                });
                None
            }
            Some(Action::Terminate { id, user, gateway }) => {
                let here = gateway.as_deref().is_none_or(|g| g == own);
                let local_id = id.filter(|_| here);
                let local = if local_id.is_some() || user.is_some() {
                    api.terminate(local_id, user.as_deref(), None)
                } else {
                    Err(crate::admin::ErrorReply::new("no such session"))
                };
                tokio::spawn(async move {
                    let target = RemoteTarget {
                        id,
                        gateway: gateway.as_deref(),
                        user: user.as_deref(),
                    };
                    let r =
                        crate::fleet::admin::terminate(&shared, &keys, &own, local, target).await;
                    call.finish(r);
                });
                None
            }
            _ => Some(call),
        }
    }
}
