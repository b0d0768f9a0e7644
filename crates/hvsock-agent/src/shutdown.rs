//! The shutdown service (`hvsock-shutdown`, vsock port 50002): a clean power-off or reboot of
//! the guest through its init (`hvsock vm shutdown`).
//!
//! # Protocol, version 1
//!
//! After the Hello/Welcome of [`crate::wire`] (service `"shutdown"`):
//!
//! | kind | name | direction | body |
//! | --- | --- | --- | --- |
//! | `0x40` | Request | host → agent | JSON [`Request`]: `{"action": "poweroff"\|"reboot", "force": bool}` |
//! | `0x41` | Accepted | agent → host | JSON [`Accepted`]: how the agent goes about it |
//!
//! The agent answers Accepted (or Error: `disabled` when it has no way to shut this system
//! down, `other` when starting it failed), then starts the shutdown and sends nothing more:
//! the connection ends when the guest's init stops the agent or the guest stops. The host
//! reports the guest gone at that moment, or gives up after its timeout.
//!
//! # How the agent shuts down
//!
//! [`Action::Init`] (the default inside a VM, that is with the vsock transport): with systemd as
//! PID 1, `systemctl poweroff|reboot` (`--force` adds `--force`: services are killed rather
//! than stopped); with busybox init, the signal it takes (`SIGUSR2` power-off, `SIGTERM`
//! reboot); any other init, its `poweroff`/`reboot` commands. `--force` on a system without
//! systemd syncs the disks and calls `reboot(2)` at once. [`Action::Command`] runs the
//! configured commands instead (`hvsock-agent --poweroff-command CMD --reboot-command CMD`),
//! and [`Action::Exit`] just ends the agent (a sandbox whose agent is its main process ends with
//! it). In a sandbox (the provider transport) there is no default: the host's own init is not
//! the sandbox's, so the agent refuses until it is told what to do.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::wire::{self, Decoder, ErrorKind, Frame, RemoteError, WireError};

/// The protocol versions this build speaks.
pub const VERSIONS: (u16, u16) = (1, 1);
/// The service's name in Hello.
pub const SERVICE: &str = "shutdown";
/// Request (host → agent).
pub const REQUEST: u8 = 0x40;
/// Accepted (agent → host).
pub const ACCEPTED: u8 = 0x41;

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Power {
    /// Power off.
    Poweroff,
    /// Reboot.
    Reboot,
}

/// Request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Power off or reboot.
    pub action: Power,
    /// Skip the clean stop of services.
    #[serde(default)]
    pub force: bool,
}

/// Accepted's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// How the agent goes about it (`systemctl poweroff`, `busybox init (SIGUSR2)`, ...).
    pub how: String,
}

/// How this agent shuts its system down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Through the init system (see the module docs).
    Init,
    /// Run these shell commands.
    Command {
        /// For a power-off.
        poweroff: String,
        /// For a reboot.
        reboot: String,
    },
    /// End the agent itself.
    Exit,
    /// Refuse: this agent has no way to shut its system down.
    Refuse,
}

/// What PID 1 is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// systemd.
    Systemd,
    /// busybox init.
    Busybox,
    /// Something else, by its name.
    Other(String),
}

/// Looks at PID 1.
pub fn detect_init() -> Init {
    if Path::new("/run/systemd/system").is_dir() {
        return Init::Systemd;
    }
    let exe = std::fs::read_link("/proc/1/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let comm = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    if exe.ends_with("/systemd") || comm.trim() == "systemd" {
        Init::Systemd
    } else if exe.ends_with("/busybox") {
        Init::Busybox
    } else {
        Init::Other(if comm.trim().is_empty() {
            exe
        } else {
            comm.trim().to_owned()
        })
    }
}

fn run_detached(shell_command: &str) -> Result<(), RemoteError> {
    Command::new("/bin/sh")
        .args(["-c", shell_command])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
        .map_err(|e| RemoteError::new(ErrorKind::Other, format!("running {shell_command:?}: {e}")))
}

/// Plans the shutdown: what will be done, and the deed itself (run after Accepted is sent).
type Deed = Box<dyn FnOnce() + Send>;

fn plan(action: &Action, request: Request) -> Result<(String, Deed), RemoteError> {
    let reboot = request.action == Power::Reboot;
    match action {
        Action::Refuse => Err(RemoteError::new(
            ErrorKind::Disabled,
            "this agent has no shutdown action: it runs in a sandbox, whose host's init is not its own; start it with --poweroff-command/--reboot-command or --shutdown exit",
        )),
        Action::Exit => Ok((
            "ending the agent".into(),
            Box::new(|| std::process::exit(0)),
        )),
        Action::Command {
            poweroff,
            reboot: reboot_cmd,
        } => {
            let cmd = if reboot {
                reboot_cmd.clone()
            } else {
                poweroff.clone()
            };
            Ok((
                cmd.clone(),
                Box::new(move || {
                    if let Err(e) = run_detached(&cmd) {
                        tracing::error!("shutdown: {}", e.message);
                    }
                }),
            ))
        }
        Action::Init => {
            let init = detect_init();
            if request.force && init != Init::Systemd {
                let how = if reboot {
                    "reboot(2) now"
                } else {
                    "power-off with reboot(2) now"
                };
                return Ok((
                    how.into(),
                    Box::new(move || {
                        rustix::fs::sync();
                        let cmd = if reboot {
                            rustix::system::RebootCommand::Restart
                        } else {
                            rustix::system::RebootCommand::PowerOff
                        };
                        if let Err(e) = rustix::system::reboot(cmd) {
                            tracing::error!("shutdown: reboot(2) failed: {e}");
                        }
                    }),
                ));
            }
            match init {
                Init::Systemd => {
                    let verb = if reboot { "reboot" } else { "poweroff" };
                    let force = if request.force { " --force" } else { "" };
                    let cmd = format!("systemctl {verb}{force}");
                    Ok((
                        cmd.clone(),
                        Box::new(move || {
                            if let Err(e) = run_detached(&cmd) {
                                tracing::error!("shutdown: {}", e.message);
                            }
                        }),
                    ))
                }
                Init::Busybox => {
                    let (sig, name) = if reboot {
                        (rustix::process::Signal::TERM, "SIGTERM")
                    } else {
                        (rustix::process::Signal::USR2, "SIGUSR2")
                    };
                    Ok((
                        format!("busybox init ({name} to PID 1)"),
                        Box::new(move || {
                            if let Some(one) = rustix::process::Pid::from_raw(1) {
                                if let Err(e) = rustix::process::kill_process(one, sig) {
                                    tracing::error!("shutdown: signalling init: {e}");
                                }
                            }
                        }),
                    ))
                }
                Init::Other(name) => {
                    let cmd = if reboot { "reboot" } else { "poweroff" };
                    if !["/sbin", "/usr/sbin", "/bin", "/usr/bin"]
                        .iter()
                        .any(|d| Path::new(d).join(cmd).exists())
                    {
                        return Err(RemoteError::new(
                            ErrorKind::Disabled,
                            format!(
                                "PID 1 is {name:?}, neither systemd nor busybox init, and there is no {cmd} command; start the agent with --{cmd}-command"
                            ),
                        ));
                    }
                    Ok((
                        cmd.into(),
                        Box::new(move || {
                            if let Err(e) = run_detached(cmd) {
                                tracing::error!("shutdown: {}", e.message);
                            }
                        }),
                    ))
                }
            }
        }
    }
}

/// Serves one request on `stream` with `action`; returns what was done.
pub fn serve(stream: &hvsock::HvStream, action: &Action) -> Result<String, WireError> {
    let mut conn = stream;
    let mut decoder = Decoder::default();
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let result = (|| {
        wire::server_hello(&mut conn, &mut decoder, SERVICE, VERSIONS)?;
        let frame = decoder.expect_frame(&mut conn, "before sending its request")?;
        if frame.kind != REQUEST {
            return Err(WireError::Unexpected {
                kind: frame.kind,
                state: "while waiting for a shutdown Request",
            });
        }
        frame.parse::<Request>()
    })();
    let request = match result {
        Ok(r) => r,
        Err(e) => {
            wire::send_error(&mut conn, &e);
            return Err(e);
        }
    };
    let (how, deed) = match plan(action, request) {
        Ok(planned) => planned,
        Err(refusal) => {
            wire::write_frame(&mut conn, &refusal.frame())?;
            return Err(WireError::Refused(refusal));
        }
    };
    wire::write_frame(
        &mut conn,
        &Frame::json(ACCEPTED, &Accepted { how: how.clone() }),
    )?;
    // Let Accepted leave before the system starts going down.
    std::thread::sleep(Duration::from_millis(200));
    tracing::warn!(
        "shutdown ({:?}, force {}): {how}",
        request.action,
        request.force
    );
    deed();
    // Keep the connection until the host or the system ends it: its end is the host's sign.
    let _ = stream.set_read_timeout(None);
    let _ = decoder.read_frame(&mut conn);
    Ok(how)
}

/// What the host saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    /// How the agent went about it.
    pub how: String,
    /// How long after Accepted the connection ended.
    pub after: Duration,
}

/// Why the host's shutdown failed.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// The agent refused or the protocol failed.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The guest accepted but is still there.
    #[error(
        "the guest accepted the shutdown ({how}) but its agent is still there after {timeout:?}"
    )]
    StillUp {
        /// How the agent went about it.
        how: String,
        /// The timeout.
        timeout: Duration,
    },
}

/// Asks the agent on `stream` to shut down, and waits up to `timeout` for it to go.
pub fn request(
    stream: &hvsock::HvStream,
    request: Request,
    timeout: Duration,
) -> Result<Gone, ShutdownError> {
    let mut conn = stream;
    let mut decoder = Decoder::default();
    wire::client_hello(&mut conn, &mut decoder, SERVICE, VERSIONS)?;
    wire::write_frame(&mut conn, &Frame::json(REQUEST, &request))?;
    let frame = decoder.expect_frame(&mut conn, "before answering the shutdown")?;
    if frame.kind != ACCEPTED {
        return Err(WireError::Unexpected {
            kind: frame.kind,
            state: "in answer to a shutdown Request",
        }
        .into());
    }
    let accepted: Accepted = frame.parse()?;
    let since = Instant::now();
    loop {
        let left = timeout.saturating_sub(since.elapsed());
        if left.is_zero() {
            return Err(ShutdownError::StillUp {
                how: accepted.how,
                timeout,
            });
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(WireError::from)?;
        match decoder.read_frame(&mut conn) {
            // The end of the connection, however it comes, is the guest going.
            Ok(None) | Err(WireError::Truncated) => break,
            Err(WireError::Io(e))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(WireError::Io(_)) => continue,
            Ok(Some(frame)) => {
                return Err(WireError::Unexpected {
                    kind: frame.kind,
                    state: "after a shutdown was accepted",
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Gone {
        how: accepted.how,
        after: since.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sandbox_agent_without_an_action_refuses() {
        let e = plan(
            &Action::Refuse,
            Request {
                action: Power::Poweroff,
                force: false,
            },
        )
        .err()
        .expect("refused");
        assert_eq!(e.kind, ErrorKind::Disabled);
    }

    #[test]
    fn commands_are_chosen_by_action() {
        let action = Action::Command {
            poweroff: "echo off".into(),
            reboot: "echo again".into(),
        };
        let planned = plan(
            &action,
            Request {
                action: Power::Reboot,
                force: true,
            },
        );
        let Ok((how, _)) = planned else {
            panic!("a command action is always planned");
        };
        assert_eq!(how, "echo again");
    }
}
