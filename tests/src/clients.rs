//! Client namespaces with their own network stacks, wired to a [`Gateway`] through
//! [`crate::relay::Relay`] (the stand-in for the OpenVPN tunnel), and small servers in
//! the gateway's server namespace. Everything stops and is removed on drop.
//!
//! ```text
//!  client ns (10.100.0.x/32)        gw ns                              net ns
//!  eth0 ──veth── pct-r… ──[relay thread]── pct-tap (XDP) ─redirect─► pct-gw0 ──► eth0 servers
//! ```
//!
//! A client looks like a tun client: its address is a /32, everything goes via the gateway
//! 10.100.0.1, whose (virtual) MAC is a permanent neighbour, so it never sends ARP. The
//! gateway-side veth never routes (`forwarding=0`), and the frames the client sends are not
//! addressed to it: only the relay sees them, the kernel around the data path never does.
use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, RingBuf};
use portcullis::{
    datapath::maps::Flow,
    io::tap::tap_mac,
    netns::{Offloads, Veth, VethEnd},
};
use portcullis_common::{map_names, CtEntry, DenyEvent, FlowKey, NatRev};

use crate::relay::{Relay, RelayPort};
use crate::{
    gateway::{Gateway, Network},
    mac_of, unique, NetNs,
};

pub use portcullis::netns::{inet_checksum, IcmpSocket};

/// Run `f` on a fresh thread inside the named namespace (sockets it creates live there).
pub fn run_in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    NetNs::open(ns).run(f)
}

/// Poll `f` every 5 ms until it is true or `timeout` passes; returns the last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How long a receive that should succeed may take (generous: the host may be busy).
pub const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// How long to listen when nothing should arrive.
pub const SILENCE: Duration = Duration::from_millis(250);

/// True when nothing arrives on `s` within `wait` (the socket's read timeout is restored).
pub fn silent(s: &UdpSocket, wait: Duration) -> bool {
    let old = s.read_timeout().ok().flatten();
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    let got = s.recv_from(&mut buf);
    s.set_read_timeout(old).unwrap();
    got.is_err()
}

/// One client: a namespace with a real network stack behind the relay.
pub struct Client {
    pub addr: Ipv4Addr,
    /// The gateway-side veth the relay serves.
    pub gw_if: String,
    _link: Veth,
    pub ns: NetNs,
}

impl Client {
    /// Run `f` on a thread inside the client's namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.ns.run(f)
    }

    /// A UDP socket bound to `addr:port` in the client namespace (0 = any port), with a
    /// [`RECV_TIMEOUT`] read timeout.
    pub fn udp(&self, port: u16) -> UdpSocket {
        let addr = self.addr;
        let s = self
            .run(move || UdpSocket::bind((addr, port)))
            .unwrap_or_else(|e| panic!("bind udp {addr}:{port}: {e}"));
        s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        s
    }

    /// A UDP socket bound to `port` and connected to `dst`.
    pub fn udp_connected(&self, port: u16, dst: SocketAddrV4) -> UdpSocket {
        let s = self.udp(port);
        s.connect(dst).unwrap();
        s
    }

    /// TCP connect from the client namespace.
    pub fn tcp_connect(&self, dst: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
        let s = self.run(move || TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(s)
    }

    /// A raw ICMP socket in the client namespace.
    pub fn icmp_socket(&self) -> IcmpSocket {
        self.run(IcmpSocket::new).expect("raw icmp socket")
    }

    /// One ICMP echo (identifier `id`, sequence `seq`) over a raw socket; true when the
    /// matching reply arrives within `timeout`.
    pub fn ping(&self, dst: Ipv4Addr, id: u16, seq: u16, timeout: Duration) -> bool {
        let s = self.icmp_socket();
        s.send_echo(dst, id, seq, b"portcullis").unwrap();
        s.wait_reply(dst, id, seq, timeout)
    }
}

/// Set an `int` socket option (e.g. `SO_NO_CHECK`, `IP_TTL`).
pub fn setsockopt_int(fd: &impl AsRawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: setsockopt with an int option on a valid socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            4,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {opt}): {}",
        io::Error::last_os_error()
    );
}

/// Set raw IPv4 options on a socket (`IP_OPTIONS`).
pub fn set_ip_options(fd: &impl AsRawFd, opts: &[u8]) {
    // SAFETY: setsockopt with a byte buffer of the given length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            opts.as_ptr().cast(),
            opts.len() as u32,
        )
    };
    assert_eq!(rc, 0, "IP_OPTIONS: {}", io::Error::last_os_error());
}

/// Client namespaces and the relay that carries their frames into the gateway's TAP.
/// Field order is drop order: the relay stops before the namespaces go.
pub struct Clients {
    pub relay: Relay,
    pub list: Vec<Client>,
}

impl Clients {
    /// Create one namespace per address, wire it to the gateway namespace, start the relay
    /// on the gateway's TAP and check that every client reaches the gateway's tunnel address
    /// (which also teaches the relay where each client lives).
    pub fn start(gw: &Gateway, addrs: &[Ipv4Addr]) -> Clients {
        let gateway = gw.policy.gateway_addr;
        let gw_mac = tap_mac(gateway);
        let mut list = Vec::new();
        for &addr in addrs {
            let ns = NetNs::new("c");
            let gw_if = unique("r");
            ns.netns().disable_ipv6().unwrap_or_else(|e| panic!("{e}"));
            // Complete checksums, as a tunnel delivers them (see docs/topology.md).
            let link = Veth::create(
                VethEnd::new(gw.gw.netns(), &gw_if, Offloads::KERNEL),
                VethEnd::new(ns.netns(), "eth0", Offloads::KERNEL.complete_checksums()),
            )
            .unwrap_or_else(|e| panic!("relay veth: {e}"));
            gw.gw
                .sysctl(&format!("net.ipv6.conf.{gw_if}.disable_ipv6"), "1");
            gw.gw
                .sysctl(&format!("net.ipv4.conf.{gw_if}.forwarding"), "0");
            ns.ip(&["addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
            ns.ip(&[
                "route",
                "add",
                &format!("{gateway}/32"),
                "dev",
                "eth0",
                "scope",
                "link",
            ]);
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
                "dev",
                "eth0",
            ]);
            ns.netns()
                .add_neighbours("eth0", &[gateway], gw_mac)
                .unwrap_or_else(|e| panic!("{e}"));
            list.push(Client {
                addr,
                gw_if,
                _link: link,
                ns,
            });
        }
        // The test thread is inside the gateway namespace: the relay's sockets bind there.
        let ports: Vec<RelayPort> = list
            .iter()
            .map(|c| RelayPort {
                ifindex: portcullis::datapath::ifindex(&c.gw_if).expect("relay veth"),
                mac: mac_of(&gw.gw, &c.gw_if),
            })
            .collect();
        let taps = gw
            .tap
            .queues
            .iter()
            .map(|q| q.try_clone())
            .collect::<io::Result<Vec<_>>>()
            .expect("clone TAP queue");
        // The relay writes each client's session slot, as the worker writes the peer id:
        // read it from the `clients` map the test fills.
        let clients_map = gw
            .dp
            .options
            .pin_dir()
            .join(portcullis_common::map_names::CLIENTS);
        let slot_of: crate::relay::SlotOf = Box::new(move |a| {
            let map =
                aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(&clients_map).ok()?)
                    .ok()?;
            let m: aya::maps::HashMap<
                _,
                portcullis_common::ClientKey,
                portcullis_common::ClientInfo,
            > = aya::maps::HashMap::try_from(map).ok()?;
            m.get(&portcullis_common::ClientKey::v4(a), 0)
                .ok()
                .map(|c| c.slot)
        });
        let relay = Relay::start(&ports, taps, gw.tap.mac, slot_of).expect("start relay");
        let clients = Clients { relay, list };
        for (i, c) in clients.list.iter().enumerate() {
            assert!(
                c.ping(gateway, 0x7700 + i as u16, 1, Duration::from_secs(2)),
                "client {} cannot reach the gateway's tunnel address {gateway}",
                c.addr
            );
        }
        clients
    }

    pub fn get(&self, i: usize) -> &Client {
        &self.list[i]
    }
}

// ---- servers in the gateway's server namespace --------------------------------------------

/// A datagram a [`UdpServer`] received.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub payload: Vec<u8>,
    pub at: Instant,
}

/// A UDP server in the server namespace that records every datagram and optionally echoes it.
pub struct UdpServer {
    pub addr: SocketAddrV4,
    pub socket: UdpSocket,
    got: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(gw: &Network, addr: SocketAddrV4, echo: bool) -> UdpServer {
        let socket = gw
            .in_net(move || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("bind server {addr}: {e}"));
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        set_rcvbuf(&socket, 4 << 20);
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, g, st) = (socket.try_clone().unwrap(), got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let at = Instant::now();
                    // Recorded before the echo, so a client holding the echo finds it here.
                    g.lock().unwrap().push(Datagram {
                        from,
                        payload: buf[..n].to_vec(),
                        at,
                    });
                    if echo {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            }
        });
        UdpServer {
            addr,
            socket,
            got,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> Vec<Datagram> {
        self.got.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Wait until at least `n` datagrams arrived (bounded by `timeout`).
    pub fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count() >= n)
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_rcvbuf(s: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: setsockopt with an int option on a valid socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            4,
        )
    };
}

/// A TCP server in the server namespace: on accept it writes `"<peer>\n"`, then echoes
/// everything it reads. Accepted streams are kept so a test can push data to the client.
pub struct TcpServer {
    pub addr: SocketAddrV4,
    conns: Arc<Mutex<Vec<(SocketAddr, TcpStream)>>>,
    stop: Arc<AtomicBool>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl TcpServer {
    pub fn start(gw: &Network, addr: SocketAddrV4) -> TcpServer {
        let l = gw
            .in_net(move || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind server {addr}: {e}"));
        l.set_nonblocking(true).unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let (c, st, th) = (conns.clone(), stop.clone(), threads.clone());
        let accept = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                        c.lock().unwrap().push((peer, s.try_clone().unwrap()));
                        let _ = writeln!(s, "{peer}");
                        let st2 = st.clone();
                        th.lock().unwrap().push(std::thread::spawn(move || {
                            let mut buf = vec![0u8; 65536];
                            while !st2.load(Ordering::Relaxed) {
                                match s.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        if s.write_all(&buf[..n]).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpServer {
            addr,
            conns,
            stop,
            threads,
            accept: Some(accept),
        }
    }

    /// Peers of the accepted connections, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.conns.lock().unwrap().iter().map(|c| c.0).collect()
    }

    /// A handle on the `i`th accepted connection (to send from the server side).
    pub fn conn(&self, i: usize) -> TcpStream {
        self.conns.lock().unwrap()[i].1.try_clone().unwrap()
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// Read one `\n`-terminated line (the TCP server's greeting), bounded by the socket's
/// read timeout.
pub fn read_line(s: &mut TcpStream) -> io::Result<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => out.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Write `data` and read the same number of bytes back (the TCP server echoes).
pub fn echo_round_trip(s: &mut TcpStream, data: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

// ---- map views that `Maps` does not offer ---------------------------------------------------

/// Every `nat_rev` entry (reply key → forward key), read from the endpoint's pins.
pub fn nat_rev_entries(pin_dir: &Path) -> Vec<(FlowKey, FlowKey)> {
    let data = MapData::from_pin(pin_dir.join(map_names::NAT_REV)).expect("nat_rev pin");
    let m: BpfHashMap<_, FlowKey, NatRev> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(data)).expect("nat_rev map");
    m.iter()
        .filter_map(|r| r.ok())
        .map(|(k, v)| (k, v.fwd))
        .collect()
}

/// `flows_opened[slot]` and `flows_closed[slot]`, read from the endpoint's pins.
pub fn flow_quota_counters(pin_dir: &Path, slot: u32) -> (u64, u64) {
    let read = |name: &str| {
        let data = MapData::from_pin(pin_dir.join(name)).expect("pin");
        let m: Array<_, u64> = Array::try_from(aya::maps::Map::Array(data)).expect("array");
        m.get(&slot, 0).expect("slot")
    };
    (read(map_names::FLOWS_OPENED), read(map_names::FLOWS_CLOSED))
}

/// The flow `key` (both halves joined), if any.
pub fn flow(gw: &Gateway, key: &FlowKey) -> Option<Flow> {
    gw.dp
        .maps
        .flows()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, e)| e)
}

/// The forward half of the flow `key` as the data path keeps it (to change and write back
/// with [`set_flow`]), if any.
pub fn ct_entry(gw: &Gateway, key: &FlowKey) -> Option<CtEntry> {
    gw.dp
        .maps
        .ct_entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, e)| e)
}

/// Drain whatever deny events the ring buffer holds.
pub fn drain_deny_events(rb: &mut RingBuf<MapData>) -> Vec<DenyEvent> {
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        if item.len() >= std::mem::size_of::<DenyEvent>() {
            // SAFETY: the XDP program writes whole DenyEvent records.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DenyEvent>()) });
        }
    }
    out
}

/// Overwrite the conntrack entry of `key` through the endpoint's pins (to age a flow
/// without waiting for its timeout).
pub fn set_flow(pin_dir: &Path, key: &FlowKey, e: CtEntry) {
    let data = MapData::from_pin(pin_dir.join(map_names::CONNTRACK)).expect("conntrack pin");
    let mut m: BpfHashMap<_, FlowKey, CtEntry> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(data)).expect("conntrack map");
    m.insert(key, e, 0).expect("update conntrack entry");
}
