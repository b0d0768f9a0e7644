//! The API's objects ([`hvsock_api`]) built from the world, the endpoints and the guest ports.
//! Views read; they change nothing.

use hvsock::{ServiceId, VmId};
use hvsock_api::{
    Attachment, GuestPort, Host, Listener, Partition, PartitionRef, Policy as PolicyView, Service,
};

use super::Api;
use crate::attach::port_path;
use crate::registry::{PartitionKind, PartitionRecord, ServiceRecord};
use crate::router::Policy;
use crate::world::World;

/// A policy as shown: partitions with their names.
pub fn policy(world: &World, p: &Policy) -> PolicyView {
    let list = |l: &Option<Vec<VmId>>| {
        l.as_ref().map(|ids| {
            ids.iter()
                .map(|&id| PartitionRef {
                    id,
                    name: world.partition_label(id),
                })
                .collect()
        })
    };
    PolicyView {
        connect: list(&p.connect),
        bind: list(&p.bind),
        wildcard_bind: p.wildcard_bind,
    }
}

/// `GET /v1/host`.
pub fn host(api: &Api) -> Host {
    let world = api.world.lock();
    Host {
        id: world.root(),
        name: crate::registry::ROOT_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        state_dir: api.dirs.state.clone(),
        run_dir: api.dirs.run.clone(),
        endpoint: api.dirs.host_socket(),
        uptime_seconds: api.started.elapsed().as_secs(),
        default_policy: policy(&world, world.default_policy()),
    }
}

/// A service.
pub fn service(api: &Api, s: &ServiceRecord) -> Service {
    let world = api.world.lock();
    let listeners = world
        .listeners()
        .filter(|l| l.addr.service_id == s.id)
        .count();
    Service {
        id: s.id,
        name: s.name.clone(),
        enabled: s.enabled,
        vsock_port: s.id.vsock_port(),
        listeners: listeners as u64,
        created_at: s.created_at,
        policy: s.policy.as_ref().map(|p| policy(&world, p)),
        effective_policy: Some(policy(
            &world,
            s.policy.as_ref().unwrap_or(world.default_policy()),
        )),
        access: s.access.as_ref().map(access),
    }
}

/// Host-user rules with names.
pub fn access(a: &crate::registry::Access) -> hvsock_api::Access {
    use crate::world::access::{group_name, user_name};
    let account = |id: u32, name: String| hvsock_api::Account { id, name };
    hvsock_api::Access {
        users: a.users.iter().map(|u| account(*u, user_name(*u))).collect(),
        groups: a
            .groups
            .iter()
            .map(|g| account(*g, group_name(*g)))
            .collect(),
    }
}

/// A partition.
pub fn partition(api: &Api, p: &PartitionRecord) -> Partition {
    let world = api.world.lock();
    let mut children: Vec<String> = world
        .topology()
        .children(p.id)
        .map(|c| world.partition_label(c))
        .collect();
    children.sort();
    let listeners = world.listeners().filter(|l| l.partition == p.id).count();
    let parent_name = p.parent.map(|id| world.partition_label(id));
    drop(world);
    Partition {
        id: p.id,
        name: p.name.clone(),
        kind: p.kind,
        parent: p.parent,
        parent_name,
        children,
        endpoint: api.endpoints.path(p.id),
        hybrid_vsock: p.hybrid_vsock.clone(),
        guest_ports: api.guest_ports.ports(p.id),
        sessions: api.endpoints.sessions(p.id) as u64,
        listeners: listeners as u64,
        created_at: p.created_at,
        guest: (p.kind != PartitionKind::Root).then(|| guest(api.guests.get(p.id))),
    }
}

/// A guest as the API shows it.
pub fn guest(g: crate::services::guests::Guest) -> hvsock_api::Guest {
    let secs = crate::registry::unix_secs;
    let facts = g.facts.as_ref();
    hvsock_api::Guest {
        state: g.state,
        last_heartbeat: g.last_heartbeat.map(secs),
        heartbeat_age_ms: g.heartbeat_age_secs.map(|a| (a * 1000.0) as u64),
        agent: facts.map(|f| f.agent.clone()),
        os: facts.map(|f| f.os.clone()),
        kernel: facts.map(|f| f.kernel.clone()),
        hostname: facts.map(|f| f.hostname.clone()),
        time_offset_ns: g.time.map(|t| t.offset_ns),
        time_delay_ns: g.time.map(|t| t.delay_ns),
        time_stepped: g.time.map(|t| t.stepped),
        time_reported_at: g.time.map(|t| secs(t.at)),
    }
}

/// Every live listener, oldest first.
pub fn listeners(api: &Api) -> Vec<Listener> {
    let world = api.world.lock();
    let mut views: Vec<Listener> = world
        .listeners()
        .map(|l| {
            let (unaccepted, waiting) = l.pending();
            Listener {
                id: l.id,
                partition: l.partition,
                partition_name: world.partition_label(l.partition),
                vm: l.addr.vm_id,
                vm_keyword: l.addr.vm_id.keyword().map(str::to_owned),
                service: l.addr.service_id,
                service_name: world.service(l.addr.service_id).map(|s| s.name.clone()),
                backlog: l.backlog,
                unaccepted,
                waiting: waiting as u64,
                accepted: l.accepted(),
                pid: l.pid,
            }
        })
        .collect();
    views.sort_by_key(|v| v.id);
    views
}

/// Every VM attachment, by name.
pub fn attachments(api: &Api) -> Vec<Attachment> {
    let vms: Vec<PartitionRecord> = api
        .world
        .lock()
        .partitions()
        .filter(|p| p.kind == PartitionKind::Vm)
        .cloned()
        .collect();
    let mut views: Vec<Attachment> = vms
        .into_iter()
        .filter_map(|p| {
            let path = p.hybrid_vsock?;
            let guest_ports = api
                .guest_ports
                .ports(p.id)
                .into_iter()
                .map(|port| {
                    let service = ServiceId::from_vsock_port(port);
                    GuestPort {
                        port,
                        path: port_path(&path, port),
                        service,
                        service_name: api.world.lock().service(service).map(|s| s.name.clone()),
                    }
                })
                .collect();
            Some(Attachment {
                partition: p.id,
                name: p.name,
                parent: p.parent,
                hybrid_vsock: path,
                guest_ports,
            })
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}
