//! One function per route: parse the request (path, query, body as [`hvsock_api`] types) →
//! ask the [control layer](crate::control) → answer with a [view](super::views).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use hvsock_api::{
    Attachment, GuestKvp, Host, Kvp, KvpPair, KvpPoolName, KvpValue, Listener, NewPartition,
    NewService, Partition, PartitionPatch, PartitionRef, Service, ServicePatch, Stats,
};
use serde::Deserialize;
use serde_json::Value;

use super::http::{ApiResult, object};
use super::{Api, OPENAPI, views};
use crate::control::ControlError;
use crate::registry::{
    Added, Export, ImportMode, ImportReport, KvpSet, PartitionKind, PartitionRecord,
};

fn created(added: Added) -> StatusCode {
    match added {
        Added::Created => StatusCode::CREATED,
        Added::Existing => StatusCode::OK,
    }
}

pub async fn host(State(api): State<Api>) -> Json<Host> {
    Json(views::host(&api))
}

pub async fn list_services(State(api): State<Api>) -> Json<Vec<Service>> {
    let mut services: Vec<_> = api.world.lock().services().cloned().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Json(services.iter().map(|s| views::service(&api, s)).collect())
}

pub async fn add_service(
    State(api): State<Api>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Service>)> {
    let body: NewService = object(body)?;
    let (record, added) = api.control.add_service(body).await?;
    Ok((created(added), Json(views::service(&api, &record))))
}

pub async fn show_service(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<Service>> {
    let record = api.control.service(&key)?;
    Ok(Json(views::service(&api, &record)))
}

pub async fn patch_service(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Service>> {
    let body: ServicePatch = object(body)?;
    let record = api.control.patch_service(&key, body).await?;
    Ok(Json(views::service(&api, &record)))
}

pub async fn enable_service(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<Service>> {
    let record = api.control.set_service_enabled(&key, true).await?;
    Ok(Json(views::service(&api, &record)))
}

pub async fn disable_service(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<Service>> {
    let record = api.control.set_service_enabled(&key, false).await?;
    Ok(Json(views::service(&api, &record)))
}

pub async fn remove_service(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<StatusCode> {
    api.control.remove_service(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_partitions(State(api): State<Api>) -> Json<Vec<Partition>> {
    let mut parts: Vec<PartitionRecord> = api.world.lock().partitions().cloned().collect();
    parts.sort_by(|a, b| {
        (a.kind != PartitionKind::Root, &a.name).cmp(&(b.kind != PartitionKind::Root, &b.name))
    });
    Json(parts.iter().map(|p| views::partition(&api, p)).collect())
}

pub async fn add_partition(
    State(api): State<Api>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Partition>)> {
    let body: NewPartition = object(body)?;
    let (record, added) = api.control.add_partition(body).await?;
    Ok((created(added), Json(views::partition(&api, &record))))
}

pub async fn show_partition(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<Partition>> {
    let record = api.control.partition(&key)?;
    Ok(Json(views::partition(&api, &record)))
}

pub async fn patch_partition(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<Partition>> {
    let body: PartitionPatch = object(body)?;
    let record = api.control.rename_partition(&key, body.name).await?;
    Ok(Json(views::partition(&api, &record)))
}

pub async fn remove_partition(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<StatusCode> {
    api.control.remove_partition(&key).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn partition_children(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<Vec<Partition>>> {
    let parent = api.control.partition(&key)?;
    let mut children: Vec<PartitionRecord> = {
        let world = api.world.lock();
        world
            .topology()
            .children(parent.id)
            .filter_map(|id| world.partition(id).cloned())
            .collect()
    };
    children.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(
        children.iter().map(|p| views::partition(&api, p)).collect(),
    ))
}

fn partition_ref(p: &PartitionRecord) -> PartitionRef {
    PartitionRef {
        id: p.id,
        name: p.name.clone(),
    }
}

pub async fn show_kvp(
    State(api): State<Api>,
    UrlPath(key): UrlPath<String>,
) -> ApiResult<Json<Kvp>> {
    let (record, host) = api.control.kvp_host(&key)?;
    let guest = api.control.kvp().guest(record.id);
    Ok(Json(Kvp {
        partition: partition_ref(&record),
        host,
        guest: GuestKvp {
            connected: guest.connected,
            synced: guest.synced,
            updated_at: guest.updated_at,
            pairs: guest.pairs,
        },
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvpParams {
    #[serde(default = "host_pool")]
    pool: KvpPoolName,
}

fn host_pool() -> KvpPoolName {
    KvpPoolName::Host
}

pub async fn show_kvp_pair(
    State(api): State<Api>,
    UrlPath((key, name)): UrlPath<(String, String)>,
    params: Result<Query<KvpParams>, QueryRejection>,
) -> ApiResult<Json<KvpPair>> {
    let Query(params) = params?;
    let (record, value, connected) = match params.pool {
        KvpPoolName::Host => {
            let (record, pool) = api.control.kvp_host(&key)?;
            let value = pool.get(&name).cloned();
            (record, value, None)
        }
        KvpPoolName::Guest => {
            let (record, pool) = api.control.kvp_guest(&key)?;
            let value = pool.pairs.get(&name).cloned();
            (record, value, Some(pool.connected))
        }
    };
    let Some(value) = value else {
        return Err(ControlError::NoKey {
            key: name,
            pool: params.pool.as_str(),
            partition: record.name,
        }
        .into());
    };
    Ok(Json(KvpPair {
        partition: partition_ref(&record),
        pool: params.pool,
        key: name,
        value,
        connected,
    }))
}

pub async fn set_kvp_pair(
    State(api): State<Api>,
    UrlPath((key, name)): UrlPath<(String, String)>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<KvpPair>)> {
    let body: KvpValue = object(body)?;
    let (record, set) = api
        .control
        .kvp_set(&key, name.clone(), body.value.clone())
        .await?;
    let status = match set {
        KvpSet::Created => StatusCode::CREATED,
        KvpSet::Replaced => StatusCode::OK,
    };
    Ok((
        status,
        Json(KvpPair {
            partition: partition_ref(&record),
            pool: KvpPoolName::Host,
            key: name,
            value: body.value,
            connected: None,
        }),
    ))
}

pub async fn delete_kvp_pair(
    State(api): State<Api>,
    UrlPath((key, name)): UrlPath<(String, String)>,
) -> ApiResult<StatusCode> {
    api.control.kvp_delete(&key, name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_listeners(State(api): State<Api>) -> Json<Vec<Listener>> {
    Json(views::listeners(&api))
}

pub async fn list_attachments(State(api): State<Api>) -> Json<Vec<Attachment>> {
    Json(views::attachments(&api))
}

pub async fn export_registry(State(api): State<Api>) -> ApiResult<Json<Export>> {
    Ok(Json(api.control.export().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    #[serde(default = "merge")]
    mode: ImportMode,
    #[serde(default)]
    dry_run: bool,
}

fn merge() -> ImportMode {
    ImportMode::Merge
}

pub async fn import_registry(
    State(api): State<Api>,
    params: Result<Query<ImportParams>, QueryRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Json<ImportReport>> {
    let Query(params) = params?;
    let doc: Export = object(body)?;
    let report = api.control.import(doc, params.mode, params.dry_run).await?;
    Ok(Json(report))
}

pub async fn stats(State(api): State<Api>) -> Json<Stats> {
    let world = api.world.lock();
    Json(api.metrics.stats(&world))
}

pub async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let text = {
        let world = api.world.lock();
        let mut text = api.metrics.render(&world);
        text.push_str(&api.guests.render(&world));
        text
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

pub async fn openapi() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
}
