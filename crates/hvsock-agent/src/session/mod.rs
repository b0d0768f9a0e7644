//! The VM session service (`hvsock-session`, vsock port 50000): run a command in the guest,
//! with its stdin, stdout and stderr kept apart, or on a pseudo-terminal; PowerShell Direct
//! for Linux guests.
//!
//! # Protocol, version 1
//!
//! After the Hello/Welcome of [`crate::wire`] (service `"session"`):
//!
//! | kind | name | direction | body |
//! | --- | --- | --- | --- |
//! | `0x10` | Start | host → agent, once | JSON [`Start`] |
//! | `0x11` | Started | agent → host, once | JSON [`Started`], or an Error instead |
//! | `0x12` | Stdin | host → agent | raw bytes (≤ 64 KiB) |
//! | `0x13` | StdinEof | host → agent, at most once | empty |
//! | `0x14` | Signal | host → agent | JSON [`SignalMsg`] (`"INT"`, `"TERM"`, ...) |
//! | `0x15` | Resize | host → agent | JSON [`WinSize`] |
//! | `0x16` | Stdout | agent → host | raw bytes (≤ 64 KiB) |
//! | `0x17` | Stderr | agent → host | raw bytes (≤ 64 KiB) |
//! | `0x18` | Exit | agent → host, last | JSON [`Exit`] |
//!
//! The agent answers Start with Started once the command runs, or with an Error
//! (`not_found`: no such command, which the host turns into exit status 127;
//! `permission_denied`: not executable or not allowed, 126; `invalid`: a bad request, e.g. an
//! unknown user). It then relays until the command has exited and its output has ended (or,
//! if something else keeps the output open, 2 s after it exited), sends Exit and closes.
//! StdinEof closes the command's stdin (on a terminal it types the EOF character, Ctrl-D).
//! Signal goes to the command's process group (on a terminal, the terminal's foreground
//! group); Resize sets the terminal's size, which sends the foreground group `SIGWINCH`.
//! Data frames after StdinEof, a second Start, or an agent-to-host kind from the host end the
//! session with a protocol Error. If the host goes away, the agent sends the process group
//! `SIGHUP` and `SIGTERM`, and `SIGKILL` 3 s later.
//!
//! The command runs as `user` (default: the agent's own, root), in its own session (with a
//! terminal) or process group, in `cwd` (default: the user's home, else `/`), with a fresh
//! environment: `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`, `TERM` (with a terminal), then
//! the request's `env`. With `login` and no `argv`, it is the user's login shell (`-sh`).

#[cfg(target_os = "linux")]
pub mod client;
#[cfg(target_os = "linux")]
pub mod server;

use serde::{Deserialize, Serialize};

use crate::wire::{Frame, WireError};

/// The protocol versions this build speaks.
pub const VERSIONS: (u16, u16) = (1, 1);
/// The service's name in Hello.
pub const SERVICE: &str = "session";

/// Start (host → agent).
pub const START: u8 = 0x10;
/// Started (agent → host).
pub const STARTED: u8 = 0x11;
/// Stdin (host → agent).
pub const STDIN: u8 = 0x12;
/// StdinEof (host → agent).
pub const STDIN_EOF: u8 = 0x13;
/// Signal (host → agent).
pub const SIGNAL: u8 = 0x14;
/// Resize (host → agent).
pub const RESIZE: u8 = 0x15;
/// Stdout (agent → host).
pub const STDOUT: u8 = 0x16;
/// Stderr (agent → host).
pub const STDERR: u8 = 0x17;
/// Exit (agent → host).
pub const EXIT: u8 = 0x18;

/// Most arguments in a Start.
pub const MAX_ARGS: usize = 4096;
/// Most environment variables in a Start.
pub const MAX_ENV: usize = 1024;

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Start {
    /// The command and its arguments (looked up in `PATH`); empty with `login`.
    #[serde(default)]
    pub argv: Vec<String>,
    /// Extra environment variables, set after the defaults.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The working directory.
    #[serde(default)]
    pub cwd: Option<String>,
    /// The user to run as (a name or a numeric uid).
    #[serde(default)]
    pub user: Option<String>,
    /// A pseudo-terminal, if wanted.
    #[serde(default)]
    pub tty: Option<Tty>,
    /// The user's login shell when `argv` is empty.
    #[serde(default)]
    pub login: bool,
}

/// A terminal request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tty {
    /// `TERM` in the guest.
    pub term: String,
    /// Its size.
    pub size: WinSize,
}

/// A terminal's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WinSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Default for WinSize {
    fn default() -> WinSize {
        WinSize { rows: 24, cols: 80 }
    }
}

/// Started (agent → host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The command's pid in the guest.
    pub pid: i32,
}

/// Signal (host → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalMsg {
    /// Its name without `SIG`.
    pub signal: String,
}

/// The signals a host may send, by name.
pub const SIGNALS: [&str; 11] = [
    "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "TSTP", "WINCH",
];

/// How the command ended (agent → host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Its exit status, if it exited.
    #[serde(default)]
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// That signal's name (`KILL`).
    #[serde(default)]
    pub signal_name: Option<String>,
    /// Whether it dumped core.
    #[serde(default)]
    pub core_dumped: bool,
}

impl Exit {
    /// The exit status a shell would give: the code, or 128 + the signal.
    pub fn shell_status(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(signal)) => 128 + signal,
            (None, None) => 255,
        }
    }
}

impl Start {
    /// Checks the request's shape (sizes, names) before anything runs.
    pub fn validate(&self) -> Result<(), WireError> {
        let invalid = |m: String| Err(WireError::Invalid(m));
        if self.argv.is_empty() && !self.login {
            return invalid("Start has no command (argv is empty and login is false)".into());
        }
        if self.argv.len() > MAX_ARGS || self.env.len() > MAX_ENV {
            return invalid(format!(
                "Start has {} arguments and {} variables; the limits are {MAX_ARGS} and {MAX_ENV}",
                self.argv.len(),
                self.env.len()
            ));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return invalid("an argument holds a NUL byte".into());
        }
        if let Some(first) = self.argv.first() {
            if first.is_empty() {
                return invalid("the command name is empty".into());
            }
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return invalid(format!("{k:?} is not a valid environment variable name"));
            }
        }
        if let Some(cwd) = &self.cwd {
            if cwd.is_empty() || cwd.contains('\0') {
                return invalid("the working directory is empty or holds a NUL byte".into());
            }
        }
        if let Some(user) = &self.user {
            if user.is_empty() || user.contains(['\0', ':', '/']) {
                return invalid(format!("{user:?} is not a user name"));
            }
        }
        if let Some(tty) = &self.tty {
            if tty.term.len() > 64 || tty.term.contains('\0') {
                return invalid("TERM is longer than 64 bytes or holds a NUL byte".into());
            }
        }
        Ok(())
    }
}

/// A host-to-agent message after Start, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMsg {
    /// Bytes for stdin.
    Stdin(Vec<u8>),
    /// The end of stdin.
    StdinEof,
    /// A signal, by name (one of [`SIGNALS`]).
    Signal(String),
    /// A new terminal size.
    Resize(WinSize),
}

/// Parses a host-to-agent frame that follows Start.
pub fn parse_host_frame(frame: Frame) -> Result<HostMsg, WireError> {
    match frame.kind {
        STDIN => Ok(HostMsg::Stdin(frame.body)),
        STDIN_EOF if frame.body.is_empty() => Ok(HostMsg::StdinEof),
        STDIN_EOF => Err(WireError::Invalid("StdinEof has a body".into())),
        SIGNAL => {
            let msg: SignalMsg = frame.parse()?;
            if SIGNALS.contains(&msg.signal.as_str()) {
                Ok(HostMsg::Signal(msg.signal))
            } else {
                Err(WireError::Invalid(format!(
                    "signal {:?} is not one a host may send ({})",
                    msg.signal,
                    SIGNALS.join(", ")
                )))
            }
        }
        RESIZE => {
            let size: WinSize = frame.parse()?;
            if size.rows == 0 || size.cols == 0 {
                return Err(WireError::Invalid(format!(
                    "a terminal of {}x{} is not a size",
                    size.cols, size.rows
                )));
            }
            Ok(HostMsg::Resize(size))
        }
        kind => Err(WireError::Unexpected {
            kind,
            state: "from the host during a session",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_validated_before_anything_runs() {
        let ok = Start {
            argv: vec!["true".into()],
            ..Start::default()
        };
        assert!(ok.validate().is_ok());
        let login = Start {
            login: true,
            ..Start::default()
        };
        assert!(login.validate().is_ok());
        for bad in [
            Start::default(),
            Start {
                argv: vec![String::new()],
                ..Start::default()
            },
            Start {
                argv: vec!["a\0b".into()],
                ..Start::default()
            },
            Start {
                argv: vec!["x".into()],
                env: vec![("A=B".into(), "c".into())],
                ..Start::default()
            },
            Start {
                argv: vec!["x".into()],
                user: Some("../root".into()),
                ..Start::default()
            },
            Start {
                argv: vec!["x".into(); MAX_ARGS + 1],
                ..Start::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_frames_parse_or_end_the_session() {
        let f = |kind, body: &[u8]| Frame {
            kind,
            body: body.to_vec(),
        };
        assert_eq!(
            parse_host_frame(f(STDIN, b"ab")).ok(),
            Some(HostMsg::Stdin(b"ab".to_vec()))
        );
        assert_eq!(
            parse_host_frame(f(SIGNAL, br#"{"signal":"INT"}"#)).ok(),
            Some(HostMsg::Signal("INT".into()))
        );
        assert_eq!(
            parse_host_frame(f(RESIZE, br#"{"rows":50,"cols":132}"#)).ok(),
            Some(HostMsg::Resize(WinSize {
                rows: 50,
                cols: 132
            }))
        );
        for bad in [
            f(SIGNAL, br#"{"signal":"SEGV"}"#),
            f(RESIZE, br#"{"rows":0,"cols":1}"#),
            f(RESIZE, b"{"),
            f(STDIN_EOF, b"x"),
            f(STDOUT, b""),
            f(START, b"{}"),
        ] {
            assert!(parse_host_frame(bad.clone()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shell_status_is_the_code_or_128_plus_the_signal() {
        let exit = |code, signal| Exit {
            code,
            signal,
            signal_name: None,
            core_dumped: false,
        };
        assert_eq!(exit(Some(3), None).shell_status(), 3);
        assert_eq!(exit(None, Some(9)).shell_status(), 137);
    }
}
