//! Guest accounts: who a command runs as (`--user`), and the credentials to switch to in the
//! child before it executes.

use std::ffi::CString;
use std::io;
use std::path::PathBuf;

use nix::unistd::{Gid, Uid, User};

/// An account to run a command as.
#[derive(Debug, Clone)]
pub struct Account {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Every group it belongs to (primary included).
    pub groups: Vec<u32>,
    /// Its home directory.
    pub home: PathBuf,
    /// Its login shell.
    pub shell: PathBuf,
}

/// Why an account cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// No such user in the guest.
    #[error("there is no user {0:?} in the guest")]
    Unknown(String),
    /// Looking it up failed.
    #[error("looking up user {name:?}: {source}")]
    Lookup {
        /// The user.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The agent cannot switch to it.
    #[error(
        "the agent runs as uid {agent} and cannot start commands as {name:?} (uid {uid}); run the agent as root"
    )]
    NotAllowed {
        /// The user asked for.
        name: String,
        /// Its uid.
        uid: u32,
        /// The agent's uid.
        agent: u32,
    },
}

fn from_user(user: User) -> Account {
    let groups = CString::new(user.name.clone())
        .ok()
        .and_then(|name| nix::unistd::getgrouplist(&name, user.gid).ok())
        .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|| vec![user.gid.as_raw()]);
    let shell = if user.shell.as_os_str().is_empty() {
        PathBuf::from("/bin/sh")
    } else {
        user.shell
    };
    Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        home: user.dir,
        shell,
    }
}

impl Account {
    /// The agent's own account; a root account with `/root` and `/bin/sh` if the guest's
    /// user database does not know it (a minimal initramfs).
    pub fn current() -> Account {
        let uid = Uid::effective();
        match User::from_uid(uid) {
            Ok(Some(user)) => from_user(user),
            _ => Account {
                name: if uid.is_root() {
                    "root".into()
                } else {
                    uid.to_string()
                },
                uid: uid.as_raw(),
                gid: Gid::effective().as_raw(),
                groups: vec![Gid::effective().as_raw()],
                home: if uid.is_root() {
                    PathBuf::from("/root")
                } else {
                    PathBuf::from("/")
                },
                shell: PathBuf::from("/bin/sh"),
            },
        }
    }

    /// The account named `name` (or a numeric uid), checked against what the agent may do.
    pub fn lookup(name: &str) -> Result<Account, AccountError> {
        let found = match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(name),
        };
        let account = match found {
            Ok(Some(user)) => from_user(user),
            Ok(None) => return Err(AccountError::Unknown(name.to_owned())),
            Err(e) => {
                return Err(AccountError::Lookup {
                    name: name.to_owned(),
                    source: e.into(),
                });
            }
        };
        let agent = Uid::effective();
        if !agent.is_root() && agent.as_raw() != account.uid {
            return Err(AccountError::NotAllowed {
                name: name.to_owned(),
                uid: account.uid,
                agent: agent.as_raw(),
            });
        }
        Ok(account)
    }

    /// Whether starting a command as this account needs a change of credentials.
    pub fn needs_switch(&self) -> bool {
        Uid::effective().as_raw() != self.uid || Gid::effective().as_raw() != self.gid
    }

    /// Switches the calling process to this account: groups, gid, then uid. Meant for the
    /// child between fork and exec (it only makes system calls and allocates nothing).
    pub fn switch_to(&self, groups: &[Gid]) -> io::Result<()> {
        nix::unistd::setgroups(groups)?;
        nix::unistd::setgid(Gid::from_raw(self.gid))?;
        nix::unistd::setuid(Uid::from_raw(self.uid))?;
        Ok(())
    }

    /// The groups as nix's type, made before fork so that the child allocates nothing.
    pub fn gids(&self) -> Vec<Gid> {
        self.groups.iter().copied().map(Gid::from_raw).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_account_is_known_and_root_is_found_by_name_and_uid() {
        let me = Account::current();
        assert_eq!(me.uid, Uid::effective().as_raw());
        assert!(!me.needs_switch());
        if Uid::effective().is_root() {
            assert_eq!(Account::lookup("root").expect("root").uid, 0);
            assert_eq!(Account::lookup("0").expect("uid 0").name, "root");
        }
        assert!(matches!(
            Account::lookup("no-such-user-hvsock"),
            Err(AccountError::Unknown(_))
        ));
    }
}
