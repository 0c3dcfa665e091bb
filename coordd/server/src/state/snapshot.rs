//! Snapshots: a point-in-time binary image of the replicated state.
//!
//! Layout (jute encoding): magic "CDSN", format version u8, last zxid, the distinct ACL
//! lists, the nodes in path order (path, data, ACL list index, the persisted stat),
//! then the sessions in id order. Children, ephemeral / container / TTL indexes and
//! the data size are rebuilt from the nodes, as ZooKeeper rebuilds them. ACL lists are
//! numbered by first use in path order, so equal states give byte-identical images.
//!
//! Invariant: `read` never panics and never allocates beyond what the image's length
//! justifies; it accepts only images whose tree is well formed (a root, every parent
//! before its children, no duplicates, valid paths, ACL indexes in range).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::BufMut;
use coordd_proto::jute::JuteWrite;
use coordd_proto::{decode_acls, encode_acls, path as zpath, Reader};

use super::acl::AclId;
use super::tree::{Node, PStat};
use super::*;

const MAGIC: &[u8; 4] = b"CDSN";
const SNAPSHOT_FORMAT_V1: u8 = 1;
/// Smallest encoded node: path and data length prefixes, ACL index, 6 longs, 3 ints.
const NODE_BYTES_MIN: usize = 4 + 4 + 4 + 6 * 8 + 3 * 4;
/// Smallest encoded session: id, password length prefix, timeout.
const SESSION_BYTES_MIN: usize = 8 + 4 + 4;

fn corrupt(what: &'static str) -> DecodeError {
    DecodeError::UnknownValue { what, value: 0 }
}

/// What a snapshot image is written from: the replicated state at one zxid, taken in
/// O(1) (the node map is persistent; the ACL lists and sessions are few) so that the
/// image can be encoded on another thread while the state moves on.
#[derive(Debug, Clone)]
pub struct SnapshotView {
    nodes: imbl::HashMap<Box<str>, Arc<Node>>,
    /// The ACL lists the nodes point to, by id.
    acls: HashMap<AclId, Arc<[Acl]>>,
    sessions: Vec<SessionInfo>,
    last_zxid: Zxid,
}

impl SnapshotView {
    pub(super) fn of(sm: &StateMachine) -> SnapshotView {
        SnapshotView {
            nodes: sm.nodes.clone(),
            acls: sm.acls.lists(),
            sessions: sm.sessions.values().cloned().collect(),
            last_zxid: sm.last_zxid,
        }
    }

    /// The zxid the image is taken at.
    pub fn zxid(&self) -> Zxid {
        self.last_zxid
    }

    /// The image ([`StateMachine::restore`] reads it back).
    pub fn encode(&self) -> Vec<u8> {
        write(self)
    }
}

fn write(sm: &SnapshotView) -> Vec<u8> {
    // Each node is looked up once (its entry is kept beside its path), and the buffer is
    // sized for every byte of the nodes up front: at a million nodes a lookup per node
    // and the buffer's regrowth cost seconds.
    let mut nodes: Vec<(&str, &Node)> = sm.nodes.iter().map(|(k, n)| (&**k, &**n)).collect();
    nodes.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut index: HashMap<AclId, i32> = HashMap::new();
    let mut lists: Vec<AclId> = Vec::new();
    let mut node_bytes = 0usize;
    for (p, n) in &nodes {
        node_bytes += NODE_BYTES_MIN + p.len() + n.data.len();
        index.entry(n.acl).or_insert_with(|| {
            lists.push(n.acl);
            (lists.len() - 1) as i32
        });
    }
    let session_bytes: usize = sm
        .sessions
        .iter()
        .map(|s| SESSION_BYTES_MIN + s.passwd.len())
        .sum();
    let mut out = BytesMut::with_capacity(64 + node_bytes + session_bytes);
    out.put_slice(MAGIC);
    out.put_u8(SNAPSHOT_FORMAT_V1);
    out.put_i64(sm.last_zxid);
    out.put_i32(lists.len() as i32);
    for id in &lists {
        let list = sm.acls.get(id).map_or(&[][..], |l| &l[..]);
        debug_assert!(sm.acls.contains_key(id), "a node's ACL list is in the view");
        encode_acls(&mut out, list);
    }
    out.put_i32(nodes.len() as i32);
    // ACL list indexes, looked up once per distinct list rather than per node.
    let mut last_acl: Option<(AclId, i32)> = None;
    for (p, n) in &nodes {
        let acl_index = match last_acl {
            Some((id, i)) if id == n.acl => i,
            _ => {
                let i = index[&n.acl];
                last_acl = Some((n.acl, i));
                i
            }
        };
        out.put_jute_string(p);
        out.put_jute_buffer(&n.data);
        out.put_i32(acl_index);
        let s = &n.stat;
        for v in [s.czxid, s.mzxid, s.pzxid, s.ctime, s.mtime] {
            out.put_i64(v);
        }
        out.put_i32(s.version);
        out.put_i32(s.cversion);
        out.put_i32(s.aversion);
        out.put_i64(s.ephemeral_owner);
    }
    out.put_i32(sm.sessions.len() as i32);
    for s in &sm.sessions {
        out.put_i64(s.session_id);
        out.put_jute_buffer(&s.passwd);
        out.put_i32(s.timeout_ms);
    }
    // No copy: the buffer becomes the vector.
    Vec::from(out)
}

/// A count that must fit in what is left of the image.
fn read_count(r: &mut Reader<'_>, min_elem_bytes: usize) -> Result<usize, DecodeError> {
    let offset = r.position();
    let n = r.read_i32()?;
    if n < 0 || (n as usize).saturating_mul(min_elem_bytes) > r.remaining() {
        return Err(DecodeError::BadLength { offset, len: n });
    }
    Ok(n as usize)
}

pub(super) fn read(config: StateConfig, image: &[u8]) -> Result<StateMachine, DecodeError> {
    if image.len() < MAGIC.len() + 1 || &image[..4] != MAGIC {
        return Err(corrupt("snapshot magic"));
    }
    if image[4] != SNAPSHOT_FORMAT_V1 {
        return Err(DecodeError::UnknownValue {
            what: "snapshot format version",
            value: image[4] as i32,
        });
    }
    let mut r = Reader::new(&image[5..]);
    let mut sm = StateMachine::empty(config);
    sm.last_zxid = r.read_i64()?;
    let list_count = read_count(&mut r, 4)?;
    let mut lists = Vec::with_capacity(list_count);
    for _ in 0..list_count {
        lists.push(decode_acls(&mut r)?);
    }
    let mut interned: Vec<Option<AclId>> = vec![None; lists.len()];
    let node_count = read_count(&mut r, NODE_BYTES_MIN)?;
    for _ in 0..node_count {
        let path = r.read_string()?;
        let data = r.read_buffer()?;
        let acl_index = r.read_i32()?;
        let mut longs = [0i64; 5];
        for v in &mut longs {
            *v = r.read_i64()?;
        }
        let [czxid, mzxid, pzxid, ctime, mtime] = longs;
        let stat = PStat {
            czxid,
            mzxid,
            pzxid,
            ctime,
            mtime,
            version: r.read_i32()?,
            cversion: r.read_i32()?,
            aversion: r.read_i32()?,
            ephemeral_owner: r.read_i64()?,
        };
        if path != "/" && zpath::validate_path(&path, false).is_err() {
            return Err(corrupt("snapshot node path"));
        }
        if sm.nodes.contains_key(path.as_str()) {
            return Err(corrupt("snapshot duplicate node"));
        }
        if path == "/" {
            if !sm.nodes.is_empty() {
                return Err(corrupt("snapshot root not first"));
            }
        } else {
            let (parent, name) = match path.rfind('/') {
                Some(0) => ("/", &path[1..]),
                Some(i) => (&path[..i], &path[i + 1..]),
                None => return Err(corrupt("snapshot node path")),
            };
            let Some(p) = sm.nodes.get_mut(parent).map(Arc::make_mut) else {
                return Err(corrupt("snapshot node before its parent"));
            };
            p.children.insert(name.into());
        }
        let slot = usize::try_from(acl_index)
            .ok()
            .and_then(|i| interned.get_mut(i).map(|s| (i, s)));
        let Some((i, slot)) = slot else {
            return Err(DecodeError::UnknownValue {
                what: "snapshot ACL index",
                value: acl_index,
            });
        };
        let acl = match *slot {
            Some(id) => {
                sm.acls.retain(id);
                id
            }
            None => {
                let id = sm.acls.intern(&lists[i]);
                *slot = Some(id);
                id
            }
        };
        sm.insert_raw(&path, data.into_boxed_slice(), acl, stat, &[]);
    }
    if !sm.nodes.contains_key("/") {
        return Err(corrupt("snapshot without a root"));
    }
    let session_count = read_count(&mut r, SESSION_BYTES_MIN)?;
    let mut seen = BTreeSet::new();
    for _ in 0..session_count {
        let info = SessionInfo {
            session_id: r.read_i64()?,
            passwd: r.read_buffer()?,
            timeout_ms: r.read_i32()?,
        };
        if !seen.insert(info.session_id) {
            return Err(corrupt("snapshot duplicate session"));
        }
        sm.sessions.insert(info.session_id, info);
    }
    if !r.is_empty() {
        return Err(DecodeError::BadLength {
            offset: r.position() + 5,
            len: r.remaining().min(i32::MAX as usize) as i32,
        });
    }
    Ok(sm)
}
