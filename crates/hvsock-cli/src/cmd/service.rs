//! `hvsock service …`: the registry's services, through the admin API.
//!
//! `add` prints the GUID alone (for `id=$(hvsock service add echo --port 2761)`); `list` is a
//! table, `show` `key: value` lines, both `--json` for the API's objects; `enable`, `disable`
//! and `remove` print one line saying what they did. An `ID` may also be a decimal vsock port,
//! which stands for its template GUID.

use std::io::Write;

use hvsock::ServiceId;

use super::{CliError, Doing, admin};
use crate::admin_client::AdminClient;
use crate::api::{NewService, Service};
use crate::cli::ServiceCommand;
use crate::context::Context;
use crate::output::{Fields, Table, or_dash, timestamp, write_json, yes_no};

/// Runs one `service` command.
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
        ServiceCommand::Remove(arg) => remove(ctx, &arg.key, out),
    }
}

/// The API key of a service as typed: a decimal port stands for its template GUID (no
/// service name is all digits).
pub fn service_key(key: &str) -> String {
    let key = key.trim();
    match key.parse::<u32>() {
        Ok(port) if key.bytes().all(|b| b.is_ascii_digit()) => {
            ServiceId::from_vsock_port(port).to_string()
        }
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
        .field("created", timestamp(s.created_at));
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

fn remove(ctx: &Context, key: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || format!("removing service {key:?}");
    let api = admin(ctx, doing)?;
    let service = fetch(api, key, doing)?.value;
    api.remove_service(&service.id.to_string()).doing(doing)?;
    writeln!(out, "service {} removed", label(&service))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_stand_for_their_template_guid() {
        assert_eq!(service_key("2761"), "00000ac9-facb-11e6-bd58-64006a7986d3");
        assert_eq!(service_key("echo"), "echo");
        assert_eq!(service_key("99999999999"), "99999999999");
        assert_eq!(service_key("+5"), "+5");
    }
}
