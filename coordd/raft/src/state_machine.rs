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

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftLogId, StorageIOError};

use crate::applier::{Applier, EntryData, LogEntry, Membership};
use crate::log_store::{snapshot_write_err, SnapshotStore};
use crate::types::{
    Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// A built (or installed) snapshot: openraft's metadata plus the applier's image.
#[derive(Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    image: Bytes,
}

/// Shared between the state machine and the snapshot builders it hands out: a build finishes
/// in another task and publishes here.
type Current = Arc<Mutex<Option<StoredSnapshot>>>;

fn lock(c: &Current) -> MutexGuard<'_, Option<StoredSnapshot>> {
    // Only plain assignments happen under the lock; a poisoned one is still consistent.
    c.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Publishes `snap` unless a snapshot at least as new is already current: a build can finish
/// after a newer snapshot was installed (openraft#1130), and must not replace it.
fn publish(current: &Current, snap: StoredSnapshot) {
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

pub(crate) struct StateMachine<A: Applier> {
    /// openraft wants the state machine `Sync`; the mutex makes it so without asking `Sync` of
    /// the applier. It is never locked: every use goes through `get_mut` (`&mut self`).
    applier: tokio::sync::Mutex<A>,
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Current,
    /// Makes snapshot ids unique within this member.
    builds: u64,
    /// Where snapshots are persisted; `None` for an in-memory log.
    store: Option<SnapshotStore>,
}

impl<A: Applier> StateMachine<A> {
    pub(crate) fn new(applier: A, store: Option<SnapshotStore>) -> Self {
        Self {
            applier: tokio::sync::Mutex::new(applier),
            applied: None,
            membership: StoredMembership::default(),
            current: Current::default(),
            builds: 0,
            store,
        }
    }

    /// Loads the persisted snapshot, if any, into the applier. Must run before openraft reads
    /// the initial state (`Raft::new`): openraft re-applies the log from the applied log id on,
    /// and the entries the snapshot covers may be purged.
    pub(crate) async fn restore(&mut self) -> Result<(), StorageError> {
        let Some((meta, image)) = self.store.as_ref().and_then(|s| s.take_recovered()) else {
            return Ok(());
        };
        let last_index = meta.last_log_id.map_or(0, |l| l.index);
        self.applier
            .get_mut()
            .install_image(last_index, image.clone())
            .await
            .map_err(|e| storage_err(meta.last_log_id, e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "state machine restored from its snapshot");
        publish(&self.current, StoredSnapshot { meta, image });
        Ok(())
    }
}

impl<A: Applier> RaftStateMachine<TypeConfig> for StateMachine<A> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
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
        let outputs = self
            .applier
            .get_mut()
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
        self.applied = Some(last);
        if let Some(m) = membership {
            self.membership = m;
        }
        Ok(outputs)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Runs in the state machine worker between two applies: the image taken here is
        // exactly the state at `self.applied`. The builder then only publishes it, in the task
        // openraft spawns for it.
        self.builds += 1;
        let prepared = match self.applier.get_mut().snapshot_image().await {
            Ok(image) => {
                let snapshot_id = match self.applied {
                    Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.builds),
                    None => format!("none-{}", self.builds),
                };
                Ok(StoredSnapshot {
                    meta: SnapshotMeta {
                        last_log_id: self.applied,
                        last_membership: self.membership.clone(),
                        snapshot_id,
                    },
                    image,
                })
            }
            Err(e) => Err(storage_err(None, e)),
        };
        SnapshotBuilder {
            prepared: Some(prepared),
            current: self.current.clone(),
            store: self.store.clone(),
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
        self.applier
            .get_mut()
            .install_image(last_index, image.clone())
            .await
            .map_err(|e| storage_err(meta.last_log_id, e))?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        // Durable before openraft purges the log up to it.
        if let Some(store) = &self.store {
            store
                .save(meta, &image)
                .await
                .map_err(|e| snapshot_write_err(meta, e))?;
        }
        publish(
            &self.current,
            StoredSnapshot {
                meta: meta.clone(),
                image,
            },
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(lock(&self.current).as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(s.image.clone()),
        }))
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
        publish(&self.current, snap.clone());
        Ok(Snapshot {
            meta: snap.meta,
            snapshot: Box::new(snap.image),
        })
    }
}
