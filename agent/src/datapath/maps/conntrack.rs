//! Conntrack and NAT entries: listing, deleting (with their reverse NAT keys) and the sweep.
use portcullis_common::NatRev;

use super::*;

/// A flow with both its halves joined: the forward half (`conntrack`, what the fast path
/// touches) and the reply half (`nat_rev`: reply counters, TCP window, cold facts). What
/// the flow log, `status` and the tests read; the sweep works on the forward half alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub last_seen_ns: u64,
    /// 0 when the reply half was not found (the flow is being deleted).
    pub created_ns: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub nat_addr: [u8; 4],
    pub nat_port: u16,
    pub state: u8,
    pub flags: u8,
    pub generation: u32,
    pub slot: u32,
    pub target: u32,
    pub seq_out_end: u32,
    pub seq_in_end: u32,
}

impl Flow {
    fn join(e: &CtEntry, r: Option<&NatRev>) -> Flow {
        let r = r.copied().unwrap_or_default();
        Flow {
            last_seen_ns: e.last_seen_ns,
            created_ns: r.created_ns,
            packets_out: e.packets_out,
            bytes_out: e.bytes_out,
            packets_in: r.packets_in,
            bytes_in: r.bytes_in,
            nat_addr: e.nat_addr,
            nat_port: e.nat_port,
            state: e.state,
            flags: e.flags,
            generation: e.generation,
            slot: e.slot,
            target: r.target,
            seq_out_end: e.seq_out_end,
            seq_in_end: r.seq_in_end,
        }
    }
}

impl Maps {
    // ---- conntrack ------------------------------------------------------------------------

    /// Every flow, both halves joined (one `nat_rev` lookup per flow).
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, DatapathError> {
        let fwd = self.ct_entries()?;
        let rev: HashMap<_, FlowKey, NatRev> = typed_ref!(self, HashMap, map_names::NAT_REV);
        let mut out = Vec::with_capacity(fwd.len());
        for (k, e) in fwd {
            let r = match rev.get(&reverse_key(&k, &e), 0) {
                Ok(r) if r.fwd == k => Some(r),
                Ok(_) | Err(aya::maps::MapError::KeyNotFound) => None,
                Err(err) => return Err(DatapathError::map(map_names::NAT_REV, err)),
            };
            out.push((k, Flow::join(&e, r.as_ref())));
        }
        Ok(out)
    }

    /// The forward halves alone (`conntrack`), as the data path keeps them.
    pub fn ct_entries(&self) -> Result<Vec<(FlowKey, CtEntry)>, DatapathError> {
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
        let m: HashMap<_, FlowKey, NatRev> = typed_ref!(self, HashMap, map_names::NAT_REV);
        Ok(m.keys().filter(|k| k.is_ok()).count())
    }

    /// Delete the flows `pred` selects (reverse mapping first, so no reply is translated
    /// for a flow that is going away), crediting each owner's flow quota.
    pub fn delete_flows(
        &mut self,
        mut pred: impl FnMut(&FlowKey, &CtEntry) -> bool,
    ) -> Result<u64, DatapathError> {
        let victims: Vec<_> = self
            .ct_entries()?
            .into_iter()
            .filter(|(k, e)| pred(k, e))
            .collect();
        self.delete_flow_list(&victims)
    }

    fn delete_flow_list(&mut self, victims: &[(FlowKey, CtEntry)]) -> Result<u64, DatapathError> {
        let mut n = 0;
        let mut closed_by_slot: BTreeMap<u32, u64> = BTreeMap::new();
        {
            let mut rev: HashMap<_, FlowKey, NatRev> = typed!(self, HashMap, map_names::NAT_REV);
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
        let all = self.ct_entries()?;
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
