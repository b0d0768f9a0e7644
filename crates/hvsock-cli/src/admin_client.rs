//! A client of hvsockd's admin API: HTTP/1.1 + JSON on `DIR/admin.sock`.
//!
//! Each request opens its own connection (hyper's HTTP/1 client over a
//! `tokio::net::UnixStream`) on a current-thread tokio runtime that the client builds on first
//! use; a CLI makes a handful of requests, and a connection per request keeps a failed one from
//! spoiling the next. Every request is bounded by [`AdminClient::timeout`].
//!
//! Answers are JSON. A non-2xx answer carries `{"error": {"code", "message"}}`, which becomes
//! [`AdminError::Api`] and prints as the message. Failing to reach the socket is told apart:
//! no socket or a refused connection means hvsockd is not running at that directory (the
//! error says how to start it), `EACCES` means `admin.sock` is for its owner.
//!
//! The typed methods ([`AdminClient::service`], [`AdminClient::add_partition`], …) name the
//! routes once, so that new commands reuse them; each returns a [`Reply`] with both the typed
//! value and the JSON as it came (what `--json` prints).

use std::cell::OnceCell;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::{
    Host, ImportReport, Kvp, KvpPair, KvpPoolName, KvpValue, Listener, NewPartition, NewService,
    Partition, Service, Stats,
};

/// How long one request may take, connection included, when not set otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer the client reads; hvsockd's answers are far smaller.
const MAX_BODY: usize = 64 << 20;

/// Characters left as they are in a path segment: the unreserved ones but `.`, so that no
/// name can turn into `.` or `..`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Why a request to the admin API failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `admin.sock` does not exist or refuses connections.
    #[error("hvsockd is not running at {dir}: {socket} {state}; start it with `{start}`")]
    NotRunning {
        /// The runtime directory.
        dir: PathBuf,
        /// The admin socket.
        socket: PathBuf,
        /// `does not exist` or `refuses connections`.
        state: &'static str,
        /// The command that starts hvsockd there.
        start: String,
        /// The error of the connect.
        #[source]
        source: io::Error,
    },
    /// `admin.sock` exists but this user may not connect to it.
    #[error(
        "{socket} is for its owner (root): run this command as the user that runs hvsockd (e.g. with sudo)"
    )]
    Forbidden {
        /// The admin socket.
        socket: PathBuf,
        /// The error of the connect.
        #[source]
        source: io::Error,
    },
    /// Another error while connecting.
    #[error("connecting to hvsockd's admin API at {socket}: {source}")]
    Connect {
        /// The admin socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The HTTP exchange failed.
    #[error("talking to hvsockd's admin API at {socket}: {source}")]
    Http {
        /// The admin socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer in time.
    #[error("hvsockd's admin API at {socket} did not answer within {} s", timeout.as_secs_f64())]
    Timeout {
        /// The admin socket.
        socket: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// hvsockd answered with an error.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error code (`not_found`, `conflict`, …).
        code: String,
        /// What hvsockd says is wrong, and its details (an import's conflicts) one per line.
        message: String,
    },
    /// The answer is not what this CLI understands (a much older or newer hvsockd?).
    #[error(
        "hvsockd's answer to {what} is not what this hvsock understands ({detail}); are hvsock and hvsockd the same version?"
    )]
    BadReply {
        /// The request.
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Where hvsockd keeps its sockets is not known.
    #[error("cannot locate hvsockd's admin API: {0}")]
    Locate(#[source] io::Error),
    /// The runtime for the client could not start.
    #[error("starting the admin API client: {0}")]
    Runtime(#[source] io::Error),
}

impl AdminError {
    /// Whether hvsockd said that the item asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AdminError::Api { status: 404, code, .. } if code == "not_found")
    }

    /// Whether the API could not be reached at all (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            AdminError::NotRunning { .. }
                | AdminError::Forbidden { .. }
                | AdminError::Connect { .. }
                | AdminError::Locate(_)
                | AdminError::Runtime(_)
        )
    }
}

/// An answer: the typed value and the JSON it was read from.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    /// The typed value.
    pub value: T,
    /// The JSON as hvsockd sent it.
    pub json: Value,
}

/// A client of one hvsockd's admin API.
#[derive(Debug)]
pub struct AdminClient {
    socket: PathBuf,
    start: String,
    timeout: Duration,
    runtime: OnceCell<tokio::runtime::Runtime>,
}

/// One path segment, percent-encoded (names may hold spaces, `/`, `%`, …).
pub fn segment(key: &str) -> String {
    utf8_percent_encode(key, SEGMENT).to_string()
}

impl AdminClient {
    /// A client of the API at `socket`; `start` is the command that starts hvsockd there, for
    /// the error when it is not running.
    pub fn new(socket: impl Into<PathBuf>, start: impl Into<String>) -> AdminClient {
        AdminClient {
            socket: socket.into(),
            start: start.into(),
            timeout: DEFAULT_TIMEOUT,
            runtime: OnceCell::new(),
        }
    }

    /// The admin socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The time limit of one request.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the time limit of one request.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, AdminError> {
        if let Some(rt) = self.runtime.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Runtime)?;
        Ok(self.runtime.get_or_init(|| rt))
    }

    /// One request; the answer's JSON (`Value::Null` for an empty answer such as 204).
    pub fn call<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Value, AdminError> {
        let what = format!("{method} {path}");
        let body = match body {
            Some(body) => serde_json::to_vec(body).map_err(|e| AdminError::BadReply {
                what: what.clone(),
                detail: format!("the request could not be encoded: {e}"),
            })?,
            None => Vec::new(),
        };
        let rt = self.runtime()?;
        let (status, bytes) = rt.block_on(async {
            tokio::time::timeout(self.timeout, self.exchange(method, path, body))
                .await
                .map_err(|_| AdminError::Timeout {
                    socket: self.socket.clone(),
                    timeout: self.timeout,
                })?
        })?;
        let json = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                if status.is_success() {
                    AdminError::BadReply {
                        what: what.clone(),
                        detail: format!("not JSON: {e}"),
                    }
                } else {
                    AdminError::Api {
                        status: status.as_u16(),
                        code: format!("http_{}", status.as_u16()),
                        message: format!(
                            "hvsockd answered {status}: {}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(400)]).trim()
                        ),
                    }
                }
            })?
        };
        if status.is_success() {
            return Ok(json);
        }
        let field = |name: &str| {
            json.get("error")
                .and_then(|e| e.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let mut message = field("message").unwrap_or_else(|| format!("hvsockd answered {status}"));
        let details = json
            .get("error")
            .and_then(|e| e.get("details"))
            .and_then(Value::as_array);
        for detail in details.into_iter().flatten().filter_map(Value::as_str) {
            message.push_str("\n  - ");
            message.push_str(detail);
        }
        Err(AdminError::Api {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| format!("http_{}", status.as_u16())),
            message,
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let http = |e: Box<dyn std::error::Error + Send + Sync>| AdminError::Http {
            socket: self.socket.clone(),
            source: e,
        };
        #[cfg(unix)]
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        // admin.sock is a Unix socket: there is none to reach elsewhere.
        #[cfg(not(unix))]
        let stream: tokio::net::TcpStream = Err(self.connect_error(io::Error::new(
            io::ErrorKind::Unsupported,
            "hvsockd's admin API is a Unix socket, and hvsockd runs on Linux only",
        )))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.into()))?;
        // The connection is driven by its own task; it ends when `sender` is dropped.
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "hvsockd")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http(e.into()))?;
        let result = async {
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| http(e.into()))?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(http)?
                .to_bytes();
            Ok((status, bytes))
        }
        .await;
        drop(sender);
        driver.abort();
        result
    }

    fn connect_error(&self, e: io::Error) -> AdminError {
        let socket = self.socket.clone();
        let dir = socket
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| socket.clone());
        let not_running = |state, source| AdminError::NotRunning {
            dir,
            socket: socket.clone(),
            state,
            start: self.start.clone(),
            source,
        };
        match e.kind() {
            io::ErrorKind::NotFound => not_running("does not exist", e),
            io::ErrorKind::ConnectionRefused => not_running("refuses connections", e),
            io::ErrorKind::PermissionDenied => AdminError::Forbidden { socket, source: e },
            _ => AdminError::Connect { socket, source: e },
        }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.call::<()>(Method::GET, path, None)
    }

    /// `POST path` with `body` as JSON.
    pub fn post<B: Serialize>(&self, path: &str, body: Option<&B>) -> Result<Value, AdminError> {
        self.call(Method::POST, path, body)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<(), AdminError> {
        self.call::<()>(Method::DELETE, path, None).map(drop)
    }

    /// `PATCH path` with `body` as JSON.
    pub fn patch<B: Serialize>(&self, path: &str, body: &B) -> Result<Value, AdminError> {
        self.call(Method::PATCH, path, Some(body))
    }

    fn typed<T: DeserializeOwned>(&self, what: &str, json: Value) -> Result<Reply<T>, AdminError> {
        let value = T::deserialize(&json).map_err(|e| AdminError::BadReply {
            what: what.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Reply { value, json })
    }

    fn get_typed<T: DeserializeOwned>(&self, path: &str) -> Result<Reply<T>, AdminError> {
        let json = self.get(path)?;
        self.typed(&format!("GET {path}"), json)
    }

    /// The root partition and the daemon.
    pub fn host(&self) -> Result<Reply<Host>, AdminError> {
        self.get_typed("/v1/host")
    }

    /// Every service, by name.
    pub fn services(&self) -> Result<Reply<Vec<Service>>, AdminError> {
        self.get_typed("/v1/services")
    }

    /// One service, by GUID or name.
    pub fn service(&self, key: &str) -> Result<Reply<Service>, AdminError> {
        self.get_typed(&format!("/v1/services/{}", segment(key)))
    }

    /// Registers a service; the same name and id again is not an error.
    pub fn add_service(&self, new: &NewService) -> Result<Reply<Service>, AdminError> {
        let json = self.post("/v1/services", Some(new))?;
        self.typed("POST /v1/services", json)
    }

    /// Enables or disables a service.
    pub fn set_service_enabled(
        &self,
        key: &str,
        enabled: bool,
    ) -> Result<Reply<Service>, AdminError> {
        let verb = if enabled { "enable" } else { "disable" };
        let path = format!("/v1/services/{}/{verb}", segment(key));
        let json = self.post::<()>(&path, None)?;
        self.typed(&format!("POST {path}"), json)
    }

    /// Removes a service.
    pub fn remove_service(&self, key: &str) -> Result<(), AdminError> {
        self.delete(&format!("/v1/services/{}", segment(key)))
    }

    /// Every partition, the root first.
    pub fn partitions(&self) -> Result<Reply<Vec<Partition>>, AdminError> {
        self.get_typed("/v1/partitions")
    }

    /// One partition, by VmId or name (`host` is the root).
    pub fn partition(&self, key: &str) -> Result<Reply<Partition>, AdminError> {
        self.get_typed(&format!("/v1/partitions/{}", segment(key)))
    }

    /// Adds a sandbox partition; the same name and id again is not an error.
    pub fn add_partition(&self, new: &NewPartition) -> Result<Reply<Partition>, AdminError> {
        let json = self.post("/v1/partitions", Some(new))?;
        self.typed("POST /v1/partitions", json)
    }

    /// Removes a partition, its endpoint and its listeners.
    pub fn remove_partition(&self, key: &str) -> Result<(), AdminError> {
        self.delete(&format!("/v1/partitions/{}", segment(key)))
    }

    /// The counters.
    pub fn stats(&self) -> Result<Reply<Stats>, AdminError> {
        self.get_typed("/v1/stats")
    }

    /// Changes a service (`PATCH`, JSON merge patch: `name`, `enabled`, `policy`).
    pub fn patch_service(&self, key: &str, patch: &Value) -> Result<Reply<Service>, AdminError> {
        let path = format!("/v1/services/{}", segment(key));
        let json = self.patch(&path, patch)?;
        self.typed(&format!("PATCH {path}"), json)
    }

    /// Changes a partition (`PATCH`: `name`).
    pub fn patch_partition(
        &self,
        key: &str,
        patch: &Value,
    ) -> Result<Reply<Partition>, AdminError> {
        let path = format!("/v1/partitions/{}", segment(key));
        let json = self.patch(&path, patch)?;
        self.typed(&format!("PATCH {path}"), json)
    }

    /// The live listeners.
    pub fn listeners(&self) -> Result<Reply<Vec<Listener>>, AdminError> {
        self.get_typed("/v1/listeners")
    }

    /// The direct children of a partition.
    pub fn children(&self, key: &str) -> Result<Reply<Vec<Partition>>, AdminError> {
        self.get_typed(&format!("/v1/partitions/{}/children", segment(key)))
    }

    /// `PUT path` with `body` as JSON.
    pub fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<Value, AdminError> {
        self.call(Method::PUT, path, Some(body))
    }

    /// A partition's key-value pools (the host's and the guest's).
    pub fn kvp(&self, vm: &str) -> Result<Reply<Kvp>, AdminError> {
        self.get_typed(&format!("/v1/partitions/{}/kvp", segment(vm)))
    }

    /// One pair of a partition's `pool`.
    pub fn kvp_get(
        &self,
        vm: &str,
        key: &str,
        pool: KvpPoolName,
    ) -> Result<Reply<KvpPair>, AdminError> {
        self.get_typed(&format!(
            "/v1/partitions/{}/kvp/{}?pool={pool}",
            segment(vm),
            segment(key)
        ))
    }

    /// Sets a pair of a partition's host pool.
    pub fn kvp_set(&self, vm: &str, key: &str, value: &str) -> Result<Reply<KvpPair>, AdminError> {
        let path = format!("/v1/partitions/{}/kvp/{}", segment(vm), segment(key));
        let json = self.put(
            &path,
            &KvpValue {
                value: value.to_owned(),
            },
        )?;
        self.typed(&format!("PUT {path}"), json)
    }

    /// Deletes a pair of a partition's host pool.
    pub fn kvp_delete(&self, vm: &str, key: &str) -> Result<(), AdminError> {
        self.delete(&format!(
            "/v1/partitions/{}/kvp/{}",
            segment(vm),
            segment(key)
        ))
    }

    /// The registry as a document.
    pub fn export(&self) -> Result<Value, AdminError> {
        self.get("/v1/registry")
    }

    /// Imports a registry document; `replace` makes the registry equal to it, `dry_run`
    /// changes nothing.
    pub fn import(
        &self,
        doc: &Value,
        replace: bool,
        dry_run: bool,
    ) -> Result<Reply<ImportReport>, AdminError> {
        let mode = if replace { "replace" } else { "merge" };
        let path = format!("/v1/registry?mode={mode}&dry_run={dry_run}");
        let json = self.post(&path, Some(doc))?;
        self.typed(&format!("POST {path}"), json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_so_that_no_name_escapes_its_route() {
        assert_eq!(segment("echo"), "echo");
        assert_eq!(segment("my service"), "my%20service");
        assert_eq!(segment("a/b"), "a%2Fb");
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("x?y#z%"), "x%3Fy%23z%25");
        assert_eq!(segment("ü"), "%C3%BC");
        assert_eq!(
            segment("00000ac9-facb-11e6-bd58-64006a7986d3"),
            "00000ac9-facb-11e6-bd58-64006a7986d3"
        );
    }

    #[test]
    // hvsockd's admin API is a Unix socket.
    #[cfg(unix)]
    fn a_missing_socket_says_hvsockd_is_not_running_and_how_to_start_it() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let client = AdminClient::new(dir.join("admin.sock"), "hvsockd --dir /x");
        let err = client.get("/v1/host").expect_err("no socket");
        assert!(err.is_unreachable());
        let text = err.to_string();
        assert!(text.contains("hvsockd is not running at"), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(text.contains("`hvsockd --dir /x`"), "{text}");
    }

    #[test]
    // hvsockd's admin API is a Unix socket.
    #[cfg(unix)]
    fn a_stale_socket_refuses_and_says_so() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let path = dir.join("admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let client = AdminClient::new(&path, "hvsockd");
        let text = client.get("/v1/host").expect_err("stale").to_string();
        assert!(text.contains("refuses connections"), "{text}");
    }

    #[test]
    // hvsockd's admin API is a Unix socket.
    #[cfg(unix)]
    fn a_silent_server_times_out() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let path = dir.join("admin.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let mut client = AdminClient::new(&path, "hvsockd");
        client.set_timeout(Duration::from_millis(200));
        let err = client.get("/v1/host").expect_err("silent");
        assert!(matches!(err, AdminError::Timeout { .. }), "{err}");
    }
}
