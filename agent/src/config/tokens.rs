//! Validation of the session-token settings in `[auth]` (`token_secret_file`,
//! `token_lifetime_secs`, `token_renewal_secs`, `token_revocation_file`); what uses them is
//! `auth::token` and `auth::revoked`.
use super::errors::err;
use super::ConfigError;

/// The least lifetime: shorter would ask the user again on nearly every reconnect.
const MIN_LIFETIME_SECS: u64 = 60;

impl super::AuthSection {
    /// The revoked tokens' file: `token_revocation_file`, else the secret file's path with
    /// `.revoked` appended (`None` without tokens).
    pub fn token_revocation_path(&self) -> Option<std::path::PathBuf> {
        let secret = self.token_secret_file.as_ref()?;
        Some(self.token_revocation_file.clone().unwrap_or_else(|| {
            let mut p = secret.clone().into_os_string();
            p.push(".revoked");
            p.into()
        }))
    }
}

impl super::EndpointConfig {
    /// The token renewal period: `auth.token_renewal_secs`, else `renegotiate_secs`.
    pub fn token_renewal_secs(&self) -> u64 {
        self.auth
            .token_renewal_secs
            .unwrap_or(u64::from(self.renegotiate_secs))
    }

    pub(super) fn validate_tokens(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        let a = &self.auth;
        let Some(f) = &a.token_secret_file else {
            if a.token_renewal_secs.is_some() {
                errs.push(err(
                    "auth.token_renewal_secs",
                    "set without auth.token_secret_file: add the secret's file to turn session tokens on, or remove it",
                ));
            }
            return errs;
        };
        match std::fs::read_to_string(f) {
            Err(e) => errs.push(err(
                "auth.token_secret_file",
                format!("cannot read {}: {e}", f.display()),
            )),
            Ok(t) if crate::auth::token::first_line(&t).len() < 32 => errs.push(err(
                "auth.token_secret_file",
                format!(
                    "{}: the secret (first line) must have at least 32 characters: write one with `openssl rand -base64 48 > FILE` and copy the file to every gateway that shares sessions",
                    f.display()
                ),
            )),
            Ok(_) => {}
        }
        if a.token_revocation_file
            .as_ref()
            .and_then(|f| f.parent())
            .is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir())
        {
            errs.push(err(
                "auth.token_revocation_file",
                "its directory does not exist: create it, or leave the field out (default: beside the secret file)",
            ));
        }
        if !a.uses_directory() && !a.uses_oidc() {
            errs.push(err(
                "auth.token_secret_file",
                "session tokens replace a password or web login: add \"ldap\" or \"oidc\" to auth.methods, or remove token_secret_file",
            ));
        }
        // A token reconnect reads the user's state and groups with the service account
        // instead of a bind with the password.
        if a.uses_directory() && self.directory.as_ref().is_some_and(|d| d.bind_dn.is_none()) {
            errs.push(err(
                "auth.token_secret_file",
                "a reconnect with a token looks the user up with the directory's service account: set directory.bind_dn and bind_password_file",
            ));
        }
        if a.token_lifetime_secs < MIN_LIFETIME_SECS {
            errs.push(err(
                "auth.token_lifetime_secs",
                format!("must be at least {MIN_LIFETIME_SECS} (seconds after the login)"),
            ));
        }
        match a.token_renewal_secs {
            Some(0) => errs.push(err(
                "auth.token_renewal_secs",
                "must be at least 1 (seconds; default: renegotiate_secs)",
            )),
            // Renewed only when the client renegotiates: a shorter validity would expire
            // tokens between two renegotiations.
            Some(r) if r < u64::from(self.renegotiate_secs) => errs.push(err(
                "auth.token_renewal_secs",
                format!(
                    "{r} is shorter than renegotiate_secs ({}): tokens are renewed at renegotiations, so use at least that",
                    self.renegotiate_secs
                ),
            )),
            _ => {}
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use crate::config::EndpointConfig;

    fn paths(c: &EndpointConfig) -> Vec<String> {
        c.validate_tokens().into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn token_settings_are_checked_with_their_field() {
        let dir = std::env::temp_dir().join(format!("pc-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "too short\n").unwrap();
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", "x".repeat(40))).unwrap();
        let mut c = EndpointConfig::parse(
            "name = \"corp\"\nclient_cidr = \"10.100.0.0/22\"\nlisten = [\"udp://0.0.0.0:1194\"]\n\
             [tls]\ncert = \"s.crt\"\nkey = \"s.key\"\nclient_ca = \"ca.crt\"\n",
        )
        .unwrap();
        assert!(paths(&c).is_empty());
        c.auth.token_renewal_secs = Some(3600);
        assert_eq!(paths(&c), ["auth.token_renewal_secs"]);
        // Certificate only: nothing for a token to replace.
        c.auth.token_secret_file = Some(good.clone());
        assert_eq!(paths(&c), ["auth.token_secret_file"]);
        c.auth.methods = vec!["certificate".into(), "oidc".into()];
        assert!(paths(&c).is_empty(), "{:?}", c.validate_tokens());
        c.auth.token_secret_file = Some(short);
        c.auth.token_lifetime_secs = 10;
        c.auth.token_renewal_secs = Some(1);
        assert_eq!(
            paths(&c),
            [
                "auth.token_secret_file",
                "auth.token_lifetime_secs",
                "auth.token_renewal_secs"
            ]
        );
        c.auth.token_secret_file = Some(dir.join("missing"));
        assert!(c.validate_tokens()[0].message.contains("cannot read"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
