//! hvsock-vhost beside vhost-device-vsock, in one run, in real guests (QEMU/TCG): guest-to-host
//! and host-to-guest bulk throughput and host-to-guest connect rate, as ratios.
//!
//! # Running it
//!
//! ```text
//! HVSOCK_CACHE=/work/cache cargo bench --bench nested_vm            # 2 boots per device, 64 MiB
//! HVSOCK_CACHE=/work/cache cargo bench --bench nested_vm -- --quick # 1 boot per device, 8 MiB
//! ```
//!
//! It needs what the nested-VM test needs (`scripts/nested-vm/setup.sh`, which it runs). One
//! guest at a time: the devices take turns in ABBA order (vhost-device-vsock, hvsock-vhost,
//! hvsock-vhost, vhost-device-vsock) so that drift in the machine's load hits both alike. In
//! each boot the guest (`benches/nested_vm/guest.sh`, the static `hvsock` CLI) drives:
//!
//! | bench | one sample | timed on the host |
//! | --- | --- | --- |
//! | `g2h` | the guest sends N bytes to a host listener | from the accept to the N-th byte read |
//! | `h2g` | the host sends N bytes to the guest, which connected | from the accept to the guest's close (all bytes delivered) |
//! | `connect` | the host makes 100 connections to the guest's `listen --keep`, each connect + half-close + wait for the close | connections per second |
//!
//! Under TCG the guest's CPU is emulated, so absolute figures say little; the ratios
//! (hvsock-vhost over vhost-device-vsock, higher is better) compare the two devices under the
//! same guest. Run without `--bench` (as `cargo test --benches` does) it runs the quick mode.

#![allow(clippy::unwrap_used)]

#[path = "../tests/nested_vm/harness.rs"]
mod harness;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::{Vm, accept_by, prepare, vhost_args};
use hvsock::{HvListener, HvStream, ServiceId, SockAddrHv, VmId};
use support::Daemon;

const CONNECTS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Device {
    VhostDeviceVsock,
    HvsockVhost,
}

impl Device {
    fn name(self) -> &'static str {
        match self {
            Device::VhostDeviceVsock => "vhost-device-vsock",
            Device::HvsockVhost => "hvsock-vhost",
        }
    }
}

/// One boot's figures: g2h MB/s, h2g MB/s, connects/s.
type Sample = [f64; 3];

/// Waits until the peer has closed both ways (POLLHUP), at most `limit`; what the peer sends
/// meanwhile is read and dropped.
fn wait_hup(s: &HvStream, limit: Duration) {
    use rustix::event::{PollFd, PollFlags, poll};
    let deadline = Instant::now() + limit;
    let mut sink = [0u8; 4096];
    // Once the peer's EOF is read, only HUP (always reported) is left to wait for.
    let mut events = PollFlags::IN;
    loop {
        let fd = s.as_fd();
        let mut fds = [PollFd::new(&fd, events)];
        let timeout = rustix::time::Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        let _ = poll(&mut fds, Some(&timeout));
        let revents = fds[0].revents();
        if revents.intersects(PollFlags::HUP | PollFlags::ERR) {
            return;
        }
        if revents.contains(PollFlags::IN) {
            match (&*s).read(&mut sink) {
                Ok(0) => events = PollFlags::empty(),
                Ok(_) => {}
                Err(_) => return,
            }
        }
        assert!(Instant::now() < deadline, "the guest did not close in time");
    }
}

struct Setup {
    env: BTreeMap<String, String>,
    initrd: PathBuf,
    work: tempfile::TempDir,
}

fn setup() -> Setup {
    let prepared = prepare();
    let work = tempfile::Builder::new()
        .prefix("hvnb")
        .tempdir_in("/tmp")
        .unwrap();
    let initrd = work.path().join("initrd.gz");
    prepared.initramfs(&initrd, "benches/nested_vm/guest.sh");
    let env = prepared.env;
    Setup { env, initrd, work }
}

/// Boots one guest with `device` and measures it.
fn boot(s: &Setup, device: Device, n: usize, round: usize) -> Sample {
    let d = Daemon::start();
    let hv = |args: &[&str]| support::hv(&d, args).ok().trim().to_owned();
    for (name, port) in [("g2h", 5001), ("h2g", 5002), ("rate", 6002), ("done", 5009)] {
        hv(&["service", "add", name, "--port", &port.to_string()]);
    }
    let dir = s.work.path().join(format!("b{round}"));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("vm.vsock");
    let mut args = vec!["vm", "add", "bench"];
    if device == Device::VhostDeviceVsock {
        args.extend(["--hybrid-vsock", uds.to_str().unwrap()]);
    }
    let vm = VmId::parse(&hv(&args)).unwrap();
    let listen = |port: u32| {
        let addr = SockAddrHv::new(VmId::WILDCARD, ServiceId::from_vsock_port(port));
        let l = HvListener::bind_with(&d.host(), addr, 8).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    };
    let (g2h_l, h2g_l, done_l) = (listen(5001), listen(5002), listen(5009));
    let mut extra = match device {
        Device::HvsockVhost => vhost_args("bench", d.dir()),
        Device::VhostDeviceVsock => Vec::new(),
    };
    extra.extend(["--append".into(), format!("hvsock_bench_bytes={n}")]);
    extra.extend(["--timeout".into(), "500".into()]);
    let deadline = Instant::now() + Duration::from_secs(480);
    let mut g = Vm::boot("bench", &s.env, &s.initrd, dir.join("run"), &uds, 3, &extra);
    g.line("T-READY", deadline);

    // Guest to host.
    let (mut c, _) = accept_by(&g2h_l, "g2h", deadline);
    let t0 = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < n {
        let k = c.read(&mut buf).unwrap();
        assert!(k > 0, "g2h: EOF after {got} bytes");
        got += k;
    }
    let g2h = n as f64 / t0.elapsed().as_secs_f64() / 1e6;
    drop(c);
    let line = g.line("T-G2H ", deadline);
    assert!(line.starts_with("rc=0"), "g2h: {line}\n{}", g.story());

    // Host to guest.
    let (mut c, _) = accept_by(&h2g_l, "h2g", deadline);
    let t0 = Instant::now();
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < n {
        let k = (n - sent).min(chunk.len());
        c.write_all(&chunk[..k]).unwrap();
        sent += k;
    }
    let _ = c.shutdown(Shutdown::Write);
    wait_hup(&c, Duration::from_secs(300));
    let h2g = n as f64 / t0.elapsed().as_secs_f64() / 1e6;
    drop(c);
    let line = g.line("T-H2G ", deadline);
    assert!(
        line.starts_with(&format!("rc=0 {n}")),
        "h2g: {line}\n{}",
        g.story()
    );

    // Connect rate, host to guest.
    g.line("T-RATE-READY", deadline);
    let target = SockAddrHv::new(vm, ServiceId::from_vsock_port(6002));
    let t0 = Instant::now();
    for _ in 0..CONNECTS {
        let c = HvStream::connect_with(&d.host(), target, Duration::from_secs(20)).unwrap();
        let _ = c.shutdown(Shutdown::Write);
        wait_hup(&c, Duration::from_secs(20));
    }
    let rate = CONNECTS as f64 / t0.elapsed().as_secs_f64();

    let (c, _) = accept_by(&done_l, "done", deadline);
    drop(c);
    g.line("T-DONE", deadline);
    assert_eq!(g.wait(deadline), 0, "{}", g.story());
    eprintln!(
        "nested_vm bench: {:>18}  g2h {g2h:7.1} MB/s  h2g {h2g:7.1} MB/s  connect {rate:6.1}/s",
        device.name()
    );
    [g2h, h2g, rate]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 0 {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
    let (n, order) = if quick {
        (8 << 20, vec![Device::VhostDeviceVsock, Device::HvsockVhost])
    } else {
        (
            64 << 20,
            vec![
                Device::VhostDeviceVsock,
                Device::HvsockVhost,
                Device::HvsockVhost,
                Device::VhostDeviceVsock,
            ],
        )
    };
    let s = setup();
    let mut samples: BTreeMap<Device, Vec<Sample>> = BTreeMap::new();
    for (round, device) in order.into_iter().enumerate() {
        let sample = boot(&s, device, n, round);
        samples.entry(device).or_default().push(sample);
    }
    let col = |d: Device, i: usize| median(samples[&d].iter().map(|s| s[i]).collect());
    println!(
        "\nnested_vm bench ({} MiB per transfer, {CONNECTS} connects, medians of {} boots per device, TCG)",
        n >> 20,
        samples[&Device::HvsockVhost].len()
    );
    println!(
        "{:<10} {:>20} {:>20} {:>8}",
        "bench", "vhost-device-vsock", "hvsock-vhost", "ratio"
    );
    for (i, (name, unit)) in [("g2h", "MB/s"), ("h2g", "MB/s"), ("connect", "/s")]
        .iter()
        .enumerate()
    {
        let (a, b) = (
            col(Device::VhostDeviceVsock, i),
            col(Device::HvsockVhost, i),
        );
        println!(
            "{:<10} {:>15.1} {unit:<4} {:>15.1} {unit:<4} {:>7.2}x",
            name,
            a,
            b,
            b / a
        );
    }
}
