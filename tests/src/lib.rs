//! Harness for the privileged integration tests: network namespaces and links that clean
//! themselves up (RAII, also on panic), and small helpers around `ip`.
//!
//! Every name starts with `pct-` and carries the process id and a counter, so concurrent
//! or leftover runs never collide and `cargo xtask cleanup` can find strays.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

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

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
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
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Move the calling thread into this namespace until the guard drops. Sockets, TAP
    /// devices and BPF_PROG_TEST_RUN then see this namespace.
    pub fn enter(&self) -> NsGuard {
        let orig = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: setns on valid fds; affects only this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
        NsGuard { orig }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Restores the thread's original network namespace.
pub struct NsGuard {
    orig: File,
}

impl Drop for NsGuard {
    fn drop(&mut self) {
        // SAFETY: setns back to the fd we opened before entering.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// A veth pair between two namespaces with addresses; the peer gets GRO on, because a
/// frame XDP-redirected into a veth is dropped unless the peer has XDP or GRO.
pub fn veth(a: &NetNs, a_if: &str, a_addr: &str, b: &NetNs, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_addr, "dev", a_if]);
    b.ip(&["addr", "add", b_addr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
    a.exec(&["ethtool", "-K", a_if, "gro", "on"]);
    b.exec(&["ethtool", "-K", b_if, "gro", "on"]);
}

/// The MAC address of `iface` in `ns`.
pub fn mac_of(ns: &NetNs, iface: &str) -> [u8; 6] {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{iface}/address")]);
    let s = String::from_utf8_lossy(&out.stdout);
    let mut mac = [0u8; 6];
    for (i, p) in s.trim().split(':').enumerate() {
        mac[i] = u8::from_str_radix(p, 16).expect("mac");
    }
    mac
}
