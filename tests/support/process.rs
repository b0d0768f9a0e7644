//! Processes the tests start: every one is held by a [`Guard`] (killed by its pid and reaped
//! when dropped, so a failing test leaves nothing running) and waited for with a bound.
//!
//! - [`Guard`]: any child process;
//! - [`Proc`]: a child whose stdin the test writes and whose stdout and stderr are collected as
//!   they come (the interactive `hvsock listen` / `hvsock connect` of the CLI tests);
//! - [`run`]: a command run to its end within a bound, as an [`Out`];
//! - [`under_timeout`] and [`run_checked`]: a command that starts processes of its own (a VM, a
//!   build) run under `timeout(1)`, which also ends what it started should the bound pass;
//! - [`wait_for`]: waiting for a condition, with a bound.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a command that should finish at once may take (debug builds, a busy machine).
pub const QUICK: Duration = Duration::from_secs(20);

/// Waits until `check` holds or `timeout` passes; panics with `what` on timeout.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
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
        thread::sleep(Duration::from_millis(10));
    }
}

/// A child process, killed (SIGKILL, by its pid) and reaped when dropped if it still runs.
#[derive(Debug)]
pub struct Guard {
    child: Child,
    what: String,
}

impl Guard {
    /// Spawns `cmd` as it is set up (stdio included); panics, naming it, if it cannot start.
    pub fn spawn(cmd: &mut Command) -> Guard {
        let what = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Guard { child, what }
    }

    /// What was started, for messages.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// The child, to take its stdio.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its pid, for signals.
    pub fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(&self.child)
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `timeout` for it to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, timeout)
    }

    /// Waits for it to exit; panics after `timeout` (the guard then kills it).
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_exit(timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.what))
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(self.pid(), signal).unwrap();
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.is_running() {
            self.child.kill().unwrap();
        }
        self.child.wait().unwrap();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Reads `from` to its end into `into`, on a thread.
fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// A running process with piped stdio: the test writes its stdin, and its stdout and stderr
/// are collected as they come. Killed when dropped.
pub struct Proc {
    guard: Guard,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    feeder: Option<JoinHandle<()>>,
}

impl Proc {
    /// Spawns `cmd` with its stdin, stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut guard = Guard::spawn(
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let child = guard.child();
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        let stdin = child.stdin.take();
        Proc {
            guard,
            stdin,
            stdout,
            stderr,
            readers,
            feeder: None,
        }
    }

    /// Writes to its stdin.
    pub fn write(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(data).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Writes `data` to its stdin from a thread, then closes it.
    pub fn feed(&mut self, data: Vec<u8>) {
        let mut stdin = self.stdin.take().expect("stdin is open");
        self.feeder = Some(thread::spawn(move || {
            let _ = stdin.write_all(&data);
        }));
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().unwrap().clone()
    }

    /// Its stdout so far, as text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout()).into_owned()
    }

    /// Its stderr so far, as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits until `check` holds for its stdout so far, at most [`QUICK`].
    pub fn wait_stdout(&self, what: &str, check: impl Fn(&[u8]) -> bool) {
        wait_for(what, QUICK, || check(&self.stdout.lock().unwrap()));
    }

    /// Waits until its stderr says `needle`, at most [`QUICK`].
    pub fn wait_stderr(&self, needle: &str) {
        let deadline = Instant::now() + QUICK;
        while !self.stderr().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{} did not say {needle:?} in time; stderr:\n{}",
                self.guard.what(),
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        self.guard.is_running()
    }

    /// Waits for it to exit (panics after `timeout`; the guard then kills it), and for its
    /// output to be read to the end.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let Some(status) = self.guard.wait_exit(timeout) else {
            panic!(
                "{} did not exit within {timeout:?}; stderr:\n{}",
                self.guard.what(),
                self.stderr()
            );
        };
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
        if let Some(feeder) = self.feeder.take() {
            feeder.join().unwrap();
        }
        status
    }
}

/// What a finished command did.
#[derive(Debug)]
pub struct Out {
    /// The command.
    pub what: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Its stdout, as text.
    pub stdout: String,
    /// Its stderr, as text.
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl Out {
    /// Its exit code, if it exited (not killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "expected success: {self:?}");
        &self.stdout
    }

    /// Asserts exit 1 with `needle` on stderr, and returns stderr.
    pub fn fails_with(&self, needle: &str) -> &str {
        assert_eq!(self.code(), Some(1), "expected exit 1: {self:?}");
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} in {self:?}"
        );
        &self.stderr
    }

    /// As `hvsock` fails: exit 1 with nothing on stdout and `needle` in the one-line
    /// `hvsock: …` message.
    pub fn hvsock_fails_with(&self, needle: &str) {
        assert_eq!(self.code(), Some(1), "expected exit 1: {self:?}");
        assert!(self.stderr.starts_with("hvsock: "), "{self:?}");
        assert!(
            self.stderr.contains(needle),
            "expected {needle:?} in {self:?}"
        );
        assert_eq!(self.stdout, "", "{self:?}");
    }

    /// Asserts success and parses stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// `cmd` wrapped in `timeout -k 5 SECS`, with its arguments, environment and directory, so that
/// the whole process group it starts ends after `secs` even if the test itself is stuck.
pub fn under_timeout(secs: u64, cmd: &Command) -> Command {
    let mut wrapped = Command::new("timeout");
    wrapped
        .args(["-k", "5", &secs.to_string()])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

/// Runs `cmd` [`under_timeout`] to its end with no input, says how long it took (prefixed by
/// `who`), and panics with its output if it failed.
pub fn run_checked(who: &str, what: &str, secs: u64, cmd: &Command) -> Out {
    let out = run(
        &mut under_timeout(secs, cmd),
        b"",
        Duration::from_secs(secs + 10),
    );
    assert!(
        out.status.success(),
        "{what} failed ({}) after {:.0?}:\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        out.elapsed,
        out.stdout,
        out.stderr
    );
    eprintln!("{who}: {what}: {:.1?}", out.elapsed);
    out
}

/// Runs `cmd` to its end with `input` on stdin, killing it and failing if it takes longer than
/// `timeout`.
pub fn run(cmd: &mut Command, input: &[u8], timeout: Duration) -> Out {
    let what = format!("{cmd:?}");
    let started = Instant::now();
    let mut p = Proc::spawn(cmd);
    p.feed(input.to_vec());
    let status = p.wait(timeout);
    Out {
        what,
        status,
        stdout: p.stdout_text(),
        stderr: p.stderr(),
        elapsed: started.elapsed(),
    }
}

/// `cmd`'s stdout; panics with its output unless it exits 0 within `timeout`.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let out = run(cmd, b"", timeout);
    assert!(
        out.status.success(),
        "{} failed with {}:\n{}{}",
        out.what,
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}
