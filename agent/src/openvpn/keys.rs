//! Key-method 2: the first plaintext exchanged inside TLS, and data-channel key derivation.
//!
//! Facts: docs/openvpn-protocol.md §5 (message layout), §6 (key block, TLS-EKM, legacy PRF).
//! Randomness is injected: the caller fills [`ServerKeyMethod2`]'s random fields, and TLS-EKM
//! goes through a caller-provided exporter so rustls' `export_keying_material` plugs in.

use hmac::{Hmac, Mac};

use super::crypto::{Cipher, CryptoError, DirectionKey, IMPLICIT_IV_LEN};

/// The key method this server speaks; the low 4 bits of byte 4 (§5.1).
pub const KEY_METHOD_2: u8 = 2;
/// Client pre_master length (present only in the client's message, §5.1, pitfall 14).
pub const PRE_MASTER_LEN: usize = 48;
/// Length of each of random1 / random2.
pub const RANDOM_LEN: usize = 32;
/// An options string longer than this (including its NUL) is fatal (`TLS_OPTIONS_LEN`, §5.1).
pub const OPTIONS_STRING_MAX: usize = 512;
/// Username/password buffer of PKCS#11 builds such as Debian's 2.6.14 (`USER_PASS_LEN`, §5.1);
/// longer credentials are an authentication failure, not a protocol error.
pub const USER_PASS_MAX: usize = 4096;
/// Size of the key block (`struct key2`, §6.1).
pub const KEY_BLOCK_LEN: usize = 256;
/// TLS exporter label of the data-channel keys (§6.2, §13: `EXPORT_KEY_DATA_LABEL`).
pub const EKM_LABEL: &str = "EXPORTER-OpenVPN-datakeys";
/// Legacy PRF labels (§6.3): ASCII, no NUL.
pub const PRF_MASTER_LABEL: &[u8] = b"OpenVPN master secret";
pub const PRF_EXPANSION_LABEL: &[u8] = b"OpenVPN key expansion";
/// Session id length (§1.3).
pub use super::packet::SESSION_ID_LEN;

/// Errors in key-method-2 messages. All are fatal for the key state (the peer reconnects), except
/// that unusable credentials are reported through [`ClientKeyMethod2::credentials_invalid`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyMethodError {
    #[error("key-method message truncated in {0}")]
    Truncated(&'static str),
    #[error("unsupported key method {0} (only key-method 2 exists since 2.5)")]
    UnsupportedKeyMethod(u8),
    #[error("options string of {0} bytes exceeds the 512-byte limit")]
    OptionsTooLong(usize),
    #[error("{0} contains a NUL or is too long to encode")]
    Unencodable(&'static str),
}

/// A password or auth-token: never printed, wiped on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Password(\"\")"
        } else {
            "Password(<redacted>)"
        })
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        // Safe wipe: overwrite through a `Vec` we own, then let it drop.
        let mut v = std::mem::take(&mut self.0).into_bytes();
        v.fill(0);
        std::hint::black_box(&v);
    }
}

/// The client's random material (§5.1): pre_master, random1, random2.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeySource {
    pub pre_master: [u8; PRE_MASTER_LEN],
    pub random1: [u8; RANDOM_LEN],
    pub random2: [u8; RANDOM_LEN],
}

impl std::fmt::Debug for ClientKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKeySource(<redacted>)")
    }
}

impl Drop for ClientKeySource {
    fn drop(&mut self) {
        self.pre_master.fill(0);
        std::hint::black_box(&self.pre_master);
    }
}

/// The client's key-method-2 message (§5.1, §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKeyMethod2 {
    pub key_source: ClientKeySource,
    /// The client's options string, e.g. `V4,dev-type tun,…,tls-client` (§5.3, §10).
    pub options: String,
    /// Empty when the client does not use `auth-user-pass` (the field is still present).
    pub username: String,
    pub password: Password,
    /// Raw peer info, `KEY=VALUE` lines; parse with `options::PeerInfo::parse` (§5.5).
    pub peer_info: String,
    /// Username or password exceeded [`USER_PASS_MAX`] or was not UTF-8: both were dropped and
    /// the server must fail authentication (but still finish the exchange, §5.2 step 4).
    pub credentials_invalid: bool,
}

/// Reads one length-prefixed string (§5.1 "String encoding"). `Ok(None)` means the message
/// ended cleanly before this field (old peers omit trailing fields).
fn read_string<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    field: &'static str,
) -> Result<Option<&'a [u8]>, KeyMethodError> {
    if *pos == buf.len() {
        return Ok(None);
    }
    let len_bytes = buf
        .get(*pos..*pos + 2)
        .ok_or(KeyMethodError::Truncated(field))?;
    let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
    let body = buf
        .get(*pos + 2..*pos + 2 + len)
        .ok_or(KeyMethodError::Truncated(field))?;
    *pos += 2 + len;
    // The length includes a terminating NUL, which OpenVPN forces into the last byte; the
    // string is what precedes the first NUL (length 0 and length 1 are both empty).
    let body = body.split_last().map_or(&[][..], |(_, s)| s);
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    Ok(Some(&body[..end]))
}

/// Options and peer info are informational (§10: mismatches only warn; peer info is read
/// leniently), so stray bytes must not kill the key exchange: they become U+FFFD, which the
/// printable-ASCII checks in `options` then reject line by line.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_string(out: &mut Vec<u8>, s: &str, field: &'static str) -> Result<(), KeyMethodError> {
    if s.is_empty() {
        // The empty string is length 0 with no bytes (§5.1).
        out.extend_from_slice(&[0, 0]);
        return Ok(());
    }
    if s.as_bytes().contains(&0) {
        return Err(KeyMethodError::Unencodable(field));
    }
    let len = u16::try_from(s.len() + 1).map_err(|_| KeyMethodError::Unencodable(field))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    Ok(())
}

fn take<const N: usize>(
    buf: &[u8],
    pos: &mut usize,
    field: &'static str,
) -> Result<[u8; N], KeyMethodError> {
    let b = buf
        .get(*pos..*pos + N)
        .ok_or(KeyMethodError::Truncated(field))?;
    *pos += N;
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    Ok(a)
}

fn read_header(buf: &[u8], pos: &mut usize) -> Result<(), KeyMethodError> {
    // Literal zero (4 bytes), skipped as OpenVPN does; then the key-method byte, whose upper
    // bits are unused flags (§5.1, §5.2 step 1).
    let _literal: [u8; 4] = take(buf, pos, "literal")?;
    let [method] = take::<1>(buf, pos, "key method")?;
    if method & 0x0F != KEY_METHOD_2 {
        return Err(KeyMethodError::UnsupportedKeyMethod(method & 0x0F));
    }
    Ok(())
}

fn read_options(buf: &[u8], pos: &mut usize) -> Result<String, KeyMethodError> {
    if *pos == buf.len() {
        return Err(KeyMethodError::Truncated("options string"));
    }
    let start = *pos;
    let s = read_string(buf, pos, "options string")?.unwrap_or_default();
    let wire_len = *pos - start - 2;
    if wire_len > OPTIONS_STRING_MAX {
        return Err(KeyMethodError::OptionsTooLong(wire_len));
    }
    Ok(lossy(s))
}

impl ClientKeyMethod2 {
    /// Parses the client's message from the start of `buf` (all TLS plaintext received so far).
    ///
    /// The message is self-delimiting (§5.6), so this returns it together with the number of
    /// bytes it used; anything after (a PUSH_REQUEST joined by rustls' reader) is left to the
    /// caller. A message may end cleanly after the options, username or password string (older
    /// peers; missing fields are empty). A message cut inside a field is `Truncated`: the client
    /// writes it as one TLS record, so it arrives whole or not at all.
    pub fn parse(buf: &[u8]) -> Result<(Self, usize), KeyMethodError> {
        let mut pos = 0;
        read_header(buf, &mut pos)?;
        let pre_master = take(buf, &mut pos, "pre_master")?;
        let random1 = take(buf, &mut pos, "random1")?;
        let random2 = take(buf, &mut pos, "random2")?;
        let options = read_options(buf, &mut pos)?;
        let user = read_string(buf, &mut pos, "username")?.unwrap_or_default();
        let pass = read_string(buf, &mut pos, "password")?.unwrap_or_default();
        let peer_info = read_string(buf, &mut pos, "peer info")?.unwrap_or_default();
        let creds = if user.len() >= USER_PASS_MAX || pass.len() >= USER_PASS_MAX {
            None
        } else {
            // Credentials are compared, not displayed: non-UTF-8 ones cannot match anything we
            // store, so they are an authentication failure rather than a protocol error.
            std::str::from_utf8(user)
                .ok()
                .zip(std::str::from_utf8(pass).ok())
        };
        let credentials_invalid = creds.is_none();
        let (username, password) = match creds {
            Some((u, p)) => (u.to_owned(), Password::new(p)),
            None => (String::new(), Password::default()),
        };
        Ok((
            ClientKeyMethod2 {
                key_source: ClientKeySource {
                    pre_master,
                    random1,
                    random2,
                },
                options,
                username,
                password,
                peer_info: lossy(peer_info),
                credentials_invalid,
            },
            pos,
        ))
    }

    /// Encodes the message as a 2.6 client does (tests, fuzz seeds, a future client side).
    pub fn to_bytes(&self) -> Result<Vec<u8>, KeyMethodError> {
        let mut out = Vec::with_capacity(128 + self.options.len() + self.peer_info.len());
        out.extend_from_slice(&[0, 0, 0, 0, KEY_METHOD_2]);
        out.extend_from_slice(&self.key_source.pre_master);
        out.extend_from_slice(&self.key_source.random1);
        out.extend_from_slice(&self.key_source.random2);
        if self.options.len() + 1 > OPTIONS_STRING_MAX {
            return Err(KeyMethodError::OptionsTooLong(self.options.len() + 1));
        }
        write_string(&mut out, &self.options, "options string")?;
        write_string(&mut out, &self.username, "username")?;
        write_string(&mut out, self.password.expose(), "password")?;
        write_string(&mut out, &self.peer_info, "peer info")?;
        Ok(out)
    }
}

/// The server's key-method-2 message (§5.1, checklist step 6): no pre_master, our two randoms,
/// our options string, then empty username, password and peer info (pitfall 14).
#[derive(Clone, PartialEq, Eq)]
pub struct ServerKeyMethod2 {
    /// Random even with EKM: the 2.6 server always sends them (§5.1 "Random fields").
    pub random1: [u8; RANDOM_LEN],
    pub random2: [u8; RANDOM_LEN],
    pub options: String,
}

impl std::fmt::Debug for ServerKeyMethod2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeyMethod2")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ServerKeyMethod2 {
    /// Encodes the reply. Write it with a single TLS write so it is alone in its record:
    /// the client discards whatever follows it in the same read (§5.6).
    pub fn to_bytes(&self) -> Result<Vec<u8>, KeyMethodError> {
        if self.options.len() + 1 > OPTIONS_STRING_MAX {
            return Err(KeyMethodError::OptionsTooLong(self.options.len() + 1));
        }
        let mut out = Vec::with_capacity(5 + 2 * RANDOM_LEN + 2 + self.options.len() + 1 + 6);
        out.extend_from_slice(&[0, 0, 0, 0, KEY_METHOD_2]);
        out.extend_from_slice(&self.random1);
        out.extend_from_slice(&self.random2);
        write_string(&mut out, &self.options, "options string")?;
        // Username, password, peer info: all empty; a 2.6 server sends no peer info.
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        Ok(out)
    }

    /// Parses a server's message (the client's view), returning it and the bytes consumed.
    pub fn parse(buf: &[u8]) -> Result<(Self, usize), KeyMethodError> {
        let mut pos = 0;
        read_header(buf, &mut pos)?;
        let random1 = take(buf, &mut pos, "random1")?;
        let random2 = take(buf, &mut pos, "random2")?;
        let options = read_options(buf, &mut pos)?;
        for field in ["username", "password", "peer info"] {
            read_string(buf, &mut pos, field)?;
        }
        Ok((
            ServerKeyMethod2 {
                random1,
                random2,
                options,
            },
            pos,
        ))
    }
}

pub use super::packet::Role;

/// Which `struct key` of the block (§6.1): keys[0] is client→server, keys[1] server→client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDirection {
    ClientToServer = 0,
    ServerToClient = 1,
}

/// The 256-byte key block (`struct key2`): keys[0] = client→server, keys[1] = server→client,
/// each 64 bytes of cipher key then 64 bytes of "hmac" key (§6.1). Wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlock([u8; KEY_BLOCK_LEN]);

impl std::fmt::Debug for KeyBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBlock(<redacted>)")
    }
}

impl Drop for KeyBlock {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// The send and receive keys of one key_id for one side.
#[derive(Debug, Clone)]
pub struct DataKeys {
    pub send: DirectionKey,
    pub recv: DirectionKey,
}

/// Inputs of the legacy derivation (§6.3): the client's random material, the server's two
/// randoms and both 8-byte session ids.
#[derive(Clone, Copy, Debug)]
pub struct PrfInputs<'a> {
    pub client: &'a ClientKeySource,
    pub server_random1: &'a [u8; RANDOM_LEN],
    pub server_random2: &'a [u8; RANDOM_LEN],
    pub client_session_id: &'a [u8; SESSION_ID_LEN],
    pub server_session_id: &'a [u8; SESSION_ID_LEN],
}

impl KeyBlock {
    pub fn from_bytes(bytes: [u8; KEY_BLOCK_LEN]) -> Self {
        KeyBlock(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BLOCK_LEN] {
        &self.0
    }

    /// TLS-EKM derivation (§6.2): 256 bytes from the TLS exporter with label
    /// [`EKM_LABEL`] and **no** context (`None`, not an empty slice: they differ in TLS 1.2).
    ///
    /// `export(output, label, context)` is the key_id's TLS connection's exporter, e.g.
    /// `|out, label, ctx| conn.export_keying_material(out, label, ctx).map(|_| ())` with rustls.
    pub fn from_ekm<E>(
        export: impl FnOnce(&mut [u8], &[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<Self, E> {
        let mut block = KeyBlock([0u8; KEY_BLOCK_LEN]);
        export(&mut block.0, EKM_LABEL.as_bytes(), None)?;
        Ok(block)
    }

    /// Legacy derivation with the TLS 1.0 PRF (§6.3), for peers without IV_PROTO bit 3:
    /// master = PRF(pre_master, "OpenVPN master secret" ‖ c.random1 ‖ s.random1), then
    /// key2 = PRF(master, "OpenVPN key expansion" ‖ c.random2 ‖ s.random2 ‖ c.sid ‖ s.sid).
    pub fn from_prf(inputs: &PrfInputs<'_>) -> Self {
        let mut master = [0u8; PRE_MASTER_LEN];
        tls1_prf(
            &inputs.client.pre_master,
            &[
                PRF_MASTER_LABEL,
                &inputs.client.random1,
                inputs.server_random1,
            ],
            &mut master,
        );
        let mut block = KeyBlock([0u8; KEY_BLOCK_LEN]);
        tls1_prf(
            &master,
            &[
                PRF_EXPANSION_LABEL,
                &inputs.client.random2,
                inputs.server_random2,
                inputs.client_session_id,
                inputs.server_session_id,
            ],
            &mut block.0,
        );
        master.fill(0);
        std::hint::black_box(&master);
        block
    }

    /// The four keys of the block (§6.1): the 64-byte cipher key and 64-byte HMAC key of one
    /// direction. AEAD ciphers use a prefix of the cipher key and the first 8 bytes of the HMAC
    /// key (the implicit IV); see [`Self::data_keys`].
    pub fn key_halves(&self, dir: KeyDirection) -> (&[u8], &[u8]) {
        let i = dir as usize;
        (
            &self.0[i * 128..i * 128 + 64],
            &self.0[i * 128 + 64..i * 128 + 128],
        )
    }

    /// keys[i].cipher (64 bytes).
    fn cipher_half(&self, i: usize) -> &[u8] {
        &self.0[i * 128..i * 128 + 64]
    }

    /// The implicit IV: first 8 bytes of keys[i].hmac (§6.1).
    fn implicit_iv(&self, i: usize) -> [u8; IMPLICIT_IV_LEN] {
        let mut iv = [0u8; IMPLICIT_IV_LEN];
        iv.copy_from_slice(&self.0[i * 128 + 64..i * 128 + 64 + IMPLICIT_IV_LEN]);
        iv
    }

    fn direction(&self, i: usize, cipher: Cipher) -> Result<DirectionKey, CryptoError> {
        DirectionKey::new(cipher, self.cipher_half(i), self.implicit_iv(i))
    }

    /// The data-channel keys for `role`. The TLS server uses key direction INVERSE: it sends
    /// with keys[1] (s2c, bytes 128..) and receives with keys[0] (c2s, bytes 0..) (§6.1,
    /// pitfall 16; tls-crypt uses the opposite convention, which is not this function's job).
    pub fn data_keys(&self, cipher: Cipher, role: Role) -> DataKeys {
        let (send, recv) = match role {
            Role::Server => (1, 0),
            Role::Client => (0, 1),
        };
        // Both halves are 64 bytes, longer than any cipher key, so this cannot fail.
        DataKeys {
            send: self.direction(send, cipher).expect("64-byte key half"),
            recv: self.direction(recv, cipher).expect("64-byte key half"),
        }
    }
}

type HmacMd5 = Hmac<md5::Md5>;
type HmacSha1 = Hmac<sha1::Sha1>;

/// P_hash of RFC 2246 §5, XORed into `out`: A(0) = seed, A(i) = HMAC(A(i-1)), output blocks
/// HMAC(A(i) ‖ seed). The seed is given in parts to avoid concatenating it.
fn p_hash_xor<M: Mac + hmac::digest::KeyInit + Clone>(
    secret: &[u8],
    seed: &[&[u8]],
    out: &mut [u8],
) {
    let keyed = <M as hmac::digest::KeyInit>::new_from_slice(secret)
        .expect("HMAC accepts keys of any length");
    // A(1) = HMAC(seed)
    let mut mac = keyed.clone();
    for part in seed {
        mac.update(part);
    }
    let mut a = mac.finalize().into_bytes();
    for chunk in out.chunks_mut(a.len()) {
        let mut mac = keyed.clone();
        mac.update(&a);
        for part in seed {
            mac.update(part);
        }
        let block = mac.finalize().into_bytes();
        for (o, b) in chunk.iter_mut().zip(block.iter()) {
            *o ^= b;
        }
        let mut mac = keyed.clone();
        mac.update(&a);
        a = mac.finalize().into_bytes();
    }
}

/// The TLS 1.0/1.1 PRF (RFC 2246 §5) as OpenVPN's legacy derivation uses it (§6.3):
/// P_MD5(S1, seed) XOR P_SHA1(S2, seed), S1 = first ⌈L/2⌉ and S2 = last ⌈L/2⌉ bytes of the
/// secret (they overlap by one byte when L is odd). OpenVPN passes label ‖ seeds as the seed.
pub fn tls1_prf(secret: &[u8], seed: &[&[u8]], out: &mut [u8]) {
    out.fill(0);
    let half = secret.len().div_ceil(2);
    p_hash_xor::<HmacMd5>(&secret[..half], seed, out);
    p_hash_xor::<HmacSha1>(&secret[secret.len() - half..], seed, out);
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
