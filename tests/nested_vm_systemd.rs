//! hvsockd under real systemd: a Debian guest (`scripts/nested-vm/rootfs.sh`: systemd, udev
//! and the project's units from `packaging/`, booted whole as the initramfs under QEMU/TCG)
//! where `hvsockd.socket` is enabled, and a test driver (`tests/nested_vm_systemd/driver.sh`,
//! run by a oneshot-style unit) that exercises hvsockd's continuity as users meet it:
//!
//! - socket activation: `hvsockd.socket` listens from boot, `hvsockd.service` starts on the
//!   first request; the `hvsock` group from sysusers.d owns `host.sock`;
//! - a sandbox partition (`hvsock vm add`) whose program, in a child mount namespace
//!   (`unshare -m`), bind-mounted its partition's directory and reaches a host listener;
//! - `hvsock listen --keep` bound, and an established connection from the host and one from
//!   the sandbox;
//! - `systemctl restart hvsockd`, then `kill -9` of hvsockd (systemd restarts it,
//!   `Restart=on-failure`): after each, hvsockd serves again, the registry kept a write made
//!   just before, both established connections carry data, the sandbox reaches the listener
//!   through the same mount, and the listener is still bound with the same descriptor (its
//!   socket inode) and printed no error; a connect loop measures the time without service.
//!   The shipped unit enables systemd's descriptor store (`FileDescriptorStoreMax=`), so after
//!   both hvsockd resumes every socket from it: the listener's very socket and the sandbox's
//!   endpoint (same inodes) are required. Last, `systemctl stop hvsockd`: systemd empties the
//!   store then (the next start, by socket activation, resumes nothing) and the listener binds
//!   again by itself.
//!
//! The guest reports `HVSOCK-SYSVM CHECK <name> ok|FAIL <detail>` lines on its serial console;
//! this test reads whole lines, prints every result and the measured gaps, and requires the
//! checks in [`REQUIRED`]. The listener's checks: `*-listener-same-fd` (the application's
//! descriptor numbers are still sockets: the library would re-bind onto them after a crash
//! without a store) and `*-listener-same-socket` (the very same socket, by inode: hvsockd
//! resumed the session from systemd's descriptor store). hvsockd inside the guest is a
//! provider of its own: it uses only its Unix sockets, and nothing here opens `AF_VSOCK` (the
//! guest has the vsock modules, which udev loads for the VM's device, and no program uses
//! them). Everything is bounded; QEMU and
//! vhost-device-vsock are stopped by run-vm.sh (SIGTERM by pid when this test ends early).
//!
//! The figures: `cargo test --test nested_vm_systemd -- --nocapture` prints lines like
//! `GAP restart action_ms=... max_gap_ms=... baseline_gap_ms=... back_ms=... failed=...`:
//! from `systemctl restart` (or the `kill -9`) to the first connect started after it being
//! served, the longest time without a connect completing, and the loop's own pace before it.
//! TCG makes every figure several times slower than a real machine (each `hvsock connect`
//! process alone takes most of a second), so they are orders of magnitude, not benchmarks.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The checks this test requires (the driver reports more; each is printed).
const REQUIRED: &[&str] = &[
    "socket-unit",
    "sysusers-group",
    "admin-sock-private",
    "socket-activation",
    "vm-add",
    "partition-dir",
    "sandbox-mount",
    "listen-bound",
    "sandbox-reaches",
    "established-host",
    "established-sandbox",
    "restart-service-back",
    "restart-registry",
    "restart-established-host",
    "restart-established-sandbox",
    "restart-sandbox-reaches",
    "restart-listener-no-error",
    "restart-listener-same-fd",
    "restart-listener-same-socket",
    "restart-resumed-from-store",
    "restart-endpoint-same-socket",
    "restart-listener-serves",
    "restart-connects-answered",
    "kill-service-back",
    "kill-registry",
    "kill-established-host",
    "kill-established-sandbox",
    "kill-sandbox-reaches",
    "kill-listener-no-error",
    "kill-listener-same-fd",
    "kill-listener-same-socket",
    "kill-resumed-from-store",
    "kill-endpoint-same-socket",
    "kill-listener-serves",
    "kill-connects-answered",
    "stop-store-emptied",
    "stop-listener-serves",
    "stop-sandbox-reaches",
];

/// The bound on the guest, from QEMU's start to power-off.
const VM_SECS: u64 = 420;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` (from the repository) under `timeout(1)` and panics with its output if it fails.
fn run(what: &str, secs: u64, cmd: &mut Command) {
    support::run_checked("nested_vm_systemd", what, secs, cmd.current_dir(repo()));
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

/// Static (musl) hvsockd and hvsock in the tests' profile, under `<target>/nested-vm-systemd`
/// (a target dir of their own: one build of both, whose features never flip another test's).
fn build_guest_bins(musl: &str) -> (PathBuf, PathBuf) {
    let (profile_dir, profile) = support::test_profile();
    let target_dir = profile_dir.parent().unwrap().join("nested-vm-systemd");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet", "-p", "hvsockd", "--bin", "hvsockd"])
        .args(["-p", "hvsock-cli", "--bin", "hvsock", "--target", musl])
        .arg("--target-dir")
        .arg(&target_dir);
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
    // A smaller image: no debug info in the guest's copies.
    cmd.env(format!("CARGO_PROFILE_{env_profile}_DEBUG"), "false")
        .env(format!("CARGO_PROFILE_{env_profile}_STRIP"), "true");
    run(
        "building the static guest hvsockd and hvsock (musl)",
        1800,
        &mut cmd,
    );
    let dir = target_dir.join(musl).join(&profile);
    (dir.join("hvsockd"), dir.join("hvsock"))
}

/// run-vm.sh in the background; SIGTERM (it stops QEMU and the device) and reaped when dropped.
struct Vm {
    run: PathBuf,
    child: Option<Child>,
}

impl Vm {
    /// The serial console so far: whole lines only (QEMU may be writing the last one), no `\r`.
    fn lines(&self) -> Vec<String> {
        let bytes = std::fs::read(self.run.join("serial.log")).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes).replace('\r', "");
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| l.trim().to_owned())
            .collect()
    }

    fn story(&self) -> String {
        let log = std::fs::read_to_string(self.run.with_extension("log")).unwrap_or_default();
        let lines = self.lines();
        let tail = &lines[lines.len().saturating_sub(120)..];
        format!(
            "--- run-vm.sh ---\n{log}\n--- serial (last 120 lines) ---\n{}",
            tail.join("\n")
        )
    }

    /// Waits for run-vm.sh to end; its status.
    fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not power off in time\n{}",
                self.story()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
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

/// Every process whose command line mentions `dir` (run-vm.sh, QEMU and the device do).
fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&needle).then_some((pid, cmd))
        })
        .collect()
}

#[test]
fn hvsockd_under_real_systemd_survives_restart_and_kill() {
    let started = Instant::now();
    let cache = std::env::var_os("HVSOCK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache"));

    // 1. QEMU, the kernel, the systemd root file system: the project's own scripts (idempotent;
    //    setup.sh builds the root file system once, as root, and caches it).
    run(
        "scripts/nested-vm/setup.sh (QEMU, kernel, musl target, the systemd root file system; root on a fresh machine)",
        2400,
        Command::new(repo().join("scripts/nested-vm/setup.sh")).env("HVSOCK_CACHE", &cache),
    );
    let env = load_env(&cache);
    let musl = env
        .get("MUSL_TARGET")
        .cloned()
        .unwrap_or_else(|| "x86_64-unknown-linux-musl".into());
    let (hvsockd, hvsock) = build_guest_bins(&musl);

    // 2. The image: the cached base plus an overlay with the units, the binaries and the driver.
    let work = tempfile::Builder::new()
        .prefix("hvsd")
        .tempdir_in("/tmp")
        .unwrap();
    let w = work.path();
    let initrd = w.join("initrd.gz");
    let here = repo().join("tests/nested_vm_systemd");
    let add = |src: &Path, dest: &str| format!("{}:{dest}", src.display());
    run(
        "rootfs.sh (the cached base + the overlay)",
        1800,
        Command::new(repo().join("scripts/nested-vm/rootfs.sh"))
            .arg("-o")
            .arg(&initrd)
            .args(["--add", &add(&hvsockd, "/usr/bin/hvsockd")])
            .args(["--add", &add(&hvsock, "/usr/bin/hvsock")])
            .args([
                "--add",
                &add(
                    &here.join("driver.sh"),
                    "/usr/local/lib/hvsock-sysvm/driver.sh",
                ),
            ])
            .args([
                "--add",
                &add(
                    &here.join("hvsock-sysvm-test.service"),
                    "/usr/lib/systemd/system/hvsock-sysvm-test.service",
                ),
            ])
            .args(["--enable", "hvsockd.socket"])
            .args(["--enable", "hvsock-sysvm-test.service"])
            .env("HVSOCK_CACHE", &cache),
    );
    eprintln!(
        "nested_vm_systemd: ready to boot after {:.1?}",
        started.elapsed()
    );

    // 3. Boot; the driver runs everything and powers the guest off.
    let run_dir = w.join("vm");
    let child = Command::new(repo().join("scripts/nested-vm/run-vm.sh"))
        .arg("--initrd")
        .arg(&initrd)
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["--memory", "2048", "--smp", "2", "--guest-status"])
        .args(["--timeout", &VM_SECS.to_string()])
        .args([
            "--append",
            "rdinit=/lib/systemd/systemd systemd.show_status=false",
        ])
        .env("HVSOCK_CACHE", &cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(run_dir.with_extension("log")).unwrap())
        .spawn()
        .unwrap();
    let boot = Instant::now();
    let mut vm = Vm {
        run: run_dir.clone(),
        child: Some(child),
    };
    let status = vm.wait(Duration::from_secs(VM_SECS + 60));
    eprintln!(
        "nested_vm_systemd: the guest ran {:.1?} (run-vm.sh status {status})",
        boot.elapsed()
    );

    // 4. What the guest reported.
    let lines = vm.lines();
    let mut checks: BTreeMap<String, (bool, String)> = BTreeMap::new();
    for line in &lines {
        let Some(rest) = line.strip_prefix("HVSOCK-SYSVM ") else {
            continue;
        };
        eprintln!("guest: {rest}");
        if let Some(check) = rest.strip_prefix("CHECK ") {
            let mut words = check.splitn(3, ' ');
            let name = words.next().unwrap_or_default().to_owned();
            let ok = words.next() == Some("ok");
            checks.insert(name, (ok, words.next().unwrap_or_default().to_owned()));
        }
    }
    assert!(
        lines.iter().any(|l| l.starts_with("HVSOCK-GUEST-EXIT ")),
        "the driver never finished\n{}",
        vm.story()
    );
    let failed: Vec<String> = REQUIRED
        .iter()
        .filter_map(|name| match checks.get(*name) {
            Some((true, _)) => None,
            Some((false, detail)) => Some(format!("{name}: {detail}")),
            None => Some(format!("{name}: not reported")),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "checks failed under real systemd:\n  {}\n{}",
        failed.join("\n  "),
        vm.story()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("HVSOCK-SYSVM GAP restart "))
            && lines
                .iter()
                .any(|l| l.starts_with("HVSOCK-SYSVM GAP kill ")),
        "no connect-loop figures\n{}",
        vm.story()
    );

    // 5. Nothing left running.
    let left = processes_mentioning(&run_dir);
    assert!(left.is_empty(), "left running: {left:?}");
    eprintln!("nested_vm_systemd: all done in {:.1?}", started.elapsed());
}
