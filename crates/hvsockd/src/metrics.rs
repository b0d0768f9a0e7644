//! Performance counters: what `/metrics` shows in Prometheus text and `/v1/stats` in JSON.
//!
//! Counters are kept by ids and named at render time from the registry, so that a rename shows
//! at once and the friendly name is the label people read. Connections to services that are not
//! registered (loopback needs no registration) are counted together under one label, so that a
//! client trying random GUIDs cannot grow the table without bound; partitions are bounded by the
//! registry.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use hvsock::{ServiceId, VmId};

use crate::world::World;

/// Upper bounds of the connect-latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// The key a service is counted under: its id if registered, else `None` (all unregistered).
type ServiceKey = Option<ServiceId>;

#[derive(Debug, Default, Clone)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// The upper bound of the bucket holding quantile `q`, in seconds (`None` if beyond the
    /// last finite bucket or empty).
    fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        LATENCY_BUCKETS
            .iter()
            .zip(self.buckets.iter())
            .find(|&(_, &n)| n >= rank)
            .map(|(&le, _)| le)
    }

    fn observe(&mut self, secs: f64) {
        for (bucket, &le) in self.buckets.iter_mut().zip(LATENCY_BUCKETS.iter()) {
            if secs <= le {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Debug, Default)]
struct Inner {
    refused: HashMap<(VmId, ServiceKey, &'static str), u64>,
    /// Every connection established is observed here, so a histogram's `count` is also the
    /// number of connections established.
    latency: HashMap<(VmId, ServiceKey), Histogram>,
    binds_refused: HashMap<(VmId, ServiceKey, &'static str), u64>,
    client_errors: HashMap<(VmId, &'static str), u64>,
}

pub mod warnings;

/// The counters of one hvsockd, and the limiter of the warnings its partitions cause.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    warnings: warnings::Warnings,
}

pub use hvsock_api::{BindRefusals, ConnectStats, ListenerCount, Stats};

const UNREGISTERED: &str = "(unregistered)";

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from `from` to `service` was established after `latency`.
    pub fn established(&self, from: VmId, service: ServiceKey, latency: Duration) {
        self.lock()
            .latency
            .entry((from, service))
            .or_default()
            .observe(latency.as_secs_f64());
    }

    /// A bind in `partition` for `service` was refused for `reason`.
    pub fn bind_refused(&self, partition: VmId, service: ServiceKey, reason: &'static str) {
        *self
            .lock()
            .binds_refused
            .entry((partition, service, reason))
            .or_default() += 1;
    }

    /// A connect from `from` to `service` was refused for `reason`.
    pub fn refused(&self, from: VmId, service: ServiceKey, reason: &'static str) {
        *self
            .lock()
            .refused
            .entry((from, service, reason))
            .or_default() += 1;
    }

    /// Whether to log a warning about `partition` for `reason` now ([`warnings`]: the first
    /// few of each minute, then a count). Counters are kept apart and count every event.
    pub fn warn_allowed(
        &self,
        partition: VmId,
        reason: &'static str,
        label: impl FnOnce() -> String,
    ) -> bool {
        self.warnings.allow(partition, reason, label)
    }

    /// A client of `partition` was dropped for `reason`.
    pub fn client_error(&self, partition: VmId, reason: &'static str) {
        *self
            .lock()
            .client_errors
            .entry((partition, reason))
            .or_default() += 1;
    }

    /// The counters as JSON-ready rows, named from `world`.
    pub fn stats(&self, world: &World) -> Stats {
        let inner = self.lock();
        let mut out: BTreeMap<(String, String), ConnectStats> = BTreeMap::new();
        for (&(from, service), h) in &inner.latency {
            stats_row(&mut out, world, from, service).established += h.count;
        }
        for (&(from, service, reason), &n) in &inner.refused {
            *stats_row(&mut out, world, from, service)
                .refused
                .entry(reason.to_owned())
                .or_default() += n;
        }
        // Rows are keyed by names: merge the histograms of keys that share them (a partition
        // gone, unregistered services) before summarising.
        let mut merged: BTreeMap<(String, String), Histogram> = BTreeMap::new();
        for (&(from, service), h) in &inner.latency {
            let key = (world.partition_label(from), service_label(world, service));
            let m = merged.entry(key).or_default();
            for (a, b) in m.buckets.iter_mut().zip(h.buckets.iter()) {
                *a += b;
            }
            m.count += h.count;
            m.sum += h.sum;
        }
        for (key, h) in merged {
            if let Some(row) = out.get_mut(&key) {
                if h.count > 0 {
                    row.latency_avg_ms = Some(h.sum / h.count as f64 * 1000.0);
                }
                row.latency_p99_ms = h.quantile_bound(0.99).map(|s| s * 1000.0);
            }
        }
        let mut binds: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
        for (&(partition, service, reason), &n) in &inner.binds_refused {
            *binds
                .entry((
                    world.partition_label(partition),
                    service_label(world, service),
                ))
                .or_default()
                .entry(reason.to_owned())
                .or_default() += n;
        }
        let mut client_errors: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for (&(partition, reason), &n) in &inner.client_errors {
            *client_errors
                .entry(world.partition_label(partition))
                .or_default()
                .entry(reason.to_owned())
                .or_default() += n;
        }
        Stats {
            connections: out.into_values().collect(),
            listeners: listener_counts(world),
            binds_refused: binds
                .into_iter()
                .map(|((partition, service), refused)| BindRefusals {
                    partition,
                    service,
                    refused,
                })
                .collect(),
            client_errors,
        }
    }

    /// The counters in Prometheus text format, named from `world`.
    pub fn render(&self, world: &World) -> String {
        let inner = self.lock();
        let mut out = String::new();
        let esc = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let svc_labels = |service: ServiceKey| {
            format!(
                "service=\"{}\",service_id=\"{}\"",
                esc(&service_label(world, service)),
                service.map(|s| s.to_string()).unwrap_or_default()
            )
        };

        let partition = |id: VmId| esc(&world.partition_label(id));
        counter(
            &mut out,
            "hvsock_connections_total",
            "Connections established, by service and connecting partition.",
            inner.latency.iter().map(|(key, h)| (key, h.count)),
            |&(from, service)| format!("{},partition=\"{}\"", svc_labels(service), partition(from)),
        );
        counter(
            &mut out,
            "hvsock_connections_refused_total",
            "Connects refused, by service, connecting partition and reason.",
            counts(&inner.refused),
            |&(from, service, reason)| {
                format!(
                    "{},partition=\"{}\",reason=\"{reason}\"",
                    svc_labels(service),
                    partition(from)
                )
            },
        );

        header(
            &mut out,
            "hvsock_connect_duration_seconds",
            "histogram",
            "Time from a connect request to the connection, by service and connecting partition.",
        );
        let mut lines = Vec::new();
        for (&(from, service), h) in &inner.latency {
            let labels = format!("{},partition=\"{}\"", svc_labels(service), partition(from));
            let mut text = String::new();
            for (le, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
                let _ = writeln!(
                    text,
                    "hvsock_connect_duration_seconds_bucket{{{labels},le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                text,
                "hvsock_connect_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                text,
                "hvsock_connect_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                text,
                "hvsock_connect_duration_seconds_count{{{labels}}} {}",
                h.count
            );
            lines.push(text);
        }
        lines.sort();
        out.extend(lines);

        header(
            &mut out,
            "hvsock_listeners",
            "gauge",
            "Bound listeners, by service and partition.",
        );
        for count in listener_counts(world) {
            let _ = writeln!(
                out,
                "hvsock_listeners{{service=\"{}\",partition=\"{}\"}} {}",
                esc(&count.service),
                esc(&count.partition),
                count.listeners
            );
        }

        counter(
            &mut out,
            "hvsock_binds_refused_total",
            "Binds refused, by service, binding partition and reason.",
            counts(&inner.binds_refused),
            |&(in_partition, service, reason)| {
                format!(
                    "{},partition=\"{}\",reason=\"{reason}\"",
                    svc_labels(service),
                    partition(in_partition)
                )
            },
        );
        counter(
            &mut out,
            "hvsock_client_errors_total",
            "Clients dropped for breaking the protocol, by partition and reason.",
            counts(&inner.client_errors),
            |&(in_partition, reason)| {
                format!(
                    "partition=\"{}\",reason=\"{reason}\"",
                    partition(in_partition)
                )
            },
        );

        header(
            &mut out,
            "hvsock_services",
            "gauge",
            "Registered services, by state.",
        );
        let enabled = world.services().filter(|s| s.enabled).count();
        let total = world.services().count();
        let _ = writeln!(out, "hvsock_services{{state=\"enabled\"}} {enabled}");
        let _ = writeln!(
            out,
            "hvsock_services{{state=\"disabled\"}} {}",
            total - enabled
        );
        header(
            &mut out,
            "hvsock_partitions",
            "gauge",
            "Partitions, the root included.",
        );
        let _ = writeln!(out, "hvsock_partitions {}", world.partitions().count());
        out
    }
}

/// Writes a counter family: its header, then one sorted line per entry, labelled by `labels`.
/// Writes counter family `name`: one line per entry, labelled by `labels`, in a stable order.
fn counter<'a, K: 'a>(
    out: &mut String,
    name: &str,
    help: &str,
    entries: impl Iterator<Item = (&'a K, u64)>,
    labels: impl Fn(&K) -> String,
) {
    header(out, name, "counter", help);
    let mut lines: Vec<String> = entries
        .map(|(key, n)| format!("{name}{{{}}} {n}\n", labels(key)))
        .collect();
    lines.sort();
    out.extend(lines);
}

/// The entries of a counter map, as [`counter`] takes them.
fn counts<K>(map: &HashMap<K, u64>) -> impl Iterator<Item = (&K, u64)> {
    map.iter().map(|(key, &n)| (key, n))
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn stats_row<'a>(
    out: &'a mut BTreeMap<(String, String), ConnectStats>,
    world: &World,
    from: VmId,
    service: ServiceKey,
) -> &'a mut ConnectStats {
    let partition = world.partition_label(from);
    let name = service_label(world, service);
    out.entry((partition.clone(), name.clone()))
        .or_insert_with(|| ConnectStats {
            partition,
            service: name,
            service_id: service,
            established: 0,
            refused: BTreeMap::new(),
            latency_avg_ms: None,
            latency_p99_ms: None,
        })
}

fn service_label(world: &World, service: ServiceKey) -> String {
    service
        .and_then(|id| world.service(id).map(|s| s.name.clone()))
        .unwrap_or_else(|| UNREGISTERED.to_owned())
}

fn listener_counts(world: &World) -> Vec<ListenerCount> {
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for listener in world.listeners() {
        let service = service_label(world, world.service_key(listener.addr.service_id));
        *counts
            .entry((world.partition_label(listener.partition), service))
            .or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((partition, service), listeners)| ListenerCount {
            partition,
            service,
            listeners,
        })
        .collect()
}

#[cfg(test)]
mod tests;
