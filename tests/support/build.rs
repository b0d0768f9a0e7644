//! The code under test, built by the tests themselves: [`bins`] builds `hvsockd` and `hvsock`
//! once per test process with the same cargo, profile and target directory as the tests (a
//! no-op when they are fresh), so that `cargo test` alone always tests the current code;
//! [`examples_dir`] does the same for the examples.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::Guard;

/// How long a build of the binaries or the examples may take (a cold build on a busy machine).
const BUILD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Paths of the binaries under test.
#[derive(Debug)]
pub struct Bins {
    /// The provider.
    pub hvsockd: PathBuf,
    /// The client CLI.
    pub hvsock: PathBuf,
}

/// The tests' own build: `target/<profile>` (the parent of the test executable's `deps/`) and
/// the profile's name.
pub fn test_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (profile_dir, profile)
}

/// Runs `cargo build --quiet ARGS` at the repository root with the same cargo, profile and
/// target directory as the tests (a no-op when everything is fresh) and returns
/// `target/<profile>`; panics naming `what` if the build fails.
fn cargo_build(args: &[&str], what: &str) -> PathBuf {
    let (profile_dir, profile) = test_profile();
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--quiet"])
        .args(args)
        .arg("--target-dir")
        .arg(profile_dir.parent().unwrap())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let status = Guard::spawn(&mut cmd).wait(BUILD_LIMIT);
    assert!(status.success(), "cargo build of {what} failed");
    profile_dir
}

/// Builds the binaries (once per process) and returns their paths.
pub fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let profile_dir = cargo_build(
            &["--bins", "-p", "hvsockd", "-p", "hvsock-cli"],
            "hvsockd and hvsock",
        );
        Bins {
            hvsockd: profile_dir.join("hvsockd"),
            hvsock: profile_dir.join("hvsock"),
        }
    })
}

/// Builds `hvsock-agent` (once per process) like [`bins`] and returns its path.
pub fn agent_bin() -> &'static Path {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT.get_or_init(|| {
        cargo_build(&["--bins", "-p", "hvsock-agent"], "hvsock-agent").join("hvsock-agent")
    })
}

/// Builds the root package's examples (once per process) with the same cargo, profile and
/// target directory as the tests, as [`bins`] does for the binaries, and returns the
/// directory that holds them (`target/<profile>/examples`).
pub fn examples_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        cargo_build(&["--examples", "-p", "hvsock-e2e"], "the examples").join("examples")
    })
}

/// The path of the example binary `name`, built by [`examples_dir`].
pub fn example(name: &str) -> PathBuf {
    examples_dir().join(name)
}

/// Builds `hvsock-vhost` (once per process) like [`bins`] and returns its path.
pub fn vhost_bin() -> &'static Path {
    static VHOST: OnceLock<PathBuf> = OnceLock::new();
    VHOST.get_or_init(|| {
        cargo_build(&["--bins", "-p", "hvsock-vhost"], "hvsock-vhost").join("hvsock-vhost")
    })
}
