//! A real etcd cluster for the fleet tests: 1 or 3 members of Debian's `etcd-server` on
//! loopback ports (one address, different ports, as a namespace would hold them), each with a
//! temporary data directory. Dropping the cluster kills every member and removes the data, also
//! when the test panics.
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis::config::FleetSection;
use portcullis::pki::{CertificateAuthority, Validity};

/// How long a new cluster may take to elect a leader (measured: under 4 s for three members).
const READY_WITHIN: Duration = Duration::from_secs(20);

/// Server and client certificates for an etcd that demands client certificates.
pub struct EtcdTls {
    pub ca_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTls {
    /// A fresh CA with a server certificate for 127.0.0.1 and one client certificate, in `dir`.
    fn write(dir: &Path) -> EtcdTls {
        let ca = CertificateAuthority::generate("etcd test CA", Validity::days_from_now(1))
            .expect("etcd CA");
        let server = ca
            .issue_server("127.0.0.1", Validity::days_from_now(1))
            .expect("etcd server cert");
        let client = ca
            .issue_client("gw-test", Validity::days_from_now(1))
            .expect("etcd client cert");
        let put = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write etcd TLS file");
            p
        };
        EtcdTls {
            ca_file: put("ca.pem", &ca.cert_pem()),
            server_cert: put("server.pem", &server.cert_pem),
            server_key: put("server-key.pem", &server.key_pem),
            client_cert: put("client.pem", &client.cert_pem),
            client_key: put("client-key.pem", &client.key_pem),
        }
    }
}

struct Member {
    name: String,
    client_url: String,
    /// Its command line, so a killed member can be started again on its data.
    args: Vec<String>,
    child: Option<Child>,
}

/// Starts one member with `args`, logging to `log` (appended: a restart keeps the old log).
fn spawn_member(args: &[String], log: &Path) -> Child {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log)
        .expect("etcd log");
    let mut cmd = Command::new("etcd");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("etcd log"))
        .stderr(log);
    // SAFETY: prctl is async-signal-safe and touches only the child being started.
    unsafe {
        cmd.pre_exec(|| {
            // A test process killed outright (no Drop) takes its etcd along.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.spawn()
        .expect("start etcd (install Debian's etcd-server: cargo xtask setup)")
}

/// A running etcd cluster on loopback, removed on drop.
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    pub tls: Option<EtcdTls>,
}

/// `n` distinct loopback ports nobody listens on now: the kernel picks them while all are
/// held, so they differ; etcd binds them right after they are released.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("pick a loopback port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound port").port())
        .collect()
}

impl EtcdCluster {
    /// `members` members (1 or 3) over plain HTTP.
    pub async fn start(members: usize) -> EtcdCluster {
        Self::start_with(members, false).await
    }

    /// `members` members that serve clients over TLS and demand a client certificate signed
    /// by [`EtcdCluster::tls`]'s CA.
    pub async fn start_tls(members: usize) -> EtcdCluster {
        Self::start_with(members, true).await
    }

    async fn start_with(count: usize, tls: bool) -> EtcdCluster {
        assert!(count >= 1, "an etcd cluster has at least one member");
        let tag = crate::unique("etcd");
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).expect("etcd test dir");
        // From here on, drop removes `dir` and kills what started.
        let mut cluster = EtcdCluster {
            dir,
            members: Vec::new(),
            tls: None,
        };
        if tls {
            cluster.tls = Some(EtcdTls::write(&cluster.dir));
        }
        let scheme = if tls { "https" } else { "http" };
        let ports = free_ports(2 * count);
        let peers: Vec<(String, String, String)> = (0..count)
            .map(|i| {
                (
                    format!("m{i}"),
                    format!("{scheme}://127.0.0.1:{}", ports[2 * i]),
                    format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                )
            })
            .collect();
        let initial: Vec<String> = peers
            .iter()
            .map(|(name, _, peer)| format!("{name}={peer}"))
            .collect();
        let initial = initial.join(",");
        for (name, client_url, peer_url) in &peers {
            let data = cluster.dir.join(name);
            let mut args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster={initial}"),
                format!("--initial-cluster-token={tag}"),
                // Ignored by a member that restarts on its data (it rejoins its cluster).
                "--initial-cluster-state=new".to_owned(),
            ];
            if let Some(t) = &cluster.tls {
                args.extend([
                    format!("--cert-file={}", t.server_cert.display()),
                    format!("--key-file={}", t.server_key.display()),
                    format!("--trusted-ca-file={}", t.ca_file.display()),
                    "--client-cert-auth".to_owned(),
                ]);
            }
            let child = spawn_member(&args, &cluster.dir.join(format!("{name}.log")));
            cluster.members.push(Member {
                name: name.clone(),
                client_url: client_url.clone(),
                args,
                child: Some(child),
            });
        }
        cluster.wait_ready().await;
        cluster
    }

    /// Waits until every member answers through the gateway's own client (so the test also
    /// proves the TLS settings a gateway would use).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        for i in 0..self.members.len() {
            let section = self.fleet_section_for(&[self.members[i].client_url.clone()], "probe");
            loop {
                match portcullis::fleet::connect(&section).await {
                    Ok(_) => break,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!(
                        "etcd member {} not ready within {READY_WITHIN:?}: {e}\n{}",
                        self.members[i].name,
                        self.log(i)
                    ),
                }
            }
        }
    }

    /// The client URLs of the members still running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// The `[fleet]` section a gateway named `gateway_id` would have for this cluster (with
    /// the client certificate when the cluster demands one).
    pub fn fleet_section(&self, gateway_id: &str) -> FleetSection {
        self.fleet_section_for(&self.endpoints(), gateway_id)
    }

    fn fleet_section_for(&self, endpoints: &[String], gateway_id: &str) -> FleetSection {
        FleetSection {
            endpoints: endpoints.to_vec(),
            gateway_id: gateway_id.into(),
            lease_ttl_secs: 3,
            registry_refresh_secs: 1,
            max_connections_per_user: None,
            max_connections: None,
            ca_file: self.tls.as_ref().map(|t| t.ca_file.clone()),
            cert_file: self.tls.as_ref().map(|t| t.client_cert.clone()),
            key_file: self.tls.as_ref().map(|t| t.client_key.clone()),
        }
    }

    /// SIGKILLs member `i` (its data stays until the cluster drops).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the killed members `which` again on their data (same ports, same cluster);
    /// returns once each answers (a member answers only while the cluster has a leader, so
    /// all are started before any is waited for).
    pub async fn restart(&mut self, which: &[usize]) {
        for &i in which {
            if self.members[i].child.is_none() {
                let log = self.dir.join(format!("{}.log", self.members[i].name));
                self.members[i].child = Some(spawn_member(&self.members[i].args, &log));
            }
        }
        let deadline = Instant::now() + READY_WITHIN;
        for &i in which {
            let section = self.fleet_section_for(&[self.members[i].client_url.clone()], "probe");
            while let Err(e) = portcullis::fleet::connect(&section).await {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} not back within {READY_WITHIN:?}: {e}\n{}",
                    self.members[i].name,
                    self.log(i)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Member `i`'s log, for failure messages.
    pub fn log(&self, i: usize) -> String {
        let p = self.dir.join(format!("{}.log", self.members[i].name));
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The directory holding the members' data, logs and TLS files (gone after drop).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes the cluster's client port `port` reachable on the loopback of `ns` (a gateway's
/// namespace): a listener there, each connection relayed to the same port on the root
/// namespace's loopback. Only loopback traffic on both sides. The relay lives as long as the
/// test process (its threads block in accept and copy; nothing outside loopback is touched).
pub fn forward_into(ns: &crate::NetNs, port: u16) {
    relay(ns, port, move || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
}

/// As [`forward_into`], to port `port` on the loopback of namespace `from` instead of the
/// root namespace's (e.g. a directory server in a namespace of its own).
pub fn forward_between(into: &crate::NetNs, from: &crate::NetNs, port: u16) {
    let from = from.name.clone();
    relay(into, port, move || {
        // Opened per connection: a namespace gone after its test fails the connect only.
        portcullis::netns::Netns::open(&from)
            .ok()?
            .run(move || std::net::TcpStream::connect(("127.0.0.1", port)))
            .ok()?
            .ok()
    });
}

fn relay(
    ns: &crate::NetNs,
    port: u16,
    connect: impl Fn() -> Option<std::net::TcpStream> + Send + 'static,
) {
    let listener = ns
        .run(move || TcpListener::bind(("127.0.0.1", port)))
        .unwrap_or_else(|e| panic!("listen on 127.0.0.1:{port} in {}: {e}", ns.name));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(down) = conn else { continue };
            let Some(up) = connect() else {
                continue;
            };
            let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            let (mut d, mut u) = (down, up);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut d, &mut u);
                let _ = u.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut d2);
                let _ = d2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
}
