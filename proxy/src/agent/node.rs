//! One agent: connect, bootstrap or fail-safe start, then the election loop; on any
//! end of the session, fence a primary and start over with a new session.

use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coordd_client::{Client, ClientConfig, CreateMode, ErrorCode, Events, MultiOp, Stat};
use coordd_proto::perms;
use coordd_proto::records::{CheckVersionRequest, SetDataRequest};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::guard::{FenceGuard, GuardLink, GuardTarget};
use super::{acl, Settings};
use crate::election::{self, Epoch, Leadership, LeaseState, StartAs};
use crate::pg::{
    self, Conninfo, InitdbOptions, PgBinaries, PgError, PgServer, StopMode, SyncStandbys,
};
use crate::records::{
    self, ClusterConfig, InitializeRecord, LeaderRecord, LeaderState, Lsn, MemberRecord,
    MemberState, Record, RecordError, Role, SwitchoverRequest, SwitchoverStatus, SyncRecord,
};

/// How often the leader's watchdog checks the lease.
pub const FENCE_CHECK: Duration = Duration::from_millis(100);
/// How long a session that ended with an error waits for the local PostgreSQL to say it
/// is a standby before stopping it anyway. The master's watchdog is gone by then, so the
/// lease is unwatched while this runs: keep it short (a healthy local server answers in
/// milliseconds; one that does not answer in this time may be a hung primary).
const FENCE_STANDBY_CHECK_TIMEOUT_MS: u64 = 1_000;
/// A session that lasted at least this long before it ended with an error is followed by
/// a new one at once; shorter ones back off (an error that repeats at every start, e.g.
/// NoAuth or a malformed record, would otherwise open and close a coordd session, two
/// logged writes, in a tight loop on every agent).
const SESSION_STABLE_MS: u64 = 10_000;
/// The first wait after a session shorter than [`SESSION_STABLE_MS`]; doubled per
/// further short session up to [`SESSION_RESTART_DELAY_MAX_MS`].
const SESSION_RESTART_DELAY_MIN_MS: u64 = 100;
const SESSION_RESTART_DELAY_MAX_MS: u64 = 5_000;
/// Bound on one status check of the local PostgreSQL (connect if needed, then the role
/// and position queries) in the publish loop: a hung server holds the loop (and its
/// handling of `leader` events and shutdown) this long at most per tick.
const STATUS_CHECK_TIMEOUT_MS: u64 = 2_000;
/// Backoff between attempts to open a coordd session: from the first to the last.
const COORD_CONNECT_DELAY_MIN_MS: u64 = 100;
const COORD_CONNECT_DELAY_MAX_MS: u64 = 5_000;
/// Floor of a coordd request's timeout: the session timeout, but never below this (a
/// short session on a loaded ensemble would otherwise time out healthy requests).
const COORD_REQUEST_TIMEOUT_MS_MIN: u32 = 2_000;
/// TCP connect timeout of the agent's SQL connections (the whole connect and login is
/// bounded by `pg::SQL_CONNECT_TIMEOUT_MS`).
const PG_TCP_CONNECT_TIMEOUT_S: u32 = 5;
/// Bound on one PostgreSQL command (`pg_ctl`, `pg_rewind`, ...) but copies.
const PG_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval while a candidate waits (up to `FRESH_WAIT`) for fresh member records.
const FRESH_POLL: Duration = Duration::from_millis(25);
/// Upper bound on waiting for a watch event before re-reading anyway.
const REPOLL: Duration = Duration::from_secs(1);
/// How long a candidate waits for its peers' member records written after the
/// `leader` vacancy before it compares with older ones.
const FRESH_WAIT: Duration = Duration::from_millis(500);
/// `pg_promote(wait_seconds)`.
const PROMOTE_WAIT_S: i32 = 60;
/// How long the master waits for a new `synchronous_standby_names` to show in every
/// WAL sender (`pg_stat_replication.sync_state`) before it tries again on the next tick.
const SYNC_APPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for PostgreSQL to apply a reloaded setting.
const SYNC_APPLY_POLL: Duration = Duration::from_millis(20);
/// Switchover: how long the stopped master waits for `to` to have received its last WAL
/// record (the shutdown checkpoint) before it gives up and starts again as the master.
const SWITCHOVER_CATCHUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Switchover: how long the other replicas leave a vacant `leader` to `to` before they
/// race as in a failover (`to` died or cannot win).
const SWITCHOVER_HOLD_BACK: Duration = Duration::from_secs(10);
/// Poll interval while waiting for `to` to catch up.
const SWITCHOVER_POLL: Duration = Duration::from_millis(10);
/// A follower on an older timeline than its leader whose replay has not moved for this
/// long has diverged ([`election::diverged`]) and rewinds.
const DIVERGED_AFTER: Duration = Duration::from_secs(10);

/// The master's synchronous standbys (DESIGN.md 4.6), kept so that every acknowledged
/// commit is on at least one node of the `sync` record:
/// - adding standbys to a named set: publish `sync` first, then PostgreSQL;
/// - anything else (removing, or naming standbys where the setting was the `ANY 1 (*)`
///   placeholder): PostgreSQL first; once the new setting shows in every WAL sender,
///   note our WAL position; publish once one of the named standbys flushed that far
///   (commits acknowledged before the change may be on a standby that left the set).
#[derive(Debug, Clone)]
struct SyncTrack {
    /// What `synchronous_standby_names` is set to.
    pg: SyncStandbys,
    /// The standbys of our `sync` record, sorted.
    published: Vec<String>,
    /// Our WAL insert position once `pg` was in effect.
    pending_lsn: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Cannot go on at all (bad data directory, binaries missing): exit non-zero.
    #[error("{0}")]
    Fatal(String),
    #[error("coordd: {0}")]
    Coord(#[from] coordd_client::Error),
    #[error("postgresql: {0}")]
    Pg(#[from] PgError),
    #[error("{0}")]
    Record(#[from] RecordError),
    /// The session is over (expired, closed, fenced, leadership lost): start over.
    #[error("session ended: {0}")]
    SessionEnded(String),
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn is_code(e: &coordd_client::Error, code: ErrorCode) -> bool {
    e.code() == Some(code)
}

/// Runs the agent until SIGINT/SIGTERM (Ok) or a fatal error.
pub async fn run_agent(settings: Settings) -> Result<()> {
    let bins = PgBinaries::find(settings.pg_bindir.as_deref())
        .map_err(|e| AgentError::Fatal(format!("PostgreSQL binaries: {e}")))?;
    let opts = pg::PgOptions {
        os_user: settings.os_user.clone(),
        command_timeout: PG_COMMAND_TIMEOUT,
        ..pg::PgOptions::default()
    };
    let server = PgServer::new(bins, &settings.pg_data, opts)
        .map_err(|e| AgentError::Fatal(format!("PostgreSQL: {e}")))?;
    // Before anything can start PostgreSQL: from here on it stops when this process dies
    // (or hangs as master).
    let guard = FenceGuard::spawn(&GuardTarget {
        pg_data: settings.pg_data.clone(),
        pg_bindir: settings.pg_bindir.clone(),
        os_user: settings.os_user.clone(),
    })
    .map_err(|e| AgentError::Fatal(format!("starting the fence guard: {e}")))?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = shutdown_tx.send(true);
    });
    let secret: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..32)
            .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
            .collect()
    };
    let agent = Agent {
        s: settings,
        pg: server,
        secret,
        shutdown,
        guard: guard.link(),
    };
    let res = agent.run().await;
    // Ending by itself, the agent has stopped (or fenced) its PostgreSQL as it should.
    tokio::task::spawn_blocking(move || guard.stand_down())
        .await
        .map_err(|e| AgentError::Fatal(format!("standing the fence guard down: {e}")))?;
    res
}

struct Agent {
    s: Settings,
    pg: PgServer,
    /// This process's digest password: `leader` is writable by this process only.
    secret: String,
    shutdown: watch::Receiver<bool>,
    /// The fence guard's pipe: the master's watchdog keeps its fencing deadline there.
    guard: GuardLink,
}

impl Agent {
    async fn run(mut self) -> Result<()> {
        let mut restart_delay = Duration::ZERO;
        loop {
            let Some((client, events)) = self.connect().await else {
                return self.shut_down(None).await;
            };
            let session_started = tokio::time::Instant::now();
            info!(
                session = format!("{:#x}", client.session_id()),
                timeout_ms = client.session_timeout_ms(),
                "connected to coordd"
            );
            let mut session = Session::new(&self, client.clone(), events);
            let res = session.run().await;
            drop(session); // aborts the fencing watchdog
            match res {
                Ok(()) => return self.shut_down(Some(client)).await,
                Err(e @ AgentError::Fatal(_)) => {
                    error!("{e}");
                    self.fence_if_primary().await;
                    let _ = client.close().await;
                    return Err(e);
                }
                Err(e) => {
                    warn!("{e}; fencing if primary and starting over with a new session");
                    self.fence_if_primary().await;
                    let _ = client.close().await;
                }
            }
            restart_delay = next_restart_delay(restart_delay, session_started.elapsed());
            if !restart_delay.is_zero() {
                info!(delay = ?restart_delay, "the last session was short: waiting before the next");
                tokio::select! {
                    _ = tokio::time::sleep(restart_delay) => {}
                    _ = self.shutdown.changed() => {}
                }
            }
            if *self.shutdown.borrow() {
                return self.shut_down(None).await;
            }
        }
    }

    /// This process's digest identity (`node:secret`): the `leader` and member record
    /// it creates are writable with it only.
    fn process_credentials(&self) -> String {
        format!("{}:{}", self.s.node, self.secret)
    }

    /// Connects with backoff until it works or we are told to stop.
    async fn connect(&mut self) -> Option<(Client, Events)> {
        let mut delay = Duration::from_millis(COORD_CONNECT_DELAY_MIN_MS);
        loop {
            let mut cfg = ClientConfig::new(self.s.coord.clone())
                .with_session_timeout_ms(self.s.session_timeout_ms)
                .with_request_timeout_ms(
                    self.s.session_timeout_ms.max(COORD_REQUEST_TIMEOUT_MS_MIN),
                )
                .with_auth("digest", self.process_credentials().as_bytes());
            if let Some(auth) = &self.s.coord_auth {
                cfg = cfg.with_auth("digest", auth.as_bytes());
            }
            if let Some(tls) = &self.s.coord_tls {
                cfg = cfg.with_tls(tls.clone());
            }
            match Client::connect(cfg).await {
                Ok(c) => return Some(c),
                Err(e) => warn!(
                    servers = self.s.coord.join(","),
                    "coordd unreachable ({e}); retrying in {delay:?}"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.changed() => return None,
            }
            if *self.shutdown.borrow() {
                return None;
            }
            delay = (delay * 2).min(Duration::from_millis(COORD_CONNECT_DELAY_MAX_MS));
        }
    }

    async fn shut_down(&self, client: Option<Client>) -> Result<()> {
        info!("shutting down: stopping PostgreSQL (fast)");
        if let Err(e) = self.pg.stop(StopMode::Fast).await {
            warn!("fast stop failed ({e}); stopping immediately");
            let _ = self.pg.stop(StopMode::Immediate).await;
        }
        if let Some(c) = client {
            let _ = c.close().await;
        }
        Ok(())
    }

    /// Whether the local PostgreSQL says, within [`FENCE_STANDBY_CHECK_TIMEOUT_MS`], that
    /// it is in recovery. False for every other outcome (a primary, an error, no answer):
    /// the callers fence on false, and a server that cannot answer may be a primary.
    async fn certainly_standby(&self) -> bool {
        let check = async {
            let c = pg::connect(&self.local_conninfo()).await?;
            pg::in_recovery(&c).await
        };
        let timeout = Duration::from_millis(FENCE_STANDBY_CHECK_TIMEOUT_MS);
        matches!(tokio::time::timeout(timeout, check).await, Ok(Ok(true)))
    }

    /// Stops PostgreSQL at once unless it is certainly a standby.
    async fn fence_if_primary(&self) {
        if !self.pg.postmaster_alive() {
            return;
        }
        if !self.certainly_standby().await {
            warn!("fencing: stopping PostgreSQL (immediate)");
            if let Err(e) = self.pg.stop(StopMode::Immediate).await {
                error!("fencing stop failed: {e}");
            }
        }
    }

    fn conninfo(&self, host: &str, port: u16) -> Conninfo {
        let mut c = Conninfo::new(host, port)
            .user(self.s.db_user.clone())
            .application_name(self.s.node.clone())
            .connect_timeout_s(PG_TCP_CONNECT_TIMEOUT_S);
        if let Some(p) = &self.s.db_password {
            c = c.password(p.clone());
        }
        c
    }

    /// The local server, at `--host` (never a wildcard: `Settings::resolve` refuses one).
    fn local_conninfo(&self) -> Conninfo {
        self.conninfo(&self.s.host, self.s.pg_port)
    }

    async fn start_pg(&self) -> Result<()> {
        if self.pg.postmaster_alive() {
            return Ok(());
        }
        info!(port = self.s.pg_port, "starting PostgreSQL");
        self.pg
            .start(
                self.s.pg_port,
                &[
                    ("listen_addresses", &self.s.listen_addresses),
                    ("unix_socket_directories", &self.s.unix_socket_directories),
                ],
            )
            .await?;
        Ok(())
    }

    /// `<pg_data>.switchyard-rewind`, outside the data directory (pg_rewind would
    /// delete it inside): this former primary runs as a standby but may have diverged,
    /// so it must pg_rewind before it follows anyone. Survives agent restarts.
    fn rewind_marker(&self) -> PathBuf {
        let mut s = self.s.pg_data.clone().into_os_string();
        s.push(".switchyard-rewind");
        PathBuf::from(s)
    }

    /// Before a data directory without standby.signal (a former primary) is started as
    /// a standby: remember that it must rewind before following.
    fn mark_rewind_if_primary(&self) -> Result<()> {
        if self.standby_signal().exists() {
            return Ok(());
        }
        self.mark_rewind()
    }

    /// Marks this data directory to pg_rewind before it follows anyone.
    fn mark_rewind(&self) -> Result<()> {
        let p = self.rewind_marker();
        std::fs::write(
            &p,
            b"this data directory may have diverged: pg_rewind before following\n",
        )
        .map_err(|e| AgentError::Fatal(format!("write {}: {e}", p.display())))
    }

    fn clear_rewind_marker(&self) -> Result<()> {
        match std::fs::remove_file(self.rewind_marker()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(AgentError::Fatal(format!(
                "remove {}: {e}",
                self.rewind_marker().display()
            ))),
        }
    }

    fn standby_signal(&self) -> PathBuf {
        self.s.pg_data.join("standby.signal")
    }

    /// Creates `standby.signal` (owned by the PostgreSQL OS user) if it is missing.
    fn ensure_standby_signal(&self) -> Result<()> {
        let p = self.standby_signal();
        if p.exists() {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| AgentError::Fatal(format!("create {}: {e}", p.display())))?;
        if let Some(u) = self.pg.run_as() {
            std::os::unix::fs::chown(&p, Some(u.uid), Some(u.gid))
                .map_err(|e| AgentError::Fatal(format!("chown {}: {e}", p.display())))?;
        }
        Ok(())
    }
}

/// A promotion under way in this session: `leader` won (state `promoting`), what the
/// election saw (the `sync` record and the live replicas' records), not yet published
/// as `primary`. See [`Session::finish_promotion`].
#[derive(Clone)]
struct Promotion {
    stat: Stat,
    sync: Option<SyncRecord>,
    peers: Vec<MemberRecord>,
}

/// One coordd session of the agent.
struct Session<'a> {
    a: &'a Agent,
    client: Client,
    events: Events,
    shutdown: watch::Receiver<bool>,
    config: ClusterConfig,
    /// Some while this session holds `leader` (its czxid).
    epoch: Option<Epoch>,
    /// Some from winning `leader` until `leader` is published as `primary`.
    promotion: Option<Promotion>,
    watchdog: Option<JoinHandle<()>>,
    fenced: watch::Receiver<bool>,
    fenced_tx: watch::Sender<bool>,
    /// The leader (node, host, port) our primary_conninfo points at.
    following: Option<(String, String, u16)>,
    pg_client: Option<tokio_postgres::Client>,
    member_published: bool,
    /// Some while we are the master in synchronous mode.
    sync: Option<SyncTrack>,
    /// The last `leader` seen in this session: (node, czxid).
    last_leader: Option<(String, i64)>,
    /// When this session first saw the current `leader` vacancy.
    vacancy_seen: Option<tokio::time::Instant>,
    /// Our last published member record.
    last_member: Option<MemberRecord>,
    /// While following: (leader, our replay position, since when it has not moved
    /// while following that leader).
    replay_unmoved: Option<(String, Option<Lsn>, tokio::time::Instant)>,
    /// Since when the local PostgreSQL, its postmaster alive, has not answered a status
    /// check (the start of the first check that failed); None after an answer.
    pg_unanswered_since: Option<tokio::time::Instant>,
}

impl<'a> Session<'a> {
    fn new(a: &'a Agent, client: Client, events: Events) -> Self {
        let (fenced_tx, fenced) = watch::channel(false);
        Session {
            a,
            client,
            events,
            shutdown: a.shutdown.clone(),
            config: ClusterConfig::default(),
            epoch: None,
            promotion: None,
            watchdog: None,
            fenced,
            fenced_tx,
            following: None,
            pg_client: None,
            member_published: false,
            sync: None,
            last_leader: None,
            vacancy_seen: None,
            last_member: None,
            replay_unmoved: None,
            pg_unanswered_since: None,
        }
    }

    /// Creates a persistent record every agent of the cluster may read and rewrite
    /// (`config`, `initialize`).
    async fn create_shared(
        &self,
        path: &str,
        value: &[u8],
    ) -> std::result::Result<String, coordd_client::Error> {
        self.client
            .create(
                path,
                value,
                &acl::shared(self.s().coord_auth.as_deref(), perms::READ | perms::WRITE),
                CreateMode::Persistent,
            )
            .await
    }

    fn s(&self) -> &Settings {
        &self.a.s
    }

    async fn run(&mut self) -> Result<()> {
        self.setup_namespace().await?;
        if !self.prepare().await? {
            return Ok(());
        }
        self.publish_member().await?;
        self.reconcile().await?;
        let mut publish = tokio::time::interval(Duration::from_millis(u64::from(
            self.config.publish_interval_ms.max(100),
        )));
        loop {
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(ev) = ev else {
                        return Err(AgentError::SessionEnded("session closed".into()));
                    };
                    if ev.state == coordd_client::KeeperState::Expired {
                        return Err(AgentError::SessionEnded("session expired".into()));
                    }
                    if ev.path == self.s().ns.leader() {
                        let r = self.reconcile().await;
                        transient(r)?;
                    } else if ev.path == self.s().ns.switchover() && self.is_master() {
                        let r = self.check_switchover().await;
                        transient(r)?;
                    }
                }
                _ = publish.tick() => {
                    if self.epoch.is_some() && !self.a.pg.postmaster_alive() {
                        // A master without a server keeps writes unavailable for as long
                        // as it holds `leader`: end the session (its close deletes
                        // `leader` at once); the next one rewinds and follows.
                        return Err(AgentError::SessionEnded(
                            "PostgreSQL is not running while this node holds `leader`: \
                             releasing it"
                                .into(),
                        ));
                    }
                    if let Some(since) = self.pg_unanswered_since.filter(|_| self.epoch.is_some()) {
                        let limit = Duration::from_millis(u64::from(self.s().primary_unresponsive_ms));
                        if since.elapsed() >= limit {
                            // Hung (a storage stall, a stopped process) or refusing us: it
                            // takes no writes either, for as long as we hold `leader`. Ending
                            // the session fences it first (an immediate stop, SIGKILL if it
                            // does not react), then releases `leader` (Patroni fails over
                            // too, when its primary stops answering for a TTL).
                            return Err(AgentError::SessionEnded(format!(
                                "PostgreSQL has not answered a status check for {:?} while this \
                                 node holds `leader`: fencing it and releasing `leader`",
                                since.elapsed()
                            )));
                        }
                    }
                    if self.epoch.is_none() && !self.a.pg.postmaster_alive() {
                        // Our standby died (or was stopped behind our back): bring it
                        // back as a standby; a former primary is marked for rewind.
                        warn!("PostgreSQL is not running: starting it as a standby");
                        self.a.mark_rewind_if_primary()?;
                        self.a.ensure_standby_signal()?;
                        if let Err(e) = self.start_pg().await {
                            warn!("start failed: {e}");
                        }
                    }
                    let r = self.refresh_config().await;
                    transient(r)?;
                    let r = self.publish_member().await;
                    transient(r)?;
                    if self.epoch.is_none() {
                        let r = self.check_divergence().await;
                        transient(r)?;
                    }
                    let r = self.reconcile().await;
                    transient(r)?;
                    if self.is_master() {
                        let r = self.manage_sync().await;
                        transient(r)?;
                        let r = self.check_switchover().await;
                        transient(r)?;
                    }
                }
                _ = self.fenced.changed() => {
                    return Err(AgentError::SessionEnded("lease ran out: fenced".into()));
                }
                _ = self.shutdown.changed() => return Ok(()),
            }
        }
    }

    // ---- coordd helpers -------------------------------------------------------------

    async fn setup_namespace(&mut self) -> Result<()> {
        let ns = self.s().ns.clone();
        let cluster = ns.cluster().to_owned();
        let parent = &cluster[..cluster.rfind('/').unwrap_or(0)];
        if !parent.is_empty() {
            self.client.ensure_path(parent).await?;
        }
        let coord_auth = self.s().coord_auth.clone();
        if coord_auth.is_none() {
            warn!(
                "coord_auth is not set: any client of coordd can rewrite this cluster's \
                 config, initialize, sync and switchover records (set it in agent.toml)"
            );
        }
        let cluster_acl = acl::shared(
            coord_auth.as_deref(),
            perms::READ | perms::WRITE | perms::CREATE,
        );
        match self
            .client
            .create(&cluster, &[], &cluster_acl, CreateMode::Persistent)
            .await
        {
            Ok(_) => info!(
                path = cluster,
                "created the cluster node (no DELETE for anyone)"
            ),
            Err(e) if is_code(&e, ErrorCode::NodeExists) => {
                if let Ok((acl, _)) = self.client.get_acl(&cluster).await {
                    if acl.iter().any(|a| a.perms & perms::DELETE != 0) {
                        warn!(
                            path = cluster,
                            "the cluster node grants DELETE: another client could delete `leader`"
                        );
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        match self
            .client
            .create(
                &ns.members(),
                &[],
                &acl::shared(coord_auth.as_deref(), perms::ALL),
                CreateMode::Persistent,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_code(&e, ErrorCode::NodeExists) => {}
            Err(e) => return Err(e.into()),
        }
        // Cluster config: read it, or create it from our settings (first agent).
        match self.read::<ClusterConfig>(&ns.config(), false).await? {
            Some((c, _)) => self.config = c,
            None => {
                let c = ClusterConfig {
                    synchronous: self.s().synchronous,
                    session_timeout_ms: self.s().session_timeout_ms,
                    fence_margin_ms: self.s().fence_margin_ms,
                    ..ClusterConfig::default()
                };
                match self.create_shared(&ns.config(), &records::encode(&c)).await {
                    Ok(_) => self.config = c,
                    Err(e) if is_code(&e, ErrorCode::NodeExists) => {
                        if let Some((c, _)) =
                            self.read::<ClusterConfig>(&ns.config(), false).await?
                        {
                            self.config = c;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Reads and decodes a record; None when the node does not exist. With `watch`, a
    /// data watch (node exists) or an exists watch (it does not) is armed.
    async fn read<T: Record>(&self, path: &str, watch: bool) -> Result<Option<(T, Stat)>> {
        match self.client.get_data(path, watch).await {
            Ok((data, stat)) => Ok(Some((records::decode::<T>(&data)?, stat))),
            Err(e) if is_code(&e, ErrorCode::NoNode) => {
                if watch && self.client.exists(path, true).await?.is_some() {
                    // Created in between: read it (and arm the data watch).
                    return Box::pin(self.read(path, watch)).await;
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn read_leader(&self) -> Result<Option<(LeaderRecord, Stat)>> {
        let path = self.s().ns.leader();
        self.read::<LeaderRecord>(&path, true).await
    }

    /// Re-reads `config` (an operator may change it while agents run).
    async fn refresh_config(&mut self) -> Result<()> {
        match self
            .read::<ClusterConfig>(&self.s().ns.config(), false)
            .await
        {
            Ok(Some((c, _))) => {
                if c.synchronous != self.config.synchronous {
                    info!(synchronous = c.synchronous, "cluster config changed");
                }
                self.config = c;
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(AgentError::Record(e)) => {
                warn!("cluster config unreadable, keeping the previous one: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Starts PostgreSQL (a no-op when it runs). In synchronous mode a server that has no
    /// `synchronous_standby_names` gets the `ANY 1 (*)` placeholder first: whatever it
    /// becomes (a promoted standby, the bootstrap primary), it then never acknowledges a
    /// commit that no standby has, and a promotion changes one non-empty setting for
    /// another (no moment in which commits stop waiting).
    async fn start_pg(&self) -> Result<()> {
        if self.config.synchronous
            && !self.a.pg.postmaster_alive()
            && !self.a.pg.auto_conf_has("synchronous_standby_names")?
        {
            self.a
                .pg
                .set_synchronous_standby_names(Some(&SyncStandbys::Any))
                .await?;
        }
        self.a.start_pg().await
    }

    /// Waits for an event on `leader` (or REPOLL), handling the session's end.
    async fn wait_leader_change(&mut self) -> Result<bool> {
        let leader = self.s().ns.leader();
        let deadline = tokio::time::Instant::now() + REPOLL;
        loop {
            tokio::select! {
                ev = self.events.recv() => {
                    let Some(ev) = ev else {
                        return Err(AgentError::SessionEnded("session closed".into()));
                    };
                    if ev.state == coordd_client::KeeperState::Expired {
                        return Err(AgentError::SessionEnded("session expired".into()));
                    }
                    if ev.path == leader {
                        return Ok(true);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(true),
                _ = self.shutdown.changed() => return Ok(false),
            }
        }
    }

    // ---- bootstrap and fail-safe start ---------------------------------------------

    /// Brings PostgreSQL up as DESIGN.md 4 allows. Returns false on shutdown.
    async fn prepare(&mut self) -> Result<bool> {
        let ns = self.s().ns.clone();
        let me = self.s().node.clone();
        let mut init = self
            .read::<InitializeRecord>(&ns.initialize(), false)
            .await?;
        if !self.a.pg.is_initialized() {
            if init.is_none() {
                let rec = InitializeRecord {
                    node: me.clone(),
                    system_identifier: None,
                };
                match self
                    .create_shared(&ns.initialize(), &records::encode(&rec))
                    .await
                {
                    Ok(_) => {
                        info!("won `initialize`: running initdb");
                        self.bootstrap_primary(BootstrapFrom::Initdb).await?;
                        return Ok(true);
                    }
                    Err(e) if is_code(&e, ErrorCode::NodeExists) => {
                        init = self
                            .read::<InitializeRecord>(&ns.initialize(), false)
                            .await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some((rec, _)) = init.as_ref().filter(|(r, _)| r.node == me) {
                // We won `initialize` but never ran initdb: the session (or the reply to
                // the create) was lost first. No identity recorded means no `leader`
                // was ever taken on this data, so nobody can have copied it: run the
                // bootstrap from the start. An identity recorded, or a directory with
                // something in it, means data we did make is gone or half-made: that
                // is for an operator to look at.
                if rec.system_identifier.is_none() && self.a.pg.data_dir_is_empty()? {
                    info!(
                        step = ?BootstrapFrom::Initdb,
                        "resuming the bootstrap this node won (initdb never ran)"
                    );
                    self.bootstrap_primary(BootstrapFrom::Initdb).await?;
                    return Ok(true);
                }
                return Err(AgentError::Fatal(format!(
                    "`initialize` names this node but {} holds no cluster; remove the \
                     partial data directory and the `initialize` znode to bootstrap again",
                    self.s().pg_data.display()
                )));
            }
            info!("another node bootstraps the cluster: waiting for a primary to base-backup from");
            let leader = loop {
                match self.read_leader().await? {
                    Some((l, _)) if l.state == LeaderState::Primary && l.node != me => break l,
                    _ => {
                        if !self.wait_leader_change().await? {
                            return Ok(false);
                        }
                    }
                }
            };
            info!(from = leader.node, "pg_basebackup");
            let src = self.a.conninfo(&leader.host, leader.port);
            self.a.pg.basebackup_from(&src).await?;
            self.check_identity(&ns).await?;
            self.start_pg().await?;
            self.following = Some((leader.node, leader.host, leader.port));
            return Ok(true);
        }
        if let Some((rec, _)) = init.as_ref().filter(|(r, _)| r.node == me) {
            // We won `initialize` and initdb finished, but the session ended before
            // the bootstrap did (a session lost during a slow initdb). A data directory
            // PostgreSQL never started cannot have served anyone: every other node
            // waits for a primary to copy it, and there is none before our `leader`.
            // So the bootstrap resumes instead of the fail-safe start, which would
            // leave a cluster without a master (a standby that never streamed is no
            // candidate in synchronous mode, and nobody else has data).
            if !self.a.pg.ever_started() {
                let from = match rec.system_identifier {
                    None => BootstrapFrom::Configure,
                    Some(_) => {
                        self.check_identity(&ns).await?;
                        BootstrapFrom::Lead
                    }
                };
                info!(step = ?from, "resuming the bootstrap this node won (PostgreSQL never started)");
                self.bootstrap_primary(from).await?;
                return Ok(true);
            }
        }
        self.check_identity(&ns).await?;
        self.fail_safe_start().await
    }

    /// initdb, `leader`, then start (a fresh initdb'd server is a primary: it starts only
    /// once we hold `leader`), then `promoting` -> `primary`. `from` skips the steps a
    /// bootstrap cut short by a lost session already did (DESIGN.md 4: the bootstrap
    /// winner's data directory, never started, is the cluster's only copy).
    async fn bootstrap_primary(&mut self, from: BootstrapFrom) -> Result<()> {
        let s = self.s().clone();
        if from == BootstrapFrom::Initdb {
            let o = InitdbOptions {
                auth_host: s.initdb_auth_host.clone(),
                auth_local: s.initdb_auth_local.clone(),
                no_sync: s.initdb_no_sync,
                ..InitdbOptions::default()
            };
            self.a.pg.initdb(&o).await?;
        }
        if from != BootstrapFrom::Lead {
            self.configure_and_record_identity().await?;
        }
        self.lead_new_cluster().await
    }

    /// After initdb: settings and pg_hba lines from the agent's config, then the data
    /// directory's system identifier into `initialize`. Repeating it after a cut is
    /// harmless: a repeated postgresql.conf line sets the same value, a repeated
    /// pg_hba.conf line matches as before.
    async fn configure_and_record_identity(&mut self) -> Result<()> {
        let ns = self.s().ns.clone();
        let s = self.s().clone();
        let mut conf: Vec<(&str, &str)> = vec![("wal_keep_size", "128MB")];
        conf.extend(s.conf.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.a.pg.append_conf(&conf)?;
        if !s.hba.is_empty() {
            let p = s.pg_data.join("pg_hba.conf");
            let mut text = std::fs::read_to_string(&p)
                .map_err(|e| AgentError::Fatal(format!("read {}: {e}", p.display())))?;
            for l in &s.hba {
                text.push_str(l);
                text.push('\n');
            }
            std::fs::write(&p, text)
                .map_err(|e| AgentError::Fatal(format!("write {}: {e}", p.display())))?;
        }
        let id = self.a.pg.control_data().await?.system_identifier;
        let rec = InitializeRecord {
            node: s.node.clone(),
            system_identifier: Some(id.to_string()),
        };
        self.client
            .set_data(&ns.initialize(), &records::encode(&rec), None)
            .await?;
        info!(system_identifier = id, "initdb done; racing for `leader`");
        Ok(())
    }

    /// The bootstrap's last step: take `leader`, start PostgreSQL as the first primary,
    /// publish it.
    async fn lead_new_cluster(&mut self) -> Result<()> {
        let stat = match self.create_leader().await {
            Ok(stat) => stat,
            Err(e) => {
                // Someone else leads a cluster we just initialized: start over; the
                // fail-safe start then follows it or competes as a standby.
                return Err(AgentError::SessionEnded(format!(
                    "bootstrap: could not take `leader`: {e}"
                )));
            }
        };
        self.start_pg().await?;
        self.publish_primary(stat).await?;
        if self.config.synchronous {
            // No standby yet: `ANY 1 (*)` (set by start_pg) makes commits wait for the
            // first one; `sync` stays empty, so nobody may win until a standby has
            // caught up and is named (manage_sync).
            self.write_sync(&[]).await?;
            self.sync = Some(SyncTrack {
                pg: SyncStandbys::Any,
                published: Vec::new(),
                pending_lsn: None,
            });
        }
        Ok(())
    }

    /// DESIGN.md 4.4: never start as a primary; follow the leader or compete.
    async fn fail_safe_start(&mut self) -> Result<bool> {
        let me = self.s().node.clone();
        if self.a.pg.postmaster_alive() && !self.a.certainly_standby().await {
            warn!("PostgreSQL runs as a primary without `leader` in this session: stopping it");
            self.a.pg.stop(StopMode::Immediate).await?;
        }
        loop {
            let leader = self.read_leader().await?;
            match election::on_restart(leader.as_ref().map(|(l, _)| l), &me) {
                StartAs::Compete => {
                    info!("no leader: starting as a standby and competing");
                    self.detach_if_synchronous().await?;
                    self.a.mark_rewind_if_primary()?;
                    self.a.ensure_standby_signal()?;
                    self.start_pg().await?;
                    return Ok(true);
                }
                StartAs::Standby { follow: None } => {
                    self.detach_if_synchronous().await?;
                    self.a.mark_rewind_if_primary()?;
                    info!(
                        "`leader` names this node from an older session: standby until it expires"
                    );
                    self.a.ensure_standby_signal()?;
                    self.start_pg().await?;
                    return Ok(true);
                }
                StartAs::Standby { follow: Some(l) } => {
                    if l.state != LeaderState::Primary {
                        if !self.wait_leader_change().await? {
                            return Ok(false);
                        }
                        continue;
                    }
                    self.follow(&l).await?;
                    return Ok(true);
                }
            }
        }
    }

    /// A follower that cannot follow (see [`election::diverged`]): mark it for rewind
    /// and forget whom it follows; the next reconcile follows again, through pg_rewind.
    async fn check_divergence(&mut self) -> Result<()> {
        let (Some((leader, _, _)), Some(me)) = (self.following.clone(), self.last_member.clone())
        else {
            self.replay_unmoved = None;
            return Ok(());
        };
        let now = tokio::time::Instant::now();
        let since = match &self.replay_unmoved {
            Some((l, r, since)) if *l == leader && *r == me.replay_lsn => *since,
            _ => {
                self.replay_unmoved = Some((leader.clone(), me.replay_lsn, now));
                now
            }
        };
        let Ok(path) = self.s().ns.member_checked(&leader) else {
            return Ok(());
        };
        let lm = match self.read::<MemberRecord>(&path, false).await {
            Ok(Some((m, _))) => m,
            Ok(None) | Err(AgentError::Record(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if election::diverged(&me, &lm, now - since, DIVERGED_AFTER) {
            warn!(
                leader,
                timeline = ?me.timeline,
                leader_timeline = ?lm.timeline,
                replay = ?me.replay_lsn,
                "this standby diverged from the master's timeline (replay stuck on an older \
                 timeline for {DIVERGED_AFTER:?}): rewinding"
            );
            self.a.mark_rewind()?;
            self.following = None;
            self.replay_unmoved = None;
        }
        Ok(())
    }

    /// Synchronous mode, `leader` vacant: stop streaming from the old master. Its session
    /// is gone but it may be alive (paused, partitioned from coordd only): a standby that
    /// kept streaming would keep acknowledging its commits, and a new master may be
    /// promoted without them. Detached, a standby acknowledges nobody until it follows
    /// the next master, so a deposed master's commits wait (and it is fenced) instead.
    /// Its position also stops moving, which keeps the election's comparison stable.
    async fn detach_if_synchronous(&self) -> Result<()> {
        if !self.config.synchronous || !self.a.pg.auto_conf_has("primary_conninfo")? {
            return Ok(());
        }
        info!("`leader` vacant: detaching from the old master (synchronous mode)");
        self.a.pg.clear_primary_conninfo().await?;
        Ok(())
    }

    /// Streams from leader `l` (state primary). A data directory that was a primary
    /// (marked, or without standby.signal) may have diverged: stop, pg_rewind from `l`,
    /// then start as its standby; otherwise re-point primary_conninfo and reload.
    async fn follow(&mut self, l: &LeaderRecord) -> Result<()> {
        let src = self.a.conninfo(&l.host, l.port);
        if self.a.rewind_marker().exists() || !self.a.standby_signal().exists() {
            self.a.pg.stop(StopMode::Fast).await?;
            info!(
                from = l.node,
                "pg_rewind from the new master (this node was a primary)"
            );
            let out = self.a.pg.rewind_from(&src).await?;
            debug!(log = out.log, rewound = out.rewound, "pg_rewind");
            self.a.pg.set_primary_conninfo(&src).await?;
            self.a.ensure_standby_signal()?;
            self.start_pg().await?;
            self.a.clear_rewind_marker()?;
        } else {
            info!(leader = l.node, "following the master");
            self.a.pg.set_primary_conninfo(&src).await?;
            self.start_pg().await?;
        }
        self.following = Some((l.node.clone(), l.host.clone(), l.port));
        Ok(())
    }

    async fn check_identity(&mut self, ns: &crate::namespace::Namespace) -> Result<()> {
        let Some((init, _)) = self
            .read::<InitializeRecord>(&ns.initialize(), false)
            .await?
        else {
            return Err(AgentError::Fatal(format!(
                "{} holds a cluster but coordd has no `initialize` for {}: refusing to \
                 touch it",
                self.s().pg_data.display(),
                ns.cluster()
            )));
        };
        let Some(expected) = init.system_identifier.and_then(|s| s.parse::<u64>().ok()) else {
            warn!("`initialize` has no system identifier yet; cannot check the data directory");
            return Ok(());
        };
        match self.a.pg.check_identity(expected).await {
            Ok(()) => Ok(()),
            Err(e @ PgError::ForeignCluster { .. }) => Err(AgentError::Fatal(e.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    // ---- election --------------------------------------------------------------------

    /// Acts on the `leader` znode as read now.
    async fn reconcile(&mut self) -> Result<()> {
        let me = self.s().node.clone();
        loop {
            let leader = self.read_leader().await?;
            match &leader {
                Some((l, st)) => {
                    self.last_leader = Some((l.node.clone(), st.czxid));
                    self.vacancy_seen = None;
                }
                None => {
                    self.vacancy_seen
                        .get_or_insert_with(tokio::time::Instant::now);
                }
            }
            if let Some(mine) = self.epoch {
                let seen = leader.as_ref().map(|(_, st)| Epoch(st.czxid));
                let l = election::leadership(mine, seen);
                if l != Leadership::Held {
                    error!(?l, "lost `leader`: fencing");
                    let _ = self.a.pg.stop(StopMode::Immediate).await;
                    return Err(AgentError::SessionEnded(format!("leadership {l:?}")));
                }
                if self.promotion.is_some() {
                    info!("resuming the promotion");
                    self.finish_promotion().await?;
                }
                return Ok(());
            }
            match leader {
                None => {
                    if self.following.is_some() {
                        self.detach_if_synchronous().await?;
                        self.following = None;
                    }
                    if self.try_elect().await? {
                        return Ok(());
                    }
                    // Lost the race or not eligible: read again (arms the watch).
                    if self.read_leader().await?.is_none() {
                        return Ok(());
                    }
                    continue;
                }
                Some((l, st)) if l.node == me && st.ephemeral_owner == self.client.session_id() => {
                    // Created in this session, but its reply was lost (connection loss
                    // or timeout): we do not hold it as ours (no epoch, no watchdog).
                    // Nothing of the promotion ran yet: release it and start over.
                    return Err(AgentError::SessionEnded(
                        "`leader` was created in this session but its reply was lost: \
                         releasing it"
                            .into(),
                    ));
                }
                Some((l, _)) if l.node == me => return Ok(()),
                Some((l, _)) if l.state == LeaderState::Primary => {
                    let target = (l.node.clone(), l.host.clone(), l.port);
                    if self.following.as_ref() != Some(&target) {
                        self.follow(&l).await?;
                    }
                    return Ok(());
                }
                Some(_) => return Ok(()),
            }
        }
    }

    /// Races for `leader` if eligible; true when we won (and promoted).
    async fn try_elect(&mut self) -> Result<bool> {
        let me_rec = self.member_record().await;
        // Published first even when holding back: the candidates wait for every
        // replica's record written after the vacancy.
        let _ = self.write_member(&me_rec).await;
        if self.hold_back_for_switchover().await? {
            return Ok(false);
        }
        let ns = self.s().ns.clone();
        // Peers' records can be a publish interval old. Every live agent republishes
        // when it sees `leader` vanish, so wait (bounded) until each replica's record was
        // written after the vacancy: after the cluster node's pzxid (the zxid of its
        // last child change, here the `leader` deletion). Zxids, not clocks: no skew.
        let vacancy = self
            .client
            .exists(ns.cluster(), false)
            .await?
            .map(|st| st.pzxid)
            .unwrap_or(0);
        let give_up = tokio::time::Instant::now() + FRESH_WAIT;
        let (peers, stale) = loop {
            let (peers, stale) = self.replica_peers(vacancy).await?;
            if stale.is_empty() || tokio::time::Instant::now() >= give_up {
                break (peers, stale);
            }
            tokio::time::sleep(FRESH_POLL).await;
        };
        let sync = if self.config.synchronous {
            match self.read::<SyncRecord>(&ns.sync(), false).await {
                Ok(s) => s.map(|(s, _)| s),
                // Unreadable: nobody is known to be synchronous, so nobody may win.
                Err(AgentError::Record(e)) => {
                    warn!("`sync` unreadable: {e}");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if !stale.is_empty() {
            if let Some(s) = sync.as_ref().filter(|_| self.config.synchronous) {
                // A synchronous standby's position from before the vacancy may be short
                // of commits it acknowledged since: never compare with it; try again on
                // the next tick (it writes a fresh record when it sees the vacancy).
                let stale_sync: Vec<&String> = stale.iter().filter(|n| s.contains(n)).collect();
                if !stale_sync.is_empty() {
                    info!(
                        ?stale_sync,
                        "`leader` is vacant; waiting for synchronous standbys' fresh records"
                    );
                    return Ok(false);
                }
            }
            info!(
                ?stale,
                "comparing with member records older than the vacancy"
            );
        }
        if let Err(why) = election::eligible(&me_rec, &peers, &self.config, sync.as_ref()) {
            info!("`leader` is vacant but this node is not eligible: {why}");
            return Ok(false);
        }
        info!("`leader` is vacant and this node is eligible: racing");
        let stat = match self.create_leader().await {
            Ok(stat) => stat,
            Err(AgentError::Coord(e)) if is_code(&e, ErrorCode::NodeExists) => {
                info!("another node won `leader`");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.promotion = Some(Promotion { stat, sync, peers });
        self.finish_promotion().await?;
        Ok(true)
    }

    /// Holds `leader` as the master: won and published as `primary`.
    fn is_master(&self) -> bool {
        self.epoch.is_some() && self.promotion.is_none()
    }

    /// The steps from winning `leader` to publishing it as `primary`: name the
    /// synchronous standbys, `pg_promote`, publish. Each is idempotent (PostgreSQL is
    /// promoted only while in recovery; `leader` is published only if it is not yet),
    /// so when a coordd call fails part way with a connection loss or a timeout (the
    /// session may well survive it, e.g. a coordd leader's death: the run loop goes on)
    /// the next reconcile runs them again in the same session instead of leaving
    /// `leader` held by a standby. Other errors end the session (fencing).
    async fn finish_promotion(&mut self) -> Result<()> {
        let Some(p) = self.promotion.clone() else {
            return Ok(());
        };
        let client = match pg::connect(&self.a.local_conninfo()).await {
            Ok(c) => c,
            Err(e) => {
                let _ = self.a.pg.stop(StopMode::Immediate).await;
                return Err(AgentError::SessionEnded(format!(
                    "won `leader`, cannot reach PostgreSQL: {e}"
                )));
            }
        };
        if self.config.synchronous {
            self.prepare_sync_before_promotion(p.sync.as_ref(), &p.peers)
                .await?;
        }
        if pg::in_recovery(&client).await? {
            info!("promoting PostgreSQL");
            if !pg::promote(&client, PROMOTE_WAIT_S).await? {
                let _ = self.a.pg.stop(StopMode::Immediate).await;
                return Err(AgentError::SessionEnded(
                    "pg_promote did not finish in time".into(),
                ));
            }
        }
        self.following = None;
        // Our history is now the cluster's: nothing of ours to rewind.
        self.a.clear_rewind_marker()?;
        // A retry after a lost reply of the publish itself finds it done.
        match self.read_leader().await? {
            Some((l, st)) if st.czxid == p.stat.czxid && l.state == LeaderState::Primary => {
                self.publish_member().await?;
            }
            _ => self.publish_primary(p.stat).await?,
        }
        self.promotion = None;
        let r = self.check_switchover().await;
        transient(r)?;
        Ok(())
    }

    // ---- planned switchover -----------------------------------------------------------

    /// A candidate leaves a vacant `leader` to the target of a pending switchover made
    /// during the term of the master that just left (or one that we asked for as that
    /// master, when our new session never saw the old `leader`), for at most
    /// [`SWITCHOVER_HOLD_BACK`] after it saw the vacancy.
    async fn hold_back_for_switchover(&mut self) -> Result<bool> {
        let me = self.s().node.clone();
        let Some((req, st)) = self.read_switchover(false).await? else {
            return Ok(false);
        };
        let Some(to) = req.to.as_deref() else {
            return Ok(false);
        };
        if req.status != SwitchoverStatus::Pending || to == me {
            return Ok(false);
        }
        let ours = req.from == me;
        let of_last = self
            .last_leader
            .as_ref()
            .is_some_and(|(node, czxid)| *node == req.from && st.mzxid > *czxid);
        if !ours && !of_last {
            return Ok(false);
        }
        let seen = *self
            .vacancy_seen
            .get_or_insert_with(tokio::time::Instant::now);
        if seen.elapsed() < SWITCHOVER_HOLD_BACK {
            info!(to, "`leader` is vacant for a switchover: holding back");
            return Ok(true);
        }
        warn!(
            to,
            "the switchover did not complete within {SWITCHOVER_HOLD_BACK:?}: racing as in a \
             failover"
        );
        Ok(false)
    }

    /// Reads `switchover`; an unreadable record is logged and treated as absent.
    async fn read_switchover(&self, watch: bool) -> Result<Option<(SwitchoverRequest, Stat)>> {
        match self
            .read::<SwitchoverRequest>(&self.s().ns.switchover(), watch)
            .await
        {
            Ok(r) => Ok(r),
            Err(AgentError::Record(e)) => {
                warn!("`switchover` unreadable: {e}");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the outcome of the request read at `version` (a newer request is left alone).
    async fn finish_switchover(
        &self,
        mut req: SwitchoverRequest,
        version: i32,
        status: SwitchoverStatus,
        reason: Option<String>,
    ) -> Result<()> {
        match (&reason, status) {
            (Some(r), _) => warn!(from = req.from, to = ?req.to, "switchover failed: {r}"),
            (None, _) => info!(from = req.from, to = ?req.to, ?status, "switchover over"),
        }
        req.status = status;
        req.reason = reason;
        match self
            .client
            .set_data(
                &self.s().ns.switchover(),
                &records::encode(&req),
                Some(version),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_code(&e, ErrorCode::BadVersion) || is_code(&e, ErrorCode::NoNode) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The master's side of `switchover` (read with a watch, so that a new request
    /// wakes us). A pending request older than our election is settled: done if we
    /// were its target, failed otherwise. One made during our term naming us as `from`
    /// is carried out ([`Session::switch_over`]).
    async fn check_switchover(&mut self) -> Result<()> {
        let Some(epoch) = self.epoch else {
            return Ok(());
        };
        let me = self.s().node.clone();
        let Some((req, st)) = self.read_switchover(true).await? else {
            return Ok(());
        };
        if req.status != SwitchoverStatus::Pending {
            return Ok(());
        }
        if st.mzxid < epoch.0 {
            return if req.to.as_deref() == Some(me.as_str()) {
                self.finish_switchover(req, st.version, SwitchoverStatus::Done, None)
                    .await
            } else {
                let why =
                    format!("{me} became the master (epoch {epoch}) before it was carried out");
                self.finish_switchover(req, st.version, SwitchoverStatus::Failed, Some(why))
                    .await
            };
        }
        if req.from != me {
            let why = format!("`from` is {} but the master is {me}", req.from);
            return self
                .finish_switchover(req, st.version, SwitchoverStatus::Failed, Some(why))
                .await;
        }
        if req.to.as_deref() == Some(me.as_str()) {
            let why = format!("{me} is already the master");
            return self
                .finish_switchover(req, st.version, SwitchoverStatus::Failed, Some(why))
                .await;
        }
        self.switch_over(req, st.version).await
    }

    /// Why `to` cannot take over now (None: it can): a running replica that streams
    /// from us, and in synchronous mode one of the synchronous standbys (only they may
    /// win an election).
    async fn switchover_refusal(&self, to: &str) -> Result<Option<String>> {
        let Ok(path) = self.s().ns.member_checked(to) else {
            return Ok(Some(format!("{to:?} is not a valid node name")));
        };
        let m = match self.read::<MemberRecord>(&path, false).await {
            Ok(Some((m, _))) => m,
            Ok(None) => return Ok(Some(format!("{to} is not a live member"))),
            Err(AgentError::Record(e)) => return Ok(Some(format!("{to}: {e}"))),
            Err(e) => return Err(e),
        };
        if m.role != Role::Replica || m.state != MemberState::Running {
            return Ok(Some(format!(
                "{to} is not a running replica (role {:?}, state {:?})",
                m.role, m.state
            )));
        }
        if self.config.synchronous
            && !self
                .sync
                .as_ref()
                .is_some_and(|t| t.published.iter().any(|n| n == to))
        {
            return Ok(Some(format!("{to} is not a synchronous standby")));
        }
        let c = pg::connect(&self.a.local_conninfo()).await?;
        let streaming = pg::wal_senders(&c)
            .await?
            .iter()
            .any(|w| w.application_name == to && w.state == "streaming");
        if !streaming {
            return Ok(Some(format!("{to} does not stream from this master")));
        }
        Ok(None)
    }

    /// Hands over to `req.to`: stop taking writes (CHECKPOINT, then a fast stop: it
    /// ends every session, and the WAL senders send everything up to the shutdown
    /// checkpoint and wait for the standbys' flush before the postmaster exits), check
    /// that `to` received our last record, then end the session: closing it deletes
    /// `leader`; the others hold back and `to` wins. If `to` did not catch up in time,
    /// start again as the master (we still hold `leader`) and mark the request failed.
    async fn switch_over(&mut self, req: SwitchoverRequest, version: i32) -> Result<()> {
        let to = req.to.clone();
        if let Some(to) = &to {
            if let Some(why) = self.switchover_refusal(to).await? {
                return self
                    .finish_switchover(req, version, SwitchoverStatus::Failed, Some(why))
                    .await;
            }
        }
        info!(to = ?to, "switchover: stopping writes (checkpoint, fast stop)");
        let started = tokio::time::Instant::now();
        if let Ok(c) = pg::connect(&self.a.local_conninfo()).await {
            if let Err(e) = pg::checkpoint(&c).await {
                warn!("switchover: CHECKPOINT failed ({e}); stopping anyway");
            }
        }
        self.a.pg.stop(StopMode::Fast).await?;
        self.pg_client = None;
        let last = self.a.pg.control_data().await?.checkpoint_lsn;
        if let Some(to) = &to {
            match self.wait_received(to, last).await {
                Ok(true) => {}
                res => {
                    let why = match res {
                        Err(e) => format!("{to} unreachable while catching up: {e}"),
                        _ => format!(
                            "{to} did not receive {} within {SWITCHOVER_CATCHUP_TIMEOUT:?}",
                            pg::format_lsn(last)
                        ),
                    };
                    error!("switchover: {why}; starting again as the master");
                    self.restart_as_master_if_still_leader().await?;
                    return self
                        .finish_switchover(req, version, SwitchoverStatus::Failed, Some(why))
                        .await;
                }
            }
        }
        info!(
            to = ?to,
            stopped_in = ?started.elapsed(),
            last_lsn = pg::format_lsn(last),
            "switchover: {} has everything; releasing `leader`",
            to.as_deref().unwrap_or("every replica")
        );
        Err(AgentError::SessionEnded(
            "switchover: releasing `leader`".into(),
        ))
    }

    /// Waits (up to [`SWITCHOVER_CATCHUP_TIMEOUT`]) until `node`'s PostgreSQL has
    /// received WAL past `lsn`.
    async fn wait_received(&self, node: &str, lsn: u64) -> Result<bool> {
        let path = self.s().ns.member(node);
        let Some((m, _)) = self.read::<MemberRecord>(&path, false).await? else {
            return Ok(false);
        };
        let deadline = tokio::time::Instant::now() + SWITCHOVER_CATCHUP_TIMEOUT;
        // The deadline bounds the connect and every poll too: this master has stopped
        // its server and still holds `leader`, so nobody takes writes until it is done.
        let poll = async {
            let c = pg::connect(&self.a.conninfo(&m.host, m.port)).await?;
            loop {
                if pg::receive_lsn(&c).await?.is_some_and(|r| r > lsn) {
                    return Ok(true);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(false);
                }
                tokio::time::sleep(SWITCHOVER_POLL).await;
            }
        };
        tokio::time::timeout_at(deadline, poll)
            .await
            .unwrap_or(Ok(false))
    }

    /// Synchronous mode, `leader` won, still a standby: name the standbys this master
    /// will wait for before it can take a write. They are every node that may stream
    /// from us soon: the old `sync` set and its leader (it comes back as a standby) and
    /// the live replicas. `sync` first (it must always cover the setting), then
    /// PostgreSQL; both before `pg_promote`, so not one commit is acknowledged without
    /// a standby. Nobody else known (a cluster of one): the `ANY 1 (*)` placeholder.
    async fn prepare_sync_before_promotion(
        &mut self,
        old: Option<&SyncRecord>,
        peers: &[MemberRecord],
    ) -> Result<()> {
        let me = self.s().node.clone();
        let mut names: BTreeSet<String> = peers.iter().map(|m| m.node.clone()).collect();
        if let Some(old) = old {
            names.extend(old.standbys.iter().cloned());
            names.extend(old.leader.iter().cloned());
        }
        names.remove(&me);
        let published: Vec<String> = names.into_iter().collect();
        self.write_sync(&published).await?;
        let setting = if published.is_empty() {
            SyncStandbys::Any
        } else {
            SyncStandbys::Named(published.clone())
        };
        info!(
            synchronous_standby_names = setting.to_conf_value(),
            "synchronous mode: standbys named before promotion"
        );
        self.a
            .pg
            .set_synchronous_standby_names(Some(&setting))
            .await?;
        self.sync = Some(SyncTrack {
            pg: setting,
            published,
            pending_lsn: None,
        });
        Ok(())
    }

    /// Writes our `sync` record (creates it when missing).
    async fn write_sync(&self, standbys: &[String]) -> Result<()> {
        let rec = SyncRecord {
            leader: Some(self.s().node.clone()),
            standbys: standbys.to_vec(),
        };
        let path = self.s().ns.sync();
        let data = records::encode(&rec);
        match self.client.set_data(&path, &data, None).await {
            Ok(_) => {}
            Err(e) if is_code(&e, ErrorCode::NoNode) => {
                match self.create_shared(&path, &data).await {
                    Ok(_) => {}
                    Err(e) if is_code(&e, ErrorCode::NodeExists) => {
                        self.client.set_data(&path, &data, None).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        info!(?standbys, "published `sync`");
        Ok(())
    }

    /// The master's synchronous-standby loop, once per tick (see [`SyncTrack`]).
    /// Errors of PostgreSQL are logged and retried on the next tick; the previous
    /// setting and record stay (both safe).
    async fn manage_sync(&mut self) -> Result<()> {
        match self.manage_sync_inner().await {
            Err(AgentError::Pg(e)) => {
                warn!("synchronous standbys: {e}; retrying");
                Ok(())
            }
            r => r,
        }
    }

    async fn manage_sync_inner(&mut self) -> Result<()> {
        if !self.config.synchronous {
            if self.sync.take().is_some() || self.a.pg.auto_conf_has("synchronous_standby_names")? {
                info!("asynchronous mode: clearing synchronous_standby_names");
                self.a.pg.set_synchronous_standby_names(None).await?;
            }
            return Ok(());
        }
        let mut t = match self.sync.clone() {
            Some(t) => t,
            None => {
                // Synchronous mode turned on while we are the master: from now on
                // commits wait for some standby; `sync` stays empty (nobody eligible)
                // until the standbys are named and one has caught up.
                info!("synchronous mode turned on: commits now wait for a standby");
                self.a
                    .pg
                    .set_synchronous_standby_names(Some(&SyncStandbys::Any))
                    .await?;
                self.write_sync(&[]).await?;
                SyncTrack {
                    pg: SyncStandbys::Any,
                    published: Vec::new(),
                    pending_lsn: None,
                }
            }
        };
        let r = self.manage_sync_step(&mut t).await;
        self.sync = Some(t);
        r
    }

    async fn manage_sync_step(&mut self, t: &mut SyncTrack) -> Result<()> {
        let me = self.s().node.clone();
        let ns = self.s().ns.clone();
        let members: BTreeSet<String> = self
            .client
            .get_children(&ns.members(), false)
            .await?
            .into_iter()
            .filter(|n| *n != me && crate::namespace::validate_node_name(n).is_ok())
            .collect();
        let c = pg::connect(&self.a.local_conninfo()).await?;
        let senders = pg::wal_senders(&c).await?;
        let streaming: BTreeSet<String> = senders
            .iter()
            .filter(|w| w.state == "streaming" && members.contains(&w.application_name))
            .map(|w| w.application_name.clone())
            .collect();
        // No standby streams: keep waiting for the ones named (never "wait for nobody").
        let target = if streaming.is_empty() {
            t.pg.clone()
        } else {
            SyncStandbys::Named(streaming.into_iter().collect())
        };
        // 1. Adding to a named set: `sync` first.
        if let (SyncStandbys::Named(_), SyncStandbys::Named(new)) = (&t.pg, &target) {
            if !new.iter().all(|n| t.published.contains(n)) {
                let mut p: BTreeSet<String> = t.published.iter().cloned().collect();
                p.extend(new.iter().cloned());
                let p: Vec<String> = p.into_iter().collect();
                self.write_sync(&p).await?;
                t.published = p;
            }
        }
        // 2. PostgreSQL.
        if t.pg != target {
            info!(
                synchronous_standby_names = target.to_conf_value(),
                "synchronous standbys change"
            );
            self.a
                .pg
                .set_synchronous_standby_names(Some(&target))
                .await?;
            t.pg = target;
            t.pending_lsn = None;
        }
        // 3. `sync` catches up with the setting.
        let SyncStandbys::Named(names) = t.pg.clone() else {
            return Ok(());
        };
        if t.published == names {
            t.pending_lsn = None;
            return Ok(());
        }
        let l0 = match t.pending_lsn {
            Some(l) => l,
            None => {
                if !wait_sync_applied(&c, &t.pg).await? {
                    warn!(
                        "synchronous_standby_names not in effect after {SYNC_APPLY_TIMEOUT:?}; \
                         retrying"
                    );
                    return Ok(());
                }
                let l = pg::current_lsn(&c).await?;
                t.pending_lsn = Some(l);
                l
            }
        };
        let caught_up = pg::wal_senders(&c)
            .await?
            .iter()
            .filter(|w| names.contains(&w.application_name))
            .filter_map(|w| w.flush_lsn)
            .any(|f| f >= l0);
        if caught_up {
            self.write_sync(&names).await?;
            t.published = names;
            t.pending_lsn = None;
        } else {
            debug!(
                lsn = pg::format_lsn(l0),
                "waiting for a named standby to flush past the change"
            );
        }
        Ok(())
    }

    /// The other members' records that are replicas, and the names of those among
    /// them last written at or before zxid `since`.
    async fn replica_peers(&self, since: i64) -> Result<(Vec<MemberRecord>, Vec<String>)> {
        let ns = &self.s().ns;
        let mut peers = Vec::new();
        let mut stale = Vec::new();
        for child in self.client.get_children(&ns.members(), false).await? {
            if child == self.s().node {
                continue;
            }
            let Ok(path) = ns.member_checked(&child) else {
                continue;
            };
            if let Ok(Some((m, st))) = self.read::<MemberRecord>(&path, false).await {
                // A member still claiming to be primary (leader gone, session not yet
                // expired) is not a candidate and its position is not comparable.
                if m.role == Role::Replica {
                    if st.mzxid <= since {
                        stale.push(m.node.clone());
                    }
                    peers.push(m);
                }
            }
        }
        Ok((peers, stale))
    }

    /// Creates `leader` (state promoting) and starts the fencing watchdog.
    async fn create_leader(&mut self) -> Result<Stat> {
        let rec = LeaderRecord {
            node: self.s().node.clone(),
            host: self.s().host.clone(),
            port: self.s().pg_port,
            state: LeaderState::Promoting,
            since_ms: now_ms(),
        };
        let (_, stat) = self
            .client
            .create2(
                &self.s().ns.leader(),
                &records::encode(&rec),
                &acl::owned(&self.a.process_credentials()),
                CreateMode::Ephemeral,
            )
            .await?;
        let epoch = Epoch(stat.czxid);
        info!(%epoch, "won `leader`");
        self.epoch = Some(epoch);
        self.start_watchdog();
        Ok(stat)
    }

    async fn publish_primary(&mut self, stat: Stat) -> Result<()> {
        let rec = LeaderRecord {
            node: self.s().node.clone(),
            host: self.s().host.clone(),
            port: self.s().pg_port,
            state: LeaderState::Primary,
            since_ms: now_ms(),
        };
        self.client
            .set_data(
                &self.s().ns.leader(),
                &records::encode(&rec),
                Some(stat.version),
            )
            .await?;
        info!("published `leader` state primary");
        self.publish_member().await
    }

    /// How long before the lease's end a master fences: `fence_margin_ms`, or a third of
    /// the session timeout.
    fn fence_margin(&self) -> Duration {
        let timeout = Duration::from_millis(u64::from(self.client.session_timeout_ms()));
        match self.config.fence_margin_ms {
            Some(m) if Duration::from_millis(u64::from(m)) < timeout => {
                Duration::from_millis(u64::from(m))
            }
            _ => timeout / 3,
        }
    }

    /// A failed switchover: this master stopped its server, and the target did not catch
    /// up. It starts again as the master only while it certainly still holds `leader`:
    /// the watchdog has not fired and the lease is valid. The catch-up wait
    /// (`SWITCHOVER_CATCHUP_TIMEOUT`) can outlast the session: cut off from coordd
    /// meanwhile, its session may have expired and the target been elected; a primary
    /// started then is a second one. Checked again once the server runs: a watchdog that
    /// fired during the start stopped nothing yet.
    async fn restart_as_master_if_still_leader(&mut self) -> Result<()> {
        let still_leader = || {
            !*self.fenced.borrow()
                && matches!(
                    election::lease_state(
                        self.client.lease().into_std(),
                        self.fence_margin(),
                        std::time::Instant::now(),
                    ),
                    LeaseState::Valid { .. }
                )
        };
        if !still_leader() {
            return Err(AgentError::SessionEnded(
                "switchover failed and the lease ran out meanwhile: not starting again as \
                 the master"
                    .into(),
            ));
        }
        self.start_pg().await?;
        if !still_leader() {
            warn!("the lease ran out while PostgreSQL started: stopping it (immediate)");
            let _ = self.a.pg.stop(StopMode::Immediate).await;
            return Err(AgentError::SessionEnded(
                "switchover failed and the lease ran out while PostgreSQL started".into(),
            ));
        }
        Ok(())
    }

    fn start_watchdog(&mut self) {
        let client = self.client.clone();
        let server = self.a.pg.clone();
        let margin = self.fence_margin();
        let tx = self.fenced_tx.clone();
        let guard = self.a.guard.clone();
        self.watchdog = Some(tokio::spawn(async move {
            /// The guard holds the deadline only while this watchdog runs: cleared however
            /// it ends (fenced, or aborted with its session).
            struct ClearOnDrop(GuardLink);
            impl Drop for ClearOnDrop {
                fn drop(&mut self) {
                    self.0.clear();
                }
            }
            let _clear = ClearOnDrop(guard.clone());
            let mut tick = tokio::time::interval(FENCE_CHECK);
            loop {
                tick.tick().await;
                let state = election::lease_state(
                    client.lease().into_std(),
                    margin,
                    std::time::Instant::now(),
                );
                // The guard fences at the same deadline should this process stop turning.
                if let LeaseState::Valid { fence_at } = state {
                    guard.fence_at(fence_at);
                }
                if state == LeaseState::MustFence || client.state().is_terminal() {
                    error!(
                        ?margin,
                        "lease about to run out: stopping PostgreSQL (immediate)"
                    );
                    if let Err(e) = server.stop(StopMode::Immediate).await {
                        error!("fencing stop failed: {e}");
                    }
                    let _ = tx.send(true);
                    return;
                }
            }
        }));
    }

    // ---- member record --------------------------------------------------------------

    async fn member_record(&mut self) -> MemberRecord {
        let mut rec = MemberRecord {
            node: self.s().node.clone(),
            host: self.s().host.clone(),
            port: self.s().pg_port,
            role: Role::Unknown,
            state: MemberState::Stopped,
            timeline: None,
            receive_lsn: None,
            replay_lsn: None,
            lag_bytes: None,
            updated_ms: now_ms(),
        };
        if !self.a.pg.postmaster_alive() {
            self.pg_client = None;
            self.pg_unanswered_since = None;
            return rec;
        }
        let started = tokio::time::Instant::now();
        // One bound for the whole check, so a hung server costs the loop at most this.
        let checked = tokio::time::timeout(Duration::from_millis(STATUS_CHECK_TIMEOUT_MS), async {
            let c = match &mut self.pg_client {
                Some(c) if !c.is_closed() => c,
                slot => slot.insert(pg::connect(&self.a.local_conninfo()).await?),
            };
            status_of(c).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(PgError::SqlTimeout {
                what: "status check",
                timeout: Duration::from_millis(STATUS_CHECK_TIMEOUT_MS),
            })
        });
        if checked.is_ok() {
            self.pg_unanswered_since = None;
        } else {
            self.pg_unanswered_since.get_or_insert(started);
        }
        match checked {
            Ok((role, tli, recv, replay)) => {
                rec.role = role;
                rec.state = MemberState::Running;
                rec.timeline = Some(tli);
                rec.receive_lsn = recv;
                rec.replay_lsn = replay;
                rec.lag_bytes = match (role, recv, replay) {
                    (Role::Primary, _, _) => Some(0),
                    (_, Some(r), Some(p)) => Some(r.bytes_since(p)),
                    _ => None,
                };
            }
            Err(e) => {
                debug!("status check failed: {e}");
                self.pg_client = None;
                rec.state = MemberState::Starting;
            }
        }
        rec
    }

    async fn publish_member(&mut self) -> Result<()> {
        let rec = self.member_record().await;
        self.last_member = Some(rec.clone());
        if self.config.synchronous
            && self.epoch.is_none()
            && self.following.is_some()
            && self.member_published
        {
            // A standby still streaming publishes its position only while `leader`
            // exists (one multi: check, then set). After a vacancy its next record is
            // the one try_elect writes once it detached, so a record written after the
            // vacancy (what candidates wait for) never holds a position that could still
            // grow: a deposed master that runs on keeps sending WAL until each standby
            // detaches, and commits it acknowledged must not be missed in the comparison.
            let ns = &self.s().ns;
            let ops = vec![
                MultiOp::Check(CheckVersionRequest {
                    path: ns.leader(),
                    version: -1,
                }),
                MultiOp::SetData(SetDataRequest {
                    path: ns.member(&self.s().node),
                    data: records::encode(&rec),
                    version: -1,
                }),
            ];
            match self.client.multi(ops).await {
                Ok(_) => return Ok(()),
                Err(coordd_client::Error::MultiFailed { index: 0, .. }) => {
                    debug!("`leader` is gone: not publishing a position from before detaching");
                    return Ok(());
                }
                Err(coordd_client::Error::MultiFailed { .. }) => self.member_published = false,
                Err(e) => return Err(e.into()),
            }
        }
        self.write_member(&rec).await
    }

    async fn write_member(&mut self, rec: &MemberRecord) -> Result<()> {
        let path = self.s().ns.member(&self.s().node);
        let data = records::encode(rec);
        if self.member_published {
            match self.client.set_data(&path, &data, None).await {
                Ok(_) => return Ok(()),
                Err(e) if is_code(&e, ErrorCode::NoNode) => self.member_published = false,
                Err(e) => return Err(e.into()),
            }
        }
        loop {
            match self
                .client
                .create(
                    &path,
                    &data,
                    &acl::owned(&self.a.process_credentials()),
                    CreateMode::Ephemeral,
                )
                .await
            {
                Ok(_) => {
                    self.member_published = true;
                    return Ok(());
                }
                Err(e) if is_code(&e, ErrorCode::NodeExists) => {
                    // Left by an older session of ours (or a misconfigured twin).
                    match self.client.exists(&path, false).await? {
                        Some(st) if st.ephemeral_owner == self.client.session_id() => {
                            self.member_published = true;
                            self.client.set_data(&path, &data, None).await?;
                            return Ok(());
                        }
                        Some(st) => {
                            debug!(
                                owner = format!("{:#x}", st.ephemeral_owner),
                                "replacing a stale member record"
                            );
                            match self.client.delete(&path, Some(st.version)).await {
                                Ok(()) => {}
                                Err(e)
                                    if is_code(&e, ErrorCode::NoNode)
                                        || is_code(&e, ErrorCode::BadVersion) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        None => {}
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.watchdog.take() {
            h.abort();
        }
    }
}

/// Connection loss and request timeouts are retried on the next tick: the session may
/// well survive them, and the lease watchdog, not this loop, decides about fencing.
fn transient(r: Result<()>) -> Result<()> {
    match r {
        Err(AgentError::Coord(e))
            if matches!(
                e,
                coordd_client::Error::ConnectionLoss | coordd_client::Error::Timeout
            ) =>
        {
            warn!("coordd: {e}; retrying");
            Ok(())
        }
        r => r,
    }
}

/// The wait before the next session, after one that ended with an error having lasted
/// `lasted`: none after a stable session, else doubling from
/// [`SESSION_RESTART_DELAY_MIN_MS`] up to [`SESSION_RESTART_DELAY_MAX_MS`].
fn next_restart_delay(prev: Duration, lasted: Duration) -> Duration {
    if lasted >= Duration::from_millis(SESSION_STABLE_MS) {
        return Duration::ZERO;
    }
    let min = Duration::from_millis(SESSION_RESTART_DELAY_MIN_MS);
    let max = Duration::from_millis(SESSION_RESTART_DELAY_MAX_MS);
    prev.saturating_mul(2).clamp(min, max)
}

/// Waits (up to [`SYNC_APPLY_TIMEOUT`]) until `want` is in effect: this backend shows
/// it, and every WAL sender's `sync_state` agrees (a standby named is not `async`, any
/// other is). A WAL sender applies a reload on its own schedule; once it shows `async`
/// it no longer releases waiting commits.
async fn wait_sync_applied(c: &tokio_postgres::Client, want: &SyncStandbys) -> Result<bool> {
    let text = want.to_conf_value();
    let deadline = tokio::time::Instant::now() + SYNC_APPLY_TIMEOUT;
    loop {
        let shown: String = pg::query_one(c, "SHOW synchronous_standby_names")
            .await?
            .try_get(0)
            .map_err(PgError::from)?;
        if shown == text {
            let senders = pg::wal_senders(c).await?;
            let agree = senders.iter().all(|w| {
                let named = match want {
                    SyncStandbys::Any => true,
                    SyncStandbys::Named(n) => n.contains(&w.application_name),
                };
                named == (w.sync_state != "async")
            });
            if agree {
                return Ok(true);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(SYNC_APPLY_POLL).await;
    }
}

/// Where a bootstrap starts: from scratch, or resumed after a lost session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootstrapFrom {
    /// Empty data directory: initdb and everything after it.
    Initdb,
    /// initdb done, system identifier not recorded yet.
    Configure,
    /// System identifier recorded: only `leader`, start and publish remain.
    Lead,
}

/// (role, timeline, receive, replay) of a running server.
async fn status_of(
    c: &tokio_postgres::Client,
) -> pg::Result<(Role, u32, Option<Lsn>, Option<Lsn>)> {
    let tli = pg::timeline(c).await?;
    if pg::in_recovery(c).await? {
        let recv = pg::receive_lsn(c).await?.map(Lsn);
        let replay = pg::replay_lsn(c).await?.map(Lsn);
        Ok((Role::Replica, tli, recv, replay))
    } else {
        let row = pg::query_one(c, "SELECT pg_current_wal_flush_lsn()::text").await?;
        let text: Option<String> = row.try_get(0)?;
        let lsn = text.map(|t| pg::parse_lsn(&t)).transpose()?.map(Lsn);
        Ok((Role::Primary, tli, lsn, lsn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_sessions_back_off_and_a_stable_one_resets() {
        let ms = Duration::from_millis;
        let short = ms(SESSION_STABLE_MS - 1);
        let stable = ms(SESSION_STABLE_MS);
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..8 {
            d = next_restart_delay(d, short);
            seen.push(d.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(next_restart_delay(d, stable), Duration::ZERO);
        assert_eq!(next_restart_delay(Duration::ZERO, stable), Duration::ZERO);
        // Never beyond the bound, whatever came before.
        assert_eq!(
            next_restart_delay(Duration::MAX, short),
            ms(SESSION_RESTART_DELAY_MAX_MS)
        );
    }
}
