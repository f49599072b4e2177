//! Typed access to the data path's maps, from a freshly loaded object or from the pins
//! of a running endpoint (what `status` and the tests use).
use std::{collections::BTreeMap, net::Ipv4Addr, os::fd::AsFd, path::Path};

use aya::{
    maps::{
        lpm_trie::Key, Array, DevMapHash, HashMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf,
    },
    Ebpf,
};
use portcullis_common::{
    ct_flags, flow_timeout_ns, map_names, AuthzValue, ClientInfo, ClientKey, CtEntry, DropReason,
    Event, FlowKey, PolicyMeta, PortRange, RouteValue, SessionStats, SgNode, Target,
};

use super::DatapathError;

/// `BPF_EXIST`: update an entry only if it exists (uapi/linux/bpf.h).
const BPF_EXIST: u64 = 2;

/// What a conntrack sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcStats {
    pub scanned: u64,
    pub expired: u64,
    pub revoked: u64,
}

/// The data path's maps, owned.
pub struct Maps {
    maps: BTreeMap<&'static str, Map>,
    /// When the reconciler last switched generations (see `SLOT_QUIESCE`).
    last_activation: Option<std::time::Instant>,
    /// Write-through copy of each policy slot, so a reconcile diffs against memory instead
    /// of reading two slots back from the kernel (tens of milliseconds, mostly the 65,536
    /// entry port-range arrays). Filled by the first read; dropped if a write fails.
    shadow: std::sync::Mutex<[Option<SlotContents>; 2]>,
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The reply key a forward flow claimed in `nat_rev`.
pub fn reverse_key(fwd: &FlowKey, e: &CtEntry) -> FlowKey {
    FlowKey {
        src: fwd.dst,
        dst: e.nat_addr,
        sport: fwd.dport,
        dport: e.nat_port,
        proto: fwd.proto,
        family: fwd.family,
        _pad: [0; 2],
    }
}

fn v4_key(prefix: u8, addr: [u8; 4]) -> Key<[u8; 4]> {
    Key::new(u32::from(prefix), addr)
}

macro_rules! typed {
    ($self:ident, $ty:ident, $name:expr) => {{
        let name: &'static str = $name;
        let m = $self
            .maps
            .get_mut(name)
            .ok_or(DatapathError::MissingMap(name))?;
        $ty::try_from(m).map_err(|e| DatapathError::map(name, e))?
    }};
}

macro_rules! typed_ref {
    ($self:ident, $ty:ident, $name:expr) => {{
        let name: &'static str = $name;
        let m = $self
            .maps
            .get(name)
            .ok_or(DatapathError::MissingMap(name))?;
        $ty::try_from(m).map_err(|e| DatapathError::map(name, e))?
    }};
}

impl Maps {
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Maps, DatapathError> {
        let mut maps = BTreeMap::new();
        for name in map_names::ALL {
            let m = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
            maps.insert(name, m);
        }
        Ok(Maps {
            maps,
            last_activation: None,
            shadow: Default::default(),
        })
    }

    /// Open the pinned maps of a running endpoint (`<pin_root>/<endpoint>`).
    pub fn open_pinned(dir: &Path) -> Result<Maps, DatapathError> {
        let mut maps = BTreeMap::new();
        for name in map_names::ALL {
            let data =
                MapData::from_pin(dir.join(name)).map_err(|e| DatapathError::map(name, e))?;
            let m = Map::from_map_data(data).map_err(|e| DatapathError::map(name, e))?;
            maps.insert(name, m);
        }
        Ok(Maps {
            maps,
            last_activation: None,
            shadow: Default::default(),
        })
    }

    pub fn set_egress_ports(&mut self, ifindexes: &[u32]) -> Result<(), DatapathError> {
        let mut m: DevMapHash<_> = typed!(self, DevMapHash, map_names::EGRESS_PORTS);
        for &i in ifindexes {
            m.insert(i, i, None, 0).map_err(|e| {
                DatapathError::Other(format!("map {}: {e}", map_names::EGRESS_PORTS))
            })?;
        }
        Ok(())
    }

    // ---- clients ------------------------------------------------------------------------

    /// Admit a session: its address becomes a valid source, with its groups.
    pub fn upsert_client(&mut self, addr: Ipv4Addr, info: ClientInfo) -> Result<(), DatapathError> {
        let mut m: HashMap<_, ClientKey, ClientInfo> = typed!(self, HashMap, map_names::CLIENTS);
        m.insert(ClientKey::v4(addr), info, 0)
            .map_err(|e| DatapathError::map(map_names::CLIENTS, e))
    }

    pub fn client(&self, addr: Ipv4Addr) -> Result<Option<ClientInfo>, DatapathError> {
        let m: HashMap<_, ClientKey, ClientInfo> = typed_ref!(self, HashMap, map_names::CLIENTS);
        match m.get(&ClientKey::v4(addr), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(DatapathError::map(map_names::CLIENTS, e)),
        }
    }

    /// Moves the flows of client `addr` (and its entry, if any) to counter slot `slot`, with
    /// that slot's flow quota counting them as open; the number of flows moved. For the
    /// flows a previous agent left (`--keep-maps`): parked on `ORPHAN_SLOT` at start, given
    /// to the returning session's slot when it is admitted.
    pub fn reslot_client(&mut self, addr: Ipv4Addr, slot: u32) -> Result<u64, DatapathError> {
        if let Some(mut info) = self.client(addr)? {
            info.slot = slot;
            self.upsert_client(addr, info)?;
        }
        let a = portcullis_common::v4_addr(addr.octets());
        let mine: Vec<(FlowKey, CtEntry)> = self
            .flows()?
            .into_iter()
            .filter(|(k, e)| k.src == a && e.flags & ct_flags::LOCAL == 0)
            .collect();
        let mut ct: HashMap<_, FlowKey, CtEntry> = typed!(self, HashMap, map_names::CONNTRACK);
        let mut moved = 0;
        for (k, mut e) in mine {
            e.slot = slot;
            // A flow that expired meanwhile is simply gone.
            if ct.insert(k, e, BPF_EXIST).is_ok() {
                moved += 1;
            }
        }
        let mut opened: Array<_, u64> = typed!(self, Array, map_names::FLOWS_OPENED);
        let _ = opened.set(slot, moved, 0);
        let mut closed: Array<_, u64> = typed!(self, Array, map_names::FLOWS_CLOSED);
        let _ = closed.set(slot, 0, 0);
        Ok(moved)
    }

    /// Zero a slot's flow quota counters (a new session in that slot has no flows yet).
    pub fn reset_flow_quota(&mut self, slot: u32) -> Result<(), DatapathError> {
        let mut opened: Array<_, u64> = typed!(self, Array, map_names::FLOWS_OPENED);
        opened
            .set(slot, 0, 0)
            .map_err(|e| DatapathError::map(map_names::FLOWS_OPENED, e))?;
        let mut closed: Array<_, u64> = typed!(self, Array, map_names::FLOWS_CLOSED);
        closed
            .set(slot, 0, 0)
            .map_err(|e| DatapathError::map(map_names::FLOWS_CLOSED, e))
    }

    /// The tunnel addresses in the `clients` map (IPv4 entries).
    pub fn client_addrs(&self) -> Result<Vec<Ipv4Addr>, DatapathError> {
        let m: HashMap<_, ClientKey, ClientInfo> = typed_ref!(self, HashMap, map_names::CLIENTS);
        let mut v = Vec::new();
        for k in m.keys() {
            let k = k.map_err(|e| DatapathError::map(map_names::CLIENTS, e))?;
            if k.family == portcullis_common::FAMILY_V4 {
                v.push(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]));
            }
        }
        Ok(v)
    }

    /// Remove a session and cut its flows (both directions, client-to-client too), and
    /// reset its flow quota counters for the next owner of the slot.
    pub fn remove_client(&mut self, addr: Ipv4Addr) -> Result<u64, DatapathError> {
        let slot = self.client(addr)?.map(|c| c.slot);
        {
            let mut m: HashMap<_, ClientKey, ClientInfo> =
                typed!(self, HashMap, map_names::CLIENTS);
            match m.remove(&ClientKey::v4(addr)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(DatapathError::map(map_names::CLIENTS, e)),
            }
        }
        let a = portcullis_common::v4_addr(addr.octets());
        let cut =
            self.delete_flows(|k, e| k.src == a || (e.flags & ct_flags::LOCAL != 0 && k.dst == a))?;
        if let Some(slot) = slot {
            let mut opened: Array<_, u64> = typed!(self, Array, map_names::FLOWS_OPENED);
            let _ = opened.set(slot, 0, 0);
            let mut closed: Array<_, u64> = typed!(self, Array, map_names::FLOWS_CLOSED);
            let _ = closed.set(slot, 0, 0);
        }
        Ok(cut)
    }

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

    // ---- counters -------------------------------------------------------------------------

    fn per_cpu_sum(&self, name: &'static str, n: u32) -> Result<Vec<u64>, DatapathError> {
        let m: PerCpuArray<_, u64> = typed_ref!(self, PerCpuArray, name);
        (0..n)
            .map(|i| {
                m.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(|e| DatapathError::map(name, e))
            })
            .collect()
    }

    pub fn drop_counters(&self) -> Result<BTreeMap<DropReason, u64>, DatapathError> {
        let v = self.per_cpu_sum(map_names::DROPS, DropReason::COUNT)?;
        Ok(DropReason::ALL
            .iter()
            .map(|r| (*r, v[*r as usize]))
            .collect())
    }

    pub fn event_counters(&self) -> Result<BTreeMap<Event, u64>, DatapathError> {
        let v = self.per_cpu_sum(map_names::EVENTS_COUNTERS, Event::COUNT)?;
        Ok(Event::ALL.iter().map(|r| (*r, v[*r as usize])).collect())
    }

    pub fn session_stats(&self, slot: u32) -> Result<SessionStats, DatapathError> {
        let m: PerCpuArray<_, SessionStats> =
            typed_ref!(self, PerCpuArray, map_names::SESSION_STATS);
        let v = m
            .get(&slot, 0)
            .map_err(|e| DatapathError::map(map_names::SESSION_STATS, e))?;
        Ok(v.iter().fold(SessionStats::default(), |mut a, s| {
            a.ingress_packets += s.ingress_packets;
            a.ingress_bytes += s.ingress_bytes;
            a.egress_packets += s.egress_packets;
            a.egress_bytes += s.egress_bytes;
            a
        }))
    }

    /// Zero a session slot's counters before it is handed to a new session.
    pub fn reset_session_stats(&mut self, slot: u32) -> Result<(), DatapathError> {
        let mut m: PerCpuArray<_, SessionStats> =
            typed!(self, PerCpuArray, map_names::SESSION_STATS);
        let n = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Other(e.to_string()))?;
        let zeros = aya::maps::PerCpuValues::try_from(vec![SessionStats::default(); n])
            .map_err(|e| DatapathError::Other(e.to_string()))?;
        m.set(slot, zeros, 0)
            .map_err(|e| DatapathError::map(map_names::SESSION_STATS, e))
    }

    /// The deny-event ring buffer, moved out for an async reader.
    pub fn take_deny_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        let m = self
            .maps
            .remove(map_names::DENY_EVENTS)
            .ok_or(DatapathError::MissingMap(map_names::DENY_EVENTS))?;
        RingBuf::try_from(m).map_err(|e| DatapathError::map(map_names::DENY_EVENTS, e))
    }

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

fn lpm_entries<V: aya::Pod>(
    maps: &Maps,
    name: &'static str,
) -> Result<Vec<(u8, [u8; 4], V)>, DatapathError> {
    let m: LpmTrie<_, [u8; 4], V> = typed_ref!(maps, LpmTrie, name);
    let mut out = Vec::new();
    for r in m.iter() {
        let (k, v) = r.map_err(|e| DatapathError::map(name, e))?;
        out.push((k.prefix_len() as u8, k.data(), v));
    }
    Ok(out)
}

fn lpm_upsert<V: aya::Pod>(
    maps: &mut Maps,
    name: &'static str,
    prefix: u8,
    addr: [u8; 4],
    v: V,
) -> Result<(), DatapathError> {
    let mut m: LpmTrie<_, [u8; 4], V> = typed!(maps, LpmTrie, name);
    m.insert(&v4_key(prefix, addr), v, 0)
        .map_err(|e| DatapathError::map(name, e))
}

fn lpm_delete<V: aya::Pod>(
    maps: &mut Maps,
    name: &'static str,
    prefix: u8,
    addr: [u8; 4],
) -> Result<(), DatapathError> {
    let mut m: LpmTrie<_, [u8; 4], V> = typed!(maps, LpmTrie, name);
    match m.remove(&v4_key(prefix, addr)) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(DatapathError::map(name, e)),
    }
}

/// Every value of an array map (`n` elements), read with `BPF_MAP_LOOKUP_BATCH` in as few
/// syscalls as the kernel allows. Errors (e.g. a kernel without batch support) let the
/// caller fall back to element-wise lookups.
fn array_lookup_batch<V: bytemuck::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    n: u32,
) -> std::io::Result<Vec<V>> {
    use std::os::fd::AsRawFd;
    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let len = n as usize;
    let mut keys = vec![0u32; len];
    let mut values = vec![V::zeroed(); len];
    let mut out = vec![V::zeroed(); len];
    let (mut filled, mut cursor, mut next) = (0usize, None::<u32>, 0u32);
    while filled < len {
        let mut attr = BatchAttr {
            in_batch: cursor.as_ref().map_or(0, |c| c as *const u32 as u64),
            out_batch: &mut next as *mut u32 as u64,
            keys: keys[filled..].as_mut_ptr() as u64,
            values: values[filled..].as_mut_ptr() as u64,
            count: (len - filled) as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: BPF_MAP_LOOKUP_BATCH writes at most `count` keys and values into the
        // buffers, which have room for them, and the cursor into `next`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(std::io::Error::last_os_error);
        filled += attr.count as usize;
        match err {
            None => cursor = Some(next),
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Some(e) => return Err(e),
        }
        if attr.count == 0 {
            break;
        }
    }
    if filled != len {
        return Err(std::io::Error::other(format!(
            "batch lookup returned {filled} of {len} elements"
        )));
    }
    for (k, v) in keys.iter().zip(values) {
        let slot = out.get_mut(*k as usize);
        *slot.ok_or_else(|| std::io::Error::other(format!("batch lookup: key {k}")))? = v;
    }
    Ok(out)
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

use crate::reconcile::{self, MapOp, SlotContents};

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
