//! `portcullis pki`: a small CA in a directory (`ca.crt`, `ca.key`, issued certificates,
//! `index.json` of serials and revocations, `crl.pem`), for endpoints without a PKI of their
//! own. Keys are written 0600.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::pki::{CertificateAuthority, Validity};

#[derive(Default, Serialize, Deserialize)]
struct Index {
    /// Common name → serials issued for it (hex).
    issued: BTreeMap<String, Vec<String>>,
    /// Revoked serials (hex).
    revoked: Vec<String>,
    crl_number: u64,
    /// Common name → "server" or "client": a re-issue (renewal) keeps the kind, so a client
    /// certificate can never replace the server's files or the other way round.
    #[serde(default)]
    kinds: BTreeMap<String, String>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(s.get(i..i + 2).unwrap_or("zz"), 16)
                .with_context(|| format!("bad serial {s:?} in index.json"))
        })
        .collect()
}

/// Through `pki::write_file`, which also sets the mode of a file that exists already (a key
/// left readable by someone else stays readable otherwise).
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    Ok(crate::pki::write_file(path, text, mode)?)
}

fn load(dir: &Path) -> Result<(CertificateAuthority, Index)> {
    let cert = std::fs::read_to_string(dir.join("ca.crt")).with_context(|| {
        format!(
            "reading {}/ca.crt (run `portcullis pki init --dir {}` first)",
            dir.display(),
            dir.display()
        )
    })?;
    let key = std::fs::read_to_string(dir.join("ca.key"))
        .with_context(|| format!("reading {}/ca.key", dir.display()))?;
    let ca = CertificateAuthority::load(&cert, &key)?;
    let index = match std::fs::read_to_string(dir.join("index.json")) {
        Ok(t) => serde_json::from_str(&t).context("index.json is corrupt")?,
        Err(_) => Index::default(),
    };
    Ok((ca, index))
}

fn save_index(dir: &Path, index: &Index) -> Result<()> {
    write(
        &dir.join("index.json"),
        &serde_json::to_string_pretty(index)?,
        0o600,
    )
}

pub fn init(dir: &Path, name: &str, days: u32) -> Result<()> {
    if dir.join("ca.key").exists() {
        bail!(
            "{}/ca.key exists: refusing to overwrite a CA",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)?;
    let ca = CertificateAuthority::generate(name, Validity::days_from_now(days))?;
    write(&dir.join("ca.crt"), &ca.cert_pem(), 0o644)?;
    write(&dir.join("ca.key"), &ca.key_pem(), 0o600)?;
    save_index(dir, &Index::default())?;
    crl(dir)?;
    println!("CA {name:?} in {}: ca.crt, ca.key, crl.pem", dir.display());
    Ok(())
}

/// The files are named after the CN: it must be a plain file name, and not the CA's own
/// (`--cn ca` would overwrite `ca.crt` and `ca.key`, losing the CA).
fn check_cn(dir: &Path, cn: &str) -> Result<()> {
    if cn.is_empty()
        || cn.starts_with('.')
        || cn.chars().any(|c| c == '/' || c == '\\' || c.is_control())
    {
        bail!("{cn:?} cannot name the certificate files: use a CN without `/`, `\\`, control characters or a leading `.`");
    }
    if cn == "ca" {
        bail!(
            "CN \"ca\" would overwrite the CA's own {}/ca.crt and ca.key: pick another name",
            dir.display()
        );
    }
    Ok(())
}

pub fn issue(dir: &Path, cn: &str, server: bool, days: u32) -> Result<()> {
    check_cn(dir, cn)?;
    let (ca, mut index) = load(dir)?;
    let kind = if server { "server" } else { "client" };
    if let Some(k) = index.kinds.get(cn) {
        if k != kind {
            bail!(
                "{cn:?} already names a {k} certificate in {}: pick another CN (re-issuing keeps the kind)",
                dir.display()
            );
        }
    }
    let v = Validity::days_from_now(days);
    let c = if server {
        ca.issue_server(cn, v)?
    } else {
        ca.issue_client(cn, v)?
    };
    write(&dir.join(format!("{cn}.crt")), &c.cert_pem, 0o644)?;
    write(&dir.join(format!("{cn}.key")), &c.key_pem, 0o600)?;
    index
        .issued
        .entry(cn.to_owned())
        .or_default()
        .push(hex(&c.serial));
    index.kinds.insert(cn.to_owned(), kind.to_owned());
    save_index(dir, &index)?;
    println!(
        "{} certificate for {cn:?}: {}/{cn}.crt, {cn}.key (serial {})",
        if server { "server" } else { "client" },
        dir.display(),
        hex(&c.serial)
    );
    Ok(())
}

pub fn revoke(dir: &Path, cn: &str) -> Result<()> {
    let (_, mut index) = load(dir)?;
    let serials =
        index.issued.get(cn).cloned().with_context(|| {
            format!("no certificate for {cn:?} in {}/index.json", dir.display())
        })?;
    for s in serials {
        if !index.revoked.contains(&s) {
            index.revoked.push(s);
        }
    }
    save_index(dir, &index)?;
    crl(dir)?;
    println!(
        "revoked every certificate of {cn:?}; the running agent picks up crl.pem within seconds"
    );
    Ok(())
}

/// Regenerates `crl.pem` (valid 30 days: re-run before then, e.g. from a timer).
pub fn crl(dir: &Path) -> Result<()> {
    let (ca, mut index) = load(dir)?;
    index.crl_number += 1;
    let serials = index
        .revoked
        .iter()
        .map(|s| unhex(s))
        .collect::<Result<Vec<_>>>()?;
    let now = SystemTime::now();
    let pem = ca.crl(
        &serials,
        now - Duration::from_secs(3600),
        now + Duration::from_secs(30 * 86400),
        index.crl_number,
    )?;
    // Written then renamed, so the agent never reads half a CRL.
    let tmp = dir.join(".crl.pem.tmp");
    write(&tmp, &pem, 0o644)?;
    std::fs::rename(&tmp, dir.join("crl.pem"))?;
    save_index(dir, &index)?;
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
