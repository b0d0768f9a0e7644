//! `SIGUSR2`: hvsockd executes its binary again in place (same path, same pid), handing every
//! socket it holds to the new program.
//!
//! ```text
//!  check:   <path> --handover-version  →  "hv1"        (in a child, at most CHECK_TIMEOUT)
//!  list:    memfd "hvsockd-handover": "<fd> <name>\n" per socket, from the Holder
//!  clear close-on-exec on each listed socket and the memfd
//!  execve(<path>, same arguments, HVSOCKD_HANDOVER=<pid>:<memfd>)
//! ```
//!
//! `<path>` is where the binary was when hvsockd started (`/proc/self/exe` then), so that a
//! package upgrade that replaced the file is picked up. The check runs first, in a child: a
//! binary that is missing, not executable, broken, or an hvsockd that does not read this
//! hand-over format (an older one) fails it, and hvsockd logs why and keeps serving. If
//! `execve` itself fails, close-on-exec is set back and hvsockd keeps serving too. Nothing is
//! changed before the `execve`: the runtime has one thread, so no session moves between the
//! list and the exec.
//!
//! What does not cross: admin API requests in flight (their connections close; the CLI
//! reports it), the lock file (the new program takes it again), and a VM's connection that
//! waits in hvsockd for a full listener backlog (it is closed; the guest sees a reset).

use std::ffi::OsString;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::io::FdFlags;

use super::Holder;
use super::intake::HANDOVER_VAR;
use super::names::PREFIX;

/// How long the new binary has to answer `--handover-version`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What `--handover-version` prints: the format of [`super::names`], without its dot.
pub fn format_version() -> &'static str {
    PREFIX.trim_end_matches('.')
}

/// Why an upgrade did not happen (hvsockd keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum ReexecError {
    /// The binary could not be run.
    #[error("cannot run {path}: {source}")]
    Run {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The binary ran but failed the check.
    #[error("{path} --handover-version {what}")]
    Check {
        /// The binary.
        path: PathBuf,
        /// What it did.
        what: String,
    },
    /// The hand-over could not be prepared.
    #[error("preparing the hand-over: {0}")]
    Prepare(#[source] io::Error),
    /// `execve` failed.
    #[error("executing {path}: {source}")]
    Exec {
        /// The binary.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The binary's path, as at start: read it first thing (a later upgrade replaces the file, and
/// `/proc/self/exe` then ends in " (deleted)").
pub fn own_path() -> io::Result<PathBuf> {
    let path = std::fs::read_link("/proc/self/exe").or_else(|_| std::env::current_exe())?;
    use std::os::unix::ffi::OsStrExt;
    Ok(
        match path.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
            Some(head) => PathBuf::from(std::ffi::OsStr::from_bytes(head)),
            None => path,
        },
    )
}

/// Runs `path --handover-version` in a child and checks that it speaks this format.
pub fn check(path: &Path) -> Result<(), ReexecError> {
    let mut child = Command::new(path)
        .arg("--handover-version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove(HANDOVER_VAR)
        .env_remove("NOTIFY_SOCKET")
        .spawn()
        .map_err(|source| ReexecError::Run {
            path: path.to_owned(),
            source,
        })?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < CHECK_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ReexecError::Check {
                    path: path.to_owned(),
                    what: format!("did not answer within {CHECK_TIMEOUT:?}"),
                });
            }
            Err(source) => {
                return Err(ReexecError::Run {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    };
    let output = child
        .wait_with_output()
        .map_err(|source| ReexecError::Run {
            path: path.to_owned(),
            source,
        })?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let err = err.lines().next().unwrap_or_default();
        return Err(ReexecError::Check {
            path: path.to_owned(),
            what: format!(
                "failed ({status}): {err}; is it an hvsockd that hands over (an older one cannot)?"
            ),
        });
    }
    if said != format_version() {
        return Err(ReexecError::Check {
            path: path.to_owned(),
            what: format!(
                "says {said:?}, but this hvsockd hands over in {:?}",
                format_version()
            ),
        });
    }
    Ok(())
}

fn set_cloexec(fd: impl AsFd, on: bool) -> io::Result<()> {
    let flags = rustix::io::fcntl_getfd(&fd)?;
    let flags = if on {
        flags | FdFlags::CLOEXEC
    } else {
        flags - FdFlags::CLOEXEC
    };
    Ok(rustix::io::fcntl_setfd(&fd, flags)?)
}

/// Executes `path` with `args` in place, handing over every socket `holder` holds. Returns only
/// if that failed, after undoing what it did. Call it after [`check`], from the runtime's only
/// thread, without an `.await` in between the two.
pub fn exec(holder: &Holder, path: &Path, args: &[OsString]) -> ReexecError {
    let held = holder.snapshot();
    let mut list = String::new();
    for (socket, name) in &held {
        list.push_str(&format!("{} {name}\n", socket.as_fd().as_raw_fd()));
    }
    let memfd = match rustix::fs::memfd_create("hvsockd-handover", rustix::fs::MemfdFlags::CLOEXEC)
    {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return ReexecError::Prepare(e.into()),
    };
    if let Err(e) = (&memfd).write_all(list.as_bytes()) {
        return ReexecError::Prepare(e);
    }
    if let Err(e) = rustix::fs::seek(&memfd, rustix::fs::SeekFrom::Start(0)) {
        return ReexecError::Prepare(e.into());
    }
    let mut cleared = Vec::with_capacity(held.len() + 1);
    let mut failed = None;
    for fd in held
        .iter()
        .map(|(s, _)| s.as_fd())
        .chain(std::iter::once(memfd.as_fd()))
    {
        match set_cloexec(fd, false) {
            Ok(()) => cleared.push(fd),
            Err(e) => {
                failed = Some(ReexecError::Prepare(e));
                break;
            }
        }
    }
    let error = match failed {
        Some(e) => e,
        None => {
            let source = Command::new(path)
                .args(args)
                .env(
                    HANDOVER_VAR,
                    format!("{}:{}", std::process::id(), memfd.as_raw_fd()),
                )
                .exec();
            ReexecError::Exec {
                path: path.to_owned(),
                source,
            }
        }
    };
    for fd in cleared {
        let _ = set_cloexec(fd, true);
    }
    error
}
