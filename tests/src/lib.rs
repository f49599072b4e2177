//! Harness for the privileged integration tests: network namespaces and links that clean
//! themselves up (RAII, also on panic), built by the product's topology builder
//! (`portcullis::netns`, described in `docs/topology.md`), and small helpers around `ip` that
//! panic on failure, as tests should.
//!
//! Every name starts with `pct-` and carries the process id and a counter, so concurrent
//! or leftover runs never collide and `cargo xtask cleanup` can find strays.
use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

pub use portcullis::netns::{Netns, NsGuard};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name (`pct-<tag><pid%10000><n>`), at most 15 bytes for interfaces.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("pct-{tag}{}{n}", std::process::id() % 10000);
    assert!(name.len() <= 15, "name {name} too long for an interface");
    name
}

/// True when running as root; privileged tests skip with a loud message otherwise.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skip (return early) from a privileged test when not root, saying why.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!("SKIPPED: needs root (run `cargo xtask test` as root)");
            return;
        }
    };
}

/// Run a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a command and return whether it succeeded (for probes that may fail).
pub fn sh_ok(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A network namespace for tests: the product's [`Netns`] (deleted on drop when this handle
/// made it) with helpers that panic on failure and return the command's whole output.
pub struct NetNs {
    pub name: String,
    ns: Netns,
}

impl NetNs {
    /// A new namespace named [`unique`]`(tag)`, loopback up.
    pub fn new(tag: &str) -> NetNs {
        let name = unique(tag);
        NetNs::from(Netns::create(&name).unwrap_or_else(|e| panic!("{e}")))
    }

    /// A handle on an existing namespace, which it does not delete.
    pub fn open(name: &str) -> NetNs {
        NetNs::from(Netns::open(name).unwrap_or_else(|e| panic!("{e}")))
    }

    /// The product's handle (for [`Netns::run`], [`Netns::mac`], the topology builder).
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "-n", self.name.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// `ip netns exec <ns> ...`
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        sh(&v)
    }

    pub fn exec_ok(&self, args: &[&str]) -> bool {
        let mut v = vec!["ip", "netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        sh_ok(&v)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.ns.sysctl(key, value).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Move the calling thread into this namespace until the guard drops. Sockets, TAP
    /// devices and BPF_PROG_TEST_RUN then see this namespace.
    pub fn enter(&self) -> NsGuard {
        self.ns.enter().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Run `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.ns.run(f).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl From<Netns> for NetNs {
    fn from(ns: Netns) -> NetNs {
        NetNs {
            name: ns.name().to_string(),
            ns,
        }
    }
}

/// The MAC address of `iface` in `ns`.
pub fn mac_of(ns: &NetNs, iface: &str) -> [u8; 6] {
    ns.ns.mac(iface).unwrap_or_else(|e| panic!("{e}"))
}

pub mod agent;
pub mod benchreport;
pub mod benchsys;
pub mod browser;
pub mod clients;
pub mod emulator;
pub mod etcd;
pub mod fleet;
pub mod frames;
pub mod idp;
pub mod idp_browser;
pub mod ldap;
pub mod nft;
pub mod openvpn;
pub mod ovpn3;
pub mod probe;
pub mod relay;
pub mod tunnel;

pub mod gateway {
    //! A gateway namespace running the real data path, with a private network behind it.
    //!
    //! ```text
    //!  test thread (inside gw ns)          gw ns                       net ns
    //!  writes frames to the TAP  ──►  [pct-tap: XDP tap prog]
    //!                                  [pct-gw0: XDP egress]  ◄──veth──►  eth0 10.0.0.10/24 (+ extra)
    //!                                   10.0.0.1/24
    //! ```
    use std::{net::Ipv4Addr, path::PathBuf};

    use aya::programs::XdpMode;
    pub use portcullis::netns::fmt_mac;
    use portcullis::{
        datapath::{Datapath, DatapathOptions},
        io::tap::Tap,
        netns::{PrivateNetwork, Topology, Veth},
        policy::{compile, CompiledPolicy, PolicyInput},
        reconcile,
    };
    use portcullis_common::{ClientInfo, DEFAULT_FLOWS_PER_CLIENT};

    use super::{unique, NetNs, NsGuard};

    pub const GW_IF: &str = "pct-gw0";
    pub const TAP: &str = "pct-tap";
    pub const GW_NET_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);

    /// A policy with one target network behind `GW_IF`, a route for 10.0.0.0/24 and an
    /// all-users rule for it; tests edit it before building the gateway.
    pub fn base_policy() -> PolicyInput {
        toml_policy(&format!(
            r#"
client_cidr = "10.100.0.0/24"
gateway_addr = "10.100.0.1"
[[target_networks]]
name = "private"
interface = "{GW_IF}"
snat_address = "10.0.0.1"
[[routes]]
destination = "10.0.0.0/24"
target_network = "private"
[[authorization_rules]]
destination = "10.0.0.0/24"
all_users = true
"#
        ))
    }

    pub fn toml_policy(s: &str) -> PolicyInput {
        portcullis::toml_from_str(s).expect("test policy parses")
    }

    /// Removes a test pin root on drop.
    pub struct PinRoot(pub PathBuf);
    impl Drop for PinRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub struct Options {
        /// Extra addresses for the server namespace's eth0 (besides 10.0.0.10/24).
        pub extra_server_addrs: Vec<Ipv4Addr>,
        pub max_flows: Option<u32>,
        pub deny_events_per_sec: u64,
    }

    impl Default for Options {
        fn default() -> Self {
            Options {
                extra_server_addrs: Vec::new(),
                max_flows: None,
                deny_events_per_sec: 1000,
            }
        }
    }

    /// The namespaces of a gateway without its data path: the gateway namespace with the
    /// private network behind it, for an endpoint that creates its own TAP and data path
    /// (`portcullis::endpoint::Endpoint::build`). Field order is drop order.
    pub struct Network {
        pub server_mac: [u8; 6],
        pub gw_mac: [u8; 6],
        _private_link: Veth,
        pub net: NetNs,
        pub gw: NetNs,
        /// The bpffs directory for the data path's pins, removed on drop.
        pub pins: PinRoot,
    }

    impl Network {
        /// Builds the gateway and private-network namespaces and the link between them.
        pub fn new(opts: &Options) -> Network {
            let (gw_name, net_name) = (unique("g"), unique("n"));
            let mut hosts = vec![SERVER];
            hosts.extend(&opts.extra_server_addrs);
            let topo = Topology::builder(
                &gw_name,
                &net_name,
                PrivateNetwork {
                    gw_if: GW_IF,
                    gw_addr: GW_NET_ADDR,
                    prefix_len: 24,
                    net_if: "eth0",
                    hosts,
                    extra_neighbours: Vec::new(),
                },
            )
            .build()
            .unwrap_or_else(|e| panic!("gateway topology: {e}"));
            Network {
                server_mac: topo.net_mac,
                gw_mac: topo.gw_mac,
                _private_link: topo.private_link,
                net: NetNs::from(topo.net),
                gw: NetNs::from(topo.gw),
                pins: PinRoot(PathBuf::from(format!(
                    "/sys/fs/bpf/portcullis-test-{}",
                    unique("p")
                ))),
            }
        }

        /// Run `f` on a thread inside the server namespace.
        pub fn in_net<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            self.net.run(f)
        }
    }

    /// A [`Network`] with the TAP and the data path, built by the test itself. Field order
    /// matters for drop order: data path first, then the TAP, then leaving the namespace,
    /// then the namespaces and pins.
    pub struct Gateway {
        pub dp: Datapath,
        pub tap: Tap,
        pub compiled: CompiledPolicy,
        pub policy: PolicyInput,
        guard: Option<NsGuard>,
        pub network: Network,
    }

    impl std::ops::Deref for Gateway {
        type Target = Network;
        fn deref(&self) -> &Network {
            &self.network
        }
    }

    impl Gateway {
        /// Build the topology, enter the gateway namespace on this thread, create the TAP,
        /// load and attach the data path and apply `policy`.
        pub fn new(policy: PolicyInput, opts: Options) -> Gateway {
            let network = Network::new(&opts);
            let guard = network.gw.enter();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let tap = rt
                .block_on(Tap::open(
                    TAP,
                    1,
                    policy.gateway_addr,
                    policy.client_cidr,
                    1500,
                ))
                .expect("create TAP");
            let mut dp = Datapath::load(DatapathOptions {
                endpoint: "test".into(),
                pin_root: network.pins.0.clone(),
                tap_ifindex: tap.ifindex,
                tap_name: TAP.into(),
                tap_mac: tap.mac,
                gateway: policy.gateway_addr,
                gateway_ports: policy.gateway_ports.clone(),
                targets: policy
                    .target_networks
                    .iter()
                    .map(|t| t.interface.clone())
                    .collect(),
                max_flows: opts.max_flows,
                deny_events_per_sec: opts.deny_events_per_sec,
                mode: XdpMode::Driver,
            })
            .expect("load data path");
            let compiled =
                compile(&policy, &|n| portcullis::datapath::ifindex(n)).expect("policy compiles");
            reconcile::reconcile(&mut dp.maps, &compiled).expect("apply policy");
            Gateway {
                dp,
                tap,
                compiled,
                policy,
                guard: Some(guard),
                network,
            }
        }

        /// Register a session: `addr` with `groups` in session slot `slot`.
        pub fn add_client(&mut self, addr: Ipv4Addr, groups: &[&str], slot: u32) {
            self.add_client_with_quota(addr, groups, slot, DEFAULT_FLOWS_PER_CLIENT);
        }

        pub fn add_client_with_quota(
            &mut self,
            addr: Ipv4Addr,
            groups: &[&str],
            slot: u32,
            max_flows: u32,
        ) {
            self.dp.maps.reset_session_stats(slot).unwrap();
            self.dp
                .maps
                .upsert_client(
                    addr,
                    ClientInfo {
                        groups: self.compiled.groups_bitmap(groups.iter().copied()),
                        slot,
                        max_flows,
                    },
                )
                .unwrap();
        }

        /// Compile and apply a new policy generation (keeping group bits stable).
        pub fn set_policy(&mut self, policy: PolicyInput) -> u32 {
            let compiled = portcullis::policy::compile_with_previous(
                &policy,
                &|n| portcullis::datapath::ifindex(n),
                Some(&self.compiled.group_bits),
            )
            .expect("policy compiles");
            let g = reconcile::reconcile(&mut self.dp.maps, &compiled).expect("apply policy");
            self.compiled = compiled;
            self.policy = policy;
            g
        }
    }

    impl Drop for Gateway {
        fn drop(&mut self) {
            // Leave the namespace before it is deleted.
            self.guard.take();
        }
    }
}
