//! The admin API: HTTP/1.1 + JSON on `admin.sock` (mode 0600), versioned under `/v1/`,
//! described by the OpenAPI document `crates/hvsockd/openapi.json` (served at
//! `/v1/openapi.json`; a test keeps it and [`ROUTES`] equal).
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /v1/host` | the root partition's id, the version, the directories, the default policy |
//! | `GET /v1/services` | every service |
//! | `POST /v1/services` `{name, id?, port?, enabled?}` | registers; 201 if new, 200 if the same service was there |
//! | `GET /v1/services/{id-or-name}` | one service, with its policy |
//! | `PATCH /v1/services/{id-or-name}` `{name?, enabled?, policy?}` | renames, switches, sets the policy (JSON merge patch) |
//! | `POST /v1/services/{id-or-name}/enable` and `/disable` | switches it |
//! | `DELETE /v1/services/{id-or-name}` | removes it (404 `not_found` if absent) |
//! | `GET /v1/partitions` | every partition |
//! | `POST /v1/partitions` `{name, id?, parent?, hybrid_vsock?}` | adds a sandbox partition and opens its endpoint; with `hybrid_vsock` (an absolute path), a VM attached through its VMM's hybrid-vsock socket instead (no endpoint) |
//! | `GET /v1/partitions/{id-or-name}` | one partition |
//! | `PATCH /v1/partitions/{id-or-name}` `{name?}` | renames it |
//! | `GET /v1/partitions/{id-or-name}/children` | its direct children |
//! | `DELETE /v1/partitions/{id-or-name}` | removes it, its endpoint and its listeners |
//! | `GET /v1/partitions/{id-or-name}/kvp` | its key-value pools: the host's and the guest's (with whether its agent is connected) |
//! | `GET /v1/partitions/{id-or-name}/kvp/{key}?pool=host\|guest` | one pair (default: the host pool); 404 `not_found` if absent |
//! | `PUT /v1/partitions/{id-or-name}/kvp/{key}` `{value}` | sets a pair of the host pool (201 if new, 200 if replaced), kept in the registry; a connected agent gets it at once |
//! | `DELETE /v1/partitions/{id-or-name}/kvp/{key}` | deletes a pair of the host pool (404 `not_found` if absent) |
//! | `GET /v1/listeners` | live listeners |
//! | `GET /v1/attachments` | VM attachments and the `PATH_<port>` sockets open for their guests |
//! | `GET /v1/registry` | the registry as a document (export) |
//! | `POST /v1/registry?mode=merge\|replace&dry_run=false` | imports a document, in one transaction |
//! | `GET /v1/stats` | the counters as JSON |
//! | `GET /v1/openapi.json` | the OpenAPI document |
//! | `GET /metrics` | the counters in Prometheus text |
//!
//! Errors are JSON: `{"error": {"code": "not_found", "message": "no service \"x\" in the registry"}}`
//! with a fitting HTTP status (and `details`, a list, for an import's conflicts); even the
//! errors axum makes itself (a wrong method, a bad query string) are turned into that shape.
//! Every handler is parse → [control](crate::control) → view: it reads the request into the
//! shared API types ([`hvsock_api`]), asks the control layer for the change (which writes the
//! registry and the world, and waits until the endpoints and guest ports follow), and answers
//! with a view built from the world ([`views`]).
//!
//! # Modules
//!
//! - this module: the routes, the state they share ([`Api`]), serving;
//! - [`http`]: the HTTP plumbing: JSON errors for every failure, axum's own included;
//! - [`views`]: the API's objects built from the world;
//! - [`handlers`]: one function per route.
//!
//! A partition's parent defaults to the root. VMs cannot have child partitions here (a guest
//! that hosts its own sandboxes runs its own hvsockd); a VM's partition view shows the guest
//! ports hvsockd listens on for it (`guest_ports`).
//!
//! A service's policy is shown with partitions as `{id, name}` and taken by name or id;
//! `PATCH` follows JSON merge patch (RFC 7396): an absent member is left as it is, `null`
//! resets it (`"policy": null`: the default policy applies again; `"connect": null`: any
//! partition may connect). A service without a policy of its own that is given one starts
//! from the default policy that applied to it.

pub mod handlers;
pub mod http;
pub mod views;

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use hvsock::dirs::Dirs;
use rustix::net::SocketType;
use tokio_util::sync::CancellationToken;

use crate::attach::sockets::GuestPorts;
use crate::control::Control;
use crate::endpoint::Endpoints;
use crate::metrics::Metrics;
use crate::sys::{self, Replace, SocketSpec};
use crate::world;

use self::handlers::*;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// The largest request body accepted (a registry import is the largest).
pub const MAX_BODY: usize = 16 << 20;

/// Mode of `admin.sock`: the owner only.
pub const ADMIN_SOCKET_MODE: u32 = 0o600;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct Api {
    /// The only way to change state.
    pub control: Arc<Control>,
    /// What views read.
    pub world: Arc<world::Shared>,
    /// Open endpoints (views show their paths and sessions).
    pub endpoints: Arc<Endpoints>,
    /// Open guest ports (views show them).
    pub guest_ports: Arc<GuestPorts>,
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// Where things live.
    pub dirs: Dirs,
    /// When hvsockd started.
    pub started: Instant,
    /// What the heartbeat and time services know of each guest.
    pub guests: Arc<crate::services::guests::Guests>,
}

/// Creates the admin socket at `path`, mode 0600 from the start (see [`sys::listen_unix`]),
/// replacing a stale file.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    sys::listen_unix(
        path,
        SocketSpec {
            ty: SocketType::STREAM,
            mode: ADMIN_SOCKET_MODE,
            owner: None,
            replace: Replace::AnyFile,
            backlog: 1024,
        },
    )
}

/// Turns a listening admin socket into a tokio listener.
pub fn tokio_listener(fd: OwnedFd) -> io::Result<tokio::net::UnixListener> {
    let std = std::os::unix::net::UnixListener::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(std)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    api: Api,
    listener: tokio::net::UnixListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    axum::serve(listener, router(api))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The file, in the run directory, that holds the admin API's TCP credential.
pub const TCP_TOKEN_FILE: &str = "admin-tcp.token";

/// Makes the credential of `--admin-tcp`: 32 random bytes, hex, written to `path` with mode
/// 0600 (owner: hvsockd's user, so root's on a system install). A previous file is replaced.
pub fn write_tcp_token(path: &std::path::Path) -> io::Result<String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    Ok(token)
}

/// Whether `header` (an `Authorization` value) carries `token` as a bearer credential,
/// compared in constant time.
pub fn bearer_matches(header: Option<&[u8]>, token: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let want = token.as_bytes();
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Serves the API over TCP (`--admin-tcp`, loopback only) until `shutdown`; every request
/// must carry `Authorization: Bearer TOKEN`, the content of [`TCP_TOKEN_FILE`], else it is
/// answered 401 `unauthorized`.
pub async fn serve_tcp(
    api: Api,
    listener: tokio::net::TcpListener,
    token: String,
    shutdown: CancellationToken,
) -> io::Result<()> {
    use axum::response::IntoResponse;
    let token = Arc::new(token);
    let check = axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let token = token.clone();
            async move {
                let header = request
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes());
                if bearer_matches(header, &token) {
                    next.run(request).await
                } else {
                    http::ApiError::new(
                        axum::http::StatusCode::UNAUTHORIZED,
                        "unauthorized",
                        format!(
                            "the admin API over TCP needs `Authorization: Bearer TOKEN`, TOKEN being the content of {TCP_TOKEN_FILE} in hvsockd's run directory (readable by root only)"
                        ),
                    )
                    .into_response()
                }
            }
        },
    );
    axum::serve(listener, router(api).layer(check))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Declares every route once: [`ROUTES`] (for the OpenAPI test) and the router.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:ident,)*) => {
        /// Every route of the API as `(method, path)`, in axum's path syntax.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        fn add_routes(router: Router<Api>) -> Router<Api> {
            router$(.route($path, axum::routing::$method($handler)))*
        }
    };
}

routes! {
    get "/v1/host" => host,
    get "/v1/services" => list_services,
    post "/v1/services" => add_service,
    get "/v1/services/{key}" => show_service,
    patch "/v1/services/{key}" => patch_service,
    delete "/v1/services/{key}" => remove_service,
    post "/v1/services/{key}/enable" => enable_service,
    post "/v1/services/{key}/disable" => disable_service,
    get "/v1/partitions" => list_partitions,
    post "/v1/partitions" => add_partition,
    get "/v1/partitions/{key}" => show_partition,
    patch "/v1/partitions/{key}" => patch_partition,
    delete "/v1/partitions/{key}" => remove_partition,
    get "/v1/partitions/{key}/children" => partition_children,
    get "/v1/partitions/{key}/kvp" => show_kvp,
    get "/v1/partitions/{key}/kvp/{name}" => show_kvp_pair,
    put "/v1/partitions/{key}/kvp/{name}" => set_kvp_pair,
    delete "/v1/partitions/{key}/kvp/{name}" => delete_kvp_pair,
    get "/v1/listeners" => list_listeners,
    get "/v1/attachments" => list_attachments,
    get "/v1/registry" => export_registry,
    post "/v1/registry" => import_registry,
    get "/v1/stats" => stats,
    get "/v1/openapi.json" => openapi,
    get "/metrics" => metrics,
}

/// The API's routes.
pub fn router(api: Api) -> Router {
    add_routes(Router::new())
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(axum::middleware::map_response(http::json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod schemas;
