//! SNAT that keeps a client's source port never shadows a socket of the gateway host (its
//! directory, DNS and hook connections), whichever of the two took the port first.
use std::{net::UdpSocket, time::Duration};

use portcullis_common::{Event, FlowKey, PROTO_UDP};
use tests::{
    clients::{flow, Clients, UdpServer},
    gateway::{base_policy, Gateway, Options, SERVER},
    require_root,
};

use crate::*;

/// A UDP socket of the gateway host on the SNAT address, connected to the server.
fn host_socket(port: u16) -> UdpSocket {
    // The test thread is inside the gateway namespace, where the SNAT address lives.
    let s = UdpSocket::bind(sa(SNAT, port)).expect("bind a host socket on the SNAT address");
    s.connect(sa(SERVER, 7000)).unwrap();
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    s
}

fn echo(s: &UdpSocket, msg: &[u8]) -> Option<Vec<u8>> {
    s.send(msg).unwrap();
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

#[test]
fn host_socket_replies_reach_the_host_while_a_client_holds_the_same_port() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    gw.add_client(C1, &[], 0);
    let cl = Clients::start(&gw, &[C1]);
    let c = cl.get(0);
    let _srv = UdpServer::start(&gw, sa(SERVER, 7000), true);

    // The client first: its port is kept. Then the host opens the same tuple.
    let client = c.udp_connected(40000, sa(SERVER, 7000));
    client.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    assert_eq!(echo(&client, b"client").as_deref(), Some(&b"client"[..]));
    let key = FlowKey::v4(PROTO_UDP, C1.octets(), 40000, SERVER.octets(), 7000);
    assert_eq!(flow(&gw, &key).expect("client flow").nat_port, 40000);
    let host = host_socket(40000);
    let before = host_socket_wins(&gw);
    assert_eq!(
        echo(&host, b"host").as_deref(),
        Some(&b"host"[..]),
        "the host's reply reaches the host, not the client"
    );
    assert!(host_socket_wins(&gw) > before);
    let mut buf = [0u8; 64];
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        client.recv(&mut buf).is_err(),
        "the client got the host's reply"
    );

    // The host first: the client's flow is translated to a PAT port instead.
    let host2 = host_socket(40001);
    let client2 = c.udp_connected(40001, sa(SERVER, 7000));
    client2.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    assert_eq!(echo(&client2, b"c2").as_deref(), Some(&b"c2"[..]));
    let key2 = FlowKey::v4(PROTO_UDP, C1.octets(), 40001, SERVER.octets(), 7000);
    assert_ne!(flow(&gw, &key2).expect("second flow").nat_port, 40001);
    assert_eq!(echo(&host2, b"h2").as_deref(), Some(&b"h2"[..]));
}

fn host_socket_wins(gw: &Gateway) -> u64 {
    events(gw).get(&Event::HostSocketWins).copied().unwrap_or(0)
}
