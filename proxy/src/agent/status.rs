//! `switchyard status`: the cluster as coordd holds it: the master and its epoch (the
//! `leader` czxid), every member with role, state, timeline, positions and lag, the
//! synchronous standbys (`sync`, in synchronous mode) and the last planned switchover.
//! Records that do not decode are reported, not skipped silently.

use coordd_client::{Client, ClientConfig, ErrorCode};
use serde_json::json;

use crate::election::Epoch;
use crate::namespace::Namespace;
use crate::records::{
    self, ClusterConfig, LeaderRecord, MemberRecord, Role, SwitchoverRequest, SyncRecord,
};

/// Why `status` could not read the cluster.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("coordd: {0}")]
    Coord(#[from] coordd_client::Error),
    #[error("no cluster {cluster:?} in coordd (nothing at {path}; wrong --cluster or --root?)")]
    NoCluster { cluster: String, path: String },
}

/// What `status` reads.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The leader record and its epoch (czxid).
    pub leader: Option<(LeaderRecord, Epoch)>,
    pub members: Vec<MemberRecord>,
    /// `config` (None: missing or unreadable).
    pub config: Option<ClusterConfig>,
    /// `sync`, read in synchronous mode only.
    pub sync: Option<SyncRecord>,
    /// The last planned switchover.
    pub switchover: Option<SwitchoverRequest>,
    /// Records that exist but do not decode: (path, error).
    pub unreadable: Vec<(String, String)>,
}

/// Reads the cluster's records through a session of its own (`tls`: to coordd's TLS
/// ports; None: plain TCP).
pub async fn read_status(
    coord: Vec<String>,
    tls: Option<coordd_client::TlsConfig>,
    ns: &Namespace,
) -> Result<ClusterStatus, StatusError> {
    let mut cfg =
        ClientConfig::new(coord).with_session_timeout_ms(super::config::SESSION_TIMEOUT_MS_DEFAULT);
    if let Some(tls) = tls {
        cfg = cfg.with_tls(tls);
    }
    let (client, _events) = Client::connect(cfg).await?;
    let res = read_with(&client, ns).await;
    let _ = client.close().await;
    res
}

/// Reads and decodes `path`: Ok(None) when it does not exist; a record that does not
/// decode is noted in `unreadable`.
async fn read_record<T: records::Record>(
    client: &Client,
    path: &str,
    unreadable: &mut Vec<(String, String)>,
) -> Result<Option<(T, coordd_client::Stat)>, coordd_client::Error> {
    match client.get_data(path, false).await {
        Ok((data, stat)) => match records::decode::<T>(&data) {
            Ok(r) => Ok(Some((r, stat))),
            Err(e) => {
                unreadable.push((path.to_owned(), e.to_string()));
                Ok(None)
            }
        },
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Like [`read_status`] on a client the caller keeps (e.g. to poll the cluster).
pub async fn read_with(client: &Client, ns: &Namespace) -> Result<ClusterStatus, StatusError> {
    if client.exists(ns.cluster(), false).await?.is_none() {
        return Err(StatusError::NoCluster {
            cluster: ns.cluster_name().to_owned(),
            path: ns.cluster().to_owned(),
        });
    }
    let mut unreadable = Vec::new();
    let leader = read_record::<LeaderRecord>(client, &ns.leader(), &mut unreadable)
        .await?
        .map(|(l, st)| (l, Epoch(st.czxid)));
    let mut members = Vec::new();
    let children = match client.get_children(&ns.members(), false).await {
        Ok(c) => c,
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for child in children {
        let Ok(path) = ns.member_checked(&child) else {
            unreadable.push((format!("{}/{child}", ns.members()), "bad node name".into()));
            continue;
        };
        if let Some((m, _)) = read_record::<MemberRecord>(client, &path, &mut unreadable).await? {
            members.push(m);
        }
    }
    members.sort_by(|a, b| a.node.cmp(&b.node));
    let config = read_record::<ClusterConfig>(client, &ns.config(), &mut unreadable)
        .await?
        .map(|(c, _)| c);
    let sync = if config.as_ref().is_some_and(|c| c.synchronous) {
        read_record::<SyncRecord>(client, &ns.sync(), &mut unreadable)
            .await?
            .map(|(s, _)| s)
    } else {
        None
    };
    let switchover = read_record::<SwitchoverRequest>(client, &ns.switchover(), &mut unreadable)
        .await?
        .map(|(s, _)| s);
    Ok(ClusterStatus {
        cluster: ns.cluster_name().to_owned(),
        leader,
        members,
        config,
        sync,
        switchover,
        unreadable,
    })
}

impl ClusterStatus {
    /// The master's flush position (its member record), for lag against it.
    fn master_lsn(&self) -> Option<records::Lsn> {
        let (l, _) = self.leader.as_ref()?;
        self.members
            .iter()
            .find(|m| m.node == l.node && m.role == Role::Primary)
            .and_then(|m| m.wal_position())
    }

    /// Bytes a member's replay is behind the master (None when either is unknown).
    pub fn lag_bytes(&self, m: &MemberRecord) -> Option<u64> {
        if m.role == Role::Primary {
            return Some(0);
        }
        Some(self.master_lsn()?.bytes_since(m.replay_lsn?))
    }

    pub fn to_json(&self) -> serde_json::Value {
        let master = self.leader.as_ref().map(|(l, e)| {
            json!({"node": l.node, "host": l.host, "port": l.port, "state": l.state,
                   "since_ms": l.since_ms, "epoch": e.0})
        });
        let members: Vec<_> = self
            .members
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                v["lag_bytes"] = json!(self.lag_bytes(m).or(m.lag_bytes));
                v
            })
            .collect();
        let replicas: Vec<_> = self
            .members
            .iter()
            .filter(|m| m.role == Role::Replica)
            .map(|m| m.node.clone())
            .collect();
        let synchronous = self.config.as_ref().map(|c| c.synchronous);
        let sync_standbys = self.sync.as_ref().map(|s| s.standbys.clone());
        let unreadable: Vec<_> = self
            .unreadable
            .iter()
            .map(|(path, error)| json!({"path": path, "error": error}))
            .collect();
        json!({"cluster": self.cluster, "master": master, "replicas": replicas,
               "members": members, "synchronous": synchronous,
               "sync_standbys": sync_standbys, "switchover": self.switchover,
               "unreadable": unreadable})
    }

    fn is_sync(&self, node: &str) -> bool {
        self.sync.as_ref().is_some_and(|s| s.contains(node))
    }

    pub fn to_table(&self) -> String {
        let mut out = format!("cluster {}\n", self.cluster);
        match &self.leader {
            Some((l, e)) => out.push_str(&format!(
                "master  {} ({}:{}) state {} epoch {e}\n",
                l.node,
                l.host,
                l.port,
                serde_json::to_value(l.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )),
            None => out.push_str("master  none\n"),
        }
        match (&self.config, &self.sync) {
            (Some(c), Some(s)) if c.synchronous => out.push_str(&format!(
                "mode    synchronous, standbys: {}\n",
                if s.standbys.is_empty() {
                    "none yet".to_owned()
                } else {
                    s.standbys.join(", ")
                }
            )),
            (Some(c), None) if c.synchronous => {
                out.push_str("mode    synchronous, standbys: none yet\n")
            }
            (Some(_), _) => out.push_str("mode    asynchronous\n"),
            (None, _) => {}
        }
        if let Some(w) = &self.switchover {
            out.push_str(&format!(
                "switchover {} -> {}: {}{}\n",
                w.from,
                w.to.as_deref().unwrap_or("any"),
                serde_json::to_value(w.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                w.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ));
        }
        out.push_str(&format!(
            "{:<20} {:<8} {:<9} {:<4} {:<22} {:>4} {:>14} {:>14} {:>12}\n",
            "NODE", "ROLE", "STATE", "SYNC", "ADDRESS", "TLI", "RECEIVE", "REPLAY", "LAG"
        ));
        for m in &self.members {
            let word = |v: serde_json::Value| v.as_str().unwrap_or("?").to_owned();
            let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<20} {:<8} {:<9} {:<4} {:<22} {:>4} {:>14} {:>14} {:>12}\n",
                m.node,
                word(serde_json::to_value(m.role).unwrap_or_default()),
                word(serde_json::to_value(m.state).unwrap_or_default()),
                if self.is_sync(&m.node) { "yes" } else { "-" },
                format!("{}:{}", m.host, m.port),
                opt(m.timeline.map(|t| t.to_string())),
                opt(m.receive_lsn.map(|l| l.to_string())),
                opt(m.replay_lsn.map(|l| l.to_string())),
                opt(self.lag_bytes(m).map(|b| b.to_string())),
            ));
        }
        for (path, error) in &self.unreadable {
            out.push_str(&format!("unreadable {path}: {error}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{LeaderState, Lsn, MemberState};

    fn member(node: &str, role: Role, recv: u64, replay: u64) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            role,
            state: MemberState::Running,
            timeline: Some(1),
            receive_lsn: Some(Lsn(recv)),
            replay_lsn: Some(Lsn(replay)),
            lag_bytes: None,
            updated_ms: 0,
        }
    }

    #[test]
    fn lag_json_and_table() {
        let st = ClusterStatus {
            cluster: "main".into(),
            leader: Some((
                LeaderRecord {
                    node: "a".into(),
                    host: "127.0.0.1".into(),
                    port: 5432,
                    state: LeaderState::Primary,
                    since_ms: 1,
                },
                Epoch(0x2d),
            )),
            members: vec![
                member("a", Role::Primary, 0x500, 0x500),
                member("b", Role::Replica, 0x500, 0x400),
            ],
            config: Some(ClusterConfig {
                synchronous: true,
                ..ClusterConfig::default()
            }),
            sync: Some(SyncRecord {
                leader: Some("a".into()),
                standbys: vec!["b".into()],
            }),
            switchover: Some(SwitchoverRequest {
                from: "c".into(),
                to: Some("a".into()),
                status: records::SwitchoverStatus::Done,
                reason: None,
            }),
            unreadable: vec![("/x/members/z".into(), "bad".into())],
        };
        assert_eq!(st.lag_bytes(&st.members[0]), Some(0));
        assert_eq!(st.lag_bytes(&st.members[1]), Some(0x100));
        let v = st.to_json();
        assert_eq!(v["master"]["node"], "a");
        assert_eq!(v["master"]["epoch"], 0x2d);
        assert_eq!(v["replicas"], serde_json::json!(["b"]));
        assert_eq!(v["members"][1]["lag_bytes"], 0x100);
        let t = st.to_table();
        assert!(
            t.contains("master  a (127.0.0.1:5432) state primary epoch 0x2d"),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with('b') && l.contains(" yes ") && l.ends_with("256")),
            "{t}"
        );
        assert!(t.contains("mode    synchronous, standbys: b"), "{t}");
        assert!(t.contains("switchover c -> a: done"), "{t}");
        assert!(t.contains("unreadable /x/members/z: bad"), "{t}");
        assert_eq!(v["synchronous"], true);
        assert_eq!(v["sync_standbys"], serde_json::json!(["b"]));
        assert_eq!(v["switchover"]["status"], "done");
        assert_eq!(v["unreadable"][0]["path"], "/x/members/z");

        let empty = ClusterStatus {
            cluster: "main".into(),
            leader: None,
            members: vec![member("b", Role::Replica, 1, 1)],
            config: None,
            sync: None,
            switchover: None,
            unreadable: Vec::new(),
        };
        assert!(empty.to_table().contains("master  none"));
        assert_eq!(empty.lag_bytes(&empty.members[0]), None);
        assert!(empty.to_json()["master"].is_null());
    }
}
