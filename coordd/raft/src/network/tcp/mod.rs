//! The peer transport over TCP: [`TcpTransport`] (the calling side, a [`Transport`]) and
//! [`PeerServer`] (the listening side, which hands requests to
//! [`Member::handle_peer_request`](crate::Member::handle_peer_request)). Wire format:
//! [`wire`].
//!
//! Shape (docs/issue5-openraft-research.md 4.7):
//! - one multiplexed connection per peer for AppendEntries and votes: request ids, responses
//!   matched in any order, any number of calls in flight, each with its own deadline; opened
//!   lazily, reopened after a failure with a bounded exponential backoff;
//! - a snapshot goes on a connection of its own, opened for that transfer and streamed in
//!   chunks, so it never delays a heartbeat (openraft gives an AppendEntries one heartbeat
//!   interval, 50 ms by default);
//! - every connection starts with a handshake (magic, protocol version, cluster name, both
//!   member ids); a mismatch is refused with a typed [`HandshakeError`] and logged on both
//!   sides.
//!
//! Bytes from the network never panic anything: a bad frame closes its connection only.
//!
//! With [`PeerTls`] (given to [`TcpTransport::with_tls`] and [`PeerServer::start_with_tls`])
//! every connection is mutual TLS before the handshake frame: the listener requires a client
//! certificate signed by the ensemble's CA, the caller presents its member certificate and
//! checks the listener's against the CA and the host of the peer's address. Invariant: with
//! TLS on, no byte of the peer protocol is read from or written to a connection whose
//! certificate did not verify; a failed TLS handshake is counted (`tls_handshakes_failed`)
//! and logged on both sides.

mod client;
mod server;
pub mod wire;

use std::time::Duration;

pub use client::{ConnectError, TcpTransport};
pub use coordd_tls::PeerTls;
pub use server::{PeerServer, PeerServerStats, ServeError};
pub use wire::{Channel, HandshakeError, FRAME_BYTES_MAX_DEFAULT, PROTOCOL_VERSION};

/// A peer connection's byte stream: plain TCP or TLS over it, the same code past this type.
pub(crate) trait PeerIo:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> PeerIo for T {}
pub(crate) type PeerStream = Box<dyn PeerIo>;

use crate::ConfigError;
#[cfg(doc)]
use crate::Transport;

/// Room for the header of an AppendEntries around one entry's payload (vote, log ids, the
/// entry's log id and varints: well under this).
const APPEND_OVERHEAD_BYTES_MAX: usize = 1 << 10;

/// Limits and timers of the TCP transport. Both sides of an ensemble should use the same
/// values (the frame limit in particular: a sender's frame over the receiver's limit closes
/// the connection).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// Must equal [`Config::cluster_name`](crate::Config::cluster_name) of every member;
    /// checked in the handshake.
    pub cluster_name: String,
    /// Largest frame after the handshake, either direction, checked before the body is
    /// buffered. An AppendEntries that would exceed it is refused locally as
    /// [`TransportError::TooLarge`](crate::TransportError::TooLarge), so openraft resends fewer
    /// entries.
    pub frame_bytes_max: usize,
    /// Entry payload bytes one AppendEntries carries at most (one entry always goes, however
    /// big). More is refused locally as [`TransportError::TooLarge`](crate::TransportError::TooLarge)
    /// before it is encoded, and openraft resends fewer entries. openraft gives an
    /// AppendEntries `heartbeat_interval_ms` to cross, be fsynced and be answered; a follower
    /// that fell behind by many large entries would otherwise get them all in one RPC that
    /// never completes in time, and never catch up (the leader does not see its answers,
    /// not even a higher vote, while the follower campaigns again and again).
    pub append_entries_bytes_max: usize,
    /// Size of one snapshot chunk; must fit a frame with its header.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot a listener accepts (it holds the whole image in memory: the snapshot
    /// type is in-memory bytes for now).
    pub snapshot_bytes_max: u64,
    /// Deadline of a TCP connect plus handshake. The connect runs in a task of its own, so a
    /// call that gives up earlier (its own deadline) does not cancel it.
    pub connect_timeout_ms: u64,
    /// A listener closes a connection whose handshake is not complete within this.
    pub handshake_timeout_ms: u64,
    /// First pause after a failed connect; doubles with every failure up to
    /// `reconnect_backoff_max_ms`. Calls during the pause fail at once as `Unreachable`.
    pub reconnect_backoff_min_ms: u64,
    /// Longest pause between connect attempts to a peer: a restarted peer is found again
    /// within this.
    pub reconnect_backoff_max_ms: u64,
    /// Peer connections a listener holds at once (then it closes new ones at once). A member
    /// needs about two per peer (RPC, and one during a snapshot transfer).
    pub peer_connections_max: usize,
    /// Requests of one connection being handled at once; then the listener stops reading it
    /// (TCP backpressure).
    pub requests_in_flight_max: usize,
    /// Frames queued for a connection's writer; a caller waits (within its deadline) for room.
    pub send_queue_frames_max: usize,
    /// Deadline of [`PeerServer::shutdown`].
    pub shutdown_timeout_ms: u64,
}

impl TcpConfig {
    /// Defaults with `cluster_name`.
    pub fn new(cluster_name: &str) -> Self {
        Self {
            cluster_name: cluster_name.to_string(),
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.frame_bytes_max < wire::HANDSHAKE_FRAME_BYTES_MAX {
            return err(format!(
                "frame_bytes_max ({}) must be >= {}",
                self.frame_bytes_max,
                wire::HANDSHAKE_FRAME_BYTES_MAX
            ));
        }
        if self.append_entries_bytes_max == 0 {
            return err("append_entries_bytes_max must be > 0".into());
        }
        if self.frame_bytes_max > u32::MAX as usize {
            return err("frame_bytes_max must fit the 4-byte length prefix".into());
        }
        if self.snapshot_chunk_bytes == 0
            || self.snapshot_chunk_bytes + wire::CHUNK_OVERHEAD_BYTES_MAX > self.frame_bytes_max
        {
            return err(format!(
                "snapshot_chunk_bytes ({}) must be > 0 and leave {} bytes of frame_bytes_max ({})",
                self.snapshot_chunk_bytes,
                wire::CHUNK_OVERHEAD_BYTES_MAX,
                self.frame_bytes_max
            ));
        }
        if self.reconnect_backoff_min_ms > self.reconnect_backoff_max_ms {
            return err("reconnect_backoff_min_ms must be <= reconnect_backoff_max_ms".into());
        }
        for (name, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("reconnect_backoff_max_ms", self.reconnect_backoff_max_ms),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms),
            ("snapshot_bytes_max", self.snapshot_bytes_max),
            ("peer_connections_max", self.peer_connections_max as u64),
            ("requests_in_flight_max", self.requests_in_flight_max as u64),
            ("send_queue_frames_max", self.send_queue_frames_max as u64),
        ] {
            if v == 0 {
                return err(format!("{name} must be > 0"));
            }
        }
        Ok(())
    }

    /// Checks this transport config against the member's [`Config`](crate::Config): the same
    /// cluster name (or every handshake is refused), and a frame limit that holds an
    /// AppendEntries of one maximal payload (or replication of such an entry could never
    /// succeed: openraft would resend it alone, forever too large).
    pub fn validate_for(&self, member: &crate::Config) -> Result<(), ConfigError> {
        self.validate()?;
        if self.cluster_name != member.cluster_name {
            return Err(ConfigError(format!(
                "transport cluster_name {:?} differs from the member's {:?}",
                self.cluster_name, member.cluster_name
            )));
        }
        let needed = member
            .payload_max_bytes
            .saturating_add(APPEND_OVERHEAD_BYTES_MAX);
        if self.frame_bytes_max < needed {
            return Err(ConfigError(format!(
                "frame_bytes_max ({}) must be >= payload_max_bytes ({}) + {APPEND_OVERHEAD_BYTES_MAX}",
                self.frame_bytes_max, member.payload_max_bytes
            )));
        }
        Ok(())
    }

    fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            cluster_name: crate::Config::default().cluster_name,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            // About one leader entry (the batcher's entries are at most 1 MiB): a few ms
            // to write and fsync on a slow disk, well within a 50 ms heartbeat.
            append_entries_bytes_max: 1 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_bytes_max: 1 << 30,
            // Loopback or a LAN: a connect that takes longer than this is a dead host.
            connect_timeout_ms: 500,
            handshake_timeout_ms: 1_000,
            reconnect_backoff_min_ms: 10,
            // Below openraft's election timeouts, so a restarted peer is back in a vote soon.
            reconnect_backoff_max_ms: 200,
            peer_connections_max: 64,
            requests_in_flight_max: 256,
            send_queue_frames_max: 1_024,
            shutdown_timeout_ms: 2_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_values_are_refused() {
        TcpConfig::default().validate().unwrap();
        for bad in [
            TcpConfig {
                frame_bytes_max: 100,
                ..TcpConfig::default()
            },
            TcpConfig {
                snapshot_chunk_bytes: FRAME_BYTES_MAX_DEFAULT,
                ..TcpConfig::default()
            },
            TcpConfig {
                snapshot_chunk_bytes: 0,
                ..TcpConfig::default()
            },
            TcpConfig {
                reconnect_backoff_min_ms: 500,
                ..TcpConfig::default()
            },
            TcpConfig {
                peer_connections_max: 0,
                ..TcpConfig::default()
            },
            TcpConfig {
                connect_timeout_ms: 0,
                ..TcpConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let member = crate::Config::default();
        TcpConfig::default().validate_for(&member).unwrap();
        assert!(TcpConfig::new("other").validate_for(&member).is_err());
        let small = TcpConfig {
            frame_bytes_max: member.payload_max_bytes,
            snapshot_chunk_bytes: 4 << 10,
            ..TcpConfig::default()
        };
        assert!(small.validate_for(&member).is_err());
    }
}
