//! hvsock's integration services: the agent that serves them in a Linux guest or a sandbox,
//! and the host side of each protocol, so that `hvsock exec`, `hvsock cp` and the rest stay
//! thin. They are ordinary hvsock services: read them as the example of how to write one.
//!
//! | service | name | vsock port | served by | host command |
//! | --- | --- | --- | --- | --- |
//! | VM session | `hvsock-session` | 50000 | the agent | `hvsock exec`, `hvsock shell` |
//! | file copy | `hvsock-files` | 50001 | the agent | `hvsock cp` |
//! | shutdown | `hvsock-shutdown` | 50002 | the agent | `hvsock vm shutdown` |
//! | heartbeat | `hvsock-heartbeat` | 50003 | the host | `hvsock vm list`, `vm show` |
//! | time sync | `hvsock-time` | 50004 | the host | `hvsock vm show` |
//! | key-value | `hvsock-kvp` | 50005 | the host | `hvsock kvp` |
//!
//! (The ports 50000–50009 are the block of hvsock's integration services; see [`services`].)
//!
//! # Trust
//!
//! The agent binds every service it serves to `PARENT`, so the only partition that may
//! connect is its parent (the host): through hvsockd (a sandbox) the provider enforces it, and
//! over vsock (a VM) the transport drops any CID but the host's, and the agent checks the peer
//! again. Who *on the host* may connect is the host's business (hvsockd's service rules; the
//! VM session and file copy are registered disabled and root-only). Everything a peer sends is
//! checked before it is used ([`wire`] first: lengths, then fields); a message that is
//! oversized, malformed or out of order ends that one session with an Error frame that says
//! why, and nothing else.
//!
//! # Modules
//!
//! - [`wire`]: the framing and version negotiation every service shares;
//! - [`services`]: the table above;
//! - [`session`]: the VM session protocol, its agent side (`server`) and host side (`client`);
//! - [`files`]: the file copy protocol, trees sent ([`files::send`]) and received
//!   ([`files::recv`]), agent and host sides;
//! - [`shutdown`]: the shutdown protocol and how the agent reaches the guest's init;
//! - [`heartbeat`], [`time`], [`kvp`]: the host-served protocols, with the host's side as
//!   plain state (a heartbeat [`heartbeat::Tracker`], time's [`time::answer`], a key-value
//!   [`kvp::Mirror`]) for hvsockd to drive;
//! - [`link`]: the agent's side of those, one persistent connection each, made again with
//!   back-off; [`kvp_files`]: `hvsock-agent kvp`, the pools as files in the guest;
//! - [`agent`]: the daemon (binding with [`backoff`], one thread per connection);
//! - [`term`]: pseudo-terminals in the guest, raw mode on the host;
//! - [`user`]: guest accounts for `--user`.

pub mod services;
pub mod wire;

pub mod files;
pub mod heartbeat;
pub mod kvp;
pub mod session;
#[cfg(target_os = "linux")]
pub mod shutdown;
pub mod time;

#[cfg(target_os = "linux")]
pub mod agent;
pub mod backoff;
#[cfg(target_os = "linux")]
pub mod kvp_files;
#[cfg(target_os = "linux")]
pub mod link;
#[cfg(target_os = "linux")]
pub mod term;
#[cfg(target_os = "linux")]
pub mod user;
