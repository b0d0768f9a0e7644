//! The vhost-user backend: QEMU's virtio-vsock queues, the muxer and the link, on one worker
//! thread (vhost-user-backend's epoll loop).
//!
//! Events, each handled by [`Device::handle_event`]:
//!
//! | id | what | then |
//! | --- | --- | --- |
//! | 0 | RX queue kick (the guest gave receive buffers) | fill them |
//! | 1 | TX queue kick (the guest sent packets) | each to the muxer, then fill receive buffers |
//! | 2 | event queue kick | nothing (the device sends no events) |
//! | 4 | a host socket is ready (the muxer's epoll set) | read/flush, fill receive buffers |
//! | 5 | hvsockd said something (the link's eventfd) | to the muxer, fill receive buffers |
//!
//! The TX queue is always drained: a guest that respects its credit never finds a connection's
//! buffer full. Receive buffers are filled while the muxer has packets; when the guest has no
//! more buffers, the rest waits in the muxer (the host sockets' bytes stay in the kernel) until
//! the next RX kick.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackendMut, VringEpollHandler, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::link::{FromHvsockd, Link};
use crate::muxer::{Config, Muxer, ToHvsockd};
use crate::packet::MAX_PAYLOAD;
use crate::queues::{fill_rx, read_tx};

const NUM_QUEUES: usize = 3;
const RX: u16 = 0;
const TX: u16 = 1;
const EVT: u16 = 2;
/// The muxer's host sockets.
pub const SOCKETS: u16 = NUM_QUEUES as u16 + 1;
/// The link's eventfd.
pub const LINK: u16 = NUM_QUEUES as u16 + 2;
/// Largest queue the device accepts.
pub const QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// One VM's device, for one connection of its VMM.
#[derive(Debug)]
pub struct Device {
    cfg: Config,
    mem: Option<Mem>,
    event_idx: bool,
    muxer: Muxer,
    link: Arc<Link>,
    payload: Vec<u8>,
    scratch: Vec<u8>,
    exit: EventFd,
}

impl Device {
    /// A device for the guest with `cfg`, routing through `link`.
    pub fn new(cfg: Config, link: Arc<Link>) -> io::Result<Device> {
        let mut muxer = Muxer::new(cfg)?;
        if link.is_up() {
            muxer.hvsockd_up();
        }
        Ok(Device {
            cfg,
            mem: None,
            event_idx: false,
            muxer,
            link,
            payload: Vec::with_capacity(MAX_PAYLOAD as usize),
            scratch: vec![0; MAX_PAYLOAD as usize],
            exit: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Registers the muxer's epoll set and the link's eventfd with the worker's loop.
    pub fn register(
        device: &Arc<Mutex<Device>>,
        handler: &VringEpollHandler<Arc<Mutex<Device>>>,
    ) -> io::Result<()> {
        // Not under the device's lock: the handler asks the device (num_queues) as it registers.
        let (sockets, link) = {
            let d = device.lock().unwrap_or_else(|p| p.into_inner());
            (d.muxer.epoll_fd().as_raw_fd(), d.link.wake_fd().as_raw_fd())
        };
        handler.register_listener(sockets, EventSet::IN, u64::from(SOCKETS))?;
        handler.register_listener(link, EventSet::IN, u64::from(LINK))?;
        Ok(())
    }

    fn link_events(&mut self) {
        for event in self.link.drain() {
            match event {
                FromHvsockd::Up => self.muxer.hvsockd_up(),
                FromHvsockd::Down => self.muxer.hvsockd_down(),
                FromHvsockd::GuestConnect { req, port, fd } => {
                    self.muxer.guest_connect(req, port, fd)
                }
                FromHvsockd::Answer { req, result } => self.muxer.connect_answer(req, result),
            }
        }
    }

    /// Sends the muxer's requests to hvsockd; a connect that cannot be sent is refused.
    fn requests(&mut self) {
        loop {
            let requests = self.muxer.take_requests();
            if requests.is_empty() {
                return;
            }
            for request in requests {
                if let Err(e) = self.link.send(&request) {
                    tracing::debug!("cannot tell hvsockd {request:?}: {e}");
                    if let ToHvsockd::Connect { req, .. } = request {
                        let why = format!("hvsockd is away ({e})");
                        self.muxer
                            .connect_answer(req, Err((hvsock_proto::ErrorCode::Refused, why)));
                    }
                }
            }
        }
    }

    fn process_tx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = self.mem.clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mut used = false;
        loop {
            if self.event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(mut chain) = chain else { break };
                let head = chain.head_index();
                match read_tx(&*mem, &mut chain, &mut self.payload) {
                    Ok(header) => self.muxer.guest_packet(&header, &self.payload),
                    Err(e) => {
                        self.muxer.counters.bad_packets += 1;
                        tracing::debug!("dropping a TX chain: {e}");
                    }
                }
                vring.add_used(head, 0).map_err(io::Error::other)?;
                used = true;
            }
            if !self.event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        if used {
            self.signal(vring)?;
        }
        Ok(())
    }

    fn process_rx(&mut self, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = self.mem.clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mut used = false;
        while self.muxer.rx_pending() {
            let (chain, before) = {
                let mut v = vring.get_mut();
                let q = v.get_queue_mut();
                let before = q.next_avail();
                (q.pop_descriptor_chain(mem.clone()), before)
            };
            let Some(mut chain) = chain else {
                // No receive buffer: wait for the guest's kick (unless one came meanwhile).
                if self.event_idx && vring.enable_notification().map_err(io::Error::other)? {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            match fill_rx(&*mem, &mut chain, &mut self.muxer, &mut self.scratch) {
                Ok(Some(len)) => {
                    vring.add_used(head, len).map_err(io::Error::other)?;
                    used = true;
                }
                Ok(None) => {
                    vring.get_mut().get_queue_mut().set_next_avail(before);
                    break;
                }
                Err(e) => {
                    tracing::debug!("dropping an RX chain: {e}");
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                    used = true;
                }
            }
        }
        if used {
            self.signal(vring)?;
        }
        Ok(())
    }

    fn signal(&self, vring: &VringRwLock) -> io::Result<()> {
        if !self.event_idx || vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackendMut for Device {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_vsock_config { le64 guest_cid; }
        let config = self.cfg.guest_cid.to_le_bytes();
        let (offset, size) = (offset as usize, size as usize);
        match offset.checked_add(size) {
            Some(end) if end <= config.len() => config[offset..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn update_memory(&mut self, mem: Mem) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<EventFd> {
        self.exit.try_clone().ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        let [rx, tx, ..] = vrings else {
            return Err(io::Error::other("the device has fewer than two queues"));
        };
        match device_event {
            RX | EVT => {}
            TX => self.process_tx(tx)?,
            SOCKETS => self.muxer.socket_events(),
            LINK => self.link_events(),
            other => return Err(io::Error::other(format!("unknown device event {other}"))),
        }
        self.muxer.expire(Instant::now());
        self.requests();
        self.process_rx(rx)?;
        // Answers that came from filling (a reset) go out now too.
        self.requests();
        Ok(())
    }
}
