use super::*;
use crate::openvpn::packet::{decode, hex, ControlPacket, Opcode, Packet};
use proptest::prelude::*;

/// The tls-crypt key of capture run (b), rebuilt from the slices both peers logged at verb 9
/// (clientA.log / serverA.log, "Outgoing/Incoming Control Channel Encryption"). tc.key itself
/// is not in the capture, so the unused bytes (Ke/Ka tails) are filler: tls-crypt reads only
/// 32 bytes of each 64-byte part.
fn capture_key() -> StaticKey {
    let mut k = [0xeeu8; STATIC_KEY_LEN];
    let put = |k: &mut [u8; 256], at: usize, h: &str| k[at..at + 32].copy_from_slice(&hex(h));
    // Server outgoing = client incoming (keys[0]).
    put(
        &mut k,
        0,
        "b1064e1d 9c138128 1b5dfae1 e5bdadbe eb4d59f1 97713517 036fb93e 3f42fec5",
    );
    put(
        &mut k,
        64,
        "1073d573 cd36418f 352ddc4e db7c58d0 8a291070 09dfaffe 6fafd124 c0ad18c5",
    );
    // Client outgoing = server incoming (keys[1]).
    put(
        &mut k,
        128,
        "1ad16107 412bb2ae 4b29c290 e60d9800 db52135f b5f9f6bf 8c7b0ffa fdd3150c",
    );
    put(
        &mut k,
        192,
        "c7910463 953ec7eb d2643569 dabd716f 460969cc 809e4da6 b2146bae 7facb5b0",
    );
    StaticKey::from_bytes(k)
}

/// The dynamic tls-crypt key of kid 1 in the same run (clientA.log "dynamic tls-crypt").
fn capture_dynamic_key() -> StaticKey {
    let mut k = [0x11u8; STATIC_KEY_LEN];
    let put = |k: &mut [u8; 256], at: usize, h: &str| k[at..at + 32].copy_from_slice(&hex(h));
    put(
        &mut k,
        0,
        "995c5a2a a6596d3d 8cdaa052 513ed876 300249fc 38c456c1 84c4a638 f71ce029",
    );
    put(
        &mut k,
        64,
        "3ab9a5a5 af63b1dc 3fdb85a0 52e0b44f 2732a18e 43076aaf f58f8f8e fc387805",
    );
    put(
        &mut k,
        128,
        "d571b34c 691105ec 4e78f4bf 1ac82304 be664618 02b1a743 f9615a00 0c34c9aa",
    );
    put(
        &mut k,
        192,
        "d0af90e1 df95c4cb 9058ffd1 ebd49d4b 651e6f74 6bdce070 bfdcaade 1fde7bbf",
    );
    StaticKey::from_bytes(k)
}

/// One observed wrap: the 17-byte "WRAP AD", the plaintext P ("WRAP FROM") and the tag.
struct Observed {
    ad: &'static str,
    p: &'static str,
    tag: &'static str,
}

/// Rebuilds the plain control packet from AD ‖ P (dropping the 8 replay bytes).
fn plain_of(o: &Observed) -> Vec<u8> {
    let ad = hex(o.ad);
    let mut v = ad[..9].to_vec();
    v.extend_from_slice(&hex(o.p));
    v
}

fn check_observed(key: &StaticKey, sender: Role, o: &Observed) -> Vec<u8> {
    let ad = hex(o.ad);
    let pid = u32::from_be_bytes(ad[9..13].try_into().unwrap());
    let ts = u32::from_be_bytes(ad[13..17].try_into().unwrap());
    let plain = plain_of(o);
    let mut wrapped = vec![0u8; plain.len() + OVERHEAD];
    let n = TlsCryptKey::new(key, sender)
        .wrap(&plain, pid, ts, &mut wrapped)
        .unwrap();
    assert_eq!(n, plain.len() + OVERHEAD);
    assert_eq!(&wrapped[..17], &ad[..], "clear header");
    assert_eq!(
        &wrapped[17..49],
        &hex(o.tag)[..],
        "tag differs from the capture"
    );
    // The receiving role authenticates and decrypts it back.
    let receiver = match sender {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let mut out = vec![0u8; n];
    let u = TlsCryptKey::new(key, receiver)
        .unwrap(&wrapped, &mut out)
        .unwrap();
    assert_eq!((u.packet_id, u.timestamp), (pid, ts));
    assert_eq!(u.packet, &plain[..]);
    wrapped
}

#[test]
fn observed_client_hard_reset_tag() {
    // clientA.log: the 54-byte HARD_RESET_CLIENT_V2, replay id 1, time 1795953310.
    let w = check_observed(
        &capture_key(),
        Role::Client,
        &Observed {
            ad: "386a496c 79d7970e 24000000 016b0c12 9e",
            p: "00000000 00",
            tag: "9d1b9910 9e5a1e18 72d1f563 aa609407 b76fa491 5811a16a a44b21fd ec7cbf0d",
        },
    );
    assert_eq!(w.len(), 54, "doc §11.2: client reset is 54 B wrapped");
    let mut o = vec![0; 54];
    let n = TlsCryptKey::new(&capture_key(), Role::Server)
        .unwrap(&w, &mut o)
        .unwrap()
        .packet
        .len();
    let Packet::Control(p) = decode(&o[..n]).unwrap() else {
        panic!()
    };
    assert_eq!(p.opcode, Opcode::HardResetClientV2);
}

#[test]
fn observed_server_hard_reset_tag() {
    // serverA.log: the stateless 66-byte HARD_RESET_SERVER_V2 acking the client's pid 0.
    let w = check_observed(
        &capture_key(),
        Role::Server,
        &Observed {
            ad: "406d2c72 dfca72db bf000000 016b0c12 9e",
            p: "01000000 006a496c 79d7970e 24000000 00",
            tag: "cfbc6b18 9809c730 9b064755 bd0b2420 4faec969 82f87e19 b1c4ad6f e280bf1b",
        },
    );
    assert_eq!(w.len(), 66);
}

#[test]
fn observed_client_ack_tag() {
    // clientA.log: P_ACK_V1 [1, 0] with replay id 3.
    check_observed(
        &capture_key(),
        Role::Client,
        &Observed {
            ad: "286a496c 79d7970e 24000000 036b0c12 9e",
            p: "02000000 01000000 006d2c72 dfca72db bf",
            tag: "d7865076 b8860d84 2b296534 f1f54e53 6bc89000 d1068e5a 2de005e1 bc6ef7a8",
        },
    );
}

#[test]
fn observed_dynamic_tls_crypt_soft_reset_tags() {
    // Renegotiation to kid 1 under the dynamic key (doc §11.5): server and client soft resets.
    let k = capture_dynamic_key();
    check_observed(
        &k,
        Role::Server,
        &Observed {
            ad: "196d2c72 dfca72db bf000000 016b0c12 aa",
            p: "00000000 00",
            tag: "946061d6 2eccbd29 d1f0749c 825baf93 82077a91 30951868 82725b92 5fa54180",
        },
    );
    check_observed(
        &k,
        Role::Client,
        &Observed {
            ad: "196a496c 79d7970e 24000000 016b0c12 aa",
            p: "01000000 006d2c72 dfca72db bf000000 00",
            tag: "35c455a8 edf1f131 e0261614 fb31b478 d7e47d51 780e2b13 6f7aa46c 0ed2b1a0",
        },
    );
}

#[test]
fn aes_256_ctr_matches_sp800_38a() {
    // NIST SP 800-38A F.5.5 CTR-AES256.Encrypt, blocks 1–2.
    let key: [u8; 32] = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
        .try_into()
        .unwrap();
    let iv = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
    let mut data = hex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51");
    ctr_apply(&key, &iv, &mut data);
    assert_eq!(
        data,
        hex("601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5")
    );
}

#[test]
fn ctr_counter_carries_across_all_128_bits() {
    // OpenSSL increments the whole block (doc §11.2): with IV = 00…00 ff…ff (low 64 bits all
    // ones) block 2 uses counter 00…01 00…00, which a 64-bit counter would get wrong.
    use aes::cipher::{BlockEncrypt, KeyInit};
    let key = [7u8; 32];
    let iv = hex("0000000000000000 ffffffffffffffff");
    let mut data = [0u8; 32];
    ctr_apply(&key, &iv, &mut data);
    let aes = Aes256::new(&key.into());
    let mut b2 = hex("0000000000000001 0000000000000000");
    let block = aes::Block::from_mut_slice(&mut b2);
    aes.encrypt_block(block);
    assert_eq!(&data[16..], &block[..]);
}

fn pem_of_capture() -> String {
    capture_key().to_pem()
}

#[test]
fn key_file_round_trip_and_comments() {
    let pem = pem_of_capture();
    assert!(pem.contains("-----BEGIN OpenVPN Static key V1-----\n"));
    assert_eq!(pem.lines().filter(|l| l.len() == 32).count(), 16);
    assert_eq!(StaticKey::parse(&pem).unwrap(), capture_key());
    // Text outside the markers is ignored, CRLF and indentation are fine.
    let noisy = format!(
        "garbage ### !!\r\n{}trailing junk\n",
        pem.replace('\n', "\r\n  ")
    );
    assert_eq!(noisy.parse::<StaticKey>().unwrap(), capture_key());
    assert_eq!(format!("{:?}", capture_key()), "StaticKey(..)");
}

#[test]
fn key_file_errors() {
    let pem = pem_of_capture();
    assert_eq!(StaticKey::parse(""), Err(KeyFileError::MissingBegin));
    let no_end = pem.replace(END, "");
    assert_eq!(StaticKey::parse(&no_end), Err(KeyFileError::MissingEnd));
    let short = pem.replacen("b1064e1d", "", 1);
    assert_eq!(
        StaticKey::parse(&short),
        Err(KeyFileError::WrongLength { hex_digits: 504 })
    );
    let long = pem.replacen("b1064e1d", "b1064e1d00", 1);
    assert_eq!(
        StaticKey::parse(&long),
        Err(KeyFileError::WrongLength { hex_digits: 514 })
    );
    let bad = pem.replacen("b1064e1d", "b1064g1d", 1);
    assert_eq!(
        StaticKey::parse(&bad),
        Err(KeyFileError::InvalidCharacter { line: 5, ch: 'g' })
    );
}

#[test]
fn key_halves_follow_role() {
    // The doc's §11.1 table: the server sends with bytes 0..31/64..95, the client with
    // 128..159/192..223. A key whose halves are swapped must fail to authenticate.
    let k = capture_key();
    let server = TlsCryptKey::new(&k, Role::Server);
    assert_eq!(&server.encrypt[..], &k.as_bytes()[..32]);
    assert_eq!(&server.decrypt[..], &k.as_bytes()[128..160]);
    let plain = hex("40 6d2c72dfca72dbbf 00 00000000");
    let mut w = [0u8; 128];
    let n = server.wrap(&plain, 1, 1, &mut w).unwrap();
    let mut out = [0u8; 128];
    assert_eq!(
        TlsCryptKey::new(&k, Role::Server).unwrap(&w[..n], &mut out),
        Err(UnwrapError::BadTag)
    );
}

fn wrapped_sample() -> (TlsCryptKey, TlsCryptKey, Vec<u8>) {
    let k = capture_key();
    let c = TlsCryptKey::new(&k, Role::Client);
    let s = TlsCryptKey::new(&k, Role::Server);
    let plain = hex("20 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf 00000001 160301");
    let mut w = vec![0u8; plain.len() + OVERHEAD];
    c.wrap(&plain, 2, 0x6b0c129e, &mut w).unwrap();
    (c, s, w)
}

#[test]
fn any_flipped_bit_fails_before_anything_else() {
    let (_, s, w) = wrapped_sample();
    let mut out = vec![0u8; w.len()];
    assert!(s.unwrap(&w, &mut out).is_ok());
    for i in 0..w.len() {
        for bit in 0..8 {
            let mut bad = w.clone();
            bad[i] ^= 1 << bit;
            let r = s.unwrap(&bad, &mut out);
            assert!(
                matches!(r, Err(UnwrapError::BadTag) | Err(UnwrapError::NotControl)),
                "byte {i} bit {bit}: {r:?}"
            );
            // No plaintext is left behind on failure.
            if r == Err(UnwrapError::BadTag) {
                assert!(out[..w.len() - 32].iter().all(|&b| b == 0));
            }
        }
    }
}

#[test]
fn unwrap_rejects_short_long_and_data() {
    let (_, s, w) = wrapped_sample();
    let mut out = vec![0u8; 4096];
    assert_eq!(
        s.unwrap(&[], &mut out),
        Err(UnwrapError::TooShort { len: 0 })
    );
    assert_eq!(
        s.unwrap(&[0x38], &mut out),
        Err(UnwrapError::TooShort { len: 1 })
    );
    assert_eq!(
        s.unwrap(&w[..48], &mut out),
        Err(UnwrapError::TooShort { len: 48 })
    );
    let mut data = w.clone();
    data[0] = 0x48;
    assert_eq!(s.unwrap(&data, &mut out), Err(UnwrapError::NotControl));
    data[0] = 0x00;
    assert_eq!(s.unwrap(&data, &mut out), Err(UnwrapError::NotControl));
    let huge = {
        let mut v = w.clone();
        v.resize(MAX_CONTROL_PACKET_LEN + OVERHEAD + 1, 0);
        v
    };
    assert!(matches!(
        s.unwrap(&huge, &mut out),
        Err(UnwrapError::Oversized { .. })
    ));
    let mut small = [0u8; 10];
    assert!(matches!(
        s.unwrap(&w, &mut small),
        Err(UnwrapError::BufferTooSmall { .. })
    ));
    // Exactly 49 bytes (empty P) is structurally fine but fails authentication.
    assert_eq!(s.unwrap(&w[..49], &mut out), Err(UnwrapError::BadTag));
}

#[test]
fn bad_input_unknown_and_obsolete_opcodes_are_not_control() {
    // Checked before any crypto: unknown (12..=31), key-method-1 (1, 2) and data opcodes.
    let (_, s, w) = wrapped_sample();
    let mut out = vec![0u8; 4096];
    for op in [1u8, 2, 6, 9, 12, 13, 31] {
        for kid in [0u8, 7] {
            let mut bad = w.clone();
            bad[0] = (op << 3) | kid;
            assert_eq!(s.unwrap(&bad, &mut out), Err(UnwrapError::NotControl));
        }
    }
}

#[test]
fn wrap_rejects_non_control_and_oversized() {
    let (c, _, _) = wrapped_sample();
    let mut out = vec![0u8; 4096];
    assert_eq!(
        c.wrap(&hex("48000000 00000001 aa"), 1, 1, &mut out),
        Err(WrapError::NotControl)
    );
    assert_eq!(c.wrap(&[0x38], 1, 1, &mut out), Err(WrapError::NotControl));
    let mut big = hex("20 6a496c79d7970e24 00 00000001");
    big.resize(MAX_CONTROL_PACKET_LEN + 1, 0);
    assert!(matches!(
        c.wrap(&big, 1, 1, &mut out),
        Err(WrapError::Oversized { .. })
    ));
}

#[test]
fn session_replay_protection() {
    let k = capture_key();
    let (ck, sk) = (
        TlsCryptKey::new(&k, Role::Client),
        TlsCryptKey::new(&k, Role::Server),
    );
    let t = Instant::now();
    let mut client = TlsCryptSession::new(PacketIdSender::new(1000));
    let mut server = TlsCryptSession::new(PacketIdSender::starting_at(2, 1000));
    let plain = hex("28 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf");
    let mut w1 = [0u8; 128];
    let n1 = client.wrap(&ck, &plain, &mut w1).unwrap();
    let mut w2 = [0u8; 128];
    let n2 = client.wrap(&ck, &plain, &mut w2).unwrap();
    // Every transmission gets a new id, so identical packets wrap differently.
    assert_ne!(&w1[..n1], &w2[..n2]);
    let mut out = [0u8; 128];
    let u = server.unwrap(&sk, &w2[..n2], &mut out, t).unwrap();
    assert_eq!((u.packet_id, u.timestamp), (2, 1000));
    assert_eq!(u.packet, &plain[..]);
    // Reordered older id: accepted once, then a replay.
    assert!(server.unwrap(&sk, &w1[..n1], &mut out, t).is_ok());
    assert_eq!(
        server.unwrap(&sk, &w1[..n1], &mut out, t),
        Err(UnwrapError::Replay(ReplayError::Replay))
    );
    assert_eq!(
        server.unwrap(&sk, &w2[..n2], &mut out, t),
        Err(UnwrapError::Replay(ReplayError::Replay))
    );
    // A forged packet never touches the replay state.
    let mut forged = w2;
    forged[60] ^= 1;
    assert_eq!(
        server.unwrap(&sk, &forged[..n2], &mut out, t),
        Err(UnwrapError::BadTag)
    );
    assert_eq!(server.sender().peek(), Ok((2, 1000)));
}

#[test]
fn packet_id_ffffffff_is_the_last() {
    let k = capture_key();
    let ck = TlsCryptKey::new(&k, Role::Client);
    let mut s = TlsCryptSession::new(PacketIdSender::starting_at(u32::MAX, 5));
    let plain = hex("28 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf");
    let mut w = [0u8; 128];
    let n = s.wrap(&ck, &plain, &mut w).unwrap();
    assert_eq!(&w[9..13], &[0xff; 4]);
    assert_eq!(
        s.wrap(&ck, &plain, &mut w),
        Err(WrapError::PacketIdExhausted)
    );
    // The receiver takes 0xFFFFFFFF once and rejects it after.
    let mut r = TlsCryptSession::new(PacketIdSender::new(1));
    let sk = TlsCryptKey::new(&k, Role::Server);
    let mut out = [0u8; 128];
    let t = Instant::now();
    assert_eq!(
        r.unwrap(&sk, &w[..n], &mut out, t).unwrap().packet_id,
        u32::MAX
    );
    assert_eq!(
        r.unwrap(&sk, &w[..n], &mut out, t),
        Err(UnwrapError::Replay(ReplayError::Replay))
    );
    assert_eq!(
        PacketIdSender::starting_at(0, 1).peek(),
        Err(WrapError::PacketIdExhausted)
    );
}

#[test]
fn replay_window_rules() {
    let t = Instant::now();
    let mut w = ReplayWindow::default();
    assert_eq!(w.check_and_update(0, 10, t), Err(ReplayError::ZeroId));
    w.check_and_update(5, 10, t).unwrap();
    assert_eq!(w.check_and_update(5, 10, t), Err(ReplayError::Replay));
    w.check_and_update(100, 10, t).unwrap();
    assert_eq!(w.check(36, 10, t), Err(ReplayError::TooOld));
    assert_eq!(w.check(37, 10, t), Ok(()));
    assert_eq!(w.check(100, 10, t), Err(ReplayError::Replay));
    // A gap older than the backtrack time is expired.
    let late = t + Duration::from_secs(16);
    assert_eq!(w.check(99, 10, late), Err(ReplayError::Expired));
    assert_eq!(w.check(99, 10, t + Duration::from_secs(15)), Ok(()));
    // Older timestamp rejected; newer timestamp restarts the window.
    assert_eq!(w.check(101, 9, t), Err(ReplayError::OldTimestamp));
    w.check_and_update(1, 11, t).unwrap();
    assert_eq!(w.check(1, 11, t), Err(ReplayError::Replay));
    assert_eq!(w.check(100, 10, t), Err(ReplayError::OldTimestamp));
    assert_eq!(w.check(2, 11, t), Ok(()));
    // Huge jumps do not wrap or panic.
    w.check_and_update(u32::MAX, 11, t).unwrap();
    assert_eq!(w.check(u32::MAX - 63, 11, t), Ok(()));
    assert_eq!(w.check(u32::MAX - 64, 11, t), Err(ReplayError::TooOld));
    assert_eq!(w.check(1, 11, t), Err(ReplayError::TooOld));
}

#[test]
fn xor_is_an_involution() {
    let a = capture_key();
    let b = *capture_dynamic_key().as_bytes();
    assert_eq!(a.xor(&b).xor(&b), a);
}

proptest! {
    #[test]
    fn wrap_unwrap_round_trip(
        sid in 1u64..,
        body in prop::collection::vec(any::<u8>(), 0..1200),
        id in 1u32..,
        ts in any::<u32>(),
        server_sends in any::<bool>(),
    ) {
        let k = capture_key();
        let (tx, rx) = if server_sends { (Role::Server, Role::Client) } else { (Role::Client, Role::Server) };
        let mut plain = vec![0x20];
        plain.extend_from_slice(&sid.to_be_bytes());
        plain.extend_from_slice(&body);
        let mut w = vec![0u8; plain.len() + OVERHEAD];
        TlsCryptKey::new(&k, tx).wrap(&plain, id, ts, &mut w).unwrap();
        let mut out = vec![0u8; w.len()];
        let u = TlsCryptKey::new(&k, rx).unwrap(&w, &mut out).unwrap();
        prop_assert_eq!((u.packet_id, u.timestamp), (id, ts));
        prop_assert_eq!(u.packet, &plain[..]);
    }

    #[test]
    fn unwrap_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1700)) {
        let s = TlsCryptKey::new(&capture_key(), Role::Server);
        let mut out = vec![0u8; 1700];
        let r = s.unwrap(&bytes, &mut out);
        prop_assert!(r.is_err());
    }

    #[test]
    fn replay_window_accepts_each_id_at_most_once(
        ids in prop::collection::vec((1u32..200, 0u64..30), 0..300),
    ) {
        let t = Instant::now();
        let mut w = ReplayWindow::default();
        let mut accepted = std::collections::HashSet::new();
        for (id, dt) in ids {
            if w.check_and_update(id, 1, t + Duration::from_secs(dt)).is_ok() {
                prop_assert!(accepted.insert(id), "id {} accepted twice", id);
            }
        }
    }
}

#[test]
fn plain_of_observed_decodes() {
    // Sanity: the observed P fields rebuild valid control packets.
    let o = Observed {
        ad: "406d2c72 dfca72db bf000000 016b0c12 9e",
        p: "01000000 006a496c 79d7970e 24000000 00",
        tag: "",
    };
    let plain = plain_of(&o);
    let p = ControlPacket::decode(&plain).unwrap();
    assert_eq!(p.opcode, Opcode::HardResetServerV2);
    assert_eq!(p.acks.ids(), &[0]);
}
