//! VM attachments against a real hvsockd, with a fake VMM made of plain Unix sockets (no vsock
//! anywhere): the VMM's hybrid-vsock listener at PATH answers `CONNECT n` (or drops, or keeps
//! silent), and a "guest" connects to `PATH_<port>` as the VMM does for its guest.
//!
//! Host to guest: the handoff (bytes flow, hvsockd keeps no descriptor), retries of dropped
//! handshakes, the refusal when the guest never answers OK, a silent VMM, a VMM that is not
//! running, a non-template service. Guest to host: `PATH_<port>` appears and disappears exactly
//! with matching listeners and services, the connection reaches the listener as the VM, and a
//! second VM is refused a listener meant for the first. The admin API's checks of attachments;
//! stale sockets at start and stop.
//!
//! A table of tests, one per behaviour of an attachment, sharing only the fake VMM: longer
//! than most files here, and read one test at a time.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, VmId};
use support::{Daemon, wait_for};

/// What the fake VMM does with each host connection on PATH.
#[derive(Debug, Clone, Copy)]
enum Behavior {
    /// Closes the first `drop_first` connections without reading (vhost-device-vsock's
    /// WouldBlock drop), then answers `OK 1025` and hands the socket to the test as the guest.
    Ok { drop_first: usize },
    /// Reads the request and closes: a guest with no listener on the port.
    NeverOk,
    /// Reads the request and never answers.
    Silent,
}

/// A hybrid-vsock VMM made of Unix sockets, on a thread.
struct FakeVmm {
    path: PathBuf,
    connects: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
    guest: mpsc::Receiver<UnixStream>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeVmm {
    fn start(path: &Path, behavior: Behavior) -> FakeVmm {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let connects = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, guest) = mpsc::channel();
        let thread = {
            let (connects, requests, stop) = (connects.clone(), requests.clone(), stop.clone());
            thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let mut conn = match listener.accept() {
                        Ok((conn, _)) => conn,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(e) => panic!("fake VMM accept: {e}"),
                    };
                    let n = connects.fetch_add(1, Ordering::AcqRel) + 1;
                    conn.set_nonblocking(false).unwrap();
                    if let Behavior::Ok { drop_first } = behavior {
                        if n <= drop_first {
                            drop(conn);
                            continue;
                        }
                    }
                    // Byte by byte, as a VMM must not read past the line.
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while conn.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
                        line.push(b[0]);
                    }
                    requests
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&line).into_owned());
                    match behavior {
                        Behavior::Ok { .. } => {
                            conn.write_all(b"OK 1025\n").unwrap();
                            let _ = tx.send(conn);
                        }
                        Behavior::NeverOk => drop(conn),
                        Behavior::Silent => held.push(conn),
                    }
                }
            })
        };
        FakeVmm {
            path: path.to_owned(),
            connects,
            requests,
            guest,
            stop,
            thread: Some(thread),
        }
    }

    fn connects(&self) -> usize {
        self.connects.load(Ordering::Acquire)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The guest's end of the next established connection.
    fn guest(&self) -> UnixStream {
        self.guest.recv_timeout(Duration::from_secs(10)).unwrap()
    }
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A directory for VM sockets, short enough for Unix socket paths.
fn vm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hvsock-vm-")
        .tempdir_in("/tmp")
        .unwrap()
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn guest_port(path: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", path.display()))
}

/// Waits until `PATH_<port>` exists (or not).
fn expect_port(path: &Path, port: u32, open: bool) {
    let file = guest_port(path, port);
    wait_for(
        &format!(
            "{} to {}",
            file.display(),
            if open { "appear" } else { "go" }
        ),
        Duration::from_secs(5),
        || is_socket(&file) == open,
    );
}

/// The socket inodes hvsockd holds.
fn daemon_socket_inodes(d: &Daemon) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

fn inode_of(fd: &impl AsRawFd) -> u64 {
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .ino()
}

/// `(established, refused by reason)` of connects from `partition` to `service`.
fn counts(d: &Daemon, partition: &str, service: &str) -> (u64, serde_json::Value) {
    let (status, stats) = d.api("GET", "/v1/stats", None);
    assert_eq!(status, 200);
    for row in stats["connections"].as_array().unwrap() {
        if row["partition"] == partition && row["service"] == service {
            return (row["established"].as_u64().unwrap(), row["refused"].clone());
        }
    }
    (0, serde_json::json!({}))
}

const T: Duration = Duration::from_secs(2);

#[test]
fn host_to_guest_hands_over_the_vmm_socket_and_keeps_no_copy() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let vmm = FakeVmm::start(&path, Behavior::Ok { drop_first: 0 });
    let vm = d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    let addr = SockAddrHv::new(vm, svc);

    let mut host = HvStream::connect_with(&d.host(), addr, T).unwrap();
    let mut guest = vmm.guest();
    assert_eq!(vmm.requests(), ["CONNECT 2761"]);
    assert_eq!(host.peer_addr().unwrap(), addr);
    assert_eq!(
        host.local_addr().unwrap(),
        SockAddrHv::new(d.root_id(), svc)
    );
    // The connector holds the very socket the VMM accepted: no pair, no relay.
    host.write_all(b"to the guest").unwrap();
    let mut buf = [0u8; 12];
    guest.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"to the guest");
    guest.write_all(b"to the host!").unwrap();
    host.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"to the host!");
    // hvsockd drops its copy right after sending it, which may be a moment after the connector
    // has it: wait for that moment, not for ever.
    wait_for("hvsockd to drop the connector's socket", T, || {
        !daemon_socket_inodes(&d).contains(&inode_of(&host))
    });
    // Many at once: hvsockd's descriptor count does not grow with them.
    let before = daemon_socket_inodes(&d).len();
    let held: Vec<_> = (0..20)
        .map(|_| {
            let c = HvStream::connect_with(&d.host(), addr, T).unwrap();
            (c, vmm.guest())
        })
        .collect();
    let held_inodes: Vec<u64> = held.iter().map(|(c, _)| inode_of(c)).collect();
    wait_for(
        "hvsockd to hold none of the 20 connections and no more sockets than before",
        T,
        || {
            let now = daemon_socket_inodes(&d);
            now.len() <= before && held_inodes.iter().all(|i| !now.contains(i))
        },
    );
    drop(held);
    assert_eq!(counts(&d, "host", "agent").0, 21);
}

#[test]
fn host_to_guest_retries_handshakes_the_vmm_drops() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let vmm = FakeVmm::start(&path, Behavior::Ok { drop_first: 3 });
    let vm = d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    let mut host =
        HvStream::connect_with(&d.host(), SockAddrHv::new(vm, svc), Duration::from_secs(5))
            .unwrap();
    let mut guest = vmm.guest();
    assert_eq!(
        vmm.connects(),
        4,
        "three dropped tries, then the one that worked"
    );
    assert_eq!(vmm.requests(), ["CONNECT 2761"]);
    host.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    guest.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
}

#[test]
fn host_to_guest_is_refused_when_the_guest_never_answers_ok() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let vmm = FakeVmm::start(&path, Behavior::NeverOk);
    let vm = d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    let started = Instant::now();
    let err = HvStream::connect_with(&d.host(), SockAddrHv::new(vm, svc), T).unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    let text = err.to_string();
    assert!(text.contains("vm1") && text.contains("port 2761"), "{text}");
    assert!(
        text.contains("nothing in the guest listens") && text.contains("dropped the handshake"),
        "{text}"
    );
    assert!(vmm.connects() >= 3, "only {} tries", vmm.connects());
    assert!(
        vmm.requests().iter().all(|r| r == "CONNECT 2761"),
        "{:?}",
        vmm.requests()
    );
    assert!(took < T + Duration::from_millis(900), "took {took:?}");
    assert_eq!(counts(&d, "host", "agent").1["vm_refused"], 1);
}

#[test]
fn host_to_guest_times_out_when_the_vmm_keeps_silent() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let _vmm = FakeVmm::start(&path, Behavior::Silent);
    let vm = d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    let err = HvStream::connect_with(
        &d.host(),
        SockAddrHv::new(vm, svc),
        Duration::from_millis(500),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(
        err.to_string().contains("no answer to CONNECT 2761"),
        "{err}"
    );
}

#[test]
fn host_to_guest_when_the_vmm_is_not_running_is_unreachable_at_once() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let vm = d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    let started = Instant::now();
    let err = HvStream::connect_with(&d.host(), SockAddrHv::new(vm, svc), T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HostUnreachable, "{err}");
    assert!(err.to_string().contains("not running"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn only_template_services_cross_into_a_guest() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let vmm = FakeVmm::start(&path, Behavior::Ok { drop_first: 0 });
    let vm = d.add_vm("vm1", &path);
    let (status, reply) = d.api("POST", "/v1/services", Some(r#"{"name":"guid-only"}"#));
    assert_eq!(status, 201, "{reply}");
    let svc = ServiceId::parse(reply["id"].as_str().unwrap()).unwrap();
    let err = HvStream::connect_with(&d.host(), SockAddrHv::new(vm, svc), T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("guid-only") && text.contains("only vsock-template services"),
        "{text}"
    );
    assert!(text.contains("--port"), "{text}");
    assert_eq!(vmm.connects(), 0, "hvsockd touched the VMM");
    // The registry rules come first, as for any crossing.
    let unregistered = ServiceId::from_vsock_port(4444);
    let err = HvStream::connect_with(&d.host(), SockAddrHv::new(vm, unregistered), T).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    d.set_enabled("guid-only", false);
    assert_eq!(vmm.connects(), 0);
}

#[test]
fn guest_ports_open_exactly_while_a_listener_the_vm_may_reach_exists() {
    let d = Daemon::start();
    d.without_own_services();
    let dir = vm_dir();
    let path1 = dir.path().join("vm1.vsock");
    let path2 = dir.path().join("vm2.vsock");
    let vm1 = d.add_vm("vm1", &path1);
    let _vm2 = d.add_vm("vm2", &path2);
    let svc = d.add_service("agent", 5000);
    let sandbox = d.add_partition("sandbox", None);
    let bind = |t: &hvsock::Transport, vm: VmId, svc: ServiceId| {
        HvListener::bind_with(t, SockAddrHv::new(vm, svc), 8).unwrap()
    };

    // Nothing listens: nothing open.
    thread::sleep(Duration::from_millis(100));
    assert!(!is_socket(&guest_port(&path1, 5000)));

    // A wildcard listener in the host: both VMs.
    let l = bind(&d.host(), VmId::WILDCARD, svc);
    expect_port(&path1, 5000, true);
    expect_port(&path2, 5000, true);
    let (_, vm_view) = d.api("GET", "/v1/partitions/vm1", None);
    assert_eq!(vm_view["kind"], "vm");
    assert_eq!(vm_view["guest_ports"], serde_json::json!([5000]));
    assert!(vm_view["endpoint"].is_null(), "{vm_view}");

    // Disabled: closed for both; enabled again: open again.
    d.set_enabled("agent", false);
    expect_port(&path1, 5000, false);
    expect_port(&path2, 5000, false);
    d.set_enabled("agent", true);
    expect_port(&path1, 5000, true);
    expect_port(&path2, 5000, true);

    // Unbound: closed.
    drop(l);
    expect_port(&path1, 5000, false);
    expect_port(&path2, 5000, false);

    // Bound to vm1's id: vm1 only.
    let only1 = bind(&d.host(), vm1, svc);
    expect_port(&path1, 5000, true);
    thread::sleep(Duration::from_millis(100));
    assert!(!is_socket(&guest_port(&path2, 5000)));
    drop(only1);
    expect_port(&path1, 5000, false);

    // CHILDREN: both; LOOPBACK and a sandbox's listener: neither.
    let children = bind(&d.host(), VmId::CHILDREN, svc);
    expect_port(&path1, 5000, true);
    expect_port(&path2, 5000, true);
    drop(children);
    expect_port(&path1, 5000, false);
    let _loop = bind(&d.host(), VmId::LOOPBACK, svc);
    let _in_sandbox = bind(&d.partition(sandbox), VmId::WILDCARD, svc);
    thread::sleep(Duration::from_millis(100));
    assert!(!is_socket(&guest_port(&path1, 5000)));

    // An unregistered template service: no crossing, no socket; registering it opens it.
    let other = ServiceId::from_vsock_port(5001);
    let _l5001 = bind(&d.host(), VmId::WILDCARD, other);
    thread::sleep(Duration::from_millis(100));
    assert!(!is_socket(&guest_port(&path1, 5001)));
    d.add_service("late", 5001);
    expect_port(&path1, 5001, true);
    // Removing the service closes it again.
    let (status, _) = d.api("DELETE", "/v1/services/late", None);
    assert_eq!(status, 204);
    expect_port(&path1, 5001, false);

    // Removing a VM closes its ports.
    d.add_service("late", 5001);
    expect_port(&path2, 5001, true);
    let (status, _) = d.api("DELETE", "/v1/partitions/vm2", None);
    assert_eq!(status, 204);
    expect_port(&path2, 5001, false);
    assert!(is_socket(&guest_port(&path1, 5001)));
}

#[test]
fn a_guest_connection_reaches_the_listener_as_the_vm() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let vm = d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    let l = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 8).unwrap();
    expect_port(&path, 2761, true);

    // The VMM connects to PATH_2761 for its guest; what the guest sends flows as it is.
    let mut guest = UnixStream::connect(guest_port(&path, 2761)).unwrap();
    guest.write_all(b"hello from the guest\n").unwrap();
    let (mut conn, peer) = l.accept().unwrap();
    assert_eq!(
        peer,
        SockAddrHv::new(vm, svc),
        "the VM is the attachment's, not a claim"
    );
    assert_eq!(
        conn.local_addr().unwrap(),
        SockAddrHv::new(d.root_id(), svc)
    );
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).unwrap();
    assert_eq!(line, "hello from the guest\n");
    conn.write_all(b"hello guest").unwrap();
    let mut buf = [0u8; 11];
    guest.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello guest");
    // The listener holds the socket hvsockd accepted, and hvsockd no longer does.
    wait_for("hvsockd to drop the guest's socket", T, || {
        !daemon_socket_inodes(&d).contains(&inode_of(&conn))
    });
    // Half-close travels: the guest's EOF reaches the listener.
    guest.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(counts(&d, "vm1", "agent").0, 1);
}

#[test]
fn a_second_vm_is_refused_a_listener_meant_for_the_first() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path1 = dir.path().join("vm1.vsock");
    let path2 = dir.path().join("vm2.vsock");
    let vm1 = d.add_vm("vm1", &path1);
    let vm2 = d.add_vm("vm2", &path2);
    let svc = d.add_service("agent", 2761);
    let l = HvListener::bind_with(&d.host(), SockAddrHv::new(vm1, svc), 8).unwrap();
    expect_port(&path1, 2761, true);
    // vm2's VMM finds nothing to connect to: its guest is refused (or times out).
    let err = UnixStream::connect(guest_port(&path2, 2761)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    // vm1 gets through.
    let _g1 = UnixStream::connect(guest_port(&path1, 2761)).unwrap();
    let (_, peer) = l.accept().unwrap();
    assert_eq!(peer.vm_id, vm1);

    // A wildcard listener opens vm2's port too; the vm1-only listener stays the more specific
    // one for vm1.
    let wildcard =
        HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 8).unwrap();
    expect_port(&path2, 2761, true);
    let _g2 = UnixStream::connect(guest_port(&path2, 2761)).unwrap();
    let (_, peer) = wildcard.accept().unwrap();
    assert_eq!(peer.vm_id, vm2);
    let _g1 = UnixStream::connect(guest_port(&path1, 2761)).unwrap();
    let (_, peer) = l.accept().unwrap();
    assert_eq!(peer.vm_id, vm1);
}

/// Resumes hvsockd if a test that stopped it fails.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, rustix::process::Signal::CONT);
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn a_guest_connection_whose_route_no_longer_holds_is_closed() {
    // hvsockd routes every accepted guest socket again. Freeze hvsockd, let the "VMM" connect
    // (the kernel queues it), close the only listener, resume: whichever hvsockd sees first,
    // the guest's socket must be closed, never delivered nor left hanging.
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    let l = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 8).unwrap();
    expect_port(&path, 2761, true);
    signal(d.pid(), rustix::process::Signal::STOP);
    let resume = Resume(d.pid());
    let mut guest = UnixStream::connect(guest_port(&path, 2761)).unwrap();
    drop(l);
    drop(resume);
    guest
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    match guest.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the guest's socket was not closed: {other:?}"),
    }
    expect_port(&path, 2761, false);
    let (established, refused) = counts(&d, "vm1", "agent");
    assert_eq!(established, 0);
    assert_eq!(
        refused
            .as_object()
            .unwrap()
            .values()
            .filter_map(|v| v.as_u64())
            .sum::<u64>(),
        1,
        "{refused}"
    );
}

#[test]
fn the_admin_api_checks_attachments() {
    let d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let post = |body: serde_json::Value| d.api("POST", "/v1/partitions", Some(&body.to_string()));

    let (status, reply) = post(serde_json::json!({"name": "rel", "hybrid_vsock": "vm.vsock"}));
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("absolute")
    );

    let long = format!("/tmp/{}", "x".repeat(100));
    let (status, reply) = post(serde_json::json!({"name": "long", "hybrid_vsock": long}));
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most")
    );

    let (status, reply) =
        post(serde_json::json!({"name": "nodir", "hybrid_vsock": "/nonexistent-hvsock/vm.vsock"}));
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );

    let vm = d.add_vm("vm1", &path);
    // The same again (same id) is fine; the same path for another VM is not.
    let (status, reply) = post(serde_json::json!({"name": "vm1", "id": vm, "hybrid_vsock": path}));
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = post(serde_json::json!({"name": "vm2", "hybrid_vsock": path}));
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already attached to VM vm1")
    );

    // A VM has no endpoint and no children here.
    assert!(!d.dirs().partition_socket(vm).exists());
    let (status, reply) = post(serde_json::json!({"name": "inner", "parent": "vm1"}));
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("runs its own hvsockd")
    );

    let (status, view) = d.api("GET", "/v1/partitions/vm1", None);
    assert_eq!(status, 200);
    assert_eq!(view["kind"], "vm");
    assert_eq!(view["hybrid_vsock"], path.to_string_lossy().as_ref());
    assert_eq!(view["parent_name"], "host");
}

#[test]
fn stale_guest_sockets_go_at_start_and_open_ones_at_stop() {
    let mut d = Daemon::start();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    d.add_vm("vm1", &path);
    let svc = d.add_service("agent", 2761);
    {
        let _l = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 8).unwrap();
        expect_port(&path, 2761, true);
        // SIGKILL: the socket file stays behind.
        d.kill9();
    }
    assert!(is_socket(&guest_port(&path, 2761)));
    // Not ours: a regular file with a similar name is left alone.
    std::fs::write(dir.path().join("vm.vsock_77"), b"keep me").unwrap();
    d.restart();
    wait_for("the stale socket to go", Duration::from_secs(5), || {
        !is_socket(&guest_port(&path, 2761))
    });
    assert!(dir.path().join("vm.vsock_77").is_file());
    let _l = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 8).unwrap();
    expect_port(&path, 2761, true);
    assert!(d.stop(), "hvsockd did not stop cleanly");
    assert!(!is_socket(&guest_port(&path, 2761)), "left behind at stop");
}

#[test]
fn the_cli_attaches_a_vm_and_connects_into_its_guest() {
    let d = Daemon::start();
    d.without_own_services();
    let dir = vm_dir();
    let path = dir.path().join("vm.vsock");
    let vmm = FakeVmm::start(&path, Behavior::Ok { drop_first: 1 });
    let run = |args: &[&str]| {
        let out = support::run(
            d.cli().args(args).current_dir(dir.path()),
            b"",
            support::QUICK,
        );
        (out.code(), out.stdout, out.stderr)
    };
    // A relative PATH is taken from the CLI's working directory.
    let (code, stdout, stderr) = run(&["vm", "add", "vm1", "--hybrid-vsock", "vm.vsock"]);
    assert_eq!(code, Some(0), "{stderr}");
    let vm = VmId::parse(stdout.trim()).unwrap();
    let (code, stdout, stderr) = run(&["service", "add", "agent", "--port", "2761"]);
    assert_eq!(code, Some(0), "{stderr}");
    let svc = ServiceId::parse(stdout.trim()).unwrap();
    let _l = HvListener::bind_with(&d.host(), SockAddrHv::new(VmId::WILDCARD, svc), 8).unwrap();
    expect_port(&path, 2761, true);
    let (code, stdout, stderr) = run(&["vm", "show", "vm1"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains(&vm.to_string()), "{stdout}");
    assert!(stdout.contains(&path.display().to_string()), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("guest_ports") && l.ends_with("2761")),
        "{stdout}"
    );
    let (code, _, stderr) = run(&[
        "vm",
        "add",
        "vm2",
        "--hybrid-vsock",
        "/nonexistent-hvsock/x",
    ]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("does not exist"), "{stderr}");

    // hvsock connect vm1:agent reaches the guest (after one dropped handshake).
    let mut connect = support::Proc::spawn(d.cli().args(["connect", "vm1:agent"]));
    let mut guest = vmm.guest();
    connect.write(b"ping\n");
    connect.close_stdin(); // EOF: half-close
    let mut line = String::new();
    BufReader::new(&guest).read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    guest.write_all(b"pong\n").unwrap();
    drop(guest);
    let status = connect.wait(support::QUICK);
    assert!(status.success(), "{}", connect.stderr());
    assert_eq!(connect.stdout(), b"pong\n");

    // A service that is not a port cannot cross, and the CLI says how to make one that can.
    let (code, _, stderr) = run(&["service", "add", "guid-only"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = run(&["connect", "vm1:guid-only"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("only vsock-template services") && stderr.contains("--port N"),
        "{stderr}"
    );
}
