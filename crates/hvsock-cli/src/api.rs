//! The admin API's JSON objects, as the `hvsock-api` crate defines them for both hvsockd and
//! this CLI: what hvsockd answers (`Service`, `Partition`, `Host`, `Stats`, `ImportReport`) and
//! what the CLI sends (`NewService`, `NewPartition`; the `PATCH` bodies are built as JSON, because
//! merge patch tells `null` from absent).
//!
//! Reading is lenient (fields that a newer hvsockd adds are ignored, counters an older one
//! lacks default to zero) so that the CLI and the daemon can be upgraded one at a time;
//! `--json` output prints the API's objects as they came, not these types, so that it shows
//! every field.

pub use hvsock_api::{
    Account, BindRefusals, ConnectStats, Counts, Guest, GuestKvp, Host, ImportReport, Kvp, KvpPair,
    KvpPoolName, KvpValue, Listener, ListenerCount, NewPartition, NewService, Partition,
    PartitionRef, Policy, Service, Stats,
};
