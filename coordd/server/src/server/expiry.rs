//! Session deadlines: which sessions have gone a whole timeout without a packet.
//!
//! Pure bookkeeping; the caller passes the time in, so tests drive it without a clock.
//! Invariant: `order` and `deadline_of` hold exactly the same sessions.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::state::SessionId;

#[derive(Debug, Default)]
pub struct SessionDeadlines {
    deadline_of: HashMap<SessionId, Instant>,
    order: BTreeSet<(Instant, SessionId)>,
}

impl SessionDeadlines {
    /// Records a packet from `session_id`: it now expires `timeout` after `now`.
    pub fn touch(&mut self, session_id: SessionId, now: Instant, timeout: Duration) {
        let deadline = now + timeout;
        if let Some(old) = self.deadline_of.insert(session_id, deadline) {
            self.order.remove(&(old, session_id));
        }
        self.order.insert((deadline, session_id));
        debug_assert_eq!(self.order.len(), self.deadline_of.len());
    }

    pub fn remove(&mut self, session_id: SessionId) {
        if let Some(old) = self.deadline_of.remove(&session_id) {
            self.order.remove(&(old, session_id));
        }
        debug_assert_eq!(self.order.len(), self.deadline_of.len());
    }

    /// Removes and returns every session whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<SessionId> {
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = self.order.first() {
            if deadline > now {
                break;
            }
            self.order.pop_first();
            self.deadline_of.remove(&id);
            out.push(id);
        }
        debug_assert_eq!(self.order.len(), self.deadline_of.len());
        out
    }

    pub fn contains(&self, session_id: SessionId) -> bool {
        self.deadline_of.contains_key(&session_id)
    }

    pub fn len(&self) -> usize {
        self.deadline_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadline_of.is_empty()
    }
}

/// Whether a tick that finds the member leading in `now` (None: not leading) starts a new
/// leadership, after one that found it leading in `led` (its last serving tick's view):
/// a new term is a new leadership, also when the same member won again without any tick
/// seeing it out of office (ticks stop while a member does not serve). A new leadership
/// gives every session a whole timeout: while it was out of office their clients' touches
/// went to another leader, or nowhere.
pub fn leadership_began(led: Option<u64>, now: Option<u64>) -> bool {
    now.is_some() && now != led
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_term_is_a_new_leadership_even_without_a_tick_out_of_office() {
        // Elected; still leading in the same term.
        assert!(leadership_began(None, Some(3)));
        assert!(!leadership_began(Some(3), Some(3)));
        // Lost office and won it back in a later term, no tick in between (the member
        // did not serve meanwhile): a new leadership all the same.
        assert!(leadership_began(Some(3), Some(5)));
        // Not leading.
        assert!(!leadership_began(Some(3), None));
        assert!(!leadership_began(None, None));
    }

    #[test]
    fn touch_postpones_expiry() {
        let t0 = Instant::now();
        let mut d = SessionDeadlines::default();
        d.touch(1, t0, Duration::from_millis(100));
        d.touch(2, t0, Duration::from_millis(200));
        assert!(d.take_expired(t0 + Duration::from_millis(99)).is_empty());
        d.touch(
            1,
            t0 + Duration::from_millis(50),
            Duration::from_millis(100),
        );
        assert!(d.take_expired(t0 + Duration::from_millis(100)).is_empty());
        assert_eq!(d.take_expired(t0 + Duration::from_millis(150)), vec![1]);
        d.remove(2);
        assert!(d.take_expired(t0 + Duration::from_secs(9)).is_empty());
        assert!(d.is_empty());
    }
}
