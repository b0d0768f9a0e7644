//! The OpenAPI document's *schemas* against the `hvsock-api` types, both ways:
//!
//! - **answers**: a server with one of everything (services with and without a port and a
//!   policy, a sandbox, a VM with guest ports, a listener, counters, an error) answers every
//!   documented `GET` and a `POST`; each body validates against the schema of its documented
//!   success (types, `nullable`, `required`, `enum`, and no member the schema does not name),
//!   and every member of every schema reached shows up in some answer, non-null where it may
//!   be: so the schemas name exactly what the types serialise;
//! - **requests**: a body built from each request schema (every member given) deserialises
//!   into its type (whose `deny_unknown_fields` refuses any member the type lacks), leaving out
//!   a `required` member fails, and a fully populated value of the type serialises to members
//!   the schema names.
//!
//! This takes the place of deriving JSON Schema from the types (`schemars`): the document stays
//! hand-written, with its prose and examples, and the test checks that it describes the
//! types' serde form, which is what clients see.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hvsock::{ServiceId, SockAddrHv, VmId};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::*;
use crate::testing::Keep;

fn document() -> Value {
    serde_json::from_str(OPENAPI).unwrap()
}

/// Checks JSON values against the document's schemas and remembers which members it saw.
struct Checker {
    doc: Value,
    /// `(schema, member)` → seen with a non-null value.
    seen: BTreeMap<(String, String), bool>,
    errors: Vec<String>,
}

impl Checker {
    fn resolve<'a>(&'a self, schema: &'a Value) -> (Option<String>, &'a Value) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap().to_owned();
            let target = self.doc.pointer(r.trim_start_matches('#')).unwrap();
            return (Some(name), target);
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            if all.len() == 1 {
                return self.resolve(&all[0]);
            }
        }
        (None, schema)
    }

    fn check(&mut self, at: &str, value: &Value, schema: &Value) {
        let nullable = schema.get("nullable") == Some(&json!(true));
        let (name, schema) = self.resolve(schema);
        let nullable = nullable || schema.get("nullable") == Some(&json!(true));
        let schema = schema.clone();
        if value.is_null() {
            if !nullable {
                self.errors.push(format!("{at}: null, but not nullable"));
            }
            return;
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let ok = match (ty, value) {
            (None, _) => true,
            (Some("string"), Value::String(_)) => true,
            (Some("boolean"), Value::Bool(_)) => true,
            (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Some("number"), Value::Number(_)) => true,
            (Some("array"), Value::Array(_)) => true,
            (Some("object"), Value::Object(_)) => true,
            _ => false,
        };
        if !ok {
            self.errors
                .push(format!("{at}: {value} is not of type {ty:?}"));
            return;
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            if !values.contains(value) {
                self.errors
                    .push(format!("{at}: {value} is not one of {values:?}"));
            }
        }
        match value {
            Value::Array(items) => {
                if let Some(item) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        self.check(&format!("{at}[{i}]"), v, item);
                    }
                }
            }
            Value::Object(map) => {
                let label = name.unwrap_or_else(|| at.to_owned());
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    for key in props.keys() {
                        self.seen
                            .entry((label.clone(), key.clone()))
                            .or_insert(false);
                    }
                    for (key, v) in map {
                        match props.get(key) {
                            Some(s) => {
                                if !v.is_null() {
                                    self.seen.insert((label.clone(), key.clone()), true);
                                }
                                self.check(&format!("{at}.{key}"), v, s);
                            }
                            None => self
                                .errors
                                .push(format!("{at}: member {key:?} is not in schema {label}")),
                        }
                    }
                    for req in schema
                        .get("required")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        let req = req.as_str().unwrap();
                        if !map.contains_key(req) {
                            self.errors
                                .push(format!("{at}: required {req:?} is missing"));
                        }
                    }
                } else if let Some(extra) = schema.get("additionalProperties") {
                    if extra.is_object() {
                        for (key, v) in map {
                            self.check(&format!("{at}.{key}"), v, extra);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

async fn call(app: &Router, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    let body = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "current_thread")]
async fn every_answer_validates_against_its_schema_and_every_member_shows_up() {
    let tmp = tempfile::tempdir().unwrap();
    let config = crate::Config::new(hvsock::dirs::Dirs::under(tmp.path()));
    let server = crate::Server::bind(config).await.unwrap();
    let app = router(server.api().clone());
    let vm_dir = tmp.path().join("vm");
    std::fs::create_dir(&vm_dir).unwrap();
    let vm_path = vm_dir.join("fc.vsock");
    for (path, body) in [
        ("/v1/partitions", json!({"name": "web"})),
        (
            "/v1/partitions",
            json!({"name": "fc", "hybrid_vsock": vm_path}),
        ),
        ("/v1/services", json!({"name": "echo", "port": 2761})),
        ("/v1/services", json!({"name": "plain"})),
    ] {
        let (status, answer) = call(&app, "POST", path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let (status, answer) = call(
        &app,
        "PATCH",
        "/v1/services/echo",
        Some(json!({"policy": {"connect": ["web", "fc", "host"], "bind": ["host"]}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // A listener the VM reaches (a guest port opens), and counters.
    let api = server.api().clone();
    let root = api.world.lock().root();
    let echo = ServiceId::from_vsock_port(2761);
    api.world
        .lock()
        .bind(
            root,
            SockAddrHv::new(VmId::ZERO, echo),
            4,
            Some(1),
            std::sync::Arc::new(Keep::default()),
        )
        .unwrap();
    api.metrics
        .established(root, Some(echo), std::time::Duration::from_millis(1));
    api.metrics.refused(root, Some(echo), "nothing_listens");
    api.metrics.bind_refused(root, Some(echo), "policy_bind");
    api.metrics.client_error(root, "garbage");
    server
        .api()
        .control
        .import(
            crate::registry::Export {
                version: crate::registry::EXPORT_VERSION,
                root,
                services: Vec::new(),
                partitions: Vec::new(),
            },
            crate::registry::ImportMode::Merge,
            true,
        )
        .await
        .unwrap();
    // Key-value pairs in both pools (the guest's as an agent connection would fill it).
    for part in ["web", "fc"] {
        let (status, answer) = call(
            &app,
            "PUT",
            &format!("/v1/partitions/{part}/kvp/k"),
            Some(json!({"value": "v"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let web = api.control.partition("web").unwrap().id;
    let feed = api.control.kvp().connect_guest(web);
    for msg in hvsock_agent::kvp::snapshot(&BTreeMap::from([("gk".into(), "gv".into())])) {
        feed.apply(msg).unwrap();
    }
    // A guest agent heard from, with a time report (as the heartbeat and time services
    // would record them).
    api.guests.connect(web, 1);
    api.guests
        .heartbeat(
            web,
            1,
            &hvsock_agent::wire::Frame::json(
                hvsock_agent::heartbeat::FACTS,
                &hvsock_agent::heartbeat::Facts {
                    agent: "0.1.0".into(),
                    os: "Debian GNU/Linux 12".into(),
                    kernel: "6.1.0".into(),
                    hostname: "web".into(),
                },
            ),
        )
        .unwrap();
    api.guests.time_report(
        web,
        &hvsock_agent::time::Report {
            offset_ns: 1_500,
            delay_ns: 80_000,
            stepped: false,
        },
    );
    // Wait for the guest port to open.
    let fc = api.control.partition("fc").unwrap().id;
    for _ in 0..100 {
        if !api.guest_ports.ports(fc).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let doc = document();
    let mut checker = Checker {
        doc: doc.clone(),
        seen: BTreeMap::new(),
        errors: Vec::new(),
    };
    let schema_of = |method: &str, path: &str, status: &str| {
        doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
            .clone()
    };
    for (path, item) in doc["paths"].as_object().unwrap() {
        if item.get("get").is_none() || path.ends_with("openapi.json") || path == "/metrics" {
            continue;
        }
        for key in ["host", "web", "fc", "echo", "plain"] {
            if !path.contains("{key}") && key != "host" {
                continue;
            }
            // The host has no key-value pools (400 root_partition).
            if path.contains("/kvp") && key == "host" {
                continue;
            }
            let is_service = path.starts_with("/v1/services/");
            if path.contains("{key}") && is_service != matches!(key, "echo" | "plain") {
                continue;
            }
            let url = path.replace("{key}", key).replace("{name}", "k");
            let (status, answer) = call(&app, "GET", &url, None).await;
            assert_eq!(status, StatusCode::OK, "GET {url}: {answer}");
            checker.check(
                &format!("GET {url}"),
                &answer,
                &schema_of("get", path, "200"),
            );
        }
    }
    // The guest pool's pair, a PUT's answer.
    let (status, answer) = call(&app, "GET", "/v1/partitions/web/kvp/gk?pool=guest", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["connected"], json!(true), "{answer}");
    checker.check(
        "GET guest pair",
        &answer,
        &schema_of("get", "/v1/partitions/{key}/kvp/{name}", "200"),
    );
    let (status, answer) = call(
        &app,
        "PUT",
        "/v1/partitions/web/kvp/k",
        Some(json!({"value": "w"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    checker.check(
        "PUT pair",
        &answer,
        &schema_of("put", "/v1/partitions/{key}/kvp/{name}", "200"),
    );
    drop(feed);
    // A POST answer, an import report and an error.
    let (_, answer) = call(
        &app,
        "POST",
        "/v1/services",
        Some(json!({"name": "echo", "port": 2761})),
    )
    .await;
    checker.check(
        "POST /v1/services",
        &answer,
        &schema_of("post", "/v1/services", "200"),
    );
    let (_, export) = call(&app, "GET", "/v1/registry", None).await;
    let (status, answer) = call(&app, "POST", "/v1/registry?dry_run=true", Some(export)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    checker.check(
        "POST /v1/registry",
        &answer,
        &schema_of("post", "/v1/registry", "200"),
    );
    let (status, answer) = call(&app, "POST", "/v1/registry", Some(json!({"version": 1, "root": root, "services": [{"id": echo, "name": "other"}], "partitions": []}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let error = json!({"$ref": "#/components/schemas/Error"});
    checker.check("an error", &answer, &error);

    assert!(checker.errors.is_empty(), "{:#?}", checker.errors);
    // Every member of every schema that answers reached: seen, and non-null at least once
    // (members that are null by nature in this setup are listed).
    let null_here: BTreeSet<(&str, &str)> = BTreeSet::from([
        ("Partition", "parent"),
        ("Partition", "parent_name"),
        ("ExportedService", "created_at"),
        ("ExportedPartition", "created_at"),
    ]);
    let missing: Vec<_> = checker
        .seen
        .iter()
        .filter(|&((schema, member), seen)| {
            !*seen && !null_here.contains(&(schema.as_str(), member.as_str()))
        })
        .map(|(k, _)| k)
        .collect();
    assert!(missing.is_empty(), "members no answer filled: {missing:?}");
    for schema in [
        "Host",
        "Service",
        "Partition",
        "Guest",
        "Policy",
        "PartitionRef",
        "Listener",
        "Attachment",
        "GuestPort",
        "Stats",
        "ConnectStats",
        "ListenerCount",
        "BindRefusals",
        "ImportReport",
        "Counts",
        "Error",
    ] {
        assert!(
            checker.seen.keys().any(|(s, _)| s == schema),
            "no answer was checked against {schema}"
        );
    }
    server.shutdown_token().cancel();
}

/// A value for `schema` with every member given.
fn sample(doc: &Value, schema: &Value) -> Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return sample(doc, doc.pointer(r.trim_start_matches('#')).unwrap());
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        return sample(doc, &all[0]);
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values[0].clone();
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") if schema.get("format") == Some(&json!("uuid")) => {
            json!("00000ac9-facb-11e6-bd58-64006a7986d3")
        }
        Some("string") => json!("a-name"),
        Some("integer") => json!(1),
        Some("boolean") => json!(false),
        Some("array") => json!([sample(doc, &schema["items"])]),
        _ => {
            let mut out = serde_json::Map::new();
            for (key, s) in schema["properties"].as_object().unwrap() {
                out.insert(key.clone(), sample(doc, s));
            }
            Value::Object(out)
        }
    }
}

fn request_schema_matches<T: DeserializeOwned + Serialize>(name: &str, full: T) {
    let doc = document();
    let schema = doc["components"]["schemas"][name].clone();
    let body = sample(&doc, &schema);
    serde_json::from_value::<T>(body.clone())
        .unwrap_or_else(|e| panic!("{name}: a body with every member of the schema: {e}"));
    for req in schema["required"].as_array().into_iter().flatten() {
        let mut partial = body.clone();
        partial
            .as_object_mut()
            .unwrap()
            .remove(req.as_str().unwrap());
        assert!(
            serde_json::from_value::<T>(partial).is_err(),
            "{name}: the schema requires {req}, the type does not"
        );
    }
    let written = serde_json::to_value(full).unwrap();
    let props = schema["properties"].as_object().unwrap();
    let keys: BTreeSet<&String> = written.as_object().unwrap().keys().collect();
    let documented: BTreeSet<&String> = props.keys().collect();
    assert_eq!(
        keys, documented,
        "{name}: the type's members and the schema's"
    );
}

#[test]
fn every_request_schema_matches_its_type() {
    use hvsock_api::{
        AccessPatch, NewPartition, NewService, PartitionPatch, PolicyPatch, ServicePatch,
    };
    request_schema_matches(
        "NewService",
        NewService {
            name: "x".into(),
            id: Some(ServiceId::from_vsock_port(1)),
            port: Some(1),
            enabled: true,
        },
    );
    request_schema_matches(
        "NewPartition",
        NewPartition {
            name: "x".into(),
            id: Some(VmId::LOOPBACK),
            parent: Some("host".into()),
            hybrid_vsock: Some("/x".into()),
        },
    );
    let policy = PolicyPatch {
        connect: Some(None),
        bind: Some(Some(vec!["a".into()])),
        wildcard_bind: Some(Some(true)),
    };
    request_schema_matches("PolicyPatch", policy.clone());
    request_schema_matches(
        "ServicePatch",
        ServicePatch {
            name: Some("x".into()),
            enabled: Some(true),
            policy: Some(Some(policy)),
            access: Some(Some(AccessPatch {
                users: vec!["root".into()],
                groups: vec!["0".into()],
            })),
        },
    );
    request_schema_matches("KvpValue", hvsock_api::KvpValue { value: "v".into() });
    request_schema_matches(
        "PartitionPatch",
        PartitionPatch {
            name: Some("x".into()),
        },
    );
}
