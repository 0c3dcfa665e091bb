//! coordd: a ZooKeeper-compatible coordination server.
//!
//! - [`state`]: the deterministic state machine (tree, sessions, watches, ACLs);
//! - [`storage`]: the write-ahead log with group commit, and snapshots (the `coordd-storage`
//!   crate, re-exported here so that coordd-raft can use it without the server);
//! - [`server`]: connections, the core task that orders everything, timers;
//! - [`config`]: flags and the TOML file;
//! - [`cli`]: the `coordd` command itself (`main_with_flags`), also run by the demo;
//! - [`logging`]: the subscriber it installs (openraft's replication retries throttled).

pub mod cli;
pub mod config;
pub mod logging;
pub mod server;
pub mod state;
pub use coordd_storage as storage;
