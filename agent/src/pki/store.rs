//! The built-in PKI's directory (`portcullis pki`, `[tls] pki_dir`): `ca.crt`, `ca.key`, the
//! issued `<cn>.crt`/`<cn>.key`, `index.json` (serials, kinds, revocations) and `crl.pem`.
//! The CLI, the endpoint's admin API (certificates, revoke) and the self-service portal all
//! go through here, under one lock on the directory, so a revoke from the console and an
//! issue from the CLI never lose each other's index update.
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{CertificateAuthority, IssuedCert, Validity};
use crate::admin::server::NO_PKI;
use crate::admin::{CertificateInfo, CertificatesReply, CrlInfo, ErrorReply, RevokeReply};

/// How long a published CRL is valid: it must be republished before (`portcullis pki crl`
/// from a timer, or any revoke).
pub const CRL_DAYS: u64 = 30;

#[derive(Default, Serialize, Deserialize)]
struct Index {
    /// Common name → serials issued for it (hex), oldest first.
    issued: BTreeMap<String, Vec<String>>,
    /// Revoked serials (hex).
    revoked: Vec<String>,
    crl_number: u64,
    /// Common name → "server" or "client": a re-issue (renewal) keeps the kind, so a client
    /// certificate can never replace the server's files or the other way round.
    #[serde(default)]
    kinds: BTreeMap<String, String>,
    /// Serial → notAfter (Unix seconds), recorded at issue (older directories lack it: the
    /// current `<cn>.crt` is read instead).
    #[serde(default)]
    not_after: BTreeMap<String, u64>,
}

pub fn hex(b: &[u8]) -> String {
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

/// Unix seconds as the connection log writes times (UTC), or `-`.
pub fn when(t: Option<u64>) -> String {
    t.map_or("-".into(), |s| {
        crate::connlog::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    })
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A `portcullis pki` directory.
#[derive(Clone, Debug)]
pub struct PkiDir {
    dir: PathBuf,
}

/// The directory's lock, held while the index is read, changed and written.
struct Locked(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl PkiDir {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Locked> {
        let path = self.dir.join(".lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let l = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", path.display()))?;
        Ok(Locked(l))
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> Result<()> {
        Ok(super::write_file(&self.dir.join(name), text, mode)?)
    }

    fn ca(&self) -> Result<CertificateAuthority> {
        let d = self.dir.display();
        let cert = std::fs::read_to_string(self.dir.join("ca.crt")).with_context(|| {
            format!("reading {d}/ca.crt (run `portcullis pki init --dir {d}` first)")
        })?;
        let key = std::fs::read_to_string(self.dir.join("ca.key"))
            .with_context(|| format!("reading {d}/ca.key"))?;
        Ok(CertificateAuthority::load(&cert, &key)?)
    }

    fn index(&self) -> Result<Index> {
        match std::fs::read_to_string(self.dir.join("index.json")) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{}/index.json is corrupt", self.dir.display())),
            Err(_) => Ok(Index::default()),
        }
    }

    fn save(&self, index: &Index) -> Result<()> {
        self.write("index.json", &serde_json::to_string_pretty(index)?, 0o600)
    }

    /// A new CA in the directory, and its first (empty) CRL.
    pub fn init(&self, name: &str, days: u32) -> Result<()> {
        if self.dir.join("ca.key").exists() {
            bail!(
                "{}/ca.key exists: refusing to overwrite a CA",
                self.dir.display()
            );
        }
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let _l = self.lock()?;
        let ca = CertificateAuthority::generate(name, Validity::days_from_now(days))?;
        self.write("ca.crt", &ca.cert_pem(), 0o644)?;
        self.write("ca.key", &ca.key_pem(), 0o600)?;
        let mut index = Index::default();
        self.publish(&ca, &mut index)?;
        self.save(&index)
    }

    /// Issues a certificate for `cn`; with `keep`, writes `<cn>.crt` and `<cn>.key` into the
    /// directory too (the CLI), else hands them only to the caller (the portal: the user's key
    /// is not kept on the gateway).
    pub fn issue(&self, cn: &str, server: bool, days: u32, keep: bool) -> Result<IssuedCert> {
        check_cn(&self.dir, cn)?;
        let _l = self.lock()?;
        let ca = self.ca()?;
        let mut index = self.index()?;
        let kind = if server { "server" } else { "client" };
        if let Some(k) = index.kinds.get(cn) {
            if k != kind {
                bail!(
                    "{cn:?} already names a {k} certificate in {}: pick another CN (re-issuing keeps the kind)",
                    self.dir.display()
                );
            }
        }
        let v = Validity::days_from_now(days);
        let c = if server {
            ca.issue_server(cn, v)?
        } else {
            ca.issue_client(cn, v)?
        };
        if keep {
            self.write(&format!("{cn}.crt"), &c.cert_pem, 0o644)?;
            self.write(&format!("{cn}.key"), &c.key_pem, 0o600)?;
        }
        let serial = hex(&c.serial);
        index
            .issued
            .entry(cn.to_owned())
            .or_default()
            .push(serial.clone());
        index.kinds.insert(cn.to_owned(), kind.to_owned());
        index.not_after.insert(serial, unix(v.not_after));
        self.save(&index)?;
        Ok(c)
    }

    /// Revokes every certificate of `name` and/or the one with `serial`, and republishes the
    /// CRL. An unknown name or serial is an error naming what was looked for; the reply lists
    /// the serials newly revoked (empty when they all were already).
    pub fn revoke(&self, name: Option<&str>, serial: Option<&str>) -> Result<RevokeReply> {
        if name.is_none() && serial.is_none() {
            bail!("say which certificate to revoke: a name (common name) or a serial (hex)");
        }
        let _l = self.lock()?;
        let ca = self.ca()?;
        let mut index = self.index()?;
        let serial = serial.map(|s| s.trim().trim_start_matches("0x").to_ascii_lowercase());
        let mut wanted: Vec<String> = Vec::new();
        if let Some(n) = name {
            let of = index.issued.get(n).with_context(|| {
                format!(
                    "no certificate named {n:?} in {}/index.json",
                    self.dir.display()
                )
            })?;
            wanted.extend(of.iter().cloned());
        }
        if let Some(s) = &serial {
            if !index.issued.values().flatten().any(|x| x == s) {
                bail!(
                    "no certificate with serial {s} in {}/index.json",
                    self.dir.display()
                );
            }
            if !wanted.contains(s) {
                wanted.push(s.clone());
            }
        }
        // Already revoked: nothing new, the CRL is republished all the same (a fresh
        // nextUpdate).
        // The gateway's own certificate is replaced (`pki issue-server`), never revoked
        // from here: a CRL listing it would refuse the endpoint to every client that checks.
        let server = wanted.iter().find_map(|s| {
            index
                .issued
                .iter()
                .find(|(n, ss)| {
                    ss.contains(s) && index.kinds.get(*n).is_some_and(|k| k == "server")
                })
                .map(|(n, _)| n.clone())
        });
        if let Some(n) = server {
            bail!(
                "{n:?} is the server's certificate: it is not revoked here; issue a new one with `portcullis pki issue-server` instead"
            );
        }
        wanted.retain(|s| !index.revoked.contains(s));
        index.revoked.extend(wanted.iter().cloned());
        self.publish(&ca, &mut index)?;
        self.save(&index)?;
        Ok(RevokeReply {
            revoked: wanted,
            crl_number: index.crl_number,
        })
    }

    /// Republishes `crl.pem` (valid [`CRL_DAYS`]).
    pub fn crl(&self) -> Result<u64> {
        let _l = self.lock()?;
        let ca = self.ca()?;
        let mut index = self.index()?;
        self.publish(&ca, &mut index)?;
        self.save(&index)?;
        Ok(index.crl_number)
    }

    fn publish(&self, ca: &CertificateAuthority, index: &mut Index) -> Result<()> {
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
            now + Duration::from_secs(CRL_DAYS * 86400),
            index.crl_number,
        )?;
        // Written then renamed, so the agent never reads half a CRL; the new mtime is what
        // the endpoint's TLS reload notices (and then ends the revoked sessions).
        self.write(".crl.pem.tmp", &pem, 0o644)?;
        std::fs::rename(self.dir.join(".crl.pem.tmp"), self.dir.join("crl.pem"))
            .with_context(|| format!("publishing {}/crl.pem", self.dir.display()))?;
        Ok(())
    }

    /// Every certificate issued (by name, oldest serial first) and the published CRL.
    pub fn list(&self) -> Result<CertificatesReply> {
        let index = self.index()?;
        let mut certificates = Vec::new();
        for (name, serials) in &index.issued {
            let current = read_cert(&self.dir.join(format!("{name}.crt")));
            for s in serials {
                let not_after = index
                    .not_after
                    .get(s)
                    .copied()
                    .or_else(|| current.as_ref().filter(|(cs, _)| cs == s).map(|(_, t)| *t));
                certificates.push(CertificateInfo {
                    name: name.clone(),
                    serial: s.clone(),
                    kind: index
                        .kinds
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| "client".into()),
                    not_after,
                    revoked: index.revoked.contains(s),
                });
            }
        }
        Ok(CertificatesReply {
            certificates,
            crl: read_crl(&self.dir.join("crl.pem")),
        })
    }
}

/// The admin API's `certificates` over `[tls] pki_dir` (`None`: no built-in PKI).
pub fn api_list(dir: Option<&Path>) -> Result<CertificatesReply, ErrorReply> {
    let d = dir.ok_or_else(|| ErrorReply::new(NO_PKI))?;
    PkiDir::new(d)
        .list()
        .map_err(|e| ErrorReply::new(format!("{e:#}")))
}

/// The admin API's `revoke` over `[tls] pki_dir`: exactly one of name and serial.
pub fn api_revoke(
    dir: Option<&Path>,
    name: Option<&str>,
    serial: Option<&str>,
) -> Result<RevokeReply, ErrorReply> {
    let d = dir.ok_or_else(|| ErrorReply::new(NO_PKI))?;
    if name.is_some() == serial.is_some() {
        return Err(ErrorReply::new(
            "revoke takes either a certificate name or a serial (hex), not both and not neither",
        ));
    }
    let r = PkiDir::new(d)
        .revoke(name, serial)
        .map_err(|e| ErrorReply::new(format!("{e:#}")))?;
    if r.revoked.is_empty() {
        return Err(ErrorReply::new(format!(
            "{} already revoked: nothing to do",
            name.or(serial).unwrap_or_default()
        )));
    }
    Ok(r)
}

/// What is wrong with `[tls] pki_dir = dir` next to the endpoint's CRLs and client CA: the
/// directory must hold a CA, that CA must be the client CA, and its `crl.pem` one of the CRLs
/// (else a revocation would never reach the endpoint).
pub fn check_config(dir: &Path, crls: &[PathBuf], client_ca: &Path) -> Vec<String> {
    let d = dir.display();
    let mut out = Vec::new();
    let ca = match std::fs::read_to_string(dir.join("ca.crt")) {
        Ok(t) => t,
        Err(e) => {
            out.push(format!(
                "cannot read {d}/ca.crt ({e}): point it at a `portcullis pki init` directory"
            ));
            return out;
        }
    };
    if !dir.join("ca.key").exists() {
        out.push(format!(
            "{d}/ca.key is missing: the built-in PKI needs its CA key to sign CRLs"
        ));
    }
    let listed = crls.iter().any(|c| {
        c == &dir.join("crl.pem")
            || std::fs::canonicalize(c).ok() == std::fs::canonicalize(dir.join("crl.pem")).ok()
    });
    if !listed {
        out.push(format!(
            "{d}/crl.pem is not in tls.crl: add it there, or revocations from the console and CLI never reach the endpoint"
        ));
    }
    let bundle = std::fs::read_to_string(client_ca).unwrap_or_default();
    if !ca.trim().is_empty() && !bundle.contains(ca.trim()) {
        out.push(format!(
            "{d}/ca.crt is not in tls.client_ca ({}): the PKI must be the one that issues this endpoint's client certificates",
            client_ca.display()
        ));
    }
    out
}

/// The serial (hex) and notAfter of a PEM certificate file.
fn read_cert(path: &Path) -> Option<(String, u64)> {
    let bytes = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).ok()?;
    let cert = pem.parse_x509().ok()?;
    let t = cert.validity().not_after.timestamp();
    Some((hex(cert.raw_serial()), u64::try_from(t).unwrap_or(0)))
}

/// What a published CRL says about itself.
pub fn read_crl(path: &Path) -> Option<CrlInfo> {
    let bytes = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes).ok()?;
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).ok()?;
    let secs = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    Some(CrlInfo {
        number: crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        this_update: secs(crl.last_update()),
        next_update: crl.next_update().map(secs),
        revoked: crl.iter_revoked_certificates().count() as u64,
    })
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

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
