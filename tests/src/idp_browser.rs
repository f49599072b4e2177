//! The user's side of a web login: a real browser (Debian's `chromium`, headless, driven
//! through `chromedriver` with the `fantoccini` WebDriver client) inside a test namespace, and
//! the part of an OpenVPN GUI that matters here: the management-interface client that
//! releases the hold and reads `>INFOMSG:WEB_AUTH::<url>` from stock `openvpn`.
//!
//! The browser itself (start, cleanup, trusted keys) is [`crate::browser`].
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use fantoccini::Locator;

use crate::browser::Chromium;
pub use crate::browser::{available, spki_hash};
use crate::NetNs;

/// What the browser page said after the login.
#[derive(Debug)]
pub enum LoginResult {
    /// The callback page's text (`#result`) and its URL.
    Callback(String, String),
    /// The provider's form came back with an error (`#error`).
    ProviderError(String),
}

/// chromedriver on 127.0.0.1:`port` in a namespace, for web logins.
pub struct Browser {
    chrome: Chromium,
}

impl Browser {
    /// chromedriver in `ns`, trusting the certificates `trusted` (PEM files).
    pub fn start(ns: &NetNs, port: u16, trusted: &[&Path]) -> Browser {
        Browser {
            chrome: Chromium::start(ns, port, trusted),
        }
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
        let url = url.to_owned();
        self.chrome.run(move |c| {
            Box::pin(async move {
                drive(&c, &url, &action)
                    .await
                    .unwrap_or_else(|e| panic!("browser: {e}"))
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
