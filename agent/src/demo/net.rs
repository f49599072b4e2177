//! The demo's namespaces (built by [`crate::netns::Topology`]) and its servers. Everything
//! is removed on drop, also when the demo fails half-way.
use std::{
    io::Write,
    net::{Ipv4Addr, TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;

use crate::netns::{self, PrivateNetwork, UnderlayClient, Veth};
pub use crate::netns::{ping, Netns as Ns, UNDERLAY_GW};

pub const GW: &str = "pc-demo-gw";
pub const NET: &str = "pc-demo-net";

/// Gateway, private network and client namespaces. Field order is drop order.
pub struct Topology {
    _clients: Vec<UnderlayClient>,
    _private_link: Veth,
    pub net: Ns,
    pub gw: Ns,
}

impl Topology {
    /// `clients`: (namespace, gateway-side interface, client underlay address). The private
    /// network: gateway 10.0.0.1, app 10.0.0.10 and db 10.0.0.20 on one link.
    pub fn build(clients: &[(&str, &str, Ipv4Addr)]) -> Result<Topology> {
        let mut b = netns::Topology::builder(
            GW,
            NET,
            PrivateNetwork {
                gw_if: "pc-dgw0",
                gw_addr: Ipv4Addr::new(10, 0, 0, 1),
                prefix_len: 24,
                net_if: "eth0",
                hosts: vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 20)],
                extra_neighbours: Vec::new(),
            },
        )
        .replace_leftovers();
        for &(ns, gw_if, addr) in clients {
            b = b.client(ns, gw_if, addr);
        }
        let t = b.build()?;
        Ok(Topology {
            _clients: t.clients,
            _private_link: t.private_link,
            net: t.net,
            gw: t.gw,
        })
    }
}

/// Tiny services on the private network: each answers with its name and address.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(net: &Ns) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (addr, port, name) in [
            ("10.0.0.10", 80, "app http"),
            ("10.0.0.10", 22, "app ssh"),
            ("10.0.0.20", 80, "db http"),
            ("10.0.0.20", 5432, "db postgres"),
            ("10.0.0.20", 22, "db ssh"),
        ] {
            let l = net.run(move || TcpListener::bind((addr, port)))??;
            l.set_nonblocking(true)?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            // One write, so the client's single read sees the whole line.
                            let line = format!("{name} on {addr}:{port}, you are {peer}\n");
                            let _ = s.write_all(line.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }));
        }
        for addr in ["10.0.0.10", "10.0.0.20"] {
            let u = net.run(move || UdpSocket::bind((addr, 53)))??;
            u.set_read_timeout(Some(Duration::from_millis(100)))?;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = u.recv_from(&mut buf) {
                        let _ =
                            u.send_to(format!("dns on {addr}:53, you are {peer}").as_bytes(), peer);
                    }
                }
            }));
        }
        Ok(Servers { stop, threads })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
