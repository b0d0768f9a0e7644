//! The key-value exchange from the host: `hvsock kvp list|get|set|delete` against a real
//! hvsockd (the host pool kept across restarts, refusals with their reasons and exit 1), and
//! both ways with the real `hvsock-agent` in a sandbox: the host pool in the agent's files
//! and `hvsock-agent kvp`, the guest pool (built-in keys and a guest program's) on the host.

#![allow(clippy::unwrap_used)]

mod agent_support;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{Agent, Sandbox, run, text};
use support::{Daemon, QUICK, hv};

#[test]
fn kvp_host_pool_commands_persist_across_restarts_and_refuse_clearly() {
    let mut d = Daemon::start_bare();
    d.add_partition("sb", None);
    assert_eq!(
        hv(&d, &["kvp", "set", "sb", "role", "web"]).ok(),
        "set role in the host pool of sb (3 bytes)\n"
    );
    assert_eq!(hv(&d, &["kvp", "get", "sb", "role"]).ok(), "web\n");
    // From stdin, as is.
    let out = support::run(
        d.cli().args(["kvp", "set", "sb", "motd", "-"]),
        b"line one\nline two\n",
        QUICK,
    );
    out.ok();
    assert_eq!(
        hv(&d, &["kvp", "get", "sb", "motd"]).ok(),
        "line one\nline two\n\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(hv(&d, &["kvp", "get", "sb", "motd", "--json"]).ok()).unwrap();
    assert_eq!(json["value"], "line one\nline two\n");
    assert_eq!(json["pool"], "host");
    // list: both pools; no agent has connected, and stderr says so.
    let out = hv(&d, &["kvp", "list", "sb"]);
    assert!(out.ok().starts_with("POOL"), "{out:?}");
    assert!(out.stdout.contains("host  role"), "{out:?}");
    assert!(
        out.stderr.contains("no agent of \"sb\" has connected"),
        "{out:?}"
    );
    let out = hv(&d, &["kvp", "list", "sb", "--pool", "host"]);
    assert_eq!(out.stderr, "", "no note about the guest for the host pool");
    let json: serde_json::Value =
        serde_json::from_str(hv(&d, &["kvp", "list", "sb", "--json"]).ok()).unwrap();
    assert_eq!(json["host"]["role"], "web");
    assert_eq!(json["guest"]["connected"], false);

    // Kept in the registry: a restart (kill -9) keeps the pool.
    d.restart();
    assert_eq!(hv(&d, &["kvp", "get", "sb", "role"]).ok(), "web\n");

    // Refusals, exit 1, with the reason.
    hv(&d, &["kvp", "set", "sb", ".hidden", "v"]).hvsock_fails_with("is not a key");
    hv(&d, &["kvp", "set", "sb", "a/b", "v"]).hvsock_fails_with("is not a key");
    let big = "v".repeat(2049);
    hv(&d, &["kvp", "set", "sb", "big", &big])
        .hvsock_fails_with("a value of 2049 bytes is over the limit of 2048");
    hv(&d, &["kvp", "set", "nope", "k", "v"])
        .hvsock_fails_with("no partition \"nope\" in the registry");
    hv(&d, &["kvp", "set", "host", "k", "v"]).hvsock_fails_with("has no key-value pools");
    hv(&d, &["kvp", "get", "sb", "absent"])
        .hvsock_fails_with("no key \"absent\" in the host pool of \"sb\"");
    hv(&d, &["kvp", "get", "sb", "hostname", "--pool", "guest"])
        .hvsock_fails_with("no key \"hostname\" in the guest pool of \"sb\"");
    // A usage error is exit 2.
    let out = hv(&d, &["kvp", "get", "sb", "k", "--pool", "elsewhere"]);
    assert_eq!(out.code(), Some(2), "{out:?}");

    // delete, and --if-exists for a key (not for a VM) that is not there.
    assert_eq!(
        hv(&d, &["kvp", "delete", "sb", "role"]).ok(),
        "deleted role from the host pool of sb\n"
    );
    hv(&d, &["kvp", "delete", "sb", "role"]).hvsock_fails_with("no key \"role\"");
    let out = hv(&d, &["kvp", "delete", "sb", "role", "--if-exists"]);
    assert_eq!(out.ok(), "");
    assert!(out.stderr.contains("nothing to delete"), "{out:?}");
    hv(&d, &["kvp", "delete", "nope", "role", "--if-exists"]).hvsock_fails_with("no partition");

    // The bound on keys.
    for i in 0..1023 {
        let (status, body) = d.api(
            "PUT",
            &format!("/v1/partitions/sb/kvp/k{i}"),
            Some(r#"{"value":"v"}"#),
        );
        assert_eq!(status, 201, "{body}");
    }
    hv(&d, &["kvp", "set", "sb", "one-more", "v"])
        .hvsock_fails_with("already holds 1024 keys, the most it may: delete some first");

    // Removing the partition removes its pool: a new one of the same name starts empty.
    let (status, body) = d.api("DELETE", "/v1/partitions/sb", None);
    assert_eq!(status, 204, "{body}");
    d.add_partition("sb", None);
    let out = hv(&d, &["kvp", "list", "sb", "--pool", "host"]);
    assert_eq!(out.ok(), "POOL  KEY  VALUE\n");
}

/// `hvsock-agent kvp --dir DIR ARGS…`, run to its end.
fn agent_kvp(dir: &Path, args: &[&str]) -> std::process::Output {
    run(
        Command::new(support::agent_bin())
            .arg("kvp")
            .arg("--dir")
            .arg(dir)
            .args(args),
        b"",
        QUICK,
    )
}

/// The host pool's file `key` in the agent's directory, if there.
fn host_file(dir: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(dir.join("host").join(key)).ok()
}

#[test]
fn kvp_pairs_cross_both_ways_with_a_sandboxs_agent_and_outlive_a_restart() {
    let kvp = support::tempdir("hvsock-kvp-");
    let dir = kvp.path().to_owned();
    let dir_arg = dir.display().to_string();
    // Set while the guest is down: it gets it when its agent connects.
    let prepared = Sandbox::prepare();
    hv(&prepared.d, &["kvp", "set", "sb", "early", "e"]).ok();
    let mut s = prepared.with_agent(&["--kvp-dir", &dir_arg]);
    support::wait_for("the early pair in the guest's files", QUICK, || {
        host_file(&dir, "early").as_deref() == Some("e")
    });

    // Set on the host -> the agent's file and `hvsock-agent kvp get`; the time it takes.
    let mut latencies = Vec::new();
    for i in 0..5 {
        let value = format!("web{i}");
        let t0 = Instant::now();
        hv(&s.d, &["kvp", "set", "sb", "role", &value]).ok();
        let set_done = t0.elapsed();
        support::wait_for("the new value in the guest's file", QUICK, || {
            host_file(&dir, "role").as_deref() == Some(value.as_str())
        });
        latencies.push((set_done, t0.elapsed()));
    }
    eprintln!("kvp set -> guest file (CLI returned, file shows it): {latencies:?}");
    let worst = latencies.iter().map(|l| l.1 - l.0).max().unwrap();
    assert!(
        worst < Duration::from_secs(1),
        "a set reached the guest {worst:?} after the CLI returned"
    );
    let out = agent_kvp(&dir, &["get", "--pool", "host", "role"]);
    assert_eq!(text(&out.stdout), "web4\n", "{}", text(&out.stderr));
    // Delete propagates.
    hv(&s.d, &["kvp", "delete", "sb", "early"]).ok();
    support::wait_for("the deleted key's file to go", QUICK, || {
        host_file(&dir, "early").is_none()
    });
    let out = agent_kvp(&dir, &["get", "--pool", "host", "early"]);
    assert!(!out.status.success(), "{out:?}");

    // The guest's pool: the agent's built-in keys, then a guest program's pair.
    support::wait_for("the guest's built-in keys on the host", QUICK, || {
        let out = hv(&s.d, &["kvp", "list", "sb", "--pool", "guest", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        json["guest"]["connected"] == true
            && ["hostname", "os", "kernel", "agent"]
                .iter()
                .all(|k| json["guest"]["pairs"][k].is_string())
    });
    let agent_version = hv(&s.d, &["kvp", "get", "sb", "agent", "--pool", "guest"]);
    assert_eq!(
        agent_version.ok(),
        format!("{}\n", env!("CARGO_PKG_VERSION"))
    );
    let out = agent_kvp(&dir, &["set", "app.version", "1.2.3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    support::wait_for("the guest's pair on the host", QUICK, || {
        let out = hv(
            &s.d,
            &["kvp", "get", "sb", "app.version", "--pool", "guest"],
        );
        out.status.success() && out.stdout == "1.2.3\n"
    });

    // The pool is kept across an hvsockd restart (kill -9) and reaches a new agent.
    hv(&s.d, &["kvp", "set", "sb", "kept", "k"]).ok();
    drop(std::mem::replace(
        &mut s.agent,
        Agent {
            child: None,
            log: dir.join("none.log"),
        },
    ));
    // The agent is gone: the guest pool is shown as not live.
    support::wait_for("the guest pool shown as not live", QUICK, || {
        let out = hv(&s.d, &["kvp", "list", "sb", "--pool", "guest"]);
        out.stdout.contains("app.version") && out.stderr.contains("no agent of \"sb\" is connected")
    });
    s.d.restart();
    let fresh = support::tempdir("hvsock-kvp-");
    let fresh_arg = fresh.path().display().to_string();
    let _agent = Agent::start(&s.d, s.vm, &["--kvp-dir", &fresh_arg], &[], None);
    support::wait_for("the kept pool in a new agent's files", QUICK, || {
        host_file(fresh.path(), "kept").as_deref() == Some("k")
            && host_file(fresh.path(), "role").as_deref() == Some("web4")
    });
    // And a set after the restart reaches it as well.
    hv(&s.d, &["kvp", "set", "sb", "after", "a"]).ok();
    support::wait_for("a set after the restart", QUICK, || {
        host_file(fresh.path(), "after").as_deref() == Some("a")
    });
}
