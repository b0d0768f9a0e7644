//! Warnings a partition cannot flood the log with.
//!
//! Every warning about something a partition's clients did (a session refused at the session
//! limit, a client dropped for garbage or for saying nothing) goes through [`Warnings::allow`],
//! keyed by partition and reason. In each window of [`INTERVAL`] (60 s) the first
//! [`BURST`] (5) warnings of a key are written; the rest are counted and, when the
//! window ends, summed up in one line:
//!
//! ```text
//! WARN suppressed 9995 similar warnings (too_many_sessions) from partition web1 in the last 60s
//! ```
//!
//! So a partition that opens 10,000 refused sessions writes six lines, not 10,000, and a
//! hostile partition cannot fill the host's disk or journal. The counters of `/metrics` and
//! `/v1/stats` count every event regardless: only the log is limited.
//!
//! The summary is written by a timer task when the window ends (inside hvsockd's runtime), or
//! by the next warning of the key if there is no runtime (tests).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hvsock::VmId;

/// Warnings written per key and window before the rest are only counted.
pub const BURST: u32 = 5;
/// The window.
pub const INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Window {
    start: Instant,
    written: u32,
    suppressed: u64,
    /// The partition's name when the first warning was suppressed, for the summary.
    label: String,
    /// A timer task will write the summary.
    timer: bool,
}

#[derive(Debug)]
struct Inner {
    burst: u32,
    interval: Duration,
    windows: HashMap<(VmId, &'static str), Window>,
}

/// The rate limiter of per-partition warnings (see the module docs).
#[derive(Debug, Clone)]
pub struct Warnings {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Warnings {
    fn default() -> Warnings {
        Warnings::new(BURST, INTERVAL)
    }
}

impl Warnings {
    /// At most `burst` warnings per key in each `interval`, then one summary line.
    pub fn new(burst: u32, interval: Duration) -> Warnings {
        Warnings {
            inner: Arc::new(Mutex::new(Inner {
                burst,
                interval,
                windows: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to write a warning about `partition` for `reason` now; if not, it is counted
    /// for the window's summary. `label` names the partition in that summary.
    pub fn allow(
        &self,
        partition: VmId,
        reason: &'static str,
        label: impl FnOnce() -> String,
    ) -> bool {
        let now = Instant::now();
        let mut inner = self.lock();
        let (burst, interval) = (inner.burst, inner.interval);
        let key = (partition, reason);
        if let Some(window) = inner.windows.get(&key) {
            if now.duration_since(window.start) >= interval && !window.timer {
                // The window ended with no timer (no runtime): its summary comes now.
                if let Some(old) = inner.windows.remove(&key) {
                    summarize(reason, &old, interval);
                }
            }
        }
        let window = inner.windows.entry(key).or_insert_with(|| Window {
            start: now,
            written: 0,
            suppressed: 0,
            label: String::new(),
            timer: false,
        });
        if window.written < burst {
            window.written += 1;
            return true;
        }
        if window.suppressed == 0 {
            window.label = label();
        }
        window.suppressed += 1;
        if !window.timer {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                window.timer = true;
                let end = window.start + interval;
                let this = self.clone();
                runtime.spawn(async move {
                    tokio::time::sleep_until(end.into()).await;
                    this.end_window(key);
                });
            }
        }
        false
    }

    /// Ends the window of `key`: writes its summary if anything was suppressed.
    fn end_window(&self, key: (VmId, &'static str)) {
        let mut inner = self.lock();
        let interval = inner.interval;
        if let Some(window) = inner.windows.remove(&key) {
            summarize(key.1, &window, interval);
        }
    }
}

fn summarize(reason: &str, window: &Window, interval: Duration) {
    if window.suppressed > 0 {
        tracing::warn!(
            "suppressed {} similar warnings ({reason}) from partition {} in the last {}s",
            window.suppressed,
            window.label,
            interval.as_secs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: VmId = VmId::LOOPBACK;

    #[test]
    fn the_first_burst_is_written_and_the_rest_counted() {
        let w = Warnings::new(3, Duration::from_secs(3600));
        let allowed = (0..1000).filter(|_| w.allow(P, "r", || "p".into())).count();
        assert_eq!(allowed, 3);
        let inner = w.lock();
        assert_eq!(inner.windows[&(P, "r")].suppressed, 997);
        assert_eq!(inner.windows[&(P, "r")].label, "p");
    }

    #[test]
    fn keys_are_limited_apart() {
        let w = Warnings::new(1, Duration::from_secs(3600));
        assert!(w.allow(P, "a", String::new));
        assert!(!w.allow(P, "a", String::new));
        assert!(w.allow(P, "b", String::new));
        assert!(w.allow(VmId::PARENT, "a", String::new));
    }

    #[test]
    fn a_new_window_writes_again_and_drops_the_old_count() {
        let w = Warnings::new(1, Duration::from_millis(20));
        assert!(w.allow(P, "a", String::new));
        assert!(!w.allow(P, "a", String::new));
        std::thread::sleep(Duration::from_millis(30));
        assert!(w.allow(P, "a", String::new));
        assert_eq!(w.lock().windows[&(P, "a")].suppressed, 0);
    }

    #[tokio::test]
    async fn the_timer_ends_the_window() {
        let w = Warnings::new(1, Duration::from_millis(50));
        assert!(w.allow(P, "a", String::new));
        assert!(!w.allow(P, "a", String::new));
        assert!(w.lock().windows[&(P, "a")].timer);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(w.lock().windows.is_empty());
        assert!(w.allow(P, "a", String::new));
    }
}
