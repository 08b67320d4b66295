//! Bounds-checked big-endian binary reader and writer shared by the entry,
//! retention-summary and bundle encodings.
//!
//! Every read checks the remaining length first, so hostile length prefixes
//! never cause a panic or an allocation larger than the input.

use crate::hash::{HASH_LEN, Hash};

/// A binary value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("input ends inside `{field}` at byte {offset}")]
    UnexpectedEnd {
        /// The field being read.
        field: &'static str,
        /// Byte offset where the field starts.
        offset: usize,
    },
    /// Bytes remain after the value.
    #[error("{count} trailing bytes after the value")]
    TrailingBytes {
        /// Number of unread bytes.
        count: usize,
    },
    /// The version byte is not one this crate understands.
    #[error("unsupported encoding version {version}")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The magic prefix is wrong.
    #[error("wrong magic prefix, this is not an allmende audit bundle")]
    BadMagic,
    /// A tag byte has a value with no meaning.
    #[error("invalid value {value} for `{field}`")]
    InvalidTag {
        /// The field being read.
        field: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A string field is not valid UTF-8.
    #[error("`{field}` is not valid utf-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// A count or length does not fit into the remaining input.
    #[error("`{field}` announces {count} items, more than the input can hold")]
    CountTooLarge {
        /// The field being read.
        field: &'static str,
        /// The announced count.
        count: u64,
    },
}

/// A value could not be encoded because a field exceeds its length prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A field is longer than its length prefix allows.
    #[error("`{field}` has {len} bytes or items, at most {max} are allowed")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
}

#[derive(Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer { buf: Vec::new() }
    }
    pub(crate) fn with_capacity(cap: usize) -> Self {
        Writer {
            buf: Vec::with_capacity(cap),
        }
    }
    pub(crate) fn into_inner(self) -> Vec<u8> {
        self.buf
    }
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn hash(&mut self, h: &Hash) {
        self.buf.extend_from_slice(&h.0);
    }
    /// u16 length prefix + UTF-8 bytes.
    pub(crate) fn str16(&mut self, field: &'static str, s: &str) -> Result<(), EncodeError> {
        let len = u16::try_from(s.len()).map_err(|_| EncodeError::TooLong {
            field,
            len: s.len(),
            max: u16::MAX as usize,
        })?;
        self.u16(len);
        self.raw(s.as_bytes());
        Ok(())
    }
    pub(crate) fn opt_str16(
        &mut self,
        field: &'static str,
        s: Option<&str>,
    ) -> Result<(), EncodeError> {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str16(field, s)?;
            }
        }
        Ok(())
    }
    /// u32 length prefix + bytes.
    pub(crate) fn bytes32(&mut self, field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
        let len = u32::try_from(b.len()).map_err(|_| EncodeError::TooLong {
            field,
            len: b.len(),
            max: u32::MAX as usize,
        })?;
        self.u32(len);
        self.raw(b);
        Ok(())
    }
    pub(crate) fn count16(&mut self, field: &'static str, n: usize) -> Result<(), EncodeError> {
        let v = u16::try_from(n).map_err(|_| EncodeError::TooLong {
            field,
            len: n,
            max: u16::MAX as usize,
        })?;
        self.u16(v);
        Ok(())
    }
    pub(crate) fn count32(&mut self, field: &'static str, n: usize) -> Result<(), EncodeError> {
        let v = u32::try_from(n).map_err(|_| EncodeError::TooLong {
            field,
            len: n,
            max: u32::MAX as usize,
        })?;
        self.u32(v);
        Ok(())
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    pub(crate) fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(DecodeError::UnexpectedEnd {
                field,
                offset: self.pos,
            })?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(DecodeError::UnexpectedEnd {
                field,
                offset: self.pos,
            })?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let off = self.pos;
        let s = self.take(field, N)?;
        s.try_into()
            .map_err(|_| DecodeError::UnexpectedEnd { field, offset: off })
    }
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }
    pub(crate) fn hash(&mut self, field: &'static str) -> Result<Hash, DecodeError> {
        Ok(Hash(self.array::<HASH_LEN>(field)?))
    }
    pub(crate) fn str16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        let bytes = self.take(field, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { field })
    }
    pub(crate) fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::InvalidTag {
                field,
                value: u64::from(v),
            }),
        }
    }
    pub(crate) fn opt_str16(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        if self.flag(field)? {
            Ok(Some(self.str16(field)?))
        } else {
            Ok(None)
        }
    }
    pub(crate) fn bytes32(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32(field)? as usize;
        self.take(field, len)
    }
    /// Checks that `count` items of at least `min_item_len` bytes each can fit
    /// into the remaining input, and returns the count as `usize`.
    pub(crate) fn check_count(
        &self,
        field: &'static str,
        count: u64,
        min_item_len: usize,
    ) -> Result<usize, DecodeError> {
        let n = usize::try_from(count).map_err(|_| DecodeError::CountTooLarge { field, count })?;
        let need = n
            .checked_mul(min_item_len)
            .ok_or(DecodeError::CountTooLarge { field, count })?;
        if need > self.remaining() {
            return Err(DecodeError::CountTooLarge { field, count });
        }
        Ok(n)
    }
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { count }),
        }
    }
}
