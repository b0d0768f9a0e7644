//! `hvsockd`: the provider, in the foreground, logging to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use hvsock::dirs::Dirs;
use hvsockd::{Config, Server};

/// The hvsock provider: routes Hyper-V socket connections between the host, its sandboxes
/// and its VMs.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Put the registry and every socket under DIR (default: /var/lib/hvsock and /run/hvsock
    /// for root, XDG state and runtime dirs otherwise).
    #[arg(long, env = "HVSOCK_DIR", value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// How long a new client may take to send its first frame, in seconds.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    handshake_timeout: Duration,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
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

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let dirs = match Dirs::resolve(args.dir.as_deref()) {
        Ok(dirs) => dirs,
        Err(e) => {
            eprintln!("hvsockd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = Config::new(dirs);
    config.limits.handshake_timeout = args.handshake_timeout;
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
