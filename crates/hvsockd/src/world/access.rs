//! The services' host-user rules: who on the host may connect to a service through the root
//! partition's endpoint (`host.sock`), decided on the client's credentials as the kernel
//! recorded them when it connected (`SO_PEERCRED`, and the supplementary groups of its pid).
//!
//! A service without rules ([`ServiceRecord::access`] `None`) allows whoever may open
//! `host.sock` (its mode and group decide that). A service with rules allows root (and the
//! user hvsockd runs as, who owns `admin.sock` and could change the rules anyway), the users
//! listed and the members of the groups listed; empty lists mean root only, the default of
//! the VM session and file copy. Connects from other partitions (sandboxes, guests) are not
//! host users and are not subject to the rules.
//!
//! [`ServiceRecord::access`]: crate::registry::ServiceRecord::access

use hvsock::{SockAddrHv, VmId};
use hvsock_proto::ErrorCode;

use super::{Refused, World};
use crate::registry::Access;
use crate::sys::PeerCred;

/// A user's name, or its number.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// A group's name, or its number.
pub fn group_name(gid: u32) -> String {
    nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// The rules for people: `root only`, or `root, users alice, bob, groups wheel`.
pub fn describe(access: &Access) -> String {
    let mut parts = vec!["root".to_owned()];
    if !access.users.is_empty() {
        let names: Vec<String> = access.users.iter().map(|u| user_name(*u)).collect();
        parts.push(format!("users {}", names.join(", ")));
    }
    if !access.groups.is_empty() {
        let names: Vec<String> = access.groups.iter().map(|g| group_name(*g)).collect();
        parts.push(format!("members of {}", names.join(", ")));
    }
    if parts.len() == 1 {
        "root only".to_owned()
    } else {
        parts.join("; ")
    }
}

impl World {
    /// Whether the host client `cred` may connect from partition `from` to `target`: always
    /// for a connect from another partition than the root, or to a service without rules.
    pub fn check_user(
        &self,
        from: VmId,
        target: SockAddrHv,
        cred: Option<&PeerCred>,
    ) -> Result<(), Refused> {
        if from != self.root() {
            return Ok(());
        }
        let Some(service) = self.service(target.service_id) else {
            return Ok(());
        };
        let Some(access) = &service.access else {
            return Ok(());
        };
        let (uid, groups) = match cred {
            Some(c) => (c.uid, c.groups.as_slice()),
            // Without credentials, nobody but a service without rules.
            None => (u32::MAX, &[][..]),
        };
        // hvsockd's own user owns admin.sock and could change the rules anyway (an hvsockd a
        // user runs for themself, as in the README's walk-through, is theirs).
        if access.allows(uid, groups) || uid == rustix::process::geteuid().as_raw() {
            return Ok(());
        }
        let who = match cred {
            Some(c) => format!("user {} (uid {})", user_name(c.uid), c.uid),
            None => "a client whose credentials the kernel did not give".to_owned(),
        };
        Err(Refused::new(
            ErrorCode::Denied,
            "user",
            format!(
                "service {} allows {} on the host, not {who}: an administrator can allow it with `hvsock service access {} --allow-user USER` or `--allow-group GROUP`",
                service.name,
                describe(access),
                service.name
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_always_then_listed_users_and_groups() {
        let root_only = Access::root_only();
        assert!(root_only.allows(0, &[0]));
        assert!(!root_only.allows(1000, &[1000, 27]));
        let a = Access {
            users: vec![1000],
            groups: vec![27],
        };
        assert!(a.allows(1000, &[1000]));
        assert!(a.allows(1001, &[1001, 27]));
        assert!(!a.allows(1001, &[1001]));
        assert_eq!(describe(&root_only), "root only");
    }
}
