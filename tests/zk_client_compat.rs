//! coordd driven by an independent ZooKeeper client, the `zookeeper-client` crate: every
//! op and rule a ZooKeeper user relies on, against a real coordd process.

mod support;

use std::time::Duration;

use support::coordd::Coordd;
use tokio::time::timeout;
use zookeeper_client as zk;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(c: &Coordd) -> zk::Client {
    timeout(
        WAIT,
        zk::Client::connector()
            .session_timeout(Duration::from_millis(2000))
            .connect(&c.connect_string()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

fn open() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

fn ephemeral() -> zk::CreateOptions<'static> {
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all())
}

#[tokio::test]
async fn crud_and_stat_fields() {
    let server = Coordd::start();
    let client = connect(&server).await;

    let (stat, _) = client.create("/a", b"hello", &open()).await.unwrap();
    assert_eq!(stat.version, 0);
    assert_eq!(stat.data_length, 5);
    assert_eq!(stat.czxid, stat.mzxid);
    assert_eq!(stat.czxid, stat.pzxid);
    assert_eq!(stat.ephemeral_owner, 0);
    assert!(stat.ctime > 0 && stat.ctime == stat.mtime);

    let (data, got) = client.get_data("/a").await.unwrap();
    assert_eq!(data, b"hello");
    assert_eq!(got, stat);

    assert_eq!(
        client.create("/a", b"", &open()).await.unwrap_err(),
        zk::Error::NodeExists
    );
    assert_eq!(
        client.create("/x/y", b"", &open()).await.unwrap_err(),
        zk::Error::NoNode
    );

    let set = client.set_data("/a", b"world!", Some(0)).await.unwrap();
    assert_eq!(set.version, 1);
    assert_eq!(set.data_length, 6);
    assert!(set.mzxid > stat.mzxid);
    assert_eq!(set.czxid, stat.czxid);
    assert_eq!(
        client.set_data("/a", b"x", Some(0)).await.unwrap_err(),
        zk::Error::BadVersion
    );

    client.create("/a/b", b"", &open()).await.unwrap();
    client.create("/a/c", b"", &open()).await.unwrap();
    let (mut children, parent) = client.get_children("/a").await.unwrap();
    children.sort();
    assert_eq!(children, vec!["b", "c"]);
    assert_eq!(parent.num_children, 2);
    assert_eq!(parent.cversion, 2);
    assert_eq!(
        client.delete("/a", None).await.unwrap_err(),
        zk::Error::NotEmpty
    );
    client.delete("/a/b", None).await.unwrap();
    let st = client.check_stat("/a").await.unwrap().unwrap();
    assert_eq!(st.cversion, 3, "cversion counts creations and deletions");
    assert_eq!(st.num_children, 1);
    assert_eq!(client.count_descendants_number("/a").await.unwrap(), 1);

    assert_eq!(
        client.delete("/a/c", Some(7)).await.unwrap_err(),
        zk::Error::BadVersion
    );
    client.delete("/a/c", Some(0)).await.unwrap();
    assert!(client.check_stat("/a/c").await.unwrap().is_none());
    assert_eq!(
        client.get_data("/nope").await.unwrap_err(),
        zk::Error::NoNode
    );
    client.sync("/a").await.unwrap();
}

#[tokio::test]
async fn sequential_names_follow_the_parents_creation_count() {
    let server = Coordd::start();
    let client = connect(&server).await;
    client.create("/q", b"", &open()).await.unwrap();
    client.create("/q/plain", b"", &open()).await.unwrap();
    client.delete("/q/plain", None).await.unwrap();
    // cversion is now 2 (one creation, one deletion) but the suffix counts creations
    // only, as ZooKeeper's does: the next suffix is 1.
    assert_eq!(client.check_stat("/q").await.unwrap().unwrap().cversion, 2);
    let seq = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
    let (_, n) = client.create("/q/item-", b"", &seq).await.unwrap();
    assert_eq!(n.into_i64(), 1);
    let (_, n) = client.create("/q/item-", b"", &seq).await.unwrap();
    assert_eq!(n.into_i64(), 2);
    let mut children = client.list_children("/q").await.unwrap();
    children.sort();
    assert_eq!(children, vec!["item-0000000001", "item-0000000002"]);
}

#[tokio::test]
async fn ephemerals_go_with_their_session_and_watchers_see_it() {
    let server = Coordd::start();
    let owner = connect(&server).await;
    let observer = connect(&server).await;
    owner.create("/lock", b"me", &ephemeral()).await.unwrap();
    let st = observer.check_stat("/lock").await.unwrap().unwrap();
    assert_eq!(st.ephemeral_owner, owner.session_id().0);
    assert_eq!(owner.list_ephemerals("/").await.unwrap(), vec!["/lock"]);
    assert_eq!(
        owner.create("/lock/child", b"", &open()).await.unwrap_err(),
        zk::Error::NoChildrenForEphemerals
    );

    let (_, _, watcher) = observer.get_and_watch_data("/lock").await.unwrap();
    drop(owner); // closes the session
    let event = timeout(WAIT, watcher.changed())
        .await
        .expect("event in time");
    assert_eq!(event.event_type, zk::EventType::NodeDeleted);
    assert_eq!(event.path, "/lock");
    assert!(observer.check_stat("/lock").await.unwrap().is_none());
}

#[tokio::test]
async fn watches_fire_once_with_zookeeper_event_types() {
    let server = Coordd::start();
    let c = connect(&server).await;
    let w = connect(&server).await;

    // exists on a missing node registers a watch that fires on creation.
    let (stat, exist_watch) = w.check_and_watch_stat("/n").await.unwrap();
    assert!(stat.is_none());
    c.create("/n", b"1", &open()).await.unwrap();
    let e = timeout(WAIT, exist_watch.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeCreated, "/n")
    );

    let (_, _, data_watch) = w.get_and_watch_data("/n").await.unwrap();
    let (_, child_watch) = w.list_and_watch_children("/n").await.unwrap();
    c.set_data("/n", b"2", None).await.unwrap();
    let e = timeout(WAIT, data_watch.changed()).await.unwrap();
    assert_eq!(e.event_type, zk::EventType::NodeDataChanged);
    c.create("/n/kid", b"", &open()).await.unwrap();
    let e = timeout(WAIT, child_watch.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeChildrenChanged, "/n")
    );

    // A persistent recursive watch sees every change below, and keeps firing.
    let mut rec = w
        .watch("/n", zk::AddWatchMode::PersistentRecursive)
        .await
        .unwrap();
    c.set_data("/n/kid", b"x", None).await.unwrap();
    let e = timeout(WAIT, rec.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeDataChanged, "/n/kid")
    );
    c.create("/n/kid/deep", b"", &open()).await.unwrap();
    let e = timeout(WAIT, rec.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeCreated, "/n/kid/deep")
    );
    c.delete("/n/kid/deep", None).await.unwrap();
    let e = timeout(WAIT, rec.changed()).await.unwrap();
    assert_eq!(
        (e.event_type, e.path.as_str()),
        (zk::EventType::NodeDeleted, "/n/kid/deep")
    );
}

#[tokio::test]
async fn a_watch_event_arrives_before_the_reply_that_shows_the_change() {
    let server = Coordd::start();
    let c = connect(&server).await;
    c.create("/order", b"0", &open()).await.unwrap();
    let (_, _, watcher) = c.get_and_watch_data("/order").await.unwrap();
    c.set_data("/order", b"1", None).await.unwrap();
    // The event was delivered before the setData reply, so it is ready now.
    let e = timeout(Duration::from_millis(1), watcher.changed())
        .await
        .expect("event already delivered");
    assert_eq!(e.event_type, zk::EventType::NodeDataChanged);
}

#[tokio::test]
async fn multi_is_all_or_nothing() {
    let server = Coordd::start();
    let c = connect(&server).await;
    c.create("/m", b"", &open()).await.unwrap();

    let mut w = c.new_multi_writer();
    w.add_create("/m/1", b"", &open()).unwrap();
    w.add_set_data("/m", b"changed", None).unwrap();
    w.add_delete("/m/missing", None).unwrap();
    w.add_create("/m/2", b"", &open()).unwrap();
    match w.commit().await {
        Err(zk::MultiWriteError::OperationFailed { index, source }) => {
            assert_eq!(index, 2);
            assert_eq!(source, zk::Error::NoNode);
        }
        other => panic!("expected the third op to fail, got {other:?}"),
    }
    assert!(
        c.check_stat("/m/1").await.unwrap().is_none(),
        "nothing of a failed multi applies"
    );
    assert_eq!(c.get_data("/m").await.unwrap().0, b"");

    let mut w = c.new_multi_writer();
    w.add_create("/m/1", b"", &open()).unwrap();
    w.add_set_data("/m", b"changed", Some(0)).unwrap();
    w.add_check_version("/m/1", 0).unwrap();
    let results = w.commit().await.unwrap();
    assert_eq!(results.len(), 3);
    assert!(matches!(&results[0], zk::MultiWriteResult::Create { path, .. } if path == "/m/1"));
    assert!(matches!(&results[1], zk::MultiWriteResult::SetData { stat } if stat.version == 1));
    assert_eq!(results[2], zk::MultiWriteResult::Check);

    let mut r = c.new_multi_reader();
    r.add_get_data("/m").unwrap();
    r.add_get_children("/m").unwrap();
    r.add_get_data("/absent").unwrap();
    let results = r.commit().await.unwrap();
    assert!(matches!(&results[0], zk::MultiReadResult::Data { data, .. } if data == b"changed"));
    assert!(
        matches!(&results[1], zk::MultiReadResult::Children { children } if children == &["1"])
    );
    assert!(matches!(&results[2], zk::MultiReadResult::Error { err } if *err == zk::Error::NoNode));
}

#[tokio::test]
async fn digest_acl_refuses_others() {
    let server = Coordd::start();
    let owner = connect(&server).await;
    owner
        .auth("digest".into(), b"agent1:secret".to_vec())
        .await
        .unwrap();
    let creator_only = zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all());
    owner
        .create("/guarded", b"mine", &creator_only)
        .await
        .unwrap();
    let (acl, _) = owner.get_acl("/guarded").await.unwrap();
    assert_eq!(acl.len(), 1);
    assert_eq!(acl[0].scheme(), "digest");
    assert!(acl[0].id().starts_with("agent1:"));
    owner
        .set_data("/guarded", b"still mine", None)
        .await
        .unwrap();

    let stranger = connect(&server).await;
    assert_eq!(
        stranger.get_data("/guarded").await.unwrap_err(),
        zk::Error::NoAuth
    );
    assert_eq!(
        stranger.set_data("/guarded", b"x", None).await.unwrap_err(),
        zk::Error::NoAuth
    );
    stranger
        .auth("digest".into(), b"agent2:other".to_vec())
        .await
        .unwrap();
    assert_eq!(
        stranger.set_data("/guarded", b"x", None).await.unwrap_err(),
        zk::Error::NoAuth
    );
    let users = stranger.list_auth_users().await.unwrap();
    assert!(
        users
            .iter()
            .any(|u| u.scheme() == "digest" && u.user() == "agent2"),
        "{users:?}"
    );
    // As in ZooKeeper, delete needs DELETE on the parent, which "/" grants to anyone.
    stranger.delete("/guarded", None).await.unwrap();

    // The auth scheme with no credentials is an InvalidACL.
    let anonymous = connect(&server).await;
    assert_eq!(
        anonymous
            .create("/y", b"", &creator_only)
            .await
            .unwrap_err(),
        zk::Error::InvalidAcl
    );
}

#[tokio::test]
async fn containers_are_removed_once_emptied() {
    let server = Coordd::start_with(&[
        "--tick-time-ms",
        "100",
        "--container-check-interval-ms",
        "50",
    ]);
    let c = connect(&server).await;
    let container = zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());
    c.create("/box", b"", &container).await.unwrap();
    let st = c.check_stat("/box").await.unwrap().unwrap();
    assert_eq!(
        st.ephemeral_owner, 0,
        "ZooKeeper shows clients 0 for a container's owner"
    );
    c.create("/box/item", b"", &open()).await.unwrap();
    c.delete("/box/item", None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.check_stat("/box").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "container not removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn answered_writes_survive_kill_9() {
    let mut server = Coordd::start();
    {
        let c = connect(&server).await;
        c.create("/durable", b"", &open()).await.unwrap();
        // Many concurrent writes share fsyncs; each answered one must survive.
        let mut tasks = Vec::new();
        for i in 0..200 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.create(
                    &format!("/durable/n{i}"),
                    format!("v{i}").as_bytes(),
                    &open(),
                )
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        c.set_data("/durable", b"last", None).await.unwrap();
    }
    server.restart();
    let c = connect(&server).await;
    let (data, stat) = c.get_data("/durable").await.unwrap();
    assert_eq!(data, b"last");
    assert_eq!(stat.num_children, 200);
    assert_eq!(c.get_data("/durable/n137").await.unwrap().0, b"v137");
    // zxids keep growing after recovery.
    let (st, _) = c.create("/after", b"", &open()).await.unwrap();
    assert!(st.czxid > stat.mzxid);
}
