//! coordd: a ZooKeeper-compatible coordination server.
//!
//! - [`state`]: the deterministic state machine (tree, sessions, watches, ACLs);
//! - [`storage`]: the write-ahead log with group commit, and snapshots;
//! - [`server`]: connections, the core task that orders everything, timers;
//! - [`config`]: flags and the TOML file.

pub mod config;
pub mod server;
pub mod state;
pub mod storage;
