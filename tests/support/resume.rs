//! What the continuity tests (`tests/handover.rs`, `tests/fdstore.rs`) check of a listener that
//! lived through a restart or an upgrade of hvsockd: bounded accepts, and connections that come
//! out in the order they were made.

use std::io::{self, Read, Write};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream};

/// How long an accept may wait, and a read on what it accepted.
const T: Duration = Duration::from_secs(10);

/// Accepts one connection on `listener` within 10 s (the test fails otherwise, rather than
/// hang); the stream it returns is blocking, with a 10 s read timeout.
pub fn accept_within(listener: &HvListener) -> HvStream {
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

/// `first`, connected before the restart, and the connector that was waiting for the backlog
/// then (`waiting`) are accepted in that order, each carrying its own bytes.
pub fn answered_in_order(
    listener: &HvListener,
    mut first: HvStream,
    waiting: JoinHandle<io::Result<HvStream>>,
) {
    let mut a1 = accept_within(listener);
    let mut a2 = accept_within(listener);
    let mut waited = waiting
        .join()
        .unwrap()
        .expect("the waiting connector is answered");
    first.write_all(b"first").unwrap();
    waited.write_all(b"waited").unwrap();
    let mut buf = [0u8; 6];
    a1.read_exact(&mut buf[..5]).unwrap();
    assert_eq!(&buf[..5], b"first");
    a2.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"waited");
}
