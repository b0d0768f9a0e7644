//! libhvsock as its users get it, for the C tests (`tests/c_api.rs`, `tests/nested_vm_c.rs`):
//! cargo-c installed by `scripts/c-deps.sh`, `cargo cinstall --release -p hvsock-c --prefix
//! /usr --destdir STAGE` once per test process, and programs compiled by the system's `cc`
//! with `pkg-config` pointed at the stage (`PKG_CONFIG_SYSROOT_DIR`, as a distribution does).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to its end within `secs` (under `timeout(1)`); panics with its output on failure.
pub fn run(what: &str, secs: u64, cmd: &mut Command) -> Output {
    let out = super::under_timeout(secs, cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What `cargo cinstall` put in the stage, and the programs built against it.
pub struct Installed {
    /// The --destdir.
    pub stage: PathBuf,
    /// STAGE/usr/lib.
    pub lib: PathBuf,
    /// Where programs are built.
    pub work: PathBuf,
}

impl Installed {
    pub fn pkg_config(&self, args: &[&str]) -> Vec<String> {
        let out = run(
            "pkg-config",
            30,
            Command::new("pkg-config")
                .args(args)
                .arg("hvsock")
                .env("PKG_CONFIG_PATH", self.lib.join("pkgconfig"))
                .env("PKG_CONFIG_SYSROOT_DIR", &self.stage),
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Compiles `src` into `name` in the work dir with `flags` after the source.
    pub fn cc(&self, src: &Path, name: &str, flags: &[String]) -> PathBuf {
        let out = self.work.join(name);
        run(
            &format!("cc {}", src.display()),
            120,
            Command::new("cc")
                .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1"])
                .arg(src)
                .arg("-o")
                .arg(&out)
                .args(flags),
        );
        out
    }

    /// `src` linked with `pkg-config --cflags --libs hvsock`.
    pub fn linked(&self, src: &Path, name: &str) -> PathBuf {
        let mut flags = self.pkg_config(&["--cflags", "--libs"]);
        flags.push("-lpthread".into());
        self.cc(src, name, &flags)
    }

    /// `src` built with the header alone (`pkg-config --cflags hvsock`, no library).
    pub fn header_only(&self, src: &Path, name: &str) -> PathBuf {
        let mut flags = self.pkg_config(&["--cflags"]);
        flags.push("-lpthread".into());
        let exe = self.cc(src, name, &flags);
        let needed = readelf(&exe);
        assert!(
            !needed.contains("libhvsock"),
            "{name} needs libhvsock:\n{needed}"
        );
        exe
    }

    /// `src` linked with `libhvsock.a` (and libc dynamically), with the libraries
    /// `pkg-config --static --libs hvsock` names.
    pub fn static_linked(&self, src: &Path, name: &str) -> PathBuf {
        let mut flags = self.pkg_config(&["--cflags"]);
        for f in self.pkg_config(&["--static", "--libs"]) {
            flags.push(if f == "-lhvsock" {
                "-l:libhvsock.a".into()
            } else {
                f
            });
        }
        flags.push("-lpthread".into());
        let exe = self.cc(src, name, &flags);
        assert!(!readelf(&exe).contains("libhvsock"), "{name} is not static");
        exe
    }

    /// The shared library's path, for `LD_PRELOAD`.
    pub fn so(&self) -> PathBuf {
        self.lib.join("libhvsock.so")
    }

    /// A command for a program built here: the installed library on its path, and none of the
    /// environment that could send it to another hvsockd.
    pub fn command(&self, exe: &Path) -> Command {
        let mut cmd = Command::new(exe);
        cmd.env("LD_LIBRARY_PATH", &self.lib)
            .env_remove("LD_PRELOAD")
            .env_remove("HVSOCK_DIR")
            .env_remove("HVSOCK_ENDPOINT")
            .env_remove("HVSOCK_TRANSPORT");
        cmd
    }
}

/// `readelf -d` of `path`.
pub fn readelf(path: &Path) -> String {
    let out = run(
        "readelf -d",
        30,
        Command::new("readelf").arg("-d").arg(path),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Installs cargo-c if needed and runs `cargo cinstall` once per test process.
pub fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let out = run(
            "scripts/c-deps.sh (builds cargo-c once into the cache)",
            3000,
            &mut Command::new(repo().join("scripts/c-deps.sh")),
        );
        let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let (profile_dir, _) = super::test_profile();
        let target = profile_dir.parent().unwrap().to_path_buf();
        let base = target.join("c-api-test");
        let stage = base.join("stage");
        let _ = std::fs::remove_dir_all(&stage);
        let work = base.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
        run(
            "cargo cinstall --release -p hvsock-c --prefix /usr --destdir STAGE",
            3000,
            Command::new(env!("CARGO"))
                .args(["cinstall", "--release", "--locked", "-p", "hvsock-c"])
                .args(["--prefix", "/usr", "--libdir", "/usr/lib", "--destdir"])
                .arg(&stage)
                .arg("--target-dir")
                .arg(&target)
                .env("PATH", path)
                .current_dir(repo()),
        );
        Installed {
            lib: stage.join("usr/lib"),
            stage,
            work,
        }
    })
}
