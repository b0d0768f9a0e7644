//! Shared by the end-to-end tests: the real binaries, a real hvsockd on a temp dir, the
//! processes the tests start, and test data. Each test file includes it with `mod support;`.
//!
//! - `build`: [`bins`] and [`examples_dir`]: the binaries and the examples under test, built
//!   with the tests' own cargo, profile and target directory;
//! - `daemon`: [`Daemon`], hvsockd on a fresh temp dir (started as a [`Launcher`] says, for a
//!   test that plays the service manager), ended when dropped; [`http`], a tiny
//!   client of its admin API; [`hv`], the `hvsock` CLI aimed at it;
//! - `process`: [`Guard`], which every process a test starts is held by (killed and reaped
//!   when dropped); [`Proc`], a process whose stdin the test writes and whose output is
//!   collected; [`run`] and [`Out`], a command run to its end within a bound; [`wait_for`];
//! - `manager`: [`Manager`], a service manager's notify socket and descriptor store, as systemd
//!   keeps it, for tests of hvsockd's store;
//! - `resume`: [`accept_within`] (an accept that fails the test rather than hang) and
//!   [`answered_in_order`], for listeners that live through a restart or an upgrade;
//! - `data`: [`pattern`] (bulk test data), [`text`] and [`PORT_2761`];
//! - `c`: libhvsock as its users get it (`cargo cinstall`, programs built with pkg-config);
//! - here: [`tempdir`], [`require`] (a tool the tests need) and [`require_root`].
//!
//! Nothing is skipped quietly: a test that needs root or a tool fails, saying what to do.

#![allow(dead_code, clippy::unwrap_used)]

mod build;
pub mod c;
mod daemon;
mod data;
mod manager;
mod process;
mod resume;

use std::path::{Path, PathBuf};

// Each test file uses some of these.
#[allow(unused_imports)]
pub use build::{Bins, agent_bin, bins, example, examples_dir, test_profile, vhost_bin};
#[allow(unused_imports)]
pub use daemon::{Daemon, Launcher, http, hv};
#[allow(unused_imports)]
pub use data::{PORT_2761, pattern, text};
#[allow(unused_imports)]
pub use manager::{Manager, STORE_MAX};
#[allow(unused_imports)]
pub use process::{
    Guard, Out, Proc, QUICK, run, run_checked, run_ok, under_timeout, wait_exit, wait_for,
};
#[allow(unused_imports)]
pub use resume::{accept_within, answered_in_order};

/// A new temp dir whose name starts with `prefix` (so that what a test leaves is recognisable),
/// removed when dropped.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// The path of the program `tool`, or a failure that says how to get it.
pub fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    panic!("{tool} is not installed: run scripts/packaging-deps.sh (scripts/test does)");
}

/// Fails unless the tests run as root, saying that `what` needs it: such parts run in CI
/// (`.ci/run` runs `scripts/test` as root) and are never skipped.
pub fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "{what} needs root (to run a client as another user); CI runs the tests as root: run \
         them as root (e.g. `sudo -E cargo test`, or scripts/test as root)"
    );
}
