//! From what people type to what sockets need: `VM:SERVICE` to a [`SockAddrHv`], and `--as VM`
//! to the transport of that partition.
//!
//! GUIDs, the VM keywords and decimal vsock ports resolve here without hvsockd; partition and
//! service names go through the admin API (`GET /v1/partitions/{name}`,
//! `GET /v1/services/{name}`), so that `connect parent:2761` works inside a sandbox that has
//! only its endpoint. A name that hvsockd does not know is an error that names it. The
//! partition name `host` is the root.

use std::io;
use std::path::PathBuf;

use hvsock::{AddrSpec, ServiceId, ServiceSpec, SockAddrHv, Transport, VmId, VmSpec};

use crate::admin_client::AdminError;
use crate::context::Context;

/// The root partition's name.
pub const ROOT_NAME: &str = "host";

/// Why an address or a partition could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// hvsockd knows no partition by that name.
    #[error("no partition named {name:?} in hvsockd's registry (see `hvsock vm list`)")]
    UnknownPartition {
        /// The name.
        name: String,
    },
    /// hvsockd knows no service by that name.
    #[error("no service named {name:?} in hvsockd's registry (see `hvsock service list`)")]
    UnknownService {
        /// The name.
        name: String,
    },
    /// A name needs the admin API, which cannot be reached.
    #[error(
        "the {what} name {name:?} can only be resolved through hvsockd's admin API (GUIDs, keywords and vsock ports need none): {source}"
    )]
    NeedsApi {
        /// `partition` or `service`.
        what: &'static str,
        /// The name.
        name: String,
        /// Why the API cannot be reached.
        #[source]
        source: AdminError,
    },
    /// The admin API answered a lookup with an error.
    #[error("resolving the {what} name {name:?}: {source}")]
    Lookup {
        /// `partition` or `service`.
        what: &'static str,
        /// The name.
        name: String,
        /// What hvsockd said.
        #[source]
        source: AdminError,
    },
    /// `--as` was given a keyword.
    #[error(
        "--as takes a partition (a name, a VmId, or `host` for the root), not {word:?}, which names a partition only relative to another"
    )]
    AsKeyword {
        /// The keyword.
        word: &'static str,
    },
    /// `--as` names a VmId without an endpoint.
    #[error("partition {vm} has no endpoint at {path}: {reason}")]
    NoEndpoint {
        /// The VmId.
        vm: VmId,
        /// Where its endpoint would be.
        path: PathBuf,
        /// Why it is not there, as far as can be told.
        reason: String,
    },
    /// hvsockd's directory is not known.
    #[error("cannot locate hvsockd: {0}")]
    Locate(#[source] io::Error),
    /// The environment asks for a transport that cannot be used.
    #[error("choosing the transport: {0}")]
    Transport(#[source] io::Error),
    /// A partition name on Windows, where partitions are Hyper-V's VMs.
    #[error(
        "{name:?} is a partition name, and partition names are hvsockd's (Linux); on Windows give \
         the VM's GUID (PowerShell: (Get-VM NAME).Id) or a keyword: parent, wildcard, children, \
         loopback"
    )]
    PartitionName {
        /// The name.
        name: String,
    },
    /// The Hyper-V registry could not tell a service name's GUID (Windows).
    #[cfg(any(windows, test))]
    #[error("resolving the service name: {0}")]
    Registry(#[from] crate::hyperv_registry::RegistryError),
}

/// An address with the names it was resolved from or to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The address.
    pub addr: SockAddrHv,
    /// The VM keyword as typed (`parent`), if it was one.
    pub vm_keyword: Option<String>,
    /// The partition's name, if given or known.
    pub vm_name: Option<String>,
    /// The service's name, if given or known.
    pub service_name: Option<String>,
}

fn lookup_error(what: &'static str, name: &str, e: AdminError) -> ResolveError {
    let name = name.to_owned();
    if e.is_not_found() {
        match what {
            "partition" => ResolveError::UnknownPartition { name },
            _ => ResolveError::UnknownService { name },
        }
    } else if e.is_unreachable() {
        ResolveError::NeedsApi {
            what,
            name,
            source: e,
        }
    } else {
        ResolveError::Lookup {
            what,
            name,
            source: e,
        }
    }
}

/// A partition's id by name, through the admin API.
pub fn partition_id(ctx: &Context, name: &str) -> Result<(VmId, bool), ResolveError> {
    if cfg!(windows) {
        return Err(ResolveError::PartitionName {
            name: name.to_owned(),
        });
    }
    let admin = ctx
        .admin()
        .map_err(|e| lookup_error("partition", name, e))?;
    let reply = admin
        .partition(name)
        .map_err(|e| lookup_error("partition", name, e))?;
    Ok((reply.value.id, reply.value.is_root()))
}

/// A service's id by name, through the Hyper-V registry's `ElementName`s (Windows).
#[cfg(windows)]
pub fn service_id(_ctx: &Context, name: &str) -> Result<ServiceId, ResolveError> {
    let registry = crate::hyperv_registry::system();
    Ok(crate::hyperv_registry::service_id_by_name(&registry, name)?)
}

/// A service's id by name, through the admin API.
#[cfg(not(windows))]
pub fn service_id(ctx: &Context, name: &str) -> Result<ServiceId, ResolveError> {
    let admin = ctx.admin().map_err(|e| lookup_error("service", name, e))?;
    let reply = admin
        .service(name)
        .map_err(|e| lookup_error("service", name, e))?;
    Ok(reply.value.id)
}

/// Resolves `spec`, asking the admin API only for names.
pub fn resolve(ctx: &Context, raw: &str, spec: &AddrSpec) -> Result<Resolved, ResolveError> {
    let (vm_id, vm_keyword, vm_name) = match &spec.vm {
        VmSpec::Id(id) => {
            // The keyword as typed: `zero` and `wildcard` are the same id.
            let typed = raw.rsplit_once(':').map(|(vm, _)| vm.trim()).unwrap_or("");
            let keyword = VmId::from_keyword(typed)
                .map(|_| typed.to_ascii_lowercase())
                .or_else(|| id.keyword().map(str::to_owned));
            (*id, keyword, None)
        }
        VmSpec::Name(name) => (partition_id(ctx, name)?.0, None, Some(name.clone())),
    };
    let (service_id, service_name) = match &spec.service {
        ServiceSpec::Name(name) => (service_id(ctx, name)?, Some(name.clone())),
        other => (other.id().unwrap_or_default(), None),
    };
    Ok(Resolved {
        addr: SockAddrHv::new(vm_id, service_id),
        vm_keyword,
        vm_name,
        service_name,
    })
}

/// Fills in the names of ids that were given as GUIDs or ports, if the admin API is reachable
/// and knows them; silently leaves them out otherwise.
pub fn name_ids(ctx: &Context, resolved: &mut Resolved) {
    #[cfg(windows)]
    if resolved.service_name.is_none() {
        let registry = crate::hyperv_registry::system();
        resolved.service_name =
            crate::hyperv_registry::name_of(&registry, resolved.addr.service_id);
    }
    let Ok(admin) = ctx.admin() else { return };
    if resolved.vm_name.is_none() && resolved.vm_keyword.is_none() {
        match admin.partition(&resolved.addr.vm_id.to_string()) {
            Ok(reply) => resolved.vm_name = Some(reply.value.name),
            Err(e) if e.is_unreachable() => return,
            Err(_) => {}
        }
    }
    if resolved.service_name.is_none() {
        if let Ok(reply) = admin.service(&resolved.addr.service_id.to_string()) {
            resolved.service_name = Some(reply.value.name);
        }
    }
}

/// The transport to act through: `--as VM`'s endpoint; else, with an explicit `--dir`, that
/// dir's `host.sock`; else what the environment says ([`Transport::from_env`]).
pub fn transport(ctx: &Context, as_vm: Option<&str>) -> Result<Transport, ResolveError> {
    if let Some(vm) = as_vm {
        return endpoint_of(ctx, vm).map(Transport::provider);
    }
    if ctx.dir_is_explicit() {
        let dirs = ctx.dirs().map_err(ResolveError::Locate)?;
        return Ok(Transport::provider(dirs.host_socket()));
    }
    Transport::from_env().map_err(ResolveError::Transport)
}

/// The endpoint socket of partition `vm` (a name, a VmId or `host`).
pub fn endpoint_of(ctx: &Context, vm: &str) -> Result<PathBuf, ResolveError> {
    let dirs = ctx.dirs().map_err(ResolveError::Locate)?;
    match VmSpec::parse(vm.trim()) {
        VmSpec::Name(name) if name == ROOT_NAME => Ok(dirs.host_socket()),
        VmSpec::Name(name) => {
            let (id, is_root) = partition_id(ctx, &name)?;
            Ok(if is_root {
                dirs.host_socket()
            } else {
                dirs.partition_socket(id)
            })
        }
        VmSpec::Id(id) => {
            if let Some(word) = id.keyword() {
                return Err(ResolveError::AsKeyword { word });
            }
            let path = dirs.partition_socket(id);
            if path.exists() {
                return Ok(path);
            }
            // Not a sandbox endpoint: the root's id, or nothing hvsockd serves.
            let reason = match ctx.admin().and_then(|admin| admin.host()) {
                Ok(host) if host.value.id == id => return Ok(dirs.host_socket()),
                Ok(_) => format!(
                    "hvsockd at {} has no partition with that VmId (see `hvsock vm list`)",
                    dirs.run.display()
                ),
                Err(e) => {
                    format!("there is no such socket, and the admin API cannot tell more: {e}")
                }
            };
            Err(ResolveError::NoEndpoint {
                vm: id,
                path,
                reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context whose admin API does not exist: nothing here may need it.
    fn offline() -> (tempfile::TempDir, Context) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let ctx = Context::new(Some(tmp.path().to_path_buf()));
        (tmp, ctx)
    }

    #[test]
    fn guids_keywords_and_ports_need_no_api() {
        let (_tmp, ctx) = offline();
        let table = [
            (
                "parent:2761",
                VmId::PARENT,
                ServiceId::from_vsock_port(2761),
                Some("parent"),
            ),
            (
                "ZERO:1",
                VmId::ZERO,
                ServiceId::from_vsock_port(1),
                Some("zero"),
            ),
            (
                "wildcard:1",
                VmId::WILDCARD,
                ServiceId::from_vsock_port(1),
                Some("wildcard"),
            ),
            (
                "c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11:3049197c-facb-11e6-bd58-64006a7986d3",
                VmId::parse("c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11").expect("guid"),
                ServiceId::parse("3049197c-facb-11e6-bd58-64006a7986d3").expect("guid"),
                None,
            ),
        ];
        for (raw, vm, service, keyword) in table {
            let spec = AddrSpec::parse(raw).expect("parses");
            let r = resolve(&ctx, raw, &spec).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(r.addr, SockAddrHv::new(vm, service), "{raw}");
            assert_eq!(r.vm_keyword.as_deref(), keyword, "{raw}");
        }
    }

    #[test]
    // hvsockd's admin API is a Unix socket.
    #[cfg(unix)]
    fn names_without_an_api_say_what_they_need() {
        let (_tmp, ctx) = offline();
        let spec = AddrSpec::parse("parent:echo").expect("parses");
        let err = resolve(&ctx, "parent:echo", &spec).expect_err("needs the API");
        let text = err.to_string();
        assert!(text.contains("service name \"echo\""), "{text}");
        assert!(text.contains("hvsockd is not running"), "{text}");
    }

    #[test]
    fn as_refuses_keywords_and_knows_host() {
        let (tmp, ctx) = offline();
        let err = endpoint_of(&ctx, "parent").expect_err("keyword");
        assert!(
            matches!(err, ResolveError::AsKeyword { word: "parent" }),
            "{err}"
        );
        assert_eq!(
            endpoint_of(&ctx, "host").expect("root"),
            tmp.path().join("host.sock")
        );
        let err = endpoint_of(&ctx, "c9c0f2f4-7f6a-4b36-8f0a-1d2f0b7a5e11").expect_err("none");
        assert!(err.to_string().contains("has no endpoint"), "{err}");
    }
}
