//! The XDP data path: load the embedded object, pin its maps and links under
//! `/sys/fs/bpf/portcullis/<endpoint>/`, attach to the TAP and the target interfaces, and
//! re-adopt all of it after an agent restart.
pub mod maps;
mod pins;

use std::{
    ffi::CString,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use portcullis_common::{globals, map_names, PROG_BASELINE, PROG_EGRESS, PROG_TAP};
use thiserror::Error;

pub use maps::Maps;

/// The XDP object built by `agent/build.rs` from `ebpf/`.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portcullis.bpf.o"));

/// Where endpoints pin their maps and links by default.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/portcullis";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("the data path needs root (CAP_BPF, CAP_NET_ADMIN): run portcullis as root")]
    NotRoot,
    #[error("{0} is not a BPF filesystem: mount it with `mount -t bpf bpf /sys/fs/bpf` (inside `ip netns exec`, /sys is remounted and bpffs must be mounted again)")]
    NoBpffs(PathBuf),
    #[error("interface {0:?} does not exist in this network namespace: check the target network's `interface` setting")]
    NoInterface(String),
    #[error("creating pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the XDP object: {0} (if a pinned map is incompatible after an upgrade, remove {1} and restart)")]
    Load(Box<aya::EbpfError>, PathBuf),
    #[error("XDP program {name}: {source}")]
    Program {
        name: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching XDP to {iface}: {source} (mode {mode:?}; try `skb` mode if the driver lacks native XDP)")]
    Attach {
        iface: String,
        mode: XdpMode,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning or re-adopting link {path}: {msg}")]
    Link { path: PathBuf, msg: String },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("map {0} is missing from the XDP object")]
    MissingMap(&'static str),
    #[error("{0}")]
    Other(String),
}

impl DatapathError {
    pub(crate) fn map(map: &'static str, e: aya::maps::MapError) -> Self {
        DatapathError::Map {
            map,
            source: Box::new(e),
        }
    }
}

/// ifindex of `name` in the current network namespace.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Fail early with a message that says what to do.
pub fn preflight(pin_root: &Path, interfaces: &[String]) -> Result<(), DatapathError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DatapathError::NotRoot);
    }
    let bpffs = pin_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/sys/fs/bpf"));
    let c = CString::new(bpffs.as_os_str().as_encoded_bytes())
        .map_err(|e| DatapathError::Other(e.to_string()))?;
    // SAFETY: statfs writes into a zeroed statfs struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(DatapathError::NoBpffs(bpffs.to_path_buf()));
    }
    for i in interfaces {
        if ifindex(i).is_none() {
            return Err(DatapathError::NoInterface(i.clone()));
        }
    }
    Ok(())
}

/// How to bring up the data path of one endpoint.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    pub endpoint: String,
    /// Parent of the per-endpoint pin directory (default [`DEFAULT_PIN_ROOT`]).
    pub pin_root: PathBuf,
    /// ifindex and MAC of the TAP (create it with [`crate::io::tap::Tap::open`] first).
    pub tap_ifindex: u32,
    pub tap_name: String,
    pub tap_mac: [u8; 6],
    /// The gateway's tunnel address (on the TAP).
    pub gateway: Ipv4Addr,
    /// What clients may reach on it (`PolicyInput::gateway_ports`); fixed while loaded.
    pub gateway_ports: Vec<crate::policy::model::GatewayPort>,
    /// Target-network interfaces to attach the egress program to.
    pub targets: Vec<String>,
    /// Conntrack capacity (default `DEFAULT_MAX_FLOWS`).
    pub max_flows: Option<u32>,
    /// Deny events per second per CPU in the audit ring buffer (0 = off).
    pub deny_events_per_sec: u64,
    pub mode: XdpMode,
}

impl DatapathOptions {
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_root.join(&self.endpoint)
    }
}

/// A loaded, attached data path. Dropping it leaves pins and links in place (so a crash or
/// restart keeps forwarding); [`Datapath::shutdown`] removes them.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
    pub options: DatapathOptions,
    link_pins: Vec<PathBuf>,
}

impl Datapath {
    /// Load (re-adopting pinned maps if present), attach, pin. Idempotent across restarts.
    pub fn load(options: DatapathOptions) -> Result<Datapath, DatapathError> {
        preflight(&options.pin_root, &options.targets)?;
        let dir = options.pin_dir();
        fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
            path: dir.clone(),
            source,
        })?;
        let mut mac8 = [0u8; 8];
        mac8[..6].copy_from_slice(&options.tap_mac);
        let gw = options.gateway.octets();
        if options.gateway_ports.len() > portcullis_common::MAX_GATEWAY_PORTS {
            return Err(DatapathError::Other(format!(
                "gateway_ports: at most {} entries",
                portcullis_common::MAX_GATEWAY_PORTS
            )));
        }
        let mut gw_ports = [0u32; portcullis_common::MAX_GATEWAY_PORTS];
        for (w, p) in gw_ports.iter_mut().zip(&options.gateway_ports) {
            let (proto, port) = p.proto_port();
            *w = portcullis_common::gateway_port(proto, port);
        }
        let pins: Vec<(&str, PathBuf)> = map_names::ALL.iter().map(|n| (*n, dir.join(n))).collect();
        let wrong = pins::mismatches(BPF_OBJECT, &pins)?;
        if !wrong.is_empty() {
            return Err(pins::refuse(&dir, &wrong));
        }
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        if let Some(n) = options.max_flows {
            loader.map_max_entries(map_names::CONNTRACK, n);
            loader.map_max_entries(map_names::NAT_REV, n);
        }
        loader
            .override_global(globals::TAP_IFINDEX, &options.tap_ifindex, true)
            .override_global(globals::TAP_MAC, &mac8, true)
            .override_global(globals::GATEWAY_ADDR, &gw, true)
            .override_global(globals::GATEWAY_PORTS, &gw_ports, true)
            .override_global(
                globals::DENY_EVENTS_PER_SEC,
                &options.deny_events_per_sec,
                true,
            );
        let mut ebpf = loader
            .load(BPF_OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e), dir.clone()))?;

        for name in [PROG_TAP, PROG_EGRESS, PROG_BASELINE] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DatapathError::Other(format!(
                    "program {name} missing from the object"
                )))?
                .try_into()
                .map_err(|e| DatapathError::Program {
                    name,
                    source: Box::new(e),
                })?;
            prog.load().map_err(|e| DatapathError::Program {
                name,
                source: Box::new(e),
            })?;
        }

        let mut link_pins = Vec::new();
        let tap_name = options.tap_name.clone();
        link_pins.push(attach(
            &mut ebpf,
            PROG_TAP,
            &tap_name,
            options.tap_ifindex,
            options.mode,
            &dir,
        )?);
        for t in &options.targets {
            let idx = ifindex(t).ok_or_else(|| DatapathError::NoInterface(t.clone()))?;
            link_pins.push(attach(&mut ebpf, PROG_EGRESS, t, idx, options.mode, &dir)?);
        }

        let mut maps = Maps::from_ebpf(&mut ebpf)?;
        let mut ports = vec![options.tap_ifindex];
        for t in &options.targets {
            ports.push(ifindex(t).ok_or_else(|| DatapathError::NoInterface(t.clone()))?);
        }
        maps.set_egress_ports(&ports)?;
        // Undo a previous `shutdown`: the TAP program is attached again, so the kernel may
        // forward what it passes (translated packets whose next hop is not resolved yet).
        set_tap_forwarding(&options.tap_name, true);
        Ok(Datapath {
            ebpf,
            maps,
            options,
            link_pins,
        })
    }

    /// The loaded XDP program (for `BPF_PROG_TEST_RUN`).
    pub fn program(&mut self, name: &str) -> Option<&mut Xdp> {
        self.ebpf.program_mut(name)?.try_into().ok()
    }

    /// Detach from every interface and remove the pins (maps and links). Unless
    /// `keep_maps`, the pinned maps go too, and with them all flows.
    ///
    /// The TAP stops forwarding first: with the TAP program gone, the kernel would
    /// otherwise route whatever is written into the TAP (it keeps `forwarding=1` for
    /// [`Event::PassNoNeighbour`](portcullis_common::Event)) straight to the target
    /// networks, unfiltered and untranslated.
    pub fn shutdown(self, keep_maps: bool) -> Result<(), DatapathError> {
        set_tap_forwarding(&self.options.tap_name, false);
        let dir = self.options.pin_dir();
        for p in &self.link_pins {
            let _ = fs::remove_file(p);
        }
        drop(self.maps);
        drop(self.ebpf);
        if !keep_maps {
            remove_pins(&dir);
        }
        Ok(())
    }
}

/// `net.ipv4.conf.<tap>.forwarding` in the current namespace; best effort (a TAP that is
/// already gone forwards nothing).
fn set_tap_forwarding(tap: &str, on: bool) {
    let path = format!("/proc/sys/net/ipv4/conf/{tap}/forwarding");
    if let Err(e) = fs::write(&path, if on { "1" } else { "0" }) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(%path, error = %e, "cannot set TAP forwarding");
        }
    }
}

/// Remove an endpoint's pin directory (maps and links); detaches programs whose link pin
/// was the last reference.
pub fn remove_pins(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Attach `prog` to `iface`, re-using a pinned link (bpf_link_update swaps the program
/// without a gap in forwarding) or creating and pinning a new one.
fn attach(
    ebpf: &mut Ebpf,
    prog: &'static str,
    iface: &str,
    ifindex: u32,
    mode: XdpMode,
    dir: &Path,
) -> Result<PathBuf, DatapathError> {
    let path = dir.join(format!("link_{iface}"));
    let xdp: &mut Xdp = ebpf
        .program_mut(prog)
        .ok_or(DatapathError::Other(format!("program {prog} missing")))?
        .try_into()
        .map_err(|e| DatapathError::Program {
            name: prog,
            source: Box::new(e),
        })?;
    let link_err = |msg: String| DatapathError::Link {
        path: path.clone(),
        msg,
    };
    if path.exists() {
        let pinned = PinnedLink::from_pin(&path).map_err(|e| link_err(e.to_string()))?;
        let fd_link: FdLink = pinned.into();
        let link = XdpLink::try_from(fd_link).map_err(|e| link_err(e.to_string()))?;
        match xdp.attach_to_link(link) {
            Ok(id) => {
                // The pin keeps the link alive; our fd handle may close.
                let l = xdp.take_link(id).map_err(|e| link_err(e.to_string()))?;
                drop(FdLink::try_from(l).map_err(|e| link_err(e.to_string()))?);
                return Ok(path);
            }
            Err(e) => {
                // A stale pin (interface re-created): drop it and attach afresh.
                tracing::warn!(link = %path.display(), error = %e, "stale XDP link pin, re-attaching");
                let _ = fs::remove_file(&path);
            }
        }
    }
    let id = xdp
        .attach_to_if_index(ifindex, mode)
        .map_err(|e| DatapathError::Attach {
            iface: iface.to_string(),
            mode,
            source: Box::new(e),
        })?;
    let link = xdp.take_link(id).map_err(|e| link_err(e.to_string()))?;
    let fd_link = FdLink::try_from(link).map_err(|e| link_err(e.to_string()))?;
    fd_link.pin(&path).map_err(|e| link_err(e.to_string()))?;
    Ok(path)
}

/// Add `ranges` (inclusive) to `net.ipv4.ip_local_reserved_ports` of the current network
/// namespace, keeping what is there, so the host's own sockets never take a PAT port.
pub fn reserve_ports(ranges: &[(u16, u16)]) -> Result<(), DatapathError> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let cur = fs::read_to_string(PATH)
        .map_err(|e| DatapathError::Other(format!("reading {PATH}: {e}")))?;
    let mut parts: Vec<String> = cur
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    for (lo, hi) in ranges {
        let r = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        if !parts.contains(&r) {
            parts.push(r);
        }
    }
    fs::write(PATH, parts.join(","))
        .map_err(|e| DatapathError::Other(format!("writing {PATH}: {e}")))
}
