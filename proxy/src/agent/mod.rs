//! The agent (issue 3): runs beside one PostgreSQL server, bootstraps the cluster,
//! elects the master through the ephemeral `leader` znode, promotes / follows / fences
//! its PostgreSQL and publishes its member record (DESIGN.md sections 3 and 4).
//!
//! The rules are pure functions in [`crate::election`]; this module is the I/O around
//! them: [`config`] (flags + TOML), [`node`] (one agent's session loop) and
//! [`status`] and [`switchover`] (the `switchyard status` and `switchyard switchover`
//! commands).
//!
//! Invariants:
//! - PostgreSQL runs as a primary only while this process holds `leader` in its
//!   current session: a fresh initdb'd directory is started only after the `leader`
//!   create succeeded; every other start is as a standby ([`crate::election::on_restart`]).
//! - While holding `leader`, a watchdog task checks the client's lease every
//!   [`node::FENCE_CHECK`] and stops PostgreSQL in immediate mode at
//!   `lease - margin`, independently of the main loop (which may be blocked on I/O).
//! - When the session ends (expired, closed, fenced, leadership lost, PostgreSQL
//!   dead under a leader, or any non-transient error), a primary is stopped at once
//!   and the client closed (deleting our ephemerals) before a new session starts
//!   over. Connection loss and request timeouts alone do not end a session: the
//!   watchdog, not the main loop, decides about fencing.
//! - A former primary started as a standby is marked (`<pg_data>.switchyard-rewind`,
//!   outside the data directory) and runs pg_rewind before it follows anyone.
//! - Synchronous mode (`config.synchronous`, DESIGN.md 4.6): every acknowledged commit
//!   is on at least one standby named in `sync` (or `sync` names nobody, and then nobody
//!   may be elected). The master sets `synchronous_standby_names = 'ANY 1 (...)'` over
//!   its streaming standbys: adding to a named set, `sync` first; removing, or naming
//!   standbys after the `ANY 1 (*)` placeholder, PostgreSQL first and `sync` once a
//!   named standby flushed past the change. The setting is never emptied (commits wait
//!   rather than degrade). Every server an agent starts in synchronous mode has a
//!   non-empty setting (`ANY 1 (*)` at least), and a new master names its standbys
//!   before `pg_promote`. A standby stops streaming (primary_conninfo removed) as soon
//!   as it sees `leader` vacant, so a deposed master that still runs (paused, cut off)
//!   gets no acknowledgement; while streaming it publishes its position only together
//!   with a check that `leader` exists. Election in synchronous mode needs every other
//!   `sync` member live and not ahead, and never compares with a `sync` member's record
//!   older than the vacancy.
//! - Planned switchover: the master acts only on a pending `switchover` written during
//!   its term naming it `from`; it releases `leader` (closes its session) only after a
//!   clean fast stop and after `to` received past its shutdown checkpoint, else it
//!   starts again as master and marks the request failed. Other candidates hold back
//!   at most [`node`]'s `SWITCHOVER_HOLD_BACK`. The record is kept, marked done/failed.
//!
//! Session flow ([`node`]): namespace and `config` (created from our settings by the
//! first agent) -> bootstrap (race for `initialize`; the winner initdb's, records
//! the system identifier, takes `leader`, only then starts PostgreSQL and publishes
//! `promoting` -> `primary`; the others wait for a `primary` leader and
//! pg_basebackup from it) or fail-safe start ([`crate::election::on_restart`]) ->
//! loop: leader events and a publish tick (member record, re-read of `leader`). On a
//! vacancy each agent republishes its record, waits up to 500 ms for the peers'
//! fresh records (member mzxid > the cluster node's pzxid), then races if
//! [`crate::election::eligible`].
//!
//! Facts about PostgreSQL this relies on (15; 13+ for the reloadable ones): every
//! child of the postmaster calls setsid(), so its process group holds the postmaster
//! alone (fencing and tests signal children by parent pid); removing primary_conninfo
//! and reloading ends the WAL receiver and keeps the standby in recovery; a fast stop
//! makes WAL senders send everything up to the shutdown checkpoint and wait for the
//! standbys' flush; while a commit waits for a synchronous standby it is durable
//! locally but invisible to other sessions; a backend waiting for one does not answer
//! its client when the postmaster dies.
//!
//! ACLs: `leader` and each member record are created with `auth` (the creator,
//! authenticated with a digest identity of this process) ALL plus `world` READ. ZooKeeper checks DELETE on the
//! *parent*, so the cluster node is created with `world` READ|WRITE|CREATE and no
//! DELETE: nobody (but a superuser) can delete `leader`, `initialize` or `config`;
//! ephemerals still vanish with their session. A cluster node created earlier by
//! someone else keeps its ACL (logged as a warning when it grants DELETE).

pub mod acl;
pub mod config;
pub mod guard;
pub mod node;
pub mod status;
pub mod switchover;

pub use config::{AgentFlags, Settings};
pub use node::{run_agent, AgentError};

/// Logs of an agent process (and its fence guard) to stderr, filtered by `RUST_LOG`
/// (default `info`); `ansi` colours them.
pub fn log_to_stderr(ansi: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}
