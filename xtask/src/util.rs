//! Small helpers shared by the subcommands: paths, child processes, privilege checks.

use std::{
    env,
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of `xtask/`).
pub fn root_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
        .join("bin")
}

/// `PATH` with `$CARGO_HOME/bin` appended when missing, so tools installed by
/// `cargo install` (bpf-linker) are found by us and by the agent's build script.
fn path_env() -> OsString {
    let bin = cargo_bin_dir();
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if !dirs.contains(&bin) {
        dirs.push(bin);
    }
    env::join_paths(dirs).unwrap_or(path)
}

/// A command with our `PATH`, started from the workspace root.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("PATH", path_env()).current_dir(root_dir());
    cmd
}

/// The cargo that runs us (the toolchain `cargo xtask` was invoked with).
pub fn cargo() -> Command {
    command(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The command line as a shell user would type it (for logs and error messages).
pub fn display(cmd: &Command) -> String {
    let mut out = String::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            out.push_str(&format!(
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    let program = cmd.get_program().to_string_lossy();
    // Show `cargo`, not the toolchain path of the cargo that runs us.
    let program = if Some(cmd.get_program()) == env::var_os("CARGO").as_deref() {
        "cargo".into()
    } else {
        program
    };
    out.push_str(&program);
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
            out.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
        } else {
            out.push(' ');
            out.push_str(&arg);
        }
    }
    out
}

/// Runs `cmd` with inherited stdio, echoing it first; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    println!("+ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails with a message that says what needs root and why.
pub fn require_root(what: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} needs root ({why}); run it as root, e.g. \
             `sudo env \"PATH=$PATH\" cargo xtask ...`"
        );
    }
    Ok(())
}

/// The workspace's target directory (honours CARGO_TARGET_DIR and build.target-dir).
pub fn target_dir() -> Result<PathBuf> {
    let json = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&json).context("parsing cargo metadata")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// The lock every privileged run on this machine holds: the tests' namespace names, pins,
/// ports and the cleanup step are machine-wide, so two runs at once (two checkouts, or a
/// developer's `flock /tmp/portcullis-priv.lock cargo test -p tests ...` beside
/// `cargo xtask test`) would tear down each other's labs.
pub const PRIVILEGED_LOCK: &str = "/tmp/portcullis-priv.lock";

/// Holds [`PRIVILEGED_LOCK`] (an exclusive `flock`) until dropped; waits for another holder
/// and says so.
pub struct MachineLock(#[allow(dead_code)] std::fs::File);

pub fn lock_privileged() -> Result<MachineLock> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PRIVILEGED_LOCK)
        .with_context(|| format!("opening {PRIVILEGED_LOCK}"))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        println!("xtask: another privileged run holds {PRIVILEGED_LOCK}; waiting for it");
        // SAFETY: as above, blocking this time.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "locking {PRIVILEGED_LOCK}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(MachineLock(file))
}
