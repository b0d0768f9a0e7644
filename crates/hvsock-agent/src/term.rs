//! Terminals on both sides of a session: the guest's pseudo-terminal ([`Pty`]) and the
//! host's own terminal in raw mode ([`RawMode`]) while a `--tty` session runs.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{OptionalActions, Termios, Winsize};

use crate::session::WinSize;

/// A pseudo-terminal pair: the agent keeps `master`, the command gets `slave` as its stdio and
/// controlling terminal.
#[derive(Debug)]
pub struct Pty {
    /// The agent's end.
    pub master: OwnedFd,
    /// The command's end.
    pub slave: OwnedFd,
}

impl Pty {
    /// Opens a new pair of the given size.
    pub fn open(size: WinSize) -> io::Result<Pty> {
        let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
        rustix::io::fcntl_setfd(&master, rustix::io::FdFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        set_size(master.as_fd(), size)?;
        Ok(Pty { master, slave })
    }
}

/// Sets a terminal's size (the kernel then signals its foreground group `SIGWINCH`).
pub fn set_size(fd: BorrowedFd<'_>, size: WinSize) -> io::Result<()> {
    Ok(rustix::termios::tcsetwinsize(
        fd,
        Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?)
}

/// The size of the terminal on `fd`, if it is one with a size.
pub fn size_of(fd: BorrowedFd<'_>) -> Option<WinSize> {
    let ws = rustix::termios::tcgetwinsize(fd).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some(WinSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Whether `fd` is a terminal.
pub fn is_terminal(fd: BorrowedFd<'_>) -> bool {
    rustix::termios::isatty(fd)
}

/// The host's terminal in raw mode; the saved mode comes back when dropped.
#[derive(Debug)]
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode (no echo, no line editing, no signals from keys:
    /// Ctrl-C reaches the guest's terminal as a byte).
    pub fn enable(fd: BorrowedFd<'_>) -> io::Result<RawMode> {
        let fd = rustix::io::fcntl_dupfd_cloexec(fd, 0)?;
        let saved = rustix::termios::tcgetattr(&fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        // Now, not Flush: keys typed ahead of the session stay and reach the guest.
        rustix::termios::tcsetattr(&fd, OptionalActions::Now, &raw)?;
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(&self.fd, OptionalActions::Drain, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pty_has_the_size_asked_for_and_resizes() {
        let pty = Pty::open(WinSize {
            rows: 40,
            cols: 100,
        })
        .expect("a pty");
        assert!(is_terminal(pty.slave.as_fd()));
        assert_eq!(
            size_of(pty.slave.as_fd()),
            Some(WinSize {
                rows: 40,
                cols: 100
            })
        );
        set_size(pty.master.as_fd(), WinSize { rows: 10, cols: 20 }).expect("resize");
        assert_eq!(
            size_of(pty.slave.as_fd()),
            Some(WinSize { rows: 10, cols: 20 })
        );
    }

    #[test]
    fn raw_mode_is_restored_when_dropped() {
        let pty = Pty::open(WinSize::default()).expect("a pty");
        let before = rustix::termios::tcgetattr(&pty.slave).expect("attrs");
        {
            let _raw = RawMode::enable(pty.slave.as_fd()).expect("raw");
            let now = rustix::termios::tcgetattr(&pty.slave).expect("attrs");
            assert_ne!(now.local_modes, before.local_modes);
        }
        let after = rustix::termios::tcgetattr(&pty.slave).expect("attrs");
        assert_eq!(after.local_modes, before.local_modes);
    }
}
