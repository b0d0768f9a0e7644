//! `hvsock vm …`: the partitions, through the admin API.
//!
//! `add` prints the VmId alone; `list` and `children` are tables (`list` has the root, `host`,
//! first), `show` `key: value` lines, all `--json` for the API's objects; `remove` and `rename`
//! print one line saying what they did. `remove --if-exists` exits 0 with a note on stderr when
//! there is nothing to remove.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use hvsock::VmId;
use serde_json::json;

use super::{Run, admin};
use crate::api::{Guest, NewPartition, Partition};
use crate::args::{JsonFlag, RemoveArgs, ShowArgs, parse_partition_name, parse_vm_id};
use crate::context::Context;
use crate::error::{CliError, Doing};
use crate::output::{Fields, Table, or_dash, timestamp, write_json};

/// `hvsock vm …`.
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Add a sandbox partition, or a VM with --hybrid-vsock, and print its VmId.
    ///
    /// A sandbox: hvsockd opens its endpoint socket at DIR/partitions/VMID/endpoint.sock.
    /// Bind-mount the directory DIR/partitions/VMID into the sandbox (read-only is fine, e.g.
    /// at /run/hvsock, where the library finds endpoint.sock by itself): a mounted directory
    /// keeps working across restarts of hvsockd, a mounted socket file does not. The old path
    /// DIR/partitions/VMID.sock is a link to the new one.
    ///
    /// A VM (--hybrid-vsock PATH): PATH is the Unix socket its VMM serves for the guest's
    /// vsock device (Firecracker `uds_path`, Cloud Hypervisor `--vsock socket=PATH`,
    /// vhost-device-vsock `--uds-path PATH`); its directory must exist. hvsockd connects into
    /// the guest through PATH, and listens on PATH_N while a host listener the guest may
    /// reach exists for port N. Only vsock-template services (`hvsock service add NAME
    /// --port N`) cross into or out of a guest: a guest has ports, not GUIDs. The VM's
    /// identity is the attachment; nothing the guest says changes it.
    ///
    /// Adding the same name and VmId again succeeds and changes nothing.
    Add {
        /// Its name.
        #[arg(value_parser = parse_partition_name)]
        name: String,
        /// Its VmId (a random one if not given).
        #[arg(long, value_name = "GUID", value_parser = parse_vm_id)]
        id: Option<VmId>,
        /// Its parent partition (default: the root, `host`).
        #[arg(long, value_name = "ID|NAME")]
        parent: Option<String>,
        /// Attach a VM through its VMM's hybrid-vsock socket PATH (made absolute here).
        #[arg(long, value_name = "PATH")]
        hybrid_vsock: Option<PathBuf>,
    },
    /// List the partitions, the root first.
    List(JsonFlag),
    /// Show one partition.
    Show(ShowArgs),
    /// Remove a partition (it must have no children), its endpoint and its listeners.
    Remove(RemoveArgs),
    /// Give a partition a new name (not the root, `host`).
    Rename(VmRenameArgs),
    /// List a partition's direct children.
    Children(ShowArgs),
    /// Shut a guest down cleanly through its init (its hvsock-agent), and wait until it has
    /// gone.
    Shutdown(super::vm_shutdown::ShutdownArgs),
}

/// `hvsock vm rename ID|NAME NEW`.
#[derive(Debug, Args)]
pub struct VmRenameArgs {
    /// The VmId or the current name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// The new name.
    #[arg(value_name = "NEW", value_parser = parse_partition_name)]
    pub name: String,
}

impl Run for VmCommand {
    fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        if cfg!(windows) {
            return Err(CliError::unsupported(
                "`hvsock vm`",
                "it manages hvsockd's partitions; on Windows VMs are Hyper-V's (Hyper-V Manager, \
                 or PowerShell: Get-VM; a VM's VmId is (Get-VM NAME).Id)",
            ));
        }
        run(ctx, self, out)
    }
}

/// Runs one `vm` command through hvsockd's admin API.
pub fn run(ctx: &Context, cmd: VmCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        VmCommand::Add {
            name,
            id,
            parent,
            hybrid_vsock,
        } => add(ctx, name, id, parent, hybrid_vsock, out),
        VmCommand::List(flag) => list(ctx, flag.json, out),
        VmCommand::Show(args) => show(ctx, &args.key, args.json, out),
        VmCommand::Remove(arg) => remove(ctx, &arg.key, arg.if_exists, out),
        VmCommand::Rename(arg) => rename(ctx, &arg.key, &arg.name, out),
        VmCommand::Children(args) => children(ctx, &args.key, args.json, out),
        VmCommand::Shutdown(args) => super::vm_shutdown::run(ctx, args, out),
    }
}

/// A partition for people: `name (VmId)`.
pub fn label(p: &Partition) -> String {
    format!("{} ({})", p.name, p.id)
}

fn add(
    ctx: &Context,
    name: String,
    id: Option<VmId>,
    parent: Option<String>,
    hybrid_vsock: Option<PathBuf>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let doing = || format!("adding partition {name:?}");
    // hvsockd wants an absolute path; a relative one means from here, as for any command.
    let hybrid_vsock = hybrid_vsock
        .map(|p| std::path::absolute(&p))
        .transpose()
        .map_err(|source| CliError::Socket {
            doing: "resolving the --hybrid-vsock path".to_owned(),
            source,
        })?;
    let api = admin(ctx, doing)?;
    let new = NewPartition {
        name: name.clone(),
        id,
        parent,
        hybrid_vsock,
    };
    let reply = api.add_partition(&new).doing(doing)?;
    writeln!(out, "{}", reply.value.id)?;
    Ok(())
}

fn list(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || "listing partitions".to_owned();
    let reply = admin(ctx, doing)?.partitions().doing(doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    Ok(table(&reply.value).write_to(out)?)
}

fn children(ctx: &Context, key: &str, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("listing the children of partition {key:?}");
    let reply = admin(ctx, doing)?.children(key).doing(doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    Ok(table(&reply.value).write_to(out)?)
}

fn table(partitions: &[Partition]) -> Table {
    let mut table = Table::new([
        "NAME",
        "ID",
        "KIND",
        "PARENT",
        "SESSIONS",
        "LISTENERS",
        "GUEST",
    ]);
    for p in partitions {
        let parent = p
            .parent_name
            .clone()
            .or_else(|| p.parent.map(|id| id.to_string()));
        table.row([
            p.name.clone(),
            p.id.to_string(),
            p.kind.to_string(),
            or_dash(parent),
            p.sessions.to_string(),
            p.listeners.to_string(),
            guest_cell(p.guest.as_ref()),
        ]);
    }
    table
}

/// A guest's state and the age of its last heartbeat: `ok 1s`, `lost 2m`, `no_contact`; `-`
/// for the root.
fn guest_cell(guest: Option<&Guest>) -> String {
    match guest {
        None => "-".to_owned(),
        Some(g) => match g.heartbeat_age_ms {
            Some(ms) => format!("{} {}", g.state.as_str(), age(ms)),
            None => g.state.as_str().to_owned(),
        },
    }
}

/// A short age: `3s`, `5m`, `2h`, `4d`.
fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// An offset in nanoseconds, in the unit that reads best: `+1.234 ms`, `-2.5 s`.
fn offset(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "+" };
    let abs = ns.unsigned_abs() as f64;
    if abs >= 1e9 {
        format!("{sign}{:.3} s", abs / 1e9)
    } else if abs >= 1e6 {
        format!("{sign}{:.3} ms", abs / 1e6)
    } else {
        format!("{sign}{:.1} µs", abs / 1e3)
    }
}

fn show(ctx: &Context, key: &str, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("showing partition {key:?}");
    let reply = admin(ctx, doing)?.partition(key).doing(doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    let p = &reply.value;
    let parent = match (&p.parent_name, p.parent) {
        (Some(name), Some(id)) => Some(format!("{name} ({id})")),
        (None, Some(id)) => Some(id.to_string()),
        _ => None,
    };
    let children = (!p.children.is_empty()).then(|| p.children.join(", "));
    let mut fields = Fields::new();
    fields
        .field("name", &p.name)
        .field("id", p.id)
        .field("kind", p.kind)
        .field("parent", or_dash(parent))
        .field("children", or_dash(children))
        .field(
            "endpoint",
            or_dash(p.endpoint.as_ref().map(|e| e.display())),
        )
        .field("mount", or_dash(mount_dir(p.endpoint.as_deref())))
        .field(
            "hybrid_vsock",
            or_dash(p.hybrid_vsock.as_ref().map(|e| e.display())),
        )
        .field(
            "guest_ports",
            or_dash((!p.guest_ports.is_empty()).then(|| {
                p.guest_ports
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            })),
        )
        .field("sessions", p.sessions)
        .field("listeners", p.listeners)
        .field("created", timestamp(p.created_at));
    if let Some(g) = &p.guest {
        let heartbeat = match (g.last_heartbeat, g.heartbeat_age_ms) {
            (Some(at), Some(ms)) => Some(format!("{} ({} ago)", timestamp(at), age(ms))),
            _ => None,
        };
        let time = g.time_offset_ns.map(|ns| {
            let mut text = if ns < 0 {
                format!("{} ahead of the host", offset(ns).trim_start_matches('-'))
            } else {
                format!("{} behind the host", offset(ns).trim_start_matches('+'))
            };
            if let Some(d) = g.time_delay_ns {
                text.push_str(&format!(
                    ", round trip {}",
                    offset(d).trim_start_matches('+')
                ));
            }
            if g.time_stepped == Some(true) {
                text.push_str(", clock stepped");
            }
            if let Some(at) = g.time_reported_at {
                text.push_str(&format!(", at {}", timestamp(at)));
            }
            text
        });
        fields
            .field("guest", g.state.as_str())
            .field("heartbeat", or_dash(heartbeat))
            .field("agent", or_dash(g.agent.as_deref()))
            .field("os", or_dash(g.os.as_deref()))
            .field("kernel", or_dash(g.kernel.as_deref()))
            .field("hostname", or_dash(g.hostname.as_deref()))
            .field("time_offset", or_dash(time));
    }
    Ok(fields.write_to(out)?)
}

/// The directory to bind-mount into a sandbox: its endpoint's, when the endpoint is a
/// partition directory's `endpoint.sock` (the root's `host.sock` is not).
fn mount_dir(endpoint: Option<&std::path::Path>) -> Option<std::path::Display<'_>> {
    let endpoint = endpoint?;
    (endpoint.file_name()? == hvsock::dirs::ENDPOINT_FILE)
        .then(|| endpoint.parent().map(|dir| dir.display()))
        .flatten()
}

fn remove(ctx: &Context, key: &str, if_exists: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("removing partition {key:?}");
    let api = admin(ctx, doing)?;
    let partition = match api.partition(key) {
        Ok(reply) => reply.value,
        Err(e) if if_exists && e.is_not_found() => {
            let _ = writeln!(
                std::io::stderr(),
                "hvsock: partition {key:?} does not exist; nothing to remove"
            );
            return Ok(());
        }
        Err(e) => return Err(e).doing(doing),
    };
    match api.remove_partition(&partition.id.to_string()) {
        Ok(()) => {}
        Err(e) if if_exists && e.is_not_found() => {}
        Err(e) => return Err(e).doing(doing),
    }
    writeln!(out, "partition {} removed", label(&partition))?;
    Ok(())
}

fn rename(ctx: &Context, key: &str, name: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("renaming partition {key:?} to {name:?}");
    let api = admin(ctx, doing)?;
    let reply = api
        .patch_partition(key, &json!({ "name": name }))
        .doing(doing)?;
    writeln!(
        out,
        "partition {} is now named {:?}",
        reply.value.id, reply.value.name
    )?;
    Ok(())
}
