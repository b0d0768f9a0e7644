//! Continuity: what keeps working when hvsockd is killed (`kill -9`) and started again, with
//! no service manager holding its sockets.
//!
//! - a sandbox that bind-mounted its partition's *directory* reaches the new hvsockd through
//!   the same mount (and one that mounted the socket *file*, the old advice, does not: that is
//!   why the directory is the documented way);

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hvsock::{HvListener, SockAddrHv, VmId};
use support::{Daemon, Proc, QUICK, require, require_root};

const PORT: u32 = 5000;

/// Accepts one connection on `listener` and returns what it sent, up to its end.
fn receive_one(listener: &HvListener) -> String {
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(QUICK)).unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

/// A sandbox: a shell in a private mount namespace that bind-mounts (read-only) the
/// partition's directory at `mnt` and the old socket path at `old/endpoint.sock`, then, for
/// each line `dir` or `file` it reads, runs `hvsock connect parent:PORT` through that mount
/// and says `dir-ok`/`dir-failed` (or `file-…`).
fn sandbox(d: &Daemon, vm: VmId, mnt: &Path, old: &Path) -> Proc {
    let script = r#"
set -e
mount --bind "$PDIR" "$MNT"
mount -o remount,bind,ro "$MNT"
mount --bind "$LEGACY" "$OLD/endpoint.sock"
set +e
echo mounted
while read what; do
    case $what in
        dir) dir="$MNT" ;;
        file) dir="$OLD" ;;
        *) continue ;;
    esac
    if echo "via $what" | HVSOCK_DIR="$dir" "$HVSOCK" connect parent:5000; then
        echo "$what-ok"
    else
        echo "$what-failed"
    fi
done
"#;
    std::fs::write(old.join("endpoint.sock"), b"").unwrap();
    Proc::spawn(
        Command::new(require("unshare"))
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .env("PDIR", d.dirs().partition_dir(vm))
            .env("LEGACY", d.dirs().legacy_partition_socket(vm))
            .env("MNT", mnt)
            .env("OLD", old)
            .env("HVSOCK", &support::bins().hvsock)
            .env_remove("HVSOCK_ENDPOINT")
            .env_remove("HVSOCK_TRANSPORT"),
    )
}

/// Asks the sandbox to connect through `what` (`dir` or `file`) and waits for its verdict;
/// on success, `listener` has received the bytes.
fn sandbox_connects(sandbox: &mut Proc, what: &str, listener: Option<&HvListener>) -> bool {
    let seen = sandbox.stdout_text().matches(&format!("{what}-")).count();
    sandbox.write(format!("{what}\n").as_bytes());
    if let Some(listener) = listener {
        assert_eq!(receive_one(listener), format!("via {what}\n"));
    }
    sandbox.wait_stdout(&format!("the sandbox's connect through {what}"), |out| {
        String::from_utf8_lossy(out)
            .matches(&format!("{what}-"))
            .count()
            > seen
    });
    let out = sandbox.stdout_text();
    out.rsplit(&format!("{what}-"))
        .next()
        .unwrap()
        .starts_with("ok")
}

#[test]
fn a_sandbox_that_mounted_its_partition_directory_reaches_the_restarted_hvsockd() {
    require_root("bind-mounting a partition directory into a private mount namespace");
    let mut d = Daemon::start();
    d.add_service("echo", PORT);
    let vm = d.add_partition("sandbox", None);
    let addr = SockAddrHv::new(VmId::WILDCARD, hvsock::ServiceId::from_vsock_port(PORT));
    let mounts = support::tempdir("hvsock-continuity-mnt-");
    let (mnt, old) = (mounts.path().join("dir"), mounts.path().join("old"));
    std::fs::create_dir(&mnt).unwrap();
    std::fs::create_dir(&old).unwrap();

    let listener = HvListener::bind_with(&d.host(), addr, 8).unwrap();
    let mut sandbox = sandbox(&d, vm, &mnt, &old);
    sandbox.wait_stdout("the sandbox's mounts", |out| {
        String::from_utf8_lossy(out).contains("mounted")
    });
    assert!(
        sandbox_connects(&mut sandbox, "dir", Some(&listener)),
        "{}",
        sandbox.stderr()
    );
    assert!(
        sandbox_connects(&mut sandbox, "file", Some(&listener)),
        "{}",
        sandbox.stderr()
    );

    d.restart();
    let listener = HvListener::bind_with(&d.host(), addr, 8).unwrap();
    // The directory mount shows the new socket; the file mount still holds the dead one.
    assert!(
        sandbox_connects(&mut sandbox, "dir", Some(&listener)),
        "through the mounted directory after a restart: {}",
        sandbox.stderr()
    );
    assert!(
        !sandbox_connects(&mut sandbox, "file", None),
        "a mounted socket file cannot outlive a restart; this test pins why the docs say to mount the directory"
    );
    sandbox.close_stdin();
    assert!(sandbox.wait(Duration::from_secs(10)).success());
}
