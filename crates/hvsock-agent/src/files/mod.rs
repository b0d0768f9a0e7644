//! The file copy service (`hvsock-files`, vsock port 50001): files and directory trees in and
//! out of the guest (`hvsock cp`), with their modes, each file checked end to end by SHA-256.
//!
//! # Protocol, version 1
//!
//! After the Hello/Welcome of [`crate::wire`] (service `"files"`), the host sends one request:
//!
//! | kind | name | direction | body |
//! | --- | --- | --- | --- |
//! | `0x20` | Put | host → agent | JSON [`Put`]: copy into the guest |
//! | `0x21` | Get | host → agent | JSON [`Get`]: copy out of the guest |
//! | `0x22` | Ready | agent → host | `{}`: the destination of a Put is usable |
//!
//! then one side sends a *tree* and the other receives it (Put: host → agent after Ready;
//! Get: agent → host at once):
//!
//! | kind | name | body |
//! | --- | --- | --- |
//! | `0x30` | Total | JSON [`Total`]: what follows, for progress; first |
//! | `0x31` | Dir | JSON [`Entry`] (no size) |
//! | `0x32` | File | JSON [`Entry`], then its Data frames, then FileEnd |
//! | `0x33` | Data | raw bytes (≤ 64 KiB) of the current file |
//! | `0x34` | FileEnd | JSON [`FileEnd`]: the SHA-256 of what was sent |
//! | `0x35` | Symlink | JSON [`Entry`] with its target |
//! | `0x36` | End | JSON [`End`]: counts; last |
//! | `0x37` | Done | JSON [`End`]: the receiver's answer, counts of what it wrote |
//!
//! Entry paths are relative to the copy's root, `/`-separated, each component a plain name
//! (no `.`, `..` or empty ones); the first entry is the root itself (path `""`), and every
//! later entry's parent must be a Dir sent before it, so a tree cannot write outside its
//! destination, nor through a symlink it made. A file's Data adds up to exactly its size.
//! The receiver writes each file to a temporary name beside it, checks the hash, sets the mode
//! (the permission bits and setuid/setgid/sticky, `mode & 0o7777`) and renames it into place;
//! directories get their mode at the end. A failure on either side is an Error frame
//! (`not_found`, `permission_denied`, `no_space`, `exists`, `integrity`, ...) naming the path;
//! the receiver removes the file in progress and keeps what was complete, as cp does.
//!
//! Destination rules are cp's: if the destination is an existing directory, the copy goes
//! inside it under the source's name; otherwise it is the new name, whose parent must exist.
//! A directory needs `recursive`. Symlinks inside a tree are copied as symlinks; a symlink
//! named as the source is followed. Devices, sockets and FIFOs inside a tree are skipped and
//! counted in End.

#[cfg(target_os = "linux")]
pub mod client;
#[cfg(unix)]
pub mod recv;
#[cfg(unix)]
pub mod send;
#[cfg(target_os = "linux")]
pub mod server;

use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::wire::{ErrorKind, Frame, RemoteError, WireError};

/// The protocol versions this build speaks.
pub const VERSIONS: (u16, u16) = (1, 1);
/// The service's name in Hello.
pub const SERVICE: &str = "files";

/// Put (host → agent).
pub const PUT: u8 = 0x20;
/// Get (host → agent).
pub const GET: u8 = 0x21;
/// Ready (agent → host).
pub const READY: u8 = 0x22;
/// Total.
pub const TOTAL: u8 = 0x30;
/// Dir.
pub const DIR: u8 = 0x31;
/// File.
pub const FILE: u8 = 0x32;
/// Data.
pub const DATA: u8 = 0x33;
/// FileEnd.
pub const FILE_END: u8 = 0x34;
/// Symlink.
pub const SYMLINK: u8 = 0x35;
/// End.
pub const END: u8 = 0x36;
/// Done.
pub const DONE: u8 = 0x37;

/// The longest path the protocol carries, in bytes.
pub const MAX_PATH: usize = 4096;

/// What a tree's root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// Put's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    /// The destination in the guest (absolute).
    pub dest: String,
    /// The source's own name, used when `dest` is a directory.
    pub name: String,
    /// What the source is.
    pub kind: Kind,
}

/// Get's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Get {
    /// The source in the guest (absolute).
    pub path: String,
    /// Whether a directory may be copied.
    pub recursive: bool,
}

/// Total's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Total {
    /// What the root is.
    pub kind: Option<Kind>,
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// One entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its path relative to the root (`""`: the root).
    pub path: String,
    /// Its mode bits (`& 0o7777`); none for a symlink.
    #[serde(default)]
    pub mode: u32,
    /// A file's size.
    #[serde(default)]
    pub size: u64,
    /// A symlink's target.
    #[serde(default)]
    pub target: Option<String>,
}

/// FileEnd's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEnd {
    /// The SHA-256 of the file's bytes as sent, in hex.
    pub sha256: String,
}

/// End's and Done's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct End {
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Special files left out.
    #[serde(default)]
    pub skipped: u64,
}

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A file system operation failed, or a request cannot be done; the message names the
    /// path.
    #[error("{message}")]
    Fs {
        /// What kind of failure.
        kind: ErrorKind,
        /// What happened.
        message: String,
    },
    /// The peer reported a failure.
    #[error("{}", .0.message)]
    Remote(RemoteError),
    /// The connection or the protocol failed.
    #[error("{0}")]
    Wire(WireError),
}

impl From<WireError> for CopyError {
    fn from(e: WireError) -> CopyError {
        match e {
            WireError::Remote(r) => CopyError::Remote(r),
            e => CopyError::Wire(e),
        }
    }
}

impl CopyError {
    /// A file system failure of `doing` on `path`.
    pub fn io(doing: &str, path: &Path, e: &io::Error) -> CopyError {
        let kind = ErrorKind::of_io(e);
        let why = match kind {
            ErrorKind::NoSpace => "no space left on the device".to_owned(),
            ErrorKind::NotFound => "no such file or directory".to_owned(),
            ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        CopyError::Fs {
            kind,
            message: format!("{doing} {}: {why}", path.display()),
        }
    }

    /// A failure of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CopyError {
        CopyError::Fs {
            kind,
            message: message.into(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CopyError::Fs { kind, .. } => *kind,
            CopyError::Remote(r) => r.kind,
            CopyError::Wire(_) => ErrorKind::Protocol,
        }
    }

    /// The Error frame to tell the peer, if it is worth telling.
    pub fn to_remote(&self) -> Option<RemoteError> {
        match self {
            CopyError::Fs { kind, message } => Some(RemoteError::new(*kind, message.clone())),
            CopyError::Remote(_) => None,
            CopyError::Wire(e) => e.to_remote(),
        }
    }

    /// Sends the peer the Error frame, if any, ignoring a failure to send.
    pub fn tell(&self, writer: &mut impl io::Write) {
        if let Some(remote) = self.to_remote() {
            let _ = crate::wire::write_frame(writer, &remote.frame());
        }
    }
}

/// Checks a tree entry's relative path: `""` or plain components separated by `/`.
pub fn check_relative(path: &str) -> Result<(), WireError> {
    if path.len() > MAX_PATH || path.contains('\0') {
        return Err(WireError::Invalid(format!(
            "entry path of {} bytes is too long or holds a NUL byte",
            path.len()
        )));
    }
    if path.is_empty() {
        return Ok(());
    }
    for part in path.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err(WireError::Invalid(format!(
                "entry path {path:?} is not a plain relative path (empty, `.` or `..` component)"
            )));
        }
    }
    Ok(())
}

/// Checks a source's name (one plain component).
pub fn check_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
        return Err(WireError::Invalid(format!("{name:?} is not a file name")));
    }
    Ok(())
}

/// Checks an absolute guest path from the host.
pub fn check_absolute(path: &str) -> Result<(), WireError> {
    if !path.starts_with('/') || path.len() > MAX_PATH || path.contains('\0') {
        return Err(WireError::Invalid(format!(
            "{path:?} is not an absolute path (guest paths start with /)"
        )));
    }
    Ok(())
}

/// The hex form of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A parsed tree frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeMsg {
    /// Total.
    Total(Total),
    /// Dir.
    Dir(Entry),
    /// File.
    File(Entry),
    /// Data.
    Data(Vec<u8>),
    /// FileEnd.
    FileEnd(FileEnd),
    /// Symlink.
    Symlink(Entry),
    /// End.
    End(End),
}

/// Parses one frame of a tree, checking its fields.
pub fn parse_tree_frame(frame: Frame) -> Result<TreeMsg, WireError> {
    let entry = |frame: &Frame| -> Result<Entry, WireError> {
        let entry: Entry = frame.parse()?;
        check_relative(&entry.path)?;
        Ok(entry)
    };
    Ok(match frame.kind {
        TOTAL => TreeMsg::Total(frame.parse()?),
        DIR => TreeMsg::Dir(entry(&frame)?),
        FILE => TreeMsg::File(entry(&frame)?),
        DATA => TreeMsg::Data(frame.body),
        FILE_END => {
            let end: FileEnd = frame.parse()?;
            if end.sha256.len() != 64 || !end.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(WireError::Invalid(
                    "FileEnd's sha256 is not 64 hex digits".into(),
                ));
            }
            TreeMsg::FileEnd(end)
        }
        SYMLINK => {
            let e = entry(&frame)?;
            match &e.target {
                Some(t) if !t.is_empty() && t.len() <= MAX_PATH && !t.contains('\0') => {}
                _ => {
                    return Err(WireError::Invalid(format!(
                        "symlink {:?} has no valid target",
                        e.path
                    )));
                }
            }
            TreeMsg::Symlink(e)
        }
        END => TreeMsg::End(frame.parse()?),
        kind => {
            return Err(WireError::Unexpected {
                kind,
                state: "in a tree of files",
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_must_stay_inside_the_tree() {
        for ok in ["", "a", "a/b", "a.b/..c", ".hidden"] {
            assert!(check_relative(ok).is_ok(), "{ok:?}");
        }
        for bad in ["/a", "a/", "a//b", "..", "a/../b", "./a", "a/.", "a\0b"] {
            assert!(check_relative(bad).is_err(), "{bad:?}");
        }
        assert!(check_relative(&"a/".repeat(3000)).is_err());
        assert!(check_name("x").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_absolute("/x").is_ok());
        assert!(check_absolute("x").is_err());
    }

    #[test]
    fn tree_frames_are_checked() {
        let f = |kind, body: &str| Frame {
            kind,
            body: body.as_bytes().to_vec(),
        };
        assert!(parse_tree_frame(f(FILE, r#"{"path":"a","mode":420,"size":3}"#)).is_ok());
        assert!(parse_tree_frame(f(FILE, r#"{"path":"../a","mode":420,"size":3}"#)).is_err());
        assert!(parse_tree_frame(f(SYMLINK, r#"{"path":"l"}"#)).is_err());
        assert!(parse_tree_frame(f(FILE_END, r#"{"sha256":"zz"}"#)).is_err());
        assert!(parse_tree_frame(f(PUT, "{}")).is_err());
    }
}
