//! The records of ZooKeeper's `zookeeper.jute` that travel on the client port.
//! Field order is the wire order.

use bytes::{BufMut, BytesMut};

use crate::jute::{DecodeError, JuteWrite, Reader, Record};

/// Implements [`Record`] for a struct whose fields are all jute primitives, listed with
/// their kind in wire order.
macro_rules! record {
    ($(#[$m:meta])* $name:ident { $($field:ident : $kind:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name { $(pub $field: record!(@ty $kind)),* }

        impl Record for $name {
            fn encode(&self, out: &mut BytesMut) {
                let _ = &out;
                $(record!(@put out, self.$field, $kind);)*
            }
            fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                let _ = &r;
                Ok($name { $($field: record!(@get r, $kind)),* })
            }
        }
    };
    (@ty int) => { i32 };
    (@ty long) => { i64 };
    (@ty boolean) => { bool };
    (@ty buffer) => { Vec<u8> };
    (@ty ustring) => { String };
    (@ty strings) => { Vec<String> };
    (@ty acls) => { Vec<Acl> };
    (@ty stat) => { Stat };
    (@put $o:ident, $v:expr, int) => { $o.put_i32($v) };
    (@put $o:ident, $v:expr, long) => { $o.put_i64($v) };
    (@put $o:ident, $v:expr, boolean) => { $o.put_jute_bool($v) };
    (@put $o:ident, $v:expr, buffer) => { $o.put_jute_buffer(&$v) };
    (@put $o:ident, $v:expr, ustring) => { $o.put_jute_string(&$v) };
    (@put $o:ident, $v:expr, strings) => { $o.put_jute_string_vec(&$v) };
    (@put $o:ident, $v:expr, acls) => { encode_acls($o, &$v) };
    (@put $o:ident, $v:expr, stat) => { $v.encode($o) };
    (@get $r:ident, int) => { $r.read_i32()? };
    (@get $r:ident, long) => { $r.read_i64()? };
    (@get $r:ident, boolean) => { $r.read_bool()? };
    (@get $r:ident, buffer) => { $r.read_buffer()? };
    (@get $r:ident, ustring) => { $r.read_string()? };
    (@get $r:ident, strings) => { $r.read_string_vec()? };
    (@get $r:ident, acls) => { decode_acls($r)? };
    (@get $r:ident, stat) => { Stat::decode($r)? };
}

record! {
    /// A node's metadata (`org.apache.zookeeper.data.Stat`).
    Stat {
        czxid: long,
        mzxid: long,
        ctime: long,
        mtime: long,
        version: int,
        cversion: int,
        aversion: int,
        ephemeral_owner: long,
        data_length: int,
        num_children: int,
        pzxid: long,
    }
}

/// Encoded size of a [`Stat`].
pub const STAT_BYTES: usize = 68;

record! {
    /// An identity: a scheme and an id within it (`org.apache.zookeeper.data.Id`).
    Id { scheme: ustring, id: ustring }
}

/// One access-control entry (`org.apache.zookeeper.data.ACL`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct Acl {
    pub perms: i32,
    pub scheme: String,
    pub id: String,
}

impl Acl {
    pub fn new(perms: i32, scheme: &str, id: &str) -> Self {
        Acl {
            perms,
            scheme: scheme.to_owned(),
            id: id.to_owned(),
        }
    }

    /// `ZooDefs.Ids.OPEN_ACL_UNSAFE`: everyone may do everything.
    pub fn open_unsafe() -> Vec<Acl> {
        vec![Acl::new(crate::perms::ALL, "world", "anyone")]
    }

    /// `ZooDefs.Ids.READ_ACL_UNSAFE`.
    pub fn read_unsafe() -> Vec<Acl> {
        vec![Acl::new(crate::perms::READ, "world", "anyone")]
    }

    /// `ZooDefs.Ids.CREATOR_ALL_ACL`: everything for the authenticated creator.
    pub fn creator_all() -> Vec<Acl> {
        vec![Acl::new(crate::perms::ALL, "auth", "")]
    }
}

impl Record for Acl {
    fn encode(&self, out: &mut BytesMut) {
        out.put_i32(self.perms);
        out.put_jute_string(&self.scheme);
        out.put_jute_string(&self.id);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Acl {
            perms: r.read_i32()?,
            scheme: r.read_string()?,
            id: r.read_string()?,
        })
    }
}

pub fn encode_acls(out: &mut BytesMut, acls: &[Acl]) {
    out.put_i32(acls.len() as i32);
    for a in acls {
        a.encode(out);
    }
}

pub fn decode_acls(r: &mut Reader<'_>) -> Result<Vec<Acl>, DecodeError> {
    // perms + two length prefixes.
    r.read_vec(12, Acl::decode)
}

/// The first record a client sends (`ConnectRequest`). `read_only` is absent on the
/// wire from old clients; it decodes as false then.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectRequest {
    pub protocol_version: i32,
    pub last_zxid_seen: i64,
    pub timeout_ms: i32,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub read_only: bool,
}

impl Record for ConnectRequest {
    fn encode(&self, out: &mut BytesMut) {
        out.put_i32(self.protocol_version);
        out.put_i64(self.last_zxid_seen);
        out.put_i32(self.timeout_ms);
        out.put_i64(self.session_id);
        out.put_jute_buffer(&self.passwd);
        out.put_jute_bool(self.read_only);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let protocol_version = r.read_i32()?;
        let last_zxid_seen = r.read_i64()?;
        let timeout_ms = r.read_i32()?;
        let session_id = r.read_i64()?;
        let passwd = r.read_buffer()?;
        let read_only = if r.is_empty() { false } else { r.read_bool()? };
        Ok(ConnectRequest {
            protocol_version,
            last_zxid_seen,
            timeout_ms,
            session_id,
            passwd,
            read_only,
        })
    }
}

/// The server's answer to [`ConnectRequest`]. A `timeout_ms` of 0 tells the client its
/// session is expired or unknown.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectResponse {
    pub protocol_version: i32,
    pub timeout_ms: i32,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub read_only: bool,
}

impl Record for ConnectResponse {
    fn encode(&self, out: &mut BytesMut) {
        out.put_i32(self.protocol_version);
        out.put_i32(self.timeout_ms);
        out.put_i64(self.session_id);
        out.put_jute_buffer(&self.passwd);
        out.put_jute_bool(self.read_only);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let protocol_version = r.read_i32()?;
        let timeout_ms = r.read_i32()?;
        let session_id = r.read_i64()?;
        let passwd = r.read_buffer()?;
        let read_only = if r.is_empty() { false } else { r.read_bool()? };
        Ok(ConnectResponse {
            protocol_version,
            timeout_ms,
            session_id,
            passwd,
            read_only,
        })
    }
}

record! {
    /// Precedes every request after the handshake.
    RequestHeader { xid: int, op: int }
}

record! {
    /// Precedes every reply and watch event.
    ReplyHeader { xid: int, zxid: long, err: int }
}

record! { CreateRequest { path: ustring, data: buffer, acl: acls, flags: int } }
record! { CreateTtlRequest { path: ustring, data: buffer, acl: acls, flags: int, ttl: long } }
record! { CreateResponse { path: ustring } }
record! { Create2Response { path: ustring, stat: stat } }
record! { DeleteRequest { path: ustring, version: int } }
record! {
    /// Used by exists, getData, getChildren and getChildren2.
    PathWatchRequest { path: ustring, watch: boolean }
}
record! { StatResponse { stat: stat } }
record! { GetDataResponse { data: buffer, stat: stat } }
record! { SetDataRequest { path: ustring, data: buffer, version: int } }
record! { GetChildrenResponse { children: strings } }
record! { GetChildren2Response { children: strings, stat: stat } }
record! {
    /// Used by sync, getACL, getAllChildrenNumber, getEphemerals and deleteContainer.
    PathRequest { path: ustring }
}
record! { GetAllChildrenNumberResponse { total_number: int } }
record! { GetEphemeralsResponse { ephemerals: strings } }
record! { GetAclResponse { acl: acls, stat: stat } }
record! { SetAclRequest { path: ustring, acl: acls, version: int } }
record! { CheckVersionRequest { path: ustring, version: int } }
record! { SyncResponse { path: ustring } }
record! { AuthPacket { auth_type: int, scheme: ustring, auth: buffer } }
record! {
    SetWatches {
        relative_zxid: long,
        data_watches: strings,
        exist_watches: strings,
        child_watches: strings,
    }
}
record! {
    SetWatches2 {
        relative_zxid: long,
        data_watches: strings,
        exist_watches: strings,
        child_watches: strings,
        persistent_watches: strings,
        persistent_recursive_watches: strings,
    }
}
record! { AddWatchRequest { path: ustring, mode: int } }
record! {
    /// Used by removeWatches and checkWatches.
    WatchTypeRequest { path: ustring, watcher_type: int }
}
record! { WatcherEvent { event_type: int, state: int, path: ustring } }
record! { ClientInfo { auth_scheme: ustring, user: ustring } }
record! { ErrorResponse { err: int } }
record! { MultiHeader { op: int, done: boolean, err: int } }

/// `WhoAmIResponse`: the identities the session has authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WhoAmIResponse {
    pub client_info: Vec<ClientInfo>,
}

impl Record for WhoAmIResponse {
    fn encode(&self, out: &mut BytesMut) {
        out.put_i32(self.client_info.len() as i32);
        for c in &self.client_info {
            c.encode(out);
        }
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(WhoAmIResponse {
            client_info: r.read_vec(8, ClientInfo::decode)?,
        })
    }
}

impl MultiHeader {
    /// The header that ends a multi request or response.
    pub const END: MultiHeader = MultiHeader {
        op: -1,
        done: true,
        err: -1,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_is_68_bytes() {
        assert_eq!(Stat::default().to_bytes().len(), STAT_BYTES);
    }

    #[test]
    fn connect_request_without_read_only_flag() {
        let req = ConnectRequest {
            timeout_ms: 30000,
            passwd: vec![0; 16],
            ..Default::default()
        };
        let mut b = req.to_bytes();
        b.truncate(b.len() - 1);
        assert_eq!(ConnectRequest::from_bytes(&b).unwrap(), req);
    }

    #[test]
    fn round_trips() {
        let r = CreateRequest {
            path: "/a".into(),
            data: b"x".to_vec(),
            acl: Acl::open_unsafe(),
            flags: 3,
        };
        assert_eq!(CreateRequest::from_bytes(&r.to_bytes()).unwrap(), r);
        let s = SetWatches2 {
            relative_zxid: 7,
            data_watches: vec!["/a".into()],
            persistent_recursive_watches: vec!["/b".into(), "/c".into()],
            ..Default::default()
        };
        assert_eq!(SetWatches2::from_bytes(&s.to_bytes()).unwrap(), s);
    }
}

/// `ReconfigRequest` (op 16, ZooKeeper 3.5+'s dynamic reconfiguration): incremental
/// (`joining_servers` and/or `leaving_servers`, comma-separated) or whole (`new_members`);
/// `cur_config_id` -1 or the version the change is based on. A null string decodes as empty
/// and an empty one is sent as null, as ZooKeeper's Java client does. The reply is a
/// [`GetDataResponse`] with the new configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconfigRequest {
    pub joining_servers: String,
    pub leaving_servers: String,
    pub new_members: String,
    pub cur_config_id: i64,
}

impl Record for ReconfigRequest {
    fn encode(&self, out: &mut BytesMut) {
        for s in [
            &self.joining_servers,
            &self.leaving_servers,
            &self.new_members,
        ] {
            if s.is_empty() {
                out.put_i32(-1);
            } else {
                out.put_jute_string(s);
            }
        }
        out.put_i64(self.cur_config_id);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ReconfigRequest {
            joining_servers: r.read_string_opt()?.unwrap_or_default(),
            leaving_servers: r.read_string_opt()?.unwrap_or_default(),
            new_members: r.read_string_opt()?.unwrap_or_default(),
            cur_config_id: r.read_i64()?,
        })
    }
}
