//! Prometheus metrics over HTTP (`--metrics-addr`, off by default; ZooKeeper's
//! `metricsProvider.httpPort`): `GET /metrics` answers `mntr`'s rows in Prometheus'
//! text exposition format, one connection per request.
//!
//! Bounded like the client port: at most [`METRICS_CONNECTIONS_MAX`] connections at
//! once (more wait in the kernel's backlog), a request head of at most
//! [`METRICS_REQUEST_BYTES_MAX`] that must arrive within [`METRICS_REQUEST_TIMEOUT_MS`];
//! anything else is answered with an HTTP error or the connection is closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::conn::ConnCtx;

/// Metrics connections served at once.
pub const METRICS_CONNECTIONS_MAX: usize = 16;
/// Bytes of a request head (request line and headers); a longer one gets 431.
pub const METRICS_REQUEST_BYTES_MAX: usize = 8 << 10;
/// Time for a request head to arrive, and for the answer to be written (and for the
/// peer to close after it).
pub const METRICS_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Bytes read and dropped after the answer while waiting for the peer to close.
pub const METRICS_LINGER_BYTES_MAX: usize = 64 << 10;

/// Rows whose value only ever grows: typed `counter`, the rest `gauge`.
const COUNTERS: &[&str] = &[
    "zk_packets_received",
    "zk_packets_sent",
    "zk_limit_hits",
    "zk_fsync_count",
    "zk_fsync_entries",
    "zk_quorum_holds",
    "zk_raft_leader_changes",
    "zk_raft_leaderships",
    "zk_raft_restarts",
    "zk_raft_log_entries_read_back",
    "zk_raft_commit_count",
];

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (or `HEAD`); a query string is ignored.
    Metrics {
        head_only: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Routes a complete request head (up to its blank line).
fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Route::BadRequest;
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Route::Metrics { head_only }
    } else {
        Route::NotFound
    }
}

/// `mntr`'s rows in Prometheus' text format: every numeric row as a gauge or counter of
/// the same name; `zk_version` and `zk_server_state` as an info-style series with the
/// text as a label. A row whose value is not a number is left out.
fn exposition(rows: &[(&str, String)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(rows.len() * 64);
    for (name, value) in rows {
        match *name {
            "zk_version" | "zk_server_state" => {
                let label = if *name == "zk_version" {
                    "version"
                } else {
                    "state"
                };
                let escaped = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = writeln!(out, "# TYPE {name} gauge");
                let _ = writeln!(out, "{name}{{{label}=\"{escaped}\"}} 1");
            }
            _ => {
                if value.parse::<f64>().is_err() {
                    continue;
                }
                let kind = if COUNTERS.contains(name) {
                    "counter"
                } else {
                    "gauge"
                };
                let _ = writeln!(out, "# TYPE {name} {kind}");
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }
    out
}

fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads a request head (through its blank line) of at most `METRICS_REQUEST_BYTES_MAX`
/// bytes; None if the peer closed first, Err(()) if it is longer.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Result<Vec<u8>, ()>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end + 4);
            return Ok(Some(Ok(head)));
        }
        if head.len() > METRICS_REQUEST_BYTES_MAX {
            return Ok(Some(Err(())));
        }
    }
}

async fn serve_one(mut stream: TcpStream, ctx: &ConnCtx) {
    let timeout = Duration::from_millis(METRICS_REQUEST_TIMEOUT_MS);
    let answer = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
        Err(_) | Ok(Err(_)) | Ok(Ok(None)) => return,
        Ok(Ok(Some(Err(())))) => response(
            "431 Request Header Fields Too Large",
            "text/plain",
            "request head too large\n",
            false,
        ),
        Ok(Ok(Some(Ok(head)))) => match route(&head) {
            Route::Metrics { head_only } => {
                let rows = super::fourlw::mntr_rows(ctx).await;
                response(
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    &exposition(&rows),
                    head_only,
                )
            }
            Route::NotFound => response("404 Not Found", "text/plain", "try /metrics\n", false),
            Route::MethodNotAllowed => response(
                "405 Method Not Allowed",
                "text/plain",
                "GET /metrics\n",
                false,
            ),
            Route::BadRequest => response("400 Bad Request", "text/plain", "bad request\n", false),
        },
    };
    let write_and_linger = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        // Closing with unread bytes (the rest of a refused request) would reset the
        // connection, and the peer could lose the answer: read what it still sends,
        // bounded, until it closes.
        let mut left = METRICS_LINGER_BYTES_MAX;
        let mut buf = [0u8; 4096];
        while left > 0 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(timeout, write_and_linger).await;
}

/// Accepts metrics connections until `shutdown`.
pub(super) async fn serve(listener: TcpListener, ctx: Arc<ConnCtx>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(METRICS_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics port: accept failed");
                    // A full fd table: give it a moment instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve_one(stream, &ctx).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_or_head_of_metrics_is_served() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        for bad in [
            "GET /metrics\r\n\r\n",
            "GET /metrics HTTP/1.1 extra\r\n\r\n",
            "GET /metrics SPDY/3\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert_eq!(r(bad), Route::BadRequest, "{bad:?}");
        }
        assert_eq!(route(b"GET \xff HTTP/1.1\r\n\r\n"), Route::BadRequest);
    }

    #[test]
    fn rows_become_typed_series_and_text_becomes_labels() {
        let rows = vec![
            ("zk_version", "3.8.0-coordd-0.1.0".to_string()),
            ("zk_server_state", "lea\"der".to_string()),
            ("zk_avg_latency", "0.1234".to_string()),
            ("zk_packets_received", "42".to_string()),
            ("zk_raft_leader", "-1".to_string()),
            ("zk_not_a_number", "n/a".to_string()),
        ];
        let text = exposition(&rows);
        let want = "\
# TYPE zk_version gauge
zk_version{version=\"3.8.0-coordd-0.1.0\"} 1
# TYPE zk_server_state gauge
zk_server_state{state=\"lea\\\"der\"} 1
# TYPE zk_avg_latency gauge
zk_avg_latency 0.1234
# TYPE zk_packets_received counter
zk_packets_received 42
# TYPE zk_raft_leader gauge
zk_raft_leader -1
";
        assert_eq!(text, want);
    }
}
