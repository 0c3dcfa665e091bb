//! The core task: the one owner of the state machine. Every request, every log
//! acknowledgement and every timer passes through it, in order.
//!
//! A write becomes a log entry (zxid = next log index) and is applied only once the log
//! reports it durable; its reply and the watch events it fires are queued to the
//! connections in the same step. A read is served at once unless its session has writes
//! in flight, in which case it waits behind them, so a client always sees its own writes
//! and never a write it sent later.
//!
//! Invariants:
//! - entries are applied in zxid order, each exactly once, only after they are durable;
//! - for each session, replies leave in request order, and every watch event reaches a
//!   connection before any reply queued after the entry that fired it;
//! - a session's `queue` front is its oldest unanswered request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use coordd_proto::{
    frame::write_frame, xid, ConnectRequest, ConnectResponse, ErrorCode, Id, MultiOp, MultiResult,
    OpCode, Record, ReplyHeader, Request, Stat, PROTOCOL_VERSION,
};
use coordd_raft::{EntryData, LogEntry, Member, Role};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use super::expiry::{leadership_began, SessionDeadlines};
use super::replicated::{
    decode_entry, txn_batch_bytes, AppMsg, Proposal, TxnBatch, BATCH_BYTES_MAX, BATCH_TXNS_MAX,
    FORWARD_TIMEOUT_MS, SYNC_BATCH_BYTES,
};
use super::PROPOSALS_IN_FLIGHT_MAX;
use crate::config::Config;
use crate::state::{
    Applied, Entry, Response, SessionId, StateConfig, StateMachine, StateStats, Txn, Zxid,
};
use crate::storage::{Durable, LogWriter};

/// Identities one session may hold at most on a member: the ip identity of its
/// connection, and what its addAuth calls added (a digest identity each, and `super` for
/// the superuser's credentials). ZooKeeper keeps every identity a connection adds,
/// without a limit; clients add one or two (an application's user, at times the
/// superuser). The list is copied into every write entry of the session (its ACL checks
/// at apply) and walked by every ACL check, so an unbounded one let a single client make
/// each of its writes, and the log, as large as it liked. 32 leaves room for clients that
/// add a few users; an addAuth that would pass it is refused as ZooKeeper refuses a failed
/// one (AuthFailed, connection closed) and adds nothing.
pub const AUTH_IDS_PER_SESSION_MAX: usize = 32;
/// Bytes of one addAuth credential at most (for the digest scheme, `user:password`,
/// whose user part becomes the identity). ZooKeeper bounds it by its frame limit only;
/// real credentials are tens of bytes, and 1 KiB keeps a session's identities (at most
/// `AUTH_IDS_PER_SESSION_MAX` of them) near 34 KiB. Past it: AuthFailed, connection
/// closed.
pub const AUTH_CREDENTIAL_BYTES_MAX: usize = 1024;
/// Characters of a refused addAuth's scheme (chosen by the client, up to a frame) that
/// go into the log line.
const AUTH_SCHEME_LOGGED_CHARS_MAX: usize = 64;

/// A frame, or the order to close after the frames before it.
#[derive(Debug)]
pub enum Outbound {
    Frame(Bytes),
    Close,
}

/// What the core holds of one client connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub conn_id: u64,
    pub peer: SocketAddr,
    pub out: mpsc::UnboundedSender<Outbound>,
    /// Bytes queued in `out` and not yet written: the slow-reader bound.
    pub queued_bytes: Arc<AtomicUsize>,
    /// Outstanding-request permits; the reader takes one per request, the core gives it
    /// back with the reply.
    pub permits: Arc<Semaphore>,
    /// Cancels the connection at once, dropping whatever is queued.
    pub kill: CancellationToken,
    pub stats: Arc<ConnStats>,
}

/// Per-connection counters for `stat` / `cons`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub session_id: AtomicU64,
}

/// Server-wide counters, readable without asking the core.
#[derive(Debug, Default)]
pub struct Metrics {
    pub packets_received: AtomicU64,
    pub packets_sent: AtomicU64,
    pub connections_alive: AtomicU64,
    pub outstanding_requests: AtomicU64,
    pub latency_count: AtomicU64,
    pub latency_sum_us: AtomicU64,
    pub latency_max_us: AtomicU64,
    pub latency_min_us: AtomicU64,
    pub limit_hits: AtomicU64,
}

impl Metrics {
    pub fn record_latency(&self, started: Instant) {
        let us = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.latency_max_us.fetch_max(us, Ordering::Relaxed);
        let min = self.latency_min_us.load(Ordering::Relaxed);
        if min == 0 || us < min {
            self.latency_min_us.store(us.max(1), Ordering::Relaxed);
        }
    }
}

/// Messages from connections to the core.
#[derive(Debug)]
pub enum CoreMsg {
    /// A handshake. The core answers on `conn.out` and tells the connection its session
    /// (None: rejected, the connection closes after the queued frames).
    Connect {
        conn: ConnHandle,
        req: ConnectRequest,
        established: oneshot::Sender<Option<SessionId>>,
    },
    Request {
        conn_id: u64,
        session_id: SessionId,
        xid: i32,
        request: Request,
        received: Instant,
    },
    /// A request the server does not serve (reconfig, SASL, unknown op): answered with
    /// `err` in order with the session's other replies.
    Refuse {
        conn_id: u64,
        session_id: SessionId,
        xid: i32,
        err: ErrorCode,
    },
    Disconnected {
        conn_id: u64,
        session_id: Option<SessionId>,
    },
    Stats {
        reply: oneshot::Sender<CoreStats>,
    },
    /// Ensemble mode: entries committed by Raft, to apply in order (one output each).
    RaftApply {
        entries: Vec<LogEntry>,
        reply: oneshot::Sender<Result<Vec<Bytes>, String>>,
    },
    /// Ensemble mode: a point-in-time image of the tree for a Raft snapshot.
    RaftSnapshot {
        reply: oneshot::Sender<Bytes>,
    },
    /// Ensemble mode: replace the tree with a snapshot from the leader.
    RaftInstall {
        last_index: u64,
        image: Bytes,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Ensemble mode: the proposer is done with batch `id`; `failed` holds its txns if
    /// it did not reach the log (or its fate is unknown).
    Proposed {
        id: u64,
        failed: Vec<u64>,
    },
    /// Ensemble mode: sessions that showed life on another member.
    Touched {
        session_ids: Vec<SessionId>,
    },
    /// Ensemble mode: a session's reconfig finished (see [`super::reconfig`]).
    Reconfigured {
        session_id: SessionId,
        seq: u64,
        outcome: super::reconfig::ReconfigOutcome,
    },
}

/// A snapshot of the core's counts for the four-letter words.
#[derive(Debug, Clone, Default)]
pub struct CoreStats {
    pub state: StateStats,
    pub last_zxid: Zxid,
    pub sessions_live: usize,
    pub inflight_entries: usize,
    pub clients: Vec<ClientStat>,
    /// Log appends (one fdatasync each), the entries they carried, and their time.
    pub log_batches: u64,
    pub log_entries: u64,
    pub log_append_us_total: u64,
    pub log_append_us_max: u64,
    /// `standalone`, or this member's Raft role (`leader`, `follower`, ...).
    pub mode: String,
    /// Ensemble mode: the leader's member id, when known.
    pub leader: Option<u64>,
    /// Ensemble mode: the Raft member's view (term, indexes, quorum).
    pub raft: Option<coordd_raft::Status>,
    /// Ensemble mode: frames for clients held while the quorum is out of sight (None
    /// while the member answers its clients).
    pub frames_withheld: Option<usize>,
    /// Ensemble mode: times this member lost sight of the quorum while serving and held
    /// its clients' replies (each ended with the quorum back or with its clients closed).
    pub quorum_holds: u64,
}

/// One connection, as `stat` and `cons` list it.
#[derive(Debug, Clone)]
pub struct ClientStat {
    pub peer: SocketAddr,
    pub session_id: i64,
    pub received: u64,
    pub sent: u64,
    pub queued_bytes: usize,
}

enum Queued {
    /// A write, by its tag: its zxid standalone, its local sequence number in an
    /// ensemble (where the zxid is known only at apply).
    Write(u64),
    Read {
        conn_id: u64,
        xid: i32,
        work: ReadWork,
        received: Instant,
    },
}

/// A request of the read path, or a refusal, answered without the log in order with
/// the session's other replies.
enum ReadWork {
    Serve(Request),
    /// Answered with this error (unsupported ops), in order with the other replies.
    Refuse(ErrorCode),
    /// Answered with this body and err 0 (a multi refused at the edge), in order.
    Answer(Response),
}

struct LiveSession {
    conn_id: Option<u64>,
    auth: Vec<Id>,
    timeout_ms: i32,
    queue: VecDeque<Queued>,
}

enum Origin {
    Request {
        session_id: SessionId,
        conn_id: u64,
        xid: i32,
        received: Instant,
    },
    Connect {
        conn_id: u64,
        session_id: SessionId,
        established: oneshot::Sender<Option<SessionId>>,
    },
    /// Ensemble mode: a `sync`, answered when its barrier is applied here; `path` None:
    /// a silent barrier in front of a read (`linearizable_reads`), not answered itself.
    Sync {
        session_id: SessionId,
        conn_id: u64,
        xid: i32,
        path: Option<String>,
        received: Instant,
    },
    /// The server's own expiry of a session.
    Expire {
        session_id: SessionId,
    },
    /// Ensemble mode: a client resuming a session, validated once this silent barrier
    /// is applied here (so is every txn committed before: the session's creation, or
    /// its expiry), as a ZooKeeper follower asks its leader before it takes a session.
    Resume(Box<BehindClient>),
    Server,
}

struct Inflight {
    entry: Entry,
    origin: Origin,
}

/// Where writes become durable: this server's own write-ahead log (standalone), or
/// the ensemble's Raft log.
pub enum Log {
    Local(LogWriter),
    Raft(Box<RaftLog>),
}

/// The core's side of the ensemble: batches it has proposed and not seen applied.
pub struct RaftLog {
    me: u64,
    /// Set once the member has started (the member needs the core running first: it
    /// may apply entries while it starts).
    member: Arc<std::sync::OnceLock<Member>>,
    proposals: mpsc::Sender<Proposal>,
    /// Keeps the core's `durable` channel open (standalone-only messages).
    _durable: mpsc::UnboundedSender<Durable>,
    /// Txns waiting for the proposer: sequence number, txn, and the bytes it takes in a
    /// batch ([`txn_batch_bytes`], measured once when queued).
    pending: Vec<(u64, Txn, usize)>,
    pending_syncs: Vec<u64>,
    /// This member's txns in the log or on their way, by local sequence number.
    local: HashMap<u64, Origin>,
    /// Local sequence numbers start at 1 in every run of the process; `incarnation`
    /// (drawn at start, carried by every batch) tells this run's batches from those of
    /// earlier runs, which may still commit after a restart with the same numbers.
    next_seq: u64,
    incarnation: u64,
    /// Sessions with life on this member since the last touch sent to the leader.
    touched: HashSet<SessionId>,
    /// The Raft term of the leadership whose start this member's core has seen (it gave
    /// every session a whole timeout then); None while it does not lead.
    led_term: Option<u64>,
    /// Batches with the proposer, by id: cancelling one's token gives it up. At most
    /// `PROPOSALS_IN_FLIGHT_MAX`; what arrives meanwhile becomes the next, larger batch
    /// (group commit).
    ///
    /// Invariant: no two of them hold txns or barriers of one [`Orderer`]. Batches in
    /// flight may reach the log in either order; a session's (and the server's own)
    /// must reach it in the order they were made.
    proposing: HashMap<u64, InFlightBatch>,
    next_proposal_id: u64,
    state_config: StateConfig,
    /// How long this member may go without a quorum (leader: acknowledgements from a
    /// majority; follower: contact with the leader) before it closes its clients so
    /// they move to the majority side.
    quorum_lost_close_ms: u64,
    quorum_lost_since: Option<Instant>,
    /// Handshakes of clients that have seen a newer zxid than this member has applied,
    /// waiting (until their deadline) for it to catch up.
    behind: Vec<BehindClient>,
    /// Whether clients are served: false from a quorum loss older than
    /// `quorum_lost_close_ms` until the quorum is back.
    serving: bool,
    /// Some while this member has no quorum in sight: every frame for a client (reply,
    /// watch event, handshake answer, close) waits here instead of going out, so nothing
    /// this member computed after it lost sight of the quorum reaches a client before
    /// it has the quorum again (then they go, in order). Dropped when the member closes
    /// its clients. Each frame still counts in its connection's `queued_bytes`, so
    /// `outbound_bytes_max` bounds what one client can make it hold.
    withheld: Option<Vec<(mpsc::UnboundedSender<Outbound>, Outbound)>>,
    /// Times `withheld` began while the member served (mntr `zk_quorum_holds`).
    quorum_holds: u64,
    /// The member's `quorum_fresh_until` as last read: every frame goes out only before
    /// it (read again once passed), so the hold begins on time even when the quorum
    /// poll runs late.
    answer_until: Option<Instant>,
    /// The core's own queue (weak: the core must not keep itself alive), for the
    /// results of reconfigs it started.
    core_tx: Option<mpsc::WeakSender<CoreMsg>>,
    /// Cancelled when this member is removed from the ensemble.
    removed: tokio_util::sync::CancellationToken,
}

/// Whose order a txn or barrier keeps in the log: a session's (its requests and syncs,
/// its creation, its resume, its expiry) or this server's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Orderer {
    Session(SessionId),
    Server,
}

impl Origin {
    fn orderer(&self) -> Orderer {
        match self {
            Origin::Request { session_id, .. }
            | Origin::Connect { session_id, .. }
            | Origin::Sync { session_id, .. }
            | Origin::Expire { session_id } => Orderer::Session(*session_id),
            Origin::Resume(b) => Orderer::Session(b.req.session_id),
            Origin::Server => Orderer::Server,
        }
    }
}

/// A batch with the proposer (see [`RaftLog::proposing`]).
struct InFlightBatch {
    abandon: CancellationToken,
    orderers: HashSet<Orderer>,
}

/// A batch taken from what waits for the proposer (see [`RaftLog::take_batch`]).
struct TakenBatch {
    txns: Vec<(u64, Txn)>,
    syncs: Vec<u64>,
    orderers: HashSet<Orderer>,
}

/// A session's reconfig in progress: its reply slot (a [`Queued::Write`] with `seq` in
/// the session's queue, so earlier requests are answered first) and the session's
/// later requests, held until it is answered so replies stay in request order.
struct PendingReconfig {
    seq: u64,
    conn_id: u64,
    xid: i32,
    received: Instant,
    outcome: Option<super::reconfig::ReconfigOutcome>,
    held: VecDeque<(u64, i32, ReadWork, Instant)>,
}

impl RaftLog {
    /// The quorum is out of sight: from now on every frame for a client waits in
    /// `withheld` (see [`Core::on_quorum_poll`] for its end).
    fn begin_hold(&mut self) {
        debug_assert!(self.withheld.is_none(), "a hold begins once");
        if self.serving {
            self.quorum_holds += 1;
            tracing::info!(
                close_after_ms = self.quorum_lost_close_ms,
                "no quorum in sight: holding every frame for clients until it is back"
            );
        }
        self.withheld = Some(Vec::new());
    }

    /// The request of this run that `seq` of an applied batch (`batch`: its member and
    /// incarnation) answers, if the batch is this run's: an earlier run's (or another member's) batch with the same number
    /// answers nobody here.
    fn take_own(&mut self, batch: (u64, u64), seq: u64) -> Option<Origin> {
        if batch == (self.me, self.incarnation) {
            self.local.remove(&seq)
        } else {
            None
        }
    }

    /// Whose order the txn or barrier `seq` keeps; one whose origin is gone (it answers
    /// no one) is kept in the server's order.
    fn orderer_of(&self, seq: u64) -> Orderer {
        self.local
            .get(&seq)
            .map(Origin::orderer)
            .unwrap_or(Orderer::Server)
    }

    /// Takes the next batch from what waits for the proposer: at most `BATCH_TXNS_MAX`
    /// txns and as many barriers, and at most `BATCH_BYTES_MAX` bytes of them unless the
    /// first txn alone is larger, in the order they were queued, of the orderers that
    /// have nothing in a batch in flight. Once one of an orderer's items stays behind
    /// (its orderer busy, or the batch full), all its later ones do. Barriers come after
    /// the txns in a batch, so a barrier goes only if none of its orderer's txns stayed
    /// behind. None when nothing may go.
    fn take_batch(&mut self) -> Option<TakenBatch> {
        let mut behind: HashSet<Orderer> = self
            .proposing
            .values()
            .flat_map(|b| b.orderers.iter().copied())
            .collect();
        let mut orderers = HashSet::new();
        let mut bytes = 0;
        let pending = std::mem::take(&mut self.pending);
        let (txns, kept) = self.split_takeable(
            pending,
            |(seq, _, len)| (*seq, *len),
            &mut bytes,
            &mut behind,
            &mut orderers,
        );
        self.pending = kept;
        let txns: Vec<(u64, Txn)> = txns.into_iter().map(|(seq, txn, _)| (seq, txn)).collect();
        let pending_syncs = std::mem::take(&mut self.pending_syncs);
        let (syncs, kept) = self.split_takeable(
            pending_syncs,
            |seq| (*seq, SYNC_BATCH_BYTES),
            &mut bytes,
            &mut behind,
            &mut orderers,
        );
        self.pending_syncs = kept;
        if txns.is_empty() && syncs.is_empty() {
            return None;
        }
        Some(TakenBatch {
            txns,
            syncs,
            orderers,
        })
    }

    /// Splits `items` (queued in order; `seq_len_of` gives an item's sequence number and
    /// its bytes in a batch) into those that go in the batch, at most `BATCH_TXNS_MAX`,
    /// and those that stay: an item stays once its orderer is in `behind`, and puts it
    /// there; one that goes adds its orderer to `orderers` and its bytes to `bytes`, the
    /// batch's so far, which stay within `BATCH_BYTES_MAX` unless the batch's first item
    /// alone is larger.
    fn split_takeable<T>(
        &self,
        items: Vec<T>,
        seq_len_of: impl Fn(&T) -> (u64, usize),
        bytes: &mut usize,
        behind: &mut HashSet<Orderer>,
        orderers: &mut HashSet<Orderer>,
    ) -> (Vec<T>, Vec<T>) {
        let (mut taken, mut kept) = (Vec::new(), Vec::new());
        for item in items {
            let (seq, len) = seq_len_of(&item);
            let o = self.orderer_of(seq);
            let full = taken.len() >= BATCH_TXNS_MAX
                || (*bytes > 0 && bytes.saturating_add(len) > BATCH_BYTES_MAX);
            if full || behind.contains(&o) {
                behind.insert(o);
                kept.push(item);
            } else {
                orderers.insert(o);
                // Every item takes bytes (8 at least), so `bytes > 0` once one is taken.
                *bytes = bytes.saturating_add(len);
                taken.push(item);
            }
        }
        (taken, kept)
    }

    /// Queues a silent barrier through the log (a `sync`, a linearizable read's, a
    /// session resume's); `origin` is acted on once it is applied here. The caller sets
    /// `log_pending`. Returns the barrier's local sequence number.
    fn push_barrier(&mut self, origin: Origin) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending_syncs.push(seq);
        self.local.insert(seq, origin);
        seq
    }

    pub fn new(
        me: u64,
        member: Arc<std::sync::OnceLock<Member>>,
        proposals: mpsc::Sender<Proposal>,
        durable: mpsc::UnboundedSender<Durable>,
        state_config: StateConfig,
        quorum_lost_close_ms: u64,
    ) -> RaftLog {
        RaftLog {
            me,
            member,
            proposals,
            _durable: durable,
            pending: Vec::new(),
            pending_syncs: Vec::new(),
            local: HashMap::new(),
            next_seq: 1,
            incarnation: super::replicated::new_incarnation(),
            touched: HashSet::new(),
            led_term: None,
            proposing: HashMap::new(),
            next_proposal_id: 1,
            state_config,
            quorum_lost_close_ms,
            quorum_lost_since: None,
            behind: Vec::new(),
            serving: false,
            withheld: None,
            quorum_holds: 0,
            answer_until: None,
            core_tx: None,
            removed: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Where reconfigs started by the core report back, and the member's removal token.
    pub fn with_reconfig(
        mut self,
        core_tx: mpsc::WeakSender<CoreMsg>,
        removed: tokio_util::sync::CancellationToken,
    ) -> RaftLog {
        self.core_tx = Some(core_tx);
        self.removed = removed;
        self
    }
}

/// A handshake parked until this member catches up with the client.
struct BehindClient {
    deadline: Instant,
    conn: ConnHandle,
    req: ConnectRequest,
    established: oneshot::Sender<Option<SessionId>>,
}

/// How long a member lets a client that has seen a newer zxid wait for it to catch up
/// before refusing it (the client then tries another member), at most: a third of the
/// session timeout the client asked for, bounded by this.
const CATCH_UP_WAIT_MS_MAX: u64 = 2_000;

/// How long a member without a quorum holds a client's handshake before refusing it.
/// After a leader dies the survivors have no quorum until they elected a new one (about
/// 0.3-0.5 s with the default Raft timers): a client that reconnects then waits for the
/// election instead of being refused into its reconnect backoff (which doubles, so a
/// refusal can cost it more than the election did). A member cut off for longer refuses
/// the client after this, and the client tries the next server.
const NO_QUORUM_HANDSHAKE_WAIT_MS: u64 = 600;

/// Ensemble mode: how often the core looks at the Raft member's view (quorum in sight
/// or not). Independent of the tick time, which is 2 s by default: a member must stop
/// serving promptly when cut off, and serve again as soon as a new leader is elected.
const QUORUM_POLL_MS: u64 = 10;

pub struct Core {
    config: Config,
    state: StateMachine,
    log: Log,
    next_zxid: Zxid,
    last_time_ms: i64,
    next_session_id: i64,
    conns: HashMap<u64, ConnHandle>,
    sessions: HashMap<SessionId, LiveSession>,
    /// Sessions whose close or expiry is logged but not applied yet.
    closing: HashSet<SessionId>,
    deadlines: SessionDeadlines,
    inflight: VecDeque<Inflight>,
    /// Entries submitted since the log was last told (inline commit or a kick).
    log_pending: bool,
    /// The session of the latest logged request and how many logged requests in a
    /// row came from it: the inline-commit policy's measure of a serial write load.
    serial_writer: (SessionId, u32),
    entries_since_snapshot: u64,
    /// A standalone snapshot's image is being encoded on the blocking pool.
    snapshot_encoding: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<Metrics>,
    /// Ensemble mode: reconfigs in progress, by session.
    reconfigs: HashMap<SessionId, PendingReconfig>,
}

/// Logged requests in a row from one session before its writes are committed inline
/// (`inline_commit`): a load of several writers is better served by the log writer
/// thread, which batches their entries under one fsync while this thread goes on.
const SERIAL_WRITES_MIN: u32 = 8;

/// A request served from the tree alone (what `linearizable_reads` puts behind a
/// barrier); not pings, auth, watch bookkeeping or sync.
fn is_plain_read(request: &Request) -> bool {
    !request.is_write()
        && !matches!(
            request,
            Request::Ping
                | Request::Auth(_)
                | Request::SetWatches(_)
                | Request::Sync(_)
                | Request::CloseSession
        )
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "observer",
        Role::Shutdown => "shutdown",
    }
}

fn now_wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The first session id of a server, as ZooKeeper makes it: the server id in the top
/// byte, the start time in ms below it, so ids do not repeat across restarts.
fn initial_session_id(server_id: u8, now_ms: i64) -> i64 {
    let t = ((now_ms as u64) << 24) >> 8;
    ((server_id as u64) << 56 | t) as i64
}

fn reply_frame(xid: i32, zxid: Zxid, err: ErrorCode, body: Option<&Response>) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    write_frame(&mut out, |o| {
        ReplyHeader {
            xid,
            zxid,
            err: err.code(),
        }
        .encode(o);
        if let Some(b) = body {
            b.encode(o);
        }
    });
    out.freeze()
}

fn event_frame(event: &coordd_proto::WatcherEvent) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    write_frame(&mut out, |o| {
        ReplyHeader {
            xid: xid::NOTIFICATION,
            zxid: -1,
            err: 0,
        }
        .encode(o);
        event.encode(o);
    });
    out.freeze()
}

fn connect_frame(resp: &ConnectResponse) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    write_frame(&mut out, |o| resp.encode(o));
    out.freeze()
}

impl Core {
    /// Builds the core from recovered state. `state` already holds every durable entry.
    pub fn new(config: Config, state: StateMachine, log: Log, metrics: Arc<Metrics>) -> Core {
        let now = Instant::now();
        let mut deadlines = SessionDeadlines::default();
        let mut sessions = HashMap::new();
        // Sessions recovered from disk get a whole timeout from now, as ZooKeeper
        // gives them after a restart: their clients need the time to reconnect.
        for s in state.sessions() {
            deadlines.touch(
                s.session_id,
                now,
                Duration::from_millis(s.timeout_ms.max(0) as u64),
            );
            sessions.insert(
                s.session_id,
                LiveSession {
                    conn_id: None,
                    auth: Vec::new(),
                    timeout_ms: s.timeout_ms,
                    queue: VecDeque::new(),
                },
            );
        }
        let next_zxid = state.last_zxid() + 1;
        Core {
            next_session_id: initial_session_id(config.server_id, now_wall_ms()),
            config,
            state,
            log,
            next_zxid,
            last_time_ms: 0,
            conns: HashMap::new(),
            sessions,
            closing: HashSet::new(),
            deadlines,
            inflight: VecDeque::new(),
            log_pending: false,
            serial_writer: (0, 0),
            entries_since_snapshot: 0,
            snapshot_encoding: Arc::default(),
            metrics,
            reconfigs: HashMap::new(),
        }
    }

    /// Runs until `shutdown` is cancelled or the log fails.
    pub async fn run(
        mut self,
        mut msgs: mpsc::Receiver<CoreMsg>,
        mut durable: mpsc::UnboundedReceiver<Durable>,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let tick_ms = (self.config.tick_time_ms as u64 / 10).clamp(5, 200);
        let mut expiry_tick = tokio::time::interval(Duration::from_millis(tick_ms));
        expiry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut container_tick = tokio::time::interval(Duration::from_millis(
            self.config.container_check_interval_ms,
        ));
        container_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quorum_poll = tokio::time::interval(Duration::from_millis(QUORUM_POLL_MS));
        quorum_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ensemble = matches!(self.log, Log::Raft(_));
        loop {
            if let Err(why) = self.commit_log() {
                tracing::error!(%why, "write-ahead log failed; stopping: no write may be acknowledged after a failed fsync");
                self.close_all();
                return Err(why);
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                d = durable.recv() => match d {
                    Some(Durable::UpTo(zxid)) => self.on_durable(zxid),
                    Some(Durable::Failed(why)) => {
                        tracing::error!(%why, "write-ahead log failed; stopping: no write may be acknowledged after a failed fsync");
                        self.close_all();
                        return Err(why);
                    }
                    None => return Err("log writer stopped".into()),
                },
                // Before the clients' messages: a member that wakes from a stall (a
                // paused process, a starved machine) with their requests queued looks
                // at the quorum first, so it holds its answers (`withheld`) rather than
                // answer from a state a new leader may have moved past meanwhile.
                _ = quorum_poll.tick(), if ensemble => self.on_quorum_poll(),
                m = msgs.recv() => match m {
                    Some(m) => self.on_msg(m),
                    None => break,
                },
                _ = expiry_tick.tick() => self.on_tick(),
                _ = container_tick.tick() => self.delete_expired_nodes(),
            }
        }
        self.close_all();
        if let Log::Local(writer) = self.log {
            writer.shutdown();
        }
        Ok(())
    }

    fn close_all(&mut self) {
        for (_, c) in self.conns.drain() {
            let _ = c.out.send(Outbound::Close);
        }
    }

    fn on_msg(&mut self, m: CoreMsg) {
        match m {
            CoreMsg::Connect {
                conn,
                req,
                established,
            } => self.on_connect(conn, req, established, false),
            CoreMsg::Request {
                conn_id,
                session_id,
                xid,
                request,
                received,
            } => self.on_request(conn_id, session_id, xid, ReadWork::Serve(request), received),
            CoreMsg::Refuse {
                conn_id,
                session_id,
                xid,
                err,
            } => self.on_request(
                conn_id,
                session_id,
                xid,
                ReadWork::Refuse(err),
                Instant::now(),
            ),
            CoreMsg::Disconnected {
                conn_id,
                session_id,
            } => {
                // A connection whose client left while its handshake waited here may
                // have been given a session the connection task never learned of: the
                // session attached to it is in its stats.
                let attached = self
                    .conns
                    .remove(&conn_id)
                    .map(|c| c.stats.session_id.load(Ordering::Relaxed) as SessionId)
                    .filter(|id| *id != 0);
                for id in session_id.into_iter().chain(attached) {
                    if let Some(s) = self.sessions.get_mut(&id) {
                        if s.conn_id == Some(conn_id) {
                            s.conn_id = None;
                            // As ZooKeeper logs a closed socket with its session: with
                            // the attach and end lines, a session's life on each member.
                            tracing::info!(
                                session_id = format!("0x{id:x}"),
                                conn_id,
                                "client connection of the session closed"
                            );
                        }
                    }
                }
            }
            CoreMsg::RaftApply { entries, reply } => {
                let _ = reply.send(self.raft_apply(entries));
                self.retry_behind_clients(false);
            }
            CoreMsg::RaftSnapshot { reply } => {
                // The view is the state at the applied index; its image is encoded off
                // the core's thread (openraft builds one snapshot at a time).
                let view = self.state.snapshot_view();
                tokio::task::spawn_blocking(move || {
                    let _ = reply.send(Bytes::from(view.encode()));
                });
            }
            CoreMsg::RaftInstall {
                last_index,
                image,
                reply,
            } => {
                let _ = reply.send(self.raft_install(last_index, &image));
            }
            CoreMsg::Proposed { id, failed } => {
                if let Log::Raft(r) = &mut self.log {
                    let was_in_flight = r.proposing.remove(&id).is_some();
                    debug_assert!(was_in_flight, "the proposer reports each batch once");
                }
                if !failed.is_empty() {
                    self.propose_failed(failed);
                }
                if let Log::Raft(r) = &self.log {
                    // What queued meanwhile goes out as the next batch, but for what
                    // `propose_failed` dropped with the failed batch's clients.
                    self.log_pending |= !r.pending.is_empty() || !r.pending_syncs.is_empty();
                }
            }
            CoreMsg::Touched { session_ids } => {
                for id in session_ids {
                    self.touch(id);
                }
            }
            CoreMsg::Reconfigured {
                session_id,
                seq,
                outcome,
            } => {
                if let Some(p) = self.reconfigs.get_mut(&session_id) {
                    if p.seq == seq {
                        p.outcome = Some(outcome);
                        self.finish_reconfig(session_id);
                    }
                }
            }
            CoreMsg::Stats { reply } => {
                let (batches, entries, us_total, us_max) = match &self.log {
                    Log::Local(writer) => {
                        let log = writer.stats();
                        (
                            log.batches.load(Ordering::Relaxed),
                            log.entries.load(Ordering::Relaxed),
                            log.append_us_total.load(Ordering::Relaxed),
                            log.append_us_max.load(Ordering::Relaxed),
                        )
                    }
                    Log::Raft(_) => (0, 0, 0, 0),
                };
                let (mode, leader) = match &self.log {
                    Log::Local(_) => ("standalone".to_string(), None),
                    Log::Raft(r) => match r.member.get() {
                        Some(m) => (role_name(m.role()).to_string(), m.leader()),
                        None => ("starting".to_string(), None),
                    },
                };
                let raft = match &self.log {
                    Log::Raft(r) => r.member.get().map(|m| m.status()),
                    Log::Local(_) => None,
                };
                let (frames_withheld, quorum_holds) = match &self.log {
                    Log::Raft(r) => (r.withheld.as_ref().map(Vec::len), r.quorum_holds),
                    Log::Local(_) => (None, 0),
                };
                let _ = reply.send(CoreStats {
                    mode,
                    leader,
                    raft,
                    frames_withheld,
                    quorum_holds,
                    log_batches: batches,
                    log_entries: entries,
                    log_append_us_total: us_total,
                    log_append_us_max: us_max,
                    state: self.state.stats(),
                    last_zxid: self.state.last_zxid(),
                    sessions_live: self.sessions.len(),
                    inflight_entries: self.inflight.len(),
                    clients: self
                        .conns
                        .values()
                        .map(|c| ClientStat {
                            peer: c.peer,
                            session_id: c.stats.session_id.load(Ordering::Relaxed) as i64,
                            received: c.stats.received.load(Ordering::Relaxed),
                            sent: c.stats.sent.load(Ordering::Relaxed),
                            queued_bytes: c.queued_bytes.load(Ordering::Relaxed),
                        })
                        .collect(),
                });
            }
        }
    }

    /// Completes a handshake: the connection now carries the session. Identities belong
    /// to the connection, as in ZooKeeper: a new connection starts with its ip and must
    /// send addAuth again.
    fn attach_session(
        &mut self,
        conn_id: u64,
        info: &crate::state::SessionInfo,
        established: oneshot::Sender<Option<SessionId>>,
    ) {
        let Some(conn) = self.conns.get(&conn_id) else {
            let _ = established.send(None);
            return;
        };
        conn.stats
            .session_id
            .store(info.session_id as u64, Ordering::Relaxed);
        tracing::info!(
            session_id = format!("0x{:x}", info.session_id),
            conn_id,
            peer = %conn.peer,
            timeout_ms = info.timeout_ms,
            "client attached to the session (new or resumed)"
        );
        let ip = Id {
            scheme: "ip".into(),
            id: conn.peer.ip().to_string(),
        };
        self.set_auth(info.session_id, vec![ip]);
        self.touch(info.session_id);
        let frame = connect_frame(&ConnectResponse {
            protocol_version: PROTOCOL_VERSION,
            timeout_ms: info.timeout_ms,
            session_id: info.session_id,
            passwd: info.passwd.clone(),
            read_only: false,
        });
        self.push(conn_id, frame);
        let _ = established.send(Some(info.session_id));
    }

    /// The identities a session's connection holds, for ACL checks of its requests and
    /// of the watch events it may receive.
    fn set_auth(&mut self, session_id: SessionId, auth: Vec<Id>) {
        self.state.set_session_auth(session_id, &auth);
        if let Some(s) = self.sessions.get_mut(&session_id) {
            s.auth = auth;
        }
    }

    fn session_has_queue(&self, session_id: SessionId) -> bool {
        self.sessions
            .get(&session_id)
            .is_some_and(|s| !s.queue.is_empty())
    }

    /// Life from a session's client on this member (its handshake or a packet): the
    /// session's deadline starts again, and in an ensemble the leader hears of it at the
    /// next tick. Only for a client here: what a member merely applies from the log is
    /// no sign that its client lives.
    fn touch(&mut self, session_id: SessionId) {
        if self.closing.contains(&session_id) {
            return;
        }
        if let Log::Raft(r) = &mut self.log {
            r.touched.insert(session_id);
        }
        if let Some(s) = self.sessions.get(&session_id) {
            self.deadlines.touch(
                session_id,
                Instant::now(),
                Duration::from_millis(s.timeout_ms.max(0) as u64),
            );
        }
    }

    /// `resumable`: an ensemble member has applied a barrier proposed after the
    /// handshake came in, so its view of the session is current.
    fn on_connect(
        &mut self,
        conn: ConnHandle,
        req: ConnectRequest,
        established: oneshot::Sender<Option<SessionId>>,
        resumable: bool,
    ) {
        let conn_id = conn.conn_id;
        self.conns.insert(conn_id, conn.clone());
        if let Log::Raft(r) = &mut self.log {
            if !r.serving {
                // Like a ZooKeeper follower that is not in sync with a leader, the
                // member serves no one; the handshake waits (bounded) for the quorum,
                // then is refused and the client tries another server.
                tracing::debug!(conn_id, "no quorum here: the handshake waits for one");
                r.behind.push(BehindClient {
                    deadline: Instant::now() + Duration::from_millis(NO_QUORUM_HANDSHAKE_WAIT_MS),
                    conn,
                    req,
                    established,
                });
                return;
            }
        }
        if req.last_zxid_seen > self.state.last_zxid() {
            if let Log::Raft(r) = &mut self.log {
                // A member behind the client: wait for it to apply up to what the client
                // has seen (it is committed: the client saw it), then accept.
                let wait_ms = (req.timeout_ms.max(0) as u64 / 3).min(CATCH_UP_WAIT_MS_MAX);
                r.behind.push(BehindClient {
                    deadline: Instant::now() + Duration::from_millis(wait_ms),
                    conn,
                    req,
                    established,
                });
                return;
            }
            // The client has seen a newer state than ours; ZooKeeper refuses it so that
            // it never goes back in time, and the client tries another server.
            tracing::info!(
                conn_id,
                client_zxid = req.last_zxid_seen,
                our_zxid = self.state.last_zxid(),
                "refusing a client that has seen a newer zxid than ours"
            );
            self.drop_conn(conn_id);
            let _ = established.send(None);
            return;
        }
        if req.session_id != 0 {
            if let (Log::Raft(r), false) = (&mut self.log, resumable) {
                // This member may not have applied the session's creation yet (the
                // client made it elsewhere a moment ago), or its expiry (already
                // observable elsewhere): validate once everything committed by now is
                // applied here.
                r.push_barrier(Origin::Resume(Box::new(BehindClient {
                    deadline: Instant::now(),
                    conn,
                    req,
                    established,
                })));
                self.log_pending = true;
                return;
            }
            let known = self.state.session(req.session_id);
            let valid = match &known {
                Some(s) => s.passwd == req.passwd && !self.closing.contains(&req.session_id),
                None => false,
            };
            if !valid {
                tracing::info!(
                    conn_id,
                    session_id = format!("0x{:x}", req.session_id),
                    known = known.is_some(),
                    "reconnect refused: session expired, unknown or wrong password"
                );
                // Timeout 0 tells the client its session is gone; a bare close would
                // make it retry forever.
                let frame = connect_frame(&ConnectResponse {
                    protocol_version: PROTOCOL_VERSION,
                    timeout_ms: 0,
                    session_id: 0,
                    passwd: vec![0; 16],
                    read_only: false,
                });
                self.push(conn_id, frame);
                self.close_conn_after_queued(conn_id);
                let _ = established.send(None);
                return;
            }
            let info = known.expect("checked above");
            // Move the session to this connection; an older connection of the same
            // session is closed, as ZooKeeper does when a session moves.
            let old = self
                .sessions
                .get_mut(&info.session_id)
                .and_then(|s| s.conn_id.replace(conn_id));
            if let Some(old) = old.filter(|o| *o != conn_id) {
                self.drop_conn(old);
            }
            self.attach_session(conn_id, &info, established);
            return;
        }
        // A new session: logged, answered once durable.
        let timeout_ms = self.config.negotiate_session_timeout_ms(req.timeout_ms);
        let mut session_id = self.next_session_id;
        while self.state.session(session_id).is_some() || self.sessions.contains_key(&session_id) {
            session_id = session_id.wrapping_add(1);
        }
        self.next_session_id = session_id.wrapping_add(1);
        let passwd: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
        let txn = Txn::CreateSession {
            session_id,
            passwd,
            timeout_ms,
        };
        if self
            .submit(
                txn,
                Origin::Connect {
                    conn_id,
                    session_id,
                    established,
                },
            )
            .is_none()
        {
            self.drop_conn(conn_id);
        }
    }

    /// Every request of an established session, in arrival order: writes go to the log,
    /// everything else is answered now or queued behind the session's writes.
    fn on_request(
        &mut self,
        conn_id: u64,
        session_id: SessionId,
        xid: i32,
        work: ReadWork,
        received: Instant,
    ) {
        if !self.conns.contains_key(&conn_id) {
            // The core closed this connection (a write of its session failed or is in
            // doubt, the session moved to another connection, this member stopped
            // serving) while the request was on its way here: its client sees
            // ConnectionLoss and never this answer, and ZooKeeper drops such requests
            // too. A write logged now could be applied without an earlier write of its
            // session whose outcome is unknown (the per-session FIFO order).
            return;
        }
        self.metrics
            .outstanding_requests
            .fetch_add(1, Ordering::Relaxed);
        self.touch(session_id);
        self.route_request(conn_id, session_id, xid, work, received);
    }

    /// [`Core::on_request`] after the bookkeeping (also for requests held behind a
    /// reconfig, which were counted when they arrived).
    fn route_request(
        &mut self,
        conn_id: u64,
        session_id: SessionId,
        xid: i32,
        work: ReadWork,
        received: Instant,
    ) {
        if !self.sessions.contains_key(&session_id) || self.closing.contains(&session_id) {
            let z = self.state.last_zxid();
            self.send_reply(conn_id, xid, z, ErrorCode::SessionExpired, None);
            return;
        }
        if let Some(p) = self.reconfigs.get_mut(&session_id) {
            if xid == xid::PING && matches!(work, ReadWork::Serve(Request::Ping)) {
                // Answered at once: clients match ping replies by their xid, outside the
                // order of the others (ZooKeeper's and ours), and a reconfig can take
                // longer than a client waits for a sign of life (2/3 of its timeout).
                let z = self.state.last_zxid();
                self.send_reply(conn_id, xid, z, ErrorCode::Ok, None);
                return;
            }
            p.held.push_back((conn_id, xid, work, received));
            return;
        }
        let work = match work {
            ReadWork::Serve(Request::Reconfig(req)) => {
                match self.start_reconfig(session_id, conn_id, xid, req, received) {
                    None => return,
                    Some(refusal) => ReadWork::Refuse(refusal),
                }
            }
            other => other,
        };
        let linearizable_reads = self.config.linearizable_reads;
        let work = match (work, &mut self.log) {
            (ReadWork::Serve(Request::Sync(p)), Log::Raft(r)) => {
                let seq = r.push_barrier(Origin::Sync {
                    session_id,
                    conn_id,
                    xid,
                    path: Some(p.path),
                    received,
                });
                self.log_pending = true;
                if let Some(s) = self.sessions.get_mut(&session_id) {
                    s.queue.push_back(Queued::Write(seq));
                }
                return;
            }
            (ReadWork::Serve(request), Log::Raft(r))
                if linearizable_reads && is_plain_read(&request) =>
            {
                // Linearizable read: a silent barrier through the log first; the read
                // waits behind it, so it sees every write committed before it began.
                let seq = r.push_barrier(Origin::Sync {
                    session_id,
                    conn_id,
                    xid,
                    path: None,
                    received,
                });
                self.log_pending = true;
                // The barrier counts as outstanding until applied (or failed).
                self.metrics
                    .outstanding_requests
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(s) = self.sessions.get_mut(&session_id) {
                    s.queue.push_back(Queued::Write(seq));
                }
                ReadWork::Serve(request)
            }
            (work, _) => work,
        };
        let work = match work {
            ReadWork::Serve(request) if request.is_write() => {
                match self.refuse_oversized_data(session_id, conn_id, &request) {
                    None => ReadWork::Serve(request),
                    Some(refusal) => refusal,
                }
            }
            other => other,
        };
        let request = match work {
            ReadWork::Serve(request) if request.is_write() => request,
            other => {
                if self.session_has_queue(session_id) {
                    self.enqueue_read(session_id, conn_id, xid, other, received);
                } else {
                    self.serve_read(session_id, conn_id, xid, other, received);
                }
                return;
            }
        };
        let auth = self.sessions[&session_id].auth.clone();
        let closes = matches!(request, Request::CloseSession);
        let txn = if closes {
            Txn::CloseSession { session_id }
        } else {
            Txn::Write {
                session_id,
                auth,
                request,
            }
        };
        if let Some(tag) = self.submit(
            txn,
            Origin::Request {
                session_id,
                conn_id,
                xid,
                received,
            },
        ) {
            if closes {
                // Closing from now on: no expiry of its own, no renewal, no resume. Undone
                // by `close_lost` if the close never reaches the log.
                self.closing.insert(session_id);
                self.deadlines.remove(session_id);
            }
            if let Some(s) = self.sessions.get_mut(&session_id) {
                s.queue.push_back(Queued::Write(tag));
            }
        } else {
            let z = self.state.last_zxid();
            self.send_reply(conn_id, xid, z, ErrorCode::Throttled, None);
        }
    }

    /// Starts a session's reconfig (ensemble mode): a reply slot in the session's queue,
    /// the session's later requests held, the change run in a task that reports back
    /// with [`CoreMsg::Reconfigured`]. Returns the error to answer instead: standalone
    /// (ReconfigDisabled), or a session that is not the superuser when one is configured
    /// (NoAuth).
    fn start_reconfig(
        &mut self,
        session_id: SessionId,
        conn_id: u64,
        xid: i32,
        req: coordd_proto::ReconfigRequest,
        received: Instant,
    ) -> Option<ErrorCode> {
        let Log::Raft(r) = &mut self.log else {
            return Some(ErrorCode::ReconfigDisabled);
        };
        let (Some(member), Some(core_tx)) = (r.member.get().cloned(), r.core_tx.clone()) else {
            return Some(ErrorCode::ReconfigDisabled);
        };
        let superuser = self.config.superuser_digest.as_deref();
        if superuser.is_some() {
            let auth = &self.sessions[&session_id].auth;
            if !crate::state::acl::is_superuser(auth, superuser) {
                tracing::warn!(
                    session_id = %format_args!("0x{session_id:x}"),
                    "reconfig refused: only the superuser may change the membership"
                );
                return Some(ErrorCode::NoAuth);
            }
        }
        let seq = r.next_seq;
        r.next_seq += 1;
        let removed = r.removed.clone();
        if let Some(s) = self.sessions.get_mut(&session_id) {
            s.queue.push_back(Queued::Write(seq));
        }
        self.reconfigs.insert(
            session_id,
            PendingReconfig {
                seq,
                conn_id,
                xid,
                received,
                outcome: None,
                held: VecDeque::new(),
            },
        );
        tokio::spawn(async move {
            let outcome = super::reconfig::run(member, req, removed).await;
            if let Err((code, why)) = &outcome {
                tracing::info!(?code, %why, "reconfig refused or failed");
            }
            if let Some(tx) = core_tx.upgrade() {
                let _ = tx
                    .send(CoreMsg::Reconfigured {
                        session_id,
                        seq,
                        outcome,
                    })
                    .await;
            }
        });
        None
    }

    /// Answers a session's finished reconfig once every earlier request of the session
    /// is answered (its slot is at the front of the queue), then lets its held requests
    /// through. If the session or its queue is gone (expired, or its connection dropped
    /// for a failed write), its held requests are let go unanswered.
    fn finish_reconfig(&mut self, session_id: SessionId) {
        let Some(p) = self.reconfigs.get(&session_id) else {
            return;
        };
        if p.outcome.is_none() {
            return;
        }
        let seq = p.seq;
        let front = self.sessions.get(&session_id).map(|s| s.queue.front());
        let in_queue = self.sessions.get(&session_id).is_some_and(|s| {
            s.queue
                .iter()
                .any(|q| matches!(q, Queued::Write(t) if *t == seq))
        });
        match front {
            Some(Some(Queued::Write(t))) if *t == seq => {}
            _ if in_queue => return, // earlier requests first
            _ => {
                // Cleared: its outstanding count went with the queue.
                if let Some(p) = self.reconfigs.remove(&session_id) {
                    self.release_held(session_id, p.held);
                }
                return;
            }
        }
        let Some(p) = self.reconfigs.remove(&session_id) else {
            return;
        };
        let current = self.sessions.get_mut(&session_id).and_then(|s| {
            s.queue.pop_front();
            s.conn_id
        });
        let zxid = self.state.last_zxid();
        match (current.filter(|c| *c == p.conn_id), p.outcome) {
            (Some(conn_id), Some(Ok(config))) => {
                let stat = Stat {
                    mzxid: zxid,
                    mtime: now_wall_ms(),
                    data_length: config.len() as i32,
                    ..Stat::default()
                };
                let resp = Response::GetData {
                    data: config.into_bytes(),
                    stat,
                };
                self.send_reply(conn_id, p.xid, zxid, ErrorCode::Ok, Some(&resp));
                self.metrics.record_latency(p.received);
            }
            (Some(conn_id), Some(Err((ErrorCode::ConnectionLoss, _)))) => {
                // In doubt: as for a write in doubt, the client loses its connection
                // (and what it sent after the reconfig is let go below).
                self.release_outstanding(Some(conn_id));
                self.drop_conn(conn_id);
                if let Some(s) = self.sessions.get_mut(&session_id) {
                    s.conn_id = None;
                }
            }
            (Some(conn_id), Some(Err((code, _)))) => {
                self.send_reply(conn_id, p.xid, zxid, code, None);
            }
            _ => self.release_outstanding(Some(p.conn_id)),
        }
        self.release_held(session_id, p.held);
        self.drain_reads(session_id);
    }

    /// Lets the requests held behind a reconfig through, in order; those of a
    /// connection the session has left, or that the core closed (a failed write of the
    /// session: a later one must not reach the log without it), are dropped (their
    /// client saw ConnectionLoss).
    fn release_held(
        &mut self,
        session_id: SessionId,
        held: VecDeque<(u64, i32, ReadWork, Instant)>,
    ) {
        for (conn_id, xid, work, received) in held {
            let current = self.sessions.get(&session_id).and_then(|s| s.conn_id);
            if current == Some(conn_id) && self.conns.contains_key(&conn_id) {
                self.route_request(conn_id, session_id, xid, work, received);
            } else {
                self.release_outstanding(Some(conn_id));
            }
        }
    }

    /// A create or setData (alone or inside a multi) with more data than
    /// `node_data_bytes_max` never reaches the log: it is answered with QuotaExceeded
    /// (for a multi, in ZooKeeper's shape of a failed multi: the ops before the
    /// refused one 0, it QuotaExceeded, the rest RuntimeInconsistency), in order with
    /// the session's other replies. Checked where the client is connected, before the
    /// log, so ensemble members never disagree about an entry.
    fn refuse_oversized_data(
        &self,
        session_id: SessionId,
        conn_id: u64,
        request: &Request,
    ) -> Option<ReadWork> {
        let limit = self.config.node_data_bytes_max;
        let data_len = |op: &MultiOp| match op {
            MultiOp::Create { req, .. } => req.data.len(),
            MultiOp::SetData(r) => r.data.len(),
            _ => 0,
        };
        let (bytes, refusal) = match request {
            Request::Create { req, .. } if req.data.len() > limit => {
                (req.data.len(), ReadWork::Refuse(ErrorCode::QuotaExceeded))
            }
            Request::SetData(r) if r.data.len() > limit => {
                (r.data.len(), ReadWork::Refuse(ErrorCode::QuotaExceeded))
            }
            Request::Multi(ops) => match ops.iter().position(|op| data_len(op) > limit) {
                None => return None,
                Some(i) => {
                    let mut results = vec![MultiResult::Error(ErrorCode::Ok); i];
                    results.push(MultiResult::Error(ErrorCode::QuotaExceeded));
                    results.resize(
                        ops.len(),
                        MultiResult::Error(ErrorCode::RuntimeInconsistency),
                    );
                    (
                        data_len(&ops[i]),
                        ReadWork::Answer(Response::Multi(results)),
                    )
                }
            },
            _ => return None,
        };
        self.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
        let peer = self.conns.get(&conn_id).map(|c| c.peer.to_string());
        tracing::warn!(
            session_id = %format_args!("0x{session_id:x}"),
            peer = %peer.as_deref().unwrap_or("-"),
            op = ?request.op_code(),
            bytes,
            limit,
            "node data limit hit (node_data_bytes_max): write refused"
        );
        Some(refusal)
    }

    fn enqueue_read(
        &mut self,
        session_id: SessionId,
        conn_id: u64,
        xid: i32,
        work: ReadWork,
        received: Instant,
    ) {
        if let Some(s) = self.sessions.get_mut(&session_id) {
            s.queue.push_back(Queued::Read {
                conn_id,
                xid,
                work,
                received,
            });
        }
    }

    /// Serves a read-path request now. Precondition: the session has no write in flight
    /// before it.
    fn serve_read(
        &mut self,
        session_id: SessionId,
        origin_conn: u64,
        xid: i32,
        work: ReadWork,
        received: Instant,
    ) {
        // A request answers on the connection it came in on; if the session has moved
        // since, the client already failed it with ConnectionLoss and a reply on the new
        // connection would carry an xid it does not expect.
        let current = self.sessions.get(&session_id).and_then(|s| s.conn_id);
        let Some(conn_id) = current.filter(|c| *c == origin_conn) else {
            self.release_outstanding(Some(origin_conn));
            return;
        };
        let zxid = self.state.last_zxid();
        let request = match work {
            ReadWork::Refuse(err) => {
                self.send_reply(conn_id, xid, zxid, err, None);
                return;
            }
            ReadWork::Answer(resp) => {
                self.send_reply(conn_id, xid, zxid, ErrorCode::Ok, Some(&resp));
                return;
            }
            ReadWork::Serve(r) => r,
        };
        match request {
            Request::Ping => self.send_reply(conn_id, xid, zxid, ErrorCode::Ok, None),
            Request::Auth(auth) => self.on_auth(session_id, conn_id, xid, auth),
            Request::SetWatches(w) => {
                let adding = self.state.watches_added_by_set_watches(session_id, &w);
                if self.over_watch_limit(session_id, conn_id, adding, OpCode::SetWatches2) {
                    // An error reply would be ignored by ZooKeeper's clients (and ours
                    // only logs it): the client would believe in watches it does not
                    // have. Closing makes it reconnect and try again, loudly.
                    self.close_conn_after_queued(conn_id);
                    self.release_outstanding(Some(conn_id));
                    return;
                }
                let notes = self.state.set_watches(session_id, &w);
                for n in notes {
                    self.push(conn_id, event_frame(&n.event));
                }
                self.send_reply(conn_id, xid, zxid, ErrorCode::Ok, None);
            }
            other => {
                let auth = self.sessions[&session_id].auth.clone();
                let adding = self.state.watches_added_by_read(session_id, &auth, &other);
                if self.over_watch_limit(session_id, conn_id, adding, other.op_code()) {
                    // Refused whole, nothing registered: the client learns it has no
                    // watch (it arms its own side only on success) instead of waiting
                    // for an event that will never come.
                    self.send_reply(conn_id, xid, zxid, ErrorCode::QuotaExceeded, None);
                    return;
                }
                let config_read =
                    matches!(&other, Request::GetData(p) if p.path == "/zookeeper/config");
                let mut result = self.state.read(session_id, &auth, &other);
                if config_read {
                    // Ensemble mode: the node holds the membership this member sees
                    // (ZooKeeper's dynamic configuration), not what the tree stores.
                    if let (Log::Raft(r), Ok(Response::GetData { data, stat })) =
                        (&self.log, &mut result)
                    {
                        if let Some(m) = r.member.get() {
                            *data = super::reconfig::current_config(m).into_bytes();
                            stat.data_length = data.len() as i32;
                        }
                    }
                }
                match result {
                    Ok(resp) => self.send_reply(conn_id, xid, zxid, ErrorCode::Ok, Some(&resp)),
                    Err(e) => self.send_reply(conn_id, xid, zxid, e, None),
                }
            }
        }
        self.metrics.record_latency(received);
    }

    /// True (and logged) when `adding` more watch registrations would take
    /// `session_id` past `watches_per_session_max`.
    fn over_watch_limit(
        &self,
        session_id: SessionId,
        conn_id: u64,
        adding: usize,
        op: OpCode,
    ) -> bool {
        if adding == 0 {
            return false;
        }
        let held = self.state.session_watch_count(session_id);
        let limit = self.config.watches_per_session_max;
        if held.saturating_add(adding) <= limit {
            return false;
        }
        self.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
        let peer = self.conns.get(&conn_id).map(|c| c.peer.to_string());
        tracing::warn!(
            session_id = %format_args!("0x{session_id:x}"),
            peer = %peer.as_deref().unwrap_or("-"),
            op = ?op,
            held,
            adding,
            limit,
            "watch limit hit (watches_per_session_max): request refused, nothing registered"
        );
        true
    }

    fn on_auth(
        &mut self,
        session_id: SessionId,
        conn_id: u64,
        xid: i32,
        auth: coordd_proto::AuthPacket,
    ) {
        let zxid = self.state.last_zxid();
        if auth.auth.len() > AUTH_CREDENTIAL_BYTES_MAX {
            self.auth_refused_at_limit(
                session_id,
                conn_id,
                xid,
                "AUTH_CREDENTIAL_BYTES_MAX",
                auth.auth.len(),
                AUTH_CREDENTIAL_BYTES_MAX,
            );
            return;
        }
        let ids: Option<Vec<Id>> = match auth.scheme.as_str() {
            "digest" => match std::str::from_utf8(&auth.auth) {
                Ok(cred) if cred.contains(':') => {
                    let digest = coordd_proto::auth::digest_id(cred);
                    let mut ids = Vec::new();
                    if self.config.superuser_digest.as_deref() == Some(digest.as_str()) {
                        ids.push(Id {
                            scheme: "super".into(),
                            id: String::new(),
                        });
                    }
                    ids.push(Id {
                        scheme: "digest".into(),
                        id: digest,
                    });
                    Some(ids)
                }
                _ => None,
            },
            // The ip identity is added at connect; asking for it again changes nothing.
            "ip" => Some(Vec::new()),
            _ => None,
        };
        match ids {
            Some(ids) => {
                let mut held = self
                    .sessions
                    .get(&session_id)
                    .map(|s| s.auth.clone())
                    .unwrap_or_default();
                for id in ids {
                    if !held.contains(&id) {
                        held.push(id);
                    }
                }
                if held.len() > AUTH_IDS_PER_SESSION_MAX {
                    // The session keeps the identities it had; only this connection ends.
                    self.auth_refused_at_limit(
                        session_id,
                        conn_id,
                        xid,
                        "AUTH_IDS_PER_SESSION_MAX",
                        held.len(),
                        AUTH_IDS_PER_SESSION_MAX,
                    );
                    return;
                }
                self.set_auth(session_id, held);
                self.send_reply(conn_id, xid, zxid, ErrorCode::Ok, None);
            }
            None => {
                // ZooKeeper answers AuthFailed and closes the connection. The scheme is
                // the client's (up to a frame): only its start goes into the log line.
                let scheme: String = auth
                    .scheme
                    .chars()
                    .take(AUTH_SCHEME_LOGGED_CHARS_MAX)
                    .collect();
                tracing::info!(conn_id, %scheme, "authentication failed");
                self.send_reply(conn_id, xid, zxid, ErrorCode::AuthFailed, None);
                self.close_conn_after_queued(conn_id);
            }
        }
    }

    /// An addAuth past one of its bounds (`limit`, the constant's name): answered as
    /// ZooKeeper answers a failed authentication, AuthFailed, then the connection closes
    /// after the frames before it (its Java client then stops in AUTH_FAILED); nothing
    /// is added to the session's identities.
    fn auth_refused_at_limit(
        &mut self,
        session_id: SessionId,
        conn_id: u64,
        xid: i32,
        limit: &'static str,
        value: usize,
        max: usize,
    ) {
        self.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
        let peer = self.conns.get(&conn_id).map(|c| c.peer.to_string());
        tracing::warn!(
            session_id = %format_args!("0x{session_id:x}"),
            peer = %peer.as_deref().unwrap_or("-"),
            limit,
            value,
            max,
            "addAuth refused at a limit: AuthFailed, connection closed, no identity added"
        );
        let zxid = self.state.last_zxid();
        self.send_reply(conn_id, xid, zxid, ErrorCode::AuthFailed, None);
        self.close_conn_after_queued(conn_id);
    }

    /// Logs `txn`; its tag (see [`Queued::Write`]), or None when the log queue refused it.
    fn submit(&mut self, txn: Txn, origin: Origin) -> Option<u64> {
        if let Log::Raft(r) = &mut self.log {
            let seq = r.next_seq;
            r.next_seq += 1;
            let len = txn_batch_bytes(&txn);
            r.pending.push((seq, txn, len));
            r.local.insert(seq, origin);
            self.log_pending = true;
            return Some(seq);
        }
        let Log::Local(writer) = &mut self.log else {
            unreachable!("the Raft log returned above")
        };
        let zxid = self.next_zxid;
        let time_ms = now_wall_ms().max(self.last_time_ms);
        let entry = Entry { zxid, time_ms, txn };
        let mut buf = BytesMut::with_capacity(128);
        entry.encode(&mut buf);
        match writer.submit_deferred(zxid, buf.freeze()) {
            Ok(()) => {
                self.log_pending = true;
                self.serial_writer = match origin {
                    Origin::Request { session_id, .. } if session_id == self.serial_writer.0 => {
                        (session_id, self.serial_writer.1.saturating_add(1))
                    }
                    Origin::Request { session_id, .. } => (session_id, 1),
                    Origin::Connect { .. }
                    | Origin::Sync { .. }
                    | Origin::Expire { .. }
                    | Origin::Resume(_)
                    | Origin::Server => (0, 0),
                };
                self.next_zxid += 1;
                self.last_time_ms = time_ms;
                self.inflight.push_back(Inflight { entry, origin });
                Some(zxid as u64)
            }
            Err(e) => {
                self.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "log queue full; refusing a write");
                None
            }
        }
    }

    /// Hands what `submit` queued to the log. Under a serial write load (one session
    /// writing, its write the only request outstanding) the entry is written and
    /// fsynced right here and answered at once; otherwise the log writer thread takes
    /// it, batching it with others under one fsync while this thread serves on.
    fn commit_log(&mut self) -> Result<(), String> {
        if !self.log_pending {
            return Ok(());
        }
        self.log_pending = false;
        let writer = match &mut self.log {
            Log::Local(writer) => writer,
            Log::Raft(_) => {
                self.propose_pending();
                // Whatever did not fit waits for the proposer's `Proposed`.
                return Ok(());
            }
        };
        let serial = self.config.inline_commit
            && self.serial_writer.1 >= SERIAL_WRITES_MIN
            && self.inflight.len() == 1
            && self.metrics.outstanding_requests.load(Ordering::Relaxed) <= 1;
        if !serial {
            writer.kick();
            return Ok(());
        }
        match writer.commit_inline() {
            Ok(Some(zxid)) => {
                self.on_durable(zxid);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Standalone: takes a view of the state now (O(1) in its nodes), and encodes and
    /// writes its image on the blocking pool, so the core goes on serving and the log
    /// writer goes on appending meanwhile (at a million nodes the encoding takes over a
    /// second). One at a time: the next is due only once this one is saved. Every entry up to the view's zxid is durable
    /// (the state only applies durable entries), so the image may follow the entries
    /// submitted meanwhile into the log.
    fn snapshot_in_background(&mut self, writer: LogWriter) {
        let view = self.state.snapshot_view();
        let encoding = self.snapshot_encoding.clone();
        encoding.store(true, Ordering::Release);
        tokio::task::spawn_blocking(move || {
            let zxid = view.zxid();
            // Written here too, not by the log writer, whose appends would wait for it.
            if let Err(e) = writer.snapshot_beside(zxid, &view.encode()) {
                tracing::warn!(error = %e, "snapshot not saved; will try again later");
            }
            encoding.store(false, Ordering::Release);
        });
    }

    fn on_durable(&mut self, zxid: Zxid) {
        while self.inflight.front().is_some_and(|f| f.entry.zxid <= zxid) {
            let f = self.inflight.pop_front().expect("front checked");
            let applied = self.state.apply(&f.entry);
            debug_assert_eq!(applied.zxid, f.entry.zxid);
            self.deliver(applied, f.origin, f.entry.zxid as u64);
            self.entries_since_snapshot += 1;
            let due = self.entries_since_snapshot >= self.config.snapshot_every_entries;
            if due && !self.snapshot_encoding.load(Ordering::Acquire) {
                self.entries_since_snapshot = 0;
                if let Log::Local(writer) = &self.log {
                    self.snapshot_in_background(writer.clone());
                }
            }
        }
    }

    /// Ensemble mode: hands the txns and barriers queued so far to the proposer, as
    /// batches of at most `BATCH_TXNS_MAX` ([`RaftLog::take_batch`]), while it has fewer
    /// than its window (`PROPOSALS_IN_FLIGHT_MAX` on a follower, 1 on the leader); the
    /// rest waits for one of them to be done.
    fn propose_pending(&mut self) {
        let Log::Raft(r) = &mut self.log else { return };
        // The leader's batches go straight into its batcher's entries, which are
        // pipelined there: a second batch of the leader's own would only split its
        // writes over more, smaller entries (measured: 16 sessions on the leader did
        // ~30% fewer writes with 4 than with 1).
        let window = if r.led_term.is_some() {
            1
        } else {
            PROPOSALS_IN_FLIGHT_MAX
        };
        while r.proposing.len() < window {
            let Some(taken) = r.take_batch() else { return };
            let time_ms = now_wall_ms().max(self.last_time_ms);
            self.last_time_ms = time_ms;
            let mut seqs: Vec<u64> = taken.txns.iter().map(|(seq, _)| *seq).collect();
            seqs.extend(&taken.syncs);
            let batch = TxnBatch {
                member: r.me,
                incarnation: r.incarnation,
                time_ms,
                txns: taken.txns,
                syncs: taken.syncs,
            }
            .encode();
            let id = r.next_proposal_id;
            r.next_proposal_id += 1;
            let abandon = CancellationToken::new();
            let sent = r.proposals.try_send(Proposal {
                id,
                batch,
                seqs: seqs.clone(),
                abandon: abandon.clone(),
            });
            if sent.is_ok() {
                let orderers = taken.orderers;
                r.proposing.insert(id, InFlightBatch { abandon, orderers });
            } else {
                self.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(txns = seqs.len(), "proposer gone or full; refusing writes");
                self.propose_failed(seqs);
                return;
            }
        }
    }

    /// Ensemble mode: applies committed entries in log order; the txns of one batch get
    /// consecutive zxids after the tree's last one.
    fn raft_apply(&mut self, entries: Vec<LogEntry>) -> Result<Vec<Bytes>, String> {
        let mut outputs = Vec::with_capacity(entries.len());
        for e in entries {
            let batches = match &e.data {
                EntryData::Payload(payload) => {
                    decode_entry(payload).map_err(|err| format!("log entry {}: {err}", e.index))?
                }
                _ => Vec::new(),
            };
            for batch in batches {
                let from = (batch.member, batch.incarnation);
                for (seq, txn) in batch.txns {
                    let created = match &txn {
                        Txn::CreateSession {
                            session_id,
                            timeout_ms,
                            ..
                        } => Some((*session_id, *timeout_ms)),
                        _ => None,
                    };
                    let entry = Entry {
                        zxid: self.state.last_zxid() + 1,
                        time_ms: batch.time_ms,
                        txn,
                    };
                    let origin = match &mut self.log {
                        Log::Raft(r) => r.take_own(from, seq),
                        Log::Local(_) => None,
                    };
                    let applied = self.state.apply(&entry);
                    debug_assert_eq!(applied.zxid, entry.zxid);
                    match origin {
                        Some(origin) => self.deliver(applied, origin, seq),
                        None => {
                            // Another member's session: known here too, so its client
                            // may move to this member, and the leader can expire it.
                            // Its deadline starts here, but it showed no life here: no
                            // touch goes to the leader (a member catching up after a
                            // restart or a partition applies creations whose clients
                            // may be long gone, and a touch would give each a whole
                            // timeout again at the leader).
                            if let Some((id, timeout_ms)) = created {
                                if self.state.session(id).is_some() {
                                    self.sessions.entry(id).or_insert(LiveSession {
                                        conn_id: None,
                                        auth: Vec::new(),
                                        timeout_ms,
                                        queue: VecDeque::new(),
                                    });
                                    if !self.closing.contains(&id) {
                                        self.deadlines.touch(
                                            id,
                                            Instant::now(),
                                            Duration::from_millis(timeout_ms.max(0) as u64),
                                        );
                                    }
                                }
                            }
                            self.deliver(applied, Origin::Server, 0);
                        }
                    }
                }
                for seq in batch.syncs {
                    let origin = match &mut self.log {
                        Log::Raft(r) => r.take_own(from, seq),
                        Log::Local(_) => None,
                    };
                    match origin {
                        Some(Origin::Sync {
                            session_id,
                            conn_id,
                            xid,
                            path,
                            received,
                        }) => self.answer_sync(session_id, conn_id, xid, path, received, seq),
                        Some(Origin::Resume(b)) => {
                            if self.conns.contains_key(&b.conn.conn_id) {
                                self.on_connect(b.conn, b.req, b.established, true);
                            } else {
                                let _ = b.established.send(None);
                            }
                        }
                        _ => {}
                    }
                }
            }
            outputs.push(Bytes::new());
        }
        Ok(outputs)
    }

    /// Ensemble mode: accepts the parked handshakes (see [`BehindClient`]) once this
    /// member serves and has caught up with the client; refuses the ones past their
    /// deadline (`expire`) or whose connection is gone.
    fn retry_behind_clients(&mut self, expire: bool) {
        let Log::Raft(r) = &mut self.log else { return };
        if r.behind.is_empty() {
            return;
        }
        let now = Instant::now();
        let last_zxid = self.state.last_zxid();
        let serving = r.serving;
        let ready_now = |b: &BehindClient| serving && b.req.last_zxid_seen <= last_zxid;
        let (ready, waiting): (Vec<BehindClient>, Vec<BehindClient>) = r
            .behind
            .drain(..)
            .partition(|b| ready_now(b) || (expire && now >= b.deadline));
        r.behind = waiting;
        for b in ready {
            let conn_id = b.conn.conn_id;
            if !self.conns.contains_key(&conn_id) {
                let _ = b.established.send(None);
            } else if !serving {
                tracing::info!(conn_id, "refusing a client: no quorum here");
                self.drop_conn(conn_id);
                let _ = b.established.send(None);
            } else if b.req.last_zxid_seen <= last_zxid {
                self.on_connect(b.conn, b.req, b.established, false);
            } else {
                tracing::info!(
                    conn_id,
                    client_zxid = b.req.last_zxid_seen,
                    our_zxid = last_zxid,
                    "refusing a client that has seen a newer zxid than this member caught up to"
                );
                self.drop_conn(conn_id);
                let _ = b.established.send(None);
            }
        }
    }

    /// Ensemble mode: a sync's barrier is applied here: every write committed before
    /// it is too. Answered in order with the session's other replies.
    fn answer_sync(
        &mut self,
        session_id: SessionId,
        origin_conn: u64,
        xid: i32,
        path: Option<String>,
        received: Instant,
        seq: u64,
    ) {
        let conn_id = self.sessions.get_mut(&session_id).and_then(|s| {
            let front = s.queue.pop_front();
            debug_assert!(
                matches!(front, Some(Queued::Write(t)) if t == seq),
                "a session's oldest write-path request is the one applied"
            );
            s.conn_id.filter(|c| *c == origin_conn)
        });
        match (conn_id, path) {
            (Some(conn_id), Some(path)) => {
                let zxid = self.state.last_zxid();
                self.send_reply(
                    conn_id,
                    xid,
                    zxid,
                    ErrorCode::Ok,
                    Some(&Response::Sync { path }),
                );
                self.metrics.record_latency(received);
            }
            (None, Some(_)) => self.release_outstanding(Some(origin_conn)),
            // A silent barrier took no permit of the connection.
            (_, None) => self.release_outstanding(None),
        }
        self.drain_reads(session_id);
    }

    /// Ensemble mode: the leader sent a snapshot. The tree is replaced; watches live in
    /// the tree, so every client is disconnected (they reconnect and re-register them),
    /// and this member's writes in flight are failed (their fate is in the image).
    fn raft_install(&mut self, last_index: u64, image: &[u8]) -> Result<(), String> {
        let Log::Raft(r) = &mut self.log else {
            return Err("not in ensemble mode".into());
        };
        let state = StateMachine::restore(r.state_config.clone(), image)
            .map_err(|e| format!("snapshot up to log index {last_index}: {e}"))?;
        let local: Vec<u64> = r.local.keys().copied().collect();
        self.propose_failed(local);
        self.state = state;
        self.close_all();
        let now = Instant::now();
        self.sessions.clear();
        self.closing.clear();
        self.deadlines = SessionDeadlines::default();
        for s in self.state.sessions() {
            self.deadlines.touch(
                s.session_id,
                now,
                Duration::from_millis(s.timeout_ms.max(0) as u64),
            );
            self.sessions.insert(
                s.session_id,
                LiveSession {
                    conn_id: None,
                    auth: Vec::new(),
                    timeout_ms: s.timeout_ms,
                    queue: VecDeque::new(),
                },
            );
        }
        tracing::info!(
            last_index,
            last_zxid = self.state.last_zxid(),
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    /// Ensemble mode: txns that did not reach the log, or whose fate is unknown. Their
    /// clients are disconnected (ConnectionLoss, as ZooKeeper does when it loses its
    /// leader); should such a txn still be applied later, nobody here is answered.
    /// The later requests of their sessions are forgotten with them, and those still
    /// waiting for the proposer (`pending`) never reach the log: proposed as the next
    /// batch, a write could be applied without an earlier write of its session that
    /// never reached the leader (the per-session FIFO order); ZooKeeper drops them too.
    fn propose_failed(&mut self, seqs: Vec<u64>) {
        for seq in seqs {
            let origin = match &mut self.log {
                Log::Raft(r) => r.local.remove(&seq),
                Log::Local(_) => None,
            };
            match origin {
                Some(
                    Origin::Request {
                        session_id,
                        conn_id,
                        ..
                    }
                    | Origin::Sync {
                        session_id,
                        conn_id,
                        ..
                    },
                ) => {
                    // Everything the session has queued came on the connection being
                    // dropped: forget it (its other writes too, should they apply).
                    let cleared: Vec<Queued> = self
                        .sessions
                        .get_mut(&session_id)
                        .map(|s| s.queue.drain(..).collect())
                        .unwrap_or_default();
                    let mut counted = false;
                    for q in &cleared {
                        if let Queued::Write(tag) = q {
                            counted |= *tag == seq;
                            if let Log::Raft(r) = &mut self.log {
                                r.local.remove(tag);
                            }
                        }
                        self.metrics
                            .outstanding_requests
                            .fetch_sub(1, Ordering::Relaxed);
                    }
                    if !counted {
                        self.release_outstanding(None);
                    }
                    self.drop_conn(conn_id);
                    self.close_lost(session_id);
                }
                Some(Origin::Connect {
                    conn_id,
                    established,
                    ..
                }) => {
                    let _ = established.send(None);
                    self.drop_conn(conn_id);
                }
                Some(Origin::Resume(b)) => {
                    // Not validated: the client tries again (here or elsewhere).
                    let _ = b.established.send(None);
                    self.drop_conn(b.conn.conn_id);
                }
                Some(Origin::Expire { session_id }) => {
                    // Expire it again at a later tick.
                    self.closing.remove(&session_id);
                    self.deadlines
                        .touch(session_id, Instant::now(), Duration::from_millis(100));
                }
                Some(Origin::Server) | None => {}
            }
        }
        // Every txn or barrier `submit`/`push_barrier` queued has its origin in `local`
        // until it is applied or failed: one that lost it above goes.
        if let Log::Raft(r) = &mut self.log {
            let local = &r.local;
            r.pending.retain(|(seq, _, _)| local.contains_key(seq));
            r.pending_syncs.retain(|seq| local.contains_key(seq));
        }
    }

    /// A session whose writes were dropped with its connection (`propose_failed`) may
    /// have lost its client's closeSession among them: it then lives on as if the close
    /// was never sent (the client saw ConnectionLoss), and expires by the usual rule, a
    /// timeout from now, unless its client comes back. Left in `closing`, it would have
    /// no deadline here: never expired while this member leads (the nemesis test saw a
    /// closed client's ephemeral outlive every bound under a leader whose forward of the
    /// close had failed). A close of the server's own (an expiry) still on its way keeps
    /// it closing.
    fn close_lost(&mut self, session_id: SessionId) {
        if !self.closing.contains(&session_id) {
            return;
        }
        if let Log::Raft(r) = &self.log {
            let expiring = r
                .local
                .values()
                .any(|o| matches!(o, Origin::Expire { session_id: s } if *s == session_id));
            if expiring {
                return;
            }
        }
        self.closing.remove(&session_id);
        if let Some(s) = self.sessions.get(&session_id) {
            self.deadlines.touch(
                session_id,
                Instant::now(),
                Duration::from_millis(s.timeout_ms.max(0) as u64),
            );
        }
    }

    /// Ensemble mode, every [`QUORUM_POLL_MS`]: serve clients while the Raft member
    /// has a quorum in sight; once it has not, hold everything for them
    /// ([`RaftLog::withheld`]), and close them all once that lasted
    /// `quorum_lost_close_ms`; settle the parked handshakes.
    ///
    /// Holding rather than closing at once: the Raft layer loses sight of the quorum
    /// early (`quorum_timeout_ms`, before anyone else can be elected), and a stall of
    /// the machine looks the same for a moment. Held, such a false alarm costs the
    /// clients latency; closed, it costs every client a reconnect.
    ///
    /// While it serves no one, the batches with the proposer are given up: their
    /// clients were closed, so nobody waits for their answers, and a forward to the leader
    /// may never be answered (the reply lost in the partition) until
    /// `FORWARD_TIMEOUT_MS`. Waiting that out would hold back every later batch of this
    /// member past the heal, among them the barriers that let returning clients resume
    /// their sessions, and the leader would expire sessions shorter than that meanwhile.
    /// A batch given up is in doubt, as one that timed out; its sessions' later txns are
    /// dropped with their connections (`propose_failed`), so none of them can reach the
    /// log ahead of it.
    fn on_quorum_poll(&mut self) {
        let Log::Raft(r) = &mut self.log else { return };
        let Some(member) = r.member.get().cloned() else {
            return;
        };
        let now = Instant::now();
        if member.quorum_ok() {
            r.quorum_lost_since = None;
            if let Some(withheld) = r.withheld.take() {
                if r.serving {
                    tracing::info!(
                        frames = withheld.len(),
                        "quorum in sight again: sending what was held for clients"
                    );
                }
                for (out, item) in withheld {
                    let _ = out.send(item);
                }
            }
            if !r.serving {
                tracing::info!("quorum in sight: serving clients");
            }
            r.serving = true;
        } else {
            let since = *r.quorum_lost_since.get_or_insert(now);
            if r.withheld.is_none() {
                r.begin_hold();
            }
            if r.serving && now - since >= Duration::from_millis(r.quorum_lost_close_ms) {
                tracing::warn!(
                    lost_ms = (now - since).as_millis() as u64,
                    "cut off from the quorum: closing every client so it moves to the majority"
                );
                r.serving = false;
                // Every client is closed: what they sent that is not with the proposer
                // yet goes, as a ZooKeeper follower that lost its leader drops its queued
                // requests. Proposed later, it could only be in doubt (given up below
                // while this member serves no one), or applied after the heal for
                // clients told ConnectionLoss long before.
                let queued: Vec<u64> = r
                    .pending
                    .iter()
                    .map(|(seq, _, _)| *seq)
                    .chain(r.pending_syncs.iter().copied())
                    .collect();
                // Nor do the touches not yet sent: they go to the leader once the quorum
                // is back, and a member paused or cut off would then give sessions whose
                // clients vanished meanwhile a whole timeout again at the leader. Its
                // clients, now closed, touch their sessions wherever they reconnect.
                r.touched.clear();
                // What was held goes unsent: the clients it was for are being closed
                // (`close_all` below). A connection already taken out of `conns` to
                // close after its held frames closes now.
                let withheld = r.withheld.as_mut().map(std::mem::take).unwrap_or_default();
                for (out, item) in withheld {
                    if matches!(item, Outbound::Close) {
                        let _ = out.send(Outbound::Close);
                    }
                }
                self.close_all();
                self.propose_failed(queued);
            }
        }
        if let Log::Raft(r) = &self.log {
            if !r.serving {
                let live = r.proposing.values().filter(|b| !b.abandon.is_cancelled());
                let given_up = live.map(|b| b.abandon.cancel()).count();
                if given_up > 0 {
                    tracing::info!(
                        given_up,
                        "serving no one: giving up the batches with the proposer"
                    );
                }
            }
        }
        self.retry_behind_clients(true);
    }

    /// Every expiry tick. Standalone: expire sessions. Ensemble: only the leader
    /// expires, and only while a quorum hears it; it gives every session a whole
    /// timeout when it becomes leader (it did not see their heartbeats before); the
    /// other members send the leader the sessions that showed life here.
    fn on_tick(&mut self) {
        let Log::Raft(r) = &mut self.log else {
            self.expire_sessions();
            return;
        };
        let Some(member) = r.member.get().cloned() else {
            return;
        };
        if !r.serving {
            return;
        }
        // By term, not by a tick that saw it not leading: ticks stop while the member does
        // not serve, and a leader cut off or paused may lose office and win it back
        // without any tick in between, while the touches went to another leader.
        let leading_term = member.leading_term();
        let leading = leading_term.is_some();
        let became_leader = leadership_began(r.led_term, leading_term);
        r.led_term = leading_term;
        if leading {
            r.touched.clear();
            if became_leader {
                let now = Instant::now();
                let timeouts: Vec<(SessionId, i32)> = self
                    .sessions
                    .iter()
                    .map(|(id, s)| (*id, s.timeout_ms))
                    .collect();
                for (id, timeout_ms) in timeouts {
                    self.deadlines
                        .touch(id, now, Duration::from_millis(timeout_ms.max(0) as u64));
                }
            }
            if member.quorum_ok() {
                self.expire_sessions();
            }
            return;
        }
        let (Some(leader), false) = (member.leader(), r.touched.is_empty()) else {
            return;
        };
        let ids: Vec<SessionId> = r.touched.drain().collect();
        tokio::spawn(async move {
            let body = AppMsg::Touch(ids).encode();
            if let Err(e) = member
                .call_app(leader, body, Duration::from_millis(FORWARD_TIMEOUT_MS))
                .await
            {
                tracing::debug!(error = %e, leader, "touch not delivered to the leader");
            }
        });
    }

    /// Sends what applying one txn produced: its watch events, and its reply when it
    /// came from this server (`tag` identifies it in its session's queue).
    fn deliver(&mut self, applied: Applied, origin: Origin, tag: u64) {
        for n in &applied.notifications {
            if let Some(conn_id) = self.sessions.get(&n.session_id).and_then(|s| s.conn_id) {
                self.push(conn_id, event_frame(&n.event));
            }
        }
        match origin {
            Origin::Request {
                session_id,
                conn_id: origin_conn,
                xid,
                received,
            } => {
                let conn_id = self.sessions.get_mut(&session_id).and_then(|s| {
                    let front = s.queue.pop_front();
                    debug_assert!(
                        matches!(front, Some(Queued::Write(t)) if t == tag),
                        "a session's oldest write is the one applied"
                    );
                    // Only on the connection it came in on (see `serve_read`).
                    s.conn_id.filter(|c| *c == origin_conn)
                });
                match conn_id {
                    Some(conn_id) => {
                        match &applied.result {
                            Ok(resp) => self.send_reply(
                                conn_id,
                                xid,
                                applied.zxid,
                                ErrorCode::Ok,
                                Some(resp),
                            ),
                            Err(e) => self.send_reply(conn_id, xid, applied.zxid, *e, None),
                        }
                        self.metrics.record_latency(received);
                    }
                    None => self.release_outstanding(Some(origin_conn)),
                }
                self.drain_reads(session_id);
            }
            Origin::Connect {
                conn_id,
                session_id,
                established,
            } => {
                match self.state.session(session_id) {
                    Some(info) if self.conns.contains_key(&conn_id) => {
                        self.sessions.insert(
                            info.session_id,
                            LiveSession {
                                conn_id: Some(conn_id),
                                auth: Vec::new(),
                                timeout_ms: info.timeout_ms,
                                queue: VecDeque::new(),
                            },
                        );
                        self.attach_session(conn_id, &info, established);
                    }
                    Some(info) => {
                        // The client left before its session was durable: the session
                        // exists and will expire unless the client comes back with it.
                        self.sessions.insert(
                            info.session_id,
                            LiveSession {
                                conn_id: None,
                                auth: Vec::new(),
                                timeout_ms: info.timeout_ms,
                                queue: VecDeque::new(),
                            },
                        );
                        self.touch(info.session_id);
                        let _ = established.send(None);
                    }
                    None => {
                        tracing::error!("session creation did not create a session");
                        self.drop_conn(conn_id);
                        let _ = established.send(None);
                    }
                }
            }
            Origin::Sync { .. } | Origin::Resume(_) => {
                debug_assert!(false, "barriers are answered where they are applied")
            }
            Origin::Expire { .. } | Origin::Server => {}
        }
        for closed in &applied.closed_sessions {
            self.end_session(*closed);
        }
    }

    /// Answers the reads a session queued behind the write just applied, up to its next
    /// write.
    fn drain_reads(&mut self, session_id: SessionId) {
        loop {
            let Some(s) = self.sessions.get_mut(&session_id) else {
                return;
            };
            match s.queue.front() {
                Some(Queued::Read { .. }) => {
                    let Some(Queued::Read {
                        conn_id,
                        xid,
                        work,
                        received,
                    }) = s.queue.pop_front()
                    else {
                        unreachable!("front is a read")
                    };
                    self.serve_read(session_id, conn_id, xid, work, received);
                }
                Some(Queued::Write(t)) => {
                    let t = *t;
                    if self
                        .reconfigs
                        .get(&session_id)
                        .is_some_and(|p| p.seq == t && p.outcome.is_some())
                    {
                        self.finish_reconfig(session_id);
                    }
                    return;
                }
                _ => return,
            }
        }
    }

    fn end_session(&mut self, session_id: SessionId) {
        tracing::info!(
            session_id = format!("0x{session_id:x}"),
            "session ended (closed or expired)"
        );
        self.closing.remove(&session_id);
        self.deadlines.remove(session_id);
        self.state.remove_session_watches(session_id);
        if let Some(s) = self.sessions.remove(&session_id) {
            if let Some(conn_id) = s.conn_id {
                self.close_conn_after_queued(conn_id);
            }
        }
    }

    fn expire_sessions(&mut self) {
        let expired = self.deadlines.take_expired(Instant::now());
        for session_id in expired {
            if self.closing.contains(&session_id) {
                continue;
            }
            tracing::info!(session_id = format!("0x{session_id:x}"), "session expired");
            self.closing.insert(session_id);
            if self
                .submit(
                    Txn::CloseSession { session_id },
                    Origin::Expire { session_id },
                )
                .is_none()
            {
                // The log is full; try again at the next tick.
                self.closing.remove(&session_id);
                self.deadlines
                    .touch(session_id, Instant::now(), Duration::from_millis(100));
            }
        }
    }

    fn delete_expired_nodes(&mut self) {
        const PATHS_PER_ENTRY_MAX: usize = 1000;
        // Paths are bounded only by the frame limit: 1000 long ones would pass the
        // Raft payload limit, and the entry would be refused at every tick.
        const PATH_BYTES_PER_ENTRY_MAX: usize = 256 * 1024;
        // In an ensemble only the leader removes them (one proposal, not one per member).
        if let Log::Raft(r) = &self.log {
            let leading = r.member.get().is_some_and(|m| m.role() == Role::Leader);
            if !leading {
                return;
            }
        }
        let paths =
            self.state
                .expired_paths(now_wall_ms(), PATHS_PER_ENTRY_MAX, PATH_BYTES_PER_ENTRY_MAX);
        if !paths.is_empty() {
            tracing::debug!(
                count = paths.len(),
                "removing empty containers and expired TTL nodes"
            );
            self.submit(Txn::DeleteExpired { paths }, Origin::Server);
        }
    }

    fn send_reply(
        &mut self,
        conn_id: u64,
        xid: i32,
        zxid: Zxid,
        err: ErrorCode,
        body: Option<&Response>,
    ) {
        self.push(conn_id, reply_frame(xid, zxid, err, body));
        self.release_outstanding(Some(conn_id));
    }

    fn release_outstanding(&mut self, conn_id: Option<u64>) {
        self.metrics
            .outstanding_requests
            .fetch_sub(1, Ordering::Relaxed);
        if let Some(c) = conn_id.and_then(|c| self.conns.get(&c)) {
            c.permits.add_permits(1);
        }
    }

    /// Queues a frame; a connection whose queue is over its bound is cut off.
    fn push(&mut self, conn_id: u64, frame: Bytes) {
        let Some(c) = self.conns.get(&conn_id) else {
            return;
        };
        let queued = c.queued_bytes.fetch_add(frame.len(), Ordering::Relaxed) + frame.len();
        if queued > self.config.outbound_bytes_max {
            self.metrics.limit_hits.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                conn_id,
                peer = %c.peer,
                session_id = %format_args!("0x{:x}", c.stats.session_id.load(Ordering::Relaxed)),
                queued_bytes = queued,
                limit = self.config.outbound_bytes_max,
                "client does not read its replies: disconnecting (outbound_bytes_max)"
            );
            self.drop_conn(conn_id);
            return;
        }
        self.metrics.packets_sent.fetch_add(1, Ordering::Relaxed);
        c.stats.sent.fetch_add(1, Ordering::Relaxed);
        let out = c.out.clone();
        self.send_or_withhold(out, Outbound::Frame(frame));
    }

    /// Closes a connection once the frames queued before now are written.
    fn close_conn_after_queued(&mut self, conn_id: u64) {
        if let Some(c) = self.conns.remove(&conn_id) {
            self.send_or_withhold(c.out, Outbound::Close);
        }
    }

    /// Hands `item` to its connection's writer, or holds it while this member has no
    /// quorum in sight ([`RaftLog::withheld`]). The quorum's sight is checked against the
    /// clock here, for every frame, and not only by the 10 ms poll: a member that runs
    /// late (woken from SIGSTOP, starved) must not answer from a state a new leader may
    /// have moved past.
    fn send_or_withhold(&mut self, out: mpsc::UnboundedSender<Outbound>, item: Outbound) {
        if let Log::Raft(r) = &mut self.log {
            if r.withheld.is_none() {
                let now = Instant::now();
                if r.answer_until.is_none_or(|until| now >= until) {
                    r.answer_until = r
                        .member
                        .get()
                        .and_then(|m| m.quorum_fresh_until())
                        .map(|until| until.into_std());
                    if r.answer_until.is_none_or(|until| now >= until) {
                        r.begin_hold();
                    }
                }
            }
            if let Some(withheld) = &mut r.withheld {
                withheld.push((out, item));
                return;
            }
        }
        let _ = out.send(item);
    }

    /// Closes a connection at once, dropping what is queued.
    fn drop_conn(&mut self, conn_id: u64) {
        if let Some(c) = self.conns.remove(&conn_id) {
            c.kill.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raft_log() -> RaftLog {
        let (proposals, _) = mpsc::channel(1);
        let (durable, _) = mpsc::unbounded_channel();
        RaftLog::new(
            1,
            Arc::default(),
            proposals,
            durable,
            StateConfig::default(),
            300,
        )
    }

    /// Queues a txn of `session` (0: the server's own) and returns its sequence number.
    fn queue_txn(r: &mut RaftLog, session: SessionId) -> u64 {
        let seq = r.next_seq;
        r.next_seq += 1;
        let (txn, origin) = if session == 0 {
            (Txn::DeleteExpired { paths: Vec::new() }, Origin::Server)
        } else {
            let origin = Origin::Request {
                session_id: session,
                conn_id: 1,
                xid: seq as i32,
                received: Instant::now(),
            };
            (
                Txn::CloseSession {
                    session_id: session,
                },
                origin,
            )
        };
        let len = txn_batch_bytes(&txn);
        r.pending.push((seq, txn, len));
        r.local.insert(seq, origin);
        seq
    }

    /// Queues a setData of `data_bytes` bytes of `session` and returns its sequence number.
    fn queue_set_data(r: &mut RaftLog, session: SessionId, data_bytes: usize) -> u64 {
        let seq = r.next_seq;
        r.next_seq += 1;
        let txn = Txn::Write {
            session_id: session,
            auth: Vec::new(),
            request: Request::SetData(coordd_proto::SetDataRequest {
                path: "/n".into(),
                data: vec![7; data_bytes],
                version: -1,
            }),
        };
        let len = txn_batch_bytes(&txn);
        r.pending.push((seq, txn, len));
        r.local.insert(
            seq,
            Origin::Request {
                session_id: session,
                conn_id: 1,
                xid: seq as i32,
                received: Instant::now(),
            },
        );
        seq
    }

    /// The bytes of a taken batch as the proposer sends it.
    fn encoded_bytes(b: &TakenBatch) -> usize {
        TxnBatch {
            member: 1,
            incarnation: 1,
            time_ms: 0,
            txns: b.txns.clone(),
            syncs: b.syncs.clone(),
        }
        .encode()
        .len()
    }

    fn queue_sync(r: &mut RaftLog, session: SessionId) -> u64 {
        r.push_barrier(Origin::Sync {
            session_id: session,
            conn_id: 1,
            xid: 0,
            path: Some("/".into()),
            received: Instant::now(),
        })
    }

    fn seqs(b: &TakenBatch) -> (Vec<u64>, Vec<u64>) {
        (b.txns.iter().map(|(s, _)| *s).collect(), b.syncs.clone())
    }

    fn in_flight(r: &mut RaftLog, b: TakenBatch) {
        let id = r.next_proposal_id;
        r.next_proposal_id += 1;
        let abandon = CancellationToken::new();
        r.proposing.insert(
            id,
            InFlightBatch {
                abandon,
                orderers: b.orderers,
            },
        );
    }

    #[test]
    fn a_batch_leaves_out_the_sessions_with_a_batch_in_flight_and_keeps_each_order() {
        let mut r = raft_log();
        let a1 = queue_txn(&mut r, 7);
        let first = r.take_batch().expect("something to propose");
        assert_eq!(seqs(&first), (vec![a1], vec![]));
        in_flight(&mut r, first);

        // Session 7 has a batch in flight: its next txn and its sync wait; session 8's
        // txn, its sync and the server's own go.
        let a2 = queue_txn(&mut r, 7);
        let b1 = queue_txn(&mut r, 8);
        let s1 = queue_txn(&mut r, 0);
        let a_sync = queue_sync(&mut r, 7);
        let b_sync = queue_sync(&mut r, 8);
        let second = r.take_batch().expect("something to propose");
        assert_eq!(seqs(&second), (vec![b1, s1], vec![b_sync]));
        assert_eq!(
            r.pending.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(),
            vec![a2]
        );
        assert_eq!(r.pending_syncs, vec![a_sync]);
        in_flight(&mut r, second);

        // Everyone has a batch in flight: nothing goes.
        assert!(r.take_batch().is_none());
        assert_eq!(r.pending.len(), 1);
        assert_eq!(r.pending_syncs.len(), 1);

        // Once session 7's batch is done, its txn and then its sync go together.
        let first_id = *r.proposing.keys().min().expect("two in flight");
        r.proposing.remove(&first_id);
        let third = r.take_batch().expect("session 7's turn");
        assert_eq!(seqs(&third), (vec![a2], vec![a_sync]));
        assert!(r.pending.is_empty() && r.pending_syncs.is_empty());
    }

    #[test]
    fn what_does_not_fit_in_a_batch_holds_back_the_later_items_of_its_session() {
        let mut r = raft_log();
        let many: Vec<u64> = (0..BATCH_TXNS_MAX).map(|_| queue_txn(&mut r, 7)).collect();
        let over = queue_txn(&mut r, 7);
        let other = queue_txn(&mut r, 8);
        let sync = queue_sync(&mut r, 7);
        let full = r.take_batch().expect("a full batch");
        assert_eq!(seqs(&full), (many, vec![]));
        in_flight(&mut r, full);
        // Session 8's txn did not fit either; it goes next, session 7's wait for theirs.
        let next = r.take_batch().expect("session 8's txn");
        assert_eq!(seqs(&next), (vec![other], vec![]));
        assert_eq!(
            r.pending.iter().map(|(s, _, _)| *s).collect::<Vec<_>>(),
            vec![over]
        );
        assert_eq!(r.pending_syncs, vec![sync]);
    }

    /// One session's pipelined large writes wait behind its batch in flight and were then
    /// taken together, bounded by count only (six setData of ~1 MB: one ~5 MB batch, over
    /// coordd-raft's payload limit). Now a batch stops at `BATCH_BYTES_MAX`; a txn larger
    /// than that still goes, alone.
    #[test]
    fn batches_are_bounded_in_bytes_and_a_single_large_txn_still_goes() {
        let mut r = raft_log();
        let big: Vec<u64> = (0..6)
            .map(|_| queue_set_data(&mut r, 7, 1_000_000))
            .collect();
        let other = queue_set_data(&mut r, 8, 10);
        let other_sync = queue_sync(&mut r, 8);
        // The first large write fills the batch; the next one would pass the bound, so it
        // and the session's later ones stay; session 8's small txn and barrier still fit.
        let first = r.take_batch().expect("a batch");
        assert_eq!(seqs(&first), (vec![big[0], other], vec![other_sync]));
        assert!(encoded_bytes(&first) <= BATCH_BYTES_MAX + 33);
        in_flight(&mut r, first);
        assert!(r.take_batch().is_none(), "session 7 has a batch in flight");
        for (i, want) in big.iter().enumerate().skip(1) {
            let id = *r.proposing.keys().next().expect("one in flight");
            r.proposing.remove(&id);
            let next = r.take_batch().expect("session 7's next write");
            assert_eq!(seqs(&next), (vec![*want], vec![]), "batch {i}");
            assert!(encoded_bytes(&next) <= BATCH_BYTES_MAX + 33);
            in_flight(&mut r, next);
        }

        // A write larger than the bound goes, alone; what comes after it waits.
        let mut r = raft_log();
        let huge = queue_set_data(&mut r, 9, BATCH_BYTES_MAX + 1);
        let small = queue_set_data(&mut r, 10, 10);
        let alone = r.take_batch().expect("the large write");
        assert_eq!(seqs(&alone), (vec![huge], vec![]));
        let next = r.take_batch().expect("the small write, in the next batch");
        assert_eq!(seqs(&next), (vec![small], vec![]));
    }
}
