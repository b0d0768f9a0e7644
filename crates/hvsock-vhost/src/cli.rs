//! The command line: `hvsock-vhost --dir DIR --vm NAME --socket PATH [--guest-cid N]`.
//!
//! The VM must be registered without a hybrid-vsock socket (`hvsock vm add NAME`). The device
//! serves the vhost-user socket at PATH for QEMU
//! (`-chardev socket,id=c,path=PATH -device vhost-user-vsock-pci,chardev=c`, with shared
//! memory: `-object memory-backend-memfd,id=mem,size=...,share=on -numa node,memdev=mem`),
//! and serves it again when QEMU disconnects (a VM reboot or a new QEMU). It logs to stderr
//! (`RUST_LOG` sets the level, `info` by default) and exits non-zero only when it cannot serve
//! the socket at all.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::Device;
use crate::link::{Link, Target};
use crate::muxer::Config;

/// A vhost-user vsock device for one QEMU VM, routed by hvsockd.
#[derive(Debug, Parser)]
#[command(name = "hvsock-vhost", version)]
pub struct Args {
    /// hvsockd's directory (as `hvsockd --dir`); the system default without it.
    #[arg(long, env = "HVSOCK_DIR")]
    pub dir: Option<PathBuf>,
    /// The VM this device serves: its name or VmId, registered with `hvsock vm add NAME`
    /// (without --hybrid-vsock).
    #[arg(long)]
    pub vm: String,
    /// The vhost-user socket to create for QEMU's `-chardev socket,path=PATH`.
    #[arg(long)]
    pub socket: PathBuf,
    /// The guest's CID (3 or more; every VM has its own device, so 3 is fine for all).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..0xffff_ffff))]
    pub guest_cid: u64,
    /// Most connections the guest may have at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_connections: u64,
}

/// Runs the binary.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hvsock-vhost: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves the device until it cannot.
pub fn run(args: &Args) -> Result<(), String> {
    let dirs = hvsock::dirs::Dirs::resolve(args.dir.as_deref())
        .map_err(|e| format!("finding hvsockd's directory: {e}"))?;
    let cfg = Config {
        guest_cid: args.guest_cid,
        max_conns: args.max_connections as usize,
        ..Config::default()
    };
    let link = Link::start(Target {
        dirs,
        vm: args.vm.clone(),
    })
    .map_err(|e| format!("starting the hvsockd link: {e}"))?;
    loop {
        let device = Arc::new(Mutex::new(
            Device::new(cfg, link.clone()).map_err(|e| format!("creating the device: {e}"))?,
        ));
        let mut daemon = VhostUserDaemon::new(
            "hvsock-vhost".into(),
            device.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("creating the vhost-user daemon: {e}"))?;
        for handler in daemon.get_epoll_handlers() {
            Device::register(&device, &handler)
                .map_err(|e| format!("registering the device's events: {e}"))?;
        }
        tracing::info!(socket = %args.socket.display(), vm = %args.vm, "waiting for the VMM");
        match daemon.serve(&args.socket) {
            Ok(()) => tracing::info!("the VMM disconnected; serving the socket again"),
            Err(vhost_user_backend::Error::CreateVhostUserListener(e)) => {
                return Err(format!("cannot listen on {}: {e}", args.socket.display()));
            }
            Err(e) => tracing::warn!("the VMM's session failed: {e}; serving the socket again"),
        }
    }
}
