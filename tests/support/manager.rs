//! [`Manager`]: a service manager's notification socket and descriptor store, played by a test
//! as systemd plays it (`sd_notify(3)`: `READY=1`, `FDSTORE=1`/`FDNAME=`, `FDSTOREREMOVE=1`),
//! read all the time on a thread of its own; its [`Manager::launcher`] starts hvsockd with
//! `NOTIFY_SOCKET` and `FDSTORE`, and with what it keeps as `LISTEN_FDS`/`LISTEN_FDNAMES`
//! (`LISTEN_PID` the new process's own pid), for [`super::Daemon::start_launched`].

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

use super::{tempdir, wait_for};

/// The store's size, as `FileDescriptorStoreMax=` would set it.
pub const STORE_MAX: usize = 256;
/// How long a start may take.
const T: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Store {
    /// The descriptors kept, in the order they came, with their names.
    fds: Vec<(String, OwnedFd)>,
    ready: u32,
    messages: u64,
    last_message: Option<Instant>,
}

/// A service manager's notification socket and descriptor store, read on a thread of its own.
pub struct Manager {
    path: PathBuf,
    store: Arc<Mutex<Store>>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn same_file(a: impl AsFd, b: impl AsFd) -> bool {
    let (a, b) = (rustix::fs::fstat(a).unwrap(), rustix::fs::fstat(b).unwrap());
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

impl Manager {
    pub fn new() -> Manager {
        let dir = tempdir("hvsock-manager-");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let store = Arc::new(Mutex::new(Store::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    receive(&sock, &store);
                }
            })
        };
        Manager {
            path,
            store,
            stop,
            reader: Some(reader),
            _dir: dir,
        }
    }

    pub fn ready_count(&self) -> u32 {
        self.store.lock().unwrap().ready
    }

    /// Waits for a `READY=1` after the `before`th.
    pub fn wait_ready(&self, before: u32) {
        wait_for("READY=1 from hvsockd", T, || self.ready_count() > before);
    }

    /// Waits until hvsockd has sent nothing for a while (what it stores is in).
    pub fn wait_quiet(&self) {
        wait_for("hvsockd's store messages to settle", T, || {
            let s = self.store.lock().unwrap();
            s.last_message
                .is_some_and(|t| t.elapsed() > Duration::from_millis(300))
        });
    }

    pub fn names(&self) -> Vec<String> {
        let s = self.store.lock().unwrap();
        s.fds.iter().map(|(n, _)| n.clone()).collect()
    }

    /// What starts hvsockd as systemd would: `NOTIFY_SOCKET`, `FDSTORE`, and the kept
    /// descriptors as 3, 4, … with `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`.
    pub fn launcher(&self) -> super::Launcher {
        let (path, store) = (self.path.clone(), self.store.clone());
        Box::new(move |binary: &Path| {
            let mut cmd = Command::new("/bin/sh");
            // LISTEN_PID is the pid hvsockd will have: the shell's, which exec keeps.
            cmd.arg("-c")
                .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
                .arg(binary)
                .env("NOTIFY_SOCKET", &path)
                .env("FDSTORE", STORE_MAX.to_string())
                .env_remove("LISTEN_PID")
                .env_remove("LISTEN_FDS")
                .env_remove("LISTEN_FDNAMES");
            let s = store.lock().unwrap();
            if s.fds.is_empty() {
                return cmd;
            }
            let names: Vec<&str> = s.fds.iter().map(|(n, _)| n.as_str()).collect();
            cmd.env("LISTEN_FDS", s.fds.len().to_string())
                .env("LISTEN_FDNAMES", names.join(":"));
            let fds: Vec<OwnedFd> = s
                .fds
                .iter()
                .map(|(_, fd)| fd.try_clone().unwrap())
                .collect();
            let count = RawFd::try_from(fds.len()).unwrap();
            // Between fork and exec this only makes system calls (no allocation): it copies
            // each kept descriptor above the range, then onto 3, 4, … (dup2 clears
            // close-on-exec on the copy); the copies above are close-on-exec.
            let place = move || {
                let mut high = [0 as RawFd; STORE_MAX];
                for (i, fd) in fds.iter().enumerate() {
                    let copy = rustix::io::fcntl_dupfd_cloexec(fd, 3 + count)?;
                    high[i] = copy.as_raw_fd();
                    std::mem::forget(copy);
                }
                for (i, &from) in high.iter().enumerate().take(fds.len()) {
                    // SAFETY: `from` was made open above and stays open until exec.
                    let from = unsafe { std::os::fd::BorrowedFd::borrow_raw(from) };
                    let target = 3 + RawFd::try_from(i).unwrap_or(0);
                    // SAFETY: descriptor `target` is taken over here (dup2 replaces it), and
                    // this closure never closes it.
                    let mut to =
                        std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(target) });
                    rustix::io::dup2(from, &mut to)?;
                }
                Ok(())
            };
            // SAFETY: `place` is safe between fork and exec (system calls only, see above).
            unsafe {
                cmd.pre_exec(place);
            }
            cmd
        })
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Receives one notification (or times out) and applies it to `store` as systemd does.
fn receive(sock: &UnixDatagram, store: &Mutex<Store>) {
    let mut buf = [0u8; 4096];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let Ok(msg) = rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
    else {
        return;
    };
    let n = msg.bytes;
    let fds: Vec<OwnedFd> = control
        .drain()
        .flat_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => fds.collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(str::to_owned)
    };
    let name = field("FDNAME").unwrap_or_else(|| "stored".into());
    let mut s = store.lock().unwrap();
    s.messages += 1;
    s.last_message = Some(Instant::now());
    if field("READY").as_deref() == Some("1") {
        s.ready += 1;
    }
    if field("FDSTORE").as_deref() == Some("1") {
        for fd in fds {
            // systemd keeps a file once, whatever the name.
            if s.fds.iter().any(|(_, kept)| same_file(kept, &fd)) {
                continue;
            }
            assert!(s.fds.len() < STORE_MAX, "hvsockd stored more than FDSTORE");
            s.fds.push((name.clone(), fd));
        }
    } else if field("FDSTOREREMOVE").as_deref() == Some("1") {
        s.fds.retain(|(n, _)| *n != name);
    }
}
