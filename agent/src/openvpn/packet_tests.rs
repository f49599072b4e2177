use super::*;
use proptest::prelude::*;

fn sid(x: u64) -> SessionId {
    SessionId::new(x.to_be_bytes()).unwrap()
}

// Doc §1.4, observed in run (a).
const CLIENT_RESET: &str = "38 9d34f1bac8d66152 00 00000000";
const SERVER_RESET: &str = "40 ace23948e6d1889b 01 00000000 9d34f1bac8d66152 00000000";

#[test]
fn observed_client_reset_decodes_and_round_trips() {
    let bytes = hex(CLIENT_RESET);
    assert_eq!(bytes.len(), 14);
    let Packet::Control(p) = decode(&bytes).unwrap() else {
        panic!("not control")
    };
    assert_eq!(p.opcode, Opcode::HardResetClientV2);
    assert_eq!(p.key_id, KeyId::ZERO);
    assert_eq!(p.session_id, sid(0x9d34f1bac8d66152));
    assert!(p.acks.is_empty());
    assert_eq!(p.message_id, Some(0));
    assert!(p.payload.is_empty());
    assert_eq!(p.to_vec().unwrap(), bytes);
}

#[test]
fn observed_server_reset_decodes_and_round_trips() {
    let bytes = hex(SERVER_RESET);
    assert_eq!(bytes.len(), 26);
    let p = ControlPacket::decode(&bytes).unwrap();
    assert_eq!(p.opcode, Opcode::HardResetServerV2);
    assert_eq!(p.session_id, sid(0xace23948e6d1889b));
    assert_eq!(p.acks.ids(), &[0]);
    assert_eq!(p.acks.remote_session(), Some(sid(0x9d34f1bac8d66152)));
    assert_eq!(p.message_id, Some(0));
    let built = ControlPacket {
        opcode: Opcode::HardResetServerV2,
        key_id: KeyId::ZERO,
        session_id: sid(0xace23948e6d1889b),
        acks: AckArray::new(&[0], sid(0x9d34f1bac8d66152)).unwrap(),
        message_id: Some(0),
        payload: &[],
    };
    assert_eq!(built.to_vec().unwrap(), bytes);
}

#[test]
fn observed_ack_with_eight_acks_is_accepted() {
    // 2.6 peers may send 8 acks in any packet; a 4-ack limit broke SoftEther (doc §2.2).
    let mut v = hex("28 6a496c79d7970e24 08");
    for i in 0..8u32 {
        v.extend_from_slice(&i.to_be_bytes());
    }
    v.extend_from_slice(&hex("6d2c72dfca72dbbf"));
    let p = ControlPacket::decode(&v).unwrap();
    assert_eq!(p.opcode, Opcode::AckV1);
    assert_eq!(p.acks.ids(), &[0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(p.message_id, None);
    assert_eq!(p.to_vec().unwrap(), v);
}

#[test]
fn zero_byte_input() {
    assert_eq!(decode(&[]), Err(DecodeError::Empty));
}

#[test]
fn one_byte_inputs() {
    for b in 0..=255u8 {
        let one = [b];
        let r = decode(&one);
        assert!(r.is_err(), "byte {b:#04x} decoded to {r:?}");
    }
    assert_eq!(
        decode(&[0x38]),
        Err(DecodeError::Truncated {
            field: Field::SessionId,
            len: 1
        })
    );
    assert_eq!(
        decode(&[0x30]),
        Err(DecodeError::Truncated {
            field: Field::DataPayload,
            len: 1
        })
    );
    assert_eq!(
        decode(&[0x48]),
        Err(DecodeError::Truncated {
            field: Field::PeerId,
            len: 1
        })
    );
}

#[test]
fn unknown_opcodes() {
    for op in [0u8, 12, 13, 31] {
        let mut v = hex(CLIENT_RESET);
        v[0] = op << 3;
        assert_eq!(decode(&v), Err(DecodeError::UnknownOpcode(op)));
    }
}

#[test]
fn key_method_1_resets_are_obsolete() {
    for op in [1u8, 2] {
        let mut v = hex(CLIENT_RESET);
        v[0] = op << 3;
        assert_eq!(decode(&v), Err(DecodeError::ObsoleteOpcode(op)));
    }
}

#[test]
fn tls_crypt_v2_opcodes_are_recognised() {
    let mut v = hex(CLIENT_RESET);
    v[0] = 0x50;
    assert_eq!(
        ControlPacket::decode(&v).unwrap().opcode,
        Opcode::HardResetClientV3
    );
    let mut v = hex("58 6a496c79d7970e24 00 00000001 aabb");
    assert_eq!(
        ControlPacket::decode(&v).unwrap().opcode,
        Opcode::ControlWkcV1
    );
    v[0] = 0x5f; // key id 7 is fine on WKC
    assert!(ControlPacket::decode(&v).is_ok());
}

#[test]
fn hard_reset_with_nonzero_key_id() {
    let mut v = hex(CLIENT_RESET);
    v[0] = 0x39;
    assert_eq!(
        decode(&v),
        Err(DecodeError::InvalidKeyId {
            opcode: Opcode::HardResetClientV2,
            key_id: 1
        })
    );
}

#[test]
fn soft_reset_with_key_id_zero() {
    let v = hex("18 6a496c79d7970e24 00 00000000");
    assert_eq!(
        decode(&v),
        Err(DecodeError::InvalidKeyId {
            opcode: Opcode::SoftResetV1,
            key_id: 0
        })
    );
    let v = hex("19 0c0792a5ea7e95dd 00 00000000");
    let p = ControlPacket::decode(&v).unwrap();
    assert_eq!((p.opcode, p.key_id.get()), (Opcode::SoftResetV1, 1));
}

#[test]
fn zero_session_id() {
    let v = hex("38 0000000000000000 00 00000000");
    assert_eq!(decode(&v), Err(DecodeError::ZeroSessionId));
}

#[test]
fn zero_receiver_session_id_in_acks() {
    let v = hex("40 ace23948e6d1889b 01 00000000 0000000000000000 00000000");
    assert_eq!(decode(&v), Err(DecodeError::ZeroAckSessionId));
}

#[test]
fn more_than_eight_acks() {
    let mut v = hex("28 6a496c79d7970e24 09");
    v.extend_from_slice(&[0; 9 * 4 + 8]);
    assert_eq!(decode(&v), Err(DecodeError::TooManyAcks(9)));
    v[9] = 0xff;
    assert_eq!(decode(&v), Err(DecodeError::TooManyAcks(255)));
}

#[test]
fn truncated_ack_array() {
    let v = hex("28 6a496c79d7970e24 03 00000000 00000001 0000");
    assert_eq!(
        decode(&v),
        Err(DecodeError::Truncated {
            field: Field::AckIds,
            len: v.len()
        })
    );
    let v = hex("28 6a496c79d7970e24 01 00000000 6d2c72df");
    assert_eq!(
        decode(&v),
        Err(DecodeError::Truncated {
            field: Field::AckSessionId,
            len: v.len()
        })
    );
    let v = hex("28 6a496c79d7970e24");
    assert_eq!(
        decode(&v),
        Err(DecodeError::Truncated {
            field: Field::AckCount,
            len: 9
        })
    );
}

#[test]
fn truncated_message_id() {
    let v = hex("20 6a496c79d7970e24 00 000000");
    assert_eq!(
        decode(&v),
        Err(DecodeError::Truncated {
            field: Field::MessageId,
            len: v.len()
        })
    );
}

#[test]
fn ack_with_trailing_bytes() {
    let v = hex("28 6a496c79d7970e24 01 00000000 6d2c72dfca72dbbf 00000001");
    assert_eq!(decode(&v), Err(DecodeError::TrailingBytes(4)));
}

#[test]
fn oversized_control_packet() {
    let mut v = hex("20 6a496c79d7970e24 00 00000001");
    v.resize(MAX_CONTROL_PACKET_LEN, 0x16);
    assert!(decode(&v).is_ok());
    v.push(0);
    assert_eq!(
        decode(&v),
        Err(DecodeError::OversizedControl {
            len: MAX_CONTROL_PACKET_LEN + 1,
            max: MAX_CONTROL_PACKET_LEN
        })
    );
    let payload = vec![0; MAX_CONTROL_PACKET_LEN];
    let p = ControlPacket {
        opcode: Opcode::ControlV1,
        key_id: KeyId::ZERO,
        session_id: sid(1),
        acks: AckArray::EMPTY,
        message_id: Some(1),
        payload: &payload,
    };
    assert!(matches!(
        p.to_vec(),
        Err(EncodeError::OversizedControl { .. })
    ));
}

#[test]
fn message_id_ffffffff_and_ack_ffffffff_decode() {
    // Codec-level these are plain u32s; the reliability layer refuses them (out of window /
    // never sent), see reliable.rs tests.
    let v = hex("20 6a496c79d7970e24 01 ffffffff 6d2c72dfca72dbbf ffffffff 17");
    let p = ControlPacket::decode(&v).unwrap();
    assert_eq!(p.message_id, Some(u32::MAX));
    assert_eq!(p.acks.ids(), &[u32::MAX]);
    assert_eq!(p.to_vec().unwrap(), v);
}

#[test]
fn data_packets() {
    let v = hex("48 000007 00000001 aa");
    let Packet::Data(d) = decode(&v).unwrap() else {
        panic!()
    };
    assert_eq!(d.peer_id, Some(7));
    assert_eq!(d.header, &v[..4]);
    assert_eq!(d.payload, &v[4..]);
    assert_eq!(d.opcode(), Opcode::DataV2);
    let v = hex("4a ffffff 00");
    let Packet::Data(d) = decode(&v).unwrap() else {
        panic!()
    };
    assert_eq!((d.key_id.get(), d.peer_id), (2, Some(NO_PEER_ID)));
    let v = hex("33 00000001");
    let Packet::Data(d) = decode(&v).unwrap() else {
        panic!()
    };
    assert_eq!((d.key_id.get(), d.peer_id, d.payload.len()), (3, None, 4));
    assert_eq!(
        decode(&hex("48000007")),
        Err(DecodeError::Truncated {
            field: Field::DataPayload,
            len: 4
        })
    );
}

#[test]
fn control_decode_refuses_data_packets() {
    let v = hex("48 000007 00000001 aa");
    assert_eq!(
        ControlPacket::decode(&v),
        Err(DecodeError::NotControl(Opcode::DataV2))
    );
}

#[test]
fn data_header_encoding() {
    // Observed AAD of the first V2 packet, key 0, peer-id 0: 48000000 00000001 (doc §7.1).
    let (h, n) = encode_data_header(KeyId::ZERO, Some(0)).unwrap();
    assert_eq!(&h[..n], &hex("48000000")[..]);
    let (h, n) = encode_data_header(KeyId::new(5).unwrap(), Some(0x123456)).unwrap();
    assert_eq!(&h[..n], &hex("4d123456")[..]);
    let (h, n) = encode_data_header(KeyId::new(1).unwrap(), None).unwrap();
    assert_eq!(&h[..n], &[0x31]);
    assert_eq!(
        encode_data_header(KeyId::ZERO, Some(0x0100_0000)),
        Err(EncodeError::PeerIdTooLarge(0x0100_0000))
    );
}

#[test]
fn key_id_sequence_wraps_to_one() {
    let mut k = KeyId::ZERO;
    let mut seen = vec![];
    for _ in 0..9 {
        k = k.next();
        seen.push(k.get());
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7, 1, 2]);
    assert_eq!(KeyId::new(8), None);
}

#[test]
fn encode_rejects_inconsistent_packets() {
    let base = ControlPacket {
        opcode: Opcode::AckV1,
        key_id: KeyId::ZERO,
        session_id: sid(1),
        acks: AckArray::new(&[1], sid(2)).unwrap(),
        message_id: Some(3),
        payload: &[],
    };
    assert_eq!(base.to_vec(), Err(EncodeError::AckWithMessage));
    let p = ControlPacket {
        opcode: Opcode::ControlV1,
        message_id: None,
        ..base
    };
    assert_eq!(
        p.to_vec(),
        Err(EncodeError::MissingMessageId(Opcode::ControlV1))
    );
    let p = ControlPacket {
        opcode: Opcode::DataV2,
        ..base
    };
    assert_eq!(p.to_vec(), Err(EncodeError::NotControl(Opcode::DataV2)));
    let p = ControlPacket {
        opcode: Opcode::ControlV1,
        ..base
    };
    let mut small = [0u8; 10];
    assert!(matches!(
        p.encode(&mut small),
        Err(EncodeError::BufferTooSmall { .. })
    ));
    assert_eq!(AckArray::new(&[], sid(1)), Err(EncodeError::BadAckCount(0)));
    assert_eq!(
        AckArray::new(&[0; 9], sid(1)),
        Err(EncodeError::BadAckCount(9))
    );
}

#[test]
fn session_id_zero_is_unrepresentable() {
    assert_eq!(SessionId::new([0; 8]), None);
    assert_eq!(format!("{}", sid(0x9d34f1bac8d66152)), "9d34f1bac8d66152");
}

#[test]
fn sendable_sizes() {
    // Observed maxima: 1222 B plain, 1206 B with tls-crypt (doc §2.5) are within these.
    assert_eq!(max_sendable_control_len(false, 0), 1222);
    assert_eq!(max_sendable_control_len(true, 40), 1162);
}

// --- TCP framing ---

#[test]
fn stream_decoder_reassembles_split_and_joined_frames() {
    let a = hex(CLIENT_RESET);
    let b = hex(SERVER_RESET);
    let mut stream = vec![];
    for p in [&a, &b, &a] {
        let mut f = vec![0; p.len() + 2];
        encode_frame(p, &mut f).unwrap();
        stream.extend_from_slice(&f);
    }
    for chunk in [1, 2, 3, 7, 100] {
        let mut dec = StreamDecoder::new(1600);
        let mut out = vec![];
        for c in stream.chunks(chunk) {
            let mut c = c;
            while !c.is_empty() {
                let n = dec.feed(c).unwrap();
                c = &c[n..];
                while let Some(p) = dec.next_packet().unwrap() {
                    out.push(p.to_vec());
                }
            }
        }
        assert_eq!(out, vec![a.clone(), b.clone(), a.clone()], "chunk {chunk}");
        assert_eq!(dec.buffered(), 0);
    }
}

#[test]
fn stream_decoder_rejects_zero_length() {
    let mut dec = StreamDecoder::new(1600);
    dec.feed(&[0, 0, 0x38]).unwrap();
    assert_eq!(dec.next_packet(), Err(FramingError::ZeroLength));
    // The stream stays poisoned.
    assert_eq!(dec.feed(&[1]), Err(FramingError::ZeroLength));
    assert_eq!(dec.next_packet(), Err(FramingError::ZeroLength));
}

#[test]
fn stream_decoder_rejects_too_long_and_is_bounded() {
    let mut dec = StreamDecoder::new(1600);
    dec.feed(&1601u16.to_be_bytes()).unwrap();
    assert_eq!(
        dec.next_packet(),
        Err(FramingError::TooLong {
            len: 1601,
            max: 1600
        })
    );
    // A valid max-size frame fits exactly; the buffer never takes more than 2 + max bytes.
    let mut dec = StreamDecoder::new(16);
    let big = [7u8; 100];
    assert_eq!(dec.feed(&big[..]).unwrap(), 18);
    assert_eq!(dec.feed(&big[..]).unwrap(), 0);
}

#[test]
fn encode_frame_limits() {
    let mut out = [0u8; 4];
    assert_eq!(encode_frame(&[], &mut out), Err(FramingError::ZeroLength));
    assert_eq!(encode_frame(&[1, 2], &mut out), Ok(4));
    assert_eq!(out, [0, 2, 1, 2]);
    assert!(matches!(
        encode_frame(&[1, 2, 3], &mut out),
        Err(FramingError::BufferTooSmall { .. })
    ));
    let huge = vec![0; 70_000];
    let mut out = vec![0; 70_002];
    assert!(matches!(
        encode_frame(&huge, &mut out),
        Err(FramingError::TooLong { .. })
    ));
}

#[test]
fn bad_input_unknown_opcodes_with_every_key_id() {
    // Only opcodes 3..=11 exist in 2.6; 1 and 2 are key-method 1. The key id never rescues
    // an unknown opcode, whatever the rest of the packet.
    for byte in 0..=255u8 {
        let (op, kid) = (byte >> 3, byte & 7);
        let mut v = hex(CLIENT_RESET);
        v[0] = byte;
        let expected = match op {
            0 | 12..=31 => Some(DecodeError::UnknownOpcode(op)),
            1 | 2 => Some(DecodeError::ObsoleteOpcode(op)),
            _ => None,
        };
        match expected {
            Some(e) => {
                assert_eq!(decode(&v), Err(e), "byte {byte:#04x}");
                assert_eq!(split_first_byte(byte), Err(e));
            }
            None => assert_eq!(split_first_byte(byte).map(|(_, k)| k.get()), Ok(kid)),
        }
    }
}

#[test]
fn bad_input_control_packet_truncated_at_every_length() {
    // P_CONTROL_V1 with two acks: every proper prefix names the field it ran out in.
    let v = hex("20 6a496c79d7970e24 02 00000000 00000001 6d2c72dfca72dbbf 00000002 17");
    let field_at = |len: usize| match len {
        0 => None,
        1..=8 => Some(Field::SessionId),
        9 => Some(Field::AckCount),
        10..=17 => Some(Field::AckIds),
        18..=25 => Some(Field::AckSessionId),
        26..=29 => Some(Field::MessageId),
        _ => unreachable!(),
    };
    for len in 0..30 {
        let expected = match field_at(len) {
            None => DecodeError::Empty,
            Some(field) => DecodeError::Truncated { field, len },
        };
        assert_eq!(decode(&v[..len]), Err(expected), "prefix of {len} bytes");
    }
    // 30 bytes: the message id is complete and the payload simply empty.
    assert_eq!(ControlPacket::decode(&v[..30]).unwrap().payload, b"");
}

fn arb_control() -> impl Strategy<Value = (Opcode, u8, u64, Vec<u32>, u64, u32, Vec<u8>)> {
    (
        prop::sample::select(vec![
            Opcode::SoftResetV1,
            Opcode::ControlV1,
            Opcode::AckV1,
            Opcode::HardResetClientV2,
            Opcode::HardResetServerV2,
            Opcode::HardResetClientV3,
            Opcode::ControlWkcV1,
        ]),
        0u8..8,
        1u64..,
        prop::collection::vec(any::<u32>(), 0..=MAX_ACKS),
        1u64..,
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
}

proptest! {
    #[test]
    fn control_round_trip((op, kid, s, acks, r, mid, payload) in arb_control()) {
        let kid = KeyId::new(kid).unwrap();
        prop_assume!(op.allows_key_id(kid));
        let p = ControlPacket {
            opcode: op,
            key_id: kid,
            session_id: sid(s),
            acks: if acks.is_empty() { AckArray::EMPTY } else { AckArray::new(&acks, sid(r)).unwrap() },
            message_id: op.has_message_id().then_some(mid),
            payload: if op == Opcode::AckV1 { &[] } else { &payload },
        };
        let bytes = p.to_vec().unwrap();
        prop_assert_eq!(bytes.len(), p.encoded_len());
        prop_assert_eq!(decode(&bytes), Ok(Packet::Control(p)));
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        if let Ok(Packet::Control(p)) = decode(&bytes) {
            // Whatever decodes re-encodes to the same bytes.
            prop_assert_eq!(p.to_vec().unwrap(), bytes);
        }
    }

    #[test]
    fn stream_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..4000), max in 1usize..2000) {
        let mut dec = StreamDecoder::new(max);
        let mut rest = &bytes[..];
        'outer: while !rest.is_empty() {
            let Ok(n) = dec.feed(rest) else { break };
            rest = &rest[n..];
            let mut progressed = n > 0;
            loop {
                match dec.next_packet() {
                    Ok(Some(p)) => {
                        prop_assert!(!p.is_empty() && p.len() <= max);
                        progressed = true;
                    }
                    Ok(None) => break,
                    Err(_) => break 'outer,
                }
            }
            prop_assert!(dec.buffered() <= max + 2);
            // A full buffer always holds a whole frame or a bad header: no deadlock.
            prop_assert!(progressed);
        }
    }
}
