use super::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
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
    let app = router(server.api().clone());
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
    server.shutdown_token().cancel();
}

#[tokio::test(flavor = "current_thread")]
async fn kvp_and_body_refusals_have_their_own_codes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = crate::Config::new(hvsock::dirs::Dirs::under(tmp.path()));
    let server = crate::Server::bind(config).await.expect("bind");
    let app = router(server.api().clone());
    let call = |method: &str, path: &str, body: Option<serde_json::Value>| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.expect("answer");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            (
                status,
                json["error"]["code"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    let value = |v: &str| Some(serde_json::json!({ "value": v }));
    assert_eq!(
        call(
            "POST",
            "/v1/partitions",
            Some(serde_json::json!({"name": "web"}))
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let big = "v".repeat(hvsock_agent::kvp::MAX_VALUE + 1);
    let array = |a: serde_json::Value| Some(a);
    for (method, path, body, status, code) in [
        // A body must be an object: serde reads a struct from an array by position, which
        // would make `[]` an empty patch and `["v"]` a value (schemathesis found the first).
        (
            "PATCH",
            "/v1/services/hvsock-kvp",
            array(serde_json::json!([])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            "PATCH",
            "/v1/partitions/web",
            array(serde_json::json!([])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/partitions",
            array(serde_json::json!(["web2"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/partitions/web/kvp/k",
            array(serde_json::json!(["v"])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            "PUT",
            "/v1/partitions/web/kvp/.hidden",
            value("v"),
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            "PUT",
            "/v1/partitions/web/kvp/a%20b",
            value("v"),
            StatusCode::BAD_REQUEST,
            "invalid_key",
        ),
        (
            "PUT",
            "/v1/partitions/web/kvp/k",
            value(&big),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            "PUT",
            "/v1/partitions/nope/kvp/k",
            value("v"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "PUT",
            "/v1/partitions/host/kvp/k",
            value("v"),
            StatusCode::BAD_REQUEST,
            "root_partition",
        ),
        (
            "PUT",
            "/v1/partitions/web/kvp/k",
            Some(serde_json::json!({"valeur": "v"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
        ),
        (
            "GET",
            "/v1/partitions/web/kvp/k",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "GET",
            "/v1/partitions/web/kvp/k?pool=elsewhere",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "DELETE",
            "/v1/partitions/web/kvp/k",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "PUT",
            "/v1/partitions/web/kvp/k",
            value("v"),
            StatusCode::CREATED,
            "",
        ),
        (
            "PUT",
            "/v1/partitions/web/kvp/k",
            value("w"),
            StatusCode::OK,
            "",
        ),
        (
            "GET",
            "/v1/partitions/web/kvp/k?pool=guest",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/partitions/web/kvp/k",
            None,
            StatusCode::NO_CONTENT,
            "",
        ),
    ] {
        assert_eq!(
            call(method, path, body).await,
            (status, code.to_owned()),
            "{method} {path}"
        );
    }
    server.shutdown_token().cancel();
}
