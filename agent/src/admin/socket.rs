//! The admin socket's file: created private from the start (never reachable by other local
//! users, whatever the umask), by binding in a private directory and renaming into place.
use std::path::Path;

use tokio::net::UnixListener;

/// Binds a Unix socket at `path`, mode 0600 from the moment it exists there (see
/// [`super::server::AdminServer::bind`]).
pub(super) fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let context = |what: String| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path has no file name; give a socket path such as /run/portcullis/main.sock",
        )
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(context(format!("creating {}", dir.display())))?;
    let staging = dir.join(format!(
        ".{}.{}.bind",
        name.to_string_lossy(),
        std::process::id()
    ));
    // A leftover of a start that crashed here; then created anew, not reused (`create`
    // fails if someone else made it meanwhile).
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(context(format!("creating {}", staging.display())))?;
    let bound = (|| {
        let tmp = staging.join("socket");
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        // Atomic, and replaces a stale socket of an earlier run.
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    use super::*;

    /// The names `IN_CREATE` and `IN_MOVED_TO` events reported in the watched directory.
    fn drain(fd: &OwnedFd) -> (Vec<String>, Vec<String>) {
        let (mut created, mut moved) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 8192];
        // SAFETY: read(2) into a live buffer of its size.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let n = usize::try_from(n).unwrap_or(0);
        let mut off = 0;
        while off + std::mem::size_of::<libc::inotify_event>() <= n {
            // SAFETY: the kernel wrote whole events; read_unaligned copes with the alignment.
            let ev: libc::inotify_event =
                unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let start = off + std::mem::size_of::<libc::inotify_event>();
            let name = CStr::from_bytes_until_nul(&buf[start..start + ev.len as usize])
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            if ev.mask & libc::IN_CREATE != 0 {
                created.push(name.clone());
            }
            if ev.mask & libc::IN_MOVED_TO != 0 {
                moved.push(name);
            }
            off = start + ev.len as usize;
        }
        (created, moved)
    }

    /// The socket never exists at its path with the umask's mode: it is not created there
    /// (no `IN_CREATE` for its name, which a bind-then-chmod gives) but moved in, already
    /// 0600, over a stale one; the staging directory is gone.
    #[test]
    fn the_socket_appears_at_its_path_only_private() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = std::env::temp_dir().join(format!("pct-admin-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("admin.sock");
        // A stale file of an earlier run is replaced.
        std::fs::write(&path, "stale").unwrap();
        // SAFETY: plain inotify_init1; the fd is owned right after.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify: {}", std::io::Error::last_os_error());
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cdir = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a live NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(
                fd.as_raw_fd(),
                cdir.as_ptr(),
                libc::IN_CREATE | libc::IN_MOVED_TO,
            )
        };
        assert!(
            wd >= 0,
            "inotify watch: {}",
            std::io::Error::last_os_error()
        );
        let listener = rt.block_on(async { bind_private(&path) }).unwrap();
        let (created, moved) = drain(&fd);
        assert!(
            !created.contains(&"admin.sock".to_string()),
            "the socket was created at its path (with the umask's mode until a chmod): {created:?}"
        );
        assert_eq!(moved, ["admin.sock"], "moved into place once");
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["admin.sock"], "no staging directory left");
        // The socket still answers at its new name.
        rt.block_on(async {
            let (accepted, connected) =
                tokio::join!(listener.accept(), tokio::net::UnixStream::connect(&path));
            accepted.unwrap();
            connected.unwrap();
        });
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_without_a_file_name_is_refused_with_the_reason() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(async { bind_private(Path::new("/")) })
            .unwrap_err();
        assert!(e.to_string().contains("no file name"), "{e}");
    }
}
