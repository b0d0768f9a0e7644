//! Sending a tree: walk the source first (so that Total can say what follows), then send each
//! entry, hashing file contents as they are read.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{
    CopyError, DATA, DIR, END, End, Entry, FILE, FILE_END, FileEnd, Kind, SYMLINK, TOTAL, Total,
    hex,
};
use crate::wire::{self, ErrorKind, Frame, MAX_DATA};

/// One entry to send.
#[derive(Debug, Clone)]
enum Item {
    Dir {
        rel: String,
        mode: u32,
    },
    File {
        rel: String,
        abs: PathBuf,
        mode: u32,
        size: u64,
    },
    Symlink {
        rel: String,
        target: String,
    },
}

/// A walked source, ready to send.
#[derive(Debug)]
pub struct Plan {
    items: Vec<Item>,
    /// What Total says.
    pub total: Total,
    skipped: u64,
}

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

/// Walks `root` (following it if it is a symlink; not the links inside). A directory needs
/// `recursive`.
pub fn plan(root: &Path, recursive: bool) -> Result<Plan, CopyError> {
    let meta = fs::metadata(root).map_err(|e| CopyError::io("reading", root, &e))?;
    let mut plan = Plan {
        items: Vec::new(),
        total: Total::default(),
        skipped: 0,
    };
    if meta.is_dir() {
        if !recursive {
            return Err(CopyError::new(
                ErrorKind::Invalid,
                format!("{} is a directory (copy it with -r)", root.display()),
            ));
        }
        plan.total.kind = Some(Kind::Dir);
        walk(root, String::new(), &mut plan)?;
    } else if meta.is_file() {
        plan.total.kind = Some(Kind::File);
        plan.total.files = 1;
        plan.total.bytes = meta.len();
        plan.items.push(Item::File {
            rel: String::new(),
            abs: root.to_owned(),
            mode: meta.permissions().mode() & 0o7777,
            size: meta.len(),
        });
    } else {
        return Err(CopyError::new(
            ErrorKind::Invalid,
            format!(
                "{} is not a regular file or a directory (a device, socket or FIFO)",
                root.display()
            ),
        ));
    }
    Ok(plan)
}

fn walk(dir: &Path, rel: String, plan: &mut Plan) -> Result<(), CopyError> {
    let meta = fs::metadata(dir).map_err(|e| CopyError::io("reading", dir, &e))?;
    plan.items.push(Item::Dir {
        rel: rel.clone(),
        mode: meta.permissions().mode() & 0o7777,
    });
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(|e| CopyError::io("listing", dir, &e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| CopyError::io("listing", dir, &e))?;
    names.sort();
    for name in names {
        let abs = dir.join(&name);
        let Some(name) = name.to_str() else {
            return Err(CopyError::new(
                ErrorKind::Invalid,
                format!("{} has a name that is not UTF-8", abs.display()),
            ));
        };
        let child_rel = join(&rel, name);
        let meta = fs::symlink_metadata(&abs).map_err(|e| CopyError::io("reading", &abs, &e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            walk(&abs, child_rel, plan)?;
        } else if ft.is_file() {
            plan.total.files += 1;
            plan.total.bytes += meta.len();
            plan.items.push(Item::File {
                rel: child_rel,
                abs,
                mode: meta.permissions().mode() & 0o7777,
                size: meta.len(),
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&abs).map_err(|e| CopyError::io("reading", &abs, &e))?;
            let Some(target) = target.to_str() else {
                return Err(CopyError::new(
                    ErrorKind::Invalid,
                    format!("the target of symlink {} is not UTF-8", abs.display()),
                ));
            };
            plan.items.push(Item::Symlink {
                rel: child_rel,
                target: target.to_owned(),
            });
        } else if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() {
            plan.skipped += 1;
        }
    }
    Ok(())
}

/// Sends the plan on `conn`: Total, the entries, End. `progress` is told each data chunk's
/// size.
pub fn send(conn: &mut impl Write, plan: &Plan, progress: &dyn Fn(u64)) -> Result<End, CopyError> {
    wire::write_frame(conn, &Frame::json(TOTAL, &plan.total))?;
    let mut end = End {
        files: 0,
        bytes: 0,
        skipped: plan.skipped,
    };
    let mut buf = vec![0u8; MAX_DATA];
    for item in &plan.items {
        match item {
            Item::Dir { rel, mode } => {
                let entry = Entry {
                    path: rel.clone(),
                    mode: *mode,
                    size: 0,
                    target: None,
                };
                wire::write_frame(conn, &Frame::json(DIR, &entry))?;
            }
            Item::Symlink { rel, target } => {
                let entry = Entry {
                    path: rel.clone(),
                    mode: 0,
                    size: 0,
                    target: Some(target.clone()),
                };
                wire::write_frame(conn, &Frame::json(SYMLINK, &entry))?;
            }
            Item::File {
                rel,
                abs,
                mode,
                size,
            } => {
                let mut file = File::open(abs).map_err(|e| CopyError::io("opening", abs, &e))?;
                let entry = Entry {
                    path: rel.clone(),
                    mode: *mode,
                    size: *size,
                    target: None,
                };
                wire::write_frame(conn, &Frame::json(FILE, &entry))?;
                let mut hasher = Sha256::new();
                let mut left = *size;
                while left > 0 {
                    let want = usize::try_from(left.min(MAX_DATA as u64)).unwrap_or(MAX_DATA);
                    let n = match file.read(&mut buf[..want]) {
                        Ok(0) => {
                            return Err(CopyError::new(
                                ErrorKind::Integrity,
                                format!(
                                    "{} shrank while it was being copied ({} of {size} bytes)",
                                    abs.display(),
                                    size - left
                                ),
                            ));
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(CopyError::io("reading", abs, &e)),
                    };
                    hasher.update(&buf[..n]);
                    wire::write_data(conn, DATA, &buf[..n])?;
                    left -= n as u64;
                    progress(n as u64);
                }
                let end_msg = FileEnd {
                    sha256: hex(&hasher.finalize()),
                };
                wire::write_frame(conn, &Frame::json(FILE_END, &end_msg))?;
                end.files += 1;
                end.bytes += size;
            }
        }
    }
    wire::write_frame(conn, &Frame::json(END, &end))?;
    Ok(end)
}
