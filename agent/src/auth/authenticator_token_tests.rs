//! Session tokens sent to the authenticator: they count against the failed-login limits as
//! passwords do.
use super::tests::{request, token_link};
use super::*;
use crate::auth::revoked::Revoked;
use crate::auth::token::{unix_now, Granted, TokenKey};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn with_tokens(per_user: u32, per_source: u32) -> Authenticator {
    let cfg: crate::config::DirectoryConfig = toml::from_str(
        r#"
        url = "ldap://192.0.2.1:389"
        user_dn_template = "uid={username},dc=example,dc=org"
        "#,
    )
    .unwrap();
    Authenticator {
        // 192.0.2.1 is never contacted: every token below is refused before.
        directory: Some(Arc::new(Directory::new(&cfg).unwrap())),
        username_must_match_cn: false,
        hook: None,
        local_groups: Arc::new(|_: &str| Vec::new()),
        per_user: Arc::new(Mutex::new(FailureLimiter::new(
            per_user,
            Duration::from_secs(300),
        ))),
        per_source: Arc::new(Mutex::new(FailureLimiter::new(
            per_source,
            Duration::from_secs(300),
        ))),
        grants: Arc::new(Grants::default()),
        otp: false,
        otp_used: Arc::default(),
        logins: Arc::default(),
        renegotiation_wait: RENEGOTIATION_WAIT,
        sso: None,
        tokens: Some(Arc::new(SessionTokens::new(
            TokenKey::new(SECRET, 3600, 600),
            Revoked::load(None, unix_now()).unwrap(),
        ))),
    }
}

/// A token "guessed" (any string with the token prefix), for `user`.
fn guess(user: &str, i: u32) -> AuthRequest {
    request(
        "x",
        user,
        &format!("SESS_ID_AT_{}", "A".repeat(80 + (i as usize % 3))),
    )
}

fn code(a: &Authenticator, req: &AuthRequest) -> Option<FailureCode> {
    a.decide_pending(token_link(), req, &Pending::detached(token_link()))
        .err()
        .map(|r| r.code)
}

/// Refused tokens spend the user's failed-login allowance: past it, even a valid token is
/// refused with `rate_limited` (a brute force of tokens gets no answer from the HMAC).
#[test]
fn refused_tokens_count_against_the_users_limit() {
    let a = with_tokens(3, 100);
    for i in 0..3 {
        assert_eq!(
            code(&a, &guess("alice", i)),
            Some(FailureCode::TokenInvalid),
            "guess {i}"
        );
    }
    assert_eq!(code(&a, &guess("alice", 3)), Some(FailureCode::RateLimited));
    let key = TokenKey::new(SECRET, 3600, 600);
    let granted = Granted {
        kind: crate::auth::token::Kind::Directory,
        user: "alice".into(),
        groups: Vec::new(),
    };
    let now = unix_now();
    let (valid, _) = key
        .mint("alice", key.new_session_id(), now, now, &granted)
        .unwrap();
    assert_eq!(
        code(&a, &request("x", "alice", &valid)),
        Some(FailureCode::RateLimited)
    );
    // Another user is not held up by alice's guesses.
    assert_eq!(code(&a, &guess("bob", 0)), Some(FailureCode::TokenInvalid));
}

/// Tokens tried for many user names from one source spend the source's allowance.
#[test]
fn refused_tokens_count_against_the_sources_limit() {
    let a = with_tokens(100, 4);
    for i in 0..4 {
        assert_eq!(
            code(&a, &guess(&format!("user{i}"), i)),
            Some(FailureCode::TokenInvalid)
        );
    }
    assert_eq!(code(&a, &guess("user9", 9)), Some(FailureCode::RateLimited));
}
