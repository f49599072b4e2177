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
    connect_to(section, &section.endpoints).await
}

async fn connect_to(section: &FleetSection, endpoints: &[String]) -> Result<Client, FleetError> {
    let unreachable = |source| FleetError::Unreachable {
        endpoints: endpoints.join(","),
        source,
    };
    let mut client = Client::connect(endpoints, Some(options(section)?))
        .await
        .map_err(unreachable)?;
    client.status().await.map_err(unreachable)?;
    Ok(client)
}

/// Which etcd member a long-lived task (the gateway's membership, the policy follower) talks
/// to: one at a time, the next one after a failure.
///
/// Not the balancing client of [`connect`]: that one keeps a dead member in its set and
/// routes about a third of the requests there until the member is back, so the dozen
/// requests of a gateway's (re)join almost never all succeed with one member of three dead,
/// and the gateway's lease expired while it retried. A single-member connection fails at
/// once and as a whole when its member dies; the task starts over on the next member.
#[derive(Debug, Default)]
pub struct Rotation {
    next: usize,
}

impl Rotation {
    /// A connection to the first member, from the one after the last failure on, that
    /// answers; every member tried and none answering is [`FleetError::Unreachable`] with
    /// the last member's error.
    pub async fn connect(&mut self, section: &FleetSection) -> Result<Client, FleetError> {
        let n = section.endpoints.len().max(1);
        let mut last = None;
        for k in 0..n {
            let i = (self.next + k) % n;
            let endpoint = section.endpoints.get(i).cloned().unwrap_or_default();
            match connect_to(section, std::slice::from_ref(&endpoint)).await {
                Ok(client) => {
                    self.next = i;
                    if k > 0 {
                        tracing::info!(%endpoint, "fleet: etcd reached at another member");
                    }
                    return Ok(client);
                }
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "fleet: etcd member does not answer");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| FleetError::WatchEnded("fleet.endpoints is empty".into())))
    }

    /// The member in use failed: the next connection starts with the one after it.
    pub fn failed(&mut self) {
        self.next = self.next.wrapping_add(1);
    }
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
