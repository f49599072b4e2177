//! `portcullis pki`: a small CA in a directory (`ca.crt`, `ca.key`, issued certificates,
//! `index.json` of serials and revocations, `crl.pem`), for endpoints without a PKI of their
//! own. Keys are written 0600.
use std::path::Path;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};

use crate::pki::store::{hex, PkiDir};

fn dir(d: &Path) -> PkiDir {
    PkiDir::new(d)
}

/// Through `pki::write_file`, which also sets the mode of a file that exists already (a key
/// left readable by someone else stays readable otherwise).
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    Ok(crate::pki::write_file(path, text, mode)?)
}

pub fn init(d: &Path, name: &str, days: u32) -> Result<()> {
    dir(d).init(name, days)?;
    println!("CA {name:?} in {}: ca.crt, ca.key, crl.pem", d.display());
    Ok(())
}

pub fn issue(d: &Path, cn: &str, server: bool, days: u32) -> Result<()> {
    let c = dir(d).issue(cn, server, days, true)?;
    println!(
        "{} certificate for {cn:?}: {}/{cn}.crt, {cn}.key (serial {})",
        if server { "server" } else { "client" },
        d.display(),
        hex(&c.serial)
    );
    Ok(())
}

/// Offline, on the directory (no agent needed); `portcullis certificates revoke` asks the
/// running agent instead, which also audits it.
pub fn revoke(d: &Path, cn: &str) -> Result<()> {
    let r = dir(d).revoke(Some(cn), None)?;
    if r.revoked.is_empty() {
        println!("every certificate of {cn:?} was already revoked; crl.pem republished");
    } else {
        println!(
            "revoked every certificate of {cn:?} ({}); the running agent picks up crl.pem within seconds",
            r.revoked.join(", ")
        );
    }
    Ok(())
}

/// Regenerates `crl.pem` (valid 30 days: re-run before then, e.g. from a timer).
pub fn crl(d: &Path) -> Result<()> {
    dir(d).crl()?;
    Ok(())
}

/// `pki tls-crypt-v2-server`: a new tls-crypt-v2 server key at `out` (0600); refuses to
/// overwrite one (every client key wrapped under it would stop working).
pub fn tls_crypt_v2_server(out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "{} exists: refusing to replace a tls-crypt-v2 server key (its client keys would all stop working)",
            out.display()
        );
    }
    let key = crate::openvpn::tls_crypt_v2::ServerKey::generate(&ring::rand::SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    write(out, &key.to_pem(), 0o600)
}

/// A new client key wrapped under the server key in `server_key`, with the current time as
/// its metadata (what `tls.tls_crypt_v2_max_age_days` checks), as PEM.
pub fn tls_crypt_v2_client_pem(server_key: &Path) -> Result<String> {
    let text = std::fs::read_to_string(server_key)
        .with_context(|| format!("reading {}", server_key.display()))?;
    let key = crate::openvpn::tls_crypt_v2::ServerKey::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", server_key.display()))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let client = key
        .new_client_key(&ring::rand::SystemRandom::new(), now)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(client.to_pem())
}

/// `pki tls-crypt-v2-client`: a new client key at `out` (0600).
pub fn tls_crypt_v2_client(server_key: &Path, out: &Path) -> Result<()> {
    write(out, &tls_crypt_v2_client_pem(server_key)?, 0o600)
}
