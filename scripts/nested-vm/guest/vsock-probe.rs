//! vsock-probe: a tiny AF_VSOCK client/server for the nested-VM smoke test, to run INSIDE the test
//! guest only. It has nothing of hvsock in it: it proves the guest <-> vhost-device-vsock <-> host
//! Unix-socket path on its own.
//!
//! It refuses to run unless the kernel command line has `hvsock_test_vm=1`: the machines this is
//! built on are themselves VMs whose own vsock leads to infrastructure that is not ours.
//!
//! Built by smoke.sh with plain rustc, no crates:
//!   rustc --edition 2021 -O --target x86_64-unknown-linux-musl -C panic=abort vsock-probe.rs
//!
//! Usage (in the guest):
//!   vsock-probe local-cid                  print this guest's CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID)
//!   vsock-probe connect CID PORT TEXT      connect, send TEXT + "\n", print the reply line
//!   vsock-probe listen PORT                listen on (ANY, PORT); print "PROBE-LISTENING PORT";
//!                                          accept one connection, read a line, answer
//!                                          "guest-echo: LINE\n", print "PROBE-SERVED LINE"

use std::ffi::c_int;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::FromRawFd;
use std::process::exit;

const AF_VSOCK: c_int = 40;
const SOCK_STREAM: c_int = 1;
const SOCK_CLOEXEC: c_int = 0o2000000;
const VMADDR_CID_ANY: u32 = u32::MAX;
const IOCTL_VM_SOCKETS_GET_LOCAL_CID: u64 = 0x7b9;

#[repr(C)]
struct SockaddrVm {
    svm_family: u16,
    svm_reserved1: u16,
    svm_port: u32,
    svm_cid: u32,
    svm_flags: u8,
    svm_zero: [u8; 3],
}

unsafe extern "C" {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const SockaddrVm, len: u32) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn accept(fd: c_int, addr: *mut SockaddrVm, len: *mut u32) -> c_int;
    fn connect(fd: c_int, addr: *const SockaddrVm, len: u32) -> c_int;
    fn ioctl(fd: c_int, req: u64, ...) -> c_int;
}

fn die(what: &str) -> ! {
    eprintln!("vsock-probe: {what}: {}", std::io::Error::last_os_error());
    exit(1)
}

fn addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm { svm_family: AF_VSOCK as u16, svm_reserved1: 0, svm_port: port, svm_cid: cid, svm_flags: 0, svm_zero: [0; 3] }
}

fn vsock_socket() -> c_int {
    // SAFETY: plain syscall wrapper, no pointers.
    let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0) };
    if fd < 0 {
        die("socket(AF_VSOCK)");
    }
    fd
}

fn file(fd: c_int) -> File {
    // SAFETY: fd is a socket we own and hand over to File exactly once.
    unsafe { File::from_raw_fd(fd) }
}

fn parse(s: &str, what: &str) -> u32 {
    s.parse().unwrap_or_else(|_| {
        eprintln!("vsock-probe: bad {what}: {s}");
        exit(2)
    })
}

fn main() {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if !cmdline.split_whitespace().any(|w| w == "hvsock_test_vm=1") {
        eprintln!("vsock-probe: refusing to run: hvsock_test_vm=1 is not on the kernel command line (not the test VM)");
        exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["local-cid"] => {
            let f = File::open("/dev/vsock").unwrap_or_else(|e| {
                eprintln!("vsock-probe: open /dev/vsock: {e}");
                exit(1)
            });
            let mut cid: u32 = 0;
            // SAFETY: the ioctl writes one u32 through the pointer, which is valid for that.
            let r = unsafe { ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), IOCTL_VM_SOCKETS_GET_LOCAL_CID, &mut cid as *mut u32) };
            if r < 0 {
                die("ioctl(IOCTL_VM_SOCKETS_GET_LOCAL_CID)");
            }
            println!("{cid}");
        }
        ["connect", cid, port, text] => {
            let fd = vsock_socket();
            let a = addr(parse(cid, "cid"), parse(port, "port"));
            // SAFETY: a is a valid sockaddr_vm of the given size.
            if unsafe { connect(fd, &a, std::mem::size_of::<SockaddrVm>() as u32) } < 0 {
                die(&format!("connect({cid}, {port})"));
            }
            let mut s = file(fd);
            s.write_all(format!("{text}\n").as_bytes()).unwrap_or_else(|e| {
                eprintln!("vsock-probe: write: {e}");
                exit(1)
            });
            let mut reply = String::new();
            BufReader::new(&mut s).read_line(&mut reply).unwrap_or_else(|e| {
                eprintln!("vsock-probe: read: {e}");
                exit(1)
            });
            println!("PROBE-REPLY {}", reply.trim_end());
        }
        ["listen", port] => {
            let port = parse(port, "port");
            let fd = vsock_socket();
            let a = addr(VMADDR_CID_ANY, port);
            // SAFETY: a is a valid sockaddr_vm of the given size.
            if unsafe { bind(fd, &a, std::mem::size_of::<SockaddrVm>() as u32) } < 0 {
                die("bind");
            }
            // SAFETY: plain syscall.
            if unsafe { listen(fd, 4) } < 0 {
                die("listen");
            }
            println!("PROBE-LISTENING {port}");
            let mut peer = addr(0, 0);
            let mut len = std::mem::size_of::<SockaddrVm>() as u32;
            // SAFETY: peer/len are valid for accept to fill in.
            let c = unsafe { accept(fd, &mut peer, &mut len) };
            if c < 0 {
                die("accept");
            }
            let mut s = file(c);
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while let Ok(1) = s.read(&mut b) {
                if b[0] == b'\n' {
                    break;
                }
                line.push(b[0]);
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            let _ = s.write_all(format!("guest-echo: {line}\n").as_bytes());
            println!("PROBE-SERVED from cid {} port {}: {line}", peer.svm_cid, peer.svm_port);
            drop(s);
            drop(file(fd));
        }
        _ => {
            eprintln!("usage: vsock-probe local-cid | connect CID PORT TEXT | listen PORT");
            exit(2)
        }
    }
}
