//! The hvsockd process: what `main` does once the flags are parsed. Logging, the open-file
//! limit, the runtime, the service manager's readiness protocol, signals, `--check`, `--man`
//! and `--completions`; the serving itself is [`Server`]'s.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{self, Config, LogFormat, Overrides};
use crate::handover::{Holder, reexec};
use crate::server::{ServeError, Server};
use crate::sys;
use crate::sys::activation::{ActivationError, ListenFds, Notifier};

/// What to do, from the command line.
#[derive(Debug)]
pub enum Action {
    /// Serve (the default).
    Serve,
    /// `--check`: say what a start would apply, change nothing.
    Check,
    /// `--man`: print the manual page.
    Man,
    /// `--completions SHELL`: print a completion script.
    Completions(clap_complete::Shell),
}

/// Runs hvsockd: `listen_fds` are the sockets a service manager passed (taken first thing in
/// `main`), `overrides` what the flags say, `command` the flags' definition (for the manual).
pub fn main(
    action: Action,
    overrides: Overrides,
    listen_fds: Result<ListenFds, ActivationError>,
    command: clap::Command,
) -> ExitCode {
    match action {
        Action::Completions(shell) => {
            return print(|out| crate::manual::write_completions(shell, command, out));
        }
        Action::Man => return print(|out| crate::manual::write_man(command, out)),
        Action::Serve | Action::Check => {}
    }
    let config = match Config::resolve(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hvsockd: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Action::Check = action {
        let (report, result) = config::check(&config, overrides.config.as_deref());
        print!("{report}");
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hvsockd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_logging(config.log_format);
    sys::raise_open_file_limit();
    let listen_fds = match listen_fds {
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
    // Where the binary is now: SIGUSR2 executes what is there then.
    let exe = reexec::own_path();
    let result = runtime.block_on(async {
        let signalled = shutdown_signal();
        let server = Server::bind_with(config, listen_fds).await?;
        tokio::spawn(upgrade_on_usr2(server.holder().clone(), exe));
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

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        // The journal stamps every line itself.
        LogFormat::Text if sys::stderr_is_journal() => builder.without_time().init(),
        LogFormat::Text => builder.init(),
        // One object per line, the message at the top level next to the level and target.
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
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

/// On every `SIGUSR2`: checks the binary at `exe`, then executes it in place with every socket
/// `holder` holds (see [`crate::handover::reexec`]); if either fails, logs why and serves on.
async fn upgrade_on_usr2(holder: Arc<Holder>, exe: std::io::Result<PathBuf>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr2 = match signal(SignalKind::user_defined2()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot handle SIGUSR2 (upgrade in place): {e}");
            return;
        }
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    while usr2.recv().await.is_some() {
        let path = match &exe {
            Ok(path) => path.clone(),
            Err(e) => {
                tracing::error!(
                    "SIGUSR2: upgrade refused: the path of hvsockd's binary is unknown ({e}); hvsockd keeps serving"
                );
                continue;
            }
        };
        tracing::info!(binary = %path.display(), sockets = holder.len(), "SIGUSR2: upgrading in place");
        let checked = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || reexec::check(&path)).await
        };
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("SIGUSR2: upgrade refused: {e}; hvsockd keeps serving");
                continue;
            }
            Err(e) => {
                tracing::error!(
                    "SIGUSR2: upgrade refused: the check failed: {e}; hvsockd keeps serving"
                );
                continue;
            }
        }
        // Let the tasks that are ready (answers on their way out) finish first.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        let e = reexec::exec(&holder, &path, &args);
        tracing::error!("SIGUSR2: upgrade failed: {e}; hvsockd keeps serving");
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
