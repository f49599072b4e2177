//! Frames for `BPF_PROG_TEST_RUN`: a small builder with from-scratch checksums, an
//! independent checksum verifier (RFC 1071, full recomputation), the test-run call itself
//! and counter snapshots.
//!
//! Expected output frames are built with the same [`Pkt`] builder as the inputs, with the
//! fields the data path should have rewritten, and compared byte for byte: a wrong
//! incremental checksum update (RFC 1624) in the XDP program then shows as a byte
//! difference, and [`verify_checksums`] says which checksum is wrong.
use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use portcullis::datapath::Maps;
use portcullis_common::{DropReason, Event, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

// ---- XDP actions --------------------------------------------------------------------------

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "XDP_?",
    }
}

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_TIMESTAMP: u8 = 13;

/// The source MAC test inputs carry by default: that of the session in slot 0 (the agent
/// writes the sending session's slot there, see `portcullis_common::session_mac`).
pub const CLIENT_MAC: [u8; 6] = portcullis_common::session_mac(0);

/// The pseudo-MAC the data path gives frames addressed to client `a` (see
/// `ebpf/src/tap.rs::set_client_macs`).
pub fn client_mac(a: Ipv4Addr) -> [u8; 6] {
    let o = a.octets();
    [0x02, 0x50, o[0], o[1], o[2], o[3]]
}

// ---- RFC 1071 ----------------------------------------------------------------------------

/// One's-complement sum of `data` (odd length padded with a zero byte), not folded.
pub fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        s += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        s += u32::from(u16::from_be_bytes([*b, 0]));
    }
    s
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The Internet checksum of `data` (the checksum field inside must be zero).
pub fn csum(data: &[u8]) -> u16 {
    !fold(sum16(data))
}

fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    sum16(&src.octets()) + sum16(&dst.octets()) + u32::from(proto) + len as u32
}

/// TCP/UDP checksum over the pseudo-header and `seg` (checksum field zeroed).
pub fn l4_csum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, seg: &[u8]) -> u16 {
    !fold(pseudo_sum(src, dst, proto, seg.len()) + sum16(seg))
}

// ---- building -----------------------------------------------------------------------------

/// The transport part of a [`Pkt`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    /// `zero_csum`: send without a checksum (0), as UDP over IPv4 allows.
    Udp {
        sport: u16,
        dport: u16,
        zero_csum: bool,
    },
    /// Any ICMP message: type, code and the four header bytes after the checksum (echo:
    /// identifier and sequence number).
    Icmp { ty: u8, code: u8, rest: [u8; 4] },
    /// Another IP protocol: the payload is all there is.
    Raw { proto: u8 },
}

/// An Ethernet + IPv4 packet description; [`Pkt::frame`] renders it with correct checksums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pkt {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset word (DF = 0x4000, MF = 0x2000, offset in 8-byte units).
    pub frag: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Pkt {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4, payload: &[u8]) -> Pkt {
        Pkt {
            eth_dst: [0x02, 0x50, 10, 100, 0, 1],
            eth_src: CLIENT_MAC,
            src,
            dst,
            ttl: 64,
            tos: 0,
            id: 0x1234,
            frag: 0x4000,
            l4,
            payload: payload.to_vec(),
        }
    }

    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Pkt {
        let ack = if flags & tcp::ACK != 0 {
            0x0102_0304
        } else {
            0
        };
        Pkt::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                flags,
                seq: 0x1000_0000,
                ack,
            },
            b"",
        )
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Pkt {
        Pkt::new(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                zero_csum: false,
            },
            payload,
        )
    }

    pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Pkt {
        Pkt::icmp(
            src,
            dst,
            ICMP_ECHO_REQUEST,
            0,
            echo_rest(id, seq),
            b"abcdefgh",
        )
    }

    pub fn echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16) -> Pkt {
        Pkt::icmp(
            src,
            dst,
            ICMP_ECHO_REPLY,
            0,
            echo_rest(id, seq),
            b"abcdefgh",
        )
    }

    pub fn icmp(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ty: u8,
        code: u8,
        rest: [u8; 4],
        payload: &[u8],
    ) -> Pkt {
        Pkt::new(src, dst, L4::Icmp { ty, code, rest }, payload)
    }

    /// An ICMP error (destination unreachable, time exceeded) quoting `quoted` (an IPv4
    /// packet, as much of it as the sender included).
    pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, code: u8, quoted: &[u8]) -> Pkt {
        Pkt::icmp(src, dst, ty, code, [0; 4], quoted)
    }

    pub fn raw(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Pkt {
        Pkt::new(src, dst, L4::Raw { proto }, payload)
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Pkt {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }

    /// Sent by the session in `slot` (its source MAC).
    pub fn session(mut self, slot: u32) -> Pkt {
        self.eth_src = portcullis_common::session_mac(slot);
        self
    }

    /// TCP sequence and acknowledgement numbers (no-op for other protocols).
    pub fn seq_ack(mut self, s: u32, a: u32) -> Pkt {
        if let L4::Tcp { seq, ack, .. } = &mut self.l4 {
            *seq = s;
            *ack = a;
        }
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Pkt {
        self.ttl = ttl;
        self
    }

    pub fn frag(mut self, frag: u16) -> Pkt {
        self.frag = frag;
        self
    }

    pub fn src(mut self, src: Ipv4Addr) -> Pkt {
        self.src = src;
        self
    }

    pub fn dst(mut self, dst: Ipv4Addr) -> Pkt {
        self.dst = dst;
        self
    }

    pub fn payload(mut self, p: &[u8]) -> Pkt {
        self.payload = p.to_vec();
        self
    }

    pub fn zero_udp_csum(mut self) -> Pkt {
        if let L4::Udp { zero_csum, .. } = &mut self.l4 {
            *zero_csum = true;
        }
        self
    }

    pub fn sport(&self) -> u16 {
        match self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => sport,
            L4::Icmp { rest, .. } => u16::from_be_bytes([rest[0], rest[1]]),
            L4::Raw { .. } => 0,
        }
    }

    /// Set the source port (TCP/UDP) or the echo identifier (ICMP).
    pub fn set_sport(mut self, p: u16) -> Pkt {
        match &mut self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = p,
            L4::Icmp { rest, .. } => rest[..2].copy_from_slice(&p.to_be_bytes()),
            L4::Raw { .. } => {}
        }
        self
    }

    /// Set the destination port (TCP/UDP) or the echo identifier (ICMP replies).
    pub fn set_dport(mut self, p: u16) -> Pkt {
        match &mut self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = p,
            L4::Icmp { rest, .. } => rest[..2].copy_from_slice(&p.to_be_bytes()),
            L4::Raw { .. } => {}
        }
        self
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => PROTO_TCP,
            L4::Udp { .. } => PROTO_UDP,
            L4::Icmp { .. } => PROTO_ICMP,
            L4::Raw { proto } => proto,
        }
    }

    /// The transport header and payload, with its checksum.
    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&seq.to_be_bytes());
                b.extend_from_slice(&ack.to_be_bytes());
                b.extend_from_slice(&[5 << 4, flags]);
                b.extend_from_slice(&64240u16.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]);
                b.extend_from_slice(&self.payload);
                let c = l4_csum(self.src, self.dst, PROTO_TCP, &b);
                b[16..18].copy_from_slice(&c.to_be_bytes());
            }
            L4::Udp {
                sport,
                dport,
                zero_csum,
            } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
                b.extend_from_slice(&self.payload);
                if !zero_csum {
                    let mut c = l4_csum(self.src, self.dst, PROTO_UDP, &b);
                    if c == 0 {
                        c = 0xffff;
                    }
                    b[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            L4::Icmp { ty, code, rest } => {
                b.extend_from_slice(&[ty, code, 0, 0]);
                b.extend_from_slice(&rest);
                b.extend_from_slice(&self.payload);
                let c = csum(&b);
                b[2..4].copy_from_slice(&c.to_be_bytes());
            }
            L4::Raw { .. } => b.extend_from_slice(&self.payload),
        }
        b
    }

    /// The IPv4 packet (header with checksum, then [`Pkt::l4_bytes`]).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let mut h = vec![0x45, self.tos];
        h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        h.extend_from_slice(&self.frag.to_be_bytes());
        h.extend_from_slice(&[self.ttl, self.proto(), 0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        let c = csum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&l4);
        h
    }

    /// The whole Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        eth(self.eth_dst, self.eth_src, ETH_P_IP, &self.ip_bytes())
    }
}

pub fn echo_rest(id: u16, seq: u16) -> [u8; 4] {
    let (i, s) = (id.to_be_bytes(), seq.to_be_bytes());
    [i[0], i[1], s[0], s[1]]
}

/// An Ethernet frame around `payload`.
pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Recompute the IPv4 header checksum of a frame in place (after editing header bytes).
pub fn fix_ip_csum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0xf) * 4;
    let end = (14 + ihl).min(frame.len());
    frame[24] = 0;
    frame[25] = 0;
    let c = csum(&frame[14..end]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

// ---- verifying ----------------------------------------------------------------------------

fn check(what: &str, ok: bool, errs: &mut Vec<String>) {
    if !ok {
        errs.push(what.to_string());
    }
}

/// Verify every checksum of an IPv4 packet by full recomputation: the header checksum, the
/// TCP/UDP/ICMP checksum over the bytes the total length covers, and for ICMP errors the
/// quoted packet's header checksum and, when the quote is complete, its transport
/// checksum. UDP's "no checksum" (0) is accepted. `depth` guards against nesting.
fn verify_ip(ip: &[u8], depth: u8, errs: &mut Vec<String>) {
    let ctx = if depth == 0 { "" } else { "inner " };
    if ip.len() < 20 || ip[0] != 0x45 {
        errs.push(format!("{ctx}not a plain IPv4 header"));
        return;
    }
    check(
        &format!("{ctx}IPv4 header checksum"),
        fold(sum16(&ip[..20])) == 0xffff,
        errs,
    );
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    // A quote may be cut short: only verify what is complete.
    let complete = tot <= ip.len() && tot >= 20;
    if !complete {
        if depth == 0 {
            errs.push(format!(
                "{ctx}total length {tot} beyond the {} bytes",
                ip.len()
            ));
        }
        return;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[20..tot];
    let pseudo_ok = |proto| fold(pseudo_sum(src, dst, proto, l4.len()) + sum16(l4)) == 0xffff;
    match ip[9] {
        PROTO_TCP if l4.len() >= 20 => check(&format!("{ctx}TCP checksum"), pseudo_ok(6), errs),
        PROTO_UDP if l4.len() >= 8 => {
            let c = u16::from_be_bytes([l4[6], l4[7]]);
            check(
                &format!("{ctx}UDP checksum"),
                c == 0 || pseudo_ok(PROTO_UDP),
                errs,
            );
        }
        PROTO_ICMP if l4.len() >= 8 => {
            check(
                &format!("{ctx}ICMP checksum"),
                fold(sum16(l4)) == 0xffff,
                errs,
            );
            if depth == 0 && matches!(l4[0], ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) {
                verify_ip(&l4[8..], 1, errs);
            }
        }
        _ => {}
    }
}

/// `Ok` when every checksum of the IPv4 frame is right (see [`verify_ip`]); otherwise the
/// list of wrong ones.
pub fn verify_checksums(frame: &[u8]) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    if frame.len() < 14 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
        return Err(vec!["not an IPv4 frame".into()]);
    }
    verify_ip(&frame[14..], 0, &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Field-by-field description of the differences between two frames, for failure messages.
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let mut out = String::new();
    if got.len() != want.len() {
        out += &format!("length {} != expected {}; ", got.len(), want.len());
    }
    let name = |i: usize| -> String {
        match i {
            0..=5 => "eth dst".into(),
            6..=11 => "eth src".into(),
            12..=13 => "ethertype".into(),
            22 => "ttl".into(),
            24..=25 => "ip csum".into(),
            26..=29 => "ip src".into(),
            30..=33 => "ip dst".into(),
            34..=35 => "l4 sport/icmp type".into(),
            36..=37 => "l4 dport/icmp csum".into(),
            38..=39 => "l4[4..6] (udp len, icmp id)".into(),
            40..=41 => "l4[6..8] (udp csum)".into(),
            50..=51 => "l4[16..18] (tcp csum)".into(),
            _ => format!("byte {i}"),
        }
    };
    for i in 0..got.len().min(want.len()) {
        if got[i] != want[i] {
            out += &format!("[{i}] {}: {:#04x} != {:#04x}; ", name(i), got[i], want[i]);
        }
    }
    out
}

// ---- running ------------------------------------------------------------------------------

/// `struct xdp_md` for `ctx_in`: the frame spans the whole buffer, and `ingress_ifindex`
/// makes the kernel bind the run to that device's receive queue 0, so the program's
/// `ctx.ingress_ifindex()`, its FIB lookups and its socket lookups see that device (and its
/// network namespace).
pub fn xdp_md(ingress_ifindex: u32, len: usize) -> [u8; 24] {
    let fields: [u32; 6] = [0, len as u32, 0, ingress_ifindex, 0, 0];
    let mut b = [0u8; 24];
    for (i, f) in fields.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&f.to_ne_bytes());
    }
    b
}

/// Run `prog` once (`repeat = 1`: with more the program would see its own rewrites) on
/// `frame` as if received on `ingress_ifindex`; returns the action and the frame after it.
pub fn test_run(prog: &mut Xdp, ingress_ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    let ctx = xdp_md(ingress_ifindex, frame.len());
    let mut out = vec![0u8; 4096];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on a {}-byte frame: {e}", frame.len()));
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

// ---- counters -----------------------------------------------------------------------------

/// A snapshot of the per-CPU drop and event counters (summed over CPUs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub drops: BTreeMap<DropReason, u64>,
    pub events: BTreeMap<Event, u64>,
}

impl Counters {
    pub fn read(maps: &Maps) -> Counters {
        Counters {
            drops: maps.drop_counters().expect("read drop counters"),
            events: maps.event_counters().expect("read event counters"),
        }
    }

    /// What moved since `before`: only non-zero deltas, sorted.
    pub fn since(&self, before: &Counters) -> Delta {
        Delta {
            drops: moved(&self.drops, &before.drops),
            events: moved(&self.events, &before.events),
        }
    }
}

fn moved<K: Copy + Ord>(now: &BTreeMap<K, u64>, before: &BTreeMap<K, u64>) -> Vec<(K, u64)> {
    now.iter()
        .filter_map(|(k, v)| {
            let dv = v - before.get(k).copied().unwrap_or(0);
            (dv != 0).then_some((*k, dv))
        })
        .collect()
}

/// Counter deltas: non-zero entries only, sorted by reason / event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub drops: Vec<(DropReason, u64)>,
    pub events: Vec<(Event, u64)>,
}

impl Delta {
    pub fn new(drops: &[(DropReason, u64)], events: &[(Event, u64)]) -> Delta {
        let mut drops = drops.to_vec();
        drops.sort();
        let mut events = events.to_vec();
        events.sort();
        Delta { drops, events }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Header, Ipv4Header, TcpHeader, UdpHeader};

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// The builder's checksums agree with etherparse's, and the verifier accepts them and
    /// rejects a single flipped bit anywhere it covers.
    #[test]
    fn checksums_agree_with_etherparse() {
        let pkts = [
            Pkt::tcp(a("10.100.0.2"), 40000, a("10.0.0.10"), 80, tcp::SYN).payload(b"xyz"),
            Pkt::udp(a("10.100.0.2"), 5353, a("10.0.0.10"), 53, b"hello"),
            Pkt::echo_request(a("10.100.0.2"), a("10.0.0.10"), 77, 1),
        ];
        for p in &pkts {
            let f = p.frame();
            let (ip, rest) = Ipv4Header::from_slice(&f[14..]).unwrap();
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            match p.l4 {
                L4::Tcp { .. } => {
                    let (t, payload) = TcpHeader::from_slice(rest).unwrap();
                    assert_eq!(t.checksum, t.calc_checksum_ipv4(&ip, payload).unwrap());
                }
                L4::Udp { .. } => {
                    let (u, payload) = UdpHeader::from_slice(rest).unwrap();
                    assert_eq!(u.checksum, u.calc_checksum_ipv4(&ip, payload).unwrap());
                }
                L4::Icmp { .. } => {
                    let (h, payload) = Icmpv4Header::from_slice(rest).unwrap();
                    let mut h2 = h.clone();
                    h2.update_checksum(payload);
                    assert_eq!(h.checksum, h2.checksum);
                }
                L4::Raw { .. } => {}
            }
            verify_checksums(&f).unwrap();
            for i in 14..f.len() {
                let mut g = f.clone();
                g[i] ^= 0x10;
                if (16..18).contains(&i) {
                    continue; // total length: changes what is covered, not always caught
                }
                assert!(verify_checksums(&g).is_err(), "flip at {i} not caught");
            }
        }
        // ICMP error quoting a complete UDP datagram: the inner checksums are checked too.
        let inner = Pkt::udp(a("10.0.0.1"), 62000, a("10.0.0.10"), 53, b"q").ip_bytes();
        let e = Pkt::icmp_error(a("10.0.0.10"), a("10.0.0.1"), ICMP_DEST_UNREACH, 3, &inner);
        verify_checksums(&e.frame()).unwrap();
        let mut bad = inner.clone();
        bad[12] ^= 1; // inner source address: both inner checksums now wrong
        let e = Pkt::icmp_error(a("10.0.0.10"), a("10.0.0.1"), ICMP_DEST_UNREACH, 3, &bad);
        let errs = verify_checksums(&e.frame()).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn xdp_md_layout() {
        let b = xdp_md(7, 60);
        assert_eq!(&b[4..8], &60u32.to_ne_bytes());
        assert_eq!(&b[12..16], &7u32.to_ne_bytes());
    }
}
