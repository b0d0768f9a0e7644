//! `hvsock-agent`: hvsock's integration services in a Linux guest or a sandbox (see the
//! `hvsock_agent` library). Runs in the foreground, logs to stderr; `hvsock-agent kvp ...`
//! reads and writes the key-value pools in the guest.

#[cfg(target_os = "linux")]
fn main() -> std::process::ExitCode {
    linux::main()
}

#[cfg(not(target_os = "linux"))]
fn main() -> std::process::ExitCode {
    eprintln!("hvsock-agent: runs in Linux guests and sandboxes only");
    std::process::ExitCode::FAILURE
}

#[cfg(target_os = "linux")]
mod linux {
    use std::path::PathBuf;
    use std::process::ExitCode;

    use clap::{Parser, Subcommand};
    use hvsock::Transport;
    use hvsock_agent::agent::{self, Config};
    use hvsock_agent::link::{KVP_DIR, TimeMode};
    use hvsock_agent::shutdown::Action;

    /// hvsock's integration services in a Linux guest or sandbox: the VM session (`hvsock
    /// exec`, `hvsock shell`), file copy (`hvsock cp`) and shutdown (`hvsock vm shutdown`),
    /// each bound to the parent partition only; and the heartbeat, time sync and key-value
    /// exchange with the host's hvsockd.
    ///
    /// The transport comes from the environment: HVSOCK_TRANSPORT=vsock inside a VM,
    /// HVSOCK_ENDPOINT=PATH (the sandbox's endpoint socket) in a sandbox.
    #[derive(Debug, Parser)]
    #[command(name = "hvsock-agent", version, args_conflicts_with_subcommands = true)]
    struct Args {
        /// Do not serve or use this service (session, files, shutdown, heartbeat, time, kvp);
        /// repeatable.
        #[arg(long, value_name = "SERVICE")]
        disable: Vec<String>,
        /// How to shut down: init (the guest's init system; the default in a VM), command
        /// (--poweroff-command / --reboot-command), exit (end the agent), none [default in a
        /// sandbox: none, unless the commands are given].
        #[arg(long, value_name = "HOW", value_parser = ["init", "command", "exit", "none"])]
        shutdown: Option<String>,
        /// The shell command that powers this system off (implies --shutdown command).
        #[arg(long, value_name = "CMD")]
        poweroff_command: Option<String>,
        /// The shell command that reboots this system (implies --shutdown command).
        #[arg(long, value_name = "CMD")]
        reboot_command: Option<String>,
        /// Whether time sync sets the clock (set) or only measures (report) [default: set in a
        /// VM, report in a sandbox, which shares the host's clock].
        #[arg(long, value_name = "MODE", value_parser = ["set", "report"])]
        time: Option<String>,
        /// Where the key-value pools live (DIR/host: the host's, DIR/guest: the guest's).
        #[arg(long, value_name = "DIR", default_value = KVP_DIR)]
        kvp_dir: PathBuf,
        /// Most connections served at once.
        #[arg(long, value_name = "N", default_value_t = 64,
              value_parser = clap::value_parser!(u32).range(1..=4096))]
        max_sessions: u32,
        /// Log more (-v: debug).
        #[arg(short, long, action = clap::ArgAction::Count)]
        verbose: u8,
        #[command(subcommand)]
        command: Option<Command>,
    }

    #[derive(Debug, Subcommand)]
    enum Command {
        /// Read or change the key-value pools in this guest.
        Kvp {
            /// Where the pools live.
            #[arg(long, value_name = "DIR", default_value = KVP_DIR)]
            dir: PathBuf,
            #[command(subcommand)]
            action: hvsock_agent::kvp_files::Action,
        },
    }

    pub fn main() -> ExitCode {
        let args = Args::parse();
        if let Some(Command::Kvp { dir, action }) = args.command {
            return match hvsock_agent::kvp_files::run(&dir, action, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hvsock-agent kvp: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        let level = if args.verbose > 0 { "debug" } else { "info" };
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
            )
            .with_writer(std::io::stderr)
            .init();
        let fail = |m: String| {
            eprintln!("hvsock-agent: {m}");
            ExitCode::FAILURE
        };
        let transport = match Transport::from_env() {
            Ok(t) => t,
            Err(e) => return fail(format!("choosing the transport: {e}")),
        };
        let services = match agent::services(&args.disable) {
            Ok(s) => s,
            Err(e) => return fail(format!("--disable: {e}")),
        };
        let commands = args.poweroff_command.is_some() || args.reboot_command.is_some();
        let shutdown = match args.shutdown.as_deref() {
            Some("init") => Action::Init,
            Some("exit") => Action::Exit,
            Some("none") => Action::Refuse,
            Some("command") | None if commands => {
                let (Some(poweroff), Some(reboot)) = (args.poweroff_command, args.reboot_command)
                else {
                    return fail(
                        "--shutdown command needs both --poweroff-command and --reboot-command"
                            .into(),
                    );
                };
                Action::Command { poweroff, reboot }
            }
            Some(_) => {
                return fail(
                    "--shutdown command needs --poweroff-command and --reboot-command".into(),
                );
            }
            None => agent::default_shutdown(&transport),
        };
        let time = match args.time.as_deref() {
            Some("set") => TimeMode::Set,
            Some(_) => TimeMode::Report,
            None => agent::default_time_mode(&transport),
        };
        tracing::info!(
            "hvsock-agent {} starting ({transport:?}; shutdown: {shutdown:?}; time: {time:?})",
            env!("CARGO_PKG_VERSION")
        );
        let config = Config {
            transport,
            services,
            shutdown,
            time,
            kvp_dir: args.kvp_dir,
            max_sessions: args.max_sessions as usize,
        };
        match agent::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e.to_string()),
        }
    }
}
