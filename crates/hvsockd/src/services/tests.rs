#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvsock::{ServiceId, SockAddrHv, VmId};
use hvsock_agent::heartbeat::{self, BEAT, Beat, FACTS, Facts, GuestState};
use hvsock_agent::wire::{self, Decoder, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::guests::Guests;
use super::heartbeat::Heartbeat;
use super::{Incoming, Served, Serving, start};
use crate::broker::{Connecting, Settled};
use crate::listeners::Conn;
use crate::testing::{Fixture, fixture};

/// Answers each connection with its partition's seq, then echoes until the end.
#[derive(Debug)]
struct Echo(ServiceId);

impl Served for Echo {
    fn id(&self) -> ServiceId {
        self.0
    }
    fn name(&self) -> &'static str {
        "echo"
    }
    fn serve(self: Arc<Self>, mut conn: Incoming) -> Serving {
        Box::pin(async move {
            conn.stream.write_all(&[conn.seq as u8]).await?;
            let mut buf = [0u8; 64];
            loop {
                tokio::select! {
                    n = conn.stream.read(&mut buf) => {
                        let n = n?;
                        if n == 0 { return Ok(()); }
                        conn.stream.write_all(&buf[..n]).await?;
                    }
                    () = conn.ended.cancelled() => return Ok(()),
                }
            }
        })
    }
}

async fn connect(f: &Fixture, from: VmId, service: ServiceId) -> Result<UnixStream, String> {
    let target = SockAddrHv::new(VmId::PARENT, service);
    let settled: Settled = match f.broker.connect(
        from,
        target,
        Conn::Pair,
        Duration::from_secs(2),
        Instant::now(),
    ) {
        Connecting::Now(s) => s,
        Connecting::Later(p) => p.await,
    };
    match settled.result {
        Ok(Some(fd)) => {
            let s = UnixStream::from(fd);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Ok(s)
        }
        Ok(None) => Err("no fd".into()),
        Err(refused) => Err(refused.reason.to_owned()),
    }
}

/// Yields to the runner until `cond` holds (bounded).
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 2 s");
}

fn bound(f: &Fixture, service: ServiceId) -> bool {
    f.broker
        .world()
        .lock()
        .listeners()
        .any(|l| l.addr.service_id == service && l.partition == f.root)
}

fn set_enabled(f: &Fixture, service: ServiceId, enabled: bool) {
    let mut world = f.broker.world().lock();
    let mut record = world.service(service).unwrap().clone();
    record.enabled = enabled;
    world.put_service(record);
}

#[tokio::test(flavor = "current_thread")]
async fn served_while_enabled_one_connection_per_partition_and_ends_at_disable() {
    let f = fixture();
    let shutdown = tokio_util::sync::CancellationToken::new();
    start(
        f.broker.clone(),
        vec![Arc::new(Echo(f.echo))],
        shutdown.clone(),
    );
    until(|| bound(&f, f.echo)).await;

    // A sandbox reaches it; a second connection replaces the first.
    let mut first = connect(&f, f.sandbox, f.echo).await.expect("connect");
    let first = tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 1];
        first.read_exact(&mut b).unwrap();
        assert_eq!(b[0], 1);
        first
    })
    .await
    .unwrap();
    let second = connect(&f, f.sandbox, f.echo).await.expect("connect");
    let (first, mut second) = tokio::task::spawn_blocking(move || {
        let mut first = first;
        let mut b = [0u8; 8];
        assert_eq!(first.read(&mut b).unwrap(), 0, "the older connection ends");
        let mut second = second;
        second.read_exact(&mut b[..1]).unwrap();
        assert_eq!(b[0], 2);
        second.write_all(b"hi").unwrap();
        second.read_exact(&mut b[..2]).unwrap();
        assert_eq!(&b[..2], b"hi");
        (first, second)
    })
    .await
    .unwrap();
    drop(first);

    // Disabled: unbound, the live connection ends, connects are refused as disabled.
    set_enabled(&f, f.echo, false);
    until(|| !bound(&f, f.echo)).await;
    second = tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 1];
        assert_eq!(second.read(&mut b).unwrap(), 0);
        second
    })
    .await
    .unwrap();
    drop(second);
    assert_eq!(
        connect(&f, f.sandbox, f.echo).await.unwrap_err(),
        "disabled"
    );

    // Enabled again: served again.
    set_enabled(&f, f.echo, true);
    until(|| bound(&f, f.echo)).await;
    let mut third = connect(&f, f.sandbox, f.echo).await.expect("served again");
    // The partition removed: its connection ends.
    third = tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 1];
        third.read_exact(&mut b).unwrap();
        third
    })
    .await
    .unwrap();
    let _ = f.broker.world().lock().remove_partition(f.sandbox);
    tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 1];
        assert_eq!(third.read(&mut b).unwrap(), 0, "ended with its partition");
    })
    .await
    .unwrap();
    shutdown.cancel();
    until(|| !bound(&f, f.echo)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_program_bound_first_keeps_the_service_until_it_unbinds() {
    let f = fixture();
    let (theirs, _keep) = f.bind(f.root, VmId::CHILDREN, f.echo, 4);
    let shutdown = tokio_util::sync::CancellationToken::new();
    start(
        f.broker.clone(),
        vec![Arc::new(Echo(f.echo))],
        shutdown.clone(),
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ours = || {
        f.broker
            .world()
            .lock()
            .listeners()
            .filter(|l| l.addr.service_id == f.echo)
            .count()
    };
    assert_eq!(ours(), 1, "only the program's listener");
    f.broker.world().lock().unbind(&theirs);
    until(|| ours() == 1 && bound(&f, f.echo)).await;
    shutdown.cancel();
}

fn beat_client(mut s: UnixStream, frames: Vec<Frame>) -> UnixStream {
    let mut decoder = Decoder::new(wire::MAX_FRAME);
    wire::client_hello(
        &mut s,
        &mut decoder,
        heartbeat::SERVICE,
        heartbeat::VERSIONS,
    )
    .expect("welcome");
    for frame in frames {
        wire::write_frame(&mut s, &frame).unwrap();
    }
    s
}

#[tokio::test(flavor = "current_thread")]
async fn heartbeat_feeds_the_guest_and_a_hostile_frame_ends_only_its_connection() {
    let mut f = fixture();
    let heartbeat_id = hvsock_agent::services::HEARTBEAT.id();
    // Register the heartbeat service as hvsockd does at first start.
    f.broker
        .world()
        .lock()
        .put_service(crate::registry::ServiceRecord {
            id: heartbeat_id,
            name: "hvsock-heartbeat".into(),
            enabled: true,
            policy: None,
            created_at: 0,
            access: None,
        });
    f.echo = heartbeat_id;
    let guests = Arc::new(Guests::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    start(
        f.broker.clone(),
        vec![Arc::new(Heartbeat {
            guests: guests.clone(),
        })],
        shutdown.clone(),
    );
    until(|| bound(&f, heartbeat_id)).await;
    let facts = Facts {
        agent: "9.9.9".into(),
        os: "TestOS".into(),
        kernel: "6.6".into(),
        hostname: "guesthost".into(),
    };
    let s = connect(&f, f.sandbox, heartbeat_id).await.expect("connect");
    let frames = vec![
        Frame::json(FACTS, &facts),
        Frame::json(BEAT, &Beat { seq: 1 }),
    ];
    let good = tokio::task::spawn_blocking(move || beat_client(s, frames))
        .await
        .unwrap();
    until(|| guests.get(f.sandbox).state == GuestState::Ok).await;
    assert_eq!(guests.get(f.sandbox).facts.unwrap(), facts);

    // Garbage from the VM partition's side: its own connection ends, with an Error frame;
    // the sandbox's guest stays ok.
    let vm = f.vm;
    let mut bad = connect(&f, vm, heartbeat_id).await.expect("connect");
    let answer = tokio::task::spawn_blocking(move || {
        bad.write_all(&[0xff; 64]).unwrap();
        let mut all = Vec::new();
        let _ = bad.read_to_end(&mut all);
        all
    })
    .await
    .unwrap();
    assert!(!answer.is_empty(), "an Error frame before the end");
    assert_eq!(guests.get(f.sandbox).state, GuestState::Ok);
    assert_eq!(guests.get(vm).state, GuestState::NoContact);

    // The agent goes away: lost at once.
    drop(good);
    until(|| guests.get(f.sandbox).state == GuestState::Lost).await;
    shutdown.cancel();
}
