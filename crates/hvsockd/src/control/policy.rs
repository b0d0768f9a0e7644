//! A policy patch merged into a service's policy (JSON merge patch, RFC 7396), partitions
//! resolved by name or id.

use hvsock::VmId;
use hvsock_api::PolicyPatch;

use super::ControlError;
use crate::router::Policy;
use crate::world::World;

/// Partitions by name or id, as ids; the first that is not in the registry is an error that
/// names the rule.
fn resolve(world: &World, rule: &str, keys: &[String]) -> Result<Vec<VmId>, ControlError> {
    let mut ids = Vec::with_capacity(keys.len());
    for key in keys {
        let id = world.find_partition(key).map(|p| p.id).ok_or_else(|| {
            ControlError::invalid(
                "unknown_partition",
                format!("policy {rule}: no partition {key:?} in the registry"),
            )
        })?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// `current` with `patch` merged in. A service without a policy of its own starts from the
/// default policy, the one that applied to it until now; an absent member is left as it is,
/// `null` resets it.
pub(super) fn merge(
    world: &World,
    current: Option<&Policy>,
    patch: PolicyPatch,
) -> Result<Policy, ControlError> {
    let mut policy = match current {
        Some(p) => p.clone(),
        None => world.default_policy().clone(),
    };
    if let Some(connect) = patch.connect {
        policy.connect = connect
            .map(|keys| resolve(world, "connect", &keys))
            .transpose()?;
    }
    if let Some(bind) = patch.bind {
        policy.bind = bind.map(|keys| resolve(world, "bind", &keys)).transpose()?;
    }
    if let Some(wildcard) = patch.wildcard_bind {
        policy.wildcard_bind = wildcard.unwrap_or(true);
    }
    Ok(policy)
}
