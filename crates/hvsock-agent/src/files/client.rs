//! The host's side of the file copy service (`hvsock cp`): [`put`] a local file or tree into
//! the guest, [`get`] one out of it, with a progress bar on a terminal for large copies.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    CopyError, DONE, End, GET, Get, Kind, PUT, Put, READY, Total, check_absolute, recv, send,
};
use crate::wire::{self, Decoder, Frame, WireError};

/// Copies of at least this many bytes get a progress bar (on a terminal).
const PROGRESS_FROM: u64 = 4 * 1024 * 1024;

fn bar(total: u64, show: bool) -> ProgressBar {
    if !show || total < PROGRESS_FROM {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bytes:>10}/{total_bytes:<10} [{bar:30}] {binary_bytes_per_sec:>12} {eta:>4}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The name a local source is copied under (its last component, `.` resolved).
fn local_name(path: &Path) -> Result<String, CopyError> {
    let name = match path.file_name() {
        Some(name) => Some(name.to_owned()),
        None => std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(ToOwned::to_owned)),
    };
    name.and_then(|n| n.into_string().ok()).ok_or_else(|| {
        CopyError::new(
            wire::ErrorKind::Invalid,
            format!("{} has no name to copy it under", path.display()),
        )
    })
}

/// Copies the local `src` into the guest at `dest` (absolute).
pub fn put(
    stream: &hvsock::HvStream,
    src: &Path,
    dest: &str,
    recursive: bool,
    progress: bool,
) -> Result<End, CopyError> {
    check_absolute(dest)?;
    let plan = send::plan(src, recursive)?;
    let name = local_name(src)?;
    let kind = plan.total.kind.unwrap_or(Kind::File);
    let mut conn = stream;
    let mut decoder = Decoder::default();
    wire::client_hello(&mut conn, &mut decoder, super::SERVICE, super::VERSIONS)?;
    let put = Put {
        dest: dest.to_owned(),
        name,
        kind,
    };
    wire::write_frame(&mut conn, &Frame::json(PUT, &put))?;
    let ready = decoder.expect_frame(&mut conn, "before accepting the copy")?;
    if ready.kind != READY {
        return Err(WireError::Unexpected {
            kind: ready.kind,
            state: "in answer to Put",
        }
        .into());
    }
    let bar = bar(plan.total.bytes, progress);
    let sent = send::send(&mut conn, &plan, &|n| bar.inc(n));
    let sent = match sent {
        Ok(end) => end,
        Err(e) => {
            bar.abandon();
            e.tell(&mut conn);
            // The agent may have said why first (e.g. no space): prefer its word.
            if let Ok(Some(frame)) = decoder.read_frame(&mut conn) {
                if frame.kind == wire::ERROR {
                    if let Ok(remote) = frame.parse() {
                        return Err(CopyError::Remote(remote));
                    }
                }
            }
            return Err(e);
        }
    };
    let done = decoder.expect_frame(&mut conn, "before confirming the copy");
    bar.finish_and_clear();
    let done = done?;
    if done.kind != DONE {
        return Err(WireError::Unexpected {
            kind: done.kind,
            state: "after the end of a Put",
        }
        .into());
    }
    let written: End = done.parse()?;
    if (written.files, written.bytes) != (sent.files, sent.bytes) {
        return Err(WireError::Invalid(format!(
            "the agent wrote {} files and {} bytes of the {} and {} sent",
            written.files, written.bytes, sent.files, sent.bytes
        ))
        .into());
    }
    Ok(sent)
}

/// Copies the guest's `src` (absolute) to the local `dest`.
pub fn get(
    stream: &hvsock::HvStream,
    src: &str,
    dest: &Path,
    recursive: bool,
    progress: bool,
) -> Result<(PathBuf, End), CopyError> {
    check_absolute(src)?;
    let name = src
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("root")
        .to_owned();
    let mut conn = stream;
    let mut decoder = Decoder::default();
    wire::client_hello(&mut conn, &mut decoder, super::SERVICE, super::VERSIONS)?;
    let get = Get {
        path: src.to_owned(),
        recursive,
    };
    wire::write_frame(&mut conn, &Frame::json(GET, &get))?;
    // Total comes first and says what the root is, which decides where it goes.
    let first = decoder.expect_frame(&mut conn, "before sending the copy")?;
    let total: Total = match super::parse_tree_frame(first)? {
        super::TreeMsg::Total(total) => total,
        _ => {
            return Err(WireError::Invalid("the copy did not start with Total".into()).into());
        }
    };
    let kind = total.kind.ok_or_else(|| {
        CopyError::Wire(WireError::Invalid(
            "Total does not say what the root is".into(),
        ))
    })?;
    let root = match recv::destination(dest, &name, kind) {
        Ok(root) => root,
        Err(e) => {
            e.tell(&mut conn);
            return Err(e);
        }
    };
    let bar = bar(total.bytes, progress);
    let received = recv::receive(&mut conn, &mut decoder, &root, kind, &mut |_| {}, &|n| {
        bar.inc(n)
    });
    bar.finish_and_clear();
    let end = match received {
        Ok(end) => end,
        Err(e) => {
            e.tell(&mut conn);
            return Err(e);
        }
    };
    wire::write_frame(&mut conn, &Frame::json(DONE, &end))?;
    Ok((root, end))
}
