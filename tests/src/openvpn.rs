//! Harness around the stock `openvpn` 2.6 binary: as a client of our server (end-to-end
//! tests) and as the reference server (`openvpn --server`, the baseline of
//! `cargo xtask bench tunnel`), plus iperf3 and ping helpers. Everything it starts or creates
//! is stopped and removed on drop, also when a test panics.
//!
//! Topology (`Lab::stock`; with our server, `gateway::Gateway` builds gw and net and
//! [`Underlay::attach`] adds the clients to its gateway namespace):
//!
//! ```text
//!  client ns i (pct-oc…)              gw ns (pct-g…)                      net ns (pct-n…)
//!  eth0 192.0.2.(11+i) ─veth p2p─ pct-u… 192.0.2.1      pct-gw0 10.0.0.1/24 ─veth─ eth0 10.0.0.10/24
//!  pct-tun 10.100.0.x  (tunnel)  ─────►  openvpn :1194 ─► pct-tun 10.100.0.1 ──► (SNAT to 10.0.0.1)
//! ```
//!
//! The underlay is one veth pair per client, point to point (`192.0.2.1 peer 192.0.2.(11+i)`),
//! not a bridge: each client has its own interface in the gateway namespace (a native XDP
//! attach point, if our server ever wants one) and clients cannot see each other. The
//! gateway sides have `forwarding=0`, so a client reaches the private network only through
//! the tunnel, never by plain routing through the gateway.
use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, File},
    io::Read,
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant, SystemTime},
};

use portcullis::{
    openvpn::tls_crypt::StaticKey,
    pki::{self, CertificateAuthority, IssuedCert, Validity},
};

use crate::{
    clients::{run_in_ns, IcmpSocket},
    gateway::{fmt_mac, GW_IF, GW_NET_ADDR, SERVER},
    mac_of, unique, NetNs,
};

/// The gateway's underlay address (where the OpenVPN server listens).
pub const UNDERLAY_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The default OpenVPN port.
pub const OVPN_PORT: u16 = 1194;
/// The VPN pool; the server (stock or ours) is `.1`, clients get `.2` upwards.
pub const VPN_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 0);
pub const VPN_NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// The private network behind the gateway (see `gateway::SERVER`, `gateway::GW_NET_ADDR`).
pub const PRIVATE_NETWORK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 0);
/// The tunnel device name on both ends (inside namespaces only).
pub const TUN_DEV: &str = "pct-tun";
/// Client names [`LabPki::generate`] issues certificates for.
pub const DEFAULT_CLIENTS: &[&str] = &["alice", "bob", "carol", "dave"];
/// Common name of the server certificate.
pub const SERVER_CN: &str = "server";

/// The underlay address of client `i` (0-based).
pub fn underlay_client_addr(i: usize) -> Ipv4Addr {
    assert!(i < 200, "the underlay has room for 200 clients");
    Ipv4Addr::new(192, 0, 2, 11 + i as u8)
}

/// Poll `f` every 20 ms until it is true or `timeout` passes.
fn poll(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- temporary directories ------------------------------------------------------------------

static TMP_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory under the system temp dir, removed on drop (kept when `PCT_KEEP_TMP` is set,
/// for post-mortems).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("pct-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PCT_KEEP_TMP").is_some() {
            eprintln!("PCT_KEEP_TMP: keeping {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

// ---- PKI ------------------------------------------------------------------------------------

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A lab PKI in a directory, written by `portcullis::pki`: `ca.crt`, `server.crt`/`.key`,
/// `<client>.crt`/`.key`, `tls-crypt.key`. ECDSA P-256 throughout.
pub struct LabPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server: CertKey,
    pub clients: BTreeMap<String, CertKey>,
    pub tls_crypt: PathBuf,
    /// The CA, to issue more certificates or sign CRLs.
    pub authority: CertificateAuthority,
}

impl LabPki {
    /// CA, server (`CN=server`), the [`DEFAULT_CLIENTS`] and a tls-crypt key in `dir`.
    pub fn generate(dir: &Path) -> LabPki {
        Self::with_clients(dir, DEFAULT_CLIENTS)
    }

    /// Like [`LabPki::generate`] with the given client common names.
    pub fn with_clients(dir: &Path, clients: &[&str]) -> LabPki {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let authority = pki::write_demo_pki(dir, SERVER_CN, clients)
            .unwrap_or_else(|e| panic!("lab PKI in {}: {e}", dir.display()));
        let tls_crypt = dir.join("tls-crypt.key");
        write_tls_crypt_key(&tls_crypt);
        LabPki {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.crt"),
            server: cert_key(dir, "server"),
            clients: clients
                .iter()
                .map(|&c| (c.to_string(), cert_key(dir, c)))
                .collect(),
            tls_crypt,
            authority,
        }
    }

    /// The certificate and key of client `name` (panics if it was not issued).
    pub fn client(&self, name: &str) -> &CertKey {
        self.clients
            .get(name)
            .unwrap_or_else(|| panic!("no client certificate for {name:?}"))
    }

    /// Issue one more client certificate (say, an expired one) as `<cn>.crt`/`.key`; the
    /// returned [`IssuedCert`] has the serial a CRL needs.
    pub fn issue_client(&mut self, cn: &str, validity: Validity) -> (CertKey, IssuedCert) {
        let issued = self
            .authority
            .issue_client(cn, validity)
            .unwrap_or_else(|e| panic!("issue client {cn:?}: {e}"));
        let ck = cert_key(&self.dir, cn);
        fs::write(&ck.cert, &issued.cert_pem).expect("write client cert");
        write_private(&ck.key, &issued.key_pem);
        self.clients.insert(cn.to_string(), ck.clone());
        (ck, issued)
    }

    /// Write `crl.pem` revoking `serials` (valid from an hour ago for a day) and return its
    /// path, for `crl-verify`.
    pub fn write_crl(&self, serials: &[Vec<u8>], number: u64) -> PathBuf {
        let now = SystemTime::now();
        let pem = self
            .authority
            .crl(
                serials,
                now - Duration::from_secs(3600),
                now + Duration::from_secs(86_400),
                number,
            )
            .unwrap_or_else(|e| panic!("sign CRL: {e}"));
        let path = self.dir.join("crl.pem");
        fs::write(&path, pem).expect("write CRL");
        path
    }
}

fn cert_key(dir: &Path, name: &str) -> CertKey {
    CertKey {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    }
}

/// Write a file only its owner can read (openvpn warns about readable keys).
fn write_private(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A fresh random tls-crypt (static) key, written in the format `openvpn --genkey` uses.
pub fn write_tls_crypt_key(path: &Path) {
    let mut bytes = [0u8; 256];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    write_private(path, &StaticKey::from_bytes(bytes).to_pem());
}

// ---- processes ------------------------------------------------------------------------------

/// A process started inside a namespace with stdout and stderr going to a log file. On drop:
/// SIGTERM, up to 3 s of grace, SIGKILL, wait.
pub struct Proc {
    child: Mutex<Child>,
    pid: u32,
    pub what: String,
    pub log: PathBuf,
}

impl Proc {
    /// `ip netns exec <ns> <args...>`; `ip` execs the program, so the pid is the program's.
    pub fn spawn(ns: &NetNs, args: &[&str], log: &Path, what: &str) -> Proc {
        let out = File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup log fd");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {args:?} in {}: {e}", ns.name));
        Proc {
            pid: child.id(),
            child: Mutex::new(child),
            what: format!("{what} in {}", ns.name),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn is_running(&self) -> bool {
        matches!(self.child().try_wait(), Ok(None))
    }

    /// The child, also after a panic elsewhere poisoned the lock (drop must still stop it).
    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log so far (empty if unreadable).
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Wait until the log contains `pattern`; false on timeout or when the process exits
    /// without having written it.
    pub fn wait_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.wait_log_or_exit(pattern, timeout).is_ok()
    }

    /// Wait for `pattern`, failing early when the process exits; the error has the log tail.
    pub fn wait_log_or_exit(&self, pattern: &str, timeout: Duration) -> Result<(), String> {
        poll(timeout, || {
            self.log().contains(pattern) || !self.is_running()
        });
        if self.log().contains(pattern) {
            return Ok(());
        }
        let why = if self.is_running() {
            "timed out"
        } else {
            "exited"
        };
        Err(format!(
            "{} {why} before {pattern:?} ({timeout:?}); log tail:\n{}",
            self.what,
            self.log_tail(40)
        ))
    }

    /// How often `pattern` occurs in the log.
    pub fn log_count(&self, pattern: &str) -> usize {
        self.log().matches(pattern).count()
    }

    /// Wait until `pattern` occurs at least `n` times (e.g. the second "Initialization
    /// Sequence Completed" after a reconnect); false on timeout or exit.
    pub fn wait_log_count(&self, pattern: &str, n: usize, timeout: Duration) -> bool {
        poll(timeout, || {
            self.log_count(pattern) >= n || !self.is_running()
        });
        self.log_count(pattern) >= n
    }

    /// Stop now (also what drop does); returns the exit status, if any.
    pub fn stop(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child();
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        // SAFETY: kill(2) on our own, not yet reaped child: the pid cannot have been reused.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ({}) ----\n{}\n---- end of log ----",
                self.what,
                self.log.display(),
                self.log_tail(200)
            );
        }
    }
}

// ---- underlay and lab topology --------------------------------------------------------------

/// One client namespace on the underlay.
pub struct UnderlayClient {
    /// Its underlay address (192.0.2.(11+i)); the gateway is [`UNDERLAY_GW`].
    pub addr: Ipv4Addr,
    /// The gateway-side veth (in the gateway namespace).
    pub gw_if: String,
    pub ns: NetNs,
}

/// Client namespaces wired to a gateway namespace, one point-to-point veth pair each.
pub struct Underlay {
    pub clients: Vec<UnderlayClient>,
    gw_ns: String,
}

impl Underlay {
    /// Add `n_clients` client namespaces to `gw` (once per gateway namespace: the addresses
    /// are fixed). Call it after the gateway enabled `ip_forward`: writing that sysctl resets
    /// every interface's `forwarding`, including the `forwarding=0` set here.
    pub fn attach(gw: &NetNs, n_clients: usize) -> Underlay {
        let mut clients = Vec::with_capacity(n_clients);
        for i in 0..n_clients {
            let addr = underlay_client_addr(i);
            let ns = NetNs::new("oc");
            let gw_if = unique("u");
            gw.ip(&[
                "link", "add", &gw_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ]);
            for k in ["all", "default", "eth0"] {
                ns.sysctl(&format!("net.ipv6.conf.{k}.disable_ipv6"), "1");
            }
            gw.sysctl(&format!("net.ipv6.conf.{gw_if}.disable_ipv6"), "1");
            // Only the tunnel may carry client traffic onward.
            gw.sysctl(&format!("net.ipv4.conf.{gw_if}.forwarding"), "0");
            gw.ip(&[
                "addr",
                "add",
                &format!("{UNDERLAY_GW}/32"),
                "peer",
                &format!("{addr}/32"),
                "dev",
                &gw_if,
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{addr}/32"),
                "peer",
                &format!("{UNDERLAY_GW}/32"),
                "dev",
                "eth0",
            ]);
            gw.ip(&["link", "set", &gw_if, "up"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            // A default route makes the client look like a real host (openvpn finds its
            // net_gateway, so redirect-gateway works); forwarding=0 above keeps it harmless.
            ns.ip(&["route", "add", "default", "via", &UNDERLAY_GW.to_string()]);
            // As in `gateway::Gateway`: complete checksums from senders, GRO on for
            // XDP-redirect targets.
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"]);
            gw.exec(&["ethtool", "-K", &gw_if, "tx", "off", "gro", "on"]);
            clients.push(UnderlayClient { addr, gw_if, ns });
        }
        Underlay {
            clients,
            gw_ns: gw.name.clone(),
        }
    }

    pub fn client(&self, i: usize) -> &UnderlayClient {
        &self.clients[i]
    }

    /// Names of the client namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        self.clients.iter().map(|c| c.ns.name.clone()).collect()
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        // Deleting a client namespace removes its veth pair, unless a process still holds
        // the namespace; deleting the gateway side explicitly covers that case.
        for c in &self.clients {
            let _ = Command::new("ip")
                .args(["-n", &self.gw_ns, "link", "del", &c.gw_if])
                .output();
        }
    }
}

/// The stock baseline topology: gateway and private network namespaces (no XDP; kernel
/// forwarding and an nftables SNAT of the VPN pool to 10.0.0.1) and underlay clients.
/// Field order is drop order: clients first.
pub struct Lab {
    pub underlay: Underlay,
    pub net: NetNs,
    pub gw: NetNs,
}

impl Lab {
    /// Gateway `pct-g…` (`pct-gw0` 10.0.0.1/24, underlay 192.0.2.1), private network
    /// `pct-n…` (`eth0` 10.0.0.10/24, default route via 10.0.0.1) and `n_clients` clients.
    pub fn stock(n_clients: usize) -> Lab {
        let gw = NetNs::new("g");
        let net = NetNs::new("n");
        gw.ip(&[
            "link", "add", GW_IF, "type", "veth", "peer", "name", "eth0", "netns", &net.name,
        ]);
        gw.ip(&["addr", "add", &format!("{GW_NET_ADDR}/24"), "dev", GW_IF]);
        net.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "eth0"]);
        gw.ip(&["link", "set", GW_IF, "up"]);
        net.ip(&["link", "set", "eth0", "up"]);
        // The same offloads and static neighbours as `gateway::Gateway`, so the baseline and
        // our data path run on identical links.
        net.exec(&["ethtool", "-K", "eth0", "gro", "on", "tx", "off"]);
        gw.exec(&["ethtool", "-K", GW_IF, "tx", "off"]);
        for ns in [&gw, &net] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        }
        gw.sysctl("net.ipv4.ip_forward", "1");
        let smac = fmt_mac(&mac_of(&net, "eth0"));
        let gmac = fmt_mac(&mac_of(&gw, GW_IF));
        gw.ip(&[
            "neigh",
            "replace",
            &SERVER.to_string(),
            "lladdr",
            &smac,
            "dev",
            GW_IF,
            "nud",
            "permanent",
        ]);
        net.ip(&[
            "neigh",
            "replace",
            &GW_NET_ADDR.to_string(),
            "lladdr",
            &gmac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        net.ip(&["route", "add", "default", "via", &GW_NET_ADDR.to_string()]);
        // What the XDP data path does for a target network: SNAT the pool to the gateway's
        // address on it (conntrack picks ports as needed).
        let pool = format!("{VPN_NETWORK}/24");
        gw.exec(&["nft", "add", "table", "ip", "pct_nat"]);
        gw.exec(&[
            "nft",
            "add chain ip pct_nat post { type nat hook postrouting priority srcnat ; }",
        ]);
        gw.exec(&[
            "nft",
            &format!(
                "add rule ip pct_nat post ip saddr {pool} oifname \"{GW_IF}\" snat to {GW_NET_ADDR}"
            ),
        ]);
        let underlay = Underlay::attach(&gw, n_clients);
        Lab { underlay, net, gw }
    }

    pub fn client(&self, i: usize) -> &UnderlayClient {
        self.underlay.client(i)
    }

    /// Every namespace of the lab (to check that none is left after drop).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = self.underlay.namespaces();
        v.push(self.gw.name.clone());
        v.push(self.net.name.clone());
        v
    }
}

/// True if the named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

// ---- configuration ---------------------------------------------------------------------------

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

// ---- stock client ----------------------------------------------------------------------------

/// What a connected client learned, from its up script's environment.
#[derive(Clone, Debug)]
pub struct Connected {
    /// `ifconfig_local`.
    pub tun_addr: Ipv4Addr,
    pub env: HashMap<String, String>,
}

impl Connected {
    /// Pushed routes `(network, netmask)` from `route_network_N` / `route_netmask_N`.
    pub fn routes(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        (1..)
            .map_while(|i| {
                let net = self.env.get(&format!("route_network_{i}"))?;
                let mask = self.env.get(&format!("route_netmask_{i}"))?;
                Some((net.parse().ok()?, mask.parse().ok()?))
            })
            .collect()
    }

    /// `foreign_option_N` values in order (`dhcp-option DNS 10.0.0.2`, ...).
    pub fn foreign_options(&self) -> Vec<String> {
        (1..)
            .map_while(|i| self.env.get(&format!("foreign_option_{i}")).cloned())
            .collect()
    }
}

/// A stock `openvpn` client in a namespace. Drop stops it (and prints its log if the thread
/// is panicking). One per namespace: the tun device is always [`TUN_DEV`].
pub struct OvpnClient {
    pub proc: Proc,
    env_file: PathBuf,
    // Last: the log must outlive the process guard's panic dump.
    _dir: TempDir,
}

impl OvpnClient {
    pub fn start(ns: &NetNs, cfg: &ClientConfig) -> OvpnClient {
        let dir = TempDir::new("ovpnc");
        let env_file = dir.path().join("up.env");
        let up = dir.path().join("up.sh");
        // Atomic rename: a reader never sees half a file.
        fs::write(
            &up,
            format!(
                "#!/bin/sh\nenv > '{0}.tmp' && mv '{0}.tmp' '{0}'\n",
                env_file.display()
            ),
        )
        .expect("write up script");
        fs::set_permissions(&up, fs::Permissions::from_mode(0o755)).expect("chmod up script");
        let conf = dir.path().join("client.conf");
        fs::write(&conf, cfg.render(&up)).expect("write client config");
        let conf_s = conf.to_string_lossy().into_owned();
        let proc = Proc::spawn(
            ns,
            &["openvpn", "--config", &conf_s],
            &dir.path().join("openvpn.log"),
            "openvpn client",
        );
        OvpnClient {
            proc,
            env_file,
            _dir: dir,
        }
    }

    /// Wait for "Initialization Sequence Completed" and read the up script's environment.
    pub fn wait_connected(&self, timeout: Duration) -> Result<Connected, String> {
        self.proc
            .wait_log_or_exit("Initialization Sequence Completed", timeout)?;
        // The up script runs before that line is logged, so its file exists by now.
        let env = self.env().ok_or_else(|| {
            format!(
                "connected but no up-script environment at {:?}",
                self.env_file
            )
        })?;
        let tun_addr = env
            .get("ifconfig_local")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no ifconfig_local in the up-script environment: {env:?}"))?;
        Ok(Connected { tun_addr, env })
    }

    /// The environment of the last up-script run, if any.
    pub fn env(&self) -> Option<HashMap<String, String>> {
        let text = fs::read_to_string(&self.env_file).ok()?;
        Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn wait_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.proc.wait_log(pattern, timeout)
    }

    /// How often `pattern` occurs in the log.
    pub fn log_count(&self, pattern: &str) -> usize {
        self.proc.log_count(pattern)
    }

    /// Wait until `pattern` occurs `n` times (after a reconnect the first connect's lines are
    /// still in the log, so [`OvpnClient::wait_connected`] returns at once).
    pub fn wait_log_count(&self, pattern: &str, n: usize, timeout: Duration) -> bool {
        self.proc.wait_log_count(pattern, n, timeout)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }
}

// ---- stock server ----------------------------------------------------------------------------

/// The reference `openvpn` server in a namespace (the gateway's, for the baseline).
pub struct StockServer {
    pub proc: Proc,
    _dir: TempDir,
}

impl StockServer {
    pub fn start(ns: &NetNs, cfg: &StockServerConfig) -> StockServer {
        let dir = TempDir::new("ovpns");
        let conf = dir.path().join("server.conf");
        fs::write(&conf, cfg.render()).expect("write server config");
        let conf_s = conf.to_string_lossy().into_owned();
        let proc = Proc::spawn(
            ns,
            &["openvpn", "--config", &conf_s],
            &dir.path().join("openvpn.log"),
            "openvpn server",
        );
        StockServer { proc, _dir: dir }
    }

    /// Wait until the server has its tun device up and listens.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        self.proc
            .wait_log_or_exit("Initialization Sequence Completed", timeout)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn wait_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.proc.wait_log(pattern, timeout)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }
}

// ---- iperf3 and ping -------------------------------------------------------------------------

/// An `iperf3 -s` in a namespace, stopped on drop.
pub struct Iperf3Server {
    pub proc: Proc,
    _dir: TempDir,
}

/// Start `iperf3 -s -p port` in `ns` and wait (up to 5 s) until it listens.
pub fn iperf3_server(ns: &NetNs, port: u16) -> Iperf3Server {
    let dir = TempDir::new("iperfs");
    let port_s = port.to_string();
    let proc = Proc::spawn(
        ns,
        &["iperf3", "-s", "-p", &port_s, "--forceflush"],
        &dir.path().join("iperf3.log"),
        "iperf3 server",
    );
    if let Err(e) = proc.wait_log_or_exit("Server listening", Duration::from_secs(5)) {
        panic!("{e}");
    }
    Iperf3Server { proc, _dir: dir }
}

/// The summary of one iperf3 TCP run.
#[derive(Clone, Debug, PartialEq)]
pub struct IperfResult {
    /// Goodput as the receiver counted it (`end.sum_received`).
    pub bits_per_second: f64,
    /// As the sender counted it (`end.sum_sent`).
    pub sent_bits_per_second: f64,
    /// TCP retransmissions on the sender.
    pub retransmits: u64,
    /// CPU use (percent of one core) of the client and server iperf3 processes.
    pub cpu_host: f64,
    pub cpu_remote: f64,
}

/// Run `iperf3 -c server_ip -p port -t secs -P streams [-R] -J` in `ns` (bounded: killed after
/// `secs + 15` s) and parse its report.
pub fn iperf3_client(
    ns: &NetNs,
    server_ip: Ipv4Addr,
    port: u16,
    secs: u32,
    reverse: bool,
    streams: u32,
) -> Result<IperfResult, String> {
    let dir = TempDir::new("iperfc");
    let (ip, port_s, t, p) = (
        server_ip.to_string(),
        port.to_string(),
        secs.to_string(),
        streams.max(1).to_string(),
    );
    let mut args = vec![
        "iperf3",
        "-c",
        &ip,
        "-p",
        &port_s,
        "-t",
        &t,
        "-P",
        &p,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if reverse {
        args.push("-R");
    }
    // Output to a file, not a pipe: a long report must not block the process.
    let proc = Proc::spawn(ns, &args, &dir.path().join("iperf3.json"), "iperf3 client");
    let limit = Duration::from_secs(u64::from(secs) + 15);
    if !poll(limit, || !proc.is_running()) {
        proc.stop();
        return Err(format!("iperf3 client did not finish within {limit:?}"));
    }
    let text = proc.log();
    drop(proc);
    parse_iperf3(&text)
}

/// Parse the `-J` report of a TCP run.
pub fn parse_iperf3(text: &str) -> Result<IperfResult, String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("iperf3 output is not JSON ({e}): {text}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let end = &v["end"];
    let num = |x: &serde_json::Value, what: &str| {
        x.as_f64()
            .ok_or_else(|| format!("iperf3 report lacks {what}: {text}"))
    };
    Ok(IperfResult {
        bits_per_second: num(
            &end["sum_received"]["bits_per_second"],
            "end.sum_received.bits_per_second",
        )?,
        sent_bits_per_second: num(
            &end["sum_sent"]["bits_per_second"],
            "end.sum_sent.bits_per_second",
        )?,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        cpu_host: end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(0.0),
        cpu_remote: end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(0.0),
    })
}

static PING_ID: AtomicU32 = AtomicU32::new(0);

/// Send up to `count` ICMP echoes from `ns` to `dst` over a raw socket
/// (`clients::IcmpSocket`; the machines have no `ping` binary), one at a time, each waiting
/// up to 1 s, all within `timeout`; true as soon as one is answered.
pub fn ping(ns: &NetNs, dst: Ipv4Addr, count: u32, timeout: Duration) -> bool {
    let id = (std::process::id() as u16) ^ (PING_ID.fetch_add(1, Ordering::Relaxed) as u16);
    run_in_ns(&ns.name, move || {
        let Ok(s) = IcmpSocket::new() else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        for seq in 1..=count.max(1) as u16 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if s.send_echo(dst, id, seq, b"pct-ping").is_ok()
                && s.wait_reply(dst, id, seq, left.min(Duration::from_secs(1)))
            {
                return true;
            }
        }
        false
    })
}
