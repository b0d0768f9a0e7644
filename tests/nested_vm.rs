//! The nested-VM test: real Linux guests (Debian's stock cloud kernel under QEMU/TCG) talk to
//! hvsockd on this host, running the project's own static `hvsock` binary over `AF_VSOCK`
//! inside the guest, once with each vhost-user-vsock device: vhost-device-vsock through the
//! hybrid-vsock attachment (`vm add --hybrid-vsock`), and hvsock-vhost, the project's own
//! device, which serves the VM as its gateway in hvsockd (`vm add` alone). The two runs take
//! turns (a lock), so that four TCG guests never share the machine's cores.
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

#[path = "nested_vm/harness.rs"]
mod harness;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    Backend, ONE_AT_A_TIME, Vm, accept_by, alive, prepare, processes_mentioning, sha256,
    transfer_report, vhost_args,
};
use hvsock::{HvListener, ServiceId, SockAddrHv, VmId};
use support::{Daemon, Guard, pattern};

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

#[test]
fn real_guests_through_hvsockd_over_hybrid_vsock() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    scenario(Backend::Hybrid);
}

#[test]
fn real_guests_through_hvsock_vhost() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    scenario(Backend::Vhost);
}

fn scenario(backend: Backend) {
    let started = Instant::now();
    // 1. What the test needs, installed by the project's own script (idempotent).
    let prepared = prepare();
    let env = prepared.env.clone();

    // 2. A short work dir (Unix socket paths), one initramfs for both guests.
    let work = tempfile::Builder::new()
        .prefix("hvnv")
        .tempdir_in("/tmp")
        .unwrap();
    let w = work.path();
    let initrd = w.join("initrd.gz");
    prepared.initramfs(&initrd, "tests/nested_vm/guest.sh");

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
    let add_vm = |name: &str, uds: &Path| {
        let mut args = vec!["vm", "add", name];
        if backend == Backend::Hybrid {
            args.extend(["--hybrid-vsock", uds.to_str().unwrap()]);
        }
        VmId::parse(&hv(&args)).unwrap()
    };
    let vm1 = add_vm("vm1", &uds1);
    let vm2 = add_vm("vm2", &uds2);

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
    if backend == Backend::Hybrid {
        support::wait_for("the guest ports to open", Duration::from_secs(5), || {
            is_socket(&port_file(&uds1, BULK_PORT))
                && is_socket(&port_file(&uds1, COMMON_PORT))
                && is_socket(&port_file(&uds2, COMMON_PORT))
        });
    }
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
    let device = |name: &str| match backend {
        Backend::Vhost => vhost_args(name, d.dir()),
        Backend::Hybrid => Vec::new(),
    };
    let mut g1 = Vm::boot("vm1", &env, &initrd, w.join("r1"), &uds1, 3, &device("vm1"));
    let mut g2 = Vm::boot("vm2", &env, &initrd, w.join("r2"), &uds2, 4, &device("vm2"));

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
        "nested_vm ({backend:?}): both guests booted, checked and powered off in {vm_took:.1?}; whole test {:.1?}",
        started.elapsed()
    );
}
