//! The demo's web console (`portcullis demo --keep`): a self-signed certificate for the
//! gateway's underlay address, one operator account with a fresh random password, and the
//! audit trail the console needs; printed as a URL and a login when the demo keeps running.
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use ring::rand::SecureRandom;

/// The console's port on the gateway's underlay address.
pub const PORT: u16 = 8443;
/// The demo's administrator.
pub const ADMIN: &str = "admin";

pub struct DemoConsole {
    pub url: String,
    pub password: String,
    /// The `[logging]` and `[console]` tables for the endpoint file.
    pub toml: String,
}

/// Writes the console's certificate and key into `dir` and returns its settings.
pub fn prepare(dir: &Path, listen: SocketAddr) -> Result<DemoConsole> {
    let ck = rcgen::generate_simple_self_signed(vec![listen.ip().to_string()])
        .context("generating the console's certificate")?;
    let (cert, key) = (dir.join("console.crt"), dir.join("console.key"));
    crate::pki::write_file(&cert, &ck.cert.pem(), 0o644)?;
    crate::pki::write_file(&key, &ck.signing_key.serialize_pem(), 0o600)?;
    let mut b = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no system randomness for the console password"))?;
    let password: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let hash = crate::console::accounts::hash_password(&password)
        .map_err(|e| anyhow::anyhow!("hashing the console password: {e}"))?;
    let d = dir.display();
    let toml = format!(
        "[logging]\nadmin_audit_log = \"{d}/audit.log\"\n\
         [console]\nlisten = \"{listen}\"\ntls_cert = \"{d}/console.crt\"\ntls_key = \"{d}/console.key\"\n\
         [[console.admin]]\nname = \"{ADMIN}\"\npassword_hash = \"{hash}\"\nrole = \"operator\"\n"
    );
    Ok(DemoConsole {
        url: format!("https://{listen}/"),
        password,
        toml,
    })
}
