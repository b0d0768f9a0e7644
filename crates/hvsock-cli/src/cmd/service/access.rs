//! `hvsock service access ID|NAME [--allow-user U]... [--allow-group G]... | --root-only |
//! --anyone`: which host users may connect to a service through `host.sock`.
//!
//! Without flags it shows the rules. `--allow-user` and `--allow-group` (repeatable, names or
//! numbers) replace them with root plus those users and groups' members; `--root-only` leaves
//! root alone; `--anyone` drops the rules, so that whoever may open `host.sock` may connect.

use std::io::Write;

use clap::Args;
use serde_json::{Value, json};

use super::{fetch, label, service_key};
use crate::api::Service;
use crate::cmd::admin;
use crate::context::Context;
use crate::error::{CliError, Doing};
use crate::output::{Fields, write_json};

/// `hvsock service access`.
#[derive(Debug, Args)]
pub struct AccessArgs {
    /// The service: GUID, name or vsock port.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// Allow this host user (a name or a uid; repeatable). Replaces the rules with root plus
    /// the users and groups given.
    #[arg(long = "allow-user", value_name = "USER")]
    pub users: Vec<String>,
    /// Allow the members of this host group (a name or a gid; repeatable).
    #[arg(long = "allow-group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Allow root only.
    #[arg(long, conflicts_with_all = ["users", "groups", "anyone"])]
    pub root_only: bool,
    /// Drop the rules: whoever may use host.sock may connect.
    #[arg(long, conflicts_with_all = ["users", "groups"])]
    pub anyone: bool,
    /// Print the service as the API's JSON.
    #[arg(long)]
    pub json: bool,
}

impl AccessArgs {
    /// The `access` member of a `PATCH`, if the flags change anything.
    pub fn patch(&self) -> Option<Value> {
        if self.anyone {
            Some(Value::Null)
        } else if self.root_only || !self.users.is_empty() || !self.groups.is_empty() {
            Some(json!({"users": self.users, "groups": self.groups}))
        } else {
            None
        }
    }
}

/// The rules for people.
pub fn describe(s: &Service) -> String {
    match &s.access {
        None => "anyone who may use host.sock".to_owned(),
        Some(a) => {
            let mut parts = vec!["root".to_owned()];
            let names = |l: &[crate::api::Account]| {
                l.iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !a.users.is_empty() {
                parts.push(format!("users {}", names(&a.users)));
            }
            if !a.groups.is_empty() {
                parts.push(format!("groups {}", names(&a.groups)));
            }
            if parts.len() == 1 {
                "root only".to_owned()
            } else {
                parts.join("; ")
            }
        }
    }
}

/// Runs `hvsock service access`.
pub fn run(ctx: &Context, args: AccessArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let key = args.key.as_str();
    let patch = args.patch();
    let changing = patch.is_some();
    let doing = || {
        if changing {
            format!("changing who may use service {key:?}")
        } else {
            format!("showing who may use service {key:?}")
        }
    };
    let api = admin(ctx, doing)?;
    let reply = match patch {
        Some(patch) => api
            .patch_service(&service_key(key), &json!({ "access": patch }))
            .doing(doing)?,
        None => fetch(api, key, doing)?,
    };
    if args.json {
        return Ok(write_json(out, &reply.json)?);
    }
    let mut fields = Fields::new();
    fields
        .field("service", label(&reply.value))
        .field("host users", describe(&reply.value));
    Ok(fields.write_to(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> AccessArgs {
        use clap::Parser;
        let mut argv = vec!["hvsock", "service", "access", "hvsock-session"];
        argv.extend_from_slice(flags);
        match crate::cli::Cli::try_parse_from(argv)
            .expect("parses")
            .command
        {
            crate::cmd::Command::Service(super::super::ServiceCommand::Access(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flags_make_the_patch() {
        assert_eq!(args(&[]).patch(), None);
        assert_eq!(
            args(&["--allow-user", "alice", "--allow-group", "wheel"]).patch(),
            Some(json!({"users": ["alice"], "groups": ["wheel"]}))
        );
        assert_eq!(
            args(&["--root-only"]).patch(),
            Some(json!({"users": [], "groups": []}))
        );
        assert_eq!(args(&["--anyone"]).patch(), Some(Value::Null));
    }
}
