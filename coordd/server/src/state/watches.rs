//! Watch registrations: one-shot data / exist / child watches, persistent and
//! persistent-recursive watches, keyed by session.
//!
//! This mirrors ZooKeeper 3.8's server side: two [`WatchManager`]s (data watches, which
//! include exist watches, and child watches), each a table path -> watchers where every
//! (session, path) pair has exactly one [`WatchMode`]. As in ZooKeeper's
//! `WatcherModeManager`, registering again overwrites the mode: a one-shot watch set on a
//! path that has a persistent watch of the same session turns it back into a one-shot
//! one. `addWatch` registers in both managers.
//!
//! Invariant: `table` and `by_session` describe the same set of (path, session) pairs,
//! and `recursive` counts the pairs whose mode is `PersistentRecursive`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use coordd_proto::{EventType, Id};

use super::SessionId;

/// How a watch behaves when it fires (`WatcherMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// Fires once, for the path itself, then is gone.
    Standard,
    /// Fires for the path itself, every time.
    Persistent,
    /// Fires for the path and every descendant, every time, except child-list changes.
    PersistentRecursive,
}

impl WatchMode {
    fn is_persistent(self) -> bool {
        self != WatchMode::Standard
    }

    fn is_recursive(self) -> bool {
        self == WatchMode::PersistentRecursive
    }
}

/// One table of watches (ZooKeeper's `WatchManager`).
#[derive(Debug, Default)]
pub struct WatchManager {
    table: HashMap<String, BTreeMap<SessionId, WatchMode>>,
    by_session: HashMap<SessionId, HashSet<String>>,
    recursive: usize,
}

/// The paths whose watches can fire for an event on `path`: the path, then (only if any
/// recursive watch exists) each ancestor up to "/" (`PathParentIterator`).
fn path_and_parents(path: &str, with_parents: bool) -> impl Iterator<Item = (&str, bool)> {
    let mut next = Some(path).filter(|p| !p.is_empty());
    let mut first = true;
    std::iter::from_fn(move || {
        let cur = next?;
        let at_parent = !first;
        first = false;
        next = if !with_parents || cur == "/" {
            None
        } else {
            match cur.rfind('/') {
                Some(0) => Some("/"),
                Some(i) => Some(&cur[..i]),
                None => None,
            }
        };
        Some((cur, at_parent))
    })
}

impl WatchManager {
    /// Registers (or re-registers, overwriting the mode) `session`'s watch on `path`.
    pub fn add(&mut self, path: &str, session: SessionId, mode: WatchMode) {
        let watchers = self.table.entry(path.to_owned()).or_default();
        let old = watchers.insert(session, mode);
        if old.is_some_and(WatchMode::is_recursive) {
            self.recursive -= 1;
        }
        if mode.is_recursive() {
            self.recursive += 1;
        }
        self.by_session
            .entry(session)
            .or_default()
            .insert(path.to_owned());
    }

    /// Removes `session`'s watch on `path`; false when it had none.
    pub fn remove(&mut self, path: &str, session: SessionId) -> bool {
        let Some(paths) = self.by_session.get_mut(&session) else {
            return false;
        };
        if !paths.remove(path) {
            return false;
        }
        if paths.is_empty() {
            self.by_session.remove(&session);
        }
        let Some(watchers) = self.table.get_mut(path) else {
            debug_assert!(false, "by_session and table disagree on {path}");
            return false;
        };
        let old = watchers.remove(&session);
        debug_assert!(old.is_some(), "by_session and table disagree on {path}");
        if old.is_some_and(WatchMode::is_recursive) {
            self.recursive -= 1;
        }
        if watchers.is_empty() {
            self.table.remove(path);
        }
        old.is_some()
    }

    /// Drops every watch of `session`.
    pub fn remove_session(&mut self, session: SessionId) {
        let Some(paths) = self.by_session.remove(&session) else {
            return;
        };
        for p in paths {
            if let Some(watchers) = self.table.get_mut(&p) {
                if watchers
                    .remove(&session)
                    .is_some_and(WatchMode::is_recursive)
                {
                    self.recursive -= 1;
                }
                if watchers.is_empty() {
                    self.table.remove(&p);
                }
            }
        }
    }

    /// ZooKeeper 3.8's `WatchManager.containsWatcher`, quirk included: true when *any*
    /// session watches exactly `path` (the leaf check ignores who the watcher is), or
    /// when `session`'s own watch on `path` is recursive.
    pub fn contains(&self, path: &str, session: SessionId) -> bool {
        let own_recursive = self
            .table
            .get(path)
            .and_then(|w| w.get(&session))
            .is_some_and(|m| m.is_recursive());
        self.table.contains_key(path) || own_recursive
    }

    /// The mode of `session`'s watch on `path`, if any.
    pub fn mode(&self, path: &str, session: SessionId) -> Option<WatchMode> {
        self.table.get(path).and_then(|w| w.get(&session)).copied()
    }

    /// `WatchManager.triggerWatch`: the sessions to notify of `event` on `path`, each
    /// once, in session-id order. One-shot watches that match are consumed; recursive
    /// watches on the path or an ancestor match anything but NodeChildrenChanged;
    /// other watches match only on the path itself.
    pub fn trigger(&mut self, path: &str, event: EventType) -> BTreeSet<SessionId> {
        let mut out = BTreeSet::new();
        let with_parents = self.recursive > 0;
        for (local, at_parent) in path_and_parents(path, with_parents) {
            let Some(watchers) = self.table.get_mut(local) else {
                continue;
            };
            let mut consumed = Vec::new();
            for (&session, &mode) in watchers.iter() {
                if mode.is_recursive() {
                    if event != EventType::NodeChildrenChanged {
                        out.insert(session);
                    }
                } else if !at_parent {
                    out.insert(session);
                    if !mode.is_persistent() {
                        consumed.push(session);
                    }
                }
            }
            for session in consumed {
                watchers.remove(&session);
                if let Some(paths) = self.by_session.get_mut(&session) {
                    paths.remove(local);
                    if paths.is_empty() {
                        self.by_session.remove(&session);
                    }
                }
            }
            if watchers.is_empty() {
                self.table.remove(local);
            }
        }
        out
    }

    /// Whether `session` has a watch on `path` in this table (of any mode).
    pub fn has(&self, path: &str, session: SessionId) -> bool {
        self.by_session
            .get(&session)
            .is_some_and(|paths| paths.contains(path))
    }

    /// Number of `session`'s registrations in this table.
    pub fn session_size(&self, session: SessionId) -> usize {
        self.by_session.get(&session).map_or(0, HashSet::len)
    }

    /// Number of (path, session) registrations.
    pub fn size(&self) -> usize {
        self.by_session.values().map(HashSet::len).sum()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.table.keys().map(String::as_str)
    }

    pub fn has_path(&self, path: &str) -> bool {
        self.table.contains_key(path)
    }

    #[cfg(test)]
    pub fn check_invariants(&self) {
        let mut pairs = 0;
        let mut rec = 0;
        for (p, w) in &self.table {
            assert!(!w.is_empty(), "empty watcher set at {p}");
            for (s, m) in w {
                pairs += 1;
                rec += m.is_recursive() as usize;
                assert!(self.by_session[s].contains(p));
            }
        }
        assert_eq!(pairs, self.size());
        assert_eq!(rec, self.recursive);
    }
}

/// All of this server's watches, plus the identities each watching session's
/// connection has, which decide whether an event may be delivered (ZooKeeper checks
/// READ on the node before sending an event, `NIOServerCnxn.process`).
#[derive(Debug, Default)]
pub struct Watches {
    pub data: WatchManager,
    pub child: WatchManager,
    pub auth: HashMap<SessionId, Vec<Id>>,
}

impl Watches {
    pub fn remove_session(&mut self, session: SessionId) {
        self.data.remove_session(session);
        self.child.remove_session(session);
        self.auth.remove(&session);
    }

    /// Remembers the identities of `session`'s connection, replacing older ones.
    pub fn set_auth(&mut self, session: SessionId, auth: &[Id]) {
        match self.auth.get_mut(&session) {
            Some(cur) if cur.as_slice() == auth => {}
            Some(cur) => *cur = auth.to_vec(),
            None => {
                self.auth.insert(session, auth.to_vec());
            }
        }
    }

    pub fn auth_of(&self, session: SessionId) -> &[Id] {
        self.auth.get(&session).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn count(&self) -> usize {
        self.data.size() + self.child.size()
    }

    /// `session`'s registrations in both tables: what `watches_per_session_max` bounds.
    /// A data or exist watch is one, a child watch one, an addWatch (persistent or
    /// recursive) two, since it sits in both tables (as in `zk_watch_count`).
    pub fn session_count(&self, session: SessionId) -> usize {
        self.data.session_size(session) + self.child.session_size(session)
    }

    pub fn watched_paths(&self) -> usize {
        self.data.paths().count()
            + self
                .child
                .paths()
                .filter(|p| !self.data.has_path(p))
                .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_iteration() {
        let v: Vec<_> = path_and_parents("/a/b/c", true).collect();
        assert_eq!(
            v,
            vec![("/a/b/c", false), ("/a/b", true), ("/a", true), ("/", true)]
        );
        let v: Vec<_> = path_and_parents("/a/b", false).collect();
        assert_eq!(v, vec![("/a/b", false)]);
        let v: Vec<_> = path_and_parents("/", true).collect();
        assert_eq!(v, vec![("/", false)]);
        assert_eq!(path_and_parents("", true).count(), 0);
    }

    #[test]
    fn one_shot_persistent_recursive() {
        let mut m = WatchManager::default();
        m.add("/a", 1, WatchMode::Standard);
        m.add("/a", 2, WatchMode::Persistent);
        m.add("/", 3, WatchMode::PersistentRecursive);
        m.check_invariants();
        let s = m.trigger("/a", EventType::NodeDataChanged);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        m.check_invariants();
        let s = m.trigger("/a", EventType::NodeDataChanged);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![2, 3]);
        // Recursive watches ignore child-list changes, even on their own path.
        let s = m.trigger("/", EventType::NodeChildrenChanged);
        assert!(s.is_empty());
        // Non-recursive watches do not fire for descendants.
        let s = m.trigger("/a/b", EventType::NodeCreated);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![3]);
        m.check_invariants();
    }

    #[test]
    fn mode_overwrite_and_removal() {
        let mut m = WatchManager::default();
        m.add("/a", 1, WatchMode::PersistentRecursive);
        m.add("/a", 1, WatchMode::Standard);
        assert_eq!(m.mode("/a", 1), Some(WatchMode::Standard));
        assert_eq!(m.recursive, 0);
        assert!(
            m.contains("/a", 2),
            "ZooKeeper's leaf check ignores the session"
        );
        assert!(!m.remove("/a", 2));
        assert!(m.remove("/a", 1));
        assert!(!m.contains("/a", 1));
        m.add("/x", 5, WatchMode::Persistent);
        m.add("/y", 5, WatchMode::PersistentRecursive);
        m.remove_session(5);
        assert_eq!(m.size(), 0);
        m.check_invariants();
    }
}
