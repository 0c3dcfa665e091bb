//! The Apache ZooKeeper client protocol as coordd and its clients speak it: jute
//! encoding, records, op and error codes, framing, path rules and the digest scheme.
//!
//! This crate does no I/O and pulls in no runtime, so an application that links the
//! Switchyard router compiles it and the client, never the server.
//!
//! Invariant: decoding never panics and never allocates more than the input justifies;
//! every malformed input is a [`DecodeError`] or a [`FrameError`].

pub mod auth;
pub mod consts;
pub mod frame;
pub mod jute;
pub mod path;
pub mod records;
pub mod request;

pub use consts::*;
pub use frame::{FrameError, FRAME_BYTES_MAX_DEFAULT};
pub use jute::{DecodeError, Reader, Record};
pub use records::*;
pub use request::{MultiOp, MultiResult, ReadOp, Request};
