//! UDP sockets: one `SO_REUSEPORT` socket per listener and worker, and the reusable
//! `recvmmsg`/`sendmmsg` batches the workers read and send with.
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::{TunnelStats, BATCH, BUF};

pub(super) fn reuseport_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd owned from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEPORT, libc::SO_REUSEADDR] {
        // SAFETY: setsockopt with an int.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
    }
    let buf: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt with an int; failure keeps the default.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&buf as *const libc::c_int).cast(),
                4,
            )
        };
    }
    let (sa, len) = sockaddr(addr);
    // SAFETY: bind with a sockaddr_storage of the given length.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_storage).cast(),
            len,
        )
    } < 0
    {
        return Err(io::Error::other(format!(
            "binding UDP {addr}: {} (is another server on that port?)",
            io::Error::last_os_error()
        )));
    }
    Ok(UdpSocket::from(fd))
}

pub(super) fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            (ss, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

pub(super) fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            // Dual-stack sockets report IPv4 clients as mapped addresses.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, port)),
                None => SocketAddr::from((ip, port)),
            })
        }
        _ => None,
    }
}

/// Reusable `recvmmsg`/`sendmmsg` state: buffers, iovecs and headers allocated once.
pub(super) struct Batch {
    pub(super) bufs: Vec<[u8; BUF]>,
    pub(super) lens: Vec<usize>,
    pub(super) addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    pub(super) fn new() -> Box<Batch> {
        // SAFETY: zeroed sockaddr_storage / iovec / mmsghdr are valid plain data.
        let mut b = Box::new(Batch {
            bufs: vec![[0u8; BUF]; BATCH],
            lens: vec![0; BATCH],
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: vec![unsafe { std::mem::zeroed() }; BATCH],
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        });
        b.relink();
        b
    }

    /// Points the headers at the buffers (the vectors never reallocate after `new`).
    fn relink(&mut self) {
        for i in 0..BATCH {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = BUF;
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            self.hdrs[i].msg_len = 0;
        }
    }

    pub(super) fn recv(&mut self, sock: &UdpSocket) -> usize {
        for i in 0..BATCH {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = BUF;
            self.hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: hdrs point at our live buffers of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return 0;
        }
        for i in 0..n as usize {
            self.lens[i] = self.hdrs[i].msg_len as usize;
        }
        n as usize
    }
}

/// Outgoing datagrams of one worker, flushed with `sendmmsg` per socket.
pub(super) struct SendQueue {
    pub(super) bufs: Vec<[u8; BUF]>,
    /// (listener, range in buf, destination)
    pub(super) meta: Vec<(usize, std::ops::Range<usize>, SocketAddr)>,
}

impl SendQueue {
    pub(super) fn new() -> Self {
        Self {
            bufs: vec![[0u8; BUF]; BATCH],
            meta: Vec::with_capacity(BATCH),
        }
    }

    pub(super) fn full(&self) -> bool {
        self.meta.len() == BATCH
    }

    pub(super) fn flush(&mut self, socks: &[UdpSocket], stats: &TunnelStats) {
        if self.meta.is_empty() {
            return;
        }
        for (li, sock) in socks.iter().enumerate() {
            // SAFETY: zeroed plain-data structs, filled below.
            let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
            let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            let mut n = 0;
            for (i, (l, r, to)) in self.meta.iter().enumerate() {
                if *l != li {
                    continue;
                }
                let (sa, len) = sockaddr(*to);
                addrs[n] = sa;
                iovs[n].iov_base = self.bufs[i][r.start..].as_mut_ptr().cast();
                iovs[n].iov_len = r.len();
                n += 1;
                let h = &mut hdrs[n - 1].msg_hdr;
                h.msg_namelen = len;
            }
            for i in 0..n {
                hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
                hdrs[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            }
            let mut off = 0;
            // Bounded: each round sends at least one message or gives up.
            while off < n {
                // SAFETY: headers point at live buffers and addresses in this frame.
                let r = unsafe {
                    libc::sendmmsg(
                        sock.as_raw_fd(),
                        hdrs[off..].as_mut_ptr(),
                        (n - off) as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                if r <= 0 {
                    break;
                }
                stats.udp_tx.fetch_add(r as u64, Ordering::Relaxed);
                off += r as usize;
            }
        }
        self.meta.clear();
    }
}
