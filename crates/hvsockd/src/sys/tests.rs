#![allow(clippy::unwrap_used)]

use super::*;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

fn spec(mode: u32) -> SocketSpec {
    SocketSpec {
        ty: SocketType::STREAM,
        mode,
        owner: None,
        replace: Replace::AnyFile,
        backlog: 8,
    }
}

/// A directory that another user may enter (tempfile makes 0700 ones).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn a_socket_is_made_with_its_mode_and_replaces_a_stale_file() {
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    std::fs::write(&path, b"stale").unwrap();
    let _sock = listen_unix(&path, spec(0o600)).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    // Nothing is left of the detour.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["admin.sock"]);
    // A user's path: only a socket is replaced.
    let file = dir.path().join("vm.vsock_5");
    std::fs::write(&file, b"data").unwrap();
    let only = SocketSpec {
        replace: Replace::SocketOnly,
        ..spec(0o660)
    };
    let err = listen_unix(&file, only).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    let err = listen_unix(dir.path(), spec(0o600)).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn a_path_too_long_for_the_detour_is_bound_in_place() {
    let dir = open_dir();
    let room = MAX_SOCKET_PATH - dir.path().as_os_str().len() - 1;
    let path = dir.path().join("x".repeat(room - 2));
    let _sock = listen_unix(&path, spec(0o640)).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o640);
}

/// The admin socket is never connectable by another user, not even for an instant: while one
/// thread creates a 0600 socket again and again under umask 0 (so that any window between
/// `listen` and `chmod` would be wide open), another thread running as uid/gid 65534 tries to
/// connect to it without pause. A positive control checks that the probe does connect to a
/// 0666 socket in the same directory. Needs root (to probe as another user); CI runs as root.
#[test]
fn a_0600_socket_is_never_connectable_by_another_user() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test probes as another user and needs root (CI runs as root): run it with sudo"
    );
    let dir = open_dir();
    let path = dir.path().join("admin.sock");
    let open_path = dir.path().join("open.sock");
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (path, open_path, done) = (path.clone(), open_path.clone(), done.clone());
        std::thread::spawn(move || {
            // Per-thread credentials (raw syscalls; the test's other threads stay root).
            rustix::thread::set_thread_gid(rustix::process::Gid::from_raw(65534)).unwrap();
            rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534)).unwrap();
            let mut control = 0u32;
            let (mut tries, mut connected, mut loose) = (0u64, 0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                tries += 1;
                if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                    connected += 1;
                }
                if let Ok(meta) = std::fs::symlink_metadata(&path) {
                    if meta.mode() & 0o777 != 0o600 {
                        loose += 1;
                    }
                }
                if control == 0 && std::os::unix::net::UnixStream::connect(&open_path).is_ok() {
                    control = 1;
                }
            }
            (tries, connected, loose, control)
        })
    };
    let _open = listen_unix(&open_path, spec(0o666)).unwrap();
    {
        // The creator: its own umask (CLONE_FS), 0.
        let path = path.clone();
        std::thread::spawn(move || {
            // SAFETY: CLONE_FS gives this thread its own umask, root and working directory;
            // it shares no other state that Rust code relies on.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }.unwrap();
            rustix::process::umask(rustix::fs::Mode::empty());
            for _ in 0..2000 {
                let sock = listen_unix(&path, spec(0o600)).unwrap();
                drop(sock);
            }
        })
        .join()
        .unwrap();
    }
    done.store(true, Ordering::Release);
    let (tries, connected, loose, control) = prober.join().unwrap();
    assert_eq!(
        control, 1,
        "the probe never reached the 0666 control socket"
    );
    assert!(tries > 100, "only {tries} probes");
    assert_eq!(connected, 0, "another user connected {connected} times");
    assert_eq!(loose, 0, "another user saw a looser mode {loose} times");
}
