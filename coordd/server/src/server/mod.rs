//! The standalone server: recovery from disk, the accept loop with its connection caps,
//! and the wiring between connections, the core task and the log writer.
//!
//! Invariant: the client port is open only after recovery has replayed every durable
//! entry, so no client can observe a state older than one it was answered from.

pub mod conn;
pub mod core;
pub mod expiry;
pub mod fourlw;
pub mod metrics;
pub mod reconfig;
pub mod replicated;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::core::{Core, Log, Metrics, RaftLog};
use crate::config::Config;
use crate::state::{Entry, StateConfig, StateMachine};
use crate::storage::{LogWriter, LogWriterConfig, StorageConfig, Wal};

/// Pause after a failed accept (out of file descriptors and the like) before the next:
/// the error would otherwise repeat in a busy loop.
const ACCEPT_ERROR_PAUSE_MS: u64 = 10;

/// Capacity of the channel from connections to the core; a full channel makes
/// connection readers wait, which is backpressure to the clients.
pub const CORE_QUEUE_MESSAGES_MAX: usize = 65_536;

/// Batches of a follower on their way to the log at once (ensemble mode): with the
/// proposer, forwarded to the leader, or in its entries. More than one lets the sessions
/// of a follower write while an earlier batch is on its way, as they would on the
/// leader; a session's own txns are never in two of them (see `Core::propose_pending`).
/// The leader has one (its batcher pipelines the entries).
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 4;
/// Batches handed to the proposer and not taken yet (ensemble mode): the core never has
/// more than `PROPOSALS_IN_FLIGHT_MAX` with it. Queued txns are bounded by the
/// connections' outstanding-request limits.
pub const PROPOSALS_QUEUED_MAX: usize = PROPOSALS_IN_FLIGHT_MAX;

/// How long an ensemble member holds its clients after it lost sight of the quorum (the
/// Raft layer's `quorum_timeout_ms`, 200 ms by default, after the last contact) before it
/// closes them so they move to the majority: 300 ms after the last contact in all. It
/// answers none of them meanwhile. A new leader usually serves within that time (a dead
/// leader is replaced about 225 ms after its last heartbeat), and a stall of the machine
/// that long then costs the clients latency, not a reconnect.
pub const QUORUM_LOST_CLOSE_MS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(String),
    #[error("log entry at zxid {zxid} cannot be decoded: {reason}")]
    CorruptEntry { zxid: i64, reason: String },
    #[error("ensemble: {0}")]
    Ensemble(String),
    #[error("TLS: {0}")]
    Tls(#[from] coordd_tls::TlsError),
}

/// What a server needs to run as one member of an ensemble (issue 5).
pub struct EnsembleMember<L, T> {
    /// This member's id; also the server id in the top byte of its session ids.
    pub id: u64,
    /// Every member's peer address, this one included; the same on every member.
    pub members: BTreeMap<u64, String>,
    pub raft: coordd_raft::Config,
    pub log: L,
    pub transport: T,
    /// Joining a running ensemble (`--join`): never initialize a cluster; wait to be
    /// added by a reconfig, or use the membership in the log.
    pub join: bool,
}

/// A running server.
pub struct Server {
    pub local_addr: SocketAddr,
    /// The TLS client port's address, when it is on.
    pub secure_addr: Option<SocketAddr>,
    /// The Prometheus metrics port's address, when it is on.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    /// Ensemble mode: cancelled when a reconfig removed this member.
    removed: CancellationToken,
    core: JoinHandle<Result<(), String>>,
    accept: Vec<JoinHandle<()>>,
}

impl Server {
    /// Recovers state from `config.data_dir`, then opens the client port.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        let state_config = StateConfig {
            ttl_enabled: config.ttl_enabled,
            superuser_digest: config.superuser_digest.clone(),
        };
        let storage_config = StorageConfig {
            dir: config.data_dir.clone(),
            fsync: config.fsync,
            ..StorageConfig::default()
        };
        let (wal, recovered) =
            Wal::open(storage_config).map_err(|e| ServerError::Storage(e.to_string()))?;
        let mut state = match recovered.snapshot {
            Some((zxid, image)) => {
                let s = StateMachine::restore(state_config.clone(), &image).map_err(|e| {
                    ServerError::CorruptEntry {
                        zxid,
                        reason: format!("snapshot: {e}"),
                    }
                })?;
                tracing::info!(zxid, "restored snapshot");
                s
            }
            None => StateMachine::new(state_config.clone()),
        };
        let mut replayed = 0u64;
        for (zxid, bytes) in &recovered.entries {
            if *zxid <= state.last_zxid() {
                continue;
            }
            let entry = Entry::decode(bytes).map_err(|e| ServerError::CorruptEntry {
                zxid: *zxid,
                reason: e.to_string(),
            })?;
            state.apply(&entry);
            replayed += 1;
        }
        tracing::info!(replayed, last_zxid = state.last_zxid(), "recovered");

        let ports = bind_client_ports(&config).await?;
        let local_addr = ports.local_addr;
        let (writer, durable) = LogWriter::spawn(wal, LogWriterConfig::default());
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let (core_tx, core_rx) = mpsc::channel(CORE_QUEUE_MESSAGES_MAX);
        let core = Core::new(config.clone(), state, Log::Local(writer), metrics.clone());
        let core = tokio::spawn(core.run(core_rx, durable, shutdown.clone()));
        let ctx = Arc::new(conn::ConnCtx {
            config: config.clone(),
            metrics,
            core: core_tx,
            started: Instant::now(),
        });
        let secure_addr = ports.secure_addr;
        let metrics_addr = ports.metrics_addr;
        let accept = ports.spawn(ctx, &shutdown);
        tracing::info!(addr = %local_addr, secure_addr = ?secure_addr, metrics_addr = ?metrics_addr, data_dir = %config.data_dir.display(), fsync = config.fsync, "coordd serving");
        Ok(Server {
            local_addr,
            secure_addr,
            metrics_addr,
            shutdown,
            removed: CancellationToken::new(),
            core,
            accept,
        })
    }

    /// Starts this server as one member of an ensemble: writes go through the Raft
    /// log (forwarded to the leader from the other members), every member serves
    /// reads from its own tree. Returns the Raft member too, for its transport's
    /// receiving side and its shutdown.
    ///
    /// Unfinished (issue 5): the tree is rebuilt from the Raft log and snapshots only,
    /// not from `config.data_dir`; `sync` and reconnects behind the client's last zxid
    /// are served as standalone does.
    pub async fn start_member<L: coordd_raft::LogStore, T: coordd_raft::Transport>(
        mut config: Config,
        ensemble: EnsembleMember<L, T>,
    ) -> Result<(Server, coordd_raft::Member), ServerError> {
        config.server_id = u8::try_from(ensemble.id).map_err(|_| {
            ServerError::Ensemble(format!(
                "member id {} does not fit in a session id's top byte (1..=255)",
                ensemble.id
            ))
        })?;
        // `Config::resolve` checks the frame limit against the default Raft settings; a
        // caller may pass others.
        let needed = replicated::payload_bytes_needed(config.frame_bytes_max);
        if needed > ensemble.raft.payload_max_bytes {
            return Err(ServerError::Ensemble(format!(
                "frame_bytes_max ({}) needs Raft payloads of up to {needed} bytes, but \
                 payload_max_bytes is {}: a write of a whole frame could never be logged",
                config.frame_bytes_max, ensemble.raft.payload_max_bytes
            )));
        }
        let state_config = StateConfig {
            ttl_enabled: config.ttl_enabled,
            superuser_digest: config.superuser_digest.clone(),
        };
        let ports = bind_client_ports(&config).await?;
        let local_addr = ports.local_addr;
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let (core_tx, core_rx) = mpsc::channel(CORE_QUEUE_MESSAGES_MAX);
        let (proposals_tx, proposals_rx) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let (durable_tx, durable_rx) = mpsc::unbounded_channel();
        let member_cell = Arc::new(std::sync::OnceLock::new());
        let removed = CancellationToken::new();
        let log = RaftLog::new(
            ensemble.id,
            member_cell.clone(),
            proposals_tx,
            durable_tx,
            state_config.clone(),
            QUORUM_LOST_CLOSE_MS,
        )
        .with_reconfig(core_tx.downgrade(), removed.clone());
        let state = StateMachine::new(state_config);
        // The core runs before the member starts: the member may apply entries (and
        // waits for the core to take them) while it starts.
        let core = Core::new(
            config.clone(),
            state,
            Log::Raft(Box::new(log)),
            metrics.clone(),
        );
        let core = tokio::spawn(tracing::Instrument::instrument(
            core.run(core_rx, durable_rx, shutdown.clone()),
            tracing::info_span!("member", id = ensemble.id),
        ));
        let applier = replicated::CoreApplier {
            core: core_tx.clone(),
        };
        let start = if ensemble.join {
            coordd_raft::Member::start_joining(
                ensemble.raft,
                ensemble.id,
                ensemble.members,
                ensemble.log,
                applier,
                ensemble.transport,
            )
            .await
        } else {
            coordd_raft::Member::start(
                ensemble.raft,
                ensemble.id,
                ensemble.members,
                ensemble.log,
                applier,
                ensemble.transport,
            )
            .await
        };
        let member = match start {
            Ok(m) => m,
            Err(e) => {
                shutdown.cancel();
                let _ = core.await;
                return Err(ServerError::Ensemble(e.to_string()));
            }
        };
        let _ = member_cell.set(member.clone());
        let batcher = replicated::Batcher::spawn(member.clone(), shutdown.clone());
        member.set_app_handler(replicated::app_handler(
            batcher.clone(),
            core_tx.clone(),
            member.clone(),
            removed.clone(),
        ));
        tokio::spawn(tracing::Instrument::instrument(
            replicated::run_proposer(
                member.clone(),
                batcher,
                proposals_rx,
                core_tx.clone(),
                shutdown.clone(),
            ),
            tracing::info_span!("member", id = ensemble.id),
        ));
        let ctx = Arc::new(conn::ConnCtx {
            config: config.clone(),
            metrics,
            core: core_tx,
            started: Instant::now(),
        });
        let secure_addr = ports.secure_addr;
        let metrics_addr = ports.metrics_addr;
        let accept = ports.spawn(ctx, &shutdown);
        tracing::info!(addr = %local_addr, secure_addr = ?secure_addr, metrics_addr = ?metrics_addr, id = ensemble.id, "coordd serving as an ensemble member");
        Ok((
            Server {
                local_addr,
                secure_addr,
                metrics_addr,
                shutdown,
                removed,
                core,
                accept,
            },
            member,
        ))
    }

    /// Starts this server as member `config.ensemble.id` of the ensemble in
    /// `config.ensemble`, over TCP: the peer port of this member (its
    /// `peer_listen_addr`, by default its address in the list) serves the other members;
    /// `log` is this member's Raft log. Returns the
    /// server, its Raft member and the peer listener (stop both after the server).
    pub async fn start_ensemble<L: coordd_raft::LogStore>(
        config: Config,
        log: L,
    ) -> Result<(Server, coordd_raft::Member, coordd_raft::PeerServer), ServerError> {
        let Some(ensemble) = config.ensemble.clone() else {
            return Err(ServerError::Ensemble("no ensemble configured".into()));
        };
        let peer_addr = ensemble.peer_listen_addr.clone();
        let raft = raft_config(&config);
        // With peer TLS, its handshake is bounded by the transport's own handshake limits
        // (`connect_timeout_ms` for the caller's connect + TLS + hello, the listener's
        // `handshake_timeout_ms` for the TLS handshake and again for the hello).
        let tcp = coordd_raft::TcpConfig::new(&raft.cluster_name);
        tcp.validate_for(&raft)
            .map_err(|e| ServerError::Ensemble(e.to_string()))?;
        // Bind the peer port first: a member that cannot take its own address must not
        // join (another process has it).
        let listener = TcpListener::bind(&peer_addr)
            .await
            .map_err(|e| ServerError::Ensemble(format!("peer port {peer_addr}: {e}")))?;
        let peer_tls = match &config.peer_tls {
            None => None,
            Some(f) => Some(coordd_raft::PeerTls::from_files(
                &f.cert_file,
                &f.key_file,
                &f.ca_file,
            )?),
        };
        let transport =
            coordd_raft::TcpTransport::with_tls(ensemble.id, tcp.clone(), peer_tls.clone())
                .map_err(|e| ServerError::Ensemble(e.to_string()))?;
        let (server, member) = Server::start_member(
            config,
            EnsembleMember {
                id: ensemble.id,
                members: ensemble.members,
                raft,
                log,
                transport,
                join: ensemble.join,
            },
        )
        .await?;
        let peers =
            coordd_raft::PeerServer::start_with_tls(listener, member.clone(), tcp, peer_tls)
                .map_err(|e| ServerError::Ensemble(format!("peer port {peer_addr}: {e}")))?;
        Ok((server, member, peers))
    }

    /// A token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Ensemble mode: a token cancelled once a reconfig removed this member (told by
    /// the leader, or it removed itself as leader). Never cancelled standalone.
    pub fn removed_token(&self) -> CancellationToken {
        self.removed.clone()
    }

    /// Waits until the server stops: after `shutdown_token().cancel()`, or on a fatal
    /// log failure (an error).
    pub async fn wait(self) -> Result<(), String> {
        let res = match self.core.await {
            Ok(r) => r,
            Err(e) => Err(format!("core task failed: {e}")),
        };
        self.shutdown.cancel();
        for a in self.accept {
            let _ = a.await;
        }
        res
    }
}

/// The Raft settings of an ensemble member. `snapshot_every_entries` sets how often a
/// member snapshots its Raft log (counted in Raft entries, each a batch of txns), capped
/// at the Raft default: the entries above the newest snapshot are held in memory. A small
/// value also keeps fewer entries behind the snapshot and purges in smaller steps, so
/// that the log is compacted as often as asked (it used to be ignored in an ensemble).
fn raft_config(config: &Config) -> coordd_raft::Config {
    let mut raft = coordd_raft::Config::default();
    let every = config
        .snapshot_every_entries
        .clamp(1, raft.snapshot_logs_since_last);
    raft.snapshot_logs_since_last = every;
    raft.max_in_snapshot_log_to_keep = raft.max_in_snapshot_log_to_keep.min(every);
    raft.purge_batch_size = raft.purge_batch_size.min(every);
    raft
}

/// The bound client ports: the plain one, and the TLS one when configured (its
/// certificate and key already loaded, so a bad file stops the start before any port
/// opens for clients).
struct ClientPorts {
    plain: TcpListener,
    local_addr: SocketAddr,
    secure: Option<(TcpListener, coordd_tls::TlsAcceptor)>,
    secure_addr: Option<SocketAddr>,
    metrics: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
    handshake_timeout_ms: u64,
}

impl ClientPorts {
    /// One accept loop per port, sharing the connection caps.
    fn spawn(self, ctx: Arc<conn::ConnCtx>, shutdown: &CancellationToken) -> Vec<JoinHandle<()>> {
        let caps = Arc::new(Caps::new(&ctx.config));
        let mut loops = vec![tokio::spawn(accept_loop(
            self.plain,
            None,
            caps.clone(),
            ctx.clone(),
            shutdown.clone(),
        ))];
        if let Some(listener) = self.metrics {
            loops.push(tokio::spawn(metrics::serve(
                listener,
                ctx.clone(),
                shutdown.clone(),
            )));
        }
        if let Some((listener, acceptor)) = self.secure {
            let tls = SecurePort {
                acceptor,
                handshake_timeout_ms: self.handshake_timeout_ms,
            };
            loops.push(tokio::spawn(accept_loop(
                listener,
                Some(Arc::new(tls)),
                caps,
                ctx,
                shutdown.clone(),
            )));
        }
        loops
    }
}

/// The client ports, and the addresses they got (a port may have been 0).
async fn bind_client_ports(config: &Config) -> Result<ClientPorts, ServerError> {
    let acceptor = match &config.secure_client {
        None => None,
        Some(s) => Some(coordd_tls::TlsAcceptor::from(coordd_tls::server_config(
            &s.cert_file,
            &s.key_file,
            s.ca_file.as_deref(),
        )?)),
    };
    let bind = |addr: SocketAddr| async move {
        let bind_error = |source| ServerError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok::<_, ServerError>((listener, local_addr))
    };
    let (plain, local_addr) = bind(config.client_addr).await?;
    let (secure, secure_addr) = match (&config.secure_client, acceptor) {
        (Some(s), Some(acceptor)) => {
            let (l, a) = bind(s.addr).await?;
            (Some((l, acceptor)), Some(a))
        }
        _ => (None, None),
    };
    let (metrics, metrics_addr) = match config.metrics_addr {
        Some(addr) => {
            let (l, a) = bind(addr).await?;
            (Some(l), Some(a))
        }
        None => (None, None),
    };
    Ok(ClientPorts {
        plain,
        local_addr,
        secure,
        secure_addr,
        metrics,
        metrics_addr,
        handshake_timeout_ms: config.tls_handshake_timeout_ms,
    })
}

/// The TLS side of the secure client port.
struct SecurePort {
    acceptor: coordd_tls::TlsAcceptor,
    handshake_timeout_ms: u64,
}

/// The connection caps, shared by the plain and the TLS port: `connections_max` and
/// `connections_per_ip_max` count the connections of both.
struct Caps {
    total: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    next_conn_id: std::sync::atomic::AtomicU64,
}

impl Caps {
    fn new(config: &Config) -> Self {
        Caps {
            total: Arc::new(Semaphore::new(config.connections_max)),
            per_ip: Arc::default(),
            next_conn_id: std::sync::atomic::AtomicU64::new(1),
        }
    }
}

/// Releases a connection's per-IP slot when dropped.
struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections on one client port until shutdown. On the TLS port the handshake
/// runs in the connection's task (after the caps admitted it, so the caps bound
/// handshakes too), within `tls_handshake_timeout_ms`; a failed one (a plain-TCP client,
/// a wrong certificate) closes the connection and is logged at debug.
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<SecurePort>>,
    caps: Arc<Caps>,
    ctx: Arc<conn::ConnCtx>,
    shutdown: CancellationToken,
) {
    let total = caps.total.clone();
    let per_ip = caps.per_ip.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            ctx.metrics
                .limit_hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, limit = ctx.config.connections_max, "connection refused: connections_max reached");
            drop(stream);
            continue;
        };
        let slot = {
            let mut counts = per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(peer.ip()).or_insert(0);
            if *n >= ctx.config.connections_per_ip_max {
                None
            } else {
                *n += 1;
                Some(IpSlot {
                    ip: peer.ip(),
                    counts: per_ip.clone(),
                })
            }
        };
        let Some(slot) = slot else {
            ctx.metrics
                .limit_hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, limit = ctx.config.connections_per_ip_max, "connection refused: connections_per_ip_max reached for this address");
            drop(stream);
            continue;
        };
        let conn_id = caps
            .next_conn_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        ctx.metrics
            .connections_alive
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            match tls {
                None => conn::serve(stream, peer, conn_id, ctx.clone(), shutdown).await,
                Some(tls) => {
                    let _ = stream.set_nodelay(true);
                    let handshake =
                        coordd_tls::accept(&tls.acceptor, stream, tls.handshake_timeout_ms);
                    let accepted = tokio::select! {
                        a = handshake => Some(a),
                        _ = shutdown.cancelled() => None,
                    };
                    match accepted {
                        Some(Ok(s)) => {
                            let (rd, wr) = tokio::io::split(s);
                            conn::serve_split(rd, wr, peer, conn_id, ctx.clone(), shutdown).await
                        }
                        Some(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS client connection closed")
                        }
                        None => {}
                    }
                }
            }
            ctx.metrics
                .connections_alive
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            drop(slot);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Flags};

    fn config(snapshot_every_entries: Option<u64>) -> Config {
        let flags = Flags {
            id: Some(1),
            ensemble: Some("1=127.0.0.1:2888".into()),
            snapshot_every_entries,
            ..Default::default()
        };
        Config::resolve(flags, FileConfig::default()).unwrap()
    }

    /// An ensemble member used to ignore `snapshot_every_entries` (always the Raft
    /// default), so a small value never compacted its log.
    #[test]
    fn raft_snapshots_follow_snapshot_every_entries_up_to_the_raft_default() {
        let default = coordd_raft::Config::default();
        let r = raft_config(&config(None));
        assert_eq!(
            r, default,
            "the default (100000) is capped at the Raft default"
        );
        let r = raft_config(&config(Some(25)));
        assert_eq!(
            (
                r.snapshot_logs_since_last,
                r.max_in_snapshot_log_to_keep,
                r.purge_batch_size
            ),
            (25, 25, 25)
        );
        r.validate().unwrap();
        let r = raft_config(&config(Some(1)));
        assert_eq!(r.snapshot_logs_since_last, 1);
        r.validate().unwrap();
        let r = raft_config(&config(Some(2_000)));
        assert_eq!(
            (
                r.snapshot_logs_since_last,
                r.max_in_snapshot_log_to_keep,
                r.purge_batch_size
            ),
            (
                2_000,
                default.max_in_snapshot_log_to_keep,
                default.purge_batch_size
            )
        );
    }
}
