//! `tls-crypt-v2`: per-client tls-crypt keys, each wrapped under a server key shared by the
//! gateways of one deployment (OpenVPN's doc/tls-crypt-v2.txt).
//!
//! - Server key: 128 bytes laid out as one OpenVPN `struct key` (64 cipher ‖ 64 HMAC bytes);
//!   Ke is the first 32 bytes of the cipher half, Ka the first 32 of the HMAC half.
//! - Client key file: `Kc ‖ WKc`, where Kc is a 256-byte tls-crypt key and
//!   `WKc = T ‖ AES-256-CTR(Ke, IV = T[0..16], Kc ‖ metadata) ‖ len`,
//!   `T = HMAC-SHA256(Ka, len ‖ Kc ‖ metadata)`, `len` = BE u16 of `WKc`'s own length.
//! - On the wire the client appends WKc, in clear, to its tls-crypt-wrapped
//!   P_CONTROL_HARD_RESET_CLIENT_V3 (and, in the 2.6 stateless handshake, to its
//!   P_CONTROL_WKC_V1): the server unwraps WKc, then checks the packet with Kc.
//!
//! Sans-IO: time is passed in as Unix seconds, randomness through [`Random`].

use aes::Aes256;
use base64::Engine as _;
use ctr::cipher::{KeyIvInit, StreamCipher};
use ring::hmac;
use thiserror::Error;

use super::env::Random;
use super::packet::Role;
use super::tls_crypt::{StaticKey, TlsCryptKey, STATIC_KEY_LEN, TAG_LEN};

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// One `struct key`: 64 cipher bytes and 64 HMAC bytes.
pub const SERVER_KEY_LEN: usize = 128;
/// The largest WKc a server accepts (OpenVPN's `TLS_CRYPT_V2_MAX_WKC_LEN`).
pub const MAX_WKC_LEN: usize = 1024;
/// The largest metadata that fits in [`MAX_WKC_LEN`].
pub const MAX_METADATA_LEN: usize = MAX_WKC_LEN - (STATIC_KEY_LEN + TAG_LEN + 2);
/// The smallest WKc: tag, Kc, length, no metadata.
pub const MIN_WKC_LEN: usize = TAG_LEN + STATIC_KEY_LEN + 2;
/// Metadata type bytes (doc "Optionally generate metadata").
pub const METADATA_USER: u8 = 0x00;
pub const METADATA_TIMESTAMP: u8 = 0x01;

const SERVER_PEM: &str = "OpenVPN tls-crypt-v2 server key";
const CLIENT_PEM: &str = "OpenVPN tls-crypt-v2 client key";

/// Problems with a key file; each names what to fix.
#[derive(Clone, PartialEq, Eq, Debug, Error)]
pub enum KeyFileError {
    #[error("no `-----BEGIN {0}-----` line")]
    MissingBegin(&'static str),
    #[error("no `-----END {0}-----` line after the BEGIN line")]
    MissingEnd(&'static str),
    #[error("the key is not valid base64")]
    Base64,
    #[error("the key has {got} bytes, expected {expected}")]
    WrongLength { got: usize, expected: String },
    #[error("the wrapped client key does not open with this server key: {0}")]
    Unwrap(#[from] WkcError),
}

/// Why a wrapped client key was refused. All of them are silent drops on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Error)]
pub enum WkcError {
    #[error("{len} bytes is not a wrapped client key ({MIN_WKC_LEN}..={MAX_WKC_LEN} bytes)")]
    Length { len: usize },
    #[error("the length field says {field}, the key has {len} bytes")]
    LengthField { field: usize, len: usize },
    #[error("authentication tag mismatch (a key wrapped under another server key?)")]
    BadTag,
    #[error("the client key carries no timestamp, and a maximum age is set")]
    NoTimestamp,
    #[error("the client key is {age_days} days old (at most {max_days})")]
    TooOld { age_days: i64, max_days: u32 },
}

/// What a client key says about itself (doc: first byte is the type).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Metadata {
    /// `0x01`: Unix time of key generation (BE i64).
    Timestamp(i64),
    /// `0x00` and anything else: opaque bytes after the type byte.
    Other { kind: u8, data: Vec<u8> },
    /// No metadata at all.
    Empty,
}

impl Metadata {
    fn parse(bytes: &[u8]) -> Metadata {
        match bytes.split_first() {
            None => Metadata::Empty,
            Some((&METADATA_TIMESTAMP, rest)) if rest.len() == 8 => {
                let mut t = [0u8; 8];
                t.copy_from_slice(rest);
                Metadata::Timestamp(i64::from_be_bytes(t))
            }
            Some((&kind, rest)) => Metadata::Other {
                kind,
                data: rest.to_vec(),
            },
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Metadata::Empty => Vec::new(),
            Metadata::Timestamp(t) => {
                let mut v = vec![METADATA_TIMESTAMP];
                v.extend_from_slice(&t.to_be_bytes());
                v
            }
            Metadata::Other { kind, data } => {
                let mut v = vec![*kind];
                v.extend_from_slice(data);
                v
            }
        }
    }

    /// OpenVPN's `--tls-crypt-v2-max-age`: a key without a timestamp fails, one older than
    /// `max_days` (whole days of 86400 s) fails.
    pub fn check_age(&self, max_days: u32, unix_now: i64) -> Result<(), WkcError> {
        let Metadata::Timestamp(t) = self else {
            return Err(WkcError::NoTimestamp);
        };
        let age = unix_now.saturating_sub(*t);
        if age > i64::from(max_days) * 86_400 {
            return Err(WkcError::TooOld {
                age_days: age / 86_400,
                max_days,
            });
        }
        Ok(())
    }
}

/// A client key opened by the server.
#[derive(Debug)]
pub struct ClientKeyInfo {
    /// Kc: the client's tls-crypt key.
    pub key: StaticKey,
    pub metadata: Metadata,
}

/// The tls-crypt-v2 server key: wraps client keys and opens them.
pub struct ServerKey {
    raw: [u8; SERVER_KEY_LEN],
    ke: [u8; 32],
    ka: hmac::Key,
}

impl core::fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ServerKey(..)")
    }
}

impl Drop for ServerKey {
    fn drop(&mut self) {
        self.raw.fill(0);
        self.ke.fill(0);
        std::hint::black_box((&self.raw, &self.ke));
    }
}

impl ServerKey {
    pub fn from_bytes(raw: [u8; SERVER_KEY_LEN]) -> Self {
        let mut ke = [0u8; 32];
        ke.copy_from_slice(&raw[..32]);
        let ka = hmac::Key::new(hmac::HMAC_SHA256, &raw[64..96]);
        Self { raw, ke, ka }
    }

    /// A fresh key, as `openvpn --genkey tls-crypt-v2-server` makes.
    pub fn generate(rng: &dyn Random) -> Result<Self, ring::error::Unspecified> {
        let mut raw = [0u8; SERVER_KEY_LEN];
        rng.fill(&mut raw)?;
        Ok(Self::from_bytes(raw))
    }

    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let bytes = pem_decode(text, SERVER_PEM)?;
        let raw: [u8; SERVER_KEY_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| KeyFileError::WrongLength {
                    got: bytes.len(),
                    expected: SERVER_KEY_LEN.to_string(),
                })?;
        Ok(Self::from_bytes(raw))
    }

    pub fn to_pem(&self) -> String {
        pem_encode(&self.raw, SERVER_PEM)
    }

    /// WKc for `client` with `metadata`.
    pub fn wrap(&self, client: &StaticKey, metadata: &Metadata) -> Result<Vec<u8>, WkcError> {
        let meta = metadata.encode();
        let len = TAG_LEN + STATIC_KEY_LEN + meta.len() + 2;
        if len > MAX_WKC_LEN {
            return Err(WkcError::Length { len });
        }
        let net_len = (len as u16).to_be_bytes();
        let mut ctx = hmac::Context::with_key(&self.ka);
        ctx.update(&net_len);
        ctx.update(client.as_bytes());
        ctx.update(&meta);
        let tag = ctx.sign();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(tag.as_ref());
        out.extend_from_slice(client.as_bytes());
        out.extend_from_slice(&meta);
        ctr_apply(&self.ke, &tag.as_ref()[..16], &mut out[TAG_LEN..]);
        out.extend_from_slice(&net_len);
        Ok(out)
    }

    /// Opens WKc: length, then decryption, then a constant-time tag check. Nothing about the
    /// key is returned unless the tag matches.
    pub fn unwrap(&self, wkc: &[u8]) -> Result<ClientKeyInfo, WkcError> {
        let len = wkc.len();
        if !(MIN_WKC_LEN..=MAX_WKC_LEN).contains(&len) {
            return Err(WkcError::Length { len });
        }
        let field = usize::from(u16::from_be_bytes([wkc[len - 2], wkc[len - 1]]));
        if field != len {
            return Err(WkcError::LengthField { field, len });
        }
        let tag = &wkc[..TAG_LEN];
        let mut plain = [0u8; MAX_WKC_LEN];
        let plain = &mut plain[..len - TAG_LEN - 2];
        plain.copy_from_slice(&wkc[TAG_LEN..len - 2]);
        ctr_apply(&self.ke, &tag[..16], plain);
        let mut ctx = hmac::Context::with_key(&self.ka);
        ctx.update(&wkc[len - 2..]);
        ctx.update(plain);
        // Branch-free comparison, as the cookie check does.
        let diff = ctx
            .sign()
            .as_ref()
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            plain.fill(0);
            return Err(WkcError::BadTag);
        }
        let mut kc = [0u8; STATIC_KEY_LEN];
        kc.copy_from_slice(&plain[..STATIC_KEY_LEN]);
        let metadata = Metadata::parse(&plain[STATIC_KEY_LEN..]);
        plain.fill(0);
        Ok(ClientKeyInfo {
            key: StaticKey::from_bytes(kc),
            metadata,
        })
    }

    /// A new client key with a timestamp (`openvpn --genkey tls-crypt-v2-client` does the
    /// same when no metadata is given).
    pub fn new_client_key(
        &self,
        rng: &dyn Random,
        unix_now: i64,
    ) -> Result<ClientKey, ring::error::Unspecified> {
        let kc = StaticKey::generate(rng)?;
        let wkc = self
            .wrap(&kc, &Metadata::Timestamp(unix_now))
            .map_err(|_| ring::error::Unspecified)?;
        Ok(ClientKey { key: kc, wkc })
    }
}

/// A client's key file: Kc and its wrapped form.
#[derive(Debug)]
pub struct ClientKey {
    pub key: StaticKey,
    pub wkc: Vec<u8>,
}

impl ClientKey {
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let bytes = pem_decode(text, CLIENT_PEM)?;
        if !(STATIC_KEY_LEN + MIN_WKC_LEN..=STATIC_KEY_LEN + MAX_WKC_LEN).contains(&bytes.len()) {
            return Err(KeyFileError::WrongLength {
                got: bytes.len(),
                expected: format!(
                    "{}..={}",
                    STATIC_KEY_LEN + MIN_WKC_LEN,
                    STATIC_KEY_LEN + MAX_WKC_LEN
                ),
            });
        }
        let mut kc = [0u8; STATIC_KEY_LEN];
        kc.copy_from_slice(&bytes[..STATIC_KEY_LEN]);
        Ok(Self {
            key: StaticKey::from_bytes(kc),
            wkc: bytes[STATIC_KEY_LEN..].to_vec(),
        })
    }

    pub fn to_pem(&self) -> String {
        let mut bytes = self.key.as_bytes().to_vec();
        bytes.extend_from_slice(&self.wkc);
        let pem = pem_encode(&bytes, CLIENT_PEM);
        bytes.fill(0);
        pem
    }
}

/// Splits a client packet that carries WKc at its end (HARD_RESET_CLIENT_V3, CONTROL_WKC_V1)
/// into the tls-crypt part and WKc, by WKc's trailing length field. The first byte (the
/// opcode) always stays in the tls-crypt part.
pub fn split_wkc(raw: &[u8]) -> Result<(&[u8], &[u8]), WkcError> {
    if raw.len() < 3 {
        return Err(WkcError::Length { len: raw.len() });
    }
    let n = raw.len();
    let field = usize::from(u16::from_be_bytes([raw[n - 2], raw[n - 1]]));
    if !(MIN_WKC_LEN..=MAX_WKC_LEN).contains(&field) || field > n - 1 {
        return Err(WkcError::LengthField { field, len: n });
    }
    Ok(raw.split_at(n - field))
}

/// The tls-crypt packet-id a client that supports early negotiation (the 2.6 stateless
/// handshake with WKc resent in P_CONTROL_WKC_V1) starts from, under this mask.
pub const EARLY_NEG_MASK: u32 = 0xff00_0000;
pub const EARLY_NEG_START: u32 = 0x0f00_0000;
/// The payload of the server's stateless HARD_RESET_SERVER_V2 to such a client: one TLV,
/// type 1 (early-negotiation flags), length 2, flag 1 (resend WKc).
pub const RESEND_WKC_TLV: [u8; 6] = [0, 1, 0, 2, 0, 1];

/// Whether a V3 reset's tls-crypt packet-id announces early negotiation.
pub const fn announces_early_neg(packet_id: u32) -> bool {
    packet_id & EARLY_NEG_MASK == EARLY_NEG_START
}

/// The server's side: the server key and the age limit for client keys.
#[derive(Debug)]
pub struct TlsCryptV2Server {
    pub key: ServerKey,
    /// `--tls-crypt-v2-max-age` in days; `None`: keys of any age (and without timestamp).
    pub max_age_days: Option<u32>,
}

impl TlsCryptV2Server {
    /// Takes WKc off the end of a client packet, opens it and checks its age; returns the
    /// tls-crypt part of the packet and the client's key (server direction). Nothing is kept.
    pub fn open<'a>(
        &self,
        raw: &'a [u8],
        unix_now: i64,
    ) -> Result<(&'a [u8], TlsCryptKey), WkcError> {
        let (wrapped, wkc) = split_wkc(raw)?;
        let info = self.key.unwrap(wkc)?;
        if let Some(days) = self.max_age_days {
            info.metadata.check_age(days, unix_now)?;
        }
        Ok((wrapped, TlsCryptKey::new(&info.key, Role::Server)))
    }
}

fn ctr_apply(key: &[u8; 32], iv: &[u8], data: &mut [u8]) {
    let mut c = Aes256Ctr::new(key.into(), iv.into());
    c.apply_keystream(data);
}

fn pem_decode(text: &str, label: &'static str) -> Result<Vec<u8>, KeyFileError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut lines = text.lines();
    lines
        .by_ref()
        .find(|l| l.trim() == begin)
        .ok_or(KeyFileError::MissingBegin(label))?;
    let mut b64 = String::new();
    for line in lines {
        if line.trim() == end {
            return base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| KeyFileError::Base64);
        }
        b64.push_str(line.trim());
    }
    Err(KeyFileError::MissingEnd(label))
}

fn pem_encode(bytes: &[u8], label: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(core::str::from_utf8(chunk).unwrap_or_default());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

#[cfg(test)]
#[path = "tls_crypt_v2_tests.rs"]
mod tests;
