//! Writing certificates and keys to files, keys readable by their owner only.
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{CertificateAuthority, PkiError, Validity};

/// Writes ca.crt, server.crt/.key, and for each name in `clients` <name>.crt/.key into `dir`
/// (mode 0600 for keys); returns the CA. For tests and the demo. Certificates are valid for
/// 365 days, the CA for 10 years.
pub fn write_demo_pki(
    dir: &Path,
    server_cn: &str,
    clients: &[&str],
) -> Result<CertificateAuthority, PkiError> {
    for name in clients {
        let reason = if name.is_empty() || name.starts_with('.') {
            "it is empty or starts with '.'"
        } else if name.contains('/') || name.contains('\0') {
            "it contains '/' or NUL, but is used as a file name"
        } else if *name == "ca" || *name == "server" {
            "it would overwrite ca.crt or server.crt"
        } else {
            continue;
        };
        return Err(PkiError::InvalidName {
            name: name.to_string(),
            reason,
        });
    }
    let ca = CertificateAuthority::generate(
        &format!("Portcullis CA {server_cn}"),
        Validity::days_from_now(3650),
    )?;
    write_file(&dir.join("ca.crt"), &ca.cert_pem, 0o644)?;
    let server = ca.issue_server(server_cn, Validity::days_from_now(365))?;
    write_file(&dir.join("server.crt"), &server.cert_pem, 0o644)?;
    write_file(&dir.join("server.key"), &server.key_pem, 0o600)?;
    for name in clients {
        let client = ca.issue_client(name, Validity::days_from_now(365))?;
        write_file(&dir.join(format!("{name}.crt")), &client.cert_pem, 0o644)?;
        write_file(&dir.join(format!("{name}.key")), &client.key_pem, 0o600)?;
    }
    Ok(ca)
}

/// Creates or truncates `path` with `mode`; the mode is also set on an existing file, whose
/// permissions `open` would otherwise keep.
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}
