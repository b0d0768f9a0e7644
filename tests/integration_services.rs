//! The integration services as hvsockd registers and guards them, end to end: the set a fresh
//! registry gets at first start (the VM session and file copy disabled, so `hvsock exec` is
//! refused with what to do until an administrator enables it), an existing registry left as it
//! is on restart, and the host-user rules (`hvsock service access`): a user the rule excludes
//! (the CLI run as `nobody`) is refused with a clear message, and allowed once named.

#![allow(clippy::unwrap_used)]

mod agent_support;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use agent_support::{Agent, QUICK, run, text};
use hvsock_agent::services;
use support::{Daemon, hv};

/// The uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;

#[test]
fn a_fresh_registry_has_the_integration_services_and_exec_waits_for_an_administrator() {
    let mut d = Daemon::start();
    let list = hv(&d, &["service", "list", "--json"]).json();
    let list = list.as_array().unwrap();
    for s in services::ALL {
        let got = list
            .iter()
            .find(|j| j["name"] == s.name)
            .unwrap_or_else(|| panic!("{} is not registered: {list:?}", s.name));
        assert_eq!(got["vsock_port"], s.port, "{got}");
        assert_eq!(got["enabled"], s.enabled_by_default, "{got}");
        let root_only = serde_json::json!({"users": [], "groups": []});
        if s.root_only_by_default {
            assert_eq!(got["access"], root_only, "{got}");
        } else {
            assert!(got["access"].is_null(), "{got}");
        }
    }
    let shown = hv(&d, &["service", "show", "hvsock-session"]);
    assert!(shown.ok().contains("root only"), "{}", shown.ok());

    // A sandbox with an agent: exec is refused until the session service is enabled.
    let vm = d.add_partition("sb", None);
    let agent = Agent::start(&d, vm, &[], &[], None);
    let out = run(d.cli().args(["exec", "sb", "--", "echo", "hi"]), b"", QUICK);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("disabled") && err.contains("hvsock service enable hvsock-session"),
        "{err}"
    );
    hv(&d, &["service", "enable", "hvsock-session"]).ok();
    let out = run(d.cli().args(["exec", "sb", "--", "echo", "hi"]), b"", QUICK);
    assert_eq!(text(&out.stdout), "hi\n", "{}", text(&out.stderr));
    drop(agent);

    // An existing registry is not changed at start: what the administrator removed stays
    // removed, what was enabled stays enabled.
    hv(&d, &["service", "remove", "hvsock-kvp"]).ok();
    d.restart();
    let list = hv(&d, &["service", "list", "--json"]).json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"hvsock-kvp"), "{names:?}");
    assert!(names.contains(&"hvsock-time"), "{names:?}");
    let session = hv(&d, &["service", "show", "hvsock-session", "--json"]).json();
    assert_eq!(session["enabled"], true, "{session}");
}

#[test]
fn a_host_user_the_rule_excludes_is_refused_until_allowed() {
    support::require_root("running the CLI as nobody");
    // host.sock open to nobody's group, so that only the service's rule stands in the way.
    let d = Daemon::start_with(&["--socket-group", &NOBODY.to_string()]);
    std::fs::set_permissions(d.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d.set_enabled(services::SESSION.name, true);
    let vm = d.add_partition("sb", None);
    let agent = Agent::start(&d, vm, &[], &[], None);
    let vm = vm.to_string();
    let as_nobody = || {
        let mut cmd = d.cli();
        cmd.uid(NOBODY).gid(NOBODY).env("HOME", "/");
        cmd.args(["exec", &vm, "--", "echo", "hello"]);
        cmd
    };

    // Root is always allowed.
    let out = run(
        d.cli().args(["exec", &vm, "--", "echo", "hello"]),
        b"",
        QUICK,
    );
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    // nobody is not: the session service is root-only by default.
    let out = run(&mut as_nobody(), b"", QUICK);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("service hvsock-session allows root only on the host, not user nobody")
            && err.contains("hvsock service access hvsock-session --allow-user"),
        "{err}"
    );
    let stats = hv(&d, &["stats", "--json"]).json();
    assert!(stats.to_string().contains("\"user\":1"), "{stats}");

    // Allowed by name.
    let out = hv(
        &d,
        &[
            "service",
            "access",
            "hvsock-session",
            "--allow-user",
            "nobody",
        ],
    );
    assert!(out.ok().contains("root; users nobody"), "{}", out.ok());
    let out = run(&mut as_nobody(), b"", QUICK);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));

    // By group; then root only again refuses; then no rule at all allows.
    hv(&d, &["service", "access", "hvsock-session", "--root-only"]).ok();
    assert_eq!(run(&mut as_nobody(), b"", QUICK).status.code(), Some(255));
    hv(
        &d,
        &[
            "service",
            "access",
            "hvsock-session",
            "--allow-group",
            &NOBODY.to_string(),
        ],
    )
    .ok();
    let out = run(&mut as_nobody(), b"", QUICK);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));
    hv(&d, &["service", "access", "hvsock-session", "--anyone"]).ok();
    let shown = hv(&d, &["service", "show", "hvsock-session", "--json"]).json();
    assert!(shown["access"].is_null(), "{shown}");
    let out = run(&mut as_nobody(), b"", QUICK);
    assert_eq!(text(&out.stdout), "hello\n", "{}", text(&out.stderr));

    // An unknown user is a clear error, and the rules survive a restart.
    let out = run(
        d.cli().args([
            "service",
            "access",
            "hvsock-files",
            "--allow-user",
            "no-such-user-x",
        ]),
        b"",
        QUICK,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no user \"no-such-user-x\""),
        "{}",
        text(&out.stderr)
    );
    drop(agent);
}

#[test]
fn the_user_hvsockd_runs_as_may_use_its_root_only_services() {
    support::require_root("running hvsockd as nobody");
    let tmp = support::tempdir("hvsock-own-");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("hv");
    std::fs::create_dir(&dir).unwrap();
    rustix::fs::chown(
        &dir,
        Some(rustix::fs::Uid::from_raw(NOBODY)),
        Some(rustix::fs::Gid::from_raw(NOBODY)),
    )
    .unwrap();
    let dirs = hvsock::dirs::Dirs::under(&dir);
    let log = std::fs::File::create(tmp.path().join("hvsockd.log")).unwrap();
    let _daemon = support::Guard::spawn(
        std::process::Command::new(&support::bins().hvsockd)
            .arg("--dir")
            .arg(&dir)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log),
    );
    support::wait_for("hvsockd as nobody", QUICK, || {
        std::os::unix::net::UnixStream::connect(dirs.admin_socket()).is_ok()
    });
    let hv = |user: Option<u32>, args: &[&str]| {
        let mut cmd = std::process::Command::new(&support::bins().hvsock);
        cmd.arg("--dir").arg(&dir).args(args).env("HOME", "/");
        cmd.env_remove("HVSOCK_DIR").env_remove("HVSOCK_ENDPOINT");
        if let Some(uid) = user {
            cmd.uid(uid).gid(uid);
        }
        run(&mut cmd, b"", QUICK)
    };
    assert!(
        hv(None, &["service", "enable", "hvsock-session"])
            .status
            .success()
    );
    let out = hv(None, &["vm", "add", "sb"]);
    let vm = text(&out.stdout).trim().to_owned();
    let vm_id = hvsock::VmId::parse(&vm).unwrap();
    let agent_log = tmp.path().join("agent.log");
    let _agent = support::Guard::spawn(
        std::process::Command::new(support::agent_bin())
            .env("HVSOCK_ENDPOINT", dirs.partition_socket(vm_id))
            .env_remove("HVSOCK_TRANSPORT")
            .env("RUST_LOG", "debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&agent_log).unwrap()),
    );
    support::wait_for("the agent to serve", QUICK, || {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .contains("serving hvsock-session")
    });
    // hvsockd's own user passes the root-only rule; another user does not.
    let out = hv(Some(NOBODY), &["exec", &vm, "--", "echo", "mine"]);
    assert_eq!(text(&out.stdout), "mine\n", "{}", text(&out.stderr));
    // 65533: a uid with no rights to host.sock beyond its mode (0660, nobody's group).
    let other = NOBODY - 1;
    let mut cmd = std::process::Command::new(&support::bins().hvsock);
    cmd.arg("--dir")
        .arg(&dir)
        .args(["exec", &vm, "--", "echo", "theirs"])
        .env("HOME", "/")
        .uid(other)
        .gid(NOBODY);
    let out = run(&mut cmd, b"", QUICK);
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("allows root only on the host, not user"),
        "{}",
        text(&out.stderr)
    );
}
