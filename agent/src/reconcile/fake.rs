//! The in-memory data path the reconciler's tests (and fault injection) run against.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use portcullis_common::GroupBits;

use super::shadow::{capacity_check, Capacities};
use super::{slot_for, MapOp, PolicyMapError, PolicyMaps, SlotContents};
use crate::policy::compiled_eval::{self, Verdict};

/// In-memory data path: two slots and the live generation, with the same rules as the
/// real maps (capacities, no writes to the live slot, activation only of a prepared slot).
#[derive(Clone, Debug, Default)]
pub struct FakePolicyMaps {
    pub slots: [SlotContents; 2],
    pub active: u32,
    pub capacities: Capacities,
    /// Fail the apply call after this many more successful ones (failure injection).
    pub fail_after: Option<usize>,
    /// Successful apply calls so far.
    pub applied: usize,
}

impl FakePolicyMaps {
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

    fn writable_slot(&mut self, slot: u8) -> Result<&mut SlotContents, PolicyMapError> {
        if slot > 1 {
            return Err(PolicyMapError::NoSuchSlot(slot));
        }
        if slot == slot_for(self.active) {
            return Err(PolicyMapError::ActiveSlotWrite {
                slot,
                active: self.active,
            });
        }
        Ok(&mut self.slots[slot as usize])
    }
}

impl PolicyMaps for FakePolicyMaps {
    fn slot_contents(&self, slot: u8) -> Result<SlotContents, PolicyMapError> {
        self.slots
            .get(slot as usize)
            .cloned()
            .ok_or(PolicyMapError::NoSuchSlot(slot))
    }

    fn active_generation(&self) -> Result<u32, PolicyMapError> {
        Ok(self.active)
    }

    fn with_slot(&self, slot: u8, f: &mut dyn FnMut(&SlotContents)) -> Result<(), PolicyMapError> {
        f(self
            .slots
            .get(slot as usize)
            .ok_or(PolicyMapError::NoSuchSlot(slot))?);
        Ok(())
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), PolicyMapError> {
        if let Some(n) = self.fail_after {
            if n == 0 {
                return Err(PolicyMapError::Map {
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
                    return Err(PolicyMapError::SlotNotPrepared {
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
