//! [`CliError`]: why a command failed, as the one line `hvsock: <what was being done>: <why>`
//! that `main.rs` prints before it exits 1.
//!
//! Commands never print their errors nor exit: they return a [`CliError`], and `main.rs`
//! alone turns it into the process's exit status (0 without a word when the failure is only
//! that stdout was closed by its reader, see [`CliError::is_stdout_closed`]).

use std::io;

use crate::admin_client::AdminError;
use crate::copy::CopyError;
use crate::resolve::ResolveError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An admin API request failed.
    #[error("{doing}: {source}")]
    Admin {
        /// What was being done (`adding service "echo"`).
        doing: String,
        /// Why it failed.
        #[source]
        source: AdminError,
    },
    /// An address or partition could not be resolved.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// A socket operation failed.
    #[error("{doing}: {source}")]
    Socket {
        /// What was being done (`connecting to parent:echo`).
        doing: String,
        /// The library's error, written for people.
        #[source]
        source: io::Error,
    },
    /// Copying data failed.
    #[error(transparent)]
    Copy(#[from] CopyError),
    /// Writing the command's output failed.
    #[error("writing the output: {0}")]
    Output(#[from] io::Error),
    /// The Hyper-V registry (Windows) refused or failed.
    #[cfg(any(windows, test))]
    #[error(transparent)]
    Registry(#[from] crate::hyperv_registry::RegistryError),
    /// A command or option that has no meaning on this platform.
    #[error("{what} is not available on {}: {why}", std::env::consts::OS)]
    Unsupported {
        /// The command or option.
        what: &'static str,
        /// Why, and what to do instead.
        why: &'static str,
    },
    /// A command run in a guest (`hvsock exec`) ended with a status other than 0, or could not
    /// run: `main.rs` exits with `status` (after `message` on stderr, if any) instead of 1.
    #[error("{}", message.as_deref().unwrap_or("the command failed"))]
    Exited {
        /// The exit status (a signal's is 128 + N; 255 when hvsock itself failed).
        status: u8,
        /// What hvsock has to say, if anything (nothing when the command merely failed).
        message: Option<String>,
    },
    /// Writing a file failed.
    #[error("{doing} {}: {source}", path.display())]
    File {
        /// What was being done (`writing the manual page`).
        doing: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl CliError {
    /// A command or flag that means nothing on this platform, and why.
    pub fn unsupported(what: &'static str, why: &'static str) -> CliError {
        CliError::Unsupported { what, why }
    }

    /// A command elsewhere ended with `status` (clamped to 0..=255), saying `message` if any.
    pub fn exited(status: i32, message: Option<String>) -> CliError {
        CliError::Exited {
            status: u8::try_from(status).unwrap_or(255),
            message,
        }
    }

    /// Whether the failure is only that stdout was closed by its reader (`hvsock … | head`),
    /// which is not worth a message.
    pub fn is_stdout_closed(&self) -> bool {
        match self {
            CliError::Output(e) => e.kind() == io::ErrorKind::BrokenPipe,
            CliError::Copy(e) => e.is_stdout_closed(),
            _ => false,
        }
    }
}

/// Adds what was being done to an admin API error.
pub trait Doing<T> {
    /// Wraps the error with `doing()`.
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, CliError>;
}

impl<T> Doing<T> for Result<T, AdminError> {
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, CliError> {
        self.map_err(|source| CliError::Admin {
            doing: doing(),
            source,
        })
    }
}
