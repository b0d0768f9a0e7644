//! Which `PATH_<port>` sockets must be open: the pure choice ([`wanted_ports`], the same
//! router decision every connect goes through) and its application to the world ([`wanted`]);
//! and the checks of a hybrid-vsock path a user gives.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hvsock::{ServiceId, SockAddrHv, VmId};

use crate::registry::PartitionKind;
use crate::router::{self, Policy, ServiceState, Topology};
use crate::world::World;

/// The longest hybrid-vsock path: `PATH_4294967295` must fit in a Unix socket address.
pub const MAX_PATH_LEN: usize = 107 - "_4294967295".len();

/// The guest ports on which `vm` must be served: template services for which `router::decide`
/// finds a listener when `vm` connects to `(PARENT, service)`.
///
/// `bound` lists every live listener as `(partition, pattern, service)`; `state` says what the
/// registry knows of a service.
pub fn wanted_ports(
    topo: &Topology,
    vm: VmId,
    bound: &[(VmId, VmId, ServiceId)],
    state: impl Fn(ServiceId) -> ServiceState,
) -> BTreeSet<u32> {
    wanted_ports_with_policy(topo, vm, bound, state, |_| Policy::default())
}

/// [`wanted_ports`] with each service's policy (`router::decide_with_policy`): a port stays
/// closed when the policy would refuse `vm` (its `connect` rule) or every listener that would
/// take it (its `bind` and `wildcard_bind` rules).
pub fn wanted_ports_with_policy(
    topo: &Topology,
    vm: VmId,
    bound: &[(VmId, VmId, ServiceId)],
    state: impl Fn(ServiceId) -> ServiceState,
    policy: impl Fn(ServiceId) -> Policy,
) -> BTreeSet<u32> {
    let Some(parent) = topo.parent(vm) else {
        return BTreeSet::new();
    };
    let services: BTreeSet<ServiceId> = bound
        .iter()
        .filter(|(partition, _, _)| *partition == parent)
        .map(|&(_, _, service)| service)
        .filter(|service| service.vsock_port().is_some())
        .collect();
    let mut ports = BTreeSet::new();
    for service in services {
        let Some(port) = service.vsock_port() else {
            continue;
        };
        let patterns: Vec<VmId> = bound
            .iter()
            .filter(|&&(partition, _, s)| partition == parent && s == service)
            .map(|&(_, pattern, _)| pattern)
            .collect();
        let target = SockAddrHv::new(VmId::PARENT, service);
        let policy = policy(service);
        let route = router::decide_with_policy(topo, vm, target, state(service), &policy, |dest| {
            (dest == parent).then_some(patterns.as_slice())
        });
        if matches!(
            route,
            Ok(router::Route {
                listener: Some(_),
                ..
            })
        ) {
            ports.insert(port);
        }
    }
    ports
}

/// Every `(VM, port)` that must be open, with the VM's hybrid-vsock path.
pub fn wanted(world: &World) -> BTreeMap<(VmId, u32), PathBuf> {
    let vms: Vec<(VmId, PathBuf)> = world
        .partitions()
        .filter(|p| p.kind == PartitionKind::Vm)
        .filter_map(|p| Some((p.id, p.hybrid_vsock.clone()?)))
        .collect();
    let mut out = BTreeMap::new();
    if vms.is_empty() {
        return out;
    }
    let bound: Vec<(VmId, VmId, ServiceId)> = world
        .listeners()
        .map(|l| (l.partition, l.addr.vm_id, l.addr.service_id))
        .collect();
    let state = |service: ServiceId| world.service_state(service);
    for (vm, path) in vms {
        let policy = |service: ServiceId| world.effective_policy(service).clone();
        for port in wanted_ports_with_policy(world.topology(), vm, &bound, state, policy) {
            out.insert((vm, port), path.clone());
        }
    }
    out
}

/// `PATH_<port>`.
pub fn port_path(path: &Path, port: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!("_{port}"));
    PathBuf::from(name)
}

/// Checks a hybrid-vsock path given by a user: absolute, short enough for `PATH_<port>`, no NUL,
/// in an existing directory.
pub fn check_path(path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    if !path.is_absolute() {
        return Err(format!(
            "the hybrid-vsock path {} must be absolute",
            path.display()
        ));
    }
    if bytes.contains(&0) {
        return Err("the hybrid-vsock path contains a NUL byte".into());
    }
    if bytes.len() > MAX_PATH_LEN {
        return Err(format!(
            "the hybrid-vsock path {} is {} bytes long; at most {MAX_PATH_LEN} fit, because hvsockd listens on PATH_<port> and a Unix socket path holds 107 bytes",
            path.display(),
            bytes.len()
        ));
    }
    if path.file_name().is_none() {
        return Err(format!(
            "the hybrid-vsock path {} names no file",
            path.display()
        ));
    }
    match path.parent() {
        Some(dir) if dir.is_dir() => Ok(()),
        _ => Err(format!(
            "the directory of the hybrid-vsock path {} does not exist: create it first (the VMM's socket and hvsockd's PATH_<port> sockets live there)",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use hvsock::Guid;

    fn id(n: u8) -> VmId {
        VmId(Guid::from_bytes([n; 16]))
    }

    #[test]
    fn wanted_ports_follow_listeners_patterns_and_services() {
        // root ─┬─ vm1
        //       ├─ vm2
        //       └─ sandbox ── vm3
        let (root, vm1, vm2, sandbox, vm3) = (id(1), id(2), id(3), id(4), id(5));
        let mut topo = Topology::new(root);
        topo.insert(vm1, root);
        topo.insert(vm2, root);
        topo.insert(sandbox, root);
        topo.insert(vm3, sandbox);
        let p = ServiceId::from_vsock_port;
        let not_template = ServiceId(Guid::from_bytes([9; 16]));
        let enabled = |s: ServiceId| {
            if s == p(7) {
                ServiceState::Disabled
            } else if s == p(8) {
                ServiceState::Unregistered
            } else {
                ServiceState::Enabled
            }
        };
        let bound = [
            (root, VmId::ZERO, p(1)),         // any VM of root
            (root, vm1, p(2)),                // only vm1
            (root, VmId::CHILDREN, p(3)),     // children: vm1, vm2
            (root, VmId::LOOPBACK, p(4)),     // the root itself: no VM
            (root, sandbox, p(5)),            // the sandbox only: no VM
            (root, VmId::ZERO, p(7)),         // disabled
            (root, VmId::ZERO, p(8)),         // unregistered
            (root, VmId::ZERO, not_template), // not a port
            (sandbox, VmId::ZERO, p(6)),      // vm3's parent
            (vm2, VmId::ZERO, p(9)),          // inside a VM: not the parent of anyone
        ];
        let ports = |vm| wanted_ports(&topo, vm, &bound, enabled);
        assert_eq!(ports(vm1), BTreeSet::from([1, 2, 3]));
        assert_eq!(ports(vm2), BTreeSet::from([1, 3]));
        assert_eq!(ports(vm3), BTreeSet::from([6]));
        assert_eq!(ports(id(0x77)), BTreeSet::new()); // unknown partition
        assert_eq!(wanted_ports(&topo, vm1, &[], enabled), BTreeSet::new());
        // A more specific listener that refuses does not hide a wildcard that accepts: the
        // router picks among accepting patterns only.
        let both = [(root, vm1, p(1)), (root, VmId::ZERO, p(1))];
        assert_eq!(
            wanted_ports(&topo, vm2, &both, enabled),
            BTreeSet::from([1])
        );
    }

    #[test]
    fn wanted_ports_follow_the_services_policies() {
        let (root, vm1, vm2) = (id(1), id(2), id(3));
        let mut topo = Topology::new(root);
        topo.insert(vm1, root);
        topo.insert(vm2, root);
        let p = ServiceId::from_vsock_port;
        let enabled = |_| ServiceState::Enabled;
        let bound = [
            (root, VmId::ZERO, p(1)),
            (root, VmId::CHILDREN, p(2)),
            (root, VmId::ZERO, p(3)),
        ];
        let policy = |s: ServiceId| {
            if s == p(1) {
                // Only vm1 may connect.
                Policy {
                    connect: Some(vec![vm1]),
                    ..Policy::default()
                }
            } else if s == p(3) {
                // Its only listener is a wildcard, which the policy no longer allows.
                Policy {
                    wildcard_bind: false,
                    ..Policy::default()
                }
            } else {
                Policy::default()
            }
        };
        let ports = |vm| wanted_ports_with_policy(&topo, vm, &bound, enabled, policy);
        assert_eq!(ports(vm1), BTreeSet::from([1, 2]));
        assert_eq!(ports(vm2), BTreeSet::from([2]));
    }

    #[test]
    fn port_paths_and_path_checks() {
        assert_eq!(
            port_path(Path::new("/run/vm/fc.vsock"), 2761),
            PathBuf::from("/run/vm/fc.vsock_2761")
        );
        assert!(
            check_path(Path::new("relative/x.sock"))
                .unwrap_err()
                .contains("absolute")
        );
        let long = format!("/tmp/{}", "x".repeat(MAX_PATH_LEN));
        assert!(
            check_path(Path::new(&long))
                .unwrap_err()
                .contains("at most")
        );
        assert!(
            check_path(Path::new("/nonexistent-hvsock-dir/vm.vsock"))
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(
            check_path(Path::new("/"))
                .unwrap_err()
                .contains("names no file")
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_path(&dir.path().join("vm.vsock")), Ok(()));
    }
}
