//! Fleet-wide session-token revocation. A token is valid on every gateway that shares
//! `auth.token_secret_file`, so a token revoked by `connections terminate` on one gateway
//! must be refused by all of them: the gateway that revokes writes
//! `revoked-tokens/<session id hex>`, and every gateway reads those keys when it joins and
//! watches them into its [`Revoked`] set.
//!
//! A key lives under a lease of its own of the token's remaining lifetime, not under the
//! writer's lease: the revocation must outlive the gateway that made it, and it is useless
//! once the token would have expired anyway.
//!
//! The queue of revocations etcd has not taken yet is the local set itself: at each join,
//! and after each revocation made here, every entry of the set that etcd does not hold is
//! written. A revocation made while etcd is out of reach applies here at once and reaches
//! the fleet when the member joins again (also after a restart in between: the set is
//! persisted in `auth.token_revocation_file`).
use std::collections::HashSet;
use std::sync::Arc;

use etcd_client::{Client, EventType, PutOptions, WatchStream};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::client::read_and_watch;
use super::registry::unix_now;
use super::{FleetError, Keys};
use crate::auth::revoked::{hex, parse_hex, Revoked, SessionId};

/// The value of a `revoked-tokens/` key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Unix seconds at which the token would have expired.
    pub until: u64,
    /// The gateway that wrote it.
    pub by: String,
}

/// One gateway's side: its revoked set, and what etcd holds of it.
pub struct Revocations {
    revoked: Arc<Revoked>,
    local: watch::Receiver<u64>,
    /// The token sessions etcd holds a key for, as last read or watched.
    in_etcd: HashSet<SessionId>,
}

impl Revocations {
    pub fn new(revoked: Arc<Revoked>) -> Revocations {
        let local = revoked.local_revocations();
        Revocations {
            revoked,
            local,
            in_etcd: HashSet::new(),
        }
    }

    /// At a join: adds every revocation etcd holds, writes those of this gateway etcd does
    /// not hold (made while it was out of reach), and watches for the ones to come (from the
    /// revision after the read, so none written in between is missed; a full read at each
    /// join also covers what a compaction took from the watch's history).
    pub async fn join(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        gateway: &str,
    ) -> Result<WatchStream, FleetError> {
        let (got, stream) = read_and_watch(client, &keys.revoked_tokens()).await?;
        self.in_etcd.clear();
        let now = unix_now();
        let found: Vec<(SessionId, u64)> = got
            .kvs()
            .iter()
            .filter_map(|kv| parse(keys, kv.key_str().ok()?, kv.value()))
            .collect();
        self.in_etcd.extend(found.iter().map(|(id, _)| *id));
        self.revoked.add(&found, now);
        // Marks what is seen now: the write below covers it.
        self.local.borrow_and_update();
        self.publish(client, keys, gateway).await?;
        Ok(stream)
    }

    /// Adds the revocations of one watch message to the set.
    pub fn apply(&mut self, keys: &Keys, resp: &etcd_client::WatchResponse) {
        let found: Vec<(SessionId, u64)> = resp
            .events()
            .iter()
            .filter(|ev| ev.event_type() == EventType::Put)
            .filter_map(|ev| {
                let kv = ev.kv()?;
                parse(keys, kv.key_str().ok()?, kv.value())
            })
            .collect();
        if found.is_empty() {
            return;
        }
        tracing::info!(
            count = found.len(),
            "fleet: session tokens revoked by a gateway of the fleet"
        );
        self.in_etcd.extend(found.iter().map(|(id, _)| *id));
        self.revoked.add(&found, unix_now());
    }

    /// Waits for a revocation made on this gateway.
    pub async fn local_revocation(this: &mut Option<Revocations>) {
        match this {
            Some(r) => {
                if r.local.changed().await.is_err() {
                    // The set is gone with the endpoint: nothing more will come.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Writes every live revocation etcd does not hold, each under a lease of its token's
    /// remaining lifetime. One that fails stays unwritten: the member starts over and writes
    /// it at the next join.
    pub async fn publish(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        gateway: &str,
    ) -> Result<(), FleetError> {
        let now = unix_now();
        for (id, until) in self.revoked.entries(now) {
            if self.in_etcd.contains(&id) {
                continue;
            }
            let ttl = i64::try_from(until - now).unwrap_or(i64::MAX);
            let lease = client
                .lease_grant(ttl, None)
                .await
                .map_err(FleetError::Etcd)?
                .id();
            let value = serde_json::to_string(&Revocation {
                until,
                by: gateway.to_owned(),
            })
            .expect("plain fields");
            client
                .put(
                    keys.revoked_token(&hex(&id)),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(FleetError::Etcd)?;
            tracing::info!(token_session = %hex(&id), until, "fleet: session token revocation written");
            self.in_etcd.insert(id);
        }
        Ok(())
    }
}

/// The token session and end of one `revoked-tokens/` key (none for a malformed one).
fn parse(keys: &Keys, key: &str, value: &[u8]) -> Option<(SessionId, u64)> {
    let id = parse_hex(key.strip_prefix(&keys.revoked_tokens())?)?;
    let v: Revocation = serde_json::from_slice(value).ok()?;
    Some((id, v.until))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_malformed_ones_are_skipped() {
        let k = Keys::new("corp");
        let id = *b"session-id-1";
        let key = k.revoked_token(&hex(&id));
        assert_eq!(
            key,
            "/portcullis/corp/revoked-tokens/73657373696f6e2d69642d31"
        );
        let v = br#"{"until":5000,"by":"gw-a"}"#;
        assert_eq!(parse(&k, &key, v), Some((id, 5_000)));
        assert_eq!(parse(&k, &key, b"garbage"), None);
        assert_eq!(parse(&k, &k.revoked_token("abc"), v), None);
        assert_eq!(
            parse(&Keys::new("other"), &key, v),
            None,
            "another endpoint's"
        );
    }
}
