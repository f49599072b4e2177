//! A minimal OpenVPN client built from this crate's own protocol pieces and rustls, driven in
//! memory: for tests of the server state machine without a network, and as a fuzz and bench
//! driver. It does what a stock 2.6 client does on the wire (resets, TLS, key-method 2, PUSH,
//! renegotiation, data packets) but none of the tun side. Not a product client.
use std::sync::Arc;
use std::time::Instant;

use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

use super::crypto::{Cipher, DataFormat, Decryptor, Encryptor};
use super::keys::{ClientKeyMethod2, ClientKeySource, KeyBlock, Password, ServerKeyMethod2};
use super::packet::{decode, KeyId, Opcode, Packet, Role, SessionId, MAX_CONTROL_PACKET_LEN};
use super::reliable::{self, Reliable};
use super::tls_crypt::{PacketIdSender, StaticKey, TlsCryptKey, TlsCryptSession};
use super::tls_crypt_v2::{ClientKey, EARLY_NEG_START};

/// A 2.6.14 Linux client's peer info (doc §5.5).
pub const PEER_INFO_2_6: &str = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n\
IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\nIV_LZO_STUB=1\n\
IV_COMP_STUB=1\nIV_COMP_STUBv2=1\n";

/// The options string a 2.6 UDP client sends (doc §5.3).
pub const OPTIONS_UDP: &str = "V4,dev-type tun,link-mtu 1549,tun-mtu 1500,proto UDPv4,\
cipher AES-256-GCM,auth [null-digest],keysize 256,key-method 2,tls-client";

/// A rustls client configuration trusting `ca_pem`, authenticating with a certificate.
pub fn client_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        let _ = roots.add(der);
    }
    let certs: Vec<_> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .flatten()
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("client key PEM");
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .expect("client certificate"),
    )
}

struct Key {
    id: KeyId,
    reliable: Reliable,
    tls: ClientConnection,
    km_sent: bool,
    server_km: bool,
    plain: Vec<u8>,
}

/// The client side of one session.
pub struct TestClient {
    tls_cfg: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    sid: SessionId,
    server_sid: Option<SessionId>,
    wrap: Option<(TlsCryptKey, TlsCryptSession)>,
    /// tls-crypt-v2: the wrapped key, appended to the V3 reset and to the first
    /// P_CONTROL_WKC_V1 (the 2.6 early-negotiation handshake).
    wkc: Option<Vec<u8>>,
    wkc_resend_pending: bool,
    keys: Vec<Key>,
    pub peer_info: String,
    pub username: String,
    pub password: String,
    /// PUSH_REPLY text (all parts joined), once received.
    pub push_reply: Option<String>,
    pub auth_failed: Option<String>,
    /// Other control messages from the server (RESTART, …).
    pub messages: Vec<String>,
    enc: Option<Encryptor>,
    dec: Vec<Decryptor>,
}

impl TestClient {
    pub fn new(
        tls_cfg: Arc<ClientConfig>,
        server_name: &str,
        tls_crypt: Option<&StaticKey>,
    ) -> Self {
        let mut sid = [0u8; 8];
        let _ = SystemRandom::new().fill(&mut sid);
        sid[0] |= 0x80;
        let sid = SessionId::new(sid).expect("non-zero");
        let mut c = TestClient {
            tls_cfg,
            server_name: ServerName::try_from(server_name.to_owned()).expect("server name"),
            sid,
            server_sid: None,
            wrap: tls_crypt.map(|k| {
                (
                    TlsCryptKey::new(k, Role::Client),
                    TlsCryptSession::new(PacketIdSender::new(1_700_000_000)),
                )
            }),
            wkc: None,
            wkc_resend_pending: false,
            keys: Vec::new(),
            peer_info: PEER_INFO_2_6.to_owned(),
            username: String::new(),
            password: String::new(),
            push_reply: None,
            auth_failed: None,
            messages: Vec::new(),
            enc: None,
            dec: Vec::new(),
        };
        c.new_key(KeyId::ZERO, Opcode::HardResetClientV2);
        c
    }

    /// A tls-crypt-v2 client with `key` (Kc and WKc), announcing early negotiation as a 2.6
    /// client does: its replay ids start at EARLY_NEG_START + 1.
    pub fn with_tls_crypt_v2(
        tls_cfg: Arc<ClientConfig>,
        server_name: &str,
        key: &ClientKey,
    ) -> Self {
        let mut c = Self::new(tls_cfg, server_name, None);
        c.wrap = Some((
            TlsCryptKey::new(&key.key, Role::Client),
            TlsCryptSession::new(PacketIdSender::starting_at(
                EARLY_NEG_START + 1,
                1_700_000_000,
            )),
        ));
        c.wkc = Some(key.wkc.clone());
        c.keys.clear();
        c.new_key(KeyId::ZERO, Opcode::HardResetClientV3);
        c
    }

    fn new_key(&mut self, id: KeyId, reset: Opcode) {
        let mut reliable =
            Reliable::new(reliable::Config::default(), id, self.sid, self.server_sid);
        let _ = reliable.queue_reset(reset);
        let tls = ClientConnection::new(self.tls_cfg.clone(), self.server_name.clone())
            .expect("client connection");
        self.keys.push(Key {
            id,
            reliable,
            tls,
            km_sent: false,
            server_km: false,
            plain: Vec::new(),
        });
        // Keep the newest two, as a 2.6 client keeps primary and lame duck.
        if self.keys.len() > 2 {
            self.keys.remove(0);
        }
    }

    pub fn session_id(&self) -> SessionId {
        self.sid
    }

    /// Starts a client-initiated renegotiation (SOFT_RESET on the next key id).
    pub fn renegotiate(&mut self) {
        let id = self.keys.last().map_or(KeyId::ZERO, |k| k.id).next();
        self.new_key(id, Opcode::SoftResetV1);
    }

    /// The current key id.
    pub fn key_id(&self) -> Option<KeyId> {
        self.keys.last().map(|k| k.id)
    }

    /// Packets to send, wrapped.
    pub fn poll_transmit(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.pump();
        let mut out = Vec::new();
        let mut plain = [0u8; MAX_CONTROL_PACKET_LEN];
        for k in &mut self.keys {
            while let Some(mut p) = k.reliable.poll_transmit(now) {
                // After the server asked for it, the first message carries WKc again.
                let append_wkc = p.opcode == Opcode::HardResetClientV3
                    || (self.wkc_resend_pending && p.opcode == Opcode::ControlV1);
                if self.wkc_resend_pending && p.opcode == Opcode::ControlV1 {
                    p.opcode = Opcode::ControlWkcV1;
                    self.wkc_resend_pending = false;
                }
                let n = p.encode(&mut plain).expect("encode");
                let mut bytes = match &mut self.wrap {
                    Some((key, st)) => {
                        let mut w = vec![0u8; n + 64];
                        let m = st.wrap(key, &plain[..n], &mut w).expect("wrap");
                        w.truncate(m);
                        w
                    }
                    None => plain[..n].to_vec(),
                };
                if append_wkc {
                    bytes.extend_from_slice(self.wkc.as_deref().unwrap_or_default());
                }
                out.push(bytes);
            }
        }
        out
    }

    /// A packet from the server: control packets go to their key state; data packets are
    /// decrypted and returned.
    pub fn on_packet(&mut self, raw: &[u8], now: Instant) -> Option<Vec<u8>> {
        let op = raw.first()? >> 3;
        if op == 6 || op == 9 {
            let mut p = raw.to_vec();
            let kid = raw[0] & 7;
            let d = self.dec.iter_mut().find(|d| d.key_id() == kid)?;
            let o = d.open_in_place(&mut p, now).ok()?;
            return Some(p[o.plaintext].to_vec());
        }
        let mut buf = [0u8; MAX_CONTROL_PACKET_LEN];
        let plain: &[u8] = match &mut self.wrap {
            Some((key, st)) => st.unwrap(key, raw, &mut buf, now).ok()?.packet,
            None => raw,
        };
        let Ok(Packet::Control(pkt)) = decode(plain) else {
            return None;
        };
        if self.server_sid.is_none() {
            self.server_sid = Some(pkt.session_id);
            // The early-negotiation TLV of a tls-crypt-v2 server: resend WKc.
            if self.wkc.is_some()
                && pkt.opcode == Opcode::HardResetServerV2
                && pkt.payload == super::tls_crypt_v2::RESEND_WKC_TLV
            {
                self.wkc_resend_pending = true;
            }
        }
        if pkt.opcode == Opcode::SoftResetV1 && !self.keys.iter().any(|k| k.id == pkt.key_id) {
            self.new_key(pkt.key_id, Opcode::SoftResetV1);
        }
        let k = self.keys.iter_mut().find(|k| k.id == pkt.key_id)?;
        let _ = k.reliable.on_packet(&pkt, now);
        self.pump();
        None
    }

    fn pump(&mut self) {
        let nk = self.keys.len();
        for i in 0..nk {
            let k = &mut self.keys[i];
            while k.reliable.readable() > 0 {
                if k.tls.read_tls(&mut k.reliable).is_err() {
                    break;
                }
                if k.tls.process_new_packets().is_err() {
                    break;
                }
            }
            let mut b = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut k.tls.reader(), &mut b) {
                if n == 0 {
                    break;
                }
                k.plain.extend_from_slice(&b[..n]);
            }
            if !k.tls.is_handshaking() && !k.km_sent {
                let mut r = [0u8; 112];
                let _ = SystemRandom::new().fill(&mut r);
                let km = ClientKeyMethod2 {
                    key_source: ClientKeySource {
                        pre_master: r[..48].try_into().expect("48"),
                        random1: r[48..80].try_into().expect("32"),
                        random2: r[80..112].try_into().expect("32"),
                    },
                    options: OPTIONS_UDP.to_owned(),
                    username: self.username.clone(),
                    password: Password::new(self.password.clone()),
                    peer_info: self.peer_info.clone(),
                    credentials_invalid: false,
                };
                let bytes = km.to_bytes().expect("km2");
                let _ = std::io::Write::write_all(&mut k.tls.writer(), &bytes);
                k.km_sent = true;
            }
            if k.km_sent && !k.server_km {
                if let Ok((_, used)) = ServerKeyMethod2::parse(&k.plain) {
                    k.plain.drain(..used);
                    k.server_km = true;
                    if k.id != KeyId::ZERO {
                        // Renegotiated keys are derived as soon as the server's reply is in.
                        Self::derive(k, &mut self.enc, &mut self.dec, self.push_reply.as_deref());
                    }
                }
            }
            if k.server_km {
                while let Some(end) = k.plain.iter().position(|&b| b == 0) {
                    let msg: Vec<u8> = k.plain.drain(..=end).collect();
                    let msg = String::from_utf8_lossy(&msg[..msg.len() - 1]).into_owned();
                    if let Some(rest) = msg.strip_prefix("PUSH_REPLY") {
                        if self.enc.is_some() && k.id == KeyId::ZERO {
                            // A second PUSH_REPLY (answering a PUSH_REQUEST that crossed the
                            // first): re-deriving would restart the data packet ids.
                            continue;
                        }
                        let mut acc = self
                            .push_reply
                            .take()
                            .unwrap_or_else(|| "PUSH_REPLY".into());
                        acc.push_str(rest);
                        self.push_reply = Some(acc);
                        if !rest.contains("push-continuation 2") {
                            Self::derive(
                                k,
                                &mut self.enc,
                                &mut self.dec,
                                self.push_reply.as_deref(),
                            );
                        }
                    } else if let Some(r) = msg.strip_prefix("AUTH_FAILED") {
                        self.auth_failed = Some(r.trim_start_matches(',').to_owned());
                    } else {
                        self.messages.push(msg);
                    }
                }
            }
            // Like a 2.6 client: no TLS before the server's reset arrived (the stateless
            // cookie needs the ack on the first TLS packet).
            while k.reliable.peer_reset_received() && k.tls.wants_write() {
                if k.tls.write_tls(&mut k.reliable).is_err() {
                    break;
                }
            }
        }
    }

    fn derive(
        k: &mut Key,
        enc: &mut Option<Encryptor>,
        dec: &mut Vec<Decryptor>,
        push: Option<&str>,
    ) {
        let Some(push) = push else { return };
        let opt = |name: &str| {
            push.split(',')
                .find_map(|o| o.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let cipher = opt("cipher ")
            .and_then(|c| Cipher::from_name(&c))
            .unwrap_or(Cipher::Aes256Gcm);
        let peer_id: Option<u32> = opt("peer-id ").and_then(|p| p.parse().ok());
        let Ok(block) = KeyBlock::from_ekm(|out, label, ctx| {
            k.tls.export_keying_material(out, label, ctx).map(|_| ())
        }) else {
            return;
        };
        let keys = block.data_keys(cipher, Role::Client);
        let fmt = match peer_id {
            Some(p) => DataFormat::V2 { peer_id: p },
            None => DataFormat::V1,
        };
        *enc = Encryptor::new(&keys.send, k.id.get(), fmt).ok();
        if let Ok(d) = Decryptor::new(&keys.recv, k.id.get()) {
            dec.insert(0, d);
            dec.truncate(2);
        }
    }

    /// The server's key-method-2 reply arrived on the current key (a 2.6 client's key
    /// state is ACTIVE: it sends PUSH_REQUEST from then on until the PUSH_REPLY arrives).
    pub fn key_exchanged(&self) -> bool {
        self.keys.last().is_some_and(|k| k.server_km)
    }

    /// Every reliable packet sent (control messages such as EXIT) has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.keys.iter().all(|k| k.reliable.all_acked())
    }

    /// Data keys are in place (after the PUSH_REPLY): [`TestClient::seal`] works.
    pub fn data_ready(&self) -> bool {
        self.enc.is_some()
    }

    /// Like [`TestClient::seal`], into `out` (at least `payload.len() + 64` bytes) without
    /// allocating: the length written.
    pub fn seal_into(&mut self, payload: &[u8], out: &mut [u8]) -> Option<usize> {
        self.enc.as_mut()?.encrypt(payload, out).ok()
    }

    /// The tunnel address the server pushed.
    pub fn pushed_addr(&self) -> Option<std::net::Ipv4Addr> {
        let p = self.push_reply.as_ref()?;
        p.split(',')
            .find_map(|o| o.strip_prefix("ifconfig "))
            .and_then(|v| v.split(' ').next())
            .and_then(|a| a.parse().ok())
    }

    /// Encrypts `payload` (an IP packet, or the ping) into a data packet.
    pub fn seal(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let enc = self.enc.as_mut()?;
        let mut out = vec![0u8; enc.overhead() + payload.len()];
        let n = enc.encrypt(payload, &mut out).ok()?;
        out.truncate(n);
        Some(out)
    }

    /// A control message (e.g. "EXIT") on the current key.
    pub fn send_message(&mut self, msg: &str) {
        if let Some(k) = self.keys.last_mut() {
            let mut b = msg.as_bytes().to_vec();
            b.push(0);
            let _ = std::io::Write::write_all(&mut k.tls.writer(), &b);
        }
    }
}
