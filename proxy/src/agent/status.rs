//! `switchyard status`: the cluster as coordd holds it (leader, epoch, members).

use coordd_client::{Client, ClientConfig, ErrorCode};
use serde_json::json;

use crate::election::Epoch;
use crate::namespace::Namespace;
use crate::records::{self, LeaderRecord, MemberRecord, Role};

/// What `status` reads.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub cluster: String,
    /// The leader record and its epoch (czxid).
    pub leader: Option<(LeaderRecord, Epoch)>,
    pub members: Vec<MemberRecord>,
}

pub async fn read_status(
    coord: Vec<String>,
    ns: &Namespace,
) -> Result<ClusterStatus, coordd_client::Error> {
    let (client, _events) =
        Client::connect(ClientConfig::new(coord).with_session_timeout_ms(6_000)).await?;
    let res = read_with(&client, ns).await;
    let _ = client.close().await;
    res
}

async fn read_with(client: &Client, ns: &Namespace) -> Result<ClusterStatus, coordd_client::Error> {
    let leader = match client.get_data(&ns.leader(), false).await {
        Ok((data, stat)) => records::decode::<LeaderRecord>(&data)
            .ok()
            .map(|l| (l, Epoch(stat.czxid))),
        Err(e) if e.code() == Some(ErrorCode::NoNode) => None,
        Err(e) => return Err(e),
    };
    let mut members = Vec::new();
    let children = match client.get_children(&ns.members(), false).await {
        Ok(c) => c,
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Vec::new(),
        Err(e) => return Err(e),
    };
    for child in children {
        let Ok(path) = ns.member_checked(&child) else {
            continue;
        };
        match client.get_data(&path, false).await {
            Ok((data, _)) => {
                if let Ok(m) = records::decode::<MemberRecord>(&data) {
                    members.push(m);
                }
            }
            Err(e) if e.code() == Some(ErrorCode::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    members.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(ClusterStatus {
        cluster: ns.cluster_name().to_owned(),
        leader,
        members,
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
        json!({"cluster": self.cluster, "master": master, "replicas": replicas, "members": members})
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
        out.push_str(&format!(
            "{:<20} {:<8} {:<9} {:<22} {:>4} {:>14} {:>14} {:>12}\n",
            "NODE", "ROLE", "STATE", "ADDRESS", "TLI", "RECEIVE", "REPLAY", "LAG"
        ));
        for m in &self.members {
            let word = |v: serde_json::Value| v.as_str().unwrap_or("?").to_owned();
            let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<20} {:<8} {:<9} {:<22} {:>4} {:>14} {:>14} {:>12}\n",
                m.node,
                word(serde_json::to_value(m.role).unwrap_or_default()),
                word(serde_json::to_value(m.state).unwrap_or_default()),
                format!("{}:{}", m.host, m.port),
                opt(m.timeline.map(|t| t.to_string())),
                opt(m.receive_lsn.map(|l| l.to_string())),
                opt(m.replay_lsn.map(|l| l.to_string())),
                opt(self.lag_bytes(m).map(|b| b.to_string())),
            ));
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
            t.lines().any(|l| l.starts_with('b') && l.ends_with("256")),
            "{t}"
        );

        let empty = ClusterStatus {
            cluster: "main".into(),
            leader: None,
            members: vec![member("b", Role::Replica, 1, 1)],
        };
        assert!(empty.to_table().contains("master  none"));
        assert_eq!(empty.lag_bytes(&empty.members[0]), None);
        assert!(empty.to_json()["master"].is_null());
    }
}
