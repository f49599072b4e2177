//! The authenticator against a fake LDAP server on loopback.
use super::*;
use crate::auth::MAX_LOGINS_IN_FLIGHT;

fn authenticator(otp: bool) -> Authenticator {
    // 192.0.2.1 (TEST-NET-1) is never contacted: every case below is decided first.
    let cfg: crate::config::DirectoryConfig = toml::from_str(
        r#"
        url = "ldap://192.0.2.1:389"
        user_dn_template = "uid={username},dc=example,dc=org"
        "#,
    )
    .unwrap();
    Authenticator {
        directory: Some(Arc::new(Directory::new(&cfg).unwrap())),
        username_must_match_cn: true,
        hook: None,
        local_groups: Arc::new(|_: &str| Vec::new()),
        per_user: Arc::new(Mutex::new(FailureLimiter::new(2, Duration::from_secs(60)))),
        per_source: Arc::new(Mutex::new(FailureLimiter::new(10, Duration::from_secs(60)))),
        grants: Arc::new(Grants::default()),
        otp,
        otp_used: Arc::default(),
        logins: Arc::default(),
        renegotiation_wait: RENEGOTIATION_WAIT,
        sso: None,
        tokens: None,
    }
}

pub(crate) fn request(cn: &str, user: &str, password: &str) -> AuthRequest {
    use crate::openvpn::{crypto::Cipher, keys::Password, options::PeerInfo, packet::KeyId};
    AuthRequest {
        session: 1,
        key_id: KeyId::ZERO,
        initial: true,
        identity: crate::openvpn::tls::ClientIdentity {
            common_name: cn.into(),
            serial_hex: "01".into(),
            not_after: std::time::SystemTime::now(),
            issuer: "CN=test".into(),
        },
        username: user.into(),
        password: Password::new(password),
        peer_info: PeerInfo::parse("IV_VER=2.6.14\n"),
        cipher: Cipher::Aes256Gcm,
    }
}

fn link() -> Link {
    token_link()
}

pub(crate) fn token_link() -> Link {
    Link::Udp {
        listener: 0,
        addr: "192.0.2.50:4000".parse().unwrap(),
    }
}

#[test]
fn decisions_made_before_the_directory_is_asked() {
    let a = authenticator(false);
    assert_eq!(
        a.decide(link(), &request("alice", "bob", "pw")),
        Err(Refusal::new(
            FailureCode::UsernameMismatch,
            "username does not match the certificate"
        ))
    );
    assert_eq!(
        a.decide(link(), &request("alice", "alice", "")),
        Err(Refusal::new(
            FailureCode::InvalidCredentials,
            "invalid username or password"
        ))
    );
    // Used-up tokens refuse before any bind, even with the right password.
    let now = Instant::now();
    for _ in 0..2 {
        a.per_user.lock().unwrap().failed("user:alice", now);
    }
    assert_eq!(
        a.decide(link(), &request("alice", "alice", "right")),
        Err(Refusal::new(
            FailureCode::RateLimited,
            "too many failed logins, try again later"
        ))
    );
    let a = authenticator(true);
    assert_eq!(
        a.decide(link(), &request("alice", "alice", "no-challenge-response")),
        Err(Refusal::new(
            FailureCode::OneTimeCode,
            "one-time code required"
        ))
    );
    let held: Vec<_> = (0..MAX_LOGINS_IN_FLIGHT)
        .map(|_| a.logins.try_take().unwrap())
        .collect();
    assert_eq!(
        a.decide(link(), &request("alice", "alice", "pw")),
        Err(Refusal::temporary(
            FailureCode::DirectoryBusy,
            "directory busy, try again later"
        ))
    );
    drop(held);
    assert_eq!(a.logins.busy(), 0, "the refused login holds no slot");
    assert!(
        a.grants.pending.lock().unwrap().is_empty(),
        "no grant for a refusal"
    );
}

/// Renegotiations are re-checked by the directory only: no rate limit, no name match,
/// no hook, no grant; an empty password is refused before any bind, an unreachable
/// directory keeps the session.
#[test]
fn renegotiations_recheck_only_the_password() {
    let renegotiation = |cn: &str, user: &str, pw: &str| AuthRequest {
        initial: false,
        key_id: crate::openvpn::packet::KeyId::ZERO.next(),
        ..request(cn, user, pw)
    };
    let a = authenticator(false);
    let now = Instant::now();
    for _ in 0..2 {
        a.per_user.lock().unwrap().failed("user:alice", now);
    }
    assert_eq!(
        a.decide(link(), &renegotiation("alice", "alice", "")),
        Err(Refusal::new(
            FailureCode::InvalidCredentials,
            "invalid username or password"
        )),
        "an empty password on a renegotiation ends the session"
    );
    assert_eq!(
        a.decide(link(), &renegotiation("alice", "bob", "")),
        Err(Refusal::new(
            FailureCode::InvalidCredentials,
            "invalid username or password"
        )),
        "no username_must_match_cn check on a renegotiation (the session holds the name)"
    );
    // Nothing listens on 127.0.0.1:1: the directory is unavailable, the session stays.
    let cfg: crate::config::DirectoryConfig = toml::from_str(
        r#"
        url = "ldap://127.0.0.1:1"
        user_dn_template = "uid={username},dc=example,dc=org"
        connect_timeout_secs = 1
        timeout_secs = 1
        "#,
    )
    .unwrap();
    let a = Authenticator {
        directory: Some(Arc::new(Directory::new(&cfg).unwrap())),
        renegotiation_wait: Duration::from_millis(300),
        sso: None,
        tokens: None,
        ..authenticator(false)
    };
    assert_eq!(
        a.decide(link(), &renegotiation("alice", "alice", "pw")),
        Ok(())
    );
    // With every directory slot taken, a renegotiation is never waved through unchecked: it
    // waits for a slot (then asks the directory, here unavailable: the session stays), or
    // is refused for now when none comes free in time.
    let held: Vec<_> = (0..MAX_LOGINS_IN_FLIGHT)
        .map(|_| a.logins.try_take().unwrap())
        .collect();
    let t0 = Instant::now();
    assert_eq!(
        a.decide(link(), &renegotiation("alice", "alice", "pw")),
        Err(Refusal::temporary(
            FailureCode::DirectoryBusy,
            "directory busy, try again later"
        ))
    );
    assert!(t0.elapsed() >= Duration::from_millis(300), "it waited");
    std::thread::scope(|sc| {
        sc.spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        assert_eq!(
            a.decide(link(), &renegotiation("alice", "alice", "pw")),
            Ok(())
        );
    });
    assert_eq!(a.logins.busy(), 0, "every slot is given back");
    let otp = authenticator(true);
    assert_eq!(
        otp.decide(
            link(),
            &renegotiation("alice", "alice", "no-challenge-response")
        ),
        Err(Refusal::new(
            FailureCode::OneTimeCode,
            "one-time code required"
        ))
    );
    assert!(a.grants.pending.lock().unwrap().is_empty(), "no grant");
    let none = Authenticator {
        directory: None,
        ..authenticator(false)
    };
    assert_eq!(
        none.decide(link(), &renegotiation("alice", "bob", "")),
        Ok(())
    );
}

/// A minimal LDAP server on 127.0.0.1 (BER by hand): every search finds the one entry
/// `dn` (with `pcTotpSecret` = `totp` when set), the service account and `right` passwords
/// bind, any other password is invalidCredentials after `delay`. Counts the user binds.
pub(crate) struct FakeLdap {
    pub(crate) url: String,
    pub(crate) user_binds: Arc<std::sync::atomic::AtomicUsize>,
}

fn ber(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 128 {
        v.push(n as u8);
    } else {
        v.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    v.extend_from_slice(content);
    v
}

/// Reads one TLV: (tag, content); `None` at the end.
fn read_tlv(r: &mut impl std::io::Read) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).ok()?;
    let mut len = usize::from(h[1]);
    if len >= 0x80 {
        let mut b = vec![0u8; len & 0x7f];
        r.read_exact(&mut b).ok()?;
        len = b.iter().fold(0, |a, &x| (a << 8) | usize::from(x));
    }
    let mut c = vec![0u8; len];
    r.read_exact(&mut c).ok()?;
    Some((h[0], c))
}

pub(crate) fn fake_ldap(dn: &'static str, totp: Option<&'static str>, delay: Duration) -> FakeLdap {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ldap://{}", l.local_addr().unwrap());
    let user_binds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = user_binds.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let count = count.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                while let Some((_, msg)) = read_tlv(&mut s) {
                    let mut m = &msg[..];
                    let Some((_, id)) = read_tlv(&mut m) else {
                        break;
                    };
                    let Some((op, body)) = read_tlv(&mut m) else {
                        break;
                    };
                    let reply = |op: u8, content: &[u8]| {
                        let mut c = ber(0x02, &id);
                        c.extend(ber(op, content));
                        ber(0x30, &c)
                    };
                    let done =
                        |rc: u8| [vec![0x0a, 1, rc], ber(0x04, b""), ber(0x04, b"")].concat();
                    match op {
                        0x60 => {
                            let mut b = &body[..];
                            let _version = read_tlv(&mut b);
                            let name = read_tlv(&mut b).map(|t| t.1).unwrap_or_default();
                            let pw = read_tlv(&mut b).map(|t| t.1).unwrap_or_default();
                            let rc = if name.starts_with(b"cn=svc") || pw == b"right" {
                                0
                            } else {
                                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                std::thread::sleep(delay);
                                49
                            };
                            let _ = s.write_all(&reply(0x61, &done(rc)));
                        }
                        0x63 => {
                            let mut attrs = Vec::new();
                            if let Some(t) = totp {
                                let vals = ber(0x31, &ber(0x04, t.as_bytes()));
                                attrs = ber(0x30, &[ber(0x04, b"pcTotpSecret"), vals].concat());
                            }
                            let entry = [ber(0x04, dn.as_bytes()), ber(0x30, &attrs)].concat();
                            let _ = s.write_all(&reply(0x64, &entry));
                            let _ = s.write_all(&reply(0x65, &done(0)));
                        }
                        _ => break,
                    }
                }
            });
        }
    });
    FakeLdap { url, user_binds }
}

pub(crate) fn service_authenticator(f: &FakeLdap, per_user: u32, otp: bool) -> Authenticator {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pw = std::env::temp_dir().join(format!("pc-auth-svc-{}-{n}", std::process::id()));
    std::fs::write(&pw, "svc\n").unwrap();
    let mut cfg = format!(
        "url = \"{}\"\nbind_dn = \"cn=svc\"\nbind_password_file = \"{}\"\nuser_base = \"dc=x\"\ntimeout_secs = 5\n",
        f.url,
        pw.display()
    );
    if otp {
        cfg.push_str("totp_secret_attribute = \"pcTotpSecret\"\n");
    }
    let cfg: crate::config::DirectoryConfig = toml::from_str(&cfg).unwrap();
    let mut a = authenticator(otp);
    a.directory = Some(Arc::new(Directory::new(&cfg).unwrap()));
    // Read by Directory::new.
    let _ = std::fs::remove_file(&pw);
    a.username_must_match_cn = false;
    a.per_user = Arc::new(Mutex::new(FailureLimiter::new(
        per_user,
        Duration::from_secs(300),
    )));
    a.per_source = Arc::new(Mutex::new(FailureLimiter::new(
        100,
        Duration::from_secs(300),
    )));
    a
}

#[test]
fn parallel_guesses_cannot_all_pass_the_limit() {
    let f = fake_ldap("uid=alice,dc=x", None, Duration::from_millis(300));
    let a = Arc::new(service_authenticator(&f, 2, false));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let a = a.clone();
            std::thread::spawn(move || {
                a.decide(link(), &request("x", "alice", &format!("guess{i}")))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let limited = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .err()
                .is_some_and(|e| e.message.contains("too many"))
        })
        .count();
    assert_eq!(
        f.user_binds.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "{results:?}"
    );
    assert_eq!(limited, 6, "{results:?}");
    // A success gives its tokens back.
    let a = service_authenticator(&f, 2, false);
    for _ in 0..5 {
        assert_eq!(a.decide(link(), &request("x", "alice", "right")), Ok(()));
    }
}

#[test]
fn spellings_of_one_entry_share_its_limit_and_replay_guard() {
    // Every name the directory resolves to the same entry (as `alice` and `ａｌｉｃｅ` do
    // in a directory that applies NFKC) shares the entry's bucket.
    let f = fake_ldap("uid=alice,dc=x", None, Duration::ZERO);
    let a = service_authenticator(&f, 2, false);
    for name in ["alice", "Alice2"] {
        assert_eq!(
            a.decide(link(), &request("x", name, "wrong"))
                .map_err(|r| r.message),
            Err("invalid username or password".into())
        );
    }
    assert_eq!(
        a.decide(link(), &request("x", "ａｌｉｃｅ", "wrong"))
            .map_err(|r| r.message),
        Err("too many failed logins, try again later".into())
    );
    assert_eq!(f.user_binds.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Spaces around the name are refused before anything is counted.
    for name in [" alice", "alice ", "alice\t", "al\u{7}ice"] {
        assert_eq!(
            a.decide(link(), &request("x", name, "wrong"))
                .map_err(|r| r.message),
            Err("user name with leading or trailing spaces or control characters".into())
        );
    }
    // A code used once does not work again under another spelling of the same entry.
    const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    let f = fake_ldap("uid=alice,dc=x", Some(SECRET), Duration::ZERO);
    let a = service_authenticator(&f, 5, true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let secret = crate::auth::otp::base32_decode(SECRET).unwrap();
    let code = format!(
        "{:06}",
        crate::auth::otp::totp_at(&secret, now / crate::auth::otp::STEP_SECS)
    );
    let scrv1 = |p: &str, c: &str| {
        format!(
            "SCRV1:{}:{}",
            crate::auth::otp::base64_encode(p.as_bytes()),
            crate::auth::otp::base64_encode(c.as_bytes())
        )
    };
    assert_eq!(
        a.decide(link(), &request("x", "alice", &scrv1("right", &code))),
        Ok(())
    );
    assert_eq!(
        a.decide(link(), &request("x", "ALICE2", &scrv1("right", &code)))
            .map_err(|r| r.message),
        Err("invalid username or password".into()),
        "a replayed code is refused with the same message as a wrong password"
    );
}
