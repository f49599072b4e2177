//! A real browser for tests: Debian's `chromium`, headless, driven through `chromedriver`
//! with the `fantoccini` WebDriver client, inside a test namespace. Used by the SSO tests
//! (through [`crate::idp_browser`]) and the console's browser test.
//!
//! - [`Chromium::run`]: one fresh browser (no cookies) for one async script, closed after.
//! - [`Chromium::session`]: one browser kept open across steps, so a test can drive a page,
//!   check the world outside (a client's log, the agent), and drive on with the same cookies.
//!
//! Cleanup: chromedriver runs in its own process group and every browser with a user-data
//! directory under this guard's temporary directory; drop ends the group and any such browser
//! left (by pid), also when the test panics.
use std::future::Future;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::{Client, ClientBuilder};

use crate::openvpn::TempDir;
use crate::NetNs;

/// What a browser step returns: a boxed future over the (cloned) client.
pub type Step<R> = Pin<Box<dyn Future<Output = R> + Send>>;

/// `base64(sha256(SubjectPublicKeyInfo))` of a PEM certificate, as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it: the browser trusts exactly these keys.
pub fn spki_hash(cert_pem_file: &Path) -> String {
    let pem = std::fs::read(cert_pem_file).expect("read certificate");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM certificate");
    let cert = pem.parse_x509().expect("X.509 certificate");
    let d = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    base64::engine::general_purpose::STANDARD.encode(d.as_ref())
}

/// Both packages are there, or a message saying how to get them.
pub fn available() -> Result<(), String> {
    for (bin, pkg) in [
        ("chromium", "chromium"),
        ("chromedriver", "chromium-driver"),
    ] {
        if Command::new(bin).arg("--version").output().is_err() {
            return Err(format!(
                "no `{bin}`: run `cargo xtask setup` (Debian package {pkg})"
            ));
        }
    }
    Ok(())
}

/// chromedriver on 127.0.0.1:`port` in a namespace.
pub struct Chromium {
    ns: String,
    port: u16,
    driver: Child,
    /// Keys (PEM certificates) the browser trusts.
    spki: Vec<String>,
    sessions: u32,
    dir: TempDir,
}

impl Chromium {
    /// chromedriver in `ns`, trusting the certificates `trusted` (PEM files).
    pub fn start(ns: &NetNs, port: u16, trusted: &[&Path]) -> Chromium {
        available().unwrap_or_else(|e| panic!("{e}"));
        let dir = TempDir::new("browser");
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).unwrap();
        let driver = Command::new("ip")
            .args(["netns", "exec", &ns.name, "chromedriver"])
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn chromedriver");
        let b = Chromium {
            ns: ns.name.clone(),
            port,
            driver,
            spki: trusted.iter().map(|p| spki_hash(p)).collect(),
            sessions: 0,
            dir,
        };
        let up = crate::clients::run_in_ns(&b.ns, move || {
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        });
        assert!(up, "chromedriver did not listen on {port}");
        b
    }

    /// Where the browsers of this guard save downloads.
    pub fn download_dir(&self) -> PathBuf {
        self.dir.path().join("downloads")
    }

    /// The capabilities of a fresh browser: its own user-data directory (no cookies), the
    /// trusted keys, downloads saved without asking.
    fn capabilities(&mut self) -> serde_json::Map<String, serde_json::Value> {
        self.sessions += 1;
        let profile = self.dir.path().join(format!("profile-{}", self.sessions));
        let downloads = self.download_dir();
        std::fs::create_dir_all(&downloads).unwrap();
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!(
                "--ignore-certificate-errors-spki-list={}",
                self.spki.join(",")
            ),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "args": args,
                "prefs": {
                    "download.default_directory": downloads.to_string_lossy(),
                    "download.prompt_for_download": false,
                },
            }),
        );
        caps
    }

    /// A fresh browser runs `script` and is closed; its result is returned.
    pub fn run<R: Send + 'static>(
        &mut self,
        script: impl FnOnce(Client) -> Step<R> + Send + 'static,
    ) -> R {
        let s = self.session();
        s.step(script)
    }

    /// A fresh browser kept open until the returned session is dropped.
    pub fn session(&mut self) -> BrowserSession {
        let caps = self.capabilities();
        let (ns, port) = (self.ns.clone(), self.port);
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        // The WebDriver connection is made inside the namespace (chromedriver listens on its
        // loopback), from a thread that stays there for the session's life.
        let thread = std::thread::spawn(move || {
            crate::clients::run_in_ns(&ns, move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let conn = hyper_util::client::legacy::connect::HttpConnector::new();
                    let c = ClientBuilder::new(conn)
                        .capabilities(caps)
                        .connect(&format!("http://127.0.0.1:{port}"))
                        .await
                        .expect("WebDriver session");
                    let _ = ready_tx.send(());
                    // A job's panic ends the loop (its sender sees the channel closed); the
                    // browser is closed either way by the guard's drop.
                    while let Ok(job) = rx.recv() {
                        job(c.clone()).await;
                    }
                    let _ = c.close().await;
                })
            })
        });
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("no WebDriver session within 60 s (is chromium installed?)");
        }
        BrowserSession {
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }
}

type Job = Box<dyn FnOnce(Client) -> Step<()> + Send>;

/// One open browser; its steps run in order on the namespace's thread.
pub struct BrowserSession {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BrowserSession {
    /// Runs `script` against the open browser and returns its result; a panic in the script
    /// fails the calling test.
    pub fn step<R: Send + 'static>(
        &self,
        script: impl FnOnce(Client) -> Step<R> + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |c| {
            Box::pin(async move {
                let r = script(c).await;
                let _ = tx.send(r);
            })
        });
        self.jobs
            .as_ref()
            .expect("open")
            .send(job)
            .expect("the browser thread ended (an earlier step panicked)");
        rx.recv()
            .expect("the browser step panicked (see its message above)")
    }
}

impl Drop for BrowserSession {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let pgid = self.driver.id() as i32;
        // SAFETY: signals to the process group this guard created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.driver.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.driver.wait();
        kill_browsers_under(self.dir.path());
    }
}

/// Browsers that escaped the process group: those whose command line names a user-data
/// directory under `dir` (only ours), by pid. Waits (bounded) until they are gone.
fn kill_browsers_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut left = 0;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                left += 1;
                // SAFETY: a process started for this guard (its user-data directory is ours).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if left == 0 || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
