//! Receiving a tree into a destination: where it goes (cp's rules), and each entry written
//! safely (parents must be Dirs of this tree, files go through a temporary name and a hash
//! check, the file in progress is removed on failure).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::{CopyError, End, Entry, Kind, Total, TreeMsg, hex, parse_tree_frame};
use crate::wire::{Decoder, ErrorKind, WireError};

/// Where a copy of `kind` named `name` goes when asked to go to `dest` (cp's rules), checked
/// before any data flows.
pub fn destination(dest: &Path, name: &str, kind: Kind) -> Result<PathBuf, CopyError> {
    let root = match fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => dest.join(name),
        Ok(_) => dest.to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = match dest.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => dest.to_owned(),
                Ok(_) => {
                    return Err(CopyError::new(
                        ErrorKind::NotFound,
                        format!("{} is not a directory", parent.display()),
                    ));
                }
                Err(e) => return Err(CopyError::io("reaching the directory", parent, &e)),
            }
        }
        Err(e) => return Err(CopyError::io("reaching", dest, &e)),
    };
    match (fs::symlink_metadata(&root), kind) {
        (Ok(meta), Kind::File) if meta.is_dir() => Err(CopyError::new(
            ErrorKind::Exists,
            format!(
                "{} is a directory: a file cannot replace it",
                root.display()
            ),
        )),
        (Ok(_), Kind::Dir) if !fs::metadata(&root).is_ok_and(|m| m.is_dir()) => {
            Err(CopyError::new(
                ErrorKind::Exists,
                format!(
                    "{} exists and is not a directory: a directory cannot replace it",
                    root.display()
                ),
            ))
        }
        _ => Ok(root),
    }
}

/// A file being written under a temporary name; removed unless it was renamed into place.
struct InProgress {
    tmp: PathBuf,
    dest: PathBuf,
    file: File,
    mode: u32,
    size: u64,
    left: u64,
    hasher: Sha256,
    placed: bool,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A temporary name beside `dest`.
fn temp_name(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let short: String = name.chars().take(100).collect();
    dest.with_file_name(format!(".{short}.hvsock-{}-{n}", std::process::id()))
}

/// Receives one tree (Total first if any, then entries, then End) into `root`, which
/// [`destination`] chose for a root of `kind`. `on_total` is told Total; `progress` each data
/// chunk's size.
pub fn receive(
    conn: &mut impl Read,
    decoder: &mut Decoder,
    root: &Path,
    kind: Kind,
    on_total: &mut dyn FnMut(Total),
    progress: &dyn Fn(u64),
) -> Result<End, CopyError> {
    let mut dirs: HashSet<String> = HashSet::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut current: Option<InProgress> = None;
    let mut seen_root = false;
    let mut first = true;
    let mut done = End::default();
    let invalid = |m: String| CopyError::Wire(WireError::Invalid(m));

    loop {
        let frame = decoder.expect_frame(conn, "before the end of the copy")?;
        let msg = parse_tree_frame(frame)?;
        let is_first = std::mem::replace(&mut first, false);
        // Where an entry goes, once its parent is known to be a Dir of this tree.
        let place = |entry: &Entry, seen_root: bool| -> Result<PathBuf, CopyError> {
            if entry.path.is_empty() {
                if seen_root {
                    return Err(invalid("a second root entry".into()));
                }
                return Ok(root.to_owned());
            }
            if !seen_root {
                return Err(invalid(format!(
                    "entry {:?} came before the root",
                    entry.path
                )));
            }
            let parent = entry.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
            if !dirs.contains(parent) {
                return Err(invalid(format!(
                    "entry {:?} is not inside a directory of this copy",
                    entry.path
                )));
            }
            Ok(root.join(&entry.path))
        };
        if current.is_some() && !matches!(msg, TreeMsg::Data(_) | TreeMsg::FileEnd(_)) {
            return Err(invalid("a file's data ended without FileEnd".into()));
        }
        match msg {
            TreeMsg::Total(total) if is_first => on_total(total),
            TreeMsg::Total(_) => return Err(invalid("Total came after the first entry".into())),
            TreeMsg::Dir(entry) => {
                if entry.path.is_empty() && kind != Kind::Dir {
                    return Err(invalid(
                        "the root is a directory, not the file announced".into(),
                    ));
                }
                let path = place(&entry, seen_root)?;
                match fs::symlink_metadata(&path) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_)
                        if entry.path.is_empty()
                            && fs::metadata(&path).is_ok_and(|m| m.is_dir()) => {}
                    Ok(_) => {
                        return Err(CopyError::new(
                            ErrorKind::Exists,
                            format!("{} exists and is not a directory", path.display()),
                        ));
                    }
                    Err(_) => {
                        fs::DirBuilder::new()
                            .mode(0o700)
                            .create(&path)
                            .map_err(|e| CopyError::io("creating the directory", &path, &e))?;
                    }
                }
                seen_root = true;
                dirs.insert(entry.path.clone());
                dir_modes.push((path, entry.mode & 0o7777));
            }
            TreeMsg::File(entry) => {
                if entry.path.is_empty() && kind != Kind::File {
                    return Err(invalid(
                        "the root is a file, not the directory announced".into(),
                    ));
                }
                let dest = place(&entry, seen_root)?;
                seen_root = true;
                if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
                    return Err(CopyError::new(
                        ErrorKind::Exists,
                        format!(
                            "{} is a directory: a file cannot replace it",
                            dest.display()
                        ),
                    ));
                }
                let tmp = temp_name(&dest);
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| CopyError::io("creating", &dest, &e))?;
                current = Some(InProgress {
                    tmp,
                    dest,
                    file,
                    mode: entry.mode & 0o7777,
                    size: entry.size,
                    left: entry.size,
                    hasher: Sha256::new(),
                    placed: false,
                });
            }
            TreeMsg::Data(bytes) => {
                let Some(f) = current.as_mut() else {
                    return Err(invalid("data outside a file".into()));
                };
                if bytes.len() as u64 > f.left {
                    return Err(invalid(format!(
                        "more data than the {} bytes announced for {}",
                        f.size,
                        f.dest.display()
                    )));
                }
                f.file
                    .write_all(&bytes)
                    .map_err(|e| CopyError::io("writing", &f.dest, &e))?;
                f.hasher.update(&bytes);
                f.left -= bytes.len() as u64;
                progress(bytes.len() as u64);
            }
            TreeMsg::FileEnd(end) => {
                let Some(mut f) = current.take() else {
                    return Err(invalid("FileEnd outside a file".into()));
                };
                if f.left != 0 {
                    return Err(invalid(format!(
                        "{} ended {} bytes short of its size",
                        f.dest.display(),
                        f.left
                    )));
                }
                let got = hex(&std::mem::take(&mut f.hasher).finalize());
                if got != end.sha256 {
                    return Err(CopyError::new(
                        ErrorKind::Integrity,
                        format!(
                            "{}: the SHA-256 of what arrived ({got}) is not the sender's ({})",
                            f.dest.display(),
                            end.sha256
                        ),
                    ));
                }
                f.file
                    .flush()
                    .and_then(|()| f.file.set_permissions(fs::Permissions::from_mode(f.mode)))
                    .map_err(|e| CopyError::io("writing", &f.dest, &e))?;
                fs::rename(&f.tmp, &f.dest).map_err(|e| CopyError::io("placing", &f.dest, &e))?;
                f.placed = true;
                done.files += 1;
                done.bytes += f.size;
            }
            TreeMsg::Symlink(entry) => {
                if entry.path.is_empty() {
                    return Err(invalid("the root of a copy cannot be a symlink".into()));
                }
                let path = place(&entry, seen_root)?;
                if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    return Err(CopyError::new(
                        ErrorKind::Exists,
                        format!(
                            "{} is a directory: a symlink cannot replace it",
                            path.display()
                        ),
                    ));
                }
                let tmp = temp_name(&path);
                let target = entry.target.unwrap_or_default();
                std::os::unix::fs::symlink(&target, &tmp)
                    .map_err(|e| CopyError::io("creating the symlink", &path, &e))?;
                if let Err(e) = fs::rename(&tmp, &path) {
                    let _ = fs::remove_file(&tmp);
                    return Err(CopyError::io("placing", &path, &e));
                }
            }
            TreeMsg::End(end) => {
                if !seen_root {
                    return Err(invalid("the copy ended before its root".into()));
                }
                if (end.files, end.bytes) != (done.files, done.bytes) {
                    return Err(invalid(format!(
                        "the sender counted {} files and {} bytes, {} and {} arrived",
                        end.files, end.bytes, done.files, done.bytes
                    )));
                }
                // Directory modes last (deepest first), so that read-only ones got their
                // contents.
                for (path, mode) in dir_modes.iter().rev() {
                    fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                        .map_err(|e| CopyError::io("setting the mode of", path, &e))?;
                }
                done.skipped = end.skipped;
                return Ok(done);
            }
        }
    }
}
