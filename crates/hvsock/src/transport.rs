//! Which way the crate reaches other partitions.
//!
//! The transport is always chosen explicitly, never guessed:
//!
//! - [`Transport::Provider`] (the default on Unix): through hvsockd's endpoint socket. The
//!   endpoint is `HVSOCK_ENDPOINT` if set (a socket, or a partition directory holding
//!   `endpoint.sock`), else `host.sock` in `HVSOCK_DIR` or the default runtime directory, or
//!   `endpoint.sock` there when there is no `host.sock` (a partition directory bind-mounted
//!   at a sandbox's `/run/hvsock`; see [`crate::dirs`]).
//! - [`Transport::Vsock`]: plain `AF_VSOCK`, inside a Linux guest, only when asked for with
//!   `HVSOCK_TRANSPORT=vsock` or through this API. The crate never falls back to it. No daemon
//!   runs in the guest: connect to PARENT or ZERO reaches the host (CID 2, where hvsockd
//!   decides), LOOPBACK this guest (CID 1); a listener bound to ZERO or PARENT binds
//!   `VMADDR_CID_ANY` (PARENT then takes only the host's connections), LOOPBACK CID 1; a
//!   service must be a vsock-template GUID, whose `Data1` is the port. Anything else is an
//!   error that says so. Inside a guest, `peer_addr` reports PARENT for the host, LOOPBACK for
//!   this guest, and the vsock-template GUID of the CID for any other CID (`local_addr` so
//!   reports the guest's own CID, e.g. `00000003-facb-11e6-bd58-64006a7986d3`); both ends carry
//!   the service connected to. Linux only.
//! - [`Transport::HyperV`]: native `AF_HYPERV` on Windows (the default there). The provider
//!   and vsock transports are Unix-only, and `AF_HYPERV` Windows-only: asking for one where
//!   it does not exist is an `Unsupported` error that says what to use instead.

use std::io;
use std::path::{Path, PathBuf};

use crate::dirs::{Dirs, ENDPOINT_FILE};

/// The environment variable that chooses the transport: `provider` (default on Unix), `vsock`
/// or `hyperv` (default on Windows).
pub const ENV_TRANSPORT: &str = "HVSOCK_TRANSPORT";
/// The environment variable that names the hvsockd endpoint socket to use.
pub const ENV_ENDPOINT: &str = "HVSOCK_ENDPOINT";

/// How to reach other partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// Through the hvsockd endpoint socket at this path; the partition is whichever one this
    /// endpoint belongs to.
    Provider(PathBuf),
    /// `AF_VSOCK`, inside a Linux guest (see the module docs for the address mapping).
    Vsock,
    /// `AF_HYPERV`, on Windows.
    HyperV,
}

impl Transport {
    /// The transport the environment asks for (see the module docs).
    pub fn from_env() -> io::Result<Transport> {
        let chosen = std::env::var(ENV_TRANSPORT).unwrap_or_default();
        match chosen.trim().to_ascii_lowercase().as_str() {
            "" if cfg!(windows) => Ok(Transport::HyperV),
            // Say so now, rather than fail to locate hvsockd's directories.
            "provider" if cfg!(windows) => Err(Transport::Provider(PathBuf::new()).unsupported()),
            "" | "provider" => Ok(Transport::Provider(default_endpoint()?)),
            "vsock" => Ok(Transport::Vsock),
            "hyperv" => Ok(Transport::HyperV),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{ENV_TRANSPORT}={other:?} is not a transport: use provider (through hvsockd), vsock (inside a Linux guest) or hyperv (Windows)"
                ),
            )),
        }
    }

    /// The provider transport through the endpoint socket at `path`.
    pub fn provider(path: impl Into<PathBuf>) -> Transport {
        Transport::Provider(path.into())
    }

    /// The provider transport through the endpoint of the hvsockd serving `dir`.
    pub fn provider_in(dir: impl AsRef<Path>) -> Transport {
        Transport::Provider(Dirs::under(dir.as_ref()).host_socket())
    }

    pub(crate) fn unsupported(&self) -> io::Error {
        let why = match self {
            Transport::Provider(_) => {
                "the provider transport (hvsockd) needs Unix sockets and descriptor passing, so \
                 it is Unix-only; on Windows use the hyperv transport (the default there)"
            }
            Transport::Vsock => {
                "the vsock transport is AF_VSOCK inside a Linux guest; on Windows use the \
                 hyperv transport (the default there)"
            }
            Transport::HyperV => {
                "the hyperv transport is Windows' AF_HYPERV; on Linux use the provider \
                 (hvsockd) or, inside a guest, vsock (HVSOCK_TRANSPORT=vsock)"
            }
        };
        io::Error::new(io::ErrorKind::Unsupported, why)
    }
}

/// The endpoint the environment names:
///
/// - `HVSOCK_ENDPOINT` if set; if it names a directory (a partition directory), the
///   `endpoint.sock` in it;
/// - else `host.sock` under `HVSOCK_DIR` or the default runtime directory; if that does not
///   exist but an `endpoint.sock` does (a partition directory mounted there, as a sandbox
///   gets it), that one.
pub fn default_endpoint() -> io::Result<PathBuf> {
    if let Some(path) = std::env::var_os(ENV_ENDPOINT).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_dir() {
            return Ok(path.join(ENDPOINT_FILE));
        }
        return Ok(path);
    }
    let dirs = Dirs::resolve(None)?;
    let host = dirs.host_socket();
    let partition = dirs.run.join(ENDPOINT_FILE);
    if !exists(&host) && exists(&partition) {
        return Ok(partition);
    }
    Ok(host)
}

/// Whether anything (a socket, a link) is at `path`.
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
