//! Option strings and control messages: the client's `IV_*` peer info, NCP cipher negotiation,
//! the options-consistency string, PUSH_REPLY (with continuation) and AUTH_FAILED, and the
//! printable-ASCII rules for control-channel strings.
//!
//! Facts: docs/openvpn-protocol.md §5.5 (peer info, IV_PROTO bits), §6.2 (when EKM applies),
//! §8 (control messages, PUSH_REPLY, AUTH_FAILED), §10 (options string).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::crypto::{Cipher, NO_PEER_ID};

/// Largest control message the client reads in one unit, including the NUL (§5.6, §8.1).
pub const CONTROL_MESSAGE_MAX: usize = 2048;
/// Largest PUSH_REPLY part the 2.6 server sends, including the NUL (`PUSH_BUNDLE_SIZE`, §8.3).
pub const PUSH_BUNDLE_SIZE: usize = 1024;
/// Largest single pushed option (`OPTION_PARM_SIZE` 256 incl. NUL, §8.3).
pub const PUSH_OPTION_MAX: usize = 255;
/// Peer-info entries kept; the rest are ignored (a 2.6 client sends about ten, §5.5).
pub const PEER_INFO_MAX_ENTRIES: usize = 64;

const CONTINUATION_MORE: &str = ",push-continuation 2";
const CONTINUATION_LAST: &str = ",push-continuation 1";

/// Errors building or reading option strings and control messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    #[error("control message contains a non-printable byte at offset {0}")]
    NonPrintable(usize),
    #[error("control message is not NUL-terminated")]
    Unterminated,
    #[error("control message of {0} bytes exceeds 2048 including the NUL")]
    TooLong(usize),
    #[error("pushed option {0:?} is empty, too long, or contains a comma or non-printable byte")]
    BadPushOption(String),
    #[error("peer id {0:#x} is not a valid 24-bit peer id")]
    BadPeerId(u32),
}

// ---------------------------------------------------------------------------------------------
// Printable ASCII (§8.1)

/// OpenVPN's receiver keeps only messages made of printable ASCII (C-locale `isprint`:
/// 0x20..=0x7E); everything else, including UTF-8, makes it drop the message (§8.1).
pub fn is_printable(s: &[u8]) -> bool {
    s.iter().all(|b| (0x20..=0x7E).contains(b))
}

fn first_non_printable(s: &[u8]) -> Option<usize> {
    s.iter().position(|b| !(0x20..=0x7E).contains(b))
}

/// Makes an arbitrary text (an LDAP error, say) safe to send in AUTH_FAILED: non-printable
/// bytes become `?`, and it is cut to `max` bytes. Used for *outgoing* reasons only, where
/// failing to tell the client anything would be worse than a mangled reason.
pub fn sanitize_text(s: &str, max: usize) -> String {
    s.bytes()
        .take(max)
        .map(|b| {
            if (0x20..=0x7E).contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Incoming control messages (§8.1, §8.4)

/// A control message from the client, after the key exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMessage<'a> {
    /// `PUSH_REQUEST` (§8.2).
    PushRequest,
    /// `EXIT`: the client is leaving (cc-exit, §8.4).
    Exit,
    /// `CR_RESPONSE,<base64>`: dynamic challenge response.
    CrResponse(&'a str),
    /// Anything else, already checked to be printable: log and ignore.
    Other(&'a str),
}

impl<'a> ControlMessage<'a> {
    /// Classifies one message (without its NUL). The text must already be printable.
    fn classify(text: &'a str) -> Self {
        match text {
            "PUSH_REQUEST" => ControlMessage::PushRequest,
            "EXIT" => ControlMessage::Exit,
            _ => match text.strip_prefix("CR_RESPONSE,") {
                Some(r) => ControlMessage::CrResponse(r),
                None => ControlMessage::Other(text),
            },
        }
    }
}

/// Splits a unit of TLS plaintext into control messages the way the 2.6 receiver does (§8.1):
/// cut at NULs, strip trailing CR/LF, reject non-printable messages, skip empty ones, and
/// report trailing bytes without a NUL as [`OptionsError::Unterminated`]. Bad messages are
/// yielded as errors so the caller can count them; the good ones around them still come out.
pub fn control_messages(buf: &[u8]) -> ControlMessages<'_> {
    ControlMessages { rest: buf }
}

/// Iterator returned by [`control_messages`].
#[derive(Debug, Clone)]
pub struct ControlMessages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ControlMessages<'a> {
    type Item = Result<ControlMessage<'a>, OptionsError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let Some(nul) = self.rest.iter().position(|&b| b == 0) else {
                let len = self.rest.len();
                self.rest = &[];
                return Some(Err(if len >= CONTROL_MESSAGE_MAX {
                    OptionsError::TooLong(len)
                } else {
                    OptionsError::Unterminated
                }));
            };
            let mut msg = &self.rest[..nul];
            self.rest = &self.rest[nul + 1..];
            if nul + 1 > CONTROL_MESSAGE_MAX {
                return Some(Err(OptionsError::TooLong(nul + 1)));
            }
            while let [head @ .., b'\r' | b'\n'] = msg {
                msg = head;
            }
            if msg.is_empty() {
                continue;
            }
            if let Some(i) = first_non_printable(msg) {
                return Some(Err(OptionsError::NonPrintable(i)));
            }
            // Printable ASCII is valid UTF-8.
            let text = std::str::from_utf8(msg).ok()?;
            return Some(Ok(ControlMessage::classify(text)));
        }
    }
}

/// Encodes an outgoing control message: printable ASCII plus one NUL, at most 2048 bytes.
/// Send the result with a single TLS write so it is one record (§5.6, §8.1).
pub fn encode_control_message(msg: &str) -> Result<Vec<u8>, OptionsError> {
    if let Some(i) = first_non_printable(msg.as_bytes()) {
        return Err(OptionsError::NonPrintable(i));
    }
    if msg.len() + 1 > CONTROL_MESSAGE_MAX {
        return Err(OptionsError::TooLong(msg.len() + 1));
    }
    let mut out = Vec::with_capacity(msg.len() + 1);
    out.extend_from_slice(msg.as_bytes());
    out.push(0);
    Ok(out)
}

/// Longest reason we put after `AUTH_FAILED,` so the message stays far below 2048.
pub const AUTH_FAILED_REASON_MAX: usize = 256;

/// `AUTH_FAILED` or `AUTH_FAILED,<reason>` (§8.4). The reason is sanitised, not rejected: the
/// client must hear about the failure even if the reason text came out of some backend mangled.
/// Send it after our key-method-2 reply, then keep the session a few seconds (pitfall 26).
pub fn auth_failed(reason: Option<&str>) -> String {
    match reason {
        Some(r) if !r.is_empty() => {
            format!("AUTH_FAILED,{}", sanitize_text(r, AUTH_FAILED_REASON_MAX))
        }
        _ => "AUTH_FAILED".to_owned(),
    }
}

/// A temporary failure, `AUTH_FAILED,TEMP[backoff N]:<reason>` (§8.4): the client retries after
/// the backoff instead of exiting. Only clients with IV_PROTO bit 8 understand it; for others
/// this falls back to a plain AUTH_FAILED with the reason.
pub fn auth_failed_temp(peer: IvProto, backoff_secs: Option<u32>, reason: &str) -> String {
    if !peer.auth_fail_temp() {
        return auth_failed(Some(reason));
    }
    let flags = backoff_secs.map_or(String::new(), |b| format!("[backoff {b}]"));
    format!(
        "AUTH_FAILED,TEMP{flags}:{}",
        sanitize_text(reason, AUTH_FAILED_REASON_MAX)
    )
}

/// `AUTH_PENDING,timeout N` (§8.2) for a client with IV_PROTO bit 4, bare `AUTH_PENDING` for
/// older ones (which then wait their own hand-window).
pub fn auth_pending(peer: IvProto, timeout_secs: u64) -> String {
    if peer.auth_pending_kw() {
        format!("AUTH_PENDING,timeout {timeout_secs}")
    } else {
        "AUTH_PENDING".to_owned()
    }
}

/// How to send this client to a web login, from its `IV_SSO` (a comma-separated list:
/// `webauth`, `openurl`, `crtext`): the `INFO_PRE` prefix the URL follows (`WEB_AUTH::`, with
/// no flags, preferred; `OPEN_URL:` for clients that only know that), or `None`.
pub fn web_auth_prefix(info: &PeerInfo) -> Option<&'static str> {
    let methods: Vec<&str> = info
        .entries
        .iter()
        .filter(|(k, _)| k == "IV_SSO")
        .flat_map(|(_, v)| v.split(','))
        .collect();
    if methods.contains(&"webauth") {
        Some("WEB_AUTH::")
    } else if methods.contains(&"openurl") {
        Some("OPEN_URL:")
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Peer info (§5.5)

/// The IV_PROTO bit field (§5.5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IvProto(pub u32);

impl IvProto {
    pub const DATA_V2: u32 = 1 << 1;
    pub const REQUEST_PUSH: u32 = 1 << 2;
    pub const TLS_KEY_EXPORT: u32 = 1 << 3;
    pub const AUTH_PENDING_KW: u32 = 1 << 4;
    pub const NCP_P2P: u32 = 1 << 5;
    pub const DNS_OPTION: u32 = 1 << 6;
    pub const CC_EXIT_NOTIFY: u32 = 1 << 7;
    pub const AUTH_FAIL_TEMP: u32 = 1 << 8;
    pub const DYN_TLS_CRYPT: u32 = 1 << 9;

    fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
    /// Assign and push a peer-id; the client then sends P_DATA_V2.
    pub fn data_v2(self) -> bool {
        self.has(Self::DATA_V2)
    }
    /// PUSH_REPLY may be sent without waiting for PUSH_REQUEST.
    pub fn request_push(self) -> bool {
        self.has(Self::REQUEST_PUSH)
    }
    /// The client can derive keys with TLS-EKM.
    pub fn tls_key_export(self) -> bool {
        self.has(Self::TLS_KEY_EXPORT)
    }
    pub fn auth_pending_kw(self) -> bool {
        self.has(Self::AUTH_PENDING_KW)
    }
    /// A P2P peer: it will not accept pushed ciphers.
    pub fn ncp_p2p(self) -> bool {
        self.has(Self::NCP_P2P)
    }
    pub fn dns_option(self) -> bool {
        self.has(Self::DNS_OPTION)
    }
    /// The client understands `protocol-flags` and sends EXIT on the control channel.
    pub fn cc_exit_notify(self) -> bool {
        self.has(Self::CC_EXIT_NOTIFY)
    }
    pub fn auth_fail_temp(self) -> bool {
        self.has(Self::AUTH_FAIL_TEMP)
    }
    pub fn dyn_tls_crypt(self) -> bool {
        self.has(Self::DYN_TLS_CRYPT)
    }
}

/// The client's peer info (§5.5). Parsing is lenient, like OpenVPN's: malformed or
/// non-printable lines are skipped and counted, never fatal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// All well-formed `KEY=VALUE` entries in order (at most [`PEER_INFO_MAX_ENTRIES`]).
    pub entries: Vec<(String, String)>,
    /// Lines skipped: no `=`, empty key, non-printable bytes, or over the entry limit.
    pub skipped_lines: usize,
    pub proto: IvProto,
}

impl PeerInfo {
    pub fn parse(text: &str) -> PeerInfo {
        let mut info = PeerInfo::default();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                info.skipped_lines += 1;
                continue;
            };
            if k.is_empty()
                || !is_printable(line.as_bytes())
                || info.entries.len() >= PEER_INFO_MAX_ENTRIES
            {
                info.skipped_lines += 1;
                continue;
            }
            info.entries.push((k.to_owned(), v.to_owned()));
        }
        info.proto = IvProto(
            info.get("IV_PROTO")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        );
        info
    }

    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `IV_VER`, informational.
    pub fn version(&self) -> Option<&str> {
        self.get("IV_VER")
    }

    /// `IV_PLAT`, informational.
    pub fn platform(&self) -> Option<&str> {
        self.get("IV_PLAT")
    }

    /// `IV_CIPHERS` split at colons, if present. This is the list to negotiate from.
    pub fn ciphers(&self) -> Option<impl Iterator<Item = &str>> {
        self.get("IV_CIPHERS")
            .map(|v| v.split(':').filter(|c| !c.is_empty()))
    }

    /// `IV_NCP=n`, the legacy NCP level (2 = AES-256-GCM and AES-128-GCM are fine).
    pub fn ncp(&self) -> Option<u32> {
        self.get("IV_NCP").and_then(|v| v.parse().ok())
    }

    /// `IV_MTU=n`: the largest `tun-mtu` the client accepts from a push.
    pub fn mtu(&self) -> Option<u32> {
        self.get("IV_MTU").and_then(|v| v.parse().ok())
    }

    /// `IV_TCPNL=1`: no strictly consecutive data ids needed over TCP.
    pub fn tcpnl(&self) -> bool {
        self.get("IV_TCPNL") == Some("1")
    }

    /// The client only has compression stubs: push no compression option (§7.5).
    pub fn compression_stub_only(&self) -> bool {
        ["IV_LZO_STUB", "IV_COMP_STUB", "IV_COMP_STUBv2"]
            .iter()
            .any(|k| self.get(k) == Some("1"))
    }
}

// ---------------------------------------------------------------------------------------------
// Cipher negotiation (§5.5, §8.3, pitfall 17)

/// No cipher is acceptable to both sides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data channel cipher negotiation failed (no shared cipher; client offers {offered:?})")]
pub struct NcpError {
    /// What the client offered, for the log.
    pub offered: String,
}

impl NcpError {
    /// The AUTH_FAILED message to send for it.
    pub fn auth_failed_message(&self) -> String {
        auth_failed(Some(
            "Data channel cipher negotiation failed (no shared cipher)",
        ))
    }
}

/// Picks the data cipher: the first of `server_prefs` that the client supports (§5.5 rule).
///
/// The client's list is `IV_CIPHERS` when present. Without it (pre-2.5 clients) the list is
/// what `IV_NCP>=2` implies (AES-256-GCM, AES-128-GCM) plus the `cipher` item of the client's
/// options string ("poor man's NCP"). Names compare case-insensitively; names we do not know
/// (BF-CBC, AES-256-CBC…) are ignored.
pub fn negotiate_cipher(
    server_prefs: &[Cipher],
    peer: &PeerInfo,
    client_options: &str,
) -> Result<Cipher, NcpError> {
    let mut offered: Vec<Cipher> = Vec::new();
    let offered_text;
    if let Some(list) = peer.ciphers() {
        offered.extend(list.filter_map(Cipher::from_name));
        offered_text = peer.get("IV_CIPHERS").unwrap_or_default().to_owned();
    } else {
        if peer.ncp().is_some_and(|n| n >= 2) {
            offered.extend([Cipher::Aes256Gcm, Cipher::Aes128Gcm]);
        }
        let opt_cipher = options_string_item(client_options, "cipher");
        offered.extend(opt_cipher.and_then(Cipher::from_name));
        offered_text = format!(
            "IV_NCP={:?}, options cipher {:?}",
            peer.ncp(),
            opt_cipher.unwrap_or("")
        );
    }
    server_prefs
        .iter()
        .copied()
        .find(|c| offered.contains(c))
        .ok_or(NcpError {
            offered: sanitize_text(&offered_text, 256),
        })
}

// ---------------------------------------------------------------------------------------------
// Key derivation choice and protocol flags (§6.2)

/// How this key's data-channel keys are derived; fixed at the first push for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyDerivation {
    /// TLS keying-material exporter (needs IV_PROTO bit 3 and must be pushed).
    TlsEkm,
    /// The TLS 1.0 PRF over the key-method-2 randoms (legacy; nothing is pushed).
    LegacyPrf,
}

/// The client lacks TLS-EKM and the server does not allow the legacy PRF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client does not support TLS keying-material export (IV_PROTO bit 3)")]
pub struct EkmRequired;

impl EkmRequired {
    pub fn auth_failed_message(&self) -> String {
        auth_failed(Some(
            "Client does not support TLS key material export (upgrade to OpenVPN 2.6)",
        ))
    }
}

/// EKM when the client can; otherwise the legacy PRF if allowed, else a refusal (§6.2
/// recommends requiring bit 3 and sending AUTH_FAILED, as `--force-tls-key-material-export`).
pub fn choose_key_derivation(
    peer: IvProto,
    allow_legacy_prf: bool,
) -> Result<KeyDerivation, EkmRequired> {
    if peer.tls_key_export() {
        Ok(KeyDerivation::TlsEkm)
    } else if allow_legacy_prf {
        Ok(KeyDerivation::LegacyPrf)
    } else {
        Err(EkmRequired)
    }
}

/// The option that tells the client how to derive keys and whether to send EXIT on the control
/// channel (§6.2, §8.3): `protocol-flags cc-exit tls-ekm` for clients with bit 7,
/// `key-derivation tls-ekm` for EKM clients without it, nothing otherwise. Deriving with EKM
/// without pushing this (or the reverse) breaks every data packet (pitfall 15).
pub fn protocol_flags_option(peer: IvProto, derivation: KeyDerivation) -> Option<String> {
    let ekm = derivation == KeyDerivation::TlsEkm;
    if peer.cc_exit_notify() {
        Some(if ekm {
            "protocol-flags cc-exit tls-ekm".to_owned()
        } else {
            "protocol-flags cc-exit".to_owned()
        })
    } else if ekm {
        Some("key-derivation tls-ekm".to_owned())
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Options-consistency string (§10)

/// Transport of the client's connection, as the options string names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The value of `name` in a `V4,item,item…` options string (e.g. `cipher` → `AES-256-GCM`).
pub fn options_string_item<'a>(options: &'a str, name: &str) -> Option<&'a str> {
    options.split(',').skip(1).find_map(|item| {
        item.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
    })
}

/// The options string for our key-method-2 reply. Mismatches only cause client warnings
/// (§10), but the recommendation is to send exactly what the client expects: its own string
/// with `tls-client` → `tls-server` and `TCPv4_CLIENT` → `TCPv4_SERVER`. If the client's string
/// is unusable we send the 2.6 default for `transport`.
pub fn server_options_string(client_options: &str, transport: Transport) -> String {
    let usable = client_options.starts_with("V4,")
        && client_options.len() < super::keys::OPTIONS_STRING_MAX
        && is_printable(client_options.as_bytes())
        && client_options.split(',').any(|i| i == "tls-client");
    if usable {
        return client_options
            .split(',')
            .map(|item| match item {
                "tls-client" => "tls-server",
                "proto TCPv4_CLIENT" => "proto TCPv4_SERVER",
                "proto TCPv6_CLIENT" => "proto TCPv6_SERVER",
                other => other,
            })
            .collect::<Vec<_>>()
            .join(",");
    }
    let (mtu, proto) = match transport {
        Transport::Udp => (1549, "UDPv4"),
        Transport::Tcp => (1551, "TCPv4_SERVER"),
    };
    format!(
        "V4,dev-type tun,link-mtu {mtu},tun-mtu 1500,proto {proto},cipher AES-256-GCM,\
         auth [null-digest],keysize 256,key-method 2,tls-server"
    )
}

// ---------------------------------------------------------------------------------------------
// PUSH_REPLY (§8.3)

/// `redirect-gateway def1 [bypass-dhcp]`: full tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectGateway {
    pub bypass_dhcp: bool,
}

/// Everything a PUSH_REPLY carries for one client. Build it per session, then [`Self::build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReply {
    /// Split-tunnel routes (`route <net> <mask>`).
    pub routes: Vec<Ipv4Net>,
    /// `dhcp-option DNS <ip>` per server.
    pub dns: Vec<Ipv4Addr>,
    /// Full tunnel.
    pub redirect_gateway: Option<RedirectGateway>,
    /// The server's tun address; needed by routes in subnet topology (§8.3).
    pub route_gateway: Ipv4Addr,
    /// Client address and prefix, pushed as `ifconfig <addr> <netmask>` after
    /// `topology subnet` (always pushed: the client default is net30).
    pub ifconfig: Ipv4Net,
    /// `ping N` / `ping-restart M` (keepalive N M/… on the server side, §9.4).
    pub ping: u32,
    pub ping_restart: u32,
    /// `peer-id N`, for clients with IV_PROTO bit 1 (DCO needs it, §7.7).
    pub peer_id: Option<u32>,
    /// Always pushed with its canonical name (pitfall 17).
    pub cipher: Cipher,
    /// `protocol-flags …` / `key-derivation tls-ekm`, see [`protocol_flags_option`].
    pub protocol_flags: Option<String>,
    /// `tun-mtu N`: only for clients that sent IV_MTU (§8.3).
    pub tun_mtu: Option<u32>,
    /// `session-timeout N`: the client disconnects after N seconds (OPT_P_TIMER, §8.3).
    pub session_timeout: Option<u32>,
    /// `auth-token <tok>`: sent instead of the password on renegotiation (§8.3).
    pub auth_token: Option<String>,
    /// `auth-token-user <base64 name>`: the name to send with the token, pushed with it as
    /// the 2.6 server does (a client without `auth-user-pass` has no name, and the 2.6
    /// client then never sends the token).
    pub auth_token_user: Option<String>,
    /// `echo …` options, last (the login banner, see [`banner_echo_options`]).
    pub echo: Vec<String>,
}

impl PushReply {
    /// The options in the order the 2.6 server uses (§8.3 observed reply).
    pub fn options(&self) -> Result<Vec<String>, OptionsError> {
        let mut o = Vec::new();
        for r in &self.routes {
            o.push(format!("route {} {}", r.network(), r.netmask()));
        }
        for d in &self.dns {
            o.push(format!("dhcp-option DNS {d}"));
        }
        if let Some(rg) = self.redirect_gateway {
            o.push(if rg.bypass_dhcp {
                "redirect-gateway def1 bypass-dhcp".to_owned()
            } else {
                "redirect-gateway def1".to_owned()
            });
        }
        o.push(format!("route-gateway {}", self.route_gateway));
        o.push("topology subnet".to_owned());
        o.push(format!("ping {}", self.ping));
        o.push(format!("ping-restart {}", self.ping_restart));
        o.push(format!(
            "ifconfig {} {}",
            self.ifconfig.addr(),
            self.ifconfig.netmask()
        ));
        if let Some(id) = self.peer_id {
            if id >= NO_PEER_ID {
                return Err(OptionsError::BadPeerId(id));
            }
            o.push(format!("peer-id {id}"));
        }
        o.push(format!("cipher {}", self.cipher.name()));
        if let Some(f) = &self.protocol_flags {
            o.push(f.clone());
        }
        if let Some(m) = self.tun_mtu {
            o.push(format!("tun-mtu {m}"));
        }
        if let Some(t) = self.session_timeout {
            o.push(format!("session-timeout {t}"));
        }
        if let Some(tok) = &self.auth_token {
            o.push(format!("auth-token {tok}"));
            if let Some(u) = self.auth_token_user.as_deref().and_then(auth_token_user) {
                o.push(u);
            }
        }
        o.extend(self.echo.iter().cloned());
        for opt in &o {
            validate_push_option(opt)?;
        }
        Ok(o)
    }

    /// The PUSH_REPLY message(s), each to be sent with [`encode_control_message`] as its own TLS
    /// record, in order. Split with `push-continuation` when one message would exceed
    /// [`PUSH_BUNDLE_SIZE`] (§8.3).
    pub fn build(&self) -> Result<Vec<String>, OptionsError> {
        split_push_reply(&self.options()?, PUSH_BUNDLE_SIZE)
    }
}

/// Longest text carried by one `echo msg…` option (the option limit is 255 bytes).
const ECHO_CHUNK: usize = 200;

/// The login banner as pushed `echo` options, the convention of the OpenVPN GUIs: each line
/// as `echo msg <text>` (a long line split with `echo msg-n`, which adds no newline), then
/// `echo msg-window <title>` to show them. The command-line client logs each as
/// `ECHO-PULL:msg …`. The text must be printable ASCII without commas (checked by the
/// endpoint validation); empty lines are sent as a single space so they survive.
pub fn banner_echo_options(title: &str, banner: &str) -> Vec<String> {
    let mut o = Vec::new();
    for line in banner.lines() {
        let line = line.trim_end();
        let line = if line.is_empty() { " " } else { line };
        let mut rest = line;
        while rest.len() > ECHO_CHUNK {
            // ASCII only (validated), so any byte index is a char boundary.
            let (head, tail) = rest.split_at(ECHO_CHUNK);
            o.push(format!("echo msg-n {head}"));
            rest = tail;
        }
        o.push(format!("echo msg {rest}"));
    }
    if !o.is_empty() {
        o.push(format!("echo msg-window {title}"));
    }
    o
}

/// A pushed option must be non-empty printable ASCII without commas (the separator), at most
/// 255 bytes (§8.3).
/// `auth-token-user <base64 name>`, or `None` for a name that does not fit a pushed option
/// (then not pushed: the client keeps the name it has, as the 2.6 server does).
pub fn auth_token_user(name: &str) -> Option<String> {
    use base64::Engine as _;
    let o = format!(
        "auth-token-user {}",
        base64::engine::general_purpose::STANDARD.encode(name)
    );
    (!name.is_empty() && o.len() <= PUSH_OPTION_MAX).then_some(o)
}

pub fn validate_push_option(opt: &str) -> Result<(), OptionsError> {
    let ok = !opt.is_empty()
        && opt.len() <= PUSH_OPTION_MAX
        && is_printable(opt.as_bytes())
        && !opt.contains(',');
    if ok {
        Ok(())
    } else {
        Err(OptionsError::BadPushOption(sanitize_text(opt, 64)))
    }
}

/// Packs options into `PUSH_REPLY,…` messages of at most `bundle` bytes including the NUL.
/// One message needs no marker; several end in `,push-continuation 2` except the last, which
/// ends in `,push-continuation 1` (§8.3).
pub fn split_push_reply(options: &[String], bundle: usize) -> Result<Vec<String>, OptionsError> {
    for o in options {
        validate_push_option(o)?;
    }
    const HEAD: &str = "PUSH_REPLY";
    let all_len = HEAD.len() + options.iter().map(|o| 1 + o.len()).sum::<usize>();
    if all_len < bundle {
        let mut m = String::with_capacity(all_len);
        m.push_str(HEAD);
        for o in options {
            m.push(',');
            m.push_str(o);
        }
        return Ok(vec![m]);
    }
    // Room for options in each part: the header, the marker and the NUL are fixed costs.
    let budget = bundle.saturating_sub(HEAD.len() + CONTINUATION_MORE.len() + 1);
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::from(HEAD);
    for o in options {
        if cur.len() > HEAD.len() && cur.len() - HEAD.len() + 1 + o.len() > budget {
            parts.push(std::mem::replace(&mut cur, String::from(HEAD)));
        }
        if 1 + o.len() > budget {
            // Only possible with a tiny `bundle`; options are ≤ 255 bytes.
            return Err(OptionsError::TooLong(HEAD.len() + 1 + o.len() + 1));
        }
        cur.push(',');
        cur.push_str(o);
    }
    parts.push(cur);
    let n = parts.len();
    for (i, p) in parts.iter_mut().enumerate() {
        p.push_str(if i + 1 == n {
            CONTINUATION_LAST
        } else {
            CONTINUATION_MORE
        });
    }
    Ok(parts)
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
