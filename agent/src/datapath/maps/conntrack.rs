//! Conntrack and NAT entries: listing, deleting (with their reverse NAT keys) and the sweep.
use super::*;

impl Maps {
    // ---- conntrack ------------------------------------------------------------------------

    pub fn flows(&self) -> Result<Vec<(FlowKey, CtEntry)>, DatapathError> {
        let m: HashMap<_, FlowKey, CtEntry> = typed_ref!(self, HashMap, map_names::CONNTRACK);
        let mut out = Vec::new();
        for r in m.iter() {
            match r {
                Ok(kv) => out.push(kv),
                // Entries deleted while iterating are simply skipped.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(DatapathError::map(map_names::CONNTRACK, e)),
            }
        }
        Ok(out)
    }

    pub fn nat_rev_len(&self) -> Result<usize, DatapathError> {
        let m: HashMap<_, FlowKey, portcullis_common::NatRev> =
            typed_ref!(self, HashMap, map_names::NAT_REV);
        Ok(m.keys().filter(|k| k.is_ok()).count())
    }

    /// Delete the flows `pred` selects (reverse mapping first, so no reply is translated
    /// for a flow that is going away), crediting each owner's flow quota.
    pub fn delete_flows(
        &mut self,
        mut pred: impl FnMut(&FlowKey, &CtEntry) -> bool,
    ) -> Result<u64, DatapathError> {
        let victims: Vec<_> = self
            .flows()?
            .into_iter()
            .filter(|(k, e)| pred(k, e))
            .collect();
        self.delete_flow_list(&victims)
    }

    fn delete_flow_list(&mut self, victims: &[(FlowKey, CtEntry)]) -> Result<u64, DatapathError> {
        let mut n = 0;
        let mut closed_by_slot: BTreeMap<u32, u64> = BTreeMap::new();
        {
            let mut rev: HashMap<_, FlowKey, portcullis_common::NatRev> =
                typed!(self, HashMap, map_names::NAT_REV);
            for (k, e) in victims {
                let _ = rev.remove(&reverse_key(k, e));
            }
        }
        {
            let mut ct: HashMap<_, FlowKey, CtEntry> = typed!(self, HashMap, map_names::CONNTRACK);
            for (k, e) in victims {
                if ct.remove(k).is_ok() {
                    n += 1;
                    *closed_by_slot.entry(e.slot).or_default() += 1;
                }
            }
        }
        let mut closed: Array<_, u64> = typed!(self, Array, map_names::FLOWS_CLOSED);
        for (slot, k) in closed_by_slot {
            let cur = closed.get(&slot, 0).unwrap_or(0);
            let _ = closed.set(slot, cur + k, 0);
        }
        Ok(n)
    }

    /// Expire idle flows and remove revoked ones. The XDP program never deletes entries, so
    /// the agent is the only writer of `flows_closed` and the quota accounting is exact.
    pub fn gc(&mut self, now_ns: u64) -> Result<GcStats, DatapathError> {
        let all = self.flows()?;
        let mut stats = GcStats {
            scanned: all.len() as u64,
            ..GcStats::default()
        };
        let victims: Vec<_> = all
            .into_iter()
            .filter(|(k, e)| {
                let expired =
                    now_ns.saturating_sub(e.last_seen_ns) > flow_timeout_ns(k.proto, e.state);
                let revoked = e.flags & ct_flags::REVOKED != 0;
                if expired {
                    stats.expired += 1;
                } else if revoked {
                    stats.revoked += 1;
                }
                expired || revoked
            })
            .collect();
        // Re-read right before deleting: a packet may have revived an entry meanwhile.
        let ct: HashMap<_, FlowKey, CtEntry> = typed_ref!(self, HashMap, map_names::CONNTRACK);
        let victims: Vec<_> = victims
            .into_iter()
            .filter(|(k, old)| match ct.get(k, 0) {
                Ok(cur) => {
                    cur.last_seen_ns == old.last_seen_ns || cur.flags & ct_flags::REVOKED != 0
                }
                Err(_) => false,
            })
            .collect();
        self.delete_flow_list(&victims)?;
        Ok(stats)
    }
}
