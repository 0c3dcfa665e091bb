//! coordd's Raft replication: openraft 0.9.25 behind a narrow interface.
//!
//! The server sees opaque payloads and log indexes, never an openraft type:
//! - it implements [`Applier`] (apply committed entries, take a point-in-time image, install
//!   one);
//! - it runs one [`Member`] per process: [`Member::propose`] (always with a deadline),
//!   [`Member::read_index`], [`Member::role`], [`Member::leader`], [`Member::quorum_ok`],
//!   [`Member::applied_index`], [`Member::shutdown`];
//! - membership: [`Member::start_joining`] (a new member that never initializes) and, on the
//!   leader, [`Member::change_membership`] (learners, catch-up, joint consensus);
//! - members talk through a [`Transport`] ([`MemNetwork`] in process; [`TcpTransport`] with
//!   its listener [`PeerServer`] between processes, wire format in [`tcp::wire`]), whose
//!   receiving side calls [`Member::handle_peer_request`];
//! - the log is a [`LogStore`]: [`DiskLogStore`] (coordd's WAL, durable) or [`MemLogStore`]
//!   (tests).
//!
//! Why openraft and what it does and does not do: docs/issue5-openraft-research.md.

mod applier;
mod config;
mod log_store;
mod member;
mod network;
mod reconfig;
mod state_machine;
mod types;

#[cfg(test)]
mod tests;

pub use applier::{Applier, ApplierError, EntryData, LogEntry, Membership};
pub use config::{Config, ConfigError};
pub use log_store::{DiskLogConfig, DiskLogStore, LogStore, MemLogStore};
pub use member::{
    AppCallError, AppHandler, Committed, Counters, Initialized, Member, ProposeError,
    ReadIndexError, Role, ShutdownError, StartError, Status, WaitError,
};
pub use network::tcp;
pub use network::tcp::{PeerServer, PeerTls, TcpConfig, TcpTransport};
pub use network::{
    MemNetwork, MemTransport, PeerRequest, PeerResponse, RequestKind, Transport, TransportError,
};
pub use reconfig::{plan_change, MembershipChange, ReconfigError, VOTERS_MAX};

/// A member's id, as in the ensemble configuration (ZooKeeper's `myid`).
pub type MemberId = u64;
