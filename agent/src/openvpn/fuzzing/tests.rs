use super::*;
use std::path::PathBuf;

fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus"))
}

// --- Seed corpus ------------------------------------------------------------------------
//
// `cargo test -p portcullis-agent --lib write_seed_corpus -- --ignored` (re)writes the seeds
// below into fuzz/corpus/; other files there (minimised crashes, say) are left alone.

use crate::openvpn::keys::{ClientKeySource, Password};
use crate::openvpn::packet::hex;

const CLIENT_RESET: &str = "38 9d34f1bac8d66152 00 00000000";
const SERVER_RESET: &str = "40 ace23948e6d1889b 01 00000000 9d34f1bac8d66152 00000000";
// crypto.rs tests: run (a)'s first server→client P_DATA_V2 and the client's first ping, and
// run (b)'s key-id-1 packet (doc §7).
const S2C_DATA: &str = "48000000 00000001 5c840d3f 2555a048 2256c1ff 97b51fca \
    9f485e86 3a3a2348 0153ac04 4a347a51 de6f00e2 e2530eab 96d497c2 9bbdb0c8 e3653262 \
    20178668 cf86b3a3 7fa58dab";
const C2S_PING: &str = "48000000 00000001 7d09a702 e9f4e6fb 44b6377a 4903820d \
    9701abb8 add8503f 318bde86 c65051b3";
const KID1_DATA: &str = "49000000 00000001 32bb7627 be0f3a15 ba6ed974 c9076a29 \
    ac396d60 7705f0e0 1fd6587e 6e6bb3fd 04704eb8 ce6346ed d3b51be0 \
    db127c17 6b9f1f49 c614f3b9 269cb685 e37fe221";
const PEER_INFO: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\n\
    IV_NCP=2\nIV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n\
    IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n";
const OPTIONS_UDP: &str = "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,\
    cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client";
const OPTIONS_TCP: &str = "V4,dev-type tun,link-mtu 1551,tun-mtu 1500,proto TCPv4_CLIENT,\
    cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client";
const PUSH_REPLY: &str = "PUSH_REPLY,route 10.100.0.0 255.255.0.0,\
    dhcp-option DNS 10.99.0.1,redirect-gateway def1 bypass-dhcp,route-gateway 10.99.0.1,\
    topology subnet,ping 10,ping-restart 60,ifconfig 10.99.0.2 255.255.255.0,peer-id 0,\
    cipher AES-256-GCM,protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500";

fn ctl(op: Opcode, kid: u8, from: u64, acks: &[u32], to: u64, mid: u32, payload: &[u8]) -> Vec<u8> {
    ControlPacket {
        opcode: op,
        key_id: KeyId::new(kid).unwrap(),
        session_id: sid(from),
        acks: if acks.is_empty() {
            AckArray::EMPTY
        } else {
            AckArray::new(acks, sid(to)).unwrap()
        },
        message_id: op.has_message_id().then_some(mid),
        payload,
    }
    .to_vec()
    .unwrap()
}

fn sealed(kid: u8, format: DataFormat, plaintext: &[u8]) -> Vec<u8> {
    let mut enc = Encryptor::new(&fuzz_data_key(kid), kid, format).unwrap();
    let mut out = vec![0u8; enc.overhead() + plaintext.len()];
    let n = enc.encrypt(plaintext, &mut out).unwrap();
    out.truncate(n);
    out
}

fn packet_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let hello = hex("16030100 f5010000 f10303");
    let mut nine_acks = hex("28 6a496c79d7970e24 09");
    nine_acks.extend_from_slice(&[0; 9 * 4 + 8]);
    let mut oversized = hex("20 6a496c79d7970e24 00 00000001");
    oversized.resize(MAX_CONTROL_PACKET_LEN + 1, 0x16);
    let mut max_control = oversized.clone();
    max_control.pop();
    // A client ack carrying the valid cookie of the fixed secret (slot 0): verify succeeds.
    let now = Instant::now();
    let cookie = HmacCookie::new(FUZZ_COOKIE_SECRET, DEFAULT_HAND_WINDOW, now);
    let server = cookie.session_id(fuzz_cookie_addr(), sid(CLIENT_SID), now);
    let cookie_ack = ControlPacket {
        opcode: Opcode::ControlV1,
        key_id: KeyId::ZERO,
        session_id: sid(CLIENT_SID),
        acks: AckArray::new(&[0], server).unwrap(),
        message_id: Some(1),
        payload: &hello,
    }
    .to_vec()
    .unwrap();
    let mut replays = Vec::new();
    for id in [1u32, 3, 2, 2, 64, 1, u32::MAX, u32::MAX - 1, u32::MAX, 0] {
        replays.extend_from_slice(&id.to_be_bytes());
        replays.push(1);
    }
    vec![
        ("observed-client-reset", hex(CLIENT_RESET)),
        ("observed-server-reset", hex(SERVER_RESET)),
        ("observed-data-v2-s2c", hex(S2C_DATA)),
        ("observed-data-v2-ping", hex(C2S_PING)),
        ("observed-data-v2-kid1", hex(KID1_DATA)),
        (
            "client-reset-kid0",
            ctl(Opcode::HardResetClientV2, 0, CLIENT_SID, &[], 0, 0, &[]),
        ),
        (
            "server-reset-4-acks",
            ctl(
                Opcode::HardResetServerV2,
                0,
                SERVER_SID,
                &[0, 1, 2, 3],
                CLIENT_SID,
                0,
                &[],
            ),
        ),
        (
            "ack-8-acks",
            ctl(
                Opcode::AckV1,
                0,
                CLIENT_SID,
                &[0, 1, 2, 3, 4, 5, 6, 7],
                SERVER_SID,
                0,
                &[],
            ),
        ),
        (
            "control-v1-hello",
            ctl(
                Opcode::ControlV1,
                0,
                CLIENT_SID,
                &[0],
                SERVER_SID,
                1,
                &hello,
            ),
        ),
        (
            "control-v1-kid7",
            ctl(Opcode::ControlV1, 7, CLIENT_SID, &[], 0, 9, b"x"),
        ),
        (
            "soft-reset-kid1",
            ctl(Opcode::SoftResetV1, 1, SERVER_SID, &[], 0, 0, &[]),
        ),
        (
            "reset-early-neg-tlv",
            ctl(
                Opcode::HardResetServerV2,
                0,
                SERVER_SID,
                &[0],
                CLIENT_SID,
                0,
                &[0, 1, 0, 2, 0, 1],
            ),
        ),
        (
            "hard-reset-v3",
            ctl(
                Opcode::HardResetClientV3,
                0,
                CLIENT_SID,
                &[],
                0,
                0,
                &[0xaa; 20],
            ),
        ),
        (
            "control-wkc",
            ctl(
                Opcode::ControlWkcV1,
                0,
                CLIENT_SID,
                &[0],
                SERVER_SID,
                1,
                &[0xbb; 20],
            ),
        ),
        (
            "ids-ffffffff",
            ctl(
                Opcode::ControlV1,
                0,
                CLIENT_SID,
                &[u32::MAX; 8],
                SERVER_SID,
                u32::MAX,
                b"\x17",
            ),
        ),
        ("cookie-valid-ack", cookie_ack),
        (
            "data-v2-sealed-kid0",
            sealed(0, DataFormat::V2 { peer_id: 0 }, &crypto::PING_MAGIC),
        ),
        (
            "data-v1-sealed-kid1",
            sealed(1, DataFormat::V1, &hex("45000014 00000000 4001")),
        ),
        (
            "data-v2-sealed-kid2-no-peer",
            sealed(
                2,
                DataFormat::V2 {
                    peer_id: crypto::NO_PEER_ID,
                },
                &crypto::OCC_EXIT_MESSAGE,
            ),
        ),
        ("empty", vec![]),
        ("one-byte-reset", vec![0x38]),
        ("one-byte-data-v2", vec![0x48]),
        ("bad-opcode-0", hex("00 9d34f1bac8d66152 00 00000000")),
        (
            "bad-opcode-obsolete",
            hex("08 9d34f1bac8d66152 00 00000000"),
        ),
        ("bad-opcode-12", hex("60 9d34f1bac8d66152 00 00000000")),
        ("bad-opcode-31", hex("ff 9d34f1bac8d66152 00 00000000")),
        ("hard-reset-kid1", hex("39 9d34f1bac8d66152 00 00000000")),
        ("soft-reset-kid0", hex("18 6a496c79d7970e24 00 00000000")),
        ("zero-session", hex("38 0000000000000000 00 00000000")),
        (
            "zero-ack-session",
            hex("40 ace23948e6d1889b 01 00000000 0000000000000000 00000000"),
        ),
        ("nine-acks", nine_acks),
        (
            "ack-trailing",
            hex("28 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf 00000001"),
        ),
        (
            "truncated-acks",
            hex("28 6a496c79d7970e24 03 00000000 00000001 0000"),
        ),
        ("control-max-size", max_control),
        ("control-oversized", oversized),
        ("data-v2-header-only", hex("48000007")),
        ("replay-window-ids", replays),
    ]
}

fn stream_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let frame = |p: &[u8]| {
        let mut f = vec![0u8; p.len() + 2];
        encode_frame(p, &mut f).unwrap();
        f
    };
    let mut stream = frame(&hex(CLIENT_RESET));
    stream.extend(frame(&hex(SERVER_RESET)));
    stream.extend(frame(&hex(S2C_DATA)));
    stream.extend(frame(&hex(CLIENT_RESET)));
    let chunked = |max: u16, stream: &[u8], size: usize| {
        let mut v = max.to_be_bytes().to_vec();
        for c in stream.chunks(size) {
            v.push(c.len() as u8);
            v.extend_from_slice(c);
        }
        v
    };
    let mut too_long = frame(&hex(CLIENT_RESET));
    too_long.extend_from_slice(&1601u16.to_be_bytes());
    too_long.extend_from_slice(&[0x20; 40]);
    let mut zero = frame(&hex(CLIENT_RESET));
    zero.extend_from_slice(&[0, 0, 0x38]);
    let big = frame(&vec![0x48; 3000]);
    vec![
        ("observed-frames-whole", chunked(1600, &stream, 255)),
        ("observed-frames-bytewise", chunked(1600, &stream, 1)),
        ("observed-frames-7", chunked(1600, &stream, 7)),
        ("frame-too-long", chunked(1600, &too_long, 50)),
        ("frame-zero-length", chunked(1600, &zero, 3)),
        ("max-len-14", chunked(14, &stream, 100)),
        ("max-len-1", chunked(1, &[0, 1, 0x38, 0, 1, 0x40, 0, 2], 3)),
        ("max-len-0", chunked(0, &[0, 1, 0x38], 3)),
        ("max-len-65535", chunked(u16::MAX, &big, 255)),
        ("empty", vec![]),
        ("one-byte", vec![0x06]),
    ]
}

/// Programs for [`reliable`]; see its op codes.
struct Prog(Vec<u8>);

impl Prog {
    fn single(after_cookie: bool) -> Self {
        Prog(vec![0, if after_cookie { 2 } else { 0 }])
    }
    fn pair(custom: Option<[u8; 11]>) -> Self {
        let mut v = match custom {
            Some(c) => [&[1u8][..], &c[..]].concat(),
            None => vec![0],
        };
        v.push(1);
        Prog(v)
    }
    /// Single-instance crafted packet: `flags` bits as in `reliable_single`.
    fn craft(mut self, flags: u8, opsel: u8, acks: &[u32], mid: u32, len_units: u8) -> Self {
        self.0.extend([0, flags, opsel, acks.len() as u8]);
        for &a in acks {
            if a < 0x40 {
                self.0.push(a as u8);
            } else {
                self.0.push(0x80);
                self.0.extend(a.to_be_bytes());
            }
        }
        if flags & 8 != 0 {
            self.0.extend(mid.to_be_bytes());
        } else {
            self.0.push(mid as u8);
        }
        self.0.push(len_units);
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.push(1);
        self.0.extend((bytes.len() as u16).to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }
    fn op(mut self, op: u8, args: &[u8]) -> Self {
        self.0.push(op);
        self.0.extend_from_slice(args);
        self
    }
}

fn reliable_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const CTL: u8 = 0;
    const ACK: u8 = 1;
    const RESET: u8 = 2;
    const SERVER_RESET_SEL: u8 = 5;
    let handshake = Prog::single(false)
        .craft(0, RESET, &[], 0, 0)
        .op(6, &[SERVER_RESET_SEL])
        .op(4, &[])
        .craft(0, CTL, &[0], 1, 43)
        .op(5, &[0x04, 0x00])
        .op(2, &[0x0b, 0xb8])
        .op(4, &[])
        .craft(0, ACK, &[1, 2, 3], 0, 0)
        .op(7, &[])
        .craft(0, ACK, &[0, 4, 5, 6, 7, 8], 0, 0)
        .op(3, &[0x01, 0xf4])
        .op(4, &[]);
    let hostile = Prog::single(true)
        .craft(
            8,
            CTL,
            &[u32::MAX, 0x8000_0000, 1, 99, 5, 6, 7, 2],
            u32::MAX,
            1,
        )
        .craft(1, CTL, &[1], 1, 1)
        .craft(2, CTL, &[1], 1, 1)
        .craft(4 | (1 << 4), CTL, &[], 1, 1)
        .craft(0, CTL, &[], 13, 1)
        .craft(0, CTL, &[], 3, 2)
        .craft(0, CTL, &[], 2, 2)
        .craft(0, CTL, &[], 3, 2)
        .craft(0, CTL, &[], 1, 2)
        .craft(0, RESET, &[], 4, 0)
        .craft(0, CTL, &[], 0, 1)
        .craft(0, RESET, &[], 0, 0)
        .op(5, &[0xff, 0xff])
        .op(2, &[0x1f, 0xff])
        .op(4, &[])
        .op(7, &[])
        .op(7, &[])
        .op(7, &[])
        .craft(0, ACK, &[2, 3, 4], 0, 0)
        .op(4, &[])
        .op(6, &[1])
        .op(6, &[3]);
    let raw = Prog::single(false)
        .raw(&hex(CLIENT_RESET))
        .op(6, &[SERVER_RESET_SEL])
        .op(4, &[])
        .raw(&ctl(
            Opcode::ControlV1,
            0,
            CLIENT_SID,
            &[0],
            SERVER_SID,
            1,
            b"\x16\x03\x01",
        ))
        .raw(&hex(SERVER_RESET))
        .raw(&ctl(
            Opcode::AckV1,
            0,
            CLIENT_SID,
            &[0, 1, 2, 3, 4, 5, 6, 7],
            SERVER_SID,
            0,
            &[],
        ))
        .op(5, &[0, 16])
        .op(4, &[]);
    let soft = Prog::single(false)
        .op(6, &[0])
        .craft(4 | (1 << 4), 3, &[], 0, 0)
        .op(4, &[]);
    let mut pair = Prog::pair(None);
    for round in 0..6u8 {
        pair = pair
            .op(0, &[round & 1, 0x07, 0xd0])
            .op(1, &[0])
            .op(1, &[1])
            .op(3, &[round])
            .op(2, &[round.wrapping_mul(3)])
            .op(4, &[1])
            .op(2, &[0])
            .op(5, &[0x00, 0x80])
            .op(6, &[round & 1, 0x03, 0x00])
            .op(7, &[]);
    }
    // Tiny windows and buffers: window 1, receive window 2, no piggy-backed acks.
    let tiny = [0, 60, 0, 1, 0, 8, 0x0b, 0xb8, 0x0b, 0xb8, 1];
    let mut small = Prog::pair(Some(tiny));
    for round in 0..4u8 {
        small = small
            .op(0, &[round & 1, 0x01, 0x00])
            .op(1, &[round & 1])
            .op(2, &[0])
            .op(4, &[0])
            .op(7, &[]);
    }
    vec![
        ("single-handshake", handshake.0),
        ("single-hostile", hostile.0),
        ("single-raw-observed", raw.0),
        ("single-soft-reset", soft.0),
        ("pair-lossy", pair.0),
        ("pair-tiny-windows", small.0),
        ("empty", vec![]),
    ]
}

fn control_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let client = ClientKeyMethod2 {
        key_source: ClientKeySource {
            pre_master: [0x11; 48],
            random1: [0x22; 32],
            random2: [0x33; 32],
        },
        options: OPTIONS_UDP.into(),
        username: "alice".into(),
        password: Password::new("secret"),
        peer_info: PEER_INFO.into(),
        credentials_invalid: false,
    };
    let server = ServerKeyMethod2 {
        random1: [0x44; 32],
        random2: [0x55; 32],
        options: server_options_string(OPTIONS_UDP, Transport::Udp),
    };
    let mut long_options = vec![0, 0, 0, 0, 2];
    long_options.extend_from_slice(&[0; 112]);
    long_options.extend_from_slice(&513u16.to_be_bytes());
    long_options.extend(std::iter::repeat_n(b'a', 513));
    let many_lines: String = (0..100).map(|i| format!("K{i}=v\n")).collect();
    let mut all_bytes: Vec<u8> = (0..=255u8).collect();
    all_bytes.push(0);
    vec![
        ("push-request", b"PUSH_REQUEST\0".to_vec()),
        ("exit-crlf", b"EXIT\r\n\0".to_vec()),
        (
            "cr-response",
            b"CR_RESPONSE,dGVzdA==\0INFO,hello\0".to_vec(),
        ),
        (
            "garbage-messages",
            b"PUSH_\x01REQUEST\0caf\xc3\xa9\0\xff\xfe\0PUSH_REQUEST\0tail".to_vec(),
        ),
        ("non-printable-all-bytes", all_bytes),
        ("too-long-3000", vec![b'A'; 3000]),
        ("observed-peer-info", PEER_INFO.as_bytes().to_vec()),
        (
            "peer-info-garbage",
            b"no equals sign\n=novalue\nIV_PLAT=li\x01nux\nIV_PROTO=abc\r\nIV_VER=2.6.0\r\n\n"
                .to_vec(),
        ),
        ("peer-info-many-lines", many_lines.into_bytes()),
        (
            "ncp-ciphers-only",
            b"IV_CIPHERS=BF-CBC:chacha20-poly1305\n".to_vec(),
        ),
        ("observed-options-udp", OPTIONS_UDP.as_bytes().to_vec()),
        ("observed-options-tcp", OPTIONS_TCP.as_bytes().to_vec()),
        ("observed-push-reply", PUSH_REPLY.as_bytes().to_vec()),
        (
            "push-options-bad",
            b"\x20route 10.0.0.0 255.0.0.0,,auth-token a\nb".to_vec(),
        ),
        ("key-method-2-client", client.to_bytes().unwrap()),
        ("key-method-2-server", server.to_bytes().unwrap()),
        ("key-method-1", [&[0u8, 0, 0, 0, 1][..], &[0; 112]].concat()),
        ("key-method-2-long-options", long_options),
        ("utf8", "caf\u{e9} \u{fc}ber \u{2603}\0".as_bytes().to_vec()),
        ("empty", vec![]),
        ("one-nul", vec![0]),
    ]
}

fn tls_crypt_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let key = fuzz_tls_crypt_key();
    let wrap = |tx: Role, plain: &[u8], pid: u32, ts: u32| {
        let mut w = vec![0u8; plain.len() + tls_crypt::OVERHEAD];
        TlsCryptKey::new(&key, tx)
            .wrap(plain, pid, ts, &mut w)
            .unwrap();
        w
    };
    const TS: u32 = 0x6b0c_129e;
    // The three observed wraps of tls_crypt.rs's tests; their tags prove the key is right.
    let client_reset = wrap(Role::Client, &hex("38 6a496c79d7970e24 00 00000000"), 1, TS);
    assert_eq!(
        client_reset[17..49],
        hex("9d1b99109e5a1e1872d1f563aa609407b76fa4915811a16aa44b21fdec7cbf0d")
    );
    let server_reset = wrap(
        Role::Server,
        &hex("40 6d2c72dfca72dbbf 01 00000000 6a496c79d7970e24 00000000"),
        1,
        TS,
    );
    assert_eq!(
        server_reset[17..49],
        hex("cfbc6b189809c7309b064755bd0b24204faec96982f87e19b1c4ad6fe280bf1b")
    );
    let client_ack = wrap(
        Role::Client,
        &hex("28 6a496c79d7970e24 02 00000001 00000000 6d2c72dfca72dbbf"),
        3,
        TS,
    );
    assert_eq!(
        client_ack[17..49],
        hex("d7865076b8860d842b296534f1f54e536bc89000d1068e5a2de005e1bc6ef7a8")
    );
    let hello = ctl(
        Opcode::ControlV1,
        0,
        CLIENT_SID,
        &[0],
        SERVER_SID,
        1,
        &[0x16; 300],
    );
    let mut replays = Vec::new();
    for (id, ts) in [
        (1u32, 0u8),
        (3, 0),
        (2, 0),
        (2, 0),
        (70, 0),
        (1, 1),
        (1, 0),
        (0, 2),
        (u32::MAX, 2),
    ] {
        replays.extend_from_slice(&id.to_be_bytes());
        replays.extend([ts, 3]);
    }
    let mut oversized = wrap(Role::Client, &hex(CLIENT_RESET), 1, 1);
    oversized.resize(MAX_CONTROL_PACKET_LEN + tls_crypt::OVERHEAD + 1, 0);
    vec![
        ("observed-client-reset", client_reset.clone()),
        ("observed-server-reset", server_reset),
        ("observed-client-ack", client_ack),
        ("control-v1-hello", wrap(Role::Client, &hello, 2, TS)),
        (
            "ack-8-acks",
            wrap(
                Role::Server,
                &ctl(
                    Opcode::AckV1,
                    0,
                    SERVER_SID,
                    &[0, 1, 2, 3, 4, 5, 6, 7],
                    CLIENT_SID,
                    0,
                    &[],
                ),
                9,
                TS,
            ),
        ),
        ("replay-id-0", wrap(Role::Client, &hex(CLIENT_RESET), 0, TS)),
        (
            "replay-id-ffffffff",
            wrap(Role::Client, &hex(CLIENT_RESET), u32::MAX, u32::MAX),
        ),
        ("tag-flipped", {
            let mut v = client_reset.clone();
            v[20] ^= 1;
            v
        }),
        ("data-opcode", [&[0x48u8][..], &client_reset[1..]].concat()),
        ("oversized", oversized),
        ("short-48", client_reset[..48].to_vec()),
        ("header-only-49", client_reset[..49].to_vec()),
        ("replay-window-records", replays),
        ("static-key-pem", key.to_pem().into_bytes()),
        ("empty", vec![]),
        ("one-byte", vec![0x38]),
    ]
}

#[test]
#[ignore = "writes the seed corpus; run by hand after changing the seeds"]
fn write_seed_corpus() {
    let sets = [
        ("packet_decode", packet_seeds()),
        ("stream_decoder", stream_seeds()),
        ("reliable", reliable_seeds()),
        ("control_message", control_seeds()),
        ("tls_crypt_unwrap", tls_crypt_seeds()),
    ];
    for (target, seeds) in sets {
        let dir = corpus_dir().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
}

#[test]
fn seeds_are_current() {
    // The committed seeds are what the builders above make (so nobody edits one by hand
    // and loses the way to rebuild it).
    let sets = [
        ("packet_decode", packet_seeds()),
        ("stream_decoder", stream_seeds()),
        ("reliable", reliable_seeds()),
        ("control_message", control_seeds()),
        ("tls_crypt_unwrap", tls_crypt_seeds()),
    ];
    for (target, seeds) in sets {
        for (name, bytes) in seeds {
            let f = corpus_dir().join(target).join(format!("seed-{name}"));
            let on_disk = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            assert!(
                on_disk == bytes,
                "{} is stale: run write_seed_corpus",
                f.display()
            );
        }
    }
}
