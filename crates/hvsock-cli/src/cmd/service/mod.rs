//! `hvsock service …`: the registry's services, through the admin API.
//!
//! `add` prints the GUID alone (for `id=$(hvsock service add echo --port 2761)`); `list` is a
//! table, `show` `key: value` lines, both `--json` for the API's objects; `enable`, `disable`,
//! `rename` and `remove` print one line saying what they did; `policy` shows the policy, after
//! changing it when given flags. An `ID` may also be a decimal vsock port, which stands for its
//! template GUID. `remove --if-exists` exits 0 with a note on stderr when there is nothing to
//! remove, so that scripts can rerun.
//!
//! On Windows there is no hvsockd: `hyperv` runs `add|list|show|remove` against the Hyper-V
//! host's own registry of services, and the rest say why they mean nothing there.

pub mod access;
#[cfg(any(windows, test))]
pub mod hyperv;

use std::io::Write;

use clap::{Args, Subcommand};
use hvsock::{ServiceId, ServiceSpec};
use serde_json::{Value, json};

use super::{Run, admin};
use crate::admin_client::AdminClient;
use crate::api::{NewService, Policy, Service};
use crate::args::{JsonFlag, KeyArg, RemoveArgs, ShowArgs, parse_service_id, parse_service_name};
use crate::context::Context;
use crate::error::{CliError, Doing};
use crate::output::{Fields, Table, or_dash, timestamp, write_json, yes_no};

/// `hvsock service …`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Register a service and print its GUID.
    ///
    /// The GUID is random unless --id or --port is given. Adding the same name and GUID again
    /// succeeds and changes nothing.
    Add {
        /// Its friendly name.
        #[arg(value_parser = parse_service_name)]
        name: String,
        /// Its GUID.
        #[arg(long, value_name = "GUID", value_parser = parse_service_id, conflicts_with = "port")]
        id: Option<ServiceId>,
        /// A vsock port: the service gets that port's template GUID (reachable from Linux
        /// guests).
        #[arg(long, value_name = "N")]
        port: Option<u32>,
        /// Register it disabled: nothing may reach it across a partition boundary until
        /// `hvsock service enable`.
        #[arg(long)]
        disabled: bool,
    },
    /// List the registered services.
    List(JsonFlag),
    /// Show one service (ID may also be its vsock port).
    Show(ShowArgs),
    /// Let connections across partitions reach a service.
    Enable(KeyArg),
    /// Refuse connections across partitions to a service (loopback still works).
    Disable(KeyArg),
    /// Unregister a service.
    Remove(RemoveArgs),
    /// Give a service a new friendly name (counters and listings show it at once).
    Rename(RenameArgs),
    /// Show a service's policy, or change it with the flags.
    ///
    /// The policy says which partitions may connect to the service across a partition
    /// boundary (--connect), which may bind it (--bind), and whether it may be bound with the
    /// wildcard (--wildcard-bind). Lists are partition names or ids, comma-separated; an empty
    /// list allows none. Flags not given leave their rule as it is. Loopback is never
    /// restricted.
    Policy(PolicyArgs),
    /// Show which host users may connect to a service through host.sock, or change it.
    ///
    /// A service without rules allows whoever may open host.sock (root and the hvsock group).
    /// With rules, root and the users and groups' members given; --root-only leaves root alone
    /// (the default of hvsock-session, hvsock-files and hvsock-shutdown); --anyone drops the
    /// rules. Connects from sandboxes and guests are not host users and are never subject to
    /// them.
    Access(access::AccessArgs),
}

/// `hvsock service rename ID|NAME NEW`.
#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The GUID, the current name or the vsock port.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// The new name.
    #[arg(value_name = "NEW", value_parser = parse_service_name)]
    pub name: String,
}

/// `hvsock service policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The service: GUID, name or vsock port.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// Only these partitions may connect across a boundary (comma-separated names or ids;
    /// empty: none).
    #[arg(long, value_name = "LIST", conflicts_with = "connect_any")]
    pub connect: Option<String>,
    /// Any partition may connect.
    #[arg(long)]
    pub connect_any: bool,
    /// Only listeners in these partitions may serve it (comma-separated; empty: none).
    #[arg(long, value_name = "LIST", conflicts_with = "bind_any")]
    pub bind: Option<String>,
    /// Listeners in any partition may serve it.
    #[arg(long)]
    pub bind_any: bool,
    /// Whether it may be bound with the wildcard (zero) pattern.
    #[arg(long, value_name = "yes|no", value_parser = parse_yes_no)]
    pub wildcard_bind: Option<bool>,
    /// Drop the service's own policy, so that hvsockd's default policy applies.
    #[arg(long, conflicts_with_all = ["connect", "connect_any", "bind", "bind_any", "wildcard_bind"])]
    pub default: bool,
    /// Print the service as the API's JSON.
    #[arg(long)]
    pub json: bool,
}

impl PolicyArgs {
    /// Whether any flag asks for a change.
    pub fn changes(&self) -> bool {
        self.connect.is_some()
            || self.connect_any
            || self.bind.is_some()
            || self.bind_any
            || self.wildcard_bind.is_some()
            || self.default
    }
}

fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Ok(true),
        "no" | "false" | "off" | "0" => Ok(false),
        _ => Err(format!("{s:?} is neither yes nor no")),
    }
}

/// A comma-separated list of partitions; empty items are dropped, so `""` is the empty list.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Run for ServiceCommand {
    fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        #[cfg(windows)]
        {
            let _ = ctx;
            hyperv::run(self, out)
        }
        #[cfg(not(windows))]
        run(ctx, self, out)
    }
}

/// Runs one `service` command through hvsockd's admin API.
pub fn run(ctx: &Context, cmd: ServiceCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        ServiceCommand::Add {
            name,
            id,
            port,
            disabled,
        } => add(ctx, name, id, port, !disabled, out),
        ServiceCommand::List(flag) => list(ctx, flag.json, out),
        ServiceCommand::Show(args) => show(ctx, &args.key, args.json, out),
        ServiceCommand::Enable(arg) => switch(ctx, &arg.key, true, out),
        ServiceCommand::Disable(arg) => switch(ctx, &arg.key, false, out),
        ServiceCommand::Remove(arg) => remove(ctx, &arg.key, arg.if_exists, out),
        ServiceCommand::Rename(arg) => rename(ctx, &arg.key, &arg.name, out),
        ServiceCommand::Policy(args) => policy(ctx, args, out),
        ServiceCommand::Access(args) => access::run(ctx, args, out),
    }
}

/// A policy list for people: `any`, `none` or the names.
pub fn policy_list(list: &Option<Vec<crate::api::PartitionRef>>) -> String {
    match list {
        None => "any".to_owned(),
        Some(l) if l.is_empty() => "none".to_owned(),
        Some(l) => l
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn policy_fields(fields: &mut Fields, s: &Service) {
    let source = match (&s.policy, &s.effective_policy) {
        (Some(_), _) => "its own",
        (None, Some(_)) => "default",
        (None, None) => "-",
    };
    fields.field("policy", source);
    if let Some(p) = s.policy.as_ref().or(s.effective_policy.as_ref()) {
        write_policy(fields, p);
    }
}

fn write_policy(fields: &mut Fields, p: &Policy) {
    fields
        .field("connect", policy_list(&p.connect))
        .field("bind", policy_list(&p.bind))
        .field("wildcard", yes_no(p.wildcard_bind));
}

/// The API key of a service as typed: a decimal port stands for its template GUID (no
/// service name is all digits).
pub fn service_key(key: &str) -> String {
    let key = key.trim();
    match ServiceSpec::parse(key) {
        Ok(ServiceSpec::Port(port)) => ServiceId::from_vsock_port(port).to_string(),
        _ => key.to_owned(),
    }
}

/// A service for people: `name (GUID)`.
pub fn label(service: &Service) -> String {
    format!("{} ({})", service.name, service.id)
}

fn add(
    ctx: &Context,
    name: String,
    id: Option<ServiceId>,
    port: Option<u32>,
    enabled: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let doing = || format!("adding service {name:?}");
    let api = admin(ctx, doing)?;
    let new = NewService {
        name: name.clone(),
        id,
        port,
        enabled,
    };
    let reply = api.add_service(&new).doing(doing)?;
    writeln!(out, "{}", reply.value.id)?;
    if reply.value.enabled != enabled {
        // The same service was there already; add changes nothing.
        let state = if reply.value.enabled {
            "enabled"
        } else {
            "disabled"
        };
        let verb = if reply.value.enabled {
            "disable"
        } else {
            "enable"
        };
        let _ = writeln!(
            std::io::stderr(),
            "hvsock: service {name:?} was already registered and stays {state}; use `hvsock service {verb} {name}` to change that"
        );
    }
    Ok(())
}

fn list(ctx: &Context, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || "listing services".to_owned();
    let reply = admin(ctx, doing)?.services().doing(doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    let mut table = Table::new(["NAME", "ID", "ENABLED", "PORT", "LISTENERS"]);
    for s in &reply.value {
        table.row([
            s.name.clone(),
            s.id.to_string(),
            yes_no(s.enabled).to_owned(),
            or_dash(s.vsock_port),
            s.listeners.to_string(),
        ]);
    }
    Ok(table.write_to(out)?)
}

fn fetch(
    api: &AdminClient,
    key: &str,
    doing: impl Fn() -> String,
) -> Result<crate::admin_client::Reply<Service>, CliError> {
    api.service(&service_key(key)).doing(doing)
}

fn show(ctx: &Context, key: &str, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("showing service {key:?}");
    let reply = fetch(admin(ctx, doing)?, key, doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    let s = &reply.value;
    let mut fields = Fields::new();
    fields
        .field("name", &s.name)
        .field("id", s.id)
        .field("enabled", yes_no(s.enabled))
        .field("vsock_port", or_dash(s.vsock_port))
        .field("listeners", s.listeners)
        .field("created", timestamp(s.created_at))
        .field("host users", access::describe(s));
    policy_fields(&mut fields, s);
    Ok(fields.write_to(out)?)
}

fn switch(ctx: &Context, key: &str, enabled: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let verb = if enabled { "enabling" } else { "disabling" };
    let doing = || format!("{verb} service {key:?}");
    let api = admin(ctx, doing)?;
    let reply = api
        .set_service_enabled(&service_key(key), enabled)
        .doing(doing)?;
    let state = if reply.value.enabled {
        "enabled"
    } else {
        "disabled"
    };
    writeln!(out, "service {} is {state}", label(&reply.value))?;
    Ok(())
}

fn remove(ctx: &Context, key: &str, if_exists: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("removing service {key:?}");
    let api = admin(ctx, doing)?;
    let service = match api.service(&service_key(key)) {
        Ok(reply) => reply.value,
        Err(e) if if_exists && e.is_not_found() => {
            let _ = writeln!(
                std::io::stderr(),
                "hvsock: service {key:?} is not registered; nothing to remove"
            );
            return Ok(());
        }
        Err(e) => return Err(e).doing(doing),
    };
    match api.remove_service(&service.id.to_string()) {
        Ok(()) => {}
        // Removed by someone else meanwhile: what was asked is done.
        Err(e) if if_exists && e.is_not_found() => {}
        Err(e) => return Err(e).doing(doing),
    }
    writeln!(out, "service {} removed", label(&service))?;
    Ok(())
}

fn rename(ctx: &Context, key: &str, name: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("renaming service {key:?} to {name:?}");
    let api = admin(ctx, doing)?;
    let reply = api
        .patch_service(&service_key(key), &json!({ "name": name }))
        .doing(doing)?;
    writeln!(
        out,
        "service {} is now named {:?}",
        reply.value.id, reply.value.name
    )?;
    Ok(())
}

/// The `policy` member of a `PATCH`, from the flags (JSON merge patch).
fn policy_patch(args: &PolicyArgs) -> Value {
    if args.default {
        return Value::Null;
    }
    let mut patch = serde_json::Map::new();
    if let Some(list) = &args.connect {
        patch.insert("connect".into(), json!(split_list(list)));
    }
    if args.connect_any {
        patch.insert("connect".into(), Value::Null);
    }
    if let Some(list) = &args.bind {
        patch.insert("bind".into(), json!(split_list(list)));
    }
    if args.bind_any {
        patch.insert("bind".into(), Value::Null);
    }
    if let Some(yes) = args.wildcard_bind {
        patch.insert("wildcard_bind".into(), json!(yes));
    }
    Value::Object(patch)
}

fn policy(ctx: &Context, args: PolicyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let key = args.key.as_str();
    let changing = args.changes();
    let doing = || {
        if changing {
            format!("changing the policy of service {key:?}")
        } else {
            format!("showing the policy of service {key:?}")
        }
    };
    let api = admin(ctx, doing)?;
    let reply = if changing {
        api.patch_service(&service_key(key), &json!({ "policy": policy_patch(&args) }))
            .doing(doing)?
    } else {
        fetch(api, key, doing)?
    };
    if args.json {
        return Ok(write_json(out, &reply.json)?);
    }
    let s = &reply.value;
    let mut fields = Fields::new();
    fields.field("service", label(s));
    policy_fields(&mut fields, s);
    Ok(fields.write_to(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> PolicyArgs {
        use clap::Parser;
        let mut argv = vec!["hvsock", "service", "policy", "echo"];
        argv.extend_from_slice(flags);
        match crate::cli::Cli::try_parse_from(argv)
            .expect("parses")
            .command
        {
            crate::cmd::Command::Service(ServiceCommand::Policy(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn policy_flags_make_a_merge_patch() {
        assert_eq!(
            policy_patch(&args(&["--connect", "a,b", "--bind-any"])),
            json!({"connect": ["a", "b"], "bind": null})
        );
        assert_eq!(
            policy_patch(&args(&["--bind", "", "--wildcard-bind", "no"])),
            json!({"bind": [], "wildcard_bind": false})
        );
        assert_eq!(policy_patch(&args(&["--default"])), Value::Null);
        assert!(!args(&[]).changes());
        assert!(args(&["--connect-any"]).changes());
    }

    #[test]
    fn lists_split_on_commas_and_empty_is_none() {
        assert_eq!(split_list("a, b,,c"), ["a", "b", "c"]);
        assert!(split_list("").is_empty());
        assert!(split_list(" , ").is_empty());
    }

    #[test]
    fn ports_stand_for_their_template_guid() {
        assert_eq!(service_key("2761"), "00000ac9-facb-11e6-bd58-64006a7986d3");
        assert_eq!(service_key("echo"), "echo");
        assert_eq!(service_key("99999999999"), "99999999999");
        assert_eq!(service_key("+5"), "+5");
    }
}
