//! The double-buffered policy maps (generation `g` in slot `g % 2`), and the reconciler's
//! view of them with a write-through shadow of each slot.
use super::*;
use crate::reconcile::{self, MapOp};

impl Maps {
    // ---- policy slots -----------------------------------------------------------------------

    pub fn active_generation(&self) -> Result<u32, DatapathError> {
        let m: Array<_, u32> = typed_ref!(self, Array, map_names::POLICY_ACTIVE);
        m.get(&0, 0)
            .map_err(|e| DatapathError::map(map_names::POLICY_ACTIVE, e))
    }

    /// Switch every packet to `generation` (slot `generation % 2`) with one map write.
    pub fn activate(&mut self, generation: u32) -> Result<(), DatapathError> {
        let mut m: Array<_, u32> = typed!(self, Array, map_names::POLICY_ACTIVE);
        m.set(0, generation, 0)
            .map_err(|e| DatapathError::map(map_names::POLICY_ACTIVE, e))
    }

    pub fn meta(&self, slot: u8) -> Result<PolicyMeta, DatapathError> {
        let m: Array<_, PolicyMeta> = typed_ref!(self, Array, map_names::POLICY_META);
        m.get(&u32::from(slot), 0)
            .map_err(|e| DatapathError::map(map_names::POLICY_META, e))
    }

    pub fn set_meta(&mut self, slot: u8, meta: PolicyMeta) -> Result<(), DatapathError> {
        self.forget(slot);
        let mut m: Array<_, PolicyMeta> = typed!(self, Array, map_names::POLICY_META);
        m.set(u32::from(slot), meta, 0)
            .map_err(|e| DatapathError::map(map_names::POLICY_META, e))
    }

    pub fn authz_entries(&self, slot: u8) -> Result<Vec<(u8, [u8; 4], AuthzValue)>, DatapathError> {
        lpm_entries(self, map_names::AUTHZ_V4[slot as usize])
    }
    pub fn route_entries(&self, slot: u8) -> Result<Vec<(u8, [u8; 4], RouteValue)>, DatapathError> {
        lpm_entries(self, map_names::ROUTES_V4[slot as usize])
    }
    pub fn sg_entries(&self, slot: u8) -> Result<Vec<(u8, [u8; 4], SgNode)>, DatapathError> {
        lpm_entries(self, map_names::SG_V4[slot as usize])
    }

    /// A write outside the reconciler: its shadow of `slot` is no longer the truth.
    fn forget(&self, slot: u8) {
        if let Some(c) = self
            .shadow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(slot as usize)
        {
            *c = None;
        }
    }

    pub fn authz_upsert(
        &mut self,
        slot: u8,
        prefix: u8,
        addr: [u8; 4],
        v: AuthzValue,
    ) -> Result<(), DatapathError> {
        self.forget(slot);
        lpm_upsert(self, map_names::AUTHZ_V4[slot as usize], prefix, addr, v)
    }
    pub fn authz_delete(
        &mut self,
        slot: u8,
        prefix: u8,
        addr: [u8; 4],
    ) -> Result<(), DatapathError> {
        self.forget(slot);
        lpm_delete::<AuthzValue>(self, map_names::AUTHZ_V4[slot as usize], prefix, addr)
    }
    pub fn route_upsert(
        &mut self,
        slot: u8,
        prefix: u8,
        addr: [u8; 4],
        v: RouteValue,
    ) -> Result<(), DatapathError> {
        self.forget(slot);
        lpm_upsert(self, map_names::ROUTES_V4[slot as usize], prefix, addr, v)
    }
    pub fn route_delete(
        &mut self,
        slot: u8,
        prefix: u8,
        addr: [u8; 4],
    ) -> Result<(), DatapathError> {
        self.forget(slot);
        lpm_delete::<RouteValue>(self, map_names::ROUTES_V4[slot as usize], prefix, addr)
    }
    pub fn sg_upsert(
        &mut self,
        slot: u8,
        prefix: u8,
        addr: [u8; 4],
        v: SgNode,
    ) -> Result<(), DatapathError> {
        self.forget(slot);
        lpm_upsert(self, map_names::SG_V4[slot as usize], prefix, addr, v)
    }
    pub fn sg_delete(&mut self, slot: u8, prefix: u8, addr: [u8; 4]) -> Result<(), DatapathError> {
        self.forget(slot);
        lpm_delete::<SgNode>(self, map_names::SG_V4[slot as usize], prefix, addr)
    }

    pub fn sg_range(&self, slot: u8, index: u32) -> Result<PortRange, DatapathError> {
        let name = map_names::SG_RANGES[slot as usize];
        let m: Array<_, PortRange> = typed_ref!(self, Array, name);
        m.get(&index, 0).map_err(|e| DatapathError::map(name, e))
    }
    pub fn set_sg_range(
        &mut self,
        slot: u8,
        index: u32,
        r: PortRange,
    ) -> Result<(), DatapathError> {
        self.forget(slot);
        let name = map_names::SG_RANGES[slot as usize];
        let mut m: Array<_, PortRange> = typed!(self, Array, name);
        m.set(index, r, 0).map_err(|e| DatapathError::map(name, e))
    }
    pub fn target(&self, slot: u8, index: u32) -> Result<Target, DatapathError> {
        let name = map_names::TARGETS[slot as usize];
        let m: Array<_, Target> = typed_ref!(self, Array, name);
        m.get(&index, 0).map_err(|e| DatapathError::map(name, e))
    }
    pub fn set_target(&mut self, slot: u8, index: u32, t: Target) -> Result<(), DatapathError> {
        self.forget(slot);
        let name = map_names::TARGETS[slot as usize];
        let mut m: Array<_, Target> = typed!(self, Array, name);
        m.set(index, t, 0).map_err(|e| DatapathError::map(name, e))
    }
}

// ---- the reconciler's view --------------------------------------------------------------

/// How long a slot must have been inactive before it is rewritten. XDP programs run to
/// completion within one NAPI poll (microseconds) under RCU; a packet that read the old
/// generation number just before a switch is long done after this.
const SLOT_QUIESCE: std::time::Duration = std::time::Duration::from_millis(5);

fn lpm<V>(v: Vec<(u8, [u8; 4], V)>) -> BTreeMap<(u8, [u8; 4]), V> {
    v.into_iter().map(|(p, a, x)| ((p, a), x)).collect()
}

fn rec_err(map: &str, action: &'static str, e: DatapathError) -> reconcile::PolicyMapError {
    reconcile::PolicyMapError::Map {
        map: map.to_string(),
        action,
        source: Box::new(e),
    }
}

impl reconcile::PolicyMaps for Maps {
    fn slot_contents(&self, slot: u8) -> Result<SlotContents, reconcile::PolicyMapError> {
        if slot > 1 {
            return Err(reconcile::PolicyMapError::NoSuchSlot(slot));
        }
        let mut shadow = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = &shadow[slot as usize] {
            return Ok(c.clone());
        }
        let c = self.read_slot(slot)?;
        shadow[slot as usize] = Some(c.clone());
        Ok(c)
    }

    fn with_slot(
        &self,
        slot: u8,
        f: &mut dyn FnMut(&SlotContents),
    ) -> Result<(), reconcile::PolicyMapError> {
        if slot > 1 {
            return Err(reconcile::PolicyMapError::NoSuchSlot(slot));
        }
        // Lent from the shadow: a copy of a 10,000-rule slot costs more than the plan.
        let mut shadow = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        let c = match &mut shadow[slot as usize] {
            Some(c) => c,
            s @ None => s.insert(self.read_slot(slot)?),
        };
        f(c);
        Ok(())
    }

    fn active_generation(&self) -> Result<u32, reconcile::PolicyMapError> {
        Maps::active_generation(self).map_err(|e| rec_err(map_names::POLICY_ACTIVE, "read", e))
    }

    fn apply(&mut self, op: &MapOp) -> Result<(), reconcile::PolicyMapError> {
        let slot = op.slot().filter(|&s| s < 2);
        // The write itself forgets the shadow (as any direct write does); the reconciler
        // knows what it wrote, so it puts it back, updated, unless the write failed.
        let saved = slot
            .and_then(|s| self.shadow.lock().unwrap_or_else(|e| e.into_inner())[s as usize].take());
        let r = self.write_op(op);
        if let (Some(s), Some(mut c), Ok(())) = (slot, saved, &r) {
            c.apply(op);
            self.shadow.lock().unwrap_or_else(|e| e.into_inner())[s as usize] = Some(c);
        }
        r
    }
}

impl Maps {
    /// Whether the reconciler's shadow of each slot equals what the kernel holds (a slot not
    /// shadowed counts as equal). For tests and diagnostics: it reads both slots.
    pub fn shadow_matches_kernel(&self) -> Result<bool, reconcile::PolicyMapError> {
        let shadow = self
            .shadow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for (slot, c) in shadow.iter().enumerate() {
            if let Some(c) = c {
                if *c != self.read_slot(slot as u8)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// One policy slot as the kernel holds it.
    fn read_slot(&self, slot: u8) -> Result<SlotContents, reconcile::PolicyMapError> {
        let read = |name: &str, e| rec_err(name, "read", e);
        let s = slot as usize;
        let mut sg_ranges = BTreeMap::new();
        {
            let name = map_names::SG_RANGES[s];
            let m = self
                .maps
                .get(name)
                .ok_or_else(|| read(name, DatapathError::MissingMap(name)))?;
            let arr: Array<_, PortRange> =
                Array::try_from(m).map_err(|e| read(name, DatapathError::map(name, e)))?;
            // One batched read of the whole array: element by element, the 65,536 lookups
            // made every reconcile take a quarter of a second (debug build).
            let all: Vec<PortRange> = match m {
                Map::Array(data) => array_lookup_batch(data.fd().as_fd(), arr.len()).ok(),
                _ => None,
            }
            .map(Ok)
            .unwrap_or_else(|| {
                arr.iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| read(name, DatapathError::map(name, e)))
            })?;
            for (i, r) in all.into_iter().enumerate() {
                if r != PortRange::default() {
                    sg_ranges.insert(i as u32, r);
                }
            }
        }
        let mut targets = BTreeMap::new();
        for i in 0..portcullis_common::MAX_TARGETS {
            let t = self
                .target(slot, i)
                .map_err(|e| read(map_names::TARGETS[s], e))?;
            if t != bytemuck::Zeroable::zeroed() {
                targets.insert(i, t);
            }
        }
        Ok(SlotContents {
            authz: lpm(self
                .authz_entries(slot)
                .map_err(|e| read(map_names::AUTHZ_V4[s], e))?),
            routes: lpm(self
                .route_entries(slot)
                .map_err(|e| read(map_names::ROUTES_V4[s], e))?),
            sg_nodes: lpm(self
                .sg_entries(slot)
                .map_err(|e| read(map_names::SG_V4[s], e))?),
            sg_ranges,
            targets,
            meta: self
                .meta(slot)
                .map_err(|e| read(map_names::POLICY_META, e))?,
        })
    }

    fn write_op(&mut self, op: &MapOp) -> Result<(), reconcile::PolicyMapError> {
        let active = Maps::active_generation(self)
            .map_err(|e| rec_err(map_names::POLICY_ACTIVE, "read", e))?;
        if let Some(slot) = op.slot() {
            if slot > 1 {
                return Err(reconcile::PolicyMapError::NoSuchSlot(slot));
            }
            if u32::from(slot) == active % 2 {
                return Err(reconcile::PolicyMapError::ActiveSlotWrite { slot, active });
            }
            if let Some(t) = self.last_activation.take() {
                if let Some(rest) = SLOT_QUIESCE.checked_sub(t.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        }
        let w = |name: &str, e| rec_err(name, "write", e);
        match *op {
            MapOp::AuthzUpsert {
                slot,
                prefix_len,
                addr,
                value,
            } => self
                .authz_upsert(slot, prefix_len, addr, value)
                .map_err(|e| w(map_names::AUTHZ_V4[slot as usize], e)),
            MapOp::AuthzDelete {
                slot,
                prefix_len,
                addr,
            } => self
                .authz_delete(slot, prefix_len, addr)
                .map_err(|e| w(map_names::AUTHZ_V4[slot as usize], e)),
            MapOp::RouteUpsert {
                slot,
                prefix_len,
                addr,
                value,
            } => self
                .route_upsert(slot, prefix_len, addr, value)
                .map_err(|e| w(map_names::ROUTES_V4[slot as usize], e)),
            MapOp::RouteDelete {
                slot,
                prefix_len,
                addr,
            } => self
                .route_delete(slot, prefix_len, addr)
                .map_err(|e| w(map_names::ROUTES_V4[slot as usize], e)),
            MapOp::SgNodeUpsert {
                slot,
                prefix_len,
                addr,
                value,
            } => self
                .sg_upsert(slot, prefix_len, addr, value)
                .map_err(|e| w(map_names::SG_V4[slot as usize], e)),
            MapOp::SgNodeDelete {
                slot,
                prefix_len,
                addr,
            } => self
                .sg_delete(slot, prefix_len, addr)
                .map_err(|e| w(map_names::SG_V4[slot as usize], e)),
            MapOp::SgRangeSet { slot, index, range } => self
                .set_sg_range(slot, index, range)
                .map_err(|e| w(map_names::SG_RANGES[slot as usize], e)),
            MapOp::TargetSet {
                slot,
                index,
                target,
            } => self
                .set_target(slot, index, target)
                .map_err(|e| w(map_names::TARGETS[slot as usize], e)),
            MapOp::MetaSet { slot, meta } => self
                .set_meta(slot, meta)
                .map_err(|e| w(map_names::POLICY_META, e)),
            MapOp::Activate { generation } => {
                let slot = (generation % 2) as u8;
                let meta = self
                    .meta(slot)
                    .map_err(|e| rec_err(map_names::POLICY_META, "read", e))?;
                if meta.generation != generation {
                    return Err(reconcile::PolicyMapError::SlotNotPrepared {
                        generation,
                        slot,
                        found: meta.generation,
                    });
                }
                self.activate(generation)
                    .map_err(|e| w(map_names::POLICY_ACTIVE, e))?;
                self.last_activation = Some(std::time::Instant::now());
                Ok(())
            }
        }
    }
}
