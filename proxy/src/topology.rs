//! The router's pure core (DESIGN.md section 5): an immutable [`Topology`] snapshot
//! built from the namespace's records, and the routing decision over it.
//!
//! The watcher task builds a new [`Topology`] after every change and
//! [`RouteTable::publish`]es it; query paths call [`RouteTable::route`], which is one
//! atomic load of the snapshot, one atomic add for round robin and an index (least
//! outstanding adds one relaxed load per readable replica): no lock, no allocation.
//! A caller that routes often from one task takes a [`RouteHandle`] instead: it
//! caches the snapshot and owns its cursor, so a decision is one plain atomic load
//! and no read-modify-write.
//! Everything a decision needs (who is readable under the lag bound) is computed once
//! per snapshot, not per query.
//!
//! Each endpoint carries an [`InFlight`] counter (connections the router has handed
//! out to it and not yet got back). It is shared, not copied, between snapshots: a
//! publish hands the counter of an endpoint to the next snapshot that still has it.
//!
//! ```
//! use switchyard_proxy::election::Epoch;
//! use switchyard_proxy::records::{LeaderRecord, LeaderState, Lsn, MemberRecord, MemberState, Role};
//! use switchyard_proxy::topology::{Intent, ReadPolicy, RouteTable, Topology};
//!
//! let leader = LeaderRecord {
//!     node: "pg-1".into(), host: "10.0.0.1".into(), port: 5432,
//!     state: LeaderState::Primary, since_ms: 0,
//! };
//! let replica = MemberRecord {
//!     node: "pg-2".into(), host: "10.0.0.2".into(), port: 5432,
//!     role: Role::Replica, state: MemberState::Running, timeline: Some(1),
//!     receive_lsn: Some(Lsn(4096)), replay_lsn: Some(Lsn(4096)), lag_bytes: Some(0),
//!     updated_ms: 0,
//! };
//! let policy = ReadPolicy::default();
//! let table = RouteTable::new(policy);
//! // The epoch is the leader znode's czxid, from the Stat of the same read.
//! table.publish(Topology::build(Some((leader, Epoch(42))), [replica], policy.max_lag_bytes));
//!
//! assert_eq!(table.route(Intent::Write).unwrap().endpoint().host, "10.0.0.1");
//! assert_eq!(table.route(Intent::Read).unwrap().endpoint().host, "10.0.0.2");
//! // Read-your-writes: pg-2 has not replayed 8192 yet, so the master serves it.
//! assert_eq!(table.route(Intent::ReadAfter(Lsn(8192))).unwrap().endpoint().node, "pg-1");
//! ```
//!
//! Invariant: a write is routed only to a leader in state `primary` whose epoch is not
//! older than one this table already published; otherwise routing says why not.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::cache::Cache;
use arc_swap::{ArcSwap, Guard};

use crate::election::Epoch;
use crate::records::{LeaderRecord, LeaderState, Lsn, MemberRecord, MemberState, Role};

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub node: String,
    pub host: String,
    pub port: u16,
}

/// Work in flight on one endpoint: connections handed out by the router and not yet
/// returned. Cloning shares the counter. Not part of a topology's identity: any two
/// compare equal.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// The current count.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one unit of work until the guard is dropped. No allocation (the guard
    /// shares the counter).
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }

    /// Whether both share one counter.
    pub fn same_counter(&self, other: &InFlight) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl PartialEq for InFlight {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for InFlight {}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InFlight({})", self.get())
    }
}

/// One unit of [`InFlight`] work; decrements the counter on drop.
#[derive(Debug)]
pub struct InFlightGuard(InFlight);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        (self.0).0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The master as the snapshot knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Shared, so a checked-out connection names its endpoint without copying it.
    pub endpoint: Arc<Endpoint>,
    pub state: LeaderState,
    /// The `leader` znode's czxid.
    pub epoch: Epoch,
    pub in_flight: InFlight,
}

/// A live replica: role replica, state running, not the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub endpoint: Arc<Endpoint>,
    pub replay_lsn: Option<Lsn>,
    /// Replay lag behind the master; see [`Topology::build`] for how it is derived.
    pub lag_bytes: Option<u64>,
    pub in_flight: InFlight,
}

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Write,
    Read,
    /// A read that must see writes up to this commit LSN (read-your-writes).
    ReadAfter(Lsn),
}

/// Which endpoint of a snapshot a route chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Master,
    /// Index into [`Topology::replicas`].
    Replica(usize),
}

/// Why nothing can serve an intent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No leader, or one still promoting (or in a state this router does not know).
    /// Retryable: wait for the next topology.
    #[error("no writable master (leader state {leader_state:?})")]
    NoPrimary { leader_state: Option<LeaderState> },
    /// No replica within the lag bound and falling back to the master is off (or
    /// there is no writable master to fall back to).
    #[error("no replica can serve reads and no master to fall back to")]
    NoReadable,
}

/// How reads are spread. An enum, not a trait object, so the choice is a branch the
/// compiler sees, not an indirect call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each read goes to the next readable replica.
    #[default]
    RoundRobin,
    /// Each read goes to the readable replica with the fewest connections handed out
    /// and not yet returned ([`InFlight`]); ties go round robin.
    LeastOutstanding,
}

/// The read side of routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    pub balance: Balance,
    /// Replicas further behind than this get no reads (also for `ReadAfter`).
    /// `u64::MAX` admits replicas whose lag is unknown.
    pub max_lag_bytes: u64,
    /// With no readable replica, send reads to the master (if it is primary).
    /// `ReadAfter` always may: only the master is sure to have the write.
    pub fallback_to_master: bool,
}

impl Default for ReadPolicy {
    fn default() -> Self {
        ReadPolicy {
            balance: Balance::RoundRobin,
            max_lag_bytes: crate::records::ClusterConfig::default().max_lag_bytes,
            fallback_to_master: true,
        }
    }
}

/// An immutable view of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    leader: Option<Leader>,
    /// Sorted by node name, so equal inputs give equal snapshots.
    replicas: Box<[Replica]>,
    /// Indices into `replicas` within `readable_lag_bytes_max`.
    readable: Box<[usize]>,
    readable_lag_bytes_max: u64,
}

impl Topology {
    /// A topology with nothing in it (before the first read of the namespace).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds a snapshot from the `leader` record with its znode's czxid and the
    /// records under `members/`. Readable replicas are those whose lag is at most
    /// `max_lag_bytes` (see [`ReadPolicy::max_lag_bytes`]).
    ///
    /// A replica's lag is the leader's published position (its member record) minus
    /// the replica's replay LSN when both are known, since both come from this one
    /// read of the namespace; otherwise the replica's own `lag_bytes`; otherwise
    /// unknown. If a node appears twice, the record updated last wins.
    ///
    /// A replica on an older timeline than the leader's (both published) is left out:
    /// it may hold WAL past the fork that the cluster never committed (a node that was
    /// ahead at an election, or a former primary before its rewind), and its LSNs are
    /// not comparable with the master's, neither for lag nor for a causal token.
    pub fn build(
        leader: Option<(LeaderRecord, Epoch)>,
        members: impl IntoIterator<Item = MemberRecord>,
        max_lag_bytes: u64,
    ) -> Self {
        let mut members: Vec<MemberRecord> = members.into_iter().collect();
        members.sort_by(|a, b| a.node.cmp(&b.node).then(b.updated_ms.cmp(&a.updated_ms)));
        members.dedup_by(|later, first| later.node == first.node);

        let leader_node = leader.as_ref().map(|(l, _)| l.node.as_str());
        let leader_member = members
            .iter()
            .find(|m| Some(m.node.as_str()) == leader_node);
        let leader_position = leader_member.and_then(|m| m.wal_position());
        let leader_timeline = leader_member.and_then(|m| m.timeline);
        let on_an_older_timeline = |m: &MemberRecord| matches!((m.timeline, leader_timeline), (Some(mine), Some(theirs)) if mine < theirs);

        let replicas: Box<[Replica]> = members
            .iter()
            .filter(|m| {
                m.role == Role::Replica
                    && m.state == MemberState::Running
                    && Some(m.node.as_str()) != leader_node
                    && !on_an_older_timeline(m)
            })
            .map(|m| Replica {
                endpoint: Arc::new(Endpoint {
                    node: m.node.clone(),
                    host: m.host.clone(),
                    port: m.port,
                }),
                replay_lsn: m.replay_lsn,
                lag_bytes: match (leader_position, m.replay_lsn) {
                    (Some(master), Some(replay)) => Some(master.bytes_since(replay)),
                    _ => m.lag_bytes,
                },
                in_flight: InFlight::default(),
            })
            .collect();
        let readable = (0..replicas.len())
            .filter(|&i| within(replicas[i].lag_bytes, max_lag_bytes))
            .collect();
        Topology {
            leader: leader.map(|(l, epoch)| Leader {
                endpoint: Arc::new(Endpoint {
                    node: l.node,
                    host: l.host,
                    port: l.port,
                }),
                state: l.state,
                epoch,
                in_flight: InFlight::default(),
            }),
            replicas,
            readable,
            readable_lag_bytes_max: max_lag_bytes,
        }
    }

    pub fn leader(&self) -> Option<&Leader> {
        self.leader.as_ref()
    }

    /// The leader's epoch, if there is a leader.
    pub fn epoch(&self) -> Option<Epoch> {
        self.leader.as_ref().map(|l| l.epoch)
    }

    /// The master, only if its leader record says `primary` (DESIGN.md 4.3).
    pub fn writable_endpoint(&self) -> Option<&Endpoint> {
        match &self.leader {
            Some(l) if l.state == LeaderState::Primary => Some(&l.endpoint),
            _ => None,
        }
    }

    /// Every live replica, readable or not, sorted by node.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Live replicas whose lag is known and at most `max_lag_bytes` (`u64::MAX` also
    /// admits unknown lag).
    pub fn readable_endpoints(&self, max_lag_bytes: u64) -> impl Iterator<Item = &Endpoint> {
        self.replicas
            .iter()
            .filter(move |r| within(r.lag_bytes, max_lag_bytes))
            .map(|r| &*r.endpoint)
    }

    /// The endpoint of a target this snapshot chose; `None` for a target it cannot
    /// have chosen (targets from another snapshot are not valid here).
    pub fn endpoint(&self, target: Target) -> Option<&Endpoint> {
        self.endpoint_shared(target).map(|e| &**e)
    }

    /// [`Topology::endpoint`], as the shared handle (a clone is a reference count).
    pub fn endpoint_shared(&self, target: Target) -> Option<&Arc<Endpoint>> {
        match target {
            Target::Master => self.leader.as_ref().map(|l| &l.endpoint),
            Target::Replica(i) => self.replicas.get(i).map(|r| &r.endpoint),
        }
    }

    /// The routing decision. `cursor` is the round-robin position; it survives
    /// snapshots (it lives in the [`RouteTable`]) so a topology change does not send
    /// the next reads all to the first replica. Uses the readable set computed at
    /// build time; `policy.max_lag_bytes` applies through [`Topology::build`].
    pub fn route(
        &self,
        intent: Intent,
        policy: &ReadPolicy,
        cursor: &impl Cursor,
    ) -> Result<Target, RouteError> {
        self.route_inner(intent, policy, cursor, None)
    }

    /// Like [`Topology::route`], but never to `avoid` (e.g. the replica whose
    /// connection just broke): another readable replica, else the master as the policy
    /// allows. A write still goes to the master, whatever `avoid` is.
    pub fn route_avoiding(
        &self,
        intent: Intent,
        policy: &ReadPolicy,
        cursor: &impl Cursor,
        avoid: &Endpoint,
    ) -> Result<Target, RouteError> {
        self.route_inner(intent, policy, cursor, Some(avoid))
    }

    fn route_inner(
        &self,
        intent: Intent,
        policy: &ReadPolicy,
        cursor: &impl Cursor,
        avoid: Option<&Endpoint>,
    ) -> Result<Target, RouteError> {
        let master = || match self.writable_endpoint() {
            Some(_) => Ok(Target::Master),
            None => Err(RouteError::NoPrimary {
                leader_state: self.leader.as_ref().map(|l| l.state),
            }),
        };
        let avoided = |e: &Endpoint| avoid.is_some_and(|a| a == e);
        let master_avoided = self.writable_endpoint().is_some_and(avoided);
        match intent {
            Intent::Write => master(),
            Intent::Read => {
                if let Some(r) = self.pick(policy, cursor, |r| !avoided(&r.endpoint)) {
                    return Ok(Target::Replica(r));
                }
                if policy.fallback_to_master && !master_avoided {
                    master().map_err(|_| RouteError::NoReadable)
                } else {
                    Err(RouteError::NoReadable)
                }
            }
            Intent::ReadAfter(token) => {
                let caught_up =
                    |r: &Replica| !avoided(&r.endpoint) && r.replay_lsn.is_some_and(|l| l >= token);
                if let Some(r) = self.pick(policy, cursor, caught_up) {
                    return Ok(Target::Replica(r));
                }
                if master_avoided {
                    return Err(RouteError::NoReadable);
                }
                master()
            }
        }
    }

    /// A readable replica that satisfies `ok`, by the policy's balance. Round robin
    /// starts at the cursor and takes the first that qualifies; least outstanding takes
    /// the one with the smallest [`InFlight`] count, ties to the first from the cursor.
    fn pick(
        &self,
        policy: &ReadPolicy,
        cursor: &impl Cursor,
        ok: impl Fn(&Replica) -> bool,
    ) -> Option<usize> {
        let n = self.readable.len();
        if n == 0 {
            return None;
        }
        // The walk wraps by comparison (a division per candidate cost as much as the
        // rest of a read's routing), in a plain loop: chained iterators cost more here.
        let start = cursor.next_start(n);
        debug_assert!(start < n);
        let mut best: Option<(usize, usize)> = None;
        for step in 0..n {
            let at = if start + step < n {
                start + step
            } else {
                start + step - n
            };
            let i = self.readable[at];
            let Some(r) = self.replicas.get(i) else {
                debug_assert!(false, "readable holds indexes of replicas");
                continue;
            };
            if !ok(r) {
                continue;
            }
            match policy.balance {
                Balance::RoundRobin => return Some(i),
                Balance::LeastOutstanding => {
                    let load = r.in_flight.get();
                    let better = match best {
                        None => true,
                        Some((_, b)) => load < b,
                    };
                    if better {
                        best = Some((i, load));
                        if load == 0 {
                            break;
                        }
                    }
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// The in-flight counter of a target this snapshot chose.
    pub fn in_flight(&self, target: Target) -> Option<&InFlight> {
        match target {
            Target::Master => self.leader.as_ref().map(|l| &l.in_flight),
            Target::Replica(i) => self.replicas.get(i).map(|r| &r.in_flight),
        }
    }

    /// Gives every endpoint of `self` that `prev` also has the counter `prev` has for
    /// it, so in-flight counts survive a publish.
    fn adopt_in_flight(&mut self, prev: &Topology) {
        let find = |e: &Endpoint| -> Option<InFlight> {
            prev.leader
                .iter()
                .map(|l| (&l.endpoint, &l.in_flight))
                .chain(prev.replicas.iter().map(|r| (&r.endpoint, &r.in_flight)))
                .find(|(pe, _)| ***pe == *e)
                .map(|(_, c)| c.clone())
        };
        if let Some(l) = &mut self.leader {
            if let Some(c) = find(&l.endpoint) {
                l.in_flight = c;
            }
        }
        for r in self.replicas.iter_mut() {
            if let Some(c) = find(&r.endpoint) {
                r.in_flight = c;
            }
        }
    }

    /// The lag bound this snapshot's readable set was computed with.
    pub fn readable_lag_bytes_max(&self) -> u64 {
        self.readable_lag_bytes_max
    }
}

fn within(lag_bytes: Option<u64>, max_lag_bytes: u64) -> bool {
    match lag_bytes {
        Some(lag) => lag <= max_lag_bytes,
        None => max_lag_bytes == u64::MAX,
    }
}

/// The router's current snapshot and read policy. Routing reads it without locks;
/// one watcher task publishes.
#[derive(Debug)]
pub struct RouteTable {
    /// Shared with every [`RouteHandle`]'s cache.
    current: Arc<ArcSwap<Topology>>,
    cursor: AtomicUsize,
    policy: ReadPolicy,
    /// The highest leader epoch published so far. Only publishers take this lock.
    highest_epoch: Mutex<Option<Epoch>>,
}

/// Where a round robin starts. The shared [`AtomicUsize`] of a [`RouteTable`] (one
/// atomic add and a division per read) or the [`Cell`] of one [`RouteHandle`] (no
/// atomic, a division only when the number of readable replicas shrank).
pub trait Cursor {
    /// The next start position, in `0..n`. `n > 0`.
    fn next_start(&self, n: usize) -> usize;
}

impl Cursor for AtomicUsize {
    fn next_start(&self, n: usize) -> usize {
        self.fetch_add(1, Ordering::Relaxed) % n
    }
}

impl Cursor for Cell<usize> {
    fn next_start(&self, n: usize) -> usize {
        // Kept in 0..n, so the usual case is a compare, not a division.
        let at = self.get();
        let start = if at < n { at } else { at % n };
        self.set(if start + 1 == n { 0 } else { start + 1 });
        start
    }
}

/// A routing decision with the snapshot it was made on, so the endpoint is borrowed,
/// not copied. From [`RouteTable::route`] it holds an arc-swap guard: keep it briefly
/// (guards are meant to be short-lived). From [`RouteHandle::route`] it borrows the
/// handle's cached snapshot.
pub struct Routed<S = Guard<Arc<Topology>>> {
    snapshot: S,
    target: Target,
}

/// What a [`Routed`] holds its snapshot by: an arc-swap guard or a borrow.
pub trait SnapshotRef {
    fn topology(&self) -> &Topology;
}

impl SnapshotRef for Guard<Arc<Topology>> {
    fn topology(&self) -> &Topology {
        self
    }
}

impl SnapshotRef for &Topology {
    fn topology(&self) -> &Topology {
        self
    }
}

impl<S: SnapshotRef> Routed<S> {
    pub fn endpoint(&self) -> &Endpoint {
        self.endpoint_shared()
    }

    /// [`Routed::endpoint`], as the shared handle.
    pub fn endpoint_shared(&self) -> &Arc<Endpoint> {
        self.snapshot
            .topology()
            .endpoint_shared(self.target)
            .expect("the target was chosen on this snapshot")
    }

    pub fn target(&self) -> Target {
        self.target
    }

    pub fn topology(&self) -> &Topology {
        self.snapshot.topology()
    }

    /// The chosen endpoint's in-flight counter.
    pub fn in_flight(&self) -> &InFlight {
        self.snapshot
            .topology()
            .in_flight(self.target)
            .expect("the target was chosen on this snapshot")
    }
}

/// One caller's routing handle ([`RouteTable::handle`]): for a hot path that routes
/// often from one task or thread, e.g. a caller that keeps its own connections.
/// It caches the current snapshot (`arc_swap::Cache`): a routing decision is one
/// atomic load that compares the table's snapshot pointer with the cached one (the
/// cache refreshes itself when they differ), no reference count touched, no lock, no
/// allocation; its round-robin cursor is its own, so no shared cache line either.
///
/// Invariant: a decision is made on the snapshot the table holds at the time of the
/// call (never an older cached one); the handle keeps the previous snapshot alive
/// until its next call, at most one snapshot per handle.
pub struct RouteHandle {
    current: Cache<Arc<ArcSwap<Topology>>, Arc<Topology>>,
    policy: ReadPolicy,
    cursor: Cell<usize>,
}

impl RouteHandle {
    /// Routes one intent on the table's current snapshot (see [`RouteTable::route`]).
    pub fn route(&mut self, intent: Intent) -> Result<Routed<&Topology>, RouteError> {
        let snapshot: &Topology = self.current.load();
        let target = snapshot.route(intent, &self.policy, &self.cursor)?;
        Ok(Routed { snapshot, target })
    }

    /// Routes one intent, never to `avoid` (see [`Topology::route_avoiding`]).
    pub fn route_avoiding(
        &mut self,
        intent: Intent,
        avoid: &Endpoint,
    ) -> Result<Routed<&Topology>, RouteError> {
        let snapshot: &Topology = self.current.load();
        let target = snapshot.route_avoiding(intent, &self.policy, &self.cursor, avoid)?;
        Ok(Routed { snapshot, target })
    }
}

impl RouteTable {
    pub fn new(policy: ReadPolicy) -> Self {
        RouteTable {
            current: Arc::new(ArcSwap::from_pointee(Topology::empty())),
            cursor: AtomicUsize::new(0),
            policy,
            highest_epoch: Mutex::new(None),
        }
    }

    pub fn policy(&self) -> &ReadPolicy {
        &self.policy
    }

    /// A routing handle for one caller (see [`RouteHandle`]). Handles start their
    /// round robin at successive positions, so many of them still spread reads.
    pub fn handle(&self) -> RouteHandle {
        RouteHandle {
            current: Cache::new(Arc::clone(&self.current)),
            policy: self.policy,
            cursor: Cell::new(self.cursor.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Replaces the snapshot. A leader with an epoch below one already published is
    /// a stale view (e.g. a new session on a server that is behind) and is dropped
    /// from the snapshot: writes wait for a fresh view instead of reaching a deposed
    /// master. Returns whether the leader was kept.
    pub fn publish(&self, mut next: Topology) -> bool {
        let mut highest = self.highest_epoch.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = true;
        if let Some(epoch) = next.epoch() {
            match *highest {
                Some(h) if epoch < h => {
                    next.leader = None;
                    kept = false;
                }
                _ => *highest = Some(epoch),
            }
        }
        next.adopt_in_flight(&self.current.load());
        self.current.store(Arc::new(next));
        kept
    }

    /// The current snapshot, to keep (an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Routes one intent on the current snapshot: one atomic load, no lock, no
    /// allocation.
    pub fn route(&self, intent: Intent) -> Result<Routed, RouteError> {
        let snapshot = self.current.load();
        let target = snapshot.route(intent, &self.policy, &self.cursor)?;
        Ok(Routed { snapshot, target })
    }

    /// Routes one intent, never to `avoid` (see [`Topology::route_avoiding`]).
    pub fn route_avoiding(&self, intent: Intent, avoid: &Endpoint) -> Result<Routed, RouteError> {
        let snapshot = self.current.load();
        let target = snapshot.route_avoiding(intent, &self.policy, &self.cursor, avoid)?;
        Ok(Routed { snapshot, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn leader(node: &str, state: LeaderState) -> LeaderRecord {
        LeaderRecord {
            node: node.into(),
            host: format!("{node}.db"),
            port: 5432,
            state,
            since_ms: 0,
        }
    }

    fn member(node: &str, role: Role, replay: u64) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            host: format!("{node}.db"),
            port: 5432,
            role,
            state: MemberState::Running,
            timeline: Some(1),
            receive_lsn: Some(Lsn(replay)),
            replay_lsn: Some(Lsn(replay)),
            lag_bytes: None,
            updated_ms: 0,
        }
    }

    /// m is the primary at 1000; r1 at 1000, r2 at 900, r3 at 100.
    fn cluster(state: LeaderState, max_lag_bytes: u64) -> Topology {
        Topology::build(
            Some((leader("m", state), Epoch(7))),
            [
                member("r2", Role::Replica, 900),
                member("m", Role::Primary, 1000),
                member("r3", Role::Replica, 100),
                member("r1", Role::Replica, 1000),
            ],
            max_lag_bytes,
        )
    }

    fn nodes<'a>(it: impl Iterator<Item = &'a Endpoint>) -> Vec<&'a str> {
        it.map(|e| e.node.as_str()).collect()
    }

    #[test]
    fn a_replica_on_an_older_timeline_gets_no_reads() {
        // The master promoted onto timeline 2; r_old is still on timeline 1, past the
        // fork (its replay LSN beyond the master's); r_new streams timeline 2.
        let mut m = member("m", Role::Primary, 1000);
        m.timeline = Some(2);
        let mut r_new = member("r_new", Role::Replica, 900);
        r_new.timeline = Some(2);
        let r_old = member("r_old", Role::Replica, 1200);
        let t = Topology::build(
            Some((leader("m", LeaderState::Primary), Epoch(9))),
            [m.clone(), r_new, r_old.clone()],
            u64::MAX,
        );
        assert_eq!(nodes(t.replicas().iter().map(|r| &*r.endpoint)), ["r_new"]);
        let p = ReadPolicy {
            max_lag_bytes: u64::MAX,
            ..ReadPolicy::default()
        };
        let cursor = AtomicUsize::new(0);
        // A token from the new master that r_old's old-timeline LSN "passes": the master.
        assert_eq!(
            t.route(Intent::ReadAfter(Lsn(1000)), &p, &cursor),
            Ok(Target::Master)
        );
        for _ in 0..3 {
            let r = t.route(Intent::Read, &p, &cursor).unwrap();
            assert_eq!(t.endpoint(r).unwrap().node, "r_new");
        }
        // Timelines unknown on either side: nothing to compare, the replica stays.
        let mut unknown = r_old.clone();
        unknown.timeline = None;
        let t = Topology::build(
            Some((leader("m", LeaderState::Primary), Epoch(9))),
            [m, unknown],
            u64::MAX,
        );
        assert_eq!(nodes(t.replicas().iter().map(|r| &*r.endpoint)), ["r_old"]);
    }

    #[test]
    fn writes_only_to_a_primary_leader() {
        let t = cluster(LeaderState::Primary, 500);
        assert_eq!(t.writable_endpoint().unwrap().node, "m");
        assert_eq!(t.epoch(), Some(Epoch(7)));
        let cursor = AtomicUsize::new(0);
        let p = ReadPolicy::default();
        assert_eq!(t.route(Intent::Write, &p, &cursor), Ok(Target::Master));
        for state in [LeaderState::Promoting, LeaderState::Unknown] {
            let t = cluster(state, 500);
            assert_eq!(t.writable_endpoint(), None);
            assert_eq!(
                t.route(Intent::Write, &p, &cursor),
                Err(RouteError::NoPrimary {
                    leader_state: Some(state)
                })
            );
        }
        let none = Topology::build(None, [member("r1", Role::Replica, 1)], 500);
        assert_eq!(
            none.route(Intent::Write, &p, &cursor),
            Err(RouteError::NoPrimary { leader_state: None })
        );
        assert_eq!(Topology::empty().writable_endpoint(), None);
        // Targets the snapshot cannot have chosen.
        assert_eq!(Topology::empty().endpoint(Target::Master), None);
        assert_eq!(none.endpoint(Target::Replica(1)), None);
    }

    #[test]
    fn live_replicas_and_lag() {
        let t = cluster(LeaderState::Primary, 500);
        // Sorted, leader excluded, lag from the leader's position.
        assert_eq!(
            nodes(t.replicas().iter().map(|r| &*r.endpoint)),
            ["r1", "r2", "r3"]
        );
        let lags: Vec<_> = t.replicas().iter().map(|r| r.lag_bytes).collect();
        assert_eq!(lags, [Some(0), Some(100), Some(900)]);
        assert_eq!(nodes(t.readable_endpoints(100)), ["r1", "r2"]);
        assert_eq!(nodes(t.readable_endpoints(99)), ["r1"]);
        assert_eq!(nodes(t.readable_endpoints(900)), ["r1", "r2", "r3"]);

        // Not running, not a replica, or a replica record for the leader's node: no reads.
        let mut stopped = member("r4", Role::Replica, 1000);
        stopped.state = MemberState::Stopped;
        let t = Topology::build(
            Some((leader("m", LeaderState::Primary), Epoch(1))),
            [
                stopped,
                member("m", Role::Replica, 1000),
                member("u", Role::Unknown, 1000),
                member("r1", Role::Replica, 1000),
            ],
            0,
        );
        assert_eq!(nodes(t.readable_endpoints(u64::MAX)), ["r1"]);
    }

    #[test]
    fn lag_without_the_leaders_record() {
        // No leader member record: the replica's own lag_bytes; none: unknown.
        let mut a = member("a", Role::Replica, 10);
        a.lag_bytes = Some(50);
        let b = member("b", Role::Replica, 10);
        let t = Topology::build(
            Some((leader("m", LeaderState::Primary), Epoch(1))),
            [a, b],
            100,
        );
        assert_eq!(t.replicas()[0].lag_bytes, Some(50));
        assert_eq!(t.replicas()[1].lag_bytes, None);
        assert_eq!(nodes(t.readable_endpoints(100)), ["a"]);
        // Unknown lag only with an unlimited bound.
        assert_eq!(nodes(t.readable_endpoints(u64::MAX)), ["a", "b"]);
        // A replica ahead of the leader's last published position has lag 0.
        let t = Topology::build(
            Some((leader("m", LeaderState::Primary), Epoch(1))),
            [
                member("m", Role::Primary, 10),
                member("a", Role::Replica, 20),
            ],
            0,
        );
        assert_eq!(t.replicas()[0].lag_bytes, Some(0));
    }

    #[test]
    fn duplicate_members_latest_wins() {
        let mut old = member("a", Role::Replica, 1);
        old.host = "old".into();
        old.updated_ms = 1;
        let mut new = member("a", Role::Replica, 2);
        new.host = "new".into();
        new.updated_ms = 2;
        let t = Topology::build(None, [new.clone(), old.clone()], u64::MAX);
        assert_eq!(t.replicas().len(), 1);
        assert_eq!(t.replicas()[0].endpoint.host, "new");
        assert_eq!(t, Topology::build(None, [old, new], u64::MAX));
    }

    #[test]
    fn round_robin_over_readable() {
        let t = cluster(LeaderState::Primary, 500);
        let p = ReadPolicy::default();
        let cursor = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                t.endpoint(t.route(Intent::Read, &p, &cursor).unwrap())
                    .unwrap()
                    .node
                    .as_str()
            })
            .collect();
        assert_eq!(picks, ["r1", "r2", "r1", "r2", "r1", "r2"]);
        // The cursor wrapping around does not panic or skew.
        let cursor = AtomicUsize::new(usize::MAX);
        t.route(Intent::Read, &p, &cursor).unwrap();
        t.route(Intent::Read, &p, &cursor).unwrap();
    }

    #[test]
    fn read_fallback() {
        let t = cluster(LeaderState::Primary, 0); // only r1 is readable
        let no_replicas = Topology::build(
            Some((leader("m", LeaderState::Primary), Epoch(1))),
            [member("m", Role::Primary, 5)],
            1 << 20,
        );
        let cursor = AtomicUsize::new(0);
        let on = ReadPolicy::default();
        let off = ReadPolicy {
            fallback_to_master: false,
            ..on
        };
        assert_eq!(t.route(Intent::Read, &off, &cursor), Ok(Target::Replica(0)));
        assert_eq!(
            no_replicas.route(Intent::Read, &on, &cursor),
            Ok(Target::Master)
        );
        assert_eq!(
            no_replicas.route(Intent::Read, &off, &cursor),
            Err(RouteError::NoReadable)
        );
        // Falling back needs a primary.
        let promoting =
            Topology::build(Some((leader("m", LeaderState::Promoting), Epoch(1))), [], 0);
        assert_eq!(
            promoting.route(Intent::Read, &on, &cursor),
            Err(RouteError::NoReadable)
        );
    }

    #[test]
    fn read_your_writes() {
        let t = cluster(LeaderState::Primary, 500); // readable: r1 at 1000, r2 at 900
        let p = ReadPolicy::default();
        let cursor = AtomicUsize::new(0);
        let pick = |lsn| {
            t.route(Intent::ReadAfter(Lsn(lsn)), &p, &cursor)
                .map(|x| t.endpoint(x).unwrap().node.clone())
        };
        assert_eq!(pick(1000).unwrap(), "r1");
        assert_eq!(pick(1000).unwrap(), "r1", "r2 has not replayed 1000");
        // Both qualify: shared in turn.
        let mut seen: Vec<_> = (0..4).map(|_| pick(900).unwrap()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, ["r1", "r2"]);
        // Exactly at the token qualifies.
        let t2 = Topology::build(None, [member("r2", Role::Replica, 900)], u64::MAX);
        assert_eq!(
            t2.route(Intent::ReadAfter(Lsn(900)), &p, &cursor),
            Ok(Target::Replica(0))
        );
        // Nobody has it: the master, even with fallback off.
        assert_eq!(pick(1001).unwrap(), "m");
        let off = ReadPolicy {
            fallback_to_master: false,
            ..p
        };
        assert_eq!(
            t.route(Intent::ReadAfter(Lsn(5000)), &off, &cursor),
            Ok(Target::Master)
        );
        // r3 has it but lags beyond the bound: not used.
        let t3 = Topology::build(
            Some((leader("m", LeaderState::Primary), Epoch(1))),
            [
                member("m", Role::Primary, 10_000),
                member("r3", Role::Replica, 100),
            ],
            500,
        );
        assert_eq!(
            t3.route(Intent::ReadAfter(Lsn(50)), &p, &cursor),
            Ok(Target::Master)
        );
        // No master and nobody caught up: retry later.
        assert_eq!(
            t2.route(Intent::ReadAfter(Lsn(901)), &p, &cursor),
            Err(RouteError::NoPrimary { leader_state: None })
        );
        // An unknown replay position never qualifies.
        let mut unknown = member("r9", Role::Replica, 0);
        unknown.replay_lsn = None;
        let t4 = Topology::build(None, [unknown], u64::MAX);
        assert!(t4.route(Intent::ReadAfter(Lsn(0)), &p, &cursor).is_err());
    }

    #[test]
    fn table_refuses_an_older_leader() {
        let table = RouteTable::new(ReadPolicy::default());
        assert_eq!(
            table.route(Intent::Write).err(),
            Some(RouteError::NoPrimary { leader_state: None })
        );
        let build = |node: &str, epoch| {
            Topology::build(
                Some((leader(node, LeaderState::Primary), Epoch(epoch))),
                [member("r1", Role::Replica, 0)],
                u64::MAX,
            )
        };
        assert!(table.publish(build("a", 10)));
        assert_eq!(table.route(Intent::Write).unwrap().endpoint().node, "a");
        // Leader gone, then a stale view brings the old one back: refused.
        assert!(table.publish(Topology::build(None, [], 0)));
        assert!(!table.publish(build("old", 5)));
        assert!(table.route(Intent::Write).is_err());
        // Replicas of the stale view are still used.
        assert_eq!(table.route(Intent::Read).unwrap().endpoint().node, "r1");
        // Same epoch (leader promoted in place) and a later one are accepted.
        assert!(table.publish(build("a", 10)));
        assert!(table.publish(build("b", 11)));
        let routed = table.route(Intent::Write).unwrap();
        assert_eq!(routed.endpoint().node, "b");
        assert_eq!(routed.target(), Target::Master);
        assert_eq!(routed.topology().epoch(), Some(Epoch(11)));
        assert_eq!(table.snapshot().epoch(), Some(Epoch(11)));
    }

    #[test]
    fn least_outstanding() {
        let t = cluster(LeaderState::Primary, 500); // readable: r1, r2
        let p = ReadPolicy {
            balance: Balance::LeastOutstanding,
            ..ReadPolicy::default()
        };
        let cursor = AtomicUsize::new(0);
        let pick = |intent| {
            let target = t.route(intent, &p, &cursor).unwrap();
            (t.endpoint(target).unwrap().node.clone(), target)
        };
        // Idle: ties go round robin.
        let (a, _) = pick(Intent::Read);
        let (b, _) = pick(Intent::Read);
        assert_ne!(a, b);
        // r1 busy: every read goes to r2 until r1 is back to r2's count.
        let r1 = t.in_flight(Target::Replica(0)).unwrap();
        let g1 = r1.enter();
        let g2 = r1.enter();
        assert_eq!(r1.get(), 2);
        for _ in 0..5 {
            assert_eq!(pick(Intent::Read).0, "r2");
        }
        let (_, to_r2) = pick(Intent::Read);
        let _r2_busy = t.in_flight(to_r2).unwrap().enter();
        assert_eq!(pick(Intent::Read).0, "r2", "r1 has 2, r2 has 1");
        drop((g1, g2));
        assert_eq!(r1.get(), 0);
        assert_eq!(pick(Intent::Read).0, "r1");
        // ReadAfter: least loaded among the caught-up ones; r2 (at 900) does not qualify.
        let _g = r1.enter();
        assert_eq!(pick(Intent::ReadAfter(Lsn(1000))).0, "r1");
        // r1 and r2 (at 900) both have one: ties go round robin.
        let mut seen: Vec<_> = (0..2)
            .map(|_| pick(Intent::ReadAfter(Lsn(900))).0)
            .collect();
        seen.sort();
        assert_eq!(seen, ["r1", "r2"]);
    }

    #[test]
    fn route_avoiding_an_endpoint() {
        let t = cluster(LeaderState::Primary, 500); // readable: r1, r2
        let cursor = AtomicUsize::new(0);
        let ep = |target| t.endpoint(target).unwrap().node.clone();
        for balance in [Balance::RoundRobin, Balance::LeastOutstanding] {
            let on = ReadPolicy {
                balance,
                ..ReadPolicy::default()
            };
            let off = ReadPolicy {
                fallback_to_master: false,
                ..on
            };
            let r1 = t.replicas()[0].endpoint.clone();
            let m = t.writable_endpoint().unwrap().clone();
            for _ in 0..4 {
                assert_eq!(
                    ep(t.route_avoiding(Intent::Read, &on, &cursor, &r1).unwrap()),
                    "r2"
                );
            }
            assert_eq!(
                ep(t.route_avoiding(Intent::Write, &on, &cursor, &m).unwrap()),
                "m"
            );
            // Only r1 is caught up: the master serves the retry.
            assert_eq!(
                ep(
                    t.route_avoiding(Intent::ReadAfter(Lsn(1000)), &on, &cursor, &r1)
                        .unwrap()
                ),
                "m"
            );
            let one = cluster(LeaderState::Primary, 0); // readable: r1 only
            assert_eq!(
                one.route_avoiding(Intent::Read, &on, &cursor, &r1),
                Ok(Target::Master)
            );
            assert_eq!(
                one.route_avoiding(Intent::Read, &off, &cursor, &r1),
                Err(RouteError::NoReadable)
            );
            // A read already on the master (the fallback) has nowhere else to go.
            let none = Topology::build(Some((leader("m", LeaderState::Primary), Epoch(1))), [], 0);
            assert_eq!(
                none.route_avoiding(Intent::Read, &on, &cursor, &m),
                Err(RouteError::NoReadable)
            );
            assert_eq!(
                none.route_avoiding(Intent::ReadAfter(Lsn(1)), &on, &cursor, &m),
                Err(RouteError::NoReadable)
            );
        }
    }

    #[test]
    fn in_flight_counters_survive_a_publish() {
        let table = RouteTable::new(ReadPolicy::default());
        table.publish(cluster(LeaderState::Primary, 500));
        let routed = table.route(Intent::Read).unwrap();
        let node = routed.endpoint().node.clone();
        let guard = routed.in_flight().enter();
        drop(routed);
        // The same cluster again, and one where m is gone and the node is the leader.
        table.publish(cluster(LeaderState::Primary, 500));
        let snap = table.snapshot();
        let r = snap
            .replicas()
            .iter()
            .find(|r| r.endpoint.node == node)
            .unwrap();
        assert_eq!(r.in_flight.get(), 1);
        let promoted = Topology::build(
            Some((
                LeaderRecord {
                    host: format!("{node}.db"),
                    ..leader(&node, LeaderState::Primary)
                },
                Epoch(8),
            )),
            [],
            0,
        );
        table.publish(promoted);
        let snap = table.snapshot();
        assert_eq!(snap.leader().unwrap().in_flight.get(), 1);
        drop(guard);
        assert_eq!(snap.leader().unwrap().in_flight.get(), 0);
        // Counters never make topologies unequal.
        assert_eq!(
            cluster(LeaderState::Primary, 500),
            cluster(LeaderState::Primary, 500)
        );
    }

    // Counts allocations made by the current thread, so parallel tests do not disturb
    // the count.
    struct CountingAlloc;
    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }
    unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            std::alloc::System.alloc(layout)
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            std::alloc::System.dealloc(ptr, layout)
        }
    }
    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc;

    #[test]
    fn routing_does_not_allocate() {
        let table = RouteTable::new(ReadPolicy::default());
        table.publish(cluster(LeaderState::Primary, 500));
        // The first load on a thread may register the thread with arc-swap.
        drop(table.route(Intent::Read));
        let before = ALLOCATIONS.with(Cell::get);
        let mut ports = 0u32;
        for i in 0..1000u64 {
            for intent in [Intent::Write, Intent::Read, Intent::ReadAfter(Lsn(i))] {
                let routed = table.route(intent).unwrap();
                ports += u32::from(routed.endpoint().port);
            }
        }
        assert_eq!(ALLOCATIONS.with(Cell::get) - before, 0);
        assert!(ports > 0);

        // Least outstanding, routing around an endpoint, and counting in-flight work
        // do not allocate either.
        let table = RouteTable::new(ReadPolicy {
            balance: Balance::LeastOutstanding,
            ..ReadPolicy::default()
        });
        table.publish(cluster(LeaderState::Primary, 500));
        let avoid = table.snapshot().replicas()[0].endpoint.clone();
        drop(table.route(Intent::Read));
        let before = ALLOCATIONS.with(Cell::get);
        for i in 0..1000u64 {
            for intent in [Intent::Write, Intent::Read, Intent::ReadAfter(Lsn(i))] {
                let routed = table.route(intent).unwrap();
                let _busy = routed.in_flight().enter();
                let other = table.route_avoiding(intent, &avoid).unwrap();
                ports += u32::from(other.endpoint().port);
            }
        }
        assert_eq!(ALLOCATIONS.with(Cell::get) - before, 0);
        assert!(ports > 0);

        // A handle allocates nothing per decision either (its cache refresh after a
        // publish clones an `Arc`, which does not allocate).
        let mut handle = table.handle();
        drop(handle.route(Intent::Read));
        let before = ALLOCATIONS.with(Cell::get);
        for i in 0..1000u64 {
            for intent in [Intent::Write, Intent::Read, Intent::ReadAfter(Lsn(i))] {
                ports += u32::from(handle.route(intent).unwrap().endpoint().port);
                ports += u32::from(
                    handle
                        .route_avoiding(intent, &avoid)
                        .unwrap()
                        .endpoint()
                        .port,
                );
            }
        }
        assert_eq!(ALLOCATIONS.with(Cell::get) - before, 0);
        assert!(ports > 0);
    }

    #[test]
    fn handle_round_robins_on_its_own_cursor() {
        let table = RouteTable::new(ReadPolicy::default());
        table.publish(cluster(LeaderState::Primary, 500)); // readable: r1, r2
        let mut handle = table.handle();
        let picks: Vec<_> = (0..6)
            .map(|_| handle.route(Intent::Read).unwrap().endpoint().node.clone())
            .collect();
        assert_eq!(picks, ["r1", "r2", "r1", "r2", "r1", "r2"]);
        // A second handle starts one further, so two handles taking one read each do
        // not both land on the first replica.
        let mut other = table.handle();
        let first_of_other = other.route(Intent::Read).unwrap().endpoint().node.clone();
        assert_eq!(first_of_other, "r2");
    }

    #[test]
    fn handle_sees_every_publish_at_its_next_call() {
        let table = RouteTable::new(ReadPolicy::default());
        let mut handle = table.handle();
        assert!(matches!(
            handle.route(Intent::Write),
            Err(RouteError::NoPrimary { .. })
        ));
        table.publish(cluster(LeaderState::Primary, 500));
        assert_eq!(handle.route(Intent::Write).unwrap().endpoint().node, "m");
        // The leader record says promoting again: the very next decision refuses the write.
        table.publish(cluster(LeaderState::Promoting, 500));
        assert!(matches!(
            handle.route(Intent::Write),
            Err(RouteError::NoPrimary { .. })
        ));
    }

    #[test]
    fn cell_cursor_wraps_when_the_readable_set_shrinks() {
        let cursor = Cell::new(0usize);
        let starts: Vec<_> = (0..5).map(|_| cursor.next_start(3)).collect();
        assert_eq!(starts, [0, 1, 2, 0, 1]);
        // Now at 2; with two readable replicas it divides once, then wraps by compare.
        let starts: Vec<_> = (0..4).map(|_| cursor.next_start(2)).collect();
        assert_eq!(starts, [0, 1, 0, 1]);
        let cursor = Cell::new(usize::MAX);
        assert!(cursor.next_start(1) == 0 && cursor.next_start(1) == 0);
    }
}
