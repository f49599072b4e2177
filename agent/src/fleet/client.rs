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
/// HTTP/2 pings find a silently dead connection (a member behind a cut link) in ~8 s.
/// Not more often: etcd's server enforces `--grpc-keepalive-min-time` (5 s by default) and
/// answers pings that come sooner with a GOAWAY (`ENHANCE_YOUR_CALM`, "too_many_pings")
/// after two strikes, which the client sees as "h2 protocol error" on every stream of the
/// connection (an idle policy watch died this way every ~6 s with a 2 s interval). A member
/// that dies outright closes its sockets and is noticed at once; the lease keep-alive has
/// its own shorter timeout.
pub const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(6), Duration::from_secs(2));
/// How often an operator's request (list, terminate) is tried when etcd's answer is a
/// transport error (a request routed to a member that just died), and the pause between.
const TRIES: u32 = 4;
const TRY_PAUSE: Duration = Duration::from_millis(250);

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

/// Whether `e` says the request never got an answer from a member (connection closed, reset,
/// refused, timed out): worth sending again, possibly to another member. An answer (a failed
/// compare, a lease not found, a permission) is not.
pub fn is_transport(e: &FleetError) -> bool {
    match e {
        FleetError::Etcd(etcd_client::Error::TransportError(_))
        | FleetError::Etcd(etcd_client::Error::IoError(_))
        | FleetError::Unreachable { .. } => true,
        // gRPC codes (tonic is not a direct dependency): CANCELLED 1 ("operation was
        // canceled": the connection closed under the request), UNKNOWN 2 (h2 errors),
        // DEADLINE_EXCEEDED 4, UNAVAILABLE 14.
        FleetError::Etcd(etcd_client::Error::GRpcStatus(s)) => {
            matches!(s.code() as i32, 1 | 2 | 4 | 14)
        }
        _ => false,
    }
}

/// Runs `op` with a clone of `client` until it succeeds, fails with an answer, or failed
/// [`TRIES`] times with transport errors (the balancer of a multi-endpoint client still
/// routes to a member that just died until it sees the connection gone; a second try goes
/// to a living one). `op` must be safe to repeat.
pub async fn retrying<T, F, Fut>(client: &Client, mut op: F) -> Result<T, FleetError>
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, FleetError>>,
{
    let mut tried = 1;
    loop {
        match op(client.clone()).await {
            Err(e) if tried < TRIES && is_transport(&e) => {
                tracing::debug!(error = %e, tried, "etcd request: transport error, trying again");
                tried += 1;
                tokio::time::sleep(TRY_PAUSE).await;
            }
            r => return r,
        }
    }
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

/// Everything under `prefix` now, and a watch of the prefix from the revision after that
/// read, so that no key written in between is missed.
pub async fn read_and_watch(
    client: &mut Client,
    prefix: &str,
) -> Result<(etcd_client::GetResponse, etcd_client::WatchStream), FleetError> {
    use etcd_client::{GetOptions, WatchOptions};
    let got = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(FleetError::Etcd)?;
    let read_at = got.header().map_or(0, |h| h.revision());
    let stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(read_at + 1),
            ),
        )
        .await
        .map_err(FleetError::Etcd)?;
    Ok((got, stream))
}
