//! The client's error type.

use coordd_proto::{ErrorCode, MultiResult};

/// Why a call failed.
///
/// `ConnectionLoss` and `Timeout` leave the outcome of a write unknown (it may or may
/// not have been applied), exactly as in ZooKeeper; callers decide whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with this error code (NoNode, NodeExists, BadVersion, ...).
    #[error("server error {0}")]
    Server(ErrorCode),
    /// A `multi` was rejected: op `index` failed with `code`; `results` holds the
    /// server's per-op results (Ok before it, RuntimeInconsistency after it).
    #[error("multi failed at op {index}: {code}")]
    MultiFailed {
        index: usize,
        code: ErrorCode,
        results: Vec<MultiResult>,
    },
    /// The connection dropped while the request was in flight, or no connection came
    /// up within the request timeout.
    #[error("connection lost")]
    ConnectionLoss,
    /// The session is expired: this client is finished, make a new one.
    #[error("session expired")]
    SessionExpired,
    /// The request was sent but no reply came within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The client was closed.
    #[error("client closed")]
    Closed,
    /// The caller passed something the protocol cannot carry (a bad path, a frame above
    /// the limit); nothing was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The server sent bytes we cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The ZooKeeper error code this error stands for, when there is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(c) => Some(*c),
            Error::MultiFailed { code, .. } => Some(*code),
            Error::ConnectionLoss => Some(ErrorCode::ConnectionLoss),
            Error::SessionExpired => Some(ErrorCode::SessionExpired),
            Error::Timeout => Some(ErrorCode::RequestTimeout),
            _ => None,
        }
    }

    /// Maps a non-zero reply error code.
    pub(crate) fn from_code(code: i32) -> Error {
        match ErrorCode::try_from(code) {
            Ok(c) => Error::Server(c),
            Err(_) => Error::Protocol(format!("unknown error code {code}")),
        }
    }
}

impl From<coordd_proto::DecodeError> for Error {
    fn from(e: coordd_proto::DecodeError) -> Self {
        Error::Protocol(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
