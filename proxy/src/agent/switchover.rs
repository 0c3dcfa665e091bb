//! `switchyard switchover`: asks the master to hand over to a replica (DESIGN.md
//! section 3, `switchover`) and waits for the outcome.
//!
//! The command checks what it can see in coordd (a master exists and is `from` when
//! given; `to` is a live running replica), writes `{from, to, status: pending}` and
//! waits until `leader` names `to` in state primary (done), the master marks the
//! request failed (its reason is printed), or the wait times out. The master's agent
//! does the rest (see `node.rs`, planned switchover).

use std::time::{Duration, Instant};

use coordd_client::{Client, ClientConfig, CreateMode, ErrorCode};
use coordd_proto::perms;

use crate::election::Epoch;
use crate::namespace::Namespace;
use crate::records::{
    self, LeaderRecord, LeaderState, MemberRecord, MemberState, Role, SwitchoverRequest,
    SwitchoverStatus,
};

/// Default of `switchyard switchover --timeout-ms`.
pub const SWITCHOVER_WAIT_MS_DEFAULT: u64 = 30_000;
/// How often the command re-reads `leader` and `switchover` while it waits.
const POLL: Duration = Duration::from_millis(50);

/// Why a switchover was not done.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    #[error("coordd: {0}")]
    Coord(#[from] coordd_client::Error),
    /// Refused before anything was written.
    #[error("{0}")]
    Refused(String),
    /// The master marked the request failed.
    #[error("the master refused or abandoned the switchover: {0}")]
    Failed(String),
    #[error(
        "no outcome within {0:?}: the request stays in coordd; `switchyard status` shows \
         the master"
    )]
    Timeout(Duration),
}

/// What a done switchover reports.
#[derive(Debug, Clone)]
pub struct SwitchoverDone {
    pub from: String,
    pub to: String,
    /// The new master's epoch (its `leader` czxid).
    pub epoch: Epoch,
    /// From writing the request to seeing `to` as primary.
    pub elapsed: Duration,
}

/// Runs the switchover from `from` (None: whoever is master) to `to`, waiting up to
/// `wait` for the outcome.
///
/// `coord_auth`: the cluster's shared digest credentials (agent.toml's `coord_auth`),
/// needed when the agents set them (the `switchover` record is writable with them only).
/// `tls`: to coordd's TLS ports (None: plain TCP).
pub async fn switchover(
    coord: Vec<String>,
    tls: Option<coordd_client::TlsConfig>,
    coord_auth: Option<&str>,
    ns: &Namespace,
    from: Option<&str>,
    to: &str,
    wait: Duration,
) -> Result<SwitchoverDone, SwitchoverError> {
    let mut cfg =
        ClientConfig::new(coord).with_session_timeout_ms(super::config::SESSION_TIMEOUT_MS_DEFAULT);
    if let Some(tls) = tls {
        cfg = cfg.with_tls(tls);
    }
    if let Some(auth) = coord_auth {
        cfg = cfg.with_auth("digest", auth.as_bytes());
    }
    let (client, _events) = Client::connect(cfg).await?;
    let res = run(&client, ns, coord_auth, from, to, wait).await;
    let _ = client.close().await;
    res
}

async fn read<T: records::Record>(
    client: &Client,
    path: &str,
) -> Result<Option<(T, coordd_client::Stat)>, SwitchoverError> {
    match client.get_data(path, false).await {
        Ok((data, stat)) => Ok(records::decode::<T>(&data).ok().map(|r| (r, stat))),
        Err(e) if e.code() == Some(ErrorCode::NoNode) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn run(
    client: &Client,
    ns: &Namespace,
    coord_auth: Option<&str>,
    from: Option<&str>,
    to: &str,
    wait: Duration,
) -> Result<SwitchoverDone, SwitchoverError> {
    let refuse = |s: String| Err(SwitchoverError::Refused(s));
    let Ok(to_path) = ns.member_checked(to) else {
        return refuse(format!("--to {to:?} is not a valid node name"));
    };
    if let Some(f) = from {
        if crate::namespace::validate_node_name(f).is_err() {
            return refuse(format!("--from {f:?} is not a valid node name"));
        }
    }
    let Some((leader, leader_stat)) = read::<LeaderRecord>(client, &ns.leader()).await? else {
        return refuse(format!(
            "cluster {} has no master now (no `leader`)",
            ns.cluster_name()
        ));
    };
    if leader.state != LeaderState::Primary {
        return refuse(format!(
            "the master {} is still being promoted; try again",
            leader.node
        ));
    }
    if let Some(f) = from {
        if f != leader.node {
            return refuse(format!("--from {f}: the master is {}", leader.node));
        }
    }
    if leader.node == to {
        return refuse(format!("{to} is already the master"));
    }
    match read::<MemberRecord>(client, &to_path).await? {
        Some((m, _)) if m.role == Role::Replica && m.state == MemberState::Running => {}
        Some((m, _)) => {
            return refuse(format!(
                "{to} is not a running replica (role {:?}, state {:?})",
                m.role, m.state
            ))
        }
        None => {
            return refuse(format!(
                "{to} is not a live member of {}",
                ns.cluster_name()
            ))
        }
    }
    let req = SwitchoverRequest {
        from: leader.node.clone(),
        to: Some(to.to_owned()),
        status: SwitchoverStatus::Pending,
        reason: None,
    };
    let data = records::encode(&req);
    let started = Instant::now();
    match client.set_data(&ns.switchover(), &data, None).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::NoNode) => {
            let acl = super::acl::shared(coord_auth, perms::READ | perms::WRITE);
            match client
                .create(&ns.switchover(), &data, &acl, CreateMode::Persistent)
                .await
            {
                Ok(_) => {}
                Err(e) if e.code() == Some(ErrorCode::NodeExists) => {
                    client.set_data(&ns.switchover(), &data, None).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    }
    loop {
        if let Some((l, st)) = read::<LeaderRecord>(client, &ns.leader()).await? {
            if l.node == to && l.state == LeaderState::Primary && st.czxid > leader_stat.czxid {
                return Ok(SwitchoverDone {
                    from: leader.node,
                    to: to.to_owned(),
                    epoch: Epoch(st.czxid),
                    elapsed: started.elapsed(),
                });
            }
        }
        if let Some((r, _)) = read::<SwitchoverRequest>(client, &ns.switchover()).await? {
            if r.status == SwitchoverStatus::Failed && r.to.as_deref() == Some(to) {
                return Err(SwitchoverError::Failed(
                    r.reason.unwrap_or_else(|| "no reason given".into()),
                ));
            }
        }
        if started.elapsed() >= wait {
            return Err(SwitchoverError::Timeout(wait));
        }
        tokio::time::sleep(POLL).await;
    }
}
