//! `hvsock-agent kvp list|get|set|delete`: the key-value pools as guest programs see them, one
//! file per key: `DIR/host/KEY` (the host's pool, written by the agent; read-only here) and
//! `DIR/guest/KEY` (the guest's own pairs, which the agent sends the host within 2 s, beside
//! the `agent`, `os`, `kernel` and `hostname` it fills in itself).

use std::io::Write;
use std::path::Path;

use clap::Subcommand;

use crate::kvp::{check_key, check_value};
use crate::link::{guest_pool, write_atomic};

fn parse_key(s: &str) -> Result<String, String> {
    check_key(s).map(|()| s.to_owned())
}

fn parse_value(s: &str) -> Result<String, String> {
    check_value(s).map(|()| s.to_owned())
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Action {
    /// Print a pool as `KEY=VALUE` lines.
    List {
        /// host (what the host set) or guest (what this guest tells the host).
        #[arg(long, default_value = "host", value_parser = ["host", "guest"])]
        pool: String,
    },
    /// Print one value.
    Get {
        /// host or guest.
        #[arg(long, default_value = "host", value_parser = ["host", "guest"])]
        pool: String,
        /// The key.
        #[arg(value_parser = parse_key)]
        key: String,
    },
    /// Set a pair of the guest's pool.
    Set {
        /// The key.
        #[arg(value_parser = parse_key)]
        key: String,
        /// The value (at most 2048 bytes).
        #[arg(value_parser = parse_value)]
        value: String,
    },
    /// Delete a pair of the guest's pool.
    Delete {
        /// The key.
        #[arg(value_parser = parse_key)]
        key: String,
    },
}

fn read_pool(dir: &Path, pool: &str) -> std::collections::BTreeMap<String, String> {
    if pool == "guest" {
        return guest_pool(dir);
    }
    let mut pairs = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("host"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(key) = entry.file_name().into_string() else {
            continue;
        };
        if check_key(&key).is_ok() {
            if let Ok(value) = std::fs::read_to_string(entry.path()) {
                pairs.insert(key, value);
            }
        }
    }
    pairs
}

/// Runs `action` on the pools under `dir`.
pub fn run(dir: &Path, action: Action, out: &mut dyn Write) -> Result<(), String> {
    let io = |doing: &str, e: std::io::Error| format!("{doing}: {e}");
    match action {
        Action::List { pool } => {
            for (k, v) in read_pool(dir, &pool) {
                writeln!(out, "{k}={v}").map_err(|e| io("writing", e))?;
            }
        }
        Action::Get { pool, key } => match read_pool(dir, &pool).get(&key) {
            Some(v) => writeln!(out, "{v}").map_err(|e| io("writing", e))?,
            None => return Err(format!("no key {key:?} in the {pool} pool")),
        },
        Action::Set { key, value } => {
            let guest = dir.join("guest");
            std::fs::create_dir_all(&guest)
                .map_err(|e| io(&format!("creating {}", guest.display()), e))?;
            write_atomic(&guest.join(&key), &value)
                .map_err(|e| io(&format!("writing {}", guest.join(&key).display()), e))?;
        }
        Action::Delete { key } => {
            let path = dir.join("guest").join(&key);
            std::fs::remove_file(&path)
                .map_err(|e| io(&format!("removing {}", path.display()), e))?;
        }
    }
    Ok(())
}
