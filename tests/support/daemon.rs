//! [`Daemon`]: a real hvsockd on a fresh temp dir, ended (by its pid) when dropped, with the
//! temp dir; a small client of its admin API ([`http`]); and [`hv`], the `hvsock` CLI aimed at
//! it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hvsock::dirs::Dirs;
use hvsock::{ServiceId, Transport, VmId};

use super::{Guard, Out, QUICK, bins, run, tempdir};

/// Makes the command that starts the hvsockd binary it is given, for a test that plays the
/// service manager (environment, inherited descriptors); [`Daemon`] adds `--dir`, the
/// arguments, the log and stdio.
pub type Launcher = Box<dyn FnMut(&Path) -> Command + Send>;

/// A running hvsockd on its own temp dir.
pub struct Daemon {
    process: Option<Guard>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    binary: PathBuf,
    launcher: Option<Launcher>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("process", &self.process)
            .field("dir", &self.dir)
            .field("binary", &self.binary)
            .finish()
    }
}

impl Daemon {
    /// Starts hvsockd on a new temp dir.
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    /// Starts hvsockd on a new temp dir and unregisters the integration services it registers
    /// at first start, for tests that count every service of the registry.
    pub fn start_bare() -> Daemon {
        let d = Daemon::start();
        let (_, list) = d.api("GET", "/v1/services", None);
        for s in list.as_array().unwrap() {
            let id = s["id"].as_str().unwrap();
            let (status, reply) = d.api("DELETE", &format!("/v1/services/{id}"), None);
            assert_eq!(status, 204, "{reply}");
        }
        d
    }

    /// Starts hvsockd on a new temp dir with extra arguments.
    pub fn start_with(args: &[&str]) -> Daemon {
        Daemon::start_binary(&bins().hvsockd, args)
    }

    /// Starts the hvsockd binary at `binary` (e.g. a copy a test replaces) on a new temp dir.
    pub fn start_binary(binary: &Path, args: &[&str]) -> Daemon {
        let dir = tempdir("hvsock-test-");
        let mut daemon = Daemon {
            process: None,
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            binary: binary.to_owned(),
            launcher: None,
        };
        daemon.spawn();
        daemon
    }

    /// Starts hvsockd on a new temp dir through `launcher`, each start (see [`Launcher`]).
    /// Its admin socket is left where it is at each start: it may be a kept one.
    pub fn start_launched(launcher: Launcher) -> Daemon {
        let dir = tempdir("hvsock-test-");
        let mut daemon = Daemon {
            process: None,
            dir,
            args: Vec::new(),
            binary: bins().hvsockd.clone(),
            launcher: Some(launcher),
        };
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let admin = self.dirs().admin_socket();
        let mut command = match &mut self.launcher {
            Some(launch) => launch(&self.binary),
            None => {
                let _ = std::fs::remove_file(&admin);
                Command::new(&self.binary)
            }
        };
        let process = Guard::spawn(
            command
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.args)
                .env("RUST_LOG", "hvsockd=debug,info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        let process = self.process.insert(process);
        let started = Instant::now();
        loop {
            if UnixStream::connect(&admin).is_ok() {
                break;
            }
            if let Some(status) = process.try_wait() {
                panic!(
                    "hvsockd exited with {status} at start:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "hvsockd did not start within 20 s:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
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
        self.process.as_ref().unwrap().id()
    }

    /// Whether hvsockd is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.as_mut().is_some_and(Guard::is_running)
    }

    /// Sends `signal` to hvsockd.
    pub fn signal(&self, signal: rustix::process::Signal) {
        self.process.as_ref().unwrap().signal(signal);
    }

    /// Kills hvsockd with SIGKILL and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Stops hvsockd with SIGTERM and returns whether it exited 0 within 10 s (it is killed
    /// otherwise).
    pub fn stop(&mut self) -> bool {
        let Some(mut process) = self.process.take() else {
            return false;
        };
        process.signal(rustix::process::Signal::TERM);
        process
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|status| status.success())
    }

    /// Starts hvsockd again on the same directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts hvsockd again on the same directory after it ended (e.g. [`Daemon::kill9`]).
    pub fn respawn(&mut self) {
        assert!(self.process.is_none(), "hvsockd still runs");
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

    /// Disables the services hvsockd serves itself (heartbeat, time, kvp) and waits until it has
    /// unbound them: for tests that count listeners or a VM's guest ports.
    pub fn without_own_services(&self) {
        for name in ["hvsock-heartbeat", "hvsock-time", "hvsock-kvp"] {
            self.set_enabled(name, false);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, listeners) = self.api("GET", "/v1/listeners", None);
            let own = listeners.as_array().is_some_and(|l| {
                l.iter().any(|l| {
                    ["hvsock-heartbeat", "hvsock-time", "hvsock-kvp"]
                        .contains(&l["service_name"].as_str().unwrap_or(""))
                })
            });
            if !own {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hvsockd kept its own services bound: {listeners}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        if std::thread::panicking() {
            eprintln!("--- hvsockd log ---\n{}", self.log());
        }
    }
}

/// `hvsock --dir DIR ARGS…` aimed at `d`, with empty stdin, run to its end within [`QUICK`].
pub fn hv(d: &Daemon, args: &[&str]) -> Out {
    run(d.cli().args(args), b"", QUICK)
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
