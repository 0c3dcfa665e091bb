//! ZooKeeper's four-letter words on the client port: a connection whose first four
//! bytes are one of these gets a text answer and is closed.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use tokio::sync::oneshot;

use super::conn::ConnCtx;
use super::core::{CoreMsg, CoreStats};

/// The version string `srvr` reports; clients and tools parse its first token.
pub const VERSION: &str = concat!("3.8.0-coordd-", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Ruok,
    Srvr,
    Stat,
    Mntr,
    Conf,
    Isro,
    Cons,
    Envi,
}

impl Command {
    pub fn parse(word: &[u8; 4]) -> Option<Command> {
        Some(match word {
            b"ruok" => Command::Ruok,
            b"srvr" => Command::Srvr,
            b"stat" => Command::Stat,
            b"mntr" => Command::Mntr,
            b"conf" => Command::Conf,
            b"isro" => Command::Isro,
            b"cons" => Command::Cons,
            b"envi" => Command::Envi,
            _ => return None,
        })
    }
}

async fn core_stats(ctx: &ConnCtx) -> CoreStats {
    let (tx, rx) = oneshot::channel();
    if ctx.core.send(CoreMsg::Stats { reply: tx }).await.is_err() {
        return CoreStats::default();
    }
    rx.await.unwrap_or_default()
}

fn latency_line(ctx: &ConnCtx) -> (f64, f64, f64) {
    let m = &ctx.metrics;
    let count = m.latency_count.load(Ordering::Relaxed);
    let sum = m.latency_sum_us.load(Ordering::Relaxed);
    let avg_ms = if count == 0 {
        0.0
    } else {
        sum as f64 / count as f64 / 1000.0
    };
    (
        m.latency_min_us.load(Ordering::Relaxed) as f64 / 1000.0,
        avg_ms,
        m.latency_max_us.load(Ordering::Relaxed) as f64 / 1000.0,
    )
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

/// `mntr`'s rows: name, value (a number, but for `zk_version` and `zk_server_state`).
/// The Prometheus endpoint ([`super::metrics`]) serves the same.
pub(super) async fn mntr_rows(ctx: &ConnCtx) -> Vec<(&'static str, String)> {
    let m = &ctx.metrics;
    let s = core_stats(ctx).await;
    let (min, avg, max) = latency_line(ctx);
    let rows: Vec<(&str, String)> = vec![
        ("zk_version", VERSION.to_string()),
        ("zk_server_state", s.mode.clone()),
        ("zk_avg_latency", format!("{avg:.4}")),
        ("zk_max_latency", format!("{max:.3}")),
        ("zk_min_latency", format!("{min:.3}")),
        (
            "zk_packets_received",
            m.packets_received.load(Ordering::Relaxed).to_string(),
        ),
        (
            "zk_packets_sent",
            m.packets_sent.load(Ordering::Relaxed).to_string(),
        ),
        ("zk_num_alive_connections", s.clients.len().to_string()),
        (
            "zk_outstanding_requests",
            m.outstanding_requests.load(Ordering::Relaxed).to_string(),
        ),
        ("zk_znode_count", s.state.znode_count.to_string()),
        ("zk_watch_count", s.state.watch_count.to_string()),
        ("zk_ephemerals_count", s.state.ephemerals_count.to_string()),
        (
            "zk_approximate_data_size",
            s.state.approximate_data_size.to_string(),
        ),
        ("zk_global_sessions", s.sessions_live.to_string()),
        ("zk_last_zxid", s.last_zxid.to_string()),
        ("zk_uptime", ctx.started.elapsed().as_millis().to_string()),
        ("zk_open_file_descriptor_count", open_fds().to_string()),
        (
            "zk_limit_hits",
            m.limit_hits.load(Ordering::Relaxed).to_string(),
        ),
        ("zk_log_entries_inflight", s.inflight_entries.to_string()),
        ("zk_fsync_count", s.log_batches.to_string()),
        ("zk_fsync_entries", s.log_entries.to_string()),
        (
            "zk_fsync_time_avg_us",
            (s.log_append_us_total / s.log_batches.max(1)).to_string(),
        ),
        ("zk_fsync_time_max_us", s.log_append_us_max.to_string()),
    ];
    let mut rows = rows;
    if let Some(r) = &s.raft {
        let opt = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
        rows.extend([
            ("zk_raft_term", r.term.to_string()),
            ("zk_raft_leader", opt(r.leader)),
            ("zk_raft_quorum_ok", u8::from(r.quorum_ok).to_string()),
            // While the quorum is out of sight the member holds what it would
            // send its clients (1 here), and closes them 100 ms later unless the
            // quorum is back; the count of such holds tells false alarms apart.
            (
                "zk_quorum_hold",
                u8::from(s.frames_withheld.is_some()).to_string(),
            ),
            (
                "zk_frames_withheld",
                s.frames_withheld.unwrap_or(0).to_string(),
            ),
            ("zk_quorum_holds", s.quorum_holds.to_string()),
            ("zk_raft_last_log_index", opt(r.last_log_index)),
            ("zk_raft_applied_index", opt(r.applied_index)),
            ("zk_raft_snapshot_index", opt(r.snapshot_index)),
            ("zk_raft_purged_index", opt(r.purged_index)),
            ("zk_raft_voters", r.membership.voters.len().to_string()),
            // Elections that produced a leader, as this member saw them, and
            // the ones it won.
            (
                "zk_raft_leader_changes",
                r.counters.leader_changes.to_string(),
            ),
            ("zk_raft_leaderships", r.counters.leaderships.to_string()),
            // RaftCore restarts in-process after openraft's replication-channel
            // race (coordd-raft's `Member`); each also closed this member's clients.
            ("zk_raft_restarts", r.counters.restarts.to_string()),
            // Log entries read back from disk, older than the ~1 MiB the log keeps
            // decoded (coordd-raft `log_cache_bytes_max`): rising fast in steady
            // state means followers or the apply run that far behind.
            (
                "zk_raft_log_entries_read_back",
                r.counters.log_entries_read_back.to_string(),
            ),
            // Raft commit latency of this member's proposals (as leader): from
            // the propose to the commit on a quorum.
            ("zk_raft_commit_count", r.counters.commits.to_string()),
            (
                "zk_raft_commit_latency_avg_us",
                (r.counters.commit_us_total / r.counters.commits.max(1)).to_string(),
            ),
            (
                "zk_raft_commit_latency_max_us",
                r.counters.commit_us_max.to_string(),
            ),
        ]);
    }
    rows
}

/// One line per connection, as ZooKeeper's `cons` and `stat` list them, then a blank
/// line.
fn write_clients(out: &mut String, s: &CoreStats) {
    for c in &s.clients {
        let _ = writeln!(
            out,
            " /{}[1](queued={},recved={},sent={},sid=0x{:x})",
            c.peer, c.queued_bytes, c.received, c.sent, c.session_id
        );
    }
    out.push('\n');
}

/// The text answer to `cmd`.
pub async fn answer(cmd: Command, ctx: &ConnCtx) -> String {
    let m = &ctx.metrics;
    let mut out = String::new();
    match cmd {
        Command::Ruok => out.push_str("imok"),
        Command::Isro => out.push_str("rw"),
        Command::Srvr | Command::Stat => {
            let s = core_stats(ctx).await;
            let (min, avg, max) = latency_line(ctx);
            let _ = writeln!(out, "Zookeeper version: {VERSION}, built by coordd");
            if cmd == Command::Stat {
                out.push_str("Clients:\n");
                write_clients(&mut out, &s);
            }
            let _ = writeln!(out, "Latency min/avg/max: {min:.3}/{avg:.4}/{max:.3}");
            let _ = writeln!(
                out,
                "Received: {}",
                m.packets_received.load(Ordering::Relaxed)
            );
            let _ = writeln!(out, "Sent: {}", m.packets_sent.load(Ordering::Relaxed));
            let _ = writeln!(out, "Connections: {}", s.clients.len());
            let _ = writeln!(
                out,
                "Outstanding: {}",
                m.outstanding_requests.load(Ordering::Relaxed)
            );
            let _ = writeln!(out, "Zxid: 0x{:x}", s.last_zxid);
            let _ = writeln!(out, "Mode: {}", s.mode);
            let _ = writeln!(out, "Node count: {}", s.state.znode_count);
        }
        Command::Cons => {
            let s = core_stats(ctx).await;
            write_clients(&mut out, &s);
        }
        Command::Mntr => {
            for (k, v) in mntr_rows(ctx).await {
                let _ = writeln!(out, "{k}\t{v}");
            }
        }
        Command::Conf => {
            let c = &ctx.config;
            let _ = writeln!(out, "clientPort={}", c.client_addr.port());
            let _ = writeln!(out, "clientPortAddress={}", c.client_addr.ip());
            if let Some(s) = &c.secure_client {
                // ZooKeeper's names for the TLS port.
                let _ = writeln!(out, "secureClientPort={}", s.addr.port());
                let _ = writeln!(out, "secureClientPortAddress={}", s.addr.ip());
            }
            let _ = writeln!(out, "dataDir={}", c.data_dir.display());
            let _ = writeln!(out, "dataLogDir={}", c.data_dir.display());
            let _ = writeln!(out, "tickTime={}", c.tick_time_ms);
            let _ = writeln!(out, "maxClientCnxns={}", c.connections_per_ip_max);
            let _ = writeln!(out, "minSessionTimeout={}", c.min_session_timeout_ms);
            let _ = writeln!(out, "maxSessionTimeout={}", c.max_session_timeout_ms);
            let _ = writeln!(out, "serverId={}", c.server_id);
            let _ = writeln!(out, "forceSync={}", if c.fsync { "yes" } else { "no" });
            let _ = writeln!(out, "extendedTypesEnabled={}", c.ttl_enabled);
            let _ = writeln!(out, "jute.maxbuffer={}", c.frame_bytes_max);
            if let Some(m) = c.metrics_addr {
                // ZooKeeper's Prometheus provider's names.
                let _ = writeln!(out, "metricsProvider.httpHost={}", m.ip());
                let _ = writeln!(out, "metricsProvider.httpPort={}", m.port());
            }
        }
        Command::Envi => {
            out.push_str("Environment:\n");
            let _ = writeln!(out, "zookeeper.version={VERSION}");
            let _ = writeln!(out, "os.name={}", std::env::consts::OS);
            let _ = writeln!(out, "os.arch={}", std::env::consts::ARCH);
            let _ = writeln!(
                out,
                "user.dir={}",
                std::env::current_dir()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default()
            );
        }
    }
    out
}
