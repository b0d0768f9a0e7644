//! Receiving a tree of files (`hvsock_agent::files::recv::receive`, what the agent runs for
//! `hvsock cp` into a guest and the host for a copy out) from arbitrary bytes, into a fresh
//! temporary directory: it never panics, and whatever it accepts or refuses, nothing appears
//! outside the destination (no `..`, no absolute path, no write through a symlink it made).
#![no_main]

use std::path::Path;

use hvsock_agent::files::{Kind, recv};
use hvsock_agent::wire::Decoder;
use libfuzzer_sys::fuzz_target;

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((first, bytes)) = data.split_first() else { return };
    let kind = if first & 1 == 0 { Kind::File } else { Kind::Dir };
    let Ok(tmp) = tempfile::Builder::new().prefix("hvsock-fuzz-").tempdir() else { return };
    let outside = tmp.path().join("outside");
    let inside = outside.join("inside");
    if std::fs::create_dir_all(&inside).is_err() {
        return;
    }
    let root = inside.join("root");
    let mut reader = bytes;
    let mut decoder = Decoder::new(64 * 1024);
    let _ = recv::receive(&mut reader, &mut decoder, &root, kind, &mut |_| {}, &|_| {});
    assert_eq!(names(tmp.path()), ["outside"], "something was written beside the tree");
    assert_eq!(names(&outside), ["inside"], "something was written beside the tree");
    for name in names(&inside) {
        assert!(name == "root" || name.starts_with(".root.hvsock-"), "stray {name}");
        assert!(!name.starts_with(".root.hvsock-"), "a temporary file was left: {name}");
    }
    // Read-only directories the tree made would keep the temp dir from going away.
    open_up(tmp.path());
});

fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            open_up(&entry.path());
        }
    }
}
