//! A gateway's membership in the fleet, as one task: it holds the gateway's etcd lease,
//! claims address blocks for the [`AddressFence`], writes the gateway's sessions to the
//! registry and hands the terminate requests addressed to this gateway to its loop.
//!
//! After any etcd error it starts over with a new connection and a new lease: it claims its
//! blocks again, writes its presence and every session again and reads the terminate
//! requests that came meanwhile. Until then the fence runs out with the old lease (no new
//! session is admitted into blocks another gateway may hold by then).
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::gate::Caps;
use super::gate::{AdmitRequest, UserGate};
use super::lease::GatewayLease;
use super::limits::Admitted;
use super::registry::{unix_now, Registry, SessionRecord};
use super::{blocks, connect, terminate, FleetError, Keys};
use crate::config::FleetSection;
use crate::openvpn::fence::{AddressFence, LOW_WATER};

/// How long the member waits before starting over after an error.
const RETRY: Duration = Duration::from_millis(500);

/// The value of `gateways/<gateway>`: that the gateway is alive, and what it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub gateway: String,
    pub version: String,
    /// Unix seconds of this lease's start.
    pub since: u64,
    /// The published policy revision the gateway runs (`None`: its local file's policy);
    /// rewritten at the next keep-alive after it changes.
    #[serde(default)]
    pub revision: Option<i64>,
}

/// What the gateway's loop and admin answers read of the member.
#[derive(Default)]
pub struct Shared {
    /// A connected client while the member holds a lease (clones share one connection).
    client: Mutex<Option<Client>>,
    /// The gateways with a presence key, as last read (after a keep-alive).
    gateways: Mutex<Vec<Presence>>,
    /// The policy revision this gateway runs, as its loop last said (for its presence).
    revision: Mutex<Option<i64>>,
}

impl Shared {
    /// A client to etcd, or why there is none now.
    pub fn client(&self) -> Result<Client, String> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| "etcd is out of reach of this gateway".to_owned())
    }

    /// The gateways alive in the fleet (their presence), as last read.
    pub fn gateways(&self) -> Vec<Presence> {
        self.gateways
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The policy revision this gateway runs now; its presence says so within a keep-alive.
    pub fn set_revision(&self, r: Option<i64>) {
        *self.revision.lock().unwrap_or_else(|e| e.into_inner()) = r;
    }

    fn revision(&self) -> Option<i64> {
        *self.revision.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_client(&self, c: Option<Client>) {
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = c;
    }
}

/// The gateway loop's side of the member.
pub struct Member {
    /// This gateway's sessions, replaced whenever one comes or goes.
    pub sessions: watch::Sender<Vec<SessionRecord>>,
    /// Session ids another gateway (or this one) asked to end.
    pub terminates: mpsc::Receiver<u32>,
    pub shared: Arc<Shared>,
    pub keys: Keys,
    pub gateway: String,
    task: tokio::task::JoinHandle<()>,
}

/// A dropped member stops at once, like a gateway that dies: its keys stay until its lease
/// expires.
impl Drop for Member {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Ctx {
    section: FleetSection,
    keys: Keys,
    pool: Ipv4Net,
    fence: Arc<AddressFence>,
    sessions: watch::Receiver<Vec<SessionRecord>>,
    terminates: mpsc::Sender<u32>,
    shared: Arc<Shared>,
    /// With a fleet-wide cap: the authorizer's admission requests, and the caps.
    admits: Option<(mpsc::Receiver<AdmitRequest>, Caps)>,
}

impl Member {
    /// Starts the member of the gateway `section.gateway_id` of endpoint `keys`, leasing
    /// blocks of `pool` into `fence`. Needs a tokio runtime.
    pub fn start(
        section: FleetSection,
        keys: Keys,
        pool: Ipv4Net,
        fence: Arc<AddressFence>,
        gate: Option<UserGate>,
    ) -> Member {
        let (sessions_tx, sessions_rx) = watch::channel(Vec::new());
        let (term_tx, term_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared::default());
        let gateway = section.gateway_id.clone();
        let ctx = Ctx {
            section,
            keys: keys.clone(),
            pool,
            fence,
            sessions: sessions_rx,
            terminates: term_tx,
            shared: shared.clone(),
            admits: gate.and_then(|g| Some((g.take_requests()?, g.caps))),
        };
        Member {
            sessions: sessions_tx,
            terminates: term_rx,
            shared,
            keys,
            gateway,
            task: tokio::spawn(run(ctx)),
        }
    }
}

async fn run(mut ctx: Ctx) {
    let mut registry = Registry::default();
    let mut admitted = Admitted::default();
    loop {
        let e = run_once(&mut ctx, &mut registry, &mut admitted).await;
        ctx.shared.set_client(None);
        match e {
            Ok(()) => return, // the gateway stopped
            Err(e) => {
                tracing::warn!(error = %e, "fleet membership; starting over with a new lease")
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Free addresses a new block adds (the pool's network, gateway and broadcast addresses
/// are never leased).
fn free_in_new(pool: Ipv4Net, b: Ipv4Net) -> usize {
    let gateway = Ipv4Addr::from(u32::from(pool.network()) + 1);
    let reserved = [pool.network(), gateway, pool.broadcast()];
    (u32::from(b.network())..=u32::from(b.broadcast()))
        .filter(|a| !reserved.contains(&Ipv4Addr::from(*a)))
        .count()
}

/// Claims blocks until the fence has [`LOW_WATER`] free addresses or the pool is all held.
async fn top_up(
    ctx: &Ctx,
    client: &mut Client,
    lease: i64,
    valid: Instant,
) -> Result<(), FleetError> {
    let gw = &ctx.section.gateway_id;
    while ctx.fence.free() < LOW_WATER {
        match blocks::claim_one(client, &ctx.keys, gw, lease, ctx.pool).await? {
            Some(b) => {
                let mut held = ctx.fence.blocks();
                held.push(b);
                tracing::info!(block = %b, "fleet: address block leased");
                ctx.fence.add(held, free_in_new(ctx.pool, b), Some(valid));
            }
            None => {
                tracing::warn!("fleet: every address block of the pool is held");
                break;
            }
        }
    }
    Ok(())
}

/// The presence of the gateways with a presence key (one a gateway: the values are small).
/// A value this version cannot read (an older or newer gateway) still counts, by its key.
async fn gateways(client: &mut Client, keys: &Keys) -> Result<Vec<Presence>, FleetError> {
    let got = client
        .get(keys.gateways(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(FleetError::Etcd)?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| {
            let id = kv
                .key_str()
                .ok()?
                .strip_prefix(&keys.gateways())?
                .to_owned();
            Some(
                serde_json::from_slice::<Presence>(kv.value())
                    .ok()
                    .filter(|p| p.gateway == id)
                    .unwrap_or(Presence {
                        gateway: id,
                        version: "?".into(),
                        since: 0,
                        revision: None,
                    }),
            )
        })
        .collect())
}

/// Writes this gateway's presence under `lease`.
async fn put_presence(
    client: &mut Client,
    keys: &Keys,
    presence: &Presence,
    lease: i64,
) -> Result<(), FleetError> {
    client
        .put(
            keys.gateway(&presence.gateway),
            serde_json::to_string(presence).expect("plain fields"),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(FleetError::Etcd)?;
    Ok(())
}

/// The next admission request, if a cap is on.
async fn next_admit(
    admits: &mut Option<(mpsc::Receiver<AdmitRequest>, Caps)>,
) -> Option<(AdmitRequest, Caps)> {
    match admits {
        Some((rx, caps)) => rx.recv().await.map(|r| (r, *caps)),
        None => std::future::pending().await,
    }
}

async fn run_once(
    ctx: &mut Ctx,
    registry: &mut Registry,
    admitted: &mut Admitted,
) -> Result<(), FleetError> {
    let gw = ctx.section.gateway_id.clone();
    let mut client = connect(&ctx.section).await?;
    let (mut lease, mut valid) =
        GatewayLease::grant(&mut client, ctx.section.lease_ttl_secs).await?;
    let had = ctx.fence.blocks();
    let kept = blocks::reclaim(&mut client, &ctx.keys, &gw, lease.id, &had).await?;
    for b in had.iter().filter(|b| !kept.contains(b)) {
        tracing::error!(block = %b, "fleet: address block taken by another gateway while this one was out of reach; its sessions there keep their addresses");
    }
    ctx.fence.set(kept, Some(valid));
    let mut presence = Presence {
        gateway: gw.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        since: unix_now(),
        revision: ctx.shared.revision(),
    };
    put_presence(&mut client, &ctx.keys, &presence, lease.id).await?;
    top_up(ctx, &mut client, lease.id, valid).await?;
    admitted.renew(&mut client, lease.id).await?;
    // Every session again under the new lease.
    registry.forget();
    let refresh = Duration::from_secs(ctx.section.registry_refresh_secs);
    let now = ctx.sessions.borrow_and_update().clone();
    registry
        .sync(&mut client, &ctx.keys, lease.id, &now, refresh)
        .await?;
    let (pending, mut requests) = terminate::pending_and_watch(&mut client, &ctx.keys, &gw).await?;
    for id in pending {
        let _ = ctx.terminates.send(id).await;
        terminate::done(&mut client, &ctx.keys, &gw, id).await?;
    }
    ctx.shared.set_client(Some(client.clone()));
    tracing::info!(lease = lease.id, blocks = ?ctx.fence.blocks(), "fleet: member of the fleet");
    let mut keepalive = tokio::time::interval(lease.interval());
    keepalive.tick().await;
    loop {
        tokio::select! {
            _ = keepalive.tick() => {
                valid = lease.keep_alive().await?;
                ctx.fence.extend(valid);
                // The console shows which revision each gateway runs: say when it changed.
                if presence.revision != ctx.shared.revision() {
                    presence.revision = ctx.shared.revision();
                    put_presence(&mut client, &ctx.keys, &presence, lease.id).await?;
                }
                let alive = gateways(&mut client, &ctx.keys).await?;
                *ctx.shared.gateways.lock().unwrap_or_else(|e| e.into_inner()) = alive;
            }
            _ = ctx.fence.wanted() => top_up(ctx, &mut client, lease.id, valid).await?,
            changed = ctx.sessions.changed() => {
                if changed.is_err() {
                    return Ok(()); // the gateway stopped
                }
                let now = ctx.sessions.borrow_and_update().clone();
                registry.sync(&mut client, &ctx.keys, lease.id, &now, refresh).await?;
                let live = now.iter().map(|s| s.serial).collect();
                admitted.sweep(&mut client, &live).await?;
            }
            Some((req, caps)) = next_admit(&mut ctx.admits) => {
                admitted.decide(&mut client, &ctx.keys, &gw, lease.id, &req, caps).await?;
            }
            msg = requests.message() => {
                let resp = msg
                    .map_err(FleetError::Etcd)?
                    .ok_or_else(|| FleetError::WatchEnded("the terminate watch closed".into()))?;
                if resp.canceled() {
                    return Err(FleetError::WatchEnded("the terminate watch was cancelled".into()));
                }
                for id in terminate::ids_in(&ctx.keys, &gw, &resp) {
                    let _ = ctx.terminates.send(id).await;
                    terminate::done(&mut client, &ctx.keys, &gw, id).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_addresses_are_not_counted_free() {
        let pool: Ipv4Net = "10.8.0.0/24".parse().unwrap();
        let b = blocks::blocks_of(pool);
        assert_eq!(free_in_new(pool, b[0]), 62);
        assert_eq!(free_in_new(pool, b[1]), 64);
        assert_eq!(free_in_new(pool, b[3]), 63);
    }
}
