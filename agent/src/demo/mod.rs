//! `portcullis demo`: a gateway, two clients and a private network in network namespaces.
//! Each client runs the stock `openvpn` client, which connects to the agent's OpenVPN server
//! with its own certificate (a demo PKI made on the fly); real traffic (ICMP, TCP, UDP from
//! the clients' own network stacks) goes through the tunnel into the XDP data path, which
//! applies an embedded AWS-style policy; the verdicts are shown with their reasons.
mod console;
mod fleet;
mod net;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use portcullis_common::{DenyEvent, DropReason};

use crate::{
    config::EndpointConfig,
    datapath,
    endpoint::{BuildOptions, Endpoint},
    openvpn::{env::Env, server::ServerEvent, tls_crypt::StaticKey},
    pki,
    policy::{self, PolicyInput},
};
use net::{Ns, Topology};

/// The embedded default policy.
pub const DEFAULT_POLICY: &str = include_str!("policy.toml");

const ENDPOINT: &str = "demo";
const TAP: &str = "pc-dtap";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

pub struct DemoOptions {
    /// Keep everything up until Ctrl-C (to inspect with bpftool).
    pub keep: bool,
    /// Two gateways of one fleet instead of one gateway ([`fleet`]).
    pub fleet: bool,
}

struct User {
    name: &'static str,
    ns: &'static str,
    /// The client's address on the underlay (its "internet" address).
    underlay: Ipv4Addr,
    gw_if: &'static str,
}

const USERS: [User; 2] = [
    User {
        name: "alice",
        ns: "pc-demo-alice",
        underlay: Ipv4Addr::new(192, 0, 2, 11),
        gw_if: "pc-dal0",
    },
    User {
        name: "bob",
        ns: "pc-demo-bob",
        underlay: Ipv4Addr::new(192, 0, 2, 12),
        gw_if: "pc-dbo0",
    },
];

const PKI_DIR: &str = "/tmp/portcullis-demo-pki";
const OVPN_PORT: u16 = 1194;

/// A stock `openvpn` client in a namespace; killed on drop.
struct OvpnClient {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl OvpnClient {
    fn start(u: &User, dir: &std::path::Path) -> Result<OvpnClient> {
        let conf = dir.join(format!("{}.ovpn", u.name));
        let log = dir.join(format!("{}.log", u.name));
        std::fs::write(
            &conf,
            format!(
                "client\ndev tun\nproto udp4\nremote {gw} {OVPN_PORT}\nnobind\n\
                 remote-cert-tls server\nca {d}/ca.crt\ncert {d}/{n}.crt\nkey {d}/{n}.key\n\
                 tls-crypt {d}/tls-crypt.key\ndata-ciphers AES-256-GCM:CHACHA20-POLY1305\n\
                 connect-retry 1\nexplicit-exit-notify 1\nverb 3\n",
                gw = net::UNDERLAY_GW,
                d = dir.display(),
                n = u.name
            ),
        )?;
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", u.ns, "openvpn", "--config"])
            .arg(&conf)
            .arg("--log")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting openvpn (install it: cargo xtask setup)")?;
        Ok(OvpnClient { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_connected(&mut self, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains("Initialization Sequence Completed") {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("openvpn exited ({st}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "openvpn did not connect within {timeout:?}:\n{}",
            self.log()
        )
    }
}

impl Drop for OvpnClient {
    fn drop(&mut self) {
        // SIGTERM lets it send its exit notification; then make sure it is gone.
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
enum Probe {
    Ping(Ipv4Addr),
    Tcp(Ipv4Addr, u16),
    Udp(Ipv4Addr, u16),
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Ping(a) => write!(f, "icmp echo {a}"),
            Probe::Tcp(a, p) => write!(f, "tcp {a}:{p}"),
            Probe::Udp(a, p) => write!(f, "udp {a}:{p}"),
        }
    }
}

pub fn run(opts: DemoOptions) -> Result<()> {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    if opts.fleet {
        return fleet::run();
    }
    let input: PolicyInput =
        toml::from_str(DEFAULT_POLICY).context("parsing the embedded demo policy")?;

    println!("Portcullis demo: gateway, private network (app 10.0.0.10, db 10.0.0.20), clients alice (engineering) and bob (finance)\n");
    let topo = Topology::build(
        &USERS
            .iter()
            .map(|u| (u.ns, u.gw_if, u.underlay))
            .collect::<Vec<_>>(),
    )?;
    let servers = net::Servers::start(&topo.net)?;

    // Everything below runs inside the gateway namespace (this thread only).
    let _in_gw = topo.gw.enter()?;
    let pin_root = std::path::PathBuf::from(datapath::DEFAULT_PIN_ROOT);
    datapath::remove_pins(&pin_root.join(ENDPOINT));
    // The OpenVPN server: a demo PKI, tls-crypt, full tunnel (so that every destination is
    // the data path's decision), listening on the underlay.
    let pki_dir = std::path::PathBuf::from(PKI_DIR);
    let _ = std::fs::remove_dir_all(&pki_dir);
    std::fs::create_dir_all(&pki_dir)?;
    let _pki_guard = RemoveDir(pki_dir.clone());
    pki::write_demo_pki(
        &pki_dir,
        "portcullis-demo-gateway",
        &USERS.iter().map(|u| u.name).collect::<Vec<_>>(),
    )?;
    let tc_key = StaticKey::generate(&*Env::system().rng)
        .map_err(|_| anyhow::anyhow!("no system randomness for the tls-crypt key"))?;
    std::fs::write(pki_dir.join("tls-crypt.key"), tc_key.to_pem())?;
    let listen = SocketAddr::from((net::UNDERLAY_GW, OVPN_PORT));
    // The console is served by the agent's loop, which the demo runs only with --keep.
    let console = match opts.keep {
        true => Some(console::prepare(
            &pki_dir,
            SocketAddr::from((net::UNDERLAY_GW, console::PORT)),
        )?),
        false => None,
    };
    let cfg = endpoint_config(&pki_dir, listen, console.as_ref().map(|c| c.toml.as_str()))?;
    let mut endpoint = Endpoint::build(
        &cfg,
        &BuildOptions {
            pin_root,
            tap_name: Some(TAP.into()),
            tap_queues: Some(2),
            signals: false,
            ..BuildOptions::default()
        },
    )?;
    let generation = endpoint.generation();
    println!(
        "gateway: XDP on {TAP} (clients) and pc-dgw0 (private network), policy generation {generation}, maps pinned in {}/{ENDPOINT}",
        datapath::DEFAULT_PIN_ROOT
    );
    let ev_rx = endpoint.subscribe();
    println!("openvpn server: udp and tcp {listen}, tls-crypt, certificates in {PKI_DIR}");

    let mut clients = Vec::new();
    let mut slots = Vec::new();
    // As the agent keeps them for `connections list`.
    let mut connections = std::collections::BTreeMap::new();
    for u in &USERS {
        let mut c = OvpnClient::start(u, &pki_dir)?;
        c.wait_connected(Duration::from_secs(30))?;
        let (ev, connected) = wait_connected(&ev_rx, u.name, Duration::from_secs(5))?;
        connections.insert(ev.0, (connected, Instant::now()));
        let groups = input.local_groups_of(u.name);
        println!(
            "client {:<5} openvpn connected from {}: tunnel address {}, {}, groups {:?}",
            u.name, u.underlay, ev.1, ev.2, groups
        );
        slots.push((u.name, ev.0, ev.1));
        clients.push(c);
    }
    let mut events = endpoint.datapath_mut().maps.take_deny_events()?;
    let dp = endpoint.datapath();

    let probes: [(&User, Probe); 10] = [
        (&USERS[0], Probe::Ping(Ipv4Addr::new(10, 0, 0, 10))),
        (&USERS[0], Probe::Tcp(Ipv4Addr::new(10, 0, 0, 10), 80)),
        (&USERS[0], Probe::Udp(Ipv4Addr::new(10, 0, 0, 10), 53)),
        (&USERS[0], Probe::Tcp(Ipv4Addr::new(10, 0, 0, 10), 22)),
        (&USERS[0], Probe::Ping(Ipv4Addr::new(10, 0, 0, 20))),
        (&USERS[1], Probe::Tcp(Ipv4Addr::new(10, 0, 0, 20), 5432)),
        (&USERS[1], Probe::Ping(Ipv4Addr::new(10, 0, 0, 20))),
        (&USERS[1], Probe::Tcp(Ipv4Addr::new(10, 0, 0, 10), 80)),
        (&USERS[1], Probe::Tcp(Ipv4Addr::new(10, 0, 0, 20), 22)),
        (&USERS[1], Probe::Udp(Ipv4Addr::new(192, 168, 77, 7), 53)),
    ];
    println!("\n{:<6} {:<24} {:<8} detail", "user", "flow", "verdict");
    let mut unexpected = 0;
    for (u, probe) in probes {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        let ns = Ns::open(u.ns)?;
        let outcome = ns.run(move || run_probe(probe))?;
        let denial = drain_events(&mut events)
            .into_iter()
            .find(|e| e.flow.dst_v4() == probe_dst(probe));
        let user_groups = input.local_groups_of(u.name).into_iter().collect();
        let expected = expected_verdict(&input, &user_groups, probe);
        let (verdict, detail) = match (&outcome, &denial) {
            (Ok(reply), _) => (
                "ALLOWED",
                format!(
                    "{reply}\n{:<40}by {}",
                    "",
                    deciding_rule(&input, u.name, probe, None)
                ),
            ),
            (Err(_), Some(ev)) => {
                let reason = DropReason::from_u8(ev.reason);
                (
                    "DENIED",
                    format!(
                        "{}: {}",
                        reason.map(|r| r.name()).unwrap_or("?"),
                        deciding_rule(&input, u.name, probe, reason)
                    ),
                )
            }
            (Err(e), None) => ("FAILED", e.clone()),
        };
        if (verdict == "ALLOWED") != expected.is_none() || (verdict == "FAILED") {
            unexpected += 1;
        }
        println!(
            "{:<6} {:<24} {:<8} {detail}",
            u.name,
            probe.to_string(),
            verdict
        );
    }

    println!("\nconnections (as `portcullis connections list` shows them):");
    // Certificate-only: no directory grants.
    let conns =
        crate::endpoint::status::list(dp, endpoint.tunnel(), &connections, &Default::default());
    print!("{}", crate::cli::connections::table(&conns));

    // Live counters: both users send a ping every 200 ms for 3 s; the per-session counters
    // (per-CPU array in the data path) are read every second.
    println!("\nlive counters (alice pings the app server, bob the database, 5 per second):");
    let stop_pings = Arc::new(AtomicBool::new(false));
    let mut pingers = Vec::new();
    for (ns, dst) in [
        (USERS[0].ns, Ipv4Addr::new(10, 0, 0, 10)),
        (USERS[1].ns, Ipv4Addr::new(10, 0, 0, 20)),
    ] {
        let (ns, stop) = (Ns::open(ns)?, stop_pings.clone());
        pingers.push(std::thread::spawn(move || {
            ns.run(move || {
                // Bounded: 20 pings at most, whatever happens to `stop`.
                for _ in 0..20 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let _ = run_probe(Probe::Ping(dst));
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        }));
    }
    for second in 1..=3 {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        let line: Vec<String> = slots
            .iter()
            .map(|(name, slot, _)| {
                let s = dp.maps.session_stats(*slot).unwrap_or_default();
                format!(
                    "{name} in {} pkts / {} B, out {} pkts / {} B",
                    s.ingress_packets, s.ingress_bytes, s.egress_packets, s.egress_bytes
                )
            })
            .collect();
        println!("  t+{second}s  {}", line.join("   "));
    }
    stop_pings.store(true, Ordering::Relaxed);
    for p in pingers {
        let _ = p.join();
    }

    println!("\nconntrack (pinned map conntrack):");
    for (k, e) in dp.maps.flows()? {
        println!(
            "  {:>4} {}:{} -> {}:{}  snat {}:{}  state {} pkts {}/{}",
            proto_name(k.proto),
            k.src_v4(),
            k.sport,
            k.dst_v4(),
            k.dport,
            Ipv4Addr::new(e.nat_addr[0], e.nat_addr[1], e.nat_addr[2], e.nat_addr[3]),
            e.nat_port,
            e.state,
            e.packets_out,
            e.packets_in
        );
    }
    println!("\ndrop counters:");
    for (r, n) in dp.maps.drop_counters()? {
        if n > 0 {
            println!("  {:<24} {n}", r.name());
        }
    }
    println!("\nevents:");
    for (e, n) in dp.maps.event_counters()? {
        if n > 0 {
            println!("  {:<24} {n}", e.name());
        }
    }
    let pins = format!("{}/{ENDPOINT}", datapath::DEFAULT_PIN_ROOT);
    println!(
        "\nInspect the pinned maps with bpftool (while the demo runs: `portcullis demo --keep`):"
    );
    println!("  bpftool map dump pinned {pins}/conntrack");
    println!("  bpftool map dump pinned {pins}/clients");
    println!(
        "  bpftool map dump pinned {pins}/authz_v4_{}   (the live policy generation's slot)",
        generation % 2
    );
    println!("  bpftool map show pinned {pins}/drop_counters");
    if let Some(c) = &console {
        println!(
            "\nWeb console: {} (self-signed; from the client namespaces, e.g. `ip netns exec {} curl -k {}`)",
            c.url, USERS[0].ns, c.url
        );
        println!("  login: {} / {} (operator)", console::ADMIN, c.password);
        println!("  admin socket: portcullis connections list --admin-socket {PKI_DIR}/admin.sock");
        println!("Running until Ctrl-C ...");
        // The agent's loop (admin socket, console, telemetry) until Ctrl-C.
        let stop = Arc::new(tokio::sync::Notify::new());
        let notify = stop.clone();
        std::thread::spawn(move || {
            while !INTERRUPTED.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
            }
            notify.notify_one();
        });
        endpoint.run_until(Some(stop))?;
        println!("\ntearing down");
        drop(clients);
    } else {
        println!("\ntearing down");
        drop(clients);
        endpoint.shutdown()?;
    }
    drop(servers);
    drop(topo);
    if unexpected > 0 {
        bail!("{unexpected} probe(s) did not get the verdict the policy prescribes");
    }
    Ok(())
}

/// The demo endpoint: the embedded policy, the demo PKI, full tunnel, UDP and TCP on
/// `listen`.
fn endpoint_config(
    pki_dir: &std::path::Path,
    listen: SocketAddr,
    console: Option<&str>,
) -> Result<EndpointConfig> {
    let d = pki_dir.display();
    // Top-level keys first: the policy's tables follow.
    let text = format!(
        "name = \"{ENDPOINT}\"\nlisten = [\"udp://{listen}\", \"tcp://{listen}\"]\n\
         admin_socket = \"{d}/admin.sock\"\n{DEFAULT_POLICY}\n\
         [tls]\ncert = \"{d}/server.crt\"\nkey = \"{d}/server.key\"\n\
         client_ca = \"{d}/ca.crt\"\ntls_crypt_key = \"{d}/tls-crypt.key\"\n{}",
        console.unwrap_or_default()
    );
    let cfg = EndpointConfig::parse(&text)
        .map_err(|e| anyhow::anyhow!("the demo endpoint is invalid:\n{e}"))?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("the demo endpoint is invalid:\n{e}"))?;
    Ok(cfg)
}

/// Removes a directory on drop.
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's Connected event for `user`: (session slot, tunnel address, cipher).
/// The server's `Connected` event for `user`: (peer id, tunnel address, cipher and TLS
/// version), and the event itself.
#[allow(clippy::type_complexity)]
fn wait_connected(
    rx: &std::sync::mpsc::Receiver<ServerEvent>,
    user: &str,
    timeout: Duration,
) -> Result<((u32, Ipv4Addr, String), ServerEvent)> {
    let end = Instant::now() + timeout;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(
                ev @ ServerEvent::Connected {
                    peer_id,
                    tunnel_addr,
                    ..
                },
            ) if matches!(&ev, ServerEvent::Connected { common_name, .. } if common_name == user) =>
            {
                let ServerEvent::Connected {
                    cipher,
                    tls_version,
                    ..
                } = &ev
                else {
                    unreachable!()
                };
                let what = format!("{cipher}, {tls_version}");
                return Ok(((peer_id, tunnel_addr, what), ev));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    bail!("the server reported no connection for {user}")
}

fn probe_dst(p: Probe) -> Ipv4Addr {
    match p {
        Probe::Ping(a) | Probe::Tcp(a, _) | Probe::Udp(a, _) => a,
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        _ => "?",
    }
}

/// What the reference evaluator says should happen (None = allowed).
fn expected_verdict(
    input: &PolicyInput,
    groups: &std::collections::BTreeSet<String>,
    p: Probe,
) -> Option<DropReason> {
    let (dst, proto, port, icmp) = match p {
        Probe::Ping(a) => (a, 1, 0, Some(8)),
        Probe::Tcp(a, port) => (a, 6, port, None),
        Probe::Udp(a, port) => (a, 17, port, None),
    };
    match policy::eval::evaluate_new_flow(
        input,
        groups,
        dst,
        proto,
        port,
        icmp,
        &Default::default(),
    ) {
        policy::eval::Decision::Drop(r) => Some(r),
        _ => None,
    }
}

/// The rule that decided, as `portcullis policy explain` names it: the authorization step,
/// or the security-group step for a security-group denial.
fn deciding_rule(input: &PolicyInput, user: &str, p: Probe, reason: Option<DropReason>) -> String {
    let (dst, proto, port) = match p {
        Probe::Ping(a) => (a, 1, 0),
        Probe::Tcp(a, port) => (a, 6, port),
        Probe::Udp(a, port) => (a, 17, port),
    };
    let Ok(e) = crate::explain::explain(
        input,
        user,
        crate::explain::Destination { dst, proto, port },
    ) else {
        return String::new();
    };
    let want = if reason == Some(DropReason::SecurityGroup) {
        "security groups"
    } else {
        "authorization"
    };
    e.steps
        .iter()
        .find(|s| s.starts_with(want))
        .cloned()
        .unwrap_or_default()
}

fn drain_events(rb: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<DenyEvent> {
    // Give the last packets' events a moment to land.
    std::thread::sleep(Duration::from_millis(50));
    let mut out = Vec::new();
    while let Some(item) = rb.next() {
        // The XDP program writes whole records; a short one is not ours.
        if let Some(bytes) = item.get(..std::mem::size_of::<DenyEvent>()) {
            out.push(bytemuck::pod_read_unaligned(bytes));
        }
    }
    out
}

/// Run one probe from inside a client namespace. Ok = reply text, Err = what failed.
fn run_probe(p: Probe) -> Result<String, String> {
    let timeout = Duration::from_millis(800);
    match p {
        Probe::Tcp(a, port) => {
            let mut s = TcpStream::connect_timeout(&SocketAddr::from((a, port)), timeout)
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(timeout)).ok();
            let mut buf = [0u8; 128];
            let n = std::io::Read::read(&mut s, &mut buf).map_err(|e| format!("read: {e}"))?;
            Ok(format!(
                "reply {:?}",
                String::from_utf8_lossy(&buf[..n]).trim()
            ))
        }
        Probe::Udp(a, port) => {
            let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(timeout)).ok();
            s.send_to(b"hello", (a, port)).map_err(|e| e.to_string())?;
            let mut buf = [0u8; 128];
            let (n, _) = s.recv_from(&mut buf).map_err(|_| "no reply".to_string())?;
            Ok(format!(
                "reply {:?}",
                String::from_utf8_lossy(&buf[..n]).trim()
            ))
        }
        Probe::Ping(a) => {
            let start = Instant::now();
            net::ping(a, timeout).map_err(|e| e.to_string())?;
            Ok(format!(
                "echo reply in {:.1} ms",
                start.elapsed().as_secs_f64() * 1e3
            ))
        }
    }
}
