//! One-time codes for OpenVPN's static challenge: the client's profile has
//! `static-challenge "<text>" 1`, the user types a code, and the client sends the password as
//! `SCRV1:<base64 password>:<base64 response>` (openvpn-protocol.md §5.2). The built-in
//! verifier is TOTP (RFC 6238: HMAC-SHA1, 30 s steps, 6 digits, one step of clock skew either
//! way) against a base32 secret read from a directory attribute.
use ring::hmac;

pub const STEP_SECS: u64 = 30;
const DIGITS: u32 = 6;
/// Steps of clock skew accepted on either side.
const SKEW: u64 = 1;

/// Splits `SCRV1:<b64 password>:<b64 response>`; `None` if the password is not in that form.
pub fn parse_scrv1(password: &str) -> Option<(String, String)> {
    let rest = password.strip_prefix("SCRV1:")?;
    let (p, r) = rest.split_once(':')?;
    let p = String::from_utf8(base64_decode(p)?).ok()?;
    let r = String::from_utf8(base64_decode(r)?).ok()?;
    Some((p, r))
}

/// The TOTP code of `secret` for time step `step`.
pub fn totp_at(secret: &[u8], step: u64) -> u32 {
    // RFC 4226's HOTP with the step as the counter; SHA-1 is what authenticator apps use.
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &step.to_be_bytes());
    let h = mac.as_ref();
    let off = usize::from(h[h.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
    bin % 10u32.pow(DIGITS)
}

/// The step at which `code` is valid for `secret` around `unix_secs` (±[`SKEW`] steps), if
/// any. Callers refuse a step already used by the same user (a code works once).
pub fn verify(secret_b32: &str, code: &str, unix_secs: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let secret = base32_decode(secret_b32)?;
    if secret.is_empty() {
        return None;
    }
    let now = unix_secs / STEP_SECS;
    // XOR instead of ==: no early exit that depends on which digits match.
    (now.saturating_sub(SKEW)..=now + SKEW).find(|&s| totp_at(&secret, s) ^ want == 0)
}

/// RFC 4648 base32 (authenticator-app secrets): case-insensitive, spaces and padding ignored.
pub fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u64, 0u32);
    for c in s.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let v = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => return None,
        };
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (what the OpenVPN client writes in SCRV1).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut buf, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buf = (buf << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 with padding (tests and tools that build SCRV1 strings).
pub fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B (SHA-1 seed), 8 digits there; the last 6 digits here.
        let seed = b"12345678901234567890";
        for (t, code8) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(totp_at(seed, t / STEP_SECS), code8 % 1_000_000, "t={t}");
        }
    }

    #[test]
    fn verify_accepts_one_step_of_skew_only() {
        // base32 of "12345678901234567890".
        let b32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        assert_eq!(base32_decode(b32).unwrap(), b"12345678901234567890");
        let t = 1111111109;
        let code = format!("{:06}", totp_at(b"12345678901234567890", t / STEP_SECS));
        assert_eq!(verify(b32, &code, t), Some(t / STEP_SECS));
        assert!(verify(b32, &code, t + STEP_SECS).is_some());
        assert!(verify(b32, &code, t + 3 * STEP_SECS).is_none());
        assert!(verify(b32, "12345", t).is_none());
        assert!(verify(b32, "abcdef", t).is_none());
        assert!(verify("not base32!", &code, t).is_none());
    }

    #[test]
    fn scrv1_round_trip() {
        let pw = format!(
            "SCRV1:{}:{}",
            base64_encode(b"secret:with:colons"),
            base64_encode(b"123456")
        );
        assert_eq!(
            parse_scrv1(&pw),
            Some(("secret:with:colons".into(), "123456".into()))
        );
        assert_eq!(parse_scrv1("plain"), None);
        assert_eq!(parse_scrv1("SCRV1:%%%:AAAA"), None);
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).unwrap(),
                s.as_bytes()
            );
        }
        // RFC 4648 vectors (padding for every remainder).
        for (raw, enc) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw), enc);
        }
    }
}
