//! The agent (issue 3): runs beside one PostgreSQL server, bootstraps the cluster,
//! elects the master through the ephemeral `leader` znode, promotes / follows / fences
//! its PostgreSQL and publishes its member record (DESIGN.md sections 3 and 4).
//!
//! The rules are pure functions in [`crate::election`]; this module is the I/O around
//! them: [`config`] (flags + TOML), [`node`] (one agent's session loop) and
//! [`status`] (the `switchyard status` command).
//!
//! Invariants:
//! - PostgreSQL runs as a primary only while this process holds `leader` in its
//!   current session: a fresh initdb'd directory is started only after the `leader`
//!   create succeeded; every other start is as a standby ([`crate::election::on_restart`]).
//! - While holding `leader`, a watchdog task checks the client's lease every
//!   [`node::FENCE_CHECK`] and stops PostgreSQL in immediate mode at
//!   `lease - margin`, independently of the main loop (which may be blocked on I/O).
//! - When the session ends (expired, closed, fenced, or any error), a primary is
//!   stopped at once before a new session starts over.
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

pub use config::{AgentFlags, Settings};
pub use node::{run_agent, AgentError};
