//! `hvsock vm shutdown VM [--reboot] [--force] [--timeout SECS]`: a clean power-off or reboot
//! through the guest's init, by its agent's shutdown service (`hvsock_agent::shutdown`);
//! returns once the guest has gone (its agent's connection ended), or fails after the timeout.

use std::io::Write;
use std::time::Duration;

use crate::agent_args::ShutdownArgs;
use hvsock_agent::services::SHUTDOWN;
use hvsock_agent::shutdown::{self, Power, Request, ShutdownError};

use super::CliError;
use crate::context::Context;

/// Runs `vm shutdown`.
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
