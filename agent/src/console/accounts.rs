//! Local administrator accounts: argon2 password hashes and the optional one-time code.
use std::collections::HashMap;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash};

use super::config::{AdminAccount, Role};
use crate::auth::otp;

/// Hashes `password` with argon2id, the default parameters and a random salt: the PHC string
/// that `[[console.admin]] password_hash` takes.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "the system random source failed".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Why a login was refused (what the audit trail records; the page says only "refused").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginFailure {
    UnknownUser,
    BadPassword,
    BadCode,
}

impl LoginFailure {
    pub fn reason(self) -> &'static str {
        match self {
            LoginFailure::UnknownUser => "unknown_user",
            LoginFailure::BadPassword => "bad_password",
            LoginFailure::BadCode => "bad_one_time_code",
        }
    }
}

/// The accounts of `[console]` and, per account, the last one-time-code step used (a code
/// works once).
pub struct Accounts {
    accounts: Vec<AdminAccount>,
    used_steps: HashMap<String, u64>,
}

impl Accounts {
    pub fn new(accounts: Vec<AdminAccount>) -> Self {
        Self {
            accounts,
            used_steps: HashMap::new(),
        }
    }

    /// The role of `name` when `password` (and `code`, for an account with a TOTP secret)
    /// are right at `unix_secs`.
    pub fn check(
        &mut self,
        name: &str,
        password: &str,
        code: &str,
        unix_secs: u64,
    ) -> Result<Role, LoginFailure> {
        let Some(a) = self.accounts.iter().find(|a| a.name == name) else {
            // Spend the same work as a real check, so timing does not tell names apart.
            let _ = Argon2::default().verify_password(password.as_bytes(), &dummy_hash());
            return Err(LoginFailure::UnknownUser);
        };
        let hash = PasswordHash::new(&a.password_hash).map_err(|_| LoginFailure::BadPassword)?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .map_err(|_| LoginFailure::BadPassword)?;
        if let Some(secret) = &a.totp_secret {
            let step = otp::verify(secret, code, unix_secs).ok_or(LoginFailure::BadCode)?;
            if self.used_steps.get(name).is_some_and(|&used| step <= used) {
                return Err(LoginFailure::BadCode);
            }
            self.used_steps.insert(name.to_owned(), step);
        }
        Ok(a.role)
    }
}

fn dummy_hash() -> PasswordHash<'static> {
    // A fixed, valid argon2id hash of an unguessable password.
    const H: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$\
                     2oP0i4M1HMCF7CZLd2tv7b2Gy7TaOMvyBkBXeIZcg0M";
    PasswordHash::new(H).expect("a valid PHC string")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, pw: &str, totp: Option<&str>) -> AdminAccount {
        AdminAccount {
            name: name.into(),
            password_hash: hash_password(pw).unwrap(),
            role: Role::Operator,
            totp_secret: totp.map(Into::into),
        }
    }

    #[test]
    fn passwords_are_checked_against_their_hash() {
        let mut a = Accounts::new(vec![account("ann", "correct horse", None)]);
        assert_eq!(a.check("ann", "correct horse", "", 0), Ok(Role::Operator));
        assert_eq!(
            a.check("ann", "wrong", "", 0),
            Err(LoginFailure::BadPassword)
        );
        assert_eq!(
            a.check("bob", "correct horse", "", 0),
            Err(LoginFailure::UnknownUser)
        );
        assert!(dummy_hash().to_string().starts_with("$argon2id$"));
    }

    #[test]
    fn a_totp_account_needs_a_fresh_code() {
        let secret = "JBSWY3DPEHPK3PXPJBSWY3DP";
        let mut a = Accounts::new(vec![account("ann", "pw", Some(secret))]);
        let now = 1_700_000_000;
        let key = otp::base32_decode(secret).unwrap();
        let code = format!("{:06}", otp::totp_at(&key, now / 30));
        assert_eq!(a.check("ann", "pw", "", now), Err(LoginFailure::BadCode));
        assert_eq!(a.check("ann", "pw", &code, now), Ok(Role::Operator));
        // The same code again is a replay.
        assert_eq!(a.check("ann", "pw", &code, now), Err(LoginFailure::BadCode));
    }
}
