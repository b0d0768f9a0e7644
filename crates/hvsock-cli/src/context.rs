//! What every command needs: where hvsockd is (`--dir`, `HVSOCK_DIR` or the defaults) and a
//! client of its admin API, made on first use so that commands that need no API (e.g.
//! `connect parent:2761` inside a sandbox) never look for it.

use std::cell::OnceCell;
use std::io;
use std::path::{Path, PathBuf};

use hvsock::dirs::{Dirs, ENV_DIR};

use crate::admin_client::{AdminClient, AdminError};

/// Where hvsockd is, and its admin API.
#[derive(Debug)]
pub struct Context {
    dir_arg: Option<PathBuf>,
    dirs: Result<Dirs, (io::ErrorKind, String)>,
    admin: OnceCell<AdminClient>,
}

impl Context {
    /// The context of a command given `--dir` (or not).
    pub fn new(dir_arg: Option<PathBuf>) -> Context {
        let dirs = Dirs::resolve(dir_arg.as_deref()).map_err(|e| (e.kind(), e.to_string()));
        Context {
            dir_arg,
            dirs,
            admin: OnceCell::new(),
        }
    }

    /// Whether `--dir` was given on the command line.
    pub fn dir_is_explicit(&self) -> bool {
        self.dir_arg.is_some()
    }

    /// hvsockd's directories; an error if they cannot be known (no `--dir`, no `HVSOCK_DIR`
    /// and no `XDG_RUNTIME_DIR`).
    pub fn dirs(&self) -> io::Result<&Dirs> {
        self.dirs
            .as_ref()
            .map_err(|(kind, message)| io::Error::new(*kind, message.clone()))
    }

    /// The command that starts hvsockd for these directories.
    fn start_command(&self, dirs: &Dirs) -> String {
        let named =
            self.dir_is_explicit() || std::env::var_os(ENV_DIR).is_some_and(|d| !d.is_empty());
        if named {
            format!("hvsockd --dir {}", shell_word(&dirs.run))
        } else {
            "hvsockd".to_owned()
        }
    }

    /// The admin API client.
    pub fn admin(&self) -> Result<&AdminClient, AdminError> {
        if cfg!(windows) {
            return Err(AdminError::Locate(io::Error::new(
                io::ErrorKind::Unsupported,
                "hvsockd and its admin API run on Linux only; on Windows Hyper-V is the provider",
            )));
        }
        if let Some(client) = self.admin.get() {
            return Ok(client);
        }
        let dirs = self.dirs().map_err(AdminError::Locate)?;
        let client = AdminClient::new(dirs.admin_socket(), self.start_command(dirs));
        Ok(self.admin.get_or_init(|| client))
    }
}

/// A path as one shell word: quoted when it holds anything but plain characters.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,=@%:".contains(c));
    if plain {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_word(Path::new("/tmp/x")), "/tmp/x");
        assert_eq!(shell_word(Path::new("/tmp/a b")), "'/tmp/a b'");
        assert_eq!(shell_word(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }

    #[test]
    // hvsockd's admin API is a Unix socket.
    #[cfg(unix)]
    fn an_explicit_dir_names_itself_in_the_start_hint() {
        let ctx = Context::new(Some(PathBuf::from("/srv/hv")));
        let admin = ctx.admin().expect("client");
        assert_eq!(admin.socket(), Path::new("/srv/hv/admin.sock"));
        let err = admin.get("/v1/host").expect_err("nothing there");
        assert!(err.to_string().contains("`hvsockd --dir /srv/hv`"), "{err}");
    }
}
