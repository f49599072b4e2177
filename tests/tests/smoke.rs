//! The harness itself: a gateway comes up, one UDP datagram written into the TAP reaches
//! the server translated, and the reply comes back out of the TAP with the address restored.
use std::{io::Read, io::Write, net::UdpSocket, time::Duration};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use tests::{gateway::*, require_root};

#[test]
fn udp_round_trip_through_the_data_path() {
    require_root!();
    let mut gw = Gateway::new(base_policy(), Options::default());
    let client = std::net::Ipv4Addr::new(10, 100, 0, 2);
    gw.add_client(client, &[], 0);
    let server = gw.in_net(|| UdpSocket::bind("10.0.0.10:7000").unwrap());
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    // Written as the worker writes it: the source MAC names the session's slot (0).
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(portcullis_common::session_mac(0), gw.tap.mac)
        .ipv4(client.octets(), SERVER.octets(), 64)
        .udp(40000, 7000)
        .write(&mut frame, b"ping")
        .unwrap();
    (&gw.tap.queues[0]).write_all(&frame).unwrap();

    let mut buf = [0u8; 64];
    let (n, from) = server
        .recv_from(&mut buf)
        .expect("datagram reaches the server");
    assert_eq!(&buf[..n], b"ping");
    assert_eq!(
        from.to_string(),
        "10.0.0.1:40000",
        "source translated, port kept"
    );
    server.send_to(b"pong", from).unwrap();

    let mut tap = &gw.tap.queues[0];
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let reply = loop {
        let mut rbuf = [0u8; 2048];
        match tap.read(&mut rbuf) {
            Ok(n) => {
                let p = SlicedPacket::from_ethernet(&rbuf[..n]).unwrap();
                if let Some(NetSlice::Ipv4(ip)) = &p.net {
                    if ip.header().destination() == client.octets() {
                        break rbuf[..n].to_vec();
                    }
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reply came out of the TAP"
        );
    };
    let p = SlicedPacket::from_ethernet(&reply).unwrap();
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("not UDP")
    };
    assert_eq!(udp.destination_port(), 40000);
    assert_eq!(udp.payload(), b"pong");
    let stats = gw.dp.maps.session_stats(0).unwrap();
    assert_eq!((stats.ingress_packets, stats.egress_packets), (1, 1));
}
