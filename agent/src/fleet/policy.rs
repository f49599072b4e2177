//! One policy for the fleet: `publish` writes the shared part of a checked file to the
//! `policy` key; [`follow`] hands a gateway the current part and then every new revision.
//!
//! The follower reads the key and then watches it from the revision after that read, so a
//! publish between the read and the watch is replayed by etcd, not missed. After any error
//! (a member gone, the watch cancelled or compacted) it connects again and starts over with a
//! read: the newest policy is never lost, and a revision it already delivered is not sent
//! twice.
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;

use super::client::Rotation;
use super::{FleetError, Keys};
use crate::config::{FleetSection, SharedConfig};

/// How long the follower waits before connecting again after an error.
const RETRY: Duration = Duration::from_millis(500);

/// A published revision of the shared part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// The etcd revision of the publish (the `policy` key's `mod_revision`): what `status`
    /// reports as the revision a gateway runs.
    pub revision: i64,
    pub shared: SharedConfig,
}

/// What the follower tells the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyUpdate {
    /// A new revision to apply.
    Published(Box<Published>),
    /// A revision whose text is not a shared part (written by something other than
    /// `fleet publish`): the running policy stays.
    Unreadable { revision: i64, error: String },
    /// etcd cannot be reached (or the watch broke): the running policy stays, the follower
    /// keeps trying. Sent once per outage.
    Degraded(String),
    /// Following again after [`PolicyUpdate::Degraded`]; a newer revision, if any, follows.
    Following,
}

/// Writes the shared part; returns its revision. The caller has validated the whole file
/// exactly as `check` does.
pub async fn publish(
    client: &mut Client,
    keys: &Keys,
    shared: &SharedConfig,
) -> Result<i64, FleetError> {
    let resp = client
        .put(keys.policy(), shared.to_text(), None)
        .await
        .map_err(FleetError::Etcd)?;
    Ok(resp.header().map_or(0, |h| h.revision()))
}

fn update(revision: i64, value: &[u8]) -> PolicyUpdate {
    match std::str::from_utf8(value)
        .map_err(|e| e.to_string())
        .and_then(|t| SharedConfig::from_text(t).map_err(|e| e.to_string()))
    {
        Ok(shared) => PolicyUpdate::Published(Box::new(Published { revision, shared })),
        Err(error) => PolicyUpdate::Unreadable { revision, error },
    }
}

/// Follows the `policy` key until `tx` is closed, sending every revision newer than `after`
/// (0: the current one too).
pub async fn follow(
    section: FleetSection,
    keys: Keys,
    mut after: i64,
    tx: mpsc::Sender<PolicyUpdate>,
) {
    let mut degraded = false;
    let mut rotation = Rotation::default();
    loop {
        let mut read = false;
        let started = tokio::time::Instant::now();
        let r = follow_once(
            &section,
            &keys,
            &mut rotation,
            (&mut after, &mut degraded, &mut read),
            &tx,
        )
        .await;
        match r {
            Ok(()) => return, // the gateway stopped listening
            Err(e) => {
                tracing::warn!(error = %e, "following the fleet policy; connecting again");
                rotation.failed();
                // After a connection that worked a while, the next member at once: one etcd
                // member dying is not an outage (a publish meanwhile is read within the 1 s
                // goal). One that fails as soon as it is read waits, never spins.
                if read && started.elapsed() >= RETRY {
                    continue;
                }
                if !degraded {
                    degraded = true;
                    if tx
                        .send(PolicyUpdate::Degraded(e.to_string()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}

/// One connection's worth of following: `Ok` when `tx` closed, `Err` to start over. It
/// updates the last revision sent, whether an outage was reported (cleared when etcd
/// answers again), and whether the policy was read on this connection.
async fn follow_once(
    section: &FleetSection,
    keys: &Keys,
    rotation: &mut Rotation,
    (after, degraded, read): (&mut i64, &mut bool, &mut bool),
    tx: &mpsc::Sender<PolicyUpdate>,
) -> Result<(), FleetError> {
    let mut client = rotation.connect(section).await?;
    let got = client
        .get(keys.policy(), None)
        .await
        .map_err(FleetError::Etcd)?;
    let read_at = got.header().map_or(0, |h| h.revision());
    *read = true;
    if std::mem::take(degraded) && tx.send(PolicyUpdate::Following).await.is_err() {
        return Ok(());
    }
    if let Some(kv) = got.kvs().first() {
        if kv.mod_revision() > *after {
            *after = kv.mod_revision();
            if tx.send(update(*after, kv.value())).await.is_err() {
                return Ok(());
            }
        }
    }
    let mut stream = client
        .watch(
            keys.policy(),
            Some(WatchOptions::new().with_start_revision(read_at + 1)),
        )
        .await
        .map_err(FleetError::Etcd)?;
    loop {
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            msg = stream.message() => {
                let Some(resp) = msg.map_err(FleetError::Etcd)? else {
                    return Err(FleetError::WatchEnded("the stream closed".into()));
                };
                if resp.canceled() || resp.compact_revision() != 0 {
                    return Err(FleetError::WatchEnded(format!(
                        "cancelled ({}), compacted at {}",
                        resp.cancel_reason(),
                        resp.compact_revision()
                    )));
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    if ev.event_type() != EventType::Put || kv.mod_revision() <= *after {
                        // A deleted policy keeps the running one: only a publish changes it.
                        continue;
                    }
                    *after = kv.mod_revision();
                    if tx.send(update(*after, kv.value())).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_a_shared_part_is_reported_not_applied() {
        assert!(matches!(
            update(7, b"not = [toml"),
            PolicyUpdate::Unreadable { revision: 7, .. }
        ));
        assert!(matches!(
            update(8, &[0xff, 0xfe]),
            PolicyUpdate::Unreadable { revision: 8, .. }
        ));
    }
}
