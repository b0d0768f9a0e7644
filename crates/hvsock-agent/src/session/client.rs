//! The host's side of a VM session (`hvsock exec`, `hvsock shell`): this process's stdin,
//! stdout and stderr become the command's; `SIGINT`, `SIGTERM`, `SIGHUP` and `SIGQUIT` are
//! forwarded to it and `SIGWINCH` becomes a Resize. With a terminal the local one is put in raw
//! mode (restored at the end), so keys such as Ctrl-C reach the guest's terminal as bytes.
//! Three `SIGINT`s within 2 s give up on an unresponsive guest.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGWINCH};
use signal_hook::iterator::Signals;

use super::{
    EXIT, Exit, RESIZE, SIGNAL, START, STARTED, STDERR, STDIN, STDIN_EOF, STDOUT, SignalMsg, Start,
    Started,
};
use crate::term::{self, RawMode};
use crate::wire::{self, Decoder, ErrorKind, Frame, MAX_DATA, RemoteError, WireError};

/// Why a session could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The command could not start in the guest.
    #[error("{message}")]
    NotStarted {
        /// What the agent said.
        message: String,
        /// Its kind.
        kind: ErrorKind,
    },
    /// The protocol or the connection failed.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// Setting up this side (the terminal, signals, threads) failed.
    #[error("setting up the session: {0}")]
    Setup(#[source] io::Error),
    /// The user gave up (three Ctrl-C).
    #[error("interrupted: the guest did not end the command after three interrupts")]
    Interrupted,
}

impl SessionError {
    /// The exit status `hvsock exec` gives for this failure: 127 for a command not found,
    /// 126 for one that may not run, 255 otherwise (as ssh does).
    pub fn exit_status(&self) -> i32 {
        match self {
            SessionError::NotStarted {
                kind: ErrorKind::NotFound,
                ..
            } => 127,
            SessionError::NotStarted {
                kind: ErrorKind::PermissionDenied,
                ..
            } => 126,
            _ => 255,
        }
    }
}

/// The `Start` of a terminal session of this terminal's size and `TERM`.
pub fn tty_request() -> super::Tty {
    let size = term::size_of(io::stdin().as_fd())
        .or_else(|| term::size_of(io::stdout().as_fd()))
        .unwrap_or_default();
    let term = std::env::var("TERM")
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 64)
        .unwrap_or_else(|| "xterm".into());
    super::Tty { term, size }
}

type Writer = Arc<Mutex<hvsock::HvStream>>;

fn send(writer: &Writer, frame: &Frame) -> Result<(), WireError> {
    let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
    wire::write_frame(&mut *w, frame)
}

/// Runs `start` on the connected `stream` with this process's stdio, and returns how the
/// command ended.
pub fn run(stream: hvsock::HvStream, start: Start) -> Result<Exit, SessionError> {
    let mut decoder = Decoder::default();
    let mut conn = &stream;
    wire::client_hello(&mut conn, &mut decoder, super::SERVICE, super::VERSIONS)?;
    wire::write_frame(&mut conn, &Frame::json(START, &start))?;
    let first = match decoder.expect_frame(&mut conn, "before starting the command") {
        Ok(frame) => frame,
        Err(WireError::Remote(RemoteError { kind, message })) => {
            return Err(SessionError::NotStarted { message, kind });
        }
        Err(e) => return Err(e.into()),
    };
    if first.kind != STARTED {
        return Err(WireError::Unexpected {
            kind: first.kind,
            state: "in answer to Start",
        }
        .into());
    }
    let _started: Started = first.parse()?;

    let tty = start.tty.is_some();
    let raw = if tty && term::is_terminal(io::stdin().as_fd()) {
        Some(RawMode::enable(io::stdin().as_fd()).map_err(SessionError::Setup)?)
    } else {
        None
    };
    let writer: Writer = Arc::new(Mutex::new(stream.try_clone().map_err(SessionError::Setup)?));
    let gave_up = Arc::new(AtomicBool::new(false));

    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH]).map_err(SessionError::Setup)?;
    let signals_handle = signals.handle();
    {
        let writer = writer.clone();
        let gave_up = gave_up.clone();
        let stream = stream.try_clone().map_err(SessionError::Setup)?;
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut interrupts: Vec<Instant> = Vec::new();
                for sig in signals.forever() {
                    let frame = match sig {
                        SIGWINCH if tty => match term::size_of(io::stdin().as_fd()) {
                            Some(size) => Frame::json(RESIZE, &size),
                            None => continue,
                        },
                        SIGWINCH => continue,
                        other => {
                            if other == SIGINT {
                                interrupts.retain(|t| t.elapsed() < Duration::from_secs(2));
                                interrupts.push(Instant::now());
                                if interrupts.len() >= 3 {
                                    gave_up.store(true, Ordering::Release);
                                    let _ = stream.shutdown(std::net::Shutdown::Both);
                                    return;
                                }
                            }
                            let name = match other {
                                SIGINT => "INT",
                                SIGTERM => "TERM",
                                SIGHUP => "HUP",
                                _ => "QUIT",
                            };
                            Frame::json(
                                SIGNAL,
                                &SignalMsg {
                                    signal: name.into(),
                                },
                            )
                        }
                    };
                    if send(&writer, &frame).is_err() {
                        return;
                    }
                }
            })
            .map_err(SessionError::Setup)?;
    }
    {
        let writer = writer.clone();
        thread::Builder::new()
            .name("stdin".into())
            .spawn(move || pump_stdin(&writer))
            .map_err(SessionError::Setup)?;
    }

    let result = receive(&stream, &mut decoder);
    signals_handle.close();
    drop(raw);
    if gave_up.load(Ordering::Acquire) {
        return Err(SessionError::Interrupted);
    }
    result
}

/// stdin to the guest until its end (then StdinEof) or the session's.
fn pump_stdin(writer: &Writer) {
    let mut buf = vec![0u8; MAX_DATA];
    let mut stdin = io::stdin().lock();
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        let sent = if n == 0 {
            send(
                writer,
                &Frame {
                    kind: STDIN_EOF,
                    body: Vec::new(),
                },
            )
        } else {
            let mut w = writer.lock().unwrap_or_else(PoisonError::into_inner);
            wire::write_data(&mut *w, STDIN, &buf[..n])
        };
        if n == 0 || sent.is_err() {
            return;
        }
    }
}

/// The guest's output to ours, until Exit.
fn receive(stream: &hvsock::HvStream, decoder: &mut Decoder) -> Result<Exit, SessionError> {
    let mut conn = stream;
    let mut stdout_open = true;
    loop {
        let frame = decoder.expect_frame(&mut conn, "before the command ended")?;
        match frame.kind {
            STDOUT => {
                if stdout_open {
                    let mut out = io::stdout().lock();
                    if out
                        .write_all(&frame.body)
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        // Nobody reads our stdout any more: drop the rest, as a closed pipe would.
                        stdout_open = false;
                    }
                }
            }
            STDERR => {
                let mut err = io::stderr().lock();
                let _ = err.write_all(&frame.body).and_then(|()| err.flush());
            }
            EXIT => return Ok(frame.parse()?),
            kind => {
                return Err(WireError::Unexpected {
                    kind,
                    state: "from the agent during a session",
                }
                .into());
            }
        }
    }
}
