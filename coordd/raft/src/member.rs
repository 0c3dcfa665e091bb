//! [`Member`]: one running Raft member and the calls the server makes on it.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, InitializeError, RaftError,
};
use openraft::raft::AppendEntriesResponse;
use openraft::{BasicNode, RaftMetrics, ServerState};
use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::applier::{Applier, Membership};
use crate::config::{Config, ConfigError};
use crate::log_store::LogStore;
use crate::network::{
    NetworkFactory, PeerRequest, PeerResponse, RequestBody, ResponseBody, Transport, TransportError,
};
use crate::state_machine::{membership_view, SharedSm, StateMachine};
use crate::types::{Raft, Snapshot};
use crate::MemberId;

/// What a member currently is in its ensemble.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    /// Campaigning for leadership.
    Candidate,
    /// Receives the log but does not vote: a member being added ([`Member::change_membership`]),
    /// or one started with [`Member::start_joining`] that was not added yet.
    Learner,
    /// Shut down, or stopped by a fatal error.
    Shutdown,
}

/// A committed proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The log index of the entry.
    pub index: u64,
    /// The term it was committed in.
    pub term: u64,
    /// What [`Applier::apply`] returned for it on this member.
    pub output: Bytes,
}

/// The outcome of [`Member::initialize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initialized {
    /// This call wrote the initial membership.
    Now,
    /// The member already had a log or a vote (it was initialized before, by itself or by
    /// hearing from a member that was): nothing changed.
    Already,
}

/// A point-in-time view of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: MemberId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<MemberId>,
    /// The leader's address from the membership, when the leader is known.
    pub leader_addr: Option<String>,
    /// See [`Member::quorum_ok`].
    pub quorum_ok: bool,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Last index the newest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// Last index purged from the log (entries up to it are only in snapshots).
    pub purged_index: Option<u64>,
    /// The membership in effect (the last one appended, committed or not).
    pub membership: Membership,
    /// The log index of the entry that holds `membership` (None before there is one): the
    /// configuration's version.
    pub membership_index: Option<u64>,
    /// Counters since this member started.
    pub counters: Counters,
}

/// What a member counted since it started (for `mntr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Leaders this member saw take office (a new term with a known leader), itself
    /// included: elections that produced a leader.
    pub leader_changes: u64,
    /// Of those, the times this member became leader.
    pub leaderships: u64,
    /// Proposals committed through [`Member::propose`] on this member (as leader).
    pub commits: u64,
    /// Their total and largest time from the call to the commit, in microseconds.
    pub commit_us_total: u64,
    pub commit_us_max: u64,
    /// Times this member's RaftCore was restarted in-process after a recoverable stop.
    pub restarts: u64,
    /// Log entries read back from disk because they were older than the ones the log keeps
    /// decoded in memory (a follower catching up from behind, a re-apply after a restart).
    pub log_entries_read_back: u64,
}

/// [`Counters`], shared with the metrics watcher.
#[derive(Default)]
struct CounterCells {
    leader_changes: AtomicU64,
    leaderships: AtomicU64,
    commits: AtomicU64,
    commit_us_total: AtomicU64,
    commit_us_max: AtomicU64,
    restarts: AtomicU64,
    /// The log's own counter of entries read back from disk.
    log_entries_read_back: Arc<AtomicU64>,
}

impl CounterCells {
    fn read(&self) -> Counters {
        Counters {
            leader_changes: self.leader_changes.load(Ordering::Relaxed),
            leaderships: self.leaderships.load(Ordering::Relaxed),
            commits: self.commits.load(Ordering::Relaxed),
            commit_us_total: self.commit_us_total.load(Ordering::Relaxed),
            commit_us_max: self.commit_us_max.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
            log_entries_read_back: self.log_entries_read_back.load(Ordering::Relaxed),
        }
    }

    fn commit_took(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.commit_us_total.fetch_add(us, Ordering::Relaxed);
        self.commit_us_max.fetch_max(us, Ordering::Relaxed);
    }
}

/// [`Member::call_app`] failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AppCallError {
    #[error("member {0} is not in the membership")]
    UnknownMember(MemberId),
    #[error(transparent)]
    Transport(TransportError),
    /// The target answered that it could not handle the message.
    #[error("refused: {0}")]
    Refused(String),
}

/// [`Member::propose`] failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This member is not the leader; nothing was appended, so sending the payload to the
    /// leader is safe. `leader` is None while no leader is known (an election).
    #[error("not the leader (leader: {leader:?} at {leader_addr:?})")]
    NotLeader {
        leader: Option<MemberId>,
        leader_addr: Option<String>,
    },
    /// Not committed within `propose_timeout_ms`. The outcome is unknown: the entry may have
    /// been appended and may still commit (typical of a leader that was just cut off), so it
    /// must not be resent blindly.
    #[error("no commit within {after_ms} ms; the entry may still commit")]
    Timeout { after_ms: u64 },
    /// The payload exceeds `payload_max_bytes`; nothing was appended.
    #[error("payload of {bytes} bytes exceeds the limit of {max_bytes}")]
    TooLarge { bytes: usize, max_bytes: usize },
    /// The member was shut down.
    #[error("member is shut down")]
    Shutdown,
    /// The member stopped on a fatal error (storage or applier).
    #[error("member stopped: {0}")]
    Fatal(String),
}

/// [`Member::read_index`] failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReadIndexError {
    /// Only the leader answers; ask `leader`.
    #[error("not the leader (leader: {leader:?} at {leader_addr:?})")]
    NotLeader {
        leader: Option<MemberId>,
        leader_addr: Option<String>,
    },
    /// The leader could not confirm its leadership with a quorum in one heartbeat round.
    #[error("leadership not confirmed by a quorum")]
    NoQuorum,
    #[error("no read index within {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("member is shut down")]
    Shutdown,
    #[error("member stopped: {0}")]
    Fatal(String),
}

/// [`Member::start`] or [`Member::initialize`] failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The membership given is unusable (empty, or without this member).
    #[error("bad membership: {0}")]
    Membership(String),
    #[error("initialize did not finish within {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("member is shut down")]
    Shutdown,
    /// openraft refused to start (e.g. the log store failed while loading).
    #[error("raft failed: {0}")]
    Fatal(String),
}

/// A wait on the member's state did not succeed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WaitError {
    #[error("condition not met within {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("member is shut down")]
    Shutdown,
}

/// [`Member::shutdown`] did not finish cleanly.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ShutdownError {
    #[error("shutdown did not finish within {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("raft task failed: {0}")]
    Panicked(String),
}

/// The last AppendEntries this member accepted (follower side of [`Member::quorum_ok`]).
#[derive(Clone, Copy)]
struct Contact {
    leader: MemberId,
    term: u64,
    at: Instant,
}

/// When a quorum last acknowledged this member as leader, in `term`.
#[derive(Clone, Copy)]
struct Ack {
    term: u64,
    at: Instant,
}

/// Whether nothing listens at `addr` any more: the connect is refused, or it lands in the
/// backlog of a listener that is being closed (a process dying closes its connections
/// and its listener one after the other, so a probe can slip in between) and is reset
/// or closed at once. A live peer server holds a new connection open while it waits for
/// the handshake, so `wait` passes: alive. A timeout of the connect: unknown, not gone.
async fn peer_process_gone(addr: &str, wait: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    match tokio::time::timeout(wait, tokio::net::TcpStream::connect(addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Err(_) => false,
        Ok(Ok(mut stream)) => {
            let mut byte = [0u8; 1];
            matches!(
                tokio::time::timeout(wait, stream.read(&mut byte)).await,
                Ok(Ok(0)) | Ok(Err(_))
            )
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only plain assignments of Copy values happen under these locks.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One running member. Clones are handles to the same member.
///
/// A member runs one openraft RaftCore at a time. When it stops on the one error known not to
/// be a failure of the log or the state machine (openraft 0.9.25's replication-channel race,
/// see [`REPLICATION_CHANNEL_CLOSED`]), the member starts a new RaftCore on the same log and
/// state machine and its handles keep working; calls made while it does fail as on a stopped
/// member (`role` is `Shutdown`, `quorum_ok` false). Any other stop is for good.
#[derive(Clone)]
pub struct Member {
    pub(crate) inner: Arc<Inner>,
}

/// Handles application messages ([`PeerRequest::app`]) sent to this member: the body in,
/// the answer (or why not) out. Runs concurrently with Raft; must bound its own waits.
pub type AppHandler =
    Arc<dyn Fn(Bytes) -> Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>> + Send + Sync>;

/// The member's transport, type-erased, for application calls.
type AppCaller = Arc<
    dyn Fn(
            MemberId,
            String,
            PeerRequest,
            Duration,
        ) -> Pin<Box<dyn Future<Output = Result<PeerResponse, TransportError>> + Send>>
        + Send
        + Sync,
>;

pub(crate) struct Inner {
    pub(crate) id: MemberId,
    /// The RaftCore this member runs now, replaced when it restarts after a recoverable stop
    /// (see [`Member::start`]).
    life: watch::Sender<Life>,
    app_handler: Mutex<Option<AppHandler>>,
    app_caller: AppCaller,
    pub(crate) config: Config,
    /// The seed membership given at start (the log's membership wins once there is one).
    members: BTreeMap<MemberId, String>,
    /// Held by the membership change in progress on this member (one at a time).
    pub(crate) reconfig: tokio::sync::Mutex<()>,
    contact: Mutex<Option<Contact>>,
    ack: Arc<Mutex<Option<Ack>>>,
    /// Follows the current RaftCore's metrics ([`follow_quorum_acks`]).
    watcher: Mutex<JoinHandle<()>>,
    /// Waits for the current RaftCore to stop and restarts it when that is safe.
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// Starts a new RaftCore on this member's log and state machine.
    restarter: Box<dyn Restart>,
    /// Held while a RaftCore is being replaced, and by [`Member::shutdown`], so that a shutdown
    /// never leaves a RaftCore started behind its back.
    replacing: tokio::sync::Mutex<()>,
    shut_down: AtomicBool,
    counters: Arc<CounterCells>,
}

/// The RaftCore a member runs and where it stands.
#[derive(Clone)]
struct Life {
    /// Counts the RaftCores this member started (0 = the first).
    generation: u64,
    raft: Raft,
    phase: Phase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `raft` is current: running, or stopped and not judged yet.
    Current,
    /// `raft` stopped on an error that is not a storage or state machine failure; a new
    /// RaftCore is being started.
    Restarting,
    /// Stopped for good (shut down, a fatal error, or a restart that failed).
    Stopped,
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.watcher).abort();
        if let Some(s) = lock(&self.supervisor).take() {
            s.abort();
        }
    }
}

/// Restarts of a member's RaftCore allowed within [`RESTART_WINDOW`]; one more stops the
/// member as a fatal error would. The recoverable stop is a rare race, so more than a few in
/// a short time means something else is wrong, and a member must not spin restarting.
const RESTARTS_MAX: usize = 3;
const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// The text of the one fatal error of openraft 0.9.25 that a restart recovers from: RaftCore
/// sends a snapshot command to a replication stream that has just ended (it saw a higher vote
/// from its target, or failed to read the log, and reported it to RaftCore), before RaftCore
/// has handled that report (core/raft_core.rs, `Command::Replicate` with
/// `Inflight::Snapshot`). Sends of log entries and heartbeats to an ended stream are ignored
/// there; this one is reported as a storage error although no storage was involved.
const REPLICATION_CHANNEL_CLOSED: &str = "when Read Snapshot(None): replication channel closed";

/// Whether `fatal` is a stop a new RaftCore on the same log and state machine recovers from:
/// only [`REPLICATION_CHANNEL_CLOSED`]. Every other fatal error (a failed write or fsync, a
/// state machine that failed, a panic) stays fatal: an fsync error must never be retried, since
/// the kernel may have dropped the dirty pages it failed to write (PostgreSQL's "fsyncgate").
/// A replication stream ends on a log read error too, and the race can then hide that
/// error; the new RaftCore meets it again if it persists (and the restart budget stops the
/// member if it keeps happening).
fn recoverable(fatal: &Fatal<u64>) -> bool {
    match fatal {
        Fatal::StorageError(openraft::StorageError::IO { source }) => {
            source.to_string() == REPLICATION_CHANNEL_CLOSED
        }
        _ => false,
    }
}

/// Starts a new RaftCore for a member whose previous one stopped (type-erased: the member is
/// not generic over its log, applier and transport).
trait Restart: Send + Sync {
    fn start_again(&self) -> Pin<Box<dyn Future<Output = Result<Raft, String>> + Send + '_>>;
}

/// What it takes to start a RaftCore again: the same log (a clone shares it), the same
/// state machine state (the applier goes on from where it is), a new network factory over
/// the same transport.
struct Restarter<L, A: Applier, T> {
    id: MemberId,
    raft_config: Arc<openraft::Config>,
    log: L,
    state: SharedSm<A>,
    transport: Arc<T>,
    backoff: Duration,
    /// Resolves once the current RaftCore's state machine worker has ended.
    worker_gone: Mutex<Option<oneshot::Receiver<()>>>,
    /// How long to wait for that.
    wait: Duration,
}

impl<L: LogStore, A: Applier, T: Transport> Restart for Restarter<L, A, T> {
    fn start_again(&self) -> Pin<Box<dyn Future<Output = Result<Raft, String>> + Send + '_>> {
        Box::pin(async move {
            let gone = lock(&self.worker_gone).take();
            if let Some(gone) = gone {
                // Sender dropped (Err) is the signal; nothing is ever sent.
                if tokio::time::timeout(self.wait, gone).await.is_err() {
                    return Err(format!(
                        "the stopped RaftCore's state machine worker did not end within {} ms",
                        as_millis(self.wait)
                    ));
                }
            }
            let (state_machine, gone) = StateMachine::successor(self.state.clone());
            *lock(&self.worker_gone) = Some(gone);
            let network = NetworkFactory {
                transport: self.transport.clone(),
                id: self.id,
                backoff: self.backoff,
            };
            Raft::new(
                self.id,
                self.raft_config.clone(),
                network,
                self.log.clone(),
                state_machine,
            )
            .await
            .map_err(|e| e.to_string())
        })
    }
}

type Metrics = RaftMetrics<u64, BasicNode>;

/// Follows openraft's metrics and turns `millis_since_quorum_ack` into the instant of the last
/// quorum acknowledgement. Stamping an instant (rather than reading the millis when asked) makes
/// the age keep growing if RaftCore stops reporting, so a stuck leader reads as cut off. The
/// metric is computed when RaftCore flushes it and seen here a little later, which makes the
/// instant late by that scheduling delay (microseconds, one runtime); `quorum_timeout_ms`
/// leaves far more margin than that.
/// It also counts the leaders taking office (see [`Counters`]).
async fn follow_quorum_acks(
    id: MemberId,
    mut rx: watch::Receiver<Metrics>,
    ack: Arc<Mutex<Option<Ack>>>,
    counters: Arc<CounterCells>,
) {
    let mut last_leader: Option<(u64, MemberId)> = None;
    loop {
        let seen = {
            // Copy out and release the metrics before taking our lock: RaftCore's next
            // report waits for readers.
            let m = rx.borrow_and_update();
            if let Some(leader) = m.current_leader {
                let now = (m.current_term, leader);
                if last_leader != Some(now) {
                    last_leader = Some(now);
                    counters.leader_changes.fetch_add(1, Ordering::Relaxed);
                    if leader == id {
                        counters.leaderships.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            match (m.state, m.millis_since_quorum_ack) {
                (ServerState::Leader, Some(ms)) => Instant::now()
                    .checked_sub(Duration::from_millis(ms))
                    .map(|at| Ack {
                        term: m.current_term,
                        at,
                    }),
                _ => None,
            }
        };
        {
            let mut g = lock(&ack);
            *g = match (*g, seen) {
                // Never move backwards within a term.
                (Some(old), Some(new)) if old.term == new.term && old.at > new.at => Some(old),
                (_, seen) => seen,
            };
        }
        if rx.changed().await.is_err() {
            // RaftCore is gone.
            *lock(&ack) = None;
            return;
        }
    }
}

/// The fields of the metrics [`Member::quorum_ok`] needs, copied out of the watch.
#[derive(Clone, Copy)]
struct QuorumView {
    stopped: bool,
    state: ServerState,
    term: u64,
    leader: Option<MemberId>,
}

impl QuorumView {
    fn of(m: &Metrics) -> Self {
        Self {
            stopped: m.running_state.is_err(),
            state: m.state,
            term: m.current_term,
            leader: m.current_leader,
        }
    }
}

fn role_of(m: &Metrics) -> Role {
    if m.running_state.is_err() {
        return Role::Shutdown;
    }
    match m.state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}

fn leader_hint(f: ForwardToLeader<u64, BasicNode>) -> (Option<MemberId>, Option<String>) {
    (f.leader_id, f.leader_node.map(|n| n.addr))
}

fn as_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Member {
    /// Starts member `id` of the ensemble `members` (id -> peer address, this member included)
    /// and initializes it (see [`Member::initialize`]).
    ///
    /// `members` must be identical on every member on first start (build it from the same
    /// configuration text, no normalisation): initializing with different memberships splits
    /// the ensemble. After the first start the log's membership is authoritative and `members`
    /// is only the seed.
    pub async fn start<L: LogStore, A: Applier, T: Transport>(
        config: Config,
        id: MemberId,
        members: BTreeMap<MemberId, String>,
        log: L,
        applier: A,
        transport: T,
    ) -> Result<Member, StartError> {
        Self::start_with(config, id, members, log, applier, transport, true).await
    }

    /// Starts member `id` to join an ensemble that already runs: like [`Member::start`] but it
    /// never initializes a cluster. A new member waits (as a learner without a leader, serving
    /// nothing) until the leader adds it ([`Member::change_membership`]); a member that has a
    /// log uses the membership in it. `members` is only a seed (the current members and this
    /// one).
    pub async fn start_joining<L: LogStore, A: Applier, T: Transport>(
        config: Config,
        id: MemberId,
        members: BTreeMap<MemberId, String>,
        log: L,
        applier: A,
        transport: T,
    ) -> Result<Member, StartError> {
        Self::start_with(config, id, members, log, applier, transport, false).await
    }

    async fn start_with<L: LogStore, A: Applier, T: Transport>(
        config: Config,
        id: MemberId,
        members: BTreeMap<MemberId, String>,
        log: L,
        applier: A,
        transport: T,
        initialize: bool,
    ) -> Result<Member, StartError> {
        config.validate()?;
        let raft_config = Arc::new(config.to_openraft()?);
        if !members.contains_key(&id) {
            return Err(StartError::Membership(format!(
                "member {id} is not among {:?}",
                members.keys().collect::<Vec<_>>()
            )));
        }
        let transport = Arc::new(transport);
        let app_caller: AppCaller = {
            let transport = transport.clone();
            Arc::new(move |target, addr: String, request, ttl| {
                let transport = transport.clone();
                Box::pin(async move { transport.call(target, &addr, request, ttl).await })
            })
        };
        // A durable log brings the state machine's last snapshot: the applier must hold it
        // before openraft reads the initial state (it re-applies the log after it).
        let mut first = StateMachine::new(applier, log.snapshot_store());
        let log_entries_read_back = log.entries_read_back();
        first
            .restore()
            .await
            .map_err(|e| StartError::Fatal(e.to_string()))?;
        let restarter = Restarter {
            id,
            raft_config,
            log,
            state: first.shared(),
            transport,
            backoff: Duration::from_millis(config.unreachable_backoff_ms),
            worker_gone: Mutex::new(None),
            wait: config.shutdown_timeout(),
        };
        drop(first);
        // The first start is a restart from nothing: the same code path every time.
        let raft = restarter.start_again().await.map_err(StartError::Fatal)?;
        let ack = Arc::new(Mutex::new(None));
        let counters = Arc::new(CounterCells {
            log_entries_read_back,
            ..CounterCells::default()
        });
        let watcher = tokio::spawn(follow_quorum_acks(
            id,
            raft.metrics(),
            ack.clone(),
            counters.clone(),
        ));
        let (life, _) = watch::channel(Life {
            generation: 0,
            raft,
            phase: Phase::Current,
        });
        let member = Member {
            inner: Arc::new(Inner {
                id,
                life,
                app_handler: Mutex::new(None),
                app_caller,
                config,
                members,
                contact: Mutex::new(None),
                ack,
                watcher: Mutex::new(watcher),
                supervisor: Mutex::new(None),
                restarter: Box::new(restarter),
                replacing: tokio::sync::Mutex::new(()),
                shut_down: AtomicBool::new(false),
                counters,
                reconfig: tokio::sync::Mutex::new(()),
            }),
        };
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&member.inner)));
        *lock(&member.inner.supervisor) = Some(supervisor);
        if !initialize {
            tracing::info!(
                id,
                seed = ?member.inner.members,
                "raft member started to join an existing ensemble: it does not initialize; it waits to be added (reconfig) or uses the membership in its log"
            );
            return Ok(member);
        }
        match member.initialize().await {
            Ok(how) => {
                tracing::info!(id, ?how, members = ?member.inner.members, "raft member started")
            }
            Err(e) => {
                // Do not leave a Raft running behind a failed start. The start error is the one
                // worth reporting; a failed shutdown on top of it adds nothing.
                tracing::warn!(id, error = %e, "raft member failed to initialize; shutting it down");
                let _ = member.shutdown().await;
                return Err(e);
            }
        }
        Ok(member)
    }

    /// Writes the initial membership (the `members` given to [`Member::start`]) as log entry 0
    /// and campaigns, unless this member was initialized before or already heard from one that
    /// was: then openraft refuses (`NotAllowed`) and this returns [`Initialized::Already`].
    /// Every member calls it on start, so it is idempotent and never rewrites a log.
    ///
    /// Caveat (slice 2/3): a member whose data was wiped looks pristine and would initialize
    /// again; it must be re-added as a new member instead.
    pub async fn initialize(&self) -> Result<Initialized, StartError> {
        let nodes: BTreeMap<u64, BasicNode> = self
            .inner
            .members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        let t = self.inner.config.propose_timeout();
        match tokio::time::timeout(t, self.raft().initialize(nodes)).await {
            Err(_) => Err(StartError::Timeout {
                after_ms: as_millis(t),
            }),
            Ok(Ok(())) => Ok(Initialized::Now),
            Ok(Err(RaftError::APIError(InitializeError::NotAllowed(_)))) => {
                Ok(Initialized::Already)
            }
            Ok(Err(RaftError::APIError(InitializeError::NotInMembers(e)))) => {
                Err(StartError::Membership(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => Err(StartError::Shutdown),
            Ok(Err(RaftError::Fatal(f))) => Err(StartError::Fatal(f.to_string())),
        }
    }

    pub fn id(&self) -> MemberId {
        self.inner.id
    }

    /// The RaftCore this member runs now (a handle; it may stop and be replaced later).
    pub(crate) fn raft(&self) -> Raft {
        self.inner.life.borrow().raft.clone()
    }

    /// Member `id`'s peer address: from the membership in effect, else from the seed.
    pub fn addr_of(&self, id: MemberId) -> Option<String> {
        let from_log = {
            let rx = self.raft().metrics();
            let m = rx.borrow();
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        };
        from_log.or_else(|| self.inner.members.get(&id).cloned())
    }

    /// The voters of the membership in effect (the seed's members before there is one).
    fn voter_ids(&self) -> Vec<MemberId> {
        let voters: Vec<MemberId> = {
            let rx = self.raft().metrics();
            let m = rx.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        if voters.is_empty() {
            self.inner.members.keys().copied().collect()
        } else {
            voters
        }
    }

    /// Appends `payload` to the log (on the leader) and waits until it is committed and applied
    /// on this member, for at most `propose_timeout_ms`.
    pub async fn propose(&self, payload: Bytes) -> Result<Committed, ProposeError> {
        let max_bytes = self.inner.config.payload_max_bytes;
        if payload.len() > max_bytes {
            return Err(ProposeError::TooLarge {
                bytes: payload.len(),
                max_bytes,
            });
        }
        let t = self.inner.config.propose_timeout();
        let started = Instant::now();
        let written = tokio::time::timeout(t, self.raft().client_write(payload)).await;
        if matches!(written, Ok(Ok(_))) {
            self.inner.counters.commit_took(started.elapsed());
        }
        match written {
            // The future is dropped; if the entry was appended it stays in the log and commits
            // or is truncated later, and openraft's responder then finds nobody listening.
            Err(_) => {
                tracing::warn!(
                    id = self.inner.id,
                    after_ms = as_millis(t),
                    "propose timed out; its outcome is unknown"
                );
                Err(ProposeError::Timeout {
                    after_ms: as_millis(t),
                })
            }
            Ok(Ok(r)) => Ok(Committed {
                index: r.log_id.index,
                term: r.log_id.leader_id.term,
                output: r.data,
            }),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                let (leader, leader_addr) = leader_hint(f);
                Err(ProposeError::NotLeader {
                    leader,
                    leader_addr,
                })
            }
            // Only membership changes produce this; a plain write cannot.
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ProposeError::Fatal(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => Err(ProposeError::Shutdown),
            Ok(Err(RaftError::Fatal(f))) => Err(ProposeError::Fatal(f.to_string())),
        }
    }

    /// ReadIndex: on the leader, confirms leadership with a quorum (one heartbeat round) and
    /// returns the log index a member must have applied before serving a linearizable read
    /// (the greater of the commit index and the leader's own blank entry, so it can be the
    /// index of a blank entry; 0 when nothing but the initial membership exists). Bounded by
    /// `read_index_timeout_ms`. Pair with [`Member::wait_applied`].
    pub async fn read_index(&self) -> Result<u64, ReadIndexError> {
        let t = self.inner.config.read_index_timeout();
        match tokio::time::timeout(t, self.raft().get_read_log_id()).await {
            Err(_) => Err(ReadIndexError::Timeout {
                after_ms: as_millis(t),
            }),
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                let (leader, leader_addr) = leader_hint(f);
                Err(ReadIndexError::NotLeader {
                    leader,
                    leader_addr,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(ReadIndexError::NoQuorum)
            }
            Ok(Err(RaftError::Fatal(Fatal::Stopped))) => Err(ReadIndexError::Shutdown),
            Ok(Err(RaftError::Fatal(f))) => Err(ReadIndexError::Fatal(f.to_string())),
        }
    }

    /// Waits until this member has applied `index`; returns the applied index.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<u64, WaitError> {
        let status = self
            .wait_for(timeout, |s| s.applied_index.is_some_and(|a| a >= index))
            .await?;
        Ok(status.applied_index.unwrap_or(index))
    }

    /// Waits until `cond` holds for this member's [`Status`]; checked on every change openraft
    /// reports (at least once per tick, `heartbeat_interval_ms * 3 / 2`) and returns the status
    /// that satisfied it. Fails with `Shutdown` once the member stopped, unless `cond` accepts
    /// that.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        cond: impl Fn(&Status) -> bool,
    ) -> Result<Status, WaitError> {
        let deadline = Instant::now() + timeout;
        let timed_out = || WaitError::Timeout {
            after_ms: as_millis(timeout),
        };
        let mut life = self.inner.life.subscribe();
        loop {
            let (generation, raft, phase) = {
                let l = life.borrow_and_update();
                (l.generation, l.raft.clone(), l.phase)
            };
            let mut rx = raft.metrics();
            loop {
                let m = rx.borrow_and_update().clone();
                let status = self.status_from(&m);
                // A RaftCore that stopped while the member goes on (a restart is coming or
                // under way) says nothing about the member: wait for the next one.
                let between = status.role == Role::Shutdown
                    && phase != Phase::Stopped
                    && !self.inner.shut_down.load(Ordering::Acquire);
                if !between {
                    if cond(&status) {
                        return Ok(status);
                    }
                    if status.role == Role::Shutdown {
                        return Err(WaitError::Shutdown);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => return Err(timed_out()),
                    changed = rx.changed(), if !between => {
                        if changed.is_err() {
                            // RaftCore is gone; its last report is in, so look once more.
                            let m = rx.borrow().clone();
                            if self.status_from(&m).role != Role::Shutdown {
                                return Err(WaitError::Shutdown);
                            }
                        }
                    }
                    changed = life.changed() => {
                        if changed.is_err() {
                            return Err(WaitError::Shutdown);
                        }
                        let l = life.borrow();
                        if l.generation != generation || l.phase != phase {
                            break;
                        }
                    }
                }
            }
        }
    }

    pub fn role(&self) -> Role {
        if self.inner.shut_down.load(Ordering::Acquire) {
            return Role::Shutdown;
        }
        role_of(&self.raft().metrics().borrow())
    }

    /// The term this member leads in, None unless it is the leader (role and term from
    /// one reading of the metrics). A member that loses office and wins it back leads in
    /// a later term, so a change of this value is a new leadership even when nobody saw
    /// the member not leading in between.
    pub fn leading_term(&self) -> Option<u64> {
        if self.inner.shut_down.load(Ordering::Acquire) {
            return None;
        }
        let rx = self.raft().metrics();
        let m = rx.borrow();
        (role_of(&m) == Role::Leader).then_some(m.current_term)
    }

    /// The leader this member knows of (itself when it leads).
    pub fn leader(&self) -> Option<MemberId> {
        self.raft().metrics().borrow().current_leader
    }

    /// The last applied log index (None before anything was applied).
    pub fn applied_index(&self) -> Option<u64> {
        self.raft().metrics().borrow().last_applied.map(|l| l.index)
    }

    /// Whether this member may serve its clients: it is the leader and a quorum acknowledged it
    /// within `quorum_timeout_ms`, or it is a follower that accepted an AppendEntries
    /// (heartbeats included) from its current leader within `quorum_timeout_ms`. False for a
    /// candidate, a learner, and once shut down.
    ///
    /// openraft 0.9 has no CheckQuorum: a cut-off leader stays leader. This is the signal to
    /// stop serving instead (DESIGN.md 6: a server that has lost the quorum stops serving).
    pub fn quorum_ok(&self) -> bool {
        self.quorum_fresh_until()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Until when [`Member::quorum_ok`] stays true if nothing new is heard: the last
    /// quorum acknowledgement (leader) or AppendEntries from the leader (follower) plus
    /// `quorum_timeout_ms`. None when it is false whatever the time (a candidate, a
    /// learner, no contact in this term, shut down). A caller that checks it against the
    /// clock before each answer it sends never answers past the quorum's sight, however
    /// late it runs (a process woken from SIGSTOP).
    pub fn quorum_fresh_until(&self) -> Option<Instant> {
        let view = {
            let rx = self.raft().metrics();
            let m = rx.borrow();
            QuorumView::of(&m)
        };
        self.quorum_fresh_until_with(view)
    }

    fn quorum_ok_with(&self, m: QuorumView) -> bool {
        self.quorum_fresh_until_with(m)
            .is_some_and(|until| Instant::now() < until)
    }

    fn quorum_fresh_until_with(&self, m: QuorumView) -> Option<Instant> {
        if self.inner.shut_down.load(Ordering::Acquire) || m.stopped {
            return None;
        }
        let limit = self.inner.config.quorum_timeout();
        match m.state {
            ServerState::Leader => (*lock(&self.inner.ack))
                .filter(|a| a.term == m.term)
                .map(|a| a.at + limit),
            ServerState::Follower => (*lock(&self.inner.contact))
                .filter(|c| m.leader == Some(c.leader) && c.term == m.term)
                .map(|c| c.at + limit),
            _ => None,
        }
    }

    pub fn status(&self) -> Status {
        // A copy, so no lock of ours is taken while RaftCore's metrics are borrowed.
        let m = self.raft().metrics().borrow().clone();
        self.status_from(&m)
    }

    fn status_from(&self, m: &Metrics) -> Status {
        let mut role = role_of(m);
        if self.inner.shut_down.load(Ordering::Acquire) {
            role = Role::Shutdown;
        }
        let membership = m.membership_config.membership();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone());
        Status {
            id: self.inner.id,
            role,
            term: m.current_term,
            leader: m.current_leader,
            leader_addr,
            quorum_ok: self.quorum_ok_with(QuorumView::of(m)),
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            membership: membership_view(membership),
            membership_index: m.membership_config.log_id().map(|l| l.index),
            counters: self.inner.counters.read(),
        }
    }

    /// The transport's inbound connection from member `from` closed (not by our own
    /// shutdown). When `from` is this follower's leader and its peer address now refuses
    /// connections, its process is gone (kill -9, crash, shutdown; a host that vanished
    /// refuses nothing and is left to the election timer): campaign as soon as the other
    /// voters' leader lease has run out, instead of after lease + election timeout.
    ///
    /// Safety does not depend on this (Raft elects safely whenever a campaign starts);
    /// it only moves the campaign earlier. It never moves it before the voters' lease
    /// (`election_timeout_max_ms` after the leader's last AppendEntries, plus a margin),
    /// so a leader that only lost this one connection keeps its term: the probe finds it
    /// alive, and even when it does not, the voters that still hear it reject the vote.
    /// Survivors go in member-id order, `heartbeat_interval_ms` apart, so that two of them
    /// do not split the vote.
    pub fn peer_link_lost(&self, from: MemberId) {
        let this = self.clone();
        tokio::spawn(async move { this.campaign_if_leader_gone(from).await });
    }

    async fn campaign_if_leader_gone(&self, gone: MemberId) {
        let Some(contact) = *lock(&self.inner.contact) else {
            return;
        };
        let still_following = |member: &Member| {
            let rx = member.raft().metrics();
            let m = rx.borrow();
            m.state == ServerState::Follower
                && m.current_leader == Some(gone)
                && m.current_term == contact.term
        };
        if contact.leader != gone || gone == self.inner.id || !still_following(self) {
            return;
        }
        let Some(addr) = self.addr_of(gone) else {
            return;
        };
        let heartbeat = Duration::from_millis(self.inner.config.heartbeat_interval_ms);
        if !peer_process_gone(&addr, heartbeat).await {
            // Alive (or unknown): the election timer decides, as always.
            return;
        }
        let rank = self
            .voter_ids()
            .iter()
            .filter(|id| **id != gone && **id < self.inner.id)
            .count() as u32;
        // Not before the voters' lease ends (they would refuse the vote), nor before a
        // leader that is only cut off (its port refused by a partition, not dead) has
        // stopped serving: `quorum_timeout_ms` after its last acknowledged heartbeat.
        let lease = Duration::from_millis(self.inner.config.election_timeout_max_ms);
        let wait = lease.max(self.inner.config.quorum_timeout());
        let at = contact.at + wait + heartbeat / 2 + heartbeat * rank;
        tokio::time::sleep_until(at).await;
        let contact_now = *lock(&self.inner.contact);
        let unchanged = contact_now.is_some_and(|c| c.at == contact.at && c.term == contact.term);
        if !unchanged || !still_following(self) {
            return;
        }
        tracing::info!(
            id = self.inner.id,
            leader = gone,
            %addr,
            "the leader's process is gone (its peer address refuses connections): campaigning once the voters' lease ends"
        );
        if let Err(e) = self.raft().trigger().elect().await {
            tracing::debug!(id = self.inner.id, error = %e, "could not trigger an election");
        }
    }

    /// Serves a request another member's Raft sent through a [`Transport`]. The receiving side
    /// of every transport calls this.
    pub async fn handle_peer_request(&self, request: PeerRequest) -> PeerResponse {
        let raft = self.raft();
        let raft = &raft;
        PeerResponse(match request.0 {
            RequestBody::AppendEntries(rpc) => {
                // Taken before handling: the contact is dated no later than it happened.
                let received = Instant::now();
                let leader = rpc.vote.leader_id().voted_for();
                let term = rpc.vote.leader_id().term;
                let from_leader = rpc.vote.is_committed();
                match raft.append_entries(rpc).await {
                    Ok(resp) => {
                        // Accepted unless it names a higher vote: the sender is our leader.
                        if from_leader && !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
                            if let Some(leader) = leader {
                                let mut g = lock(&self.inner.contact);
                                if g.is_none_or_older(term, received) {
                                    *g = Some(Contact {
                                        leader,
                                        term,
                                        at: received,
                                    });
                                }
                            }
                        }
                        ResponseBody::AppendEntries(resp)
                    }
                    Err(e) => ResponseBody::Refused(e.to_string()),
                }
            }
            RequestBody::App(body) => {
                let handler = lock(&self.inner.app_handler).clone();
                match handler {
                    Some(h) => match h(body).await {
                        Ok(answer) => ResponseBody::App(answer),
                        Err(why) => ResponseBody::Refused(why),
                    },
                    None => ResponseBody::Refused("no application handler on this member".into()),
                }
            }
            RequestBody::Vote(rpc) => match raft.vote(rpc).await {
                Ok(r) => ResponseBody::Vote(r),
                Err(e) => ResponseBody::Refused(e.to_string()),
            },
            RequestBody::Snapshot { vote, meta, image } => {
                match raft
                    .install_full_snapshot(
                        vote,
                        Snapshot {
                            meta,
                            snapshot: Box::new(image),
                        },
                    )
                    .await
                {
                    Ok(r) => ResponseBody::Snapshot(r),
                    Err(e) => ResponseBody::Refused(e.to_string()),
                }
            }
        })
    }

    /// Sets the handler of application messages sent to this member (replacing any
    /// earlier one). Until one is set they are refused.
    pub fn set_app_handler(&self, handler: AppHandler) {
        *lock(&self.inner.app_handler) = Some(handler);
    }

    /// Sends an application message to member `target` (at its address in the membership,
    /// else in the seed) and waits at most `timeout` for the answer of its [`AppHandler`].
    pub async fn call_app(
        &self,
        target: MemberId,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, AppCallError> {
        let Some(addr) = self.addr_of(target) else {
            return Err(AppCallError::UnknownMember(target));
        };
        self.call_app_at(target, addr, body, timeout).await
    }

    /// [`Member::call_app`] to an explicit address (e.g. a member just removed from the
    /// membership).
    pub async fn call_app_at(
        &self,
        target: MemberId,
        addr: String,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, AppCallError> {
        let call = (self.inner.app_caller)(target, addr, PeerRequest::app(body), timeout);
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(AppCallError::Transport(TransportError::Timeout)),
            Ok(Err(e)) => Err(AppCallError::Transport(e)),
            Ok(Ok(resp)) => resp.into_app().map_err(AppCallError::Refused),
        }
    }

    /// Stops the member: RaftCore, the state machine worker and replication. Calls on it then
    /// fail with `Shutdown`. Idempotent; bounded by `shutdown_timeout_ms`.
    pub async fn shutdown(&self) -> Result<(), ShutdownError> {
        tracing::info!(id = self.inner.id, "raft member shutting down");
        self.inner.shut_down.store(true, Ordering::Release);
        let t = self.inner.config.shutdown_timeout();
        let stop = async {
            // After a restart in progress, if any: the RaftCore it starts is the one to stop.
            let _replacing = self.inner.replacing.lock().await;
            lock(&self.inner.watcher).abort();
            let raft = self.raft();
            let stopped = raft.shutdown().await;
            self.inner.life.send_modify(|l| l.phase = Phase::Stopped);
            stopped
        };
        match tokio::time::timeout(t, stop).await {
            Err(_) => Err(ShutdownError::Timeout {
                after_ms: as_millis(t),
            }),
            Ok(Err(e)) => Err(ShutdownError::Panicked(e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }
}

/// Waits until `raft`'s RaftCore has stopped and returns why.
async fn stopped_with(raft: &Raft) -> Fatal<u64> {
    let mut rx = raft.metrics();
    loop {
        if let Err(f) = &rx.borrow_and_update().running_state {
            return f.clone();
        }
        if rx.changed().await.is_err() {
            // RaftCore ended without saying why (it reports why before it ends).
            return rx
                .borrow()
                .running_state
                .clone()
                .err()
                .unwrap_or(Fatal::Panicked);
        }
    }
}

/// The member's supervisor: waits for its RaftCore to stop; a recoverable stop (see
/// [`recoverable`]) within the restart budget starts a new RaftCore on the same log and state
/// machine, anything else leaves the member stopped for good (the server then stops).
async fn supervise(member: Weak<Inner>) {
    let mut restarts: VecDeque<Instant> = VecDeque::new();
    loop {
        let (generation, raft) = {
            let Some(inner) = member.upgrade() else {
                return;
            };
            let l = inner.life.borrow();
            (l.generation, l.raft.clone())
        };
        let fatal = stopped_with(&raft).await;
        let Some(inner) = member.upgrade() else {
            return;
        };
        let id = inner.id;
        let _replacing = inner.replacing.lock().await;
        let stop_for_good = |why: &str| {
            if !matches!(fatal, Fatal::Stopped) {
                tracing::error!(id, error = %fatal, why, "the raft member stopped on a fatal error");
            }
            inner.life.send_modify(|l| l.phase = Phase::Stopped);
        };
        if inner.shut_down.load(Ordering::Acquire) {
            stop_for_good("it was being shut down");
            return;
        }
        if !recoverable(&fatal) {
            stop_for_good("a storage, state machine or internal failure: not retried");
            return;
        }
        let now = Instant::now();
        while restarts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > RESTART_WINDOW)
        {
            restarts.pop_front();
        }
        if restarts.len() >= RESTARTS_MAX {
            stop_for_good("restarted too often already");
            return;
        }
        restarts.push_back(now);
        tracing::warn!(
            id,
            error = %fatal,
            "RaftCore stopped on openraft's replication-channel race (not a storage failure); restarting it on the same log and state machine"
        );
        inner.life.send_modify(|l| l.phase = Phase::Restarting);
        // Stops what is left of the old one (its tick loop); its RaftCore has ended already.
        let _ = tokio::time::timeout(inner.config.shutdown_timeout(), raft.shutdown()).await;
        let raft = match inner.restarter.start_again().await {
            Ok(raft) => raft,
            Err(e) => {
                tracing::error!(id, error = %e, "could not restart RaftCore");
                stop_for_good("the restart failed");
                return;
            }
        };
        *lock(&inner.ack) = None;
        {
            let mut watcher = lock(&inner.watcher);
            watcher.abort();
            *watcher = tokio::spawn(follow_quorum_acks(
                id,
                raft.metrics(),
                inner.ack.clone(),
                inner.counters.clone(),
            ));
        }
        inner.counters.restarts.fetch_add(1, Ordering::Relaxed);
        inner.life.send_replace(Life {
            generation: generation + 1,
            raft,
            phase: Phase::Current,
        });
        tracing::info!(id, generation = generation + 1, "RaftCore restarted");
    }
}

trait ContactExt {
    fn is_none_or_older(&self, term: u64, at: Instant) -> bool;
}

impl ContactExt for Option<Contact> {
    /// Whether a contact in `term` at `at` is newer than this one (contacts never go back).
    fn is_none_or_older(&self, term: u64, at: Instant) -> bool {
        match self {
            None => true,
            Some(c) => term > c.term || (term == c.term && at >= c.at),
        }
    }
}
