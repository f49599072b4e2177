//! The stock `openvpn` client against our server, in namespaces, through the XDP data path.
use std::time::Duration;

use tests::gateway::SERVER;
use tests::openvpn::{ping, ClientConfig, OvpnClient, Proto};
use tests::tunnel::{TunnelLab, TunnelOpts};

#[test]
fn udp_client_connects_and_pings_through_xdp() {
    if !tests::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lab = TunnelLab::new(TunnelOpts::default());
    let cfg = ClientConfig::new(&lab.pki, "alice", Proto::Udp);
    let client = OvpnClient::start(&lab.underlay.client(0).ns, &cfg);
    let c = client
        .wait_connected(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", client.log()));
    eprintln!("connected: {}", c.tun_addr);
    assert!(ping(&lab.underlay.client(0).ns, SERVER, 3, Duration::from_secs(3)), "{}", client.log());
}
