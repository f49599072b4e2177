//! A fleet lab: several `portcullis run` gateways of one endpoint in front of ONE shared
//! private network, one client namespace that reaches every gateway, one PKI, and a real etcd
//! (1 or 3 members on the root namespace's loopback, relayed into each gateway namespace).
//!
//! ```text
//!  client ns (pct-fc…)                 gateway ns i (pct-fg…)                      net ns (pct-fn…)
//!  br0 192.0.2.11/24 ─ ul<i> ══veth══ pct-ul 192.0.2.(1+i)/24                      br0 10.0.0.10/24
//!                                      portcullis run :1194/udp ─► pct-gw0 10.0.0.(1+i)/24 ══veth══ gw<i> ─ br0
//!                                      127.0.0.1:<etcd ports> ─relay─► etcd (root ns loopback)
//! ```
//!
//! Each gateway SNATs its clients to its own address on the shared network, so the server
//! (10.0.0.10) answers whichever gateway a client is on. The underlay is a bridge in the
//! client namespace, so one stock client can reach every gateway's address (its profile lists
//! them all). A gateway can be cut off from etcd while etcd runs on ([`FleetLab::cut_from_etcd`],
//! an nftables drop in its namespace) and given its path back ([`FleetLab::heal`]), and
//! gateways can be added after the start ([`FleetLab::add`]). Everything is removed on drop, also on panic: agents stopped (or already
//! killed), namespaces, links, pins, directories and etcd.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis::netns::{Offloads, Veth, VethEnd};

use crate::agent::{cli_ok, endpoint_toml, poll, write_atomic, Agent, CliPki, ProfileClient};
use crate::etcd::EtcdCluster;
use crate::gateway::{PinRoot, GW_IF, SERVER};
use crate::openvpn::{TempDir, OVPN_PORT, UNDERLAY_GW};
use crate::{unique, NetNs};

/// The nftables table of [`FleetLab::cut_from_etcd`].
const CUT_TABLE: &str = "pct_etcd_cut";

/// The client's address on the underlay bridge.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

/// Gateway `i`'s underlay address (where it listens and what profiles name).
pub fn underlay_addr(i: usize) -> Ipv4Addr {
    assert!(i < 9, "the fleet lab has room for 9 gateways");
    Ipv4Addr::new(192, 0, 2, 1 + i as u8)
}

/// Gateway `i`'s address on the shared private network (its SNAT address).
pub fn private_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 1 + i as u8)
}

/// The `[fleet]` section of a gateway for `endpoints` (a 3 s lease: the shortest allowed, so
/// failover tests are quick).
pub fn fleet_section(endpoints: &[String], gateway_id: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "\n[fleet]\nendpoints = [{}]\ngateway_id = \"{gateway_id}\"\nlease_ttl_secs = 3\nregistry_refresh_secs = 1\n",
        list.join(", ")
    )
}

/// The port of an etcd client URL (`http://127.0.0.1:PORT`).
pub fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {endpoint}"))
}

/// One gateway of the lab. Field order is drop order: the agent stops while its namespace
/// and links exist.
pub struct FleetGateway {
    pub agent: Option<Agent>,
    pub id: String,
    /// Its endpoint file (in its own directory, with a `pki` link to the shared PKI).
    pub config: PathBuf,
    _underlay: Veth,
    _private: Veth,
    pub ns: NetNs,
    _pins: PinRoot,
    pub dir: TempDir,
}

impl FleetGateway {
    pub fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("the gateway's agent runs")
    }

    pub fn config_arg(&self) -> String {
        self.config.to_string_lossy().into_owned()
    }

    /// SIGKILL, as a crashed host: nothing is cleaned up in etcd (its lease runs out).
    pub fn kill(&mut self) {
        if let Some(a) = self.agent.take() {
            a.signal(libc::SIGKILL);
            assert!(
                a.wait_exit(Duration::from_secs(5)).is_some(),
                "gateway {} survived SIGKILL",
                self.id
            );
        }
    }

    /// `connections list --json` on this gateway: the fleet's sessions.
    pub fn connections(&self) -> Vec<serde_json::Value> {
        let out = cli_ok(&[
            "connections",
            "list",
            "--json",
            "--config",
            &self.config_arg(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("connections list --json is not JSON ({e}): {out}"));
        v["connections"].as_array().cloned().unwrap_or_default()
    }

    /// `status["fleet"]`.
    pub fn fleet_status(&self) -> serde_json::Value {
        self.agent().status()["fleet"].clone()
    }
}

/// The lab; see the module documentation. Field order is drop order.
pub struct FleetLab {
    pub gateways: Vec<FleetGateway>,
    pub client: NetNs,
    pub net: NetNs,
    pub pki: CliPki,
    pub etcd: EtcdCluster,
    pub dir: TempDir,
}

impl FleetLab {
    /// `n` gateways `gw-0`… (each with `policy` plus its `[fleet]` section and host settings),
    /// an etcd of `members` members, a PKI with `clients`. Returns once every gateway holds a
    /// lease and sees all `n` gateways' presence.
    pub fn new(n: usize, members: usize, clients: &[&str], policy: &str) -> FleetLab {
        Self::with_host(n, members, clients, policy, |_| String::new())
    }

    /// [`FleetLab::new`] with `fleet_extra` lines added to every gateway's `[fleet]` section
    /// (e.g. `max_connections_per_user = 1`): the file ends with that section.
    pub fn new_with(
        n: usize,
        members: usize,
        clients: &[&str],
        policy: &str,
        fleet_extra: &str,
    ) -> Self {
        Self::with_host(n, members, clients, policy, |_| fleet_extra.to_owned())
    }

    /// As [`FleetLab::new`], with `host(i)` appended to gateway `i`'s file: host-local
    /// lines such as `[fleet]` settings (the file ends with that section) or a
    /// `[console]` section, which a publish never carries.
    pub fn with_host(
        n: usize,
        members: usize,
        clients: &[&str],
        policy: &str,
        host: impl Fn(usize) -> String,
    ) -> FleetLab {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let etcd = rt.block_on(EtcdCluster::start(members));
        let dir = TempDir::new("fleet");
        let pki = CliPki::new(&dir.path().join("pki"), clients);
        let net = NetNs::new("fn");
        let client = NetNs::new("fc");
        for ns in [&net, &client] {
            ns.netns().disable_ipv6().unwrap_or_else(|e| panic!("{e}"));
            bridge(ns);
        }
        net.ip(&["addr", "add", &format!("{SERVER}/24"), "dev", "br0"]);
        client.ip(&["addr", "add", &format!("{CLIENT_ADDR}/24"), "dev", "br0"]);
        let mut lab = FleetLab {
            gateways: Vec::new(),
            client,
            net,
            pki,
            etcd,
            dir,
        };
        for i in 0..n {
            let gw = lab.add_gateway(i, policy, &host(i));
            lab.gateways.push(gw);
        }
        for gw in &lab.gateways {
            poll(Duration::from_secs(15), || {
                let m = gw.fleet_status()["member"].clone();
                (m["lease_valid"] == true && m["gateways"].as_array().map(Vec::len) == Some(n))
                    .then_some(())
            })
            .unwrap_or_else(|| {
                panic!(
                    "{} not a member of a fleet of {n}: {}\n{}",
                    gw.id,
                    gw.fleet_status(),
                    gw.agent().log_tail(30)
                )
            });
        }
        lab
    }

    fn add_gateway(&self, i: usize, policy: &str, host: &str) -> FleetGateway {
        let id = format!("gw-{i}");
        let ns = NetNs::new("fg");
        ns.netns().disable_ipv6().unwrap_or_else(|e| panic!("{e}"));
        // Before the links: writing ip_forward resets every interface's `forwarding`.
        ns.sysctl("net.ipv4.ip_forward", "1");
        let kernel = Offloads::KERNEL.complete_checksums();
        // The data path redirects frames into pct-gw0: its peer needs GRO to take them.
        let private = Veth::create(
            VethEnd::new(ns.netns(), GW_IF, kernel),
            VethEnd::new(
                self.net.netns(),
                &format!("gw{i}"),
                kernel.receive_redirects(),
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", private_addr(i)),
            "dev",
            GW_IF,
        ]);
        self.net
            .ip(&["link", "set", &format!("gw{i}"), "master", "br0"]);
        let underlay = Veth::create(
            VethEnd::new(ns.netns(), "pct-ul", kernel),
            VethEnd::new(self.client.netns(), &format!("ul{i}"), kernel),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // A client reaches the private network only through the tunnel.
        ns.sysctl("net.ipv4.conf.pct-ul.forwarding", "0");
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", underlay_addr(i)),
            "dev",
            "pct-ul",
        ]);
        self.client
            .ip(&["link", "set", &format!("ul{i}"), "master", "br0"]);
        for e in self.etcd.endpoints() {
            crate::etcd::forward_into(&ns, port_of(&e));
        }

        let dir = TempDir::new("fleetgw");
        std::os::unix::fs::symlink(&self.pki.dir, dir.path().join("pki")).expect("pki link");
        // Its own CRL file: a revocation reaches it only through a publish.
        std::fs::copy(self.pki.dir.join("crl.pem"), dir.path().join("crl.pem")).expect("crl");
        let config = dir.path().join("endpoint.toml");
        write_atomic(
            &config,
            &(gateway_toml(i, policy, &self.etcd.endpoints(), &id) + host),
        );
        let pins = PinRoot(PathBuf::from(format!(
            "/sys/fs/bpf/portcullis-test-{}",
            unique("f")
        )));
        let agent = Agent::start(
            &ns,
            &config,
            &pins.0,
            &dir.path().join("admin.sock"),
            &dir.path().join("agent.log"),
        );
        agent
            .wait_ready(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        FleetGateway {
            agent: Some(agent),
            id,
            config,
            _underlay: underlay,
            _private: private,
            ns,
            _pins: pins,
            dir,
        }
    }

    /// Starts one more gateway, `gw-<n>` (its file: `policy` and its `[fleet]` section), and
    /// returns its index once it holds a lease (it may hold no block: the pool may be held).
    pub fn add(&mut self, policy: &str) -> usize {
        let i = self.gateways.len();
        let gw = self.add_gateway(i, policy, "");
        poll(Duration::from_secs(15), || {
            (gw.fleet_status()["member"]["lease_valid"] == true).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "{} holds no lease: {}\n{}",
                gw.id,
                gw.fleet_status(),
                gw.agent().log_tail(30)
            )
        });
        self.gateways.push(gw);
        i
    }

    /// Cuts gateway `i` off from etcd while etcd runs on (a partition, not an outage): an
    /// nftables table in its namespace drops every packet to or from the etcd ports on its
    /// loopback, where the relays to etcd listen. Nothing is reset: established connections
    /// go silent, new ones time out, as behind a cut link. Gone with the namespace, or with
    /// [`FleetLab::heal`].
    pub fn cut_from_etcd(&self, i: usize) {
        let ports: Vec<String> = self
            .etcd
            .endpoints()
            .iter()
            .map(|e| port_of(e).to_string())
            .collect();
        let ports = ports.join(", ");
        let rules = format!(
            "table inet {CUT_TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  tcp dport {{ {ports} }} drop\n  tcp sport {{ {ports} }} drop\n }}\n}}\n"
        );
        let file = self.dir().join(format!("cut-{i}.nft"));
        std::fs::write(&file, rules).expect("write the nft rules");
        let o = self.gateways[i]
            .ns
            .exec(&["nft", "-f", &file.to_string_lossy()]);
        assert!(
            o.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Gives gateway `i` its path to etcd back (undoes [`FleetLab::cut_from_etcd`]).
    pub fn heal(&self, i: usize) {
        let o = self.gateways[i]
            .ns
            .exec(&["nft", "delete", "table", "inet", CUT_TABLE]);
        assert!(
            o.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The index of the gateway named `id`.
    pub fn index_of(&self, id: &str) -> usize {
        self.gateways
            .iter()
            .position(|g| g.id == id)
            .unwrap_or_else(|| panic!("no gateway {id}"))
    }

    /// `client-config export` on gateway 0 for `cn`: a `remote` per gateway.
    pub fn export_profile(&self, cn: &str) -> String {
        cli_ok(&[
            "client-config",
            "export",
            "--config",
            &self.gateways[0].config_arg(),
            "--cert",
            &self.pki.cert(cn).to_string_lossy(),
            "--key",
            &self.pki.key(cn).to_string_lossy(),
        ])
    }

    /// `cn`'s stock client in the client namespace with the exported profile, connected.
    pub fn connect(&self, cn: &str) -> ProfileClient {
        let c = ProfileClient::start(&self.client, &self.export_profile(cn));
        if let Err(e) = c.wait_connected(Duration::from_secs(30)) {
            panic!("{cn} does not connect: {e}");
        }
        c
    }

    /// `cn`'s stock client with the exported profile cut to gateway `i`'s `remote`,
    /// connected (several clients share the client namespace: each its own tun device).
    pub fn connect_to(&self, cn: &str, i: usize) -> ProfileClient {
        let c = ProfileClient::start(&self.client, &pinned(&self.export_profile(cn), i));
        if let Err(e) = c.wait_connected(Duration::from_secs(30)) {
            panic!("{cn} does not connect to gw-{i}: {e}");
        }
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `fleet publish` of `policy` as the lab's endpoint file (with the PKI's own CRL, so
    /// a revocation travels with it); the revision and the instant the command was started.
    pub fn publish(&self, policy: &str) -> (i64, std::time::Instant) {
        self.publish_file(&endpoint_toml(policy))
    }

    /// `fleet publish` of `text` (an endpoint file without `[fleet]`, relative paths from
    /// the lab directory) with the lab's `[fleet]` section added.
    pub fn publish_file(&self, text: &str) -> (i64, std::time::Instant) {
        let file = self.dir().join("publish.toml");
        write_atomic(
            &file,
            &(text.to_owned() + &fleet_section(&self.etcd.endpoints(), "admin")),
        );
        let at = std::time::Instant::now();
        let out = cli_ok(&["fleet", "publish", "--config", &file.to_string_lossy()]);
        let revision = out
            .trim()
            .strip_prefix("published: revision ")
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no revision printed: {out}"));
        (revision, at)
    }
}

/// `gateway_addresses = [...]` naming the lab's first `n` gateways (a top-level line for a
/// policy: profiles then list every gateway).
/// `user@gateway` of a session as `connections list --json` lists it (`?` for a missing field).
pub fn who(c: &serde_json::Value) -> String {
    format!(
        "{}@{}",
        c["user"].as_str().unwrap_or("?"),
        c["gateway"].as_str().unwrap_or("?")
    )
}

pub fn gateway_addresses(n: usize) -> String {
    let list: Vec<String> = (0..n)
        .map(|i| format!("\"{}\"", underlay_addr(i)))
        .collect();
    format!("gateway_addresses = [{}]\n", list.join(", "))
}

/// `profile` with its `remote` lines cut to gateway `i`'s (a client pinned to one gateway).
pub fn pinned(profile: &str, i: usize) -> String {
    let addr = underlay_addr(i).to_string();
    profile
        .lines()
        .filter(|l| {
            !l.starts_with("remote-random")
                && (!l.starts_with("remote ") || l.split_whitespace().nth(1) == Some(addr.as_str()))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A bridge `br0`, up, forwarding at once.
fn bridge(ns: &NetNs) {
    ns.ip(&["link", "add", "br0", "type", "bridge", "forward_delay", "0"]);
    ns.ip(&["link", "set", "br0", "up"]);
}

/// The lab's endpoint file for gateway `i`: [`endpoint_toml`] with this gateway's listener
/// (UDP only: a profile's UDP remote of a dead gateway costs the client
/// `server-poll-timeout`, a TCP one nothing, so one protocol keeps the bound simple), public
/// address and SNAT address, its own CRL file (`crl.pem` next to the file, not the PKI's: a
/// revocation reaches a gateway only through `fleet publish`) and its `[fleet]` section.
pub fn gateway_toml(i: usize, policy: &str, endpoints: &[String], id: &str) -> String {
    let text = endpoint_toml(policy);
    let swaps = [
        (
            format!("listen = [\"udp://{UNDERLAY_GW}:{OVPN_PORT}\", \"tcp://{UNDERLAY_GW}:{OVPN_PORT}\"]"),
            format!("listen = [\"udp://{}:{OVPN_PORT}\"]", underlay_addr(i)),
        ),
        (
            format!("public_address = \"{UNDERLAY_GW}\""),
            format!("public_address = \"{}\"", underlay_addr(i)),
        ),
        (
            format!("snat_address = \"{}\"", crate::gateway::GW_NET_ADDR),
            format!("snat_address = \"{}\"", private_addr(i)),
        ),
        (
            "crl = [\"pki/crl.pem\"]".to_owned(),
            "crl = [\"crl.pem\"]".to_owned(),
        ),
        // The PKI directory's CRL must be one of `crl`: without the PKI, no such check.
        ("pki_dir = \"pki\"\n".to_owned(), String::new()),
    ];
    let mut text = text;
    for (from, to) in swaps {
        assert!(text.contains(&from), "endpoint_toml has no {from}");
        text = text.replace(&from, &to);
    }
    text + &fleet_section(endpoints, id)
}
