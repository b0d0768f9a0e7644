//! `hvsock exec`, `hvsock shell` and `hvsock vm shutdown` end to end against a sandbox whose
//! `hvsock-agent` runs through its endpoint: streams kept apart, exit statuses and deaths by
//! signal, stdin, environment, working directory and user, signals forwarded, a terminal
//! session driven through a real pseudo-terminal (size changes, Ctrl-C, raw mode restored),
//! shutdown, refusals (a disabled service, an agent without a shutdown action), hostile
//! messages that end only their own session, and the agent surviving hvsockd's restart.

#![allow(clippy::unwrap_used)]

mod agent_support;
mod support;

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use agent_support::{QUICK, Sandbox, pattern, run, text};
use hvsock::{HvStream, SockAddrHv};
use hvsock_agent::services::SESSION;
use hvsock_agent::wire::{self, Decoder, ErrorKind, Frame, RemoteError};
use sha2::{Digest, Sha256};

#[test]
fn exec_keeps_streams_apart_and_gives_the_commands_status() {
    let s = Sandbox::start(&[]);
    let out = run(
        s.hv().args([
            "exec",
            "sb",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");

    let out = run(
        s.hv()
            .args(["exec", "sb", "--", "sh", "-c", "kill -KILL $$"]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(128 + 9), "death by SIGKILL is 137");

    let out = run(
        s.hv().args(["exec", "sb", "--", "no-such-command-hv"]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("command not found"),
        "{}",
        text(&out.stderr)
    );

    let plain = s.d.dir().join("not-a-program");
    std::fs::write(&plain, "data\n").unwrap();
    let out = run(s.hv().args(["exec", "sb", "--"]).arg(&plain), b"", QUICK);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));

    let out = run(
        s.hv()
            .args(["exec", "sb", "--cwd", "/no/such/dir", "--", "true"]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(127));
    assert!(
        text(&out.stderr).contains("no such directory"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_streams_stdin_and_sets_env_cwd_and_user() {
    let s = Sandbox::start(&[]);
    // 8 MiB through stdin and back out, hashed on both sides.
    let data = pattern(7, 8 * 1024 * 1024 + 13);
    let out = run(s.hv().args(["exec", "sb", "--", "cat"]), &data, QUICK);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(Sha256::digest(&out.stdout), Sha256::digest(&data));

    let out = run(
        s.hv().args([
            "exec",
            "sb",
            "--env",
            "GREETING=hello there",
            "--env",
            "EMPTY=",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo \"$GREETING|${EMPTY-unset}|$(pwd)|$HOME|$USER\"",
        ]),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello there||/tmp|/root|root\n");

    // The agent's own environment does not leak into commands.
    let out = run(
        s.hv().args([
            "exec",
            "sb",
            "--",
            "sh",
            "-c",
            "echo ${HVSOCK_ENDPOINT-none}",
        ]),
        b"",
        QUICK,
    );
    assert_eq!(text(&out.stdout), "none\n");

    let out = run(
        s.hv().args([
            "exec",
            "sb",
            "--user",
            "nobody",
            "--",
            "sh",
            "-c",
            "id -u; id -g",
        ]),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "65534\n65534\n");

    let out = run(
        s.hv()
            .args(["exec", "sb", "--user", "no-such-user-hv", "--", "true"]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(255));
    assert!(
        text(&out.stderr).contains("no user \"no-such-user-hv\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_forwards_sigint_and_sigterm_to_the_command() {
    let s = Sandbox::start(&[]);
    for (sig, name, code) in [
        (rustix::process::Signal::INT, "INT", 5),
        (rustix::process::Signal::TERM, "TERM", 6),
    ] {
        let script = format!(
            "trap 'echo got-{name}; exit {code}' {name}; echo ready; while :; do sleep 0.1; done"
        );
        let mut child = s
            .hv()
            .args(["exec", "sb", "--", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !text(&seen).contains("ready") {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "the command ended before it was ready");
            seen.extend_from_slice(&buf[..n]);
        }
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, sig).unwrap();
        let status = support::wait_exit(&mut child, QUICK).expect("exec ends after the signal");
        stdout.read_to_end(&mut seen).unwrap();
        assert_eq!(status.code(), Some(code), "{name}: {}", text(&seen));
        assert!(
            text(&seen).contains(&format!("got-{name}")),
            "{}",
            text(&seen)
        );
    }
}

/// A pseudo-terminal for the test to play the user on.
fn open_pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    use rustix::pty::OpenptFlags;
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    rustix::pty::grantpt(&master).unwrap();
    rustix::pty::unlockpt(&master).unwrap();
    let name = rustix::pty::ptsname(&master, Vec::new()).unwrap();
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    set_size(master.as_fd(), rows, cols);
    (master, slave)
}

fn set_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) {
    rustix::termios::tcsetwinsize(
        fd,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
}

#[test]
fn a_tty_session_follows_the_terminal_and_ctrl_c_reaches_the_guest() {
    let s = Sandbox::start(&[]);
    let (master, slave) = open_pty(40, 100);
    let before = rustix::termios::tcgetattr(&slave).unwrap();
    let mut cmd = s.hv();
    cmd.args(["exec", "sb", "--tty", "--", "sh"])
        .env("TERM", "vt100")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: only system calls between fork and exec: a new session whose controlling
    // terminal is the pty (fd 0, just set up by std), so the kernel signals SIGWINCH on resize.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let screen = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let screen = screen.clone();
        let mut master = std::fs::File::from(master.try_clone().unwrap());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = master.read(&mut buf) {
                if n == 0 {
                    break;
                }
                screen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut keys = std::fs::File::from(master.try_clone().unwrap());
    let wait_screen = |what: &str| {
        let deadline = Instant::now() + QUICK;
        loop {
            let now = text(&screen.lock().unwrap());
            if now.contains(what) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {what:?} on the screen:\n{now}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_screen("# ");
    keys.write_all(b"stty size; echo TERM=$TERM; tty\r")
        .unwrap();
    wait_screen("40 100");
    wait_screen("TERM=vt100");
    wait_screen("/dev/pts/");
    set_size(master.as_fd(), 50, 132);
    // The kernel sends hvsock SIGWINCH, hvsock sends Resize; ask until the guest sees it.
    let deadline = Instant::now() + QUICK;
    while !text(&screen.lock().unwrap()).contains("50 132") {
        assert!(
            Instant::now() < deadline,
            "the guest's terminal never became 50x132"
        );
        keys.write_all(b"stty size\r").unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    // Ctrl-C as a key: the guest's terminal interrupts the sleep, the shell comes back.
    keys.write_all(b"sleep 60\r").unwrap();
    thread::sleep(Duration::from_millis(500));
    keys.write_all(&[0x03]).unwrap();
    keys.write_all(b"echo after-$((20+22))\r").unwrap();
    wait_screen("after-42");
    keys.write_all(b"exit 7\r").unwrap();
    let status = support::wait_exit(&mut child, QUICK).expect("hvsock exits with the shell");
    assert_eq!(status.code(), Some(7));
    let after = rustix::termios::tcgetattr(&slave).unwrap();
    assert_eq!(
        after.local_modes, before.local_modes,
        "the terminal's mode came back"
    );
    drop(keys);
    drop(master);
    drop(slave);
    let _ = reader.join();
}

#[test]
fn shell_runs_the_users_login_shell() {
    let s = Sandbox::start(&[]);
    let out = run(s.hv().args(["shell", "sb"]), b"echo $0; exit 4\n", QUICK);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("-"),
        "a login shell's $0 starts with -: {}",
        text(&out.stdout)
    );
}

#[test]
fn shutdown_reports_the_guest_gone_or_says_why_it_cannot() {
    let mut s = Sandbox::start(&[
        "--poweroff-command",
        "echo off; kill $PPID",
        "--reboot-command",
        "kill $PPID",
    ]);
    let out = run(
        s.hv().args(["vm", "shutdown", "sb", "--timeout", "20"]),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("powered off"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("gone after"),
        "{}",
        text(&out.stdout)
    );
    let status = s
        .agent
        .wait_exit(QUICK)
        .expect("the agent was ended by the poweroff command");
    assert_eq!(status.signal(), Some(15));

    // Without a shutdown action (a sandbox's default) the agent refuses, saying why.
    let s = Sandbox::start(&[]);
    let out = run(
        s.hv().args(["vm", "shutdown", "sb", "--timeout", "5"]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no shutdown action"),
        "{}",
        text(&out.stderr)
    );
    // ... and keeps serving.
    let out = run(
        s.hv().args(["exec", "sb", "--", "echo", "still"]),
        b"",
        QUICK,
    );
    assert_eq!(text(&out.stdout), "still\n");
}

#[test]
fn a_disabled_or_unserved_service_is_refused_with_what_to_do() {
    let s = Sandbox::start(&["--disable", "files"]);
    s.d.set_enabled(SESSION.name, false);
    let out = run(s.hv().args(["exec", "sb", "--", "true"]), b"", QUICK);
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(
        err.contains("hvsock service enable hvsock-session"),
        "{err}"
    );
    s.d.set_enabled(SESSION.name, true);
    let out = run(s.hv().args(["exec", "sb", "--", "true"]), b"", QUICK);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The agent was told not to serve files: nothing listens.
    let out = run(
        s.hv().args(["cp", "sb:/etc/hostname", "/tmp/x-never"]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is hvsock-agent running in sb"),
        "{}",
        text(&out.stderr)
    );
}

/// Sends raw bytes to the agent's session port and returns the Error it answers.
fn hostile(s: &Sandbox, bytes: &[u8]) -> RemoteError {
    let stream = HvStream::connect_with(
        &s.d.host(),
        SockAddrHv::new(s.vm, SESSION.id()),
        Duration::from_secs(5),
    )
    .unwrap();
    stream.set_read_timeout(Some(QUICK)).unwrap();
    let mut conn = &stream;
    conn.write_all(bytes).unwrap();
    let mut dec = Decoder::default();
    let mut frame = dec.read_frame(&mut conn).unwrap().expect("an Error frame");
    // Welcome and Started come first where the session got that far.
    while frame.kind == wire::WELCOME || frame.kind == 0x11 {
        frame = dec.read_frame(&mut conn).unwrap().expect("an Error frame");
    }
    assert_eq!(frame.kind, wire::ERROR);
    let err: RemoteError = frame.parse().unwrap();
    // ... and then the connection ends.
    assert!(matches!(dec.read_frame(&mut conn), Ok(None) | Err(_)));
    err
}

#[test]
fn hostile_messages_end_only_their_own_session() {
    let s = Sandbox::start(&[]);
    // A long-running session that must not notice anything.
    let mut bystander = s
        .hv()
        .args(["exec", "sb", "--", "sh", "-c", "read line; echo got $line"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let e = hostile(&s, &[0xff, 0xff, 0xff, 0x7f, 0x01]);
    assert_eq!(e.kind, ErrorKind::Protocol);
    assert!(e.message.contains("over the limit"), "{}", e.message);
    let e = hostile(&s, &[0, 0, 0, 0]);
    assert!(e.message.contains("empty frame"), "{}", e.message);
    let e = hostile(
        &s,
        &Frame {
            kind: 0x10,
            body: b"{}".to_vec(),
        }
        .encode(),
    );
    assert!(
        e.message.contains("while waiting for Hello"),
        "{}",
        e.message
    );
    let e = hostile(
        &s,
        &Frame {
            kind: wire::HELLO,
            body: b"{not json".to_vec(),
        }
        .encode(),
    );
    assert!(e.message.contains("malformed"), "{}", e.message);
    let hello = |service: &str, min: u16, max: u16| {
        Frame::json(
            wire::HELLO,
            &wire::Hello {
                service: service.into(),
                min,
                max,
                client: "t".into(),
            },
        )
        .encode()
    };
    let e = hostile(&s, &hello("files", 1, 1));
    assert_eq!(e.kind, ErrorKind::Service);
    let e = hostile(&s, &hello("session", 9, 12));
    assert_eq!(e.kind, ErrorKind::Version);
    // A Start without a command, then data sent before Start.
    let mut bytes = hello("session", 1, 1);
    bytes.extend(Frame::json(0x10, &serde_json::json!({"argv": []})).encode());
    let e = hostile(&s, &bytes);
    assert!(e.message.contains("no command"), "{}", e.message);
    let mut bytes = hello("session", 1, 1);
    bytes.extend(
        Frame {
            kind: 0x12,
            body: b"x".to_vec(),
        }
        .encode(),
    );
    let e = hostile(&s, &bytes);
    assert!(
        e.message.contains("while waiting for Start"),
        "{}",
        e.message
    );
    // Out of order during a session: an agent-to-host kind from the host.
    let mut bytes = hello("session", 1, 1);
    bytes.extend(Frame::json(0x10, &serde_json::json!({"argv": ["sleep", "30"]})).encode());
    bytes.extend(
        Frame {
            kind: 0x16,
            body: b"x".to_vec(),
        }
        .encode(),
    );
    let e = hostile(&s, &bytes);
    assert!(
        e.message.contains("from the host during a session"),
        "{}",
        e.message
    );

    let mut stdin = bystander.stdin.take().unwrap();
    stdin.write_all(b"through\n").unwrap();
    drop(stdin);
    let status = support::wait_exit(&mut bystander, QUICK).expect("the bystander ends");
    let mut out = String::new();
    bystander
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success());
    assert_eq!(out, "got through\n");
    // The agent is still there for the next one.
    let out = run(
        s.hv().args(["exec", "sb", "--", "echo", "fine"]),
        b"",
        QUICK,
    );
    assert_eq!(text(&out.stdout), "fine\n");
}

#[test]
fn the_agent_survives_hvsockd_restarting() {
    let mut s = Sandbox::start(&[]);
    let out = run(
        s.hv().args(["exec", "sb", "--", "echo", "before"]),
        b"",
        QUICK,
    );
    assert_eq!(text(&out.stdout), "before\n");
    s.d.restart();
    // The agent's listener binds again (the library does it by itself, or the agent's own
    // loop does after an error): exec works again within moments.
    let started = std::time::Instant::now();
    loop {
        let out = run(
            s.hv().args(["exec", "sb", "--", "echo", "after"]),
            b"",
            QUICK,
        );
        if text(&out.stdout) == "after\n" {
            break;
        }
        assert!(
            started.elapsed() < QUICK,
            "exec after the restart: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
