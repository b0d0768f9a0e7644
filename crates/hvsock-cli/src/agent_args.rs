//! The command line of the integration-service commands (`exec`, `shell`, `cp`, `vm shutdown`,
//! `ssh-proxy`), beside [`crate::cli`] which names them; their code is under [`crate::cmd`].

use clap::Args;

/// `hvsock exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Run it on a pseudo-terminal (interactive programs, Ctrl-C as a key, window size).
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable for it; repeatable.
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Its working directory [default: the user's home].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// The guest user to run it as [default: the agent's, root].
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// The command and its arguments.
    #[arg(value_name = "CMD", last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

/// `hvsock shell`.
#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// The guest user whose login shell to run [default: the agent's, root].
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not K=V")),
    }
}

/// `hvsock cp`.
#[derive(Debug, Args)]
pub struct CpArgs {
    /// Copy directories and what they hold.
    #[arg(short, long)]
    pub recursive: bool,
    /// Say what was copied.
    #[arg(short, long)]
    pub verbose: bool,
    /// The source: a local path, or VM:/path in a guest.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// The destination: a local path, or VM:/path in a guest.
    #[arg(value_name = "DST")]
    pub dst: String,
}

/// `hvsock vm shutdown`.
#[derive(Debug, Args)]
pub struct ShutdownArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Reboot instead of powering off.
    #[arg(long)]
    pub reboot: bool,
    /// Do not stop services cleanly: systemd kills them, other inits reboot(2) at once.
    #[arg(long)]
    pub force: bool,
    /// How long to wait for the guest to go, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
}

/// `hvsock ssh-proxy`.
#[derive(Debug, Args)]
pub struct SshProxyArgs {
    /// `hvsock/VM` (ssh's %h) or a partition's name or VmId.
    #[arg(value_name = "HOST")]
    pub host: String,
    /// The vsock port (ssh's %p).
    #[arg(value_name = "PORT", default_value_t = 22)]
    pub port: u32,
    /// How long to wait for the connection, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=300_000))]
    pub timeout: u64,
}
