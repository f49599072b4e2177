//! Vectors: `testdata/tls-crypt-v2-*.key` were made by stock openvpn 2.6
//! (`--genkey tls-crypt-v2-server`, then `--tls-crypt-v2 server.key --genkey tls-crypt-v2-client`).
use super::*;

const STOCK_SERVER: &str = include_str!("testdata/tls-crypt-v2-server.key");
const STOCK_CLIENT: &str = include_str!("testdata/tls-crypt-v2-client.key");

struct Fixed(u8);
impl Random for Fixed {
    fn fill(&self, out: &mut [u8]) -> Result<(), ring::error::Unspecified> {
        out.fill(self.0);
        Ok(())
    }
}

#[test]
fn opens_a_stock_client_key_and_rewraps_it_byte_for_byte() {
    let server = ServerKey::parse(STOCK_SERVER).unwrap();
    let client = ClientKey::parse(STOCK_CLIENT).unwrap();
    // 9 bytes of timestamp metadata.
    assert_eq!(client.wkc.len(), MIN_WKC_LEN + 9);
    let info = server.unwrap(&client.wkc).unwrap();
    assert_eq!(info.key.as_bytes(), client.key.as_bytes());
    let Metadata::Timestamp(t) = info.metadata else {
        panic!("stock keys carry a timestamp: {:?}", info.metadata)
    };
    // Made in 2026 (the file's generation), not a misread field.
    assert!((1_767_225_600..1_798_761_600).contains(&t), "{t}");
    // The wrap is deterministic (SIV), so ours must reproduce openvpn's bytes exactly.
    assert_eq!(server.wrap(&info.key, &info.metadata).unwrap(), client.wkc);
    // And the files round-trip through our PEM writer.
    assert_eq!(server.to_pem().trim(), STOCK_SERVER.trim());
    assert_eq!(client.to_pem().trim(), STOCK_CLIENT.trim());
}

#[test]
fn a_key_wrapped_under_another_server_key_is_refused() {
    let client = ClientKey::parse(STOCK_CLIENT).unwrap();
    let other = ServerKey::generate(&Fixed(7)).unwrap();
    assert_eq!(other.unwrap(&client.wkc).unwrap_err(), WkcError::BadTag);
}

#[test]
fn any_flipped_bit_is_refused() {
    let server = ServerKey::parse(STOCK_SERVER).unwrap();
    let client = ClientKey::parse(STOCK_CLIENT).unwrap();
    for i in 0..client.wkc.len() - 2 {
        let mut w = client.wkc.clone();
        w[i] ^= 0x10;
        assert_eq!(server.unwrap(&w).unwrap_err(), WkcError::BadTag, "byte {i}");
    }
    let mut w = client.wkc.clone();
    let n = w.len();
    w[n - 1] ^= 1;
    assert!(matches!(
        server.unwrap(&w),
        Err(WkcError::LengthField { .. })
    ));
    assert!(matches!(
        server.unwrap(&client.wkc[..40]),
        Err(WkcError::Length { len: 40 })
    ));
}

#[test]
fn new_client_keys_open_and_carry_their_age() {
    let server = ServerKey::generate(&Fixed(3)).unwrap();
    let ck = server.new_client_key(&Fixed(9), 1_000_000).unwrap();
    let parsed = ClientKey::parse(&ck.to_pem()).unwrap();
    let info = server.unwrap(&parsed.wkc).unwrap();
    assert_eq!(info.key.as_bytes(), &[9u8; STATIC_KEY_LEN]);
    assert_eq!(info.metadata, Metadata::Timestamp(1_000_000));
    assert_eq!(info.metadata.check_age(1, 1_000_000 + 86_400), Ok(()));
    assert_eq!(
        info.metadata.check_age(1, 1_000_000 + 86_401),
        Err(WkcError::TooOld {
            age_days: 1,
            max_days: 1
        })
    );
    assert_eq!(
        Metadata::Other {
            kind: METADATA_USER,
            data: b"x".to_vec()
        }
        .check_age(1, 0),
        Err(WkcError::NoTimestamp)
    );
}

#[test]
fn split_finds_the_trailing_wkc() {
    let client = ClientKey::parse(STOCK_CLIENT).unwrap();
    let mut pkt = vec![0x50, 1, 2, 3];
    pkt.extend_from_slice(&client.wkc);
    let (head, wkc) = split_wkc(&pkt).unwrap();
    assert_eq!(head, &[0x50, 1, 2, 3]);
    assert_eq!(wkc, client.wkc.as_slice());
    // The opcode byte is never part of WKc.
    assert!(split_wkc(&client.wkc).is_err());
    assert!(split_wkc(&[0, 0]).is_err());
}

#[test]
fn key_files_name_their_problem() {
    assert_eq!(
        ServerKey::parse(STOCK_CLIENT).unwrap_err(),
        KeyFileError::MissingBegin(SERVER_PEM)
    );
    assert_eq!(
        ServerKey::parse("-----BEGIN OpenVPN tls-crypt-v2 server key-----\nAAAA\n").unwrap_err(),
        KeyFileError::MissingEnd(SERVER_PEM)
    );
    assert!(matches!(
        ServerKey::parse(
            "-----BEGIN OpenVPN tls-crypt-v2 server key-----\nAAAA\n-----END OpenVPN tls-crypt-v2 server key-----\n"
        ),
        Err(KeyFileError::WrongLength { got: 3, .. })
    ));
}
