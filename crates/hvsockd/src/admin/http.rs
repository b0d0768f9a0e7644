//! The HTTP plumbing of the admin API: one JSON error shape for every failure
//! (`{"error": {"code", "message", "details"?}}`), including the errors axum makes itself (a
//! wrong method, a bad query string, a body that is not JSON).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hvsock_api::{ErrorBody, ErrorDetail};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::control::ControlError;
use crate::registry::RegistryError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Vec<String>,
}

impl ApiError {
    /// An error with `status`, a stable `code` and a message for people.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }
}

/// A handler's result.
pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

/// Turns the error answers axum makes itself (a path segment that is not UTF-8, a bad query
/// string, …) into the API's JSON errors, so that every error has one shape.
pub async fn json_errors(response: Response) -> Response {
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

/// A known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method; the Allow header lists the ones it takes",
    )
}

/// An unknown path.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such API path; see /v1/openapi.json for the API (/v1/services, /v1/partitions, /v1/listeners, /v1/registry, /v1/stats, /metrics)",
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
            RegistryError::InvalidKvp(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            RegistryError::KvpFull { .. } => (StatusCode::CONFLICT, "kvp_full"),
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

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        let message = e.to_string();
        match e {
            ControlError::Registry(e) => e.into(),
            ControlError::Invalid { code, .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            ControlError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ControlError::NotFound { .. } | ControlError::NoKey { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
            }
            ControlError::Internal(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
        }
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

/// A request's JSON body as `T`, which must be a JSON object: serde would also read a struct from
/// an array, by position, which the API neither documents nor means (`[]` would be an empty
/// patch). Refused like any body of the wrong type: 422 `invalid_json`.
pub fn object<T: DeserializeOwned>(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<T, ApiError> {
    let Json(value) = body?;
    let invalid = |why: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            format!("Failed to deserialize the JSON body into the target type: {why}"),
        )
    };
    if !value.is_object() {
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        };
        return Err(invalid(format!(
            "the body must be a JSON object, not {kind}"
        )));
    }
    serde_json::from_value(value).map_err(|e| invalid(e.to_string()))
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::new(e.status(), "invalid_request", e.body_text())
    }
}
