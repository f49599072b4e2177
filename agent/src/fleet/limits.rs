//! Fleet-wide admission caps: `max_connections_per_user` and `max_connections` (the whole
//! endpoint). A new connection is admitted only by a transaction that proves no other
//! connection counted by the same cap was admitted anywhere since the count was read, so two
//! gateways cannot both admit the connection over a cap.
//!
//! For each cap that is on, admission reads its prefix (`users/<user>/`, `admitted/`: count
//! `n` at store revision `R`); with every `n < max` it commits `if mod_revision(prefix/*) <
//! R + 1` (for each prefix) `then put(prefix/<gateway>/<serial>, lease)` (each). A key created
//! anywhere after `R` fails the compare, and the admission is tried again with the new
//! counts. A disconnect deletes the keys; a dead gateway's keys go with its lease, so the
//! counts heal without a decrement.
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::gate::Caps;
use super::{FleetError, Keys};

/// Compare failures in a row before the admission gives up (refused as temporary): each
/// one means another connection counted by the same cap was admitted meanwhile.
const TRIES: usize = 8;

/// Where the caps are counted in etcd.
impl Caps {
    /// The keys one admitted connection holds, with the prefix and cap each counts against.
    fn keys(
        &self,
        keys: &Keys,
        gateway: &str,
        user: &str,
        serial: u64,
    ) -> Vec<(String, String, usize, bool)> {
        let serial = serial.to_string();
        let mut v = Vec::new();
        if let Some(max) = self.per_user {
            v.push((
                keys.user_connections(user),
                keys.user_connection(user, gateway, &serial),
                max,
                true,
            ));
        }
        if let Some(max) = self.total {
            v.push((
                keys.admissions(),
                keys.admission(gateway, &serial),
                max,
                false,
            ));
        }
        v
    }
}

/// The outcome of one admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The user holds this many connections in the fleet already.
    OverCap(usize),
    /// The endpoint holds this many connections in the fleet already.
    OverEndpointCap(usize),
    /// Every try lost a race with another admission counted by the same cap.
    Contended,
}

/// Admits connection `serial` of `user` on `gateway` if every cap of `caps` has room
/// fleet-wide; the keys live under `lease`.
pub async fn admit(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
    lease: i64,
    user: &str,
    serial: u64,
    caps: Caps,
) -> Result<Admission, FleetError> {
    let counted = caps.keys(keys, gateway, user, serial);
    for _ in 0..TRIES {
        let mut when = Vec::with_capacity(counted.len());
        for (prefix, _, max, is_user) in &counted {
            let got = client
                .get(
                    prefix.as_str(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
                .map_err(FleetError::Etcd)?;
            let n = usize::try_from(got.count()).unwrap_or(usize::MAX);
            if n >= *max {
                return Ok(if *is_user {
                    Admission::OverCap(n)
                } else {
                    Admission::OverEndpointCap(n)
                });
            }
            let read_at = got.header().map_or(0, |h| h.revision());
            when.push(
                Compare::mod_revision(prefix.as_str(), CompareOp::Less, read_at + 1).with_prefix(),
            );
        }
        let puts: Vec<TxnOp> = counted
            .iter()
            .map(|(_, key, _, _)| {
                TxnOp::put(key.as_str(), "", Some(PutOptions::new().with_lease(lease)))
            })
            .collect();
        let txn = Txn::new().when(when).and_then(puts);
        if client.txn(txn).await.map_err(FleetError::Etcd)?.succeeded() {
            return Ok(Admission::Admitted);
        }
    }
    Ok(Admission::Contended)
}

/// The connection ended (or never got established): it no longer counts (`held`: the keys
/// its admission wrote).
pub async fn release(client: &mut Client, held: &[String]) -> Result<(), FleetError> {
    for key in held {
        client
            .delete(key.as_str(), None)
            .await
            .map_err(FleetError::Etcd)?;
    }
    Ok(())
}

/// A connection admitted that never became a session is released after this long (the
/// handshake window is 60 s).
const UNSEEN_GRACE: std::time::Duration = std::time::Duration::from_secs(75);

struct Entry {
    /// The keys its admission wrote.
    held: Vec<String>,
    at: std::time::Instant,
    /// Seen as a live session since: released as soon as it is gone.
    seen: bool,
}

/// The connections this gateway admitted under the caps (its `users/` and `admitted/` keys).
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
        caps: Caps,
    ) -> Result<(), FleetError> {
        use crate::openvpn::session::{FailureCode, Refusal};
        if std::time::Instant::now() >= req.deadline {
            tracing::info!(user = %req.user, serial = req.serial, "fleet admission: the connection stopped waiting (refused as temporary) before etcd answered; not admitted");
            return Ok(());
        }
        let verdict = match admit(client, keys, gateway, lease, &req.user, req.serial, caps).await?
        {
            Admission::Admitted => {
                self.entries.insert(
                    req.serial,
                    Entry {
                        held: caps
                            .keys(keys, gateway, &req.user, req.serial)
                            .into_iter()
                            .map(|(_, key, _, _)| key)
                            .collect(),
                        at: std::time::Instant::now(),
                        seen: false,
                    },
                );
                Ok(())
            }
            Admission::OverCap(n) => Err(Refusal::new(
                FailureCode::UserConnectionLimit,
                format!(
                    "{n} connections of this user already (max_connections_per_user {})",
                    caps.per_user.unwrap_or(n)
                ),
            )),
            // Temporary: the endpoint is full now, a place frees when anyone disconnects.
            Admission::OverEndpointCap(n) => Err(Refusal::temporary(
                FailureCode::EndpointConnectionLimit,
                format!("the endpoint is full ({n} connections), try again later"),
            )),
            Admission::Contended => Err(Refusal::temporary(
                FailureCode::FleetUnavailable,
                "too many simultaneous connections, try again",
            )),
        };
        // The thread that asked may have given up meanwhile (its timeout): the connection
        // was refused, so its place is released at once (found by the etcd outage test: a
        // request queued during the outage, admitted when etcd came back, held the user's
        // only place for 75 s and the user's own retry was refused as over the cap).
        let admitted = verdict.is_ok();
        if req.reply.send(verdict).is_err() && admitted {
            // Forgotten only once released: after an error the sweep releases it later.
            if let Some(e) = self.entries.get(&req.serial) {
                release(client, &e.held).await?;
            }
            self.entries.remove(&req.serial);
        }
        Ok(())
    }

    /// Writes every admitted connection again under a new lease (the old one may be gone).
    pub async fn renew(&self, client: &mut Client, lease: i64) -> Result<(), FleetError> {
        for e in self.entries.values() {
            for key in &e.held {
                client
                    .put(key.as_str(), "", Some(PutOptions::new().with_lease(lease)))
                    .await
                    .map_err(FleetError::Etcd)?;
            }
        }
        Ok(())
    }

    /// Releases the connections that ended (`live`: the serials of the live sessions).
    pub async fn sweep(
        &mut self,
        client: &mut Client,
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
                release(client, &e.held).await?;
            }
            self.entries.remove(&serial);
        }
        Ok(())
    }
}
