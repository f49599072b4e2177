//! The lab PKI, written by the product's `pki` module.
use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Read,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use portcullis::{
    openvpn::tls_crypt::StaticKey,
    pki::{self, CertificateAuthority, IssuedCert, Validity},
};

use super::{DEFAULT_CLIENTS, SERVER_CN};

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A lab PKI in a directory, written by `portcullis::pki`: `ca.crt`, `server.crt`/`.key`,
/// `<client>.crt`/`.key`, `tls-crypt.key`. ECDSA P-256 throughout.
pub struct LabPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server: CertKey,
    pub clients: BTreeMap<String, CertKey>,
    pub tls_crypt: PathBuf,
    /// The CA, to issue more certificates or sign CRLs.
    pub authority: CertificateAuthority,
}

impl LabPki {
    /// CA, server (`CN=server`), the [`DEFAULT_CLIENTS`] and a tls-crypt key in `dir`.
    pub fn generate(dir: &Path) -> LabPki {
        Self::with_clients(dir, DEFAULT_CLIENTS)
    }

    /// Like [`LabPki::generate`] with the given client common names.
    pub fn with_clients(dir: &Path, clients: &[&str]) -> LabPki {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let authority = pki::write_demo_pki(dir, SERVER_CN, clients)
            .unwrap_or_else(|e| panic!("lab PKI in {}: {e}", dir.display()));
        let tls_crypt = dir.join("tls-crypt.key");
        write_tls_crypt_key(&tls_crypt);
        LabPki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.crt"),
            server: cert_key(dir, "server"),
            clients: clients
                .iter()
                .map(|&c| (c.to_string(), cert_key(dir, c)))
                .collect(),
            tls_crypt,
            authority,
        }
    }

    /// The certificate and key of client `name` (panics if it was not issued).
    pub fn client(&self, name: &str) -> &CertKey {
        self.clients
            .get(name)
            .unwrap_or_else(|| panic!("no client certificate for {name:?}"))
    }

    /// Issue one more client certificate (say, an expired one) as `<cn>.crt`/`.key`; the
    /// returned [`IssuedCert`] has the serial a CRL needs.
    pub fn issue_client(&mut self, cn: &str, validity: Validity) -> (CertKey, IssuedCert) {
        let issued = self
            .authority
            .issue_client(cn, validity)
            .unwrap_or_else(|e| panic!("issue client {cn:?}: {e}"));
        let ck = cert_key(&self.dir, cn);
        fs::write(&ck.cert, &issued.cert_pem).expect("write client cert");
        write_private(&ck.key, &issued.key_pem);
        self.clients.insert(cn.to_string(), ck.clone());
        (ck, issued)
    }

    /// Write `crl.pem` revoking `serials` (valid from an hour ago for a day) and return its
    /// path, for `crl-verify`.
    pub fn write_crl(&self, serials: &[Vec<u8>], number: u64) -> PathBuf {
        let now = SystemTime::now();
        let pem = self
            .authority
            .crl(
                serials,
                now - Duration::from_secs(3600),
                now + Duration::from_secs(86_400),
                number,
            )
            .unwrap_or_else(|e| panic!("sign CRL: {e}"));
        let path = self.dir.join("crl.pem");
        fs::write(&path, pem).expect("write CRL");
        path
    }
}

fn cert_key(dir: &Path, name: &str) -> CertKey {
    CertKey {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    }
}

/// Write a file only its owner can read (openvpn warns about readable keys).
fn write_private(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A fresh random tls-crypt (static) key, written in the format `openvpn --genkey` uses.
pub fn write_tls_crypt_key(path: &Path) {
    let mut bytes = [0u8; 256];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    write_private(path, &StaticKey::from_bytes(bytes).to_pem());
}
