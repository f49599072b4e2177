//! Glue between the tunnel and the XDP data path: a connected client's tunnel address and
//! groups go into the `clients` map (which makes the address a valid source and selects its
//! authorization rules); a disconnect removes it and cuts its flows.
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use portcullis_common::{ClientInfo, GroupBits, DEFAULT_FLOWS_PER_CLIENT};

use super::handoff::Adopted;
use crate::auth::{Grant, Grants};
use crate::datapath::maps::Maps;
use crate::io::TunnelHooks;
use crate::openvpn::server::ServerEvent;

/// Resolves a session's group bitmap (by the compiled policy's group numbering) from its
/// certificate name and what authentication granted (directory user and groups).
pub type GroupResolver = Box<dyn Fn(&str, &Grant) -> GroupBits + Send>;

/// Event watchers added while the endpoint runs (see [`super::Endpoint::subscribe`]).
pub type Subscribers = Arc<Mutex<Vec<Sender<ServerEvent>>>>;

pub struct ClientsMapHooks {
    maps: Maps,
    max_flows: u32,
    groups: GroupResolver,
    /// Directory grants of sessions being admitted (moved to live sessions here).
    grants: Option<Arc<Grants>>,
    /// A copy of every event, for callers that watch (the endpoint's telemetry, tests, the
    /// demo).
    events: Option<Sender<ServerEvent>>,
    subscribers: Subscribers,
    /// Set while an agent that keeps its maps shuts down: sessions end, but their entries and
    /// flows stay for the next agent, whose clients reconnect to the same addresses.
    keep: Arc<AtomicBool>,
    adopted: Adopted,
}

impl ClientsMapHooks {
    pub fn new(maps: Maps) -> Self {
        Self {
            maps,
            max_flows: DEFAULT_FLOWS_PER_CLIENT,
            groups: Box::new(|_, _| GroupBits::default()),
            grants: None,
            events: None,
            subscribers: Subscribers::default(),
            keep: Arc::new(AtomicBool::new(false)),
            adopted: Adopted::default(),
        }
    }

    pub fn with_max_flows(mut self, n: u32) -> Self {
        self.max_flows = n;
        self
    }

    pub fn with_groups(mut self, f: GroupResolver) -> Self {
        self.groups = f;
        self
    }

    pub fn with_grants(mut self, g: Arc<Grants>) -> Self {
        self.grants = Some(g);
        self
    }

    pub fn with_events(mut self, tx: Sender<ServerEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Watchers that come and go: each gets a copy of every event while it listens.
    pub fn with_subscribers(mut self, s: Subscribers) -> Self {
        self.subscribers = s;
        self
    }

    pub fn with_adopted(mut self, a: Adopted) -> Self {
        self.adopted = a;
        self
    }

    /// The flag that makes disconnects leave the data path alone (see [`Self::keep`]).
    pub fn keep_flag(&self) -> Arc<AtomicBool> {
        self.keep.clone()
    }

    fn admit(&mut self, addr: Ipv4Addr, user: &str, grant: &Grant, slot: u32) {
        // Held to the end: the agent's expiry of kept entries takes it too, so it never
        // removes an entry this admits.
        let adopted = self.adopted.clone();
        let mut adopted = adopted.lock().unwrap_or_else(|e| e.into_inner());
        let prev = adopted.remove(&addr);
        // A new session has no flows of its own yet.
        if let Err(e) = self.maps.reset_flow_quota(slot) {
            tracing::warn!(%addr, error = %e, "resetting the flow quota");
        }
        if let Some(prev) = prev {
            let same = prev
                .as_ref()
                .is_some_and(|k| k.common_name == user && k.username == grant.username);
            if same {
                // Its flows (parked on the orphan slot) count for this session from now on.
                match self.maps.reslot_client(addr, slot) {
                    Ok(n) => {
                        tracing::info!(%addr, user, flows = n, "session back after a restart: its flows carry on")
                    }
                    Err(e) => {
                        tracing::error!(%addr, error = %e, "moving a returning session's flows")
                    }
                }
            } else {
                // Another user (or one we cannot tell) must not inherit those flows.
                match self.maps.remove_client(addr) {
                    Ok(cut) => {
                        tracing::info!(%addr, user, flows_cut = cut, "address of a previous agent's session reused: its flows cut")
                    }
                    Err(e) => {
                        tracing::error!(%addr, error = %e, "cutting a previous agent's flows")
                    }
                }
            }
        }
        let info = ClientInfo {
            groups: (self.groups)(user, grant),
            slot,
            max_flows: self.max_flows,
        };
        if let Err(e) = self.maps.reset_session_stats(slot) {
            tracing::warn!(%addr, error = %e, "resetting session counters");
        }
        if let Err(e) = self.maps.upsert_client(addr, info) {
            tracing::error!(%addr, user, error = %e, "admitting client to the data path failed");
        }
    }
}

impl TunnelHooks for ClientsMapHooks {
    fn on_event(&mut self, ev: &ServerEvent) {
        match ev {
            ServerEvent::Connected {
                link,
                session,
                peer_id,
                common_name,
                tunnel_addr,
                ..
            } => {
                let grant = self
                    .grants
                    .as_ref()
                    .and_then(|g| g.establish(*link, *session, *peer_id))
                    .unwrap_or_default();
                self.admit(*tunnel_addr, common_name, &grant, *peer_id)
            }
            ServerEvent::Disconnected {
                link,
                peer_id,
                tunnel_addr,
                ..
            } => {
                if let Some(g) = &self.grants {
                    g.end(*link, *peer_id);
                }
                // A stopping agent that keeps its maps leaves the entry and flows in place.
                let keep = self.keep.load(Ordering::Relaxed);
                if let Some(addr) = tunnel_addr.filter(|_| !keep) {
                    match self.maps.remove_client(addr) {
                        Ok(cut) => {
                            tracing::debug!(%addr, flows_cut = cut, "client removed from the data path")
                        }
                        Err(e) => {
                            tracing::error!(%addr, error = %e, "removing client from the data path failed")
                        }
                    }
                }
            }
            _ => {}
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(ev.clone());
        }
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        // A watcher that went away is forgotten.
        subs.retain(|tx| tx.send(ev.clone()).is_ok());
    }
}
