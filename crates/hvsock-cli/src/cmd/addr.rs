//! `hvsock addr ADDR`: what an address resolves to.
//!
//! ```text
//! vm       a42e7cda-d03f-480c-9cc2-a4de20abb878 (parent)
//! service  00000ac9-facb-11e6-bd58-64006a7986d3 (echo)
//! port     2761
//! ```
//!
//! The VM's label is the keyword as typed or the partition's name; the service's is its name.
//! Names given as names are resolved through the admin API (an error if that fails); ids given
//! as GUIDs or ports are named when the API is reachable and knows them, and shown bare
//! otherwise. The `port` line appears only for vsock template GUIDs. `--json` prints
//! `{address, vm_id, vm_keyword, vm_name, service_id, service_name, vsock_port}` (absent
//! values are `null`).

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::Run;
use crate::args::{AddrArg, parse_addr};
use crate::context::Context;
use crate::error::CliError;
use crate::output::write_json;
use crate::resolve::{Resolved, name_ids, resolve};

/// `hvsock addr`.
#[derive(Debug, Args)]
pub struct AddrArgs {
    /// The address to resolve.
    #[arg(value_name = "ADDR", value_parser = parse_addr)]
    pub addr: AddrArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl Run for AddrArgs {
    fn run(self, ctx: &Context, out: &mut dyn Write) -> Result<(), CliError> {
        let mut resolved = resolve(ctx, &self.addr.raw, &self.addr.spec)?;
        name_ids(ctx, &mut resolved);
        if self.json {
            return Ok(write_json(out, &to_json(&resolved))?);
        }
        Ok(write_text(out, &resolved)?)
    }
}

fn to_json(r: &Resolved) -> serde_json::Value {
    json!({
        "address": r.addr.to_string(),
        "vm_id": r.addr.vm_id.to_string(),
        "vm_keyword": r.vm_keyword,
        "vm_name": r.vm_name,
        "service_id": r.addr.service_id.to_string(),
        "service_name": r.service_name,
        "vsock_port": r.addr.vsock_port(),
    })
}

fn write_text(out: &mut dyn Write, r: &Resolved) -> std::io::Result<()> {
    let paren = |label: Option<&String>| label.map(|l| format!(" ({l})")).unwrap_or_default();
    let vm_label = r.vm_keyword.as_ref().or(r.vm_name.as_ref());
    writeln!(out, "vm       {}{}", r.addr.vm_id, paren(vm_label))?;
    writeln!(
        out,
        "service  {}{}",
        r.addr.service_id,
        paren(r.service_name.as_ref())
    )?;
    if let Some(port) = r.addr.vsock_port() {
        writeln!(out, "port     {port}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvsock::{ServiceId, SockAddrHv, VmId};

    #[test]
    fn text_matches_the_documented_form() {
        let r = Resolved {
            addr: SockAddrHv::new(VmId::PARENT, ServiceId::from_vsock_port(2761)),
            vm_keyword: Some("parent".into()),
            vm_name: None,
            service_name: Some("echo".into()),
        };
        let mut buf = Vec::new();
        write_text(&mut buf, &r).expect("write");
        assert_eq!(
            String::from_utf8(buf).expect("utf-8"),
            "vm       a42e7cda-d03f-480c-9cc2-a4de20abb878 (parent)\n\
             service  00000ac9-facb-11e6-bd58-64006a7986d3 (echo)\n\
             port     2761\n"
        );
    }
}
