//! `hvsock registry export|import`: the whole registry as one JSON document, to back it up or
//! move it to another host (`GET` and `POST /v1/registry`).
//!
//! `export` writes the document (pretty, in a stable order) to stdout or, with `--output`, to
//! a file that is replaced atomically (written next to it, then renamed), so that a backup is
//! never half written. `import` reads a file (or stdin for `-`) and prints what changed, one
//! line per change; `--dry-run` prints what would change; `--json` prints the API's report.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::Value;

use super::{Run, admin};
use crate::api::{Counts, ImportReport};
use crate::context::Context;
use crate::error::{CliError, Doing};
use crate::output::write_json;

/// `hvsock registry …`.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Write the registry as JSON (stable order), to stdout or --output FILE.
    Export {
        /// Write to FILE (replaced atomically) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Import a registry written by `hvsock registry export`, in one transaction.
    ///
    /// Merge (the default) adds what is new and sets `enabled` and the policy of services
    /// already there; entries whose id or name clash are listed and nothing changes. A
    /// registry that holds only its root adopts the file's root id. Importing the same file
    /// twice changes nothing.
    Import {
        /// The file (`-` for stdin).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Make the registry equal to the file: remove what it does not name, adopt its root
        /// id (clients of host.sock are disconnected if the id changes).
        #[arg(long)]
        replace: bool,
        /// Say what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the API's report as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl Run for RegistryCommand {
    fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        if cfg!(windows) {
            return Err(CliError::unsupported(
                "`hvsock registry`",
                "it exports and imports hvsockd's registry, and there is no hvsockd on Windows",
            ));
        }
        run(ctx, self, out)
    }
}

/// Runs one `registry` command through hvsockd's admin API.
pub fn run(ctx: &Context, cmd: RegistryCommand, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        RegistryCommand::Export { output } => export(ctx, output.as_deref(), out),
        RegistryCommand::Import {
            file,
            replace,
            dry_run,
            json,
        } => import(ctx, &file, replace, dry_run, json, out),
    }
}

fn export(ctx: &Context, output: Option<&Path>, out: &mut dyn Write) -> Result<(), CliError> {
    let doing = || "exporting the registry".to_owned();
    let doc = admin(ctx, doing)?.export().doing(doing)?;
    let Some(path) = output else {
        return Ok(write_json(out, &doc)?);
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "registry.json".to_owned());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        write_json(&mut file, &doc)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(CliError::File {
            doing: "writing",
            path: path.to_owned(),
            source,
        });
    }
    let services = doc["services"].as_array().map_or(0, Vec::len);
    let partitions = doc["partitions"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        std::io::stderr(),
        "hvsock: registry exported to {} ({services} services, {partitions} partitions besides the root)",
        path.display()
    );
    Ok(())
}

fn read_doc(file: &Path) -> Result<Value, CliError> {
    let stdin = file == Path::new("-");
    let what = if stdin {
        Path::new("stdin").to_owned()
    } else {
        file.to_owned()
    };
    let mut text = String::new();
    let read = if stdin {
        std::io::stdin().read_to_string(&mut text).map(drop)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text).map(drop))
    };
    read.map_err(|source| CliError::File {
        doing: "reading",
        path: what.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| CliError::File {
        doing: "reading",
        path: what,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a registry document (JSON from `hvsock registry export`): {e}"),
        ),
    })
}

fn counts(what: &str, c: &Counts) -> String {
    format!(
        "{what} {} created, {} updated, {} unchanged, {} removed",
        c.created, c.updated, c.unchanged, c.removed
    )
}

fn import(
    ctx: &Context,
    file: &Path,
    replace: bool,
    dry_run: bool,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let doc = read_doc(file)?;
    let doing = || format!("importing {}", file.display());
    let reply = admin(ctx, doing)?
        .import(&doc, replace, dry_run)
        .doing(doing)?;
    if json {
        return Ok(write_json(out, &reply.json)?);
    }
    write_report(out, &reply.value)?;
    Ok(())
}

fn write_report(out: &mut dyn Write, r: &ImportReport) -> std::io::Result<()> {
    let verb = if r.dry_run { "would change" } else { "changed" };
    if r.changes.is_empty() {
        writeln!(
            out,
            "nothing to change ({} mode): the registry already holds the document",
            r.mode
        )?;
    } else {
        writeln!(out, "{} mode, {verb}:", r.mode)?;
        for change in &r.changes {
            writeln!(out, "  {change}")?;
        }
    }
    writeln!(
        out,
        "{}; {}",
        counts("services", &r.services),
        counts("partitions", &r.partitions)
    )?;
    writeln!(
        out,
        "root: {}{}",
        r.root,
        if r.root_adopted {
            " (taken from the document)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_for_people() {
        let r: ImportReport = serde_json::from_value(serde_json::json!({
            "mode": "merge", "dry_run": true, "root": "00000000-0000-0000-0000-00000000000a",
            "root_adopted": true,
            "services": {"created": 1, "updated": 0, "unchanged": 2, "removed": 0},
            "partitions": {"created": 0, "updated": 0, "unchanged": 0, "removed": 0},
            "changes": ["service \"echo\" created"]
        }))
        .expect("report");
        let mut buf = Vec::new();
        write_report(&mut buf, &r).expect("write");
        assert_eq!(
            String::from_utf8(buf).expect("utf-8"),
            "merge mode, would change:\n  service \"echo\" created\n\
             services 1 created, 0 updated, 2 unchanged, 0 removed; partitions 0 created, 0 updated, 0 unchanged, 0 removed\n\
             root: 00000000-0000-0000-0000-00000000000a (taken from the document)\n"
        );
    }
}
