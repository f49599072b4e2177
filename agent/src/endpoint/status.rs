//! What a running endpoint reports: its status (policy, reloads, sessions, drops, map fill)
//! and its connections, as the admin protocol's replies.
use std::collections::BTreeMap;
use std::time::Instant;

use super::live::{self, lock, SharedLive};
use crate::admin::{ConnectionInfo, MapFill, StatusReply};
use crate::datapath::Datapath;
use crate::io::{SessionInfo, Tunnel};
use crate::openvpn::server::ServerEvent;
use crate::policy::CompiledPolicy;

/// The live sessions' `Connected` events by peer id, with when they came.
pub type Connections = BTreeMap<u32, (ServerEvent, Instant)>;

/// Fill of the data path's maps: (map, entries, capacity). Policy maps count the live
/// generation (from the compiled policy, which is what its slot holds); the others are
/// counted in the kernel; `conntrack`, when the caller has just counted it, saves a scan of
/// the largest map.
pub fn map_fill(
    dp: &Datapath,
    compiled: &CompiledPolicy,
    conntrack: Option<usize>,
) -> Vec<(&'static str, usize, u32)> {
    use portcullis_common as c;
    let flows_cap = dp.options.max_flows.unwrap_or(c::DEFAULT_MAX_FLOWS);
    vec![
        (
            "clients",
            dp.maps.client_addrs().map_or(0, |v| v.len()),
            c::MAX_CLIENTS,
        ),
        (
            "conntrack",
            conntrack.unwrap_or_else(|| dp.maps.ct_entries().map_or(0, |f| f.len())),
            flows_cap,
        ),
        ("nat_rev", dp.maps.nat_rev_len().unwrap_or(0), flows_cap),
        ("authz_v4", compiled.authz.len(), c::MAX_AUTHZ_PREFIXES),
        ("routes_v4", compiled.routes.len(), c::MAX_ROUTES),
        ("sg_v4", compiled.sg_nodes.len(), c::MAX_SG_PREFIXES),
        ("sg_ranges", compiled.sg_ranges.len(), c::MAX_SG_RANGES),
        ("targets", compiled.targets.len(), c::MAX_TARGETS),
    ]
}

/// The endpoint's status.
pub fn status(endpoint: &str, dp: &Datapath, live: &SharedLive, tunnel: &Tunnel) -> StatusReply {
    // Before the lock: listing sessions needs the tunnel's control thread, which takes the
    // lock to resolve the groups of a connecting client.
    let sessions = tunnel.sessions();
    let l = lock(live);
    let drops = dp.maps.drop_counters().unwrap_or_default();
    let fill = map_fill(dp, &l.compiled, None);
    let flows = fill
        .iter()
        .find(|(n, _, _)| *n == "conntrack")
        .map_or(0, |f| f.1);
    StatusReply {
        endpoint: endpoint.to_owned(),
        generation: l.generation,
        reloads: l.reloads,
        last_reload_error: l.last_reload_error.clone(),
        last_reload_timing: l.last_reload_timing,
        pending_restart: l.pending_restart.iter().map(|s| (*s).to_owned()).collect(),
        sessions: sessions.len() as u64,
        established: sessions.iter().filter(|s| s.established).count() as u64,
        flows: flows as u64,
        drops: drops
            .iter()
            .map(|(r, n)| (r.name().to_owned(), *n))
            .collect(),
        maps: fill
            .iter()
            .map(|(n, e, c)| {
                let fill = MapFill {
                    entries: *e as u64,
                    capacity: u64::from(*c),
                };
                ((*n).to_owned(), fill)
            })
            .collect(),
        fleet: l.fleet.as_ref().map(live::FleetState::status),
    }
}

/// The sessions as `connections list` reports them.
pub fn list(
    dp: &Datapath,
    tunnel: &Tunnel,
    connections: &Connections,
    grants: &crate::auth::Grants,
) -> Vec<ConnectionInfo> {
    tunnel
        .sessions()
        .into_iter()
        .map(|s: SessionInfo| {
            let stats = dp.maps.session_stats(s.peer_id).unwrap_or_default();
            let since = connections
                .get(&s.peer_id)
                .map_or(0, |(_, t)| t.elapsed().as_secs());
            let grant = grants.get(s.peer_id).unwrap_or_default();
            ConnectionInfo {
                username: Some(grant.username).filter(|u| !u.is_empty()),
                directory_groups: grant.groups,
                id: s.peer_id,
                user: s.common_name,
                client_address: s.tunnel_addr.map(|a| a.to_string()),
                public_address: s.link.addr().to_string(),
                transport: if s.link.is_tcp() { "tcp" } else { "udp" }.into(),
                established: s.established,
                since_secs: since,
                ingress_bytes: stats.ingress_bytes,
                egress_bytes: stats.egress_bytes,
                ingress_packets: stats.ingress_packets,
                egress_packets: stats.egress_packets,
                gateway: None,
            }
        })
        .collect()
}
