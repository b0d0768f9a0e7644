//! Start-up, the shared context, and shutdown.
//!
//! [`Server::bind`] does everything that can fail for a reason the operator must fix (the
//! directories, the lock that keeps a second hvsockd off the same directory, the registry, the
//! sockets) before anything is served; [`Server::run`] serves until the shutdown future
//! resolves, then removes its sockets. Established connections are kernel sockets that hvsockd
//! never held, so they outlive it.
//!
//! [`Server::bind_with`] takes the listening sockets of socket activation (see
//! [`activation`]): those it serves instead of binding its own, and never
//! removes.

use std::fs::File;
use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hvsock::VmId;
use hvsock::dirs::Dirs;
use tokio_util::sync::CancellationToken;

use crate::activation::{self, ActivationError, ListenFds};
use crate::attach::{self, Attachments};
use crate::config::{ConfigError, Declared};
use crate::endpoint::{self, Endpoints, SocketFile};
use crate::metrics::Metrics;
use crate::registry::{PartitionKind, Registry, RegistryError};
use crate::state::World;

/// Mode of `host.sock`: the owner and its group (`--socket-group`; `hvsock` when packaged).
pub const HOST_SOCKET_MODE: u32 = 0o660;
/// Mode of a partition endpoint: open, because it is reached through a bind mount inside the
/// sandbox; the `partitions/` directory (0700) keeps other host users from reaching it.
pub const PARTITION_SOCKET_MODE: u32 = 0o666;
/// Mode of `admin.sock`: the owner only.
pub const ADMIN_SOCKET_MODE: u32 = 0o600;
/// How often hvsockd retries guest sockets it could not open (e.g. a VM directory that did not
/// exist yet).
pub const ATTACH_RETRY: Duration = Duration::from_secs(2);

/// Limits that keep one client from hurting the others.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long a new client may take to send its first frame.
    pub handshake_timeout: Duration,
    /// Most concurrent client sessions per partition.
    pub max_sessions_per_partition: usize,
    /// Most connects one control connection may have waiting for a listener's backlog.
    pub max_outstanding_connects: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            max_sessions_per_partition: 1024,
            max_outstanding_connects: 256,
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the registry and sockets live.
    pub dirs: Dirs,
    /// Per-client limits.
    pub limits: Limits,
    /// Services, partitions and the default policy that the configuration file declares,
    /// ensured at start.
    pub declared: Declared,
    /// Also serve the admin API over TCP on this loopback address (for tests and tools that
    /// speak HTTP over TCP only; off by default).
    pub admin_tcp: Option<SocketAddr>,
    /// The group (a name or a numeric gid) that owns `host.sock`, so that its members may
    /// connect as the root partition (mode 0660). `None`: hvsockd's own group. `admin.sock`
    /// stays owner-only either way. Not applied to a socket-activated `host.sock`, whose
    /// owner is the socket unit's business (`SocketGroup=`).
    pub socket_group: Option<String>,
}

impl Config {
    /// Defaults under `dirs`.
    pub fn new(dirs: Dirs) -> Config {
        Config {
            dirs,
            limits: Limits::default(),
            declared: Declared::default(),
            admin_tcp: None,
            socket_group: None,
        }
    }
}

/// Why hvsockd could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A directory could not be created.
    #[error("creating directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The lock file could not be taken.
    #[error("locking {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another hvsockd serves the directory.
    #[error(
        "another hvsockd (pid {pid}) already serves {dir}: stop it first, or use another --dir"
    )]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
        /// Its pid, as written in the lock file.
        pid: String,
    },
    /// The registry could not be opened.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A socket could not be created.
    #[error("creating the {what} socket: {source}")]
    Socket {
        /// Which socket.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The admin API failed.
    #[error("serving the admin API: {0}")]
    Admin(#[source] io::Error),
    /// The configuration file's entries could not be applied.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The admin API's TCP address is not a loopback address.
    #[error(
        "--admin-tcp {0}: the admin API over TCP is only served on a loopback address (127.0.0.1 or [::1]), because it has no authentication"
    )]
    AdminTcpNotLoopback(SocketAddr),
    /// The socket group does not exist (or cannot be looked up).
    #[error("socket group {group:?}: {source}")]
    SocketGroup {
        /// The group as given.
        group: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The sockets of socket activation are unusable.
    #[error(transparent)]
    Activation(#[from] ActivationError),
}

/// What every task of hvsockd shares.
#[derive(Debug)]
pub struct Ctx {
    /// Where things live.
    pub dirs: Dirs,
    /// Per-client limits.
    pub limits: Limits,
    /// Cancelled to stop everything.
    pub shutdown: CancellationToken,
    /// Services, partitions and listeners.
    world: Mutex<World>,
    /// The SQLite registry; writes happen on blocking threads.
    registry: Mutex<Registry>,
    /// Counters.
    pub metrics: Metrics,
    /// Open endpoints.
    pub endpoints: Endpoints,
    /// Open guest-to-host sockets of VM attachments.
    pub attachments: Attachments,
    /// When hvsockd started.
    pub started: Instant,
}

impl Ctx {
    /// The world, locked. Hold it briefly and never across an `.await`.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The registry, locked. Use from blocking threads.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A partition's name for logs.
    pub fn label(&self, id: VmId) -> String {
        self.world().partition_label(id)
    }
}

/// A started hvsockd, not yet serving.
#[derive(Debug)]
pub struct Server {
    ctx: Arc<Ctx>,
    admin: tokio::net::UnixListener,
    admin_tcp: Option<tokio::net::TcpListener>,
    admin_file: SocketFile,
    _lock: File,
}

fn create_dir(path: &Path, mode: u32) -> Result<(), ServeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|source| ServeError::CreateDir {
            path: path.to_owned(),
            source,
        })
}

fn take_lock(dirs: &Dirs) -> Result<File, ServeError> {
    let path = dirs.lock_file();
    let lock_err = |source| ServeError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    match rustix::fs::flock(
        file.as_fd(),
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    ) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(ServeError::AlreadyRunning {
                dir: dirs.run.clone(),
                pid: pid.trim().to_owned(),
            });
        }
        Err(e) => return Err(lock_err(e.into())),
    }
    file.set_len(0).map_err(lock_err)?;
    writeln!(file, "{}", std::process::id()).map_err(lock_err)?;
    Ok(file)
}

impl Server {
    /// Creates the directories, takes the lock, opens (or creates) the registry and creates
    /// every socket. Must run inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        Server::bind_with(config, ListenFds::default()).await
    }

    /// [`Server::bind`], serving the sockets of socket activation (`host`, `admin`) instead of
    /// binding those.
    pub async fn bind_with(config: Config, listen_fds: ListenFds) -> Result<Server, ServeError> {
        let inherited = activation::classify(listen_fds)?;
        let group =
            match &config.socket_group {
                None => None,
                Some(name) => Some(endpoint::lookup_group(name).map_err(|source| {
                    ServeError::SocketGroup {
                        group: name.clone(),
                        source,
                    }
                })?),
            };
        let dirs = config.dirs;
        create_dir(&dirs.state, 0o755)?;
        create_dir(&dirs.run, 0o755)?;
        let lock = take_lock(&dirs)?;
        create_dir(&dirs.partitions(), 0o700)?;
        let _ = std::fs::set_permissions(dirs.partitions(), std::fs::Permissions::from_mode(0o700));
        let mut registry = Registry::open(&dirs.registry())?;
        let (applied, default_policy) = config.declared.apply(&mut registry)?;
        for change in &applied.changes {
            tracing::info!(config = %config.declared.source.display(), "{change}");
        }
        let mut world = World::load(&registry)?;
        world.set_default_policy(default_policy);
        let root = world.root();
        let sandboxes: Vec<VmId> = world
            .partitions()
            .filter(|p| p.kind == PartitionKind::Sandbox)
            .map(|p| p.id)
            .collect();
        for path in world.partitions().filter_map(|p| p.hybrid_vsock.as_deref()) {
            attach::remove_stale(path);
        }
        let ctx = Arc::new(Ctx {
            dirs: dirs.clone(),
            limits: config.limits,
            shutdown: CancellationToken::new(),
            world: Mutex::new(world),
            registry: Mutex::new(registry),
            metrics: Metrics::default(),
            endpoints: Endpoints::default(),
            attachments: Attachments::default(),
            started: Instant::now(),
        });
        let socket_err = |what: String| move |source| ServeError::Socket { what, source };
        let host_file = match inherited.host {
            Some(fd) => {
                warn_if_elsewhere("host", &fd, &dirs.host_socket());
                endpoint::serve(&ctx, root, &dirs.host_socket(), fd, SocketFile::Inherited)
                    .map_err(socket_err("host".into()))?;
                SocketFile::Inherited
            }
            None => {
                let fd = endpoint::listen(&dirs.host_socket(), HOST_SOCKET_MODE, group)
                    .map_err(socket_err("host".into()))?;
                endpoint::serve(&ctx, root, &dirs.host_socket(), fd, SocketFile::Owned)
                    .map_err(socket_err("host".into()))?;
                SocketFile::Owned
            }
        };
        for id in sandboxes {
            endpoint::open(&ctx, id, &dirs.partition_socket(id), PARTITION_SOCKET_MODE)
                .map_err(socket_err(format!("partition {id}")))?;
        }
        let (admin, admin_file) = match inherited.admin {
            Some(fd) => {
                warn_if_elsewhere("admin", &fd, &dirs.admin_socket());
                let listener =
                    activation::tokio_listener(fd).map_err(socket_err("admin".into()))?;
                (listener, SocketFile::Inherited)
            }
            None => {
                let listener = crate::admin::listen(&dirs.admin_socket(), ADMIN_SOCKET_MODE)
                    .map_err(socket_err("admin".into()))?;
                (listener, SocketFile::Owned)
            }
        };
        if host_file == SocketFile::Inherited || admin_file == SocketFile::Inherited {
            tracing::info!(
                host = ?host_file, admin = ?admin_file,
                "serving sockets from the service manager (socket activation); their files outlive hvsockd"
            );
        }
        let admin_tcp = match config.admin_tcp {
            None => None,
            Some(addr) if !addr.ip().is_loopback() => {
                return Err(ServeError::AdminTcpNotLoopback(addr));
            }
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(socket_err(format!("admin TCP ({addr})")))?;
                let local = listener
                    .local_addr()
                    .map_err(socket_err(format!("admin TCP ({addr})")))?;
                tracing::warn!(
                    "serving the admin API on http://{local} too, without authentication: for tests and tools only"
                );
                Some(listener)
            }
        };
        // Nothing is bound yet, so no guest port opens here; binds open them as they come.
        attach::reconcile(&ctx);
        tokio::spawn(attach::retry_loop(ctx.clone(), ATTACH_RETRY));
        tracing::info!(
            dir = %dirs.run.display(), root = %root,
            "hvsockd ready: endpoint {}, admin API {}",
            dirs.host_socket().display(), dirs.admin_socket().display()
        );
        Ok(Server {
            ctx,
            admin,
            admin_tcp,
            admin_file,
            _lock: lock,
        })
    }

    /// The admin API's TCP address, if it serves one.
    pub fn admin_tcp_addr(&self) -> Option<SocketAddr> {
        self.admin_tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared context (for in-process tests and tools).
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Serves until `shutdown` resolves, then removes the sockets.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let ctx = self.ctx.clone();
        let admin = crate::admin::serve(ctx.clone(), self.admin);
        let admin_tcp = async {
            match self.admin_tcp {
                Some(listener) => crate::admin::serve_tcp(ctx.clone(), listener).await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            () = shutdown => Ok(()),
            r = admin => r.map_err(ServeError::Admin),
            r = admin_tcp => r.map_err(ServeError::Admin),
        };
        tracing::info!("hvsockd stopping");
        ctx.shutdown.cancel();
        endpoint::remove_all(&ctx);
        attach::close_all(&ctx);
        if self.admin_file == SocketFile::Owned {
            let _ = std::fs::remove_file(ctx.dirs.admin_socket());
        }
        result
    }
}

/// Warns when a socket-activated socket is bound somewhere other than where the CLI and the
/// library will look for it (`--dir`).
fn warn_if_elsewhere(what: &str, fd: &std::os::fd::OwnedFd, expected: &Path) {
    match activation::bound_path(fd.as_fd()) {
        Some(path) if path == expected => {}
        Some(path) => tracing::warn!(
            "the socket-activated {what} socket is bound at {}, but clients of this hvsockd look for it at {}: make the socket unit and --dir agree",
            path.display(),
            expected.display()
        ),
        None => tracing::warn!(
            "the socket-activated {what} socket has no path; clients look for it at {}",
            expected.display()
        ),
    }
}
