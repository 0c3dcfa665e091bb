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
//! ACLs: `leader` is created with `auth` (the creator, authenticated with a digest
//! identity of this process) ALL plus `world` READ. ZooKeeper checks DELETE on the
//! *parent*, so the cluster node is created with `world` READ|WRITE|CREATE and no
//! DELETE: nobody (but a superuser) can delete `leader`, `initialize` or `config`;
//! ephemerals still vanish with their session. A cluster node created earlier by
//! someone else keeps its ACL (logged as a warning when it grants DELETE).

pub mod config;
pub mod node;
pub mod status;
pub mod switchover;

pub use config::{AgentFlags, Settings};
pub use node::{run_agent, AgentError};
