//! The self-service portal's sign-in: a user proves who they are with their directory
//! password (and one-time code when the endpoint asks one) to download their own profile.
//! It is the VPN login's directory check ([`Authenticator::directory_login`]), with the same
//! failed-login limits and one-time-code replay guard, so the portal is no way around them.
use std::net::IpAddr;

use super::authenticator::{Authenticator, Credentials};
use crate::openvpn::verdict::{FailureCode, Refusal};

/// Who signed in to the portal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalUser {
    /// The directory user name as typed (the name of their certificate, if one is issued).
    pub username: String,
    pub groups: Vec<String>,
}

impl Authenticator {
    /// Checks a portal sign-in from `source`. Blocking (the directory is asked): call it
    /// off the async workers.
    pub fn portal_login(
        &self,
        user: &str,
        password: &str,
        code: &str,
        source: IpAddr,
    ) -> Result<PortalUser, Refusal> {
        let Some(dir) = &self.directory else {
            return Err(Refusal::new(
                FailureCode::InvalidCredentials,
                "this endpoint signs no one in with a directory password",
            ));
        };
        let link = format!("portal {source}");
        let g = self.directory_login(
            dir,
            &link,
            user,
            None,
            source,
            Credentials::Portal { password, code },
        )?;
        Ok(PortalUser {
            username: g.username,
            groups: g.groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::authenticator::tests::{fake_ldap, service_authenticator};
    use crate::auth::otp;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 9));

    #[test]
    fn the_portal_checks_the_password_against_the_directory() {
        let f = fake_ldap("uid=alice,dc=x", None, Duration::ZERO);
        let a = service_authenticator(&f, 5, false);
        let u = a.portal_login("alice", "right", "", SOURCE).unwrap();
        assert_eq!(u.username, "alice");
        let e = a.portal_login("alice", "wrong", "", SOURCE).unwrap_err();
        assert_eq!(e.code, FailureCode::InvalidCredentials);
        let e = a.portal_login(" alice", "right", "", SOURCE).unwrap_err();
        assert!(e.message.contains("spaces"), "{}", e.message);
    }

    /// The portal and the VPN share one limit: guesses in the portal use up the user's
    /// tokens, and the limit refuses before the directory is asked.
    #[test]
    fn portal_guesses_count_against_the_login_limit() {
        let f = fake_ldap("uid=bob,dc=x", None, Duration::ZERO);
        let a = service_authenticator(&f, 2, false);
        for _ in 0..2 {
            let e = a.portal_login("bob", "guess", "", SOURCE).unwrap_err();
            assert_eq!(e.code, FailureCode::InvalidCredentials);
        }
        let e = a.portal_login("bob", "right", "", SOURCE).unwrap_err();
        assert_eq!(e.code, FailureCode::RateLimited);
        assert_eq!(f.user_binds.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn with_totp_the_code_is_required_and_works_once() {
        const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        let f = fake_ldap("uid=carol,dc=x", Some(SECRET), Duration::ZERO);
        let a = service_authenticator(&f, 5, true);
        let e = a.portal_login("carol", "right", " ", SOURCE).unwrap_err();
        assert_eq!(e.code, FailureCode::OneTimeCode);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let secret = otp::base32_decode(SECRET).unwrap();
        let code = format!("{:06}", otp::totp_at(&secret, now / otp::STEP_SECS));
        let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(a.portal_login("carol", "right", &wrong, SOURCE).is_err());
        assert!(a.portal_login("carol", "right", &code, SOURCE).is_ok());
        assert!(
            a.portal_login("carol", "right", &code, SOURCE).is_err(),
            "a code works once"
        );
    }
}
