//! The lab topology: a gateway namespace, the private network behind it and clients on an
//! underlay. The picture, and why each setting is there, is in `docs/topology.md`.
//!
//! ```text
//!  client ns i                     gateway ns                         private network ns
//!  eth0 <addr> ──veth p2p── <gw_if> 192.0.2.1     <private gw_if> gw_addr ──veth── <net_if> hosts
//! ```
use std::net::Ipv4Addr;

use super::{Netns, Offloads, Result, Veth, VethEnd};

/// The gateway's address on the client underlay (the "internet" side, RFC 5737 TEST-NET-1),
/// where an OpenVPN server listens.
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// The link between the gateway and its private network.
#[derive(Clone, Debug)]
pub struct PrivateNetwork<'a> {
    /// The gateway's interface on the network (a data path's egress device).
    pub gw_if: &'a str,
    /// The gateway's address there (the SNAT address and the hosts' default route).
    pub gw_addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The interface in the private network's namespace.
    pub net_if: &'a str,
    /// The hosts' addresses, all on `net_if`; the first is the primary one.
    pub hosts: Vec<Ipv4Addr>,
    /// Further addresses the gateway resolves to `net_if` without them being assigned (a
    /// benchmark sink that answers for a whole range).
    pub extra_neighbours: Vec<Ipv4Addr>,
}

/// One client namespace on the underlay: a point-to-point veth pair to the gateway.
#[derive(Debug)]
pub struct UnderlayClient {
    /// Its underlay address; the gateway is [`UNDERLAY_GW`].
    pub addr: Ipv4Addr,
    /// Gateway side first (its name is the gateway's interface), `eth0` in the client.
    /// Declared before `ns`: the pair goes even while a process still holds the namespace.
    pub link: Veth,
    pub ns: Netns,
}

impl UnderlayClient {
    /// The gateway-side interface (in the gateway namespace).
    pub fn gw_if(&self) -> &str {
        self.link.name()
    }
}

/// Everything [`TopologyBuilder::build`] made. Field order is drop order: clients first, then
/// the private network, then the gateway; every namespace is deleted on drop.
#[derive(Debug)]
pub struct Topology {
    pub clients: Vec<UnderlayClient>,
    pub private_link: Veth,
    pub net: Netns,
    pub gw: Netns,
    /// The MAC of the gateway's interface on the private network.
    pub gw_mac: [u8; 6],
    /// The MAC of the private network's interface.
    pub net_mac: [u8; 6],
}

/// What to build; see [`Topology::builder`].
#[derive(Clone, Debug)]
pub struct TopologyBuilder<'a> {
    gw: &'a str,
    net: &'a str,
    private: PrivateNetwork<'a>,
    clients: Vec<(&'a str, &'a str, Ipv4Addr)>,
    replace: bool,
}

impl Topology {
    /// A gateway namespace `gw` and a private network namespace `net` joined by `private`.
    pub fn builder<'a>(
        gw: &'a str,
        net: &'a str,
        private: PrivateNetwork<'a>,
    ) -> TopologyBuilder<'a> {
        TopologyBuilder {
            gw,
            net,
            private,
            clients: Vec::new(),
            replace: false,
        }
    }
}

impl<'a> TopologyBuilder<'a> {
    /// A client namespace `ns` on the underlay at `addr`, its gateway side named `gw_if`.
    pub fn client(mut self, ns: &'a str, gw_if: &'a str, addr: Ipv4Addr) -> Self {
        self.clients.push((ns, gw_if, addr));
        self
    }

    /// Delete namespaces of the same names first (leftovers of an interrupted run).
    pub fn replace_leftovers(mut self) -> Self {
        self.replace = true;
        self
    }

    /// Build it. On an error, whatever was made so far is removed again.
    ///
    /// Gateway: `ip_forward` on, IPv6 off, static neighbours for every host. Private network:
    /// every host address on `net_if`, a default route via the gateway (replies to SNAT
    /// addresses), the gateway as a static neighbour. Offloads: see [`Offloads`]; the private
    /// network's side also receives redirects from the gateway's egress program.
    pub fn build(self) -> Result<Topology> {
        let create = |name: &str| {
            if self.replace {
                Netns::recreate(name)
            } else {
                Netns::create(name)
            }
        };
        let p = &self.private;
        let gw = create(self.gw)?;
        let net = create(self.net)?;
        for ns in [&gw, &net] {
            ns.disable_ipv6()?;
        }
        let private_link = Veth::create(
            VethEnd::new(&gw, p.gw_if, Offloads::KERNEL.complete_checksums()),
            VethEnd::new(
                &net,
                p.net_if,
                Offloads::KERNEL.complete_checksums().receive_redirects(),
            ),
        )?;
        gw.ip(&[
            "addr",
            "add",
            &format!("{}/{}", p.gw_addr, p.prefix_len),
            "dev",
            p.gw_if,
        ])?;
        for h in &p.hosts {
            net.ip(&[
                "addr",
                "add",
                &format!("{h}/{}", p.prefix_len),
                "dev",
                p.net_if,
            ])?;
        }
        // Before the underlay: writing ip_forward resets every interface's `forwarding`.
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        let gw_mac = gw.mac(p.gw_if)?;
        let net_mac = net.mac(p.net_if)?;
        let neighbours: Vec<Ipv4Addr> =
            p.hosts.iter().chain(&p.extra_neighbours).copied().collect();
        gw.add_neighbours(p.gw_if, &neighbours, net_mac)?;
        net.add_neighbours(p.net_if, &[p.gw_addr], gw_mac)?;
        net.ip(&["route", "add", "default", "via", &p.gw_addr.to_string()])?;
        let mut clients = Vec::with_capacity(self.clients.len());
        for &(name, gw_if, addr) in &self.clients {
            clients.push(attach_client(&gw, create(name)?, gw_if, addr)?);
        }
        Ok(Topology {
            clients,
            private_link,
            net,
            gw,
            gw_mac,
            net_mac,
        })
    }
}

/// Wire the namespace `client` to the gateway namespace `gw` over the underlay: a
/// point-to-point veth pair (`UNDERLAY_GW peer addr`), not a bridge, so every client has its
/// own interface on the gateway and clients cannot see each other. The gateway side has
/// `forwarding=0`: a client reaches the private network only through the tunnel. Call it after
/// `gw` enabled `ip_forward` (that write resets every interface's `forwarding`).
pub fn attach_client(
    gw: &Netns,
    client: Netns,
    gw_if: &str,
    addr: Ipv4Addr,
) -> Result<UnderlayClient> {
    client.disable_ipv6()?;
    // The tunnel's packets are ordinary socket traffic here; the same offloads as on the
    // private network keep both links alike for XDP on the underlay.
    let offloads = Offloads::KERNEL.complete_checksums().receive_redirects();
    let link = Veth::create(
        VethEnd::new(gw, gw_if, offloads),
        VethEnd::new(&client, "eth0", offloads),
    )?;
    gw.sysctl(&format!("net.ipv6.conf.{gw_if}.disable_ipv6"), "1")?;
    gw.sysctl(&format!("net.ipv4.conf.{gw_if}.forwarding"), "0")?;
    gw.ip(&[
        "addr",
        "add",
        &format!("{UNDERLAY_GW}/32"),
        "peer",
        &format!("{addr}/32"),
        "dev",
        gw_if,
    ])?;
    client.ip(&[
        "addr",
        "add",
        &format!("{addr}/32"),
        "peer",
        &format!("{UNDERLAY_GW}/32"),
        "dev",
        "eth0",
    ])?;
    // A default route makes the client look like a real host: openvpn finds its
    // net_gateway, so redirect-gateway keeps a host route to the server via this one.
    client.ip(&["route", "add", "default", "via", &UNDERLAY_GW.to_string()])?;
    Ok(UnderlayClient {
        addr,
        link,
        ns: client,
    })
}
