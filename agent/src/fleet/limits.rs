//! `max_connections_per_user` across the fleet: a new connection of a user is admitted only by
//! a transaction that proves no other connection of that user was admitted anywhere since
//! the count was read, so two gateways cannot both admit the connection over the cap.
//!
//! Admission reads `users/<user>/` (count `n` at store revision `R`); with `n < max` it
//! commits `if mod_revision(users/<user>/*) < R + 1 then put(users/<user>/<gateway>/<serial>,
//! lease)`. A key created anywhere after `R` fails the compare, and the admission is tried
//! again with the new count. A disconnect deletes the key; a dead gateway's keys go with its
//! lease, so the count heals without a decrement.
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::{FleetError, Keys};

/// Compare failures in a row before the admission gives up (refused as temporary): each
/// one means another connection of the same user was admitted meanwhile.
const TRIES: usize = 8;

/// The outcome of one admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The user holds this many connections in the fleet already.
    OverCap(usize),
    /// Every try lost a race with another admission of the same user.
    Contended,
}

/// Admits connection `serial` of `user` on `gateway` if the user holds fewer than `max`
/// connections fleet-wide; the key lives under `lease`.
pub async fn admit(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
    lease: i64,
    user: &str,
    serial: u64,
    max: usize,
) -> Result<Admission, FleetError> {
    let prefix = keys.user_connections(user);
    let key = keys.user_connection(user, gateway, &serial.to_string());
    for _ in 0..TRIES {
        let got = client
            .get(
                prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_err(FleetError::Etcd)?;
        let n = usize::try_from(got.count()).unwrap_or(usize::MAX);
        if n >= max {
            return Ok(Admission::OverCap(n));
        }
        let read_at = got.header().map_or(0, |h| h.revision());
        let txn = Txn::new()
            .when([
                Compare::mod_revision(prefix.as_str(), CompareOp::Less, read_at + 1).with_prefix(),
            ])
            .and_then([TxnOp::put(
                key.as_str(),
                "",
                Some(PutOptions::new().with_lease(lease)),
            )]);
        if client.txn(txn).await.map_err(FleetError::Etcd)?.succeeded() {
            return Ok(Admission::Admitted);
        }
    }
    Ok(Admission::Contended)
}

/// The connection ended (or never got established): it no longer counts.
pub async fn release(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
    user: &str,
    serial: u64,
) -> Result<(), FleetError> {
    client
        .delete(
            keys.user_connection(user, gateway, &serial.to_string()),
            None,
        )
        .await
        .map_err(FleetError::Etcd)?;
    Ok(())
}

/// A connection admitted that never became a session is released after this long (the
/// handshake window is 60 s).
const UNSEEN_GRACE: std::time::Duration = std::time::Duration::from_secs(75);

struct Entry {
    user: String,
    at: std::time::Instant,
    /// Seen as a live session since: released as soon as it is gone.
    seen: bool,
}

/// The connections this gateway admitted under the cap (its `users/` keys).
#[derive(Default)]
pub struct Admitted {
    entries: std::collections::HashMap<u64, Entry>,
}

impl Admitted {
    /// Decides one admission request and records it.
    pub async fn decide(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        gateway: &str,
        lease: i64,
        req: &super::gate::AdmitRequest,
        max: usize,
    ) -> Result<(), FleetError> {
        use crate::openvpn::session::{FailureCode, Refusal};
        let verdict = match admit(client, keys, gateway, lease, &req.user, req.serial, max).await? {
            Admission::Admitted => {
                self.entries.insert(
                    req.serial,
                    Entry {
                        user: req.user.clone(),
                        at: std::time::Instant::now(),
                        seen: false,
                    },
                );
                Ok(())
            }
            Admission::OverCap(n) => Err(Refusal::new(
                FailureCode::UserConnectionLimit,
                format!("{n} connections of this user already (max_connections_per_user {max})"),
            )),
            Admission::Contended => Err(Refusal::temporary(
                FailureCode::FleetUnavailable,
                "too many simultaneous connections of this user, try again",
            )),
        };
        // The thread that asked may have given up (timeout): its session then never
        // becomes live and the sweep releases the key.
        let _ = req.reply.send(verdict);
        Ok(())
    }

    /// Writes every admitted connection again under a new lease (the old one may be gone).
    pub async fn renew(
        &self,
        client: &mut Client,
        keys: &Keys,
        gateway: &str,
        lease: i64,
    ) -> Result<(), FleetError> {
        for (serial, e) in &self.entries {
            client
                .put(
                    keys.user_connection(&e.user, gateway, &serial.to_string()),
                    "",
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await
                .map_err(FleetError::Etcd)?;
        }
        Ok(())
    }

    /// Releases the connections that ended (`live`: the serials of the live sessions).
    pub async fn sweep(
        &mut self,
        client: &mut Client,
        keys: &Keys,
        gateway: &str,
        live: &std::collections::HashSet<u64>,
    ) -> Result<(), FleetError> {
        for (serial, e) in self.entries.iter_mut() {
            e.seen |= live.contains(serial);
        }
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(s, e)| !live.contains(s) && (e.seen || e.at.elapsed() > UNSEEN_GRACE))
            .map(|(s, _)| *s)
            .collect();
        for serial in gone {
            if let Some(e) = self.entries.get(&serial) {
                release(client, keys, gateway, &e.user, serial).await?;
            }
            self.entries.remove(&serial);
        }
        Ok(())
    }
}
