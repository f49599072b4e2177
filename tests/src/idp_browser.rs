//! The user's side of a web login: a real browser (Debian's `chromium`, headless, driven
//! through `chromedriver` with the `fantoccini` WebDriver client) inside a test namespace, and
//! the part of an OpenVPN GUI that matters here: the management-interface client that
//! releases the hold and reads `>INFOMSG:WEB_AUTH::<url>` from stock `openvpn`.
//!
//! Cleanup: chromedriver runs in its own process group and every browser with a user-data
//! directory under this guard's temporary directory; drop ends the group and any such browser
//! left (by pid), also when the test panics.
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::{ClientBuilder, Locator};

use crate::openvpn::TempDir;
use crate::NetNs;

/// What the browser page said after the login.
#[derive(Debug)]
pub enum LoginResult {
    /// The callback page's text (`#result`) and its URL.
    Callback(String, String),
    /// The provider's form came back with an error (`#error`).
    ProviderError(String),
}

/// chromedriver on 127.0.0.1:`port` in a namespace.
pub struct Browser {
    ns: String,
    port: u16,
    driver: Child,
    /// Keys (PEM certificates) the browser trusts: the test provider's and the gateway's.
    spki: Vec<String>,
    sessions: u32,
    dir: TempDir,
}

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

impl Browser {
    /// chromedriver in `ns`, trusting the certificates `trusted` (PEM files).
    pub fn start(ns: &NetNs, port: u16, trusted: &[&Path]) -> Browser {
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
        let b = Browser {
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

    /// A fresh browser (no cookies) opens `url`, signs in as `user`/`password` on the test
    /// provider's form and reports the page it ends on.
    pub fn login(&mut self, url: &str, user: &str, password: &str) -> LoginResult {
        self.session(url, Action::Login(user.to_owned(), password.to_owned()))
    }

    /// Like [`Browser::login`], pressing the provider's Cancel button.
    pub fn cancel(&mut self, url: &str) -> LoginResult {
        self.session(url, Action::Cancel)
    }

    /// A fresh browser opens `url` (a callback URL, replayed) and reports the page.
    pub fn open(&mut self, url: &str) -> LoginResult {
        self.session(url, Action::Open)
    }

    fn session(&mut self, url: &str, action: Action) -> LoginResult {
        self.sessions += 1;
        let profile = self.dir.path().join(format!("profile-{}", self.sessions));
        let args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--no-first-run".to_owned(),
            format!("--user-data-dir={}", profile.display()),
            format!(
                "--ignore-certificate-errors-spki-list={}",
                self.spki.join(",")
            ),
        ];
        let (url, port) = (url.to_owned(), self.port);
        crate::clients::run_in_ns(&self.ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut caps = serde_json::Map::new();
                caps.insert(
                    "goog:chromeOptions".into(),
                    serde_json::json!({"args": args}),
                );
                let conn = hyper_util::client::legacy::connect::HttpConnector::new();
                let c = ClientBuilder::new(conn)
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await
                    .expect("WebDriver session");
                let r = drive(&c, &url, &action).await;
                let _ = c.close().await;
                r.unwrap_or_else(|e| panic!("browser: {e}"))
            })
        })
    }
}

enum Action {
    Login(String, String),
    Cancel,
    Open,
}

async fn drive(
    c: &fantoccini::Client,
    url: &str,
    action: &Action,
) -> Result<LoginResult, fantoccini::error::CmdError> {
    let wait = Duration::from_secs(20);
    c.goto(url).await?;
    match action {
        Action::Open => {}
        Action::Cancel => {
            c.wait()
                .at_most(wait)
                .for_element(Locator::Id("login"))
                .await?;
            c.find(Locator::Id("cancel")).await?.click().await?;
        }
        Action::Login(user, password) => {
            c.wait()
                .at_most(wait)
                .for_element(Locator::Id("login"))
                .await?;
            c.find(Locator::Id("login")).await?.send_keys(user).await?;
            c.find(Locator::Id("password"))
                .await?
                .send_keys(password)
                .await?;
            c.find(Locator::Id("submit")).await?.click().await?;
        }
    }
    // Either the gateway's callback page or the provider's form with an error.
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(e) = c.find(Locator::Id("result")).await {
            let text = e.text().await?;
            return Ok(LoginResult::Callback(
                text,
                c.current_url().await?.to_string(),
            ));
        }
        if let Ok(e) = c.find(Locator::Id("error")).await {
            return Ok(LoginResult::ProviderError(e.text().await?));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let src = c.source().await.unwrap_or_default();
    panic!("the login ended on neither the callback nor the form: {src}");
}

impl Drop for Browser {
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
/// directory under `dir` (only ours), by pid.
/// Waits (bounded) until they are gone.
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

/// The GUI's management connection to a stock `openvpn` (`management 127.0.0.1 PORT` and
/// `management-hold` in its profile): releases the hold, then reads notifications.
pub struct Gui {
    lines: BufReader<TcpStream>,
    seen: Vec<String>,
}

impl Gui {
    /// Connects inside `ns` (retrying while openvpn starts) and releases the hold.
    pub fn attach(ns: &NetNs, port: u16) -> Gui {
        let s = crate::clients::run_in_ns(&ns.name, move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => return s,
                    Err(e) if Instant::now() >= deadline => {
                        panic!("openvpn's management interface on {port}: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(b"state on\nhold release\n").unwrap();
        Gui {
            lines: BufReader::new(s),
            seen: Vec::new(),
        }
    }

    /// The first line starting with `prefix` within `timeout`, without the prefix.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Option<String> {
        if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return Some(l[prefix.len()..].to_owned());
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut line = String::new();
            match self.lines.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {
                    let line = line.trim_end().to_owned();
                    let hit = line.strip_prefix(prefix).map(str::to_owned);
                    self.seen.push(line);
                    if hit.is_some() {
                        return hit;
                    }
                }
                Err(_) => {}
            }
        }
        None
    }

    /// The URL of `>INFOMSG:WEB_AUTH::<url>`.
    pub fn web_auth_url(&mut self, timeout: Duration) -> Option<String> {
        self.wait_line(">INFOMSG:WEB_AUTH::", timeout)
    }

    /// Everything read so far (for failure messages).
    pub fn transcript(&self) -> String {
        self.seen.join("\n")
    }
}
