//! The key-value exchange from the host: `hvsock kvp list|get|set|delete` against a real
//! hvsockd (the host pool kept across restarts, refusals with their reasons and exit 1).

#![allow(clippy::unwrap_used)]

mod support;

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
