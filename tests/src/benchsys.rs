//! Shared by the benchmark programs (`bench-tunnel`, `bench-scale`).
//!
//! What the benchmark reads from the system: CPU time of the gateway (a process, or some of
//! its threads by name) and of the whole machine from /proc, resident memory, the CPU clock,
//! `perf stat` cycles where the machine has a cycle counter, and ICMP round-trip times.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::clients::{run_in_ns, IcmpSocket};
use serde_json::{json, Value};

/// Which tasks are "the gateway": all tasks of `pid` (`threads` empty), or those whose name
/// (`comm`) starts with one of `threads`.
#[derive(Clone, Debug)]
pub struct GwSpec {
    pub pid: u32,
    pub threads: Vec<String>,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// `(comm, utime + stime in ticks)` from a `/proc/.../stat` line.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // Fields after the name start at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The gateway's tasks: `(tid, comm)`.
pub fn gw_tasks(gw: &GwSpec) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", gw.pid)) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        if let Some((comm, _)) = parse_stat(&text) {
            if gw.threads.is_empty() || gw.threads.iter().any(|p| comm.starts_with(p.as_str())) {
                out.push((tid, comm));
            }
        }
    }
    out.sort();
    out
}

/// On-CPU time of one task in seconds: `/proc/PID/task/TID/schedstat` (nanoseconds) where
/// the kernel has it, else utime + stime from its `stat` (clock ticks, 10 ms).
fn task_cpu_seconds(pid: u32, tid: u32) -> Option<f64> {
    let base = format!("/proc/{pid}/task/{tid}");
    if let Some(ns) = std::fs::read_to_string(format!("{base}/schedstat"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok())
    {
        return Some(ns as f64 / 1e9);
    }
    let (_, ticks) = parse_stat(&std::fs::read_to_string(format!("{base}/stat")).ok()?)?;
    Some(ticks as f64 / clk_tck())
}

/// Whether per-task CPU time comes in nanoseconds (schedstat) or in clock ticks.
pub fn cpu_time_source() -> &'static str {
    if Path::new("/proc/self/schedstat").exists() {
        "/proc/PID/task/TID/schedstat (on-CPU ns)"
    } else {
        "/proc/PID/task/TID/stat utime+stime (clock ticks)"
    }
}

/// CPU seconds the gateway's tasks used so far (tasks that exited no longer count: both
/// servers keep their threads for the whole run).
pub fn gw_cpu_seconds(gw: &GwSpec) -> f64 {
    gw_tasks(gw)
        .iter()
        .filter_map(|(tid, _)| task_cpu_seconds(gw.pid, *tid))
        .sum()
}

/// CPU seconds of every task of every process in `pids`.
pub fn pids_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .map(|&pid| {
            gw_cpu_seconds(&GwSpec {
                pid,
                threads: Vec::new(),
            })
        })
        .sum()
}

/// The aggregate `cpu` line of `/proc/stat`, in ticks.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl MachineCpu {
    pub fn read() -> MachineCpu {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        MachineCpu {
            user: g(0),
            nice: g(1),
            system: g(2),
            idle: g(3),
            iowait: g(4),
            irq: g(5),
            softirq: g(6),
            steal: g(7),
        }
    }

    /// Busy: user + nice + system + irq + softirq (guest time is inside user; steal, idle
    /// and iowait are not busy).
    fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq
    }
}

/// One reading of the gateway's and the machine's CPU time.
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub gateway_s: f64,
    pub machine: MachineCpu,
}

/// CPU used between two samples, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct CpuDelta {
    pub gateway_s: f64,
    pub busy_s: f64,
    pub softirq_s: f64,
    pub system_s: f64,
    pub idle_s: f64,
    pub steal_s: f64,
}

impl CpuSample {
    pub fn take(gw: &GwSpec) -> CpuSample {
        CpuSample {
            gateway_s: gw_cpu_seconds(gw),
            machine: MachineCpu::read(),
        }
    }

    pub fn since(&self, before: &CpuSample) -> CpuDelta {
        let t = clk_tck();
        let d = |a: u64, b: u64| a.saturating_sub(b) as f64 / t;
        let (a, b) = (&self.machine, &before.machine);
        CpuDelta {
            gateway_s: self.gateway_s - before.gateway_s,
            busy_s: d(a.busy(), b.busy()),
            softirq_s: d(a.softirq, b.softirq),
            system_s: d(a.system, b.system),
            idle_s: d(a.idle + a.iowait, b.idle + b.iowait),
            steal_s: d(a.steal, b.steal),
        }
    }
}

impl CpuDelta {
    pub fn to_json(self) -> Value {
        json!({
            "gateway_cpu_s": self.gateway_s,
            "machine_busy_s": self.busy_s,
            "machine_softirq_s": self.softirq_s,
            "machine_system_s": self.system_s,
            "machine_idle_s": self.idle_s,
            "machine_steal_s": self.steal_s,
        })
    }
}

/// User + system CPU seconds of this process (a load generator measuring itself).
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `cpu MHz` of the first CPU in /proc/cpuinfo.
pub fn cpu_mhz() -> Option<f64> {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

// ---- perf stat --------------------------------------------------------------------------------

/// Whether `perf stat -e cycles true` counts cycles here, and what it printed.
pub fn perf_cycles_probe() -> (bool, String) {
    let out = Command::new("perf")
        .args(["stat", "-x", ",", "-e", "cycles", "true"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
            let ok = o.status.success() && parse_perf_cycles(&err).is_some();
            (ok, err)
        }
        Err(e) => (false, format!("perf not runnable: {e}")),
    }
}

/// The cycle count from `perf stat -x,` output (`<value>,<unit>,cycles,...`).
fn parse_perf_cycles(text: &str) -> Option<f64> {
    text.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2].starts_with("cycles"))
        .and_then(|f| f[0].trim().parse().ok())
}

/// What a `perf stat` run counts.
pub enum PerfTarget {
    Pid(u32),
    Tids(Vec<u32>),
    System,
}

/// A running `perf stat -e cycles`, stopped with SIGINT by [`PerfRun::finish`] or on drop.
pub struct PerfRun {
    child: Option<Child>,
    out: PathBuf,
}

impl PerfRun {
    pub fn start(target: &PerfTarget, dir: &Path, tag: &str) -> Option<PerfRun> {
        let out = dir.join(format!("perf-{tag}.txt"));
        let mut cmd = Command::new("perf");
        cmd.args(["stat", "-x", ",", "-e", "cycles", "-o"])
            .arg(&out);
        match target {
            PerfTarget::Pid(p) => {
                cmd.args(["-p", &p.to_string()]);
            }
            PerfTarget::Tids(t) => {
                let list: Vec<String> = t.iter().map(u32::to_string).collect();
                cmd.args(["-t", &list.join(",")]);
            }
            PerfTarget::System => {
                cmd.arg("-a");
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(PerfRun {
            child: Some(child),
            out,
        })
    }

    /// Stop (SIGINT makes perf print its counts), wait up to 5 s, return the cycles.
    pub fn finish(mut self) -> Option<f64> {
        self.stop();
        let text = std::fs::read_to_string(&self.out).ok()?;
        parse_perf_cycles(&text)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PerfRun {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- ICMP round-trip times ----------------------------------------------------------------------

/// Round-trip times of `count` ICMP echoes from namespace `ns` to `dst`, one sent every
/// `interval` whatever the replies do (so a slow reply does not slow the probe down), each
/// waited for up to 1 s after the last send. `None` = lost.
pub fn rtt_series(
    ns: &str,
    dst: Ipv4Addr,
    count: u16,
    interval: Duration,
    id: u16,
) -> Vec<Option<f64>> {
    run_in_ns(ns, move || {
        let Ok(s) = IcmpSocket::new() else {
            return vec![None; usize::from(count)];
        };
        let n = usize::from(count);
        let mut sent: Vec<Option<Instant>> = vec![None; n];
        let mut rtt: Vec<Option<f64>> = vec![None; n];
        let t0 = Instant::now();
        let end = t0 + interval * u32::from(count) + Duration::from_secs(1);
        let mut next = 0usize;
        let payload = [0x5au8; 56];
        while Instant::now() < end {
            let now = Instant::now();
            if next < n && now >= t0 + interval * next as u32 {
                let seq = next as u16 + 1;
                if s.send_echo(dst, id, seq, &payload).is_ok() {
                    sent[next] = Some(Instant::now());
                }
                next += 1;
                continue;
            }
            let until_next = if next < n {
                (t0 + interval * next as u32).saturating_duration_since(now)
            } else {
                end.saturating_duration_since(now)
            };
            // One read (up to the socket's 20 ms receive timeout) per call.
            if let Some((from, _code, icmp)) =
                s.wait_type(0, until_next.min(Duration::from_millis(1)))
            {
                let at = Instant::now();
                if from != dst || icmp.len() < 8 {
                    continue;
                }
                let rid = u16::from_be_bytes([icmp[4], icmp[5]]);
                let seq = usize::from(u16::from_be_bytes([icmp[6], icmp[7]]));
                if rid == id && (1..=n).contains(&seq) {
                    if let Some(t) = sent[seq - 1] {
                        rtt[seq - 1].get_or_insert(at.duration_since(t).as_secs_f64() * 1e3);
                    }
                }
            }
            if next >= n
                && rtt
                    .iter()
                    .zip(&sent)
                    .all(|(r, s)| r.is_some() || s.is_none())
            {
                break;
            }
        }
        rtt
    })
}

/// Median, p99 (nearest rank), mean, min, max and losses of an RTT series.
pub fn rtt_stats(series: &[Option<f64>]) -> Value {
    let mut v: Vec<f64> = series.iter().flatten().copied().collect();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let k = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[k.clamp(1, v.len()) - 1]
    };
    json!({
        "sent": series.len(),
        "received": v.len(),
        "lost": series.len() - v.len(),
        "median_ms": rank(50.0),
        "p90_ms": rank(90.0),
        "p99_ms": rank(99.0),
        "mean_ms": if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 },
        "min_ms": v.first().copied().unwrap_or(f64::NAN),
        "max_ms": v.last().copied().unwrap_or(f64::NAN),
        "samples_ms": series,
    })
}

// ---- drop counters inside a namespace -------------------------------------------------------------

/// UDP buffer errors and per-device drops of one namespace (read with `ip netns exec`,
/// since /proc/net and rtnetlink answer for the reader's namespace).
#[derive(Clone, Debug, Default)]
pub struct NsDrops {
    pub udp_rcvbuf_errors: u64,
    pub udp_sndbuf_errors: u64,
    pub udp_in_errors: u64,
    /// `(ifname, rx_dropped, tx_dropped)`.
    pub links: Vec<(String, u64, u64)>,
}

impl NsDrops {
    pub fn read(ns: &str) -> NsDrops {
        let mut d = NsDrops::default();
        let run = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", ns])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let snmp = run(&["cat", "/proc/net/snmp"]);
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        if udp.len() >= 2 {
            let names: Vec<&str> = udp[0].split_whitespace().collect();
            let vals: Vec<&str> = udp[1].split_whitespace().collect();
            let get = |k: &str| {
                names
                    .iter()
                    .position(|n| *n == k)
                    .and_then(|i| vals.get(i)?.parse().ok())
                    .unwrap_or(0)
            };
            d.udp_rcvbuf_errors = get("RcvbufErrors");
            d.udp_sndbuf_errors = get("SndbufErrors");
            d.udp_in_errors = get("InErrors");
        }
        let links = run(&["ip", "-j", "-s", "link", "show"]);
        if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(&links) {
            for l in a {
                let st = &l["stats64"];
                d.links.push((
                    l["ifname"].as_str().unwrap_or("").to_string(),
                    st["rx"]["dropped"].as_u64().unwrap_or(0),
                    st["tx"]["dropped"].as_u64().unwrap_or(0),
                ));
            }
        }
        d
    }

    /// What changed since `before`, as JSON (links with no new drops left out).
    pub fn since(&self, before: &NsDrops) -> Value {
        let links: Vec<Value> = self
            .links
            .iter()
            .filter_map(|(name, rx, tx)| {
                let (brx, btx) = before
                    .links
                    .iter()
                    .find(|l| &l.0 == name)
                    .map_or((0, 0), |l| (l.1, l.2));
                let (drx, dtx) = (rx.saturating_sub(brx), tx.saturating_sub(btx));
                (drx + dtx > 0)
                    .then(|| json!({"ifname": name, "rx_dropped": drx, "tx_dropped": dtx}))
            })
            .collect();
        json!({
            "udp_rcvbuf_errors": self.udp_rcvbuf_errors.saturating_sub(before.udp_rcvbuf_errors),
            "udp_sndbuf_errors": self.udp_sndbuf_errors.saturating_sub(before.udp_sndbuf_errors),
            "udp_in_errors": self.udp_in_errors.saturating_sub(before.udp_in_errors),
            "link_drops": links,
        })
    }
}

// ---- a counting sink ------------------------------------------------------------------------------

/// nftables table of the sink (in the private network namespace).
pub const SINK_TABLE: &str = "pct_sink";

/// Count and drop UDP packets to `port` in namespace `ns` at prerouting: the private host
/// sees them arrive, and no ICMP "port unreachable" goes back through the tunnel.
pub fn sink_setup(ns: &str, port: u16) -> anyhow::Result<()> {
    let script = format!(
        "add table ip {SINK_TABLE}\n\
         add chain ip {SINK_TABLE} pre {{ type filter hook prerouting priority -300 ; }}\n\
         add rule ip {SINK_TABLE} pre udp dport {port} counter drop\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!("nft sink in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `(packets, bytes)` the sink counted so far (IP packets and bytes).
pub fn sink_counter(ns: &str) -> Option<(u64, u64)> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "table", "ip", SINK_TABLE,
        ])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["nftables"].as_array()?.iter().find_map(|item| {
        item["rule"]["expr"].as_array()?.iter().find_map(|e| {
            let c = &e["counter"];
            Some((c["packets"].as_u64()?, c["bytes"].as_u64()?))
        })
    })
}
