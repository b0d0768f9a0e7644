//! The `AF_VSOCK` transport, for programs running inside a Linux guest.
//!
//! Used only for [`Transport::Vsock`](crate::Transport::Vsock), which a program chooses
//! explicitly (`HVSOCK_TRANSPORT=vsock` or the API); the crate never falls back to it. No daemon
//! is involved: the guest kernel's vsock (virtio-vsock under KVM VMMs, `hv_sock` on Hyper-V)
//! carries the connection, and on the host side hvsockd's hybrid-vsock attachment decides who
//! may reach whom.
//!
//! # Address mapping
//!
//! The Hyper-V address model has GUIDs; vsock has a 32-bit context id (CID) and a 32-bit port.
//! The mapping is a set of pure functions ([`connect_cid`], [`bind_cid`], [`port_of`],
//! [`vm_of_cid`]), table-tested below without opening any socket:
//!
//! | Hyper-V | vsock |
//! | --- | --- |
//! | connect to PARENT or ZERO | CID 2 (`VMADDR_CID_HOST`): the host, that is hvsockd |
//! | connect to LOOPBACK | CID 1 (`VMADDR_CID_LOCAL`): this guest |
//! | connect to anything else | an error (`HostUnreachable`): a guest reaches only its host and itself |
//! | bind ZERO/WILDCARD or PARENT | `VMADDR_CID_ANY`; a PARENT listener drops connections not from CID 2 |
//! | bind LOOPBACK | CID 1 |
//! | bind anything else | an error (`AddrNotAvailable`) |
//! | a service `xxxxxxxx-facb-11e6-bd58-64006a7986d3` | vsock port `0xxxxxxxxx` |
//! | any other service | an error (`InvalidInput`): only vsock-template services cross into a guest |
//!
//! Addresses of streams, inside a guest: the service of both ends is the service connected to
//! (as through hvsockd, not the connector's ephemeral port). The partition of an end is
//! [`VmId::PARENT`] for CID 2 (the host: a guest cannot know the host's partition id),
//! [`VmId::LOOPBACK`] for CID 1, and for any other CID (the guest's own CID in `local_addr`, or
//! a sibling a VMM lets through) the vsock-template GUID whose `Data1` is the CID, e.g.
//! `00000003-facb-11e6-bd58-64006a7986d3` for CID 3. hvsockd, on the host, knows the guest by
//! its registered VmId instead.
//!
//! # Connect timeout
//!
//! Connect is non-blocking plus `poll`, bounded by the caller's timeout; the kernel's own vsock
//! connect timeout (`SO_VM_SOCKETS_CONNECT_TIMEOUT`, 2 s by default) is set to the same value so
//! that it does not cut a longer wait short.
//!
//! # Test builds
//!
//! With the `test-vm-guard` feature (used only by the project's nested-VM test), every vsock
//! socket is refused unless the kernel command line carries `hvsock_test_vm=1`: the machines that
//! build and test hvsock are VMs whose own vsock leads to infrastructure that is not theirs.
//! Product builds have no such check.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket as Sock2, Type};

use super::Socket;
use crate::addr::SockAddrHv;
use crate::guid::{Guid, ServiceId, VmId};
use crate::sys::Established;

/// `VMADDR_CID_ANY`: bind to every CID of this guest.
pub(crate) const VMADDR_CID_ANY: u32 = u32::MAX;
/// `VMADDR_CID_LOCAL`: this guest, through the vsock loopback transport.
pub(crate) const VMADDR_CID_LOCAL: u32 = 1;
/// `VMADDR_CID_HOST`: the host.
pub(crate) const VMADDR_CID_HOST: u32 = 2;
/// `VMADDR_PORT_ANY`: not a port one can connect to or bind by name.
pub(crate) const VMADDR_PORT_ANY: u32 = u32::MAX;

/// `AF_VSOCK`, also the socket option level of vsock options.
const SOL_VSOCK: libc::c_int = libc::AF_VSOCK;
/// `SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD` (`struct timeval`; on 64-bit Linux the same layout as
/// the `_NEW` variant). Not in the libc crate.
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

/// The word on the kernel command line that the `test-vm-guard` build requires.
#[cfg_attr(not(feature = "test-vm-guard"), allow(dead_code))]
pub(crate) const TEST_VM_MARKER: &str = "hvsock_test_vm=1";

/// Why an address cannot be used over vsock.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum VsockAddrError {
    /// Connect to a partition a guest cannot reach over vsock.
    #[error(
        "inside a guest, the vsock transport reaches only the host (parent or zero) and this guest (loopback); {0} is neither"
    )]
    Unreachable(String),
    /// Bind to a pattern vsock cannot express.
    #[error(
        "inside a guest, the vsock transport can bind only wildcard/zero, parent or loopback; {0} cannot be bound"
    )]
    CannotBind(String),
    /// A service that is not a vsock-template GUID.
    #[error(
        "service {0} is not a vsock port: only vsock-template services (xxxxxxxx-facb-11e6-bd58-64006a7986d3, e.g. `parent:2761`) cross into or out of a Linux guest; register such services on the host with `hvsock service add NAME --port N`"
    )]
    NotTemplate(ServiceId),
    /// The template GUID of `VMADDR_PORT_ANY`.
    #[error("port 4294967295 (VMADDR_PORT_ANY) cannot be connected to or bound by name")]
    PortAny,
}

impl From<VsockAddrError> for io::Error {
    fn from(e: VsockAddrError) -> io::Error {
        let kind = match e {
            VsockAddrError::Unreachable(_) => io::ErrorKind::HostUnreachable,
            VsockAddrError::CannotBind(_) => io::ErrorKind::AddrNotAvailable,
            VsockAddrError::NotTemplate(_) | VsockAddrError::PortAny => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e)
    }
}

fn describe(vm: VmId) -> String {
    match vm.keyword() {
        Some(word) => word.to_uppercase(),
        None => format!("partition {vm}"),
    }
}

/// The CID a connect to `vm` goes to.
pub(crate) fn connect_cid(vm: VmId) -> Result<u32, VsockAddrError> {
    if vm == VmId::PARENT || vm == VmId::ZERO {
        Ok(VMADDR_CID_HOST)
    } else if vm == VmId::LOOPBACK {
        Ok(VMADDR_CID_LOCAL)
    } else {
        Err(VsockAddrError::Unreachable(describe(vm)))
    }
}

/// The CID a listener bound to `vm` binds.
pub(crate) fn bind_cid(vm: VmId) -> Result<u32, VsockAddrError> {
    if vm == VmId::ZERO || vm == VmId::PARENT {
        Ok(VMADDR_CID_ANY)
    } else if vm == VmId::LOOPBACK {
        Ok(VMADDR_CID_LOCAL)
    } else {
        Err(VsockAddrError::CannotBind(describe(vm)))
    }
}

/// The vsock port of `service`.
pub(crate) fn port_of(service: ServiceId) -> Result<u32, VsockAddrError> {
    match service.vsock_port() {
        Some(VMADDR_PORT_ANY) => Err(VsockAddrError::PortAny),
        Some(port) => Ok(port),
        None => Err(VsockAddrError::NotTemplate(service)),
    }
}

/// The partition a CID stands for, as a guest sees it (see the module docs).
pub(crate) fn vm_of_cid(cid: u32) -> VmId {
    match cid {
        VMADDR_CID_HOST => VmId::PARENT,
        VMADDR_CID_LOCAL => VmId::LOOPBACK,
        other => {
            let (_, d2, d3, d4) = ServiceId::VSOCK_TEMPLATE.0.fields();
            VmId(Guid::from_fields(other, d2, d3, d4))
        }
    }
}

/// Whether a listener bound to `pattern` takes a connection from `peer_cid`. Only PARENT
/// narrows what its `VMADDR_CID_ANY` bind lets in; LOOPBACK is bound to CID 1 itself.
pub(crate) fn bound_accepts(pattern: VmId, peer_cid: u32) -> bool {
    pattern != VmId::PARENT || peer_cid == VMADDR_CID_HOST
}

/// Whether a kernel command line lets a `test-vm-guard` build open vsock sockets: its last
/// `hvsock_test_vm=` word must be `hvsock_test_vm=1`.
#[cfg_attr(not(feature = "test-vm-guard"), allow(dead_code))]
pub(crate) fn cmdline_allows_vsock(cmdline: &str) -> bool {
    cmdline
        .split_ascii_whitespace()
        .rfind(|w| w.starts_with("hvsock_test_vm="))
        == Some(TEST_VM_MARKER)
}

/// With `test-vm-guard`: refuses unless `/proc/cmdline` carries the test VM's marker.
#[cfg(feature = "test-vm-guard")]
fn guard() -> io::Result<()> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline_allows_vsock(&cmdline) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "this hvsock was built with the test-vm-guard feature: it opens AF_VSOCK only inside the nested test VM, whose kernel command line carries {TEST_VM_MARKER}; /proc/cmdline here does not. Build without that feature for real use"
        ),
    ))
}

#[cfg(not(feature = "test-vm-guard"))]
fn guard() -> io::Result<()> {
    Ok(())
}

/// A new `AF_VSOCK` stream socket (close-on-exec), after the guard.
fn socket() -> io::Result<Sock2> {
    guard()?;
    Sock2::new(Domain::VSOCK, Type::STREAM.cloexec(), None).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EAFNOSUPPORT) | Some(libc::ENODEV) => {
                ": this kernel has no vsock transport (inside a VM, load vmw_vsock_virtio_transport or hv_sock)"
            }
            _ => "",
        };
        io::Error::new(e.kind(), format!("creating an AF_VSOCK socket: {e}{hint}"))
    })
}

fn set_connect_timeout(sock: &Sock2, timeout: Duration) -> io::Result<()> {
    // Connect timeouts are at most 300 s (`HVSOCKET_CONNECT_TIMEOUT_MAX`), so the fields'
    // types (64-bit or not, glibc or musl) never truncate them. Infallible on 64-bit targets,
    // not on 32-bit ones, whose `suseconds_t` is an i32.
    #[allow(clippy::unnecessary_fallible_conversions)]
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(300),
        tv_usec: timeout.subsec_micros().try_into().unwrap_or(0),
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>())
        .map_err(|_| io::Error::other("timeval size"))?;
    // SAFETY: the descriptor is an open AF_VSOCK socket owned by `sock` for this whole call;
    // `tv` is a valid, initialised `timeval` that lives across the call, and `len` is its size,
    // which is what SO_VM_SOCKETS_CONNECT_TIMEOUT_OLD reads.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            SOL_VSOCK,
            SO_VM_SOCKETS_CONNECT_TIMEOUT,
            (&raw const tv).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn cid_port(addr: &SockAddr, what: &str) -> io::Result<(u32, u32)> {
    addr.as_vsock_address().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the kernel gave a non-vsock {what} address"),
        )
    })
}

fn connect_error(e: io::Error, cid: u32, port: u32, timeout: Duration) -> io::Error {
    let whom = match cid {
        VMADDR_CID_HOST => "the host".to_owned(),
        VMADDR_CID_LOCAL => "this guest".to_owned(),
        other => format!("CID {other}"),
    };
    let (kind, why) = match e.raw_os_error() {
        Some(libc::ECONNRESET) | Some(libc::ECONNREFUSED) => (
            io::ErrorKind::ConnectionRefused,
            format!(
                "nothing on {whom} accepts vsock port {port} (on the host: no hvsockd listener this VM may reach, or the service is disabled or not registered)"
            ),
        ),
        Some(libc::ETIMEDOUT) => (
            io::ErrorKind::TimedOut,
            format!(
                "no answer from {whom} on vsock port {port} within {timeout:?}; some VMMs (vhost-device-vsock) let a connect to a port nobody serves time out instead of refusing it"
            ),
        ),
        _ => (e.kind(), e.to_string()),
    };
    let why = if why == e.to_string() {
        why
    } else {
        format!("{why} ({e})")
    };
    io::Error::new(
        kind,
        format!("connecting to vsock CID {cid} port {port}: {why}"),
    )
}

/// Connects to `target` over vsock, waiting at most `timeout`.
pub(crate) fn connect(target: SockAddrHv, timeout: Duration) -> io::Result<Established> {
    let cid = connect_cid(target.vm_id)?;
    let port = port_of(target.service_id)?;
    let sock = socket()?;
    set_connect_timeout(&sock, timeout)?;
    match sock.connect_timeout(&SockAddr::vsock(cid, port), timeout) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut && e.raw_os_error().is_none() => {
            return Err(connect_error(
                io::Error::from_raw_os_error(libc::ETIMEDOUT),
                cid,
                port,
                timeout,
            ));
        }
        Err(e) => return Err(connect_error(e, cid, port, timeout)),
    }
    let (local_cid, _) = cid_port(&sock.local_addr()?, "local")?;
    let (peer_cid, _) = cid_port(&sock.peer_addr()?, "peer")?;
    Ok(Established {
        local: SockAddrHv::new(vm_of_cid(local_cid), target.service_id),
        peer: SockAddrHv::new(vm_of_cid(peer_cid), target.service_id),
        socket: Socket::from_fd(sock.into()),
    })
}

/// [`connect`] for the async types: the non-blocking connect and its `poll`, bounded by
/// `timeout`, run on one of the runtime's blocking threads rather than on its reactor.
#[cfg(feature = "tokio")]
pub(crate) async fn connect_async(
    target: SockAddrHv,
    timeout: Duration,
) -> io::Result<Established> {
    ::tokio::task::spawn_blocking(move || connect(target, timeout))
        .await
        .map_err(|e| io::Error::other(format!("the vsock connect task failed: {e}")))?
}

/// A listening vsock socket.
#[derive(Debug)]
pub(crate) struct Listener {
    sock: Sock2,
    local: SockAddrHv,
}

impl Listener {
    /// Binds `addr` and listens with `backlog`.
    pub(crate) fn bind(addr: SockAddrHv, backlog: u32) -> io::Result<Listener> {
        let cid = bind_cid(addr.vm_id)?;
        let port = port_of(addr.service_id)?;
        let sock = socket()?;
        let context = |doing: &str, e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("{doing} vsock port {port} (CID {cid:#x}): {e}"),
            )
        };
        sock.bind(&SockAddr::vsock(cid, port))
            .map_err(|e| context("binding", e))?;
        sock.listen(i32::try_from(backlog).unwrap_or(i32::MAX))
            .map_err(|e| context("listening on", e))?;
        Ok(Listener { sock, local: addr })
    }

    pub(crate) fn local_addr(&self) -> SockAddrHv {
        self.local
    }

    /// Takes the next connection this listener's pattern accepts (PARENT: only the host's).
    pub(crate) fn accept(&self) -> io::Result<Established> {
        loop {
            let (conn, peer) = match self.sock.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let (peer_cid, _) = cid_port(&peer, "peer")?;
            if !bound_accepts(self.local.vm_id, peer_cid) {
                // Bound to PARENT: a connection from elsewhere is closed, as hvsockd refuses it.
                drop(conn);
                continue;
            }
            // Accepted sockets do not inherit O_NONBLOCK from the listener on Linux, but be
            // explicit: an HvStream blocks unless asked not to.
            conn.set_nonblocking(false)?;
            let (local_cid, _) = cid_port(&conn.local_addr()?, "local")?;
            return Ok(Established {
                local: SockAddrHv::new(vm_of_cid(local_cid), self.local.service_id),
                peer: SockAddrHv::new(vm_of_cid(peer_cid), self.local.service_id),
                socket: Socket::from_fd(conn.into()),
            });
        }
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)
    }

    pub(crate) fn try_clone(&self) -> io::Result<Listener> {
        Ok(Listener {
            sock: self.sock.try_clone()?,
            local: self.local,
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Puts the listener on `fd`, another descriptor of the same socket (checked by the caller).
    pub(crate) fn set_fd(&mut self, fd: std::os::fd::OwnedFd) {
        self.sock = Sock2::from(fd);
    }
}

#[cfg(test)]
mod tests {
    //! Pure functions only: no test here opens an AF_VSOCK socket (the machines that run the
    //! tests are VMs whose vsock is not ours).

    use super::*;

    fn other() -> VmId {
        VmId(Guid::parse("4f9e1c2a-1111-4222-8333-944455556666").unwrap_or_default())
    }

    #[test]
    fn connect_table() {
        let rows: &[(VmId, Option<u32>)] = &[
            (VmId::PARENT, Some(VMADDR_CID_HOST)),
            (VmId::ZERO, Some(VMADDR_CID_HOST)),
            (VmId::WILDCARD, Some(VMADDR_CID_HOST)),
            (VmId::LOOPBACK, Some(VMADDR_CID_LOCAL)),
            (VmId::CHILDREN, None),
            (VmId::BROADCAST, None),
            (VmId::SILOHOST, None),
            (other(), None),
        ];
        for &(vm, want) in rows {
            let got = connect_cid(vm);
            assert_eq!(got.as_ref().ok().copied(), want, "connect {vm:?}");
            if let Err(e) = got {
                let io = io::Error::from(e);
                assert_eq!(io.kind(), io::ErrorKind::HostUnreachable, "{vm:?}");
                assert!(io.to_string().contains("only the host"), "{io}");
            }
        }
    }

    #[test]
    fn bind_table() {
        let rows: &[(VmId, Option<u32>)] = &[
            (VmId::ZERO, Some(VMADDR_CID_ANY)),
            (VmId::WILDCARD, Some(VMADDR_CID_ANY)),
            (VmId::PARENT, Some(VMADDR_CID_ANY)),
            (VmId::LOOPBACK, Some(VMADDR_CID_LOCAL)),
            (VmId::CHILDREN, None),
            (VmId::BROADCAST, None),
            (VmId::SILOHOST, None),
            (other(), None),
        ];
        for &(vm, want) in rows {
            let got = bind_cid(vm);
            assert_eq!(got.as_ref().ok().copied(), want, "bind {vm:?}");
            if let Err(e) = got {
                let io = io::Error::from(e);
                assert_eq!(io.kind(), io::ErrorKind::AddrNotAvailable, "{vm:?}");
                assert!(io.to_string().contains("cannot be bound"), "{io}");
            }
        }
    }

    #[test]
    fn services_map_to_ports_only_through_the_template() {
        assert_eq!(port_of(ServiceId::from_vsock_port(2761)), Ok(2761));
        assert_eq!(port_of(ServiceId::from_vsock_port(0)), Ok(0));
        assert_eq!(
            port_of(ServiceId::from_vsock_port(u32::MAX - 1)),
            Ok(u32::MAX - 1)
        );
        assert_eq!(
            port_of(ServiceId::from_vsock_port(VMADDR_PORT_ANY)),
            Err(VsockAddrError::PortAny)
        );
        let random = ServiceId(
            Guid::parse("3049197c-facb-11e6-bd58-64006a7986d4").unwrap_or_default(), // Data4 differs
        );
        let e = port_of(random).expect_err("not a template GUID");
        let io = io::Error::from(e);
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
        let text = io.to_string();
        assert!(text.contains("only vsock-template services"), "{text}");
        assert!(text.contains("--port"), "{text}");
    }

    #[test]
    fn cids_map_back_to_partitions() {
        assert_eq!(vm_of_cid(VMADDR_CID_HOST), VmId::PARENT);
        assert_eq!(vm_of_cid(VMADDR_CID_LOCAL), VmId::LOOPBACK);
        assert_eq!(
            vm_of_cid(3).to_string(),
            "00000003-facb-11e6-bd58-64006a7986d3"
        );
        assert_eq!(
            vm_of_cid(0).to_string(),
            "00000000-facb-11e6-bd58-64006a7986d3"
        );
        // Round trip through the address mapping: what a guest connects to, its stream reports.
        for vm in [VmId::PARENT, VmId::LOOPBACK] {
            assert_eq!(vm_of_cid(connect_cid(vm).unwrap_or(0)), vm);
        }
        assert_eq!(
            vm_of_cid(connect_cid(VmId::ZERO).unwrap_or(0)),
            VmId::PARENT
        );
    }

    #[test]
    fn a_parent_listener_takes_only_the_host() {
        assert!(bound_accepts(VmId::PARENT, VMADDR_CID_HOST));
        assert!(!bound_accepts(VmId::PARENT, VMADDR_CID_LOCAL));
        assert!(!bound_accepts(VmId::PARENT, 7));
        for cid in [VMADDR_CID_HOST, VMADDR_CID_LOCAL, 7] {
            assert!(bound_accepts(VmId::ZERO, cid));
            assert!(bound_accepts(VmId::LOOPBACK, cid));
        }
    }

    #[test]
    fn the_test_vm_guard_wants_the_marker_as_the_last_word_of_its_kind() {
        let rows: &[(&str, bool)] = &[
            (
                "console=ttyS0 panic=-1 quiet hvsock_test_vm=1 hvsock_cid=3",
                true,
            ),
            ("hvsock_test_vm=1", true),
            ("  hvsock_test_vm=1\n", true),
            ("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet", false),
            ("", false),
            ("hvsock_test_vm=0", false),
            ("hvsock_test_vm=1 hvsock_test_vm=0", false),
            ("hvsock_test_vm=0 hvsock_test_vm=1", true),
            ("hvsock_test_vm=10", false),
            ("xhvsock_test_vm=1", false),
            ("hvsock_test_vm=1x", false),
            ("hvsock_test_vm", false),
        ];
        for &(cmdline, want) in rows {
            assert_eq!(cmdline_allows_vsock(cmdline), want, "{cmdline:?}");
        }
    }
}
