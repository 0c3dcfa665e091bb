//! Unit tests that need the crate's private types.

use bytes::Bytes;
use openraft::testing::{StoreBuilder, Suite};

use crate::applier::{Applier, ApplierError, LogEntry};
use crate::log_store::{DiskLogConfig, DiskLogStore, MemLogStore};
use crate::state_machine::StateMachine;
use crate::types::{StorageError, TypeConfig};

/// An applier that keeps the applied entries as its state; the image is their count.
#[derive(Default)]
struct CountingApplier {
    applied: u64,
}

impl Applier for CountingApplier {
    async fn apply(&mut self, entries: Vec<LogEntry>) -> Result<Vec<Bytes>, ApplierError> {
        self.applied += entries.len() as u64;
        Ok(entries.iter().map(|_| Bytes::new()).collect())
    }

    async fn snapshot_image(&mut self) -> Result<Bytes, ApplierError> {
        Ok(Bytes::from(self.applied.to_be_bytes().to_vec()))
    }

    async fn install_image(&mut self, _last_index: u64, image: Bytes) -> Result<(), ApplierError> {
        let b: [u8; 8] = image[..]
            .try_into()
            .map_err(|_| ApplierError(format!("bad image of {} bytes", image.len())))?;
        self.applied = u64::from_be_bytes(b);
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, MemLogStore, StateMachine<CountingApplier>> for Builder {
    async fn build(
        &self,
    ) -> Result<((), MemLogStore, StateMachine<CountingApplier>), StorageError> {
        Ok((
            (),
            MemLogStore::new(),
            StateMachine::new(CountingApplier::default(), None),
        ))
    }
}

/// openraft's own conformance suite for a log store + state machine pair (it makes its own
/// runtime, so this is a plain test).
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

/// A [`DiskLogStore`] in a fresh directory (the guard removes it), with the state machine
/// persisting its snapshots there as [`Member::start`](crate::Member::start) wires it.
struct DiskBuilder;

/// Test settings: no real fsync (the fault hook still sees every sync), small segments so
/// that rolling and segment removal happen.
pub(crate) fn disk_test_config() -> DiskLogConfig {
    DiskLogConfig {
        fsync: false,
        segment_bytes_max: 4 << 10,
        preallocate_bytes: 8 << 10,
        // A few entries: reads of older ones go to disk.
        log_cache_bytes_max: 256,
        ..DiskLogConfig::default()
    }
}

impl StoreBuilder<TypeConfig, DiskLogStore, StateMachine<CountingApplier>, tempfile::TempDir>
    for DiskBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            DiskLogStore,
            StateMachine<CountingApplier>,
        ),
        StorageError,
    > {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskLogStore::open(dir.path(), disk_test_config()).unwrap();
        let sm = StateMachine::new(CountingApplier::default(), Some(store.snapshot_handle()));
        Ok((dir, store, sm))
    }
}

#[test]
fn openraft_storage_suite_on_disk() {
    Suite::test_all(DiskBuilder).unwrap();
}

mod wire {
    use std::collections::{BTreeMap, BTreeSet};

    use bytes::Bytes;
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::{
        BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, StoredMembership, Vote,
    };

    use crate::network::{PeerRequest, PeerResponse, RequestBody, ResponseBody};
    use crate::types::{Entry, SnapshotMeta};
    use crate::RequestKind;

    fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn roundtrip_request(r: &PeerRequest) -> PeerRequest {
        let text = serde_json::to_string(r).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn roundtrip_response(r: &PeerResponse) -> PeerResponse {
        let text = serde_json::to_string(r).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every message kind survives a serde round trip (slice 3 frames them with a serde
    /// format; JSON here because it is the strictest about what it accepts).
    #[test]
    fn peer_messages_survive_serde() {
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|i| (i, BasicNode::new(format!("h{i}:2888"))))
            .collect();
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let mut vote = Vote::new(7, 2);
        vote.commit();
        let entries = vec![
            Entry {
                log_id: log_id(7, 2, 10),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(7, 2, 11),
                payload: EntryPayload::Normal(Bytes::from_static(b"\x00\xffbatch")),
            },
            Entry {
                log_id: log_id(7, 2, 12),
                payload: EntryPayload::Membership(membership.clone()),
            },
        ];
        let append = PeerRequest(RequestBody::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(6, 1, 9)),
            entries,
            leader_commit: Some(log_id(6, 1, 9)),
        }));
        let back = roundtrip_request(&append);
        assert_eq!(back.kind(), RequestKind::AppendEntries);
        assert_eq!(format!("{back:?}"), format!("{append:?}"));
        match (&back.0, &append.0) {
            (RequestBody::AppendEntries(a), RequestBody::AppendEntries(b)) => {
                assert_eq!(a.entries, b.entries)
            }
            _ => unreachable!(),
        }

        let vote_req = PeerRequest(RequestBody::Vote(VoteRequest::new(
            Vote::new(8, 3),
            Some(log_id(7, 2, 12)),
        )));
        assert_eq!(
            format!("{:?}", roundtrip_request(&vote_req)),
            format!("{vote_req:?}")
        );

        let meta = SnapshotMeta {
            last_log_id: Some(log_id(7, 2, 12)),
            last_membership: StoredMembership::new(Some(log_id(7, 2, 12)), membership),
            snapshot_id: "7-12-1".into(),
        };
        let snap = PeerRequest(RequestBody::Snapshot {
            vote,
            meta: meta.clone(),
            image: Bytes::from(vec![1, 2, 3]),
        });
        match roundtrip_request(&snap).0 {
            RequestBody::Snapshot {
                vote: v,
                meta: m,
                image,
            } => {
                assert_eq!((v, m, image), (vote, meta, Bytes::from(vec![1, 2, 3])));
            }
            _ => panic!("not a snapshot"),
        }

        for resp in [
            ResponseBody::AppendEntries(AppendEntriesResponse::Success),
            ResponseBody::AppendEntries(AppendEntriesResponse::PartialSuccess(Some(log_id(
                7, 2, 11,
            )))),
            ResponseBody::AppendEntries(AppendEntriesResponse::Conflict),
            ResponseBody::AppendEntries(AppendEntriesResponse::HigherVote(Vote::new(9, 1))),
            ResponseBody::Vote(VoteResponse::new(
                Vote::new(8, 3),
                Some(log_id(7, 2, 12)),
                true,
            )),
            ResponseBody::Snapshot(SnapshotResponse::new(vote)),
            ResponseBody::Refused("stopped".into()),
        ] {
            let r = PeerResponse(resp);
            assert_eq!(format!("{:?}", roundtrip_response(&r)), format!("{r:?}"));
        }
    }

    /// Garbage decodes to an error, never a panic.
    #[test]
    fn bad_peer_messages_are_errors() {
        for text in [
            "",
            "{}",
            "[1,2]",
            r#"{"AppendEntries":{"vote":3}}"#,
            r#"{"Snapshot":{"image":"x"}}"#,
        ] {
            assert!(serde_json::from_str::<PeerRequest>(text).is_err(), "{text}");
            assert!(
                serde_json::from_str::<PeerResponse>(text).is_err(),
                "{text}"
            );
        }
    }
}

mod snapshots {
    use bytes::Bytes;
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, LogId, StoredMembership};

    use super::{disk_test_config, CountingApplier};
    use crate::log_store::DiskLogStore;
    use crate::state_machine::StateMachine;
    use crate::types::{Entry, SnapshotMeta};

    /// The two ways a member wires its state machine: snapshots held in memory (an in-memory
    /// log), or saved to the disk log's directory and read back from there (a durable log).
    fn state_machines() -> Vec<(
        &'static str,
        Option<tempfile::TempDir>,
        StateMachine<CountingApplier>,
    )> {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskLogStore::open(dir.path(), disk_test_config()).unwrap();
        vec![
            (
                "memory",
                None,
                StateMachine::new(CountingApplier::default(), None),
            ),
            (
                "disk",
                Some(dir),
                StateMachine::new(CountingApplier::default(), Some(store.snapshot_handle())),
            ),
        ]
    }

    fn blank(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn count(image: &Bytes) -> u64 {
        u64::from_be_bytes(image[..].try_into().unwrap())
    }

    /// The image is taken when openraft asks for the builder, between two applies; entries
    /// applied while the build runs are not in it, and the meta says so.
    #[tokio::test]
    async fn snapshot_is_point_in_time() {
        for (kind, _dir, mut sm) in state_machines() {
            sm.apply((1..=5).map(blank).collect::<Vec<_>>())
                .await
                .unwrap();
            let mut builder = sm.get_snapshot_builder().await;
            sm.apply((6..=10).map(blank).collect::<Vec<_>>())
                .await
                .unwrap();
            let snap = builder.build_snapshot().await.unwrap();
            assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(5), "{kind}");
            assert_eq!(count(&snap.snapshot), 5, "{kind}");
            let current = sm.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta, snap.meta, "{kind}");
            assert_eq!(count(&current.snapshot), 5, "{kind}");
            // A builder is single use.
            assert!(builder.build_snapshot().await.is_err(), "{kind}");
        }
    }

    /// A build that finishes after a newer snapshot was installed does not replace it.
    #[tokio::test]
    async fn stale_build_does_not_replace_an_installed_snapshot() {
        for (kind, _dir, mut sm) in state_machines() {
            sm.apply((1..=5).map(blank).collect::<Vec<_>>())
                .await
                .unwrap();
            let mut builder = sm.get_snapshot_builder().await;

            let meta = SnapshotMeta {
                last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 3), 20)),
                last_membership: StoredMembership::default(),
                snapshot_id: "from-leader".into(),
            };
            let image = Bytes::from(20u64.to_be_bytes().to_vec());
            sm.install_snapshot(&meta, Box::new(image)).await.unwrap();
            assert_eq!(
                sm.applied_state().await.unwrap().0,
                meta.last_log_id,
                "{kind}"
            );

            builder.build_snapshot().await.unwrap();
            let current = sm.get_current_snapshot().await.unwrap().unwrap();
            assert_eq!(current.meta.snapshot_id, "from-leader", "{kind}");
            assert_eq!(count(&current.snapshot), 20, "{kind}");
        }
    }

    /// An image the applier cannot decode is an error, not a panic, and changes nothing.
    #[tokio::test]
    async fn bad_image_is_an_error() {
        let mut sm = StateMachine::new(CountingApplier::default(), None);
        sm.apply((1..=3).map(blank).collect::<Vec<_>>())
            .await
            .unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(2, 3), 20)),
            last_membership: StoredMembership::default(),
            snapshot_id: "bad".into(),
        };
        let res = sm
            .install_snapshot(&meta, Box::new(Bytes::from_static(b"xx")))
            .await;
        assert!(res.is_err());
        assert_eq!(
            sm.applied_state().await.unwrap().0.map(|l| l.index),
            Some(3)
        );
        assert!(sm.get_current_snapshot().await.unwrap().is_none());
    }
}
