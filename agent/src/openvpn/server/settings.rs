//! The server's settings: what every client is told, how it is authenticated, the limits.
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;

use super::super::options::Transport;
use super::super::session::SessionConfig;

/// What every client is told to reach through the tunnel (doc §8.3).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushSettings {
    /// Split tunnel: these routes. Ignored when `full_tunnel`.
    pub routes: Vec<Ipv4Net>,
    pub dns: Vec<Ipv4Addr>,
    /// `redirect-gateway def1`: everything through the tunnel.
    pub full_tunnel: bool,
    /// Maximum session duration (AWS: 8–24 h): pushed as `session-timeout` and enforced by
    /// the server (it overrides `max_session` of both transports' session settings).
    pub session_timeout: Option<Duration>,
    /// Pushed last, as is: the login banner (see `options::banner_echo_options`).
    pub echo: Vec<String>,
}

/// How clients are authenticated beyond their certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Mutual TLS only: a verified certificate is enough (AWS "mutual authentication").
    #[default]
    CertificateOnly,
    /// Every key exchange is reported as [`ServerEvent::AuthRequired`] and waits for
    /// [`Server::authorize`] (directory lookups, client-connect hooks).
    External,
}

/// Stateless reset replies per second and burst (see [`ServerSettings::reset_rate`]).
pub const DEFAULT_RESET_RATE: (u32, u32) = (200, 400);

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub client_cidr: Ipv4Net,
    pub push: PushSettings,
    pub auth: AuthMode,
    /// Concurrent sessions (including half-open ones after the cookie).
    pub max_sessions: usize,
    /// Stateless reset replies per second (and burst), all sources together; one source gets
    /// an eighth of it (`cookie::ResetLimiter`).
    pub reset_rate: (u32, u32),
    pub udp: SessionConfig,
    pub tcp: SessionConfig,
    /// A TCP connection whose session has not connected by then is closed (`io::tcp`).
    pub tcp_handshake_timeout: Duration,
    /// A TCP connection silent for this long is closed (`io::tcp`).
    pub tcp_idle_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            client_cidr: "10.100.0.0/24".parse().expect("literal"),
            push: PushSettings::default(),
            auth: AuthMode::default(),
            max_sessions: 4096,
            reset_rate: DEFAULT_RESET_RATE,
            udp: SessionConfig::default(),
            tcp: SessionConfig {
                transport: Transport::Tcp,
                ..SessionConfig::default()
            },
            tcp_handshake_timeout: Duration::from_secs(60),
            tcp_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Each transport's session settings, with the pushed session timeout as their limit.
pub(super) fn session_configs(
    settings: &ServerSettings,
) -> (Arc<SessionConfig>, Arc<SessionConfig>) {
    (
        Arc::new(SessionConfig {
            transport: Transport::Udp,
            max_session: settings.push.session_timeout.or(settings.udp.max_session),
            ..settings.udp.clone()
        }),
        Arc::new(SessionConfig {
            transport: Transport::Tcp,
            max_session: settings.push.session_timeout.or(settings.tcp.max_session),
            ..settings.tcp.clone()
        }),
    )
}
