//! What the nested-VM tests share (included with `#[path]` by tests/nested_vm.rs and
//! tests/nested_vhost.rs): running the set-up, building the static guest CLI, and booting
//! guests with run-vm.sh in the background, watched through their serial console.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, SockAddrHv};
use sha2::{Digest, Sha256};

use crate::support::{self, Out};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` under `timeout(1)` (which also ends it after `secs`, should its guard not) and
/// returns its output; panics with it on failure.
pub fn run(what: &str, secs: u64, cmd: &mut Command) -> Out {
    support::run_checked("nested_vm", what, secs, cmd)
}

/// The nested-VM machinery, installed: `setup.sh` run (idempotent) and its `env.sh` read, with
/// `HVSOCK_CACHE` in it for the scripts the tests run next.
pub struct Prepared {
    pub cache: PathBuf,
    pub env: BTreeMap<String, String>,
    /// The static guest CLI (musl, `test-vm-guard`).
    pub guest_cli: PathBuf,
}

/// Installs what the nested-VM tests need with the project's own script (needs root on a fresh
/// machine), and builds the static guest CLI.
pub fn prepare() -> Prepared {
    let cache = std::env::var_os("HVSOCK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache"));
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
    Prepared {
        cache,
        env,
        guest_cli,
    }
}

impl Prepared {
    /// Writes the busybox initramfs `out` with the guest CLI as `/bin/hvsock` and `script`
    /// (relative to the repository) as the guest's `/etc/hvsock-vm/test.sh`.
    pub fn initramfs(&self, out: &Path, script: &str) {
        run(
            "mkinitramfs.sh",
            120,
            Command::new(repo().join("scripts/nested-vm/mkinitramfs.sh"))
                .arg("-o")
                .arg(out)
                .arg("--add")
                .arg(format!("{}:/bin/hvsock", self.guest_cli.display()))
                .arg("--add")
                .arg(format!(
                    "{}:/etc/hvsock-vm/test.sh",
                    repo().join(script).display()
                ))
                .env("HVSOCK_CACHE", &self.cache),
        );
    }
}

/// The exports of `setup.sh`'s env.sh.
pub fn load_env(cache: &Path) -> BTreeMap<String, String> {
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
pub fn build_guest_cli(musl: &str) -> PathBuf {
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

pub fn sha256(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// run-vm.sh's arguments for a guest `name` served by hvsock-vhost, routed by the hvsockd of
/// `hvsockd_dir`.
pub fn vhost_args(name: &str, hvsockd_dir: &Path) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    vec![
        "--device".into(),
        "hvsock-vhost".into(),
        "--vm".into(),
        name.into(),
        "--hvsock-vhost".into(),
        path(support::vhost_bin()),
        "--hvsock-dir".into(),
        path(hvsockd_dir),
    ]
}

/// The vhost-user-vsock device the guests get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// vhost-device-vsock, attached to hvsockd over hybrid vsock.
    Hybrid,
    /// hvsock-vhost, the VM's gateway in hvsockd.
    Vhost,
}

/// One run at a time (each boots two TCG guests).
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One guest booted by run-vm.sh in the background; stopped (SIGTERM to run-vm.sh, which
/// stops QEMU and the device) and reaped when dropped.
pub struct Vm {
    pub name: &'static str,
    pub run: PathBuf,
    child: Option<Child>,
    /// Every QEMU / device pid seen, to check that none is left.
    pub seen_pids: Vec<u32>,
}

impl Vm {
    pub fn boot(
        name: &'static str,
        env: &BTreeMap<String, String>,
        initrd: &Path,
        run: PathBuf,
        uds: &Path,
        cid: u32,
        extra: &[String],
    ) -> Vm {
        let script = repo().join("scripts/nested-vm/run-vm.sh");
        let mut cmd = Command::new(script);
        let child = cmd
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
            .args(extra)
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
    pub fn serial(&self) -> String {
        std::fs::read(self.run.join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    fn note_pids(&mut self) {
        for f in ["qemu.pid", "vhost-device-vsock.pid", "hvsock-vhost.pid"] {
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
    pub fn story(&self) -> String {
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
    pub fn line(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            self.note_pids();
            let serial = self.serial();
            // Whole lines only: QEMU may be writing the last one as we read.
            if let Some(rest) = serial
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
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
    pub fn wait(&mut self, deadline: Instant) -> i32 {
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

pub fn alive(pid: u32) -> bool {
    rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0))
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

/// Every process whose command line mentions `dir` (QEMU, vhost-device-vsock and run-vm.sh
/// all name the VM's run dir).
pub fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
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
pub fn accept_by(l: &HvListener, what: &str, deadline: Instant) -> (HvStream, SockAddrHv) {
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
pub fn transfer_report(line: &str) -> (i32, String, usize, String) {
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
