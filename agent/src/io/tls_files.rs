//! The TLS identity's files: read into a [`TlsContext`] (the sans-IO part in
//! `openvpn::tls`), and reloaded when they change (a CRL republished by the CA, a renewed
//! server certificate).
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::openvpn::env::WallClock;
use crate::openvpn::session::TlsProvider;
use crate::openvpn::tls::{ClientIdentity, Input, Inputs, TlsContext, TlsError, TlsOptions};

/// The files of a TLS identity, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM bundle of the CAs that issue client certificates.
    pub ca: PathBuf,
    /// PEM server certificate, optionally followed by its intermediates.
    pub cert: PathBuf,
    /// PEM server key: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    pub key: PathBuf,
    /// CRL files, PEM (one or more `X509 CRL` blocks) or DER.
    pub crls: Vec<PathBuf>,
}

fn read(what: &'static str, path: &Path) -> Result<Input, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Input {
        path: path.to_path_buf(),
        bytes,
    })
}

/// Reads and checks all files; nothing is half-applied on error.
pub fn load(files: &TlsFiles, opts: &TlsOptions, clock: WallClock) -> Result<TlsContext, TlsError> {
    load_with(files, &PublishedTls::default(), opts, clock)
}

/// What a fleet published of the TLS material (PEM text), used instead of the files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishedTls {
    /// The CA bundle that issues client certificates, instead of the `ca` file.
    pub ca: Option<String>,
    /// The CRLs, instead of the CRL files.
    pub crls: Option<Vec<String>>,
}

/// Like [`load`], with what a fleet published in place of the files it replaces.
fn load_with(
    files: &TlsFiles,
    published: &PublishedTls,
    opts: &TlsOptions,
    clock: WallClock,
) -> Result<TlsContext, TlsError> {
    let crls = match published.crls.as_deref() {
        Some(pems) => pems
            .iter()
            .enumerate()
            .map(|(i, pem)| Input {
                path: PathBuf::from(format!("<published crl #{i}>")),
                bytes: pem.as_bytes().to_vec(),
            })
            .collect(),
        None => files
            .crls
            .iter()
            .map(|path| read("CRL", path))
            .collect::<Result<Vec<_>, _>>()?,
    };
    let ca = match &published.ca {
        Some(pem) => Input {
            path: PathBuf::from("<published CA bundle>"),
            bytes: pem.as_bytes().to_vec(),
        },
        None => read("CA bundle", &files.ca)?,
    };
    let inputs = Inputs {
        ca,
        cert: read("server certificate", &files.cert)?,
        key: read("server key", &files.key)?,
        crls,
    };
    TlsContext::build(inputs, opts, clock)
}

/// Holds the current [`TlsContext`]. `reload()` re-reads the files and swaps only on success
/// (a bad reload keeps the old context and returns the error); new connections pick up the new
/// context, live ones keep theirs.
#[derive(Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    /// Changed by a reload that changes whether a client certificate is required
    /// (`auth.methods`).
    options: Mutex<TlsOptions>,
    clock: WallClock,
    current: RwLock<Arc<TlsContext>>,
    /// Modification times of the files at the last (attempted) load, for
    /// [`ReloadableTls::reload_if_changed`].
    stamps: Mutex<Vec<Option<SystemTime>>>,
    /// Why the last reload failed (None: it succeeded). While set, every
    /// [`ReloadableTls::reload_if_changed`] retries: a CRL caught half-written or briefly
    /// unreadable must not leave the old one in force until the file changes again.
    failing: Mutex<Option<String>>,
    /// A fleet's published CA bundle and CRLs, used instead of the files while set.
    published: Mutex<PublishedTls>,
    /// Set when published CRLs were applied: the next [`TlsProvider::maintain`] reports a
    /// change, so live sessions they revoke are cut.
    fresh: std::sync::atomic::AtomicBool,
}

impl ReloadableTls {
    /// With the system clock judging certificate and CRL validity.
    pub fn new(files: TlsFiles, opts: TlsOptions) -> Result<Self, TlsError> {
        Self::with_clock(
            files,
            opts,
            Arc::new(rustls::time_provider::DefaultTimeProvider),
        )
    }

    pub fn with_clock(
        files: TlsFiles,
        opts: TlsOptions,
        clock: WallClock,
    ) -> Result<Self, TlsError> {
        let stamps = Mutex::new(file_stamps(&files));
        let ctx = load(&files, &opts, clock.clone())?;
        Ok(ReloadableTls {
            files,
            options: Mutex::new(opts),
            clock,
            current: RwLock::new(Arc::new(ctx)),
            stamps,
            failing: Mutex::new(None),
            published: Mutex::new(PublishedTls::default()),
            fresh: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Uses what a fleet published (its CA bundle, its CRLs) instead of the files from now
    /// on; a part not published: the file again. Applied at once to new handshakes
    /// (connections and renegotiations); the next maintenance tick cuts the live sessions
    /// the CRLs revoke. Refused material leaves the previous in force.
    pub fn set_published(&self, p: PublishedTls) -> Result<(), TlsError> {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        if *published == p {
            return Ok(());
        }
        let ctx = load_with(&self.files, &p, &self.options(), self.clock.clone())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ctx);
        tracing::info!(
            ca = p.ca.is_some(),
            crls = p.crls.as_ref().map_or(0, Vec::len),
            "TLS: the fleet's published CA bundle and CRLs applied"
        );
        *published = p;
        self.fresh.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn options(&self) -> TlsOptions {
        *self.options.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New options (a reload changed `auth.methods`, so a client certificate became
    /// required or optional), for handshakes from now on; refused material leaves the
    /// previous context and options in force.
    pub fn set_options(&self, opts: TlsOptions) -> Result<(), TlsError> {
        // Taken one after the other (`set_published` holds `published` while it reads the
        // options).
        let published = self
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut options = self.options.lock().unwrap_or_else(|e| e.into_inner());
        if *options == opts {
            return Ok(());
        }
        let ctx = load_with(&self.files, &published, &opts, self.clock.clone())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ctx);
        *options = opts;
        tracing::info!(
            client_certificate_optional = opts.client_cert_optional,
            "TLS options changed"
        );
        Ok(())
    }

    /// Reloads when any of the files changed since the last load (a CRL republished by the
    /// CA, a renewed server certificate), and on every call while the last reload failed
    /// (the previous configuration stays in force meanwhile). Cheap enough to call every
    /// second.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = file_stamps(&self.files);
        {
            let mut s = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *s == now && self.reload_failure().is_none() {
                return None;
            }
            *s = now;
        }
        Some(self.reload())
    }

    /// Why the last reload failed, while it keeps failing (the previous configuration is in
    /// force); None once a reload succeeds.
    pub fn reload_failure(&self) -> Option<String> {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn current(&self) -> Arc<TlsContext> {
        // A panic while holding the lock cannot leave a half-swapped Arc behind.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn reload(&self) -> Result<(), TlsError> {
        let published = self
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match load_with(&self.files, &published, &self.options(), self.clock.clone()) {
            Ok(ctx) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ctx);
                *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(ca = %self.files.ca.display(), "TLS configuration reloaded");
                Ok(())
            }
            Err(e) => {
                let text = e.to_string();
                let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
                // Retried every second: log each new reason once, not every attempt.
                if failing.as_deref() != Some(text.as_str()) {
                    tracing::error!(
                        "TLS reload failed, keeping the previous configuration (retrying every \
                         second until it loads): {e}"
                    );
                }
                *failing = Some(text);
                Err(e)
            }
        }
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn file_stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .into_iter()
        .chain(files.crls.iter())
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl TlsProvider for ReloadableTls {
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current().server_config()
    }

    /// CRLs are checked on every new connection and renegotiation, so a republished CRL
    /// takes effect within one maintenance interval without a restart.
    fn maintain(&self) -> bool {
        let changed = matches!(self.reload_if_changed(), Some(Ok(())))
            | self.fresh.swap(false, std::sync::atomic::Ordering::AcqRel);
        let now = self
            .clock
            .current_time()
            .map_or(SystemTime::UNIX_EPOCH, |t| {
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.as_secs())
            });
        if self.current().any_crl_expired(now) {
            tracing::error!("a configured CRL is past its nextUpdate; publish a fresh one");
        }
        changed
    }

    fn is_revoked(&self, id: &ClientIdentity) -> bool {
        self.current().is_revoked(id)
    }

    fn changed_outside(&self) -> bool {
        self.fresh.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
#[path = "tls_files_tests.rs"]
mod tests;
