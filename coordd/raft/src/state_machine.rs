//! openraft's `RaftStateMachine` over an [`Applier`]: tracks what openraft needs (last applied
//! log id, last membership, current snapshot) and hands the applier only indexes and bytes.
//!
//! Persistence: openraft allows a state machine that is not persisted on apply if every
//! snapshot is (storage/v2.rs:185-193); the state is then rebuilt from the last snapshot plus
//! the log. With a durable log ([`DiskLogStore`](crate::DiskLogStore)) every snapshot built or
//! installed is written through its [`SnapshotStore`] before openraft learns of it (so before
//! it purges the log the snapshot covers), and [`StateMachine::restore`] loads the newest one
//! into the applier before openraft reads the initial state. With
//! [`MemLogStore`](crate::MemLogStore) snapshots live in memory only.
//!
//! Memory: with a durable log the current snapshot's image is not kept in memory once saved
//! (it is a second copy of the whole state: ~1.6 MiB at 13 000 small nodes, ~120 MiB at a
//! million); `get_current_snapshot`, which only a follower's catch-up needs, reads it back.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use bytes::Bytes;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftLogId, StorageIOError};

use crate::applier::{Applier, EntryData, LogEntry, Membership};
use crate::log_store::{snapshot_read_err, snapshot_write_err, SnapshotStore};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// A built (or installed) snapshot: openraft's metadata plus the applier's image.
struct StoredSnapshot {
    meta: SnapshotMeta,
    image: Bytes,
}

/// Where the current snapshot's image is.
#[derive(Clone)]
enum Image {
    /// In the [`SnapshotStore`]'s file, saved before it was published.
    Saved,
    /// Only here (an in-memory log).
    Held(Bytes),
}

/// The snapshot `get_current_snapshot` answers with.
#[derive(Clone)]
struct CurrentSnapshot {
    meta: SnapshotMeta,
    image: Image,
}

/// Shared between the state machine and the snapshot builders it hands out: a build finishes
/// in another task and publishes here.
type Current = Arc<Mutex<Option<CurrentSnapshot>>>;

fn lock(c: &Current) -> MutexGuard<'_, Option<CurrentSnapshot>> {
    // Only plain assignments happen under the lock; a poisoned one is still consistent.
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Publishes `snap` unless a snapshot at least as new is already current: a build can finish
/// after a newer snapshot was installed (openraft#1130), and must not replace it. With a
/// `store` (which `snap` was saved to before) only the meta is kept.
fn publish(current: &Current, snap: StoredSnapshot, store: Option<&SnapshotStore>) {
    let snap = CurrentSnapshot {
        meta: snap.meta,
        image: match store {
            Some(_) => Image::Saved,
            None => Image::Held(snap.image),
        },
    };
    let mut g = lock(current);
    let newer = match g.as_ref() {
        None => true,
        Some(cur) => snap.meta.last_log_id > cur.meta.last_log_id,
    };
    if newer {
        *g = Some(snap);
    }
}

pub(crate) fn membership_view(m: &openraft::Membership<u64, openraft::BasicNode>) -> Membership {
    // voter_ids() is the union over a joint configuration, ascending (a BTreeSet underneath).
    let mut voters: Vec<u64> = m.voter_ids().collect();
    voters.dedup();
    Membership {
        voters,
        learners: m.learner_ids().collect(),
        addrs: m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
        joint: m.get_joint_config().len() > 1,
    }
}

fn storage_err(log_id: Option<LogId>, e: impl std::fmt::Display) -> StorageError {
    let source = AnyError::error(e.to_string());
    let io = match log_id {
        Some(id) => StorageIOError::apply(id, source),
        None => StorageIOError::write_state_machine(source),
    };
    StorageError::IO { source: io }
}

/// What the state machine knows, kept apart from the value openraft's worker owns so that it
/// outlives one RaftCore: a member restarted in-process ([`Member`](crate::Member) after a
/// recoverable stop) goes on from the applier's live state instead of rebuilding it.
pub(crate) struct SmState<A: Applier> {
    applier: A,
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Current,
    /// Makes snapshot ids unique within this member.
    builds: u64,
    /// Where snapshots are persisted; `None` for an in-memory log.
    store: Option<SnapshotStore>,
}

/// [`SmState`], shared by the state machine of every RaftCore this member runs (one at a time).
pub(crate) type SharedSm<A> = Arc<tokio::sync::Mutex<SmState<A>>>;

/// openraft's state machine of one RaftCore. Every call holds the state's lock for its whole
/// length, so an apply of a RaftCore that stopped finishes before the next one reads the state
/// (and the mutex makes the state `Sync`, as openraft wants, without asking it of the applier).
pub(crate) struct StateMachine<A: Applier> {
    state: SharedSm<A>,
    /// Dropped with this value, when openraft's state machine worker ends (it applies what it
    /// was sent before it sees its RaftCore gone): see [`StateMachine::successor`].
    _worker: Option<oneshot::Sender<()>>,
}

impl<A: Applier> StateMachine<A> {
    pub(crate) fn new(applier: A, store: Option<SnapshotStore>) -> Self {
        let state = SmState {
            applier,
            applied: None,
            membership: StoredMembership::default(),
            current: Current::default(),
            builds: 0,
            store,
        };
        Self {
            state: Arc::new(tokio::sync::Mutex::new(state)),
            _worker: None,
        }
    }

    /// The state, to hand to the state machine of a later RaftCore ([`StateMachine::successor`]).
    pub(crate) fn shared(&self) -> SharedSm<A> {
        self.state.clone()
    }

    /// A state machine over `state` for a new RaftCore, and a receiver that resolves once that
    /// state machine is dropped (its worker ended). A new RaftCore must not read the state
    /// before the previous worker ended: that worker may still apply entries its RaftCore sent
    /// it, and the new RaftCore would then apply them again.
    pub(crate) fn successor(state: SharedSm<A>) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                state,
                _worker: Some(tx),
            },
            rx,
        )
    }

    /// Loads the persisted snapshot, if any, into the applier. Must run before openraft reads
    /// the initial state (`Raft::new`): openraft re-applies the log from the applied log id on,
    /// and the entries the snapshot covers may be purged.
    pub(crate) async fn restore(&mut self) -> Result<(), StorageError> {
        let mut guard = self.state.lock().await;
        let st = &mut *guard;
        let Some((meta, image)) = st.store.as_ref().and_then(|s| s.take_recovered()) else {
            return Ok(());
        };
        let last_index = meta.last_log_id.map_or(0, |l| l.index);
        st.applier
            .install_image(last_index, image.clone())
            .await
            .map_err(|e| storage_err(meta.last_log_id, e))?;
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "state machine restored from its snapshot");
        // It came from the store's file.
        publish(
            &st.current,
            StoredSnapshot { meta, image },
            st.store.as_ref(),
        );
        Ok(())
    }
}

impl<A: Applier> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let st = self.state.lock().await;
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Bytes>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        let mut last = None;
        let mut membership = None;
        for e in entries {
            let log_id = *e.get_log_id();
            let data = match e.payload {
                EntryPayload::Normal(p) => EntryData::Payload(p),
                EntryPayload::Blank => EntryData::Blank,
                EntryPayload::Membership(m) => {
                    let view = membership_view(&m);
                    membership = Some(StoredMembership::new(Some(log_id), m));
                    EntryData::Membership(view)
                }
            };
            batch.push(LogEntry {
                index: log_id.index,
                term: log_id.leader_id.term,
                data,
            });
            last = Some(log_id);
        }
        let Some(last) = last else {
            return Ok(Vec::new());
        };
        let n = batch.len();
        let mut st = self.state.lock().await;
        let outputs = st
            .applier
            .apply(batch)
            .await
            .map_err(|e| storage_err(Some(last), e))?;
        if outputs.len() != n {
            return Err(storage_err(
                Some(last),
                format!(
                    "applier returned {} outputs for {} entries",
                    outputs.len(),
                    n
                ),
            ));
        }
        st.applied = Some(last);
        if let Some(m) = membership {
            st.membership = m;
        }
        Ok(outputs)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs in the state machine worker between two applies: the image taken here is
        // exactly the state at `applied`. The builder then only publishes it, in the task
        // openraft spawns for it.
        let mut st = self.state.lock().await;
        st.builds += 1;
        let prepared = match st.applier.snapshot_image().await {
            Ok(image) => {
                let snapshot_id = match st.applied {
                    Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, st.builds),
                    None => format!("none-{}", st.builds),
                };
                Ok(StoredSnapshot {
                    meta: SnapshotMeta {
                        last_log_id: st.applied,
                        last_membership: st.membership.clone(),
                        snapshot_id,
                    },
                    image,
                })
            }
            Err(e) => Err(storage_err(None, e)),
        };
        SnapshotBuilder {
            prepared: Some(prepared),
            current: st.current.clone(),
            store: st.store.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Bytes>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Bytes>,
    ) -> Result<(), StorageError> {
        let image = *snapshot;
        let last_index = meta.last_log_id.map_or(0, |l| l.index);
        let mut st = self.state.lock().await;
        st.applier
            .install_image(last_index, image.clone())
            .await
            .map_err(|e| storage_err(meta.last_log_id, e))?;
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        // Durable before openraft purges the log up to it.
        if let Some(store) = &st.store {
            store
                .save(meta, &image)
                .await
                .map_err(|e| snapshot_write_err(meta, e))?;
        }
        publish(
            &st.current,
            StoredSnapshot {
                meta: meta.clone(),
                image,
            },
            st.store.as_ref(),
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let (current, store) = {
            let st = self.state.lock().await;
            let current = lock(&st.current).clone();
            (current, st.store.clone())
        };
        let Some(current) = current else {
            return Ok(None);
        };
        match current.image {
            Image::Held(image) => Ok(Some(Snapshot {
                meta: current.meta,
                snapshot: Box::new(image),
            })),
            Image::Saved => {
                let err = |why: String| snapshot_read_err(&current.meta, why);
                let store = store.ok_or_else(|| err("a saved snapshot without a store".into()))?;
                let (meta, image) = store
                    .load()
                    .await
                    .map_err(|e| err(e.to_string()))?
                    .ok_or_else(|| err("the snapshot file is gone".into()))?;
                // The file holds the newest snapshot saved: the current one, or one a build or
                // install saved since (then about to be published). Both are consistent pairs
                // of meta and image.
                if meta.last_log_id < current.meta.last_log_id {
                    return Err(err(format!(
                        "the snapshot file holds an older snapshot ({:?})",
                        meta.last_log_id
                    )));
                }
                Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(image),
                }))
            }
        }
    }
}

/// Holds the image taken at [`RaftStateMachine::get_snapshot_builder`]; building publishes it.
pub(crate) struct SnapshotBuilder {
    prepared: Option<Result<StoredSnapshot, StorageError>>,
    current: Current,
    store: Option<SnapshotStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snap = match self.prepared.take() {
            Some(p) => p?,
            None => return Err(storage_err(None, "snapshot builder used twice")),
        };
        // Durable before openraft learns of it (and may purge the log it covers). The store
        // skips a snapshot older than the one on disk (an install that overtook this build).
        if let Some(store) = &self.store {
            store
                .save(&snap.meta, &snap.image)
                .await
                .map_err(|e| snapshot_write_err(&snap.meta, e))?;
        }
        let image = snap.image.clone();
        let meta = snap.meta.clone();
        publish(&self.current, snap, self.store.as_ref());
        // openraft keeps only the meta of this (core/sm/worker.rs); the image goes with it.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(image),
        })
    }
}
