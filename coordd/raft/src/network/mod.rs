//! Member-to-member messages and the [`Transport`] that carries them.
//!
//! A member's Raft sends [`PeerRequest`]s through a `Transport` (in-memory [`MemNetwork`] now,
//! TCP in slice 3); the receiving side hands each one to
//! [`Member::handle_peer_request`](crate::Member::handle_peer_request) and sends back the
//! [`PeerResponse`]. Both are opaque but serde-serializable, so a wire transport only frames
//! them. The adapter to openraft's `RaftNetwork` lives here too, private.

mod mem;
pub mod tcp;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    Fatal, NetworkError, PayloadTooLarge, RPCError, RaftError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use mem::{MemNetwork, MemTransport};

use crate::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::MemberId;

/// A request from one member's Raft to another's. Opaque; encode it with any serde format.
#[derive(Clone, Serialize, Deserialize)]
pub struct PeerRequest(pub(crate) RequestBody);

/// The answer to a [`PeerRequest`].
#[derive(Serialize, Deserialize)]
pub struct PeerResponse(pub(crate) ResponseBody);

#[derive(Clone, Serialize, Deserialize)]
pub(crate) enum RequestBody {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    /// A whole snapshot in one message; slice 3's TCP transport may stream it in chunks as long
    /// as the receiver reassembles this value.
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        image: Bytes,
    },
    /// A message of the application above Raft (coordd's write forwarding and session
    /// touches), opaque here; answered by the receiving member's [`AppHandler`](crate::AppHandler).
    App(Bytes),
}

#[derive(Serialize, Deserialize)]
pub(crate) enum ResponseBody {
    AppendEntries(AppendEntriesResponse<u64>),
    Vote(VoteResponse<u64>),
    Snapshot(SnapshotResponse<u64>),
    /// The receiving member could not handle it (it is shutting down or stopped).
    Refused(String),
    /// The answer of the receiving member's application handler (last: wire indexes of
    /// the variants before it are kept).
    App(Bytes),
}

/// What a [`PeerRequest`] is, for transports that route by kind (a snapshot is large and may
/// go on a connection of its own so it does not hold up heartbeats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// Log replication or a heartbeat (an empty AppendEntries).
    AppendEntries,
    Vote,
    Snapshot,
    /// An application message ([`PeerRequest::app`]).
    App,
}

impl PeerRequest {
    /// An application message for the target member's [`AppHandler`](crate::AppHandler).
    pub fn app(body: Bytes) -> PeerRequest {
        PeerRequest(RequestBody::App(body))
    }

    /// Log entries carried (0 for anything but AppendEntries; a heartbeat carries none).
    pub fn entry_count(&self) -> usize {
        match &self.0 {
            RequestBody::AppendEntries(r) => r.entries.len(),
            _ => 0,
        }
    }

    /// Bytes of the entries' payloads carried (0 for anything but AppendEntries).
    pub fn entry_payload_bytes(&self) -> usize {
        match &self.0 {
            RequestBody::AppendEntries(r) => r
                .entries
                .iter()
                .map(|e| match &e.payload {
                    openraft::EntryPayload::Normal(b) => b.len(),
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }

    /// The body of an application message ([`PeerRequest::app`]); None for Raft's own
    /// requests. For transports (and test transports) that treat application messages by
    /// what they carry.
    pub fn app_body(&self) -> Option<&Bytes> {
        match &self.0 {
            RequestBody::App(b) => Some(b),
            _ => None,
        }
    }

    pub fn kind(&self) -> RequestKind {
        match &self.0 {
            RequestBody::AppendEntries(_) => RequestKind::AppendEntries,
            RequestBody::Vote(_) => RequestKind::Vote,
            RequestBody::Snapshot { .. } => RequestKind::Snapshot,
            RequestBody::App(_) => RequestKind::App,
        }
    }
}

impl PeerResponse {
    /// The answer to an application message: its body, or why the member refused it.
    pub fn into_app(self) -> Result<Bytes, String> {
        match self.0 {
            ResponseBody::App(b) => Ok(b),
            ResponseBody::Refused(m) => Err(m),
            other => Err(format!(
                "unexpected answer to an application message: {:?}",
                PeerResponse(other)
            )),
        }
    }
}

impl fmt::Debug for PeerRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            RequestBody::AppendEntries(r) => write!(f, "AppendEntries({r:?})"),
            RequestBody::Vote(r) => write!(f, "Vote({r})"),
            RequestBody::Snapshot { vote, meta, image } => {
                write!(f, "Snapshot(vote {vote}, {meta}, {} bytes)", image.len())
            }
            RequestBody::App(b) => write!(f, "App({} bytes)", b.len()),
        }
    }
}

impl fmt::Debug for PeerResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ResponseBody::AppendEntries(r) => write!(f, "AppendEntries({r})"),
            ResponseBody::Vote(r) => write!(f, "Vote({r})"),
            ResponseBody::Snapshot(r) => write!(f, "Snapshot({r})"),
            ResponseBody::App(b) => write!(f, "App({} bytes)", b.len()),
            ResponseBody::Refused(m) => write!(f, "Refused({m})"),
        }
    }
}

/// Why a call through a [`Transport`] produced no response. The kinds steer openraft's retry:
/// `Unreachable` makes it back off (`Config::unreachable_backoff_ms`) before the next try.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The peer cannot be reached at all (connection refused, unknown member).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// No response within the call's deadline; the request may or may not have arrived.
    #[error("peer call timed out")]
    Timeout,
    /// The call failed midway (connection reset, bad frame); retrying at once may succeed.
    #[error("peer call failed: {0}")]
    Io(String),
    /// The request is too large for the transport (e.g. over its frame limit); for an
    /// AppendEntries, openraft retries at once with at most `max_entries` entries (for the next
    /// 10 RPCs). For any other kind it counts as `Io`.
    #[error("request too large; at most {max_entries} entries")]
    TooLarge { max_entries: u64 },
}

/// Carries [`PeerRequest`]s to other members. Implemented by [`MemTransport`] (tests, slice 1)
/// and, in slice 3, by TCP.
///
/// `new_client` in openraft is called often (twice per replication stream, once per voter on
/// every read index), so a transport hands out cheap handles to pooled connections; here
/// one `Transport` value is shared by all of a member's calls.
pub trait Transport: Send + Sync + 'static {
    /// Sends `request` to member `target` at `addr` (the address given for it in the
    /// membership) and waits for its response for at most `timeout`. The caller also enforces
    /// `timeout`, so an implementation that overruns only wastes its own work.
    fn call(
        &self,
        target: MemberId,
        addr: &str,
        request: PeerRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<PeerResponse, TransportError>> + Send;
}

/// openraft's network factory over a [`Transport`].
pub(crate) struct NetworkFactory<T> {
    pub(crate) transport: Arc<T>,
    pub(crate) id: MemberId,
    pub(crate) backoff: Duration,
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for NetworkFactory<T> {
    type Network = PeerClient<T>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        PeerClient {
            transport: self.transport.clone(),
            id: self.id,
            target,
            addr: node.addr.clone(),
            backoff: self.backoff,
        }
    }
}

/// openraft's client for one target.
pub(crate) struct PeerClient<T> {
    transport: Arc<T>,
    id: MemberId,
    target: MemberId,
    addr: String,
    backoff: Duration,
}

/// A transport failure or a response that does not fit the request.
enum CallError {
    Transport(TransportError),
    Refused(String),
    Mismatch(&'static str),
}

#[derive(Debug, Error)]
#[error("{0}")]
struct Msg(String);

impl<T: Transport> PeerClient<T> {
    async fn call(&self, body: RequestBody, ttl: Duration) -> Result<ResponseBody, CallError> {
        let fut = self
            .transport
            .call(self.target, &self.addr, PeerRequest(body), ttl);
        match tokio::time::timeout(ttl, fut).await {
            Err(_) => Err(CallError::Transport(TransportError::Timeout)),
            Ok(Err(e)) => Err(CallError::Transport(e)),
            Ok(Ok(PeerResponse(ResponseBody::Refused(m)))) => Err(CallError::Refused(m)),
            Ok(Ok(PeerResponse(body))) => Ok(body),
        }
    }

    fn rpc_error<E: std::error::Error>(
        &self,
        e: CallError,
        action: RPCTypes,
        ttl: Duration,
    ) -> RPCError<u64, BasicNode, E> {
        match e {
            CallError::Transport(TransportError::Timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.id,
                target: self.target,
                timeout: ttl,
            }),
            CallError::Transport(e @ TransportError::Unreachable(_)) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            // A refusing peer is up but its Raft is not: back off as for an unreachable one.
            CallError::Refused(m) => RPCError::Unreachable(Unreachable::new(&Msg(m))),
            CallError::Transport(e @ TransportError::Io(_)) => {
                RPCError::Network(NetworkError::new(&e))
            }
            // Only AppendEntries can be retried smaller: openraft panics on a too-large Vote
            // (replication/mod.rs update_hint: unreachable!), and ignores it for snapshots.
            CallError::Transport(TransportError::TooLarge { max_entries })
                if action == RPCTypes::AppendEntries =>
            {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(max_entries.max(1)))
            }
            CallError::Transport(e @ TransportError::TooLarge { .. }) => {
                RPCError::Network(NetworkError::new(&e))
            }
            CallError::Mismatch(what) => RPCError::Network(NetworkError::new(&Msg(format!(
                "peer sent a response that is not {what}"
            )))),
        }
    }
}

impl<T: Transport> RaftNetwork<TypeConfig> for PeerClient<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let ttl = option.hard_ttl();
        match self.call(RequestBody::AppendEntries(rpc), ttl).await {
            Ok(ResponseBody::AppendEntries(r)) => Ok(r),
            Ok(_) => Err(self.rpc_error(
                CallError::Mismatch("AppendEntries"),
                RPCTypes::AppendEntries,
                ttl,
            )),
            Err(e) => Err(self.rpc_error(e, RPCTypes::AppendEntries, ttl)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let ttl = option.hard_ttl();
        match self.call(RequestBody::Vote(rpc), ttl).await {
            Ok(ResponseBody::Vote(r)) => Ok(r),
            Ok(_) => Err(self.rpc_error(CallError::Mismatch("Vote"), RPCTypes::Vote, ttl)),
            Err(e) => Err(self.rpc_error(e, RPCTypes::Vote, ttl)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<u64>, StreamingError<TypeConfig, Fatal<u64>>> {
        // openraft does not bound this call itself (option.hard_ttl() is advisory); we do.
        let ttl = option.hard_ttl();
        let body = RequestBody::Snapshot {
            vote,
            meta: snapshot.meta,
            image: *snapshot.snapshot,
        };
        let res = tokio::select! {
            r = self.call(body, ttl) => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let err = match res {
            Ok(ResponseBody::Snapshot(r)) => return Ok(r),
            Ok(_) => self.rpc_error::<Fatal<u64>>(
                CallError::Mismatch("Snapshot"),
                RPCTypes::InstallSnapshot,
                ttl,
            ),
            Err(e) => self.rpc_error::<Fatal<u64>>(e, RPCTypes::InstallSnapshot, ttl),
        };
        Err(match err {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::PayloadTooLarge(p) => StreamingError::Network(NetworkError::new(&p)),
            RPCError::RemoteError(r) => StreamingError::RemoteError(r),
        })
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.backoff))
    }
}
