//! coordd's logging: the subscriber `coordd` installs, and a throttle on openraft's
//! per-retry replication warnings.
//!
//! Why the throttle: while a peer is down, openraft 0.9's leader retries it every
//! `unreachable_backoff_ms` (50 ms) and logs four lines per retry (`openraft::replication`
//! WARN and ERROR, its backoff WARN, and `replication_handler`'s WARN): ~70 lines a second
//! per dead peer, for as long as it stays down. coordd's own transport already logs the
//! change of state once ("peer unreachable", "peer reachable again"), so those lines add
//! nothing after the first; they fill disks and bury the lines an operator needs.
//!
//! The throttle lets through at most one WARN or ERROR event per call site of those
//! targets every [`REPLICATION_LOG_EVERY_MS`]. Every call site is kept, so the first of
//! each kind (a storage error during replication, a failed snapshot send) always shows,
//! and a condition that persists shows again every interval. Other targets, and DEBUG or
//! TRACE events of these (asked for through `RUST_LOG`), pass untouched.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// At most one line per call site of a throttled target in this interval.
pub const REPLICATION_LOG_EVERY_MS: u64 = 10_000;

/// The targets whose WARN and ERROR events repeat per retry of a peer (prefixes of the
/// event's target, which is its module path).
const THROTTLED_TARGETS: [&str; 2] = [
    "openraft::replication",
    "openraft::engine::handler::replication_handler",
];

/// Bound on the call sites remembered. Call sites are static and those targets have a
/// dozen; past the bound an event of a call site not yet seen passes unthrottled rather
/// than grow the map.
const THROTTLED_CALLSITES_MAX: usize = 64;

/// Installs coordd's subscriber: `fmt` to stderr, filtered by `RUST_LOG` (default
/// `info`), colour only at a terminal, openraft's replication retries throttled.
pub fn init_stderr() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry()
        .with(filter)
        .with(ReplicationThrottle::new(Duration::from_millis(
            REPLICATION_LOG_EVERY_MS,
        )))
        .with(fmt)
        .init();
}

/// The layer: decides in `event_enabled`, which drops an event for every layer.
pub struct ReplicationThrottle {
    window: Mutex<Window<Identifier>>,
}

impl ReplicationThrottle {
    pub fn new(every: Duration) -> Self {
        Self {
            window: Mutex::new(Window::new(every, THROTTLED_CALLSITES_MAX)),
        }
    }
}

fn throttled(target: &str, level: &Level) -> bool {
    // Level's order: ERROR is the "smallest", TRACE the largest.
    *level <= Level::WARN && THROTTLED_TARGETS.iter().any(|t| target.starts_with(t))
}

impl<S: Subscriber> Layer<S> for ReplicationThrottle {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if !throttled(meta.target(), meta.level()) {
            return true;
        }
        // A poisoned lock (a panic elsewhere while it was held) must not silence or
        // crash logging: take the data as it is.
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.admit(meta.callsite(), Instant::now())
    }
}

/// Pure bookkeeping: when each key last passed. `admit` is true for a key's first event
/// and then once `every` has passed since the last one admitted.
struct Window<K> {
    every: Duration,
    keys_max: usize,
    last_admitted: HashMap<K, Instant>,
}

impl<K: std::hash::Hash + Eq> Window<K> {
    fn new(every: Duration, keys_max: usize) -> Self {
        Self {
            every,
            keys_max,
            last_admitted: HashMap::new(),
        }
    }

    fn admit(&mut self, key: K, now: Instant) -> bool {
        match self.last_admitted.get_mut(&key) {
            Some(last) => {
                if now.saturating_duration_since(*last) >= self.every {
                    *last = now;
                    true
                } else {
                    false
                }
            }
            None => {
                if self.last_admitted.len() < self.keys_max {
                    self.last_admitted.insert(key, now);
                }
                debug_assert!(self.last_admitted.len() <= self.keys_max);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_key_passes_first_then_once_per_interval() {
        let t0 = Instant::now();
        let every = Duration::from_secs(10);
        let mut w = Window::new(every, 8);
        assert!(w.admit("a", t0));
        assert!(!w.admit("a", t0 + Duration::from_millis(50)));
        assert!(!w.admit("a", t0 + every - Duration::from_millis(1)));
        // Another key has its own interval.
        assert!(w.admit("b", t0 + Duration::from_millis(60)));
        assert!(w.admit("a", t0 + every));
        assert!(!w.admit("a", t0 + every + Duration::from_millis(1)));
        // A clock read that goes backwards (another thread's earlier `now`) is no pass.
        assert!(!w.admit("a", t0));
    }

    #[test]
    fn past_the_bound_new_keys_pass_and_are_not_remembered() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), 2);
        assert!(w.admit(1, t0));
        assert!(w.admit(2, t0));
        assert!(w.admit(3, t0));
        assert!(w.admit(3, t0), "an unremembered key is never throttled");
        assert_eq!(w.last_admitted.len(), 2);
        assert!(!w.admit(1, t0), "remembered keys stay throttled");
    }

    #[test]
    fn only_warnings_and_errors_of_the_replication_targets_are_throttled() {
        assert!(throttled("openraft::replication", &Level::WARN));
        assert!(throttled("openraft::replication", &Level::ERROR));
        assert!(throttled(
            "openraft::engine::handler::replication_handler",
            &Level::WARN
        ));
        assert!(!throttled("openraft::replication", &Level::INFO));
        assert!(!throttled("openraft::replication", &Level::DEBUG));
        assert!(!throttled("openraft::core::raft_core", &Level::ERROR));
        assert!(!throttled(
            "coordd_raft::network::tcp::client",
            &Level::WARN
        ));
    }

    /// Counts the events that reach it.
    struct Count(Arc<AtomicUsize>);
    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _e: &Event<'_>, _cx: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn through_a_subscriber_a_retry_storm_becomes_one_line_per_call_site() {
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(ReplicationThrottle::new(Duration::from_secs(3600)))
            .with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..100 {
                tracing::warn!(target: "openraft::replication", "error replication to target=2");
                tracing::error!(target: "openraft::replication", "RPCError");
                tracing::warn!(target: "coordd_raft::member", "not throttled");
            }
        });
        // One of each throttled call site, all 100 of the other target.
        assert_eq!(seen.load(Ordering::Relaxed), 2 + 100);
    }
}
