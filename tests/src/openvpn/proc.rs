//! Processes started inside namespaces, and temporary directories, both cleaned up on drop.
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use crate::{clients::wait_until, NetNs};

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
        read_log(&self.log)
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        last_lines(&self.log(), n)
    }

    /// Wait until the log contains `pattern`; false on timeout or when the process exits
    /// without having written it.
    pub fn wait_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.wait_log_or_exit(pattern, timeout).is_ok()
    }

    /// Wait for `pattern`, failing early when the process exits; the error has the log tail.
    pub fn wait_log_or_exit(&self, pattern: &str, timeout: Duration) -> Result<(), String> {
        wait_until(timeout, || {
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
        wait_until(timeout, || {
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

/// A process's log file so far (empty if unreadable).
pub fn read_log(path: &std::path::Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `log`.
pub fn last_lines(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
