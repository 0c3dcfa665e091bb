//! An in-process network between members, with fault switches for tests: cut a member off
//! (partition), cut one link, delay a member's messages, heal.
//!
//! A dropped message behaves like a packet lost on a live TCP connection: the caller hears
//! nothing until its deadline (`TransportError::Timeout`), not a quick refusal. That is what an
//! isolated leader sees in production, and it keeps openraft out of its unreachable backoff.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::{PeerRequest, PeerResponse, Transport, TransportError};
use crate::{Member, MemberId};

/// The network: members register here, and each gets a [`MemTransport`] to send through.
/// Clones share the same network.
#[derive(Clone, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    members: HashMap<MemberId, Member>,
    isolated: HashSet<MemberId>,
    /// Cut links, stored as (smaller id, larger id).
    cut: HashSet<(MemberId, MemberId)>,
    /// Extra one-way latency of every message to or from a member.
    delay: HashMap<MemberId, Duration>,
    /// AppendEntries with more entries than this are refused as `TooLarge` (a frame limit).
    max_entries: Option<u64>,
    dropped: u64,
    too_large: u64,
}

impl State {
    fn blocked(&self, from: MemberId, to: MemberId) -> bool {
        self.isolated.contains(&from)
            || self.isolated.contains(&to)
            || self.cut.contains(&link(from, to))
    }

    fn delay(&self, from: MemberId, to: MemberId) -> Duration {
        let d = |id| self.delay.get(&id).copied().unwrap_or_default();
        d(from) + d(to)
    }
}

fn link(a: MemberId, b: MemberId) -> (MemberId, MemberId) {
    (a.min(b), a.max(b))
}

impl MemNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only map updates happen under the lock; a poisoned one is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The transport member `from` sends through (give it to [`Member::start`]).
    pub fn transport(&self, from: MemberId) -> MemTransport {
        MemTransport {
            net: self.clone(),
            from,
        }
    }

    /// Makes `member` reachable: requests to its id go to its
    /// [`Member::handle_peer_request`]. Until then, calls to it are `Unreachable`.
    pub fn register(&self, member: &Member) {
        self.lock().members.insert(member.id(), member.clone());
    }

    /// Forgets a member (e.g. after it shut down); calls to it become `Unreachable`.
    pub fn unregister(&self, id: MemberId) {
        self.lock().members.remove(&id);
    }

    /// Drops every message to or from `id`, including responses to calls already in flight.
    pub fn isolate(&self, id: MemberId) {
        self.lock().isolated.insert(id);
    }

    /// Undoes [`MemNetwork::isolate`] for `id`.
    pub fn rejoin(&self, id: MemberId) {
        self.lock().isolated.remove(&id);
    }

    /// Drops every message between `a` and `b`, both ways.
    pub fn cut(&self, a: MemberId, b: MemberId) {
        self.lock().cut.insert(link(a, b));
    }

    /// Adds `delay` to every message to or from `id` (each way); zero removes it.
    pub fn set_delay(&self, id: MemberId, delay: Duration) {
        let mut s = self.lock();
        if delay.is_zero() {
            s.delay.remove(&id);
        } else {
            s.delay.insert(id, delay);
        }
    }

    /// Refuses AppendEntries carrying more than `max_entries` entries with
    /// `TransportError::TooLarge`, as a transport with a frame limit would; None lifts it.
    pub fn set_max_entries(&self, max_entries: Option<u64>) {
        self.lock().max_entries = max_entries;
    }

    /// Removes every fault: isolations, cut links, delays, the entry limit.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.isolated.clear();
        s.cut.clear();
        s.delay.clear();
        s.max_entries = None;
    }

    /// How many AppendEntries the entry limit refused so far.
    pub fn refused_too_large(&self) -> u64 {
        self.lock().too_large
    }

    /// How many messages the faults dropped so far.
    pub fn dropped_messages(&self) -> u64 {
        self.lock().dropped
    }

    /// One direction of a call: applies the faults. A dropped message (blocked before or
    /// after its delay) is never answered: the caller waits out its deadline.
    async fn leg(
        &self,
        from: MemberId,
        to: MemberId,
        deadline: Instant,
    ) -> Result<(), TransportError> {
        let (blocked, delay) = {
            let s = self.lock();
            (s.blocked(from, to), s.delay(from, to))
        };
        if !blocked && !delay.is_zero() {
            if Instant::now() + delay >= deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(TransportError::Timeout);
            }
            tokio::time::sleep(delay).await;
        }
        // Check again after the delay: a partition that began meanwhile drops the message.
        if blocked || self.lock().blocked(from, to) {
            self.lock().dropped += 1;
            tokio::time::sleep_until(deadline).await;
            return Err(TransportError::Timeout);
        }
        Ok(())
    }
}

/// Member `from`'s sending side of a [`MemNetwork`].
#[derive(Clone)]
pub struct MemTransport {
    net: MemNetwork,
    from: MemberId,
}

impl Transport for MemTransport {
    async fn call(
        &self,
        target: MemberId,
        _addr: &str,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let deadline = Instant::now() + timeout;
        {
            let mut s = self.net.lock();
            if let Some(max_entries) = s.max_entries {
                if request.entry_count() as u64 > max_entries {
                    s.too_large += 1;
                    return Err(TransportError::TooLarge { max_entries });
                }
            }
        }
        self.net.leg(self.from, target, deadline).await?;
        let member = self.net.lock().members.get(&target).cloned();
        let Some(member) = member else {
            return Err(TransportError::Unreachable(format!(
                "member {target} is not registered"
            )));
        };
        let response = tokio::time::timeout_at(deadline, member.handle_peer_request(request))
            .await
            .map_err(|_| TransportError::Timeout)?;
        self.net.leg(target, self.from, deadline).await?;
        Ok(response)
    }
}
