//! Security groups into one LPM trie of nodes with interned port-range lists.
use std::collections::{BTreeMap, HashMap};

use portcullis_common::{sg_flags, PortRange, SgNode, MAX_SG_PREFIXES, MAX_SG_RANGES};

use super::{coalesce, zeroed, Diags, LpmEntry};
use crate::policy::model::Proto;
use crate::policy::prefix::mask;

pub(super) struct SgEntry {
    pub(super) key: (u8, u32),
    pub(super) proto: Proto,
    pub(super) ports: (u16, u16),
}

#[derive(Default)]
struct SgAcc {
    any: bool,
    icmp: bool,
    tcp: Vec<(u16, u16)>,
    udp: Vec<(u16, u16)>,
}

impl SgAcc {
    fn add(&mut self, proto: Proto, ports: (u16, u16)) {
        match proto {
            Proto::All => self.any = true,
            Proto::Icmp => self.icmp = true,
            Proto::Tcp => self.tcp.push(ports),
            Proto::Udp => self.udp.push(ports),
        }
    }
}

/// The data path does one longest-prefix lookup, so each node must hold every rule whose
/// destination contains it: node(P) = union of rules at P and at every shorter prefix of P.
/// At most 33 ancestors per prefix, so this is O(prefixes x 33), not quadratic.
pub(super) fn compile_security_groups(
    rules: &[&SgEntry],
    d: &mut Diags,
) -> (Vec<LpmEntry<SgNode>>, Vec<PortRange>) {
    let mut at: BTreeMap<(u8, u32), SgAcc> = BTreeMap::new();
    for r in rules {
        at.entry(r.key).or_default().add(r.proto, r.ports);
    }
    d.capacity(
        "security_groups",
        "distinct security-group destination prefixes",
        at.len(),
        MAX_SG_PREFIXES,
        "aggregate security-group destinations",
    );
    if at.len() > MAX_SG_PREFIXES as usize {
        return (Vec::new(), Vec::new());
    }
    let mut nodes = Vec::with_capacity(at.len());
    let mut ranges: Vec<PortRange> = Vec::new();
    // Identical lists (e.g. "tcp 443" pushed into many prefixes) are stored once.
    let mut interned: HashMap<Vec<PortRange>, u32> = HashMap::new();
    let mut intern = |list: Vec<PortRange>| -> (u32, u32) {
        if list.is_empty() {
            return (0, 0);
        }
        let len = list.len() as u32;
        let off = *interned.entry(list).or_insert_with_key(|list| {
            let off = ranges.len() as u32;
            ranges.extend_from_slice(list);
            off
        });
        (off, len)
    };
    for &(len, net) in at.keys() {
        let mut acc = SgAcc::default();
        for l in 0..=len {
            if let Some(a) = at.get(&(l, mask(net, l))) {
                acc.any |= a.any;
                acc.icmp |= a.icmp;
                acc.tcp.extend_from_slice(&a.tcp);
                acc.udp.extend_from_slice(&a.udp);
            }
        }
        let mut flags = 0;
        if acc.any {
            flags |= sg_flags::ANY;
        }
        if acc.icmp {
            flags |= sg_flags::ICMP;
        }
        // With ANY every port is allowed: no need to spend ranges on this node.
        let (tcp_off, tcp_len, udp_off, udp_len) = if acc.any {
            (0, 0, 0, 0)
        } else {
            let (t_off, t_len) = intern(coalesce(acc.tcp));
            let (u_off, u_len) = intern(coalesce(acc.udp));
            (t_off, t_len, u_off, u_len)
        };
        nodes.push((
            len,
            net.to_be_bytes(),
            SgNode {
                flags,
                tcp_off,
                tcp_len,
                udp_off,
                udp_len,
                ..zeroed()
            },
        ));
    }
    d.capacity(
        "security_groups",
        "security-group port ranges (after push-down and merging)",
        ranges.len(),
        MAX_SG_RANGES,
        "use fewer distinct port ranges or fewer nested destinations",
    );
    (nodes, ranges)
}
