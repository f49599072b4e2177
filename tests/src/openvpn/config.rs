//! Configuration files of the stock client and the reference server.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
};

use super::{LabPki, OVPN_PORT, PRIVATE_NETWORK, TUN_DEV, UNDERLAY_GW, VPN_NETMASK, VPN_NETWORK};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    Aes256Gcm,
    Aes128Gcm,
    ChaCha20Poly1305,
}

impl Cipher {
    /// The OpenVPN (OpenSSL) name, as in `data-ciphers`.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::ChaCha20Poly1305 => "CHACHA20-POLY1305",
        }
    }
}

/// A stock client's configuration; [`ClientConfig::render`] writes the file.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub remote: SocketAddrV4,
    pub proto: Proto,
    /// The only entry of `data-ciphers`, so the negotiation must pick it.
    pub cipher: Cipher,
    pub tls_crypt: Option<PathBuf>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `tls-version-max 1.2` (the minimum is always 1.2).
    pub tls12_only: bool,
    /// `ping-restart` (seconds); a pushed value overrides it.
    pub ping_restart: Option<u32>,
    pub verb: u8,
    /// Extra config lines, appended last.
    pub extra: Vec<String>,
}

impl ClientConfig {
    /// Client `name` of `pki` to [`UNDERLAY_GW`]:[`OVPN_PORT`], AES-256-GCM, with the lab's
    /// tls-crypt key, verb 3.
    pub fn new(pki: &LabPki, name: &str, proto: Proto) -> ClientConfig {
        let ck = pki.client(name);
        ClientConfig {
            remote: SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT),
            proto,
            cipher: Cipher::Aes256Gcm,
            tls_crypt: Some(pki.tls_crypt.clone()),
            ca: pki.ca.clone(),
            cert: ck.cert.clone(),
            key: ck.key.clone(),
            tls12_only: false,
            ping_restart: None,
            verb: 3,
            extra: Vec::new(),
        }
    }

    /// The config file's text; the up script at `up_script` dumps its environment.
    pub fn render(&self, up_script: &Path) -> String {
        let proto = match self.proto {
            Proto::Udp => "udp4",
            Proto::Tcp => "tcp4-client",
        };
        let mut c = vec![
            "client".to_string(),
            format!("dev {TUN_DEV}"),
            "dev-type tun".into(),
            format!("proto {proto}"),
            format!("remote {} {}", self.remote.ip(), self.remote.port()),
            "nobind".into(),
            "remote-cert-tls server".into(),
            "tls-version-min 1.2".into(),
            // Retry every second, without the default exponential backoff.
            "connect-retry 1 1".into(),
            format!("ca {}", self.ca.display()),
            format!("cert {}", self.cert.display()),
            format!("key {}", self.key.display()),
            format!("data-ciphers {}", self.cipher.name()),
            // Keep the kernel module out even where it is loaded: we test the userspace peer.
            "disable-dco".into(),
            "script-security 2".into(),
            format!("up {}", up_script.display()),
            format!("verb {}", self.verb),
        ];
        if self.tls12_only {
            c.push("tls-version-max 1.2".into());
        }
        if let Some(k) = &self.tls_crypt {
            c.push(format!("tls-crypt {}", k.display()));
        }
        if let Some(s) = self.ping_restart {
            c.push(format!("ping-restart {s}"));
        }
        c.extend(self.extra.iter().cloned());
        c.join("\n") + "\n"
    }
}

/// The reference server's configuration (`openvpn` in server mode).
#[derive(Clone, Debug)]
pub struct StockServerConfig {
    pub listen: SocketAddrV4,
    pub proto: Proto,
    pub cipher: Cipher,
    pub tls_crypt: Option<PathBuf>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `push "route ..."` entries as `(network, netmask)`.
    pub push_routes: Vec<(Ipv4Addr, Ipv4Addr)>,
    pub verb: u8,
    pub extra: Vec<String>,
}

impl StockServerConfig {
    /// Listening on [`UNDERLAY_GW`]:[`OVPN_PORT`], pool 10.100.0.0/24, AES-256-GCM, pushing
    /// the route to 10.0.0.0/24.
    pub fn new(pki: &LabPki, proto: Proto) -> StockServerConfig {
        StockServerConfig {
            listen: SocketAddrV4::new(UNDERLAY_GW, OVPN_PORT),
            proto,
            cipher: Cipher::Aes256Gcm,
            tls_crypt: Some(pki.tls_crypt.clone()),
            ca: pki.ca.clone(),
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
            push_routes: vec![(PRIVATE_NETWORK, Ipv4Addr::new(255, 255, 255, 0))],
            verb: 3,
            extra: Vec::new(),
        }
    }

    pub fn render(&self) -> String {
        let proto = match self.proto {
            Proto::Udp => "udp4",
            Proto::Tcp => "tcp4-server",
        };
        let mut c = vec![
            format!("server {VPN_NETWORK} {VPN_NETMASK}"),
            "topology subnet".into(),
            format!("dev {TUN_DEV}"),
            "dev-type tun".into(),
            format!("proto {proto}"),
            format!("local {}", self.listen.ip()),
            format!("port {}", self.listen.port()),
            format!("ca {}", self.ca.display()),
            format!("cert {}", self.cert.display()),
            format!("key {}", self.key.display()),
            // ECDHE only.
            "dh none".into(),
            "remote-cert-tls client".into(),
            format!("data-ciphers {}", self.cipher.name()),
            "keepalive 10 60".into(),
            "disable-dco".into(),
            // Benchmark clients may share one certificate.
            "duplicate-cn".into(),
            format!("verb {}", self.verb),
        ];
        if let Some(k) = &self.tls_crypt {
            c.push(format!("tls-crypt {}", k.display()));
        }
        for (net, mask) in &self.push_routes {
            c.push(format!("push \"route {net} {mask}\""));
        }
        c.extend(self.extra.iter().cloned());
        c.join("\n") + "\n"
    }
}
