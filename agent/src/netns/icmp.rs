//! The Internet checksum and ICMP echo over a raw socket, for probing a topology.
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

/// A raw `IPPROTO_ICMP` socket in the calling thread's namespace (root; the kernel builds the
/// IP header), with a 20 ms receive timeout.
pub struct IcmpSocket {
    file: File,
}

impl IcmpSocket {
    pub fn new() -> io::Result<IcmpSocket> {
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
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: SO_RCVTIMEO with a timeval on our fd.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        // SAFETY: fd is a fresh socket we own.
        Ok(IcmpSocket {
            file: unsafe { File::from_raw_fd(fd) },
        })
    }

    pub fn send_echo(&self, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> io::Result<()> {
        let mut pkt = vec![8u8, 0, 0, 0];
        pkt.extend_from_slice(&id.to_be_bytes());
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(payload);
        let c = inet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: zeroed sockaddr_in, fields set below.
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        // SAFETY: sendto from our buffer with a sockaddr_in of the right size.
        let rc = unsafe {
            libc::sendto(
                self.file.as_raw_fd(),
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
        Ok(())
    }

    /// Wait for the echo reply from `src` with `id` and `seq`. A reply whose checksum does
    /// not verify does not count: NAT rewrites on the way must keep it right.
    pub fn wait_reply(&self, src: Ipv4Addr, id: u16, seq: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let Ok(n) = (&self.file).read(&mut buf) else {
                continue;
            };
            let ihl = usize::from(buf[0] & 0xf) * 4;
            if n < ihl + 8 {
                continue;
            }
            let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            let icmp = &buf[ihl..n];
            if from == src
                && icmp[0] == 0
                && inet_checksum(icmp) == 0
                && u16::from_be_bytes([icmp[4], icmp[5]]) == id
                && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
            {
                return true;
            }
        }
        false
    }
}

impl IcmpSocket {
    /// The next ICMP message of `ty` within `timeout`: (source, code, ICMP bytes).
    pub fn wait_type(&self, ty: u8, timeout: Duration) -> Option<(Ipv4Addr, u8, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let Ok(n) = (&self.file).read(&mut buf) else {
                continue;
            };
            let ihl = usize::from(buf[0] & 0xf) * 4;
            if n >= ihl + 8 && buf[ihl] == ty {
                let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                return Some((from, buf[ihl + 1], buf[ihl..n].to_vec()));
            }
        }
        None
    }
}

/// One ICMP echo to `dst` from the calling thread's namespace; Ok once the matching reply
/// arrives within `timeout`, `TimedOut` otherwise.
pub fn ping(dst: Ipv4Addr, timeout: Duration) -> io::Result<()> {
    let s = IcmpSocket::new()?;
    let id = (std::process::id() & 0xffff) as u16;
    s.send_echo(dst, id, 1, b"pcdm")?;
    if s.wait_reply(dst, id, 1, timeout) {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::TimedOut, "no echo reply"))
    }
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
