//! Reconciler: makes the data path's policy maps equal to a [`CompiledPolicy`], one whole
//! generation at a time.
//!
//! The policy maps are double-buffered: generation `g` lives in slot `g % 2`, and
//! `policy_active` names the live generation. A new generation is written completely into
//! the inactive slot (diffed against what that slot holds, so only changes are written),
//! then activated with one write. Packets read the generation once, so none sees half a
//! policy, and the live slot is never written. If applying fails midway nothing is
//! activated; the next reconcile diffs against the partly written slot and finishes it.
//!
//! Everything except [`reconcile`]'s calls through the [`PolicyMaps`] trait is pure.
//!
//! Layout: [`plan`] (the ops from one slot's contents to the next), this file (the slot
//! model, the ops, the trait and [`reconcile`], which applies a plan), [`shadow`] (what a
//! write does to a slot, and the capacities it must fit), [`fake`] (the in-memory data path).
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use portcullis_common::{
    map_names, AuthzValue, PolicyMeta, PortRange, RouteValue, SgNode, Target, MAX_SG_RANGES,
    MAX_TARGETS,
};

use crate::policy::compile::{CompiledPolicy, LpmEntry};
use crate::policy::compiled_eval::{lpm_map, CompiledView};

pub use crate::policy::compile::{LpmKey, PolicyDelta};

/// The slot a generation lives in.
pub fn slot_for(generation: u32) -> u8 {
    (generation % 2) as u8
}

/// What one slot of the policy maps holds. Array maps (`sg_ranges`, `targets`) list only
/// entries that are not all-zero, since every index of a BPF array exists and unwritten
/// entries read as zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotContents {
    pub authz: BTreeMap<LpmKey, AuthzValue>,
    pub routes: BTreeMap<LpmKey, RouteValue>,
    pub sg_nodes: BTreeMap<LpmKey, SgNode>,
    pub sg_ranges: BTreeMap<u32, PortRange>,
    pub targets: BTreeMap<u32, Target>,
    /// `policy_meta[slot]`.
    pub meta: PolicyMeta,
}

impl SlotContents {
    /// The exact contents a slot must hold to serve `policy` as `generation`.
    pub fn from_compiled(policy: &CompiledPolicy, generation: u32) -> Self {
        SlotContents {
            authz: lpm_entries(&policy.authz),
            routes: lpm_entries(&policy.routes),
            sg_nodes: lpm_entries(&policy.sg_nodes),
            sg_ranges: array_entries(&policy.sg_ranges),
            targets: array_entries(&policy.targets),
            meta: policy.meta(generation),
        }
    }
}

fn lpm_entries<V: Copy>(entries: &[LpmEntry<V>]) -> BTreeMap<LpmKey, V> {
    entries
        .iter()
        .map(|&(len, addr, v)| ((len, addr), v))
        .collect()
}

/// Array contents without the all-zero entries (see [`SlotContents`]).
fn array_entries<V: bytemuck::Pod>(values: &[V]) -> BTreeMap<u32, V> {
    values
        .iter()
        .enumerate()
        .filter(|(_, v)| !is_zero(*v))
        .map(|(i, v)| (i as u32, *v))
        .collect()
}

pub(super) fn is_zero<T: bytemuck::Pod>(v: &T) -> bool {
    bytemuck::bytes_of(v).iter().all(|b| *b == 0)
}

/// One write to the data path's policy maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapOp {
    AuthzUpsert {
        slot: u8,
        prefix_len: u8,
        addr: [u8; 4],
        value: AuthzValue,
    },
    AuthzDelete {
        slot: u8,
        prefix_len: u8,
        addr: [u8; 4],
    },
    RouteUpsert {
        slot: u8,
        prefix_len: u8,
        addr: [u8; 4],
        value: RouteValue,
    },
    RouteDelete {
        slot: u8,
        prefix_len: u8,
        addr: [u8; 4],
    },
    SgNodeUpsert {
        slot: u8,
        prefix_len: u8,
        addr: [u8; 4],
        value: SgNode,
    },
    SgNodeDelete {
        slot: u8,
        prefix_len: u8,
        addr: [u8; 4],
    },
    SgRangeSet {
        slot: u8,
        index: u32,
        range: PortRange,
    },
    TargetSet {
        slot: u8,
        index: u32,
        target: Target,
    },
    MetaSet {
        slot: u8,
        meta: PolicyMeta,
    },
    /// Write `policy_active`: from here on packets use `generation`'s slot.
    Activate {
        generation: u32,
    },
}

impl MapOp {
    /// The slot this op writes, `None` for [`MapOp::Activate`].
    pub fn slot(&self) -> Option<u8> {
        match *self {
            MapOp::AuthzUpsert { slot, .. }
            | MapOp::AuthzDelete { slot, .. }
            | MapOp::RouteUpsert { slot, .. }
            | MapOp::RouteDelete { slot, .. }
            | MapOp::SgNodeUpsert { slot, .. }
            | MapOp::SgNodeDelete { slot, .. }
            | MapOp::SgRangeSet { slot, .. }
            | MapOp::TargetSet { slot, .. }
            | MapOp::MetaSet { slot, .. } => Some(slot),
            MapOp::Activate { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyMapError {
    #[error("slot {0} does not exist: the policy maps have slots 0 and 1")]
    NoSuchSlot(u8),
    #[error("refusing to write slot {slot}: generation {active} is live in it")]
    ActiveSlotWrite { slot: u8, active: u32 },
    #[error(
        "cannot activate generation {generation}: {} holds generation {found}",
        map_names::POLICY_META
    )]
    SlotNotPrepared {
        generation: u32,
        slot: u8,
        found: u32,
    },
    #[error("{map}: full ({capacity} entries)")]
    MapFull { map: &'static str, capacity: u32 },
    #[error("{map}: index {index} is past the map's capacity of {capacity}")]
    IndexOutOfRange {
        map: &'static str,
        index: u32,
        capacity: u32,
    },
    /// A failed map operation in a real implementation.
    #[error("{map}: {action} failed: {source}")]
    Map {
        map: String,
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The data path as the reconciler sees it: read a slot, read the live generation, write.
pub trait PolicyMaps {
    /// Everything slot `slot` of the policy maps holds (see [`SlotContents`]).
    fn slot_contents(&self, slot: u8) -> Result<SlotContents, PolicyMapError>;
    /// `policy_active[0]`.
    fn active_generation(&self) -> Result<u32, PolicyMapError>;
    /// One write. Implementations must refuse writes to the live slot.
    fn apply(&mut self, op: &MapOp) -> Result<(), PolicyMapError>;
    /// Runs `f` on slot `slot`'s contents; implementations that keep the slot in memory lend
    /// it instead of copying it (the incremental reconciler reads a few keys of it).
    fn with_slot(&self, slot: u8, f: &mut dyn FnMut(&SlotContents)) -> Result<(), PolicyMapError> {
        f(&self.slot_contents(slot)?);
        Ok(())
    }
}

/// Brings the data path to `desired` and returns the generation now live.
///
/// If the live slot already holds exactly `desired`, nothing is written and the live
/// generation is returned: bumping it would make every established flow re-check its
/// policy for nothing (this also makes an agent restart over pinned maps free).
pub fn reconcile(dp: &mut dyn PolicyMaps, desired: &CompiledPolicy) -> Result<u32, PolicyMapError> {
    let active = dp.active_generation()?;
    if dp.slot_contents(slot_for(active))? == SlotContents::from_compiled(desired, active) {
        return Ok(active);
    }
    let next = active.wrapping_add(1);
    let current = dp.slot_contents(slot_for(next))?;
    for op in plan_generation(&current, desired, next) {
        dp.apply(&op)?;
    }
    Ok(next)
}

// ---- the fake data path -----------------------------------------------------------------

impl CompiledView for SlotContents {
    fn authz_lookup(&self, dst: Ipv4Addr) -> Option<AuthzValue> {
        lpm_map(&self.authz, dst)
    }
    fn route_lookup(&self, dst: Ipv4Addr) -> Option<RouteValue> {
        lpm_map(&self.routes, dst)
    }
    fn sg_enabled(&self) -> bool {
        self.meta.sg_enabled != 0
    }
    fn sg_lookup(&self, dst: Ipv4Addr) -> Option<SgNode> {
        lpm_map(&self.sg_nodes, dst)
    }
    fn sg_range(&self, index: u32) -> Option<PortRange> {
        (index < MAX_SG_RANGES).then(|| self.sg_ranges.get(&index).copied().unwrap_or_default())
    }
    fn target(&self, index: u32) -> Option<Target> {
        (index < MAX_TARGETS).then(|| {
            self.targets
                .get(&index)
                .copied()
                .unwrap_or_else(bytemuck::Zeroable::zeroed)
        })
    }
}

mod delta;
mod fake;
mod plan;
mod shadow;

pub use delta::Reconciler;
pub use fake::FakePolicyMaps;
pub use plan::{plan_generation, plan_generation_delta};
pub use shadow::Capacities;

#[cfg(test)]
mod tests;
