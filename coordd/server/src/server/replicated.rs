//! The glue between the core and coordd-raft (issue 5): what a Raft log entry carries,
//! the application messages members exchange, the [`Applier`] that hands committed
//! entries to the core, and the proposer task that gets a member's writes into the log.
//!
//! One Raft entry carries a batch of txns from one member (openraft 0.9 fsyncs once per
//! entry on the leader, so batching is what keeps writes fast; see
//! docs/issue5-openraft-research.md). Txns travel without a zxid: every member gives
//! them `last_zxid + 1, + 2, ...` when it applies them, in log order, so all members
//! agree on every zxid without the proposer knowing it.
//!
//! Invariants:
//! - a batch is applied whole, in log order, on every member; a txn's zxid is the
//!   applying state machine's `last_zxid + 1`;
//! - a member proposes its batches one at a time, in the order the core made them, so a
//!   session's writes reach the log in the order its client sent them;
//! - a batch whose fate is unknown (timeout, lost leader) is reported to the core,
//!   which drops the affected clients' connections (ZooKeeper's ConnectionLoss) and
//!   never answers them from a later apply;
//! - a member answers its clients only from its own run's batches: a batch carries the
//!   member id and the incarnation of the run that made it (a random number drawn at
//!   every start), and sequence numbers start again at 1 in every run.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use coordd_raft::{
    AppCallError, Applier, ApplierError, LogEntry, Member, ProposeError, Role, TransportError,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::core::CoreMsg;
use crate::state::{Entry, SessionId, Txn};

/// Version byte of the batch format; bump on any change. V1 (no incarnation) is only
/// read: Raft logs written before V2 hold it, and a member of the previous version may
/// still forward it while an ensemble is upgraded.
const BATCH_FORMAT_V1: u8 = 1;
/// V2: V1 plus the incarnation of the member's run after the member id. 3, not 2: a
/// Raft entry's payload starting with 2 is `ENTRY_FORMAT_MULTI`, and a payload may be one
/// bare batch (as V1 entries were), so a batch version must not be read as that.
const BATCH_FORMAT_V2: u8 = 3;
/// A Raft entry's payload: one batch (`BATCH_FORMAT_V1`, as entries were before the
/// leader's batcher; none are written any more) or, with this first byte, several
/// members' batches that the leader put into one entry.
const ENTRY_FORMAT_MULTI: u8 = 2;
/// The incarnation a V1 batch decodes with: no run of this version has it (see
/// [`new_incarnation`]), so such a batch is never taken for a request of a live run; its
/// run ended with the upgrade anyway.
pub const INCARNATION_NONE: u64 = 0;
/// Batches the leader puts into one entry at most.
pub const ENTRY_BATCHES_MAX: usize = 64;
/// Bytes of the batches the leader puts into one entry at most, unless a single batch is
/// larger (it then goes alone): the batcher checks before it adds a batch, so a batch
/// too large for a Raft payload (from a member configured otherwise) is refused alone,
/// never with others. Well below coordd-raft's `payload_max_bytes` (4 MiB), and the size
/// of one AppendEntries of its TCP transport (`append_entries_bytes_max`).
pub const ENTRY_BYTES_MAX: usize = 1 << 20;
/// Batches waiting for the leader's batcher at most.
pub const BATCHER_QUEUE_MAX: usize = 1024;
/// Txns in one batch at most (the core cuts batches there).
pub const BATCH_TXNS_MAX: usize = 1024;
/// Bytes of the txns and barriers the core puts into one batch at most (as
/// [`txn_batch_bytes`] and [`SYNC_BATCH_BYTES`] count them), unless a single txn is
/// larger (it then goes alone, so a write of the largest frame still goes). The writes a
/// session pipelines while its previous batch is on its way all wait for that batch and
/// were then taken together, bounded by count only: six setData of ~1 MB made one ~5 MB
/// batch, over `payload_max_bytes`, and the leader refused its entry with every other
/// member's batch in it. Equal to `ENTRY_BYTES_MAX`: a batch then fills at most one entry.
pub const BATCH_BYTES_MAX: usize = ENTRY_BYTES_MAX;
/// Bytes one barrier takes in a batch (its sequence number).
pub const SYNC_BATCH_BYTES: usize = 8;
/// Bytes a Raft payload holds at most beyond the client frame of its largest write, or
/// beyond `BATCH_BYTES_MAX`/`ENTRY_BYTES_MAX` for batched ones: the log entry's header
/// (26 bytes), the session's identities (at most `AUTH_IDS_PER_SESSION_MAX` of at most
/// `AUTH_CREDENTIAL_BYTES_MAX` + 48 bytes encoded, ~34 KiB), the txn's place in its batch
/// (12), the batch's header (33) and the entry's framing (5 + 4 a batch). Rounded up to
/// 64 KiB; checked below against the identity bounds it depends on.
pub const WRITE_OVERHEAD_BYTES_MAX: usize = 64 << 10;
const _: () = assert!(
    26 + 4
        + super::core::AUTH_IDS_PER_SESSION_MAX * (super::core::AUTH_CREDENTIAL_BYTES_MAX + 48)
        + 12
        + 33
        + 5
        + 4 * ENTRY_BATCHES_MAX
        <= WRITE_OVERHEAD_BYTES_MAX
);

/// The largest Raft payload a member proposes when its clients' frames are at most
/// `frame_bytes_max`: a single write of that size goes alone in its batch and entry;
/// several go together only up to `BATCH_BYTES_MAX` and `ENTRY_BYTES_MAX`. coordd-raft's
/// `payload_max_bytes` must be at least this, or such writes could never be logged.
pub fn payload_bytes_needed(frame_bytes_max: usize) -> usize {
    frame_bytes_max
        .max(BATCH_BYTES_MAX)
        .max(ENTRY_BYTES_MAX)
        .saturating_add(WRITE_OVERHEAD_BYTES_MAX)
}

/// The largest `frame_bytes_max` an ensemble member can serve when coordd-raft's payloads
/// are at most `payload_max_bytes`: a write of a whole frame must fit one entry, beside
/// `WRITE_OVERHEAD_BYTES_MAX` of framing and identities.
pub fn ensemble_frame_bytes_max(payload_max_bytes: usize) -> usize {
    payload_max_bytes.saturating_sub(WRITE_OVERHEAD_BYTES_MAX)
}

/// Bytes `txn` takes in a batch ([`TxnBatch::encode`]): its sequence number and length,
/// then its log entry. Measured by encoding it (an extra copy of a write's data, small
/// beside the Raft commit it waits for).
pub fn txn_batch_bytes(txn: &Txn) -> usize {
    let mut buf = BytesMut::with_capacity(128);
    Entry::encode_txn(0, 0, txn, &mut buf);
    12 + buf.len()
}

/// Application message kinds.
const APP_FORWARD: u8 = 1;
const APP_TOUCH: u8 = 2;
const APP_RECONFIG: u8 = 3;
const APP_REMOVED: u8 = 4;
/// How long a member waits for the leader to take a forwarded batch or a touch.
pub const FORWARD_TIMEOUT_MS: u64 = 3_000;
/// How long the proposer waits for a leader to exist before failing a batch.
pub const LEADER_WAIT_MS: u64 = 2_000;
/// Pause before a batch whose forward was refused before it was sent (the leader's peer
/// address refused the connect) goes again, unless another leader is known sooner. The
/// whole try is bounded by `FORWARD_TIMEOUT_MS`.
pub const FORWARD_RETRY_MS: u64 = 25;

/// A member's txns, in the order its core made them, with the local sequence numbers
/// that let that member answer its clients once the batch is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct TxnBatch {
    pub member: u64,
    /// The run of the member's process that made the batch ([`new_incarnation`]). Sequence
    /// numbers start again at 1 in every run, and a batch of an earlier run may commit
    /// after a restart (it was on its way to the leader, or in the leader's queue, when
    /// the process died): only the run that made it may answer its clients from it.
    pub incarnation: u64,
    pub time_ms: i64,
    pub txns: Vec<(u64, Txn)>,
    /// Sequence numbers of `sync` requests of this member: barriers that change
    /// nothing; once one is applied here, so is every write committed before it
    /// (ZooKeeper's sync), and the member answers it.
    pub syncs: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated")]
    Truncated,
    #[error("unknown batch format version {0}")]
    Version(u8),
    #[error("batch holds {0} txns, more than {BATCH_TXNS_MAX}")]
    TooMany(u32),
    #[error("txn {index} of the batch: {reason}")]
    Txn { index: usize, reason: String },
    #[error("unknown application message kind {0}")]
    AppKind(u8),
}

/// A fresh incarnation for a run of a member: random, never [`INCARNATION_NONE`]. Random
/// rather than counted, so nothing has to be stored before the member may serve; two
/// runs of one member draw the same with probability 2^-64.
pub fn new_incarnation() -> u64 {
    loop {
        let n = rand::random::<u64>();
        if n != INCARNATION_NONE {
            return n;
        }
    }
}

impl TxnBatch {
    /// `[v2: u8][member: u64][incarnation: u64][time_ms: i64][count: u32]` then per txn
    /// `[seq: u64][len: u32][entry]`, the entry in the log-entry format with zxid 0
    /// (assigned at apply), then `[syncs: u32]` and one `[seq: u64]` per sync. (V1 is
    /// the same without the incarnation.)
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(40 + self.txns.len() * 96);
        out.put_u8(BATCH_FORMAT_V2);
        out.put_u64(self.member);
        out.put_u64(self.incarnation);
        out.put_i64(self.time_ms);
        out.put_u32(self.txns.len() as u32);
        let mut entry_buf = BytesMut::with_capacity(128);
        for (seq, txn) in &self.txns {
            entry_buf.clear();
            Entry::encode_txn(0, self.time_ms, txn, &mut entry_buf);
            out.put_u64(*seq);
            out.put_u32(entry_buf.len() as u32);
            out.put_slice(&entry_buf);
        }
        out.put_u32(self.syncs.len() as u32);
        for seq in &self.syncs {
            out.put_u64(*seq);
        }
        out.freeze()
    }

    pub fn decode(mut buf: &[u8]) -> Result<TxnBatch, BatchError> {
        if buf.remaining() < 1 + 8 + 8 + 4 {
            return Err(BatchError::Truncated);
        }
        let version = buf.get_u8();
        if version != BATCH_FORMAT_V1 && version != BATCH_FORMAT_V2 {
            return Err(BatchError::Version(version));
        }
        let member = buf.get_u64();
        let incarnation = if version == BATCH_FORMAT_V2 {
            if buf.remaining() < 8 + 8 + 4 {
                return Err(BatchError::Truncated);
            }
            buf.get_u64()
        } else {
            INCARNATION_NONE
        };
        let time_ms = buf.get_i64();
        let count = buf.get_u32();
        if count as usize > BATCH_TXNS_MAX {
            return Err(BatchError::TooMany(count));
        }
        let mut txns = Vec::with_capacity(count as usize);
        for index in 0..count as usize {
            if buf.remaining() < 12 {
                return Err(BatchError::Truncated);
            }
            let seq = buf.get_u64();
            let len = buf.get_u32() as usize;
            if buf.remaining() < len {
                return Err(BatchError::Truncated);
            }
            let entry = Entry::decode(&buf[..len]).map_err(|e| BatchError::Txn {
                index,
                reason: e.to_string(),
            })?;
            buf.advance(len);
            txns.push((seq, entry.txn));
        }
        if buf.remaining() < 4 {
            return Err(BatchError::Truncated);
        }
        let syncs_n = buf.get_u32() as usize;
        if syncs_n > BATCH_TXNS_MAX {
            return Err(BatchError::TooMany(syncs_n as u32));
        }
        if buf.remaining() != syncs_n * 8 {
            return Err(BatchError::Truncated);
        }
        let syncs = (0..syncs_n).map(|_| buf.get_u64()).collect();
        Ok(TxnBatch {
            member,
            incarnation,
            time_ms,
            txns,
            syncs,
        })
    }
}

/// One Raft entry's payload from batches (each a [`TxnBatch::encode`]).
pub fn encode_entry<'a>(batches: impl ExactSizeIterator<Item = &'a Bytes>) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(ENTRY_FORMAT_MULTI);
    out.put_u32(batches.len() as u32);
    for b in batches {
        out.put_u32(b.len() as u32);
        out.put_slice(b);
    }
    out.freeze()
}

/// The batches of one Raft entry's payload, in order.
pub fn decode_entry(payload: &[u8]) -> Result<Vec<TxnBatch>, BatchError> {
    match payload.first() {
        Some(&BATCH_FORMAT_V1) | Some(&BATCH_FORMAT_V2) => Ok(vec![TxnBatch::decode(payload)?]),
        Some(&ENTRY_FORMAT_MULTI) => {
            let mut buf = &payload[1..];
            if buf.remaining() < 4 {
                return Err(BatchError::Truncated);
            }
            let n = buf.get_u32() as usize;
            if n > ENTRY_BATCHES_MAX {
                return Err(BatchError::TooMany(n as u32));
            }
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                if buf.remaining() < 4 {
                    return Err(BatchError::Truncated);
                }
                let len = buf.get_u32() as usize;
                if buf.remaining() < len {
                    return Err(BatchError::Truncated);
                }
                out.push(TxnBatch::decode(&buf[..len])?);
                buf.advance(len);
            }
            if buf.has_remaining() {
                return Err(BatchError::Truncated);
            }
            Ok(out)
        }
        Some(&other) => Err(BatchError::Version(other)),
        None => Err(BatchError::Truncated),
    }
}

type BatcherItem = (Bytes, oneshot::Sender<Result<(), ProposeError>>);

/// Entries the leader's batcher has proposed and not seen committed, at most: two lets
/// the leader append (and fsync) the next entry while the followers store the last.
pub const BATCHER_IN_FLIGHT_MAX: usize = 2;

/// The leader's batcher: batches of every member (its own and forwarded ones) that
/// arrive while entries are being committed go into the next entry together, so the
/// leader's fsync (one per entry in openraft 0.9) is shared by all members' writes.
///
/// Entries in flight may reach the log in either order, and so may the batches in them,
/// also two of one member. That is safe because no order between batches is needed:
/// a member never has two batches in flight that hold the txns or barriers of one
/// session (or two of the server's own), see [`super::core`]'s `propose_pending`.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<BatcherItem>,
}

impl Batcher {
    pub fn spawn(member: Member, shutdown: CancellationToken) -> Batcher {
        let (tx, rx) = mpsc::channel(BATCHER_QUEUE_MAX);
        tokio::spawn(run_batcher(member, rx, shutdown));
        Batcher { tx }
    }

    /// Proposes `batch` in the next entry; Ok once it is committed. `NotLeader`: it was
    /// not appended.
    pub async fn propose(&self, batch: Bytes) -> Result<(), ProposeError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send((batch, done))
            .await
            .map_err(|_| ProposeError::Shutdown)?;
        result.await.map_err(|_| ProposeError::Shutdown)?
    }
}

async fn run_batcher(
    member: Member,
    mut rx: mpsc::Receiver<BatcherItem>,
    shutdown: CancellationToken,
) {
    let mut waiting: std::collections::VecDeque<BatcherItem> = Default::default();
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            item = rx.recv(), if waiting.len() < BATCHER_QUEUE_MAX => match item {
                Some(i) => waiting.push_back(i),
                None => return,
            },
            _ = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
        while waiting.len() < BATCHER_QUEUE_MAX {
            match rx.try_recv() {
                Ok(i) => waiting.push_back(i),
                Err(_) => break,
            }
        }
        while in_flight.len() < BATCHER_IN_FLIGHT_MAX && !waiting.is_empty() {
            let mut items: Vec<BatcherItem> = Vec::new();
            let mut bytes = 0usize;
            // A batch joins the entry only if the entry stays within `ENTRY_BYTES_MAX`;
            // the first always goes, whatever its size (a member's batch is at most
            // `BATCH_BYTES_MAX` or a single write: see `payload_bytes_needed`).
            while let Some(next) = waiting.front() {
                let len = next.0.len();
                if !items.is_empty()
                    && (items.len() >= ENTRY_BATCHES_MAX
                        || bytes.saturating_add(len) > ENTRY_BYTES_MAX)
                {
                    break;
                }
                bytes = bytes.saturating_add(len);
                items.extend(waiting.pop_front());
            }
            let member = member.clone();
            in_flight.spawn(async move {
                let payload = encode_entry(items.iter().map(|(b, _)| b));
                let result = member.propose(payload).await.map(|_| ());
                for (_, done) in items {
                    let _ = done.send(result.clone());
                }
            });
        }
    }
}

/// A message from one member's server to another's (over the Raft transport).
#[derive(Debug, Clone, PartialEq)]
pub enum AppMsg {
    /// A follower's encoded [`TxnBatch`] for the leader to propose.
    Forward(Bytes),
    /// Sessions that showed life on the sender since its last touch (heartbeats of
    /// clients connected there); the leader, which expires sessions, renews them.
    Touch(Vec<SessionId>),
    /// A client's reconfig (the jute bytes of its `ReconfigRequest`) for the leader to
    /// carry out; answered with [`super::reconfig::encode_outcome`].
    Reconfig(Bytes),
    /// The leader removed the receiving member from the ensemble: it stops.
    Removed,
}

impl AppMsg {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            AppMsg::Forward(b) => {
                out.put_u8(APP_FORWARD);
                out.put_slice(b);
            }
            AppMsg::Touch(ids) => {
                out.put_u8(APP_TOUCH);
                out.put_u32(ids.len() as u32);
                for id in ids {
                    out.put_i64(*id);
                }
            }
            AppMsg::Reconfig(b) => {
                out.put_u8(APP_RECONFIG);
                out.put_slice(b);
            }
            AppMsg::Removed => out.put_u8(APP_REMOVED),
        }
        out.freeze()
    }

    pub fn decode(mut b: Bytes) -> Result<AppMsg, BatchError> {
        if b.is_empty() {
            return Err(BatchError::Truncated);
        }
        match b.get_u8() {
            APP_FORWARD => Ok(AppMsg::Forward(b)),
            APP_TOUCH => {
                if b.remaining() < 4 {
                    return Err(BatchError::Truncated);
                }
                let n = b.get_u32() as usize;
                if b.remaining() != n.saturating_mul(8) {
                    return Err(BatchError::Truncated);
                }
                Ok(AppMsg::Touch((0..n).map(|_| b.get_i64()).collect()))
            }
            APP_RECONFIG => Ok(AppMsg::Reconfig(b)),
            APP_REMOVED if b.is_empty() => Ok(AppMsg::Removed),
            APP_REMOVED => Err(BatchError::Truncated),
            other => Err(BatchError::AppKind(other)),
        }
    }
}

/// Hands committed entries to the core, which owns the tree.
pub struct CoreApplier {
    pub core: mpsc::Sender<CoreMsg>,
}

impl CoreApplier {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> CoreMsg,
    ) -> Result<T, ApplierError> {
        let (tx, rx) = oneshot::channel();
        self.core
            .send(make(tx))
            .await
            .map_err(|_| ApplierError("the core has stopped".into()))?;
        rx.await
            .map_err(|_| ApplierError("the core stopped before answering".into()))
    }
}

impl Applier for CoreApplier {
    async fn apply(&mut self, entries: Vec<LogEntry>) -> Result<Vec<Bytes>, ApplierError> {
        self.ask(|reply| CoreMsg::RaftApply { entries, reply })
            .await?
            .map_err(ApplierError)
    }

    async fn snapshot_image(&mut self) -> Result<Bytes, ApplierError> {
        self.ask(|reply| CoreMsg::RaftSnapshot { reply }).await
    }

    async fn install_image(&mut self, last_index: u64, image: Bytes) -> Result<(), ApplierError> {
        self.ask(|reply| CoreMsg::RaftInstall {
            last_index,
            image,
            reply,
        })
        .await?
        .map_err(ApplierError)
    }
}

/// One batch for the proposer: its bytes and the local sequence numbers in it.
pub struct Proposal {
    /// The core's number for the batch, echoed in [`CoreMsg::Proposed`].
    pub id: u64,
    pub batch: Bytes,
    pub seqs: Vec<u64>,
    /// Cancelled by the core to give the batch up (it serves no one any more): the
    /// proposer stops waiting for it and reports it failed, its fate in doubt.
    pub abandon: CancellationToken,
}

/// Gets this member's batches into the log: proposed here when this member leads, else
/// forwarded to the leader. Each batch the core hands it goes at once, beside the ones
/// still on their way (the core bounds how many, and keeps a session's txns out of two
/// of them). Tells the core when it is done with each ([`CoreMsg::Proposed`], with the
/// txns of a batch that failed).
pub async fn run_proposer(
    member: Member,
    batcher: Batcher,
    mut proposals: mpsc::Receiver<Proposal>,
    core: mpsc::Sender<CoreMsg>,
    shutdown: CancellationToken,
) {
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            p = proposals.recv() => match p {
                Some(p) => {
                    running.spawn(propose_and_report(member.clone(), batcher.clone(), p, core.clone()));
                }
                None => return,
            },
            _ = running.join_next(), if !running.is_empty() => {}
        }
    }
}

async fn propose_and_report(
    member: Member,
    batcher: Batcher,
    p: Proposal,
    core: mpsc::Sender<CoreMsg>,
) {
    let result = tokio::select! {
        r = propose_one(&member, &batcher, p.batch) => r,
        _ = p.abandon.cancelled() => Err("given up: this member serves no one (cut off from the quorum)".into()),
    };
    let failed = match result {
        Ok(()) => Vec::new(),
        Err(why) => {
            tracing::info!(%why, txns = p.seqs.len(), "a batch of writes did not reach the log; its clients are disconnected");
            p.seqs
        }
    };
    let _ = core.send(CoreMsg::Proposed { id: p.id, failed }).await;
}

async fn propose_one(member: &Member, batcher: &Batcher, batch: Bytes) -> Result<(), String> {
    let forward_timeout = Duration::from_millis(FORWARD_TIMEOUT_MS);
    let deadline = Instant::now() + forward_timeout;
    let mut refused_attempts = 0u32;
    loop {
        if member.role() == Role::Leader {
            match batcher.propose(batch.clone()).await {
                Ok(_) => return Ok(()),
                // Nothing was appended: safe to send it to the leader instead.
                Err(ProposeError::NotLeader { .. }) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!(
                "no leader took the batch within {FORWARD_TIMEOUT_MS} ms \
                 ({refused_attempts} forwards refused before they were sent)"
            ));
        }
        let leader = match member.leader() {
            Some(l) if l != member.id() => l,
            _ => {
                // No leader known yet (an election), or this member itself with its role
                // not yet caught up: wait for another member to lead or for this one to
                // be leader, then start over at the top. Waiting for another member only
                // (as before) never ended when this member won the election: its own
                // clients' writes failed after LEADER_WAIT_MS while it led (seen in CI:
                // "no leader to forward to" on the new leader, no write after a kill).
                member
                    .wait_for(
                        remaining.min(Duration::from_millis(LEADER_WAIT_MS)),
                        |s| match s.leader {
                            Some(l) if l == s.id => s.role == Role::Leader,
                            Some(_) => true,
                            None => false,
                        },
                    )
                    .await
                    .map_err(|e| format!("no leader to forward to: {e}"))?;
                continue;
            }
        };
        // A leader that hangs (stopped, cut off) answers nothing: give up as soon as the
        // ensemble has another leader, not at the forward's timeout, so this member's
        // next batches go to the new leader. The batch is then in doubt (its clients get
        // ConnectionLoss); the old leader cannot commit it without a quorum anyway.
        let forward = member.call_app(leader, AppMsg::Forward(batch.clone()).encode(), remaining);
        let replaced = member.wait_for(remaining, move |s| s.leader.is_some_and(|l| l != leader));
        tokio::pin!(replaced);
        tokio::select! {
            // A forward's own outcome first: it says whether the batch was sent.
            biased;
            r = forward => match r {
                Ok(_) => return Ok(()),
                // The connect failed (a leader whose process died refuses it): nothing was
                // sent, so the batch is not in doubt and may go again, to whoever leads
                // next. Its clients wait for the election instead of being disconnected
                // into their reconnect backoff.
                Err(AppCallError::Transport(TransportError::Unreachable(why))) => {
                    refused_attempts += 1;
                    tracing::debug!(leader, %why, refused_attempts, "forward not sent: trying again once a leader answers");
                    let pause = Duration::from_millis(FORWARD_RETRY_MS).min(remaining);
                    let _ = member
                        .wait_for(pause, move |s| s.leader.is_some_and(|l| l != leader))
                        .await;
                }
                Err(e) => return Err(format!("forwarding to leader {leader}: {e}")),
            },
            Ok(status) = &mut replaced => return Err(format!(
                "leader {leader} replaced by {:?} while a batch was forwarded to it",
                status.leader
            )),
        }
    }
}

/// The handler of application messages on every member: a forwarded batch is
/// proposed (only a leader accepts), touches go to the core, a forwarded reconfig is
/// carried out (only by the leader), a removal notice cancels `removed`.
pub fn app_handler(
    batcher: Batcher,
    core: mpsc::Sender<CoreMsg>,
    member: Member,
    removed: CancellationToken,
) -> coordd_raft::AppHandler {
    std::sync::Arc::new(move |body: Bytes| {
        let batcher = batcher.clone();
        let core = core.clone();
        let member = member.clone();
        let removed = removed.clone();
        Box::pin(async move {
            match AppMsg::decode(body).map_err(|e| e.to_string())? {
                AppMsg::Forward(batch) => {
                    TxnBatch::decode(&batch).map_err(|e| format!("bad forwarded batch: {e}"))?;
                    batcher
                        .propose(batch)
                        .await
                        .map(|_| Bytes::new())
                        .map_err(|e| e.to_string())
                }
                AppMsg::Touch(ids) => {
                    core.send(CoreMsg::Touched { session_ids: ids })
                        .await
                        .map_err(|_| "the core has stopped".to_string())?;
                    Ok(Bytes::new())
                }
                AppMsg::Reconfig(body) => {
                    let req =
                        <coordd_proto::ReconfigRequest as coordd_proto::Record>::from_bytes(&body)
                            .map_err(|e| format!("bad forwarded reconfig: {e}"))?;
                    let outcome = super::reconfig::run_on_leader(&member, &req, &removed).await;
                    Ok(super::reconfig::encode_outcome(&outcome))
                }
                AppMsg::Removed => {
                    tracing::warn!(
                        id = member.id(),
                        "the leader removed this member from the ensemble (reconfig)"
                    );
                    removed.cancel();
                    Ok(Bytes::new())
                }
            }
        })
    })
}

/// Resolves once this member was removed from the ensemble: `removed` is cancelled (the
/// leader told it, or it removed itself as leader), or the membership in effect, no
/// longer joint, leaves out this member after it had been a voter in this run. Never
/// resolves once the member stopped (see [`member_stopped`]).
pub async fn member_removed(member: &Member, removed: &CancellationToken) {
    let seen_voter = std::sync::atomic::AtomicBool::new(false);
    let gone = |s: &coordd_raft::Status| {
        let m = &s.membership;
        if m.voters.contains(&s.id) {
            seen_voter.store(true, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        seen_voter.load(std::sync::atomic::Ordering::Relaxed)
            && !m.joint
            && s.membership_index.is_some()
            && !m.learners.contains(&s.id)
    };
    loop {
        tokio::select! {
            _ = removed.cancelled() => return,
            r = member.wait_for(Duration::from_secs(3_600), &gone) => match r {
                Ok(_) => return,
                Err(coordd_raft::WaitError::Timeout { .. }) => continue,
                Err(coordd_raft::WaitError::Shutdown) => std::future::pending::<()>().await,
            },
        }
    }
}

/// Resolves once `member` has stopped: its RaftCore ended on a fatal error (its log or
/// state machine failed) or was shut down. A server whose member stopped must stop too:
/// it could only refuse clients from then on, while looking alive (`ruok`) to whatever
/// supervises it.
pub async fn member_stopped(member: &Member) {
    loop {
        match member.wait_for(Duration::from_secs(3_600), |_| false).await {
            Err(coordd_raft::WaitError::Timeout { .. }) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> TxnBatch {
        TxnBatch {
            member: 3,
            incarnation: 0x1234_5678_9abc_def0,
            time_ms: 1_700_000_000_000,
            txns: vec![
                (
                    7,
                    Txn::CreateSession {
                        session_id: 0x300,
                        passwd: vec![1; 16],
                        timeout_ms: 4000,
                    },
                ),
                (8, Txn::CloseSession { session_id: 0x300 }),
                (
                    9,
                    Txn::DeleteExpired {
                        paths: vec!["/a".into()],
                    },
                ),
            ],
            syncs: vec![10, 11],
        }
    }

    #[test]
    fn batch_round_trips_and_every_truncation_is_an_error() {
        let b = batch();
        let bytes = b.encode();
        assert_eq!(TxnBatch::decode(&bytes).unwrap(), b);
        for cut in 0..bytes.len() {
            assert!(TxnBatch::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.to_vec();
        extra.push(0);
        assert!(TxnBatch::decode(&extra).is_err());
        // 2 is the multi-batch entry's tag, never a batch version.
        for version in [0, 2, 4] {
            let mut other = bytes.to_vec();
            other[0] = version;
            assert_eq!(TxnBatch::decode(&other), Err(BatchError::Version(version)));
        }
    }

    /// `b` as a V1 batch (the format before incarnations): V2 without bytes 9..17.
    fn encode_v1(b: &TxnBatch) -> Vec<u8> {
        let v2 = b.encode();
        let mut v1 = vec![BATCH_FORMAT_V1];
        v1.extend_from_slice(&v2[1..9]);
        v1.extend_from_slice(&v2[17..]);
        v1
    }

    /// Entries written before V2 (in a log or snapshot from before an upgrade, or
    /// forwarded by a member not yet upgraded) still decode, with no incarnation, so no
    /// run takes them for its own.
    #[test]
    fn v1_batches_still_decode_without_an_incarnation() {
        let b = batch();
        let v1 = encode_v1(&b);
        let legacy = TxnBatch {
            incarnation: INCARNATION_NONE,
            ..b.clone()
        };
        assert_eq!(TxnBatch::decode(&v1).unwrap(), legacy);
        for cut in 0..v1.len() {
            assert!(TxnBatch::decode(&v1[..cut]).is_err(), "cut at {cut}");
        }
        // A bare V1 batch as a whole entry (before the batcher), and V1 and V2 batches
        // side by side in one entry (a member not yet upgraded forwarding to one that is).
        assert_eq!(decode_entry(&v1).unwrap(), vec![legacy.clone()]);
        let mixed = [Bytes::from(v1), b.encode()];
        assert_eq!(
            decode_entry(&encode_entry(mixed.iter())).unwrap(),
            vec![legacy, b]
        );
    }

    #[test]
    fn incarnations_are_never_none() {
        for _ in 0..1000 {
            assert_ne!(new_incarnation(), INCARNATION_NONE);
        }
    }

    #[test]
    fn entries_hold_one_or_several_batches() {
        let b = batch();
        let one = b.encode();
        assert_eq!(decode_entry(&one).unwrap(), vec![b.clone()]);
        let mut other = b.clone();
        other.member = 1;
        other.syncs.clear();
        let two = [one.clone(), other.encode()];
        let entry = encode_entry(two.iter());
        assert_eq!(decode_entry(&entry).unwrap(), vec![b, other]);
        for cut in 0..entry.len() {
            assert!(decode_entry(&entry[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_entry(&[9]).is_err());
    }

    #[test]
    fn app_messages_round_trip() {
        for m in [
            AppMsg::Forward(batch().encode()),
            AppMsg::Touch(vec![1, -2, i64::MAX]),
            AppMsg::Touch(vec![]),
            AppMsg::Reconfig(Bytes::from_static(b"\x00\x01")),
            AppMsg::Reconfig(Bytes::new()),
            AppMsg::Removed,
        ] {
            assert_eq!(AppMsg::decode(m.encode()).unwrap(), m);
        }
        assert!(AppMsg::decode(Bytes::new()).is_err());
        assert!(AppMsg::decode(Bytes::from_static(&[9])).is_err());
        assert!(AppMsg::decode(Bytes::from_static(&[APP_TOUCH, 0, 0, 0, 2, 1])).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes: Vec<u8>) {
            let _ = TxnBatch::decode(&bytes);
            let _ = decode_entry(&bytes);
            let _ = AppMsg::decode(Bytes::from(bytes));
        }
    }
}
