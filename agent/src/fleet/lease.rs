//! The gateway's etcd lease: every key that describes something alive on this gateway
//! (presence, address blocks, sessions) is written under it, so a gateway that dies leaves
//! nothing behind once the TTL has passed, and nothing before.
//!
//! The gateway counts the lease as valid until `TTL` after it *sent* the last keep-alive that
//! etcd answered: etcd counts from when it received that keep-alive, which is later, so the
//! gateway never believes in a lease etcd has already expired (clocks are not compared: only
//! this host's monotonic clock is used).
use std::time::{Duration, Instant};

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper};

use super::FleetError;

pub struct GatewayLease {
    pub id: i64,
    ttl: Duration,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl GatewayLease {
    /// A new lease of `ttl_secs`; returns it and until when it is valid.
    pub async fn grant(
        client: &mut Client,
        ttl_secs: u64,
    ) -> Result<(GatewayLease, Instant), FleetError> {
        let sent = Instant::now();
        let ttl = Duration::from_secs(ttl_secs);
        let id = client
            .lease_grant(ttl_secs as i64, None)
            .await
            .map_err(FleetError::Etcd)?
            .id();
        let (keeper, stream) = client
            .lease_keep_alive(id)
            .await
            .map_err(FleetError::Etcd)?;
        Ok((
            GatewayLease {
                id,
                ttl,
                keeper,
                stream,
            },
            sent + ttl,
        ))
    }

    /// Takes up lease `id` again on a new connection (after etcd or the connection to it was
    /// lost): `None` when etcd has expired it (its keys are gone; a new lease is needed).
    /// A lease etcd still holds proves that no other gateway could take its blocks meanwhile
    /// (they are its keys), whatever this gateway's own clock said in between: etcd stopped
    /// entirely expires nothing and, when it comes back, gives every lease its TTL again.
    pub async fn resume(
        client: &mut Client,
        id: i64,
        ttl_secs: u64,
    ) -> Result<Option<(GatewayLease, Instant)>, FleetError> {
        let (keeper, stream) = match client.lease_keep_alive(id).await {
            Ok(k) => k,
            Err(e) => match lost_or(id, e) {
                FleetError::LeaseLost(_) => return Ok(None),
                e => return Err(e),
            },
        };
        let mut lease = GatewayLease {
            id,
            ttl: Duration::from_secs(ttl_secs),
            keeper,
            stream,
        };
        match lease.keep_alive().await {
            Ok(valid) => Ok(Some((lease, valid))),
            Err(FleetError::LeaseLost(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// How often to keep the lease alive: three tries within one TTL.
    pub fn interval(&self) -> Duration {
        self.ttl / 3
    }

    /// One keep-alive; returns until when the lease is valid now. An expired lease (etcd
    /// answers TTL 0: its keys are gone) is [`FleetError::LeaseLost`].
    pub async fn keep_alive(&mut self) -> Result<Instant, FleetError> {
        let sent = Instant::now();
        let answer = tokio::time::timeout(self.interval(), async {
            self.keeper.keep_alive().await?;
            self.stream.message().await
        })
        .await
        .map_err(|_| FleetError::WatchEnded("the lease keep-alive was not answered".into()))?
        .map_err(|e| lost_or(self.id, e))?;
        match answer {
            Some(r) if r.ttl() > 0 => Ok(sent + Duration::from_secs(r.ttl() as u64)),
            Some(_) => Err(FleetError::LeaseLost(self.id)),
            None => Err(FleetError::WatchEnded(
                "the lease keep-alive stream closed".into(),
            )),
        }
    }
}

/// An expired lease is answered either with TTL 0 or, by the client on a stream that etcd
/// closed, with "lease not found": both are [`FleetError::LeaseLost`] (a new lease is due;
/// taking the old one up again can never succeed), anything else an etcd error.
fn lost_or(id: i64, e: etcd_client::Error) -> FleetError {
    match &e {
        etcd_client::Error::LeaseKeepAliveError(m) if m.contains("lease not found") => {
            FleetError::LeaseLost(id)
        }
        etcd_client::Error::GRpcStatus(s) if s.message().contains("lease not found") => {
            FleetError::LeaseLost(id)
        }
        _ => FleetError::Etcd(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_not_found_is_a_lost_lease() {
        let e = lost_or(
            7,
            etcd_client::Error::LeaseKeepAliveError("lease not found".into()),
        );
        assert!(matches!(e, FleetError::LeaseLost(7)), "{e}");
        let e = lost_or(7, etcd_client::Error::LeaseKeepAliveError("other".into()));
        assert!(matches!(e, FleetError::Etcd(_)), "{e}");
    }
}
