//! `hvsockd`: the provider, in the foreground, logging to stderr.
//!
//! `hvsockd --check [--config FILE]` reads the configuration, says what a start would apply to
//! the registry, and exits 0 (usable) or 1 (not), without starting or writing anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use hvsock::dirs::Dirs;
use hvsockd::activation::{self, ListenFds, Notifier};
use hvsockd::config::{self, Loaded};
use hvsockd::{Config, ServeError, Server};

/// The hvsock provider: routes Hyper-V socket connections between the host, its sandboxes
/// and its VMs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Read the configuration from FILE (TOML: directories, limits, logging, default policy,
    /// and services and partitions to ensure at start). Flags override it.
    #[arg(long, env = "HVSOCKD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and say what a start would apply, without starting or
    /// changing anything; exit 0 if it is usable, 1 if not.
    #[arg(long)]
    check: bool,
    /// Put the registry and every socket under DIR (default: the config file's, else
    /// /var/lib/hvsock and /run/hvsock for root, XDG state and runtime dirs otherwise).
    #[arg(long, env = "HVSOCK_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Log format: text, or json (one object per line with timestamp, level, message,
    /// target and the event's fields) [default: the config file's, else text].
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// How long a new client may take to send its first frame, in seconds [default: the
    /// config file's, else 10].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    handshake_timeout: Option<Duration>,
    /// Also serve the admin API over HTTP on this loopback address (e.g. 127.0.0.1:8077),
    /// without authentication: for tests and tools that cannot use admin.sock. Off by default.
    #[arg(long, value_name = "ADDR", value_parser = parse_loopback)]
    admin_tcp: Option<SocketAddr>,
    /// Give host.sock to GROUP (mode 0660), so that its members may connect as the root
    /// partition; admin.sock stays owner-only. A GROUP that does not exist stops the start.
    /// Not applied to a socket-activated host.sock (SocketGroup= in the socket unit).
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// Print the completion script for SHELL and exit.
    #[arg(long, value_name = "SHELL", help_heading = "Packaging")]
    completions: Option<clap_complete::Shell>,
    /// Print the manual page (hvsockd.8, roff) and exit.
    #[arg(long, help_heading = "Packaging")]
    man: bool,
}

fn parse_loopback(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an address such as 127.0.0.1:8077"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address: the admin API has no authentication, so it is only served on 127.0.0.1 or [::1]"
        ));
    }
    Ok(addr)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl From<config::LogFormat> for LogFormat {
    fn from(f: config::LogFormat) -> LogFormat {
        match f {
            config::LogFormat::Text => LogFormat::Text,
            config::LogFormat::Json => LogFormat::Json,
        }
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s} is out of range (0 to 3600 seconds)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        // The journal stamps every line itself.
        LogFormat::Text if stderr_is_journal() => builder.without_time().init(),
        LogFormat::Text => builder.init(),
        // One object per line, the message at the top level next to the level and target.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Whether stderr is the systemd journal: `JOURNAL_STREAM` is its `device:inode`.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = rustix::fs::fstat(std::io::stderr()) else {
        return false;
    };
    stream.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}

/// Installs the SIGINT and SIGTERM handlers at once, so that a signal that comes as soon as
/// hvsockd is ready (a service manager may send it right after READY=1) stops it cleanly
/// rather than killing it; the future resolves on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = handlers else {
            tracing::error!("cannot install signal handlers; stop hvsockd with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
}

/// The configuration from the file and the flags, flags first.
fn configure(args: &Args) -> Result<(Config, LogFormat), String> {
    let loaded = match &args.config {
        Some(path) => Some(Loaded::read(path).map_err(|e| e.to_string())?),
        None => None,
    };
    let dirs = match (&args.dir, loaded.as_ref().and_then(|l| l.dirs.clone())) {
        (Some(dir), _) => Dirs::under(dir),
        (None, Some(dirs)) => dirs,
        (None, None) => Dirs::resolve(None).map_err(|e| e.to_string())?,
    };
    let mut config = Config::new(dirs);
    let mut log_format = LogFormat::Text;
    if let Some(loaded) = loaded {
        config.limits = loaded.limits;
        config.declared = loaded.declared;
        if let Some(f) = loaded.log_format {
            log_format = f.into();
        }
    }
    if let Some(t) = args.handshake_timeout {
        config.limits.handshake_timeout = t;
    }
    if let Some(f) = args.log_format {
        log_format = f;
    }
    config.admin_tcp = args.admin_tcp;
    config.socket_group = args.socket_group.clone();
    Ok((config, log_format))
}

fn main() -> ExitCode {
    // SAFETY: first thing in main: one thread, and nothing owns descriptors 3 and up yet.
    let listen_fds = unsafe { activation::take_listen_fds() };
    let args = Args::parse();
    if let Some(shell) = args.completions {
        return print(|out| hvsockd::manual::write_completions(shell, Args::command(), out));
    }
    if args.man {
        return print(|out| hvsockd::manual::write_man(Args::command(), out));
    }
    let (config, log_format) = match configure(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hvsockd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        let format = match log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let (report, result) = config::check(&config, format, args.config.as_deref());
        print!("{report}");
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hvsockd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(log_format);
    raise_open_file_limit();
    let listen_fds: ListenFds = match listen_fds {
        Ok(fds) => fds,
        Err(e) => return fail(&ServeError::from(e)),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hvsockd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let notifier = Notifier::from_env();
    let result = runtime.block_on(async {
        let signalled = shutdown_signal();
        let server = Server::bind_with(config, listen_fds).await?;
        notify(notifier.as_ref(), "READY=1\nSTATUS=serving");
        server
            .run(async {
                signalled.await;
                notify(notifier.as_ref(), "STOPPING=1");
            })
            .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Raises the soft limit of open descriptors to the hard limit, as daemons that hold a socket
/// per client do: with the usual soft limit of 1024, the 1024 sessions one partition may open
/// would exhaust hvsockd's descriptors and starve every other partition. (systemd's default is
/// 1024 soft, 524288 hard.)
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), hard) = (limit.current, limit.maximum) else {
        return; // already unlimited
    };
    // `None` is unlimited; Linux caps the open-file limit at fs.nr_open anyway.
    let target = hard.unwrap_or(1 << 20);
    if soft >= target {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(target),
        maximum: hard,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!("open-file limit raised from {soft} to {target}"),
        Err(e) => tracing::warn!(
            "cannot raise the open-file limit from {soft} to {target} ({e}): a partition \
             that opens many sessions may exhaust hvsockd's descriptors; raise LimitNOFILE"
        ),
    }
}

/// Tells the service manager, if one listens (`NOTIFY_SOCKET`).
fn notify(notifier: Option<&Notifier>, state: &str) {
    if let Some(notifier) = notifier {
        if let Err(e) = notifier.notify(state) {
            tracing::warn!("{e}");
        }
    }
}

fn fail(e: &ServeError) -> ExitCode {
    tracing::error!("{e}");
    eprintln!("hvsockd: {e}");
    ExitCode::FAILURE
}

/// Writes what `write` produces to stdout (for --man and --completions).
fn print(write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hvsockd: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
