//! ACL validation and checks: schemes world, auth, digest, ip; the superuser; and the
//! interned ACL table nodes point into.
//!
//! The rules are ZooKeeper 3.8's: `PrepRequestProcessor.fixupACL` for what a create or
//! setACL may store, `ZooKeeperServer.checkACL` for what an identity may do, and the
//! `DigestAuthenticationProvider` / `IPAuthenticationProvider` `isValid` / `matches`.
//!
//! Invariant: every [`AclId`] held by a node is live in the [`AclTable`] with a
//! reference count equal to the number of nodes holding it; identical lists share one
//! entry (ZooKeeper's `ReferenceCountedACLCache`), so a million nodes with the default
//! ACL cost one list.

use std::collections::HashMap;
use std::sync::Arc;

use coordd_proto::{perms, Acl, ErrorCode, Id};

/// Index of an interned ACL list.
pub type AclId = u32;

#[derive(Debug)]
struct AclEntry {
    acl: Arc<[Acl]>,
    refs: u32,
}

/// Reference-counted, interned ACL lists.
#[derive(Debug, Default)]
pub struct AclTable {
    entries: Vec<Option<AclEntry>>,
    by_list: HashMap<Arc<[Acl]>, AclId>,
    free: Vec<AclId>,
}

impl AclTable {
    /// Every interned list by id (for a snapshot view).
    pub fn lists(&self) -> HashMap<AclId, Arc<[Acl]>> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(id, e)| Some((id as AclId, e.as_ref()?.acl.clone())))
            .collect()
    }

    /// Adds one reference to `acl`, interning it if new.
    pub fn intern(&mut self, acl: &[Acl]) -> AclId {
        if let Some(&id) = self.by_list.get(acl) {
            if let Some(Some(e)) = self.entries.get_mut(id as usize) {
                e.refs += 1;
                return id;
            }
            debug_assert!(false, "ACL index points at a free slot");
        }
        let list: Arc<[Acl]> = Arc::from(acl);
        let entry = AclEntry {
            acl: list.clone(),
            refs: 1,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as AclId
            }
        };
        self.by_list.insert(list, id);
        id
    }

    /// Adds one reference to a live id.
    pub fn retain(&mut self, id: AclId) {
        match self.entries.get_mut(id as usize) {
            Some(Some(e)) => e.refs += 1,
            _ => debug_assert!(false, "retain of dead ACL id {id}"),
        }
    }

    /// Drops one reference; the list is forgotten with its last reference.
    pub fn release(&mut self, id: AclId) {
        let slot = self.entries.get_mut(id as usize);
        let Some(slot) = slot else {
            debug_assert!(false, "release of unknown ACL id {id}");
            return;
        };
        let Some(entry) = slot else {
            debug_assert!(false, "release of freed ACL id {id}");
            return;
        };
        entry.refs -= 1;
        if entry.refs == 0 {
            self.by_list.remove(&entry.acl[..]);
            *slot = None;
            self.free.push(id);
        }
    }

    /// The list behind a live id.
    pub fn get(&self, id: AclId) -> &Arc<[Acl]> {
        match self.entries.get(id as usize) {
            Some(Some(e)) => &e.acl,
            _ => panic!("ACL id {id} is not live: the table invariant is broken"),
        }
    }

    /// Number of distinct live lists.
    pub fn len(&self) -> usize {
        self.by_list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_list.is_empty()
    }

    #[cfg(test)]
    pub fn refs(&self, id: AclId) -> u32 {
        match self.entries.get(id as usize) {
            Some(Some(e)) => e.refs,
            _ => 0,
        }
    }
}

/// Java's `String.split(regex)` with limit 0: trailing empty strings are dropped.
fn java_split_count(s: &str, sep: char) -> usize {
    let mut parts: Vec<&str> = s.split(sep).collect();
    while parts.len() > 1 && parts.last() == Some(&"") {
        parts.pop();
    }
    if parts.len() == 1 && parts[0].is_empty() && s.contains(sep) {
        // Java returns an empty array when every part is empty (e.g. "::").
        return 0;
    }
    parts.len()
}

/// `DigestAuthenticationProvider.isValid`: `user:hash` with exactly two parts.
pub fn digest_id_valid(id: &str) -> bool {
    java_split_count(id, ':') == 2
}

/// `IPAuthenticationProvider.v4addr2Bytes`: four decimal parts 0..=255. ZooKeeper 3.8
/// knows no IPv6 here, so neither do we.
fn ipv4_bytes(addr: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut n = 0;
    for part in addr.split('.') {
        if n == 4 {
            return None;
        }
        let v: i32 = part.parse().ok()?;
        if !(0..=255).contains(&v) {
            return None;
        }
        out[n] = v as u8;
        n += 1;
    }
    (n == 4).then_some(out)
}

/// An ACL expression `addr` or `addr/bits`, as the address and prefix length.
fn ip_expr(expr: &str) -> Option<([u8; 4], u32)> {
    let mut parts = expr.splitn(2, '/');
    let addr = ipv4_bytes(parts.next()?)?;
    let bits = match parts.next() {
        None => 32,
        Some(b) => {
            let b: i32 = b.parse().ok()?;
            if !(0..=32).contains(&b) {
                return None;
            }
            b as u32
        }
    };
    Some((addr, bits))
}

/// `IPAuthenticationProvider.isValid`.
pub fn ip_id_valid(id: &str) -> bool {
    ip_expr(id).is_some()
}

/// `IPAuthenticationProvider.matches`: the client address `id` lies in `expr`.
pub fn ip_matches(id: &str, expr: &str) -> bool {
    let (Some((net, bits)), Some(addr)) = (ip_expr(expr), ipv4_bytes(id)) else {
        return false;
    };
    let mask: u32 = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    u32::from_be_bytes(net) & mask == u32::from_be_bytes(addr) & mask
}

/// True when `auth` holds the superuser: ZooKeeper's `("super", "")` identity, which
/// its digest provider adds on the super password, or a digest identity equal to the
/// configured superuser digest (in case the connection layer adds only the digest).
pub fn is_superuser(auth: &[Id], superuser_digest: Option<&str>) -> bool {
    auth.iter().any(|id| {
        id.scheme == "super" || (id.scheme == "digest" && Some(id.id.as_str()) == superuser_digest)
    })
}

/// `ZooKeeperServer.checkACL`: may `auth` do any of `perm` on a node with `acl`?
pub fn check(acl: &[Acl], perm: i32, auth: &[Id], superuser_digest: Option<&str>) -> bool {
    if acl.is_empty() || is_superuser(auth, superuser_digest) {
        return true;
    }
    acl.iter().any(|a| {
        if a.perms & perm == 0 {
            return false;
        }
        if a.scheme == "world" && a.id == "anyone" {
            return true;
        }
        match a.scheme.as_str() {
            "digest" => auth.iter().any(|id| id.scheme == "digest" && id.id == a.id),
            "ip" => auth
                .iter()
                .any(|id| id.scheme == "ip" && ip_matches(&id.id, &a.id)),
            // No provider for any other scheme: it never matches, as in ZooKeeper.
            _ => false,
        }
    })
}

/// [`check`] as a result.
pub fn require(
    acl: &[Acl],
    perm: i32,
    auth: &[Id],
    superuser_digest: Option<&str>,
) -> Result<(), ErrorCode> {
    if check(acl, perm, auth, superuser_digest) {
        Ok(())
    } else {
        Err(ErrorCode::NoAuth)
    }
}

/// Whether identities of `scheme` count as authenticated for the "auth" ACL scheme
/// (`AuthenticationProvider.isAuthenticated`): digest yes, ip no, and "super" has no
/// provider at all.
fn scheme_is_authenticated(scheme: &str) -> bool {
    scheme == "digest"
}

/// `PrepRequestProcessor.fixupACL`: drops duplicates, rejects an empty list, unknown
/// schemes and malformed ids, and expands the "auth" scheme into one entry per
/// authenticated identity of the requester.
pub fn fixup(acls: &[Acl], auth: &[Id]) -> Result<Vec<Acl>, ErrorCode> {
    let mut uniq: Vec<&Acl> = Vec::with_capacity(acls.len());
    for a in acls {
        if !uniq.contains(&a) {
            uniq.push(a);
        }
    }
    if uniq.is_empty() {
        return Err(ErrorCode::InvalidAcl);
    }
    let mut out = Vec::with_capacity(uniq.len());
    for a in uniq {
        if a.scheme == "world" && a.id == "anyone" {
            out.push(a.clone());
        } else if a.scheme == "auth" {
            let mut any = false;
            for id in auth.iter().filter(|id| scheme_is_authenticated(&id.scheme)) {
                any = true;
                out.push(Acl::new(a.perms, &id.scheme, &id.id));
            }
            if !any {
                return Err(ErrorCode::InvalidAcl);
            }
        } else {
            let valid = match a.scheme.as_str() {
                "digest" => digest_id_valid(&a.id),
                "ip" => ip_id_valid(&a.id),
                _ => false,
            };
            if !valid {
                return Err(ErrorCode::InvalidAcl);
            }
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// What getACL shows a caller without ADMIN: digest hashes replaced by "x"
/// (`id.replaceAll(":.*", ":x")`).
pub fn redact(acl: &[Acl]) -> Vec<Acl> {
    acl.iter()
        .map(|a| {
            if a.scheme == "digest" {
                let id = match a.id.find(':') {
                    Some(i) => format!("{}:x", &a.id[..i]),
                    None => a.id.clone(),
                };
                Acl {
                    perms: a.perms,
                    scheme: a.scheme.clone(),
                    id,
                }
            } else {
                a.clone()
            }
        })
        .collect()
}

/// `AuthUtil.getClientInfos`: (scheme, user name) for each identity.
pub fn client_infos(auth: &[Id]) -> Vec<coordd_proto::ClientInfo> {
    auth.iter()
        .map(|id| coordd_proto::ClientInfo {
            auth_scheme: id.scheme.clone(),
            user: match id.scheme.as_str() {
                "digest" => id.id.split(':').next().unwrap_or("").to_owned(),
                "super" => String::new(),
                _ => id.id.clone(),
            },
        })
        .collect()
}

/// All permissions; re-exported for tests and callers.
pub const ALL: i32 = perms::ALL;

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str, i: &str) -> Id {
        Id {
            scheme: s.into(),
            id: i.into(),
        }
    }

    #[test]
    fn digest_validity_follows_java_split() {
        assert!(digest_id_valid("u:h"));
        assert!(digest_id_valid(":h"));
        assert!(digest_id_valid("u:h:"));
        assert!(!digest_id_valid("u:"));
        assert!(!digest_id_valid("u"));
        assert!(!digest_id_valid("u:h:x"));
        assert!(!digest_id_valid("::"));
        assert!(!digest_id_valid(""));
    }

    #[test]
    fn ip_rules() {
        assert!(ip_id_valid("10.0.0.1"));
        assert!(ip_id_valid("10.0.0.0/8"));
        assert!(ip_id_valid("0.0.0.0/0"));
        assert!(!ip_id_valid("10.0.0.0/33"));
        assert!(!ip_id_valid("10.0.0"));
        assert!(!ip_id_valid("10.0.0.256"));
        assert!(!ip_id_valid("::1"));
        assert!(!ip_id_valid("10.0.0.1/"));
        assert!(ip_matches("10.1.2.3", "10.0.0.0/8"));
        assert!(!ip_matches("11.1.2.3", "10.0.0.0/8"));
        assert!(ip_matches("11.1.2.3", "0.0.0.0/0"));
        assert!(ip_matches("127.0.0.1", "127.0.0.1"));
        assert!(!ip_matches("127.0.0.2", "127.0.0.1"));
        assert!(ip_matches("192.168.1.77", "192.168.1.64/26"));
        assert!(!ip_matches("192.168.1.128", "192.168.1.64/26"));
    }

    #[test]
    fn fixup_rules() {
        let auth = vec![id("ip", "127.0.0.1"), id("digest", "u:h")];
        assert_eq!(fixup(&[], &auth), Err(ErrorCode::InvalidAcl));
        assert_eq!(
            fixup(&[Acl::new(ALL, "world", "someone")], &auth),
            Err(ErrorCode::InvalidAcl)
        );
        assert_eq!(
            fixup(&[Acl::new(ALL, "nope", "x")], &auth),
            Err(ErrorCode::InvalidAcl)
        );
        assert_eq!(
            fixup(&[Acl::new(ALL, "digest", "nocolon")], &auth),
            Err(ErrorCode::InvalidAcl)
        );
        assert_eq!(
            fixup(&[Acl::new(ALL, "ip", "1.2.3")], &auth),
            Err(ErrorCode::InvalidAcl)
        );
        // Duplicates collapse, order stays.
        let two = [
            Acl::new(1, "ip", "1.2.3.4"),
            Acl::new(1, "ip", "1.2.3.4"),
            Acl::new(31, "world", "anyone"),
        ];
        assert_eq!(fixup(&two, &auth).unwrap().len(), 2);
        // "auth" expands to the digest identities only.
        assert_eq!(
            fixup(&Acl::creator_all(), &auth).unwrap(),
            vec![Acl::new(ALL, "digest", "u:h")]
        );
        assert_eq!(
            fixup(&Acl::creator_all(), &[id("ip", "127.0.0.1")]),
            Err(ErrorCode::InvalidAcl)
        );
        assert_eq!(
            fixup(&Acl::creator_all(), &[id("super", "")]),
            Err(ErrorCode::InvalidAcl)
        );
    }

    #[test]
    fn checks() {
        let acl = vec![
            Acl::new(perms::READ, "digest", "u:h"),
            Acl::new(perms::WRITE, "ip", "10.0.0.0/8"),
        ];
        assert!(check(&acl, perms::READ, &[id("digest", "u:h")], None));
        assert!(!check(&acl, perms::WRITE, &[id("digest", "u:h")], None));
        assert!(check(&acl, perms::WRITE, &[id("ip", "10.9.9.9")], None));
        assert!(!check(&acl, perms::READ, &[id("ip", "10.9.9.9")], None));
        assert!(check(&acl, perms::ADMIN, &[id("super", "")], None));
        assert!(check(
            &acl,
            perms::ADMIN,
            &[id("digest", "s:x")],
            Some("s:x")
        ));
        assert!(!check(
            &acl,
            perms::ADMIN,
            &[id("digest", "s:x")],
            Some("s:y")
        ));
        assert!(check(&[], perms::ADMIN, &[], None));
        // Any of the requested bits is enough (getACL asks READ|ADMIN).
        assert!(check(
            &acl,
            perms::READ | perms::ADMIN,
            &[id("digest", "u:h")],
            None
        ));
    }

    #[test]
    fn table_interns_and_counts() {
        let mut t = AclTable::default();
        let a = t.intern(&Acl::open_unsafe());
        let b = t.intern(&Acl::open_unsafe());
        assert_eq!(a, b);
        assert_eq!(t.refs(a), 2);
        let c = t.intern(&Acl::read_unsafe());
        assert_ne!(a, c);
        t.release(c);
        assert_eq!(t.len(), 1);
        let d = t.intern(&Acl::creator_all());
        assert_eq!(d, c, "freed slots are reused");
        t.release(a);
        t.release(a);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn redaction_and_whoami() {
        let r = redact(&[
            Acl::new(1, "digest", "u:hash"),
            Acl::new(1, "ip", "1.2.3.4"),
        ]);
        assert_eq!(r[0].id, "u:x");
        assert_eq!(r[1].id, "1.2.3.4");
        let infos = client_infos(&[
            id("ip", "127.0.0.1"),
            id("digest", "bob:h"),
            id("super", ""),
        ]);
        assert_eq!(infos[0].user, "127.0.0.1");
        assert_eq!(infos[1].user, "bob");
        assert_eq!(infos[2].user, "");
    }
}
