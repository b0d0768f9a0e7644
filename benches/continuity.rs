//! Chaos under load: hvsockd killed (`kill -9`) and started again, many times, at random
//! moments, while connectors connect, a library listener accepts, established connections
//! stream data and the registry is written; then what was lost is counted. It measures and
//! prints; it asserts nothing about speed.
//!
//! ```sh
//! cargo bench --bench continuity                 # 100 cycles
//! cargo bench --bench continuity -- --cycles 10  # quick
//! ```
//!
//! Printed: connects that failed (every connector's timeout, 5 s, exceeds a restart), listeners
//! lost (an `accept` that returned an error), established connections lost (an error or a
//! wrong byte on a stream), registry writes lost (a `hvsock service add` that said it succeeded
//! but whose service is missing at the end), and the time without service after each crash:
//! from the kill to the first successful connect started after it. Then the log lines hvsockd
//! writes for 10,000 refused sessions from one partition.
//!
//! How a cycle restarts hvsockd is a [`Mode`]: `--mode kill9` (the default) kills it and starts
//! a new one on the same directory, with no service manager holding its sockets; `--mode usr2`
//! upgrades it in place (`SIGUSR2`: the same binary executed again, same pid, every socket handed
//! over), and the time without service is then from the signal to the first successful connect
//! started after it; `--mode store` plays systemd with its descriptor store (the test's
//! `support::Manager`: `NOTIFY_SOCKET`, `FDSTORE`, the kept sockets back through `LISTEN_FDS`)
//! and kills hvsockd (`kill -9`) and starts it again as `Restart=` would, at once; its
//! "restart" is then from the kill to the new hvsockd's `READY=1`. Another way is one more
//! variant and one more arm in [`Mode::restart`].

#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, Transport, VmId};

const PORT: u32 = 6000;
const STREAM_PORT: u32 = 6001;
/// Every connector's timeout: longer than a restart.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CHUNK: usize = 16 * 1024;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How a cycle takes hvsockd down and brings it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `kill -9`, then a new hvsockd on the same directory.
    Kill9,
    /// `SIGUSR2`: an upgrade in place, every socket handed to the re-executed hvsockd.
    Usr2,
    /// `kill -9` under a service manager that keeps hvsockd's sockets in its descriptor store,
    /// then a new hvsockd given them back.
    Store,
}

impl Mode {
    fn parse(s: &str) -> Res<Mode> {
        match s {
            "kill9" => Ok(Mode::Kill9),
            "usr2" => Ok(Mode::Usr2),
            "store" => Ok(Mode::Store),
            other => Err(format!("unknown --mode {other:?} (known: kill9, usr2, store)").into()),
        }
    }

    /// Starts hvsockd as this mode needs it (under `manager` for [`Mode::Store`]).
    fn start(self, manager: Option<&support::Manager>) -> support::Daemon {
        match manager {
            Some(m) => {
                let d = support::Daemon::start_launched(m.launcher());
                m.wait_ready(0);
                d
            }
            None => support::Daemon::start(),
        }
    }

    /// Restarts `d`; returns when the new hvsockd answers its admin API (has said `READY=1`
    /// to `manager`, for [`Mode::Store`]).
    fn restart(self, d: &mut support::Daemon, manager: Option<&support::Manager>) {
        match self {
            Mode::Kill9 => d.restart(),
            Mode::Store => {
                let m = manager.expect("--mode store runs under a manager");
                let ready = m.ready_count();
                d.kill9();
                d.respawn();
                m.wait_ready(ready);
            }
            Mode::Usr2 => {
                let before = d.log().len();
                d.signal(rustix::process::Signal::USR2);
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let log = d.log()[before..].to_owned();
                    assert!(
                        !log.contains("upgrade refused") && !log.contains("upgrade failed"),
                        "SIGUSR2 did not upgrade: {log}"
                    );
                    if log.contains("hvsockd ready") {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "no upgraded hvsockd in 30 s: {log}"
                    );
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

struct Opts {
    cycles: u32,
    connectors: u32,
    streams: u32,
    mode: Mode,
}

impl Opts {
    fn parse(mut args: impl Iterator<Item = String>) -> Res<Option<Opts>> {
        let mut opts = Opts {
            cycles: 100,
            connectors: 4,
            streams: 3,
            mode: Mode::Kill9,
        };
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> Res<String> {
                args.next()
                    .ok_or_else(|| format!("{name} needs a value").into())
            };
            match arg.as_str() {
                "--bench" => {} // cargo bench passes it
                "--cycles" => opts.cycles = value("--cycles")?.parse()?,
                "--connectors" => opts.connectors = value("--connectors")?.parse()?,
                "--streams" => opts.streams = value("--streams")?.parse()?,
                "--mode" => opts.mode = Mode::parse(&value("--mode")?)?,
                "-h" | "--help" => return Ok(None),
                other => return Err(format!("unknown argument {other:?}").into()),
            }
        }
        Ok(Some(opts))
    }
}

const USAGE: &str = "usage: cargo bench --bench continuity -- [--cycles N] [--connectors N] [--streams N] [--mode kill9|usr2|store]
  --cycles N      restarts of hvsockd (default 100)
  --connectors N  connector threads (default 4; every other one from a sandbox partition)
  --streams N     established connections streaming data throughout (default 3)
  --mode M        how hvsockd is restarted: kill9 (kill -9, then start again), or usr2
                  (SIGUSR2: an upgrade in place keeping every socket), or store (kill -9
                  under a service manager that keeps the sockets in its descriptor store)";

fn main() -> ExitCode {
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("continuity: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&opts).and_then(|()| log_flood()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("continuity: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A tiny xorshift: random moments without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}

#[derive(Default)]
struct Counts {
    connects_ok: AtomicU64,
    connects_failed: AtomicU64,
    accepted: AtomicU64,
    listeners_lost: AtomicU64,
    /// How many times the library listener had to bind again (its `rebind_generation`).
    listener_rebinds: AtomicU64,
    streams_lost: AtomicU64,
    streamed: AtomicU64,
    writes_acked: AtomicU64,
    write_attempts_failed: AtomicU64,
}

/// A connector: connects, sends one byte, half-closes and reads to the end, until `stop`;
/// notes when each successful connect started and ended.
fn connector(
    transport: Transport,
    target: SockAddrHv,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    done: Arc<Mutex<Vec<(Instant, Instant)>>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let result =
            HvStream::connect_with(&transport, target, CONNECT_TIMEOUT).and_then(|mut s| {
                let connected = Instant::now();
                s.write_all(b"x")?;
                s.shutdown(Shutdown::Write)?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest)?;
                Ok(connected)
            });
        match result {
            Ok(connected) => {
                counts.connects_ok.fetch_add(1, Ordering::Relaxed);
                done.lock().unwrap().push((started, connected));
            }
            Err(e) => {
                counts.connects_failed.fetch_add(1, Ordering::Relaxed);
                errors.lock().unwrap().push(e.to_string());
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// The library listener: accepts until `stop`, serving each connection on a thread; an accept
/// that fails is a lost listener (then it binds anew to go on measuring).
fn acceptor(
    transport: Transport,
    addr: SockAddrHv,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Res<thread::JoinHandle<()>> {
    let mut listener = HvListener::bind_with(&transport, addr, 256)?;
    let fd = listener.as_raw_fd();
    Ok(thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    counts.accepted.fetch_add(1, Ordering::Relaxed);
                    thread::spawn(move || {
                        let mut buf = [0u8; 16];
                        while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
                Err(e) => {
                    counts.listeners_lost.fetch_add(1, Ordering::Relaxed);
                    eprintln!("continuity: the listener lost: {e}");
                    thread::sleep(Duration::from_millis(50));
                    if let Ok(again) = HvListener::bind_with(&transport, addr, 256) {
                        listener = again;
                    }
                }
            }
            if listener.as_raw_fd() != fd {
                counts.listeners_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        counts
            .listener_rebinds
            .store(listener.rebind_generation(), Ordering::Relaxed);
    }))
}

/// One established connection streaming numbered chunks one way, checked on the other end.
fn stream(
    writer: HvStream,
    reader: HvStream,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> Vec<thread::JoinHandle<()>> {
    let writing = {
        let (stop, counts) = (stop.clone(), counts.clone());
        let mut writer = writer;
        thread::spawn(move || {
            let mut seq = 0u8;
            let mut chunk = vec![0u8; CHUNK];
            while !stop.load(Ordering::Relaxed) {
                chunk.fill(seq);
                if writer.write_all(&chunk).is_err() {
                    counts.streams_lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                seq = seq.wrapping_add(1);
                thread::sleep(Duration::from_millis(1));
            }
            let _ = writer.shutdown(Shutdown::Write);
        })
    };
    let reading = thread::spawn(move || {
        let mut reader = reader;
        let mut chunk = vec![0u8; CHUNK];
        let mut seq = 0u8;
        loop {
            match reader.read_exact(&mut chunk) {
                Ok(()) if chunk.iter().all(|&b| b == seq) => {
                    counts.streamed.fetch_add(CHUNK as u64, Ordering::Relaxed);
                    seq = seq.wrapping_add(1);
                }
                Ok(()) => {
                    counts.streams_lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
                Err(_) => {
                    counts.streams_lost.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
    });
    vec![writing, reading]
}

/// Registers one service per round through the CLI, retrying while hvsockd is away; notes the
/// names it was told were registered.
fn registry_writer(
    dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    acked: Arc<Mutex<Vec<String>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let name = format!("chaos-{n}");
            let ok = Command::new(&support::bins().hvsock)
                .arg("--dir")
                .arg(&dir)
                .args(["service", "add", &name, "--port", &(20_000 + n).to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                counts.writes_acked.fetch_add(1, Ordering::Relaxed);
                acked.lock().unwrap().push(name);
                n += 1;
                thread::sleep(Duration::from_millis(100));
            } else {
                counts.write_attempts_failed.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        }
    })
}

fn run(opts: &Opts) -> Res<()> {
    let manager = (opts.mode == Mode::Store).then(support::Manager::new);
    let mut d = opts.mode.start(manager.as_ref());
    let service = d.add_service("chaos", PORT);
    d.add_service("chaos-streams", STREAM_PORT);
    let sandbox = d.add_partition("sandbox", None);
    let (stop, counts) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(Counts::default()),
    );
    let done = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();

    threads.push(acceptor(
        d.host(),
        SockAddrHv::new(VmId::WILDCARD, service),
        stop.clone(),
        counts.clone(),
    )?);
    // Established connections, made before the chaos.
    let streams = HvListener::bind_with(
        &d.host(),
        SockAddrHv::new(VmId::WILDCARD, ServiceId::from_vsock_port(STREAM_PORT)),
        16,
    )?;
    for _ in 0..opts.streams {
        let client = HvStream::connect_with(
            &d.partition(sandbox),
            SockAddrHv::new(VmId::PARENT, ServiceId::from_vsock_port(STREAM_PORT)),
            CONNECT_TIMEOUT,
        )?;
        let (server, _) = streams.accept()?;
        threads.extend(stream(client, server, stop.clone(), counts.clone()));
    }
    drop(streams);
    for i in 0..opts.connectors {
        let (transport, target) = if i % 2 == 0 {
            (d.host(), SockAddrHv::new(VmId::LOOPBACK, service))
        } else {
            (d.partition(sandbox), SockAddrHv::new(VmId::PARENT, service))
        };
        let (stop, counts, done, errors) =
            (stop.clone(), counts.clone(), done.clone(), errors.clone());
        threads.push(thread::spawn(move || {
            connector(transport, target, stop, counts, done, errors)
        }));
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    threads.push(registry_writer(
        d.dir().to_owned(),
        stop.clone(),
        counts.clone(),
        acked.clone(),
    ));

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |t| t.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    let mut kills = Vec::new();
    let mut restarts = Vec::new();
    thread::sleep(Duration::from_millis(300));
    for cycle in 0..opts.cycles {
        thread::sleep(rng.millis(50, 400));
        let killed = Instant::now();
        opts.mode.restart(&mut d, manager.as_ref());
        restarts.push(killed.elapsed());
        kills.push(killed);
        if (cycle + 1) % 10 == 0 {
            eprintln!("continuity: {} cycles", cycle + 1);
        }
    }
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    // Wake the acceptor with one last connection, then collect.
    let _ = HvStream::connect_with(
        &d.host(),
        SockAddrHv::new(VmId::LOOPBACK, service),
        CONNECT_TIMEOUT,
    );
    for t in threads {
        let _ = t.join();
    }

    // Registry writes acknowledged but missing.
    let (status, list) = d.api("GET", "/v1/services", None);
    if status != 200 {
        return Err(format!("listing services: {status} {list}").into());
    }
    let names: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let acked = acked.lock().unwrap();
    let writes_lost = acked.iter().filter(|n| !names.contains(n)).count();

    // Time without service: from each kill to the end of the first connect started after it.
    let done = done.lock().unwrap();
    let mut gaps: Vec<Duration> = kills
        .iter()
        .filter_map(|&k| {
            done.iter()
                .filter(|(started, _)| *started >= k)
                .map(|(_, ended)| *ended - k)
                .min()
        })
        .collect();
    gaps.sort();
    restarts.sort();
    let pct = |v: &[Duration], p: f64| -> String {
        if v.is_empty() {
            return "-".into();
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        format!("{:.1} ms", v[i].as_secs_f64() * 1000.0)
    };
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "hvsockd continuity, mode {:?}: {} cycles",
        opts.mode, opts.cycles
    );
    println!(
        "  load: {} connector threads (timeout {:?}), 1 library listener, {} established streams, 1 registry writer",
        opts.connectors, CONNECT_TIMEOUT, opts.streams
    );
    println!("  connects ok                 {}", c(&counts.connects_ok));
    println!(
        "  connects failed             {}",
        c(&counts.connects_failed)
    );
    println!(
        "  listeners lost              {}",
        c(&counts.listeners_lost)
    );
    println!(
        "  listener re-binds           {} (0: it kept its very session throughout)",
        c(&counts.listener_rebinds)
    );
    println!("  established connections lost {}", c(&counts.streams_lost));
    println!(
        "  streamed                    {} MiB",
        c(&counts.streamed) >> 20
    );
    println!(
        "  registry writes lost        {writes_lost} (of {} acknowledged; {} attempts refused while hvsockd was away)",
        c(&counts.writes_acked),
        c(&counts.write_attempts_failed)
    );
    println!(
        "  restart (kill to admin API) median {}, p95 {}, max {}",
        pct(&restarts, 0.5),
        pct(&restarts, 0.95),
        pct(&restarts, 1.0)
    );
    println!(
        "  time without service (kill to first successful connect) median {}, p95 {}, max {} ({} cycles measured)",
        pct(&gaps, 0.5),
        pct(&gaps, 0.95),
        pct(&gaps, 1.0),
        gaps.len()
    );
    for e in errors.lock().unwrap().iter().take(5) {
        println!("  a failed connect: {e}");
    }
    Ok(())
}

/// Log lines hvsockd writes for 10,000 sessions refused to one partition.
fn log_flood() -> Res<()> {
    const ATTEMPTS: u64 = 10_000;
    let config = support::tempdir("hvsock-chaos-config-");
    let path = config.path().join("hvsockd.toml");
    std::fs::write(&path, "[limits]\nmax_sessions_per_partition = 4\n")?;
    let d = support::Daemon::start_with(&["--config", path.to_str().ok_or("path")?]);
    let hostile = d.add_partition("hostile", None);
    let endpoint = d.dirs().partition_socket(hostile);
    let before = d.log().lines().count();
    let _held: Vec<_> = (0..4)
        .map(|_| hvsock_proto::unix::connect_endpoint(&endpoint, false))
        .collect::<Result<_, _>>()?;
    thread::sleep(Duration::from_millis(200));
    for _ in 0..ATTEMPTS {
        drop(hvsock_proto::unix::connect_endpoint(&endpoint, false)?);
    }
    let started = Instant::now();
    let counted = loop {
        let (_, stats) = d.api("GET", "/v1/stats", None);
        let n = stats["client_errors"]["hostile"]["too_many_sessions"]
            .as_u64()
            .unwrap_or(0);
        if n >= ATTEMPTS || started.elapsed() > Duration::from_secs(30) {
            break n;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let log = d.log();
    let lines: Vec<&str> = log.lines().skip(before).collect();
    let warnings = lines.iter().filter(|l| l.contains("WARN")).count();
    println!(
        "log for {ATTEMPTS} refused sessions from one partition: {warnings} WARN lines, {} lines in all at debug level ({} bytes); counted in /v1/stats: {counted}",
        lines.len(),
        lines.iter().map(|l| l.len() + 1).sum::<usize>()
    );
    Ok(())
}
