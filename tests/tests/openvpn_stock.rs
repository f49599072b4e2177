//! The stock-OpenVPN harness against itself: a stock client connects to the stock reference
//! server in `openvpn::Lab`, gets its pushed address, route and DNS option, pings the private
//! server and moves iperf3 traffic through the tunnel; afterwards nothing is left. This is
//! the baseline `cargo xtask bench tunnel` compares our server with.
//!
//! Run as root: `cargo test -p tests --test openvpn_stock -- --test-threads=1`.
use std::{
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use tests::{
    gateway::{base_policy, Gateway, Options, SERVER},
    openvpn::{
        iperf3_client, iperf3_server, netns_exists, ping, Cipher, ClientConfig, Lab, LabPki,
        OvpnClient, Proto, StockServer, StockServerConfig, TempDir, Underlay, PRIVATE_NETWORK,
        UNDERLAY_GW, VPN_NETWORK,
    },
    require_root,
};

const IPERF_PORT: u16 = 5201;

fn stock_client_to_stock_server(proto: Proto, cipher: Cipher) {
    let started = Instant::now();
    let (namespaces, pids) = {
        let tmp = TempDir::new("pki");
        let pki = LabPki::generate(tmp.path());
        let lab = Lab::stock(1);
        let client_ns = &lab.client(0).ns;

        // Without the tunnel the private network is unreachable: the gateway does not
        // route underlay traffic.
        assert!(
            !ping(client_ns, SERVER, 1, Duration::from_millis(300)),
            "{SERVER} answered without a tunnel: the underlay routes around it"
        );

        let mut scfg = StockServerConfig::new(&pki, proto);
        scfg.cipher = cipher;
        scfg.extra
            .push("push \"dhcp-option DNS 10.0.0.2\"".to_string());
        let server = StockServer::start(&lab.gw, &scfg);
        server
            .wait_ready(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));

        let mut ccfg = ClientConfig::new(&pki, "alice", proto);
        ccfg.cipher = cipher;
        let client = OvpnClient::start(client_ns, &ccfg);
        let c = client
            .wait_connected(Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("connected after {:?}", started.elapsed());

        let pool = u32::from(VPN_NETWORK);
        let addr = u32::from(c.tun_addr);
        assert!(
            addr & 0xffff_ff00 == pool && addr & 0xff >= 2,
            "pushed address {} outside the pool",
            c.tun_addr
        );
        assert_eq!(
            c.env.get("ifconfig_netmask").map(String::as_str),
            Some("255.255.255.0")
        );
        assert!(
            c.routes()
                .contains(&(PRIVATE_NETWORK, Ipv4Addr::new(255, 255, 255, 0))),
            "route 10.0.0.0/24 not pushed: {:?}",
            c.routes()
        );
        assert_eq!(c.foreign_options(), vec!["dhcp-option DNS 10.0.0.2"]);
        let negotiated = format!("Data Channel: cipher '{}'", cipher.name());
        // Logged just after "Initialization Sequence Completed".
        assert!(
            client.wait_log(&negotiated, Duration::from_secs(5)),
            "client log lacks {negotiated:?}"
        );

        assert!(
            ping(client_ns, SERVER, 5, Duration::from_secs(5)),
            "no echo reply from {SERVER} through the tunnel"
        );

        let iperf = iperf3_server(&lab.net, IPERF_PORT);
        let r = iperf3_client(client_ns, SERVER, IPERF_PORT, 2, false, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{proto:?} {}: {r:?}", cipher.name());
        assert!(r.bits_per_second > 0.0, "{r:?}");
        // The server saw the gateway's address: the pool was translated (nftables SNAT).
        assert!(
            iperf
                .proc
                .log()
                .contains("Accepted connection from 10.0.0.1,"),
            "iperf3 server did not see the SNAT address:\n{}",
            iperf.proc.log()
        );

        let pids = vec![server.pid(), client.pid(), iperf.proc.pid()];
        (lab.namespaces(), pids)
    };
    for ns in &namespaces {
        assert!(!netns_exists(ns), "namespace {ns} left behind");
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind"
        );
    }
    eprintln!("total {:?}", started.elapsed());
}

#[test]
fn stock_client_to_stock_server_udp() {
    require_root!();
    stock_client_to_stock_server(Proto::Udp, Cipher::Aes256Gcm);
}

#[test]
fn stock_client_to_stock_server_tcp() {
    require_root!();
    stock_client_to_stock_server(Proto::Tcp, Cipher::ChaCha20Poly1305);
}

/// The piece the end-to-end tests with our server use: clients attached to the namespace of
/// a `gateway::Gateway` (XDP data path loaded) reach the gateway's underlay address, and
/// nothing else.
#[test]
fn underlay_attaches_to_a_data_path_gateway() {
    require_root!();
    let started = Instant::now();
    let namespaces = {
        let gw = Gateway::new(base_policy(), Options::default());
        let underlay = Underlay::attach(&gw.gw, 2);
        for c in &underlay.clients {
            assert!(
                ping(&c.ns, UNDERLAY_GW, 3, Duration::from_secs(3)),
                "client {} cannot reach {UNDERLAY_GW}",
                c.addr
            );
            assert!(
                !ping(&c.ns, SERVER, 1, Duration::from_millis(300)),
                "client {} reaches {SERVER} without a tunnel",
                c.addr
            );
        }
        let mut v = underlay.namespaces();
        v.extend([gw.gw.name.clone(), gw.net.name.clone()]);
        v
    };
    for ns in &namespaces {
        assert!(!netns_exists(ns), "namespace {ns} left behind");
    }
    eprintln!("total {:?}", started.elapsed());
}
