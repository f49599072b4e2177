//! `portcullis fleet`: the one policy of a fleet of gateways, stored in etcd.
use std::path::Path;

use anyhow::{Context, Result};

use crate::endpoint::live::load_and_compile;
use crate::fleet::Keys;

/// `fleet publish`: checks the file exactly as `check` does (a refused file changes
/// nothing), then writes its shared part; every gateway of the endpoint applies it.
pub fn publish(path: &Path) -> Result<i64> {
    // Interfaces may not exist on the machine that publishes: resolved as `check` does.
    let (cfg, _) = load_and_compile(path, &|_| Some(1), None)?;
    let section = cfg.fleet.clone().with_context(|| {
        format!(
            "{} has no [fleet] section: it says which etcd to publish to",
            path.display()
        )
    })?;
    let mut shared = cfg.shared();
    // The CRLs travel with the policy (they are public): a revocation is one publish.
    for (i, path) in cfg.tls.crl.iter().enumerate() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("tls.crl[{i}]: reading {}", path.display()))?;
        if !text.contains("-----BEGIN X509 CRL-----") {
            anyhow::bail!(
                "tls.crl[{i}]: {} is not a PEM CRL: fleet publish stores CRLs as PEM text \
                 (convert it: openssl crl -inform DER -in FILE -out FILE.pem)",
                path.display()
            );
        }
        shared.crl_pem.push(text);
    }
    // The CA bundle too (certificates only: `check` has parsed it; a key in the file is
    // refused, it must never reach etcd).
    let ca = std::fs::read_to_string(&cfg.tls.client_ca)
        .with_context(|| format!("tls.client_ca: reading {}", cfg.tls.client_ca.display()))?;
    if ca.contains("PRIVATE KEY-----") {
        anyhow::bail!(
            "tls.client_ca: {} holds a private key: fleet publish stores the CA bundle in etcd, \
             so it must hold certificates only",
            cfg.tls.client_ca.display()
        );
    }
    shared.ca_pem = Some(ca);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = crate::fleet::connect(&section).await?;
        let revision = crate::fleet::publish(&mut client, &Keys::new(&cfg.name), &shared).await?;
        Ok(revision)
    })
}
