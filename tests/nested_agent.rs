//! The integration services in a real Linux guest: `hvsock-agent` (static, musl, with the
//! test-vm-guard) runs under busybox init in a QEMU guest (TCG, vhost-device-vsock, as in
//! `tests/nested_vm.rs`), over `AF_VSOCK`, and the host drives it through hvsockd's hybrid-vsock
//! attachment with the real commands: `hvsock exec` (streams apart, exit status, stdin hashed),
//! a `--tty` session driven through a pseudo-terminal, `hvsock cp` both ways (a file and a
//! tree, hashed, modes kept), and `hvsock vm shutdown`, after which busybox init powers the
//! guest off and QEMU exits. The guest's agent talks to hvsockd's own heartbeat and time
//! services (over the VM's hybrid vsock `PATH_50003`/`PATH_50004`), followed through the
//! admin API (what `hvsock vm show` prints): the guest boots with its clock in 2001 and the
//! agent sets it from hvsockd's; killing the agent makes the guest `lost` and busybox init's
//! respawn makes it `ok` again. Key-value pairs cross both ways through hvsockd's own
//! `hvsock-kvp` (`PATH_50005`): `hvsock kvp set` reaches the guest's file and `hvsock-agent
//! kvp get`, and the agent's built-in keys and a pair set in the guest reach `hvsock kvp`.
//!
//! It installs what it needs with `scripts/nested-vm/setup.sh` (idempotent) and never opens
//! `AF_VSOCK` on this machine. Every process it starts is stopped by its pid.

#![allow(clippy::unwrap_used)]

mod agent_support;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{pattern, run, sha256_file, text};
use hvsock_agent::services::{FILES, SESSION};
use hvsock_agent::time;
use sha2::{Digest, Sha256};
use support::Daemon;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ok(what: &str, secs: u64, cmd: &mut Command) -> String {
    let out = run(cmd, b"", Duration::from_secs(secs));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn load_env(cache: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(cache.join("nested-vm/env.sh")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

/// The static agent with the test-vm-guard, in the tests' profile, under `<target>/nested-vm`.
fn build_guest_agent(musl: &str) -> PathBuf {
    let (profile_dir, profile) = support::test_profile();
    let target_dir = profile_dir.parent().unwrap().join("nested-vm");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "hvsock-agent",
        "--bin",
        "hvsock-agent",
    ])
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
    cmd.env(format!("CARGO_PROFILE_{env_profile}_DEBUG"), "false")
        .env(format!("CARGO_PROFILE_{env_profile}_STRIP"), "true");
    ok(
        "building the static guest hvsock-agent (musl)",
        1800,
        &mut cmd,
    );
    target_dir.join(musl).join(&profile).join("hvsock-agent")
}

/// What changed in the guest as hvsockd's heartbeat and time services record it.
#[derive(Debug)]
struct Seen {
    /// `vm show --json`'s `guest`.
    guest: serde_json::Value,
    /// When the watcher saw it.
    at: Instant,
}

/// Watches partition `vm`'s guest through the admin API (every 100 ms), sending each change of
/// its state or of its last time report, until the flag returned is cleared.
fn watch_guest(
    d: &Daemon,
    vm: &str,
) -> (
    std::sync::mpsc::Receiver<Seen>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = watching.clone();
    let socket = d.dirs().admin_socket();
    let path = format!("/v1/partitions/{vm}");
    std::thread::spawn(move || {
        let mut last = None;
        while flag.load(std::sync::atomic::Ordering::SeqCst) {
            let (status, body) = support::http(&socket, "GET", &path, None);
            if status == 200 {
                if let Ok(p) = serde_json::from_str::<serde_json::Value>(&body) {
                    let g = p["guest"].clone();
                    let key = (
                        g["state"].clone(),
                        g["time_reported_at"].clone(),
                        g["time_offset_ns"].clone(),
                    );
                    if last.as_ref() != Some(&key) {
                        last = Some(key);
                        let seen = Seen {
                            guest: g,
                            at: Instant::now(),
                        };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    (rx, watching)
}

/// `hvsock exec --tty vm1 -- sh` on a pseudo-terminal of 40x100: `stty size` in the guest
/// says so, and `exit 5` is hvsock's status.
fn tty_session(d: &Daemon) {
    use rustix::pty::OpenptFlags;
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
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
    let size = rustix::termios::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&master, size).unwrap();
    let mut cmd = d.cli();
    cmd.args(["exec", "vm1", "--tty", "--", "sh"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: only system calls between fork and exec: a new session whose controlling
    // terminal is the pty (fd 0, just set up by std).
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let screen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let shared = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            shared
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut keys = std::fs::File::from(master);
    let wait = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !screen.lock().unwrap().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?}: {}",
                screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("# ");
    keys.write_all(b"stty size\r").unwrap();
    wait("40 100");
    keys.write_all(b"exit 5\r").unwrap();
    let status = support::wait_exit(&mut child, Duration::from_secs(60)).expect("hvsock exits");
    assert_eq!(status.code(), Some(5));
}

/// run-vm.sh in the background; SIGTERM (it stops QEMU and the device) and reaped on drop.
struct Vm {
    run: PathBuf,
    child: Option<Child>,
}

impl Vm {
    fn serial(&self) -> String {
        std::fs::read(self.run.join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    fn wait_serial(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.serial().contains(needle) {
            assert!(
                Instant::now() < deadline && !self.run.join("exit-status").exists(),
                "no {needle:?} on the guest's console:\n{}",
                self.serial()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let pid = rustix::process::Pid::from_child(&child);
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                if support::wait_exit(&mut child, Duration::from_secs(20)).is_none() {
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- guest console ---\n{}", self.serial());
        }
    }
}

#[test]
fn the_agent_in_a_real_guest_runs_commands_copies_files_and_shuts_it_down() {
    let started = Instant::now();
    let cache = std::env::var_os("HVSOCK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache"));
    ok(
        "scripts/nested-vm/setup.sh",
        2400,
        Command::new(repo().join("scripts/nested-vm/setup.sh")).env("HVSOCK_CACHE", &cache),
    );
    let env = load_env(&cache);
    let musl = env
        .get("MUSL_TARGET")
        .cloned()
        .unwrap_or_else(|| "x86_64-unknown-linux-musl".into());
    let agent = build_guest_agent(&musl);

    let work = tempfile::Builder::new()
        .prefix("hvna")
        .tempdir_in("/tmp")
        .unwrap();
    let w = work.path();
    let initrd = w.join("initrd.gz");
    let guest = |name: &str| {
        repo()
            .join("tests/nested_agent")
            .join(name)
            .display()
            .to_string()
    };
    ok(
        "mkinitramfs.sh",
        120,
        Command::new(repo().join("scripts/nested-vm/mkinitramfs.sh"))
            .arg("-o")
            .arg(&initrd)
            .args(["--init", &guest("init.sh")])
            .arg("--add")
            .arg(format!("{}:/bin/hvsock-agent", agent.display()))
            .args(["--add", &format!("{}:/etc/inittab", guest("inittab"))])
            .args([
                "--add",
                &format!("{}:/etc/hvsock-vm/agent.sh", guest("agent.sh")),
            ])
            .env("HVSOCK_CACHE", &cache),
    );

    // hvsockd registered the integration services at first start, the VM session and file
    // copy disabled: enable them, as an administrator does.
    let d = Daemon::start();
    for s in [SESSION, FILES] {
        d.set_enabled(s.name, true);
    }
    let uds = w.join("vm1.vsock");
    d.add_vm("vm1", &uds);
    // The agent reaches hvsockd's own heartbeat and time services: nothing is played here.
    let (seen, watching) = watch_guest(&d, "vm1");
    let next = |what: &str| {
        seen.recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("the guest's agent sent no {what}"))
    };
    let run_dir = w.join("r1");
    let vm = Vm {
        child: Some(
            Command::new(repo().join("scripts/nested-vm/run-vm.sh"))
                .arg("--initrd")
                .arg(&initrd)
                .arg("--run-dir")
                .arg(&run_dir)
                .args(["--cid", "3", "--smp", "1", "--timeout", "300"])
                .arg("--uds")
                .arg(&uds)
                .env("HVSOCK_CACHE", &cache)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(w.join("run-vm.log")).unwrap())
                .spawn()
                .unwrap(),
        ),
        run: run_dir,
    };
    vm.wait_serial("HVSOCK-AGENT-BOOTED", Duration::from_secs(120));
    vm.wait_serial("serving hvsock-shutdown", Duration::from_secs(60));
    let booted = started.elapsed();
    let hv = || d.cli();

    // Heartbeat and time: the guest is ok with its facts, and the wrong clock (2001) was
    // measured and set through hvsockd's time service.
    let mut facts = None;
    let mut stepped = None;
    while facts.is_none() || stepped.is_none() {
        let g = next("ok and a time report").guest;
        if g["state"] == "ok" && g["kernel"].is_string() {
            facts = Some(g.clone());
        }
        if g["time_stepped"] == true {
            stepped = Some(g["time_offset_ns"].as_i64().unwrap());
        }
    }
    let (facts, offset) = (facts.unwrap(), stepped.unwrap());
    eprintln!("guest: {facts}");
    if let Some(kernel) = env.get("KERNEL_VERSION") {
        assert_eq!(facts["kernel"], kernel.as_str(), "{facts}");
    }
    assert_eq!(facts["agent"], env!("CARGO_PKG_VERSION"), "{facts}");
    assert!(
        offset > 20 * 365 * 86_400 * 1_000_000_000,
        "offset {offset} ns"
    );
    eprintln!("the agent stepped the guest clock by {offset} ns");
    let guest_now: i64 = ok(
        "date in the guest",
        60,
        hv().args(["exec", "vm1", "--", "date", "+%s"]),
    )
    .trim()
    .parse()
    .unwrap();
    let host_now = time::now_ns() / 1_000_000_000;
    assert!(
        (guest_now - host_now).abs() <= 5,
        "guest {guest_now}, host {host_now}"
    );
    // The agent killed: the guest is lost; busybox init respawns it: ok again.
    let killed = Instant::now();
    let _ = run(
        hv().args(["exec", "vm1", "--", "killall", "-KILL", "hvsock-agent"]),
        b"",
        Duration::from_secs(60),
    );
    let mut lost = None;
    loop {
        let g = next("the guest state after the agent was killed");
        if g.guest["state"] == "lost" && lost.is_none() {
            lost = Some(g.at.duration_since(killed));
        }
        if let (Some(lost), true) = (lost, g.guest["state"] == "ok") {
            eprintln!(
                "agent killed: lost after {lost:?}, ok again after {:?}",
                g.at.duration_since(killed)
            );
            break;
        }
    }
    watching.store(false, std::sync::atomic::Ordering::SeqCst);
    // vm show prints the guest and the last offset (a small one by now, or the step).
    let show = ok("vm show", 30, hv().args(["vm", "show", "vm1"]));
    eprintln!("{show}");
    assert!(show.contains("guest:        ok"), "{show}");
    assert!(
        show.lines().any(
            |l| l.starts_with("time_offset:") && l.contains("of the host")
                || l.starts_with("time_offset:") && l.contains("behind the host")
        ),
        "{show}"
    );
    vm.wait_serial("serving hvsock-session", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run(
        hv().args(["exec", "vm1", "--", "true"]),
        b"",
        Duration::from_secs(30),
    )
    .status
    .success()
    {
        assert!(
            Instant::now() < deadline,
            "the respawned agent never served"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Key-value both ways over hvsockd's own hvsock-kvp (PATH_50005): a host pair reaches the
    // guest's file and `hvsock-agent kvp`; the agent's built-in keys and a guest program's
    // pair reach the host.
    let t0 = Instant::now();
    ok(
        "kvp set",
        30,
        hv().args(["kvp", "set", "vm1", "role", "nested"]),
    );
    let kvp_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(
            hv().args([
                "exec",
                "vm1",
                "--",
                "cat",
                "/run/hvsock-agent/kvp/host/role",
            ]),
            b"",
            Duration::from_secs(30),
        );
        if out.status.success() && text(&out.stdout) == "nested" {
            break;
        }
        assert!(
            Instant::now() < kvp_deadline,
            "the host's pair never reached the guest: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let kvp_seen = t0.elapsed();
    let got = ok(
        "hvsock-agent kvp get in the guest",
        60,
        hv().args([
            "exec",
            "vm1",
            "--",
            "hvsock-agent",
            "kvp",
            "get",
            "--pool",
            "host",
            "role",
        ]),
    );
    assert_eq!(got, "nested\n");
    ok(
        "hvsock-agent kvp set in the guest",
        60,
        hv().args([
            "exec",
            "vm1",
            "--",
            "hvsock-agent",
            "kvp",
            "set",
            "gk",
            "gv",
        ]),
    );
    let kvp_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(
            hv().args(["kvp", "list", "vm1", "--pool", "guest", "--json"]),
            b"",
            Duration::from_secs(30),
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let pairs = &json["guest"]["pairs"];
        if pairs["gk"] == "gv"
            && ["hostname", "os", "kernel", "agent"]
                .iter()
                .all(|k| pairs[k].is_string())
        {
            if let Some(kernel) = env.get("KERNEL_VERSION") {
                assert_eq!(pairs["kernel"], kernel.as_str(), "{json}");
            }
            break;
        }
        assert!(
            Instant::now() < kvp_deadline,
            "the guest's pool never reached the host: {json}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("kvp: host set -> guest file seen by exec polling in {kvp_seen:?}");

    // exec: streams apart, the exit status, stdin through `cat` hashed.
    let out = run(
        hv().args([
            "exec",
            "vm1",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out\n".into(), "err\n".into())
    );
    let data = pattern(11, 2 * 1024 * 1024 + 7);
    let out = run(
        hv().args(["exec", "vm1", "--", "cat"]),
        &data,
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        Sha256::digest(&out.stdout),
        Sha256::digest(&data),
        "stdin through the guest"
    );
    let kernel = ok(
        "uname in the guest",
        60,
        hv().args(["exec", "vm1", "--", "uname", "-r"]),
    );
    if let Some(want) = env.get("KERNEL_VERSION") {
        assert_eq!(kernel.trim(), want, "the guest's kernel");
    }

    // A terminal session driven through a pseudo-terminal: the size follows, the status too.
    tty_session(&d);

    // cp: a file in and back out, a guest file out, a tree in; hashes and modes.
    let src = w.join("in.bin");
    std::fs::write(&src, pattern(12, 3 * 1024 * 1024 + 1)).unwrap();
    ok(
        "cp in",
        120,
        hv().arg("cp").arg(&src).arg("vm1:/srv/in.bin"),
    );
    ok(
        "cp back",
        120,
        hv().args(["cp", "vm1:/srv/in.bin"]).arg(w.join("back.bin")),
    );
    assert_eq!(sha256_file(&w.join("back.bin")), sha256_file(&src));
    let out = ok(
        "sha256sum in the guest",
        60,
        hv().args(["exec", "vm1", "--", "sha256sum", "/srv/in.bin"]),
    );
    assert!(out.starts_with(&sha256_file(&src)), "{out}");
    ok(
        "cp a guest file out",
        60,
        hv().args(["cp", "vm1:/srv/guest.txt"]).arg(w),
    );
    assert_eq!(
        std::fs::read_to_string(w.join("guest.txt")).unwrap(),
        "made in the guest\n"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(w.join("guest.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    let tree = w.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a"), "a\n").unwrap();
    ok(
        "cp -r in",
        120,
        hv().args(["cp", "-r"]).arg(&tree).arg("vm1:/srv"),
    );
    let out = ok(
        "the tree in the guest",
        60,
        hv().args(["exec", "vm1", "--", "cat", "/srv/tree/sub/a"]),
    );
    assert_eq!(out, "a\n");

    // Shutdown through busybox init: the command returns once the guest has gone, QEMU exits.
    let out = ok(
        "vm shutdown",
        180,
        hv().args(["vm", "shutdown", "vm1", "--timeout", "150"]),
    );
    assert!(out.contains("busybox init"), "{out}");
    let mut vm = vm;
    let mut child = vm.child.take().unwrap();
    let status = support::wait_exit(&mut child, Duration::from_secs(120)).expect("run-vm.sh ends");
    vm.child = Some(child);
    assert!(
        status.success(),
        "run-vm.sh: {status}\n{}",
        std::fs::read_to_string(w.join("run-vm.log")).unwrap_or_default()
    );
    assert!(
        vm.serial().contains("HVSOCK-AGENT-SHUTDOWN"),
        "busybox init ran its shutdown entries"
    );
    eprintln!(
        "nested_agent: booted in {booted:.1?}; everything in {:.1?}",
        started.elapsed()
    );
}
