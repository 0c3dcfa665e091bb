//! Framing: every message is a 4-byte big-endian length followed by that many bytes.
//!
//! Invariant: a length above the configured maximum is rejected before any byte of the
//! body is buffered, so a client cannot make us allocate more than the limit.

use bytes::{Buf, BytesMut};

/// ZooKeeper's default `jute.maxbuffer` is 1 MiB (0xfffff); ours is the same order.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: i64, max: usize },
    #[error("negative frame length {len}")]
    Negative { len: i32 },
}

/// Checks a frame length prefix against `max`.
pub fn check_frame_len(len: i32, max: usize) -> Result<usize, FrameError> {
    if len < 0 {
        return Err(FrameError::Negative { len });
    }
    if len as usize > max {
        return Err(FrameError::TooLong {
            len: len as i64,
            max,
        });
    }
    Ok(len as usize)
}

/// Splits one whole frame body off the front of `buf`, if one is there.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let len = check_frame_len(len, max)?;
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len)))
}

/// Appends a frame: writes a placeholder length, lets `body` write, then patches it.
pub fn write_frame(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_limits() {
        let mut b = BytesMut::new();
        write_frame(&mut b, |o| o.extend_from_slice(b"hello"));
        write_frame(&mut b, |o| o.extend_from_slice(b"x"));
        assert_eq!(&split_frame(&mut b, 10).unwrap().unwrap()[..], b"hello");
        assert_eq!(&split_frame(&mut b, 10).unwrap().unwrap()[..], b"x");
        assert_eq!(split_frame(&mut b, 10).unwrap(), None);
        let mut big = BytesMut::from(&(11i32).to_be_bytes()[..]);
        assert!(matches!(
            split_frame(&mut big, 10),
            Err(FrameError::TooLong { .. })
        ));
        let mut neg = BytesMut::from(&(-3i32).to_be_bytes()[..]);
        assert!(matches!(
            split_frame(&mut neg, 10),
            Err(FrameError::Negative { .. })
        ));
    }
}
