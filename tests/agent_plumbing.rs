//! Session plumbing for everything else, end to end: `hvsock listen --keep --exec` (inetd
//! style, one command per connection with the socket as its stdin and stdout) and `hvsock
//! ssh-proxy` (handing ssh the connected socket by `ProxyUseFdpass`), including real OpenSSH
//! (`ssh` and `scp` through the shipped `packaging/ssh/hvsock.conf`) to a real `sshd -i` in a
//! sandbox. OpenSSH's server comes from `scripts/ssh-test-deps.sh` (Debian's openssh-server,
//! never started as a service).

#![allow(clippy::unwrap_used)]

mod agent_support;
mod support;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use agent_support::{QUICK, pattern, run, sha256_file, text};
use hvsock::{HvListener, ServiceId, SockAddrHv, VmId};
use support::{Daemon, bins};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Spawns a long-running command, killed when the guard drops.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn listen_exec_runs_one_command_per_connection_on_the_socket() {
    let d = Daemon::start();
    d.add_service("upper", 7000);
    let vm = d.add_partition("sb", None);
    let log = d.dir().join("listen.log");
    let _listener = Running(
        d.cli()
            .args([
                "listen",
                "--keep",
                "-v",
                "--exec",
                "echo \"peer=$HVSOCK_PEER\"; tr a-z A-Z",
                "wildcard:upper",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    support::wait_for("the listener", QUICK, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
    });
    // Two connections at once from the sandbox, each served by its own command.
    let clients: Vec<_> = ["first", "second"]
        .into_iter()
        .map(|word| {
            let mut cmd = d.cli();
            cmd.args(["connect", "--as", "sb", "parent:7000"]);
            thread::spawn(move || run(&mut cmd, format!("hello {word}\n").as_bytes(), QUICK))
        })
        .collect();
    for (client, word) in clients.into_iter().zip(["FIRST", "SECOND"]) {
        let out = client.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let got = text(&out.stdout);
        assert!(got.starts_with(&format!("peer={vm}:")), "{got}");
        assert!(got.ends_with(&format!("HELLO {word}\n")), "{got}");
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged.matches(": running ").count(), 2, "{logged}");
}

#[test]
fn ssh_proxy_hands_ssh_the_connected_socket() {
    let d = Daemon::start();
    d.add_service("ssh", 22);
    let vm = d.add_partition("sb", None);
    let listener = HvListener::bind_with(
        &d.partition(vm),
        SockAddrHv::new(VmId::PARENT, ServiceId::from_vsock_port(22)),
        4,
    )
    .unwrap();
    // ssh's side of ProxyUseFdpass: a socket pair, the proxy's stdout one end.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut proxy = d
        .cli()
        .args(["ssh-proxy", "hvsock/sb", "22"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut served, peer) = listener.accept().unwrap();
    assert_eq!(peer.vm_id, d.root_id());
    let mut buf = [0u8; 16];
    let msg = hvsock_proto::unix::recv_message(ours.as_fd(), &mut buf, false).unwrap();
    assert_eq!(
        (msg.len, msg.fds.len()),
        (1, 1),
        "one byte carrying one descriptor"
    );
    let status =
        support::wait_exit(&mut proxy, QUICK).expect("the proxy exits once it handed over");
    assert!(status.success());
    // The descriptor is the connection itself.
    let mut passed = std::os::unix::net::UnixStream::from(msg.fds.into_iter().next().unwrap());
    passed.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    served.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    served.write_all(b"pong").unwrap();
    passed.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");

    // Without fd passing (stdout is a pipe) it relays like `hvsock connect`.
    let mut cmd = d.cli();
    cmd.args(["ssh-proxy", "sb", "22"]);
    let relay = thread::spawn(move || run(&mut cmd, b"over a pipe", QUICK));
    let (mut served, _) = listener.accept().unwrap();
    let mut got = Vec::new();
    served.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"over a pipe");
    served.write_all(b"back").unwrap();
    drop(served);
    let out = relay.join().unwrap();
    assert_eq!(text(&out.stdout), "back");
}

fn keygen(path: &Path) {
    let out = run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(path),
        b"",
        QUICK,
    );
    assert!(out.status.success(), "ssh-keygen: {}", text(&out.stderr));
}

#[test]
fn openssh_reaches_a_sandboxs_sshd_through_ssh_proxy() {
    let deps = run(
        &mut Command::new(repo().join("scripts/ssh-test-deps.sh")),
        b"",
        Duration::from_secs(900),
    );
    assert!(
        deps.status.success(),
        "scripts/ssh-test-deps.sh: {}",
        text(&deps.stderr)
    );
    let d = Daemon::start();
    d.add_service("ssh", 22);
    d.add_partition("sb", None);
    let w = tempfile::Builder::new()
        .prefix("hvsock-ssh-")
        .tempdir()
        .unwrap();
    let w = w.path();
    keygen(&w.join("host_key"));
    keygen(&w.join("id"));
    std::fs::copy(w.join("id.pub"), w.join("authorized_keys")).unwrap();
    let config = w.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "HostKey {dir}/host_key\nAuthorizedKeysFile {dir}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\nStrictModes no\n\
             PidFile none\nLogLevel ERROR\nSubsystem sftp internal-sftp\n",
            dir = w.display()
        ),
    )
    .unwrap();
    // The sandbox's sshd, inetd style on vsock port 22, as systemd's sshd-vsock.socket does.
    let log = w.join("listen.log");
    let _sshd = Running(
        d.cli()
            .args(["listen", "--as", "sb", "--keep", "-v", "--exec"])
            .arg(format!("/usr/sbin/sshd -i -f {}", config.display()))
            .arg("parent:22")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    support::wait_for("the sandbox's sshd listener", QUICK, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
    });
    // ssh with the shipped snippet verbatim; `hvsock` on PATH, HVSOCK_DIR naming this hvsockd.
    let snippet = repo().join("packaging/ssh/hvsock.conf");
    let path = format!(
        "{}:{}",
        bins().hvsock.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let ssh_opts = |cmd: &mut Command| {
        cmd.arg("-F")
            .arg(&snippet)
            .arg("-i")
            .arg(w.join("id"))
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                w.join("known_hosts").display()
            ))
            .args([
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-o",
                "BatchMode=yes",
            ])
            .env("PATH", &path)
            .env("HVSOCK_DIR", d.dir())
            .env_remove("HVSOCK_ENDPOINT")
            .env_remove("HVSOCK_TRANSPORT");
    };
    let mut ssh = Command::new("ssh");
    ssh_opts(&mut ssh);
    ssh.args([
        "root@hvsock/sb",
        "echo hello from $(hostname) via ssh; cat | wc -c",
    ]);
    let out = run(&mut ssh, &pattern(5, 100_000), QUICK);
    assert!(
        out.status.success(),
        "ssh: {}\n{}",
        text(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let got = text(&out.stdout);
    assert!(got.contains("via ssh"), "{got}");
    assert!(got.trim_end().ends_with("100000"), "{got}");

    // scp both ways, hashed (scp reads `hvsock/sb:` as a local path: the snippet takes
    // `hvsock%sb` too, as systemd's does `vsock%N`).
    let src = w.join("payload");
    std::fs::write(&src, pattern(6, 2 * 1024 * 1024 + 3)).unwrap();
    let mut scp = Command::new("scp");
    ssh_opts(&mut scp);
    scp.arg("-q")
        .arg(&src)
        .arg(format!("root@hvsock%sb:{}", w.join("copied").display()));
    let out = run(&mut scp, b"", QUICK);
    assert!(out.status.success(), "scp: {}", text(&out.stderr));
    assert_eq!(sha256_file(&w.join("copied")), sha256_file(&src));
    let mut scp = Command::new("scp");
    ssh_opts(&mut scp);
    scp.arg("-q")
        .arg(format!("root@hvsock%sb:{}", w.join("copied").display()))
        .arg(w.join("back"));
    let out = run(&mut scp, b"", QUICK);
    assert!(out.status.success(), "scp back: {}", text(&out.stderr));
    assert_eq!(sha256_file(&w.join("back")), sha256_file(&src));
}
