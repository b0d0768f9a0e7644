//! Shared by the integration-service tests: a sandbox partition with `hvsock-agent` running in
//! it (through the sandbox's endpoint, as it would inside a container), and bounded runs of
//! the `hvsock` commands.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hvsock::VmId;
use hvsock_agent::services;

use crate::support::{self, Daemon};

/// How long a command that should finish soon may take (debug builds, a busy machine).
pub const QUICK: Duration = Duration::from_secs(30);

/// `hvsock-agent` running in a sandbox; killed (by its pid) when dropped.
pub struct Agent {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    /// Starts the agent in partition `vm` with `args`, after the command `wrap` if not empty
    /// (e.g. `unshare ...`, which then runs the agent), as `uid` if given, and waits until it
    /// serves every service it was not told to disable.
    pub fn start(d: &Daemon, vm: VmId, args: &[&str], wrap: &[&str], uid: Option<u32>) -> Agent {
        use std::os::unix::process::CommandExt;
        let log = d.dir().join(format!("agent-{vm}.log"));
        let mut cmd = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(support::agent_bin());
                c
            }
            None => Command::new(support::agent_bin()),
        };
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.args(args)
            .env("HVSOCK_ENDPOINT", d.dirs().partition_socket(vm))
            .env_remove("HVSOCK_TRANSPORT")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let agent = Agent {
            child: Some(cmd.spawn().unwrap()),
            log,
        };
        let disabled: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--disable")
            .map(|w| w[1])
            .collect();
        let want: Vec<String> = [services::SESSION, services::FILES, services::SHUTDOWN]
            .iter()
            .filter(|s| !disabled.contains(&s.key))
            .map(|s| format!("serving {} on parent:{}", s.name, s.port))
            .collect();
        agent.wait_log("the agent to serve", |log| {
            want.iter().all(|w| log.contains(w))
        });
        agent
    }

    /// What the agent logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log satisfies `check`.
    pub fn wait_log(&self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + QUICK;
        loop {
            let log = self.log();
            if check(&log) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the agent's log:\n{log}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        support::wait_exit(self.child.as_mut().unwrap(), timeout)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log());
        }
    }
}

/// hvsockd registers the integration services at first start, the VM session and file copy
/// disabled: enable them, as an administrator does.
pub fn enable_session_and_files(d: &Daemon) {
    for s in [services::SESSION, services::FILES] {
        d.set_enabled(s.name, true);
    }
}

/// A daemon with the three guest-served services registered and enabled, a sandbox `sb`, and
/// an agent in it started with `args`.
pub struct Sandbox {
    pub agent: Agent,
    pub vm: VmId,
    pub d: Daemon,
}

impl Sandbox {
    pub fn start(args: &[&str]) -> Sandbox {
        Sandbox::start_with(args, &[])
    }

    /// The daemon, its services and the sandbox, the agent not started yet (for listeners
    /// that must exist first).
    pub fn prepare() -> Prepared {
        let d = Daemon::start();
        enable_session_and_files(&d);
        let vm = d.add_partition("sb", None);
        Prepared { d, vm }
    }

    /// Like [`Sandbox::start`], the agent run by the command `wrap`.
    pub fn start_with(args: &[&str], wrap: &[&str]) -> Sandbox {
        let d = Daemon::start();
        enable_session_and_files(&d);
        let vm = d.add_partition("sb", None);
        let agent = Agent::start(&d, vm, args, wrap, None);
        Sandbox { agent, vm, d }
    }

    /// A `hvsock` command aimed at this daemon.
    pub fn hv(&self) -> Command {
        self.d.cli()
    }
}

/// A sandbox whose agent has not started.
pub struct Prepared {
    pub d: Daemon,
    pub vm: VmId,
}

impl Prepared {
    /// Starts the agent with `args`.
    pub fn with_agent(self, args: &[&str]) -> Sandbox {
        let agent = Agent::start(&self.d, self.vm, args, &[], None);
        Sandbox {
            agent,
            vm: self.vm,
            d: self.d,
        }
    }
}

/// Runs `cmd` with `stdin` fed to it, killing it after `timeout`; returns its output.
pub fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = match support::wait_exit(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    };
    let _ = feeder.join();
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

/// Text of a byte buffer.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Deterministic bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
