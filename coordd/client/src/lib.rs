//! Async client for the Apache ZooKeeper client protocol (3.6+ features, tested
//! against coordd and meant to work unchanged against Apache ZooKeeper 3.8).
//!
//! ```no_run
//! use coordd_client::{Client, ClientConfig, CreateMode, Acl, EventType};
//!
//! # async fn run() -> Result<(), coordd_client::Error> {
//! let cfg = ClientConfig::new(["zk1:2181", "zk2:2181", "zk3:2181"]).with_session_timeout_ms(6_000);
//! let (client, mut events) = Client::connect(cfg).await?;
//! client.ensure_path("/switchyard/clusters/main").await?;
//! let leader = client
//!     .create("/switchyard/clusters/main/leader", b"{}", &Acl::open_unsafe(), CreateMode::Ephemeral)
//!     .await?;
//! let (_data, _stat) = client.get_data(&leader, true).await?;
//! while let Some(ev) = events.recv().await {
//!     if ev.event_type == EventType::NodeDeleted {
//!         break;
//!     }
//!     // Fence before the ensemble can expire the session.
//!     if client.lease_remaining() < std::time::Duration::from_millis(500) {
//!         break;
//!     }
//! }
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Model
//!
//! - [`Client::connect`] returns a [`Client`] (clone it freely) and [`Events`], the
//!   ordered stream of watch events and session state changes.
//! - One session task per client owns the connection: requests are pipelined with
//!   xids, replies matched in order, frames processed strictly in arrival order.
//! - The session survives reconnects (shuffled server list, bounded backoff). Requests
//!   in flight when a connection drops fail with [`Error::ConnectionLoss`]; requests
//!   made while disconnected wait for a connection until their deadline.
//! - Watches are re-armed on reconnect with SetWatches2 (falling back to SetWatches
//!   for one-shot watches if the server answers Unimplemented).
//! - [`Client::lease`] is what fencing relies on: the send time of the latest
//!   acknowledged request or ping plus the negotiated session timeout.
//! - Expiry is terminal: state Expired, an Expired event, every call fails with
//!   [`Error::SessionExpired`]. Make a new client.
//!
//! Invariant: nothing the server sends can make the client panic or allocate beyond
//! the frame limit; malformed input drops the connection (or fails one call).
//!
//! Invariant: a watch event reaches [`Events`] before the reply of any request sent
//! after the server generated the event completes (ZooKeeper's ordering guarantee).
//!
//! Differences from ZooKeeper's Java client: no chroot; a failed `add_auth` does not
//! kill the session; calls time out after `request_timeout_ms` (Java's default is to
//! wait forever); all watch events go to one stream instead of per-watcher callbacks.

mod client;
mod config;
mod conn;
mod error;
pub mod session;
pub mod watches;

pub use client::{Client, Events, WatchedEvent};
pub use config::*;
pub use conn::{IN_FLIGHT_MAX, REQUEST_QUEUE_MAX, WRITE_BUFFER_BYTES_HIGH};
pub use error::{Error, Result};
pub use session::SessionState;
pub use watches::WatchRegistry;

pub use coordd_proto::{
    Acl, AddWatchMode, ClientInfo, CreateMode, ErrorCode, EventType, KeeperState, MultiOp,
    MultiResult, ReadOp, Stat, WatcherType,
};
