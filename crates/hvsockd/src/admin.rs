//! The admin API: HTTP/1.1 + JSON on `admin.sock` (mode 0600), versioned under `/v1/`.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /v1/host` | the root partition's id, the version, the directories |
//! | `GET /v1/services` | every service |
//! | `POST /v1/services` `{name, id?, port?, enabled?}` | registers; 201 if new, 200 if the same service was there |
//! | `GET /v1/services/{id-or-name}` | one service |
//! | `POST /v1/services/{id-or-name}/enable` and `/disable` | switches it |
//! | `DELETE /v1/services/{id-or-name}` | removes it |
//! | `GET /v1/partitions` | every partition |
//! | `POST /v1/partitions` `{name, id?, parent?, hybrid_vsock?}` | adds a sandbox partition and opens its endpoint; with `hybrid_vsock` (an absolute path), a VM attached through its VMM's hybrid-vsock socket instead (no endpoint) |
//! | `GET /v1/partitions/{id-or-name}` | one partition |
//! | `DELETE /v1/partitions/{id-or-name}` | removes it, its endpoint and its listeners |
//! | `GET /v1/listeners` | live listeners |
//! | `GET /v1/stats` | the counters as JSON |
//! | `GET /metrics` | the counters in Prometheus text |
//!
//! Errors are JSON: `{"error": {"code": "not_found", "message": "no service \"x\" in the registry"}}`
//! with a fitting HTTP status. Registry writes run on a blocking thread, one at a time, and
//! update the in-memory world in the same critical section, so that the world never runs
//! ahead of or behind the database. Every change that can alter what a VM's guest may reach
//! (services, partitions) is followed by [`attach::reconcile`], which opens or closes the VM's
//! `PATH_<port>` sockets.
//!
//! A partition's parent defaults to the root. VMs cannot have child partitions here (a guest
//! that hosts its own sandboxes runs its own hvsockd); a VM's partition view shows the guest
//! ports hvsockd listens on for it (`guest_ports`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hvsock::{ServiceId, VmId};
use serde::{Deserialize, Serialize};

use crate::attach;
use crate::endpoint;
use crate::registry::{Added, PartitionKind, PartitionRecord, RegistryError, ServiceRecord};
use crate::server::{Ctx, PARTITION_SOCKET_MODE};

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

/// The API's routes.
pub fn router(ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/v1/host", get(host))
        .route("/v1/services", get(list_services).post(add_service))
        .route(
            "/v1/services/{key}",
            get(show_service).delete(remove_service),
        )
        .route("/v1/services/{key}/enable", post(enable_service))
        .route("/v1/services/{key}/disable", post(disable_service))
        .route("/v1/partitions", get(list_partitions).post(add_partition))
        .route(
            "/v1/partitions/{key}",
            get(show_partition).delete(remove_partition),
        )
        .route("/v1/listeners", get(list_listeners))
        .route("/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(ctx)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        let (status, code) = match &e {
            RegistryError::NameTaken { .. } | RegistryError::IdTaken { .. } => {
                (StatusCode::CONFLICT, "conflict")
            }
            RegistryError::HasChildren { .. } => (StatusCode::CONFLICT, "has_children"),
            RegistryError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            RegistryError::Root => (StatusCode::BAD_REQUEST, "root_partition"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "registry"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError::new(e.status(), "invalid_json", e.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such API path; see /v1/services, /v1/partitions, /v1/listeners, /v1/stats, /metrics",
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
}

async fn host(State(ctx): State<Arc<Ctx>>) -> Json<HostView> {
    Json(HostView {
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
}

fn service_view(ctx: &Ctx, s: &ServiceRecord) -> ServiceView {
    let listeners = ctx
        .world()
        .listeners()
        .filter(|l| l.addr.service_id == s.id)
        .count();
    ServiceView {
        id: s.id,
        name: s.name.clone(),
        enabled: s.enabled,
        vsock_port: s.id.vsock_port(),
        listeners,
        created_at: s.created_at,
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
