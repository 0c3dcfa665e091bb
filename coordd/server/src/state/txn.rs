//! Encoding of log entries and reply bodies.

use super::*;

pub(super) fn encode_entry(_entry: &Entry, _out: &mut BytesMut) {
    todo!()
}

pub(super) fn decode_entry(_buf: &[u8]) -> Result<Entry, DecodeError> {
    todo!()
}

pub(super) fn encode_response(_response: &Response, _out: &mut BytesMut) {
    todo!()
}
