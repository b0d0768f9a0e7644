//! The service manager's descriptor store, with a test that plays systemd: it binds a
//! `NOTIFY_SOCKET`, starts hvsockd with `FDSTORE` set, keeps every descriptor hvsockd stores
//! (`FDSTORE=1`/`FDNAME=`) and drops those it removes (`FDSTOREREMOVE=1`), reading its socket
//! all the time as systemd does; after a `kill -9` it starts hvsockd again with them
//! (`LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` set to the new process's own pid).
//!
//! Across that, a std listener keeps its descriptor and never sees an error, a connector that
//! was waiting for a full backlog gets its answer, `hvsock listen --keep` serves on, a
//! sandbox's endpoint is the same socket (same inode), and an established connection loses no
//! byte. Every wait is bounded.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, SockAddrHv, VmId};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use support::{Daemon, Proc, pattern, tempdir, wait_for};

const T: Duration = Duration::from_secs(10);
/// The store's size, as `FileDescriptorStoreMax=` would set it.
const STORE_MAX: usize = 256;

#[derive(Default)]
struct Store {
    /// The descriptors kept, in the order they came, with their names.
    fds: Vec<(String, OwnedFd)>,
    ready: u32,
    messages: u64,
    last_message: Option<Instant>,
}

/// A service manager's notification socket and descriptor store, read on a thread of its own.
struct Manager {
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
    fn new() -> Manager {
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

    fn ready_count(&self) -> u32 {
        self.store.lock().unwrap().ready
    }

    /// Waits for a `READY=1` after the `before`th.
    fn wait_ready(&self, before: u32) {
        wait_for("READY=1 from hvsockd", T, || self.ready_count() > before);
    }

    /// Waits until hvsockd has sent nothing for a while (what it stores is in).
    fn wait_quiet(&self) {
        wait_for("hvsockd's store messages to settle", T, || {
            let s = self.store.lock().unwrap();
            s.last_message
                .is_some_and(|t| t.elapsed() > Duration::from_millis(300))
        });
    }

    fn names(&self) -> Vec<String> {
        let s = self.store.lock().unwrap();
        s.fds.iter().map(|(n, _)| n.clone()).collect()
    }

    /// What starts hvsockd as systemd would: `NOTIFY_SOCKET`, `FDSTORE`, and the kept
    /// descriptors as 3, 4, … with `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`.
    fn launcher(&self) -> support::Launcher {
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

/// Accepts on `listener` within `T` (never blocks longer): a failure fails the test at once.
fn accept_within(listener: &HvListener) -> HvStream {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no connection to accept within {T:?}");
        let mut fds = [rustix::event::PollFd::new(
            listener,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        rustix::event::poll(&mut fds, Some(&timeout)).unwrap();
        if fds[0].revents().is_empty() {
            continue;
        }
        listener.set_nonblocking(true).unwrap();
        let accepted = listener.accept();
        listener.set_nonblocking(false).unwrap();
        match accepted {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(T)).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("accept failed: {e}"),
        }
    }
}

/// Sends `what` to `hvsock listen --keep` on port 5401 with `hvsock connect`.
fn send(d: &Daemon, what: &str) {
    wait_for("a connect to listen --keep", T, || {
        support::run(
            d.cli().args(["connect", "loopback:5401"]),
            what.as_bytes(),
            support::QUICK,
        )
        .status
        .success()
    });
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn a_listener_a_waiting_connector_a_sandbox_and_a_connection_survive_kill_9_with_the_store() {
    let manager = Manager::new();
    let mut d = Daemon::start_launched(manager.launcher());
    manager.wait_ready(0);
    let svc = d.add_service("echo", 5400);
    d.add_service("keep", 5401);
    let host = d.host();
    let sandbox = d.add_partition("sandbox", None);
    let endpoint = d.dirs().partition_socket(sandbox);
    wait_for("the sandbox's endpoint", T, || endpoint.exists());
    let endpoint_inode = inode(&endpoint);
    let in_sandbox = d.partition(sandbox);
    let addr = SockAddrHv::new(VmId::LOOPBACK, svc);

    // A std listener with a backlog of one, a connection established on it, the backlog full
    // (delivered, not accepted) and one more connector waiting.
    let listener = HvListener::bind_with(&host, addr, 1).unwrap();
    let listener_fd = listener.as_raw_fd();
    let mut sender = HvStream::connect_with(&host, addr, T).unwrap();
    let mut receiver = accept_within(&listener);
    let first = HvStream::connect_with(&host, addr, T).unwrap();
    let waiting = {
        let host = host.clone();
        thread::spawn(move || HvStream::connect_with(&host, addr, Duration::from_secs(20)))
    };
    // `hvsock listen --keep`, and a sandbox's listener through its endpoint.
    let mut listen = Proc::spawn(d.cli().args(["listen", "--keep", "loopback:5401"]));
    send(&d, "one\n");
    let sandbox_listener =
        HvListener::bind_with(&in_sandbox, SockAddrHv::new(VmId::WILDCARD, svc), 4).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "the connector should wait for the backlog"
    );

    // Bytes stream across the restart.
    let data = pattern(4 << 20, 11);
    let streaming = {
        let data = data.clone();
        thread::spawn(move || {
            sender
                .set_write_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            for chunk in data.chunks(64 << 10) {
                sender.write_all(chunk).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
            sender.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    manager.wait_quiet();
    let stored = manager.names();
    assert!(
        stored.len() >= 5,
        "host.sock, admin.sock, the endpoint and the listener sessions should be stored: {stored:?}"
    );

    d.kill9();
    let ready = manager.ready_count();
    d.respawn();
    manager.wait_ready(ready);
    let log = d.log();
    assert!(log.contains("resuming the sockets"), "{log}");
    assert!(!log.contains("not resuming"), "{log}");

    // The waiting connector got its answer, after the connection before it.
    let mut a1 = accept_within(&listener);
    let mut a2 = accept_within(&listener);
    let mut waited = waiting
        .join()
        .unwrap()
        .expect("the waiting connector is answered");
    let mut first = first;
    first.write_all(b"first").unwrap();
    waited.write_all(b"waited").unwrap();
    let mut buf = [0u8; 6];
    a1.read_exact(&mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"first");
    a2.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"waited");

    // No byte lost.
    receiver
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = Vec::new();
    receiver.read_to_end(&mut got).unwrap();
    streaming.join().unwrap();
    assert!(got == data, "the stream lost or changed bytes");

    // The same listener (same descriptor, never an error) takes new connections.
    assert_eq!(listener.as_raw_fd(), listener_fd);
    assert_eq!(
        listener.rebind_generation(),
        0,
        "the listener had to bind again"
    );
    let mut c = HvStream::connect_with(&host, addr, T).unwrap();
    let mut a = accept_within(&listener);
    c.write_all(b"after").unwrap();
    a.read_exact(&mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"after");

    // The sandbox's endpoint is the same socket, and its listener and endpoint serve.
    assert_eq!(
        inode(&endpoint),
        endpoint_inode,
        "the endpoint was bound anew"
    );
    let _c = HvStream::connect_with(&host, SockAddrHv::new(sandbox, svc), T).unwrap();
    accept_within(&sandbox_listener);
    let in_host = HvListener::bind_with(&host, SockAddrHv::new(VmId::CHILDREN, svc), 4).unwrap();
    let _s = HvStream::connect_with(&in_sandbox, SockAddrHv::new(VmId::PARENT, svc), T).unwrap();
    accept_within(&in_host);

    // listen --keep serves on.
    send(&d, "two\n");
    wait_for("both lines", T, || listen.stdout_text().contains("two"));
    assert_eq!(listen.stdout_text(), "one\ntwo\n");
    assert!(listen.is_running(), "{}", listen.stderr());
    assert!(d.is_running());
}
