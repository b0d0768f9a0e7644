//! The examples as a user runs them: `host_service` (tokio, on the host, through `--dir`) and
//! `guest_service` (std, in a partition, through `HVSOCK_ENDPOINT`), built with the tests'
//! own cargo profile and run against a real hvsockd.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hvsock::{HvStream, ServiceId, SockAddrHv, VmId};
use support::{Daemon, Guard, Out, example, text, wait_for};

const LIMIT: Duration = Duration::from_secs(20);

/// The lines of a child's stdout, read by a thread so that each read can time out.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn new(out: ChildStdout) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    fn next(&self, what: &str) -> String {
        self.0
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("no line from {what} within {LIMIT:?}"))
    }

    /// Whether the stream ended (EOF) without another line.
    fn ended(&self) -> bool {
        matches!(
            self.0.recv_timeout(LIMIT),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    }
}

/// A command with none of the environment that could send it elsewhere than `d`.
fn clean(path: PathBuf) -> Command {
    let mut cmd = Command::new(path);
    cmd.env_remove("HVSOCK_DIR")
        .env_remove("HVSOCK_ENDPOINT")
        .env_remove("HVSOCK_TRANSPORT");
    cmd
}

/// `host_service --dir DIR PORT`, waiting until it listens; its stderr goes to `log`.
fn start_host(d: &Daemon, port: u32, log: &Path) -> (Guard, Lines) {
    let mut host = Guard::spawn(
        clean(example("host_service"))
            .arg("--dir")
            .arg(d.dir())
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap()),
    );
    let lines = Lines::new(host.child().stdout.take().unwrap());
    let first = lines.next("host_service");
    assert!(
        first.starts_with(&format!(
            "listening on wildcard:{} (vsock port {port})",
            ServiceId::from_vsock_port(port)
        )),
        "{first}"
    );
    (host, lines)
}

/// `guest_service` in partition `vm`.
fn guest(d: &Daemon, vm: VmId, args: &[&str]) -> Command {
    let mut cmd = clean(example("guest_service"));
    cmd.env("HVSOCK_ENDPOINT", d.dirs().partition_socket(vm))
        .args(args);
    cmd
}

/// Runs a command to its end, at most [`LIMIT`].
fn run(cmd: &mut Command) -> Out {
    support::run(cmd, b"", LIMIT)
}

#[test]
fn host_and_two_guests_converse_through_hvsockd() {
    let d = Daemon::start();
    let port = 6101;
    d.add_service("greeter", port);
    let g1 = d.add_partition("guest1", None);
    let g2 = d.add_partition("guest2", None);
    let log = d.dir().join("host_service.log");
    let (_host, _host_out) = start_host(&d, port, &log);

    // Guest 1 talks interactively through stdin and stays connected...
    let mut g1p = Guard::spawn(
        guest(&d, g1, &["--service", &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut g1_in = g1p.child().stdin.take().unwrap();
    let g1_out = Lines::new(g1p.child().stdout.take().unwrap());
    g1_in.write_all(b"first\n").unwrap();
    assert_eq!(g1_out.next("guest 1"), "host> first");

    // ...while guest 2 sends its arguments (one of them two lines) and leaves.
    let out = run(&mut guest(
        &d,
        g2,
        &["-s", &port.to_string(), "hello", "wide\nworld"],
    ));
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "host> hello\nhost> wide\nhost> world\n");
    let root = d.root_id();
    assert!(
        out.stderr.contains(&format!("connected to {root} as {g2}")),
        "{}",
        out.stderr
    );

    // Guest 1 is still served; EOF on its stdin ends it cleanly.
    g1_in.write_all(b"second\n").unwrap();
    assert_eq!(g1_out.next("guest 1"), "host> second");
    drop(g1_in);
    assert!(g1_out.ended(), "guest 1 printed more than the replies");
    assert!(g1p.wait(LIMIT).success());

    // The host logged who came and went, by VmId.
    wait_for("the host's log", LIMIT, || {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        [
            format!("{g1} connected"),
            format!("{g2} connected"),
            format!("{g2} left after 3 line(s)"),
            format!("{g1} left after 2 line(s)"),
        ]
        .iter()
        .all(|want| log.contains(want))
    });
}

#[test]
fn the_host_cuts_off_an_overlong_line_and_keeps_serving() {
    let d = Daemon::start();
    let port = 6102;
    d.add_service("greeter", port);
    let g = d.add_partition("guest", None);
    let log = d.dir().join("host_service.log");
    let (_host, _out) = start_host(&d, port, &log);
    let mut s = HvStream::connect_with(
        &d.partition(g),
        SockAddrHv::new(VmId::PARENT, ServiceId::from_vsock_port(port)),
        Duration::from_secs(2),
    )
    .unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    // The host stops reading at its limit and closes, so the write may fail part-way.
    let _ = s.write_all(&[b'x'; 10_000]);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert_eq!(text(&reply), "error: lines are at most 4096 bytes\n");
    let out = run(&mut guest(
        &d,
        g,
        &["--service", &port.to_string(), "still there?"],
    ));
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "host> still there?\n");
}

#[test]
fn a_refused_guest_exits_non_zero_and_says_why() {
    let d = Daemon::start();
    d.add_service("greeter", 6103);
    let g = d.add_partition("guest", None);
    // Registered, but no host side runs.
    let out = run(&mut guest(&d, g, &["-s", "6103", "hi"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = out.stderr;
    assert!(
        err.contains("connecting to parent:") && err.contains("greeter"),
        "{err}"
    );
    // Not registered at all.
    let out = run(&mut guest(&d, g, &["-s", "6104", "hi"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("not registered"));
    // No hvsockd behind the endpoint.
    let out = run(clean(example("guest_service"))
        .env("HVSOCK_ENDPOINT", d.dir().join("missing.sock"))
        .arg("hi"));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("is hvsockd running?"));
    let out = run(clean(example("host_service"))
        .arg("--dir")
        .arg(d.dir().join("nowhere")));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("is hvsockd running?"));
}

#[test]
fn bad_arguments_print_the_usage_line_and_exit_non_zero() {
    let cases: [(&str, &[&str]); 7] = [
        ("host_service", &["not-a-service"]),
        ("host_service", &["99999999999"]),
        ("host_service", &["1", "2"]),
        ("host_service", &["--dir"]),
        ("guest_service", &["--service", "nope"]),
        ("guest_service", &["--service"]),
        ("guest_service", &["--bogus"]),
    ];
    for (name, args) in cases {
        let out = run(clean(example(name)).args(args));
        let err = out.stderr;
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {err}");
        assert!(err.starts_with("error: "), "{name} {args:?}: {err}");
        assert!(
            err.contains(&format!("Usage: {name} [")),
            "{name} {args:?}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
}
