#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use std::time::Duration;

use hvsock::Guid;
use hvsock_agent::kvp::Pair;
use hvsock_agent::wire::{Frame, HELLO, Hello, WELCOME};
use tokio::io::{AsyncWriteExt, DuplexStream};

use super::*;

/// The agent's end of a connection.
struct Agent {
    conn: Conn<DuplexStream>,
}

impl Agent {
    async fn hello(service: &str, stream: DuplexStream) -> (Agent, Result<Frame, WireError>) {
        let mut conn = Conn::new(stream, hvsock_agent::wire::MAX_FRAME);
        let hello = Hello {
            service: service.into(),
            min: 1,
            max: 1,
            client: "test".into(),
        };
        conn.write([Frame::json(HELLO, &hello)]).await.unwrap();
        let answer = conn.read().await.map(Option::unwrap);
        (Agent { conn }, answer)
    }

    async fn msg(&mut self) -> Msg {
        let frame = self.conn.read().await.unwrap().unwrap();
        kvp::parse(&frame).unwrap()
    }

    async fn send(&mut self, msgs: &[Msg]) {
        self.conn.write(msgs.iter().map(kvp::frame)).await.unwrap();
    }
}

fn set(k: &str, v: &str) -> Msg {
    Msg::Set(Pair {
        key: k.into(),
        value: v.into(),
    })
}

type Task = tokio::task::JoinHandle<Result<End, WireError>>;

fn start(pools: &Arc<Pools>, vm: VmId) -> (DuplexStream, Task, CancellationToken) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(b, pools.clone(), vm, shutdown.clone()));
    (a, task, shutdown)
}

async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "current_thread")]
async fn snapshot_then_changes_both_ways() {
    let vm = VmId(Guid::new_random());
    let pools = Pools::new(HashMap::from([(
        vm,
        Pool::from([("a".into(), "1".into())]),
    )]));
    let (stream, task, shutdown) = start(&pools, vm);
    let (mut agent, welcome) = Agent::hello(kvp::SERVICE, stream).await;
    assert_eq!(welcome.unwrap().kind, WELCOME);
    assert_eq!(agent.msg().await, set("a", "1"));
    assert_eq!(agent.msg().await, Msg::Synced);
    // The guest's snapshot and a change.
    agent
        .send(&[set("hostname", "g"), Msg::Synced, set("app", "x")])
        .await;
    until("the guest pool", || pools.guest(vm).pairs.len() == 2).await;
    let guest = pools.guest(vm);
    assert!(guest.connected && guest.synced);
    // Host changes arrive as a diff.
    pools.host_set(vm, "b", "2");
    assert_eq!(agent.msg().await, set("b", "2"));
    pools.host_delete(vm, "a");
    assert_eq!(agent.msg().await, Msg::Delete("a".into()));
    agent.send(&[Msg::Delete("app".into())]).await;
    until("the delete", || pools.guest(vm).pairs.len() == 1).await;
    shutdown.cancel();
    assert_eq!(task.await.unwrap().unwrap(), End::Ended);
    let guest = pools.guest(vm);
    assert!(!guest.connected, "the pool is kept, not live");
    assert_eq!(guest.pairs["hostname"], "g");
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_input_ends_only_that_connection_with_an_error() {
    let vm = VmId(Guid::new_random());
    let other = VmId(Guid::new_random());
    let pools = Pools::new(HashMap::new());
    let (keep, keep_task, _keep_shutdown) = start(&pools, other);
    let (mut bystander, _) = Agent::hello(kvp::SERVICE, keep).await;
    assert_eq!(bystander.msg().await, Msg::Synced);

    // A bad key.
    let (stream, task, _s) = start(&pools, vm);
    let (mut agent, _) = Agent::hello(kvp::SERVICE, stream).await;
    assert_eq!(agent.msg().await, Msg::Synced);
    agent.send(&[set("../etc", "x")]).await;
    assert!(matches!(task.await.unwrap(), Err(WireError::Invalid(_))));
    let told = agent.conn.read().await;
    assert!(
        matches!(&told, Err(WireError::Remote(e)) if e.message.contains("is not a key")),
        "{told:?}"
    );
    // An oversized frame, refused from its header.
    let (mut stream, task, _s) = start(&pools, vm);
    let hello = Hello {
        service: kvp::SERVICE.into(),
        min: 1,
        max: 1,
        client: "test".into(),
    };
    let mut bytes = Frame::json(HELLO, &hello).encode();
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    stream.write_all(&bytes).await.unwrap();
    assert!(matches!(
        task.await.unwrap(),
        Err(WireError::TooLarge { .. })
    ));
    // A kind that is not the service's, and Synced twice.
    for bad in [
        vec![Frame::json(0x7f, &serde_json::json!({}))],
        vec![kvp::frame(&Msg::Synced), kvp::frame(&Msg::Synced)],
    ] {
        let (stream, task, _s) = start(&pools, vm);
        let (mut agent, _) = Agent::hello(kvp::SERVICE, stream).await;
        agent.conn.write(bad).await.unwrap();
        assert!(task.await.unwrap().is_err());
    }
    // The wrong service.
    let (stream, task, _s) = start(&pools, vm);
    let (_agent, answer) = Agent::hello("time", stream).await;
    assert!(matches!(answer, Err(WireError::Remote(_))), "{answer:?}");
    assert!(matches!(task.await.unwrap(), Err(WireError::Refused(_))));
    // The bystander still follows its pool.
    pools.host_set(other, "k", "v");
    assert_eq!(bystander.msg().await, set("k", "v"));
    assert!(!keep_task.is_finished());
}

#[tokio::test(flavor = "current_thread")]
async fn a_newer_connection_replaces_the_older() {
    let vm = VmId(Guid::new_random());
    let pools = Pools::new(HashMap::new());
    let (first, first_task, _s1) = start(&pools, vm);
    let (mut a, _) = Agent::hello(kvp::SERVICE, first).await;
    assert_eq!(a.msg().await, Msg::Synced);
    let (second, _second_task, _s2) = start(&pools, vm);
    let (mut b, _) = Agent::hello(kvp::SERVICE, second).await;
    assert_eq!(b.msg().await, Msg::Synced);
    assert_eq!(first_task.await.unwrap().unwrap(), End::Replaced);
    assert!(matches!(a.conn.read().await, Err(WireError::Remote(_))));
    assert!(pools.guest(vm).connected, "the newer one holds the pool");
    pools.host_set(vm, "k", "v");
    assert_eq!(b.msg().await, set("k", "v"));
    // Removing the partition ends it too.
    pools.remove(vm);
    assert!(matches!(b.conn.read().await, Err(WireError::Remote(_))));
}
