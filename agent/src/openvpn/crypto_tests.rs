use super::*;
use std::time::Duration;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn iv(s: &str) -> [u8; 8] {
    hex(s).try_into().unwrap()
}

fn key(c: Cipher, byte: u8) -> DirectionKey {
    DirectionKey::new(c, &[byte; 64], [byte ^ 0x55; 8]).unwrap()
}

fn pair(c: Cipher, format: DataFormat, key_id: u8) -> (Encryptor, Decryptor) {
    let k = key(c, 7);
    (
        Encryptor::new(&k, key_id, format).unwrap(),
        Decryptor::new(&k, key_id).unwrap(),
    )
}

#[test]
fn round_trip_all_ciphers_both_formats() {
    let now = Instant::now();
    for c in Cipher::ALL {
        for format in [DataFormat::V1, DataFormat::V2 { peer_id: 0x12_3456 }] {
            let (mut enc, mut dec) = pair(c, format, 3);
            for (i, msg) in [&b"hello"[..], &[0xAB; 1400][..], b"x"].iter().enumerate() {
                let mut buf = [0u8; 1600];
                let n = enc.encrypt(msg, &mut buf).unwrap();
                assert_eq!(n, enc.overhead() + msg.len());
                let hdr = DataHeader::parse(&buf[..n]).unwrap();
                assert_eq!(hdr.key_id, 3);
                assert_eq!(hdr.packet_id, i as u32 + 1, "ids start at 1");
                let mut out = [0u8; 1600];
                let (h2, m) = dec.decrypt(&buf[..n], &mut out, now).unwrap();
                assert_eq!(h2, hdr);
                assert_eq!(&out[..m], *msg, "{c} {format:?}");
            }
        }
    }
}

#[test]
fn v2_header_layout() {
    let (mut enc, _) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0xABCDEF }, 2);
    let mut buf = [0u8; 64];
    let n = enc.encrypt(b"abc", &mut buf).unwrap();
    assert_eq!(n, 4 + 4 + 16 + 3);
    assert_eq!(&buf[..8], &[0x4a, 0xAB, 0xCD, 0xEF, 0, 0, 0, 1]);
    let (mut enc, _) = pair(Cipher::Aes256Gcm, DataFormat::V1, 1);
    let n = enc.encrypt(b"abc", &mut buf).unwrap();
    assert_eq!(n, 1 + 4 + 16 + 3);
    assert_eq!(&buf[..5], &[0x31, 0, 0, 0, 1]);
}

#[test]
fn seal_in_place_uses_headroom() {
    let (mut enc, mut dec) = pair(Cipher::ChaCha20Poly1305, DataFormat::V2 { peer_id: 1 }, 0);
    let mut buf = [0u8; 100];
    let off = enc.overhead();
    buf[off..off + 5].copy_from_slice(b"frame");
    let n = enc.seal_in_place(&mut buf, 5).unwrap();
    let opened = dec.open_in_place(&mut buf[..n], Instant::now()).unwrap();
    assert_eq!(&buf[opened.plaintext], b"frame");
}

#[test]
fn tamper_anywhere_is_rejected() {
    let now = Instant::now();
    for format in [DataFormat::V1, DataFormat::V2 { peer_id: 5 }] {
        let (mut enc, _) = pair(Cipher::Aes128Gcm, format, 0);
        let mut buf = [0u8; 64];
        let n = enc.encrypt(b"some payload", &mut buf).unwrap();
        for i in 0..n {
            // In V1 the opcode byte is not authenticated; flipping its key_id bits is caught
            // by the key_id check instead, flipping its opcode bits by the parser.
            let mut p = buf[..n].to_vec();
            p[i] ^= 0x01;
            let (_, mut dec) = pair(Cipher::Aes128Gcm, format, 0);
            let r = dec.decrypt(&p, &mut [0u8; 64], now);
            assert!(r.is_err(), "flip at {i} accepted ({format:?})");
            if i > 0 {
                assert_eq!(r, Err(CryptoError::AuthFailed), "byte {i} {format:?}");
            }
        }
    }
}

#[test]
fn v2_peer_id_is_authenticated() {
    let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 9 }, 0);
    let mut buf = [0u8; 64];
    let n = enc.encrypt(b"p", &mut buf).unwrap();
    buf[3] = 10;
    assert_eq!(
        dec.decrypt(&buf[..n], &mut [0u8; 64], Instant::now()),
        Err(CryptoError::AuthFailed)
    );
}

#[test]
fn wrong_key_or_direction_fails() {
    let mut enc = Encryptor::new(&key(Cipher::Aes256Gcm, 1), 0, DataFormat::V1).unwrap();
    let mut dec = Decryptor::new(&key(Cipher::Aes256Gcm, 2), 0).unwrap();
    let mut buf = [0u8; 64];
    let n = enc.encrypt(b"p", &mut buf).unwrap();
    assert_eq!(
        dec.decrypt(&buf[..n], &mut [0u8; 64], Instant::now()),
        Err(CryptoError::AuthFailed)
    );
}

#[test]
fn replayed_packet_is_rejected_after_auth() {
    let now = Instant::now();
    let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
    let mut buf = [0u8; 64];
    let n = enc.encrypt(b"once", &mut buf).unwrap();
    let pkt = buf[..n].to_vec();
    assert!(dec.decrypt(&pkt, &mut [0u8; 64], now).is_ok());
    assert_eq!(
        dec.decrypt(&pkt, &mut [0u8; 64], now),
        Err(CryptoError::Replay(ReplayError::Replayed { id: 1 }))
    );
}

#[test]
fn forged_packet_does_not_move_the_window() {
    let now = Instant::now();
    let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V1, 0);
    let mut buf = [0u8; 64];
    let n = enc.encrypt(b"a", &mut buf).unwrap();
    let good = buf[..n].to_vec();
    // A forgery claiming id 1000 fails authentication and leaves the window at 0...
    let mut forged = good.clone();
    forged[1..5].copy_from_slice(&1000u32.to_be_bytes());
    assert_eq!(
        dec.decrypt(&forged, &mut [0u8; 64], now),
        Err(CryptoError::AuthFailed)
    );
    assert_eq!(dec.replay_window().highest(), 0);
    // ...so the genuine id 1 is still accepted.
    assert!(dec.decrypt(&good, &mut [0u8; 64], now).is_ok());
}

#[test]
fn bad_input_never_panics() {
    let now = Instant::now();
    let (_, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
    let mut out = [0u8; 64];
    assert_eq!(dec.decrypt(&[], &mut out, now), Err(CryptoError::Truncated));
    assert_eq!(
        dec.decrypt(&[0x48], &mut out, now),
        Err(CryptoError::Truncated)
    );
    assert_eq!(
        dec.decrypt(&[0x48, 0, 0, 0, 0, 0, 0], &mut out, now),
        Err(CryptoError::Truncated)
    );
    // Header + id + tag and nothing else: the 2.6 rule "missing payload".
    assert_eq!(
        dec.decrypt(&[0x48; 24], &mut out, now),
        Err(CryptoError::EmptyPayload)
    );
    assert_eq!(
        dec.decrypt(&[0x20; 30], &mut out, now),
        Err(CryptoError::NotData { opcode: 4 })
    );
    assert_eq!(
        dec.decrypt(&[0x49; 30], &mut out, now),
        Err(CryptoError::KeyIdMismatch {
            expected: 0,
            got: 1
        })
    );
    assert!(matches!(
        dec.decrypt(&[0x48; 40], &mut [0u8; 10], now),
        Err(CryptoError::BufferTooSmall { .. })
    ));
    let (mut enc, _) = pair(Cipher::Aes256Gcm, DataFormat::V1, 0);
    assert_eq!(
        enc.encrypt(b"", &mut [0u8; 64]),
        Err(CryptoError::EmptyPayload)
    );
    assert!(matches!(
        enc.encrypt(b"0123456789", &mut [0u8; 20]),
        Err(CryptoError::BufferTooSmall { .. })
    ));
    assert!(Encryptor::new(&key(Cipher::Aes256Gcm, 0), 8, DataFormat::V1).is_err());
    assert!(Encryptor::new(
        &key(Cipher::Aes256Gcm, 0),
        0,
        DataFormat::V2 {
            peer_id: 0x100_0000
        }
    )
    .is_err());
    assert!(DirectionKey::new(Cipher::Aes256Gcm, &[0; 16], [0; 8]).is_err());
    // Every short prefix of a real packet is refused without panicking.
    let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
    let mut buf = [0u8; 64];
    let n = enc.encrypt(b"payload", &mut buf).unwrap();
    for cut in 0..n {
        assert!(dec.decrypt(&buf[..cut], &mut [0u8; 64], now).is_err());
    }
}

#[test]
fn bad_input_unknown_opcodes_are_not_data() {
    let now = Instant::now();
    let (_, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
    for op in (0u8..32).filter(|&op| op != OPCODE_DATA_V1 && op != OPCODE_DATA_V2) {
        let mut pkt = [0u8; 40];
        pkt[0] = op << 3;
        assert_eq!(
            DataHeader::parse(&pkt),
            Err(CryptoError::NotData { opcode: op })
        );
        assert_eq!(
            dec.decrypt(&pkt, &mut [0u8; 64], now),
            Err(CryptoError::NotData { opcode: op })
        );
    }
    assert_eq!(dec.replay_window().highest(), 0);
}

#[test]
fn bad_input_packet_id_zero_is_refused_after_auth() {
    // A genuine (authenticated) packet with id 0 is still refused: 0 is never sent (§7.2).
    let now = Instant::now();
    let (mut enc, mut dec) = pair(Cipher::ChaCha20Poly1305, DataFormat::V1, 0);
    enc.next_id = Some(0);
    let mut buf = [0u8; 64];
    let n = enc.encrypt(b"zero", &mut buf).unwrap();
    assert_eq!(
        dec.decrypt(&buf[..n], &mut [0u8; 64], now),
        Err(CryptoError::Replay(ReplayError::Zero))
    );
    assert_eq!(dec.replay_window().highest(), 0);
}

#[test]
fn bad_input_packet_id_ffffffff_then_replays() {
    let now = Instant::now();
    let (mut enc, mut dec) = pair(Cipher::Aes128Gcm, DataFormat::V2 { peer_id: 5 }, 3);
    let mut buf = [0u8; 64];
    let n = enc.encrypt(b"first", &mut buf).unwrap();
    let first = buf[..n].to_vec();
    enc.next_id = Some(u32::MAX);
    let n = enc.encrypt(b"last", &mut buf).unwrap();
    let last = buf[..n].to_vec();
    assert!(dec.decrypt(&last, &mut [0u8; 64], now).is_ok());
    assert_eq!(dec.replay_window().highest(), u32::MAX);
    assert_eq!(
        dec.decrypt(&last, &mut [0u8; 64], now),
        Err(CryptoError::Replay(ReplayError::Replayed { id: u32::MAX }))
    );
    // Id 1 is now far behind the window: refused, even though it was never seen.
    assert_eq!(
        dec.decrypt(&first, &mut [0u8; 64], now),
        Err(CryptoError::Replay(ReplayError::TooOld {
            id: 1,
            behind: u32::MAX - 1
        }))
    );
}

#[test]
fn window_edges() {
    let t = Instant::now();
    let mut w = ReplayWindow::new();
    assert_eq!(w.accept(0, t), Err(ReplayError::Zero));
    w.accept(100, t).unwrap();
    // 63 behind is the oldest id still inside a 64-wide window; 64 behind is out.
    assert_eq!(w.check(37, t), Ok(()));
    assert_eq!(
        w.check(36, t),
        Err(ReplayError::TooOld { id: 36, behind: 64 })
    );
    w.accept(37, t).unwrap();
    assert_eq!(w.accept(37, t), Err(ReplayError::Replayed { id: 37 }));
    assert_eq!(w.accept(100, t), Err(ReplayError::Replayed { id: 100 }));
    // Out of order within the window is fine, once.
    w.accept(99, t).unwrap();
    w.accept(101, t).unwrap();
    assert_eq!(w.accept(99, t), Err(ReplayError::Replayed { id: 99 }));
    // A big jump forgets everything older than the window.
    w.accept(1_000_000, t).unwrap();
    assert!(matches!(w.check(101, t), Err(ReplayError::TooOld { .. })));
    assert_eq!(w.check(999_999, t), Ok(()));
    assert_eq!(w.check(1_000_000 - 63, t), Ok(()));
}

#[test]
fn window_time_backtrack() {
    let t0 = Instant::now();
    let mut w = ReplayWindow::new();
    w.accept(1, t0).unwrap();
    w.accept(5, t0).unwrap(); // 2, 3, 4 become gaps at t0
    assert_eq!(w.check(3, t0 + Duration::from_secs(15)), Ok(()));
    assert_eq!(
        w.check(3, t0 + Duration::from_secs(16)),
        Err(ReplayError::Expired { id: 3 })
    );
    // A gap made later has its own clock.
    w.accept(8, t0 + Duration::from_secs(10)).unwrap(); // 6, 7 gaps at t0+10
    assert_eq!(w.check(6, t0 + Duration::from_secs(25)), Ok(()));
    assert_eq!(
        w.check(4, t0 + Duration::from_secs(25)),
        Err(ReplayError::Expired { id: 4 })
    );
}

#[test]
fn window_at_u32_max() {
    let t = Instant::now();
    let mut w = ReplayWindow::new();
    w.accept(u32::MAX - 1, t).unwrap();
    w.accept(u32::MAX, t).unwrap();
    assert_eq!(
        w.accept(u32::MAX, t),
        Err(ReplayError::Replayed { id: u32::MAX })
    );
    assert!(w.check(u32::MAX - 2, t).is_ok());
    assert!(matches!(w.check(1, t), Err(ReplayError::TooOld { .. })));
}

#[test]
fn sender_stops_before_wrapping() {
    let (mut enc, mut dec) = pair(Cipher::Aes256Gcm, DataFormat::V2 { peer_id: 0 }, 0);
    assert!(!enc.needs_renegotiation());
    enc.next_id = Some(PACKET_ID_WRAP_TRIGGER - 1);
    assert!(!enc.needs_renegotiation());
    let mut buf = [0u8; 64];
    enc.encrypt(b"a", &mut buf).unwrap();
    assert!(enc.needs_renegotiation());
    enc.next_id = Some(u32::MAX);
    let n = enc.encrypt(b"last", &mut buf).unwrap();
    assert_eq!(DataHeader::parse(&buf[..n]).unwrap().packet_id, u32::MAX);
    let (_, m) = dec
        .decrypt(&buf[..n], &mut [0u8; 64], Instant::now())
        .unwrap();
    assert_eq!(m, 4);
    assert_eq!(enc.next_packet_id(), None);
    assert!(enc.needs_renegotiation());
    assert_eq!(
        enc.encrypt(b"wrap", &mut buf),
        Err(CryptoError::PacketIdExhausted)
    );
}

#[test]
fn ping_and_occ_recognition() {
    assert_eq!(classify(&PING_MAGIC), Payload::Ping);
    let mut longer = PING_MAGIC.to_vec();
    longer.push(0);
    assert_eq!(classify(&longer), Payload::Ip(&longer));
    assert_eq!(classify(&OCC_EXIT_MESSAGE), Payload::OccExit);
    assert_eq!(&OCC_EXIT_MESSAGE[..16], &OCC_MAGIC);
    let mut req = OCC_MAGIC.to_vec();
    req.extend_from_slice(&[0, b'x']);
    assert_eq!(
        classify(&req),
        Payload::Occ {
            kind: 0,
            body: b"x"
        }
    );
    // The bare magic without a type byte is not OCC.
    assert_eq!(classify(&OCC_MAGIC), Payload::Ip(&OCC_MAGIC));
    assert_eq!(classify(&[]), Payload::Ip(&[]));
    assert_eq!(classify(&[0x45, 0]), Payload::Ip(&[0x45, 0]));
}

#[test]
fn cipher_names() {
    for c in Cipher::ALL {
        assert_eq!(Cipher::from_name(c.name()), Some(c));
    }
    assert_eq!(Cipher::from_name("aes-256-gcm"), Some(Cipher::Aes256Gcm));
    assert_eq!(Cipher::from_name("BF-CBC"), None);
    assert_eq!(Cipher::from_name(""), None);
}

// Run (a) of the capture, client.log: the server's first data packet (P_DATA_V2, kid 0,
// peer-id 0, pid 1, 72 bytes) logged with its key "Incoming Data Channel: CIPHER KEY",
// "DECRYPT IV" (pid ‖ implicit IV), "DECRYPT MAC" (tag), "DECRYPT FROM" (ciphertext) and
// "DECRYPT AD". The plaintext starts with an IPv6 header (logged "DECRYPT TO", truncated).
const CAPTURE_S2C_KEY: &str =
    "fea57122 e20dbf49 1d86b3b9 46192646 e59e7527 3a0e2372 7a870a5a e96d15a7";
const CAPTURE_S2C_IV: &str = "6f131f64 a5b7e5b6";
const CAPTURE_S2C_TAG: &str = "5c840d3f 2555a048 2256c1ff 97b51fca";
const CAPTURE_S2C_CT: &str = "9f485e86 3a3a2348 0153ac04 4a347a51 de6f00e2 e2530eab \
    96d497c2 9bbdb0c8 e3653262 20178668 cf86b3a3 7fa58dab";
const CAPTURE_S2C_PT_PREFIX: &str =
    "60000000 00083aff fe800000 00000000 58d2b9a9 34f2b616 ff020000";

fn capture_s2c_packet() -> Vec<u8> {
    let mut p = hex("48000000 00000001");
    p.extend(hex(CAPTURE_S2C_TAG));
    p.extend(hex(CAPTURE_S2C_CT));
    assert_eq!(p.len(), 72, "the logged UDP read was 72 bytes");
    p
}

#[test]
fn capture_run_a_server_to_client_packet_decrypts() {
    // The client decrypts with the s2c key; so does our test "client" side.
    let k =
        DirectionKey::new(Cipher::Aes256Gcm, &hex(CAPTURE_S2C_KEY), iv(CAPTURE_S2C_IV)).unwrap();
    let mut dec = Decryptor::new(&k, 0).unwrap();
    let mut out = [0u8; 128];
    let (h, n) = dec
        .decrypt(&capture_s2c_packet(), &mut out, Instant::now())
        .unwrap();
    assert_eq!(h.peer_id, Some(0));
    assert_eq!(h.packet_id, 1);
    assert_eq!(n, 48);
    let prefix = hex(CAPTURE_S2C_PT_PREFIX);
    assert_eq!(&out[..prefix.len()], &prefix[..]);
    assert!(matches!(classify(&out[..n]), Payload::Ip(_)));
}

// Run (a), server.log: the client's first keepalive ping (P_DATA_V2 kid 0, pid 1, 40 bytes)
// as the server decrypted it: key = server "Incoming Data Channel: CIPHER KEY", "DECRYPT IV",
// "DECRYPT MAC", "DECRYPT FROM", "DECRYPT TO" = the ping magic.
const CAPTURE_C2S_KEY: &str =
    "a8eaf09a 3eab8ac6 8de1f657 4299ff74 90117279 b37ed6b4 9e7e1f3e c8ba8128";
const CAPTURE_C2S_IV: &str = "16debe9e 25e25f12";
const CAPTURE_C2S_PING: &str = "48000000 00000001 7d09a702 e9f4e6fb 44b6377a 4903820d \
    9701abb8 add8503f 318bde86 c65051b3";

#[test]
fn capture_run_a_client_ping_decrypts_and_is_recognised() {
    let k =
        DirectionKey::new(Cipher::Aes256Gcm, &hex(CAPTURE_C2S_KEY), iv(CAPTURE_C2S_IV)).unwrap();
    let mut pkt = hex(CAPTURE_C2S_PING);
    assert_eq!(pkt.len(), 40, "the logged UDP read was 40 bytes");
    let expected = pkt.clone();
    let mut dec = Decryptor::new(&k, 0).unwrap();
    let opened = dec.open_in_place(&mut pkt, Instant::now()).unwrap();
    assert_eq!(classify(&pkt[opened.plaintext]), Payload::Ping);
    // And the same ping sent by us with pid 1 is byte-identical to the client's.
    let mut enc = Encryptor::new(&k, 0, DataFormat::V2 { peer_id: 0 }).unwrap();
    let mut out = [0u8; 64];
    let n = enc.encrypt(&PING_MAGIC, &mut out).unwrap();
    assert_eq!(&out[..n], &expected[..]);
}

// Run (b), serverA.log after the first renegotiation: a client packet on key_id 1
// (opcode byte 0x49), decrypted by the server with its kid-1 "Incoming" key.
#[test]
fn capture_run_b_key_id_1_packet_decrypts() {
    let k = DirectionKey::new(
        Cipher::Aes256Gcm,
        &hex("4958cc0e 452975e1 b0311985 015b49c3 a0627c21 3b62ca6a 0b0927da 36f47fe0"),
        iv("de987fe7 5b4c5b00"),
    )
    .unwrap();
    let mut pkt = hex("49000000 00000001 32bb7627 be0f3a15 ba6ed974 c9076a29");
    pkt.extend(hex(
        "ac396d60 7705f0e0 1fd6587e 6e6bb3fd 04704eb8 ce6346ed d3b51be0 \
        db127c17 6b9f1f49 c614f3b9 269cb685 e37fe221",
    ));
    assert_eq!(pkt.len(), 72);
    let now = Instant::now();
    // The kid-0 decryptor refuses it before doing any crypto.
    assert!(matches!(
        Decryptor::new(&k, 0)
            .unwrap()
            .decrypt(&pkt, &mut [0u8; 128], now),
        Err(CryptoError::KeyIdMismatch {
            expected: 0,
            got: 1
        })
    ));
    let mut out = [0u8; 128];
    let (h, n) = Decryptor::new(&k, 1)
        .unwrap()
        .decrypt(&pkt, &mut out, now)
        .unwrap();
    assert_eq!((h.key_id, h.peer_id, h.packet_id, n), (1, Some(0), 1, 48));
    let prefix = hex("60000000 00083aff fe800000 00000000 be87fb7a ff3e8851 ff020000");
    assert_eq!(&out[..prefix.len()], &prefix[..]);
}

#[test]
fn capture_run_a_reencrypts_identically() {
    // Determinism check of our sender: with the same key, IV, pid 1 and the decrypted
    // plaintext, we must produce the exact logged bytes.
    let k =
        DirectionKey::new(Cipher::Aes256Gcm, &hex(CAPTURE_S2C_KEY), iv(CAPTURE_S2C_IV)).unwrap();
    let pkt = capture_s2c_packet();
    let mut pt = [0u8; 128];
    let (_, n) = Decryptor::new(&k, 0)
        .unwrap()
        .decrypt(&pkt, &mut pt, Instant::now())
        .unwrap();
    let mut enc = Encryptor::new(&k, 0, DataFormat::V2 { peer_id: 0 }).unwrap();
    let mut out = [0u8; 128];
    let m = enc.encrypt(&pt[..n], &mut out).unwrap();
    assert_eq!(&out[..m], &pkt[..]);
}
