//! Jute, ZooKeeper's binary encoding: big-endian integers, length-prefixed buffers,
//! strings and vectors, where a length of -1 means null.
//!
//! Invariant: a [`Reader`] never reads past its slice and never allocates more than
//! the bytes it has left justify, so a hostile length prefix cannot make it allocate.

use bytes::{BufMut, BytesMut};

/// Why a record could not be decoded. Every variant is a property of the input bytes;
/// none is a bug of ours, so callers answer with an error reply or a close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("invalid length {len} at offset {offset}")]
    BadLength { offset: usize, len: i32 },
    #[error("string at offset {offset} is not UTF-8")]
    BadUtf8 { offset: usize },
    #[error("unknown {what} value {value}")]
    UnknownValue { what: &'static str, value: i32 },
    #[error("null {what} where a value is required")]
    UnexpectedNull { what: &'static str },
}

/// A cursor over one record's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn read_i32(&mut self) -> Result<i32, DecodeError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn read_i64(&mut self) -> Result<i64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    pub fn read_bool(&mut self) -> Result<bool, DecodeError> {
        Ok(self.take(1)?[0] != 0)
    }

    /// A length prefix: -1 is null (None); any other negative length, or one longer than
    /// the bytes left times `min_elem_bytes`, is an error.
    fn read_len(&mut self, min_elem_bytes: usize) -> Result<Option<usize>, DecodeError> {
        let offset = self.pos;
        let len = self.read_i32()?;
        if len == -1 {
            return Ok(None);
        }
        if len < 0 {
            return Err(DecodeError::BadLength { offset, len });
        }
        let n = len as usize;
        if n.saturating_mul(min_elem_bytes.max(1)) > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n.saturating_mul(min_elem_bytes.max(1)) - self.remaining(),
            });
        }
        Ok(Some(n))
    }

    /// A buffer; null decodes as None.
    pub fn read_buffer_opt(&mut self) -> Result<Option<Vec<u8>>, DecodeError> {
        match self.read_len(1)? {
            None => Ok(None),
            Some(n) => Ok(Some(self.take(n)?.to_vec())),
        }
    }

    /// A buffer; null decodes as empty (ZooKeeper treats a null data buffer as no data).
    pub fn read_buffer(&mut self) -> Result<Vec<u8>, DecodeError> {
        Ok(self.read_buffer_opt()?.unwrap_or_default())
    }

    pub fn read_string_opt(&mut self) -> Result<Option<String>, DecodeError> {
        match self.read_len(1)? {
            None => Ok(None),
            Some(n) => {
                let offset = self.pos;
                let b = self.take(n)?;
                std::str::from_utf8(b)
                    .map(|s| Some(s.to_owned()))
                    .map_err(|_| DecodeError::BadUtf8 { offset })
            }
        }
    }

    /// A string that must be present.
    pub fn read_string(&mut self) -> Result<String, DecodeError> {
        self.read_string_opt()?
            .ok_or(DecodeError::UnexpectedNull { what: "string" })
    }

    /// A vector whose elements take at least `min_elem_bytes` each; null decodes as empty.
    pub fn read_vec<T>(
        &mut self,
        min_elem_bytes: usize,
        mut elem: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        match self.read_len(min_elem_bytes)? {
            None => Ok(Vec::new()),
            Some(n) => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(elem(self)?);
                }
                Ok(out)
            }
        }
    }

    pub fn read_string_vec(&mut self) -> Result<Vec<String>, DecodeError> {
        self.read_vec(4, |r| r.read_string())
    }
}

/// Writes jute values into a [`BytesMut`].
pub trait JuteWrite {
    fn put_jute_bool(&mut self, v: bool);
    fn put_jute_buffer(&mut self, v: &[u8]);
    fn put_jute_string(&mut self, v: &str);
    fn put_jute_string_vec<S: AsRef<str>>(&mut self, v: &[S]);
}

impl JuteWrite for BytesMut {
    fn put_jute_bool(&mut self, v: bool) {
        self.put_u8(v as u8);
    }

    fn put_jute_buffer(&mut self, v: &[u8]) {
        assert!(
            v.len() <= i32::MAX as usize,
            "buffer longer than a jute length"
        );
        self.put_i32(v.len() as i32);
        self.put_slice(v);
    }

    fn put_jute_string(&mut self, v: &str) {
        self.put_jute_buffer(v.as_bytes());
    }

    fn put_jute_string_vec<S: AsRef<str>>(&mut self, v: &[S]) {
        self.put_i32(v.len() as i32);
        for s in v {
            self.put_jute_string(s.as_ref());
        }
    }
}

/// A jute record: one struct of a ZooKeeper `.jute` file.
pub trait Record: Sized {
    fn encode(&self, out: &mut BytesMut);
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// Decodes a whole record from `buf`; trailing bytes are ignored, as ZooKeeper does.
    fn from_bytes(buf: &[u8]) -> Result<Self, DecodeError> {
        Self::decode(&mut Reader::new(buf))
    }

    fn to_bytes(&self) -> BytesMut {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_length_does_not_allocate() {
        // A vector claiming 2^31-1 elements in an 8-byte record.
        let mut b = BytesMut::new();
        b.put_i32(i32::MAX);
        b.put_i32(0);
        let mut r = Reader::new(&b);
        assert!(matches!(
            r.read_string_vec(),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn null_and_negative_lengths() {
        let mut b = BytesMut::new();
        b.put_i32(-1);
        b.put_i32(-2);
        let mut r = Reader::new(&b);
        assert_eq!(r.read_buffer_opt().unwrap(), None);
        assert!(matches!(
            r.read_buffer_opt(),
            Err(DecodeError::BadLength { len: -2, .. })
        ));
    }
}
