//! A frame relay between an Ethernet interface and the TAP: what the OpenVPN data channel
//! will do with decrypted packets, done here with a raw packet socket so the demo and the
//! end-to-end tests can put a real network stack (ping, TCP, UDP) on the client side.
//!
//! Client → TAP: IPv4 frames from the interface get the TAP's MAC as destination and go
//! into the TAP, where the XDP program decides. TAP → client: frames the data path (or the
//! kernel) sends to a client address go out of the interface to the MAC that address was
//! last seen with.
use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Write},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// Counters of a running relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub to_tap: AtomicU64,
    pub from_tap: AtomicU64,
    pub dropped_non_ip: AtomicU64,
    pub unknown_client: AtomicU64,
    /// Frames the kernel dropped before the relay read them (its socket buffer was full:
    /// the relay thread did not get the CPU in time). Not data path drops.
    pub socket_drops: AtomicU64,
    /// Frames the TAP refused (`write` failed).
    pub tap_write_errors: AtomicU64,
}

/// A running relay; stops (and joins its thread) on drop.
pub struct Relay {
    stop: Arc<AtomicBool>,
    pub stats: Arc<RelayStats>,
    thread: Option<JoinHandle<()>>,
}

fn packet_socket(ifindex: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ALL.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // Room for bursts while the relay thread waits for a CPU (8 MiB, as root; otherwise
    // the default is a few hundred frames).
    let rcvbuf: libc::c_int = 8 << 20;
    // SAFETY: setsockopt with an int option; failure leaves the default size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&rcvbuf as *const libc::c_int).cast(),
            4,
        )
    };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with an int option. Without it we would read back our own sends.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            (&one as *const libc::c_int).cast(),
            4,
        )
    };
    Ok(fd)
}

/// Session slot of a client address, `None` when it has no session.
pub type SlotOf = Box<dyn Fn(Ipv4Addr) -> Option<u32> + Send>;

/// One Ethernet interface the relay serves (clients live behind it).
#[derive(Clone, Copy, Debug)]
pub struct RelayPort {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

impl Relay {
    /// Relay between client-side interfaces and the TAP queues. Replies may arrive on any
    /// TAP queue (the kernel picks one per CPU), so one thread serves all of them and
    /// routes by destination address.
    /// `slot_of` names the session slot of a client address (what the worker knows as the
    /// peer id): frames carry it in their source MAC, as the worker writes them.
    pub fn start(
        ports: &[RelayPort],
        taps: Vec<File>,
        tap_mac: [u8; 6],
        slot_of: SlotOf,
    ) -> io::Result<Relay> {
        let socks = ports
            .iter()
            .map(|p| packet_socket(p.ifindex).map(|s| (s, p.mac)))
            .collect::<io::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || run(socks, taps, tap_mac, &slot_of, &stop2, &stats2))?;
        Ok(Relay {
            stop,
            stats,
            thread: Some(thread),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Frames dropped on `sock` since the last call (`PACKET_STATISTICS` resets on read).
fn socket_drops(sock: &OwnedFd) -> u64 {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `st`.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        u64::from(st.tp_drops)
    } else {
        0
    }
}

fn is_ipv4(frame: &[u8]) -> bool {
    frame.len() >= 34 && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IP
}

fn run(
    socks: Vec<(OwnedFd, [u8; 6])>,
    mut taps: Vec<File>,
    tap_mac: [u8; 6],
    slot_of: &SlotOf,
    stop: &AtomicBool,
    stats: &RelayStats,
) {
    // Client address -> (port index, client MAC), learned from what clients send.
    let mut clients: HashMap<Ipv4Addr, (usize, [u8; 6])> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|(s, _)| s.as_raw_fd())
        .chain(taps.iter().map(|t| t.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: poll on valid fds; a 100 ms timeout lets us notice `stop`.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        for (sock, _) in &socks {
            let d = socket_drops(sock);
            if d > 0 {
                stats.socket_drops.fetch_add(d, Ordering::Relaxed);
            }
        }
        if n <= 0 {
            continue;
        }
        for (i, (sock, _)) in socks.iter().enumerate() {
            if fds[i].revents & libc::POLLIN == 0 {
                continue;
            }
            loop {
                // SAFETY: recv into our buffer.
                let len =
                    unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if len <= 0 {
                    break;
                }
                let frame = &mut buf[..len as usize];
                if !is_ipv4(frame) {
                    stats.dropped_non_ip.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let src_ip = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
                let mut src_mac = [0u8; 6];
                src_mac.copy_from_slice(&frame[6..12]);
                clients.insert(src_ip, (i, src_mac));
                frame[0..6].copy_from_slice(&tap_mac);
                let o = src_ip.octets();
                // No session: any slot the data path cannot match (it drops as spoofed).
                let slot = slot_of(src_ip).unwrap_or(u32::MAX);
                frame[6..12].copy_from_slice(&portcullis_common::session_mac(slot));
                // Spread clients over queues the way workers will: by source address.
                let q = usize::from(o[3]) % taps.len();
                if taps[q].write(frame).is_ok() {
                    stats.to_tap.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.tap_write_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for q in 0..taps.len() {
            if fds[socks.len() + q].revents & libc::POLLIN == 0 {
                continue;
            }
            while let Ok(len) = taps[q].read(&mut buf) {
                if len == 0 {
                    break;
                }
                let frame = &mut buf[..len];
                if !is_ipv4(frame) {
                    // The TAP is NOARP; anything but IPv4 (IPv6 ND from the host) is noise.
                    stats.dropped_non_ip.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let dst_ip = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
                let Some(&(port, mac)) = clients.get(&dst_ip) else {
                    stats.unknown_client.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                frame[0..6].copy_from_slice(&mac);
                frame[6..12].copy_from_slice(&socks[port].1);
                // SAFETY: send from our buffer on a bound packet socket.
                let rc = unsafe {
                    libc::send(
                        socks[port].0.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                    )
                };
                if rc > 0 {
                    stats.from_tap.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
