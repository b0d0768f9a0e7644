//! What follows from the world, brought in line with it after every change: the endpoints of
//! sandbox partitions ([`Endpoints::reconcile`]) and the guest ports of VMs
//! ([`GuestPorts::reconcile`]).
//!
//! One task ([`Reconciler::run`]) watches the world's change signal (its generation, see
//! [`crate::world`]) and makes a pass whenever it rises; a pass that left some guest port
//! closed is tried again every [`RETRY`]. After each pass it publishes the generation it saw
//! and the endpoints that failed. The control layer waits for that ([`Sync::settled`]) before
//! it answers, so that an admin request's answer already holds (the partition's endpoint is
//! there, the VM's guest ports match), and reads the failures to report them.

use std::sync::Arc;
use std::time::Duration;

use hvsock::VmId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::attach::ports;
use crate::attach::sockets::GuestPorts;
use crate::endpoint::Endpoints;
use crate::world;

/// How often a pass that could not open every guest port is tried again (e.g. a VM directory
/// that did not exist yet).
pub const RETRY: Duration = Duration::from_secs(2);

/// What a pass did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// The world's generation the pass saw.
    pub generation: u64,
    /// Partitions whose endpoint could not be opened, with why.
    pub endpoint_failures: Vec<(VmId, String)>,
    /// Whether every wanted guest port is open.
    pub guest_ports_complete: bool,
}

/// The reconciling task's state.
#[derive(Debug)]
pub struct Reconciler {
    world: Arc<world::Shared>,
    endpoints: Arc<Endpoints>,
    guest_ports: Arc<GuestPorts>,
    applied: watch::Sender<Applied>,
}

/// Waits for the reconciler (held by the control layer).
#[derive(Debug, Clone)]
pub struct Sync {
    world: Arc<world::Shared>,
    applied: watch::Receiver<Applied>,
}

impl Reconciler {
    /// For `endpoints` and `guest_ports`, following `world`.
    pub fn new(
        world: Arc<world::Shared>,
        endpoints: Arc<Endpoints>,
        guest_ports: Arc<GuestPorts>,
    ) -> Arc<Reconciler> {
        Arc::new(Reconciler {
            world,
            endpoints,
            guest_ports,
            applied: watch::Sender::new(Applied::default()),
        })
    }

    /// A handle to wait for passes.
    pub fn sync(&self) -> Sync {
        Sync {
            world: self.world.clone(),
            applied: self.applied.subscribe(),
        }
    }

    /// One pass, now (start-up runs one before serving). Must run inside the runtime.
    pub fn pass(&self) -> Applied {
        let generation = self.world.generation();
        let (endpoint_failures, wanted) = {
            let world = self.world.lock();
            (self.endpoints.reconcile(&world), ports::wanted(&world))
        };
        let guest_ports_complete = self.guest_ports.reconcile(wanted);
        let applied = Applied {
            generation,
            endpoint_failures,
            guest_ports_complete,
        };
        self.applied.send_replace(applied.clone());
        applied
    }

    /// Makes a pass on every change of the world until `shutdown`.
    ///
    /// It compares generations rather than trusting the channel's "seen" mark alone: the task
    /// may first run after a change (even after [`Sync::settled`] asked for a pass), and a
    /// change between a pass and the next wait must not be missed either.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut changes = self.world.subscribe();
        loop {
            changes.mark_unchanged();
            if self.world.generation() != self.applied.borrow().generation {
                self.pass();
                continue;
            }
            let retry = !self.applied.borrow().guest_ports_complete;
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY), if retry => { self.pass(); }
            }
        }
    }
}

impl Sync {
    /// Waits until a pass has seen every change made so far (asking for one), and returns
    /// what it did.
    pub async fn settled(&self) -> Applied {
        let wanted = self.world.kick();
        let mut applied = self.applied.clone();
        match applied.wait_for(|a| a.generation >= wanted).await {
            Ok(a) => a.clone(),
            // The reconciler is gone: hvsockd is stopping.
            Err(_) => Applied::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::Limits;
    use hvsock::dirs::Dirs;

    /// Regression: the task subscribed after a change and a request for a pass, marked them
    /// seen, and the request waited for ever.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pass_asked_for_before_the_task_first_runs_still_comes() {
        let f = crate::testing::fixture();
        let tmp = tempfile::tempdir().unwrap();
        let dirs = Dirs::under(tmp.path());
        std::fs::create_dir_all(dirs.partitions()).unwrap();
        let shutdown = CancellationToken::new();
        let limits = Limits::default();
        let endpoints = Arc::new(Endpoints::new(
            f.broker.clone(),
            limits,
            dirs.clone(),
            shutdown.clone(),
        ));
        let guest_ports = Arc::new(GuestPorts::new(f.broker.clone(), limits, shutdown.clone()));
        let reconciler = Reconciler::new(f.broker.world().clone(), endpoints, guest_ports);
        // As at start-up: one pass first, which leaves nothing to retry.
        assert!(reconciler.pass().guest_ports_complete);
        f.broker.world().kick();
        let sync = reconciler.sync();
        tokio::spawn(reconciler.run(shutdown.clone()));
        // `settled` asks for a pass before the task has run at all.
        // Well within RETRY, which would otherwise hide the bug.
        let applied = tokio::time::timeout(RETRY / 2, sync.settled())
            .await
            .expect("no pass came");
        assert!(applied.endpoint_failures.is_empty(), "{applied:?}");
        assert!(dirs.partition_socket(f.sandbox).exists());
        shutdown.cancel();
    }
}
