//! The underlay clients and the stock baseline lab, on the product's topology builder.
use std::{net::Ipv4Addr, path::Path};

use portcullis::netns::{self, Netns, PrivateNetwork, Veth};

use super::{underlay_client_addr, VPN_NETWORK};
use crate::{
    gateway::{GW_IF, GW_NET_ADDR, SERVER},
    unique, NetNs,
};

/// One client namespace on the underlay ([`netns::attach_client`]).
pub struct UnderlayClient {
    /// Its underlay address (192.0.2.(11+i)); the gateway is [`super::UNDERLAY_GW`].
    pub addr: Ipv4Addr,
    /// The gateway-side veth (in the gateway namespace).
    pub gw_if: String,
    /// Before `ns`: the pair goes even while a stopping `openvpn` still holds the namespace.
    _link: Veth,
    pub ns: NetNs,
}

impl From<netns::UnderlayClient> for UnderlayClient {
    fn from(c: netns::UnderlayClient) -> UnderlayClient {
        UnderlayClient {
            addr: c.addr,
            gw_if: c.gw_if().to_string(),
            _link: c.link,
            ns: NetNs::from(c.ns),
        }
    }
}

/// Client namespaces wired to a gateway namespace, one point-to-point veth pair each.
pub struct Underlay {
    pub clients: Vec<UnderlayClient>,
}

impl Underlay {
    /// Add `n_clients` client namespaces to `gw` (once per gateway namespace: the addresses
    /// are fixed). Call it after the gateway enabled `ip_forward`: writing that sysctl resets
    /// every interface's `forwarding`, including the `forwarding=0` set here.
    pub fn attach(gw: &NetNs, n_clients: usize) -> Underlay {
        let clients = (0..n_clients)
            .map(|i| {
                let ns = Netns::create(&unique("oc")).unwrap_or_else(|e| panic!("{e}"));
                netns::attach_client(gw.netns(), ns, &unique("u"), underlay_client_addr(i))
                    .unwrap_or_else(|e| panic!("underlay client {i}: {e}"))
                    .into()
            })
            .collect();
        Underlay { clients }
    }

    pub fn client(&self, i: usize) -> &UnderlayClient {
        &self.clients[i]
    }

    /// Names of the client namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        self.clients.iter().map(|c| c.ns.name.clone()).collect()
    }
}

/// Gateway `pct-g…` (`pct-gw0` 10.0.0.1/24, underlay 192.0.2.1), private network `pct-n…`
/// (`eth0` 10.0.0.10/24, default route via 10.0.0.1) and `n_clients` underlay clients, as
/// [`netns::Topology`] builds them for the demo and for `gateway::Gateway`. Field order is
/// drop order: clients first.
pub struct Lab {
    pub underlay: Underlay,
    pub private_link: Veth,
    pub net: NetNs,
    pub gw: NetNs,
}

impl Lab {
    /// The topology alone: no data path, no server.
    pub fn topology(n_clients: usize) -> Lab {
        let (gw, net) = (unique("g"), unique("n"));
        let names: Vec<(String, String)> = (0..n_clients)
            .map(|_| (unique("oc"), unique("u")))
            .collect();
        let mut b = netns::Topology::builder(
            &gw,
            &net,
            PrivateNetwork {
                gw_if: GW_IF,
                gw_addr: GW_NET_ADDR,
                prefix_len: 24,
                net_if: "eth0",
                hosts: vec![SERVER],
                extra_neighbours: Vec::new(),
            },
        );
        for (i, (ns, gw_if)) in names.iter().enumerate() {
            b = b.client(ns, gw_if, underlay_client_addr(i));
        }
        let t = b.build().unwrap_or_else(|e| panic!("lab topology: {e}"));
        Lab {
            underlay: Underlay {
                clients: t.clients.into_iter().map(UnderlayClient::from).collect(),
            },
            private_link: t.private_link,
            net: NetNs::from(t.net),
            gw: NetNs::from(t.gw),
        }
    }

    /// The stock baseline: [`Lab::topology`] with kernel forwarding and an nftables SNAT of
    /// the VPN pool to 10.0.0.1 (no XDP), on the same links as our data path.
    pub fn stock(n_clients: usize) -> Lab {
        let lab = Lab::topology(n_clients);
        let gw = &lab.gw;
        // What the XDP data path does for a target network: SNAT the pool to the gateway's
        // address on it (conntrack picks ports as needed).
        let pool = format!("{VPN_NETWORK}/24");
        gw.exec(&["nft", "add", "table", "ip", "pct_nat"]);
        gw.exec(&[
            "nft",
            "add chain ip pct_nat post { type nat hook postrouting priority srcnat ; }",
        ]);
        gw.exec(&[
            "nft",
            &format!(
                "add rule ip pct_nat post ip saddr {pool} oifname \"{GW_IF}\" snat to {GW_NET_ADDR}"
            ),
        ]);
        lab
    }

    pub fn client(&self, i: usize) -> &UnderlayClient {
        self.underlay.client(i)
    }

    /// Every namespace of the lab (to check that none is left after drop).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = self.underlay.namespaces();
        v.push(self.gw.name.clone());
        v.push(self.net.name.clone());
        v
    }
}

/// True if the named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}
