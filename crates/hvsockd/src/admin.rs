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
//! Registry writes run on a blocking thread, one at a time, and update the in-memory world in
//! the same critical section, so that the world never runs ahead of or behind the database.
//! Every change that can alter what a VM's guest may reach (services, policies, partitions,
//! imports) is followed by [`attach::reconcile`], which opens or closes the VM's
//! `PATH_<port>` sockets.
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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use hvsock::{ServiceId, VmId};
use serde::{Deserialize, Deserializer, Serialize};

use crate::attach;
use crate::endpoint;
use crate::registry::{
    Added, Export, ImportMode, ImportReport, PartitionKind, PartitionRecord, RegistryError,
    ServiceRecord,
};
use crate::router::Policy;
use crate::server::{Ctx, PARTITION_SOCKET_MODE};

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The largest request body accepted (a registry import is the largest).
pub const MAX_BODY: usize = 16 << 20;

/// Binds the admin socket at `path` with `mode`, replacing a stale file.
pub fn listen(path: &Path, mode: u32) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves the API on `listener` until hvsockd shuts down.
pub async fn serve(ctx: Arc<Ctx>, listener: tokio::net::UnixListener) -> io::Result<()> {
    let shutdown = ctx.shutdown.clone();
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Serves the API over TCP (`--admin-tcp`, loopback only) until hvsockd shuts down.
pub async fn serve_tcp(ctx: Arc<Ctx>, listener: tokio::net::TcpListener) -> io::Result<()> {
    let shutdown = ctx.shutdown.clone();
    axum::serve(listener, router(ctx))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Declares every route once: [`ROUTES`] (for the OpenAPI test) and the router.
macro_rules! routes {
    ($($method:ident $path:literal => $handler:ident,)*) => {
        /// Every route of the API as `(method, path)`, in axum's path syntax.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        fn add_routes(router: Router<Arc<Ctx>>) -> Router<Arc<Ctx>> {
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
    get "/v1/listeners" => list_listeners,
    get "/v1/attachments" => list_attachments,
    get "/v1/registry" => export_registry,
    post "/v1/registry" => import_registry,
    get "/v1/stats" => stats,
    get "/v1/openapi.json" => openapi,
    get "/metrics" => metrics,
}

/// The API's routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    add_routes(Router::new())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ctx)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn not_found(what: &str, key: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} {key:?} in the registry"),
        )
    }

    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    details: &'a [String],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                details: &self.details,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Turns the error answers axum makes itself (a path segment that is not UTF-8, a bad query
/// string, …) into the API's JSON errors, so that every error has one shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 << 10)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_json",
        _ if status.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned()
    } else {
        text
    };
    let mut fixed = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().insert(name, value.clone());
        }
    }
    fixed
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method; the Allow header lists the ones it takes",
    )
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        let (status, code) = match &e {
            RegistryError::NameTaken { .. } | RegistryError::IdTaken { .. } => {
                (StatusCode::CONFLICT, "conflict")
            }
            RegistryError::HasChildren { .. } => (StatusCode::CONFLICT, "has_children"),
            RegistryError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            RegistryError::Root | RegistryError::RootName => {
                (StatusCode::BAD_REQUEST, "root_partition")
            }
            RegistryError::UnknownPolicyPartition { .. } => {
                (StatusCode::BAD_REQUEST, "unknown_partition")
            }
            RegistryError::InvalidImport(_) => (StatusCode::BAD_REQUEST, "invalid_registry"),
            RegistryError::Conflicts(list) => {
                let message = format!(
                    "the import clashes with the registry ({} conflict{}, listed in details); nothing was changed: use mode=replace to make the registry equal to the document, or fix the entries",
                    list.len(),
                    if list.len() == 1 { "" } else { "s" }
                );
                let mut err = ApiError::new(StatusCode::CONFLICT, "conflict", message);
                err.details = list.clone();
                return err;
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "registry"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        let code = match e.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            _ => "invalid_json",
        };
        ApiError::new(e.status(), code, e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::new(e.status(), "invalid_request", e.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such API path; see /v1/openapi.json for the API (/v1/services, /v1/partitions, /v1/listeners, /v1/registry, /v1/stats, /metrics)",
    )
}

/// Runs a registry write on a blocking thread.
async fn write<T: Send + 'static>(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&Ctx) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || f(&ctx))
        .await
        .map_err(|e| ApiError::internal(format!("the registry write failed: {e}")))?
}

#[derive(Serialize)]
struct HostView {
    id: VmId,
    name: &'static str,
    version: &'static str,
    state_dir: PathBuf,
    run_dir: PathBuf,
    endpoint: PathBuf,
    uptime_seconds: u64,
    default_policy: PolicyView,
}

async fn host(State(ctx): State<Arc<Ctx>>) -> Json<HostView> {
    let default_policy = {
        let world = ctx.world();
        PolicyView::new(&world, world.default_policy())
    };
    Json(HostView {
        default_policy,
        id: ctx.world().root(),
        name: crate::registry::ROOT_NAME,
        version: env!("CARGO_PKG_VERSION"),
        state_dir: ctx.dirs.state.clone(),
        run_dir: ctx.dirs.run.clone(),
        endpoint: ctx.dirs.host_socket(),
        uptime_seconds: ctx.started.elapsed().as_secs(),
    })
}

/// A service as the API shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    id: ServiceId,
    name: String,
    enabled: bool,
    vsock_port: Option<u32>,
    listeners: usize,
    created_at: i64,
    policy: Option<PolicyView>,
    effective_policy: PolicyView,
}

fn service_view(ctx: &Ctx, s: &ServiceRecord) -> ServiceView {
    let world = ctx.world();
    let listeners = world
        .listeners()
        .filter(|l| l.addr.service_id == s.id)
        .count();
    let policy = s.policy.as_ref().map(|p| PolicyView::new(&world, p));
    let effective_policy =
        PolicyView::new(&world, s.policy.as_ref().unwrap_or(world.default_policy()));
    drop(world);
    ServiceView {
        id: s.id,
        name: s.name.clone(),
        enabled: s.enabled,
        vsock_port: s.id.vsock_port(),
        listeners,
        created_at: s.created_at,
        policy,
        effective_policy,
    }
}

/// A partition named in a policy.
#[derive(Debug, Serialize)]
pub struct PartitionRef {
    id: VmId,
    name: String,
}

/// A policy as the API shows it: partitions with their names; `null` lists allow any.
#[derive(Debug, Serialize)]
pub struct PolicyView {
    connect: Option<Vec<PartitionRef>>,
    bind: Option<Vec<PartitionRef>>,
    wildcard_bind: bool,
}

impl PolicyView {
    fn new(world: &crate::state::World, p: &Policy) -> PolicyView {
        let list = |l: &Option<Vec<VmId>>| {
            l.as_ref().map(|ids| {
                ids.iter()
                    .map(|&id| PartitionRef {
                        id,
                        name: world.partition_label(id),
                    })
                    .collect()
            })
        };
        PolicyView {
            connect: list(&p.connect),
            bind: list(&p.bind),
            wildcard_bind: p.wildcard_bind,
        }
    }
}

fn find_service(ctx: &Ctx, key: &str) -> ApiResult<ServiceRecord> {
    ctx.world()
        .find_service(key)
        .cloned()
        .ok_or_else(|| ApiError::not_found("service", key))
}

async fn list_services(State(ctx): State<Arc<Ctx>>) -> Json<Vec<ServiceView>> {
    let mut services: Vec<ServiceRecord> = ctx.world().services().cloned().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Json(services.iter().map(|s| service_view(&ctx, s)).collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddService {
    name: String,
    id: Option<ServiceId>,
    port: Option<u32>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

async fn add_service(
    State(ctx): State<Arc<Ctx>>,
    body: Result<Json<AddService>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let Json(body) = body?;
    hvsock::addr::check_service_name(&body.name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
    let id = match (body.id, body.port) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either id or port, not both (a port stands for its vsock template GUID)",
            ));
        }
        (Some(id), None) => id,
        (None, Some(port)) => ServiceId::from_vsock_port(port),
        (None, None) => ServiceId::new_random(),
    };
    let (record, added) = write(&ctx, move |ctx| {
        let (record, added) = ctx.registry().add_service(id, &body.name, body.enabled)?;
        ctx.world().put_service(record.clone());
        Ok((record, added))
    })
    .await?;
    if added == Added::Created {
        tracing::info!(name = %record.name, id = %record.id, "service registered");
        attach::reconcile(&ctx);
    }
    let status = match added {
        Added::Created => StatusCode::CREATED,
        Added::Existing => StatusCode::OK,
    };
    Ok((status, Json(service_view(&ctx, &record))))
}

async fn show_service(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<ServiceView>> {
    let record = find_service(&ctx, &key)?;
    Ok(Json(service_view(&ctx, &record)))
}

async fn set_enabled(ctx: Arc<Ctx>, key: String, enabled: bool) -> ApiResult<Json<ServiceView>> {
    let record = find_service(&ctx, &key)?;
    let record = write(&ctx, move |ctx| {
        ctx.registry().set_service_enabled(record.id, enabled)?;
        let record = ServiceRecord { enabled, ..record };
        ctx.world().put_service(record.clone());
        Ok(record)
    })
    .await?;
    tracing::info!(name = %record.name, enabled, "service switched");
    attach::reconcile(&ctx);
    Ok(Json(service_view(&ctx, &record)))
}

async fn enable_service(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<ServiceView>> {
    set_enabled(ctx, key, true).await
}

async fn disable_service(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<ServiceView>> {
    set_enabled(ctx, key, false).await
}

async fn remove_service(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let record = find_service(&ctx, &key)?;
    write(&ctx, move |ctx| {
        ctx.registry().remove_service(record.id)?;
        ctx.world().remove_service(record.id);
        tracing::info!(name = %record.name, id = %record.id, "service removed");
        Ok(())
    })
    .await?;
    attach::reconcile(&ctx);
    Ok(StatusCode::NO_CONTENT)
}

/// A partition as the API shows it.
#[derive(Debug, Serialize)]
pub struct PartitionView {
    id: VmId,
    name: String,
    kind: PartitionKind,
    parent: Option<VmId>,
    parent_name: Option<String>,
    children: Vec<String>,
    endpoint: Option<PathBuf>,
    hybrid_vsock: Option<PathBuf>,
    guest_ports: Vec<u32>,
    sessions: usize,
    listeners: usize,
    created_at: i64,
}

fn partition_view(ctx: &Ctx, p: &PartitionRecord) -> PartitionView {
    let world = ctx.world();
    let mut children: Vec<String> = world
        .topology()
        .children(p.id)
        .map(|c| world.partition_label(c))
        .collect();
    children.sort();
    let listeners = world.listeners().filter(|l| l.partition == p.id).count();
    let parent_name = p.parent.map(|id| world.partition_label(id));
    drop(world);
    PartitionView {
        id: p.id,
        name: p.name.clone(),
        kind: p.kind,
        parent: p.parent,
        parent_name,
        children,
        endpoint: ctx.endpoints.path(p.id),
        hybrid_vsock: p.hybrid_vsock.clone(),
        guest_ports: ctx.attachments.ports(p.id),
        sessions: ctx.endpoints.sessions(p.id),
        listeners,
        created_at: p.created_at,
    }
}

fn find_partition(ctx: &Ctx, key: &str) -> ApiResult<PartitionRecord> {
    ctx.world()
        .find_partition(key)
        .cloned()
        .ok_or_else(|| ApiError::not_found("partition", key))
}

async fn list_partitions(State(ctx): State<Arc<Ctx>>) -> Json<Vec<PartitionView>> {
    let mut parts: Vec<PartitionRecord> = ctx.world().partitions().cloned().collect();
    parts.sort_by(|a, b| {
        (a.kind != PartitionKind::Root, &a.name).cmp(&(b.kind != PartitionKind::Root, &b.name))
    });
    Json(parts.iter().map(|p| partition_view(&ctx, p)).collect())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddPartition {
    name: String,
    id: Option<VmId>,
    parent: Option<String>,
    /// For a VM: its VMM's hybrid-vsock socket.
    hybrid_vsock: Option<PathBuf>,
}

async fn add_partition(
    State(ctx): State<Arc<Ctx>>,
    body: Result<Json<AddPartition>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<PartitionView>)> {
    let Json(body) = body?;
    hvsock::addr::check_partition_name(&body.name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
    let id = body.id.unwrap_or_else(|| VmId(hvsock::Guid::new_random()));
    if id.is_well_known() {
        return Err(ApiError::bad_request(format!(
            "{id} is a well-known VmId ({}) and cannot name a partition",
            id.keyword().unwrap_or_default()
        )));
    }
    let parent = match &body.parent {
        Some(key) => find_partition(&ctx, key)?,
        None => {
            let root = ctx.world().root();
            find_partition(&ctx, &root.to_string())?
        }
    };
    if parent.kind == PartitionKind::Vm {
        return Err(ApiError::bad_request(format!(
            "partition {} is a VM and cannot have child partitions here: a guest that hosts its own sandboxes runs its own hvsockd",
            parent.name
        )));
    }
    let parent = parent.id;
    let kind = match &body.hybrid_vsock {
        Some(path) => {
            attach::check_path(path).map_err(|message| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_hybrid_vsock", message)
            })?;
            PartitionKind::Vm
        }
        None => PartitionKind::Sandbox,
    };
    let (record, added) = write(&ctx, move |ctx| {
        if let Some(path) = &body.hybrid_vsock {
            let taken = ctx
                .world()
                .partitions()
                .find(|p| p.id != id && p.hybrid_vsock.as_deref() == Some(path.as_path()))
                .map(|p| p.name.clone());
            if let Some(other) = taken {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "the hybrid-vsock socket {} is already attached to VM {other}",
                        path.display()
                    ),
                ));
            }
        }
        let (record, added) = ctx.registry().add_partition(
            id,
            &body.name,
            parent,
            kind,
            body.hybrid_vsock.as_deref(),
        )?;
        ctx.world().put_partition(record.clone());
        Ok((record, added))
    })
    .await?;
    if kind == PartitionKind::Vm {
        if added == Added::Created {
            tracing::info!(
                name = %record.name, id = %record.id,
                hybrid_vsock = %record.hybrid_vsock.as_deref().unwrap_or(Path::new("")).display(),
                "VM attached"
            );
            attach::reconcile(&ctx);
        }
    } else if added == Added::Created || ctx.endpoints.path(record.id).is_none() {
        let path = ctx.dirs.partition_socket(record.id);
        if let Err(e) = endpoint::open(&ctx, record.id, &path, PARTITION_SOCKET_MODE) {
            tracing::error!("opening the endpoint of partition {}: {e}", record.name);
            return Err(ApiError::internal(format!(
                "the partition was added, but its endpoint could not be opened: {e}"
            )));
        }
        tracing::info!(name = %record.name, id = %record.id, endpoint = %path.display(), "partition added");
    }
    let status = match added {
        Added::Created => StatusCode::CREATED,
        Added::Existing => StatusCode::OK,
    };
    Ok((status, Json(partition_view(&ctx, &record))))
}

async fn show_partition(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<PartitionView>> {
    let record = find_partition(&ctx, &key)?;
    Ok(Json(partition_view(&ctx, &record)))
}

async fn remove_partition(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<StatusCode> {
    let record = find_partition(&ctx, &key)?;
    let listeners = write(&ctx, move |ctx| {
        ctx.registry().remove_partition(record.id)?;
        Ok(ctx.world().remove_partition(record.id))
    })
    .await?;
    for listener in listeners {
        listener.close();
    }
    endpoint::close(&ctx, record.id);
    attach::reconcile(&ctx);
    tracing::info!(name = %record.name, id = %record.id, "partition removed");
    Ok(StatusCode::NO_CONTENT)
}

/// A live listener as the API shows it.
#[derive(Debug, Serialize)]
pub struct ListenerView {
    id: u64,
    partition: VmId,
    partition_name: String,
    vm: VmId,
    vm_keyword: Option<&'static str>,
    service: ServiceId,
    service_name: Option<String>,
    backlog: u32,
    unaccepted: u32,
    waiting: usize,
    accepted: u64,
    pid: Option<u32>,
}

async fn list_listeners(State(ctx): State<Arc<Ctx>>) -> Json<Vec<ListenerView>> {
    let world = ctx.world();
    let mut views: Vec<ListenerView> = world
        .listeners()
        .map(|l| {
            let (unaccepted, waiting) = l.pending();
            ListenerView {
                id: l.id,
                partition: l.partition,
                partition_name: world.partition_label(l.partition),
                vm: l.addr.vm_id,
                vm_keyword: l.addr.vm_id.keyword(),
                service: l.addr.service_id,
                service_name: world.service(l.addr.service_id).map(|s| s.name.clone()),
                backlog: l.backlog,
                unaccepted,
                waiting,
                accepted: l.accepted(),
                pid: l.pid,
            }
        })
        .collect();
    views.sort_by_key(|v| v.id);
    Json(views)
}

/// A guest port hvsockd listens on for a VM (`PATH_<port>`).
#[derive(Debug, Serialize)]
pub struct GuestPortView {
    port: u32,
    path: PathBuf,
    service: ServiceId,
    service_name: Option<String>,
}

/// A VM attachment as the API shows it.
#[derive(Debug, Serialize)]
pub struct AttachmentView {
    partition: VmId,
    name: String,
    parent: Option<VmId>,
    hybrid_vsock: PathBuf,
    guest_ports: Vec<GuestPortView>,
}

async fn list_attachments(State(ctx): State<Arc<Ctx>>) -> Json<Vec<AttachmentView>> {
    let vms: Vec<PartitionRecord> = ctx
        .world()
        .partitions()
        .filter(|p| p.kind == PartitionKind::Vm)
        .cloned()
        .collect();
    let mut views: Vec<AttachmentView> = vms
        .into_iter()
        .filter_map(|p| {
            let path = p.hybrid_vsock?;
            let guest_ports = ctx
                .attachments
                .ports(p.id)
                .into_iter()
                .map(|port| {
                    let service = ServiceId::from_vsock_port(port);
                    GuestPortView {
                        port,
                        path: attach::port_path(&path, port),
                        service,
                        service_name: ctx.world().service(service).map(|s| s.name.clone()),
                    }
                })
                .collect();
            Some(AttachmentView {
                partition: p.id,
                name: p.name,
                parent: p.parent,
                hybrid_vsock: path,
                guest_ports,
            })
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Json(views)
}

async fn stats(State(ctx): State<Arc<Ctx>>) -> Json<crate::metrics::Stats> {
    let world = ctx.world();
    Json(ctx.metrics.stats(&world))
}

async fn metrics(State(ctx): State<Arc<Ctx>>) -> impl IntoResponse {
    let text = {
        let world = ctx.world();
        ctx.metrics.render(&world)
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// A member that may be absent (`None`), `null` (`Some(None)`) or a value, as JSON merge
/// patch tells them apart.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchService {
    name: Option<String>,
    enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    policy: Option<Option<PatchPolicy>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchPolicy {
    #[serde(default, deserialize_with = "nullable")]
    connect: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    bind: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "nullable")]
    wildcard_bind: Option<Option<bool>>,
}

/// Partitions by name or id, as ids; the first that is not in the registry is an error that
/// names the rule.
fn resolve_partitions(ctx: &Ctx, rule: &str, keys: &[String]) -> ApiResult<Vec<VmId>> {
    let world = ctx.world();
    let mut ids = Vec::with_capacity(keys.len());
    for key in keys {
        let id = world.find_partition(key).map(|p| p.id).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_partition",
                format!("policy {rule}: no partition {key:?} in the registry"),
            )
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// `current` with `patch` merged in (RFC 7396). A service without a policy of its own starts
/// from the default policy, the one that applied to it until now.
fn merge_policy(ctx: &Ctx, current: Option<&Policy>, patch: PatchPolicy) -> ApiResult<Policy> {
    let mut policy = match current {
        Some(p) => p.clone(),
        None => ctx.world().default_policy().clone(),
    };
    if let Some(connect) = patch.connect {
        policy.connect = connect
            .map(|keys| resolve_partitions(ctx, "connect", &keys))
            .transpose()?;
    }
    if let Some(bind) = patch.bind {
        policy.bind = bind
            .map(|keys| resolve_partitions(ctx, "bind", &keys))
            .transpose()?;
    }
    if let Some(wildcard) = patch.wildcard_bind {
        policy.wildcard_bind = wildcard.unwrap_or(true);
    }
    Ok(policy)
}

async fn patch_service(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
    body: Result<Json<PatchService>, JsonRejection>,
) -> ApiResult<Json<ServiceView>> {
    let Json(body) = body?;
    let record = find_service(&ctx, &key)?;
    if let Some(name) = &body.name {
        hvsock::addr::check_service_name(name)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
    }
    let policy = match body.policy {
        None => None,
        Some(None) => Some(None),
        Some(Some(patch)) => Some(Some(merge_policy(&ctx, record.policy.as_ref(), patch)?)),
    };
    let (name, enabled) = (body.name, body.enabled);
    let before = record.clone();
    let record = write(&ctx, move |ctx| {
        let record = ctx.registry().update_service(
            record.id,
            name.as_deref(),
            enabled,
            policy.as_ref().map(Option::as_ref),
        )?;
        ctx.world().put_service(record.clone());
        Ok(record)
    })
    .await?;
    if record != before {
        tracing::info!(
            id = %record.id, name = %record.name, was = %before.name, enabled = record.enabled,
            policy = ?record.policy, "service changed"
        );
        attach::reconcile(&ctx);
    }
    Ok(Json(service_view(&ctx, &record)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchPartition {
    name: Option<String>,
}

async fn patch_partition(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
    body: Result<Json<PatchPartition>, JsonRejection>,
) -> ApiResult<Json<PartitionView>> {
    let Json(body) = body?;
    let record = find_partition(&ctx, &key)?;
    let Some(name) = body.name else {
        return Ok(Json(partition_view(&ctx, &record)));
    };
    if name == record.name {
        return Ok(Json(partition_view(&ctx, &record)));
    }
    hvsock::addr::check_partition_name(&name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
    let old = record.name.clone();
    let record = write(&ctx, move |ctx| {
        ctx.registry().rename_partition(record.id, &name)?;
        let record = PartitionRecord { name, ..record };
        ctx.world().put_partition(record.clone());
        Ok(record)
    })
    .await?;
    tracing::info!(id = %record.id, name = %record.name, was = %old, "partition renamed");
    Ok(Json(partition_view(&ctx, &record)))
}

async fn partition_children(
    State(ctx): State<Arc<Ctx>>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<Vec<PartitionView>>> {
    let parent = find_partition(&ctx, &key)?;
    let mut children: Vec<PartitionRecord> = {
        let world = ctx.world();
        world
            .topology()
            .children(parent.id)
            .filter_map(|id| world.partition(id).cloned())
            .collect()
    };
    children.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(
        children.iter().map(|p| partition_view(&ctx, p)).collect(),
    ))
}

async fn export_registry(State(ctx): State<Arc<Ctx>>) -> ApiResult<Json<Export>> {
    let doc = write(&ctx, |ctx| Ok(ctx.registry().export()?)).await?;
    Ok(Json(doc))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportParams {
    #[serde(default = "merge")]
    mode: ImportMode,
    #[serde(default)]
    dry_run: bool,
}

fn merge() -> ImportMode {
    ImportMode::Merge
}

async fn import_registry(
    State(ctx): State<Arc<Ctx>>,
    params: Result<Query<ImportParams>, QueryRejection>,
    body: Result<Json<Export>, JsonRejection>,
) -> ApiResult<Json<ImportReport>> {
    let Query(params) = params?;
    let Json(doc) = body?;
    let (report, old_root, closed) = write(&ctx, move |ctx| {
        let mut registry = ctx.registry();
        let old_root = registry.root();
        let report = registry.import(&doc, params.mode, params.dry_run)?;
        let closed = if report.changed() && !report.dry_run {
            ctx.world().reload(&registry)?
        } else {
            Vec::new()
        };
        Ok((report, old_root, closed))
    })
    .await?;
    for listener in closed {
        listener.close();
    }
    if report.changed() && !report.dry_run {
        attach::reconcile(&ctx);
        sync_endpoints(&ctx, old_root)?;
        for change in &report.changes {
            tracing::info!(mode = ?report.mode, "import: {change}");
        }
    }
    Ok(Json(report))
}

/// Opens the endpoints of sandbox partitions that have none and closes those of partitions
/// that are gone; serves `host.sock` under the root's new id if it changed (its clients are
/// dropped; the socket and its file, perhaps the service manager's, stay).
fn sync_endpoints(ctx: &Arc<Ctx>, old_root: VmId) -> ApiResult<()> {
    let (root, sandboxes): (VmId, Vec<VmId>) = {
        let world = ctx.world();
        let sandboxes = world
            .partitions()
            .filter(|p| p.kind == PartitionKind::Sandbox)
            .map(|p| p.id)
            .collect();
        (world.root(), sandboxes)
    };
    for id in ctx.endpoints.open_partitions() {
        if id != root && id != old_root && !sandboxes.contains(&id) {
            endpoint::close(ctx, id);
        }
    }
    let mut failed = Vec::new();
    if root != old_root && !endpoint::rekey(ctx, old_root, root) {
        failed.push("host: hvsockd has no endpoint for the root".to_owned());
    }
    for id in sandboxes {
        if ctx.endpoints.path(id).is_none() {
            let path = ctx.dirs.partition_socket(id);
            if let Err(e) = endpoint::open(ctx, id, &path, PARTITION_SOCKET_MODE) {
                failed.push(format!("{}: {e}", ctx.label(id)));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        tracing::error!("after an import, endpoints could not be opened: {failed:?}");
        Err(ApiError::internal(format!(
            "the registry was imported, but these endpoints could not be opened: {}",
            failed.join("; ")
        )))
    }
}

async fn openapi() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use std::collections::BTreeSet;
    use tower::ServiceExt as _;

    fn document() -> serde_json::Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    /// `(method, path)` of every operation in the document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = document();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in ["get", "post", "put", "patch", "delete"] {
                if item.get(method).is_some() {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_document_and_the_routes_name_the_same_operations() {
        let routes: BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|&(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        assert_eq!(routes.len(), ROUTES.len(), "a route is declared twice");
        let documented = documented();
        let missing: Vec<_> = routes.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(
            missing.is_empty(),
            "routes not in openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "openapi.json operations with no route: {extra:?}"
        );
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let doc = document();
        fn walk(v: &serde_json::Value, doc: &serde_json::Value, seen: &mut usize) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                        let pointer = r.strip_prefix('#').expect("local reference");
                        assert!(doc.pointer(pointer).is_some(), "dangling {r}");
                        *seen += 1;
                    }
                    map.values().for_each(|v| walk(v, doc, seen));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, doc, seen)),
                _ => {}
            }
        }
        let mut seen = 0;
        walk(&doc, &doc, &mut seen);
        assert!(seen > 20, "{seen} references");
        // Every operation documents its success and, when it has a body, its body errors.
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("item") {
                if method == "parameters" {
                    continue;
                }
                let responses = op["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|k| k.starts_with('2')),
                    "{method} {path} documents no success"
                );
                if op.get("requestBody").is_some() {
                    for status in ["400", "413", "415", "422"] {
                        assert!(
                            responses.contains_key(status),
                            "{method} {path} lacks {status}"
                        );
                    }
                }
                if path.contains("{key}") {
                    assert!(responses.contains_key("404"), "{method} {path} lacks 404");
                }
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_router_serves_the_document_and_answers_every_documented_route() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let config = crate::Config::new(hvsock::dirs::Dirs::under(tmp.path()));
        let server = crate::Server::bind(config).await.expect("bind");
        let app = router(server.ctx().clone());
        let call = |method: &str, path: &str| {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .expect("request");
            app.clone().oneshot(request)
        };
        let response = call("GET", "/v1/openapi.json").await.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(
            bytes,
            OPENAPI.as_bytes(),
            "served == crates/hvsockd/openapi.json"
        );

        for (method, path) in documented() {
            let path = path.replace("{key}", "host");
            let response = call(&method.to_uppercase(), &path).await.expect("answer");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&body);
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && !text.contains("\"no_route\""),
                "{method} {path}: {status} {text}"
            );
        }

        // axum's own errors come out as the API's JSON errors.
        let response = call("PUT", "/v1/services").await.expect("answer");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(response.headers().contains_key(header::ALLOW));
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["error"]["code"], "method_not_allowed");
        let response = call("POST", "/v1/registry?mode=sideways")
            .await
            .expect("answer");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["error"]["code"], "invalid_request", "{json}");
        let response = call("GET", "/v1/services/%FF").await.expect("answer");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["error"]["code"], "invalid_request", "{json}");
        server.ctx().shutdown.cancel();
    }
}
