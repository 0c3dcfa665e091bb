//! Pure pieces of session bookkeeping: states, the lease, xids, in-order reply
//! matching, reconnect backoff and the server rotation. No I/O here, so each is unit
//! tested on its own.

use std::collections::VecDeque;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use tokio::time::Instant;

/// The session as the application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// A connect attempt (TCP connect plus handshake) is under way.
    Connecting,
    /// Connected; requests flow.
    Connected,
    /// The connection dropped; the client is waiting to reconnect. The session may
    /// still be alive on the ensemble.
    Disconnected,
    /// The ensemble expired the session. Terminal: make a new client.
    Expired,
    /// `close()` finished (or every handle was dropped). Terminal.
    Closed,
}

impl SessionState {
    pub fn is_terminal(self) -> bool {
        matches!(self, SessionState::Expired | SessionState::Closed)
    }
}

/// The lease: until when the ensemble is known to keep the session alive.
///
/// Invariant: `deadline` = the send time of the latest request (or ping, or connect
/// request) whose reply was received, plus the negotiated session timeout. The server
/// restarts its expiry clock no earlier than it receives a request, and that is after
/// we sent it, so the ensemble cannot expire the session before `deadline` (clock rate
/// differences aside: callers keep a margin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    deadline: Instant,
}

impl Lease {
    /// A lease from a connect request sent at `sent_at` and answered with `timeout`.
    pub fn new(sent_at: Instant, timeout: Duration) -> Self {
        Lease {
            deadline: sent_at + timeout,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A reply arrived for a request sent at `sent_at`. The lease never moves back:
    /// replies come in send order, but a renegotiated (shorter) timeout must not
    /// shorten a lease the ensemble already granted.
    pub fn on_reply(&mut self, sent_at: Instant, timeout: Duration) {
        self.deadline = self.deadline.max(sent_at + timeout);
    }

    /// The session is known to be over (expired or closed): the lease ends now.
    pub fn end(&mut self, now: Instant) {
        self.deadline = self.deadline.min(now);
    }

    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// The xid after `xid`. Xids of requests are positive: the negative ones are reserved
/// (notification -1, ping -2, auth -4, setWatches -8), so wrap to 1, never to i32::MIN.
pub fn next_xid(xid: i32) -> i32 {
    if !(1..i32::MAX).contains(&xid) {
        1
    } else {
        xid + 1
    }
}

/// One request in flight, waiting for its reply.
#[derive(Debug)]
pub(crate) struct InFlight<T> {
    pub xid: i32,
    pub sent_at: Instant,
    pub item: T,
}

/// Replies to ordinary requests come back in the order the requests were sent
/// (ZooKeeper's per-session FIFO guarantee), so the reply's xid must be the oldest one
/// in flight. Anything else means the stream is out of sync: ZooKeeper's client drops
/// the connection ("Xid out of order"), and so do we.
pub(crate) fn match_reply<T>(
    in_flight: &mut VecDeque<InFlight<T>>,
    xid: i32,
) -> Result<InFlight<T>, String> {
    match in_flight.front() {
        Some(head) if head.xid == xid => Ok(in_flight.pop_front().expect("front exists")),
        Some(head) => Err(format!(
            "xid out of order: reply xid {xid}, oldest request in flight {}",
            head.xid
        )),
        None => Err(format!("reply xid {xid} with no request in flight")),
    }
}

/// Reconnect delays: exponential from `min` to `max`, with full jitter over the upper
/// half so many clients that lost the same server do not come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The ceiling of the next delay: min * 2^failures, capped at max.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before the next attempt; every call counts one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let jitter_ns = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(if jitter_ns == 0 {
            0
        } else {
            rng.gen_range(0..=jitter_ns)
        })
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The servers in a shuffled order, tried round robin (ZooKeeper's
/// `StaticHostProvider` shuffles once, then cycles).
#[derive(Debug, Clone)]
pub struct ServerList {
    servers: Vec<String>,
    next: usize,
}

impl ServerList {
    pub fn new(mut servers: Vec<String>, rng: &mut impl Rng) -> Self {
        servers.shuffle(rng);
        ServerList { servers, next: 0 }
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The server to try next.
    pub fn next_server(&mut self) -> &str {
        let i = self.next % self.servers.len().max(1);
        self.next = (i + 1) % self.servers.len().max(1);
        &self.servers[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn xids_skip_reserved_values() {
        assert_eq!(next_xid(0), 1);
        assert_eq!(next_xid(1), 2);
        assert_eq!(next_xid(i32::MAX - 1), i32::MAX);
        assert_eq!(next_xid(i32::MAX), 1);
        assert_eq!(next_xid(-8), 1);
    }

    #[test]
    fn replies_match_the_oldest_request_only() {
        let now = Instant::now();
        let mut q: VecDeque<InFlight<&str>> = [(1, "a"), (2, "b"), (3, "c")]
            .into_iter()
            .map(|(xid, item)| InFlight {
                xid,
                sent_at: now,
                item,
            })
            .collect();
        assert_eq!(match_reply(&mut q, 1).unwrap().item, "a");
        let err = match_reply(&mut q, 3).unwrap_err();
        assert!(err.contains("out of order"), "{err}");
        // A mismatch does not consume anything: the connection is dropped and every
        // request left fails with ConnectionLoss.
        assert_eq!(q.len(), 2);
        assert_eq!(match_reply(&mut q, 2).unwrap().item, "b");
        assert_eq!(match_reply(&mut q, 3).unwrap().item, "c");
        assert!(match_reply(&mut q, 4).is_err());
    }

    #[test]
    fn lease_is_send_time_plus_timeout_and_never_moves_back() {
        let t0 = Instant::now();
        let timeout = Duration::from_millis(10_000);
        let mut lease = Lease::new(t0, timeout);
        assert_eq!(lease.deadline(), t0 + timeout);
        lease.on_reply(t0 + Duration::from_millis(300), timeout);
        assert_eq!(lease.deadline(), t0 + Duration::from_millis(10_300));
        // An older send (or a shorter renegotiated timeout) does not shorten it.
        lease.on_reply(t0 + Duration::from_millis(100), timeout);
        lease.on_reply(
            t0 + Duration::from_millis(400),
            Duration::from_millis(1_000),
        );
        assert_eq!(lease.deadline(), t0 + Duration::from_millis(10_300));
        assert_eq!(
            lease.remaining(t0 + Duration::from_millis(10_000)),
            Duration::from_millis(300)
        );
        assert_eq!(lease.remaining(t0 + timeout * 2), Duration::ZERO);
        lease.end(t0 + Duration::from_millis(500));
        assert_eq!(lease.deadline(), t0 + Duration::from_millis(500));
    }

    #[test]
    fn backoff_grows_to_its_bound_with_jitter_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let min = Duration::from_millis(50);
        let max = Duration::from_millis(1_000);
        let mut b = Backoff::new(min, max);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let ceiling = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            [50, 100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000]
        );
        for _ in 0..1000 {
            assert!(b.next_delay(&mut rng) <= max);
        }
        b.reset();
        assert_eq!(b.ceiling(), min);
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_delay(&mut rng), Duration::ZERO);
    }

    #[test]
    fn server_list_cycles_through_a_permutation() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let servers: Vec<String> = (0..5).map(|i| format!("h{i}:2181")).collect();
        let mut l = ServerList::new(servers.clone(), &mut rng);
        let first: Vec<String> = (0..5).map(|_| l.next_server().to_owned()).collect();
        let mut sorted = first.clone();
        sorted.sort();
        assert_eq!(sorted, servers);
        let second: Vec<String> = (0..5).map(|_| l.next_server().to_owned()).collect();
        assert_eq!(first, second);
    }
}
