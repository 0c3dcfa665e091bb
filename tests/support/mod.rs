#![allow(dead_code)]
pub mod agent;
pub mod coordd;
pub mod nemesis;
pub mod ports;
pub mod postgres;
pub mod proxy;
pub mod raw;
pub mod router;
pub mod target;
pub mod tls;
pub mod zookeeper;

/// Whether the servers this process starts die with the thread that started them
/// (see [`die_with_starter`]).
static DIE_WITH_STARTER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, the coordd and ZooKeeper servers this process starts get SIGKILL when the
/// thread that started them ends (PR_SET_PDEATHSIG), also when this process is killed
/// with SIGKILL or Ctrl-C, which run no destructor. For a bench, whose main thread starts
/// every server and lives for the whole run: a killed bench then leaves no server behind
/// to skew the next run. Not for tests: the signal follows the starting *thread*, and a
/// test may restart a server from a helper thread that ends before the test does.
pub fn servers_die_with_their_starter() {
    DIE_WITH_STARTER.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Makes `cmd`'s process die with the calling thread, if [`servers_die_with_their_starter`]
/// was called.
pub fn die_with_starter(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    if !DIE_WITH_STARTER.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    // SAFETY: getpid, getppid, prctl and _exit are async-signal-safe; nothing else runs
    // between fork and exec.
    let starter_pid = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The starter died between fork and prctl: do not outlive it.
            if libc::getppid() != starter_pid {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// zookeeper-client's connector, after making rustls's process-wide default provider
/// unambiguous. zookeeper-client builds its rustls configs (even for plain connections)
/// from that default; our crates name ring explicitly and zookeeper-client brings
/// rustls's default aws-lc-rs, so with both in the graph and none installed, every
/// zookeeper-client connect would panic.
pub fn zk_connector() -> zookeeper_client::Connector {
    coordd_tls::install_process_default_provider();
    zookeeper_client::Client::connector()
}
