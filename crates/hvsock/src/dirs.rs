//! Where hvsockd keeps its registry and sockets, shared by the daemon, the CLI and the library.
//!
//! With `--dir DIR` (or `HVSOCK_DIR`) everything is under DIR: `DIR/registry.db`,
//! `DIR/host.sock`, `DIR/admin.sock`, and for each sandbox partition a directory of its own,
//! `DIR/partitions/<vmid>/`, holding its endpoint `endpoint.sock`. Without it, root uses
//! `/var/lib/hvsock` for state and `/run/hvsock` for sockets; other users use
//! `$XDG_STATE_HOME/hvsock` (default `~/.local/state/hvsock`) and `$XDG_RUNTIME_DIR/hvsock`.
//!
//! # Partition directories
//!
//! A sandbox is given its endpoint by bind-mounting its partition's *directory* (read-only is
//! fine), not the socket file: hvsockd creates the socket anew when it restarts, and a bind
//! mount of a file keeps pointing at the old, dead socket, while a mounted directory shows
//! whatever the directory holds now. Mounted at the sandbox's `/run/hvsock`, the library
//! inside finds `/run/hvsock/endpoint.sock` by itself (see
//! [`default_endpoint`](crate::transport::default_endpoint)).
//!
//! The old path `DIR/partitions/<vmid>.sock` still works: hvsockd keeps it as a symbolic link
//! to `<vmid>/endpoint.sock`, so programs and configurations that name it keep connecting.
//! A bind mount of that old path, though, resolves the link when it is made and pins that
//! socket: it breaks at the next restart, which the directory mount does not.

use std::io;
use std::path::{Path, PathBuf};

use crate::guid::VmId;

/// The environment variable that names the directory, like `--dir`.
pub const ENV_DIR: &str = "HVSOCK_DIR";

/// The name of a partition's endpoint in its directory (`partitions/<vmid>/endpoint.sock`),
/// and the name the library looks for when no `host.sock` is there (a partition directory
/// mounted in a sandbox).
pub const ENDPOINT_FILE: &str = "endpoint.sock";

/// The state directory (registry) and the runtime directory (sockets) of one hvsockd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// Holds `registry.db`.
    pub state: PathBuf,
    /// Holds `host.sock`, `admin.sock` and `partitions/`.
    pub run: PathBuf,
}

impl Dirs {
    /// Everything under one directory.
    pub fn under(dir: impl Into<PathBuf>) -> Dirs {
        let dir = dir.into();
        Dirs {
            state: dir.clone(),
            run: dir,
        }
    }

    /// `dir` if given, else `HVSOCK_DIR` if set, else the defaults for this user.
    pub fn resolve(dir: Option<&Path>) -> io::Result<Dirs> {
        if let Some(dir) = dir {
            return Ok(Dirs::under(dir));
        }
        if let Some(dir) = std::env::var_os(ENV_DIR).filter(|d| !d.is_empty()) {
            return Ok(Dirs::under(PathBuf::from(dir)));
        }
        Dirs::system_default()
    }

    /// The defaults without `--dir`: system paths for root, XDG paths for other users.
    pub fn system_default() -> io::Result<Dirs> {
        if is_root() {
            return Ok(Dirs {
                state: PathBuf::from("/var/lib/hvsock"),
                run: PathBuf::from("/run/hvsock"),
            });
        }
        let env_path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let run = env_path("XDG_RUNTIME_DIR").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "XDG_RUNTIME_DIR is not set: pass --dir DIR or set HVSOCK_DIR to say where hvsockd keeps its sockets",
            )
        })?;
        let state = match env_path("XDG_STATE_HOME") {
            Some(state) => state,
            None => env_path("HOME")
                .map(|home| home.join(".local/state"))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        "neither XDG_STATE_HOME nor HOME is set: pass --dir DIR or set HVSOCK_DIR",
                    )
                })?,
        };
        Ok(Dirs {
            state: state.join("hvsock"),
            run: run.join("hvsock"),
        })
    }

    /// The SQLite registry.
    pub fn registry(&self) -> PathBuf {
        self.state.join("registry.db")
    }

    /// The root partition's endpoint.
    pub fn host_socket(&self) -> PathBuf {
        self.run.join("host.sock")
    }

    /// The admin API socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.run.join("admin.sock")
    }

    /// The directory of partition endpoints.
    pub fn partitions(&self) -> PathBuf {
        self.run.join("partitions")
    }

    /// The directory of one partition: what to bind-mount into its sandbox.
    pub fn partition_dir(&self, vm: VmId) -> PathBuf {
        self.partitions().join(vm.to_string())
    }

    /// The endpoint of one partition, `partitions/<vmid>/endpoint.sock`.
    pub fn partition_socket(&self, vm: VmId) -> PathBuf {
        self.partition_dir(vm).join(ENDPOINT_FILE)
    }

    /// The endpoint's old path, `partitions/<vmid>.sock`: a symbolic link to
    /// [`partition_socket`](Dirs::partition_socket), kept for setups that name it.
    pub fn legacy_partition_socket(&self, vm: VmId) -> PathBuf {
        self.partitions().join(format!("{vm}.sock"))
    }

    /// The lock file that keeps two hvsockd from serving one directory.
    pub fn lock_file(&self) -> PathBuf {
        self.run.join("hvsockd.lock")
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_dir_holds_everything() {
        let dirs = Dirs::under("/tmp/demo");
        assert_eq!(dirs.registry(), Path::new("/tmp/demo/registry.db"));
        assert_eq!(dirs.host_socket(), Path::new("/tmp/demo/host.sock"));
        assert_eq!(dirs.admin_socket(), Path::new("/tmp/demo/admin.sock"));
        assert_eq!(
            dirs.partition_socket(VmId::LOOPBACK),
            Path::new("/tmp/demo/partitions/e0e16197-dd56-4a10-9195-5ee7a155a838/endpoint.sock")
        );
        assert_eq!(
            dirs.partition_dir(VmId::LOOPBACK),
            Path::new("/tmp/demo/partitions/e0e16197-dd56-4a10-9195-5ee7a155a838")
        );
        assert_eq!(
            dirs.legacy_partition_socket(VmId::LOOPBACK),
            Path::new("/tmp/demo/partitions/e0e16197-dd56-4a10-9195-5ee7a155a838.sock")
        );
        assert_eq!(
            Dirs::resolve(Some(Path::new("/x"))).ok(),
            Some(Dirs::under("/x"))
        );
    }
}
