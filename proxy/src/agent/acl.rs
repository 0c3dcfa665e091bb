//! The ACLs of the znodes agents write (DESIGN.md 3). ZooKeeper checks DELETE on the
//! parent, so who may delete a znode is decided by its parent's ACL.

use coordd_client::Acl;
use coordd_proto::auth::digest_id;
use coordd_proto::perms;

/// A znode one agent process owns (`leader`, its member record): everyone reads it
/// (routers, other agents), only the creating process writes it: `digest` with the
/// process's own credentials, which include a per-process secret. (Not ZooKeeper's
/// `auth` scheme: that would grant every identity of the session, the cluster's shared
/// credentials included.)
pub fn owned(process_credentials: &str) -> Vec<Acl> {
    vec![
        Acl::new(perms::ALL, "digest", &digest_id(process_credentials)),
        Acl::new(perms::READ, "world", "anyone"),
    ]
}

/// A znode every agent of the cluster writes with `agent_perms` (`config`,
/// `initialize`, `sync`, `switchover`, the cluster node, `members`). With the cluster's
/// shared credentials (`coord_auth`) only they may, and everyone else may read; without
/// them, anyone may.
pub fn shared(coord_auth: Option<&str>, agent_perms: i32) -> Vec<Acl> {
    match coord_auth {
        Some(auth) => vec![
            Acl::new(agent_perms, "digest", &digest_id(auth)),
            Acl::new(perms::READ, "world", "anyone"),
        ],
        None => vec![Acl::new(agent_perms, "world", "anyone")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_is_the_process_digest_plus_world_read() {
        let acl = owned("n1:secret");
        assert_eq!(acl.len(), 2);
        assert_eq!(acl[0].scheme, "digest");
        assert_eq!(acl[0].id, digest_id("n1:secret"));
        assert_eq!(acl[0].perms, perms::ALL);
        assert_eq!(
            (acl[1].scheme.as_str(), acl[1].perms),
            ("world", perms::READ)
        );
    }

    #[test]
    fn shared_is_world_writable_only_without_credentials() {
        let rw = perms::READ | perms::WRITE;
        let open = shared(None, rw);
        assert_eq!(open.len(), 1);
        assert_eq!((open[0].scheme.as_str(), open[0].perms), ("world", rw));
        let closed = shared(Some("agents:pw"), rw);
        assert_eq!(closed[0].id, digest_id("agents:pw"));
        assert_eq!(closed[0].perms, rw);
        assert_eq!(
            (closed[1].scheme.as_str(), closed[1].perms),
            ("world", perms::READ)
        );
    }
}
