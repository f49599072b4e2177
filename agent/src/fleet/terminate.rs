//! Fleet-wide terminate: any gateway writes `terminate/<owner>/<id>`; the owner watches its
//! own `terminate/<gateway>/` prefix, ends the session through its local terminate path (the
//! client gets `HALT`) and deletes the request.
//!
//! A request lives under a short lease of its own, so one addressed to a gateway that died
//! (its sessions are gone with it) does not linger.
use etcd_client::{Client, EventType, PutOptions, WatchStream};
use serde::{Deserialize, Serialize};

use super::client::read_and_watch;
use super::registry::unix_now;
use super::{FleetError, Keys};

/// How long an unserved request stays.
pub const REQUEST_TTL_SECS: i64 = 30;

/// The value of a `terminate/` key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminateRequest {
    /// The gateway that asked (whose admin socket or console took the command).
    pub by: String,
    /// Unix seconds.
    pub at: u64,
}

/// Asks `gateway` to end its session `id`.
pub async fn request(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
    id: u32,
    by: &str,
) -> Result<(), FleetError> {
    let lease = client
        .lease_grant(REQUEST_TTL_SECS, None)
        .await
        .map_err(FleetError::Etcd)?
        .id();
    let value = serde_json::to_string(&TerminateRequest {
        by: by.to_owned(),
        at: unix_now(),
    })
    .expect("plain fields");
    client
        .put(
            keys.terminate(gateway, &id.to_string()),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(FleetError::Etcd)?;
    Ok(())
}

/// The requests addressed to `gateway`: those waiting now, and a watch for the ones to come
/// (from the revision after that read, so none written in between is missed).
pub async fn pending_and_watch(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
) -> Result<(Vec<u32>, WatchStream), FleetError> {
    let (got, stream) = read_and_watch(client, &keys.terminates_of(gateway)).await?;
    let pending = got
        .kvs()
        .iter()
        .filter_map(|kv| id_of(keys, gateway, kv.key_str().ok()?))
        .collect();
    Ok((pending, stream))
}

/// The session ids of the new requests in one watch message.
pub fn ids_in(keys: &Keys, gateway: &str, resp: &etcd_client::WatchResponse) -> Vec<u32> {
    resp.events()
        .iter()
        .filter(|ev| ev.event_type() == EventType::Put)
        .filter_map(|ev| id_of(keys, gateway, ev.kv()?.key_str().ok()?))
        .collect()
}

/// Removes a served request.
pub async fn done(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
    id: u32,
) -> Result<(), FleetError> {
    client
        .delete(keys.terminate(gateway, &id.to_string()), None)
        .await
        .map_err(FleetError::Etcd)?;
    Ok(())
}

fn id_of(keys: &Keys, gateway: &str, key: &str) -> Option<u32> {
    key.strip_prefix(&keys.terminates_of(gateway))?.parse().ok()
}
