//! The admin socket against another local user (nobody): never usable, also while it is being
//! bound under umask 0 (the agent binds it anew at every start; a socket bound at its path
//! and chmodded after was open to everyone in between).
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use portcullis::admin::AdminServer;
use tests::openvpn::TempDir;

use super::*;

/// What the attacker child exits with when it could not become nobody, or could not use a
/// socket that is open to everyone (the attack would prove nothing).
const NOT_NOBODY: i32 = 250;
const CONTROL_REFUSED: i32 = 251;

fn sockaddr(path: &Path) -> libc::sockaddr_un {
    // SAFETY: all-zero sockaddr_un is valid; filled below.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as u16;
    let b = path.as_os_str().as_bytes();
    assert!(b.len() < a.sun_path.len());
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    a
}

/// One connect to `a`; true when it was accepted by the kernel.
fn try_connect(a: &libc::sockaddr_un) -> bool {
    // SAFETY: socket, connect with a sockaddr_un of its size, close: plain syscalls (this
    // runs in a forked child too, where only such calls are allowed).
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return false;
        }
        let ok = libc::connect(
            fd,
            (a as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as u32,
        ) == 0;
        libc::close(fd);
        ok
    }
}

/// A forked child as uid and gid 65534: checks it can use `control` (open to everyone),
/// then connects to `target` over and over for `run`; exits with the number of connects
/// that succeeded (at most 200) or one of the codes above.
fn attacker(control: &Path, target: &Path, run: Duration) -> libc::pid_t {
    let (control, target) = (sockaddr(control), sockaddr(target));
    // SAFETY: the child makes only syscalls on values prepared before the fork, then _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid > 0 {
            return pid;
        }
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(65534) != 0
            || libc::setuid(65534) != 0
        {
            libc::_exit(NOT_NOBODY);
        }
        if !try_connect(&control) {
            libc::_exit(CONTROL_REFUSED);
        }
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        let end = now.tv_sec + run.as_secs() as libc::time_t;
        let mut won = 0;
        while now.tv_sec < end {
            if try_connect(&target) {
                won += 1;
            }
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        }
        libc::_exit(won.min(200));
    }
}

/// Another local user tries to connect to the admin socket while the agent binds it again
/// and again under umask 0 (each bind is a start of the agent): it never gets in, and a
/// socket left open to everyone next to it shows the attacker could have.
#[test]
fn another_local_user_cannot_use_the_admin_socket() {
    require_root!();
    let dir = TempDir::new("adm");
    // Nobody may reach the directory: only the socket's own mode keeps it out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let control = dir.path().join("open.sock");
    let path = dir.path().join("admin.sock");
    let _open = std::os::unix::net::UnixListener::bind(&control).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o777)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let child = attacker(&control, &path, Duration::from_secs(3));
    // SAFETY: umask(2) only swaps the process's mask; restored below.
    let old = unsafe { libc::umask(0) };
    let mut binds = 0u64;
    let mut status = 0;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        rt.block_on(async {
            let s = AdminServer::bind(&path).expect("bind the admin socket");
            drop(s);
        });
        binds += 1;
        // SAFETY: waitpid on our own child, not blocking.
        if unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) } == child {
            break;
        }
    }
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    if Instant::now() >= end {
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, &mut status, 0);
        }
        panic!("the attacker did not finish");
    }
    assert!(libc::WIFEXITED(status), "attacker status {status}");
    let code = libc::WEXITSTATUS(status);
    assert_ne!(code, NOT_NOBODY, "the attacker could not become nobody");
    assert_ne!(
        code, CONTROL_REFUSED,
        "nobody could not use a socket open to everyone: the attack proves nothing"
    );
    eprintln!("{binds} binds under umask 0; nobody connected {code} times");
    assert!(binds > 100, "too few binds to race: {binds}");
    assert_eq!(code, 0, "nobody connected to the admin socket");
}
