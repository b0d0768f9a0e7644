//! Connect and bind of the async types against a fake hvsockd endpoint that answers as
//! scripted: the sockets passed, the pool of control connections (reuse, limits, across
//! runtimes, replaced when closed), refusals and their error kinds, an unresponsive hvsockd,
//! cancellation, and the arguments refused like the std API's.

use std::io::{ErrorKind, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::tokio::io::AsyncReadExt;
use hvsock_proto::unix::{recv_frame, send_frame, stream_pair};
use hvsock_proto::{ErrorCode, Frame, WireAddr};

use super::addr;
use crate::Transport;
use crate::guid::VmId;
use crate::sys::unix::provider::tokio::{MAX_IDLE, idle_count};
use crate::sys::unix::wait_readable;
use crate::tokio::{HvListener, HvStream};

/// What the fake hvsockd answers to a frame.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// `Connected` with a new socket pair's end (the other end goes to the test).
    Connected,
    /// `Connected`, then close the session.
    ConnectedThenClose,
    /// `Error` with this code for the request.
    Error(ErrorCode),
    /// `Error` with request id 0 (the whole session), then close it.
    SessionError,
    /// Nothing.
    Silent,
    /// `Bound`.
    Bound,
}

/// A fake hvsockd endpoint on a temp path, served by threads until dropped.
struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    sessions: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    far_ends: Mutex<mpsc::Receiver<OwnedFd>>,
    thread: Option<JoinHandle<()>>,
}

impl Fake {
    fn start(reply: impl Fn(&Frame) -> Reply + Send + Sync + 'static) -> Fake {
        use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.sock");
        let sock = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        rustix::net::bind(&sock, &SocketAddrUnix::new(&path).unwrap()).unwrap();
        rustix::net::listen(&sock, 64).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let sessions = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        let reply = Arc::new(reply);
        let thread = {
            let (stop, sessions, closed) = (stop.clone(), sessions.clone(), closed.clone());
            std::thread::spawn(move || {
                let mut served = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    if !wait_readable(sock.as_fd(), Some(Duration::from_millis(20))).unwrap() {
                        continue;
                    }
                    let Ok(fd) = rustix::net::accept_with(&sock, SocketFlags::CLOEXEC) else {
                        continue;
                    };
                    sessions.fetch_add(1, Ordering::AcqRel);
                    let (stop, closed, tx, reply) =
                        (stop.clone(), closed.clone(), tx.clone(), reply.clone());
                    served.push(std::thread::spawn(move || {
                        serve(fd, &stop, &*reply, &tx);
                        closed.fetch_add(1, Ordering::AcqRel);
                    }));
                }
                for t in served {
                    t.join().unwrap();
                }
            })
        };
        Fake {
            _dir: dir,
            path,
            stop,
            sessions,
            closed,
            far_ends: Mutex::new(rx),
            thread: Some(thread),
        }
    }

    fn transport(&self) -> Transport {
        Transport::provider(&self.path)
    }

    fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// The far end of the last `Connected` connection.
    fn far_end(&self) -> std::os::unix::net::UnixStream {
        let fd = self
            .far_ends
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(5))
            .unwrap();
        std::os::unix::net::UnixStream::from(fd)
    }

    fn wait_closed(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.closed.load(Ordering::Acquire) < n {
            assert!(Instant::now() < deadline, "no session closed");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    fd: OwnedFd,
    stop: &AtomicBool,
    reply: &(dyn Fn(&Frame) -> Reply + Send + Sync),
    far_ends: &mpsc::Sender<OwnedFd>,
) {
    while !stop.load(Ordering::Acquire) {
        if !wait_readable(fd.as_fd(), Some(Duration::from_millis(20))).unwrap() {
            continue;
        }
        let Ok(received) = recv_frame(&fd, true) else {
            return; // closed (or garbage): end the session
        };
        let req = match &received.frame {
            Frame::Connect { req, .. } | Frame::Bind { req, .. } => *req,
            _ => 0,
        };
        let answer = reply(&received.frame);
        match answer {
            Reply::Connected | Reply::ConnectedThenClose => {
                let Frame::Connect { target, .. } = received.frame else {
                    panic!("Connected for {:?}", received.frame)
                };
                let (near, far) = stream_pair().unwrap();
                let frame = Frame::Connected {
                    req,
                    local: WireAddr {
                        vm: *VmId::LOOPBACK.0.as_bytes(),
                        service: target.service,
                    },
                    peer: target,
                };
                send_frame(&fd, &frame, Some(near.as_fd()), false).unwrap();
                far_ends.send(far).unwrap();
                if matches!(answer, Reply::ConnectedThenClose) {
                    return;
                }
            }
            Reply::Error(code) => {
                let frame = Frame::Error {
                    req,
                    code,
                    message: format!("fake says {code:?}"),
                };
                send_frame(&fd, &frame, None, false).unwrap();
            }
            Reply::SessionError => {
                let frame = Frame::Error {
                    req: 0,
                    code: ErrorCode::Protocol,
                    message: "fake closes the session".into(),
                };
                send_frame(&fd, &frame, None, false).unwrap();
                return;
            }
            Reply::Silent => {}
            Reply::Bound => {
                let Frame::Bind { addr, .. } = received.frame else {
                    panic!("Bound for {:?}", received.frame)
                };
                send_frame(&fd, &Frame::Bound { req, local: addr }, None, false).unwrap();
            }
        }
    }
}

const T: Duration = Duration::from_secs(2);

#[::tokio::test]
async fn connect_gets_the_socket_hvsockd_passes_and_reuses_the_session() {
    let fake = Fake::start(|_| Reply::Connected);
    let target = addr(VmId::PARENT);
    for i in 0..3u8 {
        let mut stream = HvStream::connect_with(&fake.transport(), target, T)
            .await
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), target);
        assert_eq!(stream.local_addr().unwrap(), addr(VmId::LOOPBACK));
        let mut far = fake.far_end();
        far.write_all(&[i]).unwrap();
        let mut buf = [0u8; 1];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [i]);
    }
    assert_eq!(
        fake.sessions(),
        1,
        "one control connection served all three"
    );
    assert_eq!(idle_count(&fake.path), 1);
}

#[test]
fn a_pooled_control_connection_outlives_the_runtime_that_used_it() {
    let fake = Fake::start(|_| Reply::Connected);
    for _ in 0..3 {
        let rt = ::tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(HvStream::connect_with(
            &fake.transport(),
            addr(VmId::PARENT),
            T,
        ))
        .unwrap();
        drop(rt);
    }
    assert_eq!(fake.sessions(), 1);
}

#[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_use_their_own_sessions_and_the_pool_keeps_a_few() {
    let n = MAX_IDLE + 8;
    // The fake answers no connect before all n have arrived, so all are in flight at once.
    let arrived = Arc::new(AtomicUsize::new(0));
    let fake = {
        let arrived = arrived.clone();
        Fake::start(move |_| {
            arrived.fetch_add(1, Ordering::AcqRel);
            let deadline = Instant::now() + Duration::from_secs(5);
            while arrived.load(Ordering::Acquire) < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            Reply::Connected
        })
    };
    let transport = fake.transport();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let t = transport.clone();
            ::tokio::spawn(async move { HvStream::connect_with(&t, addr(VmId::PARENT), T).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(arrived.load(Ordering::Acquire), n);
    assert_eq!(
        fake.sessions(),
        n,
        "one control connection per connect in flight"
    );
    assert_eq!(
        idle_count(&fake.path),
        MAX_IDLE,
        "the pool keeps at most MAX_IDLE"
    );
    // The next connects reuse them.
    HvStream::connect_with(&transport, addr(VmId::PARENT), T)
        .await
        .unwrap();
    assert_eq!(fake.sessions(), n);
}

#[::tokio::test]
async fn refusals_map_to_the_std_error_kinds_and_keep_the_session() {
    let codes = [
        (ErrorCode::Refused, ErrorKind::ConnectionRefused),
        (ErrorCode::Denied, ErrorKind::PermissionDenied),
        (ErrorCode::Unreachable, ErrorKind::HostUnreachable),
        (ErrorCode::TimedOut, ErrorKind::TimedOut),
    ];
    for (code, kind) in codes {
        let fake = Fake::start(move |_| Reply::Error(code));
        let err = HvStream::connect_with(&fake.transport(), addr(VmId::PARENT), T)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains("fake says"), "{err}");
        // The std client gives the same.
        let std_err =
            crate::HvStream::connect_with(&fake.transport(), addr(VmId::PARENT), T).unwrap_err();
        assert_eq!(std_err.kind(), kind);
        assert_eq!(
            idle_count(&fake.path),
            1,
            "a refused connect keeps its session"
        );
    }
}

#[::tokio::test]
async fn a_pooled_session_that_hvsockd_closed_is_replaced() {
    let fake = Fake::start(|_| Reply::ConnectedThenClose);
    let t = fake.transport();
    HvStream::connect_with(&t, addr(VmId::PARENT), T)
        .await
        .unwrap();
    fake.wait_closed(1);
    assert_eq!(idle_count(&fake.path), 1, "pooled before hvsockd closed it");
    HvStream::connect_with(&t, addr(VmId::PARENT), T)
        .await
        .unwrap();
    assert_eq!(fake.sessions(), 2);
}

#[::tokio::test]
async fn a_session_wide_error_fails_the_connect_and_drops_the_session() {
    let fake = Fake::start(|_| Reply::SessionError);
    let err = HvStream::connect_with(&fake.transport(), addr(VmId::PARENT), T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("fake closes the session"), "{err}");
    assert_eq!(idle_count(&fake.path), 0);
}

#[::tokio::test]
async fn an_unresponsive_hvsockd_times_out_after_the_grace() {
    let fake = Fake::start(|_| Reply::Silent);
    let started = Instant::now();
    let err = HvStream::connect_with(
        &fake.transport(),
        addr(VmId::PARENT),
        Duration::from_millis(100),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1100) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(idle_count(&fake.path), 0);
}

#[::tokio::test]
async fn a_dropped_connect_closes_its_session_instead_of_pooling_it() {
    let fake = Fake::start(|_| Reply::Silent);
    let t = fake.transport();
    ::tokio::select! {
        _ = HvStream::connect_with(&t, addr(VmId::PARENT), T) => panic!("answered"),
        () = ::tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    fake.wait_closed(1);
    assert_eq!(idle_count(&fake.path), 0);
}

#[::tokio::test]
async fn bind_through_the_fake_and_its_refusal() {
    let fake = Fake::start(|frame| match frame {
        Frame::Bind { backlog: 7, .. } => Reply::Error(ErrorCode::AddrInUse),
        _ => Reply::Bound,
    });
    let listener = HvListener::bind_with(&fake.transport(), addr(VmId::CHILDREN), 8)
        .await
        .unwrap();
    assert_eq!(listener.local_addr().unwrap(), addr(VmId::CHILDREN));
    let err = HvListener::bind_with(&fake.transport(), addr(VmId::CHILDREN), 7)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AddrInUse, "{err}");
}

#[::tokio::test]
async fn a_missing_endpoint_says_to_start_hvsockd() {
    let dir = tempfile::tempdir().unwrap();
    let t = Transport::provider(dir.path().join("nothing.sock"));
    let err = HvStream::connect_with(&t, addr(VmId::PARENT), T)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("is hvsockd running?"), "{err}");
    let err = HvListener::bind_with(&t, addr(VmId::WILDCARD), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[::tokio::test]
async fn bad_arguments_and_other_transports_are_refused_like_std() {
    let t = Transport::provider(Path::new("/nonexistent/hvsock.sock"));
    let err = HvStream::connect_with(&t, addr(VmId::PARENT), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    for backlog in [0, 4097] {
        let err = HvListener::bind_with(&t, addr(VmId::WILDCARD), backlog)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    }
    // HyperV is never available on Unix (and Vsock must not be opened on this machine).
    let hyperv = Transport::HyperV;
    let err = HvStream::connect_with(&hyperv, addr(VmId::PARENT), T)
        .await
        .unwrap_err();
    let std_err = crate::HvStream::connect_with(&hyperv, addr(VmId::PARENT), T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert_eq!(err.to_string(), std_err.to_string());
    let err = HvListener::bind_with(&hyperv, addr(VmId::WILDCARD), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}
