//! The model of a map write: what a slot holds after an op, and whether the op fits the
//! maps' capacities (the kernel's own refusal, modelled). Used by the fake data path and the
//! write-through shadow of the real one.
use std::collections::BTreeMap;

use portcullis_common::{
    map_names, MAX_AUTHZ_PREFIXES, MAX_ROUTES, MAX_SG_PREFIXES, MAX_SG_RANGES, MAX_TARGETS,
};

use super::{is_zero, LpmKey, MapOp, PolicyMapError, SlotContents};

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

/// Why `op` would not fit a data path with `caps` (the kernel's own refusal, modelled).
pub(super) fn capacity_check(
    s: &SlotContents,
    op: &MapOp,
    caps: &Capacities,
) -> Result<(), PolicyMapError> {
    fn lpm_full<V>(
        m: &BTreeMap<LpmKey, V>,
        key: LpmKey,
        map: &'static str,
        capacity: u32,
    ) -> Result<(), PolicyMapError> {
        if !m.contains_key(&key) && m.len() >= capacity as usize {
            return Err(PolicyMapError::MapFull { map, capacity });
        }
        Ok(())
    }
    fn index(map: &'static str, index: u32, capacity: u32) -> Result<(), PolicyMapError> {
        if index >= capacity {
            return Err(PolicyMapError::IndexOutOfRange {
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
