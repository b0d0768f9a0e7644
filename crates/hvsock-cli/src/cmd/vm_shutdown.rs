//! `hvsock vm shutdown VM [--reboot] [--force] [--timeout SECS]`: a clean power-off or reboot
//! through the guest's init, by its agent's shutdown service (`hvsock_agent::shutdown`);
//! returns once the guest has gone (its agent's connection ended), or fails after the timeout.

use std::io::Write;
#[cfg(target_os = "linux")]
use std::time::Duration;

use clap::Args;
#[cfg(target_os = "linux")]
use hvsock_agent::services::SHUTDOWN;
#[cfg(target_os = "linux")]
use hvsock_agent::shutdown::{self, Power, Request, ShutdownError};

use crate::context::Context;
use crate::error::CliError;

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

/// Runs `vm shutdown`.
#[cfg(not(target_os = "linux"))]
pub fn run(_ctx: &Context, _args: ShutdownArgs, _out: &mut dyn Write) -> Result<(), CliError> {
    Err(CliError::unsupported(
        "`hvsock vm shutdown`",
        "the integration services' clients (hvsock-agent's protocols) are built for Linux only",
    ))
}

/// Runs `vm shutdown`.
#[cfg(target_os = "linux")]
pub fn run(ctx: &Context, args: ShutdownArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let stream = super::agent::connect(ctx, &args.vm, SHUTDOWN)?;
    let request = Request {
        action: if args.reboot {
            Power::Reboot
        } else {
            Power::Poweroff
        },
        force: args.force,
    };
    let verb = if args.reboot {
        "rebooting"
    } else {
        "shutting down"
    };
    let gone =
        shutdown::request(&stream, request, Duration::from_secs(args.timeout)).map_err(|e| {
            let kind = match e {
                ShutdownError::StillUp { .. } => std::io::ErrorKind::TimedOut,
                ShutdownError::Wire(_) => std::io::ErrorKind::Other,
            };
            CliError::Socket {
                doing: format!("{verb} {}", args.vm),
                source: std::io::Error::new(kind, e.to_string()),
            }
        })?;
    writeln!(
        out,
        "{}: {} ({}); gone after {:.1} s",
        args.vm,
        if args.reboot {
            "rebooting"
        } else {
            "powered off"
        },
        gone.how,
        gone.after.as_secs_f64()
    )?;
    Ok(())
}
