//! Members over real TCP on loopback (127.0.0.x), through the public API only.
//!
//! Real time on a 2-thread runtime: the timers are openraft's real ones, so the numbers
//! printed (failover) are what this machine does. Nothing sleeps to let things settle: every
//! wait is a condition polled against a deadline, and bounds asserted are loose (the machine
//! is shared and loaded). Every listener is shut down at the end of its test.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use coordd_raft::tcp::wire::{self, Channel, FrameReader, Hello, HelloReply};
use coordd_raft::tcp::{ConnectError, HandshakeError};
use coordd_raft::{
    Config, MemLogStore, Member, MemberId, PeerServer, ProposeError, Role, TcpConfig, TcpTransport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Deadline of every wait (real time: generous, for a loaded machine).
const WAIT: Duration = Duration::from_secs(20);
mod common;
use common::{encode, TestApplier};

/// One member with its listener and transport.
struct Node {
    member: Member,
    server: PeerServer,
    transport: TcpTransport,
    app: TestApplier,
}

impl Node {
    async fn start(
        id: MemberId,
        listener: TcpListener,
        addrs: &BTreeMap<MemberId, String>,
        config: &Config,
        tcp: &TcpConfig,
    ) -> Node {
        let app = TestApplier::default();
        tcp.validate_for(config).unwrap();
        let transport = TcpTransport::new(id, tcp.clone()).unwrap();
        let member = Member::start(
            config.clone(),
            id,
            addrs.clone(),
            MemLogStore::new(),
            app.clone(),
            transport.clone(),
        )
        .await
        .unwrap();
        let server = PeerServer::start(listener, member.clone(), tcp.clone()).unwrap();
        Node {
            member,
            server,
            transport,
            app,
        }
    }

    /// Stops it as a crash would look to the others: listener and connections first.
    async fn stop(&self) {
        self.server.shutdown().await.unwrap();
        self.member.shutdown().await.unwrap();
        self.transport.close_all();
    }
}

struct TcpCluster {
    nodes: BTreeMap<MemberId, Node>,
    addrs: BTreeMap<MemberId, String>,
    config: Config,
    tcp: TcpConfig,
}

impl TcpCluster {
    /// Three members on 127.0.0.{base+1..=base+3}, ports chosen by the kernel.
    async fn start(base: u8, config: Config, tcp: TcpConfig) -> TcpCluster {
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=3u64 {
            let l = TcpListener::bind(format!("127.0.0.{}:0", base + id as u8))
                .await
                .unwrap();
            addrs.insert(id, l.local_addr().unwrap().to_string());
            listeners.insert(id, l);
        }
        let mut nodes = BTreeMap::new();
        for (id, l) in listeners {
            nodes.insert(id, Node::start(id, l, &addrs, &config, &tcp).await);
        }
        TcpCluster {
            nodes,
            addrs,
            config,
            tcp,
        }
    }

    fn m(&self, id: MemberId) -> &Member {
        &self.nodes[&id].member
    }

    /// Waits until every member in `among` names the same leader, itself in `among`, which
    /// sees itself as leader with a fresh quorum.
    async fn wait_leader(&self, among: &[MemberId]) -> MemberId {
        let mut found = None;
        eventually("one leader agreed on", || {
            let leaders: Vec<Option<MemberId>> =
                among.iter().map(|id| self.m(*id).leader()).collect();
            let Some(l) = leaders[0] else { return false };
            let ok = leaders.iter().all(|x| *x == Some(l))
                && among.contains(&l)
                && self.m(l).role() == Role::Leader
                && self.m(l).quorum_ok();
            if ok {
                found = Some(l);
            }
            ok
        })
        .await;
        found.unwrap()
    }

    /// Proposes on whoever leads among `among`, following leader changes, until it commits.
    async fn propose(&self, among: &[MemberId], p: Bytes) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.wait_leader(among).await;
            match self.m(leader).propose(p.clone()).await {
                Ok(c) => return c.index,
                // Not committed: safe to resend to the new leader.
                Err(ProposeError::NotLeader { .. }) => {}
                Err(e) => panic!("propose on {leader}: {e}"),
            }
            assert!(Instant::now() < deadline, "no commit within {WAIT:?}");
        }
    }

    async fn wait_converged(&self, ids: &[MemberId], index: u64) {
        for id in ids {
            self.m(*id).wait_applied(index, WAIT).await.unwrap();
        }
        let reference = self.nodes[&ids[0]].app.payloads();
        for id in ids {
            assert_eq!(
                self.nodes[id].app.payloads(),
                reference,
                "member {id} differs from {}",
                ids[0]
            );
        }
    }

    async fn shutdown(self) {
        for n in self.nodes.values() {
            n.stop().await;
        }
    }
}

/// Polls `cond` every 5 ms until it holds; fails the test after `WAIT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn payload(i: u64) -> Bytes {
    Bytes::from(format!("txn-batch-{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_form_and_commit_over_tcp() {
    let c = TcpCluster::start(10, Config::default(), TcpConfig::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let l = c.m(leader).clone();
    let mut last = 0;
    for i in 0..20 {
        last = l.propose(payload(i)).await.unwrap().index;
    }
    // Concurrent proposals share the multiplexed connections.
    let handles: Vec<_> = (20..60)
        .map(|i| {
            let l = l.clone();
            tokio::spawn(async move { l.propose(payload(i)).await })
        })
        .collect();
    for h in handles {
        last = last.max(h.await.unwrap().unwrap().index);
    }
    c.wait_converged(&[1, 2, 3], last).await;
    assert_eq!(c.nodes[&leader].app.payloads().len(), 60);
    assert!(l.read_index().await.unwrap() >= last);
    for (id, n) in &c.nodes {
        let s = n.server.stats();
        assert!(s.requests_served > 0, "member {id}: {s:?}");
        assert_eq!(
            s.handshakes_refused + s.frames_too_long + s.frames_undecodable,
            0
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_a_new_leader_commits() {
    let c = TcpCluster::start(20, Config::default(), TcpConfig::default()).await;
    let old = c.wait_leader(&[1, 2, 3]).await;
    let rest: Vec<MemberId> = (1..=3).filter(|id| *id != old).collect();
    let mut last = 0;
    for i in 0..10 {
        last = c.m(old).propose(payload(i)).await.unwrap().index;
    }
    c.wait_converged(&[1, 2, 3], last).await;

    let killed_at = Instant::now();
    c.nodes[&old].stop().await;
    let stopped = killed_at.elapsed();
    let new = c.wait_leader(&rest).await;
    let elected = killed_at.elapsed();
    let committed = c.propose(&rest, payload(10)).await;
    let took = killed_at.elapsed();
    println!(
        "TCP failover: leader {old} stopped in {stopped:?}; member {new} leads after \
         {elected:?}; its first write committed {took:?} after the kill (real time)"
    );
    // Loose: the timers give ~0.35-0.5 s; the bound only catches a transport that stalls.
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    c.wait_converged(&rest, committed).await;
    assert_eq!(c.nodes[&new].app.payloads().len(), 11);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_mismatches_are_refused() {
    let c = TcpCluster::start(30, Config::default(), TcpConfig::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let addr1 = c.addrs[&1].clone();

    // Another ensemble's member.
    let stranger = TcpTransport::new(9, TcpConfig::new("another-ensemble")).unwrap();
    match stranger.check_peer(1, &addr1, WAIT).await {
        Err(ConnectError::Rejected {
            error: HandshakeError::ClusterName { expected, got },
            ..
        }) => {
            assert_eq!(expected, c.config.cluster_name);
            assert_eq!(got, "another-ensemble");
        }
        other => panic!("expected a cluster name refusal, got {other:?}"),
    }
    // Right ensemble, wrong address for the member meant.
    let t = TcpTransport::new(2, c.tcp.clone()).unwrap();
    assert_eq!(
        t.check_peer(3, &addr1, WAIT).await,
        Err(ConnectError::Rejected {
            addr: addr1.clone(),
            error: HandshakeError::WrongMember {
                meant: 3,
                actual: 1
            }
        })
    );
    // Another protocol version.
    let mut hello = Hello::new(&c.config.cluster_name, 2, 1, Channel::Rpc);
    hello.protocol_version = 99;
    let reply = raw_handshake(&addr1, &wire::encode_frame(&hello, 4096).unwrap()).await;
    assert_eq!(
        reply,
        Some(HelloReply::Refused(HandshakeError::Version {
            expected: wire::PROTOCOL_VERSION,
            got: 99
        }))
    );
    // The right handshake passes.
    t.check_peer(1, &addr1, WAIT).await.unwrap();
    assert_eq!(c.nodes[&1].server.stats().handshakes_refused, 3);

    let index = c.propose(&[1, 2, 3], payload(1)).await;
    c.wait_converged(&[1, 2, 3], index).await;
    println!("leader {leader} unaffected: committed {index}");
    c.shutdown().await;
}

/// Sends `bytes` on a fresh connection and returns the handshake reply, if one came, after
/// checking that the listener closed the connection.
async fn raw_handshake(addr: &str, bytes: &[u8]) -> Option<HelloReply> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut reader = FrameReader::new();
    let reply = match tokio::time::timeout(WAIT, reader.next(&mut s, 4096)).await {
        Err(_) => panic!("no reply and no close within {WAIT:?}"),
        Ok(Ok(Some(body))) => Some(wire::decode::<HelloReply>(&body).unwrap()),
        Ok(_) => None,
    };
    assert_closed(&mut s).await;
    reply
}

/// The listener closed `s` (end of stream or reset), within `WAIT`.
async fn assert_closed(s: &mut TcpStream) {
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "connection still open after {WAIT:?}");
}

/// Opens an accepted peer connection to member `to` at `addr` (as member `from`).
async fn handshaken(addr: &str, cluster: &str, from: MemberId, to: MemberId) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = Hello::new(cluster, from, to, Channel::Rpc);
    s.write_all(&wire::encode_frame(&hello, 4096).unwrap())
        .await
        .unwrap();
    let mut reader = FrameReader::new();
    let body = tokio::time::timeout(WAIT, reader.next(&mut s, 4096))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        wire::decode::<HelloReply>(&body).unwrap(),
        HelloReply::Accepted { member_id, .. } if member_id == to
    ));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_frames_close_only_their_connection() {
    let c = TcpCluster::start(40, Config::default(), TcpConfig::default()).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let addr = c.addrs[&leader].clone();
    let cluster = c.config.cluster_name.clone();
    let before = c.nodes[&leader].server.stats();

    // Not a peer at all: "GET " read as a length is far over the handshake limit.
    assert_eq!(
        raw_handshake(&addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await,
        None
    );
    // An oversized length prefix before the handshake.
    assert_eq!(
        raw_handshake(&addr, &[0xff, 0xff, 0xff, 0xff, 1, 2]).await,
        None
    );
    // A small frame of garbage as the handshake: refused with a reason, then closed.
    assert!(matches!(
        raw_handshake(&addr, &[0, 0, 0, 5, 1, 2, 3, 4, 5]).await,
        Some(HelloReply::Refused(
            HandshakeError::Malformed(_) | HandshakeError::BadMagic { .. }
        ))
    ));
    // After a good handshake: an oversized length prefix ...
    let mut s = handshaken(&addr, &cluster, 7, leader).await;
    let over = (c.tcp.frame_bytes_max as u32 + 1).to_be_bytes();
    s.write_all(&over).await.unwrap();
    assert_closed(&mut s).await;
    let mut s = handshaken(&addr, &cluster, 7, leader).await;
    s.write_all(&[0xff; 4]).await.unwrap();
    assert_closed(&mut s).await;
    // ... a frame that does not decode ...
    let mut s = handshaken(&addr, &cluster, 7, leader).await;
    s.write_all(&[0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    assert_closed(&mut s).await;
    // ... and a stream cut inside a frame.
    let mut s = handshaken(&addr, &cluster, 7, leader).await;
    s.write_all(&[0, 0, 1, 0, 1, 2, 3]).await.unwrap();
    s.shutdown().await.unwrap();
    assert_closed(&mut s).await;

    let after = c.nodes[&leader].server.stats();
    assert_eq!(
        after.frames_too_long - before.frames_too_long,
        4,
        "{after:?}"
    );
    assert_eq!(
        after.frames_undecodable - before.frames_undecodable,
        1,
        "{after:?}"
    );
    assert_eq!(
        after.handshakes_refused - before.handshakes_refused,
        1,
        "{after:?}"
    );
    // What stays open is at most the other two members' RPC connections (one may have been
    // opened meanwhile, by a vote: so not compared with `before`).
    eventually("the bad connections are gone", || {
        c.nodes[&leader].server.stats().connections_open <= 2
    })
    .await;

    // The members' own connections were not touched: the ensemble commits.
    let mut last = 0;
    for i in 0..5 {
        last = c.propose(&[1, 2, 3], payload(i)).await;
    }
    c.wait_converged(&[1, 2, 3], last).await;
    c.shutdown().await;
}

/// A member stopped while the others snapshot and purge, restarted empty (fresh log store and
/// state) on the same address: it catches up by a snapshot streamed over TCP in many chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_member_catches_up_by_snapshot_over_tcp() {
    let config = Config {
        snapshot_logs_since_last: 10,
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    // Small chunks, so the image (60 payloads of 1 KiB) crosses in many of them.
    let tcp = TcpConfig {
        snapshot_chunk_bytes: 4 << 10,
        ..TcpConfig::default()
    };
    let big = |i: u64| {
        let mut p = format!("txn-batch-{i}:").into_bytes();
        p.resize(1024, b'x');
        Bytes::from(p)
    };
    let mut c = TcpCluster::start(50, config, tcp).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let rest: Vec<MemberId> = (1..=3).filter(|id| *id != lagging).collect();
    let first = c.propose(&[1, 2, 3], big(0)).await;
    c.wait_converged(&[1, 2, 3], first).await;

    let lag_log = c.m(lagging).status().last_log_index.unwrap();
    c.nodes[&lagging].stop().await;
    let mut last = first;
    for i in 1..=60 {
        last = c.propose(&rest, big(i)).await;
    }
    let leader = c.wait_leader(&rest).await;
    eventually("leader purged past the stopped member's log", || {
        c.m(leader)
            .status()
            .purged_index
            .is_some_and(|p| p > lag_log)
    })
    .await;

    // Restart on the same address, empty. The old listener is closed; the port may take a
    // moment to be bindable again (it is not: SO_REUSEADDR), so retry within the deadline.
    let addr = c.addrs[&lagging].clone();
    let deadline = Instant::now() + WAIT;
    let listener = loop {
        match TcpListener::bind(&addr).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let node = Node::start(lagging, listener, &c.addrs, &c.config, &c.tcp).await;
    c.nodes.insert(lagging, node);

    c.wait_converged(&[1, 2, 3], last).await;
    let n = &c.nodes[&lagging];
    assert!(
        n.app.state().installs >= 1,
        "caught up by installing a snapshot"
    );
    let stats = n.server.stats();
    assert!(stats.snapshots_received >= 1, "{stats:?}");
    assert_eq!(n.app.payloads().len(), 61);
    let image_bytes = encode(&n.app.payloads()).len();
    println!(
        "snapshot catch-up over TCP: {image_bytes} bytes in chunks of {} bytes; listener stats {stats:?}",
        c.tcp.snapshot_chunk_bytes
    );

    // And keeps up by log replication afterwards.
    let more = c.propose(&[1, 2, 3], big(61)).await;
    c.wait_converged(&[1, 2, 3], more).await;
    c.shutdown().await;
}

/// Connections beyond `peer_connections_max` are closed at once; one that never completes its
/// handshake is closed after `handshake_timeout_ms`, freeing its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_and_handshake_deadline() {
    let tcp = TcpConfig {
        peer_connections_max: 4,
        handshake_timeout_ms: 500,
        ..TcpConfig::default()
    };
    let c = TcpCluster::start(60, Config::default(), tcp).await;
    let leader = c.wait_leader(&[1, 2, 3]).await;
    let addr = c.addrs[&leader].clone();
    let stats = || c.nodes[&leader].server.stats();
    let held = stats().connections_open;
    assert!(held <= 2, "{:?}", stats());

    // Idle connections (no handshake) take the free slots ...
    let mut idle = Vec::new();
    for _ in held..4 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    eventually("the idle connections are accepted", || {
        stats().connections_open == 4
    })
    .await;
    // ... so the next one is closed at once, long before any handshake deadline.
    let started = Instant::now();
    let mut over = TcpStream::connect(&addr).await.unwrap();
    assert_closed(&mut over).await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(stats().connections_over_limit >= 1, "{:?}", stats());

    // The idle ones are closed at the handshake deadline and their slots come back.
    for s in &mut idle {
        assert_closed(s).await;
    }
    // At most the other members' RPC connections remain.
    eventually("slots freed", || stats().connections_open <= 2).await;
    let index = c.propose(&[1, 2, 3], payload(1)).await;
    c.wait_converged(&[1, 2, 3], index).await;
    c.shutdown().await;
}
