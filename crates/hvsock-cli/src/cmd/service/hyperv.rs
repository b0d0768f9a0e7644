//! `hvsock service …` on Windows, where Hyper-V itself is the provider: `add`, `list`, `show`
//! and `remove` on the host's registry of services ([`crate::hyperv_registry`], which says
//! where it is and the rules `add` follows); `enable`, `disable`, `add --disabled`, `rename`
//! and `policy` are errors that say why they mean nothing there.
//!
//! The commands run against a [`Store`], so that the tests run them on every platform against
//! an in-memory registry.

use std::io::Write;

use hvsock::ServiceId;
use serde_json::{Value, json};

use super::ServiceCommand;
use crate::error::CliError;
use crate::hyperv_registry::{Entry, Plan, RegistryError, Store, find, key_path, plan_add};
use crate::output::{Fields, Table, or_dash, write_json};

/// Hyper-V registers services; it does not switch them.
const NO_ENABLE_FLAG: &str = "Hyper-V has no per-service enable flag: a service registered \
     under GuestCommunicationServices is reachable, `hvsock service remove` unregisters it";

/// Runs one `service` command against `store`.
pub fn run_with(
    store: &mut dyn Store,
    cmd: ServiceCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        ServiceCommand::Add {
            name,
            id,
            port,
            disabled,
        } => {
            if disabled {
                return Err(CliError::unsupported(
                    "`hvsock service add --disabled`",
                    NO_ENABLE_FLAG,
                ));
            }
            let id = match (id, port) {
                (Some(id), _) => id,
                (None, Some(port)) => ServiceId::from_vsock_port(port),
                (None, None) => ServiceId::new_random(),
            };
            add(store, &name, id, out)
        }
        ServiceCommand::List(flag) => list(store, flag.json, out),
        ServiceCommand::Show(args) => show(store, &args.key, args.json, out),
        ServiceCommand::Enable(_) => Err(CliError::unsupported(
            "`hvsock service enable`",
            NO_ENABLE_FLAG,
        )),
        ServiceCommand::Disable(_) => Err(CliError::unsupported(
            "`hvsock service disable`",
            NO_ENABLE_FLAG,
        )),
        ServiceCommand::Remove(arg) => remove(store, &arg.key, arg.if_exists, out),
        ServiceCommand::Rename(_) => Err(CliError::unsupported(
            "`hvsock service rename`",
            "the friendly name is the ElementName value of the service's key: remove the \
             service and add it again under the new name",
        )),
        ServiceCommand::Policy(_) => Err(CliError::unsupported(
            "`hvsock service policy`",
            "policies are enforced by hvsockd; on Windows, Hyper-V decides which VMs reach a \
             service (per-VM GuestCommunicationServices)",
        )),
        ServiceCommand::Access(_) => Err(CliError::unsupported(
            "`hvsock service access`",
            "host-user rules are enforced by hvsockd on host.sock; on Windows, who may connect              is decided by the socket's own security",
        )),
    }
}

fn add(
    store: &mut dyn Store,
    name: &str,
    id: ServiceId,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let entries = store.entries()?;
    if plan_add(&entries, id, name)? == Plan::Write {
        store.write(id, name)?;
    }
    writeln!(out, "{id}")?;
    Ok(())
}

fn list(store: &dyn Store, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let mut entries = store.entries()?;
    entries.sort_by(|a, b| (&a.name, a.id).cmp(&(&b.name, b.id)));
    if json {
        let all: Vec<Value> = entries.iter().map(entry_json).collect();
        return Ok(write_json(out, &Value::Array(all))?);
    }
    let mut table = Table::new(["NAME", "ID", "PORT"]);
    for e in &entries {
        table.row([
            or_dash(e.name.as_deref()),
            e.id.to_string(),
            or_dash(e.id.vsock_port()),
        ]);
    }
    Ok(table.write_to(out)?)
}

fn show(store: &dyn Store, key: &str, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let entries = store.entries()?;
    let entry = find(&entries, key)?;
    if json {
        return Ok(write_json(out, &entry_json(entry))?);
    }
    let mut fields = Fields::new();
    fields
        .field("name", or_dash(entry.name.as_deref()))
        .field("id", entry.id)
        .field("vsock_port", or_dash(entry.id.vsock_port()))
        .field("key", key_path(entry.id));
    Ok(fields.write_to(out)?)
}

fn remove(
    store: &mut dyn Store,
    key: &str,
    if_exists: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let entries = store.entries()?;
    let entry = match find(&entries, key) {
        Ok(entry) => entry.clone(),
        Err(RegistryError::NotFound { .. }) if if_exists => {
            let _ = writeln!(
                std::io::stderr(),
                "hvsock: service {key:?} is not registered; nothing to remove"
            );
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    store.remove(entry.id)?;
    writeln!(out, "service {} removed", entry.label())?;
    Ok(())
}

/// A registered service as JSON: `id`, `name`, `vsock_port` and the registry `key`.
fn entry_json(entry: &Entry) -> Value {
    json!({
        "id": entry.id.to_string(),
        "name": entry.name,
        "vsock_port": entry.id.vsock_port(),
        "key": key_path(entry.id),
    })
}

/// Runs one `service` command against this machine's registry.
#[cfg(windows)]
pub fn run(cmd: ServiceCommand, out: &mut dyn Write) -> Result<(), CliError> {
    run_with(&mut crate::hyperv_registry::system(), cmd, out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::args::{JsonFlag, KeyArg, RemoveArgs, ShowArgs};
    use crate::hyperv_registry::fake::Fake;

    fn run(store: &mut Fake, cmd: ServiceCommand) -> Result<String, CliError> {
        let mut out = Vec::new();
        run_with(store, cmd, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn add(name: &str, id: Option<&str>, port: Option<u32>) -> ServiceCommand {
        ServiceCommand::Add {
            name: name.to_owned(),
            id: id.map(|s| ServiceId::parse(s).unwrap()),
            port,
            disabled: false,
        }
    }

    fn key(k: &str) -> KeyArg {
        KeyArg { key: k.to_owned() }
    }

    fn removal(k: &str) -> RemoveArgs {
        RemoveArgs {
            key: k.to_owned(),
            if_exists: false,
        }
    }

    const ECHO: &str = "00000ac9-facb-11e6-bd58-64006a7986d3";

    #[test]
    fn add_is_idempotent_and_prints_the_guid() {
        let mut reg = Fake::default();
        assert_eq!(
            run(&mut reg, add("echo", None, Some(2761))).unwrap(),
            format!("{ECHO}\n")
        );
        assert_eq!(
            run(&mut reg, add("echo", Some(ECHO), None)).unwrap(),
            format!("{ECHO}\n")
        );
        assert_eq!(reg.writes, 1, "the second add wrote");
        assert_eq!(
            reg.keys.get(&ServiceId::from_vsock_port(2761)),
            Some(&Some("echo".to_owned()))
        );
    }

    #[test]
    fn add_without_an_id_picks_a_random_one() {
        let mut reg = Fake::default();
        let printed = run(&mut reg, add("agent", None, None)).unwrap();
        let id = ServiceId::parse(printed.trim()).unwrap();
        assert_eq!(id.vsock_port(), None);
        assert_eq!(reg.keys.get(&id), Some(&Some("agent".to_owned())));
    }

    #[test]
    fn add_names_a_key_that_has_no_element_name() {
        let mut reg = Fake::default();
        let id = ServiceId::from_vsock_port(2761);
        reg.keys.insert(id, None);
        run(&mut reg, add("echo", None, Some(2761))).unwrap();
        assert_eq!(reg.keys.get(&id), Some(&Some("echo".to_owned())));
    }

    #[test]
    fn add_refuses_a_taken_id_or_name_and_says_which() {
        let mut reg = Fake::default();
        run(&mut reg, add("echo", None, Some(2761))).unwrap();
        let err = run(&mut reg, add("other", None, Some(2761))).unwrap_err();
        assert!(
            err.to_string().contains("already registered as \"echo\""),
            "{err}"
        );
        let err = run(&mut reg, add("echo", None, Some(2762))).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("\"echo\" is already used by {ECHO}")),
            "{err}"
        );
        assert_eq!(reg.writes, 1);
    }

    #[test]
    fn writing_without_elevation_says_run_as_administrator() {
        let mut reg = Fake {
            read_only: true,
            ..Fake::default()
        };
        let err = run(&mut reg, add("echo", None, Some(2761))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Access is denied: run as Administrator"),
            "{text}"
        );
        reg.keys
            .insert(ServiceId::from_vsock_port(2761), Some("echo".into()));
        // Idempotent add writes nothing, so it needs no elevation.
        assert_eq!(
            run(&mut reg, add("echo", None, Some(2761))).unwrap(),
            format!("{ECHO}\n")
        );
        let err = run(&mut reg, ServiceCommand::Remove(removal("echo"))).unwrap_err();
        assert!(err.to_string().contains("run as Administrator"), "{err}");
    }

    #[test]
    fn list_and_show_read_every_service() {
        let mut reg = Fake::default();
        run(&mut reg, add("echo", None, Some(2761))).unwrap();
        let agent = "3049197c-9a4e-4fbf-a1c5-6a0b3ee1a6d1";
        run(&mut reg, add("agent", Some(agent), None)).unwrap();
        let unnamed = ServiceId::from_vsock_port(5);
        reg.keys.insert(unnamed, None);
        let table = run(&mut reg, ServiceCommand::List(JsonFlag { json: false })).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("NAME"), "{table}");
        assert!(
            lines[1].starts_with("-") && lines[1].ends_with(" 5"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("agent") && lines[2].ends_with(" -"),
            "{table}"
        );
        assert!(
            lines[3].starts_with("echo") && lines[3].ends_with(" 2761"),
            "{table}"
        );

        let json = run(&mut reg, ServiceCommand::List(JsonFlag { json: true })).unwrap();
        let json: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json.as_array().map(Vec::len), Some(3));
        assert_eq!(json[2]["name"], "echo");
        assert_eq!(json[2]["vsock_port"], 2761);

        for k in [
            "echo",
            "2761",
            ECHO,
            "{00000AC9-FACB-11E6-BD58-64006A7986D3}",
        ] {
            let shown = run(
                &mut reg,
                ServiceCommand::Show(ShowArgs {
                    key: k.to_owned(),
                    json: false,
                }),
            )
            .unwrap();
            assert!(shown.contains("name:"), "{shown}");
            assert!(shown.contains("echo"), "{k}: {shown}");
            assert!(
                shown.contains(r"GuestCommunicationServices\00000ac9"),
                "{shown}"
            );
        }
        let err = run(
            &mut reg,
            ServiceCommand::Show(ShowArgs {
                key: "nope".into(),
                json: false,
            }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no service \"nope\""), "{err}");
    }

    #[test]
    fn remove_deletes_the_key_by_name_guid_or_port() {
        let mut reg = Fake::default();
        for k in ["echo", "2761", ECHO] {
            run(&mut reg, add("echo", None, Some(2761))).unwrap();
            let said = run(&mut reg, ServiceCommand::Remove(removal(k))).unwrap();
            assert_eq!(said, format!("service \"echo\" ({ECHO}) removed\n"));
            assert!(reg.keys.is_empty(), "{k}");
        }
        let err = run(&mut reg, ServiceCommand::Remove(removal("echo"))).unwrap_err();
        assert!(err.to_string().contains("no service \"echo\""), "{err}");
        let again = RemoveArgs {
            if_exists: true,
            ..removal("echo")
        };
        assert_eq!(run(&mut reg, ServiceCommand::Remove(again)).unwrap(), "");
    }

    #[test]
    fn switches_have_no_meaning_on_hyper_v() {
        let mut reg = Fake::default();
        for cmd in [
            ServiceCommand::Enable(key("echo")),
            ServiceCommand::Disable(key("echo")),
            ServiceCommand::Add {
                name: "echo".into(),
                id: None,
                port: Some(1),
                disabled: true,
            },
        ] {
            let err = run(&mut reg, cmd).unwrap_err();
            assert!(
                err.to_string().contains("no per-service enable flag"),
                "{err}"
            );
        }
        assert_eq!(reg.writes, 0);
    }
}
