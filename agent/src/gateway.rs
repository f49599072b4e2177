//! Glue between the tunnel and the XDP data path: a connected client's tunnel address and
//! groups go into the `clients` map (which makes the address a valid source and selects its
//! authorization rules); a disconnect removes it and cuts its flows.
use std::net::Ipv4Addr;
use std::sync::mpsc::Sender;

use portcullis_common::{ClientInfo, GroupBits, DEFAULT_FLOWS_PER_CLIENT};

use crate::datapath::maps::Maps;
use crate::openvpn::server::ServerEvent;
use crate::tunnel::TunnelHooks;

/// Resolves a user's group bitmap (by the compiled policy's group numbering).
pub type GroupResolver = Box<dyn Fn(&str) -> GroupBits + Send>;

pub struct ClientsMapHooks {
    maps: Maps,
    max_flows: u32,
    groups: GroupResolver,
    /// A copy of every event, for callers that watch (tests, the demo, the log exporter).
    events: Option<Sender<ServerEvent>>,
}

impl ClientsMapHooks {
    pub fn new(maps: Maps) -> Self {
        Self {
            maps,
            max_flows: DEFAULT_FLOWS_PER_CLIENT,
            groups: Box::new(|_| GroupBits::default()),
            events: None,
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

    pub fn with_events(mut self, tx: Sender<ServerEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    fn admit(&mut self, addr: Ipv4Addr, user: &str, slot: u32) {
        let info = ClientInfo {
            groups: (self.groups)(user),
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
                peer_id,
                common_name,
                tunnel_addr,
                ..
            } => self.admit(*tunnel_addr, common_name, *peer_id),
            ServerEvent::Disconnected {
                tunnel_addr: Some(addr),
                ..
            } => match self.maps.remove_client(*addr) {
                Ok(cut) => {
                    tracing::debug!(%addr, flows_cut = cut, "client removed from the data path")
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "removing client from the data path failed")
                }
            },
            _ => {}
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(ev.clone());
        }
    }
}
