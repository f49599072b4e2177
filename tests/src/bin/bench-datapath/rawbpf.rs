//! The benchmark's two helper XDP programs, written as raw BPF instructions and loaded with
//! bpf(2) directly: the live-frames traffic generator and the sink's drop program. They are not part of
//! the data path's object (`ebpf/`), and building them here keeps that object unchanged.
//!
//! The generator runs in `BPF_PROG_RUN` "live frames" mode (`BPF_F_TEST_XDP_LIVE_FRAMES`,
//! kernel 5.18+, Documentation/bpf/bpf_prog_run.rst): the kernel runs the program on pages
//! initialised with our frame and honours its verdict, so `XDP_REDIRECT` to the generator's
//! own veth transmits the frame. The same pages are recycled (and may come back modified by
//! the gateway), so the program rewrites the whole Ethernet/IPv4/UDP header on every run
//! rather than relying on the initial contents.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type`: BPF_XDP.
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// Helper ids (`enum bpf_func_id`).
const FN_GET_PRANDOM_U32: i32 = 7;
const FN_REDIRECT: i32 = 23;

pub const XDP_DROP: i32 = 1;

/// Bytes of Ethernet + IPv4 + UDP header the generator rewrites.
pub const HEADER_LEN: usize = 42;
/// Offset of the UDP source port in the frame.
const SPORT_OFF: i16 = 34;

/// One `struct bpf_insn`, as its 8 bytes.
#[derive(Clone, Copy)]
struct Insn([u8; 8]);

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0xf);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    Insn(b)
}

// Opcodes used below (class | op | source).
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const MOD64_K: u8 = 0x97;
const TO_BE: u8 = 0xdc;
const LDX_W: u8 = 0x61;
const ST_W: u8 = 0x62;
const ST_H: u8 = 0x6a;
const STX_H: u8 = 0x6b;
const JGT_X: u8 = 0x2d;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// The generator: rewrite the header from `header` (42 bytes), set the UDP source port to
/// `base_port + random % flows` (UDP checksum 0 = "none", valid for IPv4, so no checksum has
/// to follow the port), and redirect out of `ifindex`.
pub fn generator_program(
    header: &[u8; HEADER_LEN],
    base_port: u16,
    flows: u32,
    ifindex: u32,
) -> Vec<u8> {
    assert!(flows >= 1 && u32::from(base_port) + flows <= 65_536);
    let mut p = vec![
        insn(MOV64_X, 6, 1, 0, 0),                    // r6 = ctx
        insn(CALL, 0, 0, 0, FN_GET_PRANDOM_U32),      // r0 = random
        insn(MOV64_X, 7, 0, 0, 0),                    // r7 = r0
        insn(MOD64_K, 7, 0, 0, flows as i32),         // r7 %= flows
        insn(ADD64_K, 7, 0, 0, i32::from(base_port)), // r7 += base
        insn(TO_BE, 7, 0, 0, 16),                     // r7 = htons(r7)
        insn(LDX_W, 2, 6, 0, 0),                      // r2 = ctx->data
        insn(LDX_W, 3, 6, 4, 0),                      // r3 = ctx->data_end
        insn(MOV64_X, 4, 2, 0, 0),                    // r4 = r2
        insn(ADD64_K, 4, 0, 0, HEADER_LEN as i32),    // r4 += 42
    ];
    let jump_at = p.len();
    p.push(insn(JGT_X, 4, 3, 0, 0)); // if r4 > r3 goto drop (patched below)
    for off in (0..40).step_by(4) {
        let imm = i32::from_le_bytes(header[off..off + 4].try_into().unwrap());
        p.push(insn(ST_W, 2, 0, off as i16, imm));
    }
    let last = i32::from(u16::from_le_bytes([header[40], header[41]]));
    p.push(insn(ST_H, 2, 0, 40, last));
    p.push(insn(STX_H, 2, 7, SPORT_OFF, 0)); // *(u16 *)(r2 + 34) = r7
    p.push(insn(MOV64_K, 1, 0, 0, ifindex as i32));
    p.push(insn(MOV64_K, 2, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, FN_REDIRECT)); // r0 = bpf_redirect(ifindex, 0)
    p.push(insn(EXIT, 0, 0, 0, 0));
    let drop_at = p.len();
    p.push(insn(MOV64_K, 0, 0, 0, XDP_DROP));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p[jump_at] = insn(JGT_X, 4, 3, (drop_at - jump_at - 1) as i16, 0);
    p.iter().flat_map(|i| i.0).collect()
}

/// The sink: drop everything (the veth counts what its XDP program saw).
pub fn drop_program() -> Vec<u8> {
    [insn(MOV64_K, 0, 0, 0, XDP_DROP), insn(EXIT, 0, 0, 0, 0)]
        .iter()
        .flat_map(|i| i.0)
        .collect()
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] prefix of `union bpf_attr`, zero-filled where unused,
    // and its size is passed along; the kernel reads and writes only that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Load an XDP program from raw instructions; the verifier log comes with a failure.
pub fn load_xdp(name: &str, insns: &[u8]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: (insns.len() / 8) as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    let n = name.len().min(15);
    attr.prog_name[..n].copy_from_slice(&name.as_bytes()[..n]);
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a successful BPF_PROG_LOAD returns a new fd that we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(io::Error::new(
                e.kind(),
                format!(
                    "loading XDP program {name}: {e}\n{}",
                    String::from_utf8_lossy(&log[..end])
                ),
            ))
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 4],
}

/// Attach an XDP program to `ifindex` (in the calling thread's network namespace) through a
/// BPF link; closing the returned fd detaches it, also when the process dies.
pub fn attach_xdp(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        ..LinkCreateAttr::default()
    };
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: a successful BPF_LINK_CREATE returns a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// Open a pinned BPF object (`BPF_OBJ_GET`).
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        ..ObjGetAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: a successful BPF_OBJ_GET returns a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detach a BPF link now (`BPF_LINK_DETACH`), whoever else holds it; the fd stays valid.
pub fn detach_link(link: &OwnedFd) -> io::Result<()> {
    let mut attr = [link.as_raw_fd() as u32, 0];
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` for `ctx_in`: the kernel wants `data_end` equal to the frame length.
pub fn xdp_md(frame_len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields = [0u32, frame_len as u32, 0, ingress_ifindex, 0, 0];
    let mut b = [0u8; 24];
    for (i, f) in fields.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&f.to_ne_bytes());
    }
    b
}

/// Run `prog` `repeat` times in live-frames mode on `frame` arriving on `ingress_ifindex`
/// (in the calling thread's network namespace).
pub fn run_live(prog: &OwnedFd, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> io::Result<()> {
    let ctx = xdp_md(frame.len(), ingress_ifindex);
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: 64,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
}
