//! Shared by the end-to-end tests: the real binaries, a real hvsockd on a temp dir, and a small
//! client for its admin API.
//!
//! [`bins`] builds `hvsockd` and `hvsock` once per test process with the same cargo, profile
//! and target directory as the tests (a no-op when they are fresh), so that `cargo test` alone
//! always tests the current code. [`Daemon`] starts hvsockd on a fresh temp dir and ends it
//! (by its pid) when dropped; the temp dir goes with it.

#![allow(dead_code, clippy::unwrap_used)]

pub mod c;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hvsock::dirs::Dirs;
use hvsock::{ServiceId, Transport, VmId};

/// Paths of the binaries under test.
#[derive(Debug)]
pub struct Bins {
    /// The provider.
    pub hvsockd: PathBuf,
    /// The client CLI.
    pub hvsock: PathBuf,
}

/// The tests' own build: `target/<profile>` (the parent of the test executable's `deps/`) and
/// the profile's name.
pub fn test_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (profile_dir, profile)
}

/// Runs `cargo build --quiet ARGS` at the repository root with the same cargo, profile and
/// target directory as the tests (a no-op when everything is fresh) and returns
/// `target/<profile>`; panics naming `what` if the build fails.
fn cargo_build(args: &[&str], what: &str) -> PathBuf {
    let (profile_dir, profile) = test_profile();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {what}: {e}"));
    assert!(status.success(), "cargo build of {what} failed");
    profile_dir
}

/// Builds the binaries (once per process) and returns their paths.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let profile_dir = cargo_build(
            &["--bins", "-p", "hvsockd", "-p", "hvsock-cli"],
            "hvsockd and hvsock",
        );
        Bins {
            hvsockd: profile_dir.join("hvsockd"),
            hvsock: profile_dir.join("hvsock"),
        }
    })
}

/// Builds the root package's examples (once per process) with the same cargo, profile and
/// target directory as the tests, as [`bins`] does for the binaries, and returns the
/// directory that holds them (`target/<profile>/examples`).
pub fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        cargo_build(&["--examples", "-p", "hvsock-e2e"], "the examples").join("examples")
    })
}

/// The path of the example binary `name`, built by [`examples_dir`].
pub fn example(name: &str) -> PathBuf {
    examples_dir().join(name)
}

/// Waits until `check` holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `timeout` for `child` to exit and returns its status, or `None` if it still runs
/// (the caller decides whether to kill it or fail).
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running hvsockd on its own temp dir.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Daemon {
    /// Starts hvsockd on a new temp dir.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts hvsockd on a new temp dir with extra arguments.
    pub fn start_with(args: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("hvsock-test-")
            .tempdir()
            .unwrap();
        let mut daemon = Daemon {
            child: None,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let _ = std::fs::remove_file(self.dirs().admin_socket());
        let child = Command::new(&bins().hvsockd)
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .env("RUST_LOG", "hvsockd=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let admin = self.dirs().admin_socket();
        let started = Instant::now();
        loop {
            if UnixStream::connect(&admin).is_ok() {
                break;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("hvsockd exited with {status} at start:\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "hvsockd did not start within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The directory hvsockd serves.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its paths.
    pub fn dirs(&self) -> Dirs {
        Dirs::under(self.dir.path())
    }

    /// The file hvsockd logs to.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("hvsockd.log")
    }

    /// What hvsockd has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The provider transport of the root partition.
    pub fn host(&self) -> Transport {
        Transport::provider(self.dirs().host_socket())
    }

    /// The provider transport of partition `vm`.
    pub fn partition(&self, vm: VmId) -> Transport {
        Transport::provider(self.dirs().partition_socket(vm))
    }

    /// hvsockd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether hvsockd is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills hvsockd with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops hvsockd with SIGTERM and returns whether it exited 0 within 10 s.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        match wait_exit(&mut child, Duration::from_secs(10)) {
            Some(status) => status.success(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                false
            }
        }
    }

    /// Starts hvsockd again on the same directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// One admin API request; returns the status and the body (JSON if it parses, else a
    /// JSON string).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (status, text) = http(&self.dirs().admin_socket(), method, path, body);
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, value)
    }

    /// The root partition's id.
    pub fn root_id(&self) -> VmId {
        let (status, body) = self.api("GET", "/v1/host", None);
        assert_eq!(status, 200, "{body}");
        VmId::parse(body["id"].as_str().unwrap()).unwrap()
    }

    /// Registers a service on a vsock port (enabled).
    pub fn add_service(&self, name: &str, port: u32) -> ServiceId {
        let body = format!(r#"{{"name":"{name}","port":{port}}}"#);
        let (status, reply) = self.api("POST", "/v1/services", Some(&body));
        assert!(status == 201 || status == 200, "{status} {reply}");
        ServiceId::parse(reply["id"].as_str().unwrap()).unwrap()
    }

    /// Enables or disables a service.
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        let verb = if enabled { "enable" } else { "disable" };
        let (status, reply) = self.api("POST", &format!("/v1/services/{name}/{verb}"), None);
        assert_eq!(status, 200, "{reply}");
    }

    /// Adds a sandbox partition under `parent` (the root if `None`) and waits for its
    /// endpoint.
    pub fn add_partition(&self, name: &str, parent: Option<&str>) -> VmId {
        let body = match parent {
            Some(p) => format!(r#"{{"name":"{name}","parent":"{p}"}}"#),
            None => format!(r#"{{"name":"{name}"}}"#),
        };
        let (status, reply) = self.api("POST", "/v1/partitions", Some(&body));
        assert!(status == 201 || status == 200, "{status} {reply}");
        VmId::parse(reply["id"].as_str().unwrap()).unwrap()
    }

    /// Attaches a VM whose VMM serves the hybrid-vsock socket `path` (under the root), through
    /// the admin API.
    pub fn add_vm(&self, name: &str, path: &Path) -> VmId {
        let body = serde_json::json!({ "name": name, "hybrid_vsock": path }).to_string();
        let (status, reply) = self.api("POST", "/v1/partitions", Some(&body));
        assert!(status == 201 || status == 200, "{status} {reply}");
        VmId::parse(reply["id"].as_str().unwrap()).unwrap()
    }

    /// A `hvsock` command aimed at this daemon.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(&bins().hvsock);
        cmd.arg("--dir").arg(self.dir.path());
        cmd.env_remove("HVSOCK_DIR")
            .env_remove("HVSOCK_ENDPOINT")
            .env_remove("HVSOCK_TRANSPORT");
        cmd
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- hvsockd log ---\n{}", self.log());
        }
    }
}

/// A minimal HTTP/1.1 request over a Unix socket, for tests only.
pub fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: hvsockd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let text = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, text)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
