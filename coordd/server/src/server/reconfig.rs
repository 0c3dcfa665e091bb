//! Membership change (issue 5, item 8): ZooKeeper's reconfig op (16) on an ensemble.
//!
//! A member that gets a reconfig runs it when it leads, else forwards the request (its
//! jute bytes) to the leader ([`AppMsg::Reconfig`](super::replicated::AppMsg)); the
//! leader parses it against its membership and calls coordd-raft's
//! `Member::change_membership` (learners, bounded catch-up, joint consensus). The answer
//! is the new configuration in ZooKeeper's `/zookeeper/config` format. Members removed
//! are told so ([`AppMsg::Removed`](super::replicated::AppMsg)) and stop.
//!
//! Invariants: every wait is bounded (coordd-raft's `learner_catch_up_timeout_ms` and
//! `membership_change_timeout_ms` on the leader, [`RECONFIG_FORWARD_TIMEOUT_MS`] for a
//! forward); a request refused with BadArguments, BadVersion, ReconfigInProgress or
//! NewConfigNoQuorum changed no voter; a change whose outcome is unknown is reported as
//! ConnectionLoss (the connection is closed, as for a write in doubt), never as a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use coordd_proto::{ErrorCode, ReconfigRequest, Record};
use coordd_raft::{Member, MembershipChange, ReconfigError, Role, Status};
use tokio_util::sync::CancellationToken;

use super::replicated::{AppMsg, LEADER_WAIT_MS};

/// How long a member waits for the leader to carry out a forwarded reconfig: the
/// leader's worst case with coordd-raft's defaults is 25 s (adding the learners 5 s, their
/// catch-up 10 s, the joint and the new configuration 2 x 5 s), plus margin.
pub const RECONFIG_FORWARD_TIMEOUT_MS: u64 = 30_000;
/// How long the leader tries to tell a removed member that it was removed.
pub const REMOVED_NOTICE_TIMEOUT_MS: u64 = 2_000;

/// The outcome of a reconfig: the new configuration text, or an error code and why.
pub type ReconfigOutcome = Result<String, (ErrorCode, String)>;

/// One server of a reconfig's server list: `server.4=host:2888:3888:participant;2181`
/// (ZooKeeper's form; election port, role and client part optional) or `4=host:2888`.
/// Returns (id, "host:peerport"). The election port and the client address are accepted
/// and ignored (coordd uses one peer port); an observer is refused.
pub fn parse_server_spec(spec: &str) -> Result<(u64, String), String> {
    let spec = spec.trim();
    let (id, rest) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not server.<id>=host:port"))?;
    let id = id.trim();
    let id = id.strip_prefix("server.").unwrap_or(id);
    let id: u64 = id
        .parse()
        .map_err(|_| format!("{spec:?}: member id {id:?} is not a number"))?;
    if !(1..=255).contains(&id) {
        return Err(format!("{spec:?}: member id {id} is not in 1..=255"));
    }
    let addr = rest.split_once(';').map_or(rest, |(a, _client)| a).trim();
    // "[v6]:port..." or "host:port...".
    let (host, ports) = if let Some(after) = addr.strip_prefix('[') {
        let (h, p) = after
            .split_once("]:")
            .ok_or_else(|| format!("{spec:?}: bad bracketed host"))?;
        (format!("[{h}]"), p)
    } else {
        let (h, p) = addr
            .split_once(':')
            .ok_or_else(|| format!("{spec:?}: no peer port"))?;
        (h.to_string(), p)
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("{spec:?}: empty host"));
    }
    let mut parts = ports.split(':');
    let port = |p: Option<&str>| -> Result<Option<u16>, String> {
        match p {
            None => Ok(None),
            Some(p) => match p.trim().parse::<u16>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(format!("{spec:?}: bad port {p:?}")),
            },
        }
    };
    let peer = port(parts.next())?.ok_or_else(|| format!("{spec:?}: no peer port"))?;
    let _election = port(parts.next())?;
    match parts.next().map(str::trim) {
        None | Some("participant") => {}
        Some("observer") => return Err(format!("{spec:?}: observers are not supported")),
        Some(other) => return Err(format!("{spec:?}: unknown role {other:?}")),
    }
    if parts.next().is_some() {
        return Err(format!("{spec:?}: too many ':' fields"));
    }
    Ok((id, format!("{host}:{peer}")))
}

/// A comma-separated list of server specs; an id given twice is refused.
pub fn parse_server_list(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = parse_server_spec(item)?;
        if out.insert(id, addr).is_some() {
            return Err(format!("member {id} appears twice"));
        }
    }
    Ok(out)
}

/// A comma-separated list of member ids (`4,5`; `server.4` also accepted).
pub fn parse_id_list(text: &str) -> Result<BTreeSet<u64>, String> {
    let mut out = BTreeSet::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let digits = item.strip_prefix("server.").unwrap_or(item);
        let id: u64 = digits
            .parse()
            .map_err(|_| format!("{item:?} is not a member id"))?;
        if !out.insert(id) {
            return Err(format!("member {id} appears twice"));
        }
    }
    Ok(out)
}

/// The change a reconfig request asks of the current voters (id -> address): the
/// incremental form (joining and/or leaving) or the whole new list (`new_members`, whose
/// members already present must keep their address).
pub fn change_of(
    req: &ReconfigRequest,
    voters: &BTreeMap<u64, String>,
) -> Result<MembershipChange, String> {
    let incremental =
        !req.joining_servers.trim().is_empty() || !req.leaving_servers.trim().is_empty();
    if !req.new_members.trim().is_empty() {
        if incremental {
            return Err("give either joining/leaving servers or new members, not both".into());
        }
        let wanted = parse_server_list(&req.new_members)?;
        let mut change = MembershipChange::default();
        for (id, addr) in &wanted {
            match voters.get(id) {
                Some(a) if a == addr => {}
                Some(a) => {
                    return Err(format!(
                        "member {id} is at {a}; changing a member's address is not supported (remove it, then add it)"
                    ))
                }
                None => {
                    change.add.insert(*id, addr.clone());
                }
            }
        }
        change.remove = voters
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        return Ok(change);
    }
    if !incremental {
        return Err("no servers to add or remove".into());
    }
    Ok(MembershipChange {
        add: parse_server_list(&req.joining_servers)?,
        remove: parse_id_list(&req.leaving_servers)?,
    })
}

/// The voters of a status, id -> peer address.
pub fn voters_of(status: &Status) -> BTreeMap<u64, String> {
    status
        .membership
        .voters
        .iter()
        .map(|id| {
            let addr = status.membership.addrs.get(id).cloned().unwrap_or_default();
            (*id, addr)
        })
        .collect()
}

/// The configuration version of a status (its membership's log index; 0 before any).
pub fn config_version(status: &Status) -> i64 {
    status
        .membership_index
        .map_or(0, |i| i64::try_from(i).unwrap_or(i64::MAX))
}

/// ZooKeeper's `/zookeeper/config` text: one `server.<id>=host:port:port:participant`
/// line per voter (coordd uses one peer port for both of ZooKeeper's), then
/// `version=<hex>`.
pub fn render_config(voters: &BTreeMap<u64, String>, version: i64) -> String {
    let mut out = String::new();
    for (id, addr) in voters {
        let port = addr.rsplit_once(':').map_or("", |(_, p)| p);
        out.push_str(&format!("server.{id}={addr}:{port}:participant\n"));
    }
    out.push_str(&format!("version={version:x}"));
    out
}

/// The configuration this member sees now.
pub fn current_config(member: &Member) -> String {
    let status = member.status();
    render_config(&voters_of(&status), config_version(&status))
}

fn error_of(e: &ReconfigError) -> ErrorCode {
    match e {
        ReconfigError::BadArguments(_) => ErrorCode::BadArguments,
        ReconfigError::InProgress => ErrorCode::ReconfigInProgress,
        ReconfigError::NotCaughtUp(_) => ErrorCode::NewConfigNoQuorum,
        // In doubt, or nothing done but worth a retry elsewhere: the client's connection
        // is closed (ConnectionLoss) and it reads /zookeeper/config to learn the outcome.
        ReconfigError::NotLeader { .. }
        | ReconfigError::Timeout { .. }
        | ReconfigError::Shutdown
        | ReconfigError::Fatal(_) => ErrorCode::ConnectionLoss,
    }
}

/// Runs a reconfig on the leader: checks the config id, plans the change, changes the
/// membership, tells removed members. `removed` is this member's own removal token.
pub async fn run_on_leader(
    member: &Member,
    req: &ReconfigRequest,
    removed: &CancellationToken,
) -> ReconfigOutcome {
    let before = member.status();
    if before.role != Role::Leader {
        return Err((
            ErrorCode::ConnectionLoss,
            "this member is not the leader".into(),
        ));
    }
    let version = config_version(&before);
    if req.cur_config_id != -1 && req.cur_config_id != version {
        return Err((
            ErrorCode::BadVersion,
            format!(
                "the configuration is at version {version:x}, not {:x}",
                req.cur_config_id
            ),
        ));
    }
    let voters = voters_of(&before);
    let change = change_of(req, &voters).map_err(|why| (ErrorCode::BadArguments, why))?;
    tracing::info!(add = ?change.add, remove = ?change.remove, "reconfig requested");
    let removed_ids = change.remove.clone();
    let after = member
        .change_membership(change)
        .await
        .map_err(|e| (error_of(&e), e.to_string()))?;
    let config = render_config(&voters_of(&after), config_version(&after));
    tracing::info!(config = %config.replace('\n', " "), "reconfig done");
    for id in removed_ids {
        if id == member.id() {
            tracing::warn!(
                id,
                "this member removed itself from the ensemble (reconfig); it stops serving"
            );
            removed.cancel();
            continue;
        }
        let Some(addr) = voters.get(&id).cloned() else {
            continue;
        };
        let member = member.clone();
        tokio::spawn(async move {
            let t = Duration::from_millis(REMOVED_NOTICE_TIMEOUT_MS);
            if let Err(e) = member
                .call_app_at(id, addr.clone(), AppMsg::Removed.encode(), t)
                .await
            {
                tracing::info!(id, %addr, error = %e, "could not tell a removed member that it was removed (it stays idle)");
            }
        });
    }
    Ok(config)
}

/// Runs a reconfig from any member: on the leader itself, else forwarded to it.
pub async fn run(
    member: Member,
    req: ReconfigRequest,
    removed: CancellationToken,
) -> ReconfigOutcome {
    if member.role() == Role::Leader {
        return run_on_leader(&member, &req, &removed).await;
    }
    let leader = match member.leader().filter(|l| *l != member.id()) {
        Some(l) => l,
        None => member
            .wait_for(Duration::from_millis(LEADER_WAIT_MS), |s| {
                s.leader.is_some_and(|l| l != s.id)
            })
            .await
            .map_err(|e| (ErrorCode::ConnectionLoss, format!("no leader: {e}")))?
            .leader
            .ok_or((ErrorCode::ConnectionLoss, "no leader".to_string()))?,
    };
    let mut body = BytesMut::new();
    req.encode(&mut body);
    let answer = member
        .call_app(
            leader,
            AppMsg::Reconfig(body.freeze()).encode(),
            Duration::from_millis(RECONFIG_FORWARD_TIMEOUT_MS),
        )
        .await
        .map_err(|e| {
            (
                ErrorCode::ConnectionLoss,
                format!("forwarding the reconfig to leader {leader}: {e}"),
            )
        })?;
    decode_outcome(answer)
}

/// `[err: i32][text]`: err 0 and the configuration, or an error code and why.
pub fn encode_outcome(o: &ReconfigOutcome) -> Bytes {
    let mut out = BytesMut::new();
    match o {
        Ok(config) => {
            out.put_i32(0);
            out.put_slice(config.as_bytes());
        }
        Err((code, why)) => {
            out.put_i32(code.code());
            out.put_slice(why.as_bytes());
        }
    }
    out.freeze()
}

pub fn decode_outcome(mut b: Bytes) -> ReconfigOutcome {
    let bad = || {
        (
            ErrorCode::ConnectionLoss,
            "malformed reconfig answer".to_string(),
        )
    };
    if b.remaining() < 4 {
        return Err(bad());
    }
    let code = b.get_i32();
    let text = String::from_utf8(b.to_vec()).map_err(|_| bad())?;
    if code == 0 {
        return Ok(text);
    }
    let code = ErrorCode::try_from(code).unwrap_or(ErrorCode::SystemError);
    Err((code, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_specs_in_zookeeper_and_short_form() {
        for (spec, want) in [
            ("4=h:2888", (4, "h:2888")),
            ("server.4=h:2888", (4, "h:2888")),
            ("server.4=h:2888:3888", (4, "h:2888")),
            ("server.4=h:2888:3888:participant", (4, "h:2888")),
            (
                "server.4=10.0.0.4:2888:3888:participant;2181",
                (4, "10.0.0.4:2888"),
            ),
            ("server.5=h:1:2;0.0.0.0:2181", (5, "h:1")),
            (" server.255 = [::1]:7:8 ", (255, "[::1]:7")),
        ] {
            assert_eq!(
                parse_server_spec(spec).unwrap(),
                (want.0, want.1.to_string()),
                "{spec}"
            );
        }
        for bad in [
            "",
            "4",
            "x=h:1",
            "0=h:1",
            "256=h:1",
            "4=h",
            "4=:1",
            "4=h:0",
            "4=h:99999",
            "4=h:1:2:observer",
            "4=h:1:2:boss",
            "4=h:1:2:participant:9",
            "4=[::1:1",
        ] {
            assert!(parse_server_spec(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lists() {
        assert_eq!(
            parse_server_list("4=a:1, server.5=b:2:3;2181").unwrap(),
            BTreeMap::from([(4, "a:1".to_string()), (5, "b:2".to_string())])
        );
        assert!(parse_server_list("4=a:1,4=b:1")
            .unwrap_err()
            .contains("twice"));
        assert_eq!(
            parse_id_list("4, server.5").unwrap(),
            BTreeSet::from([4, 5])
        );
        assert!(parse_id_list("4,x").is_err());
        assert!(parse_id_list("4,4").is_err());
        assert_eq!(parse_id_list("").unwrap(), BTreeSet::new());
    }

    fn voters() -> BTreeMap<u64, String> {
        BTreeMap::from([
            (1, "a:1".to_string()),
            (2, "b:1".to_string()),
            (3, "c:1".to_string()),
        ])
    }

    #[test]
    fn changes_from_requests() {
        let req = |j: &str, l: &str, n: &str| ReconfigRequest {
            joining_servers: j.into(),
            leaving_servers: l.into(),
            new_members: n.into(),
            cur_config_id: -1,
        };
        let c = change_of(&req("4=d:1", "3", ""), &voters()).unwrap();
        assert_eq!(c.add, BTreeMap::from([(4, "d:1".to_string())]));
        assert_eq!(c.remove, BTreeSet::from([3]));
        let c = change_of(&req("", "", "1=a:1,2=b:1,5=e:1"), &voters()).unwrap();
        assert_eq!(c.add, BTreeMap::from([(5, "e:1".to_string())]));
        assert_eq!(c.remove, BTreeSet::from([3]));
        assert!(change_of(&req("", "", ""), &voters()).is_err());
        assert!(change_of(&req("4=d:1", "", "1=a:1"), &voters()).is_err());
        assert!(change_of(&req("", "", "1=z:1"), &voters())
            .unwrap_err()
            .contains("address"));
        assert!(change_of(&req("4=d", "", ""), &voters()).is_err());
    }

    #[test]
    fn config_text_and_outcomes() {
        let text = render_config(&voters(), 0x1f);
        assert_eq!(
            text,
            "server.1=a:1:1:participant\nserver.2=b:1:1:participant\nserver.3=c:1:1:participant\nversion=1f"
        );
        // Lines of the config parse back as server specs.
        let parsed: BTreeMap<u64, String> = text
            .lines()
            .filter(|l| l.starts_with("server."))
            .map(|l| parse_server_spec(l).unwrap())
            .collect();
        assert_eq!(parsed, voters());
        for o in [
            Ok("server.1=a:1:1:participant\nversion=3".to_string()),
            Err((ErrorCode::BadArguments, "why".to_string())),
            Err((ErrorCode::NewConfigNoQuorum, String::new())),
        ] {
            assert_eq!(decode_outcome(encode_outcome(&o)), o);
        }
        assert!(decode_outcome(Bytes::from_static(&[0, 0])).is_err());
        assert!(decode_outcome(Bytes::from_static(&[0, 0, 0, 0, 0xff])).is_err());
    }
}
