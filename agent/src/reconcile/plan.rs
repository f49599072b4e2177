//! The plan: which writes turn one slot's contents into a compiled policy's.
use std::collections::{BTreeMap, BTreeSet};

use super::{slot_for, MapOp, SlotContents};
use crate::policy::compile::CompiledPolicy;

/// The ops that turn `current` (what generation `next_generation`'s slot holds now) into
/// `desired`, then activate it. Deletes come first so LPM tries near capacity have room for
/// the upserts; `MetaSet` comes last before the one `Activate`.
pub fn plan_generation(
    current: &SlotContents,
    desired: &CompiledPolicy,
    next_generation: u32,
) -> Vec<MapOp> {
    let slot = slot_for(next_generation);
    let want = SlotContents::from_compiled(desired, next_generation);
    let mut ops = Vec::new();

    for &(prefix_len, addr) in current.authz.keys().filter(|k| !want.authz.contains_key(k)) {
        ops.push(MapOp::AuthzDelete {
            slot,
            prefix_len,
            addr,
        });
    }
    for &(prefix_len, addr) in current
        .routes
        .keys()
        .filter(|k| !want.routes.contains_key(k))
    {
        ops.push(MapOp::RouteDelete {
            slot,
            prefix_len,
            addr,
        });
    }
    for &(prefix_len, addr) in current
        .sg_nodes
        .keys()
        .filter(|k| !want.sg_nodes.contains_key(k))
    {
        ops.push(MapOp::SgNodeDelete {
            slot,
            prefix_len,
            addr,
        });
    }

    for (&(prefix_len, addr), &value) in changed(&current.authz, &want.authz) {
        ops.push(MapOp::AuthzUpsert {
            slot,
            prefix_len,
            addr,
            value,
        });
    }
    for (&(prefix_len, addr), &value) in changed(&current.routes, &want.routes) {
        ops.push(MapOp::RouteUpsert {
            slot,
            prefix_len,
            addr,
            value,
        });
    }
    for (&(prefix_len, addr), &value) in changed(&current.sg_nodes, &want.sg_nodes) {
        ops.push(MapOp::SgNodeUpsert {
            slot,
            prefix_len,
            addr,
            value,
        });
    }

    // Arrays: rewrite changed indices, zero the stale ones (unreachable, but a dump of the
    // slot should show exactly this generation).
    for (index, range) in array_diff(&current.sg_ranges, &want.sg_ranges) {
        ops.push(MapOp::SgRangeSet { slot, index, range });
    }
    for (index, target) in array_diff(&current.targets, &want.targets) {
        ops.push(MapOp::TargetSet {
            slot,
            index,
            target,
        });
    }

    if current.meta != want.meta {
        ops.push(MapOp::MetaSet {
            slot,
            meta: want.meta,
        });
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
