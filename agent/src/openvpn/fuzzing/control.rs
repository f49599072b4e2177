//! The `control_message` and `tls_crypt_unwrap` targets.
use super::*;

// ---------------------------------------------------------------------------------------------
// control_message
// ---------------------------------------------------------------------------------------------

/// Control-channel text: control messages, peer info, NCP, the options string, key-method-2
/// messages, PUSH_REPLY splitting and AUTH_FAILED. Nothing may panic; every string that comes
/// out toward a peer or a log is printable and bounded; what parses re-encodes and parses the
/// same.
pub fn control_message(data: &[u8]) {
    let text = String::from_utf8_lossy(data);

    // Incoming control messages (§8.1).
    let mut count = 0;
    for m in control_messages(data) {
        count += 1;
        assert!(count <= data.len(), "more messages than bytes");
        match m {
            Ok(ControlMessage::PushRequest | ControlMessage::Exit) => {}
            Ok(ControlMessage::CrResponse(s) | ControlMessage::Other(s)) => {
                assert!(is_printable(s.as_bytes()) && s.len() < CONTROL_MESSAGE_MAX);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    // Outgoing control messages come back as exactly what was sent.
    match encode_control_message(&text) {
        Ok(wire) => {
            assert!(wire.len() <= CONTROL_MESSAGE_MAX && wire.last() == Some(&0));
            let back: Vec<_> = control_messages(&wire).collect();
            if text.is_empty() {
                assert!(back.is_empty());
            } else {
                assert_eq!(back.len(), 1);
                let s = match back[0] {
                    Ok(ControlMessage::PushRequest) => "PUSH_REQUEST".to_owned(),
                    Ok(ControlMessage::Exit) => "EXIT".to_owned(),
                    Ok(ControlMessage::CrResponse(r)) => format!("CR_RESPONSE,{r}"),
                    Ok(ControlMessage::Other(o)) => o.to_owned(),
                    Err(ref e) => panic!("own message refused: {e}"),
                };
                assert_eq!(s, text);
            }
        }
        Err(_) => assert!(!is_printable(text.as_bytes()) || text.len() >= CONTROL_MESSAGE_MAX),
    }
    let af = auth_failed(Some(&text));
    assert!(
        encode_control_message(&af).is_ok(),
        "AUTH_FAILED must always be sendable"
    );

    // Peer info (§5.5): lenient, bounded, printable.
    let peer = PeerInfo::parse(&text);
    assert!(peer.entries.len() <= PEER_INFO_MAX_ENTRIES);
    assert!(peer.entries.len() + peer.skipped_lines <= text.split('\n').count());
    for (k, v) in &peer.entries {
        assert!(!k.is_empty() && is_printable(k.as_bytes()) && is_printable(v.as_bytes()));
    }

    // NCP (§5.5) with the same text as the options string.
    match negotiate_cipher(&Cipher::ALL, &peer, &text) {
        Ok(c) => assert!(Cipher::ALL.contains(&c)),
        Err(e) => {
            assert!(is_printable(e.offered.as_bytes()) && e.offered.len() <= 256);
            assert!(encode_control_message(&e.auth_failed_message()).is_ok());
        }
    }
    for derivation in [
        options::KeyDerivation::TlsEkm,
        options::KeyDerivation::LegacyPrf,
    ] {
        if let Some(f) = options::protocol_flags_option(peer.proto, derivation) {
            assert!(validate_push_option(&f).is_ok());
        }
    }

    // Our options string never echoes garbage and always fits the key-method-2 reply.
    for t in [Transport::Udp, Transport::Tcp] {
        let ours = server_options_string(&text, t);
        assert!(is_printable(ours.as_bytes()) && ours.len() < OPTIONS_STRING_MAX);
        let reply = ServerKeyMethod2 {
            random1: [1; 32],
            random2: [2; 32],
            options: ours,
        };
        let bytes = reply.to_bytes().expect("our reply encodes");
        assert_eq!(ServerKeyMethod2::parse(&bytes), Ok((reply, bytes.len())));
    }
    let _ = options::options_string_item(&text, "cipher");

    // Key-method-2 messages (§5.1): what parses re-encodes to a message that parses the same.
    if let Ok((m, used)) = ClientKeyMethod2::parse(data) {
        assert!(used <= data.len());
        assert!(!m.credentials_invalid || (m.username.is_empty() && m.password.is_empty()));
        if let Ok(bytes) = m.to_bytes() {
            let (m2, used2) = ClientKeyMethod2::parse(&bytes).expect("own encoding parses");
            assert_eq!(used2, bytes.len());
            assert_eq!(
                (&m2.options, &m2.username, &m2.password, &m2.peer_info),
                (&m.options, &m.username, &m.password, &m.peer_info)
            );
            assert_eq!(m2.key_source, m.key_source);
        }
    }
    if let Ok((m, used)) = ServerKeyMethod2::parse(data) {
        assert!(used <= data.len());
        if let Ok(bytes) = m.to_bytes() {
            assert_eq!(ServerKeyMethod2::parse(&bytes), Ok((m, bytes.len())));
        }
    }

    // PUSH_REPLY splitting (§8.3): the text as comma-separated options, a bundle size from the
    // first byte. Every part fits, and the parts give back the options in order.
    let opts: Vec<String> = text.split(',').map(str::to_owned).collect();
    let bundle = 32 + usize::from(data.first().copied().unwrap_or(0)) * 8;
    match split_push_reply(&opts, bundle) {
        Ok(parts) => {
            assert!(opts.iter().all(|o| validate_push_option(o).is_ok()));
            let mut back = Vec::new();
            let n = parts.len();
            for (i, p) in parts.iter().enumerate() {
                assert!(
                    p.len() < bundle,
                    "part of {} bytes, bundle {bundle}",
                    p.len()
                );
                assert!(encode_control_message(p).is_ok());
                let body = p.strip_prefix("PUSH_REPLY").expect("header");
                let body = if n == 1 {
                    body
                } else if i + 1 == n {
                    body.strip_suffix(",push-continuation 1")
                        .expect("last marker")
                } else {
                    body.strip_suffix(",push-continuation 2")
                        .expect("more marker")
                };
                back.extend(body.split(',').skip(1).map(str::to_owned));
            }
            assert_eq!(back, opts, "options lost or reordered");
        }
        Err(options::OptionsError::BadPushOption(_)) => {
            assert!(opts.iter().any(|o| validate_push_option(o).is_err()));
        }
        Err(options::OptionsError::TooLong(_)) => {}
        Err(e) => panic!("unexpected {e:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// tls_crypt_unwrap
// ---------------------------------------------------------------------------------------------

/// The tls-crypt key of capture run (b) (the same slices as tls_crypt.rs's tests), so the
/// observed wrapped packets in the corpus authenticate.
pub fn fuzz_tls_crypt_key() -> StaticKey {
    const PARTS: [(usize, &str); 4] = [
        (
            0,
            "b1064e1d9c1381281b5dfae1e5bdadbeeb4d59f197713517036fb93e3f42fec5",
        ),
        (
            64,
            "1073d573cd36418f352ddc4edb7c58d08a29107009dfaffe6fafd124c0ad18c5",
        ),
        (
            128,
            "1ad16107412bb2ae4b29c290e60d9800db52135fb5f9f6bf8c7b0ffafdd3150c",
        ),
        (
            192,
            "c7910463953ec7ebd2643569dabd716f460969cc809e4da6b2146bae7facb5b0",
        ),
    ];
    let mut k = [0xeeu8; tls_crypt::STATIC_KEY_LEN];
    for (at, part) in PARTS {
        for (i, b) in k[at..at + 32].iter_mut().enumerate() {
            *b = u8::from_str_radix(&part[2 * i..2 * i + 2], 16).expect("hex constant");
        }
    }
    StaticKey::from_bytes(k)
}

/// tls-crypt: unwrapping garbage fails without panicking and leaves no plaintext behind; what
/// unwraps re-wraps to the same bytes and is refused as a replay the second time; wrapping
/// input-derived control packets round-trips in both directions and any flipped bit is caught.
/// Also the replay window (5-byte records) and the static key file parser.
pub fn tls_crypt_unwrap(data: &[u8]) {
    let key = fuzz_tls_crypt_key();
    let now = Instant::now();
    for (rx, tx) in [(Role::Server, Role::Client), (Role::Client, Role::Server)] {
        let rk = TlsCryptKey::new(&key, rx);
        let mut out = vec![0xAAu8; data.len() + 1];
        match rk.unwrap(data, &mut out) {
            Ok(u) => {
                let (pid, ts) = (u.packet_id, u.timestamp);
                let plain = u.packet.to_vec();
                assert_eq!(plain.len() + tls_crypt::OVERHEAD, data.len());
                let _ = packet::decode(&plain);
                let mut again = vec![0u8; data.len()];
                let n = TlsCryptKey::new(&key, tx)
                    .wrap(&plain, pid, ts, &mut again)
                    .expect("unwrapped packet wraps");
                assert_eq!(&again[..n], data, "re-wrap differs");
                let mut s = TlsCryptSession::new(PacketIdSender::new(1));
                let mut o = vec![0u8; data.len()];
                let first = s.unwrap(&rk, data, &mut o, now).map(|u| u.packet_id);
                match first {
                    Ok(id) => {
                        assert_eq!(id, pid);
                        assert_eq!(
                            s.unwrap(&rk, data, &mut o, now).map(|u| u.packet_id),
                            Err(tls_crypt::UnwrapError::Replay(
                                tls_crypt::ReplayError::Replay
                            ))
                        );
                    }
                    Err(e) => assert_eq!(
                        e,
                        tls_crypt::UnwrapError::Replay(tls_crypt::ReplayError::ZeroId)
                    ),
                }
            }
            Err(tls_crypt::UnwrapError::BadTag) => {
                let n = data.len() - tls_crypt::TAG_LEN;
                assert!(
                    out[..n].iter().all(|&b| b == 0),
                    "plaintext left after a bad tag"
                );
            }
            Err(_) => {}
        }
    }

    // Round trip of an input-derived control packet, both directions.
    let mut inp = Input::new(data);
    let opcode = [
        Opcode::SoftResetV1,
        Opcode::ControlV1,
        Opcode::AckV1,
        Opcode::HardResetClientV2,
        Opcode::HardResetServerV2,
        Opcode::HardResetClientV3,
        Opcode::ControlWkcV1,
    ][usize::from(inp.u8()) % 7];
    let kid = KeyId::new(inp.u8() & 7).unwrap_or(KeyId::ZERO);
    let pid = inp.u32();
    let ts = inp.u32();
    let flip = usize::from(inp.u16());
    let session = (u64::from(inp.u32()) << 32) | u64::from(inp.u32()) | 1;
    let body = inp.bytes(MAX_CONTROL_PACKET_LEN - packet::CONTROL_HEADER_LEN);
    let mut plain = vec![packet::first_byte(opcode, kid)];
    plain.extend_from_slice(&session.to_be_bytes());
    plain.extend_from_slice(body);
    for (tx, rx) in [(Role::Client, Role::Server), (Role::Server, Role::Client)] {
        let mut w = vec![0u8; plain.len() + tls_crypt::OVERHEAD];
        let n = TlsCryptKey::new(&key, tx)
            .wrap(&plain, pid, ts, &mut w)
            .expect("control packet within the size limit wraps");
        assert_eq!(n, w.len());
        let mut out = vec![0u8; n];
        let u = TlsCryptKey::new(&key, rx)
            .unwrap(&w, &mut out)
            .expect("own wrap unwraps");
        assert_eq!((u.packet_id, u.timestamp, u.packet), (pid, ts, &plain[..]));
        // The sender's own direction key cannot open it.
        assert!(TlsCryptKey::new(&key, tx).unwrap(&w, &mut out).is_err());
        let i = flip % (n * 8);
        w[i / 8] ^= 1 << (i % 8);
        assert!(
            TlsCryptKey::new(&key, rx).unwrap(&w, &mut out).is_err(),
            "bit {i} flipped and still accepted"
        );
    }

    tls_crypt_replay_window(data);

    if let Ok(k) = StaticKey::parse(&String::from_utf8_lossy(data)) {
        assert_eq!(StaticKey::parse(&k.to_pem()), Ok(k));
    }
}

/// 5-byte records (packet id, timestamp 0..4, seconds to advance): each (timestamp, id) pair
/// is accepted at most once, never id 0, and `check` predicts `check_and_update`.
fn tls_crypt_replay_window(data: &[u8]) {
    let mut now = Instant::now();
    let mut w = tls_crypt::ReplayWindow::default();
    let mut accepted = HashSet::new();
    let mut newest_ts = 0;
    for rec in data.chunks_exact(6) {
        let id = u32::from_be_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let ts = u32::from(rec[4] % 4);
        now += Duration::from_secs(u64::from(rec[5] % 32));
        let predicted = w.check(id, ts, now);
        let r = w.check_and_update(id, ts, now);
        assert_eq!(predicted, r);
        if r.is_ok() {
            assert_ne!(id, 0);
            assert!(ts >= newest_ts, "older timestamp accepted");
            newest_ts = ts;
            assert!(accepted.insert((ts, id)), "({ts}, {id}) accepted twice");
        }
    }
}
