//! The peer wire format: frames, the handshake, and the messages inside frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of postcard
//! (<https://postcard.jamesmunns.com/wire-format>): varint integers, no field names, enums as
//! a varint variant index. Why postcard: compact (an empty AppendEntries is a few dozen
//! bytes), a wire format documented and stable since 1.0, maintained, and it only needs the
//! serde impls openraft already has (none of openraft's types need a self-describing format:
//! no `untagged`/`flatten`/`skip_serializing_if` outside its compat module; a round-trip test
//! below checks the real types).
//!
//! A connection starts with one [`Hello`] frame from the caller and one [`HelloReply`] from the
//! listener, both limited to [`HANDSHAKE_FRAME_BYTES_MAX`]. Then every frame is one message (a
//! postcard enum, variant index first):
//! - 0 `Request { id, request }`: an AppendEntries or a vote (`PeerRequest`), caller to
//!   listener on an RPC channel; ids unique per connection;
//! - 1 `Response { id, response }`: listener to caller, in completion order;
//! - 2 `SnapshotBegin { id, vote, meta, total_bytes }`, 3 `SnapshotChunk { id, data }` (in
//!   order), 4 `SnapshotEnd { id }`: a snapshot on a Snapshot channel, answered by one
//!   `Response`.
//!
//! Invariants: a length over the limit is refused before any byte of the body is buffered,
//! and the buffer grows only as the body's bytes actually arrive (a peer that announces a
//! large frame must send it to make us hold it); nothing here panics on any input.

use bytes::{Buf, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::network::{PeerRequest, PeerResponse};
use crate::types::{SnapshotMeta, Vote};
use crate::MemberId;

/// First bytes of every [`Hello`]: tells a coordd peer connection from anything else that
/// reaches the port.
pub const MAGIC: [u8; 4] = *b"CDRP";

/// The protocol this build speaks. Peers must speak the same one (no negotiation yet): any
/// change of the messages or of the openraft types inside them bumps it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Limit of a handshake frame (in both directions). Small, because the caller is not yet known
/// to be a peer: a stranger cannot make us buffer more than this.
pub const HANDSHAKE_FRAME_BYTES_MAX: usize = 4 << 10;

/// Default limit of a frame after the handshake: room for an AppendEntries of a few large
/// batches and for a snapshot chunk (`TcpConfig::snapshot_chunk_bytes`) with its header.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 << 20;

/// Bytes of header around a snapshot chunk's data, at most (id, variant, length varints).
pub const CHUNK_OVERHEAD_BYTES_MAX: usize = 32;

/// The buffer grows by at most this much per read while a frame's body arrives.
const READ_GROWTH_BYTES_MAX: usize = 64 << 10;

/// What a connection carries after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// Multiplexed requests (AppendEntries, votes) and their responses, in any order.
    Rpc,
    /// One snapshot streamed in chunks, then its response. Separate, so that a snapshot never
    /// queues ahead of heartbeats (openraft gives an AppendEntries one heartbeat interval).
    Snapshot,
}

/// The first frame on a connection, from the side that connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`]. With `protocol_version`, the fixed prefix every future version keeps, so a
    /// peer of another version is told so rather than "malformed".
    pub magic: [u8; 4],
    pub protocol_version: u32,
    /// Must equal the listener's; keeps two ensembles on shared hosts apart.
    pub cluster_name: String,
    /// The sender's member id (logged by the listener).
    pub from: MemberId,
    /// The member the sender means to reach: a wrong address in a membership is refused rather
    /// than talked to.
    pub to: MemberId,
    pub channel: Channel,
}

impl Hello {
    pub fn new(cluster_name: &str, from: MemberId, to: MemberId, channel: Channel) -> Self {
        Self {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            cluster_name: cluster_name.to_string(),
            from,
            to,
            channel,
        }
    }
}

/// The listener's answer to a [`Hello`]. After `Refused` it closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    Accepted {
        protocol_version: u32,
        member_id: MemberId,
    },
    Refused(HandshakeError),
}

/// Why a handshake failed. Sent to the caller in [`HelloReply::Refused`], so both sides log
/// the same reason; `expected` is always the refusing side's value.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum HandshakeError {
    #[error("not a coordd peer connection (magic {got:?})")]
    BadMagic { got: [u8; 4] },
    #[error("protocol version {got}, but {expected} is spoken here")]
    Version { expected: u32, got: u32 },
    #[error("cluster name {got:?}, but this is cluster {expected:?}")]
    ClusterName { expected: String, got: String },
    #[error("meant for member {meant}, but this is member {actual}")]
    WrongMember { meant: MemberId, actual: MemberId },
    #[error("malformed handshake: {0}")]
    Malformed(String),
}

/// Checks a [`Hello`] frame body as the listener (member `me` of `cluster_name`) sees it.
/// Magic and version are read first, so a peer of another version gets `Version`.
pub fn check_hello(body: &[u8], cluster_name: &str, me: MemberId) -> Result<Hello, HandshakeError> {
    let ((magic, version), _) = postcard::take_from_bytes::<([u8; 4], u32)>(body)
        .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    if magic != MAGIC {
        return Err(HandshakeError::BadMagic { got: magic });
    }
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version {
            expected: PROTOCOL_VERSION,
            got: version,
        });
    }
    let hello: Hello = decode(body).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    if hello.cluster_name != cluster_name {
        return Err(HandshakeError::ClusterName {
            expected: cluster_name.to_string(),
            got: hello.cluster_name,
        });
    }
    if hello.to != me {
        return Err(HandshakeError::WrongMember {
            meant: hello.to,
            actual: me,
        });
    }
    Ok(hello)
}

/// Checks the listener's [`HelloReply`] as the caller that wanted member `target` sees it.
pub fn check_reply(body: &[u8], target: MemberId) -> Result<(), HandshakeError> {
    match decode::<HelloReply>(body).map_err(|e| HandshakeError::Malformed(e.to_string()))? {
        HelloReply::Refused(e) => Err(e),
        HelloReply::Accepted {
            protocol_version, ..
        } if protocol_version != PROTOCOL_VERSION => Err(HandshakeError::Version {
            expected: PROTOCOL_VERSION,
            got: protocol_version,
        }),
        HelloReply::Accepted { member_id, .. } if member_id != target => {
            Err(HandshakeError::WrongMember {
                meant: target,
                actual: member_id,
            })
        }
        HelloReply::Accepted { .. } => Ok(()),
    }
}

/// A frame after the handshake. Request ids are chosen by the caller, unique per connection;
/// responses carry the id of their request and may come in any order.
///
/// Public only so that the fuzz target (`fuzz/fuzz_targets/peer_protocol.rs`) decodes frames
/// exactly as the listener and the caller do; nothing outside this crate builds one.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    Request {
        id: u64,
        request: PeerRequest,
    },
    Response {
        id: u64,
        response: PeerResponse,
    },
    /// Starts a snapshot of `total_bytes` (Snapshot channel); chunks follow in order.
    SnapshotBegin {
        id: u64,
        vote: Vote,
        meta: SnapshotMeta,
        total_bytes: u64,
    },
    SnapshotChunk {
        id: u64,
        data: Bytes,
    },
    /// All chunks sent: the listener installs the snapshot and answers with a `Response`.
    SnapshotEnd {
        id: u64,
    },
}

impl Message {
    /// The variant, for logs (a whole AppendEntries is too much to log).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Message::Request { .. } => "Request",
            Message::Response { .. } => "Response",
            Message::SnapshotBegin { .. } => "SnapshotBegin",
            Message::SnapshotChunk { .. } => "SnapshotChunk",
            Message::SnapshotEnd { .. } => "SnapshotEnd",
        }
    }
}

/// A framing or encoding failure. Each one closes the connection it happened on, nothing else.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {max_bytes} bytes")]
    TooLong { len: u64, max_bytes: usize },
    #[error("connection closed inside a frame ({buffered} bytes of it received)")]
    Truncated { buffered: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `value` as one whole frame (length prefix included), refusing one over `max_bytes`.
pub fn encode_frame<T: Serialize>(value: &T, max_bytes: usize) -> Result<Bytes, WireError> {
    let out =
        postcard::to_extend(value, vec![0u8; 4]).map_err(|e| WireError::Encode(e.to_string()))?;
    let len = out.len() - 4;
    if len > max_bytes || u32::try_from(len).is_err() {
        return Err(WireError::TooLong {
            len: len as u64,
            max_bytes,
        });
    }
    let mut out = out;
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(Bytes::from(out))
}

/// Decodes a frame body; trailing bytes are an error (a frame holds exactly one value).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(WireError::Decode(format!(
            "{} trailing bytes after the value",
            rest.len()
        ))),
        Err(e) => Err(WireError::Decode(e.to_string())),
    }
}

/// The length a buffer starting with a frame header announces, checked against `max_bytes`.
fn announced_len(buf: &[u8], max_bytes: usize) -> Result<Option<usize>, WireError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if len as u64 > max_bytes as u64 {
        return Err(WireError::TooLong {
            len: len as u64,
            max_bytes,
        });
    }
    Ok(Some(len as usize))
}

/// Splits one whole frame body off the front of `buf`, if one is there. The length is checked
/// as soon as the 4 header bytes are there.
pub fn split_frame(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<Bytes>, WireError> {
    match announced_len(buf, max_bytes)? {
        Some(len) if buf.len() - 4 >= len => {
            buf.advance(4);
            Ok(Some(buf.split_to(len).freeze()))
        }
        _ => Ok(None),
    }
}

/// Reads frames from a byte stream. Cancel-safe: bytes read before a cancelled
/// [`FrameReader::next`] stay buffered for the next call.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next frame body, `None` at a clean end of stream (between frames).
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max_bytes: usize,
    ) -> Result<Option<Bytes>, WireError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, max_bytes)? {
                return Ok(Some(frame));
            }
            // Grow by what this frame still lacks, but at most a chunk per read.
            let wanted = match announced_len(&self.buf, max_bytes)? {
                Some(len) => 4 + len - self.buf.len(),
                None => 4 - self.buf.len(),
            };
            self.buf.reserve(wanted.min(READ_GROWTH_BYTES_MAX));
            if r.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
    use openraft::{BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership};
    use proptest::prelude::*;

    use super::*;
    use crate::network::{RequestBody, ResponseBody};
    use crate::types::Entry;

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn append_entries() -> PeerRequest {
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|i| (i, BasicNode::new(format!("127.0.0.{i}:2888"))))
            .collect();
        let membership = Membership::new(vec![nodes.keys().copied().collect()], nodes);
        let entries = vec![
            Entry {
                log_id: log_id(0, 0),
                payload: EntryPayload::Membership(membership),
            },
            Entry {
                log_id: log_id(2, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 2),
                payload: EntryPayload::Normal(Bytes::from_static(b"a batch of txns")),
            },
        ];
        PeerRequest(RequestBody::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: None,
            entries,
            leader_commit: Some(log_id(2, 1)),
        }))
    }

    fn message_frames() -> Vec<Bytes> {
        let max = FRAME_BYTES_MAX_DEFAULT;
        vec![
            encode_frame(
                &Message::Request {
                    id: 7,
                    request: append_entries(),
                },
                max,
            )
            .unwrap(),
            encode_frame(
                &Message::Request {
                    id: 8,
                    request: PeerRequest(RequestBody::Vote(VoteRequest::new(
                        Vote::new(3, 2),
                        Some(log_id(2, 2)),
                    ))),
                },
                max,
            )
            .unwrap(),
            encode_frame(
                &Message::Response {
                    id: 7,
                    response: PeerResponse(ResponseBody::AppendEntries(
                        AppendEntriesResponse::Success,
                    )),
                },
                max,
            )
            .unwrap(),
            encode_frame(
                &Message::SnapshotChunk {
                    id: 1,
                    data: Bytes::from(vec![9u8; 1000]),
                },
                max,
            )
            .unwrap(),
        ]
    }

    #[test]
    fn openraft_messages_round_trip() {
        let frames = message_frames();
        let mut buf = BytesMut::new();
        for f in &frames {
            buf.extend_from_slice(f);
        }
        let mut decoded = Vec::new();
        while let Some(body) = split_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT).unwrap() {
            decoded.push(decode::<Message>(&body).unwrap());
        }
        assert!(buf.is_empty());
        assert_eq!(decoded.len(), 4);
        match &decoded[0] {
            Message::Request { id: 7, request } => {
                assert_eq!(format!("{request:?}"), format!("{:?}", append_entries()))
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&decoded[1], Message::Request { id: 8, request } if request.kind() == crate::RequestKind::Vote)
        );
        assert!(matches!(
            &decoded[2],
            Message::Response {
                id: 7,
                response: PeerResponse(ResponseBody::AppendEntries(AppendEntriesResponse::Success))
            }
        ));
        assert!(
            matches!(&decoded[3], Message::SnapshotChunk { id: 1, data } if data.len() == 1000)
        );
        // Compact: a heartbeat (no entries) fits in a few dozen bytes.
        let heartbeat = PeerRequest(RequestBody::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(2, 100_000)),
            entries: vec![],
            leader_commit: Some(log_id(2, 100_000)),
        }));
        let f = encode_frame(
            &Message::Request {
                id: 1 << 40,
                request: heartbeat,
            },
            1024,
        )
        .unwrap();
        assert!(f.len() < 48, "heartbeat frame is {} bytes", f.len());
    }

    /// The layout documented above; a change here is a protocol change (bump
    /// PROTOCOL_VERSION).
    #[test]
    fn wire_layout_is_pinned() {
        let f = encode_frame(&Message::SnapshotEnd { id: 5 }, 64).unwrap();
        assert_eq!(&f[..], &[0, 0, 0, 2, 4, 5]);
        let f = encode_frame(
            &Message::SnapshotChunk {
                id: 300,
                data: Bytes::from_static(b"ab"),
            },
            64,
        )
        .unwrap();
        // Length, variant 3, id 300 as a varint, 2 bytes of data with their length.
        assert_eq!(&f[..], &[0, 0, 0, 6, 3, 0xac, 0x02, 2, b'a', b'b']);
        let f = encode_frame(&Hello::new("c", 1, 2, Channel::Snapshot), 64).unwrap();
        assert_eq!(
            &f[..],
            &[0, 0, 0, 10, b'C', b'D', b'R', b'P', 1, 1, b'c', 1, 2, 1]
        );
    }

    #[test]
    fn handshake_checks() {
        let ok = encode_frame(&Hello::new("c", 1, 2, Channel::Rpc), 4096).unwrap();
        let body = &ok[4..];
        assert_eq!(check_hello(body, "c", 2).unwrap().from, 1);
        assert!(matches!(
            check_hello(body, "other", 2),
            Err(HandshakeError::ClusterName { .. })
        ));
        assert_eq!(
            check_hello(body, "c", 3),
            Err(HandshakeError::WrongMember {
                meant: 2,
                actual: 3
            })
        );
        let mut newer = Hello::new("c", 1, 2, Channel::Rpc);
        newer.protocol_version = 9;
        let f = encode_frame(&newer, 4096).unwrap();
        assert_eq!(
            check_hello(&f[4..], "c", 2),
            Err(HandshakeError::Version {
                expected: PROTOCOL_VERSION,
                got: 9
            })
        );
        // A newer version may change everything after the prefix: still reported as Version.
        let mut prefix_only = postcard::to_stdvec(&(MAGIC, 9u32)).unwrap();
        prefix_only.extend_from_slice(&[0xff; 3]);
        assert!(matches!(
            check_hello(&prefix_only, "c", 2),
            Err(HandshakeError::Version { got: 9, .. })
        ));
        assert!(matches!(
            check_hello(b"GET / HTTP/1.1", "c", 2),
            Err(HandshakeError::BadMagic { .. })
        ));
        assert!(matches!(
            check_hello(b"CD", "c", 2),
            Err(HandshakeError::Malformed(_))
        ));

        let accepted = encode_frame(
            &HelloReply::Accepted {
                protocol_version: PROTOCOL_VERSION,
                member_id: 2,
            },
            4096,
        )
        .unwrap();
        assert_eq!(check_reply(&accepted[4..], 2), Ok(()));
        assert!(matches!(
            check_reply(&accepted[4..], 3),
            Err(HandshakeError::WrongMember { .. })
        ));
        let refused = encode_frame(
            &HelloReply::Refused(HandshakeError::ClusterName {
                expected: "a".into(),
                got: "b".into(),
            }),
            4096,
        )
        .unwrap();
        assert!(matches!(
            check_reply(&refused[4..], 2),
            Err(HandshakeError::ClusterName { .. })
        ));
    }

    #[test]
    fn limits_and_truncation() {
        // Over the limit: refused from the 4 header bytes alone.
        let mut b = BytesMut::from(&(11u32).to_be_bytes()[..]);
        assert!(matches!(
            split_frame(&mut b, 10),
            Err(WireError::TooLong {
                len: 11,
                max_bytes: 10
            })
        ));
        let mut b = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            split_frame(&mut b, FRAME_BYTES_MAX_DEFAULT),
            Err(WireError::TooLong { .. })
        ));
        // Exactly at the limit is fine.
        let mut b = BytesMut::from(&(3u32).to_be_bytes()[..]);
        b.extend_from_slice(b"abc");
        assert_eq!(&split_frame(&mut b, 3).unwrap().unwrap()[..], b"abc");
        // Partial frames wait for more.
        let mut b = BytesMut::from(&[0u8, 0][..]);
        assert!(split_frame(&mut b, 10).unwrap().is_none());
        assert!(encode_frame(&Bytes::from(vec![0u8; 100]), 50).is_err());
        // A value with trailing bytes is refused.
        let f = encode_frame(&5u32, 10).unwrap();
        let mut body = f[4..].to_vec();
        body.push(0);
        assert!(matches!(decode::<u32>(&body), Err(WireError::Decode(_))));
    }

    #[tokio::test]
    async fn reader_handles_split_reads_and_truncation() {
        let frames = message_frames();
        let all: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        // Byte-at-a-time delivery: tokio's test reader would be nicer; a duplex pipe does it.
        let (mut tx, mut rx) = tokio::io::duplex(1);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            tx.write_all(&all).await.unwrap();
        });
        let mut reader = FrameReader::new();
        for f in &frames {
            let body = reader
                .next(&mut rx, FRAME_BYTES_MAX_DEFAULT)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&body[..], &f[4..]);
        }
        writer.await.unwrap();
        assert!(reader
            .next(&mut rx, FRAME_BYTES_MAX_DEFAULT)
            .await
            .unwrap()
            .is_none());

        // The stream ends inside a frame.
        let cut = &frames[0][..frames[0].len() - 1];
        let mut src: &[u8] = cut;
        let mut reader = FrameReader::new();
        assert!(matches!(
            reader.next(&mut src, FRAME_BYTES_MAX_DEFAULT).await,
            Err(WireError::Truncated { .. })
        ));
        // An oversized header: refused without reading on.
        let mut src: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut reader = FrameReader::new();
        assert!(matches!(
            reader.next(&mut src, 1024).await,
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn a_large_announced_frame_is_not_allocated_up_front() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut src: &[u8] = &(FRAME_BYTES_MAX_DEFAULT as u32).to_be_bytes();
            let mut reader = FrameReader::new();
            assert!(matches!(
                reader.next(&mut src, FRAME_BYTES_MAX_DEFAULT).await,
                Err(WireError::Truncated { .. })
            ));
            assert!(reader.buf.capacity() <= 4 + READ_GROWTH_BYTES_MAX + 64);
        });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes as a frame body: decoding fails or succeeds, never panics.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Message>(&body);
            let _ = check_hello(&body, "coordd", 1);
            let _ = check_reply(&body, 1);
        }

        /// Arbitrary bytes as a stream: splitting never panics and never returns a frame over
        /// the limit.
        #[test]
        fn splitting_arbitrary_streams_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..300) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = split_frame(&mut buf, max) {
                prop_assert!(f.len() <= max);
                let _ = decode::<Message>(&f);
            }
        }

        /// Valid frames with a mutated byte: still never a panic.
        #[test]
        fn mutated_frames_never_panic(which in 0usize..4, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut f = message_frames()[which].to_vec();
            let i = at.index(f.len());
            f[i] = byte;
            let mut buf = BytesMut::from(&f[..]);
            if let Ok(Some(body)) = split_frame(&mut buf, FRAME_BYTES_MAX_DEFAULT) {
                let _ = decode::<Message>(&body);
            }
        }
    }

    /// The seed corpus of the `peer_protocol` fuzz target (fuzz/corpus/peer_protocol): byte
    /// streams as a peer sends them, a handshake frame then messages, made by the real
    /// encoders. Checked here to read back through `FrameReader` and decode; written when
    /// `FUZZ_SEEDS_DIR` is set (`FUZZ_SEEDS_DIR=$PWD/fuzz/corpus cargo test fuzz_seeds`).
    #[test]
    fn fuzz_seeds() {
        use openraft::raft::{SnapshotResponse, VoteResponse};
        use openraft::StoredMembership;

        let max = FRAME_BYTES_MAX_DEFAULT;
        let frame = |m: &Message| encode_frame(m, max).unwrap().to_vec();
        let hello = |channel| encode_frame(&Hello::new("coordd", 1, 2, channel), 4096).unwrap();
        let request = |id, body| {
            frame(&Message::Request {
                id,
                request: PeerRequest(body),
            })
        };
        let response = |id, body| {
            frame(&Message::Response {
                id,
                response: PeerResponse(body),
            })
        };
        let stream = |first: Bytes, rest: Vec<Vec<u8>>| {
            let mut s = first.to_vec();
            for f in rest {
                s.extend_from_slice(&f);
            }
            s
        };
        let vote = Vote::new_committed(2, 1);
        let heartbeat = RequestBody::AppendEntries(AppendEntriesRequest {
            vote,
            prev_log_id: Some(log_id(2, 100_000)),
            entries: vec![],
            leader_commit: Some(log_id(2, 100_000)),
        });
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 10)),
            last_membership: StoredMembership::new(Some(log_id(0, 0)), {
                let nodes: BTreeMap<u64, BasicNode> = (1..=3)
                    .map(|i| (i, BasicNode::new(format!("127.0.0.{i}:2888"))))
                    .collect();
                Membership::new(vec![nodes.keys().copied().collect()], nodes)
            }),
            snapshot_id: "2-1-10-7".into(),
        };
        let seeds: Vec<(&str, Vec<u8>)> = vec![
            ("hello-rpc", hello(Channel::Rpc).to_vec()),
            (
                "rpc-append-entries",
                stream(
                    hello(Channel::Rpc),
                    vec![
                        frame(&Message::Request {
                            id: 1,
                            request: append_entries(),
                        }),
                        request(2, heartbeat.clone()),
                    ],
                ),
            ),
            (
                "rpc-vote-app",
                stream(
                    hello(Channel::Rpc),
                    vec![
                        request(
                            3,
                            RequestBody::Vote(VoteRequest::new(
                                Vote::new(3, 2),
                                Some(log_id(2, 2)),
                            )),
                        ),
                        request(4, RequestBody::App(Bytes::from_static(b"forwarded write"))),
                    ],
                ),
            ),
            (
                "rpc-whole-snapshot",
                stream(
                    hello(Channel::Rpc),
                    vec![request(
                        5,
                        RequestBody::Snapshot {
                            vote,
                            meta: meta.clone(),
                            image: Bytes::from_static(b"an image"),
                        },
                    )],
                ),
            ),
            (
                "snapshot-stream",
                stream(
                    hello(Channel::Snapshot),
                    vec![
                        frame(&Message::SnapshotBegin {
                            id: 1,
                            vote,
                            meta,
                            total_bytes: 6,
                        }),
                        frame(&Message::SnapshotChunk {
                            id: 1,
                            data: Bytes::from_static(b"abc"),
                        }),
                        frame(&Message::SnapshotChunk {
                            id: 1,
                            data: Bytes::from_static(b"def"),
                        }),
                        frame(&Message::SnapshotEnd { id: 1 }),
                    ],
                ),
            ),
            (
                "reply-accepted-responses",
                stream(
                    encode_frame(
                        &HelloReply::Accepted {
                            protocol_version: PROTOCOL_VERSION,
                            member_id: 1,
                        },
                        4096,
                    )
                    .unwrap(),
                    vec![
                        response(
                            1,
                            ResponseBody::AppendEntries(AppendEntriesResponse::Success),
                        ),
                        response(
                            2,
                            ResponseBody::AppendEntries(AppendEntriesResponse::PartialSuccess(
                                Some(log_id(2, 5)),
                            )),
                        ),
                        response(
                            3,
                            ResponseBody::AppendEntries(AppendEntriesResponse::Conflict),
                        ),
                        response(
                            4,
                            ResponseBody::AppendEntries(AppendEntriesResponse::HigherVote(
                                Vote::new(4, 3),
                            )),
                        ),
                        response(
                            5,
                            ResponseBody::Vote(VoteResponse::new(vote, Some(log_id(2, 2)), true)),
                        ),
                        response(6, ResponseBody::Snapshot(SnapshotResponse::new(vote))),
                        response(7, ResponseBody::Refused("stopping".into())),
                        response(8, ResponseBody::App(Bytes::from_static(b"reply"))),
                    ],
                ),
            ),
            (
                "reply-refused",
                encode_frame(
                    &HelloReply::Refused(HandshakeError::ClusterName {
                        expected: "coordd".into(),
                        got: "other".into(),
                    }),
                    4096,
                )
                .unwrap()
                .to_vec(),
            ),
        ];

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for (name, bytes) in &seeds {
            rt.block_on(async {
                let mut src: &[u8] = bytes;
                let mut reader = FrameReader::new();
                let first = reader
                    .next(&mut src, HANDSHAKE_FRAME_BYTES_MAX)
                    .await
                    .unwrap()
                    .unwrap();
                assert!(
                    check_hello(&first, "coordd", 2).is_ok()
                        || decode::<HelloReply>(&first).is_ok(),
                    "{name}"
                );
                while let Some(body) = reader.next(&mut src, max).await.unwrap() {
                    decode::<Message>(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
                }
            });
        }
        if let Some(dir) = std::env::var_os("FUZZ_SEEDS_DIR") {
            let dir = std::path::Path::new(&dir).join("peer_protocol");
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }
}
