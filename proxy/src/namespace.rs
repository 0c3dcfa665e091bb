//! The znode layout agents and routers share (DESIGN.md section 3).
//!
//! ```text
//! <root>/clusters/<cluster>/leader            ephemeral, LeaderRecord
//! <root>/clusters/<cluster>/members/<node>    ephemeral, MemberRecord
//! <root>/clusters/<cluster>/config            persistent, ClusterConfig
//! <root>/clusters/<cluster>/sync              persistent, SyncRecord
//! <root>/clusters/<cluster>/initialize        persistent, InitializeRecord
//! <root>/clusters/<cluster>/switchover        persistent, SwitchoverRequest
//! ```
//!
//! Invariant: every path a [`Namespace`] builds is a valid ZooKeeper path: the root is
//! checked by [`Namespace::new`] and cluster and node names by [`validate_name`], which
//! admits only names that are one safe path component.

use std::fmt;

/// The default root of all Switchyard znodes.
pub const ROOT_DEFAULT: &str = "/switchyard";

/// Longest cluster or node name, in bytes. 63 is PostgreSQL's identifier limit
/// (NAMEDATALEN - 1): node names end up as `application_name` in
/// `synchronous_standby_names` and in replication slot names, which are truncated
/// beyond it.
pub const NAME_BYTES_MAX: usize = 63;

/// Why a cluster or node name, or a root path, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct NameError {
    /// "cluster name", "node name" or "root path".
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Checks a cluster or node name: 1 to [`NAME_BYTES_MAX`] bytes of ASCII letters,
/// digits, `_`, `-` and `.`, starting with a letter or digit.
///
/// Stricter than ZooKeeper needs on purpose: the same name is a znode component, an
/// `application_name` that PostgreSQL compares in `synchronous_standby_names`, a
/// replication slot name (after lowercasing and mapping `-` and `.` to `_`) and a word
/// in logs and shell commands, and no character here needs quoting in any of them.
/// Starting with a letter or digit also rules out `.`, `..` and option-like `-x`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    let err = |reason| {
        Err(NameError {
            what,
            value: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return err("must not be empty");
    }
    if name.len() > NAME_BYTES_MAX {
        return err("longer than 63 bytes");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return err("must start with an ASCII letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return err("only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

/// Checks a cluster name (see [`validate_name`]).
pub fn validate_cluster_name(name: &str) -> Result<(), NameError> {
    validate_name("cluster name", name)
}

/// Checks a node name (see [`validate_name`]).
pub fn validate_node_name(name: &str) -> Result<(), NameError> {
    validate_name("node name", name)
}

/// The paths of one cluster under one root. Cheap to clone; build once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    root: String,
    cluster_name: String,
    /// `<root>/clusters/<cluster>`, kept because every other path starts with it.
    cluster_path: String,
}

impl Namespace {
    /// The namespace of `cluster` under `root` (an absolute ZooKeeper path, not ending
    /// in `/` unless it is `/` itself).
    pub fn new(root: &str, cluster: &str) -> Result<Self, NameError> {
        if let Err(e) = coordd_proto::path::validate_path(root, false) {
            return Err(NameError {
                what: "root path",
                value: root.to_owned(),
                reason: e.reason,
            });
        }
        validate_cluster_name(cluster)?;
        let clusters = coordd_proto::path::join(root, "clusters");
        let cluster_path = format!("{clusters}/{cluster}");
        Ok(Namespace {
            root: root.to_owned(),
            cluster_name: cluster.to_owned(),
            cluster_path,
        })
    }

    /// The namespace of `cluster` under [`ROOT_DEFAULT`].
    pub fn with_default_root(cluster: &str) -> Result<Self, NameError> {
        Self::new(ROOT_DEFAULT, cluster)
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }

    /// `<root>/clusters/<cluster>`: what the router watches recursively.
    pub fn cluster(&self) -> &str {
        &self.cluster_path
    }

    pub fn leader(&self) -> String {
        self.child("leader")
    }

    /// The parent of the member records.
    pub fn members(&self) -> String {
        self.child("members")
    }

    /// The member record of `node`. The name must have passed [`validate_node_name`];
    /// use [`Namespace::member_checked`] for names from outside.
    pub fn member(&self, node: &str) -> String {
        debug_assert!(
            validate_node_name(node).is_ok(),
            "unchecked node name {node:?}"
        );
        format!("{}/members/{node}", self.cluster_path)
    }

    /// The member record of `node`, checking the name first.
    pub fn member_checked(&self, node: &str) -> Result<String, NameError> {
        validate_node_name(node)?;
        Ok(self.member(node))
    }

    pub fn config(&self) -> String {
        self.child("config")
    }

    pub fn sync(&self) -> String {
        self.child("sync")
    }

    pub fn initialize(&self) -> String {
        self.child("initialize")
    }

    pub fn switchover(&self) -> String {
        self.child("switchover")
    }

    /// What a path under this cluster is, for dispatching watch events. `None` for
    /// paths outside the cluster or not in the layout.
    pub fn classify<'p>(&self, path: &'p str) -> Option<ClusterPath<'p>> {
        let rest = path.strip_prefix(self.cluster_path.as_str())?;
        if rest.is_empty() {
            return Some(ClusterPath::Cluster);
        }
        let rest = rest.strip_prefix('/')?;
        Some(match rest {
            "leader" => ClusterPath::Leader,
            "members" => ClusterPath::Members,
            "config" => ClusterPath::Config,
            "sync" => ClusterPath::Sync,
            "initialize" => ClusterPath::Initialize,
            "switchover" => ClusterPath::Switchover,
            _ => {
                let node = rest.strip_prefix("members/")?;
                if validate_node_name(node).is_err() {
                    return None;
                }
                ClusterPath::Member(node)
            }
        })
    }

    fn child(&self, name: &str) -> String {
        format!("{}/{name}", self.cluster_path)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cluster_path)
    }
}

/// A path of the layout, as [`Namespace::classify`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterPath<'p> {
    Cluster,
    Leader,
    Members,
    Member(&'p str),
    Config,
    Sync,
    Initialize,
    Switchover,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout() {
        let ns = Namespace::with_default_root("main").unwrap();
        assert_eq!(ns.root(), "/switchyard");
        assert_eq!(ns.cluster_name(), "main");
        assert_eq!(ns.cluster(), "/switchyard/clusters/main");
        assert_eq!(ns.leader(), "/switchyard/clusters/main/leader");
        assert_eq!(ns.members(), "/switchyard/clusters/main/members");
        assert_eq!(ns.member("pg-1"), "/switchyard/clusters/main/members/pg-1");
        assert_eq!(ns.config(), "/switchyard/clusters/main/config");
        assert_eq!(ns.sync(), "/switchyard/clusters/main/sync");
        assert_eq!(ns.initialize(), "/switchyard/clusters/main/initialize");
        assert_eq!(ns.switchover(), "/switchyard/clusters/main/switchover");
    }

    #[test]
    fn every_path_is_a_valid_znode_path() {
        for root in ["/", "/switchyard", "/a/b/c"] {
            let ns = Namespace::new(root, "c_1.x-y").unwrap();
            for p in [
                ns.cluster().to_owned(),
                ns.leader(),
                ns.members(),
                ns.member("n0"),
                ns.config(),
                ns.sync(),
                ns.initialize(),
                ns.switchover(),
            ] {
                coordd_proto::path::validate_path(&p, false).unwrap();
            }
        }
        assert_eq!(
            Namespace::new("/", "c").unwrap().leader(),
            "/clusters/c/leader"
        );
    }

    #[test]
    fn bad_roots_are_refused() {
        for root in ["", "switchyard", "/switchyard/", "/a//b", "/a/../b"] {
            let e = Namespace::new(root, "main").unwrap_err();
            assert_eq!(e.what, "root path", "{root:?}");
        }
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "main",
            "pg-1",
            "node_2",
            "db.eu-west",
            "0",
            &"x".repeat(63),
        ] {
            validate_node_name(ok).unwrap();
            validate_cluster_name(ok).unwrap();
        }
        let cases = [
            ("", "must not be empty"),
            (".", "must start with an ASCII letter or digit"),
            ("..", "must start with an ASCII letter or digit"),
            ("-rf", "must start with an ASCII letter or digit"),
            ("_x", "must start with an ASCII letter or digit"),
            (
                "a/b",
                "only ASCII letters, digits, '_', '-' and '.' are allowed",
            ),
            (
                "a b",
                "only ASCII letters, digits, '_', '-' and '.' are allowed",
            ),
            (
                "a'b",
                "only ASCII letters, digits, '_', '-' and '.' are allowed",
            ),
            (
                "né",
                "only ASCII letters, digits, '_', '-' and '.' are allowed",
            ),
            (
                "a\0",
                "only ASCII letters, digits, '_', '-' and '.' are allowed",
            ),
        ];
        for (name, reason) in cases {
            let e = validate_node_name(name).unwrap_err();
            assert_eq!(e.reason, reason, "{name:?}");
            assert_eq!(e.what, "node name");
        }
        let long = "x".repeat(64);
        assert_eq!(
            validate_cluster_name(&long).unwrap_err().to_string(),
            format!("invalid cluster name {long:?}: longer than 63 bytes")
        );
        assert!(Namespace::with_default_root("a/b").is_err());
        let ns = Namespace::with_default_root("main").unwrap();
        assert!(ns.member_checked("../leader").is_err());
        assert_eq!(
            ns.member_checked("n1").unwrap(),
            "/switchyard/clusters/main/members/n1"
        );
    }

    #[test]
    fn classify_paths() {
        let ns = Namespace::with_default_root("main").unwrap();
        assert_eq!(ns.classify(ns.cluster()), Some(ClusterPath::Cluster));
        assert_eq!(ns.classify(&ns.leader()), Some(ClusterPath::Leader));
        assert_eq!(ns.classify(&ns.members()), Some(ClusterPath::Members));
        assert_eq!(
            ns.classify(&ns.member("pg-2")),
            Some(ClusterPath::Member("pg-2"))
        );
        assert_eq!(ns.classify(&ns.config()), Some(ClusterPath::Config));
        assert_eq!(ns.classify(&ns.sync()), Some(ClusterPath::Sync));
        assert_eq!(ns.classify(&ns.initialize()), Some(ClusterPath::Initialize));
        assert_eq!(ns.classify(&ns.switchover()), Some(ClusterPath::Switchover));
        // A cluster whose name extends ours is not ours.
        assert_eq!(ns.classify("/switchyard/clusters/main2/leader"), None);
        assert_eq!(ns.classify("/switchyard/clusters/main/other"), None);
        assert_eq!(ns.classify("/switchyard/clusters/main/members/a/b"), None);
        assert_eq!(ns.classify("/elsewhere"), None);
    }
}
