//! A gateway's membership in the fleet, as one task: it holds the gateway's etcd lease,
//! claims address blocks for the [`AddressFence`], writes the gateway's sessions to the
//! registry and hands the terminate requests addressed to this gateway to its loop.
//!
//! After any etcd error it starts over with a new connection (after 0.5 s, then backing off
//! to 4 s while etcd stays out of reach). It takes up its lease again when etcd still holds
//! it (a member died, a connection broke, or all of etcd was stopped and came back: etcd
//! expires nothing without a leader), else grants a new one; then it claims its blocks
//! again, writes its presence and every session again, deletes the records of sessions that
//! ended meanwhile, reads the terminate requests that came meanwhile, and reads the fleet's
//! revoked session tokens and writes this gateway's that etcd missed. Until then the fence
//! runs out with the old lease's validity (no new session is admitted into blocks another
//! gateway may hold by then).
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};

use super::client::{is_transport, Rotation};
use super::gate::Caps;
use super::gate::{AdmitRequest, UserGate};
use super::lease::GatewayLease;
use super::limits::Admitted;
use super::presence::{self, Presence};
use super::registry::{self, unix_now, Registry, SessionRecord};
use super::revocations::Revocations;
use super::{blocks, terminate, FleetError, Keys};
use crate::auth::revoked::Revoked;
use crate::config::FleetSection;
use crate::openvpn::fence::{AddressFence, LOW_WATER};

/// How long the member waits before starting over after an error; doubled after each
/// failed start up to [`RETRY_MAX`] (a fleet of gateways must not hammer an etcd that is
/// coming back), back to this once a start succeeds.
const RETRY: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(4);
/// How often an operator's request is tried after transport errors, and the pause between
/// (the member notices its etcd member's death at once: the connection closes).
const TRIES: u32 = 4;
const TRY_PAUSE: Duration = Duration::from_millis(250);

/// What the gateway's loop and admin answers read of the member.
#[derive(Default)]
pub struct Shared {
    /// A connected client while the member holds a lease (clones share one connection).
    client: Mutex<Option<Client>>,
    /// The gateways with a presence key, as last read (after a keep-alive).
    gateways: Mutex<Vec<Presence>>,
    /// The policy revision this gateway runs, as its loop last said (for its presence).
    revision: Mutex<Option<i64>>,
    /// Why the member is not in the fleet now (the last etcd error), `None` while it is.
    error: Mutex<Option<String>>,
    /// The gateways whose session-token secret differs from this one's, as last read.
    token_mismatch: Mutex<Vec<String>>,
}

impl Shared {
    /// A client to etcd, or why there is none now.
    fn client(&self) -> Result<Client, String> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| "etcd is out of reach of this gateway".to_owned())
    }

    /// A client to etcd, waiting up to `within` for the member to be in the fleet again (an
    /// operator's command that comes while the member reconnects after losing an etcd
    /// member, about a second, is answered, not failed).
    async fn client_within(&self, within: Duration) -> Result<Client, String> {
        let until = Instant::now() + within;
        loop {
            match self.client() {
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => return r,
            }
        }
    }

    /// Runs an operator's request `op` (list, terminate) on the member's connection, until it
    /// succeeds, fails with an answer, or failed [`TRIES`] times with transport errors. A
    /// transport error means the member's etcd member just died under the request; the
    /// member is then on another one within about a second, and the next try waits up to
    /// `within` for that connection. `op` must be safe to repeat.
    pub async fn request<T, F, Fut>(&self, within: Duration, mut op: F) -> Result<T, String>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, FleetError>>,
    {
        let mut tried = 1;
        loop {
            let client = self.client_within(within).await?;
            match op(client).await {
                Err(e) if tried < TRIES && is_transport(&e) => {
                    tracing::debug!(error = %e, tried, "etcd request: transport error, trying again");
                    tried += 1;
                    tokio::time::sleep(TRY_PAUSE).await;
                }
                r => return r.map_err(|e| e.to_string()),
            }
        }
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

    /// The gateways whose session-token secret differs from this gateway's (their tokens
    /// are refused here, and this one's there), as last read.
    pub fn token_mismatch(&self) -> Vec<String> {
        self.token_mismatch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why the gateway is out of the fleet now (etcd out of reach, the lease lost), if it is.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = e;
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
    /// The fingerprint of this gateway's session-token secret, published in its presence.
    token_secret: Option<String>,
    /// With session tokens: the revoked ones, shared with the fleet.
    revocations: Option<Revocations>,
    /// The etcd member the membership talks to.
    rotation: Rotation,
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
        Self::start_with_token(section, keys, pool, fence, gate, None, None)
    }

    /// [`Member::start`] of a gateway with session tokens: `token_secret` is the
    /// [`presence::fingerprint`] of its secret, compared with every other gateway's;
    /// `revoked` its revoked tokens, which the member shares with the fleet (see
    /// [`super::revocations`]).
    pub fn start_with_token(
        section: FleetSection,
        keys: Keys,
        pool: Ipv4Net,
        fence: Arc<AddressFence>,
        gate: Option<UserGate>,
        token_secret: Option<String>,
        revoked: Option<Arc<Revoked>>,
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
            token_secret,
            revocations: revoked.map(Revocations::new),
            rotation: Rotation::default(),
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
    let mut lease = None;
    let mut pause = RETRY;
    loop {
        let mut joined = false;
        let started = Instant::now();
        let e = run_once(
            &mut ctx,
            &mut registry,
            &mut admitted,
            &mut lease,
            &mut joined,
        )
        .await;
        ctx.shared.set_client(None);
        match e {
            Ok(()) => return, // the gateway stopped
            Err(e) => {
                tracing::warn!(error = %e, "fleet membership lost; connecting again");
                ctx.shared.set_error(Some(e.to_string()));
                ctx.rotation.failed();
            }
        }
        // After a membership that worked a while, the next member is tried at once: the
        // lease and every operator's request wait for it (one etcd member dying is a
        // non-event). Failed starts back off, and so does a membership that fails as soon as
        // it joined: a fleet must not hammer an etcd that is coming back.
        pause = if joined && started.elapsed() >= RETRY {
            Duration::ZERO
        } else if pause.is_zero() {
            RETRY
        } else {
            (pause * 2).min(RETRY_MAX)
        };
        tokio::time::sleep(pause).await;
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

/// Reads the gateways alive and compares their token secrets with this one's.
async fn read_gateways(ctx: &Ctx, client: &mut Client) -> Result<(), FleetError> {
    let all = presence::read_all(client, &ctx.keys).await?;
    let gw = &ctx.section.gateway_id;
    let mismatch = presence::token_mismatch(gw, ctx.token_secret.as_deref(), &all);
    let mut known = ctx
        .shared
        .token_mismatch
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if mismatch != *known && !mismatch.is_empty() {
        tracing::warn!(gateways = ?mismatch, "fleet: these gateways have another session-token secret (auth.token_secret_file): a client moving between them and this one must log in again");
    }
    *known = mismatch;
    drop(known);
    *ctx.shared
        .gateways
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = all;
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

/// The next message of a watch, if there is one.
async fn next_message(
    w: &mut Option<etcd_client::WatchStream>,
) -> Result<Option<etcd_client::WatchResponse>, etcd_client::Error> {
    match w {
        Some(w) => w.message().await,
        None => std::future::pending().await,
    }
}

/// Takes up lease `last` again if etcd still holds it, else grants a new one; the flag says
/// whether it is the same lease.
async fn lease_for(
    client: &mut Client,
    last: Option<i64>,
    ttl_secs: u64,
) -> Result<(GatewayLease, Instant, bool), FleetError> {
    if let Some(id) = last {
        if let Some((lease, valid)) = GatewayLease::resume(client, id, ttl_secs).await? {
            tracing::info!(
                lease = id,
                "fleet: the gateway's lease is still held; taken up again"
            );
            return Ok((lease, valid, true));
        }
        tracing::warn!(
            lease = id,
            "fleet: the gateway's lease expired while etcd was out of reach; a new one"
        );
    }
    let (lease, valid) = GatewayLease::grant(client, ttl_secs).await?;
    Ok((lease, valid, false))
}

async fn run_once(
    ctx: &mut Ctx,
    registry: &mut Registry,
    admitted: &mut Admitted,
    last_lease: &mut Option<i64>,
    joined: &mut bool,
) -> Result<(), FleetError> {
    let gw = ctx.section.gateway_id.clone();
    let mut client = ctx.rotation.connect(&ctx.section).await?;
    let (mut lease, mut valid, resumed) =
        lease_for(&mut client, *last_lease, ctx.section.lease_ttl_secs).await?;
    *last_lease = Some(lease.id);
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
        token_secret: ctx.token_secret.clone(),
    };
    presence::put(&mut client, &ctx.keys, &presence, lease.id).await?;
    read_gateways(ctx, &mut client).await?;
    top_up(ctx, &mut client, lease.id, valid).await?;
    admitted.renew(&mut client, lease.id).await?;
    let refresh = Duration::from_secs(ctx.section.registry_refresh_secs);
    let now = registry::without_strays(
        &ctx.sessions.borrow_and_update(),
        &ctx.fence,
        Instant::now(),
    );
    // Admissions whose sessions ended while etcd was out of reach free their places now.
    let live = now.iter().map(|s| s.serial).collect();
    admitted.sweep(&mut client, &live).await?;
    // Every session again; under the same lease the records of sessions that ended
    // meanwhile are still there and go now (under a new one they expire with the old).
    if resumed {
        registry.resume(&mut client, &ctx.keys, &gw, &now).await?;
    } else {
        registry.forget();
    }
    registry
        .sync(&mut client, &ctx.keys, lease.id, &now, refresh)
        .await?;
    let (pending, mut requests) = terminate::pending_and_watch(&mut client, &ctx.keys, &gw).await?;
    for id in pending {
        let _ = ctx.terminates.send(id).await;
        terminate::done(&mut client, &ctx.keys, &gw, id).await?;
    }
    let mut revoked_watch = match &mut ctx.revocations {
        Some(r) => Some(r.join(&mut client, &ctx.keys, &gw).await?),
        None => None,
    };
    ctx.shared.set_client(Some(client.clone()));
    ctx.shared.set_error(None);
    *joined = true;
    tracing::info!(lease = lease.id, resumed, blocks = ?ctx.fence.blocks(), "fleet: member of the fleet");
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
                    presence::put(&mut client, &ctx.keys, &presence, lease.id).await?;
                }
                read_gateways(ctx, &mut client).await?;
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
            () = Revocations::local_revocation(&mut ctx.revocations) => {
                if let Some(r) = &mut ctx.revocations {
                    r.publish(&mut client, &ctx.keys, &gw).await?;
                }
            }
            msg = next_message(&mut revoked_watch) => {
                let resp = msg
                    .map_err(FleetError::Etcd)?
                    .ok_or_else(|| FleetError::WatchEnded("the revoked-tokens watch closed".into()))?;
                if resp.canceled() {
                    return Err(FleetError::WatchEnded("the revoked-tokens watch was cancelled".into()));
                }
                if let Some(r) = &mut ctx.revocations {
                    r.apply(&ctx.keys, &resp);
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
