//! Typed access to the data path's maps, from a freshly loaded object or from the pins
//! of a running endpoint (what `status` and the tests use).
//!
//! Here: opening, the egress devmap, clients and counters; [`conntrack`]: flows, NAT and the
//! sweep; [`slots`]: the double-buffered policy maps and the reconciler's view of them.
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
use crate::reconcile::SlotContents;

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
        _pad: [0; 3],
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

mod conntrack;
mod slots;

pub use conntrack::Flow;

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
        {
            let mut m: HashMap<_, ClientKey, ClientInfo> =
                typed!(self, HashMap, map_names::CLIENTS);
            m.insert(ClientKey::v4(addr), info, 0)
                .map_err(|e| DatapathError::map(map_names::CLIENTS, e))?;
        }
        self.bump_clients_epoch()
    }

    /// Tell the data path that `clients` changed, after the change: established flows then
    /// check their owner in `clients` once more before they take the fast path again (see
    /// `CtEntry::clients_epoch`). Always after the write, never before: a packet that
    /// reads the new epoch must find the new `clients`.
    fn bump_clients_epoch(&mut self) -> Result<(), DatapathError> {
        let mut m: Array<_, u32> = typed!(self, Array, map_names::CLIENTS_EPOCH);
        let cur = m
            .get(&0, 0)
            .map_err(|e| DatapathError::map(map_names::CLIENTS_EPOCH, e))?;
        m.set(0, cur.wrapping_add(1), 0)
            .map_err(|e| DatapathError::map(map_names::CLIENTS_EPOCH, e))
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
        let a = addr.octets();
        let mine: Vec<(FlowKey, CtEntry)> = self
            .ct_entries()?
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
            absent_is_removed(m.remove(&ClientKey::v4(addr)))
                .map_err(|e| DatapathError::map(map_names::CLIENTS, e))?;
        }
        // Before the flows go (which takes a scan of conntrack): from here on, no packet
        // from `addr` takes the fast path, so none is forwarded meanwhile.
        self.bump_clients_epoch()?;
        let a = addr.octets();
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
    absent_is_removed(m.remove(&v4_key(prefix, addr))).map_err(|e| DatapathError::map(name, e))
}

/// A delete of a key that is not there is done: aya reports it as the syscall's `ENOENT`
/// (only lookups say `KeyNotFound`).
fn absent_is_removed(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
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
