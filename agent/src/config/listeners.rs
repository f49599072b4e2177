//! The `listen` list: UDP and TCP listener addresses.
use std::net::SocketAddr;

use super::errors::err;
use super::{ConfigError, EndpointConfig};

/// A listener from `listen`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl EndpointConfig {
    pub fn listeners(&self) -> Result<Vec<Listener>, Vec<ConfigError>> {
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for (i, l) in self.listen.iter().enumerate() {
            let path = format!("listen[{i}]");
            let (proto, rest) = match l.split_once("://") {
                Some(x) => x,
                None => {
                    errs.push(err(
                        path,
                        format!("`{l}` has no scheme: write `udp://{l}` or `tcp://{l}`"),
                    ));
                    continue;
                }
            };
            let Ok(addr) = rest.parse::<SocketAddr>() else {
                errs.push(err(
                    path,
                    format!("`{rest}` is not ADDRESS:PORT (e.g. `0.0.0.0:1194` or `[::]:1194`)"),
                ));
                continue;
            };
            match proto {
                "udp" => out.push(Listener::Udp(addr)),
                "tcp" => out.push(Listener::Tcp(addr)),
                other => errs.push(err(
                    path,
                    format!("unknown transport `{other}`: use `udp` or `tcp`"),
                )),
            }
        }
        if self.listen.is_empty() {
            errs.push(err(
                "listen",
                "no listener: add e.g. `listen = [\"udp://0.0.0.0:1194\"]`",
            ));
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(errs)
        }
    }
}
