//! The TAP device between the tunnel and the XDP data path.
//!
//! A TAP (not TUN) device because only TAP has native XDP and `ndo_xdp_xmit` in the tun
//! driver: frames the agent writes run the TAP's XDP program natively, and the target
//! interfaces' XDP program can redirect replies into it. See docs/architecture.md.
use std::{
    fs::{File, OpenOptions},
    io,
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
};

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Instant;

use ipnet::Ipv4Net;
use portcullis_common::session_mac;
use thiserror::Error;

use super::{TunnelStats, ETH_HLEN};
use crate::openvpn::peer::{Link, PeerTable};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

#[derive(Debug, Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun: {0} (is the tun driver available, and are you root?)")]
    OpenTun(io::Error),
    #[error("cannot create TAP device {name}: {source} (a name of at most 15 characters, not used by another kind of device, and CAP_NET_ADMIN are needed)")]
    Create { name: String, source: io::Error },
    #[error("TAP device name {0:?} is longer than 15 bytes")]
    NameTooLong(String),
    #[error("configuring TAP device {name} over rtnetlink: {msg}")]
    Netlink { name: String, msg: String },
}

/// `struct ifreq` as far as TUNSETIFF reads it.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A multi-queue TAP device; one file per queue (one worker per queue).
#[derive(Debug)]
pub struct Tap {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub queues: Vec<File>,
}

/// The MAC the agent gives the TAP: locally administered, derived from the gateway address
/// so captures are readable. Client pseudo-MACs use the same prefix with client addresses,
/// which never equal the gateway address.
pub fn tap_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let o = gateway.octets();
    [0x02, 0x50, o[0], o[1], o[2], o[3]]
}

fn open_queue(name: &str) -> Result<File, TapError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(TapError::NameTooLong(name.to_string()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(TapError::Create {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(file)
}

impl Tap {
    /// Create (or re-open, after a restart) the TAP device with `queues` queues, mark it
    /// persistent so its XDP link outlives an agent restart, and configure it: the gateway
    /// address on the client CIDR, NOARP (clients never answer ARP), up.
    pub async fn open(
        name: &str,
        queues: usize,
        gateway: Ipv4Addr,
        client_cidr: Ipv4Net,
        mtu: u32,
    ) -> Result<Tap, TapError> {
        let mut files = Vec::with_capacity(queues.max(1));
        for _ in 0..queues.max(1) {
            files.push(open_queue(name)?);
        }
        // SAFETY: plain ioctl on a tun fd with an integer argument.
        unsafe { libc::ioctl(files[0].as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
        let ifindex = crate::datapath::ifindex(name).ok_or_else(|| TapError::Netlink {
            name: name.to_string(),
            msg: "device vanished right after creation".into(),
        })?;
        let mac = tap_mac(gateway);
        // Packets the TAP program passes after SNAT (next hop not resolved yet) carry the
        // gateway's own egress address as source: the kernel must accept (accept_local,
        // no rp_filter) and forward them, which also resolves the neighbour for the next
        // packets that XDP redirects.
        for (key, val) in [
            ("forwarding", "1"),
            ("accept_local", "1"),
            ("rp_filter", "0"),
        ] {
            let path = format!("/proc/sys/net/ipv4/conf/{name}/{key}");
            std::fs::write(&path, val).map_err(|e| TapError::Netlink {
                name: name.to_string(),
                msg: format!("writing {path}: {e}"),
            })?;
        }
        configure(name, ifindex, mac, gateway, client_cidr.prefix_len(), mtu)
            .await
            .map_err(|msg| TapError::Netlink {
                name: name.to_string(),
                msg,
            })?;
        Ok(Tap {
            name: name.to_string(),
            ifindex,
            mac,
            queues: files,
        })
    }

    /// Clear the persist flag: the device disappears when the last queue closes.
    pub fn unpersist(&self) {
        if let Some(f) = self.queues.first() {
            // SAFETY: plain ioctl on a tun fd with an integer argument.
            unsafe { libc::ioctl(f.as_raw_fd(), TUNSETPERSIST, 0 as libc::c_ulong) };
        }
    }

    /// Duplicate a queue's fd (for a worker that owns its own handle).
    pub fn queue_fd(&self, i: usize) -> io::Result<OwnedFd> {
        let fd = self.queues[i].as_raw_fd();
        // SAFETY: dup of a valid fd; the result is owned by the returned OwnedFd.
        let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if new < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `new` is a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(new) })
    }
}

async fn configure(
    name: &str,
    ifindex: u32,
    mac: [u8; 6],
    gateway: Ipv4Addr,
    prefix: u8,
    mtu: u32,
) -> Result<(), String> {
    use rtnetlink::LinkUnspec;
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| e.to_string())?;
    let task = tokio::spawn(conn);
    let result = async {
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(ifindex)
                    .address(mac.to_vec())
                    .mtu(mtu)
                    .arp(false)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| format!("setting {name} up: {e}"))?;
        match handle
            .address()
            .add(ifindex, gateway.into(), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            // Re-adopting a TAP after a restart: the address is already there.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(format!("adding {gateway}/{prefix} to {name}: {e}")),
        }
    }
    .await;
    task.abort();
    result
}

// Decrypted packets into TAP frames: the worker and the TCP reader both write through here.
/// Why a decrypted packet is not written to the TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForTap {
    /// Not an IPv4 packet (the data path is IPv4 only).
    NotIpv4,
    /// Its source is not the sending session's own tunnel address.
    Spoofed,
}

/// Builds the Ethernet header in the bytes just before `buf[range]`, an IP packet that the
/// session in `slot` (its peer id, the `slot` of its `clients` entry) sent from tunnel
/// address `own`, and returns the frame's range. A packet with any other source is refused:
/// it would be judged by another session's groups, quota and name. The XDP program checks
/// the slot in the source MAC against the `clients` entry of the source address again, so
/// neither layer alone is trusted.
pub fn frame(
    buf: &mut [u8],
    range: std::ops::Range<usize>,
    tap_mac: [u8; 6],
    own: Ipv4Addr,
    slot: u32,
) -> Result<std::ops::Range<usize>, NotForTap> {
    let ip = &buf[range.clone()];
    if ip.len() < 20 || ip[0] >> 4 != 4 || range.start < ETH_HLEN {
        return Err(NotForTap::NotIpv4);
    }
    if Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]) != own {
        return Err(NotForTap::Spoofed);
    }
    let start = range.start - ETH_HLEN;
    let eth = &mut buf[start..range.start];
    eth[0..6].copy_from_slice(&tap_mac);
    eth[6..12].copy_from_slice(&session_mac(slot));
    eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    Ok(start..range.end)
}

/// Writes a decrypted packet of session `slot` to the TAP (see [`frame`]), counting why not.
pub(super) fn to_tap(
    tap: &mut File,
    buf: &mut [u8],
    range: std::ops::Range<usize>,
    (own, slot): (Ipv4Addr, u32),
    tap_mac: [u8; 6],
    stats: &TunnelStats,
) {
    match frame(buf, range, tap_mac, own, slot) {
        Ok(f) => {
            if tap.write(&buf[f]).is_ok() {
                stats.tap_tx.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(NotForTap::Spoofed) => {
            stats.data_spoofed.fetch_add(1, Ordering::Relaxed);
        }
        Err(NotForTap::NotIpv4) => {
            stats.data_not_ipv4.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// Frames the kernel wrote to the TAP into the tunnel: the worker reads and sends through here.
/// Why a frame read from the TAP is not sent into the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotForTunnel {
    /// Shorter than an Ethernet and an IPv4 header, or not IPv4.
    NotIpv4,
    /// No session holds the destination address.
    NoPeer,
    /// The session has no send key (not connected yet, or closing), or the buffer lacks room.
    Seal,
}

/// Seals the frame the TAP gave (`buf[offset - ETH_HLEN..offset - ETH_HLEN + n]`, its IP
/// packet at `offset`, with the session's overhead of room in front) for the session that
/// holds its destination address, in place; returns the data packet's range and where it
/// goes. Only that session's keys are used: the destination, not the frame's MACs (which the
/// kernel chose), decides who receives it.
pub fn from_tap(
    peers: &PeerTable,
    buf: &mut [u8],
    offset: usize,
    n: usize,
    now: Instant,
) -> Result<(std::ops::Range<usize>, Link), NotForTunnel> {
    let f = offset
        .checked_sub(ETH_HLEN)
        .and_then(|start| buf.get(start..start + n))
        .ok_or(NotForTunnel::NotIpv4)?;
    if f.len() < ETH_HLEN + 20 || f[12..14] != [0x08, 0x00] || f[ETH_HLEN] >> 4 != 4 {
        return Err(NotForTunnel::NotIpv4);
    }
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    let peer = peers.by_addr(dst).ok_or(NotForTunnel::NoPeer)?;
    peer.seal(buf, offset, n - ETH_HLEN, now)
        .map_err(|_| NotForTunnel::Seal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::HEADROOM;

    const TAP_MAC: [u8; 6] = [0x02, 0x50, 10, 100, 0, 1];

    /// A buffer with an IPv4 header from `src` at offset HEADROOM.
    fn packet(src: Ipv4Addr) -> ([u8; 64], std::ops::Range<usize>) {
        let mut buf = [0u8; 64];
        let ip = &mut buf[HEADROOM..HEADROOM + 20];
        ip[0] = 0x45;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&[10, 0, 0, 5]);
        (buf, HEADROOM..HEADROOM + 20)
    }

    #[test]
    fn own_source_is_framed_with_the_slot_in_the_source_mac() {
        let own = Ipv4Addr::new(10, 100, 0, 2);
        let (mut buf, range) = packet(own);
        let f = frame(&mut buf, range.clone(), TAP_MAC, own, 0x0001_0203).unwrap();
        assert_eq!(f, range.start - ETH_HLEN..range.end);
        assert_eq!(buf[f.start..f.start + 6], TAP_MAC);
        assert_eq!(buf[f.start + 6..f.start + 12], [0x02, 0x50, 0, 1, 2, 3]);
        assert_eq!(buf[f.start + 12..f.start + 14], [0x08, 0x00]);
    }

    #[test]
    fn another_sessions_source_is_refused() {
        let own = Ipv4Addr::new(10, 100, 0, 2);
        for forged in [
            Ipv4Addr::new(10, 100, 0, 3),   // another client
            Ipv4Addr::new(10, 100, 0, 1),   // the gateway
            Ipv4Addr::new(10, 100, 0, 200), // unassigned
            Ipv4Addr::new(192, 0, 2, 1),    // outside the pool
        ] {
            let (mut buf, range) = packet(forged);
            let before = buf;
            assert_eq!(
                frame(&mut buf, range, TAP_MAC, own, 7),
                Err(NotForTap::Spoofed),
                "{forged}"
            );
            assert_eq!(buf, before, "nothing written for {forged}");
        }
    }

    #[test]
    fn short_and_non_ipv4_packets_are_refused() {
        let own = Ipv4Addr::new(10, 100, 0, 2);
        let (mut buf, _) = packet(own);
        assert_eq!(
            frame(&mut buf, HEADROOM..HEADROOM + 19, TAP_MAC, own, 7),
            Err(NotForTap::NotIpv4)
        );
        buf[HEADROOM] = 0x60;
        assert_eq!(
            frame(&mut buf, HEADROOM..HEADROOM + 40, TAP_MAC, own, 7),
            Err(NotForTap::NotIpv4)
        );
    }
}
