//! The `Client` handle and its typed calls.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use coordd_proto::path::validate_path;
use coordd_proto::records::*;
use coordd_proto::{
    AddWatchMode, CreateMode, ErrorCode, EventType, KeeperState, MultiOp, MultiResult, OpCode,
    ReadOp, Reader, Record, Request, WatcherType,
};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{info, warn};

use crate::conn::{
    connect_once, encode_request, lock, Command, CommandKind, Handshake, Reply, SessionTask,
    Shared, REQUEST_QUEUE_MAX,
};
use crate::session::{Backoff, Lease, ServerList, SessionState};
use crate::watches::{WatchReg, WatchRegistry};
use crate::{ClientConfig, Error, Result};

/// A watch event or a session state change (`event_type == EventType::None`, empty
/// path), as ZooKeeper's `WatchedEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedEvent {
    pub event_type: EventType,
    pub state: KeeperState,
    pub path: String,
}

/// The stream of [`WatchedEvent`]s of one client, in the order the server sent them.
///
/// Bounded by [`ClientConfig::events_queue_max`]. When it is full the client stops
/// processing the server's frames (replies included) until an event is taken: events
/// are never dropped, but an application that stops draining this stalls its own
/// calls (they end with `Error::Timeout`), holds back reconnects (the Disconnected
/// event must be queued first) and, after a session timeout without a processed
/// reply, loses the session. Do not await a call per event while the queue may be
/// full. Dropping `Events` is fine: events are then discarded.
///
/// The stream ends (`recv` returns `None`) after the session's terminal event
/// (`Expired` or `Closed`).
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<WatchedEvent>,
}

impl Events {
    pub async fn recv(&mut self) -> Option<WatchedEvent> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Result<WatchedEvent, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }

    /// The underlying receiver (e.g. to wrap in a `ReceiverStream`).
    pub fn into_inner(self) -> mpsc::Receiver<WatchedEvent> {
        self.rx
    }
}

/// A handle to one ZooKeeper session. Cheap to clone; every clone talks to the same
/// session task. When the last clone is dropped the session is closed.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cmd_tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    cfg: Arc<ClientConfig>,
}

impl Drop for Inner {
    /// The last handle is gone. Connected, the session task sees its request queue
    /// close and sends closeSession; otherwise nothing can reach the server, so the
    /// task is told to finish now instead of reconnecting for nobody.
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        if self.shared.state() != SessionState::Connected {
            self.shared.close_now.notify_one();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &format_args!("{:#x}", self.session_id()))
            .field("state", &self.state())
            .finish()
    }
}

fn check_path(path: &str, sequential: bool) -> Result<()> {
    validate_path(path, sequential).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// The body of a successful reply, or the server's error.
fn ok_body(reply: Reply) -> Result<BytesMut> {
    if reply.err != 0 {
        Err(Error::from_code(reply.err))
    } else {
        Ok(reply.body)
    }
}

fn decode<T: Record>(body: &[u8]) -> Result<T> {
    Ok(T::from_bytes(body)?)
}

/// Turns a multi reply into results or [`Error::MultiFailed`]. The failing op is the
/// first whose result is an error other than Ok: ZooKeeper reports the ops before it
/// as Ok (0) and the ones after it as RuntimeInconsistency.
pub(crate) fn multi_outcome(reply: Reply) -> Result<Vec<MultiResult>> {
    let results = match MultiResult::decode_all(&mut Reader::new(&reply.body)) {
        Ok(r) => r,
        // A server that put the error in the header and no usable body.
        Err(_) if reply.err != 0 => return Err(Error::from_code(reply.err)),
        Err(e) => return Err(e.into()),
    };
    let failed = results.iter().enumerate().find_map(|(i, r)| match r {
        MultiResult::Error(c) if *c != ErrorCode::Ok => Some((i, *c)),
        _ => None,
    });
    match failed {
        Some((index, code)) => Err(Error::MultiFailed {
            index,
            code,
            results,
        }),
        None if reply.err != 0 => Err(Error::from_code(reply.err)),
        None => Ok(results),
    }
}

impl Client {
    /// Connects to one of `cfg.servers` (shuffled), creates a session and starts the
    /// session task. Retries across the servers with backoff until
    /// `cfg.request_timeout_ms` has passed, then returns the last error.
    pub async fn connect(cfg: ClientConfig) -> Result<(Client, Events)> {
        cfg.validate()?;
        let tls = cfg.tls.as_ref().map(|t| t.connector()).transpose()?;
        let cfg = Arc::new(cfg);
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut servers = ServerList::new(cfg.servers.clone(), &mut rng);
        let mut backoff = Backoff::new(
            Duration::from_millis(cfg.reconnect_backoff_min_ms as u64),
            Duration::from_millis(cfg.reconnect_backoff_max_ms as u64),
        );
        let deadline = Instant::now() + Duration::from_millis(cfg.request_timeout_ms as u64);
        let req = ConnectRequest {
            protocol_version: coordd_proto::PROTOCOL_VERSION,
            last_zxid_seen: 0,
            timeout_ms: cfg.session_timeout_ms as i32,
            session_id: 0,
            // What ZooKeeper's client sends before it has a session.
            passwd: vec![0; 16],
            read_only: cfg.read_only,
        };
        let hs: Handshake = loop {
            let addr = servers.next_server().to_owned();
            let attempt_deadline =
                deadline.min(Instant::now() + Duration::from_millis(cfg.connect_timeout_ms as u64));
            let err = match timeout_at(
                attempt_deadline,
                connect_once(&addr, &req, cfg.frame_bytes_max, tls.as_ref()),
            )
            .await
            {
                Ok(Ok(hs)) if hs.resp.timeout_ms > 0 && hs.resp.session_id != 0 => break hs,
                Ok(Ok(_)) => Error::Protocol(format!("{addr} refused to create a session")),
                Ok(Err(e)) => e,
                Err(_) => Error::Timeout,
            };
            warn!(server = %addr, error = %err, "connect attempt failed");
            let now = Instant::now();
            if now >= deadline {
                return Err(err);
            }
            sleep_until(deadline.min(now + backoff.next_delay(&mut rng))).await;
        };
        backoff.reset();
        info!(
            server = %hs.addr,
            session_id = format_args!("{:#x}", hs.resp.session_id),
            timeout_ms = hs.resp.timeout_ms,
            "session created"
        );
        let timeout = Duration::from_millis(hs.resp.timeout_ms as u64);
        let (state_tx, _) = watch::channel(SessionState::Connected);
        let shared = Arc::new(Shared {
            state: state_tx,
            session_id: AtomicI64::new(hs.resp.session_id),
            passwd: Mutex::new(hs.resp.passwd.clone()),
            timeout_ms: AtomicU32::new(hs.resp.timeout_ms as u32),
            last_zxid: AtomicI64::new(0),
            lease: Mutex::new(Lease::new(hs.sent_at, timeout)),
            watches: Mutex::new(WatchRegistry::default()),
            auths: Mutex::new(cfg.auth.clone()),
            closing: AtomicBool::new(false),
            close_now: Notify::new(),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(REQUEST_QUEUE_MAX);
        let (events_tx, events_rx) = mpsc::channel(cfg.events_queue_max);
        let task = SessionTask {
            shared: shared.clone(),
            cfg: cfg.clone(),
            cmd_rx,
            events: events_tx,
            servers,
            backoff,
            rng,
            xid: 0,
            outbox: Default::default(),
            handles_dropped: false,
            tls,
        };
        tokio::spawn(task.run(hs));
        Ok((
            Client {
                inner: Arc::new(Inner {
                    cmd_tx,
                    shared,
                    cfg,
                }),
            },
            Events { rx: events_rx },
        ))
    }

    // ---- session information -------------------------------------------------------

    /// The lease deadline: the send time of the latest request or ping whose reply came
    /// back, plus the negotiated session timeout. Until then the ensemble cannot have
    /// expired the session (keep a margin for clock rate differences). After expiry or
    /// close it is at most the moment that was learned.
    pub fn lease(&self) -> Instant {
        lock(&self.inner.shared.lease).deadline()
    }

    /// Time left on the lease (zero once it has passed).
    pub fn lease_remaining(&self) -> Duration {
        lock(&self.inner.shared.lease).remaining(Instant::now())
    }

    /// The session timeout the server granted.
    pub fn session_timeout_ms(&self) -> u32 {
        self.inner.shared.timeout_ms.load(Ordering::Acquire)
    }

    pub fn session_id(&self) -> i64 {
        self.inner.shared.session_id.load(Ordering::Acquire)
    }

    pub fn session_password(&self) -> Vec<u8> {
        lock(&self.inner.shared.passwd).clone()
    }

    /// The largest zxid seen in a reply (not in pings or watch events), sent on
    /// reconnect so that no server behind it accepts the session.
    pub fn last_zxid_seen(&self) -> i64 {
        self.inner.shared.last_zxid.load(Ordering::Acquire)
    }

    pub fn state(&self) -> SessionState {
        self.inner.shared.state()
    }

    /// Follows the session state.
    pub fn state_watch(&self) -> watch::Receiver<SessionState> {
        self.inner.shared.state.subscribe()
    }

    /// The watches this client believes the server holds (what it would re-arm on a
    /// reconnect).
    pub fn watches(&self) -> WatchRegistry {
        lock(&self.inner.shared.watches).clone()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    // ---- plumbing ------------------------------------------------------------------

    /// The error a call gets when the session task is gone or the client is closing.
    fn terminal_error(&self) -> Error {
        match self.state() {
            SessionState::Expired => Error::SessionExpired,
            SessionState::Closed => Error::Closed,
            _ if self.inner.shared.closing.load(Ordering::Acquire) => Error::Closed,
            _ => Error::ConnectionLoss,
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.state().is_terminal() || self.inner.shared.closing.load(Ordering::Acquire) {
            return Err(self.terminal_error());
        }
        Ok(())
    }

    async fn submit(&self, frame: BytesMut, kind: CommandKind) -> Result<Reply> {
        if frame.len().saturating_sub(4) > self.inner.cfg.frame_bytes_max {
            return Err(Error::InvalidArgument(format!(
                "request of {} bytes exceeds the frame limit of {} bytes",
                frame.len() - 4,
                self.inner.cfg.frame_bytes_max
            )));
        }
        let (tx, rx) = oneshot::channel();
        let cmd = Command {
            frame,
            kind,
            reply: tx,
        };
        let deadline =
            Instant::now() + Duration::from_millis(self.inner.cfg.request_timeout_ms as u64);
        let outcome = timeout_at(deadline, async {
            self.inner.cmd_tx.send(cmd).await.map_err(|_| ())?;
            rx.await.map_err(|_| ())
        })
        .await;
        match outcome {
            Ok(Ok(reply)) => reply,
            Ok(Err(())) => Err(self.terminal_error()),
            // In-flight requests fail with ConnectionLoss as soon as a connection drops,
            // so a request still unanswered while disconnected never got sent.
            Err(_) => Err(match self.state() {
                SessionState::Connected => Error::Timeout,
                SessionState::Connecting | SessionState::Disconnected => Error::ConnectionLoss,
                _ => self.terminal_error(),
            }),
        }
    }

    async fn call(&self, req: Request, watch: Option<WatchReg>) -> Result<Reply> {
        self.check_open()?;
        let op = req.op_code();
        self.submit(encode_request(&req), CommandKind::Request { op, watch })
            .await
    }

    async fn call_ok(&self, req: Request, watch: Option<WatchReg>) -> Result<BytesMut> {
        ok_body(self.call(req, watch).await?)
    }

    // ---- operations ----------------------------------------------------------------

    /// Creates a node; returns its path (with the sequential suffix if any).
    /// `CreateMode::Container` is sent as createContainer; the TTL modes need
    /// [`create_ttl`](Self::create_ttl).
    pub async fn create(
        &self,
        path: &str,
        data: &[u8],
        acl: &[Acl],
        mode: CreateMode,
    ) -> Result<String> {
        if mode.is_container() {
            return Ok(self.create_container(path, data, acl).await?.0);
        }
        if mode.is_ttl() {
            return Err(Error::InvalidArgument(
                "TTL create modes need create_ttl".into(),
            ));
        }
        check_path(path, mode.is_sequential())?;
        let body = self
            .call_ok(
                Request::Create {
                    op: OpCode::Create,
                    req: create_request(path, data, acl, mode),
                    ttl: 0,
                },
                None,
            )
            .await?;
        Ok(decode::<CreateResponse>(&body)?.path)
    }

    /// Creates a node and returns its path and stat.
    pub async fn create2(
        &self,
        path: &str,
        data: &[u8],
        acl: &[Acl],
        mode: CreateMode,
    ) -> Result<(String, Stat)> {
        if mode.is_ttl() {
            return Err(Error::InvalidArgument(
                "TTL create modes need create_ttl".into(),
            ));
        }
        let op = if mode.is_container() {
            OpCode::CreateContainer
        } else {
            OpCode::Create2
        };
        self.create_with(op, path, data, acl, mode, 0).await
    }

    /// Creates a node that the server deletes once it has had no children and no
    /// change for `ttl_ms`. `mode` must be `PersistentWithTtl` or
    /// `PersistentSequentialWithTtl` (servers need `extendedTypesEnabled`).
    pub async fn create_ttl(
        &self,
        path: &str,
        data: &[u8],
        acl: &[Acl],
        mode: CreateMode,
        ttl_ms: i64,
    ) -> Result<(String, Stat)> {
        if !mode.is_ttl() {
            return Err(Error::InvalidArgument(
                "create_ttl needs a TTL create mode".into(),
            ));
        }
        if ttl_ms <= 0 || ttl_ms > coordd_proto::TTL_MAX_MS {
            return Err(Error::InvalidArgument(format!(
                "ttl {ttl_ms} ms out of range"
            )));
        }
        self.create_with(OpCode::CreateTtl, path, data, acl, mode, ttl_ms)
            .await
    }

    /// Creates a container node: the server deletes it once its last child is gone.
    pub async fn create_container(
        &self,
        path: &str,
        data: &[u8],
        acl: &[Acl],
    ) -> Result<(String, Stat)> {
        self.create_with(
            OpCode::CreateContainer,
            path,
            data,
            acl,
            CreateMode::Container,
            0,
        )
        .await
    }

    async fn create_with(
        &self,
        op: OpCode,
        path: &str,
        data: &[u8],
        acl: &[Acl],
        mode: CreateMode,
        ttl: i64,
    ) -> Result<(String, Stat)> {
        check_path(path, mode.is_sequential())?;
        let body = self
            .call_ok(
                Request::Create {
                    op,
                    req: create_request(path, data, acl, mode),
                    ttl,
                },
                None,
            )
            .await?;
        // ZooKeeper answers create2, createContainer and createTTL with Create2Response.
        let r = decode::<Create2Response>(&body)?;
        Ok((r.path, r.stat))
    }

    /// Deletes a node; `version` None matches any version.
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<()> {
        check_path(path, false)?;
        self.call_ok(
            Request::Delete(DeleteRequest {
                path: path.to_owned(),
                version: version.unwrap_or(-1),
            }),
            None,
        )
        .await?;
        Ok(())
    }

    /// The node's stat, or None if it does not exist. With `watch`, arms a data watch
    /// on an existing node or an exist watch on a missing one (fires on creation).
    pub async fn exists(&self, path: &str, watch: bool) -> Result<Option<Stat>> {
        check_path(path, false)?;
        let reply = self
            .call(
                Request::Exists(PathWatchRequest {
                    path: path.to_owned(),
                    watch,
                }),
                watch.then(|| WatchReg::Exists(path.to_owned())),
            )
            .await?;
        if reply.err == ErrorCode::NoNode.code() {
            return Ok(None);
        }
        let body = ok_body(reply)?;
        Ok(Some(decode::<StatResponse>(&body)?.stat))
    }

    /// The node's data and stat; with `watch`, arms a data watch.
    pub async fn get_data(&self, path: &str, watch: bool) -> Result<(Vec<u8>, Stat)> {
        check_path(path, false)?;
        let body = self
            .call_ok(
                Request::GetData(PathWatchRequest {
                    path: path.to_owned(),
                    watch,
                }),
                watch.then(|| WatchReg::Data(path.to_owned())),
            )
            .await?;
        let r = decode::<GetDataResponse>(&body)?;
        Ok((r.data, r.stat))
    }

    /// Sets the node's data; `version` None matches any version.
    pub async fn set_data(&self, path: &str, data: &[u8], version: Option<i32>) -> Result<Stat> {
        check_path(path, false)?;
        let body = self
            .call_ok(
                Request::SetData(SetDataRequest {
                    path: path.to_owned(),
                    data: data.to_vec(),
                    version: version.unwrap_or(-1),
                }),
                None,
            )
            .await?;
        Ok(decode::<StatResponse>(&body)?.stat)
    }

    /// The node's children (names, not paths); with `watch`, arms a child watch.
    pub async fn get_children(&self, path: &str, watch: bool) -> Result<Vec<String>> {
        check_path(path, false)?;
        let body = self
            .call_ok(
                Request::GetChildren(PathWatchRequest {
                    path: path.to_owned(),
                    watch,
                }),
                watch.then(|| WatchReg::Child(path.to_owned())),
            )
            .await?;
        Ok(decode::<GetChildrenResponse>(&body)?.children)
    }

    /// The node's children and its stat; with `watch`, arms a child watch.
    pub async fn get_children2(&self, path: &str, watch: bool) -> Result<(Vec<String>, Stat)> {
        check_path(path, false)?;
        let body = self
            .call_ok(
                Request::GetChildren2(PathWatchRequest {
                    path: path.to_owned(),
                    watch,
                }),
                watch.then(|| WatchReg::Child(path.to_owned())),
            )
            .await?;
        let r = decode::<GetChildren2Response>(&body)?;
        Ok((r.children, r.stat))
    }

    /// The number of nodes under `path` (all depths, `path` itself excluded).
    pub async fn get_all_children_number(&self, path: &str) -> Result<i32> {
        check_path(path, false)?;
        let body = self
            .call_ok(
                Request::GetAllChildrenNumber(PathRequest {
                    path: path.to_owned(),
                }),
                None,
            )
            .await?;
        Ok(decode::<GetAllChildrenNumberResponse>(&body)?.total_number)
    }

    /// The paths of this session's ephemeral nodes under `prefix` ("/" for all).
    pub async fn get_ephemerals(&self, prefix: &str) -> Result<Vec<String>> {
        check_path(prefix, false)?;
        let body = self
            .call_ok(
                Request::GetEphemerals(PathRequest {
                    path: prefix.to_owned(),
                }),
                None,
            )
            .await?;
        Ok(decode::<GetEphemeralsResponse>(&body)?.ephemerals)
    }

    pub async fn get_acl(&self, path: &str) -> Result<(Vec<Acl>, Stat)> {
        check_path(path, false)?;
        let body = self
            .call_ok(
                Request::GetAcl(PathRequest {
                    path: path.to_owned(),
                }),
                None,
            )
            .await?;
        let r = decode::<GetAclResponse>(&body)?;
        Ok((r.acl, r.stat))
    }

    /// Sets the node's ACL; `version` (the ACL version, `aversion`) None matches any.
    pub async fn set_acl(&self, path: &str, acl: &[Acl], version: Option<i32>) -> Result<Stat> {
        check_path(path, false)?;
        let body = self
            .call_ok(
                Request::SetAcl(SetAclRequest {
                    path: path.to_owned(),
                    acl: acl.to_vec(),
                    version: version.unwrap_or(-1),
                }),
                None,
            )
            .await?;
        Ok(decode::<StatResponse>(&body)?.stat)
    }

    /// Fails with BadVersion unless the node's version is `version` (NoNode if absent).
    ///
    /// Sent as a one-op multi: Apache ZooKeeper 3.8 never answers a standalone check
    /// (op 13), which would stall the connection until the next reply shows the xid
    /// gap and drops it.
    pub async fn check(&self, path: &str, version: i32) -> Result<()> {
        let op = MultiOp::Check(CheckVersionRequest {
            path: path.to_owned(),
            version,
        });
        match self.multi(vec![op]).await {
            Ok(_) => Ok(()),
            Err(Error::MultiFailed { code, .. }) => Err(Error::Server(code)),
            Err(e) => Err(e),
        }
    }

    /// Runs `ops` as one transaction. On success, one result per op. If an op fails,
    /// nothing is applied and the error is [`Error::MultiFailed`] with the index and
    /// code of the failing op and all per-op results.
    pub async fn multi(&self, ops: Vec<MultiOp>) -> Result<Vec<MultiResult>> {
        for op in &ops {
            let sequential = matches!(op, MultiOp::Create { req, .. }
                if CreateMode::try_from(req.flags).is_ok_and(|m| m.is_sequential()));
            check_path(op.path(), sequential)?;
        }
        let reply = self.call(Request::Multi(ops), None).await?;
        multi_outcome(reply)
    }

    /// Runs reads together; each result is the op's result or `MultiResult::Error`.
    /// Watches cannot be armed through a multiRead (as in ZooKeeper's client, whose
    /// read ops never watch): a `ReadOp` with `watch: true` is rejected.
    pub async fn multi_read(&self, ops: Vec<ReadOp>) -> Result<Vec<MultiResult>> {
        for op in &ops {
            let (ReadOp::GetChildren(r) | ReadOp::GetData(r)) = op;
            check_path(&r.path, false)?;
            if r.watch {
                return Err(Error::InvalidArgument(
                    "multi_read cannot arm watches; use get_data / get_children".into(),
                ));
            }
        }
        let body = self.call_ok(Request::MultiRead(ops), None).await?;
        Ok(MultiResult::decode_all(&mut Reader::new(&body))?)
    }

    /// ZooKeeper's reconfig (op 16): `joining` server specs (`server.4=host:port...` or
    /// `4=host:port`, comma-separated), `leaving` member ids (`4,5`), or the whole
    /// `new_members` list; `from_config` -1 or the configuration version the change is
    /// based on. Returns the new configuration (`/zookeeper/config`'s format) and a stat.
    pub async fn reconfig(
        &self,
        joining: &str,
        leaving: &str,
        new_members: &str,
        from_config: i64,
    ) -> Result<(Vec<u8>, Stat)> {
        let body = self
            .call_ok(
                Request::Reconfig(coordd_proto::ReconfigRequest {
                    joining_servers: joining.to_owned(),
                    leaving_servers: leaving.to_owned(),
                    new_members: new_members.to_owned(),
                    cur_config_id: from_config,
                }),
                None,
            )
            .await?;
        let r = decode::<GetDataResponse>(&body)?;
        Ok((r.data, r.stat))
    }

    /// Makes the connected server catch up with the leader up to now.
    pub async fn sync(&self, path: &str) -> Result<()> {
        check_path(path, false)?;
        self.call_ok(
            Request::Sync(PathRequest {
                path: path.to_owned(),
            }),
            None,
        )
        .await?;
        Ok(())
    }

    /// Adds credentials to the session (e.g. `("digest", b"user:password")`). Once the
    /// server accepts them they are re-sent after every reconnect. A rejection is
    /// `Error::Server(AuthFailed)` plus an `AuthFailed` state event; unlike ZooKeeper's
    /// Java client the session stays usable.
    pub async fn add_auth(&self, scheme: &str, auth: &[u8]) -> Result<()> {
        self.check_open()?;
        let req = Request::Auth(AuthPacket {
            auth_type: 0,
            scheme: scheme.to_owned(),
            auth: auth.to_vec(),
        });
        let mut frame = BytesMut::new();
        coordd_proto::frame::write_frame(&mut frame, |o| {
            req.encode_with_header(coordd_proto::xid::AUTH, o)
        });
        let reply = self
            .submit(
                frame,
                CommandKind::Auth {
                    scheme: scheme.to_owned(),
                    auth: auth.to_vec(),
                },
            )
            .await?;
        ok_body(reply).map(|_| ())
    }

    /// Adds a persistent (optionally recursive) watch on `path`; it stays until
    /// [`remove_watches`](Self::remove_watches) and is re-armed on reconnect.
    pub async fn add_watch(&self, path: &str, mode: AddWatchMode) -> Result<()> {
        check_path(path, false)?;
        self.call_ok(
            Request::AddWatch(AddWatchRequest {
                path: path.to_owned(),
                mode: mode.code(),
            }),
            Some(WatchReg::Persistent(path.to_owned(), mode)),
        )
        .await?;
        Ok(())
    }

    /// Removes this session's watches of `kind` on `path`, on the server and here.
    /// Emits one `*WatchRemoved` event per kind of watch removed.
    pub async fn remove_watches(&self, path: &str, kind: WatcherType) -> Result<()> {
        check_path(path, false)?;
        self.call_ok(
            Request::RemoveWatches(WatchTypeRequest {
                path: path.to_owned(),
                watcher_type: kind.code(),
            }),
            Some(WatchReg::Remove(path.to_owned(), kind)),
        )
        .await?;
        Ok(())
    }

    /// Asks the server whether this session has watches of `kind` on `path`
    /// (`Error::Server(NoWatcher)` if not).
    pub async fn check_watches(&self, path: &str, kind: WatcherType) -> Result<()> {
        check_path(path, false)?;
        self.call_ok(
            Request::CheckWatches(WatchTypeRequest {
                path: path.to_owned(),
                watcher_type: kind.code(),
            }),
            None,
        )
        .await?;
        Ok(())
    }

    /// The identities this session is authenticated as.
    pub async fn who_am_i(&self) -> Result<Vec<ClientInfo>> {
        let body = self.call_ok(Request::WhoAmI, None).await?;
        Ok(decode::<WhoAmIResponse>(&body)?.client_info)
    }

    /// Creates `path` and its missing ancestors as empty persistent nodes (open ACL),
    /// ignoring the ones that exist.
    pub async fn ensure_path(&self, path: &str) -> Result<()> {
        check_path(path, false)?;
        let acl = Acl::open_unsafe();
        for (i, _) in path.match_indices('/').skip(1) {
            self.create_ignoring_exists(&path[..i], &acl).await?;
        }
        if path != "/" {
            self.create_ignoring_exists(path, &acl).await?;
        }
        Ok(())
    }

    async fn create_ignoring_exists(&self, path: &str, acl: &[Acl]) -> Result<()> {
        match self.create(path, &[], acl, CreateMode::Persistent).await {
            Ok(_) | Err(Error::Server(ErrorCode::NodeExists)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Closes the session: sends closeSession and waits for the reply (the server then
    /// deletes the session's ephemeral nodes), then the state is Closed and an event
    /// (None, Closed) is queued. Calls made after `close` starts fail with
    /// `Error::Closed`; calls made before it are answered first. When not connected,
    /// closes locally at once (the session then expires on the ensemble). If the
    /// closeSession reply does not come (connection lost, timeout) the client still
    /// closes locally and that error is returned: the session may linger on the
    /// ensemble until it expires. Closing an expired or closed client is a no-op.
    pub async fn close(&self) -> Result<()> {
        let shared = &self.inner.shared;
        if self.state().is_terminal() {
            return Ok(());
        }
        let already_closing = shared.closing.swap(true, Ordering::AcqRel);
        let graceful = if !already_closing && self.state() == SessionState::Connected {
            self.submit(
                encode_request(&Request::CloseSession),
                CommandKind::Request {
                    op: OpCode::CloseSession,
                    watch: None,
                },
            )
            .await
            .and_then(ok_body)
            .map(|_| ())
        } else {
            Ok(())
        };
        // Finish now if the graceful path did not (disconnected, or no reply).
        shared.close_now.notify_one();
        let mut state = self.state_watch();
        let deadline =
            Instant::now() + Duration::from_millis(self.inner.cfg.request_timeout_ms as u64);
        let _ = timeout_at(deadline, state.wait_for(|s| s.is_terminal())).await;
        match graceful {
            Err(Error::Closed) => Ok(()),
            other => other,
        }
    }
}

fn create_request(path: &str, data: &[u8], acl: &[Acl], mode: CreateMode) -> CreateRequest {
    CreateRequest {
        path: path.to_owned(),
        data: data.to_vec(),
        acl: acl.to_vec(),
        flags: mode.code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone>() {}

    #[test]
    fn client_is_send_sync_clone() {
        assert_send_sync::<Client>();
    }

    fn reply(err: i32, results: &[MultiResult]) -> Reply {
        let mut body = BytesMut::new();
        MultiResult::encode_all(results, &mut body);
        Reply { err, body }
    }

    #[test]
    fn multi_failure_reports_the_failing_op() {
        let rs = [
            MultiResult::Error(ErrorCode::Ok),
            MultiResult::Error(ErrorCode::NodeExists),
            MultiResult::Error(ErrorCode::RuntimeInconsistency),
        ];
        match multi_outcome(reply(0, &rs)) {
            Err(Error::MultiFailed {
                index,
                code,
                results,
            }) => {
                assert_eq!(index, 1);
                assert_eq!(code, ErrorCode::NodeExists);
                assert_eq!(results.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        // Some servers also put the code in the reply header.
        assert!(matches!(
            multi_outcome(reply(ErrorCode::NodeExists.code(), &rs)),
            Err(Error::MultiFailed { index: 1, .. })
        ));
        let ok = [MultiResult::Delete, MultiResult::Check];
        assert_eq!(multi_outcome(reply(0, &ok)).unwrap(), ok);
        let bare = Reply {
            err: ErrorCode::BadArguments.code(),
            body: BytesMut::new(),
        };
        assert!(matches!(
            multi_outcome(bare),
            Err(Error::Server(ErrorCode::BadArguments))
        ));
    }
}
