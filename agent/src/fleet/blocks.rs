//! Address blocks: the client pool is cut into blocks (a /26, or the whole pool when it is
//! smaller) and each gateway leases blocks from etcd, so two gateways never hand out one
//! address.
//!
//! A block is claimed with one transaction, `if create_revision(block) == 0 then put(block,
//! gateway, lease)`: of two gateways racing for a block exactly one wins. The key lives under
//! the holder's lease, so a dead gateway's blocks return to the pool when its lease expires,
//! never before. Gateways start their search at different places (a hash of their id) so
//! that they rarely race at all.
use std::collections::HashSet;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use ipnet::Ipv4Net;

use super::{FleetError, Keys};

/// The prefix length of a block: 64 addresses, 1,024 blocks in a /16 pool.
pub const BLOCK_PREFIX: u8 = 26;

/// The blocks of `pool`, in address order.
pub fn blocks_of(pool: Ipv4Net) -> Vec<Ipv4Net> {
    let len = BLOCK_PREFIX.max(pool.prefix_len());
    pool.subnets(len).map(|s| s.collect()).unwrap_or_default()
}

/// Where `gateway` starts looking among `n` blocks (FNV-1a of its id).
fn start_of(gateway: &str, n: usize) -> usize {
    let h = gateway.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h % n.max(1) as u64) as usize
}

/// Claims `block` for `gateway` under `lease` if nobody holds it; `true` when it is ours now.
pub async fn try_claim(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
    lease: i64,
    block: Ipv4Net,
) -> Result<bool, FleetError> {
    let key = keys.block(block);
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            gateway,
            Some(PutOptions::new().with_lease(lease)),
        )]);
    Ok(client.txn(txn).await.map_err(FleetError::Etcd)?.succeeded())
}

/// The blocks held by anyone now.
pub async fn taken(client: &mut Client, keys: &Keys) -> Result<HashSet<Ipv4Net>, FleetError> {
    let got = client
        .get(
            keys.blocks(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .map_err(FleetError::Etcd)?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok().and_then(|k| keys.parse_block(k)))
        .collect())
}

/// Claims one more free block of `pool` for `gateway`; `None` when every block is held.
pub async fn claim_one(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
    lease: i64,
    pool: Ipv4Net,
) -> Result<Option<Ipv4Net>, FleetError> {
    let all = blocks_of(pool);
    let taken = taken(client, keys).await?;
    let start = start_of(gateway, all.len());
    for i in 0..all.len() {
        let b = all[(start + i) % all.len()];
        // Lost a race for a block that looked free: on to the next one.
        if !taken.contains(&b) && try_claim(client, keys, gateway, lease, b).await? {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// After a new lease (the old one expired while etcd was out of reach): claims again the
/// blocks this gateway held, which its live sessions still use. Returns the ones it got back;
/// a block another gateway took meanwhile is lost (logged by the caller).
pub async fn reclaim(
    client: &mut Client,
    keys: &Keys,
    gateway: &str,
    lease: i64,
    held: &[Ipv4Net],
) -> Result<Vec<Ipv4Net>, FleetError> {
    let mut kept = Vec::new();
    for &b in held {
        if try_claim(client, keys, gateway, lease, b).await? {
            kept.push(b);
        } else {
            // Still ours under the old lease (it has not expired yet)? Move it to the new one.
            let got = client
                .get(keys.block(b), None)
                .await
                .map_err(FleetError::Etcd)?;
            let Some(kv) = got
                .kvs()
                .first()
                .filter(|kv| kv.value() == gateway.as_bytes())
            else {
                continue;
            };
            // Moved only if it is still that same key (not expired and claimed anew by
            // another gateway between the read and this write).
            let key = keys.block(b);
            let txn = Txn::new()
                .when([Compare::create_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.create_revision(),
                )])
                .and_then([TxnOp::put(
                    key.as_str(),
                    gateway,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if client.txn(txn).await.map_err(FleetError::Etcd)?.succeeded() {
                kept.push(b);
            }
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_cut_into_26s_or_kept_whole() {
        let b = blocks_of("10.8.0.0/24".parse().unwrap());
        assert_eq!(b.len(), 4);
        assert_eq!(b[1], "10.8.0.64/26".parse::<Ipv4Net>().unwrap());
        assert_eq!(blocks_of("10.8.0.0/16".parse().unwrap()).len(), 1024);
        assert_eq!(
            blocks_of("10.8.0.0/28".parse().unwrap()),
            vec!["10.8.0.0/28".parse::<Ipv4Net>().unwrap()]
        );
    }

    #[test]
    fn gateways_start_at_different_blocks() {
        let starts: HashSet<usize> = ["gw-a", "gw-b", "gw-c", "gw-d"]
            .iter()
            .map(|g| start_of(g, 1024))
            .collect();
        assert!(starts.len() >= 3, "{starts:?}");
        assert_eq!(start_of("gw-a", 1), 0);
    }
}
