//! Reading and parsing a file, and resolving the paths inside it.
use std::path::{Path, PathBuf};

use super::errors::{err, key_path_at};
use super::{ConfigErrors, EndpointConfig};

/// The file's text, or the error naming it.
pub(super) fn read_file(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![err(
            path.display().to_string(),
            format!("cannot read the configuration file: {e}"),
        )])
    })
}

impl EndpointConfig {
    /// Reads, parses and validates `path`. Relative file paths inside are relative to the
    /// file's directory.
    pub fn load(path: &Path) -> Result<EndpointConfig, ConfigErrors> {
        let cfg = Self::load_unvalidated(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses `path` and resolves the relative paths in it, without [`validate`]
    /// (for the admin socket path of a file being edited, or to collect the file's and the
    /// policy compiler's errors together).
    ///
    /// [`validate`]: EndpointConfig::validate
    pub fn load_unvalidated(path: &Path) -> Result<EndpointConfig, ConfigErrors> {
        let text = read_file(path)?;
        let mut cfg = Self::parse(&text)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Parses without checking files (syntax and types only).
    pub fn parse(text: &str) -> Result<EndpointConfig, ConfigErrors> {
        toml::from_str(text).map_err(|e| {
            let path = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    match key_path_at(text, line) {
                        Some(k) => format!("line {line}, {k}"),
                        None => format!("line {line}"),
                    }
                })
                .unwrap_or_else(|| "file".into());
            ConfigErrors(vec![err(path, e.message().to_owned())])
        })
    }

    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        fix(&mut self.tls.client_ca);
        self.tls.crl.iter_mut().for_each(fix);
        if let Some(p) = &mut self.tls.tls_crypt_key {
            fix(p);
        }
        if let Some(p) = &mut self.tls.pki_dir {
            fix(p);
        }
        if let Some(p) = &mut self.tls.tls_crypt_v2_server_key {
            fix(p);
        }
        if let Some(p) = &mut self.client_connect {
            fix(p);
        }
        if let Some(p) = &mut self.client_connect_ca_file {
            fix(p);
        }
        if let Some(p) = &mut self.auth.token_secret_file {
            fix(p);
        }
        if let Some(p) = &mut self.auth.token_revocation_file {
            fix(p);
        }
        if let Some(d) = &mut self.directory {
            if let Some(p) = &mut d.ca_file {
                fix(p);
            }
            if let Some(p) = &mut d.bind_password_file {
                fix(p);
            }
        }
        if let Some(o) = &mut self.oidc {
            o.resolve_paths(&fix);
        }
        if let Some(f) = &mut self.fleet {
            for p in [&mut f.ca_file, &mut f.cert_file, &mut f.key_file]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        if let Some(p) = &mut self.admin_socket {
            fix(p);
        }
        if let Some(p) = &mut self.logging.connection_log {
            fix(p);
        }
        if let Some(p) = &mut self.logging.flow_log {
            fix(p);
        }
        if let Some(p) = &mut self.logging.admin_audit_log {
            fix(p);
        }
        if let Some(c) = &mut self.console {
            fix(&mut c.tls_cert);
            fix(&mut c.tls_key);
        }
    }
}
