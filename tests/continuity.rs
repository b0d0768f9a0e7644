//! Continuity: what keeps working when hvsockd is killed (`kill -9`) and started again, with
//! no service manager holding its sockets.
//!
//! - a sandbox that bind-mounted its partition's *directory* reaches the new hvsockd through
//!   the same mount (and one that mounted the socket *file*, the old advice, does not: that is
//!   why the directory is the documented way);
//! - `hvsock listen --keep` keeps serving, and a library listener's `accept` (std and tokio)
//!   keeps working on the same descriptor: the library binds again by itself;
//! - a connect issued while hvsockd is down succeeds once it is back, within its timeout (and
//!   fails when the timeout is shorter than the gap);
//! - a VM's guest ports come back with the listeners.
//!
//! `benches/continuity.rs` measures the same under load, over many cycles.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, Transport, VmId};
use support::{Daemon, Proc, QUICK, require, require_root, wait_for};

const PORT: u32 = 5000;

/// Accepts one connection on `listener` and returns what it sent, up to its end.
fn receive_one(listener: &HvListener) -> String {
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(QUICK)).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

/// [`receive_one`] on a thread of its own; [`received`] waits for its answer within a bound.
fn receiving(listener: &Arc<HvListener>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let listener = listener.clone();
    std::thread::spawn(move || {
        let _ = tx.send(receive_one(&listener));
    });
    rx
}

/// What [`receiving`]'s thread received, within [`QUICK`].
fn received(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(QUICK)
        .expect("the listener accepts and receives within QUICK")
}

/// A sandbox: a shell in a private mount namespace that bind-mounts (read-only) the
/// partition's directory at `mnt` and the old socket path at `old/endpoint.sock`, then, for
/// each line `dir` or `file` it reads, runs `hvsock connect parent:PORT` through that mount
/// and says `dir-ok`/`dir-failed` (or `file-…`).
fn sandbox(d: &Daemon, vm: VmId, mnt: &Path, old: &Path) -> Proc {
    let script = r#"
set -e
mount --bind "$PDIR" "$MNT"
mount -o remount,bind,ro "$MNT"
mount --bind "$LEGACY" "$OLD/endpoint.sock"
set +e
echo mounted
while read what; do
    case $what in
        dir) dir="$MNT" ;;
        file) dir="$OLD" ;;
        *) continue ;;
    esac
    if echo "via $what" | HVSOCK_DIR="$dir" "$HVSOCK" connect parent:5000; then
        echo "$what-ok"
    else
        echo "$what-failed"
    fi
done
"#;
    std::fs::write(old.join("endpoint.sock"), b"").unwrap();
    Proc::spawn(
        Command::new(require("unshare"))
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .env("PDIR", d.dirs().partition_dir(vm))
            .env("LEGACY", d.dirs().legacy_partition_socket(vm))
            .env("MNT", mnt)
            .env("OLD", old)
            .env("HVSOCK", &support::bins().hvsock)
            .env_remove("HVSOCK_ENDPOINT")
            .env_remove("HVSOCK_TRANSPORT"),
    )
}

/// Asks the sandbox to connect through `what` (`dir` or `file`) and waits for its verdict;
/// on success, `listener` has received the bytes.
fn sandbox_connects(sandbox: &mut Proc, what: &str, listener: Option<&HvListener>) -> bool {
    let seen = sandbox.stdout_text().matches(&format!("{what}-")).count();
    sandbox.write(format!("{what}\n").as_bytes());
    if let Some(listener) = listener {
        assert_eq!(receive_one(listener), format!("via {what}\n"));
    }
    sandbox.wait_stdout(&format!("the sandbox's connect through {what}"), |out| {
        String::from_utf8_lossy(out)
            .matches(&format!("{what}-"))
            .count()
            > seen
    });
    let out = sandbox.stdout_text();
    out.rsplit(&format!("{what}-"))
        .next()
        .unwrap()
        .starts_with("ok")
}

#[test]
fn a_sandbox_that_mounted_its_partition_directory_reaches_the_restarted_hvsockd() {
    require_root("bind-mounting a partition directory into a private mount namespace");
    let mut d = Daemon::start();
    d.add_service("echo", PORT);
    let vm = d.add_partition("sandbox", None);
    let addr = SockAddrHv::new(VmId::WILDCARD, hvsock::ServiceId::from_vsock_port(PORT));
    let mounts = support::tempdir("hvsock-continuity-mnt-");
    let (mnt, old) = (mounts.path().join("dir"), mounts.path().join("old"));
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(&old).unwrap();

    let listener = HvListener::bind_with(&d.host(), addr, 8).unwrap();
    let mut sandbox = sandbox(&d, vm, &mnt, &old);
    sandbox.wait_stdout("the sandbox's mounts", |out| {
        String::from_utf8_lossy(out).contains("mounted")
    });
    assert!(
        sandbox_connects(&mut sandbox, "dir", Some(&listener)),
        "{}",
        sandbox.stderr()
    );
    assert!(
        sandbox_connects(&mut sandbox, "file", Some(&listener)),
        "{}",
        sandbox.stderr()
    );

    d.restart();
    let listener = HvListener::bind_with(&d.host(), addr, 8).unwrap();
    // The directory mount shows the new socket; the file mount still holds the dead one.
    assert!(
        sandbox_connects(&mut sandbox, "dir", Some(&listener)),
        "through the mounted directory after a restart: {}",
        sandbox.stderr()
    );
    assert!(
        !sandbox_connects(&mut sandbox, "file", None),
        "a mounted socket file cannot outlive a restart; this test pins why the docs say to mount the directory"
    );
    sandbox.close_stdin();
    assert!(sandbox.wait(Duration::from_secs(10)).success());
}

/// Connects from the root to its own listener on `port` within `timeout`, sends `text` and
/// half-closes.
fn send_to(transport: &Transport, port: u32, text: &str, timeout: Duration) -> std::io::Result<()> {
    let addr = SockAddrHv::new(VmId::LOOPBACK, ServiceId::from_vsock_port(port));
    let mut stream = HvStream::connect_with(transport, addr, timeout)?;
    stream.write_all(text.as_bytes())?;
    stream.shutdown(Shutdown::Write)
}

/// [`send_to`] a listener that is binding again after a restart: hvsockd may be back a moment
/// before the listener is (its re-bind starts when it notices the old session ended), and a
/// connect in that moment is refused ("nothing listens"), so a refusal is tried again until
/// `QUICK` has passed.
fn send_when_back(transport: &Transport, port: u32, text: &str) -> std::io::Result<()> {
    let deadline = Instant::now() + QUICK;
    loop {
        match send_to(transport, port, text, QUICK) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

#[test]
fn listen_keep_and_a_library_listener_serve_on_across_kill_9_and_restart() {
    let mut d = Daemon::start();
    let mut keep = Proc::spawn(d.cli().args(["listen", "--keep", "-v", "wildcard:5000"]));
    keep.wait_stderr("listening on");
    let listener = Arc::new(
        HvListener::bind_with(
            &d.host(),
            SockAddrHv::new(VmId::WILDCARD, ServiceId::from_vsock_port(PORT + 1)),
            8,
        )
        .unwrap(),
    );
    let fd = listener.as_raw_fd();
    send_to(&d.host(), PORT, "before\n", QUICK).unwrap();
    send_to(&d.host(), PORT + 1, "lib before\n", QUICK).unwrap();
    assert_eq!(receive_one(&listener), "lib before\n");
    keep.wait_stdout("--keep to serve", |out| out.ends_with(b"before\n"));

    // The library listener waits in accept through the crash. (On a thread of its own, whose
    // answer is awaited within a bound: a failure fails the test instead of leaving it waiting
    // in accept, as a scoped thread would.)
    let accepting = receiving(&listener);
    std::thread::sleep(Duration::from_millis(100));
    d.restart();
    send_when_back(&d.host(), PORT, "after\n").expect("--keep's listener is back");
    send_when_back(&d.host(), PORT + 1, "lib after\n").expect("the library listener is back");
    assert_eq!(received(&accepting), "lib after\n");
    keep.wait_stdout("--keep to serve after the restart", |out| {
        out.ends_with(b"before\nafter\n")
    });
    assert!(keep.is_running(), "listen --keep exited: {}", keep.stderr());
    assert_eq!(listener.as_raw_fd(), fd, "the descriptor number is kept");
    assert_eq!(listener.rebind_generation(), 1);
    // The descriptor is the new session: it works again after a second crash. (The re-bind
    // starts when an accept notices the end of the session: a server waits in accept.)
    let accepting = receiving(&listener);
    std::thread::sleep(Duration::from_millis(100));
    d.restart();
    send_when_back(&d.host(), PORT + 1, "again\n").unwrap();
    assert_eq!(received(&accepting), "again\n");
    assert_eq!(listener.as_raw_fd(), fd);
    // With no patience, a lost session is an error at once, as before.
    listener.set_rebind_patience(Duration::ZERO);
    d.restart();
    let e = listener.accept().expect_err("no patience");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted, "{e}");
}

#[test]
fn a_connect_issued_while_hvsockd_is_down_succeeds_once_it_is_back() {
    let mut d = Daemon::start();
    let listener = HvListener::bind_with(
        &d.host(),
        SockAddrHv::new(VmId::WILDCARD, ServiceId::from_vsock_port(PORT)),
        8,
    )
    .unwrap();
    // This process has reached hvsockd once (so a missing endpoint is a restart).
    send_to(&d.host(), PORT, "first\n", QUICK).unwrap();
    assert_eq!(receive_one(&listener), "first\n");

    d.kill9();
    let host = d.host();
    let (patient, hasty) = std::thread::scope(|scope| {
        // The server waits in accept, as servers do: that is what binds it again.
        let accepting = scope.spawn(|| receive_one(&listener));
        let patient = scope.spawn(|| {
            let started = Instant::now();
            send_to(&host, PORT, "during\n", Duration::from_secs(10)).map(|()| started.elapsed())
        });
        let hasty = scope.spawn(|| send_to(&host, PORT, "hasty\n", Duration::from_millis(100)));
        std::thread::sleep(Duration::from_millis(400));
        let hasty = hasty.join().unwrap();
        d.restart();
        assert_eq!(accepting.join().unwrap(), "during\n");
        (patient.join().unwrap(), hasty)
    });
    let waited = patient.expect("a connect whose timeout exceeds the gap succeeds");
    assert!(
        waited >= Duration::from_millis(300),
        "it waited for hvsockd: {waited:?}"
    );
    let e = hasty.expect_err("a connect whose timeout is shorter than the gap fails");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn an_async_listener_accepts_across_kill_9_and_restart() {
    let mut d = Daemon::start();
    let addr = SockAddrHv::new(VmId::WILDCARD, ServiceId::from_vsock_port(PORT));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = hvsock::tokio::HvListener::bind_with(&d.host(), addr, 8)
            .await
            .unwrap();
        let fd = listener.as_raw_fd();
        // A client that was connected before: it sees the restart, so it also waits out the
        // moment when the new hvsockd is up and the listener not yet bound again.
        let host = d.host();
        let connector =
            tokio::task::spawn_blocking(move || send_to(&host, PORT, "before\n", QUICK));
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut text)
            .await
            .unwrap();
        assert_eq!(text, "before\n");
        connector.await.unwrap().unwrap();
        d.restart();
        let host = d.host();
        let connector =
            tokio::task::spawn_blocking(move || send_when_back(&host, PORT, "async after\n"));
        let (mut conn, _) = tokio::time::timeout(QUICK, listener.accept())
            .await
            .expect("accept within the time")
            .expect("no error reaches the application");
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut text)
            .await
            .unwrap();
        assert_eq!(text, "async after\n");
        connector.await.unwrap().unwrap();
        assert_eq!(listener.as_raw_fd(), fd);
        // poll_accept too, after a second crash.
        d.restart();
        let host = d.host();
        let connector =
            tokio::task::spawn_blocking(move || send_when_back(&host, PORT, "polled\n"));
        let accepted =
            tokio::time::timeout(QUICK, std::future::poll_fn(|cx| listener.poll_accept(cx)))
                .await
                .expect("poll_accept within the time");
        let (mut conn, _) = accepted.expect("no error reaches the application");
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut text)
            .await
            .unwrap();
        assert_eq!(text, "polled\n");
        connector.await.unwrap().unwrap();
    });
}

#[test]
fn a_vms_guest_ports_come_back_with_the_listeners() {
    let mut d = Daemon::start();
    let vms = tempfile::Builder::new()
        .prefix("hvsock-vm-")
        .tempdir_in("/tmp")
        .unwrap();
    let path = vms.path().join("vm.vsock");
    let vm = d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    let listener =
        HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 8).unwrap();
    let port = std::path::PathBuf::from(format!("{}_2761", path.display()));
    let guest_sends = |text: &str| {
        let mut guest = UnixStream::connect(&port).unwrap();
        guest.write_all(text.as_bytes()).unwrap();
        guest.shutdown(Shutdown::Write).unwrap();
        let (mut conn, peer) = listener.accept().unwrap();
        assert_eq!(peer.vm_id, vm);
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        assert_eq!(got, text);
    };
    wait_for("the guest port", QUICK, || {
        UnixStream::connect(&port).is_ok()
    });
    // That probe connection was offered to the listener: take it.
    let _ = listener.accept().unwrap();
    guest_sends("before\n");
    std::thread::scope(|scope| {
        // The server waits in accept, which binds it again after the crash; hvsockd then
        // opens the guest port again (the stale socket refuses until then).
        let accepting = scope.spawn(|| listener.accept().map(|_| ()));
        std::thread::sleep(Duration::from_millis(100));
        d.restart();
        wait_for("the guest port to come back", QUICK, || {
            UnixStream::connect(&port).is_ok()
        });
        accepting.join().unwrap().unwrap();
    });
    guest_sends("after\n");
}

/// A program that polls the listener's raw descriptor itself (non-blocking `accept` in a
/// `poll` loop, as the `HvListener` docs tell it to): the same descriptor number reports the
/// hang-up, `accept` says `WouldBlock` while the listener binds again, then the connection made
/// after the restart arrives on that number.
#[test]
fn a_raw_descriptor_poller_gets_its_connections_on_the_same_number_after_a_restart() {
    let mut d = Daemon::start();
    let listener = HvListener::bind_with(
        &d.host(),
        SockAddrHv::new(VmId::WILDCARD, ServiceId::from_vsock_port(PORT)),
        8,
    )
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    let fd = listener.as_raw_fd();
    send_to(&d.host(), PORT, "before\n", QUICK).unwrap();
    d.restart();
    let host = d.host();
    let sent = std::thread::spawn(move || send_when_back(&host, PORT, "after\n"));
    let deadline = Instant::now() + QUICK;
    let mut texts = Vec::new();
    let mut would_block = 0;
    while texts.len() < 2 {
        assert!(Instant::now() < deadline, "got {texts:?} in time");
        // The docs' loop: poll the number with a short timeout, then accept.
        // SAFETY: `fd` is the listener's open descriptor, borrowed for this poll only.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let mut fds = [rustix::event::PollFd::new(
            &borrowed,
            rustix::event::PollFlags::IN,
        )];
        let ten_ms = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        rustix::event::poll(&mut fds, Some(&ten_ms)).unwrap();
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(QUICK)).unwrap();
                let mut text = String::new();
                conn.read_to_string(&mut text).unwrap();
                texts.push(text);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => would_block += 1,
            Err(e) => panic!("an error reached the application: {e}"),
        }
        assert_eq!(listener.as_raw_fd(), fd);
    }
    sent.join().unwrap().unwrap();
    assert_eq!(texts, ["before\n", "after\n"]);
    assert!(would_block > 0);
    assert_eq!(listener.rebind_generation(), 1);
}
