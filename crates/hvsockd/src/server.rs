//! Start-up, wiring and shutdown.
//!
//! [`Server::bind`] does everything that can fail for a reason the operator must fix (the
//! directories, the lock that keeps a second hvsockd off the same directory, the registry, the
//! sockets) before anything is served, and wires the parts together:
//!
//! ```text
//!  control::open (registry + --config + world) ─▶ world::Shared ─▶ Broker
//!  Endpoints, GuestPorts (over the broker) ─▶ Reconciler (follows the world) ─▶ Control
//!  services (heartbeat, time, kvp: listeners of hvsockd's own in the world, see [`services`])
//!  admin::Api (control + views)
//! ```
//!
//! [`Server::run`] serves until the shutdown future resolves, then removes its sockets.
//! Established connections are kernel sockets that hvsockd never held, so they outlive it.
//! [`Server::bind_with`] takes the listening sockets of socket activation (see
//! [`activation`]): those it serves instead of binding its own, and never removes; and the
//! sockets an hvsockd before it kept (see [`crate::handover`]): those it resumes before it
//! serves anything. With a service manager's descriptor store, [`Server::run`] leaves every
//! socket open and in the store when it stops, for the next start.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvsock::dirs::Dirs;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Api};
use crate::attach::sockets::GuestPorts;
use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::control::{self, Control, StartError};
use crate::endpoint::{self, Endpoints, HOST_SOCKET_MODE, SocketFile};
use crate::handover::{FdStore, Hold, Holder, Kept, intake};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::registry::RegistryError;
use crate::services::{self, guests::Guests, heartbeat::Heartbeat, kvp::Kvp, time::Time};
use crate::sys::activation::{self, ActivationError, ListenFds};
use crate::sys::{self, LockError};
use crate::world;

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
        "--admin-tcp {0}: the admin API over TCP is only served on a loopback address (127.0.0.1 or [::1])"
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

impl From<StartError> for ServeError {
    fn from(e: StartError) -> ServeError {
        match e {
            StartError::Registry(e) => ServeError::Registry(e),
            StartError::Config(e) => ServeError::Config(e),
        }
    }
}

/// A started hvsockd, not yet serving.
#[derive(Debug)]
pub struct Server {
    api: Api,
    endpoints: Arc<Endpoints>,
    guest_ports: Arc<GuestPorts>,
    shutdown: CancellationToken,
    admin: tokio::net::UnixListener,
    admin_tcp: Option<(tokio::net::TcpListener, String)>,
    admin_file: SocketFile,
    holder: Arc<Holder>,
    _admin_hold: Hold,
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
    sys::lock_file(&dirs.lock_file()).map_err(|e| match e {
        LockError::Io { path, source } => ServeError::Lock { path, source },
        LockError::Held { pid, .. } => ServeError::AlreadyRunning {
            dir: dirs.run.clone(),
            pid,
        },
    })
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
        let (resumed, activated) = intake::sort(listen_fds.into_fds());
        let inherited = activation::classify(ListenFds::from_fds(activated))?;
        let store = FdStore::from_env().map_err(|source| ServeError::Socket {
            what: "service manager's descriptor store (FDSTORE)".into(),
            source,
        })?;
        let group = match &config.socket_group {
            None => None,
            Some(name) => {
                Some(
                    sys::lookup_group(name).map_err(|source| ServeError::SocketGroup {
                        group: name.clone(),
                        source,
                    })?,
                )
            }
        };
        let dirs = config.dirs;
        create_dir(&dirs.state, 0o755)?;
        create_dir(&dirs.run, 0o755)?;
        let lock = take_lock(&dirs)?;
        create_dir(&dirs.partitions(), 0o700)?;
        let _ = std::fs::set_permissions(dirs.partitions(), std::fs::Permissions::from_mode(0o700));
        let kept_ports = resumed.guest_ports.keys().copied().collect();
        let (registry, world) = control::open(&dirs, &config.declared, &kept_ports)?;
        let root = world.root();
        let world = world::Shared::new(world);
        let metrics = Arc::new(Metrics::default());
        let broker = Arc::new(Broker::new(world.clone(), metrics.clone()));
        let holder = broker.holder().clone();
        if let Some(store) = store {
            tracing::info!(
                max = store.max,
                "keeping every socket in the service manager's descriptor store"
            );
            holder.use_store(store);
        }
        if !resumed.is_empty() {
            tracing::info!(
                sockets = resumed.len(),
                sessions = resumed.sessions.len(),
                "resuming the sockets an hvsockd before this one held"
            );
        }
        for (name, why) in &resumed.refused {
            tracing::warn!("not resuming a kept socket: {why}");
            holder.discard(name);
        }
        let intake::Resumed {
            host: kept_host,
            admin: kept_admin,
            endpoints: kept_endpoints,
            guest_ports: kept_guest_ports,
            sessions: kept_sessions,
            refused: _,
        } = resumed;
        let shutdown = CancellationToken::new();
        if holder.has_store() {
            tokio::spawn(retry_store(holder.clone(), shutdown.clone()));
        }
        let endpoints = Arc::new(Endpoints::new(
            broker.clone(),
            config.limits,
            dirs.clone(),
            shutdown.clone(),
        ));
        let guest_ports = Arc::new(GuestPorts::new(
            broker.clone(),
            config.limits,
            shutdown.clone(),
        ));
        endpoints.adopt(kept_endpoints);
        guest_ports.adopt(kept_guest_ports);
        let socket_err = |what: String| move |source| ServeError::Socket { what, source };
        let host_file = match (inherited.host, kept_host) {
            (Some(fd), kept) => {
                if let Some((_, name)) = kept {
                    holder.discard(&name); // the socket unit's host.sock is the one
                }
                warn_if_elsewhere("host", &fd, &dirs.host_socket());
                endpoints
                    .serve_root(root, &dirs.host_socket(), fd, SocketFile::Inherited, None)
                    .map_err(socket_err("host".into()))?;
                SocketFile::Inherited
            }
            (None, Some((fd, name))) => {
                endpoints
                    .serve_root(root, &dirs.host_socket(), fd, SocketFile::Owned, Some(name))
                    .map_err(socket_err("host".into()))?;
                SocketFile::Owned
            }
            (None, None) => {
                let fd = endpoint::listen(&dirs.host_socket(), HOST_SOCKET_MODE, group)
                    .map_err(socket_err("host".into()))?;
                endpoints
                    .serve_root(root, &dirs.host_socket(), fd, SocketFile::Owned, None)
                    .map_err(socket_err("host".into()))?;
                SocketFile::Owned
            }
        };
        let reconciler = Reconciler::new(world.clone(), endpoints.clone(), guest_ports.clone());
        // The first pass opens the sandboxes' endpoints; nothing is bound yet, so no guest
        // port opens here: binds open them as they come.
        if let Some((id, e)) = reconciler.pass().endpoint_failures.into_iter().next() {
            shutdown.cancel();
            return Err(ServeError::Socket {
                what: format!("partition {id}"),
                source: io::Error::other(e),
            });
        }
        // Kept sessions resume now, before anything is served: their listeners are bound
        // again, so the next pass opens their guest ports (the kept ones), and a connector
        // finds them.
        let kept_sessions_count = kept_sessions.len();
        for (fd, name, n, record) in kept_sessions {
            endpoints.resume_session(fd, name, n, record);
        }
        endpoints.drop_unused_kept();
        if kept_sessions_count > 0 || !guest_ports.ports_kept_empty() {
            reconciler.pass();
        }
        guest_ports.drop_unused_kept();
        let kvp = crate::kvp::Pools::new(registry.kvp_pools()?);
        let control = Control::new(registry, world.clone(), reconciler.sync(), kvp);
        tokio::spawn(reconciler.run(shutdown.clone()));
        // The services hvsockd serves itself: bound now, after the kept sessions, so that a
        // program that held one of them before the restart keeps it (see [`services`]).
        let guests = Arc::new(Guests::default());
        services::start(
            broker.clone(),
            vec![
                Arc::new(Heartbeat {
                    guests: guests.clone(),
                }),
                Arc::new(Time {
                    guests: guests.clone(),
                }),
                Arc::new(Kvp {
                    pools: control.kvp().clone(),
                }),
            ],
            shutdown.clone(),
        );
        let dup = |fd: &std::os::fd::OwnedFd| {
            fd.try_clone()
                .map(Arc::new)
                .map_err(socket_err("admin".into()))
        };
        let (admin_fd, admin_file, admin_hold) = match (inherited.admin, kept_admin) {
            (Some(fd), kept) => {
                if let Some((_, name)) = kept {
                    holder.discard(&name);
                }
                warn_if_elsewhere("admin", &fd, &dirs.admin_socket());
                let hold = holder.hold_activated(dup(&fd)?, "admin");
                (fd, SocketFile::Inherited, hold)
            }
            (None, Some((fd, name))) => {
                let hold = holder.adopt(dup(&fd)?, Kept::Admin, name);
                (fd, SocketFile::Owned, hold)
            }
            (None, None) => {
                let fd = admin::listen(&dirs.admin_socket()).map_err(socket_err("admin".into()))?;
                let hold = holder.hold(dup(&fd)?, Kept::Admin);
                (fd, SocketFile::Owned, hold)
            }
        };
        let admin = admin::tokio_listener(admin_fd).map_err(socket_err("admin".into()))?;
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
                let token_path = dirs.run.join(admin::TCP_TOKEN_FILE);
                let token = admin::write_tcp_token(&token_path).map_err(socket_err(format!(
                    "admin TCP token ({})",
                    token_path.display()
                )))?;
                tracing::warn!(
                    "serving the admin API on http://{local} too, to clients that send the bearer token in {} (mode 0600): for tests and tools",
                    token_path.display()
                );
                Some((listener, token))
            }
        };
        tracing::info!(
            dir = %dirs.run.display(), root = %root,
            "hvsockd ready: endpoint {}, admin API {}",
            dirs.host_socket().display(), dirs.admin_socket().display()
        );
        let api = Api {
            control,
            world,
            endpoints: endpoints.clone(),
            guest_ports: guest_ports.clone(),
            metrics,
            dirs,
            started: Instant::now(),
            guests,
        };
        Ok(Server {
            api,
            endpoints,
            guest_ports,
            shutdown,
            admin,
            admin_tcp,
            admin_file,
            holder,
            _admin_hold: admin_hold,
            _lock: lock,
        })
    }

    /// Every socket this hvsockd holds (what a hand-over carries).
    pub fn holder(&self) -> &Arc<Holder> {
        &self.holder
    }

    /// The admin API's TCP address, if it serves one.
    pub fn admin_tcp_addr(&self) -> Option<SocketAddr> {
        self.admin_tcp
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
    }

    /// The admin API's state (for in-process tests and tools).
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Cancelled when hvsockd stops.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Serves until `shutdown` resolves, then removes the sockets.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let admin = admin::serve(self.api.clone(), self.admin, self.shutdown.clone());
        let admin_tcp = async {
            match self.admin_tcp {
                Some((listener, token)) => {
                    admin::serve_tcp(self.api.clone(), listener, token, self.shutdown.clone()).await
                }
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            () = shutdown => Ok(()),
            r = admin => r.map_err(ServeError::Admin),
            r = admin_tcp => r.map_err(ServeError::Admin),
        };
        if self.holder.has_store() {
            // Everything stays open in the store, files included, for the next start: a
            // restart is no outage. (A `systemctl stop` makes the manager close them.)
            self.holder.freeze(STORE_FLUSH);
            tracing::info!("hvsockd stopping; its sockets stay in the service manager's store");
            return result;
        }
        tracing::info!("hvsockd stopping");
        self.shutdown.cancel();
        self.endpoints.close_all();
        self.guest_ports.close_all();
        if self.admin_file == SocketFile::Owned {
            let _ = std::fs::remove_file(self.api.dirs.admin_socket());
        }
        let _ = std::fs::remove_file(self.api.dirs.run.join(admin::TCP_TOKEN_FILE));
        result
    }
}

/// How long a stopping hvsockd waits for the service manager to take the store's last
/// messages.
const STORE_FLUSH: Duration = Duration::from_secs(2);

/// Sends the store's messages the service manager was not ready for, as it becomes ready: the
/// event loop never waits for it ([`crate::handover::store`]).
async fn retry_store(holder: Arc<Holder>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        holder.retry_store();
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
