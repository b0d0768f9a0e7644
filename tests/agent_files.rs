//! `hvsock cp` end to end against a sandbox's `hvsock-agent`: files and trees both ways,
//! hashed, with modes and symlinks, cp's destination rules, and the errors a user must be
//! able to act on (a missing path, a directory without -r, no space, permission).

#![allow(clippy::unwrap_used)]

mod agent_support;
mod support;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use agent_support::{Agent, QUICK, Sandbox, pattern, run, sha256_file, text};

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Every entry under `root`: relative path, kind, mode, and content hash or link target.
fn describe(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("link -> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                format!("dir {:o}", mode(&path))
            } else {
                format!("file {:o} {}", mode(&path), sha256_file(&path))
            };
            out.push((rel, what));
        }
    }
    out.sort();
    out
}

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/empty")).unwrap();
    fs::write(root.join("top.txt"), "top\n").unwrap();
    fs::write(root.join("a/data.bin"), pattern(3, 1024 * 1024 + 5)).unwrap();
    fs::write(root.join("a/b/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("a/b/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("a/secret"), "s").unwrap();
    fs::set_permissions(root.join("a/secret"), fs::Permissions::from_mode(0o600)).unwrap();
    symlink("../top.txt", root.join("a/link")).unwrap();
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    // A read-only directory with contents: its mode must come last.
    fs::create_dir(root.join("ro")).unwrap();
    fs::write(root.join("ro/inside"), "x").unwrap();
    fs::set_permissions(root.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
}

#[test]
fn files_and_trees_go_both_ways_hashed_with_modes() {
    let s = Sandbox::start(&[]);
    let w = tempfile::Builder::new()
        .prefix("hvsock-cp-")
        .tempdir()
        .unwrap();
    let w = w.path();
    // A file in: to a new name, then into an existing directory under its own name.
    let big = w.join("big.bin");
    fs::write(&big, pattern(1, 3 * 1024 * 1024 + 17)).unwrap();
    fs::set_permissions(&big, fs::Permissions::from_mode(0o640)).unwrap();
    let guest = w.join("guest");
    fs::create_dir(&guest).unwrap();
    let dest = format!("sb:{}", guest.join("renamed.bin").display());
    let out = run(s.hv().args(["cp", "-v"]).arg(&big).arg(&dest), b"", QUICK);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("copied 1 files, 3145745 bytes"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(sha256_file(&guest.join("renamed.bin")), sha256_file(&big));
    assert_eq!(mode(&guest.join("renamed.bin")), 0o640);
    let out = run(
        s.hv()
            .arg("cp")
            .arg(&big)
            .arg(format!("sb:{}", guest.display())),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256_file(&guest.join("big.bin")), sha256_file(&big));
    // Overwriting a file replaces it whole.
    fs::write(w.join("small"), "small\n").unwrap();
    let out = run(s.hv().arg("cp").arg(w.join("small")).arg(&dest), b"", QUICK);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        fs::read_to_string(guest.join("renamed.bin")).unwrap(),
        "small\n"
    );

    // A file out.
    let out = run(
        s.hv()
            .arg("cp")
            .arg(format!("sb:{}", guest.join("big.bin").display()))
            .arg(w.join("back.bin")),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(sha256_file(&w.join("back.bin")), sha256_file(&big));
    assert_eq!(mode(&w.join("back.bin")), 0o640);

    // A tree in, into an existing directory, then out again into another.
    let tree = w.join("tree");
    make_tree(&tree);
    let out = run(
        s.hv()
            .args(["cp", "-r"])
            .arg(&tree)
            .arg(format!("sb:{}", guest.display())),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(describe(&guest.join("tree")), describe(&tree));
    let back = w.join("back");
    fs::create_dir(&back).unwrap();
    let out = run(
        s.hv()
            .args(["cp", "-r"])
            .arg(format!("sb:{}", guest.join("tree").display()))
            .arg(&back),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(describe(&back.join("tree")), describe(&tree));
    // Copying the same tree again merges into what is there.
    let out = run(
        s.hv()
            .args(["cp", "-r"])
            .arg(&tree)
            .arg(format!("sb:{}", guest.display())),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    for dir in [&tree, &guest.join("tree"), &back.join("tree")] {
        fs::set_permissions(dir.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn copy_errors_name_the_path_and_the_reason() {
    let s = Sandbox::start(&[]);
    let w = tempfile::Builder::new()
        .prefix("hvsock-cp-")
        .tempdir()
        .unwrap();
    let w = w.path();
    let fail = |args: &[&str]| {
        let out = run(s.hv().args(args), b"", QUICK);
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        text(&out.stderr)
    };
    let local = w.display().to_string();
    let err = fail(&["cp", "sb:/no/such/file", &local]);
    assert!(
        err.contains("/no/such/file") && err.contains("no such file or directory"),
        "{err}"
    );
    assert!(err.contains("(in sb)"), "{err}");
    let err = fail(&["cp", &format!("{local}/missing"), "sb:/tmp"]);
    assert!(
        err.contains("missing") && err.contains("no such file or directory"),
        "{err}"
    );
    let err = fail(&["cp", &local, "sb:/tmp"]);
    assert!(err.contains("is a directory (copy it with -r)"), "{err}");
    let err = fail(&["cp", "sb:/etc", &local]);
    assert!(err.contains("is a directory (copy it with -r)"), "{err}");
    fs::write(w.join("f"), "f").unwrap();
    let err = fail(&["cp", &format!("{local}/f"), "sb:/no/such/dir/f"]);
    assert!(
        err.contains("/no/such/dir") && err.contains("no such file or directory"),
        "{err}"
    );
    let err = fail(&["cp", &format!("{local}/f"), "sb:/sys/hvsock-cp-test"]);
    assert!(err.contains("permission denied"), "{err}");
    let err = fail(&["cp", &format!("{local}/f"), "sb:relative"]);
    assert!(err.contains("neither side is VM:/path"), "{err}");
    assert!(
        s.agent.log().contains("failed"),
        "the agent logged the failures"
    );
}

#[test]
fn a_full_guest_disk_is_reported_and_leaves_no_partial_file() {
    // The agent runs in its own mount namespace with a 1 MiB tmpfs on `full`; the host copies
    // 3 MiB into it.
    let full = tempfile::Builder::new()
        .prefix("hvsock-full-")
        .tempdir()
        .unwrap();
    let full_path = full.path().display().to_string();
    let s = Sandbox::start_with(
        &[],
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs -o size=1m hvsock-test \"$0\" && exec \"$@\"",
            &full_path,
        ],
    );
    let src = full
        .path()
        .parent()
        .unwrap()
        .join(format!("{}.src", full_path.rsplit('/').next().unwrap()));
    fs::write(&src, pattern(9, 3 * 1024 * 1024)).unwrap();
    let out = run(
        s.hv()
            .arg("cp")
            .arg(&src)
            .arg(format!("sb:{full_path}/big")),
        b"",
        QUICK,
    );
    fs::remove_file(&src).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no space left on the device") && err.contains("big"),
        "{err}"
    );
    let out = run(
        s.hv().args(["exec", "sb", "--", "ls", "-A", &full_path]),
        b"",
        QUICK,
    );
    assert_eq!(text(&out.stdout), "", "the partial file was removed");
}

#[test]
fn an_unprivileged_agent_reports_permission_and_refuses_other_users() {
    let s = Sandbox::start(&["--disable", "session", "--disable", "files"]);
    let vm = s.d.add_partition("sb2", None);
    // The agent as nobody must reach its endpoint (a sandbox gets it bind-mounted; here the
    // directories on the way are opened to it).
    fs::set_permissions(s.d.dir(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(s.d.dirs().partitions(), fs::Permissions::from_mode(0o711)).unwrap();
    let _agent = Agent::start(&s.d, vm, &["--disable", "shutdown"], &[], Some(65534));
    let w = tempfile::Builder::new()
        .prefix("hvsock-cp-")
        .tempdir()
        .unwrap();
    fs::set_permissions(w.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(w.path().join("f"), "f").unwrap();
    let out = run(
        s.hv()
            .arg("cp")
            .arg(w.path().join("f"))
            .arg(format!("sb2:{}/g", w.path().display())),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        s.hv().args(["exec", "sb2", "--user", "root", "--", "id"]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("cannot start commands as \"root\""),
        "{}",
        text(&out.stderr)
    );
    let out = run(s.hv().args(["exec", "sb2", "--", "id", "-u"]), b"", QUICK);
    assert_eq!(text(&out.stdout), "65534\n");
}
