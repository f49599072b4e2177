//! iperf3 and ping across the lab.
use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use super::{Proc, TempDir};
use crate::{
    clients::{run_in_ns, wait_until, IcmpSocket},
    NetNs,
};

/// An `iperf3 -s` in a namespace, stopped on drop.
pub struct Iperf3Server {
    pub proc: Proc,
    _dir: TempDir,
}

/// Start `iperf3 -s -p port` in `ns` and wait (up to 5 s) until it listens.
pub fn iperf3_server(ns: &NetNs, port: u16) -> Iperf3Server {
    let dir = TempDir::new("iperfs");
    let port_s = port.to_string();
    let proc = Proc::spawn(
        ns,
        &["iperf3", "-s", "-p", &port_s, "--forceflush"],
        &dir.path().join("iperf3.log"),
        "iperf3 server",
    );
    if let Err(e) = proc.wait_log_or_exit("Server listening", Duration::from_secs(5)) {
        panic!("{e}");
    }
    Iperf3Server { proc, _dir: dir }
}

/// The summary of one iperf3 TCP run.
#[derive(Clone, Debug, PartialEq)]
pub struct IperfResult {
    /// Goodput as the receiver counted it (`end.sum_received`).
    pub bits_per_second: f64,
    /// As the sender counted it (`end.sum_sent`).
    pub sent_bits_per_second: f64,
    /// TCP retransmissions on the sender.
    pub retransmits: u64,
    /// CPU use (percent of one core) of the client and server iperf3 processes.
    pub cpu_host: f64,
    pub cpu_remote: f64,
}

/// Run `iperf3 -c server_ip -p port -t secs -P streams [-R] -J` in `ns` (bounded: killed after
/// `secs + 15` s) and parse its report.
pub fn iperf3_client(
    ns: &NetNs,
    server_ip: Ipv4Addr,
    port: u16,
    secs: u32,
    reverse: bool,
    streams: u32,
) -> Result<IperfResult, String> {
    let dir = TempDir::new("iperfc");
    let (ip, port_s, t, p) = (
        server_ip.to_string(),
        port.to_string(),
        secs.to_string(),
        streams.max(1).to_string(),
    );
    let mut args = vec![
        "iperf3",
        "-c",
        &ip,
        "-p",
        &port_s,
        "-t",
        &t,
        "-P",
        &p,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if reverse {
        args.push("-R");
    }
    // Output to a file, not a pipe: a long report must not block the process.
    let proc = Proc::spawn(ns, &args, &dir.path().join("iperf3.json"), "iperf3 client");
    let limit = Duration::from_secs(u64::from(secs) + 15);
    if !wait_until(limit, || !proc.is_running()) {
        proc.stop();
        return Err(format!("iperf3 client did not finish within {limit:?}"));
    }
    let text = proc.log();
    drop(proc);
    parse_iperf3(&text)
}

/// Parse the `-J` report of a TCP run.
pub fn parse_iperf3(text: &str) -> Result<IperfResult, String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("iperf3 output is not JSON ({e}): {text}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(format!("iperf3: {err}"));
    }
    let end = &v["end"];
    let num = |x: &serde_json::Value, what: &str| {
        x.as_f64()
            .ok_or_else(|| format!("iperf3 report lacks {what}: {text}"))
    };
    Ok(IperfResult {
        bits_per_second: num(
            &end["sum_received"]["bits_per_second"],
            "end.sum_received.bits_per_second",
        )?,
        sent_bits_per_second: num(
            &end["sum_sent"]["bits_per_second"],
            "end.sum_sent.bits_per_second",
        )?,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        cpu_host: end["cpu_utilization_percent"]["host_total"]
            .as_f64()
            .unwrap_or(0.0),
        cpu_remote: end["cpu_utilization_percent"]["remote_total"]
            .as_f64()
            .unwrap_or(0.0),
    })
}

static PING_ID: AtomicU32 = AtomicU32::new(0);

/// Send up to `count` ICMP echoes from `ns` to `dst` over a raw socket
/// (`clients::IcmpSocket`; the machines have no `ping` binary), one at a time, each waiting
/// up to 1 s, all within `timeout`; true as soon as one is answered.
pub fn ping(ns: &NetNs, dst: Ipv4Addr, count: u32, timeout: Duration) -> bool {
    let id = (std::process::id() as u16) ^ (PING_ID.fetch_add(1, Ordering::Relaxed) as u16);
    run_in_ns(&ns.name, move || {
        let Ok(s) = IcmpSocket::new() else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        for seq in 1..=count.max(1) as u16 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if s.send_echo(dst, id, seq, b"pct-ping").is_ok()
                && s.wait_reply(dst, id, seq, left.min(Duration::from_secs(1)))
            {
                return true;
            }
        }
        false
    })
}
