//! coordd: a ZooKeeper-compatible coordination server.

pub mod state;
