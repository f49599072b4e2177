//! veth pairs and their offload settings.
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{Netns, Result};

/// Offload settings of one veth end (`ethtool -K`); `None` keeps the kernel's default.
/// The two settings every lab needs, and why:
///
/// - [`Offloads::complete_checksums`] (`tx off`) on an end that **sends** frames which an
///   XDP program rewrites or redirects: with tx checksum offload a veth hands its peer
///   partial checksums (`CHECKSUM_PARTIAL`, only the pseudo-header sum filled in), which the
///   data path's incremental NAT updates would turn into wrong ones. A real NIC or a tunnel
///   delivers complete checksums, so this is a container-lab setting only.
/// - [`Offloads::receive_redirects`] (`gro on`) on the **peer** of a veth that frames are
///   XDP-redirected into: the veth drops them unless that peer runs NAPI, which it does with
///   an XDP program or GRO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    pub tx_checksum: Option<bool>,
    pub gro: Option<bool>,
}

impl Offloads {
    /// The kernel's defaults.
    pub const KERNEL: Offloads = Offloads {
        tx_checksum: None,
        gro: None,
    };

    /// `tx off`: frames leave with complete checksums, as from a real NIC.
    pub const fn complete_checksums(self) -> Offloads {
        Offloads {
            tx_checksum: Some(false),
            ..self
        }
    }

    /// `gro on`: frames XDP-redirected into this end's peer are delivered, not dropped.
    pub const fn receive_redirects(self) -> Offloads {
        Offloads {
            gro: Some(true),
            ..self
        }
    }

    pub(super) fn ethtool_args(self) -> Vec<&'static str> {
        let on_off = |b: bool| if b { "on" } else { "off" };
        let mut v = Vec::new();
        if let Some(b) = self.tx_checksum {
            v.extend(["tx", on_off(b)]);
        }
        if let Some(b) = self.gro {
            v.extend(["gro", on_off(b)]);
        }
        v
    }
}

/// One end of a veth pair to create.
#[derive(Clone, Copy, Debug)]
pub struct VethEnd<'a> {
    pub ns: &'a Netns,
    pub name: &'a str,
    pub offloads: Offloads,
}

impl<'a> VethEnd<'a> {
    pub fn new(ns: &'a Netns, name: &'a str, offloads: Offloads) -> VethEnd<'a> {
        VethEnd { ns, name, offloads }
    }
}

/// A veth pair, both ends up. Dropping it deletes the pair (through its first end): deleting
/// a namespace removes its links only once no process runs in it any more, and a stock
/// `openvpn` being stopped may still hold a client namespace.
#[derive(Debug)]
pub struct Veth {
    ns: String,
    name: String,
    peer: String,
}

impl Veth {
    /// Create the pair `a` ⇄ `b`, bring both ends up and apply their offloads.
    pub fn create(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<Veth> {
        a.ns.ip(&[
            "link",
            "add",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            b.name,
            "netns",
            b.ns.name(),
        ])?;
        let veth = Veth {
            ns: a.ns.name().to_string(),
            name: a.name.to_string(),
            peer: b.name.to_string(),
        };
        for end in [a, b] {
            end.ns.ip(&["link", "set", end.name, "up"])?;
            end.ns.set_offloads(end.name, end.offloads)?;
        }
        Ok(veth)
    }

    /// The first end's name (in the first namespace).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The second end's name.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Gone already when its namespace went first; nothing to report then.
        let _ = super::run("ip", &["-n", &self.ns, "link", "del", &self.name], None);
    }
}

impl Netns {
    /// Permanent neighbour entries `addrs` → `mac` on `dev`: the XDP FIB lookup succeeds
    /// from the first packet, and nothing waits for ARP.
    pub fn add_neighbours(&self, dev: &str, addrs: &[Ipv4Addr], mac: [u8; 6]) -> Result<()> {
        let mac = fmt_mac(&mac);
        let mut batch = String::new();
        for a in addrs {
            let _ = writeln!(
                batch,
                "neigh replace {a} lladdr {mac} dev {dev} nud permanent"
            );
        }
        self.ip_batch(&batch)
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
