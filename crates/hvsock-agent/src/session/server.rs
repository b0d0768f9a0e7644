//! The agent's side of a VM session: starts the command and relays its I/O in one `poll` loop
//! (the connection, the command's output, its stdin when bytes wait for it, and a pidfd for
//! its exit), so that nothing blocks on a command that does not read or a host that does not
//! send.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::net::RecvFlags;
use rustix::process::{Pid, PidfdFlags, Signal};

use super::{
    EXIT, Exit, HostMsg, START, STARTED, STDERR, STDOUT, Start, Started, parse_host_frame,
};
use crate::term::{self, Pty};
use crate::user::Account;
use crate::wire::{self, Decoder, ErrorKind, Frame, MAX_DATA, RemoteError, WireError};

/// Most bytes of stdin held for a command that does not read them; past it the agent stops
/// reading the connection until the command catches up.
const MAX_PENDING_STDIN: usize = 1024 * 1024;
/// How long output may stay open after the command exited (a background process holding it).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long a command has between `SIGTERM` and `SIGKILL` when its host went away.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long the host has to send Hello and Start.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The `PATH` commands get.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a session ended, for the agent's log.
#[derive(Debug)]
pub enum Outcome {
    /// The command ran and ended.
    Exited(Exit),
    /// The command could not start (the host was told why).
    NotStarted(RemoteError),
    /// The host went away first; the command was stopped.
    HostGone,
}

/// Serves one session on `stream`: Hello, Start, relay, Exit.
pub fn serve(stream: &hvsock::HvStream) -> Result<Outcome, WireError> {
    let mut conn = stream;
    let mut decoder = Decoder::default();
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let result = handshake(&mut conn, &mut decoder);
    let start = match result {
        Ok(start) => start,
        Err(e) => {
            wire::send_error(&mut conn, &e);
            return Err(e);
        }
    };
    stream.set_read_timeout(None)?;
    let running = match spawn(&start) {
        Ok(running) => running,
        Err(refusal) => {
            wire::write_frame(&mut conn, &refusal.frame())?;
            return Ok(Outcome::NotStarted(refusal));
        }
    };
    let started = Started {
        pid: running.child.id().try_into().unwrap_or(-1),
    };
    if let Err(e) = wire::write_frame(&mut conn, &Frame::json(STARTED, &started)) {
        running.stop();
        return Err(e);
    }
    relay(stream, decoder, running)
}

fn handshake(conn: &mut &hvsock::HvStream, decoder: &mut Decoder) -> Result<Start, WireError> {
    wire::server_hello(conn, decoder, super::SERVICE, super::VERSIONS)?;
    let frame = decoder.expect_frame(conn, "before sending Start")?;
    if frame.kind != START {
        return Err(WireError::Unexpected {
            kind: frame.kind,
            state: "while waiting for Start",
        });
    }
    let start: Start = frame.parse()?;
    start.validate()?;
    Ok(start)
}

/// The command's I/O, seen from the agent.
enum Io {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    Tty {
        master: Option<OwnedFd>,
        eof_sent: bool,
    },
}

/// A started command.
struct Running {
    child: Child,
    pidfd: OwnedFd,
    io: Io,
}

impl Running {
    fn pid(&self) -> Option<Pid> {
        Pid::from_raw(self.child.id().try_into().unwrap_or(0))
    }

    /// Signals the command: its terminal's foreground group, else its own process group.
    fn signal(&self, sig: Signal) {
        let Some(pid) = self.pid() else { return };
        if let Io::Tty {
            master: Some(master),
            ..
        } = &self.io
        {
            if let Ok(group) = rustix::termios::tcgetpgrp(master) {
                if rustix::process::kill_process_group(group, sig).is_ok() {
                    return;
                }
            }
        }
        let _ = rustix::process::kill_process_group(pid, sig);
    }

    /// Stops the command after its host went away: HUP and TERM, KILL after a grace, reaped.
    fn stop(mut self) {
        if let Io::Tty { master, .. } = &mut self.io {
            // Closing the terminal hangs it up: the session gets SIGHUP.
            master.take();
        }
        for sig in [Signal::HUP, Signal::TERM] {
            if let Some(pid) = self.pid() {
                let _ = rustix::process::kill_process_group(pid, sig);
            }
        }
        if !wait_readable(self.pidfd.as_fd(), Some(KILL_GRACE)) {
            if let Some(pid) = self.pid() {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
        }
        let _ = self.child.wait();
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> bool {
    let ts = timeout.map(|t| rustix::event::Timespec {
        tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: t.subsec_nanos().into(),
    });
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return false,
        }
    }
}

/// Starts the command, or says why it cannot start.
fn spawn(start: &Start) -> Result<Running, RemoteError> {
    let account = match &start.user {
        Some(name) => Account::lookup(name)
            .map_err(|e| RemoteError::new(ErrorKind::Invalid, e.to_string()))?,
        None => Account::current(),
    };
    let (program, arg0, args) = if start.argv.is_empty() {
        // The login shell, named `-sh` as login(1) does.
        let shell = account.shell.to_string_lossy().into_owned();
        let base = shell.rsplit('/').next().unwrap_or("sh").to_owned();
        (shell, Some(format!("-{base}")), Vec::new())
    } else {
        (start.argv[0].clone(), None, start.argv[1..].to_vec())
    };
    let mut cmd = Command::new(&program);
    cmd.args(&args);
    if let Some(arg0) = arg0 {
        cmd.arg0(arg0);
    }
    cmd.env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", &account.home)
        .env("USER", &account.name)
        .env("LOGNAME", &account.name)
        .env("SHELL", &account.shell);
    if let Some(tty) = &start.tty {
        cmd.env("TERM", &tty.term);
    }
    for (k, v) in &start.env {
        cmd.env(k, v);
    }
    let cwd = match &start.cwd {
        Some(cwd) => std::path::PathBuf::from(cwd),
        None if account.home.is_dir() => account.home.clone(),
        None => "/".into(),
    };
    cmd.current_dir(&cwd);

    let switch = account
        .needs_switch()
        .then(|| (account.clone(), account.gids()));
    let io_err = |e: io::Error| RemoteError::new(ErrorKind::Other, format!("setting up: {e}"));
    let (io, pty_mode) = match &start.tty {
        Some(tty) => {
            let pty = Pty::open(tty.size).map_err(io_err)?;
            let slave = |pty: &Pty| pty.slave.try_clone().map(Stdio::from);
            cmd.stdin(slave(&pty).map_err(io_err)?)
                .stdout(slave(&pty).map_err(io_err)?)
                .stderr(slave(&pty).map_err(io_err)?);
            (
                Io::Tty {
                    master: Some(pty.master),
                    eof_sent: false,
                },
                true,
            )
        }
        None => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            cmd.process_group(0);
            (
                Io::Pipes {
                    stdin: None,
                    stdout: None,
                    stderr: None,
                },
                false,
            )
        }
    };
    // SAFETY: the closure runs in the child between fork and exec and only makes system calls
    // (setsid, ioctl, setgroups, setgid, setuid) on memory prepared before the fork; it
    // allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            if pty_mode {
                rustix::process::setsid()?;
                // SAFETY: std has just made fd 0 the terminal's slave end; it stays open for
                // this call.
                let stdin = BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
            }
            if let Some((account, gids)) = &switch {
                account.switch_to(gids)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| spawn_error(&program, &cwd, e))?;
    drop(cmd); // closes the agent's copies of the terminal's slave end
    let pid = Pid::from_raw(child.id().try_into().unwrap_or(0));
    let pidfd = pid
        .ok_or_else(|| io::Error::other("no pid"))
        .and_then(|pid| Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?));
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io_err(e));
        }
    };
    let io = match io {
        Io::Pipes { .. } => Io::Pipes {
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: child.stdout.take().map(OwnedFd::from),
            stderr: child.stderr.take().map(OwnedFd::from),
        },
        tty => tty,
    };
    for fd in io.fds() {
        let _ = rustix::io::ioctl_fionbio(fd, true);
    }
    Ok(Running { child, pidfd, io })
}

impl Io {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Io::Pipes {
                stdin,
                stdout,
                stderr,
            } => [stdin, stdout, stderr]
                .into_iter()
                .flatten()
                .map(AsFd::as_fd)
                .collect(),
            Io::Tty { master, .. } => master.iter().map(AsFd::as_fd).collect(),
        }
    }
}

fn spawn_error(program: &str, cwd: &std::path::Path, e: io::Error) -> RemoteError {
    match e.kind() {
        io::ErrorKind::NotFound if !cwd.is_dir() => RemoteError::new(
            ErrorKind::NotFound,
            format!("no such directory in the guest: {}", cwd.display()),
        ),
        io::ErrorKind::NotFound => RemoteError::new(
            ErrorKind::NotFound,
            format!("{program}: command not found in the guest"),
        ),
        io::ErrorKind::PermissionDenied => RemoteError::new(
            ErrorKind::PermissionDenied,
            format!("{program}: permission denied in the guest"),
        ),
        _ => RemoteError::new(ErrorKind::Other, format!("starting {program}: {e}")),
    }
}

fn signal_by_name(name: &str) -> Option<Signal> {
    Some(match name {
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "KILL" => Signal::KILL,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "TERM" => Signal::TERM,
        "CONT" => Signal::CONT,
        "STOP" => Signal::STOP,
        "TSTP" => Signal::TSTP,
        "WINCH" => Signal::WINCH,
        _ => return None,
    })
}

fn signal_name(signo: i32) -> Option<String> {
    let all = [
        (Signal::HUP, "HUP"),
        (Signal::INT, "INT"),
        (Signal::QUIT, "QUIT"),
        (Signal::ILL, "ILL"),
        (Signal::TRAP, "TRAP"),
        (Signal::ABORT, "ABRT"),
        (Signal::BUS, "BUS"),
        (Signal::FPE, "FPE"),
        (Signal::KILL, "KILL"),
        (Signal::USR1, "USR1"),
        (Signal::SEGV, "SEGV"),
        (Signal::USR2, "USR2"),
        (Signal::PIPE, "PIPE"),
        (Signal::ALARM, "ALRM"),
        (Signal::TERM, "TERM"),
        (Signal::XCPU, "XCPU"),
        (Signal::XFSZ, "XFSZ"),
        (Signal::SYS, "SYS"),
    ];
    all.into_iter()
        .find(|(s, _)| s.as_raw() == signo)
        .map(|(_, n)| n.to_owned())
}

fn exit_of(status: ExitStatus) -> Exit {
    Exit {
        code: status.code(),
        signal: status.signal(),
        signal_name: status.signal().and_then(signal_name),
        core_dumped: status.core_dumped(),
    }
}

/// Reads what is there without waiting: `Some(0)` at the end, `None` if nothing is there.
fn read_now(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match rustix::io::read(fd, buf) {
        Ok(n) => Ok(Some(n)),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(None),
        // A terminal whose every slave end is closed.
        Err(rustix::io::Errno::IO) => Ok(Some(0)),
        Err(e) => Err(e.into()),
    }
}

/// Relays until the command has exited and its output ended, then sends Exit.
fn relay(
    stream: &hvsock::HvStream,
    mut decoder: Decoder,
    mut running: Running,
) -> Result<Outcome, WireError> {
    let mut conn = stream;
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_eof = false;
    let mut status: Option<ExitStatus> = None;
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; MAX_DATA];
    let conn_fd = stream.as_fd();

    // Frames already buffered behind Start (a fast host).
    let mut frames: Vec<Frame> = Vec::new();
    while let Some(frame) = decoder.next_frame()? {
        frames.push(frame);
    }

    loop {
        for frame in frames.drain(..) {
            let msg = match parse_host_frame(frame) {
                Ok(msg) => msg,
                Err(e) => {
                    wire::send_error(&mut conn, &e);
                    running.stop();
                    return Err(e);
                }
            };
            match msg {
                HostMsg::Stdin(_) | HostMsg::StdinEof if stdin_eof => {
                    let e = WireError::Invalid("stdin continued after StdinEof".into());
                    wire::send_error(&mut conn, &e);
                    running.stop();
                    return Err(e);
                }
                HostMsg::Stdin(bytes) => pending.extend_from_slice(&bytes),
                HostMsg::StdinEof => stdin_eof = true,
                HostMsg::Signal(name) => {
                    if let Some(sig) = signal_by_name(&name) {
                        running.signal(sig);
                    }
                }
                HostMsg::Resize(size) => {
                    if let Io::Tty {
                        master: Some(m), ..
                    } = &running.io
                    {
                        let _ = term::set_size(m.as_fd(), size);
                    }
                }
            }
        }

        // Stdin: write what waits, then pass its end on.
        flush_stdin(&mut running.io, &mut pending, stdin_eof, status.is_some());

        let outputs_open = match &running.io {
            Io::Pipes { stdout, stderr, .. } => stdout.is_some() || stderr.is_some(),
            Io::Tty { master, .. } => master.is_some(),
        };
        if let Some(at) = exited_at {
            if !outputs_open || at.elapsed() >= OUTPUT_GRACE {
                break;
            }
        }

        // Wait for something to do.
        let (mut fds, roles) = {
            let mut fds = Vec::with_capacity(5);
            let mut roles = Vec::with_capacity(5);
            if pending.len() < MAX_PENDING_STDIN {
                fds.push(PollFd::new(&conn_fd, PollFlags::IN));
                roles.push(Role::Conn);
            }
            if status.is_none() {
                fds.push(PollFd::new(&running.pidfd, PollFlags::IN));
                roles.push(Role::Exit);
            }
            match &running.io {
                Io::Pipes {
                    stdin,
                    stdout,
                    stderr,
                } => {
                    if let (Some(fd), false) = (stdin, pending.is_empty()) {
                        fds.push(PollFd::new(fd, PollFlags::OUT));
                        roles.push(Role::Stdin);
                    }
                    if let Some(fd) = stdout {
                        fds.push(PollFd::new(fd, PollFlags::IN));
                        roles.push(Role::Stdout);
                    }
                    if let Some(fd) = stderr {
                        fds.push(PollFd::new(fd, PollFlags::IN));
                        roles.push(Role::Stderr);
                    }
                }
                Io::Tty {
                    master: Some(fd), ..
                } => {
                    let mut flags = PollFlags::IN;
                    if !pending.is_empty() {
                        flags |= PollFlags::OUT;
                    }
                    fds.push(PollFd::new(fd, flags));
                    roles.push(Role::Stdout);
                }
                Io::Tty { master: None, .. } => {}
            }
            (fds, roles)
        };
        let timeout = exited_at.map(|at| {
            let left = OUTPUT_GRACE.saturating_sub(at.elapsed());
            rustix::event::Timespec {
                tv_sec: left.as_secs().try_into().unwrap_or(0),
                tv_nsec: left.subsec_nanos().into(),
            }
        });
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                running.stop();
                return Err(WireError::Io(e.into()));
            }
        }
        let ready: Vec<(Role, PollFlags)> = roles
            .into_iter()
            .zip(fds.iter().map(PollFd::revents))
            .filter(|(_, r)| !r.is_empty())
            .collect();
        drop(fds);

        for (role, revents) in ready {
            match role {
                Role::Conn => match rustix::net::recv(conn_fd, &mut buf[..], RecvFlags::DONTWAIT) {
                    Ok((0, _)) => {
                        running.stop();
                        return Ok(Outcome::HostGone);
                    }
                    Ok((n, _)) => {
                        decoder.push(&buf[..n]);
                        loop {
                            match decoder.next_frame() {
                                Ok(Some(frame)) => frames.push(frame),
                                Ok(None) => break,
                                Err(e) => {
                                    wire::send_error(&mut conn, &e);
                                    running.stop();
                                    return Err(e);
                                }
                            }
                        }
                    }
                    Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                    Err(_) => {
                        running.stop();
                        return Ok(Outcome::HostGone);
                    }
                },
                Role::Exit => {
                    if let Ok(Some(s)) = running.child.try_wait() {
                        status = Some(s);
                        exited_at = Some(Instant::now());
                    }
                }
                Role::Stdin => {}
                Role::Stdout | Role::Stderr => {
                    let kind = if role == Role::Stdout { STDOUT } else { STDERR };
                    let fd = running.io.output(role);
                    let Some(fd) = fd else { continue };
                    let got = read_now(fd.as_fd(), &mut buf);
                    match got {
                        Ok(Some(0)) | Err(_) => running.io.close_output(role),
                        Ok(Some(n)) => {
                            if let Err(e) = wire::write_data(&mut conn, kind, &buf[..n]) {
                                running.stop();
                                return match e {
                                    WireError::Io(_) => Ok(Outcome::HostGone),
                                    e => Err(e),
                                };
                            }
                        }
                        Ok(None) if revents.contains(PollFlags::HUP) && status.is_some() => {
                            running.io.close_output(role)
                        }
                        Ok(None) => {}
                    }
                }
            }
        }
    }
    let status = match status {
        Some(s) => s,
        None => running.child.wait()?,
    };
    let exit = exit_of(status);
    wire::write_frame(&mut conn, &Frame::json(EXIT, &exit))?;
    let _ = conn.flush();
    Ok(Outcome::Exited(exit))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Conn,
    Exit,
    Stdin,
    Stdout,
    Stderr,
}

impl Io {
    fn output(&self, role: Role) -> Option<&OwnedFd> {
        match (self, role) {
            (Io::Pipes { stdout, .. }, Role::Stdout) => stdout.as_ref(),
            (Io::Pipes { stderr, .. }, Role::Stderr) => stderr.as_ref(),
            (Io::Tty { master, .. }, Role::Stdout) => master.as_ref(),
            _ => None,
        }
    }

    fn close_output(&mut self, role: Role) {
        match (self, role) {
            (Io::Pipes { stdout, .. }, Role::Stdout) => *stdout = None,
            (Io::Pipes { stderr, .. }, Role::Stderr) => *stderr = None,
            (Io::Tty { master, .. }, Role::Stdout) => *master = None,
            _ => {}
        }
    }
}

/// Writes waiting stdin bytes without blocking; at the end of stdin closes the pipe (or types
/// Ctrl-D on a terminal). Once the command has exited, what it did not read is dropped.
fn flush_stdin(io: &mut Io, pending: &mut Vec<u8>, eof: bool, exited: bool) {
    let fd = match io {
        Io::Pipes { stdin, .. } => stdin.as_ref().map(|f| f.as_raw_fd()),
        Io::Tty { master, .. } => master.as_ref().map(|f| f.as_raw_fd()),
    };
    if fd.is_none() || (exited && matches!(io, Io::Pipes { .. })) {
        pending.clear();
    }
    while !pending.is_empty() {
        let Some(fd) = (match io {
            Io::Pipes { stdin, .. } => stdin.as_ref(),
            Io::Tty { master, .. } => master.as_ref(),
        }) else {
            pending.clear();
            break;
        };
        match rustix::io::write(fd, pending) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(rustix::io::Errno::AGAIN) => return,
            Err(rustix::io::Errno::INTR) => continue,
            // The command closed its stdin (EPIPE) or the terminal is gone: the rest is lost.
            Err(_) => {
                pending.clear();
                if let Io::Pipes { stdin, .. } = io {
                    *stdin = None;
                }
            }
        }
    }
    if eof && pending.is_empty() {
        match io {
            Io::Pipes { stdin, .. } => *stdin = None,
            Io::Tty {
                master: Some(m),
                eof_sent,
            } if !*eof_sent => {
                *eof_sent = true;
                let _ = rustix::io::write(m, &[0x04]);
            }
            Io::Tty { .. } => {}
        }
    }
}
