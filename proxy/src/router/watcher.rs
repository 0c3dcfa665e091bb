//! The watcher task: keeps the [`RouteTable`](crate::topology::RouteTable) current
//! from the cluster's znodes (DESIGN.md section 5).
//!
//! - One persistent recursive watch on `clusters/<c>`; each event re-reads only what
//!   it names (the leader, one member, the member list) and publishes a new snapshot.
//! - A server that answers Unimplemented to `addWatch` (older than ZooKeeper 3.6), or
//!   [`WatchMode::OneShot`]: one-shot watches, re-armed by the read each event causes
//!   (getChildren on `members`, getData on each member, getData or exists on `leader`).
//! - After every reconnect (the session state turns Connected again) a full re-read:
//!   events may have been missed while disconnected. After expiry a new session,
//!   watch and full re-read; until then routing keeps the last snapshot.
//! - A read that fails marks the view dirty; a full re-read follows, retried with
//!   a bounded backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coordd_client::{
    AddWatchMode, Client, ClientConfig, ErrorCode, EventType, Events, SessionState, WatchedEvent,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::election::Epoch;
use crate::namespace::ClusterPath;
use crate::records::{self, LeaderRecord, MemberRecord};
use crate::topology::{Endpoint, Topology};

use super::{RouterConfig, Shared, WatchMode};

/// A request for a full re-read; the answer says whether it succeeded.
pub(crate) type RefreshReply = oneshot::Sender<Result<(), coordd_client::Error>>;

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the records say, as last read.
#[derive(Debug, Default, Clone)]
struct View {
    leader: Option<(LeaderRecord, Epoch)>,
    members: BTreeMap<String, MemberRecord>,
}

pub(crate) struct Watcher {
    shared: Arc<Shared>,
    client: Client,
    /// One-shot watches in use (by choice or because addWatch is not implemented).
    one_shot: bool,
    view: View,
}

pub(crate) fn client_config(cfg: &RouterConfig) -> ClientConfig {
    let c = ClientConfig::new(cfg.coord_servers.iter().cloned())
        .with_session_timeout_ms(cfg.session_timeout_ms)
        .with_connect_timeout_ms(cfg.coord_connect_timeout_ms)
        .with_request_timeout_ms(cfg.coord_request_timeout_ms);
    match &cfg.coord_tls {
        Some(tls) => c.with_tls(tls.clone()),
        None => c,
    }
}

impl Watcher {
    /// Connects a session, arms the watch and reads everything; publishes.
    pub(crate) async fn start(
        shared: Arc<Shared>,
    ) -> Result<(Watcher, Events), coordd_client::Error> {
        let (client, events) = Client::connect(client_config(&shared.cfg)).await?;
        let mut w = Watcher {
            one_shot: shared.cfg.watch_mode == WatchMode::OneShot,
            shared,
            client,
            view: View::default(),
        };
        w.arm().await?;
        w.full_read().await?;
        w.synced();
        Ok((w, events))
    }

    /// Adds the persistent recursive watch, or notes that one-shot watches are needed.
    async fn arm(&mut self) -> Result<(), coordd_client::Error> {
        if self.one_shot {
            return Ok(());
        }
        let path = self.shared.ns.cluster();
        match self
            .client
            .add_watch(path, AddWatchMode::PersistentRecursive)
            .await
        {
            Ok(()) => Ok(()),
            Err(coordd_client::Error::Server(ErrorCode::Unimplemented)) => {
                tracing::info!(
                    path,
                    "addWatch not implemented by the server: one-shot watches"
                );
                self.one_shot = true;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether one-shot watches are in use.
    pub(crate) fn one_shot(&self) -> bool {
        self.one_shot
    }

    /// Runs until the router is dropped, reconnecting after expiry.
    pub(crate) async fn run(
        mut self,
        mut events: Events,
        mut refresh_rx: mpsc::Receiver<RefreshReply>,
    ) {
        loop {
            if !self.serve(&mut events, &mut refresh_rx).await {
                return;
            }
            // The session is over (expired): a new one, with backoff between attempts.
            let mut backoff = RETRY_MIN;
            loop {
                let attempt = tokio::select! {
                    r = Watcher::start(self.shared.clone()) => r,
                    req = refresh_rx.recv() => {
                        match req {
                            Some(reply) => { let _ = reply.send(Err(coordd_client::Error::ConnectionLoss)); continue; }
                            None => return,
                        }
                    }
                };
                match attempt {
                    Ok((w, ev)) => {
                        tracing::info!("new coordination session; topology re-read");
                        self = w;
                        events = ev;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "coordination session failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }

    /// Serves one session. Returns false when the router is gone, true when the
    /// session ended (expired or closed) and a new one is needed.
    async fn serve(
        &mut self,
        events: &mut Events,
        refresh_rx: &mut mpsc::Receiver<RefreshReply>,
    ) -> bool {
        let mut state_rx = self.client.state_watch();
        state_rx.borrow_and_update();
        let mut dirty = false;
        let mut backoff = RETRY_MIN;
        let mut retry_at = Instant::now();
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    None => {
                        self.shared.set_in_sync(false);
                        return true;
                    }
                    Some(ev) if ev.event_type == EventType::None => {
                        if matches!(ev.state, coordd_client::KeeperState::Expired | coordd_client::KeeperState::Closed) {
                            self.shared.set_in_sync(false);
                            return true;
                        }
                    }
                    Some(ev) => match self.on_event(&ev).await {
                        Ok(()) if !dirty => self.synced(),
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, path = %ev.path, "re-read after a watch event failed");
                            dirty = true;
                            self.shared.set_in_sync(false);
                        }
                    },
                },
                changed = state_rx.changed() => {
                    if changed.is_err() {
                        self.shared.set_in_sync(false);
                        return true;
                    }
                    let state = *state_rx.borrow_and_update();
                    // Whatever the change, the view may be behind until re-read.
                    self.shared.set_in_sync(false);
                    match state {
                        // Connected again after a disconnect (or a change we only saw
                        // the end of): events may have been missed.
                        SessionState::Connected => dirty = true,
                        s if s.is_terminal() => return true,
                        _ => {}
                    }
                }
                req = refresh_rx.recv() => match req {
                    None => return false,
                    Some(reply) => {
                        let r = self.full_read().await;
                        dirty = r.is_err();
                        if dirty {
                            self.shared.set_in_sync(false);
                        } else {
                            self.synced();
                        }
                        let _ = reply.send(r);
                    }
                },
                _ = tokio::time::sleep_until(retry_at), if dirty => {}
            }
            if dirty && Instant::now() >= retry_at && self.client.state() == SessionState::Connected
            {
                match self.full_read().await {
                    Ok(()) => {
                        dirty = false;
                        backoff = RETRY_MIN;
                        self.synced();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "full topology re-read failed; retrying");
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(RETRY_MAX);
                    }
                }
            }
        }
    }

    /// The view was just read in full or kept current by an event: it is in sync
    /// while the session stays connected.
    fn synced(&self) {
        self.shared
            .set_in_sync(self.client.state() == SessionState::Connected);
    }

    /// Re-reads what one event names, then publishes.
    async fn on_event(&mut self, ev: &WatchedEvent) -> Result<(), coordd_client::Error> {
        let ns = self.shared.ns.clone();
        match ns.classify(&ev.path) {
            Some(ClusterPath::Leader) => self.read_leader().await?,
            Some(ClusterPath::Member(node)) => self.read_member(node).await?,
            Some(ClusterPath::Members) => self.read_members(false).await?,
            Some(ClusterPath::Cluster) => return self.full_read().await,
            _ => return Ok(()),
        }
        self.publish();
        Ok(())
    }

    /// Reads the leader and every member afresh; publishes. On error the view is
    /// left as it was.
    pub(crate) async fn full_read(&mut self) -> Result<(), coordd_client::Error> {
        let before = std::mem::take(&mut self.view);
        let r = async {
            self.read_leader().await?;
            self.read_members(true).await
        }
        .await;
        match r {
            Ok(()) => {
                self.publish();
                Ok(())
            }
            Err(e) => {
                self.view = before;
                Err(e)
            }
        }
    }

    /// `leader`: getData (with a watch in one-shot mode); when missing, `exists` with
    /// a watch so that its creation is seen.
    async fn read_leader(&mut self) -> Result<(), coordd_client::Error> {
        let path = self.shared.ns.leader();
        let watch = self.one_shot;
        loop {
            match self.client.get_data(&path, watch).await {
                Ok((data, stat)) => {
                    self.view.leader = match records::decode::<LeaderRecord>(&data) {
                        Ok(rec) => Some((rec, Epoch(stat.czxid))),
                        Err(e) => {
                            tracing::warn!(error = %e, path, "unreadable leader record: no master");
                            None
                        }
                    };
                    return Ok(());
                }
                Err(coordd_client::Error::Server(ErrorCode::NoNode)) => {
                    if watch && self.client.exists(&path, true).await?.is_some() {
                        continue; // created in between: read it (the watch is armed)
                    }
                    self.view.leader = None;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn read_member(&mut self, node: &str) -> Result<(), coordd_client::Error> {
        let path = self.shared.ns.member(node);
        match self.client.get_data(&path, self.one_shot).await {
            Ok((data, _)) => match records::decode::<MemberRecord>(&data) {
                Ok(rec) if rec.node == node => {
                    self.view.members.insert(node.to_owned(), rec);
                }
                Ok(rec) => {
                    tracing::warn!(
                        path,
                        node = rec.node,
                        "member record names another node: ignored"
                    );
                    self.view.members.remove(node);
                }
                Err(e) => {
                    tracing::warn!(error = %e, path, "unreadable member record: ignored");
                    self.view.members.remove(node);
                }
            },
            Err(coordd_client::Error::Server(ErrorCode::NoNode)) => {
                self.view.members.remove(node);
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Lists `members`; reads the members not known yet (all of them with `all`) and
    /// forgets the ones gone.
    async fn read_members(&mut self, all: bool) -> Result<(), coordd_client::Error> {
        let path = self.shared.ns.members();
        let watch = self.one_shot;
        let children = loop {
            match self.client.get_children(&path, watch).await {
                Ok(c) => break c,
                Err(coordd_client::Error::Server(ErrorCode::NoNode)) => {
                    if watch && self.client.exists(&path, true).await?.is_some() {
                        continue;
                    }
                    break Vec::new();
                }
                Err(e) => return Err(e),
            }
        };
        let mut names: Vec<&str> = children
            .iter()
            .map(String::as_str)
            .filter(|c| crate::namespace::validate_node_name(c).is_ok())
            .collect();
        names.sort_unstable();
        self.view
            .members
            .retain(|n, _| names.binary_search(&n.as_str()).is_ok());
        for node in names {
            if all || !self.view.members.contains_key(node) {
                self.read_member(node).await?;
            }
        }
        Ok(())
    }

    /// Builds and publishes the snapshot of the view; closes the pools of endpoints
    /// that left it and, on a leader change, the old master's pool (even if the node
    /// stays as a replica: no connection made while it was master survives); wakes
    /// the callers waiting for a topology.
    fn publish(&self) {
        let before = self.shared.table.snapshot();
        let topology = Topology::build(
            self.view.leader.clone(),
            self.view.members.values().cloned(),
            self.shared.cfg.max_lag_bytes,
        );
        let mut keep: Vec<Endpoint> = topology
            .replicas()
            .iter()
            .map(|r| (*r.endpoint).clone())
            .collect();
        if let Some(l) = topology.leader() {
            keep.push((*l.endpoint).clone());
        }
        self.shared.table.publish(topology);
        self.shared.mark_read();
        let after = self.shared.table.snapshot();
        if let Some(old) = before.leader() {
            let same = after
                .leader()
                .is_some_and(|l| l.epoch == old.epoch && l.endpoint == old.endpoint);
            if !same {
                self.shared.pools.close_now(&old.endpoint, "leader changed");
            }
        }
        self.shared.pools.retain(&keep);
        self.shared
            .published
            .send_modify(|generation| *generation += 1);
    }
}
