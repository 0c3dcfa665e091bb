//! The router's metrics, through the [`metrics`] facade: the app installs a recorder
//! (Prometheus exporter, statsd, ...) before it connects the router; without one
//! every metric is a no-op.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | [`ROUTED_TOTAL`] | counter | cluster, node, intent | connections handed out (one per [`Router::query`](super::Router::query) / [`execute`](super::Router::execute) attempt, one per [`write`](super::Router::write) / [`read`](super::Router::read) / [`read_after`](super::Router::read_after) / [`transaction`](super::Router::transaction)) |
//! | [`FAILOVER_WAIT_SECONDS`] | histogram | cluster, intent | time a call waited for a topology that could serve it (no primary, a suspect master, nothing readable); recorded only for calls that waited |
//! | [`TOPOLOGY_AGE_SECONDS`] | gauge | cluster | [`Router::snapshot_age`](super::Router::snapshot_age), set every [`TOPOLOGY_AGE_INTERVAL_MS`] |
//! | [`RETRIES_TOTAL`] | counter | cluster, kind | retries: `write_on_master` (25006), `read_elsewhere` (broken connection), `read_on_master` (25006 on a replica) |
//!
//! `intent` is `write`, `read` or `read_after`. Handles are registered once (per
//! router, per endpoint when its pool is made), so recording is an atomic update: no
//! allocation, no label formatting per query.

use std::time::Duration;

use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::topology::{Endpoint, Intent};

/// Counter: connections handed out, by cluster, node and intent.
pub const ROUTED_TOTAL: &str = "switchyard_router_routed_total";
/// Histogram: seconds a call waited for a topology that could serve it.
pub const FAILOVER_WAIT_SECONDS: &str = "switchyard_router_failover_wait_seconds";
/// Gauge: seconds the topology may be behind (zero while the watch is in sync).
pub const TOPOLOGY_AGE_SECONDS: &str = "switchyard_router_topology_age_seconds";
/// Counter: retries, by cluster and kind.
pub const RETRIES_TOTAL: &str = "switchyard_router_retries_total";
/// How often the topology age gauge is set.
pub const TOPOLOGY_AGE_INTERVAL_MS: u64 = 1_000;

const INTENTS: [&str; 3] = ["write", "read", "read_after"];

fn intent_index(intent: Intent) -> usize {
    match intent {
        Intent::Write => 0,
        Intent::Read => 1,
        Intent::ReadAfter(_) => 2,
    }
}

/// What a retry was.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Retry {
    WriteOnMaster = 0,
    ReadElsewhere = 1,
    ReadOnMaster = 2,
}

const RETRY_KINDS: [&str; 3] = ["write_on_master", "read_elsewhere", "read_on_master"];

/// One router's metric handles.
pub(crate) struct RouterMetrics {
    cluster: String,
    failover_wait: [Histogram; 3],
    topology_age: Gauge,
    retries: [Counter; 3],
}

/// One endpoint's handles, made with its pool.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    routed: [Counter; 3],
}

impl RouterMetrics {
    pub(crate) fn new(cluster: &str) -> Self {
        let c = cluster.to_owned();
        RouterMetrics {
            failover_wait: INTENTS
                .map(|i| histogram!(FAILOVER_WAIT_SECONDS, "cluster" => c.clone(), "intent" => i)),
            topology_age: gauge!(TOPOLOGY_AGE_SECONDS, "cluster" => c.clone()),
            retries: RETRY_KINDS
                .map(|k| counter!(RETRIES_TOTAL, "cluster" => c.clone(), "kind" => k)),
            cluster: c,
        }
    }

    pub(crate) fn endpoint(&self, ep: &Endpoint) -> EndpointMetrics {
        EndpointMetrics {
            routed: INTENTS.map(|i| {
                counter!(
                    ROUTED_TOTAL,
                    "cluster" => self.cluster.clone(),
                    "node" => ep.node.clone(),
                    "intent" => i
                )
            }),
        }
    }

    pub(crate) fn waited(&self, intent: Intent, waited: Duration) {
        self.failover_wait[intent_index(intent)].record(waited.as_secs_f64());
    }

    pub(crate) fn topology_age(&self, age: Duration) {
        self.topology_age.set(age.as_secs_f64());
    }

    pub(crate) fn retried(&self, kind: Retry) {
        self.retries[kind as usize].increment(1);
    }
}

impl EndpointMetrics {
    pub(crate) fn routed(&self, intent: Intent) {
        self.routed[intent_index(intent)].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Lsn;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::MetricKind;

    #[test]
    fn names_labels_and_values() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let m = RouterMetrics::new("main");
            let ep = Endpoint {
                node: "pg-1".into(),
                host: "h".into(),
                port: 1,
            };
            let e = m.endpoint(&ep);
            e.routed(Intent::Read);
            e.routed(Intent::Read);
            e.routed(Intent::Write);
            e.routed(Intent::ReadAfter(Lsn(1)));
            m.waited(Intent::Write, Duration::from_millis(1500));
            m.topology_age(Duration::from_secs(3));
            m.retried(Retry::ReadElsewhere);
        });
        let mut seen: Vec<(MetricKind, String, Vec<String>, String)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let (kind, key) = key.into_parts();
                let mut labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                labels.sort();
                let value = match value {
                    DebugValue::Counter(n) => n.to_string(),
                    DebugValue::Gauge(g) => g.to_string(),
                    DebugValue::Histogram(h) => format!("{:?}", h),
                };
                (kind, key.name().to_owned(), labels, value)
            })
            .filter(|(_, _, _, v)| v != "0" && v != "[]")
            .collect();
        seen.sort();
        let want = |kind, name: &str, labels: &[&str], value: &str| {
            (
                kind,
                name.to_owned(),
                labels.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                value.to_owned(),
            )
        };
        let mut expected = vec![
            want(
                MetricKind::Counter,
                ROUTED_TOTAL,
                &["cluster=main", "intent=read", "node=pg-1"],
                "2",
            ),
            want(
                MetricKind::Counter,
                ROUTED_TOTAL,
                &["cluster=main", "intent=write", "node=pg-1"],
                "1",
            ),
            want(
                MetricKind::Counter,
                ROUTED_TOTAL,
                &["cluster=main", "intent=read_after", "node=pg-1"],
                "1",
            ),
            want(
                MetricKind::Counter,
                RETRIES_TOTAL,
                &["cluster=main", "kind=read_elsewhere"],
                "1",
            ),
            want(
                MetricKind::Gauge,
                TOPOLOGY_AGE_SECONDS,
                &["cluster=main"],
                "3",
            ),
            want(
                MetricKind::Histogram,
                FAILOVER_WAIT_SECONDS,
                &["cluster=main", "intent=write"],
                "[1.5]",
            ),
        ];
        expected.sort();
        assert_eq!(seen, expected);
    }
}
