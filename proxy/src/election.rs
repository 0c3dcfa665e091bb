//! Election and fencing rules (DESIGN.md section 4) as pure functions over plain
//! data. The agent gathers the inputs (records, the client's lease deadline, the
//! leader znode's czxid, the clock) and acts on the answers; nothing here does I/O or
//! reads a clock, so every corner case is a unit test.
//!
//! Invariant: no answer lets a node take writes without holding `leader` on a valid
//! lease: [`on_restart`] never answers "primary", [`lease_state`] fences at the margin
//! and on any doubt, and [`leadership`] treats any leader epoch but our own as lost.

use std::time::{Duration, Instant};

use crate::records::{
    ClusterConfig, LeaderRecord, Lsn, MemberRecord, MemberState, Role, SyncRecord,
};

/// Why this node must not race for `leader` now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotEligible {
    #[error("this node's PostgreSQL is not a running replica (role {role:?}, state {state:?})")]
    NotARunningReplica { role: Role, state: MemberState },
    #[error("this node has published no WAL position or timeline")]
    PositionUnknown,
    #[error("node {node} is on a later timeline ({theirs} > {mine})")]
    BehindTimeline {
        node: String,
        mine: u32,
        theirs: u32,
    },
    #[error("node {node} has received more WAL ({theirs} > {mine})")]
    BehindPeer {
        node: String,
        mine: Lsn,
        theirs: Lsn,
    },
    /// Synchronous mode and this node is not in `sync` (or `sync` is missing: then
    /// nobody is known to hold every acknowledged commit, and no one may win).
    #[error("synchronous mode and this node is not a synchronous standby")]
    NotSynchronous,
    /// Synchronous mode: a member of `sync` is not live (no running replica record with
    /// a position). `ANY 1 (...)` put each acknowledged commit on *one* of the synchronous
    /// standbys, so only the most advanced of all of them surely holds every one: with
    /// one of them missing nobody may win (the missing one comes back or an operator
    /// decides).
    #[error(
        "synchronous mode and synchronous standby {node} is not live: it may hold \
         acknowledged commits this node lacks"
    )]
    SyncMemberMissing { node: String },
}

/// DESIGN.md 4.2: may `me` race for `leader`?
///
/// `me` is this node's fresh record (not the published one, which may be a second
/// old); `live_members` are the records under `members/` now, ours included or not.
///
/// Positions compare as (timeline, WAL position): WAL a member received on an older
/// timeline past the fork is a dead branch, so a later timeline wins regardless of
/// LSN. Equal positions are all eligible; the `leader` create picks one. A member
/// that has published no position (starting, never streamed) is not compared: it
/// cannot be shown to be ahead, and waiting for it could block failover forever. In
/// synchronous mode the `sync` check covers it: `ANY 1 (...)` puts every acknowledged
/// commit on at least one synchronous standby and WAL is linear, so the most advanced
/// of *all* synchronous standbys holds every one; hence each other member of `sync`
/// must be live (in `live_members` with a position) and not ahead of us.
///
/// Synchronous mode also lets `sync.leader` race: the last master (it writes `sync`
/// before it promotes) wrote every acknowledged commit itself, so it needs no standby
/// live. And it compares positions only with the nodes of `sync` and its leader: any
/// other node can hold only WAL nobody acknowledged (it rewinds once another wins).
/// Without both, a last master that restarted as a standby within its session (an
/// agent crash and a quick restart, or a winner killed between `pg_promote` and
/// publishing `primary`) is ahead of every synchronous standby, so none of them may
/// win, and it was not in `sync`, so it may not either: no master, for good.
pub fn eligible(
    me: &MemberRecord,
    live_members: &[MemberRecord],
    config: &ClusterConfig,
    sync: Option<&SyncRecord>,
) -> Result<(), NotEligible> {
    if me.role != Role::Replica || me.state != MemberState::Running {
        return Err(NotEligible::NotARunningReplica {
            role: me.role,
            state: me.state,
        });
    }
    let (Some(my_timeline), Some(my_lsn)) = (me.timeline, me.wal_position()) else {
        return Err(NotEligible::PositionUnknown);
    };
    let sync = if config.synchronous {
        let Some(sync) = sync else {
            return Err(NotEligible::NotSynchronous);
        };
        let last_master = sync.leader.as_deref() == Some(me.node.as_str());
        if !last_master && !sync.contains(&me.node) {
            return Err(NotEligible::NotSynchronous);
        }
        if !last_master {
            for node in sync.standbys.iter().filter(|n| **n != me.node) {
                let live = live_members
                    .iter()
                    .any(|m| m.node == *node && m.wal_position().is_some());
                if !live {
                    return Err(NotEligible::SyncMemberMissing { node: node.clone() });
                }
            }
        }
        Some(sync)
    } else {
        None
    };
    let compared = |m: &&MemberRecord| match sync {
        None => true,
        Some(s) => s.contains(&m.node) || s.leader.as_deref() == Some(m.node.as_str()),
    };
    for peer in live_members
        .iter()
        .filter(|m| m.node != me.node)
        .filter(compared)
    {
        if let Some(theirs) = peer.timeline {
            if theirs > my_timeline {
                return Err(NotEligible::BehindTimeline {
                    node: peer.node.clone(),
                    mine: my_timeline,
                    theirs,
                });
            }
            if theirs < my_timeline {
                continue;
            }
        }
        // Same timeline, or the peer's is unknown: compare positions.
        if let Some(theirs) = peer.wal_position() {
            if theirs > my_lsn {
                return Err(NotEligible::BehindPeer {
                    node: peer.node.clone(),
                    mine: my_lsn,
                    theirs,
                });
            }
        }
    }
    Ok(())
}

/// Whether the leader may keep its PostgreSQL running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The ensemble cannot have expired the session before `fence_at`.
    Valid { fence_at: Instant },
    /// Stop PostgreSQL now (immediate mode).
    MustFence,
}

/// DESIGN.md 4.4, self-fencing: `lease_deadline` is the client's lease (send time of
/// the last acknowledged heartbeat + session timeout, `coordd_client::Client::lease`).
/// Valid strictly before `lease_deadline - margin`; at that instant and after, fence.
/// A margin that reaches back before the clock's origin fences too: no doubt is
/// resolved in favour of staying up.
pub fn lease_state(lease_deadline: Instant, margin: Duration, now: Instant) -> LeaseState {
    match lease_deadline.checked_sub(margin) {
        Some(fence_at) if now < fence_at => LeaseState::Valid { fence_at },
        _ => LeaseState::MustFence,
    }
}

/// A master's fencing token: the czxid of its `leader` znode. Czxids only grow, so a
/// larger epoch is a later election.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub i64);

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What the `leader` znode says about a node that won with epoch `mine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// The znode is the one we created: still ours.
    Held,
    /// Another election happened after ours: fence and follow.
    Superseded { current: Epoch },
    /// No `leader`: our session is gone (or the node was deleted); fence.
    Vacant,
    /// A czxid older than ours: the server we read from is behind the one we won on.
    /// Not proof of anything; fence until a read shows our epoch again.
    StaleView { seen: Epoch },
}

impl Leadership {
    /// Only [`Leadership::Held`] lets a master keep taking writes.
    pub fn may_write(self) -> bool {
        self == Leadership::Held
    }
}

/// Compares our epoch with the `leader` znode's czxid as read now (`None`: NoNode).
pub fn leadership(mine: Epoch, observed: Option<Epoch>) -> Leadership {
    match observed {
        None => Leadership::Vacant,
        Some(e) if e == mine => Leadership::Held,
        Some(e) if e > mine => Leadership::Superseded { current: e },
        Some(e) => Leadership::StaleView { seen: e },
    }
}

/// A standby that follows `leader` but cannot: its WAL went past the point where the
/// leader's timeline forked off (it received WAL of a master that was not elected), so
/// PostgreSQL refuses the new timeline and retries forever ("new timeline N forked off
/// current database system timeline M before current recovery point"). Seen from
/// outside: still on an older timeline than the leader, and replay has not moved for
/// `unmoved` >= `threshold`. (A standby merely catching up on the older timeline's WAL
/// replays on; one that reached the fork switches timeline.) Such a standby must
/// pg_rewind from the leader; a rewind of one that had not diverged is harmless
/// ("no rewind required").
pub fn diverged(
    me: &MemberRecord,
    leader: &MemberRecord,
    unmoved: Duration,
    threshold: Duration,
) -> bool {
    match (me.timeline, leader.timeline) {
        (Some(mine), Some(theirs)) => {
            me.role == Role::Replica && mine < theirs && unmoved >= threshold
        }
        _ => false,
    }
}

/// How an agent starts its PostgreSQL (DESIGN.md 4.4, fail-safe on restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    /// Start as a standby. `Some`: another node is master; rewind from it if our
    /// timeline diverged, then stream from it. `None`: `leader` names this node but
    /// belongs to a session of ours that died with the old process; stay a standby
    /// until that ephemeral expires, then compete.
    Standby { follow: Option<LeaderRecord> },
    /// Nobody is master: start as a standby and race for `leader` if eligible.
    Compete,
}

/// DESIGN.md 4.4: never start as a primary on our own, whatever `leader` says. Call
/// with the record read through a new session; a record that names `me` cannot be
/// this session's (it has created nothing yet).
pub fn on_restart(leader: Option<&LeaderRecord>, me: &str) -> StartAs {
    match leader {
        None => StartAs::Compete,
        Some(l) if l.node == me => StartAs::Standby { follow: None },
        Some(l) => StartAs::Standby {
            follow: Some(l.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::LeaderState;

    fn member(
        node: &str,
        timeline: u32,
        receive: Option<u64>,
        replay: Option<u64>,
    ) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            role: Role::Replica,
            state: MemberState::Running,
            timeline: Some(timeline),
            receive_lsn: receive.map(Lsn),
            replay_lsn: replay.map(Lsn),
            lag_bytes: Some(0),
            updated_ms: 0,
        }
    }

    fn cfg(synchronous: bool) -> ClusterConfig {
        ClusterConfig {
            synchronous,
            ..ClusterConfig::default()
        }
    }

    fn sync(nodes: &[&str]) -> SyncRecord {
        SyncRecord {
            leader: Some("old".into()),
            standbys: nodes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn most_advanced_is_eligible_and_ties_all_are() {
        let a = member("a", 2, Some(300), Some(250));
        let b = member("b", 2, Some(200), Some(200));
        let c = member("c", 2, Some(300), Some(100));
        let live = [a.clone(), b.clone(), c.clone()];
        assert_eq!(eligible(&a, &live, &cfg(false), None), Ok(()));
        assert_eq!(eligible(&c, &live, &cfg(false), None), Ok(()), "tie");
        assert_eq!(
            eligible(&b, &live, &cfg(false), None),
            Err(NotEligible::BehindPeer {
                node: "a".into(),
                mine: Lsn(200),
                theirs: Lsn(300)
            })
        );
        // Alone (our record not yet in the list) is eligible.
        assert_eq!(eligible(&b, &[], &cfg(false), None), Ok(()));
    }

    #[test]
    fn received_not_replayed_counts() {
        // b replayed less but received more than a: b holds more WAL.
        let a = member("a", 1, Some(100), Some(100));
        let b = member("b", 1, Some(150), Some(10));
        let live = [a.clone(), b.clone()];
        assert!(eligible(&b, &live, &cfg(false), None).is_ok());
        assert!(eligible(&a, &live, &cfg(false), None).is_err());
    }

    #[test]
    fn missing_positions() {
        let a = member("a", 1, Some(100), None);
        // Only replay known (after a restart, before streaming): it still counts.
        let b = member("b", 1, None, Some(120));
        let starting = member("s", 1, None, None);
        let live = [a.clone(), b.clone(), starting.clone()];
        assert!(eligible(&b, &live, &cfg(false), None).is_ok());
        assert!(matches!(
            eligible(&a, &live, &cfg(false), None),
            Err(NotEligible::BehindPeer { .. })
        ));
        // We cannot race without a position of our own.
        assert_eq!(
            eligible(&starting, &live, &cfg(false), None),
            Err(NotEligible::PositionUnknown)
        );
        let no_timeline = MemberRecord {
            timeline: None,
            ..b.clone()
        };
        assert_eq!(
            eligible(&no_timeline, &live, &cfg(false), None),
            Err(NotEligible::PositionUnknown)
        );
        // A peer with an unknown timeline is still compared by position.
        let peer = MemberRecord {
            timeline: None,
            ..member("p", 1, Some(500), None)
        };
        assert!(matches!(
            eligible(&b, &[peer], &cfg(false), None),
            Err(NotEligible::BehindPeer { .. })
        ));
    }

    #[test]
    fn later_timeline_wins_over_more_wal() {
        // b received WAL from the old master past the fork point: a dead branch.
        let a = member("a", 3, Some(100), Some(100));
        let b = member("b", 2, Some(150), Some(150));
        let live = [a.clone(), b.clone()];
        assert!(eligible(&a, &live, &cfg(false), None).is_ok());
        assert_eq!(
            eligible(&b, &live, &cfg(false), None),
            Err(NotEligible::BehindTimeline {
                node: "a".into(),
                mine: 2,
                theirs: 3
            })
        );
    }

    #[test]
    fn only_running_replicas() {
        let live = [member("a", 1, Some(1), Some(1))];
        for (role, state) in [
            (Role::Primary, MemberState::Running),
            (Role::Unknown, MemberState::Running),
            (Role::Replica, MemberState::Starting),
            (Role::Replica, MemberState::Fenced),
            (Role::Replica, MemberState::Unknown),
        ] {
            let me = MemberRecord {
                role,
                state,
                ..member("me", 1, Some(9), Some(9))
            };
            assert_eq!(
                eligible(&me, &live, &cfg(false), None),
                Err(NotEligible::NotARunningReplica { role, state })
            );
        }
    }

    #[test]
    fn synchronous_mode() {
        let a = member("a", 1, Some(100), Some(100));
        let b = member("b", 1, Some(100), Some(100));
        let live = [a.clone(), b.clone()];
        let s = sync(&["b"]);
        assert_eq!(
            eligible(&a, &live, &cfg(true), Some(&s)),
            Err(NotEligible::NotSynchronous)
        );
        assert_eq!(eligible(&b, &live, &cfg(true), Some(&s)), Ok(()));
        // No sync record in synchronous mode: nobody may win.
        assert_eq!(
            eligible(&b, &live, &cfg(true), None),
            Err(NotEligible::NotSynchronous)
        );
        assert_eq!(
            eligible(&b, &live, &cfg(true), Some(&sync(&[]))),
            Err(NotEligible::NotSynchronous)
        );
        // Asynchronous mode ignores the record.
        assert_eq!(eligible(&a, &live, &cfg(false), Some(&s)), Ok(()));
        // A node outside `sync` and not its leader is not compared: what it has beyond
        // the synchronous standbys nobody acknowledged (it rewinds), and since it may
        // not win, comparing with it would leave the cluster without a master.
        let c = member("c", 1, Some(200), Some(200));
        assert_eq!(
            eligible(&b, &[a.clone(), b.clone(), c.clone()], &cfg(true), Some(&s)),
            Ok(())
        );
        assert_eq!(
            eligible(&c, &[a, b, c.clone()], &cfg(true), Some(&s)),
            Err(NotEligible::NotSynchronous)
        );
    }

    #[test]
    fn synchronous_mode_lets_the_last_master_race() {
        // a was master (it wrote `sync`), restarted as a standby with its session's
        // `leader` gone: it holds WAL the standbys never received.
        let s = SyncRecord {
            leader: Some("a".into()),
            standbys: vec!["b".into(), "c".into()],
        };
        let a = member("a", 1, None, Some(300));
        let b = member("b", 1, Some(200), Some(200));
        let c = member("c", 1, Some(250), Some(250));
        let live = [a.clone(), b.clone(), c.clone()];
        assert_eq!(eligible(&a, &live, &cfg(true), Some(&s)), Ok(()));
        // The standbys compare with it (it is sync's leader), so they hold back.
        assert!(matches!(
            eligible(&c, &live, &cfg(true), Some(&s)),
            Err(NotEligible::BehindPeer { node, .. }) if node == "a"
        ));
        // It needs no standby live: it wrote every acknowledged commit itself.
        assert_eq!(
            eligible(&a, std::slice::from_ref(&a), &cfg(true), Some(&s)),
            Ok(())
        );
        // `sync` naming no standby (none streamed yet): the last master still may win.
        let alone = SyncRecord {
            leader: Some("a".into()),
            standbys: Vec::new(),
        };
        assert_eq!(eligible(&a, &live, &cfg(true), Some(&alone)), Ok(()));
        // A winner killed between pg_promote and publishing: on a later timeline than
        // every standby, which therefore hold back, and it may race again.
        let promoted = member("a", 2, None, Some(310));
        let live = [promoted.clone(), b.clone(), c.clone()];
        assert_eq!(eligible(&promoted, &live, &cfg(true), Some(&s)), Ok(()));
        assert!(matches!(
            eligible(&c, &live, &cfg(true), Some(&s)),
            Err(NotEligible::BehindTimeline { .. })
        ));
        // The last master behind a standby (its disk lost WAL) does not win.
        let lagging = member("a", 1, None, Some(100));
        assert!(matches!(
            eligible(
                &lagging,
                &[lagging.clone(), c.clone()],
                &cfg(true),
                Some(&s)
            ),
            Err(NotEligible::BehindPeer { .. })
        ));
    }

    #[test]
    fn synchronous_mode_needs_every_sync_member_live() {
        // ANY 1 (b, c): a commit acknowledged by c alone is not on b.
        let b = member("b", 1, Some(100), Some(100));
        let c = member("c", 1, Some(150), Some(150));
        let s = sync(&["b", "c"]);
        assert_eq!(
            eligible(&b, std::slice::from_ref(&b), &cfg(true), Some(&s)),
            Err(NotEligible::SyncMemberMissing { node: "c".into() })
        );
        // c live without a position (starting) counts as missing too.
        let c_starting = member("c", 1, None, None);
        assert_eq!(
            eligible(&b, &[b.clone(), c_starting], &cfg(true), Some(&s)),
            Err(NotEligible::SyncMemberMissing { node: "c".into() })
        );
        // Both live: the most advanced wins, the other is behind.
        let live = [b.clone(), c.clone()];
        assert_eq!(eligible(&c, &live, &cfg(true), Some(&s)), Ok(()));
        assert!(matches!(
            eligible(&b, &live, &cfg(true), Some(&s)),
            Err(NotEligible::BehindPeer { .. })
        ));
        // The only synchronous standby needs nobody else.
        assert_eq!(eligible(&c, &[], &cfg(true), Some(&sync(&["c"]))), Ok(()));
        // Asynchronous mode: a missing peer does not matter.
        assert_eq!(
            eligible(&b, std::slice::from_ref(&b), &cfg(false), Some(&s)),
            Ok(())
        );
    }

    #[test]
    fn lease_boundaries() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(6_000);
        let margin = Duration::from_millis(2_000);
        let fence_at = t0 + Duration::from_millis(4_000);
        assert_eq!(
            lease_state(deadline, margin, t0),
            LeaseState::Valid { fence_at }
        );
        assert_eq!(
            lease_state(deadline, margin, fence_at - Duration::from_nanos(1)),
            LeaseState::Valid { fence_at }
        );
        // Exactly at the margin: fence.
        assert_eq!(
            lease_state(deadline, margin, fence_at),
            LeaseState::MustFence
        );
        assert_eq!(
            lease_state(deadline, margin, deadline),
            LeaseState::MustFence
        );
        assert_eq!(
            lease_state(deadline, margin, deadline + Duration::from_secs(60)),
            LeaseState::MustFence
        );
        // Zero margin: valid strictly before the deadline.
        assert_eq!(
            lease_state(deadline, Duration::ZERO, deadline),
            LeaseState::MustFence
        );
        // A margin larger than the lease: fence at once.
        assert_eq!(
            lease_state(deadline, Duration::from_secs(10), t0),
            LeaseState::MustFence
        );
        // A margin reaching before the clock's origin fences rather than panics.
        assert_eq!(lease_state(t0, Duration::MAX, t0), LeaseState::MustFence);
    }

    #[test]
    fn epochs() {
        let mine = Epoch(0x100);
        assert_eq!(leadership(mine, Some(Epoch(0x100))), Leadership::Held);
        assert!(leadership(mine, Some(mine)).may_write());
        assert_eq!(
            leadership(mine, Some(Epoch(0x200))),
            Leadership::Superseded {
                current: Epoch(0x200)
            }
        );
        assert_eq!(leadership(mine, None), Leadership::Vacant);
        assert_eq!(
            leadership(mine, Some(Epoch(0x50))),
            Leadership::StaleView { seen: Epoch(0x50) }
        );
        for observed in [None, Some(Epoch(0x200)), Some(Epoch(0x50))] {
            assert!(!leadership(mine, observed).may_write());
        }
        assert!(Epoch(2) > Epoch(1));
        assert_eq!(Epoch(255).to_string(), "0xff");
    }

    #[test]
    fn divergence() {
        let t = Duration::from_secs(10);
        let me = member("a", 1, Some(500), Some(500));
        let leader = MemberRecord {
            role: Role::Primary,
            ..member("b", 2, Some(400), Some(400))
        };
        assert!(diverged(&me, &leader, t, t));
        assert!(!diverged(&me, &leader, t - Duration::from_millis(1), t));
        // Same timeline: it streams (or waits for the leader), nothing to rewind.
        let same = MemberRecord {
            timeline: Some(1),
            ..leader.clone()
        };
        assert!(!diverged(&me, &same, t * 10, t));
        // Unknown timelines never trigger a rewind.
        let unknown = MemberRecord {
            timeline: None,
            ..me.clone()
        };
        assert!(!diverged(&unknown, &leader, t * 10, t));
        let primary = MemberRecord {
            role: Role::Primary,
            ..me
        };
        assert!(!diverged(&primary, &leader, t * 10, t));
    }

    #[test]
    fn restart_never_primary() {
        let other = LeaderRecord {
            node: "b".into(),
            host: "h".into(),
            port: 5432,
            state: LeaderState::Primary,
            since_ms: 1,
        };
        assert_eq!(on_restart(None, "a"), StartAs::Compete);
        assert_eq!(
            on_restart(Some(&other), "a"),
            StartAs::Standby {
                follow: Some(other.clone())
            }
        );
        // A promoting leader is followed too: it takes replication once promoted.
        let promoting = LeaderRecord {
            state: LeaderState::Promoting,
            ..other.clone()
        };
        assert_eq!(
            on_restart(Some(&promoting), "a"),
            StartAs::Standby {
                follow: Some(promoting.clone())
            }
        );
        // Our own record from before the restart: wait for it to expire.
        let mine = LeaderRecord {
            node: "a".into(),
            ..other
        };
        assert_eq!(
            on_restart(Some(&mine), "a"),
            StartAs::Standby { follow: None }
        );
    }
}
