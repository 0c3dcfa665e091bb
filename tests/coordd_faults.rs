//! Storage faults with a real coordd process: a disk that fills up must stop the server
//! before it acknowledges a write it could not make durable, and every write it did
//! acknowledge must be there after a restart.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use coordd_proto::{Acl, CreateRequest, OpCode, PathWatchRequest, Request};
use support::coordd::Coordd;
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
