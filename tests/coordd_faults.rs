//! Storage faults with a real coordd process: a disk that fills up must stop the server
//! before it acknowledges a write it could not make durable, and every write it did
//! acknowledge must be there after a restart. The ensemble counterpart fills one
//! member's disk: that member must stop, the other two keep acknowledging writes, and
//! every acknowledged write is on every member once it is back with room.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use coordd_proto::{Acl, CreateRequest, OpCode, PathRequest, PathWatchRequest, Request};
use support::coordd::{Coordd, CoorddEnsemble};
use support::raw::RawConn;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// None (with the reason printed) where mounting is not allowed.
    fn mount(at: &std::path::Path, size_mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIP: cannot mount a tmpfs (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(at.to_owned()))
    }

    fn resize(&self, size_mib: u32) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size_mib}m")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        // The temp dir around the mount point could not remove it while mounted.
        let _ = std::fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

#[test]
fn a_full_disk_stops_the_server_and_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the first 64 MiB log segment and a little more, not for a second one.
    let Some(disk) = Tmpfs::mount(&dir.path().join("data"), 80) else {
        return;
    };
    let mut server = Coordd::start_in(dir, &["--tick-time-ms", "100"]);
    let mut c = RawConn::new_session(server.addr, 2000);
    let value = vec![7u8; 900 * 1024];
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..200 {
        assert!(Instant::now() < deadline, "the disk never filled up");
        let path = format!("/big{i}");
        let req = Request::Create {
            op: OpCode::Create,
            req: CreateRequest {
                path: path.clone(),
                data: value.clone(),
                acl: Acl::open_unsafe(),
                flags: 0,
            },
            ttl: 0,
        };
        if c.try_send(&req).is_err() {
            break;
        }
        match c.recv() {
            Some(f) if f.header.err == 0 => acknowledged.push(path),
            Some(f) => panic!("unexpected error {} for {path}", f.header.err),
            None => break, // the server went away: nothing more is acknowledged
        }
    }
    assert!(
        acknowledged.len() > 10,
        "only {} writes before the disk was full",
        acknowledged.len()
    );
    assert!(acknowledged.len() < 200, "the disk never filled up");

    // The server stops on its own, with a failure status and a reason in its log.
    let stopped_by = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = server.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < stopped_by,
            "coordd kept running after its log failed"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success(), "exit status {status}");
    let log = server.log();
    assert!(log.contains("write-ahead log failed"), "{log}");
    eprintln!(
        "acknowledged {} writes; coordd stopped with {status}: {}",
        acknowledged.len(),
        log.lines()
            .find(|l| l.contains("write-ahead log failed"))
            .unwrap_or("")
    );

    // With room again, a restart recovers every acknowledged write.
    disk.resize(400);
    server.restart();
    let mut c = RawConn::new_session(server.addr, 2000);
    for path in &acknowledged {
        let (r, _) = c.call(&Request::Exists(PathWatchRequest {
            path: path.clone(),
            watch: false,
        }));
        assert_eq!(r.header.err, 0, "acknowledged {path} was lost");
    }
    drop(server);
}

fn create_big(path: &str, value: &[u8]) -> Request {
    Request::Create {
        op: OpCode::Create,
        req: CreateRequest {
            path: path.to_owned(),
            data: value.to_vec(),
            acl: Acl::open_unsafe(),
            flags: 0,
        },
        ttl: 0,
    }
}

/// A new session on the first of `members` that takes one, within `timeout`.
fn session_on_any(e: &CoorddEnsemble, members: &[usize], timeout: Duration) -> RawConn {
    let deadline = Instant::now() + timeout;
    loop {
        for &m in members {
            if let Some(c) = RawConn::try_new_session(e.members[m].addr, 2000) {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "no member took a session");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ensemble counterpart: the disk of member 1 (of 3) fills up. It stops, with a failure
/// status and the reason in its log, instead of living on without a log; the other two
/// keep acknowledging writes; restarted with room, it catches up, and every
/// acknowledged write is on every member.
#[test]
fn a_full_disk_stops_its_member_and_the_ensemble_loses_no_acknowledged_write() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let Some(disk) = Tmpfs::mount(&dirs[0].path().join("data"), 80) else {
        return;
    };
    let mut e = CoorddEnsemble::start_in_dirs(dirs, 100, &[]);
    e.wait_leader(&[0, 1, 2], Duration::from_secs(30));
    let value = vec![7u8; 900 * 1024];
    let mut acknowledged = Vec::new();
    let mut after_stop = 0;
    // The writer talks to the other members, and moves on when its connection goes (a
    // write then has an unknown outcome: not counted as acknowledged).
    let mut c = session_on_any(&e, &[1, 2], Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut i = 0;
    while after_stop < 5 {
        assert!(
            Instant::now() < deadline,
            "member 1 did not stop in time ({} writes acknowledged); logs:{}",
            acknowledged.len(),
            e.log_tails(30)
        );
        // 80 MiB hold fewer than 90 of these writes.
        assert!(
            i < 150,
            "member 1 never stopped; its log:{}",
            e.log_tails(15)
        );
        let path = format!("/big{i}");
        i += 1;
        let stopped = e.members[0].try_wait().is_some();
        let ok = c.try_send(&create_big(&path, &value)).is_ok()
            && match c.recv() {
                Some(f) if f.header.err == 0 => true,
                Some(f) => panic!("unexpected error {} for {path}", f.header.err),
                None => false,
            };
        if ok {
            acknowledged.push(path);
            if stopped {
                after_stop += 1;
            }
        } else {
            c = session_on_any(&e, &[1, 2], Duration::from_secs(10));
        }
    }
    let status = e.members[0].try_wait().expect("stopped");
    assert!(!status.success(), "exit status {status}");
    let log = e.members[0].log();
    assert!(
        log.contains("the Raft member stopped on a fatal error"),
        "no reason in member 1's log:\n{log}"
    );
    eprintln!(
        "acknowledged {} writes; member 1 stopped with {status}: {}",
        acknowledged.len(),
        log.lines()
            .rev()
            .find(|l| l.contains("ERROR") || l.contains("coordd:"))
            .unwrap_or("")
    );

    // With room again, member 1 restarts and catches up.
    disk.resize(400);
    e.members[0].restart();
    e.wait_leader(&[0, 1, 2], Duration::from_secs(30));
    for m in 0..3 {
        let mut c = session_on_any(&e, &[m], Duration::from_secs(10));
        let (r, _) = c.call(&Request::Sync(PathRequest { path: "/".into() }));
        assert_eq!(r.header.err, 0, "sync on member {}", m + 1);
        for path in &acknowledged {
            let (r, _) = c.call(&Request::Exists(PathWatchRequest {
                path: path.clone(),
                watch: false,
            }));
            assert_eq!(
                r.header.err,
                0,
                "acknowledged {path} missing on member {}",
                m + 1
            );
        }
    }
    drop(e);
}
