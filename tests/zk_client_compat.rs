//! coordd driven by an independent ZooKeeper client, the `zookeeper-client` crate: every
//! op and rule a ZooKeeper user relies on, against a real coordd process, and against a
//! 3-member coordd ensemble with each of a case's clients on another member
//! (`tests/support/target.rs`: `name::standalone` and `name::ensemble`).

mod support;

use std::time::Duration;

use std::net::SocketAddr;

use support::target::{Target, Topology};
use tokio::time::timeout;
use zookeeper_client as zk;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(addr: SocketAddr) -> zk::Client {
    timeout(
        WAIT,
        support::zk_connector()
            .session_timeout(Duration::from_millis(2000))
            .connect(&addr.to_string()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// What a ZooKeeper user does before reading what another session wrote: `sync`, on an
/// ensemble, whose members serve reads from their own copy (maybe behind the leader);
/// nothing standalone, whose reads see every write answered before them.
async fn catch_up(t: &Target, c: &zk::Client, path: &str) {
    if t.is_ensemble() {
        c.sync(path).await.unwrap();
    }
}

const TICK: &[&str] = &["--tick-time-ms", "100"];

fn open() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

async fn crud_and_stat_fields(topo: Topology) {
    let t = topo.start("crud_and_stat_fields", TICK);
    let client = connect(t.next_addr()).await;

    let (stat, _) = client.create(&t.p("/a"), b"hello", &open()).await.unwrap();
    assert_eq!(stat.version, 0);
    assert_eq!(stat.data_length, 5);
    assert_eq!(stat.czxid, stat.mzxid);
    assert_eq!(stat.czxid, stat.pzxid);
    assert_eq!(stat.ephemeral_owner, 0);
    assert!(stat.ctime > 0 && stat.ctime == stat.mtime);

    let (data, got) = client.get_data(&t.p("/a")).await.unwrap();
    assert_eq!(data, b"hello");
    assert_eq!(got, stat);

    assert_eq!(
        client.create(&t.p("/a"), b"", &open()).await.unwrap_err(),
        zk::Error::NodeExists
    );
    assert_eq!(
        client.create(&t.p("/x/y"), b"", &open()).await.unwrap_err(),
        zk::Error::NoNode
    );

    let set = client
        .set_data(&t.p("/a"), b"world!", Some(0))
        .await
        .unwrap();
    assert_eq!(set.version, 1);
    assert_eq!(set.data_length, 6);
    assert!(set.mzxid > stat.mzxid);
    assert_eq!(set.czxid, stat.czxid);
    assert_eq!(
        client
            .set_data(&t.p("/a"), b"x", Some(0))
            .await
            .unwrap_err(),
        zk::Error::BadVersion
    );

    client.create(&t.p("/a/b"), b"", &open()).await.unwrap();
    client.create(&t.p("/a/c"), b"", &open()).await.unwrap();
    let (mut children, parent) = client.get_children(&t.p("/a")).await.unwrap();
    children.sort();
    assert_eq!(children, vec!["b", "c"]);
    assert_eq!(parent.num_children, 2);
    assert_eq!(parent.cversion, 2);
    assert_eq!(
        client.delete(&t.p("/a"), None).await.unwrap_err(),
        zk::Error::NotEmpty
    );
    client.delete(&t.p("/a/b"), None).await.unwrap();
    let st = client.check_stat(&t.p("/a")).await.unwrap().unwrap();
    assert_eq!(st.cversion, 3, "cversion counts creations and deletions");
    assert_eq!(st.num_children, 1);
    assert_eq!(
        client.count_descendants_number(&t.p("/a")).await.unwrap(),
        1
    );

    assert_eq!(
        client.delete(&t.p("/a/c"), Some(7)).await.unwrap_err(),
        zk::Error::BadVersion
    );
    client.delete(&t.p("/a/c"), Some(0)).await.unwrap();
    assert!(client.check_stat(&t.p("/a/c")).await.unwrap().is_none());
    assert_eq!(
        client.get_data(&t.p("/nope")).await.unwrap_err(),
        zk::Error::NoNode
    );
    client.sync(&t.p("/a")).await.unwrap();
}

async fn sequential_names_follow_the_parents_creation_count(topo: Topology) {
    let t = topo.start("sequential_names_follow_the_parents_creation_count", TICK);
    let client = connect(t.next_addr()).await;
    client.create(&t.p("/q"), b"", &open()).await.unwrap();
    client.create(&t.p("/q/plain"), b"", &open()).await.unwrap();
    client.delete(&t.p("/q/plain"), None).await.unwrap();
    // cversion is now 2 (one creation, one deletion) but the suffix counts creations
    // only, as ZooKeeper's does: the next suffix is 1.
    assert_eq!(
        client
            .check_stat(&t.p("/q"))
            .await
            .unwrap()
            .unwrap()
            .cversion,
        2
    );
    let seq = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
    let (_, n) = client.create(&t.p("/q/item-"), b"", &seq).await.unwrap();
    assert_eq!(n.into_i64(), 1);
    let (_, n) = client.create(&t.p("/q/item-"), b"", &seq).await.unwrap();
    assert_eq!(n.into_i64(), 2);
    let mut children = client.list_children(&t.p("/q")).await.unwrap();
    children.sort();
    assert_eq!(children, vec!["item-0000000001", "item-0000000002"]);
}

async fn ephemerals_go_with_their_session_and_watchers_see_it(topo: Topology) {
    let t = topo.start("ephemerals_go_with_their_session_and_watchers_see_it", TICK);
    let owner = connect(t.next_addr()).await;
    let observer = connect(t.next_addr()).await;
    owner
        .create(&t.p("/lock"), b"me", &ephemeral())
        .await
        .unwrap();
    catch_up(&t, &observer, &t.p("/lock")).await;
    let st = observer.check_stat(&t.p("/lock")).await.unwrap().unwrap();
    assert_eq!(st.ephemeral_owner, owner.session_id().0);
    assert_eq!(
        owner.list_ephemerals(&t.p("/")).await.unwrap(),
        vec![t.p("/lock")]
    );
    assert_eq!(
        owner
            .create(&t.p("/lock/child"), b"", &open())
            .await
            .unwrap_err(),
        zk::Error::NoChildrenForEphemerals
    );

    let (_, _, watcher) = observer.get_and_watch_data(&t.p("/lock")).await.unwrap();
    drop(owner); // closes the session
    let event = timeout(WAIT, watcher.changed())
        .await
        .expect("event in time");
    assert_eq!(event.event_type, zk::EventType::NodeDeleted);
    assert_eq!(event.path, t.p("/lock"));
    assert!(observer.check_stat(&t.p("/lock")).await.unwrap().is_none());
}

async fn watches_fire_once_with_zookeeper_event_types(topo: Topology) {
    let t = topo.start("watches_fire_once_with_zookeeper_event_types", TICK);
    let c = connect(t.next_addr()).await;
    let w = connect(t.next_addr()).await;

    // exists on a missing node registers a watch that fires on creation.
    let (stat, exist_watch) = w.check_and_watch_stat(&t.p("/n")).await.unwrap();
    assert!(stat.is_none());
    c.create(&t.p("/n"), b"1", &open()).await.unwrap();
    let e = timeout(WAIT, exist_watch.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeCreated, t.p("/n").as_str())
    );

    let (_, _, data_watch) = w.get_and_watch_data(&t.p("/n")).await.unwrap();
    let (_, child_watch) = w.list_and_watch_children(&t.p("/n")).await.unwrap();
    c.set_data(&t.p("/n"), b"2", None).await.unwrap();
    let e = timeout(WAIT, data_watch.changed()).await.unwrap();
    assert_eq!(e.event_type, zk::EventType::NodeDataChanged);
    c.create(&t.p("/n/kid"), b"", &open()).await.unwrap();
    let e = timeout(WAIT, child_watch.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeChildrenChanged, t.p("/n").as_str())
    );

    // A persistent recursive watch sees every change below, and keeps firing.
    let mut rec = w
        .watch(&t.p("/n"), zk::AddWatchMode::PersistentRecursive)
        .await
        .unwrap();
    c.set_data(&t.p("/n/kid"), b"x", None).await.unwrap();
    let e = timeout(WAIT, rec.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeDataChanged, t.p("/n/kid").as_str())
    );
    c.create(&t.p("/n/kid/deep"), b"", &open()).await.unwrap();
    let e = timeout(WAIT, rec.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeCreated, t.p("/n/kid/deep").as_str())
    );
    c.delete(&t.p("/n/kid/deep"), None).await.unwrap();
    let e = timeout(WAIT, rec.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeDeleted, t.p("/n/kid/deep").as_str())
    );
}

async fn a_watch_event_arrives_before_the_reply_that_shows_the_change(topo: Topology) {
    let t = topo.start(
        "a_watch_event_arrives_before_the_reply_that_shows_the_change",
        TICK,
    );
    let c = connect(t.next_addr()).await;
    c.create(&t.p("/order"), b"0", &open()).await.unwrap();
    let (_, _, watcher) = c.get_and_watch_data(&t.p("/order")).await.unwrap();
    c.set_data(&t.p("/order"), b"1", None).await.unwrap();
    // The event was delivered before the setData reply, so it is ready now.
    let e = timeout(Duration::from_millis(1), watcher.changed())
        .await
        .expect("event already delivered");
    assert_eq!(e.event_type, zk::EventType::NodeDataChanged);
}

async fn multi_is_all_or_nothing(topo: Topology) {
    let t = topo.start("multi_is_all_or_nothing", TICK);
    let c = connect(t.next_addr()).await;
    c.create(&t.p("/m"), b"", &open()).await.unwrap();

    let mut w = c.new_multi_writer();
    w.add_create(&t.p("/m/1"), b"", &open()).unwrap();
    w.add_set_data(&t.p("/m"), b"changed", None).unwrap();
    w.add_delete(&t.p("/m/missing"), None).unwrap();
    w.add_create(&t.p("/m/2"), b"", &open()).unwrap();
    match w.commit().await {
        Err(zk::MultiWriteError::OperationFailed { index, source }) => {
            assert_eq!(index, 2);
            assert_eq!(source, zk::Error::NoNode);
        }
        other => panic!("expected the third op to fail, got {other:?}"),
    }
    assert!(
        c.check_stat(&t.p("/m/1")).await.unwrap().is_none(),
        "nothing of a failed multi applies"
    );
    assert_eq!(c.get_data(&t.p("/m")).await.unwrap().0, b"");

    let mut w = c.new_multi_writer();
    w.add_create(&t.p("/m/1"), b"", &open()).unwrap();
    w.add_set_data(&t.p("/m"), b"changed", Some(0)).unwrap();
    w.add_check_version(&t.p("/m/1"), 0).unwrap();
    let results = w.commit().await.unwrap();
    assert_eq!(results.len(), 3);
    assert!(
        matches!(&results[0], zk::MultiWriteResult::Create { path, .. } if path == &t.p("/m/1"))
    );
    assert!(matches!(&results[1], zk::MultiWriteResult::SetData { stat } if stat.version == 1));
    assert_eq!(results[2], zk::MultiWriteResult::Check);

    let mut r = c.new_multi_reader();
    r.add_get_data(&t.p("/m")).unwrap();
    r.add_get_children(&t.p("/m")).unwrap();
    r.add_get_data(&t.p("/absent")).unwrap();
    let results = r.commit().await.unwrap();
    assert!(matches!(&results[0], zk::MultiReadResult::Data { data, .. } if data == b"changed"));
    assert!(
        matches!(&results[1], zk::MultiReadResult::Children { children } if children == &["1"])
    );
    assert!(matches!(&results[2], zk::MultiReadResult::Error { err } if *err == zk::Error::NoNode));
}

async fn digest_acl_refuses_others(topo: Topology) {
    let t = topo.start("digest_acl_refuses_others", TICK);
    let owner = connect(t.next_addr()).await;
    owner
        .auth("digest".into(), b"agent1:secret".to_vec())
        .await
        .unwrap();
    let creator_only = zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all());
    owner
        .create(&t.p("/guarded"), b"mine", &creator_only)
        .await
        .unwrap();
    let (acl, _) = owner.get_acl(&t.p("/guarded")).await.unwrap();
    assert_eq!(acl.len(), 1);
    assert_eq!(acl[0].scheme(), "digest");
    assert!(acl[0].id().starts_with("agent1:"));
    owner
        .set_data(&t.p("/guarded"), b"still mine", None)
        .await
        .unwrap();

    let stranger = connect(t.next_addr()).await;
    catch_up(&t, &stranger, &t.p("/guarded")).await;
    assert_eq!(
        stranger.get_data(&t.p("/guarded")).await.unwrap_err(),
        zk::Error::NoAuth
    );
    assert_eq!(
        stranger
            .set_data(&t.p("/guarded"), b"x", None)
            .await
            .unwrap_err(),
        zk::Error::NoAuth
    );
    stranger
        .auth("digest".into(), b"agent2:other".to_vec())
        .await
        .unwrap();
    assert_eq!(
        stranger
            .set_data(&t.p("/guarded"), b"x", None)
            .await
            .unwrap_err(),
        zk::Error::NoAuth
    );
    let users = stranger.list_auth_users().await.unwrap();
    assert!(
        users
            .iter()
            .any(|u| u.scheme() == "digest" && u.user() == "agent2"),
        "{users:?}"
    );
    // As in ZooKeeper, delete needs DELETE on the parent, which the parent
    // (here "/" or the case's node on a shared ensemble) grants to anyone.
    stranger.delete(&t.p("/guarded"), None).await.unwrap();

    // The auth scheme with no credentials is an InvalidACL.
    let anonymous = connect(t.next_addr()).await;
    assert_eq!(
        anonymous
            .create(&t.p("/y"), b"", &creator_only)
            .await
            .unwrap_err(),
        zk::Error::InvalidAcl
    );
}

async fn containers_are_removed_once_emptied(topo: Topology) {
    let t = topo.start(
        "containers_are_removed_once_emptied",
        &[
            "--tick-time-ms",
            "100",
            "--container-check-interval-ms",
            "50",
        ],
    );
    let c = connect(t.next_addr()).await;
    let container = zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());
    c.create(&t.p("/box"), b"", &container).await.unwrap();
    let st = c.check_stat(&t.p("/box")).await.unwrap().unwrap();
    assert_eq!(
        st.ephemeral_owner, 0,
        "ZooKeeper shows clients 0 for a container's owner"
    );
    c.create(&t.p("/box/item"), b"", &open()).await.unwrap();
    c.delete(&t.p("/box/item"), None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.check_stat(&t.p("/box")).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "container not removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ensemble: kill -9 of all three members, then all restart.
async fn answered_writes_survive_kill_9(topo: Topology) {
    let mut t = topo.start_own(TICK);
    {
        let c = connect(t.next_addr()).await;
        c.create(&t.p("/durable"), b"", &open()).await.unwrap();
        // Many concurrent writes share fsyncs; each answered one must survive.
        let mut tasks = Vec::new();
        for i in 0..200 {
            let c = c.clone();
            let path = t.p(&format!("/durable/n{i}"));
            tasks.push(tokio::spawn(async move {
                c.create(&path, format!("v{i}").as_bytes(), &open()).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        c.set_data(&t.p("/durable"), b"last", None).await.unwrap();
    }
    t.kill9_and_restart_all();
    let c = connect(t.next_addr()).await;
    // A new session on a member that may still be applying the log.
    catch_up(&t, &c, &t.p("/durable")).await;
    let (data, stat) = c.get_data(&t.p("/durable")).await.unwrap();
    assert_eq!(data, b"last");
    assert_eq!(stat.num_children, 200);
    assert_eq!(c.get_data(&t.p("/durable/n137")).await.unwrap().0, b"v137");
    // zxids keep growing after recovery.
    let (st, _) = c.create(&t.p("/after"), b"", &open()).await.unwrap();
    assert!(st.czxid > stat.mzxid);
}

both_topologies!(async crud_and_stat_fields);
both_topologies!(async sequential_names_follow_the_parents_creation_count);
both_topologies!(async ephemerals_go_with_their_session_and_watchers_see_it);
both_topologies!(async watches_fire_once_with_zookeeper_event_types);
both_topologies!(async a_watch_event_arrives_before_the_reply_that_shows_the_change);
both_topologies!(async multi_is_all_or_nothing);
both_topologies!(async digest_acl_refuses_others);
both_topologies!(async containers_are_removed_once_emptied);
both_topologies!(async answered_writes_survive_kill_9);
