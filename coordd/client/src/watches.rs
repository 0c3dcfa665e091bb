//! Client-side bookkeeping of the watches the server holds for this session.
//!
//! The server forgets a session's watches when the connection drops; the client
//! re-registers them with SetWatches2 after a reconnect, so it has to know which ones
//! are still armed. One-shot watches are disarmed when their event arrives; persistent
//! ones stay until `removeWatches`.
//!
//! Invariant: a path is in `data` / `exist` / `child` exactly while the server is
//! expected to hold that one-shot watch: added when the reply that armed it is
//! processed, removed when the event that fires it is processed. Frames are processed
//! in order, so an event can never be handled before the reply that armed its watch.

use std::collections::BTreeSet;

use bytes::BytesMut;
use coordd_proto::{AddWatchMode, EventType, Record, SetWatches2, WatcherType};

/// ZooKeeper's client splits SetWatches into packets of at most this many path bytes
/// (`ClientCnxn.SET_WATCHES_MAX_LENGTH`) so that a large watch set never exceeds the
/// server's frame limit.
pub const SET_WATCHES_PATH_BYTES_MAX: usize = 128 * 1024;

/// Picks one of SetWatches2's path lists.
type WatchListField = fn(&mut SetWatches2) -> &mut Vec<String>;

/// What a request arms on the server if it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WatchReg {
    /// `exists(watch)`: a data watch when the node exists, an exist watch on NoNode.
    Exists(String),
    /// `getData(watch)`.
    Data(String),
    /// `getChildren(watch)` / `getChildren2(watch)`.
    Child(String),
    /// `addWatch`.
    Persistent(String, AddWatchMode),
    /// `removeWatches`: on success the client forgets the matching registrations.
    Remove(String, WatcherType),
}

/// The watches this session has armed, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchRegistry {
    pub data: BTreeSet<String>,
    pub exist: BTreeSet<String>,
    pub child: BTreeSet<String>,
    pub persistent: BTreeSet<String>,
    pub persistent_recursive: BTreeSet<String>,
}

impl WatchRegistry {
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
            && self.exist.is_empty()
            && self.child.is_empty()
            && self.persistent.is_empty()
            && self.persistent_recursive.is_empty()
    }

    /// Records what a reply with error `err` (0 = Ok) armed. Returns the event types
    /// of watches removed client-side (for `removeWatches`), which the caller delivers.
    pub(crate) fn on_reply(
        &mut self,
        reg: &WatchReg,
        err: coordd_proto::ErrorCode,
    ) -> Vec<EventType> {
        use coordd_proto::ErrorCode as E;
        match (reg, err) {
            (WatchReg::Exists(p), E::Ok) | (WatchReg::Data(p), E::Ok) => {
                self.data.insert(p.clone());
            }
            // ZooKeeper arms an exist watch on a missing node and answers NoNode.
            (WatchReg::Exists(p), E::NoNode) => {
                self.exist.insert(p.clone());
            }
            (WatchReg::Child(p), E::Ok) => {
                self.child.insert(p.clone());
            }
            (WatchReg::Persistent(p, AddWatchMode::Persistent), E::Ok) => {
                self.persistent.insert(p.clone());
            }
            (WatchReg::Persistent(p, AddWatchMode::PersistentRecursive), E::Ok) => {
                self.persistent_recursive.insert(p.clone());
            }
            (WatchReg::Remove(p, t), E::Ok) => return self.remove(p, *t),
            _ => {}
        }
        Vec::new()
    }

    /// Disarms the one-shot watches an event fires (ZooKeeper's
    /// `ZKWatchManager.materialize`). Persistent watches stay.
    pub fn on_event(&mut self, event_type: EventType, path: &str) {
        match event_type {
            EventType::NodeCreated | EventType::NodeDataChanged => {
                self.data.remove(path);
                self.exist.remove(path);
            }
            EventType::NodeChildrenChanged => {
                self.child.remove(path);
            }
            EventType::NodeDeleted => {
                self.data.remove(path);
                self.exist.remove(path);
                self.child.remove(path);
            }
            EventType::None
            | EventType::DataWatchRemoved
            | EventType::ChildWatchRemoved
            | EventType::PersistentWatchRemoved => {}
        }
    }

    /// Forgets the watches `removeWatches(path, kind)` removed, as ZooKeeper's client
    /// does: Data takes data, exist and persistent watches; Children takes child and
    /// persistent watches; Any takes all. Returns one removal event type per kind that
    /// had a registration.
    pub fn remove(&mut self, path: &str, kind: WatcherType) -> Vec<EventType> {
        let mut removed = Vec::new();
        let data = matches!(kind, WatcherType::Data | WatcherType::Any);
        let child = matches!(kind, WatcherType::Children | WatcherType::Any);
        if data && (self.data.remove(path) | self.exist.remove(path)) {
            removed.push(EventType::DataWatchRemoved);
        }
        if child && self.child.remove(path) {
            removed.push(EventType::ChildWatchRemoved);
        }
        if self.persistent.remove(path) | self.persistent_recursive.remove(path) {
            removed.push(EventType::PersistentWatchRemoved);
        }
        removed
    }

    /// The SetWatches2 records that re-arm every registration, each holding at most
    /// `path_bytes_max` bytes of paths (at least one path per record).
    pub fn set_watches(&self, relative_zxid: i64, path_bytes_max: usize) -> Vec<SetWatches2> {
        let mut out = Vec::new();
        let mut cur = SetWatches2 {
            relative_zxid,
            ..Default::default()
        };
        let mut cur_bytes = 0usize;
        let kinds: [(&BTreeSet<String>, WatchListField); 5] = [
            (&self.data, |s| &mut s.data_watches),
            (&self.exist, |s| &mut s.exist_watches),
            (&self.child, |s| &mut s.child_watches),
            (&self.persistent, |s| &mut s.persistent_watches),
            (&self.persistent_recursive, |s| {
                &mut s.persistent_recursive_watches
            }),
        ];
        for (set, field) in kinds {
            for path in set {
                if cur_bytes > 0 && cur_bytes + path.len() > path_bytes_max {
                    out.push(std::mem::replace(
                        &mut cur,
                        SetWatches2 {
                            relative_zxid,
                            ..Default::default()
                        },
                    ));
                    cur_bytes = 0;
                }
                cur_bytes += path.len();
                field(&mut cur).push(path.clone());
            }
        }
        if cur_bytes > 0 {
            out.push(cur);
        }
        out
    }
}

/// Encoded size of a SetWatches2 record, for tests and logs.
pub fn set_watches_bytes(sw: &SetWatches2) -> usize {
    let mut b = BytesMut::new();
    sw.encode(&mut b);
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coordd_proto::ErrorCode;

    fn reg(r: &mut WatchRegistry, w: WatchReg, err: ErrorCode) -> Vec<EventType> {
        r.on_reply(&w, err)
    }

    #[test]
    fn one_shot_watches_armed_by_replies_and_disarmed_by_events() {
        let mut r = WatchRegistry::default();
        reg(
            &mut r,
            WatchReg::Exists("/missing".into()),
            ErrorCode::NoNode,
        );
        reg(&mut r, WatchReg::Exists("/there".into()), ErrorCode::Ok);
        reg(&mut r, WatchReg::Data("/d".into()), ErrorCode::Ok);
        reg(&mut r, WatchReg::Data("/failed".into()), ErrorCode::NoNode);
        reg(&mut r, WatchReg::Child("/c".into()), ErrorCode::Ok);
        reg(
            &mut r,
            WatchReg::Exists("/denied".into()),
            ErrorCode::NoAuth,
        );
        assert_eq!(r.exist.iter().collect::<Vec<_>>(), ["/missing"]);
        assert_eq!(r.data.iter().collect::<Vec<_>>(), ["/d", "/there"]);
        assert_eq!(r.child.iter().collect::<Vec<_>>(), ["/c"]);

        r.on_event(EventType::NodeCreated, "/missing");
        assert!(r.exist.is_empty());
        r.on_event(EventType::NodeChildrenChanged, "/d");
        assert!(
            r.data.contains("/d"),
            "a child event does not fire a data watch"
        );
        r.on_event(EventType::NodeDataChanged, "/d");
        assert!(!r.data.contains("/d"));
        r.on_event(EventType::NodeDeleted, "/c");
        assert!(r.child.is_empty());
        r.on_event(EventType::NodeDeleted, "/there");
        assert!(r.is_empty());
    }

    #[test]
    fn persistent_watches_survive_events_until_removed() {
        let mut r = WatchRegistry::default();
        reg(
            &mut r,
            WatchReg::Persistent("/p".into(), AddWatchMode::Persistent),
            ErrorCode::Ok,
        );
        reg(
            &mut r,
            WatchReg::Persistent("/r".into(), AddWatchMode::PersistentRecursive),
            ErrorCode::Ok,
        );
        reg(&mut r, WatchReg::Data("/p".into()), ErrorCode::Ok);
        for t in [
            EventType::NodeCreated,
            EventType::NodeDataChanged,
            EventType::NodeChildrenChanged,
            EventType::NodeDeleted,
        ] {
            r.on_event(t, "/p");
            r.on_event(t, "/r");
        }
        assert!(r.persistent.contains("/p") && r.persistent_recursive.contains("/r"));
        assert!(r.data.is_empty());

        let removed = reg(
            &mut r,
            WatchReg::Remove("/r".into(), WatcherType::Any),
            ErrorCode::Ok,
        );
        assert_eq!(removed, [EventType::PersistentWatchRemoved]);
        // A failed removeWatches leaves the registration alone.
        reg(
            &mut r,
            WatchReg::Remove("/p".into(), WatcherType::Any),
            ErrorCode::NoWatcher,
        );
        assert!(r.persistent.contains("/p"));
    }

    #[test]
    fn remove_by_kind() {
        let mut r = WatchRegistry::default();
        r.data.insert("/a".into());
        r.child.insert("/a".into());
        assert_eq!(
            r.remove("/a", WatcherType::Children),
            [EventType::ChildWatchRemoved]
        );
        assert!(r.data.contains("/a"));
        assert_eq!(
            r.remove("/a", WatcherType::Data),
            [EventType::DataWatchRemoved]
        );
        assert!(r.remove("/a", WatcherType::Any).is_empty());
    }

    #[test]
    fn set_watches_batches_every_kind_and_splits_large_sets() {
        let mut r = WatchRegistry::default();
        assert!(r.set_watches(5, 100).is_empty());
        r.data.insert("/d".into());
        r.exist.insert("/e".into());
        r.child.insert("/c".into());
        r.persistent.insert("/p".into());
        r.persistent_recursive.insert("/r".into());
        let one = r.set_watches(5, SET_WATCHES_PATH_BYTES_MAX);
        assert_eq!(
            one,
            [SetWatches2 {
                relative_zxid: 5,
                data_watches: vec!["/d".into()],
                exist_watches: vec!["/e".into()],
                child_watches: vec!["/c".into()],
                persistent_watches: vec!["/p".into()],
                persistent_recursive_watches: vec!["/r".into()],
            }]
        );

        let mut big = WatchRegistry::default();
        for i in 0..1000 {
            big.data.insert(format!("/node/{i:06}"));
        }
        let batches = big.set_watches(1, 1000);
        assert!(batches.len() > 1);
        let total: usize = batches.iter().map(|b| b.data_watches.len()).sum();
        assert_eq!(total, 1000);
        for b in &batches {
            let bytes: usize = b.data_watches.iter().map(|p| p.len()).sum();
            assert!(bytes <= 1000);
            assert!(set_watches_bytes(b) < 1000 + 4 * 200);
        }
    }
}
