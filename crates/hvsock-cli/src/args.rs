//! The pieces of the command line that several commands share, declared with clap's derive
//! API: `ADDR` (`VM:SERVICE`), `ID|NAME`, `--json`, `--if-exists`, the checks of names and
//! GUIDs, and the help texts about addresses and exit codes.
//!
//! Arguments are checked here as far as they can be without hvsockd (GUIDs, ports, names,
//! the syntax of `VM:SERVICE`), so that a malformed command line is a usage error (exit 2,
//! clap's message) and never reaches the daemon.

use clap::Args;
use hvsock::addr::{AddrError, check_partition_name, check_service_name};
use hvsock::{AddrSpec, ServiceId, VmId};

macro_rules! address_help {
    () => {
        "\
Addresses (ADDR) are VM:SERVICE.
  VM       a GUID, a partition name (`host` is the root), or one of
           wildcard, zero, children, loopback, parent, broadcast, silohost
  SERVICE  a GUID, a registered service name, or a decimal vsock port
           (2761 is 00000ac9-facb-11e6-bd58-64006a7986d3)
Names are resolved through hvsockd's admin API; GUIDs, keywords and ports need no API."
    };
}

macro_rules! exit_status_help {
    () => {
        "\
Exit status: 0 on success, 1 when the command failed (the reason is on stderr),
2 for a malformed command line."
    };
}

/// What `VM:SERVICE` means: in `--help`, and the ADDRESSES section of the manual pages.
pub const ADDRESS_HELP: &str = address_help!();
/// The exit codes: in `--help`, and the EXIT STATUS section of the manual pages.
pub const EXIT_STATUS_HELP: &str = exit_status_help!();
/// The text after `--help` of commands that take an address.
pub const ADDRESSES: &str = concat!(address_help!(), "\n\n", exit_status_help!());

/// `--json`.
#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `ID|NAME` of an item, with `--json`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The GUID or the name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// Print the admin API's JSON object instead of `key: value` lines.
    #[arg(long)]
    pub json: bool,
}

/// `ID|NAME` of an item.
#[derive(Debug, Args)]
pub struct KeyArg {
    /// The GUID or the name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
}

/// `ID|NAME` of an item to remove.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The GUID or the name.
    #[arg(value_name = "ID|NAME")]
    pub key: String,
    /// Exit 0 (with a note on stderr) if it does not exist, so that scripts can rerun.
    #[arg(long)]
    pub if_exists: bool,
}

/// An address as typed and as parsed.
#[derive(Debug, Clone)]
pub struct AddrArg {
    /// What the user typed.
    pub raw: String,
    /// Its parts, names not yet resolved.
    pub spec: AddrSpec,
}

/// Parses `ADDR` (`value_parser = parse_addr`).
pub fn parse_addr(s: &str) -> Result<AddrArg, AddrError> {
    Ok(AddrArg {
        raw: s.trim().to_owned(),
        spec: AddrSpec::parse(s)?,
    })
}

/// Checks a service's friendly name.
pub fn parse_service_name(s: &str) -> Result<String, String> {
    check_service_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Checks a partition's name.
pub fn parse_partition_name(s: &str) -> Result<String, String> {
    check_partition_name(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

/// Parses a service GUID.
pub fn parse_service_id(s: &str) -> Result<ServiceId, String> {
    ServiceId::parse(s)
        .map_err(|e| format!("{e} (expected a GUID such as 00000ac9-facb-11e6-bd58-64006a7986d3)"))
}

/// Parses a partition's VmId; a well-known VmId cannot name a partition.
pub fn parse_vm_id(s: &str) -> Result<VmId, String> {
    let id = VmId::parse(s).map_err(|e| {
        format!("{e} (expected a GUID such as c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11)")
    })?;
    match id.keyword() {
        Some(word) => Err(format!(
            "{id} is the well-known VmId {word:?} and cannot name a partition"
        )),
        None => Ok(id),
    }
}
