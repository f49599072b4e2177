//! A named network namespace and a guard that keeps a thread inside one.
use std::{fs::File, os::fd::AsRawFd, path::Path};

use super::{run, NetnsError, Offloads, Result};

/// A named network namespace (`ip netns`, bound at `/run/netns/<name>`). A handle from
/// [`Netns::create`] deletes the namespace on drop, also when a test panics, and with it
/// every link inside (unless a process still runs there: see [`super::Veth`]); one from
/// [`Netns::open`] only refers to it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    owned: bool,
}

impl Netns {
    /// `ip netns add <name>` with the loopback up. Fails if the name exists.
    pub fn create(name: &str) -> Result<Netns> {
        run("ip", &["netns", "add", name], None)?;
        let ns = Netns {
            name: name.to_string(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Like [`Netns::create`], deleting a namespace of that name first (the leftover of an
    /// interrupted run with fixed names, such as the demo's).
    pub fn recreate(name: &str) -> Result<Netns> {
        let _ = run("ip", &["netns", "del", name], None);
        Netns::create(name)
    }

    /// A handle on an existing namespace that does not delete it on drop.
    pub fn open(name: &str) -> Result<Netns> {
        let path = Path::new("/run/netns").join(name);
        std::fs::metadata(&path).map_err(|source| NetnsError::Namespace {
            name: name.to_string(),
            source,
        })?;
        Ok(Netns {
            name: name.to_string(),
            owned: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        run("ip", &v, None)
    }

    /// `ip -n <ns> -batch -` with `lines` (one `ip` command per line, without `ip`): one
    /// process for hundreds of neighbour entries.
    pub fn ip_batch(&self, lines: &str) -> Result<()> {
        run("ip", &["-n", &self.name, "-batch", "-"], Some(lines)).map(drop)
    }

    /// `ip netns exec <ns> args...`; its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["netns", "exec", self.name.as_str()];
        v.extend_from_slice(args);
        run("ip", &v, None)
    }

    /// Write a sysctl of this namespace (`net.ipv4.ip_forward`; interface names in the key
    /// must not contain dots).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        // /proc/sys/net shows the namespace of the thread that opens it.
        self.run(move || std::fs::write(&path, value))?
            .map_err(|source| NetnsError::Io {
                what: format!("writing sysctl {key}"),
                ns: self.name.clone(),
                source,
            })
    }

    /// No IPv6 on any interface (no router solicitations or DAD in captures and counters).
    pub fn disable_ipv6(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    }

    /// `ethtool -K <dev> ...` for the offloads that are set.
    pub fn set_offloads(&self, dev: &str, offloads: Offloads) -> Result<()> {
        let args = offloads.ethtool_args();
        if args.is_empty() {
            return Ok(());
        }
        let mut v = vec!["ethtool", "-K", dev];
        v.extend(args);
        self.exec(&v).map(drop)
    }

    /// The MAC address of `dev`.
    pub fn mac(&self, dev: &str) -> Result<[u8; 6]> {
        let text = self.read_sys(dev, "address")?;
        let mut mac = [0u8; 6];
        let mut parts = text.trim().split(':');
        for b in &mut mac {
            *b = parts
                .next()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| self.parse_error(&format!("MAC address of {dev}"), &text))?;
        }
        Ok(mac)
    }

    /// The interface index of `dev`.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let text = self.read_sys(dev, "ifindex")?;
        text.trim()
            .parse()
            .map_err(|_| self.parse_error(&format!("ifindex of {dev}"), &text))
    }

    /// `/sys/class/net/<dev>/<attr>` as this namespace sees it (sysfs shows the namespace of
    /// the process that mounted it, so read it through `ip netns exec`, which mounts its own).
    fn read_sys(&self, dev: &str, attr: &str) -> Result<String> {
        self.exec(&["cat", &format!("/sys/class/net/{dev}/{attr}")])
    }

    fn parse_error(&self, what: &str, text: &str) -> NetnsError {
        NetnsError::Parse {
            what: what.to_string(),
            ns: self.name.clone(),
            text: text.to_string(),
        }
    }

    fn file(&self) -> Result<File> {
        File::open(Path::new("/run/netns").join(&self.name)).map_err(|source| {
            NetnsError::Namespace {
                name: self.name.clone(),
                source,
            }
        })
    }

    /// Run `f` on a fresh thread inside this namespace; sockets it creates live there and
    /// stay there when handed back. A panic in `f` continues in the caller.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = self.file()?;
        let name = self.name.clone();
        let joined = std::thread::spawn(move || {
            setns(&file).map_err(|source| NetnsError::Namespace { name, source })?;
            Ok(f())
        })
        .join();
        match joined {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Move the calling thread into this namespace until the guard drops: sockets, TAP
    /// devices and `BPF_PROG_TEST_RUN` then see this namespace.
    pub fn enter(&self) -> Result<NsGuard> {
        let err = |source| NetnsError::Namespace {
            name: self.name.clone(),
            source,
        };
        let orig = File::open("/proc/thread-self/ns/net").map_err(err)?;
        setns(&self.file()?).map_err(err)?;
        Ok(NsGuard { orig })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = run("ip", &["netns", "del", &self.name], None);
        }
    }
}

/// Returns the thread to the namespace it was in before [`Netns::enter`]. Drop it before the
/// namespace it entered is deleted.
#[must_use = "the thread leaves the namespace when the guard drops"]
pub struct NsGuard {
    orig: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = setns(&self.orig);
    }
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns(2) on an open namespace file; it changes only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
