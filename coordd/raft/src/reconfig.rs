//! Membership change on the leader: [`Member::change_membership`] adds members as learners,
//! waits (bounded) until they caught up, then changes the voters by joint consensus
//! (openraft's `change_membership`: a joint configuration, then the new one).
//!
//! Invariants: every wait has a deadline (`learner_catch_up_timeout_ms`,
//! `membership_change_timeout_ms`); a change that is refused before anything was appended
//! (`BadArguments`, `InProgress`, `NotLeader`) changed nothing; learners added for a change
//! that then fails to catch up are removed again (best effort, bounded), so a failed change
//! leaves the voters as they were.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, Fatal, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use thiserror::Error;
use tokio::time::Instant;

use crate::member::{Member, Status};
use crate::MemberId;

/// A change of the voters: members to add (id -> peer address) and members to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MembershipChange {
    pub add: BTreeMap<MemberId, String>,
    pub remove: BTreeSet<MemberId>,
}

/// [`Member::change_membership`] failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ReconfigError {
    /// Only the leader changes the membership; nothing was done.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<MemberId> },
    /// Another change is under way (on this leader, or a joint configuration is in the
    /// log); nothing was done.
    #[error("a membership change is in progress")]
    InProgress,
    /// The change makes no sense against the current voters; nothing was done.
    #[error("bad membership change: {0}")]
    BadArguments(String),
    /// New members did not catch up in time (not running, unreachable, too slow); they were
    /// removed again and the voters are unchanged.
    #[error("new members not caught up: {0}")]
    NotCaughtUp(String),
    /// The configuration change did not commit within its deadline: its outcome is unknown
    /// (the joint or the new configuration may still commit). Read the membership again.
    #[error("membership change not committed within {after_ms} ms; its outcome is unknown")]
    Timeout { after_ms: u64 },
    #[error("member is shut down")]
    Shutdown,
    #[error("member stopped: {0}")]
    Fatal(String),
}

/// The voters after `change` applied to `voters` (id -> address), or why the change is
/// refused: an added id that is already a voter, a removed id that is not one, an id both
/// added and removed, an empty change, no voter left, or more than `max_voters`.
pub fn plan_change(
    voters: &BTreeMap<MemberId, String>,
    change: &MembershipChange,
    max_voters: usize,
) -> Result<BTreeSet<MemberId>, String> {
    if change.add.is_empty() && change.remove.is_empty() {
        return Err("nothing to add or remove".into());
    }
    for (id, addr) in &change.add {
        if change.remove.contains(id) {
            return Err(format!("member {id} is both added and removed"));
        }
        if voters.contains_key(id) {
            return Err(format!("member {id} is already a member"));
        }
        if let Some((other, _)) = voters.iter().find(|(_, a)| *a == addr) {
            return Err(format!(
                "address {addr} of new member {id} is member {other}'s"
            ));
        }
        if addr.is_empty() {
            return Err(format!("member {id} has no address"));
        }
    }
    let mut seen = BTreeMap::new();
    for (id, addr) in &change.add {
        if let Some(other) = seen.insert(addr, id) {
            return Err(format!(
                "new members {other} and {id} share the address {addr}"
            ));
        }
    }
    for id in &change.remove {
        if !voters.contains_key(id) {
            return Err(format!("member {id} is not a member"));
        }
    }
    let next: BTreeSet<MemberId> = voters
        .keys()
        .filter(|id| !change.remove.contains(id))
        .chain(change.add.keys())
        .copied()
        .collect();
    if next.is_empty() {
        return Err("the change would leave no member".into());
    }
    if next.len() > max_voters {
        return Err(format!(
            "the change would leave {} members, more than {max_voters}",
            next.len()
        ));
    }
    Ok(next)
}

/// Most voters a change may leave (the server's configuration allows as many).
pub const VOTERS_MAX: usize = 9;

fn as_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

type WriteError = RaftError<u64, ClientWriteError<u64, BasicNode>>;

fn map_write_error(e: WriteError) -> ReconfigError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ReconfigError::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_),
        )) => ReconfigError::InProgress,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ReconfigError::BadArguments(e.to_string())
        }
        RaftError::Fatal(Fatal::Stopped) => ReconfigError::Shutdown,
        RaftError::Fatal(f) => ReconfigError::Fatal(f.to_string()),
    }
}

impl Member {
    /// Changes the voters, on the leader: adds `change.add` as learners, waits until each has
    /// caught up (within `learner_catch_up_lag_max` entries of the leader's log, for at most
    /// `learner_catch_up_timeout_ms`), then commits the joint and the new configuration
    /// (`membership_change_timeout_ms`). Removed members leave the membership entirely. A
    /// leader that removes itself keeps leading until the new configuration is applied, then
    /// steps down (the others elect a leader among themselves). Returns the status after the
    /// change. One change at a time per leader.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
    ) -> Result<Status, ReconfigError> {
        let Ok(_guard) = self.inner.reconfig.try_lock() else {
            return Err(ReconfigError::InProgress);
        };
        let status = self.status();
        if status.role != crate::Role::Leader {
            return Err(ReconfigError::NotLeader {
                leader: status.leader,
            });
        }
        if status.membership.joint {
            self.finish_joint().await;
            return Err(ReconfigError::InProgress);
        }
        let voters: BTreeMap<MemberId, String> = status
            .membership
            .voters
            .iter()
            .map(|id| {
                let addr = status.membership.addrs.get(id).cloned().unwrap_or_default();
                (*id, addr)
            })
            .collect();
        let next =
            plan_change(&voters, &change, VOTERS_MAX).map_err(ReconfigError::BadArguments)?;
        let id = self.inner.id;
        tracing::info!(id, add = ?change.add, remove = ?change.remove, ?next, "membership change: start");
        let step = self.inner.config.membership_change_timeout();
        let raft = self.raft();
        if !change.add.is_empty() {
            let nodes: BTreeMap<u64, BasicNode> = change
                .add
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            match tokio::time::timeout(
                step,
                raft.change_membership(ChangeMembers::AddNodes(nodes), true),
            )
            .await
            {
                Err(_) => {
                    return Err(ReconfigError::Timeout {
                        after_ms: as_millis(step),
                    })
                }
                Ok(Err(e)) => return Err(map_write_error(e)),
                Ok(Ok(_)) => {}
            }
            tracing::info!(id, learners = ?change.add.keys().collect::<Vec<_>>(), "membership change: learners added; waiting for them to catch up");
            if let Err(why) = self
                .wait_caught_up(change.add.keys().copied().collect())
                .await
            {
                tracing::warn!(id, %why, "membership change: new members did not catch up; removing them again");
                let ids: BTreeSet<u64> = change.add.keys().copied().collect();
                match tokio::time::timeout(
                    step,
                    raft.change_membership(ChangeMembers::RemoveNodes(ids), false),
                )
                .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(id, error = %e, "could not remove the learners again")
                    }
                    Err(_) => tracing::warn!(id, "removing the learners again timed out"),
                }
                return Err(ReconfigError::NotCaughtUp(why));
            }
        }
        // Joint, then the new configuration: two entries, each its own deadline.
        let both = step * 2;
        match tokio::time::timeout(both, raft.change_membership(next.clone(), false)).await {
            Err(_) => {
                tracing::warn!(
                    id,
                    "membership change: not committed in time; outcome unknown"
                );
                Err(ReconfigError::Timeout {
                    after_ms: as_millis(both),
                })
            }
            Ok(Err(e)) => Err(map_write_error(e)),
            Ok(Ok(r)) => {
                tracing::info!(id, voters = ?next, index = r.log_id.index, "membership change: committed");
                Ok(self.status())
            }
        }
    }

    /// A joint configuration left behind by a leader that changed the membership and lost
    /// its leadership (or crashed) before the second step: openraft does not finish it by
    /// itself, so this leader moves on to the joint's last configuration (bounded). The
    /// change that asked for it is still refused (`InProgress`); the next one can go.
    async fn finish_joint(&self) {
        let goal: Option<BTreeSet<u64>> = {
            let rx = self.raft().metrics();
            let m = rx.borrow();
            m.membership_config
                .membership()
                .get_joint_config()
                .last()
                .cloned()
        };
        let Some(goal) = goal.filter(|g| !g.is_empty()) else {
            return;
        };
        let step = self.inner.config.membership_change_timeout();
        tracing::info!(
            id = self.inner.id,
            ?goal,
            "a joint configuration is left in the log: finishing the change to its new voters"
        );
        match tokio::time::timeout(step, self.raft().change_membership(goal, false)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::info!(id = self.inner.id, error = %e, "could not finish the joint configuration")
            }
            Err(_) => tracing::warn!(
                id = self.inner.id,
                "finishing the joint configuration timed out"
            ),
        }
    }

    /// Waits until every learner in `ids` is within `learner_catch_up_lag_max` entries of
    /// this leader's log; bounded by `learner_catch_up_timeout_ms`.
    async fn wait_caught_up(&self, ids: Vec<MemberId>) -> Result<(), String> {
        let timeout = self.inner.config.learner_catch_up_timeout();
        let lag_max = self.inner.config.learner_catch_up_lag_max;
        let deadline = Instant::now() + timeout;
        let mut rx = self.raft().metrics();
        loop {
            let behind: Vec<String> = {
                let m = rx.borrow_and_update();
                if m.state != ServerState::Leader {
                    return Err("this member lost the leadership".into());
                }
                let last = m.last_log_index.unwrap_or(0);
                let repl = m.replication.clone().unwrap_or_default();
                ids.iter()
                    .filter_map(|id| {
                        let matched = repl.get(id).copied().flatten().map(|l| l.index);
                        match matched {
                            Some(i) if i.saturating_add(lag_max) >= last => None,
                            _ => Some(format!("{id} at {matched:?} of {last}")),
                        }
                    })
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Err(_) => {
                    return Err(format!(
                        "after {} ms (learner_catch_up_timeout_ms) still behind: {}",
                        as_millis(timeout),
                        behind.join(", ")
                    ))
                }
                Ok(Err(_)) => return Err("member is shut down".into()),
                Ok(Ok(())) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(ids: &[u64]) -> BTreeMap<u64, String> {
        ids.iter().map(|i| (*i, format!("h{i}:1"))).collect()
    }

    fn change(add: &[u64], remove: &[u64]) -> MembershipChange {
        MembershipChange {
            add: add.iter().map(|i| (*i, format!("h{i}:1"))).collect(),
            remove: remove.iter().copied().collect(),
        }
    }

    #[test]
    fn plans_grow_shrink_and_swap() {
        let v = voters(&[1, 2, 3]);
        assert_eq!(
            plan_change(&v, &change(&[4, 5], &[]), 9).unwrap(),
            [1, 2, 3, 4, 5].into()
        );
        assert_eq!(
            plan_change(&v, &change(&[], &[3]), 9).unwrap(),
            [1, 2].into()
        );
        assert_eq!(
            plan_change(&v, &change(&[4], &[1]), 9).unwrap(),
            [2, 3, 4].into()
        );
        assert_eq!(
            plan_change(&voters(&[1]), &change(&[2], &[]), 9).unwrap(),
            [1, 2].into()
        );
    }

    #[test]
    fn refuses_what_makes_no_sense() {
        let v = voters(&[1, 2, 3]);
        for (c, why) in [
            (change(&[], &[]), "nothing"),
            (change(&[3], &[]), "already"),
            (change(&[4], &[4]), "both"),
            (change(&[], &[7]), "not a member"),
            (change(&[], &[1, 2, 3]), "no member"),
        ] {
            let e = plan_change(&v, &c, 9).unwrap_err();
            assert!(e.contains(why), "{c:?}: {e}");
        }
        let e = plan_change(&v, &change(&[4, 5], &[]), 4).unwrap_err();
        assert!(e.contains("more than 4"), "{e}");
        // An address that is already a member's, or shared by two new members.
        let mut c = change(&[4], &[]);
        c.add.insert(4, "h1:1".into());
        assert!(plan_change(&v, &c, 9).unwrap_err().contains("member 1's"));
        let mut c = change(&[4, 5], &[]);
        c.add.insert(5, "h4:1".into());
        assert!(plan_change(&v, &c, 9).unwrap_err().contains("share"));
    }
}
