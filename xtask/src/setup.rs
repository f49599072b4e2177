//! `cargo xtask setup`: install what is missing, never what is present.
//!
//! Everything the project needs from the machine is listed here and nowhere else; see
//! docs/toolchain.md for why the eBPF build uses Debian's rustc and bpf-linker.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

use crate::util::{self, command};

/// Debian packages the build, the tests and the demo need.
pub const APT_PACKAGES: &[&str] = &[
    // Debian's rustc 1.96 (LLVM 22) with a precompiled `core` for bpfel-unknown-none:
    // the eBPF compiler, no build-std needed.
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    // The LLVM that bpf-linker links against (same major version as the rustc above).
    "llvm-22-dev",
    // Inspecting the data path and building test topologies.
    "bpftool",
    "ethtool",
    "iproute2",
    "nftables",
    // Real peers for the end-to-end tests.
    "openvpn",
    "iperf3",
    "tcpdump",
    // A real directory for the directory-authentication tests (each test runs its own slapd
    // with its own configuration inside a test namespace; the system one is turned off).
    "slapd",
    "ldap-utils",
    // Fleet mode: the etcd the fleet tests start (Debian's package installs without starting
    // a service), and protoc, which the etcd client crate's build script needs.
    "etcd-server",
    "protobuf-compiler",
    // Single sign-on tests: a real OpenID provider (npm's `oidc-provider`, run by Node, see
    // `idp_packages`) and a real browser driven through WebDriver.
    "nodejs",
    "chromium",
    "chromium-driver",
    "curl",
];

/// Where `npm ci` installs the test OpenID provider's packages (outside the source tree; the
/// tests read it from here, see `tests/src/idp.rs`).
pub const IDP_CACHE: &str = "/var/cache/portcullis/idp";
/// The provider's package.json and package-lock.json.
const IDP_SOURCE: &str = "tests/idp";

/// bpf-linker release series that matches LLVM 22 (`cargo install` picks the newest 0.13.x).
const BPF_LINKER_SERIES: &str = "0.13";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Files the agent's build script needs; they come from the packages above.
const BPF_RUSTC: &str = "/usr/bin/rustc";
const BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none";

pub const BPFFS: &str = "/sys/fs/bpf";

fn report(item: &str, state: &str) {
    println!("setup: {item:<28} {state}");
}

pub fn run() -> Result<()> {
    util::require_root(
        "cargo xtask setup",
        "it installs apt packages and bpf-linker and mounts bpffs",
    )?;
    apt_packages()?;
    bpf_toolchain_files()?;
    bpf_linker()?;
    bpffs()?;
    idp_packages()?;
    openvpn3_client()?;
    Ok(())
}

/// Where the OpenVPN 3 core client is installed (`tests/src/ovpn3.rs` reads it from here).
pub const OPENVPN3_CACHE: &str = "/var/cache/openvpn3";
/// The build script and source snapshot, beside the checkout (not part of the repository).
const OPENVPN3_SOURCE: &str = "../shared/tools/openvpn3";

/// `ovpncli`, the OpenVPN 3 core's command-line client (not packaged by Debian), built by
/// the shared script when the shared tools are beside the checkout; without them the tests
/// that need it skip themselves by name.
fn openvpn3_client() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join(OPENVPN3_SOURCE).join("build.sh");
    let bin = Path::new(OPENVPN3_CACHE).join("ovpncli");
    if bin.is_file() {
        report("openvpn3 ovpncli", "present");
        return Ok(());
    }
    if !script.is_file() {
        report(
            "openvpn3 ovpncli",
            "skipped (no ../shared/tools/openvpn3: its tests will say so)",
        );
        return Ok(());
    }
    // The script installs its build packages with apt and is idempotent itself.
    util::run(command("bash").arg(&script).arg(OPENVPN3_CACHE))?;
    report("openvpn3 ovpncli", "built");
    Ok(())
}

/// `npm ci` of tests/idp into [`IDP_CACHE`], only when the lock file there differs from the
/// source's (so a second run installs nothing, and a changed lock reinstalls).
fn idp_packages() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lock = fs::read(root.join(IDP_SOURCE).join("package-lock.json"))
        .context("reading tests/idp/package-lock.json")?;
    let cache = Path::new(IDP_CACHE);
    let installed = cache
        .join("node_modules/oidc-provider/package.json")
        .exists();
    if installed && fs::read(cache.join("package-lock.json")).ok().as_deref() == Some(&lock[..]) {
        report("npm oidc-provider", "present");
        return Ok(());
    }
    // NodeSource's nodejs ships npm (and conflicts with Debian's npm package); Debian's does
    // not.
    if command("npm").arg("--version").output().is_err() {
        util::run(
            command("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "npm"]),
        )?;
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {IDP_CACHE}"))?;
    for f in ["package.json", "package-lock.json"] {
        fs::copy(root.join(IDP_SOURCE).join(f), cache.join(f))
            .with_context(|| format!("copying {IDP_SOURCE}/{f} to {IDP_CACHE}"))?;
    }
    util::run(
        command("npm")
            .args([
                "ci",
                "--omit=dev",
                "--ignore-scripts",
                "--no-audit",
                "--no-fund",
            ])
            .current_dir(cache),
    )?;
    report("npm oidc-provider", "installed");
    Ok(())
}

fn dpkg_installed(package: &str) -> Result<bool> {
    let out = command("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .context("could not run dpkg-query (setup expects a Debian-like system)")?;
    // Exit status 1 with "no packages found" means never installed.
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn apt_packages() -> Result<()> {
    let mut missing = Vec::new();
    for package in APT_PACKAGES {
        if !dpkg_installed(package)? {
            missing.push(*package);
        }
    }
    if !missing.is_empty() {
        println!("setup: installing {}", missing.join(" "));
        util::run(command("apt-get").args(["update", "-q"]))?;
        util::run(
            command("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q"])
                .args(&missing),
        )?;
    }
    if missing.contains(&"slapd") {
        system_slapd_off();
    }
    for package in APT_PACKAGES {
        if !dpkg_installed(package)? {
            bail!("apt package {package} is still not installed after `apt-get install`");
        }
        report(
            package,
            if missing.contains(package) {
                "installed"
            } else {
                "present"
            },
        );
    }
    Ok(())
}

/// Debian's slapd package starts a system directory on port 389 where init scripts may run.
/// The tests never use it: stop it and keep it from starting at boot (best effort; in
/// containers policy-rc.d usually kept it from starting at all).
fn system_slapd_off() {
    let systemd = Path::new("/run/systemd/system").exists();
    let result = if systemd {
        command("systemctl")
            .args(["disable", "--now", "slapd"])
            .status()
    } else {
        command("service").args(["slapd", "stop"]).status()
    };
    let state = match result {
        Ok(s) if s.success() => "system service stopped and disabled",
        _ => "system service not running",
    };
    report("slapd (system)", state);
}

fn bpf_toolchain_files() -> Result<()> {
    for path in [BPF_RUSTC, BPF_CORE] {
        if !Path::new(path).exists() {
            bail!(
                "{path} is missing although rustc-web and libstd-rust-web-dev-bpf are installed; \
                 reinstall them: apt-get install --reinstall -y rustc-web libstd-rust-web-dev-bpf"
            );
        }
    }
    report("bpfel-unknown-none core", "present");
    Ok(())
}

/// The installed bpf-linker's version, if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = command("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    // "bpf-linker 0.13.0"
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.split_whitespace().nth(1).map(str::to_owned)
}

fn bpf_linker_ok(version: &Option<String>) -> bool {
    version.as_deref().is_some_and(|v| {
        v.strip_prefix(BPF_LINKER_SERIES)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

fn bpf_linker() -> Result<()> {
    let found = bpf_linker_version();
    if bpf_linker_ok(&found) {
        report(
            "bpf-linker",
            &format!("present ({})", found.unwrap_or_default()),
        );
        return Ok(());
    }
    match &found {
        Some(v) => println!("setup: bpf-linker {v} is not {BPF_LINKER_SERIES}.x, reinstalling"),
        None => {
            println!("setup: bpf-linker is missing or does not run, installing (about a minute)")
        }
    }
    // --force: a bpf-linker of the right version that no longer runs (say, its LLVM was
    // removed) is otherwise reported as "already installed" and left broken.
    util::run(
        util::cargo()
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--no-default-features",
            ])
            .args(["--features", BPF_LINKER_LLVM_FEATURE])
            .args(["--version", &format!("^{BPF_LINKER_SERIES}")]),
    )?;
    let installed = bpf_linker_version();
    if !bpf_linker_ok(&installed) {
        bail!(
            "bpf-linker still does not report version {BPF_LINKER_SERIES}.x after `cargo install` \
             (found {installed:?}); is {} on PATH?",
            util::cargo_bin_dir().display()
        );
    }
    report(
        "bpf-linker",
        &format!("installed ({})", installed.unwrap_or_default()),
    );
    Ok(())
}

pub fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_src, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(BPFFS) && fstype == Some("bpf")
    }))
}

fn bpffs() -> Result<()> {
    let item = format!("bpffs at {BPFFS}");
    if bpffs_mounted()? {
        report(&item, "present");
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    util::run(command("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    if !bpffs_mounted()? {
        bail!("mounted bpffs at {BPFFS} but /proc/mounts does not show it");
    }
    report(&item, "mounted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_linker_version_series() {
        assert!(bpf_linker_ok(&Some("0.13.0".into())));
        assert!(bpf_linker_ok(&Some("0.13.12".into())));
        assert!(!bpf_linker_ok(&Some("0.130.0".into())));
        assert!(!bpf_linker_ok(&Some("0.12.9".into())));
        assert!(!bpf_linker_ok(&None));
    }
}
