//! Harness around the stock `openvpn` 2.6 binary: as a client of our server (end-to-end
//! tests) and as the reference server (`openvpn --server`, the baseline of
//! `cargo xtask bench tunnel`), plus iperf3 and ping helpers. Everything it starts or creates
//! is stopped and removed on drop, also when a test panics.
//!
//! Topology (`Lab::stock`; with our server, `gateway::Gateway` builds gw and net and
//! [`Underlay::attach`] adds the clients to its gateway namespace):
//!
//! ```text
//!  client ns i (pct-oc…)              gw ns (pct-g…)                      net ns (pct-n…)
//!  eth0 192.0.2.(11+i) ─veth p2p─ pct-u… 192.0.2.1      pct-gw0 10.0.0.1/24 ─veth─ eth0 10.0.0.10/24
//!  pct-tun 10.100.0.x  (tunnel)  ─────►  openvpn :1194 ─► pct-tun 10.100.0.1 ──► (SNAT to 10.0.0.1)
//! ```
//!
//! The underlay is one veth pair per client, point to point (`192.0.2.1 peer 192.0.2.(11+i)`),
//! not a bridge: each client has its own interface in the gateway namespace (a native XDP
//! attach point, if our server ever wants one) and clients cannot see each other. The
//! gateway sides have `forwarding=0`, so a client reaches the private network only through
//! the tunnel, never by plain routing through the gateway.
mod config;
mod iperf;
mod lab;
mod pki;
mod proc;
mod stock;

pub use config::{Cipher, ClientConfig, Proto, StockServerConfig};
pub use iperf::{iperf3_client, iperf3_server, parse_iperf3, ping, Iperf3Server, IperfResult};
pub use lab::{netns_exists, Lab, Underlay, UnderlayClient};
pub use pki::{write_tls_crypt_key, CertKey, LabPki};
pub use proc::{last_lines, read_log, Proc, TempDir};
pub use stock::{Connected, OvpnClient, StockServer};

use std::net::Ipv4Addr;

/// The gateway's underlay address (where the OpenVPN server listens).
pub use portcullis::netns::UNDERLAY_GW;
/// The default OpenVPN port.
pub const OVPN_PORT: u16 = 1194;
/// The VPN pool; the server (stock or ours) is `.1`, clients get `.2` upwards.
pub const VPN_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 0);
pub const VPN_NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// The private network behind the gateway (see `gateway::SERVER`, `gateway::GW_NET_ADDR`).
pub const PRIVATE_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
/// The tunnel device name on both ends (inside namespaces only).
pub const TUN_DEV: &str = "pct-tun";
/// Client names [`LabPki::generate`] issues certificates for.
pub const DEFAULT_CLIENTS: &[&str] = &["alice", "bob", "carol", "dave"];
/// Common name of the server certificate.
pub const SERVER_CN: &str = "server";

/// The underlay address of client `i` (0-based).
pub fn underlay_client_addr(i: usize) -> Ipv4Addr {
    assert!(i < 200, "the underlay has room for 200 clients");
    Ipv4Addr::new(192, 0, 2, 11 + i as u8)
}
