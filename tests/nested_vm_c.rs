//! The document's step 3 in C inside a real Linux guest: `examples/c/guest_service.c`, compiled
//! statically with musl against `libhvsock.a` (cargo-c, `--library-type staticlib`, feature
//! `test-vm-guard`), runs in a guest booted under QEMU (the scripts of `scripts/nested-vm/`) with
//! `HVSOCK_TRANSPORT=vsock`, and talks to `examples/c/host_service.c` (linked with `-lhvsock`)
//! on this host through hvsockd's hybrid-vsock attachment of that VM.
//!
//! Checked: the guest's messages come back answered and the host saw the VM by its VmId; a
//! connect to a service nobody serves fails with libhvsock's reason; the guard keeps the
//! binary off `AF_VSOCK` without the kernel command-line marker; the guest powers off cleanly.
//! Nothing opens `AF_VSOCK` on this machine: the host side is Unix sockets only.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hvsock::{ServiceId, VmId};
use support::Daemon;
use support::c::{installed, repo, run};

const PORT: u32 = 5801;

/// run-vm.sh in the background, stopped (SIGTERM, by its pid) and reaped when dropped.
struct Vm {
    child: Child,
    run: PathBuf,
}

impl Vm {
    fn serial(&self) -> String {
        std::fs::read(self.run.join("serial.log"))
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default()
    }

    /// The rest of the serial line that starts with `prefix`, once it is there.
    fn line(&self, prefix: &str, deadline: Instant) -> String {
        loop {
            let serial = self.serial();
            if let Some(rest) = serial
                .lines()
                .find_map(|l| l.trim_start().strip_prefix(prefix))
            {
                return rest.trim().to_owned();
            }
            assert!(
                !serial.contains("HVSOCK-GUEST-FAIL") && Instant::now() < deadline,
                "no {prefix:?} from the guest:\n{serial}\n--- run-vm.sh ---\n{}",
                std::fs::read_to_string(self.run.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let pid = rustix::process::Pid::from_child(&self.child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A child killed (by its pid) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The static musl `guest_service`, against libhvsock.a built with the test-vm-guard.
fn build_guest(cache: &Path, musl: &str) -> PathBuf {
    let (profile_dir, _) = support::test_profile();
    let target = profile_dir.parent().unwrap().join("nested-vm-c");
    let stage = target.join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    let bin = String::from_utf8_lossy(
        &run(
            "scripts/c-deps.sh",
            3000,
            &mut Command::new(repo().join("scripts/c-deps.sh")),
        )
        .stdout,
    )
    .trim()
    .to_owned();
    run(
        "cargo cinstall (musl, static, test-vm-guard)",
        3000,
        Command::new(env!("CARGO"))
            .args(["cinstall", "--release", "--locked", "-p", "hvsock-c"])
            .args(["--features", "test-vm-guard", "--target", musl])
            .args(["--library-type", "staticlib"])
            .args(["--prefix", "/usr", "--libdir", "/usr/lib", "--destdir"])
            .arg(&stage)
            .arg("--target-dir")
            .arg(&target)
            .env(
                "PATH",
                format!("{bin}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .env("HVSOCK_CACHE", cache)
            .current_dir(repo()),
    );
    let sysroot = String::from_utf8_lossy(
        &run(
            "rustc --print sysroot",
            30,
            Command::new("rustc").args(["--print", "sysroot"]),
        )
        .stdout,
    )
    .trim()
    .to_owned();
    let self_contained = format!("{sysroot}/lib/rustlib/{musl}/lib/self-contained");
    let out = target.join("guest_service");
    run(
        "musl-gcc -static guest_service.c libhvsock.a",
        300,
        Command::new("musl-gcc")
            .args(["-static", "-std=c99", "-Wall", "-Wextra", "-Werror", "-O1"])
            .arg("-I")
            .arg(stage.join("usr/include"))
            .arg(repo().join("examples/c/guest_service.c"))
            .arg("-o")
            .arg(&out)
            // The weak hv_last_error() of the example: pull it from the archive.
            .arg("-Wl,-u,hv_last_error")
            .arg(stage.join("usr/lib/libhvsock.a"))
            // Rust's unwinder, which the static library needs (rustc's native-static-libs);
            // by path, so that musl-gcc's own libc.a stays the libc.
            .arg(format!("{self_contained}/libunwind.a"))
            .arg("-lpthread"),
    );
    out
}

#[test]
fn c_guest_service_in_a_real_vm() {
    let started = Instant::now();
    let cache = std::env::var_os("HVSOCK_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache"));
    run(
        "scripts/nested-vm/setup.sh (QEMU, kernel, busybox, vhost-device-vsock, musl)",
        2400,
        Command::new(repo().join("scripts/nested-vm/setup.sh")).env("HVSOCK_CACHE", &cache),
    );
    let env = std::fs::read_to_string(cache.join("nested-vm/env.sh")).unwrap();
    let musl = env
        .lines()
        .find_map(|l| l.strip_prefix("export MUSL_TARGET="))
        .map(|v| v.trim_matches('\'').to_owned())
        .unwrap_or_else(|| "x86_64-unknown-linux-musl".into());
    let guest_exe = build_guest(&cache, &musl);
    let i = installed();
    let host_exe = i.linked(&repo().join("examples/c/host_service.c"), "host_service-vm");

    let work = tempfile::Builder::new()
        .prefix("hvnvc")
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
            .arg(format!("{}:/bin/guest_service", guest_exe.display()))
            .arg("--add")
            .arg(format!(
                "{}:/etc/hvsock-vm/test.sh",
                repo().join("tests/nested_vm/c_guest.sh").display()
            ))
            .env("HVSOCK_CACHE", &cache),
    );

    // hvsockd, the service, the VM's attachment; the C host service listening.
    let d = Daemon::start();
    d.add_service("cvm", PORT);
    let uds = w.join("vm.vsock");
    let vm = d.add_vm("cvm1", &uds);
    let mut host = Proc(
        i.command(&host_exe)
            .env("HVSOCK_DIR", d.dir())
            .arg(PORT.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let out = host.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        first,
        format!(
            "listening on {}:{}",
            VmId::WILDCARD,
            ServiceId::from_vsock_port(PORT)
        )
    );
    let port_file = PathBuf::from(format!("{}_{PORT}", uds.display()));
    support::wait_for("the guest port to open", Duration::from_secs(5), || {
        std::fs::symlink_metadata(&port_file).is_ok_and(|m| m.file_type().is_socket())
    });

    // The guest.
    let run_dir = w.join("r");
    let vm_guest = Vm {
        child: Command::new(repo().join("scripts/nested-vm/run-vm.sh"))
            .arg("--initrd")
            .arg(&initrd)
            .arg("--run-dir")
            .arg(&run_dir)
            .args([
                "--cid",
                "3",
                "--smp",
                "1",
                "--timeout",
                "200",
                "--guest-status",
            ])
            .arg("--uds")
            .arg(&uds)
            .args(["--append", &format!("hvsock_c_port={PORT}")])
            .env("HVSOCK_CACHE", &cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(run_dir.with_extension("log")).unwrap())
            .spawn()
            .unwrap(),
        run: run_dir,
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    let guest = vm_guest.line("T-C-GUEST ", deadline);
    assert_eq!(
        guest, "rc=0 host> hello from C in a VM|host> second message|",
        "the guest's conversation"
    );
    let refused = vm_guest.line("T-C-REFUSED ", deadline);
    assert!(
        refused.starts_with("rc=1 guest_service: connect: ") && refused.contains("vsock port 5809"),
        "{refused}"
    );
    let guard = vm_guest.line("T-C-GUARD ", deadline);
    assert!(
        guard.starts_with("rc=1 ")
            && guard.contains("test-vm-guard")
            && guard.contains("hvsock_test_vm=1"),
        "{guard}"
    );
    vm_guest.line("T-C-DONE", deadline);
    let mut vm_guest = vm_guest;
    let status = loop {
        if let Some(s) = vm_guest.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the guest did not power off");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "run-vm.sh: {status}\n{}",
        vm_guest.serial()
    );

    // The host service saw the VM by its registered VmId.
    let seen: Vec<String> = rx.try_iter().collect();
    assert!(seen.contains(&format!("{vm} connected")), "{seen:?}");
    drop(host);
    drop(d);
    eprintln!(
        "nested_vm_c: built, booted and checked in {:.1?}",
        started.elapsed()
    );
}
