//! `hvsockd --check`: what a start would use and apply, without starting or writing anything.

use std::fmt::Write as _;
use std::path::Path;

use hvsock::VmId;

use super::Config;
use super::declared::partition_name;
use crate::registry::Registry;

/// `hvsockd --check`: the report of what a start with `config` would use and apply (for
/// stdout), and whether it can start. Opens the registry read-only, or plans against an empty
/// one when there is none yet; writes nothing.
pub fn check(config: &Config, source: Option<&Path>) -> (String, Result<(), String>) {
    let log_format = config.log_format.as_str();
    let mut out = String::new();
    let source = source.map_or("(none: defaults and flags)".to_owned(), |p| {
        p.display().to_string()
    });
    let l = &config.limits;
    let _ = writeln!(out, "config: {source}");
    let _ = writeln!(out, "state dir: {}", config.dirs.state.display());
    let _ = writeln!(out, "run dir: {}", config.dirs.run.display());
    let _ = writeln!(out, "log format: {log_format}");
    let _ = writeln!(
        out,
        "limits: handshake_timeout {}, max_sessions_per_partition {}, max_outstanding_connects {}",
        humantime::format_duration(l.handshake_timeout),
        l.max_sessions_per_partition,
        l.max_outstanding_connects
    );
    let path = config.dirs.registry();
    let opened = if path.exists() {
        Registry::open_read_only(&path)
            .map(|r| (r, format!("registry: {} (read only)", path.display())))
    } else {
        Registry::open_in_memory().map(|r| {
            (
                r,
                format!(
                    "registry: {} does not exist yet; a start creates it",
                    path.display()
                ),
            )
        })
    };
    let mut registry = match opened {
        Ok((registry, note)) => {
            let _ = writeln!(out, "{note}");
            registry
        }
        Err(e) => return (out, Err(e.to_string())),
    };
    if !path.exists() {
        // A first start registers the integration services before the file's entries.
        match registry.register_integration_services() {
            Ok(lines) => {
                let _ = writeln!(out, "first start:");
                for line in lines {
                    let _ = writeln!(out, "  {line}");
                }
            }
            Err(e) => return (out, Err(e.to_string())),
        }
    }
    let (report, policy, doc) = match config.declared.plan_with_doc(&registry) {
        Ok(planned) => planned,
        Err(e) => return (out, Err(e.to_string())),
    };
    let name = |id: VmId| partition_name(&doc, id);
    let _ = writeln!(out, "default policy: {}", policy.describe(name));
    if report.changes.is_empty() {
        let _ = writeln!(out, "registry changes at start: none");
    } else {
        let _ = writeln!(out, "registry changes at start:");
        for change in &report.changes {
            let _ = writeln!(out, "  {change}");
        }
    }
    let _ = writeln!(out, "ok");
    (out, Ok(()))
}
