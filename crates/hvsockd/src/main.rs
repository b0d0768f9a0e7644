//! `hvsockd`: the provider, in the foreground, logging to stderr.
//!
//! `hvsockd --check [--config FILE]` reads the configuration, says what a start would apply to
//! the registry, and exits 0 (usable) or 1 (not), without starting or writing anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hvsock::dirs::Dirs;
use hvsockd::config::{self, Loaded};
use hvsockd::{Config, Server};

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
    /// Log format [default: the config file's, else text].
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
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop hvsockd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
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
    Ok((config, log_format))
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    let result = runtime.block_on(async {
        let server = Server::bind(config).await?;
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("hvsockd: {e}");
            ExitCode::FAILURE
        }
    }
}
