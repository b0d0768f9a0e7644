//! libhvsock from C and Python, as their users build and run it, against a real hvsockd:
//!
//! - `cargo cinstall --release -p hvsock-c --prefix /usr --destdir STAGE` (cargo-c installed by
//!   `scripts/c-deps.sh`), then every program is compiled by the system's `cc` with
//!   `pkg-config --cflags --libs hvsock` (`PKG_CONFIG_SYSROOT_DIR=STAGE`, as a distribution
//!   packages it);
//! - the installed files: `libhvsock.so` with its soname and links, `libhvsock.a`, `hvsock.pc`,
//!   `<hvsocket.h>` as checked in, and exactly the expected exported symbols;
//! - the document's examples (`examples/c/`): the host service in the root partition and
//!   guests in sandbox partitions, linked with `-lhvsock`, and again built with the header alone
//!   (no libhvsock at link time) and run unchanged under `LD_PRELOAD`;
//! - `tests/c/api_check.c` (the socket contract: errno table, non-blocking connect with
//!   poll/epoll/select, close, accept4 flags, fork, threads, other families untouched, options)
//!   linked, preloaded, and linked statically with `libhvsock.a`;
//! - `examples/python/hvsock_client.py` (ctypes, then a standard `socket.socket` and asyncio).

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hvsock::{HvListener, ServiceId, SockAddrHv, VmId};
use support::Daemon;
use support::c::{Installed, installed, readelf, repo, run};

const LIMIT: Duration = Duration::from_secs(60);

/// A child killed (by its pid) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `host_service PORT` in the root partition, once it prints that it listens; its stdout
/// lines come through the returned channel.
fn start_host(
    i: &Installed,
    exe: &Path,
    d: &Daemon,
    port: u32,
    preload: bool,
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut cmd = i.command(exe);
    cmd.env("HVSOCK_DIR", d.dir())
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if preload {
        cmd.env("LD_PRELOAD", i.so());
    }
    let mut child = Proc(cmd.spawn().unwrap());
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(LIMIT)
        .expect("host_service printed nothing");
    assert_eq!(
        first,
        format!(
            "listening on {}:{}",
            VmId::WILDCARD,
            ServiceId::from_vsock_port(port)
        ),
    );
    (child, rx)
}

/// Runs `guest_service PORT MESSAGE...` in partition `vm`.
fn guest(
    i: &Installed,
    exe: &Path,
    d: &Daemon,
    vm: VmId,
    port: u32,
    msgs: &[&str],
    preload: bool,
) -> Output {
    let mut cmd = i.command(exe);
    cmd.env("HVSOCK_ENDPOINT", d.dirs().partition_socket(vm))
        .arg(port.to_string())
        .args(msgs);
    if preload {
        cmd.env("LD_PRELOAD", i.so());
    }
    support::under_timeout(30, &cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The document's two programs, host and sandboxes, built one way (`preload`: with the header
/// alone, run under LD_PRELOAD; else linked with -lhvsock).
fn examples_converse(preload: bool) {
    let i = installed();
    let suffix = if preload { "pre" } else { "lnk" };
    let build = |name: &str| {
        let src = repo().join(format!("examples/c/{name}.c"));
        if preload {
            i.header_only(&src, &format!("{name}-{suffix}"))
        } else {
            i.linked(&src, &format!("{name}-{suffix}"))
        }
    };
    let (host_exe, guest_exe) = (build("host_service"), build("guest_service"));
    let d = Daemon::start();
    let port = if preload { 5301 } else { 5201 };
    d.add_service("cdemo", port);
    d.add_service("cdemo-off", port + 1);
    d.set_enabled("cdemo-off", false);
    let sandboxes: Vec<VmId> = (0..3)
        .map(|n| d.add_partition(&format!("sandbox{n}"), None))
        .collect();
    let (_host, lines) = start_host(i, &host_exe, &d, port, preload);

    // Three sandboxes at once, each a few messages: the host serves them together (select).
    let handles: Vec<_> = sandboxes
        .iter()
        .enumerate()
        .map(|(n, &vm)| {
            let (i, guest_exe) = (installed(), guest_exe.clone());
            let dir = d.dir().to_path_buf();
            let endpoint = d.dirs().partition_socket(vm);
            std::thread::spawn(move || {
                let _ = dir;
                let mut cmd = i.command(&guest_exe);
                cmd.env("HVSOCK_ENDPOINT", endpoint).arg(port.to_string());
                for k in 0..5 {
                    cmd.arg(format!("sandbox{n}-message{k}"));
                }
                if preload {
                    cmd.env("LD_PRELOAD", i.so());
                }
                run("guest_service", 30, &mut cmd)
            })
        })
        .collect();
    for (n, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        let want: String = (0..5)
            .map(|k| format!("host> sandbox{n}-message{k}\n"))
            .collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    }
    // The host saw each sandbox by its VmId.
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    while seen.len() < 6 && Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            seen.push(line);
        }
    }
    for vm in &sandboxes {
        assert!(
            seen.contains(&format!("{vm} connected")),
            "{vm} not in {seen:?}"
        );
    }
    assert_eq!(
        seen.iter().filter(|l| *l == "a guest left").count(),
        3,
        "{seen:?}"
    );

    // A disabled service: the guest fails at once, with the reason from hv_last_error().
    let out = guest(i, &guest_exe, &d, sandboxes[0], port + 1, &["x"], preload);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connect: Permission denied")
            && err.contains("cdemo-off")
            && err.contains("disabled"),
        "{err}"
    );
    // Without libhvsock, the same binary meets the kernel's own AF_HYPERV (= AF_ISDN): refused.
    if preload {
        let mut cmd = i.command(&guest_exe);
        cmd.arg(port.to_string()).arg("x");
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("socket: Address family not supported"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn examples_linked_with_libhvsock() {
    examples_converse(false);
}

#[test]
fn examples_unchanged_under_ld_preload() {
    examples_converse(true);
}

/// `tests/c/api_check.c`, built `how`, against a fresh hvsockd with a sandbox.
fn api_check(how: &str) {
    let i = installed();
    let src = repo().join("tests/c/api_check.c");
    let name = format!("api_check-{how}");
    let exe = match how {
        "linked" => i.linked(&src, &name),
        "preloaded" => i.header_only(&src, &name),
        "static" => i.static_linked(&src, &name),
        other => panic!("{other}"),
    };
    let d = Daemon::start();
    let base = match how {
        "linked" => 5400,
        "preloaded" => 5500,
        _ => 5600,
    };
    d.add_service("capi", base);
    d.add_service("capi-off", base + 1);
    d.set_enabled("capi-off", false);
    let sandbox = d.add_partition("sandbox", None);
    let mut cmd = i.command(&exe);
    cmd.arg(d.dir())
        .arg(d.dirs().partition_socket(sandbox))
        .arg(sandbox.to_string())
        .arg(base.to_string());
    if how == "preloaded" {
        cmd.env("LD_PRELOAD", i.so());
    }
    let out = run(&format!("api_check ({how})"), 150, &mut cmd);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("all checks passed\n"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        11,
        "{text}"
    );
}

#[test]
fn api_contract_linked() {
    api_check("linked");
}

#[test]
fn api_contract_preloaded() {
    api_check("preloaded");
}

#[test]
fn api_contract_static_library() {
    api_check("static");
}

#[test]
fn installed_files_make_a_c_library() {
    let i = installed();
    let so = std::fs::canonicalize(i.so()).unwrap();
    assert_eq!(so.file_name().unwrap(), "libhvsock.so.0.1.0");
    assert_eq!(
        std::fs::read_link(i.lib.join("libhvsock.so")).unwrap(),
        Path::new("libhvsock.so.0.1.0")
    );
    assert!(i.lib.join("libhvsock.so.0.1").exists());
    assert!(readelf(&so).contains("Library soname: [libhvsock.so.0.1]"));
    assert!(i.lib.join("libhvsock.a").is_file());
    let header = std::fs::read_to_string(i.stage.join("usr/include/hvsocket.h")).unwrap();
    let checked_in =
        std::fs::read_to_string(repo().join("crates/hvsock-c/include/hvsocket.h")).unwrap();
    assert!(
        header == checked_in,
        "the installed header is not the checked-in one"
    );
    let pc = std::fs::read_to_string(i.lib.join("pkgconfig/hvsock.pc")).unwrap();
    assert!(
        pc.contains("Name: hvsock") && pc.contains("-lhvsock"),
        "{pc}"
    );
    let cflags = i.pkg_config(&["--cflags"]);
    assert!(
        cflags.iter().any(|f| f.ends_with("/usr/include")),
        "{cflags:?}"
    );

    // Exactly the C API is exported: the hv_* functions and the interposed libc names.
    let out = run(
        "nm -D",
        30,
        Command::new("nm")
            .args(["-D", "--defined-only", "--format=posix"])
            .arg(&so),
    );
    let mut exported: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let (name, kind) = (w.next()?, w.next()?);
            (kind == "T").then(|| name.to_owned())
        })
        .collect();
    exported.sort();
    let mut want: Vec<String> = [
        "accept",
        "accept4",
        "bind",
        "close",
        "connect",
        "epoll_ctl",
        "getpeername",
        "getsockname",
        "getsockopt",
        "listen",
        "setsockopt",
        "socket",
    ]
    .iter()
    .flat_map(|n| [n.to_string(), format!("hv_{n}")])
    .chain(
        [
            "hv_last_error",
            "hv_guid_parse",
            "hv_guid_format",
            "hv_guid_from_vsock_port",
            "hv_guid_vsock_port",
            "hv_sockaddr_parse",
        ]
        .map(String::from),
    )
    .collect();
    want.sort();
    assert_eq!(exported, want);

    // The static library carries the interposed names too (see docs/c.md).
    let out = run(
        "nm libhvsock.a",
        60,
        Command::new("nm")
            .args(["--defined-only", "--format=posix"])
            .arg(i.lib.join("libhvsock.a")),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["socket", "connect", "close", "hv_connect"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} T "))),
            "{name} not in libhvsock.a"
        );
    }
}

#[test]
fn python_ctypes_client_wraps_a_standard_socket() {
    let i = installed();
    let d = Daemon::start();
    let port = 5701;
    let service = d.add_service("pydemo", port);
    let sandbox = d.add_partition("pysandbox", None);
    let listener =
        HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, service), 4).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        conn.set_read_timeout(Some(LIMIT)).unwrap();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        for _ in 0..2 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            conn.write_all(format!("host> {line}").as_bytes()).unwrap();
        }
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        peer
    });
    let out = run(
        "python3 examples/python/hvsock_client.py",
        60,
        Command::new("python3")
            .arg(repo().join("examples/python/hvsock_client.py"))
            .args(["parent:5701", "hello from python", "and asyncio"])
            .env("HVSOCK_LIB", i.so())
            .env("HVSOCK_ENDPOINT", d.dirs().partition_socket(sandbox))
            .env_remove("HVSOCK_DIR")
            .env_remove("HVSOCK_TRANSPORT"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "host> hello from python\nhost> and asyncio\n"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("connected: <AddressFamily.AF_UNIX: 1> <SocketKind.SOCK_STREAM: 1>"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.join().unwrap().vm_id, sandbox);

    // A refusal is an OSError with errno and libhvsock's reason.
    let out = Command::new("python3")
        .arg(repo().join("examples/python/hvsock_client.py"))
        .arg("parent:5709")
        .env("HVSOCK_LIB", i.so())
        .env("HVSOCK_ENDPOINT", d.dirs().partition_socket(sandbox))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connect to parent:5709: Permission denied ("),
        "{err}"
    );
}
