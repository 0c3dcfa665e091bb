//! The member's limits and timers, with defaults tuned for failover in about half a second.
//!
//! How the timers add up (openraft 0.9.25, docs/issue5-openraft-research.md 1.6):
//! - A follower that had a leader campaigns only once `leader_lease + election_timeout` passed
//!   since the last AppendEntries it accepted, where `leader_lease = election_timeout_max_ms`
//!   and `election_timeout` is drawn once per process from `[min, max)`. It checks on a tick
//!   every `heartbeat_interval_ms * 3 / 2`.
//! - So after a leader dies, the first campaign starts `max + [min, max) - (0..heartbeat) +
//!   (0..tick)` later: with 50/150/200 that is 300-475 ms, then one vote round and the new
//!   leader's blank entry (one round trip and one fsync each) before it serves writes: about
//!   0.35-0.5 s, the aim.
//! - A leader whose process died (its peer port refuses connections) is replaced sooner:
//!   `Member::peer_link_lost` campaigns once the voters' lease (`max` after the last
//!   AppendEntries) ends, about 0.25 s after the kill.
//! - Why not lower: AppendEntries has a hard timeout of `heartbeat_interval_ms` (openraft
//!   replication/mod.rs:455), so one round trip plus the follower's fdatasync (p99 ~25 ms on the
//!   shared 2-core machine) must fit in it or replication times out and commits stall; and a
//!   follower calls an election after hearing nothing for 350-400 ms, i.e. seven missed
//!   heartbeats, which a loaded machine does not produce by scheduling delay alone.

use std::time::Duration;

use thiserror::Error;

/// Limits and timers of one member. Every member of an ensemble should use the same values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Name shared by the ensemble; shows up in openraft's logs.
    pub cluster_name: String,
    /// Leader heartbeat period, and the hard timeout of one AppendEntries round trip.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the random election timeout (> `heartbeat_interval_ms`). A vote RPC times
    /// out after this long.
    pub election_timeout_min_ms: u64,
    /// Upper bound (exclusive) of the random election timeout; openraft also uses it as the
    /// leader lease: a follower ignores vote requests for this long after hearing its leader.
    pub election_timeout_max_ms: u64,
    /// Deadline of one [`Member::propose`](crate::Member::propose). An isolated openraft 0.9
    /// leader never answers a write (no step-down, no lease admission), so every propose needs
    /// one. Long enough to cover a failover plus a loaded machine's stall: a propose that times
    /// out is in doubt (it may still commit), which is costlier than waiting.
    pub propose_timeout_ms: u64,
    /// Deadline of one [`Member::read_index`](crate::Member::read_index) (one heartbeat round
    /// to a quorum; openraft bounds each RPC by `heartbeat_interval_ms` itself).
    pub read_index_timeout_ms: u64,
    /// [`Member::quorum_ok`](crate::Member::quorum_ok) turns false when the leader has had no
    /// acknowledgement from a quorum, or a follower no AppendEntries from its leader, for this
    /// long.
    ///
    /// Upper bound (safety): below `election_timeout_min_ms + election_timeout_max_ms`, the
    /// earliest a new leader can be elected after the old one's last acknowledged heartbeat
    /// (a voter grants only once its lease, `max`, expired, and a candidate waits lease +
    /// its timeout, at least `min`), so that a cut-off member stops serving before anyone else
    /// can commit. Lower bound (liveness): under load acknowledgements can lag by a
    /// follower's fsync or a scheduling stall, and each false alarm stops the server
    /// answering its clients until contact is back. The default, 200 ms, tolerates 150 ms of
    /// silence beyond one heartbeat period and keeps 150 ms of margin to the earliest
    /// election by timeout (min + max). A false alarm is cheap at the server above: it holds
    /// its clients' replies and closes the clients only 100 ms later (coordd's
    /// `QUORUM_LOST_CLOSE_MS`); it was 300 ms here while a false alarm closed them at once.
    /// The early campaign after a leader's death (`Member::peer_link_lost`) waits until
    /// `max(election_timeout_max_ms, quorum_timeout_ms)` plus half a heartbeat after the
    /// last AppendEntries, so it keeps the same order. (With 5 members a follower can keep
    /// hearing a leader that lost its quorum; slice 6 must cover that.)
    pub quorum_timeout_ms: u64,
    /// Build a snapshot once this many entries were applied since the last one. One entry is a
    /// batch of txns, and a snapshot is an image of the whole tree, so not too often.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the newest snapshot, so a follower a little behind gets
    /// entries, not a whole snapshot.
    pub max_in_snapshot_log_to_keep: u64,
    /// Purge only when at least this many entries can go (fewer, larger purges).
    pub purge_batch_size: u64,
    /// Entries per AppendEntries RPC at most. openraft gives every AppendEntries
    /// `heartbeat_interval_ms` to complete, so one RPC must carry few enough bytes (entries x
    /// batch size) to cross the wire and be fsynced in that time, or a lagging follower never
    /// catches up. openraft's default is 300; an entry here is a batch of txns, so fewer.
    /// The TCP transport also bounds the bytes (`TcpConfig::append_entries_bytes_max`),
    /// which a count cannot do for large entries.
    pub max_payload_entries: u64,
    /// Largest payload [`Member::propose`](crate::Member::propose) accepts; bigger ones are
    /// refused before they reach the log (they would have to cross the peer wire).
    pub payload_max_bytes: usize,
    /// Deadline for sending a snapshot to a follower and its installing it.
    pub install_snapshot_timeout_ms: u64,
    /// Pause before retrying a peer that was unreachable (openraft's default is 500 ms, which
    /// would delay a restarted member's catch-up and a vote after a heal).
    pub unreachable_backoff_ms: u64,
    /// Deadline of [`Member::shutdown`](crate::Member::shutdown).
    pub shutdown_timeout_ms: u64,
    /// Membership change ([`Member::change_membership`](crate::Member::change_membership)):
    /// how long the leader waits for new members to catch up as learners before it gives up
    /// (and removes them again). A new member starts empty and receives a snapshot and the
    /// log since it, so this covers a snapshot transfer.
    pub learner_catch_up_timeout_ms: u64,
    /// A learner counts as caught up once its log is at most this many entries behind the
    /// leader's (under a steady write load it never matches exactly).
    pub learner_catch_up_lag_max: u64,
    /// Deadline of each membership log entry of a change (adding learners, then the joint
    /// and the final configuration together).
    pub membership_change_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cluster_name: "coordd".to_string(),
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 200,
            propose_timeout_ms: 2_000,
            read_index_timeout_ms: 1_000,
            quorum_timeout_ms: 200,
            snapshot_logs_since_last: 5_000,
            max_in_snapshot_log_to_keep: 1_000,
            purge_batch_size: 256,
            max_payload_entries: 64,
            payload_max_bytes: 4 << 20,
            install_snapshot_timeout_ms: 10_000,
            unreachable_backoff_ms: 50,
            shutdown_timeout_ms: 5_000,
            learner_catch_up_timeout_ms: 10_000,
            learner_catch_up_lag_max: 64,
            membership_change_timeout_ms: 5_000,
        }
    }
}

/// A [`Config`] that cannot work.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid raft config: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Checks the relations between the values; [`Member::start`](crate::Member::start) calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.heartbeat_interval_ms == 0 {
            return err("heartbeat_interval_ms must be > 0".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return err(format!(
                "election_timeout_min_ms ({}) must be > heartbeat_interval_ms ({})",
                self.election_timeout_min_ms, self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return err(format!(
                "election_timeout_max_ms ({}) must be > election_timeout_min_ms ({})",
                self.election_timeout_max_ms, self.election_timeout_min_ms
            ));
        }
        if self.quorum_timeout_ms <= self.heartbeat_interval_ms {
            return err(format!(
                "quorum_timeout_ms ({}) must be > heartbeat_interval_ms ({})",
                self.quorum_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.quorum_timeout_ms >= self.election_timeout_min_ms + self.election_timeout_max_ms {
            return err(format!(
                "quorum_timeout_ms ({}) must be < election_timeout_min_ms + election_timeout_max_ms ({})",
                self.quorum_timeout_ms,
                self.election_timeout_min_ms + self.election_timeout_max_ms
            ));
        }
        for (name, v) in [
            ("propose_timeout_ms", self.propose_timeout_ms),
            ("read_index_timeout_ms", self.read_index_timeout_ms),
            ("snapshot_logs_since_last", self.snapshot_logs_since_last),
            ("purge_batch_size", self.purge_batch_size),
            ("max_payload_entries", self.max_payload_entries),
            (
                "install_snapshot_timeout_ms",
                self.install_snapshot_timeout_ms,
            ),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
            (
                "learner_catch_up_timeout_ms",
                self.learner_catch_up_timeout_ms,
            ),
            (
                "membership_change_timeout_ms",
                self.membership_change_timeout_ms,
            ),
        ] {
            if v == 0 {
                return err(format!("{name} must be > 0"));
            }
        }
        if self.payload_max_bytes == 0 {
            return err("payload_max_bytes must be > 0".into());
        }
        Ok(())
    }

    /// The openraft config. Call after [`Config::validate`].
    pub(crate) fn to_openraft(&self) -> Result<openraft::Config, ConfigError> {
        let c = openraft::Config {
            cluster_name: self.cluster_name.clone(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            max_payload_entries: self.max_payload_entries,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.max_in_snapshot_log_to_keep,
            purge_batch_size: self.purge_batch_size,
            ..Default::default()
        };
        c.validate().map_err(|e| ConfigError(e.to_string()))
    }

    pub(crate) fn propose_timeout(&self) -> Duration {
        Duration::from_millis(self.propose_timeout_ms)
    }

    pub(crate) fn read_index_timeout(&self) -> Duration {
        Duration::from_millis(self.read_index_timeout_ms)
    }

    pub(crate) fn quorum_timeout(&self) -> Duration {
        Duration::from_millis(self.quorum_timeout_ms)
    }

    pub(crate) fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub(crate) fn learner_catch_up_timeout(&self) -> Duration {
        Duration::from_millis(self.learner_catch_up_timeout_ms)
    }

    pub(crate) fn membership_change_timeout(&self) -> Duration {
        Duration::from_millis(self.membership_change_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_converts() {
        let c = Config::default();
        c.validate().unwrap();
        let o = c.to_openraft().unwrap();
        assert_eq!(o.heartbeat_interval, 50);
        assert_eq!(o.election_timeout_max, 200);
    }

    #[test]
    fn bad_relations_are_refused() {
        let bad = [
            Config {
                heartbeat_interval_ms: 0,
                ..Config::default()
            },
            Config {
                election_timeout_min_ms: 50,
                ..Config::default()
            },
            Config {
                election_timeout_max_ms: 150,
                ..Config::default()
            },
            Config {
                quorum_timeout_ms: 40,
                ..Config::default()
            },
            Config {
                quorum_timeout_ms: 350,
                ..Config::default()
            },
            Config {
                propose_timeout_ms: 0,
                ..Config::default()
            },
            Config {
                snapshot_logs_since_last: 0,
                ..Config::default()
            },
            Config {
                payload_max_bytes: 0,
                ..Config::default()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
