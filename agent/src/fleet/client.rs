//! Reaching etcd as the `[fleet]` section says: the endpoints, TLS with the operator's CA and
//! this gateway's client certificate, and timeouts short enough that a dead member is left
//! for another within the fleet's 1 s goals.
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::FleetSection;

/// A TCP connect to a dead member gives up after this long (the client then tries another).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One request: long enough for a leader election (about 1 s with etcd's defaults).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings find a silently dead connection (a member behind a cut link) in ~3 s.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(1));

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd: {0}")]
    Etcd(etcd_client::Error),
    #[error("the etcd watch ended: {0}")]
    WatchEnded(String),
    #[error(
        "the gateway's etcd lease {0:x} expired: its blocks and sessions were dropped from etcd"
    )]
    LeaseLost(i64),
    #[error("fleet.{field}: cannot read {}: {source}", path.display())]
    ReadFile {
        field: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "etcd at {endpoints}: {source} (check fleet.endpoints, that etcd runs, and the TLS files)"
    )]
    Unreachable {
        endpoints: String,
        source: etcd_client::Error,
    },
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, FleetError> {
    std::fs::read(path).map_err(|source| FleetError::ReadFile {
        field,
        path: path.to_owned(),
        source,
    })
}

/// The connection options the section asks for (TLS files are read here, so a bad file is
/// reported with its field before any network traffic).
fn options(section: &FleetSection) -> Result<ConnectOptions, FleetError> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(KEEPALIVE.0, KEEPALIVE.1)
        // A partitioned member without a leader answers nothing useful: fail over instead.
        .with_require_leader(true);
    if section.uses_tls() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &section.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read("ca_file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&section.cert_file, &section.key_file) {
            tls = tls.identity(Identity::from_pem(
                read("cert_file", cert)?,
                read("key_file", key)?,
            ));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

/// Connects to the fleet's etcd and proves the connection with one request (the client
/// itself connects lazily, which would hide a wrong address or certificate until the first
/// real write).
pub async fn connect(section: &FleetSection) -> Result<Client, FleetError> {
    let unreachable = |source| FleetError::Unreachable {
        endpoints: section.endpoints.join(","),
        source,
    };
    let mut client = Client::connect(&section.endpoints, Some(options(section)?))
        .await
        .map_err(unreachable)?;
    client.status().await.map_err(unreachable)?;
    Ok(client)
}
