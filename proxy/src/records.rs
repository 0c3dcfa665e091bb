//! The JSON values stored in the namespace (DESIGN.md section 3).
//!
//! Every value is a JSON object with `"v": 1` beside the record's fields. Readers are
//! forward compatible: unknown fields are ignored, an unknown enum word reads as
//! `Unknown`, and a newer `"v"` is accepted as long as the fields this version needs
//! parse. A field that changes meaning must get a new name, never a new `v` alone.
//!
//! LSNs are written as PostgreSQL prints them (`"16/B374D848"`), so that `jq` and any
//! JavaScript client read them exactly (a u64 can exceed 2^53) and operators can
//! paste them into SQL; a plain JSON number is accepted too. Times are wall-clock
//! milliseconds since the Unix epoch (`*_ms`), for humans and status output only:
//! no decision compares wall clocks of different machines.
//!
//! Invariant: [`decode`] never panics and never parses more than [`RECORD_BYTES_MAX`]
//! bytes: any input is either a record or a [`RecordError`].

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::namespace::validate_node_name;

/// The version this code writes.
pub const VERSION: u32 = 1;

/// Largest value [`decode`] parses. ZooKeeper allows 1 MiB per znode; our records are
/// a few hundred bytes, so anything past this is a bug or hostile and is refused
/// before the parser spends time or memory on it.
pub const RECORD_BYTES_MAX: usize = 64 * 1024;

/// Why a stored value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{kind} record of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} record is not valid: {source}")]
    Malformed {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} record has no \"v\" field")]
    MissingVersion { kind: &'static str },
    #[error("{kind} record has version {v}, the oldest readable is 1")]
    UnsupportedVersion { kind: &'static str, v: u64 },
    #[error("{kind} record is not valid: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

/// A value stored in one znode of the namespace.
pub trait Record: Serialize + DeserializeOwned {
    /// Names the record in errors ("leader", "member", ...).
    const KIND: &'static str;

    /// Checks what serde cannot express (names, ranges). Called by [`decode`].
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    v: u32,
    #[serde(flatten)]
    record: &'a T,
}

#[derive(Deserialize)]
struct VersionOnly {
    // u64 so that a huge future version still reads as "newer", not as malformed.
    v: Option<u64>,
}

/// The JSON bytes of `record`, with `"v": 1`.
pub fn encode<T: Record>(record: &T) -> Vec<u8> {
    serde_json::to_vec(&Envelope { v: VERSION, record })
        // Our records hold only strings, numbers, bools and lists with string keys, which
        // always serialize.
        .expect("records always serialize")
}

/// Reads a record; see the module docs for what is accepted.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, RecordError> {
    let kind = T::KIND;
    if bytes.len() > RECORD_BYTES_MAX {
        return Err(RecordError::TooLarge {
            kind,
            len: bytes.len(),
            max: RECORD_BYTES_MAX,
        });
    }
    let malformed = |source| RecordError::Malformed { kind, source };
    let version: VersionOnly = serde_json::from_slice(bytes).map_err(malformed)?;
    match version.v {
        None => return Err(RecordError::MissingVersion { kind }),
        Some(v) if v < 1 => return Err(RecordError::UnsupportedVersion { kind, v }),
        Some(_) => {}
    }
    let record: T = serde_json::from_slice(bytes).map_err(malformed)?;
    record
        .check()
        .map_err(|reason| RecordError::Invalid { kind, reason })?;
    Ok(record)
}

/// A PostgreSQL WAL position (`pg_lsn`). Serialized as PostgreSQL prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `earlier` to `self`, zero if `earlier` is ahead.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hex numbers of at most 8 digits, as \"16/B374D848\"")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || LsnParseError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u32::from_str_radix(h, 16).map_err(|_| err())
        };
        Ok(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Number(u64),
        }
        match Repr::deserialize(d)? {
            Repr::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Repr::Number(n) => Ok(Lsn(n)),
        }
    }
}

/// The leader's progress (DESIGN.md 4.3): writes go only to `Primary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaderState {
    /// Holds `leader`, `pg_promote()` not yet done.
    Promoting,
    /// Takes writes.
    Primary,
    /// A word from a newer agent; never writable.
    #[serde(other)]
    Unknown,
}

/// `clusters/<c>/leader`: who is master. The epoch is the znode's czxid, not a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub state: LeaderState,
    /// When this node won the election.
    #[serde(default)]
    pub since_ms: u64,
}

impl Record for LeaderRecord {
    const KIND: &'static str = "leader";

    fn check(&self) -> Result<(), String> {
        check_endpoint(&self.node, &self.host, self.port)
    }
}

fn check_endpoint(node: &str, host: &str, port: u16) -> Result<(), String> {
    validate_node_name(node).map_err(|e| e.to_string())?;
    if host.is_empty() {
        return Err("empty host".into());
    }
    if port == 0 {
        return Err("port 0".into());
    }
    Ok(())
}

/// What the member's PostgreSQL is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Replica,
    #[serde(other)]
    Unknown,
}

/// What the member's PostgreSQL is doing. Only `Running` serves queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    Running,
    Starting,
    Stopping,
    Stopped,
    /// Being initialized (initdb or base backup).
    Initializing,
    /// `pg_rewind` in progress.
    Rewinding,
    /// Stopped by the agent because its lease ran out.
    Fenced,
    /// Down without being asked to stop.
    Crashed,
    #[serde(other)]
    Unknown,
}

/// `clusters/<c>/members/<node>`: one node's published state, about once a second.
///
/// Positions: a replica publishes `pg_last_wal_receive_lsn()` and
/// `pg_last_wal_replay_lsn()`; a primary publishes its flush position
/// (`pg_current_wal_flush_lsn()`) in both, so that every member's position reads the
/// same way ([`MemberRecord::wal_position`]). `None` is "not known" (PostgreSQL
/// returns NULL, e.g. before a replica first streamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub node: String,
    pub host: String,
    pub port: u16,
    pub role: Role,
    pub state: MemberState,
    #[serde(default)]
    pub timeline: Option<u32>,
    #[serde(default)]
    pub receive_lsn: Option<Lsn>,
    #[serde(default)]
    pub replay_lsn: Option<Lsn>,
    /// Bytes this replica's replay is behind the master, as its agent measured it.
    #[serde(default)]
    pub lag_bytes: Option<u64>,
    #[serde(default)]
    pub updated_ms: u64,
}

impl MemberRecord {
    /// The furthest WAL this member holds: the later of received and replayed (after
    /// a restart a standby may know what it replayed before it received anything).
    pub fn wal_position(&self) -> Option<Lsn> {
        match (self.receive_lsn, self.replay_lsn) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Record for MemberRecord {
    const KIND: &'static str = "member";

    fn check(&self) -> Result<(), String> {
        check_endpoint(&self.node, &self.host, self.port)
    }
}

/// `clusters/<c>/config`: settings every agent of the cluster shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// DESIGN.md 4.6: `synchronous_standby_names = 'ANY 1 (...)'` and only
    /// synchronous standbys may be elected.
    pub synchronous: bool,
    /// Replicas further behind than this receive no reads.
    pub max_lag_bytes: u64,
    /// Session timeout the agents ask coordd for.
    pub session_timeout_ms: u32,
    /// How long before the lease ends the leader fences itself. `None`: a third of the
    /// session timeout (see [`ClusterConfig::fence_margin_ms`]).
    pub fence_margin_ms: Option<u32>,
    /// How often members publish their record.
    pub publish_interval_ms: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            synchronous: false,
            max_lag_bytes: 16 * 1024 * 1024,
            session_timeout_ms: 6_000,
            fence_margin_ms: None,
            publish_interval_ms: 1_000,
        }
    }
}

impl ClusterConfig {
    /// The fencing margin in effect. The client pings every third of the timeout, so a
    /// healthy lease has at least two thirds left just before each ping is answered;
    /// a third leaves room for one late ping plus the time to stop PostgreSQL.
    pub fn fence_margin_ms(&self) -> u32 {
        self.fence_margin_ms.unwrap_or(self.session_timeout_ms / 3)
    }
}

impl Record for ClusterConfig {
    const KIND: &'static str = "config";

    fn check(&self) -> Result<(), String> {
        if self.session_timeout_ms == 0 {
            return Err("session_timeout_ms is 0".into());
        }
        if self.fence_margin_ms() >= self.session_timeout_ms {
            return Err(format!(
                "fence_margin_ms {} is not below session_timeout_ms {}",
                self.fence_margin_ms(),
                self.session_timeout_ms
            ));
        }
        if self.publish_interval_ms == 0 {
            return Err("publish_interval_ms is 0".into());
        }
        Ok(())
    }
}

/// `clusters/<c>/sync`: the standbys that are synchronous now, written by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncRecord {
    /// The leader that wrote it (for status output and stale-record diagnosis).
    #[serde(default)]
    pub leader: Option<String>,
    pub standbys: Vec<String>,
}

impl SyncRecord {
    pub fn contains(&self, node: &str) -> bool {
        self.standbys.iter().any(|s| s == node)
    }
}

impl Record for SyncRecord {
    const KIND: &'static str = "sync";

    fn check(&self) -> Result<(), String> {
        for n in self.standbys.iter().chain(&self.leader) {
            validate_node_name(n).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// `clusters/<c>/initialize`: the node that won bootstrap and runs initdb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitializeRecord {
    pub node: String,
    /// PostgreSQL's database system identifier once initdb ran, as decimal text (it
    /// exceeds 2^53). Lets an agent refuse a data directory of another cluster.
    #[serde(default)]
    pub system_identifier: Option<String>,
}

impl Record for InitializeRecord {
    const KIND: &'static str = "initialize";

    fn check(&self) -> Result<(), String> {
        validate_node_name(&self.node).map_err(|e| e.to_string())?;
        match &self.system_identifier {
            Some(id) if id.parse::<u64>().is_err() => {
                Err(format!("system_identifier {id:?} is not a decimal u64"))
            }
            _ => Ok(()),
        }
    }
}

/// Where a planned switchover stands. The record is kept when it is over (the cluster
/// node grants no DELETE), marked `done` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchoverStatus {
    /// Written by the operator; the master acts on it.
    #[default]
    Pending,
    /// `to` was promoted (written by the new master).
    Done,
    /// Refused or abandoned (`reason` says why); the master is unchanged or was
    /// replaced by a failover.
    Failed,
    #[serde(other)]
    Unknown,
}

/// `clusters/<c>/switchover`: an operator's planned switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchoverRequest {
    /// The current master; the request is void if it no longer is.
    pub from: String,
    /// The node to promote; `None` lets the eligible replicas race as in a failover.
    #[serde(default)]
    pub to: Option<String>,
    /// A record without one (written by an older tool) is pending.
    #[serde(default)]
    pub status: SwitchoverStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Record for SwitchoverRequest {
    const KIND: &'static str = "switchover";

    fn check(&self) -> Result<(), String> {
        for n in std::iter::once(&self.from).chain(&self.to) {
            validate_node_name(n).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leader() -> LeaderRecord {
        LeaderRecord {
            node: "pg-1".into(),
            host: "10.0.0.1".into(),
            port: 5432,
            state: LeaderState::Primary,
            since_ms: 1_700_000_000_000,
        }
    }

    fn member() -> MemberRecord {
        MemberRecord {
            node: "pg-2".into(),
            host: "10.0.0.2".into(),
            port: 5433,
            role: Role::Replica,
            state: MemberState::Running,
            timeline: Some(3),
            receive_lsn: Some(Lsn(0x16_B374_D848)),
            replay_lsn: Some(Lsn(0x16_B374_0000)),
            lag_bytes: Some(0xD848),
            updated_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn leader_json_shape() {
        let json: serde_json::Value = serde_json::from_slice(&encode(&leader())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "v": 1, "node": "pg-1", "host": "10.0.0.1", "port": 5432,
                "state": "primary", "since_ms": 1_700_000_000_000u64
            })
        );
        let promoting = LeaderRecord {
            state: LeaderState::Promoting,
            ..leader()
        };
        assert!(String::from_utf8(encode(&promoting))
            .unwrap()
            .contains("\"state\":\"promoting\""));
    }

    #[test]
    fn member_json_shape_and_lsn_text() {
        let json: serde_json::Value = serde_json::from_slice(&encode(&member())).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["role"], "replica");
        assert_eq!(json["state"], "running");
        assert_eq!(json["receive_lsn"], "16/B374D848");
        assert_eq!(json["replay_lsn"], "16/B3740000");
        assert_eq!(
            decode::<MemberRecord>(&encode(&member())).unwrap(),
            member()
        );
    }

    #[test]
    fn lsn_text() {
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("16/b374d848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!(Lsn(0x1_0000_0001).to_string(), "1/1");
        for bad in [
            "",
            "/",
            "1",
            "1/",
            "/1",
            "1/2/3",
            "g/1",
            "100000000/0",
            "+1/1",
            " 1/1",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
        // Numbers are accepted too.
        let m: MemberRecord = decode(
            br#"{"v":1,"node":"a","host":"h","port":1,"role":"replica","state":"running","replay_lsn":4096}"#,
        )
        .unwrap();
        assert_eq!(m.replay_lsn, Some(Lsn(4096)));
        assert_eq!(m.receive_lsn, None);
        assert_eq!(m.wal_position(), Some(Lsn(4096)));
    }

    #[test]
    fn forward_compatible() {
        // A newer agent: v 2, extra fields, a state word we do not know.
        let l: LeaderRecord = decode(
            br#"{"v":2,"node":"pg-1","host":"h","port":5432,"state":"demoting","since_ms":5,"zone":"b","extra":{"a":[1]}}"#,
        )
        .unwrap();
        assert_eq!(l.state, LeaderState::Unknown);
        let m: MemberRecord = decode(
            br#"{"v":7,"node":"pg-1","host":"h","port":5432,"role":"witness","state":"archiving","new":true}"#,
        )
        .unwrap();
        assert_eq!((m.role, m.state), (Role::Unknown, MemberState::Unknown));
        assert_eq!(m.wal_position(), None);
        // A huge version still reads.
        decode::<SyncRecord>(br#"{"v":18446744073709551615,"standbys":[]}"#).unwrap();
    }

    #[test]
    fn config_defaults() {
        let c: ClusterConfig = decode(br#"{"v":1}"#).unwrap();
        assert_eq!(c, ClusterConfig::default());
        assert_eq!(c.fence_margin_ms(), 2_000);
        let c: ClusterConfig =
            decode(br#"{"v":1,"synchronous":true,"session_timeout_ms":2000}"#).unwrap();
        assert!(c.synchronous);
        assert_eq!(c.fence_margin_ms(), 666);
        assert_eq!(decode::<ClusterConfig>(&encode(&c)).unwrap(), c);
        let bad =
            decode::<ClusterConfig>(br#"{"v":1,"session_timeout_ms":2000,"fence_margin_ms":2000}"#)
                .unwrap_err();
        assert!(
            matches!(bad, RecordError::Invalid { kind: "config", .. }),
            "{bad}"
        );
        assert!(decode::<ClusterConfig>(br#"{"v":1,"session_timeout_ms":0}"#).is_err());
    }

    #[test]
    fn other_records_round_trip() {
        let s = SyncRecord {
            leader: Some("pg-1".into()),
            standbys: vec!["pg-2".into(), "pg-3".into()],
        };
        assert_eq!(decode::<SyncRecord>(&encode(&s)).unwrap(), s);
        assert!(s.contains("pg-3") && !s.contains("pg-1"));
        let i = InitializeRecord {
            node: "pg-1".into(),
            system_identifier: Some("7303557234071040331".into()),
        };
        assert_eq!(decode::<InitializeRecord>(&encode(&i)).unwrap(), i);
        let w = SwitchoverRequest {
            from: "pg-1".into(),
            to: None,
            status: SwitchoverStatus::Failed,
            reason: Some("pg-2 is not streaming".into()),
        };
        assert_eq!(decode::<SwitchoverRequest>(&encode(&w)).unwrap(), w);
        let w: SwitchoverRequest = decode(br#"{"v":1,"from":"a","to":"b"}"#).unwrap();
        assert_eq!(w.to.as_deref(), Some("b"));
        assert_eq!(w.status, SwitchoverStatus::Pending);
        let w: SwitchoverRequest =
            decode(br#"{"v":1,"from":"a","to":"b","status":"paused"}"#).unwrap();
        assert_eq!(w.status, SwitchoverStatus::Unknown);
    }

    #[test]
    fn typed_errors() {
        let e = decode::<LeaderRecord>(b"").unwrap_err();
        assert!(
            matches!(e, RecordError::Malformed { kind: "leader", .. }),
            "{e}"
        );
        let e = decode::<LeaderRecord>(br#"{"node":"a"}"#).unwrap_err();
        assert!(matches!(e, RecordError::MissingVersion { .. }), "{e}");
        let e = decode::<LeaderRecord>(br#"{"v":0}"#).unwrap_err();
        assert!(
            matches!(e, RecordError::UnsupportedVersion { v: 0, .. }),
            "{e}"
        );
        let e = decode::<LeaderRecord>(br#"{"v":"1"}"#).unwrap_err();
        assert!(matches!(e, RecordError::Malformed { .. }), "{e}");
        let e = decode::<LeaderRecord>(br#"[1]"#).unwrap_err();
        assert!(matches!(e, RecordError::Malformed { .. }), "{e}");
        // A required field missing, a port out of range, a bad node name.
        let e = decode::<LeaderRecord>(br#"{"v":1,"node":"a","host":"h","port":1}"#).unwrap_err();
        assert!(e.to_string().contains("missing field `state`"), "{e}");
        let e = decode::<LeaderRecord>(
            br#"{"v":1,"node":"a","host":"h","port":65536,"state":"primary"}"#,
        )
        .unwrap_err();
        assert!(matches!(e, RecordError::Malformed { .. }), "{e}");
        let e = decode::<LeaderRecord>(
            br#"{"v":1,"node":"../x","host":"h","port":1,"state":"primary"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, RecordError::Invalid { kind: "leader", .. }),
            "{e}"
        );
        let e =
            decode::<LeaderRecord>(br#"{"v":1,"node":"a","host":"h","port":0,"state":"primary"}"#)
                .unwrap_err();
        assert!(matches!(e, RecordError::Invalid { .. }), "{e}");
        let e = decode::<MemberRecord>(
            br#"{"v":1,"node":"a","host":"h","port":1,"role":"replica","state":"running","replay_lsn":"x"}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("invalid LSN"), "{e}");
        let e = decode::<InitializeRecord>(br#"{"v":1,"node":"a","system_identifier":"-1"}"#)
            .unwrap_err();
        assert!(matches!(e, RecordError::Invalid { .. }), "{e}");
        // Deep nesting is an error, not a stack overflow.
        let deep = format!(
            "{{\"v\":1,\"x\":{}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(decode::<SyncRecord>(deep.as_bytes()).is_err());
    }

    #[test]
    fn size_limit_checked_before_parsing() {
        let mut big = br#"{"v":1,"standbys":[],"pad":""#.to_vec();
        big.resize(RECORD_BYTES_MAX - 2, b'x');
        big.extend_from_slice(b"\"}");
        assert_eq!(big.len(), RECORD_BYTES_MAX);
        decode::<SyncRecord>(&big).unwrap();
        // One byte more is refused even though it would be valid JSON.
        big.insert(big.len() - 2, b'x');
        let e = decode::<SyncRecord>(&big).unwrap_err();
        assert!(
            matches!(e, RecordError::TooLarge { len, max: RECORD_BYTES_MAX, .. } if len == RECORD_BYTES_MAX + 1),
            "{e}"
        );
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,20}"
    }

    fn lsn() -> impl Strategy<Value = Option<Lsn>> {
        proptest::option::of(any::<u64>().prop_map(Lsn))
    }

    fn arb_leader() -> impl Strategy<Value = LeaderRecord> {
        (
            name(),
            "[a-z0-9.:-]{1,30}",
            1u16..,
            prop_oneof![Just(LeaderState::Promoting), Just(LeaderState::Primary)],
            any::<u64>(),
        )
            .prop_map(|(node, host, port, state, since_ms)| LeaderRecord {
                node,
                host,
                port,
                state,
                since_ms,
            })
    }

    fn arb_member() -> impl Strategy<Value = MemberRecord> {
        (
            (name(), "\\PC{1,30}", 1u16..),
            prop_oneof![
                Just(Role::Primary),
                Just(Role::Replica),
                Just(Role::Unknown)
            ],
            prop_oneof![
                Just(MemberState::Running),
                Just(MemberState::Starting),
                Just(MemberState::Stopped),
                Just(MemberState::Fenced),
                Just(MemberState::Rewinding),
            ],
            proptest::option::of(any::<u32>()),
            lsn(),
            lsn(),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
        )
            .prop_map(
                |(
                    (node, host, port),
                    role,
                    state,
                    timeline,
                    receive_lsn,
                    replay_lsn,
                    lag_bytes,
                    updated_ms,
                )| {
                    MemberRecord {
                        node,
                        host,
                        port,
                        role,
                        state,
                        timeline,
                        receive_lsn,
                        replay_lsn,
                        lag_bytes,
                        updated_ms,
                    }
                },
            )
    }

    fn decode_all(bytes: &[u8]) {
        let _ = decode::<LeaderRecord>(bytes);
        let _ = decode::<MemberRecord>(bytes);
        let _ = decode::<ClusterConfig>(bytes);
        let _ = decode::<SyncRecord>(bytes);
        let _ = decode::<InitializeRecord>(bytes);
        let _ = decode::<SwitchoverRequest>(bytes);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            decode_all(&bytes);
        }

        #[test]
        fn mutated_records_never_panic(
            m in arb_member(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut bytes = encode(&m);
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            decode_all(&bytes);
        }

        #[test]
        fn arbitrary_json_never_panics(s in r#"\{("[a-z_]{1,12}":(-?[0-9]{1,25}|"[^"\\]{0,20}"|null|true|\[\]|\{\}),){0,10}"v":-?[0-9]{1,21}\}"#) {
            decode_all(s.as_bytes());
        }

        #[test]
        fn leader_round_trips(l in arb_leader()) {
            prop_assert_eq!(decode::<LeaderRecord>(&encode(&l)).unwrap(), l);
        }

        #[test]
        fn member_round_trips(m in arb_member()) {
            prop_assert_eq!(decode::<MemberRecord>(&encode(&m)).unwrap(), m);
        }

        #[test]
        fn config_round_trips(
            synchronous in any::<bool>(),
            max_lag_bytes in any::<u64>(),
            session_timeout_ms in 3u32..,
            margin_third in any::<bool>(),
            publish_interval_ms in 1u32..,
        ) {
            let c = ClusterConfig {
                synchronous,
                max_lag_bytes,
                session_timeout_ms,
                fence_margin_ms: (!margin_third).then_some(session_timeout_ms / 2),
                publish_interval_ms,
            };
            prop_assert_eq!(decode::<ClusterConfig>(&encode(&c)).unwrap(), c);
        }

        #[test]
        fn sync_and_switchover_round_trip(
            standbys in proptest::collection::vec(name(), 0..5),
            leader in proptest::option::of(name()),
            from in name(),
            to in proptest::option::of(name()),
        ) {
            let s = SyncRecord { leader, standbys };
            prop_assert_eq!(decode::<SyncRecord>(&encode(&s)).unwrap(), s);
            let w = SwitchoverRequest { from, to, status: SwitchoverStatus::Done, reason: None };
            prop_assert_eq!(decode::<SwitchoverRequest>(&encode(&w)).unwrap(), w);
        }

        #[test]
        fn lsn_text_round_trips(n in any::<u64>()) {
            prop_assert_eq!(Lsn(n).to_string().parse::<Lsn>().unwrap(), Lsn(n));
        }
    }

    /// The seed corpus of the `agent_records` fuzz target (fuzz/corpus/agent_records): each
    /// record type as `encode` writes it, plus forms `decode` must accept from other writers
    /// (a numeric LSN, unknown words and fields, a newer `v`). Checked here to decode;
    /// written when `FUZZ_SEEDS_DIR` is set (`FUZZ_SEEDS_DIR=$PWD/fuzz/corpus cargo test
    /// fuzz_seeds`).
    #[test]
    fn fuzz_seeds() {
        // (file name, bytes, whether they decode as the record they stand for)
        type Seed = (&'static str, Vec<u8>, fn(&[u8]) -> bool);
        let seeds: Vec<Seed> = vec![
            ("leader", encode(&leader()), |b| decode::<LeaderRecord>(b).is_ok()),
            (
                "leader-promoting",
                encode(&LeaderRecord {
                    state: LeaderState::Promoting,
                    ..leader()
                }),
                |b| decode::<LeaderRecord>(b).is_ok(),
            ),
            ("member", encode(&member()), |b| decode::<MemberRecord>(b).is_ok()),
            (
                "member-primary-unknown-lsns",
                encode(&MemberRecord {
                    role: Role::Primary,
                    state: MemberState::Fenced,
                    timeline: None,
                    receive_lsn: None,
                    replay_lsn: None,
                    lag_bytes: None,
                    ..member()
                }),
                |b| decode::<MemberRecord>(b).is_ok(),
            ),
            (
                "member-newer-writer",
                br#"{"v":2,"node":"pg-3","host":"db3.example","port":5432,"role":"witness","state":"hibernating","receive_lsn":95318014024,"replay_lsn":"16/B3740000","zone":"b"}"#.to_vec(),
                |b| decode::<MemberRecord>(b).is_ok(),
            ),
            ("config-default", encode(&ClusterConfig::default()), |b| {
                decode::<ClusterConfig>(b).is_ok()
            }),
            (
                "config-sync",
                encode(&ClusterConfig {
                    synchronous: true,
                    max_lag_bytes: 1 << 20,
                    session_timeout_ms: 4_500,
                    fence_margin_ms: Some(1_000),
                    publish_interval_ms: 500,
                }),
                |b| decode::<ClusterConfig>(b).is_ok(),
            ),
            (
                "sync",
                encode(&SyncRecord {
                    leader: Some("pg-1".into()),
                    standbys: vec!["pg-2".into(), "pg-3".into()],
                }),
                |b| decode::<SyncRecord>(b).is_ok(),
            ),
            (
                "initialize",
                encode(&InitializeRecord {
                    node: "pg-1".into(),
                    system_identifier: Some("7301442938747502834".into()),
                }),
                |b| decode::<InitializeRecord>(b).is_ok(),
            ),
            (
                "switchover-pending",
                encode(&SwitchoverRequest {
                    from: "pg-1".into(),
                    to: Some("pg-2".into()),
                    status: SwitchoverStatus::Pending,
                    reason: None,
                }),
                |b| decode::<SwitchoverRequest>(b).is_ok(),
            ),
            (
                "switchover-failed",
                encode(&SwitchoverRequest {
                    from: "pg-1".into(),
                    to: None,
                    status: SwitchoverStatus::Failed,
                    reason: Some("no eligible replica".into()),
                }),
                |b| decode::<SwitchoverRequest>(b).is_ok(),
            ),
            ("lsn", b"16/B374D848".to_vec(), |b| {
                std::str::from_utf8(b).unwrap().parse::<Lsn>().is_ok()
            }),
        ];
        for (name, bytes, decodes) in &seeds {
            assert!(decodes(bytes), "{name}");
        }
        if let Some(dir) = std::env::var_os("FUZZ_SEEDS_DIR") {
            let dir = std::path::Path::new(&dir).join("agent_records");
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes, _) in &seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}
