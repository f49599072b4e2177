//! The plan: which writes turn one slot's contents into a compiled policy's.
use std::collections::{BTreeMap, BTreeSet};

use portcullis_common::AuthzValue;

use super::{array_entries, lpm_entries, slot_for, LpmKey, MapOp, PolicyDelta, SlotContents};
use crate::policy::compile::CompiledPolicy;

/// The ops that turn `current` (what generation `next_generation`'s slot holds now) into
/// `desired`, then activate it. Deletes come first so LPM tries near capacity have room for
/// the upserts; `MetaSet` comes last before the one `Activate`.
pub fn plan_generation(
    current: &SlotContents,
    desired: &CompiledPolicy,
    next_generation: u32,
) -> Vec<MapOp> {
    plan_generation_delta(current, desired, next_generation, &PolicyDelta::all())
}

/// [`plan_generation`] when `current` may differ from `desired` only where `dirty` says:
/// the authorization keys it names (all if `None`), the security-group maps if set; routes,
/// targets and the meta are always compared. Gives exactly [`plan_generation`]'s ops (same
/// order) under that condition, looking at the named keys only.
pub fn plan_generation_delta(
    current: &SlotContents,
    desired: &CompiledPolicy,
    next_generation: u32,
    dirty: &PolicyDelta,
) -> Vec<MapOp> {
    let slot = slot_for(next_generation);
    let mut ops = Vec::new();

    // Authorization: (key, desired value) of every key that may differ.
    let authz_writes: Vec<(LpmKey, Option<AuthzValue>)> = match &dirty.authz {
        None => {
            let want = lpm_entries(&desired.authz);
            let mut keys: BTreeSet<LpmKey> = current.authz.keys().copied().collect();
            keys.extend(want.keys().copied());
            keys.into_iter()
                .map(|k| (k, want.get(&k).copied()))
                .collect()
        }
        Some(keys) => keys
            .iter()
            .map(|&k| {
                let want = desired
                    .authz
                    .binary_search_by_key(&k, |&(l, n, _)| (l, n))
                    .ok()
                    .map(|i| desired.authz[i].2);
                (k, want)
            })
            .collect(),
    };
    let routes = lpm_entries(&desired.routes);
    let sg_nodes = dirty
        .security_groups
        .then(|| lpm_entries(&desired.sg_nodes));

    for &((prefix_len, addr), _) in authz_writes
        .iter()
        .filter(|(k, w)| w.is_none() && current.authz.contains_key(k))
    {
        ops.push(MapOp::AuthzDelete {
            slot,
            prefix_len,
            addr,
        });
    }
    for &(prefix_len, addr) in current.routes.keys().filter(|k| !routes.contains_key(k)) {
        ops.push(MapOp::RouteDelete {
            slot,
            prefix_len,
            addr,
        });
    }
    if let Some(want) = &sg_nodes {
        for &(prefix_len, addr) in current.sg_nodes.keys().filter(|k| !want.contains_key(k)) {
            ops.push(MapOp::SgNodeDelete {
                slot,
                prefix_len,
                addr,
            });
        }
    }

    for &((prefix_len, addr), want) in &authz_writes {
        if let Some(value) = want.filter(|w| current.authz.get(&(prefix_len, addr)) != Some(w)) {
            ops.push(MapOp::AuthzUpsert {
                slot,
                prefix_len,
                addr,
                value,
            });
        }
    }
    for (&(prefix_len, addr), &value) in changed(&current.routes, &routes) {
        ops.push(MapOp::RouteUpsert {
            slot,
            prefix_len,
            addr,
            value,
        });
    }
    if let Some(want) = &sg_nodes {
        for (&(prefix_len, addr), &value) in changed(&current.sg_nodes, want) {
            ops.push(MapOp::SgNodeUpsert {
                slot,
                prefix_len,
                addr,
                value,
            });
        }
    }

    // Arrays: rewrite changed indices, zero the stale ones (unreachable, but a dump of the
    // slot should show exactly this generation).
    if dirty.security_groups {
        for (index, range) in array_diff(&current.sg_ranges, &array_entries(&desired.sg_ranges)) {
            ops.push(MapOp::SgRangeSet { slot, index, range });
        }
    }
    for (index, target) in array_diff(&current.targets, &array_entries(&desired.targets)) {
        ops.push(MapOp::TargetSet {
            slot,
            index,
            target,
        });
    }

    let meta = desired.meta(next_generation);
    if current.meta != meta {
        ops.push(MapOp::MetaSet { slot, meta });
    }
    ops.push(MapOp::Activate {
        generation: next_generation,
    });
    ops
}

fn changed<'a, K: Ord, V: PartialEq>(
    current: &'a BTreeMap<K, V>,
    want: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, &'a V)> {
    want.iter().filter(move |(k, v)| current.get(k) != Some(v))
}

fn array_diff<V: bytemuck::Pod + PartialEq>(
    current: &BTreeMap<u32, V>,
    want: &BTreeMap<u32, V>,
) -> Vec<(u32, V)> {
    let indices: BTreeSet<u32> = current.keys().chain(want.keys()).copied().collect();
    indices
        .into_iter()
        .filter_map(|i| {
            let w = want
                .get(&i)
                .copied()
                .unwrap_or_else(bytemuck::Zeroable::zeroed);
            let c = current
                .get(&i)
                .copied()
                .unwrap_or_else(bytemuck::Zeroable::zeroed);
            (w != c).then_some((i, w))
        })
        .collect()
}
