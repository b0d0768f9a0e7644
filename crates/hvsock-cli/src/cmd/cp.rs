//! `hvsock cp [-r] SRC DST`: copy files and directories in and out of a guest or sandbox
//! through its agent's file copy service (`hvsock_agent::files`), one side written `VM:/path`.
//!
//! As cp: a directory needs `-r`; if DST is an existing directory the copy goes inside it,
//! else DST is the new name. Modes are kept, every file is checked by SHA-256 end to end, and
//! on a terminal a progress bar shows copies of 4 MiB or more. Errors name the side and the
//! path: a missing path, no space, permission.

use std::io::Write;
#[cfg(target_os = "linux")]
use std::io::{self, IsTerminal};
use std::path::PathBuf;

use clap::Args;
#[cfg(target_os = "linux")]
use hvsock_agent::files::{self, CopyError};
#[cfg(target_os = "linux")]
use hvsock_agent::services::FILES;

use super::Run;
use crate::context::Context;
use crate::error::CliError;

/// `hvsock cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copy directories and what they hold.
    #[arg(short, long)]
    pub recursive: bool,
    /// Say what was copied.
    #[arg(short, long)]
    pub verbose: bool,
    /// The source: a local path, or VM:/path in a guest.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// The destination: a local path, or VM:/path in a guest.
    #[arg(value_name = "DST")]
    pub dst: String,
}

impl Run for CpArgs {
    #[cfg_attr(not(target_os = "linux"), allow(unused_variables))]
    fn run(self, ctx: &Context, _out: &mut dyn Write) -> Result<(), CliError> {
        #[cfg(target_os = "linux")]
        return run(ctx, self);
        #[cfg(not(target_os = "linux"))]
        Err(CliError::unsupported(
            "`hvsock cp`",
            "the integration services' clients (hvsock-agent's protocols) are built for Linux only",
        ))
    }
}

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// A local path.
    Local(PathBuf),
    /// A partition and an absolute path in it.
    Remote(String, String),
}

/// Parses `VM:/path` (the path must be absolute) or a local path. A local path with a colon
/// can be written `./a:b`.
pub fn parse_side(s: &str) -> Side {
    match s.split_once(':') {
        Some((vm, path)) if !vm.is_empty() && !vm.contains('/') && path.starts_with('/') => {
            Side::Remote(vm.to_owned(), path.to_owned())
        }
        _ => Side::Local(PathBuf::from(s)),
    }
}

#[cfg(target_os = "linux")]
fn copy_error(doing: String, e: CopyError) -> CliError {
    let kind = match &e {
        CopyError::Fs { kind, .. } => *kind,
        CopyError::Remote(r) => r.kind,
        CopyError::Wire(_) => hvsock_agent::wire::ErrorKind::Protocol,
    };
    let io_kind = match kind {
        hvsock_agent::wire::ErrorKind::NotFound => io::ErrorKind::NotFound,
        hvsock_agent::wire::ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
        hvsock_agent::wire::ErrorKind::NoSpace => io::ErrorKind::StorageFull,
        _ => io::ErrorKind::Other,
    };
    CliError::Socket {
        doing,
        source: io::Error::new(io_kind, e.to_string()),
    }
}

#[cfg(target_os = "linux")]
/// Runs `cp`.
pub fn run(ctx: &Context, args: CpArgs) -> Result<(), CliError> {
    let progress = io::stderr().is_terminal();
    let say = |m: String| {
        if args.verbose {
            let _ = writeln!(io::stderr(), "hvsock: {m}");
        }
    };
    match (parse_side(&args.src), parse_side(&args.dst)) {
        (Side::Local(src), Side::Remote(vm, dest)) => {
            let stream = super::agent::connect(ctx, &vm, FILES)?;
            let end = files::client::put(&stream, &src, &dest, args.recursive, progress).map_err(
                |e| {
                    let side = if matches!(e, CopyError::Remote(_)) {
                        format!(" (in {vm})")
                    } else {
                        String::new()
                    };
                    copy_error(format!("copying {} to {vm}:{dest}{side}", src.display()), e)
                },
            )?;
            say(format!(
                "copied {} files, {} bytes to {vm}:{dest}{}",
                end.files,
                end.bytes,
                skipped(end.skipped)
            ));
            Ok(())
        }
        (Side::Remote(vm, src), Side::Local(dest)) => {
            let stream = super::agent::connect(ctx, &vm, FILES)?;
            let (root, end) = files::client::get(&stream, &src, &dest, args.recursive, progress)
                .map_err(|e| {
                    let side = if matches!(e, CopyError::Remote(_)) {
                        format!(" (in {vm})")
                    } else {
                        String::new()
                    };
                    copy_error(format!("copying {vm}:{src} to {}{side}", dest.display()), e)
                })?;
            say(format!(
                "copied {} files, {} bytes to {}{}",
                end.files,
                end.bytes,
                root.display(),
                skipped(end.skipped)
            ));
            Ok(())
        }
        (Side::Remote(..), Side::Remote(..)) => Err(CliError::Socket {
            doing: "copying between two partitions".into(),
            source: io::Error::new(
                io::ErrorKind::Unsupported,
                "one side must be local: copy out of one partition, then into the other",
            ),
        }),
        (Side::Local(_), Side::Local(_)) => Err(CliError::Socket {
            doing: "copying".into(),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither side is VM:/path: use cp for local copies",
            ),
        }),
    }
}

#[cfg(target_os = "linux")]
fn skipped(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} devices, sockets or FIFOs skipped)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_vm_colon_absolute_path_or_local() {
        assert_eq!(
            parse_side("vm1:/etc/hosts"),
            Side::Remote("vm1".into(), "/etc/hosts".into())
        );
        assert_eq!(parse_side("./a:/b"), Side::Local("./a:/b".into()));
        assert_eq!(parse_side("a:b"), Side::Local("a:b".into()));
        assert_eq!(parse_side("/tmp/x"), Side::Local("/tmp/x".into()));
    }
}
