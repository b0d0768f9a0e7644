//! What the integration-service commands (`exec`, `shell`, `cp`, `vm shutdown`) share: reaching
//! a partition's agent, with errors that say what to do.

use std::io;
use std::time::Duration;

use hvsock::{HvStream, SockAddrHv, VmId, VmSpec};
use hvsock_agent::services::Service;

use crate::context::Context;
use crate::error::CliError;
use crate::resolve::{partition_id, transport};

/// How long to wait for the agent's connection by default: a VM's device may need several
/// tries (hvsockd retries the hybrid-vsock handshake).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The VmId of `vm` (a name, a GUID or a keyword).
pub fn vm_id(ctx: &Context, vm: &str) -> Result<VmId, CliError> {
    Ok(match VmSpec::parse(vm.trim()) {
        VmSpec::Id(id) => id,
        VmSpec::Name(name) => partition_id(ctx, &name)?.0,
    })
}

/// Connects from the root (or the environment's partition) to `service` of the agent in `vm`.
pub fn connect(ctx: &Context, vm: &str, service: Service) -> Result<HvStream, CliError> {
    let id = vm_id(ctx, vm)?;
    let transport = transport(ctx, None)?;
    let addr = SockAddrHv::new(id, service.id());
    HvStream::connect_with(&transport, addr, CONNECT_TIMEOUT).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::TimedOut => format!(
                " (is hvsock-agent running in {vm}, serving {}?)",
                service.key
            ),
            io::ErrorKind::PermissionDenied => format!(
                " (an administrator enables it with `hvsock service enable {}`, after `hvsock service add {} --port {}` if it is not registered)",
                service.name, service.name, service.port
            ),
            _ => String::new(),
        };
        CliError::Socket {
            doing: format!("reaching {} in {vm}{hint}", service.name),
            source: e,
        }
    })
}
