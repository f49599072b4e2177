//! The Internet checksum and a one-shot ICMP echo, for probing a topology.
use std::{
    fs::File,
    io::{self, Read},
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd},
    time::{Duration, Instant},
};

/// RFC 1071 checksum of `data`; 0 when verifying a buffer that includes its checksum.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One ICMP echo to `dst` over a raw socket (root) of the calling thread's namespace; Ok once
/// the matching reply arrives within `timeout`, `TimedOut` otherwise.
pub fn ping(dst: Ipv4Addr, timeout: Duration) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned by the File below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    let mut sock = unsafe { File::from_raw_fd(fd) };
    let id = (std::process::id() & 0xffff) as u16;
    let mut pkt = [
        8u8,
        0,
        0,
        0,
        (id >> 8) as u8,
        id as u8,
        0,
        1,
        b'p',
        b'c',
        b'd',
        b'm',
    ];
    let c = inet_checksum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    // SAFETY: a zeroed sockaddr_in is valid; the fields are set below.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
    // SAFETY: sendto from our buffer with a sockaddr_in of the given size.
    let rc = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: SO_RCVTIMEO with a timeval of the given size on our socket.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if let Ok(n) = sock.read(&mut buf) {
            // Raw sockets deliver the IP header too.
            if n >= 28 {
                let ihl = usize::from(buf[0] & 0xf) * 4;
                let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                if src == dst
                    && n >= ihl + 8
                    && buf[ihl] == 0
                    && u16::from_be_bytes([buf[ihl + 4], buf[ihl + 5]]) == id
                {
                    return Ok(());
                }
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no echo reply"))
}

#[cfg(test)]
mod tests {
    use super::inet_checksum;

    #[test]
    fn checksum_of_a_known_header_and_its_verification() {
        // An IPv4 header from RFC 1071's usual worked example (checksum field zeroed).
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = inet_checksum(&h);
        assert_eq!(c, 0xb861);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(inet_checksum(&h), 0);
        // An odd length pads with a zero byte.
        assert_eq!(inet_checksum(&[0x01]), !0x0100);
    }
}
