//! The data-channel half of a session, shared between the control task (which installs keys
//! and reads activity for its timers) and the packet workers (which encrypt and decrypt).
//!
//! Workers never touch the control state machine: they look a peer up by peer-id or tunnel
//! address, take the peer's receive or send lock (one per direction, so the two directions
//! of one client do not contend) and work in place on their own buffers. No allocation.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::crypto::{classify, CryptoError, DataFormat, Decryptor, Encryptor, Payload, PING_MAGIC};
use super::keys::DataKeys;

/// What a successfully opened data packet carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// An IP packet, at this range of the caller's buffer.
    Ip(std::ops::Range<usize>),
    /// Keepalive ping: activity only.
    Ping,
    /// OCC_EXIT: the client is leaving (explicit-exit-notify without cc-exit).
    Exit,
    /// Another OCC message: ignored in TLS mode.
    Occ,
}

#[derive(Default)]
struct RxKeys {
    /// The newest key first; at most two (primary and lame duck, doc §9.3).
    slots: [Option<(Decryptor, Option<Instant>)>; 2],
}

struct TxKeys {
    enc: Option<Encryptor>,
    /// Where the client is: changes when a UDP client floats (after an authenticated packet).
    link: Link,
}

/// A client's transport endpoint: a UDP source address on one of our listeners, or one
/// accepted TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    Udp {
        listener: u16,
        addr: std::net::SocketAddr,
    },
    Tcp {
        conn: u64,
        addr: std::net::SocketAddr,
    },
}

impl Link {
    pub fn addr(&self) -> std::net::SocketAddr {
        match *self {
            Link::Udp { addr, .. } | Link::Tcp { addr, .. } => addr,
        }
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, Link::Tcp { .. })
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Udp { addr, .. } => write!(f, "udp:{addr}"),
            Link::Tcp { addr, .. } => write!(f, "tcp:{addr}"),
        }
    }
}

/// Counters of one peer, all monotonic.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub rx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    /// Data packets that failed authentication or the replay check.
    pub rx_rejected: AtomicU64,
}

impl PeerCounters {
    /// (bytes, packets) in both directions: what the renegotiation limits count.
    pub fn totals(&self) -> (u64, u64) {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            ld(&self.rx_bytes) + ld(&self.tx_bytes),
            ld(&self.rx_packets) + ld(&self.tx_packets),
        )
    }
}

/// One connected client's data channel.
pub struct DataPeer {
    pub peer_id: u32,
    /// The server's serial of the session (peer ids are reused, serials are not): what the
    /// workers' reports name, so a late one never reaches the next session on that peer id.
    pub session: u64,
    /// Who holds the session once authenticated (certificate issuer and serial, or the user
    /// name without a certificate): a float may take over only an address of the same owner.
    owner: std::sync::OnceLock<String>,
    base: Instant,
    tunnel_addr: AtomicU32,
    rx: Mutex<RxKeys>,
    tx: Mutex<TxKeys>,
    /// Nanoseconds after `base` of the last authenticated packet in either direction; 0 = never.
    last_rx_ns: AtomicU64,
    last_tx_ns: AtomicU64,
    pub counters: PeerCounters,
    closed: AtomicBool,
}

impl std::fmt::Debug for DataPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPeer")
            .field("peer_id", &self.peer_id)
            .field("tunnel_addr", &self.tunnel_addr())
            .finish_non_exhaustive()
    }
}

impl DataPeer {
    /// `base` is the instant all timestamps are counted from (the server's start).
    pub fn new(peer_id: u32, link: Link, base: Instant) -> Self {
        Self::for_session(peer_id, 0, link, base)
    }

    /// A peer of the server's session `session` (its serial).
    pub fn for_session(peer_id: u32, session: u64, link: Link, base: Instant) -> Self {
        Self {
            peer_id,
            session,
            owner: std::sync::OnceLock::new(),
            base,
            tunnel_addr: AtomicU32::new(0),
            rx: Mutex::default(),
            tx: Mutex::new(TxKeys { enc: None, link }),
            last_rx_ns: AtomicU64::new(0),
            last_tx_ns: AtomicU64::new(0),
            counters: PeerCounters::default(),
            closed: AtomicBool::new(false),
        }
    }

    fn stamp(&self, now: Instant) -> u64 {
        // +1 so that the base instant itself is distinguishable from "never".
        (now.saturating_duration_since(self.base).as_nanos() as u64).saturating_add(1)
    }

    fn instant(&self, ns: u64) -> Option<Instant> {
        (ns != 0).then(|| self.base + Duration::from_nanos(ns - 1))
    }

    pub fn link(&self) -> Link {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).link
    }

    /// Moves the peer to a new address; only after [`Self::open`] succeeded on a packet from
    /// it (authenticated and not a replay, doc §1.6).
    pub fn float_to(&self, link: Link) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).link = link;
    }

    /// Set once, when the session is established.
    pub fn set_owner(&self, owner: String) {
        let _ = self.owner.set(owner);
    }

    pub fn owner(&self) -> Option<&str> {
        self.owner.get().map(String::as_str)
    }

    pub fn tunnel_addr(&self) -> Option<Ipv4Addr> {
        match self.tunnel_addr.load(Ordering::Relaxed) {
            0 => None,
            a => Some(Ipv4Addr::from(a)),
        }
    }

    pub fn set_tunnel_addr(&self, addr: Option<Ipv4Addr>) {
        self.tunnel_addr
            .store(addr.map_or(0, u32::from), Ordering::Relaxed);
    }

    pub fn last_rx(&self) -> Option<Instant> {
        self.instant(self.last_rx_ns.load(Ordering::Relaxed))
    }

    pub fn last_tx(&self) -> Option<Instant> {
        self.instant(self.last_tx_ns.load(Ordering::Relaxed))
    }

    /// Authenticated control traffic counts as activity too (doc §9.4).
    pub fn touch_rx(&self, now: Instant) {
        self.last_rx_ns
            .fetch_max(self.stamp(now), Ordering::Relaxed);
    }

    pub fn touch_tx(&self, now: Instant) {
        self.last_tx_ns
            .fetch_max(self.stamp(now), Ordering::Relaxed);
    }

    /// Installs a freshly negotiated key for both directions (see [`Self::install_recv`] and
    /// [`Self::install_send`]).
    pub fn install(
        &self,
        key_id: u8,
        keys: &DataKeys,
        format: DataFormat,
        lame_duck_until: Instant,
    ) -> Result<(), CryptoError> {
        self.install_recv(key_id, keys, lame_duck_until)?;
        self.install_send(key_id, keys, format)
    }

    /// The new key decrypts from now on; the previous receive key stays as lame duck until
    /// `lame_duck_until`. Done as soon as our key-method-2 reply is out: a 2.6 client may
    /// encrypt with the new key from the moment it has read it (doc §7.6).
    pub fn install_recv(
        &self,
        key_id: u8,
        keys: &DataKeys,
        lame_duck_until: Instant,
    ) -> Result<(), CryptoError> {
        let dec = Decryptor::new(&keys.recv, key_id)?;
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        let old = rx.slots[0].take().map(|(d, _)| (d, Some(lame_duck_until)));
        rx.slots = [Some((dec, None)), old];
        Ok(())
    }

    /// The new key encrypts from now on: only once the client acked our key-method-2 reply,
    /// before which it may not have the key yet (doc §7.6).
    pub fn install_send(
        &self,
        key_id: u8,
        keys: &DataKeys,
        format: DataFormat,
    ) -> Result<(), CryptoError> {
        let enc = Encryptor::new(&keys.send, key_id, format)?;
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).enc = Some(enc);
        Ok(())
    }

    /// Drops the lame-duck key once its transition window is over.
    pub fn expire_lame_duck(&self, now: Instant) -> Option<Instant> {
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        match &rx.slots[1] {
            Some((_, Some(until))) if *until <= now => {
                rx.slots[1] = None;
                None
            }
            Some((_, until)) => *until,
            None => None,
        }
    }

    pub fn has_keys(&self) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enc
            .is_some()
    }

    /// The send key wants a renegotiation (packet id close to wrapping, doc §7.2).
    pub fn send_key_exhausted(&self) -> bool {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enc
            .as_ref()
            .is_some_and(|e| e.needs_renegotiation())
    }

    /// Marks the peer gone: workers stop using it even if they still hold a reference.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        rx.slots = [None, None];
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).enc = None;
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Authenticates, decrypts and replay-checks a whole data packet in place (doc §7.3).
    pub fn open(&self, packet: &mut [u8], now: Instant) -> Result<Opened, CryptoError> {
        let key_id = packet.first().ok_or(CryptoError::Truncated)? & 0x07;
        let res = {
            let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
            let slot = rx
                .slots
                .iter_mut()
                .flatten()
                .find(|(d, _)| d.key_id() == key_id);
            match slot {
                Some((d, _)) => d.open_in_place(packet, now),
                None => Err(CryptoError::KeyIdMismatch {
                    expected: 0xff,
                    got: key_id,
                }),
            }
        };
        let opened = match res {
            Ok(o) => o,
            Err(e) => {
                self.counters.rx_rejected.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        self.touch_rx(now);
        let len = opened.plaintext.len() as u64;
        self.counters.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.counters.rx_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(match classify(&packet[opened.plaintext.clone()]) {
            Payload::Ip(_) => Opened::Ip(opened.plaintext),
            Payload::Ping => Opened::Ping,
            Payload::OccExit => Opened::Exit,
            Payload::Occ { .. } => Opened::Occ,
        })
    }

    /// Bytes in front of the plaintext that [`Self::seal`] needs (header, packet id, tag).
    pub fn overhead(&self) -> usize {
        self.tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .enc
            .as_ref()
            .map_or(
                super::crypto::V2_HEADER_LEN + 4 + super::crypto::TAG_LEN,
                |e| e.overhead(),
            )
    }

    /// Encrypts in place: `buf[overhead..overhead + len]` is the plaintext, where `overhead`
    /// is what [`Self::overhead`] returns for the current key (P_DATA_V2 is 24 bytes,
    /// P_DATA_V1 21: callers reserve 24 and pass the offset they used).
    pub fn seal(
        &self,
        buf: &mut [u8],
        offset: usize,
        len: usize,
        now: Instant,
    ) -> Result<(std::ops::Range<usize>, Link), CryptoError> {
        let n = {
            let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let enc = tx.enc.as_mut().ok_or(CryptoError::KeyIdMismatch {
                expected: 0xff,
                got: 0xff,
            })?;
            let start = offset
                .checked_sub(enc.overhead())
                .ok_or(CryptoError::BufferTooSmall {
                    need: enc.overhead(),
                    have: offset,
                })?;
            let end = offset + len;
            if end > buf.len() {
                return Err(CryptoError::BufferTooSmall {
                    need: end,
                    have: buf.len(),
                });
            }
            (
                start..start + enc.seal_in_place(&mut buf[start..end], len)?,
                tx.link,
            )
        };
        self.touch_tx(now);
        self.counters.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.counters
            .tx_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// A keepalive ping packet (doc §7.5), for the control task's timer.
    pub fn ping_packet(&self, now: Instant) -> Result<Vec<u8>, CryptoError> {
        const OFF: usize = super::crypto::V2_HEADER_LEN + 4 + super::crypto::TAG_LEN;
        let mut buf = vec![0u8; OFF + PING_MAGIC.len()];
        buf[OFF..].copy_from_slice(&PING_MAGIC);
        let (r, _) = self.seal(&mut buf, OFF, PING_MAGIC.len(), now)?;
        // Pings are not tunnel traffic: keep the byte counters about user data.
        self.counters.tx_packets.fetch_sub(1, Ordering::Relaxed);
        self.counters
            .tx_bytes
            .fetch_sub(PING_MAGIC.len() as u64, Ordering::Relaxed);
        Ok(buf[r].to_vec())
    }
}

/// The peers the packet workers can see, by peer-id, by link and by tunnel address. Written
/// by the control task on connect, float and disconnect; read per packet by the workers.
#[derive(Debug, Default)]
pub struct PeerTable {
    by_id: std::sync::RwLock<std::collections::HashMap<u32, std::sync::Arc<DataPeer>>>,
    by_link: std::sync::RwLock<std::collections::HashMap<Link, std::sync::Arc<DataPeer>>>,
    by_addr: std::sync::RwLock<std::collections::HashMap<Ipv4Addr, std::sync::Arc<DataPeer>>>,
}

/// What a worker should do with a data packet it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataVerdict {
    /// Write `buf[range]`, an IP packet session `peer_id` sent, to the TAP; the worker checks
    /// that its source is `addr`, the session's tunnel address.
    Tunnel {
        range: std::ops::Range<usize>,
        peer_id: u32,
        addr: Ipv4Addr,
    },
    /// Authenticated keepalive or ignorable OCC: nothing to forward.
    Consumed,
    /// OCC_EXIT: tell the control task to close `peer_id`'s session `session` (its serial).
    Exit { peer_id: u32, session: u64 },
    /// No peer for this packet, or it failed authentication or replay: dropped.
    Dropped(DropCause),
}

/// Why a data packet was dropped (counted by the worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    UnknownPeer,
    Crypto,
    /// Decrypted, but the session has no tunnel address yet (not connected).
    NotConnected,
    /// From a UDP address another client's session holds: no float there (see
    /// [`PeerTable::open`]).
    AddressTaken,
}

/// A peer moved to a new UDP address (after an authenticated packet from there): the worker
/// reports it to the control side, which follows with `Server::floated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Float {
    pub peer_id: u32,
    /// The session's serial, as in [`DataPeer::session`].
    pub session: u64,
    pub from: Link,
    pub to: Link,
}

impl PeerTable {
    fn r<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
        l.read().unwrap_or_else(|e| e.into_inner())
    }

    fn w<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
        l.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a peer by id and link (before its keys exist: data for it is dropped until
    /// keys are installed).
    pub fn insert(&self, peer: std::sync::Arc<DataPeer>) {
        Self::w(&self.by_link).insert(peer.link(), peer.clone());
        Self::w(&self.by_id).insert(peer.peer_id, peer);
    }

    /// Makes the peer reachable by its tunnel address (after the push).
    pub fn set_addr(&self, peer: &std::sync::Arc<DataPeer>, addr: Ipv4Addr) {
        peer.set_tunnel_addr(Some(addr));
        Self::w(&self.by_addr).insert(addr, peer.clone());
    }

    pub fn remove(&self, peer: &DataPeer) {
        peer.close();
        let id = peer.peer_id;
        let link = peer.link();
        let mut by_id = Self::w(&self.by_id);
        if by_id.get(&id).is_some_and(|p| std::ptr::eq(&**p, peer)) {
            by_id.remove(&id);
        }
        drop(by_id);
        let mut by_link = Self::w(&self.by_link);
        if by_link.get(&link).is_some_and(|p| std::ptr::eq(&**p, peer)) {
            by_link.remove(&link);
        }
        drop(by_link);
        if let Some(a) = peer.tunnel_addr() {
            let mut by_addr = Self::w(&self.by_addr);
            if by_addr.get(&a).is_some_and(|p| std::ptr::eq(&**p, peer)) {
                by_addr.remove(&a);
            }
        }
    }

    /// Puts `peer` at `to` (the control side refused or undid a float).
    pub fn relink(&self, peer: &std::sync::Arc<DataPeer>, to: Link) {
        let old = peer.link();
        peer.float_to(to);
        let mut by_link = Self::w(&self.by_link);
        if by_link
            .get(&old)
            .is_some_and(|p| std::sync::Arc::ptr_eq(p, peer))
        {
            by_link.remove(&old);
        }
        by_link.insert(to, peer.clone());
    }

    pub fn by_addr(&self, addr: Ipv4Addr) -> Option<std::sync::Arc<DataPeer>> {
        Self::r(&self.by_addr).get(&addr).cloned()
    }

    pub fn by_id(&self, id: u32) -> Option<std::sync::Arc<DataPeer>> {
        Self::r(&self.by_id).get(&id).cloned()
    }

    pub fn by_link(&self, link: &Link) -> Option<std::sync::Arc<DataPeer>> {
        Self::r(&self.by_link).get(link).cloned()
    }

    pub fn len(&self) -> usize {
        Self::r(&self.by_id).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decrypts a data packet from `from` in place. P_DATA_V2 finds its peer by peer-id (so a
    /// client whose address changed is still found), anything else by link. A packet that
    /// authenticates from a new UDP address floats the peer there (doc §1.6, pitfall 28);
    /// the returned [`Float`] tells the caller to update the control side.
    ///
    /// Only UDP peers float, and only within UDP: a TCP peer's link is its connection, so a
    /// packet of it replayed over UDP (or another connection) finds no peer. A float onto an
    /// address another session holds is refused unless both belong to the same owner, as
    /// OpenVPN does (`multi_process_float`: a client may replace its own stale instance, never
    /// another certificate's); the control side then ends the stale session properly.
    pub fn open(
        &self,
        from: Link,
        packet: &mut [u8],
        now: Instant,
    ) -> (DataVerdict, Option<Float>) {
        let Some(&first) = packet.first() else {
            return (DataVerdict::Dropped(DropCause::UnknownPeer), None);
        };
        let peer = if first >> 3 == super::crypto::OPCODE_DATA_V2 && packet.len() >= 4 {
            let id = u32::from_be_bytes([0, packet[1], packet[2], packet[3]]);
            if id == super::packet::NO_PEER_ID {
                self.by_link(&from)
            } else {
                // A TCP connection must not speak for another connection's peer, nor a UDP
                // sender for a TCP peer.
                self.by_id(id).filter(|p| {
                    let at = p.link();
                    at == from || (!from.is_tcp() && !at.is_tcp())
                })
            }
        } else {
            self.by_link(&from)
        };
        let Some(peer) = peer else {
            return (DataVerdict::Dropped(DropCause::UnknownPeer), None);
        };
        let old = peer.link();
        if old != from {
            if let Some(holder) = self.by_link(&from) {
                let same_owner = holder.owner().is_some() && holder.owner() == peer.owner();
                if !std::sync::Arc::ptr_eq(&holder, &peer) && !same_owner {
                    return (DataVerdict::Dropped(DropCause::AddressTaken), None);
                }
            }
        }
        let opened = match peer.open(packet, now) {
            Ok(o) => o,
            Err(_) => return (DataVerdict::Dropped(DropCause::Crypto), None),
        };
        let mut floated = None;
        if old != from {
            self.relink(&peer, from);
            floated = Some(Float {
                peer_id: peer.peer_id,
                session: peer.session,
                from: old,
                to: from,
            });
        }
        let v = match opened {
            Opened::Ip(range) => match peer.tunnel_addr() {
                None => DataVerdict::Dropped(DropCause::NotConnected),
                Some(addr) => DataVerdict::Tunnel {
                    range,
                    peer_id: peer.peer_id,
                    addr,
                },
            },
            Opened::Ping | Opened::Occ => DataVerdict::Consumed,
            Opened::Exit => DataVerdict::Exit {
                peer_id: peer.peer_id,
                session: peer.session,
            },
        };
        (v, floated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openvpn::crypto::Cipher;
    use crate::openvpn::keys::KeyBlock;
    use crate::openvpn::packet::Role;

    const LINK: Link = Link::Udp {
        listener: 0,
        addr: std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::LOCALHOST,
            1194,
        )),
    };

    fn keys(seed: u8) -> (DataKeys, DataKeys) {
        let mut b = [0u8; 256];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(7).wrapping_add(seed);
        }
        let kb = KeyBlock::from_bytes(b);
        (
            kb.data_keys(Cipher::Aes256Gcm, Role::Server),
            kb.data_keys(Cipher::Aes256Gcm, Role::Client),
        )
    }

    #[test]
    fn seal_open_round_trip_and_lame_duck() {
        let now = Instant::now();
        let server = DataPeer::new(5, LINK, now);
        let client = DataPeer::new(5, LINK, now);
        let (sk, ck) = keys(1);
        let fmt = DataFormat::V2 { peer_id: 5 };
        server.install(0, &sk, fmt, now).unwrap();
        client.install(0, &ck, fmt, now).unwrap();
        let mut buf = vec![0u8; 24 + 20];
        buf[24..].copy_from_slice(&[0x45; 20]);
        let (r, _) = client.seal(&mut buf, 24, 20, now).unwrap();
        let mut pkt = buf[r].to_vec();
        assert_eq!(server.open(&mut pkt, now).unwrap(), Opened::Ip(24..44));
        // Replay refused.
        let mut again = buf[..44].to_vec();
        assert!(server.open(&mut again, now).is_err());
        assert_eq!(server.counters.rx_rejected.load(Ordering::Relaxed), 1);

        // Rekey to key 1: the old key still opens until the lame duck expires.
        let (sk1, ck1) = keys(2);
        let until = now + Duration::from_secs(10);
        server.install(1, &sk1, fmt, until).unwrap();
        client.install(1, &ck1, fmt, until).unwrap();
        let mut old = vec![0u8; 24 + 20];
        // An old-key packet from a client that has not switched yet.
        let stale = DataPeer::new(5, LINK, now);
        stale.install(0, &ck, fmt, now).unwrap();
        old[24..].fill(1);
        // Its id 1 was seen on key 0 already; its second packet is new.
        stale.seal(&mut old, 24, 20, now).unwrap();
        let mut old2 = vec![0u8; 44];
        old2[24..].fill(2);
        let (r2, _) = stale.seal(&mut old2, 24, 20, now).unwrap();
        assert!(server.open(&mut old2[r2.clone()], now).is_ok());
        assert_eq!(server.expire_lame_duck(now), Some(until));
        assert_eq!(server.expire_lame_duck(until), None);
        let mut old3 = vec![0u8; 44];
        old3[24..].fill(3);
        let (r3, _) = stale.seal(&mut old3, 24, 20, now).unwrap();
        assert!(server.open(&mut old3[r3], until).is_err());
    }

    #[test]
    fn ping_is_classified_and_not_counted_as_data() {
        let now = Instant::now();
        let server = DataPeer::new(1, LINK, now);
        let client = DataPeer::new(1, LINK, now);
        let (sk, ck) = keys(9);
        server
            .install(0, &sk, DataFormat::V2 { peer_id: 1 }, now)
            .unwrap();
        client.install(0, &ck, DataFormat::V1, now).unwrap();
        let mut p = server.ping_packet(now).unwrap();
        assert_eq!(server.counters.tx_packets.load(Ordering::Relaxed), 0);
        assert_eq!(client.open(&mut p, now).unwrap(), Opened::Ping);
        assert_eq!(server.last_tx(), Some(now));
    }
}
