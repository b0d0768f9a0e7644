//! `hvsock kvp list|get|set|delete VM [KEY [VALUE]]`: the key-value exchange, through hvsockd's
//! admin API (`/v1/partitions/{VM}/kvp`).
//!
//! Two pools per partition: the **host** pool, which the host sets (`set`, `delete`; kept in
//! hvsockd's registry, so across restarts and while the guest is down) and the guest's agent
//! reads (`hvsock-agent kvp get --pool host KEY`, files under `/run/hvsock-agent/kvp/host/`);
//! and the **guest** pool, which the agent fills (`hostname`, `os`, `kernel`, `agent`, plus
//! what guest programs add) and the host reads. `list` shows both unless `--pool` is given;
//! `get` reads the host pool unless `--pool guest`. When no agent is connected, the guest
//! pool is what the last one sent, and a note on stderr says so.
//!
//! `list` prints a table (`POOL KEY VALUE`), `get` the value alone, `set` and `delete` one line
//! saying what they did; `--json` prints the API's objects. `set VM KEY -` reads the value from
//! stdin (as is, trailing newline included).

use std::io::{Read, Write};

use clap::{Args, Subcommand, ValueEnum};

use super::{Run, admin};
use crate::api::{GuestKvp, KvpPoolName};
use crate::context::Context;
use crate::error::{CliError, Doing};
use crate::output::{Table, timestamp, write_json};

/// `--pool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolArg {
    /// The host's pool: set on the host, read in the guest.
    Host,
    /// The guest's pool: filled by the agent and guest programs, read on the host.
    Guest,
}

impl From<PoolArg> for KvpPoolName {
    fn from(p: PoolArg) -> KvpPoolName {
        match p {
            PoolArg::Host => KvpPoolName::Host,
            PoolArg::Guest => KvpPoolName::Guest,
        }
    }
}

/// `hvsock kvp …`.
#[derive(Debug, Subcommand)]
pub enum KvpCommand {
    /// List the pairs of VM's pools (both, unless --pool).
    List(ListArgs),
    /// Print the value of KEY (from the host pool, unless --pool guest).
    Get(GetArgs),
    /// Set KEY to VALUE in VM's host pool (kept in hvsockd's registry); a connected agent
    /// gets it at once, another when it connects.
    ///
    /// Keys: 1 to 512 bytes of letters, digits, `.`, `_`, `-`, `:`, not starting with `.`;
    /// values: at most 2048 bytes of UTF-8; at most 1024 keys per VM.
    Set(SetArgs),
    /// Delete KEY from VM's host pool (and from the guest's copy).
    Delete(DeleteArgs),
}

/// `hvsock kvp list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Only this pool.
    #[arg(long, value_enum)]
    pub pool: Option<PoolArg>,
    /// Print the admin API's JSON object (both pools) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `hvsock kvp get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// The key.
    #[arg(value_name = "KEY")]
    pub key: String,
    /// The pool to read.
    #[arg(long, value_enum, default_value = "host")]
    pub pool: PoolArg,
    /// Print the admin API's JSON object instead of the value.
    #[arg(long)]
    pub json: bool,
}

/// `hvsock kvp set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// The key.
    #[arg(value_name = "KEY")]
    pub key: String,
    /// The value (`-`: read it from stdin).
    #[arg(value_name = "VALUE", allow_hyphen_values = true)]
    pub value: String,
    /// Print the admin API's JSON object instead of a line.
    #[arg(long)]
    pub json: bool,
}

/// `hvsock kvp delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The partition: a name or a VmId.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// The key.
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Exit 0 (with a note on stderr) if the key is not there, so that scripts can rerun.
    #[arg(long)]
    pub if_exists: bool,
}

impl Run for KvpCommand {
    fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        if cfg!(windows) {
            return Err(CliError::unsupported(
                "`hvsock kvp`",
                "it talks to hvsockd's admin API, and there is no hvsockd on Windows",
            ));
        }
        match self {
            KvpCommand::List(args) => list(ctx, args, out),
            KvpCommand::Get(args) => get(ctx, args, out),
            KvpCommand::Set(args) => set(ctx, args, out),
            KvpCommand::Delete(args) => delete(ctx, args, out),
        }
    }
}

/// The note on stderr when the guest pool is not live.
fn stale_note(vm: &str, guest: &GuestKvp) {
    if guest.connected {
        return;
    }
    let note = match guest.updated_at {
        Some(t) => format!(
            "hvsock: no agent of {vm:?} is connected: the guest pool is what it sent last, at {}",
            timestamp(t)
        ),
        None => {
            format!(
                "hvsock: no agent of {vm:?} has connected since hvsockd started: the guest pool is empty"
            )
        }
    };
    let _ = writeln!(std::io::stderr(), "{note}");
}

fn list(ctx: &Context, args: ListArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("listing the key-value pairs of {:?}", args.vm);
    let reply = admin(ctx, doing)?.kvp(&args.vm).doing(doing)?;
    if args.pool != Some(PoolArg::Host) {
        stale_note(&args.vm, &reply.value.guest);
    }
    if args.json {
        return Ok(write_json(out, &reply.json)?);
    }
    let mut table = Table::new(["POOL", "KEY", "VALUE"]);
    if args.pool != Some(PoolArg::Guest) {
        for (k, v) in &reply.value.host {
            table.row(["host", k.as_str(), v.as_str()]);
        }
    }
    if args.pool != Some(PoolArg::Host) {
        for (k, v) in &reply.value.guest.pairs {
            table.row(["guest", k.as_str(), v.as_str()]);
        }
    }
    Ok(table.write_to(out)?)
}

fn get(ctx: &Context, args: GetArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let pool = KvpPoolName::from(args.pool);
    let doing = || {
        format!(
            "reading {:?} from the {pool} pool of {:?}",
            args.key, args.vm
        )
    };
    let reply = admin(ctx, doing)?
        .kvp_get(&args.vm, &args.key, pool)
        .doing(doing)?;
    if reply.value.connected == Some(false) {
        let _ = writeln!(
            std::io::stderr(),
            "hvsock: no agent of {:?} is connected: this is the value it sent last",
            args.vm
        );
    }
    if args.json {
        return Ok(write_json(out, &reply.json)?);
    }
    Ok(writeln!(out, "{}", reply.value.value)?)
}

fn set(ctx: &Context, args: SetArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let value = if args.value == "-" {
        let mut value = String::new();
        std::io::stdin()
            .read_to_string(&mut value)
            .map_err(|source| CliError::File {
                doing: "reading the value from",
                path: "stdin".into(),
                source,
            })?;
        value
    } else {
        args.value
    };
    let doing = || format!("setting {:?} in the host pool of {:?}", args.key, args.vm);
    let reply = admin(ctx, doing)?
        .kvp_set(&args.vm, &args.key, &value)
        .doing(doing)?;
    if args.json {
        return Ok(write_json(out, &reply.json)?);
    }
    Ok(writeln!(
        out,
        "set {} in the host pool of {} ({} bytes)",
        reply.value.key,
        reply.value.partition.name,
        reply.value.value.len()
    )?)
}

fn delete(ctx: &Context, args: DeleteArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || {
        format!(
            "deleting {:?} from the host pool of {:?}",
            args.key, args.vm
        )
    };
    let client = admin(ctx, doing)?;
    match client.kvp_delete(&args.vm, &args.key) {
        Ok(()) => Ok(writeln!(
            out,
            "deleted {} from the host pool of {}",
            args.key, args.vm
        )?),
        // A missing VM is 404 too: only a missing key (of a VM that exists) is forgiven.
        Err(e) if args.if_exists && e.is_not_found() && client.partition(&args.vm).is_ok() => {
            let _ = writeln!(std::io::stderr(), "hvsock: {e}; nothing to delete");
            Ok(())
        }
        Err(e) => Err(e).doing(doing),
    }
}
