//! The nested-VM test: real Linux guests (Debian's stock cloud kernel under QEMU/TCG, with a
//! vhost-user-vsock device served by vhost-device-vsock) talk to hvsockd on this host through
//! the hybrid-vsock attachment, running the project's own static `hvsock` binary over
//! `AF_VSOCK` inside the guest.
//!
//! It installs what it needs itself (`scripts/nested-vm/setup.sh`, idempotent) and fails, never
//! skips, if it cannot. Then: the static CLI (`x86_64-unknown-linux-musl`, feature
//! `test-vm-guard`, same profile, under this target dir), hvsockd, services and two VMs
//! registered through the CLI (`vm add --hybrid-vsock`), one initramfs holding the binary and
//! `tests/nested_vm/guest.sh`, two guests booted at once by `run-vm.sh`, and the checks:
//!
//! - guest to host through a host listener bound to vm1's id: 16 MiB each way, sha256 on both
//!   sides, the connection seen as coming from vm1;
//! - host to guest through `hvsock connect vm1:guestsvc` to the guest's `hvsock listen`: 16 MiB
//!   each way, hashed;
//! - an echo through a wildcard listener from both VMs, each seen as itself;
//! - guests refused for a disabled and an unregistered service, and vm2 for the listener meant
//!   for vm1 (no `PATH_<port>` exists for them, so nothing is accepted and dropped);
//! - the guest binary refuses to run without the kernel command-line marker;
//! - both guests power off cleanly (status 0), and nothing is left running.
//!
//! No `AF_VSOCK` socket is opened on this machine: the host side is Unix sockets only.
//! Everything is bounded; every process started here is stopped by its pid.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, VmId};
use sha2::{Digest, Sha256};
use support::{Daemon, Guard, Out, pattern};

/// Bytes each way of the bulk transfers.
const BULK: usize = 16 * 1024 * 1024;
/// The bound on everything from the first boot to the last power-off.
const VM_PHASE: Duration = Duration::from_secs(240);
/// Ports of the services.
const BULK_PORT: u32 = 5001; // a host listener bound to vm1's id
const COMMON_PORT: u32 = 5002; // a wildcard host listener
const DISABLED_PORT: u32 = 5003; // registered, disabled, listened on
const UNREGISTERED_PORT: u32 = 5004; // listened on, never registered
const GUEST_PORT: u32 = 6001; // vm1's guest listens

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` under `timeout(1)` (which also ends it after `secs`, should its guard not) and
/// returns its output; panics with it on failure.
fn run(what: &str, secs: u64, cmd: &mut Command) -> Out {
    let mut wrapped = Command::new("timeout");
    wrapped
        .args(["-k", "5", &secs.to_string()])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    let out = support::run(&mut wrapped, b"", Duration::from_secs(secs + 10));
    assert!(
        out.status.success(),
        "{what} failed ({}) after {:.0?}:\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        out.elapsed,
        out.stdout,
        out.stderr
    );
    eprintln!("nested_vm: {what}: {:.1?}", out.elapsed);
    out
}

/// The exports of `setup.sh`'s env.sh.
fn load_env(cache: &Path) -> BTreeMap<String, String> {
    let path = cache.join("nested-vm/env.sh");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (setup.sh should have written it)", path.display()));
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// Builds the static guest CLI with the test-vm-guard, in the tests' profile, under
/// `<target>/nested-vm`.
fn build_guest_cli(musl: &str) -> PathBuf {
    let (profile_dir, profile) = support::test_profile();
    let target_dir = profile_dir.parent().unwrap().join("nested-vm");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "hvsock-cli", "--bin", "hvsock"])
        .args(["--features", "test-vm-guard", "--target", musl])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(repo());
    let env_profile = match profile.as_str() {
        "debug" => "DEV".to_owned(),
        "release" => {
            cmd.arg("--release");
            "RELEASE".to_owned()
        }
        other => {
            cmd.args(["--profile", other]);
            other.to_uppercase().replace('-', "_")
        }
    };
    // A smaller initramfs: no debug info in the guest's copy.
    cmd.env(format!("CARGO_PROFILE_{env_profile}_DEBUG"), "false")
        .env(format!("CARGO_PROFILE_{env_profile}_STRIP"), "true");
    run("building the static guest hvsock (musl)", 1800, &mut cmd);
    target_dir.join(musl).join(&profile).join("hvsock")
}

fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// One guest booted by run-vm.sh in the background; stopped (SIGTERM to run-vm.sh, which
/// stops QEMU and the device) and reaped when dropped.
struct Vm {
    name: &'static str,
    run: PathBuf,
    child: Option<Child>,
    /// Every QEMU / vhost-device-vsock pid seen, to check that none is left.
    seen_pids: Vec<u32>,
}

impl Vm {
    fn boot(
        name: &'static str,
        env: &BTreeMap<String, String>,
        initrd: &Path,
        run: PathBuf,
        uds: &Path,
        cid: u32,
    ) -> Vm {
        let script = repo().join("scripts/nested-vm/run-vm.sh");
        let child = Command::new(script)
            .arg("--initrd")
            .arg(initrd)
            .arg("--run-dir")
            .arg(&run)
            .args([
                "--cid",
                &cid.to_string(),
                "--smp",
                "1",
                "--timeout",
                "200",
                "--guest-status",
            ])
            .arg("--uds")
            .arg(uds)
            .args(["--append", &format!("hvsock_role={name}")])
            .envs(env.iter().filter(|(k, _)| k.as_str() == "HVSOCK_CACHE"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(run.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        Vm {
            name,
            run,
            child: Some(child),
            seen_pids: Vec::new(),
        }
    }

    /// The serial console so far, lines without `\r`.
    fn serial(&self) -> String {
        std::fs::read(self.run.join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    fn note_pids(&mut self) {
        for f in ["qemu.pid", "vhost-device-vsock.pid"] {
            if let Some(pid) = std::fs::read_to_string(self.run.join(f))
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                if !self.seen_pids.contains(&pid) {
                    self.seen_pids.push(pid);
                }
            }
        }
    }

    /// What run-vm.sh said, and the end of the serial log, for failure messages.
    fn story(&self) -> String {
        let log = std::fs::read_to_string(self.run.with_extension("log")).unwrap_or_default();
        let serial = self.serial();
        let tail: Vec<&str> = serial.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- {} run-vm.sh ---\n{log}\n--- {} serial (last 60 lines) ---\n{}",
            self.name,
            self.name,
            tail.join("\n")
        )
    }

    /// Waits for a serial line starting with `prefix`; returns the rest of it.
    fn line(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            self.note_pids();
            let serial = self.serial();
            if let Some(rest) = serial
                .lines()
                .find_map(|l| l.trim_start().strip_prefix(prefix))
            {
                return rest.trim().to_owned();
            }
            if serial.contains("HVSOCK-GUEST-FAIL") || self.run.join("exit-status").exists() {
                panic!(
                    "{} ended or failed before printing {prefix:?}\n{}",
                    self.name,
                    self.story()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} printed no {prefix:?} in time\n{}",
                self.name,
                self.story()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for run-vm.sh to end and returns its status.
    fn wait(&mut self, deadline: Instant) -> i32 {
        loop {
            self.note_pids();
            let child = self.child.as_mut().expect("run-vm.sh already reaped");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not power off in time\n{}",
                self.name,
                self.story()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            // run-vm.sh stops QEMU and vhost-device-vsock on SIGTERM.
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        if thread::panicking() {
            eprintln!("{}", self.story());
        }
    }
}

fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0))
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Every process whose command line mentions `dir` (QEMU, vhost-device-vsock and run-vm.sh
/// all name the VM's run dir).
fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Accepts one connection within `deadline` (the listener is non-blocking).
fn accept_by(l: &HvListener, what: &str, deadline: Instant) -> (HvStream, SockAddrHv) {
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(120))).unwrap();
                return (s, peer);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no connection for {what} in time"
                );
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("accepting for {what}: {e}"),
        }
    }
}

/// Parses `rc=N HASH LEN ...` (the guest's report of a transfer).
fn transfer_report(line: &str) -> (i32, String, usize, String) {
    let mut words = line.splitn(4, ' ');
    let rc = words
        .next()
        .and_then(|w| w.strip_prefix("rc="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    let hash = words.next().unwrap_or_default().to_owned();
    let len = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (rc, hash, len, words.next().unwrap_or_default().to_owned())
}

#[test]
fn real_guests_through_hvsockd_over_hybrid_vsock() {
    let started = Instant::now();
    let cache = std::env::var_os("HVSOCK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache"));

    // 1. What the test needs, installed by the project's own script (idempotent).
    run(
        "scripts/nested-vm/setup.sh (installs QEMU, the kernel, busybox, vhost-device-vsock, the musl target; needs root on a fresh machine)",
        2400,
        Command::new(repo().join("scripts/nested-vm/setup.sh")).env("HVSOCK_CACHE", &cache),
    );
    let mut env = load_env(&cache);
    env.insert("HVSOCK_CACHE".into(), cache.to_string_lossy().into_owned());
    let musl = env
        .get("MUSL_TARGET")
        .cloned()
        .unwrap_or_else(|| "x86_64-unknown-linux-musl".into());
    let guest_cli = build_guest_cli(&musl);

    // 2. A short work dir (Unix socket paths), one initramfs for both guests.
    let work = tempfile::Builder::new()
        .prefix("hvnv")
        .tempdir_in("/tmp")
        .unwrap();
    let w = work.path();
    let initrd = w.join("initrd.gz");
    run(
        "mkinitramfs.sh",
        120,
        Command::new(repo().join("scripts/nested-vm/mkinitramfs.sh"))
            .arg("-o")
            .arg(&initrd)
            .arg("--add")
            .arg(format!("{}:/bin/hvsock", guest_cli.display()))
            .arg("--add")
            .arg(format!(
                "{}:/etc/hvsock-vm/test.sh",
                repo().join("tests/nested_vm/guest.sh").display()
            ))
            .env("HVSOCK_CACHE", &cache),
    );

    // 3. hvsockd, the services and the VMs, through the CLI.
    let d = Daemon::start();
    let hv = |args: &[&str]| -> String { support::hv(&d, args).ok().trim().to_owned() };
    let svc = |name: &str, port: u32, extra: &[&str]| {
        let mut args = vec!["service", "add", name, "--port"];
        let port = port.to_string();
        args.push(&port);
        args.extend_from_slice(extra);
        ServiceId::parse(&hv(&args)).unwrap()
    };
    let bulk = svc("bulk", BULK_PORT, &[]);
    let common = svc("common", COMMON_PORT, &[]);
    let disabled = svc("off", DISABLED_PORT, &["--disabled"]);
    svc("guestsvc", GUEST_PORT, &[]);
    let uds1 = w.join("vm1.vsock");
    let uds2 = w.join("vm2.vsock");
    let vm1 = VmId::parse(&hv(&[
        "vm",
        "add",
        "vm1",
        "--hybrid-vsock",
        uds1.to_str().unwrap(),
    ]))
    .unwrap();
    let vm2 = VmId::parse(&hv(&[
        "vm",
        "add",
        "vm2",
        "--hybrid-vsock",
        uds2.to_str().unwrap(),
    ]))
    .unwrap();

    // Host listeners, bound before the guests boot.
    let listen = |vm: VmId, svc: ServiceId| {
        let l = HvListener::bind_with(&d.host(), SockAddrHv::new(vm, svc), 8).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    };
    let bulk_l = listen(vm1, bulk);
    let common_l = listen(VmId::WILDCARD, common);
    let _disabled_l = listen(VmId::WILDCARD, disabled);
    let _unregistered_l = listen(
        VmId::WILDCARD,
        ServiceId::from_vsock_port(UNREGISTERED_PORT),
    );
    let is_socket =
        |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket());
    let port_file = |uds: &Path, port: u32| PathBuf::from(format!("{}_{port}", uds.display()));
    support::wait_for("the guest ports to open", Duration::from_secs(5), || {
        is_socket(&port_file(&uds1, BULK_PORT))
            && is_socket(&port_file(&uds1, COMMON_PORT))
            && is_socket(&port_file(&uds2, COMMON_PORT))
    });
    for (uds, port) in [
        (&uds2, BULK_PORT),
        (&uds1, DISABLED_PORT),
        (&uds2, DISABLED_PORT),
        (&uds1, UNREGISTERED_PORT),
    ] {
        assert!(
            !is_socket(&port_file(uds, port)),
            "{}_{port} exists",
            uds.display()
        );
    }
    eprintln!("nested_vm: ready to boot after {:.1?}", started.elapsed());

    // 4. Both guests at once.
    let vm_started = Instant::now();
    let deadline = vm_started + VM_PHASE;
    let mut g1 = Vm::boot("vm1", &env, &initrd, w.join("r1"), &uds1, 3);
    let mut g2 = Vm::boot("vm2", &env, &initrd, w.join("r2"), &uds2, 4);

    // Host side of the echo: two connections, each answered with whom hvsockd says it is.
    let echo = thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut s, peer) = accept_by(&common_l, "the echo", deadline);
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            s.write_all(format!("host-saw {} said {}", peer.vm_id, line).as_bytes())
                .unwrap();
            seen.push((peer, line.trim().to_owned()));
        }
        seen
    });
    // Guest to host: read exactly 16 MiB, then send 16 MiB back and close.
    let host_data = pattern(BULK, 0x5eed);
    let host_hash = sha256(&host_data);
    let g2h = thread::spawn(move || {
        let (mut s, peer) = accept_by(&bulk_l, "guest to host", deadline);
        let mut got = vec![0u8; BULK];
        s.read_exact(&mut got).unwrap();
        s.write_all(&host_data).unwrap();
        drop(s);
        (peer, sha256(&got))
    });

    // Host to guest: once vm1 listens, `hvsock connect vm1:guestsvc`; 16 MiB in, 16 MiB out,
    // and stdin stays open until all of the guest's bytes have come.
    g1.line("T-H2G-LISTENING", deadline);
    let h2g_data = pattern(BULK, 0xface);
    let h2g_hash = sha256(&h2g_data);
    let mut connect = Guard::spawn(
        d.cli()
            .args(["connect", "--timeout", "10000", "vm1:guestsvc"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut stdin = connect.child().stdin.take().unwrap();
    let feeder = thread::spawn(move || {
        let result = stdin.write_all(&h2g_data);
        (stdin, result)
    });
    let mut from_guest = vec![0u8; BULK];
    let mut stdout = connect.child().stdout.take().unwrap();
    let read = stdout.read_exact(&mut from_guest);
    let (stdin, fed) = feeder.join().unwrap();
    drop(stdin); // EOF: the CLI half-closes, which over this VMM ends the connection
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let status = connect.wait(deadline.saturating_duration_since(Instant::now()));
    let mut err = String::new();
    connect
        .child()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        read.is_ok() && fed.is_ok(),
        "host to guest: read {read:?}, write {fed:?}: {err}\n{}",
        g1.story()
    );
    assert!(
        status.success(),
        "hvsock connect vm1:guestsvc: {status}: {err}"
    );
    assert!(
        rest.is_empty(),
        "{} bytes more than 16 MiB from the guest",
        rest.len()
    );
    let from_guest_hash = sha256(&from_guest);

    // 5. The guests' reports.
    let g2h_sent = g1.line("T-G2H-SENT ", deadline);
    let (rc, g2h_recv_hash, g2h_recv_len, g2h_err) =
        transfer_report(&g1.line("T-G2H-RECV ", deadline));
    let (peer, host_got) = g2h.join().unwrap();
    assert_eq!(
        peer,
        SockAddrHv::new(vm1, bulk),
        "guest to host: the peer is vm1 by its attachment"
    );
    assert_eq!(
        g2h_sent,
        format!("{host_got} {BULK}"),
        "guest to host: what the guest sent is what the host got"
    );
    assert_eq!(
        (g2h_recv_hash.as_str(), g2h_recv_len),
        (host_hash.as_str(), BULK),
        "guest to host: the host's 16 MiB back ({g2h_err})"
    );
    assert_eq!(
        rc, 0,
        "guest to host: hvsock connect in the guest: {g2h_err}"
    );

    let (rc, h2g_recv_hash, h2g_recv_len, h2g_err) =
        transfer_report(&g1.line("T-H2G-RECV ", deadline));
    assert_eq!(
        (h2g_recv_hash.as_str(), h2g_recv_len),
        (h2g_hash.as_str(), BULK),
        "host to guest: what the guest got ({h2g_err})"
    );
    assert_eq!(
        g1.line("T-H2G-SENT ", deadline),
        format!("{from_guest_hash} {BULK}"),
        "host to guest: what the host got"
    );
    assert_eq!(
        rc, 0,
        "host to guest: hvsock listen in the guest: {h2g_err}"
    );

    let seen = echo.join().unwrap();
    for (g, vm) in [(&mut g1, vm1), (&mut g2, vm2)] {
        let reply = g.line("T-COMMON ", deadline);
        assert_eq!(
            reply,
            format!("rc=0 host-saw {vm} said hello from {}", g.name),
            "{}'s echo",
            g.name
        );
    }
    let mut peers: Vec<VmId> = seen.iter().map(|(p, _)| p.vm_id).collect();
    peers.sort();
    let mut want = vec![vm1, vm2];
    want.sort();
    assert_eq!(peers, want);

    let refused = |g: &mut Vm, port: u32| {
        let line = g.line(&format!("T-REFUSED {port} "), deadline);
        assert!(
            !line.starts_with("rc=0 "),
            "{}: a connect to {port} succeeded: {line}",
            g.name
        );
        assert!(line.contains("bytes=0 "), "{}: {line}", g.name);
        assert!(
            line.contains("connecting to parent:") && line.contains(&format!("port {port}")),
            "{}: {line}",
            g.name
        );
        line
    };
    let r = [
        refused(&mut g1, DISABLED_PORT),
        refused(&mut g1, UNREGISTERED_PORT),
        refused(&mut g2, BULK_PORT),
        refused(&mut g2, DISABLED_PORT),
    ];
    eprintln!(
        "nested_vm: refusals seen in the guests:\n  {}",
        r.join("\n  ")
    );

    let guard = g2.line("T-GUARD ", deadline);
    assert!(
        !guard.starts_with("rc=0"),
        "the guard let the binary run without the marker: {guard}"
    );
    assert!(
        guard.contains("test-vm-guard") && guard.contains("hvsock_test_vm=1"),
        "{guard}"
    );

    // 6. Clean power-off, nothing left.
    g1.line("T-DONE vm1", deadline);
    g2.line("T-DONE vm2", deadline);
    for g in [&mut g1, &mut g2] {
        let status = g.wait(deadline);
        assert_eq!(
            status,
            0,
            "{} did not power off cleanly\n{}",
            g.name,
            g.story()
        );
        assert!(g.serial().contains("HVSOCK-GUEST-EXIT 0"), "{}", g.story());
    }
    let vm_took = vm_started.elapsed();
    for g in [&g1, &g2] {
        for &pid in &g.seen_pids {
            assert!(!alive(pid), "{}: pid {pid} is still running", g.name);
        }
    }
    let left = processes_mentioning(w);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    // hvsockd counted what crossed, per VM.
    let (_, stats) = d.api("GET", "/v1/stats", None);
    let established = |partition: &str, service: &str| {
        stats["connections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["partition"] == partition && r["service"] == service)
            .map(|r| r["established"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    assert_eq!(established("vm1", "bulk"), 1, "{stats}");
    assert_eq!(established("vm1", "common"), 1, "{stats}");
    assert_eq!(established("vm2", "common"), 1, "{stats}");
    assert_eq!(established("vm2", "bulk"), 0, "{stats}");
    assert_eq!(established("host", "guestsvc"), 1, "{stats}");
    drop(d);
    drop(work);
    eprintln!(
        "nested_vm: both guests booted, checked and powered off in {vm_took:.1?}; whole test {:.1?}",
        started.elapsed()
    );
}
