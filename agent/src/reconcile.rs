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
//! Everything except [`reconcile`]'s calls through the [`Datapath`] trait is pure.
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use portcullis_common::{
    map_names, AuthzValue, GroupBits, PolicyMeta, PortRange, RouteValue, SgNode, Target,
    MAX_AUTHZ_PREFIXES, MAX_ROUTES, MAX_SG_PREFIXES, MAX_SG_RANGES, MAX_TARGETS,
};

use crate::policy::compile::{CompiledPolicy, LpmEntry};
use crate::policy::compiled_eval::{self, lpm_map, CompiledView, Verdict};

/// Key of the IPv4 LPM tries: `(prefix_len, network address)`.
pub type LpmKey = (u8, [u8; 4]);

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

fn is_zero<T: bytemuck::Pod>(v: &T) -> bool {
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
pub enum DatapathError {
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
pub trait Datapath {
    /// Everything slot `slot` of the policy maps holds (see [`SlotContents`]).
    fn slot_contents(&self, slot: u8) -> Result<SlotContents, DatapathError>;
    /// `policy_active[0]`.
    fn active_generation(&self) -> Result<u32, DatapathError>;
    /// One write. Implementations must refuse writes to the live slot.
    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError>;
}

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

/// Brings the data path to `desired` and returns the generation now live.
///
/// If the live slot already holds exactly `desired`, nothing is written and the live
/// generation is returned: bumping it would make every established flow re-check its
/// policy for nothing (this also makes an agent restart over pinned maps free).
pub fn reconcile(dp: &mut dyn Datapath, desired: &CompiledPolicy) -> Result<u32, DatapathError> {
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

/// Map capacities the fake enforces (the real maps' `max_entries`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub authz: u32,
    pub routes: u32,
    pub sg_nodes: u32,
    pub sg_ranges: u32,
    pub targets: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Capacities {
            authz: MAX_AUTHZ_PREFIXES,
            routes: MAX_ROUTES,
            sg_nodes: MAX_SG_PREFIXES,
            sg_ranges: MAX_SG_RANGES,
            targets: MAX_TARGETS,
        }
    }
}

/// In-memory data path: two slots and the live generation, with the same rules as the
/// real maps (capacities, no writes to the live slot, activation only of a prepared slot).
#[derive(Clone, Debug, Default)]
pub struct FakeDatapath {
    pub slots: [SlotContents; 2],
    pub active: u32,
    pub capacities: Capacities,
    /// Fail the apply call after this many more successful ones (failure injection).
    pub fail_after: Option<usize>,
    /// Successful apply calls so far.
    pub applied: usize,
}

impl FakeDatapath {
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot packets read now.
    pub fn active_slot(&self) -> &SlotContents {
        &self.slots[slot_for(self.active) as usize]
    }

    /// What the data path would decide now for a new flow (reads the live slot only).
    pub fn evaluate_new_flow(
        &self,
        client_groups: &GroupBits,
        dst: Ipv4Addr,
        proto: u8,
        dport: u16,
        icmp_type: Option<u8>,
        live_clients: &BTreeSet<Ipv4Addr>,
    ) -> Verdict {
        compiled_eval::evaluate_new_flow(
            self.active_slot(),
            client_groups,
            dst,
            proto,
            dport,
            icmp_type,
            live_clients,
        )
    }

    fn writable_slot(&mut self, slot: u8) -> Result<&mut SlotContents, DatapathError> {
        if slot > 1 {
            return Err(DatapathError::NoSuchSlot(slot));
        }
        if slot == slot_for(self.active) {
            return Err(DatapathError::ActiveSlotWrite {
                slot,
                active: self.active,
            });
        }
        Ok(&mut self.slots[slot as usize])
    }
}

/// Why `op` would not fit a data path with `caps` (the kernel's own refusal, modelled).
fn capacity_check(s: &SlotContents, op: &MapOp, caps: &Capacities) -> Result<(), DatapathError> {
    fn lpm_full<V>(
        m: &BTreeMap<LpmKey, V>,
        key: LpmKey,
        map: &'static str,
        capacity: u32,
    ) -> Result<(), DatapathError> {
        if !m.contains_key(&key) && m.len() >= capacity as usize {
            return Err(DatapathError::MapFull { map, capacity });
        }
        Ok(())
    }
    fn index(map: &'static str, index: u32, capacity: u32) -> Result<(), DatapathError> {
        if index >= capacity {
            return Err(DatapathError::IndexOutOfRange {
                map,
                index,
                capacity,
            });
        }
        Ok(())
    }
    let i = |s: u8| s as usize % 2;
    match *op {
        MapOp::AuthzUpsert {
            slot,
            prefix_len,
            addr,
            ..
        } => lpm_full(
            &s.authz,
            (prefix_len, addr),
            map_names::AUTHZ_V4[i(slot)],
            caps.authz,
        ),
        MapOp::RouteUpsert {
            slot,
            prefix_len,
            addr,
            ..
        } => lpm_full(
            &s.routes,
            (prefix_len, addr),
            map_names::ROUTES_V4[i(slot)],
            caps.routes,
        ),
        MapOp::SgNodeUpsert {
            slot,
            prefix_len,
            addr,
            ..
        } => lpm_full(
            &s.sg_nodes,
            (prefix_len, addr),
            map_names::SG_V4[i(slot)],
            caps.sg_nodes,
        ),
        MapOp::SgRangeSet { slot, index: n, .. } => {
            index(map_names::SG_RANGES[i(slot)], n, caps.sg_ranges)
        }
        MapOp::TargetSet { slot, index: n, .. } => {
            index(map_names::TARGETS[i(slot)], n, caps.targets)
        }
        _ => Ok(()),
    }
}

impl SlotContents {
    /// What the slot holds after `op` (one of its own slot's writes; `Activate` changes no
    /// slot). The model of a map write, used by the fake data path and the write-through
    /// shadow of the real one.
    pub fn apply(&mut self, op: &MapOp) {
        fn array_set<V: bytemuck::Pod>(m: &mut BTreeMap<u32, V>, index: u32, value: V) {
            if is_zero(&value) {
                m.remove(&index);
            } else {
                m.insert(index, value);
            }
        }
        match *op {
            MapOp::AuthzUpsert {
                prefix_len,
                addr,
                value,
                ..
            } => {
                self.authz.insert((prefix_len, addr), value);
            }
            MapOp::AuthzDelete {
                prefix_len, addr, ..
            } => {
                self.authz.remove(&(prefix_len, addr));
            }
            MapOp::RouteUpsert {
                prefix_len,
                addr,
                value,
                ..
            } => {
                self.routes.insert((prefix_len, addr), value);
            }
            MapOp::RouteDelete {
                prefix_len, addr, ..
            } => {
                self.routes.remove(&(prefix_len, addr));
            }
            MapOp::SgNodeUpsert {
                prefix_len,
                addr,
                value,
                ..
            } => {
                self.sg_nodes.insert((prefix_len, addr), value);
            }
            MapOp::SgNodeDelete {
                prefix_len, addr, ..
            } => {
                self.sg_nodes.remove(&(prefix_len, addr));
            }
            MapOp::SgRangeSet { index, range, .. } => array_set(&mut self.sg_ranges, index, range),
            MapOp::TargetSet { index, target, .. } => array_set(&mut self.targets, index, target),
            MapOp::MetaSet { meta, .. } => self.meta = meta,
            MapOp::Activate { .. } => {}
        }
    }
}

impl Datapath for FakeDatapath {
    fn slot_contents(&self, slot: u8) -> Result<SlotContents, DatapathError> {
        self.slots
            .get(slot as usize)
            .cloned()
            .ok_or(DatapathError::NoSuchSlot(slot))
    }

    fn active_generation(&self) -> Result<u32, DatapathError> {
        Ok(self.active)
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        if let Some(n) = self.fail_after {
            if n == 0 {
                return Err(DatapathError::Map {
                    map: "fake".into(),
                    action: "apply",
                    source: "injected failure".into(),
                });
            }
            self.fail_after = Some(n - 1);
        }
        let caps = self.capacities;
        match (*op, op.slot()) {
            (MapOp::Activate { generation }, _) => {
                let slot = slot_for(generation);
                let found = self.slots[slot as usize].meta.generation;
                if found != generation {
                    return Err(DatapathError::SlotNotPrepared {
                        generation,
                        slot,
                        found,
                    });
                }
                self.active = generation;
            }
            (_, Some(slot)) => {
                let s = self.writable_slot(slot)?;
                capacity_check(s, op, &caps)?;
                s.apply(op);
            }
            (_, None) => unreachable!("every op but Activate names its slot"),
        }
        self.applied += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use ipnet::IpNet;
    use portcullis_common::{GroupBits, GROUP_WORDS, PROTO_TCP};
    use proptest::prelude::*;

    use super::*;
    use crate::policy::model::{AuthzRule, PolicyInput};
    use crate::policy::testgen::{self, live_clients, resolver, TestFlow};
    use crate::policy::{compile, compile::CompiledPolicy};

    fn policy(rules: &[(&str, &[&str])]) -> (PolicyInput, CompiledPolicy) {
        let mut input = testgen::base_policy();
        input.authorization_rules = rules
            .iter()
            .map(|(dest, groups)| AuthzRule {
                destination: dest.parse::<IpNet>().unwrap(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                all_users: groups.is_empty(),
                description: None,
            })
            .collect();
        let compiled = compile(&input, &resolver).unwrap();
        (input, compiled)
    }

    fn run(dp: &mut FakeDatapath, ops: &[MapOp]) {
        for op in ops {
            dp.apply(op).unwrap();
        }
    }

    #[test]
    fn first_generation_fills_slot_one_and_activates_it() {
        let (_, p) = policy(&[("10.0.0.0/8", &[])]);
        let mut dp = FakeDatapath::new();
        assert_eq!(reconcile(&mut dp, &p).unwrap(), 1);
        assert_eq!(dp.active, 1);
        assert_eq!(dp.slots[1], SlotContents::from_compiled(&p, 1));
        assert_eq!(
            dp.slots[0],
            SlotContents::default(),
            "the live slot was written"
        );
        let v = dp.evaluate_new_flow(
            &[0; GROUP_WORDS],
            Ipv4Addr::new(10, 0, 0, 1),
            PROTO_TCP,
            80,
            None,
            &live_clients(),
        );
        assert!(
            matches!(
                v,
                Verdict::Forward {
                    target_index: 0,
                    ..
                }
            ),
            "{v:?}"
        );
    }

    #[test]
    fn reconciling_the_live_policy_writes_nothing() {
        let (_, p) = policy(&[("10.0.0.0/8", &[])]);
        let mut dp = FakeDatapath::new();
        reconcile(&mut dp, &p).unwrap();
        let applied = dp.applied;
        assert_eq!(reconcile(&mut dp, &p).unwrap(), 1);
        assert_eq!(dp.applied, applied);
    }

    #[test]
    fn plan_writes_only_the_difference_and_ends_with_one_activate() {
        let (_, p1) = policy(&[("10.0.0.0/8", &["a"]), ("10.1.0.0/16", &["b"])]);
        let (_, p2) = policy(&[("10.0.0.0/8", &["a"])]);
        let mut dp = FakeDatapath::new();
        reconcile(&mut dp, &p1).unwrap(); // generation 1, slot 1
        reconcile(&mut dp, &p2).unwrap(); // generation 2, slot 0

        // Generation 3 goes to slot 1, which holds p1: going back to p1 only needs meta.
        let ops = plan_generation(&dp.slots[1], &p1, 3);
        assert_eq!(
            ops,
            vec![
                MapOp::MetaSet {
                    slot: 1,
                    meta: p1.meta(3)
                },
                MapOp::Activate { generation: 3 }
            ]
        );

        // Going to p2 instead deletes the stale /16 and updates the /8 (its group bits
        // differ: p2 numbers only `a`).
        let ops = plan_generation(&dp.slots[1], &p2, 3);
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, MapOp::Activate { .. }))
                .count(),
            1
        );
        assert_eq!(ops.last(), Some(&MapOp::Activate { generation: 3 }));
        assert!(ops.iter().all(|o| o.slot().is_none_or(|s| s == 1)));
        assert!(ops.contains(&MapOp::AuthzDelete {
            slot: 1,
            prefix_len: 16,
            addr: [10, 1, 0, 0]
        }));
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, MapOp::AuthzUpsert { .. }))
                .count(),
            0,
            "{ops:?}"
        );
        run(&mut dp, &ops);
        assert_eq!(dp.slots[1], SlotContents::from_compiled(&p2, 3));
    }

    #[test]
    fn the_live_slot_is_never_written() {
        let (_, p) = policy(&[("10.0.0.0/8", &[])]);
        let mut dp = FakeDatapath::new();
        reconcile(&mut dp, &p).unwrap();
        let before = dp.slots[1].clone();
        let err = dp
            .apply(&MapOp::AuthzDelete {
                slot: 1,
                prefix_len: 8,
                addr: [10, 0, 0, 0],
            })
            .unwrap_err();
        assert!(
            matches!(err, DatapathError::ActiveSlotWrite { slot: 1, active: 1 }),
            "{err}"
        );
        assert!(matches!(
            dp.apply(&MapOp::MetaSet {
                slot: 2,
                meta: PolicyMeta::default()
            }),
            Err(DatapathError::NoSuchSlot(2))
        ));
        assert_eq!(dp.slots[1], before);
    }

    #[test]
    fn only_a_prepared_slot_can_be_activated() {
        let mut dp = FakeDatapath::new();
        let err = dp.apply(&MapOp::Activate { generation: 1 }).unwrap_err();
        assert!(
            matches!(
                err,
                DatapathError::SlotNotPrepared {
                    generation: 1,
                    slot: 1,
                    found: 0
                }
            ),
            "{err}"
        );
        assert_eq!(dp.active, 0);
    }

    #[test]
    fn a_failed_apply_leaves_the_old_policy_live_and_the_next_reconcile_finishes() {
        let (_, p1) = policy(&[("10.0.0.0/8", &[])]);
        let (_, p2) = policy(&[
            ("10.0.0.0/8", &["a"]),
            ("10.2.0.0/16", &[]),
            ("10.3.0.0/16", &[]),
        ]);
        let mut dp = FakeDatapath::new();
        reconcile(&mut dp, &p1).unwrap();
        let live_before = dp.active_slot().clone();

        dp.fail_after = Some(2);
        assert!(reconcile(&mut dp, &p2).is_err());
        assert_eq!(dp.active, 1);
        assert_eq!(dp.active_slot(), &live_before);
        assert_ne!(
            dp.slots[0],
            SlotContents::default(),
            "the failure came after some writes"
        );

        dp.fail_after = None;
        assert_eq!(reconcile(&mut dp, &p2).unwrap(), 2);
        assert_eq!(dp.active_slot(), &SlotContents::from_compiled(&p2, 2));
    }

    #[test]
    fn deletes_come_first_so_full_tries_have_room() {
        let (_, p1) = policy(&[("10.1.0.0/16", &[]), ("10.2.0.0/16", &[])]);
        let (_, p2) = policy(&[("10.3.0.0/16", &[]), ("10.4.0.0/16", &[])]);
        let (_, p3) = policy(&[("10.5.0.0/16", &[]), ("10.6.0.0/16", &[])]);
        let mut dp = FakeDatapath::new();
        dp.capacities.authz = 2;
        for (i, p) in [p1, p2, p3].iter().enumerate() {
            assert_eq!(reconcile(&mut dp, p).unwrap(), i as u32 + 1);
        }
        // And the fake does enforce the capacity.
        let full = dp.apply(&MapOp::AuthzUpsert {
            slot: 0,
            prefix_len: 32,
            addr: [1, 1, 1, 1],
            value: dp.slots[0].authz.values().next().copied().unwrap(),
        });
        assert!(
            matches!(full, Err(DatapathError::MapFull { capacity: 2, .. })),
            "{full:?}"
        );
    }

    #[test]
    fn generation_numbers_wrap_around_and_keep_alternating_slots() {
        let (_, p1) = policy(&[("10.0.0.0/8", &[])]);
        let (_, p2) = policy(&[("10.0.0.0/16", &[])]);
        let mut dp = FakeDatapath::new();
        // Pretend generation u32::MAX (slot 1) is live with p1.
        run(&mut dp, &plan_generation(&SlotContents::default(), &p1, 1));
        dp.slots[1].meta.generation = u32::MAX;
        dp.active = u32::MAX;
        assert_eq!(reconcile(&mut dp, &p2).unwrap(), 0);
        assert_eq!(slot_for(0), 0);
        assert_eq!(dp.active_slot(), &SlotContents::from_compiled(&p2, 0));
    }

    #[test]
    fn stale_array_entries_are_zeroed() {
        let mut input = testgen::base_policy();
        input.authorization_rules = vec![AuthzRule {
            destination: "10.0.0.0/8".parse().unwrap(),
            groups: vec![],
            all_users: true,
            description: None,
        }];
        let two_targets = compile(&input, &resolver).unwrap();
        input.target_networks.truncate(1);
        input.routes.retain(|r| r.target_network == "t0");
        let one_target = compile(&input, &resolver).unwrap();
        let mut dp = FakeDatapath::new();
        reconcile(&mut dp, &two_targets).unwrap();
        reconcile(&mut dp, &one_target).unwrap();
        let ops = plan_generation(&dp.slots[1], &one_target, 3);
        assert!(
            ops.iter().any(
                |o| matches!(o, MapOp::TargetSet { slot: 1, index: 1, target } if target.valid == 0)
            ),
            "{ops:?}"
        );
        run(&mut dp, &ops);
        assert_eq!(dp.slots[1].targets.len(), 1);
    }

    fn verdicts(dp: &FakeDatapath, bits: &GroupBits, flows: &[TestFlow]) -> Vec<Verdict> {
        let live = live_clients();
        flows
            .iter()
            .map(|f| dp.evaluate_new_flow(bits, f.dst, f.proto, f.dport, f.icmp_type, &live))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Applying a generation op by op: after every op the live view is exactly the old
        /// policy or exactly the new one (maps and packet decisions), it switches only at the
        /// final Activate, and the result is the desired slot whatever the slot held before.
        #[test]
        fn packets_never_see_half_a_policy(
            seq in prop::collection::vec(testgen::arb_policy(), 2..5),
            user in testgen::arb_user_groups(),
            flows in prop::collection::vec(testgen::arb_flow(), 12),
        ) {
            let compiled: Vec<CompiledPolicy> =
                seq.iter().map(|p| compile(p, &resolver).unwrap()).collect();
            let mut dp = FakeDatapath::new();
            reconcile(&mut dp, &compiled[0]).unwrap();
            for new in &compiled[1..] {
                let g = dp.active;
                let old_view = dp.active_slot().clone();
                let new_view = SlotContents::from_compiled(new, g + 1);
                let bits = new.groups_bitmap(user.iter().map(String::as_str));
                let old_verdicts = verdicts(&dp, &bits, &flows);
                let mut probe = dp.clone();
                probe.slots[slot_for(g + 1) as usize] = new_view.clone();
                probe.active = g + 1;
                let new_verdicts = verdicts(&probe, &bits, &flows);

                let ops = plan_generation(&dp.slots[slot_for(g + 1) as usize], new, g + 1);
                prop_assert_eq!(ops.last(), Some(&MapOp::Activate { generation: g + 1 }));
                for (i, op) in ops.iter().enumerate() {
                    dp.apply(op).unwrap();
                    let last = i + 1 == ops.len();
                    let (view, want) = if last {
                        (&new_view, &new_verdicts)
                    } else {
                        (&old_view, &old_verdicts)
                    };
                    prop_assert_eq!(dp.active_slot(), view, "after op {} {:?}", i, op);
                    prop_assert_eq!(&verdicts(&dp, &bits, &flows), want);
                }
                prop_assert_eq!(dp.active, g + 1);
                let distinct: BTreeSet<String> = ops.iter().map(|o| format!("{o:?}")).collect();
                prop_assert_eq!(distinct.len(), ops.len(), "duplicate ops");
            }
        }
    }
}
