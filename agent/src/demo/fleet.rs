//! `portcullis demo --fleet`: two gateways of one endpoint, coordinated through a one-member
//! etcd the demo starts (and removes), serving the demo users with the exported profile (a
//! `remote` per gateway). It shows one registry across both gateways, the policy published
//! once, and a failover: the gateway alice is on is killed (SIGKILL) and her stock client
//! moves to the other.
//!
//! ```text
//!  alice, bob (pc-demo-alice/-bob)        pc-demo-ul: br0 192.0.2.100 (etcd :2379)
//!  eth0 192.0.2.11/.12 ── br0 ──┬── pc-dul 192.0.2.1  gw-a (pc-demo-gwa) pc-dgw0 10.0.0.1 ──┐
//!                               └── pc-dul 192.0.2.2  gw-b (pc-demo-gwb) pc-dgw0 10.0.0.2 ──┴─ br0 (pc-demo-fnet): app 10.0.0.10, db 10.0.0.20
//! ```
//!
//! The gateways are `portcullis run` processes (the binary running the demo), each with its
//! own file; everything is removed on exit, also on failure (drop guards).
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{net, run_probe, Probe, RemoveDir, DEFAULT_POLICY, ENDPOINT, INTERRUPTED, OVPN_PORT};
use crate::netns::{Netns, Offloads, Veth, VethEnd};

const UL: &str = "pc-demo-ul";
const NET: &str = "pc-demo-fnet";
const ETCD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const DIR: &str = "/tmp/portcullis-demo-fleet";

/// (gateway id, namespace, underlay address, address on the private network).
const GATEWAYS: [(&str, &str, Ipv4Addr, Ipv4Addr); 2] = [
    (
        "gw-a",
        "pc-demo-gwa",
        Ipv4Addr::new(192, 0, 2, 1),
        Ipv4Addr::new(10, 0, 0, 1),
    ),
    (
        "gw-b",
        "pc-demo-gwb",
        Ipv4Addr::new(192, 0, 2, 2),
        Ipv4Addr::new(10, 0, 0, 2),
    ),
];

/// (user, namespace, underlay address).
const CLIENTS: [(&str, &str, Ipv4Addr); 2] = [
    ("alice", "pc-demo-alice", Ipv4Addr::new(192, 0, 2, 11)),
    ("bob", "pc-demo-bob", Ipv4Addr::new(192, 0, 2, 12)),
];

/// A child process (etcd, a gateway, a client), stopped on drop: SIGTERM, a grace, SIGKILL.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// `args` inside namespace `ns` (`nsenter --net`: the host's /sys, so bpffs, stays
    /// visible), output to `log`; it dies with the demo even if the demo is killed.
    fn spawn(ns: &str, args: &[&str], log: &Path) -> Result<Proc> {
        let out = std::fs::File::create(log)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: prctl is async-signal-safe and only affects the child being started.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} in {ns}", args[0]))?;
        Ok(Proc {
            child,
            log: log.to_path_buf(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `needle` (true), the process exits or `timeout` passes.
    fn wait_log(&mut self, needle: &str, count: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end && !INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            if self.log().matches(needle).count() >= count {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(self.child.id() as i32, sig) };
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
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

/// Namespaces and links. Field order is drop order.
struct Topology {
    _links: Vec<Veth>,
    clients: Vec<Netns>,
    gateways: Vec<Netns>,
    net: Netns,
    ul: Netns,
}

fn bridge(ns: &Netns, addrs: &[Ipv4Addr], prefix: u8) -> Result<()> {
    ns.ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"])?;
    ns.ip(&["link", "set", "br0", "up"])?;
    for a in addrs {
        ns.ip(&["addr", "add", &format!("{a}/{prefix}"), "dev", "br0"])?;
    }
    Ok(())
}

impl Topology {
    fn build() -> Result<Topology> {
        let ul = Netns::recreate(UL)?;
        let net = Netns::recreate(NET)?;
        for ns in [&ul, &net] {
            ns.disable_ipv6()?;
        }
        bridge(&ul, &[ETCD], 24)?;
        // 192.0.2.100 is the clients' default router too: the full tunnel's host route to
        // the gateway goes via it, so it forwards (back onto the same bridge).
        ul.sysctl("net.ipv4.ip_forward", "1")?;
        bridge(
            &net,
            &[Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 20)],
            24,
        )?;
        let mut t = Topology {
            _links: Vec::new(),
            clients: Vec::new(),
            gateways: Vec::new(),
            net,
            ul,
        };
        let kernel = Offloads::KERNEL.complete_checksums();
        for (id, name, underlay, private) in GATEWAYS {
            let gw = Netns::recreate(name)?;
            gw.disable_ipv6()?;
            // Before the links: writing ip_forward resets every interface's `forwarding`.
            gw.sysctl("net.ipv4.ip_forward", "1")?;
            let port = id.replace('-', "");
            // The data path redirects into pc-dgw0: its peer needs GRO to take the frames.
            t._links.push(Veth::create(
                VethEnd::new(&gw, "pc-dgw0", kernel),
                VethEnd::new(&t.net, &port, kernel.receive_redirects()),
            )?);
            t.net.ip(&["link", "set", &port, "master", "br0"])?;
            gw.ip(&["addr", "add", &format!("{private}/24"), "dev", "pc-dgw0"])?;
            t._links.push(Veth::create(
                VethEnd::new(&gw, "pc-dul", kernel),
                VethEnd::new(&t.ul, &port, kernel),
            )?);
            t.ul.ip(&["link", "set", &port, "master", "br0"])?;
            // Clients reach the private network only through the tunnel.
            gw.sysctl("net.ipv4.conf.pc-dul.forwarding", "0")?;
            gw.ip(&["addr", "add", &format!("{underlay}/24"), "dev", "pc-dul"])?;
            t.gateways.push(gw);
        }
        for (user, name, addr) in CLIENTS {
            let c = Netns::recreate(name)?;
            c.disable_ipv6()?;
            t._links.push(Veth::create(
                VethEnd::new(&c, "eth0", kernel),
                VethEnd::new(&t.ul, user, kernel),
            )?);
            t.ul.ip(&["link", "set", user, "master", "br0"])?;
            c.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            // A default route, as a real host has: openvpn's redirect-gateway needs one.
            c.ip(&["route", "add", "default", "via", &ETCD.to_string()])?;
            t.clients.push(c);
        }
        Ok(t)
    }
}

/// Gateway `i`'s endpoint file: the demo policy, its own listener and SNAT address, the
/// fleet's gateway list and keepalive, its `[fleet]` section.
fn gateway_file(dir: &Path, i: usize) -> String {
    let (id, _, underlay, private) = GATEWAYS[i];
    let d = dir.display();
    let all: Vec<String> = GATEWAYS.iter().map(|g| format!("\"{}\"", g.2)).collect();
    let policy = DEFAULT_POLICY.replace(
        "snat_address = \"10.0.0.1\"",
        &format!("snat_address = \"{private}\""),
    );
    format!(
        "name = \"{ENDPOINT}\"\nlisten = [\"udp://{underlay}:{OVPN_PORT}\"]\n\
         public_address = \"{underlay}\"\ngateway_addresses = [{}]\n\
         keepalive_interval_secs = 1\nkeepalive_timeout_secs = 5\n\
         admin_socket = \"{d}/{id}.sock\"\n{policy}\n\
         [tls]\ncert = \"{d}/server.crt\"\nkey = \"{d}/server.key\"\n\
         client_ca = \"{d}/ca.crt\"\ntls_crypt_key = \"{d}/tls-crypt.key\"\n\n\
         [fleet]\nendpoints = [\"http://{ETCD}:2379\"]\ngateway_id = \"{id}\"\n\
         lease_ttl_secs = 3\nregistry_refresh_secs = 5\n",
        all.join(", ")
    )
}

/// `portcullis connections list --config F` of gateway `i`, as an operator runs it.
fn connections(exe: &Path, dir: &Path, i: usize) -> String {
    let file = dir.join(format!("{}.toml", GATEWAYS[i].0));
    Command::new(exe)
        .args(["connections", "list", "--config"])
        .arg(file)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn print_indented(text: &str) {
    for l in text.lines() {
        println!("  {l}");
    }
}

pub fn run() -> Result<()> {
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!("the fleet demo needs etcd: install Debian's etcd-server (cargo xtask setup)");
    }
    let exe = std::env::current_exe().context("the demo's own binary")?;
    println!("Portcullis fleet demo: gateways gw-a and gw-b serve one endpoint, coordinated through etcd; clients alice and bob\n");
    let dir = PathBuf::from(DIR);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _dir_guard = RemoveDir(dir.clone());
    crate::pki::write_demo_pki(&dir, "portcullis-demo-gateway", &["alice", "bob"])?;
    let tc_key =
        crate::openvpn::tls_crypt::StaticKey::generate(&*crate::openvpn::env::Env::system().rng)
            .map_err(|_| anyhow::anyhow!("no system randomness for the tls-crypt key"))?;
    std::fs::write(dir.join("tls-crypt.key"), tc_key.to_pem())?;

    let topo = Topology::build()?;
    let _servers = net::Servers::start(&topo.net)?;
    let etcd_data = dir.join("etcd");
    let url = format!("http://{ETCD}:2379");
    let mut etcd = Proc::spawn(
        UL,
        &[
            "etcd",
            "--name=demo",
            &format!("--data-dir={}", etcd_data.display()),
            &format!("--listen-client-urls={url}"),
            &format!("--advertise-client-urls={url}"),
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=demo=http://127.0.0.1:2380",
        ],
        &dir.join("etcd.log"),
    )?;
    if !etcd.wait_log("ready to serve client requests", 1, Duration::from_secs(20)) {
        bail!("etcd did not start:\n{}", etcd.log());
    }
    println!(
        "etcd: one member at {url} (namespace {UL}), data in {}",
        etcd_data.display()
    );

    // Pins before gateways: dropped after them (a running agent's pins stay in place).
    let mut pins = Vec::new();
    let mut gateways = Vec::new();
    for (i, (id, ns, underlay, private)) in GATEWAYS.iter().enumerate() {
        let file = dir.join(format!("{id}.toml"));
        std::fs::write(&file, gateway_file(&dir, i))?;
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/portcullis-demo-{id}"));
        let _ = std::fs::remove_dir_all(&pin_root);
        pins.push(RemoveDir(pin_root.clone()));
        let mut gw = Proc::spawn(
            ns,
            &[
                &exe.to_string_lossy(),
                "run",
                "--config",
                &file.to_string_lossy(),
                "--pin-root",
                &pin_root.to_string_lossy(),
            ],
            &dir.join(format!("{id}.log")),
        )?;
        if !gw.wait_log("fleet: member of the fleet", 1, Duration::from_secs(30)) {
            bail!("{id} did not join the fleet:\n{}", gw.log());
        }
        println!("gateway {id}: portcullis run in {ns}, udp {underlay}:{OVPN_PORT}, SNAT {private}, log {}", gw.log.display());
        gateways.push(gw);
    }

    // One policy: published once (from the etcd namespace, where the operator's machine
    // would reach etcd), applied by both.
    let publish_file = dir.join("gw-a.toml");
    let ul = Netns::open(UL)?;
    let revision = ul.run(move || crate::cli::fleet::publish(&publish_file))??;
    println!("fleet publish: the demo policy is revision {revision} on both gateways");

    // The profile as `client-config export` writes it: a remote per gateway, remote-random.
    let cfg = crate::config::EndpointConfig::load(&dir.join("gw-a.toml"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut clients = Vec::new();
    for (user, ns, addr) in CLIENTS {
        let profile = crate::profile::render(
            &cfg,
            Some(&dir.join(format!("{user}.crt"))),
            Some(&dir.join(format!("{user}.key"))),
        )?;
        let path = dir.join(format!("{user}.ovpn"));
        std::fs::write(&path, profile)?;
        let mut c = Proc::spawn(
            ns,
            &["openvpn", "--config", &path.to_string_lossy()],
            &dir.join(format!("{user}.log")),
        )?;
        if !c.wait_log(
            "Initialization Sequence Completed",
            1,
            Duration::from_secs(30),
        ) {
            bail!("{user}'s openvpn did not connect:\n{}", c.log());
        }
        println!("client {user}: openvpn from {addr} with the exported profile ({} remotes, remote-random)", GATEWAYS.len());
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(1500));
    println!("\nconnections list on gw-b (the whole fleet, from etcd's registry):");
    let table = connections(&exe, &dir, 1);
    print_indented(&table);

    // (namespace, user, flow, allowed by the demo policy)
    let probe = |ns: &str, p: Probe, allowed: bool| -> Result<(String, bool)> {
        let ns = Netns::open(ns)?;
        let got = ns.run(move || run_probe(p))?;
        Ok(match got {
            Ok(r) => (format!("ALLOWED {r}"), allowed),
            Err(e) => (format!("DENIED (no reply: {e})"), !allowed),
        })
    };
    let mut unexpected = 0;
    println!();
    for (ns, user, p, allowed) in [
        (
            CLIENTS[0].1,
            "alice",
            Probe::Tcp(Ipv4Addr::new(10, 0, 0, 10), 80),
            true,
        ),
        (
            CLIENTS[0].1,
            "alice",
            Probe::Tcp(Ipv4Addr::new(10, 0, 0, 20), 5432),
            false,
        ),
        (
            CLIENTS[1].1,
            "bob",
            Probe::Tcp(Ipv4Addr::new(10, 0, 0, 20), 5432),
            true,
        ),
    ] {
        let (text, as_expected) = probe(ns, p, allowed)?;
        unexpected += usize::from(!as_expected);
        println!("{user:<6} {:<22} {text}", p.to_string());
    }

    // Failover: the gateway alice is on dies without a word.
    let on = table
        .lines()
        .find(|l| l.contains("alice"))
        .and_then(|l| GATEWAYS.iter().position(|g| l.contains(g.0)))
        .unwrap_or(0);
    let (dead_id, ..) = GATEWAYS[on];
    println!("\nSIGKILL {dead_id} (alice's gateway); her client notices by the pushed ping-restart (5 s) and moves on ...");
    gateways[on].signal(libc::SIGKILL);
    let killed = Instant::now();
    if clients[0].wait_log(
        "Initialization Sequence Completed",
        2,
        Duration::from_secs(40),
    ) {
        println!(
            "alice reconnected to the other gateway {:.1} s after the kill",
            killed.elapsed().as_secs_f64()
        );
        let p = Probe::Tcp(Ipv4Addr::new(10, 0, 0, 10), 80);
        let (text, as_expected) = probe(CLIENTS[0].1, p, true)?;
        unexpected += usize::from(!as_expected);
        println!("alice  {:<22} {text}", p.to_string());
    } else {
        println!("alice did not reconnect within 40 s:\n{}", clients[0].log());
        unexpected += 1;
    }
    // The dead gateway's registry entries expire with its lease (3 s).
    std::thread::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed()));
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "\nconnections list on {} after {dead_id}'s lease expired:",
        GATEWAYS[1 - on].0
    );
    print_indented(&connections(&exe, &dir, 1 - on));

    println!("\ntearing down (gateways, clients, etcd and its data, namespaces)");
    drop(clients);
    drop(gateways);
    drop(etcd);
    drop(topo);
    if unexpected > 0 {
        bail!("{unexpected} step(s) of the fleet demo did not go as the policy and the fleet prescribe");
    }
    Ok(())
}
