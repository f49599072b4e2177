//! The presence key `gateways/<gateway>`: that a gateway is alive (under its lease), what it
//! runs, and the fingerprint of its session-token secret.
//!
//! Session tokens (`[auth] token_secret_file`) are signed with a host-local secret: a token
//! one gateway pushed is accepted by another (after a failover) only if both have the same
//! secret. The secret stays a local file the operator copies to every gateway (it is never
//! stored in etcd); each gateway publishes a fingerprint of it in its presence, and every
//! gateway compares the others' with its own, so `status` names the gateways whose tokens it
//! would refuse. The fingerprint is a domain-separated SHA-256 of the secret, cut to 64 bits:
//! it tells secrets apart and reveals nothing usable about one.
use std::path::Path;

use etcd_client::{Client, GetOptions, PutOptions};
use serde::{Deserialize, Serialize};

use super::{FleetError, Keys};

/// The value of `gateways/<gateway>`.
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
    /// [`fingerprint`] of the gateway's session-token secret; `None` without one.
    #[serde(default)]
    pub token_secret: Option<String>,
}

/// The fingerprint of a session-token secret (the first line of its file, as the token code
/// reads it).
pub fn fingerprint(secret: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"portcullis session-token secret fingerprint\0");
    ctx.update(secret.as_bytes());
    ctx.finish().as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fingerprint of the secret in `path`; `None` without a file or when it cannot be read
/// (`check` has refused such a file already).
pub fn fingerprint_file(path: Option<&Path>) -> Option<String> {
    let text = std::fs::read_to_string(path?).ok()?;
    Some(fingerprint(crate::auth::token::first_line(&text)))
}

/// The gateways alive (with a presence key), in key order.
pub async fn read_all(client: &mut Client, keys: &Keys) -> Result<Vec<Presence>, FleetError> {
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
            // A value this version cannot read still says the gateway is alive.
            let p = serde_json::from_slice(kv.value()).unwrap_or(Presence {
                gateway: id.clone(),
                version: "?".into(),
                since: 0,
                revision: None,
                token_secret: None,
            });
            Some(Presence { gateway: id, ..p })
        })
        .collect())
}

/// Writes this gateway's presence under `lease`.
pub async fn put(
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

/// The other gateways whose session-token secret differs from `own` (also: one has a
/// secret and the other none): tokens do not move between this gateway and those.
pub fn token_mismatch(own_id: &str, own: Option<&str>, all: &[Presence]) -> Vec<String> {
    all.iter()
        .filter(|p| p.gateway != own_id && p.token_secret.as_deref() != own)
        .map(|p| p.gateway.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(id: &str, fp: Option<&str>) -> Presence {
        Presence {
            gateway: id.into(),
            version: "0".into(),
            since: 0,
            revision: None,
            token_secret: fp.map(str::to_owned),
        }
    }

    #[test]
    fn fingerprints_tell_secrets_apart_and_are_short() {
        let a = fingerprint("a secret of at least thirty-two characters");
        assert_eq!(a, fingerprint("a secret of at least thirty-two characters"));
        assert_ne!(a, fingerprint("a secret of at least thirty-two characterz"));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn a_different_or_missing_secret_is_a_mismatch() {
        let all = [
            p("gw-a", Some("aa")),
            p("gw-b", Some("aa")),
            p("gw-c", Some("bb")),
            p("gw-d", None),
        ];
        assert_eq!(token_mismatch("gw-a", Some("aa"), &all), ["gw-c", "gw-d"]);
        assert_eq!(token_mismatch("gw-d", None, &all), ["gw-a", "gw-b", "gw-c"]);
    }
}
