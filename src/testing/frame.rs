//! gRPC length-prefixed message framing (1 byte compressed flag, 4 byte
//! big-endian length, message).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest request message the test server accepts.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Why a request frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// The compressed flag was set; the test server does not do compression.
    Compressed,
    /// The compressed flag was neither 0 nor 1.
    BadFlag(u8),
    /// The declared length exceeds [`MAX_MESSAGE`].
    TooLarge(usize),
}

impl FrameError {
    pub(crate) fn into_status(self) -> tonic::Status {
        match self {
            FrameError::Compressed => {
                tonic::Status::unimplemented("test server does not support compressed messages")
            }
            FrameError::BadFlag(flag) => {
                tonic::Status::internal(format!("invalid gRPC frame compressed flag {flag}"))
            }
            FrameError::TooLarge(len) => tonic::Status::resource_exhausted(format!(
                "request message of {len} bytes exceeds the test server limit of {MAX_MESSAGE}"
            )),
        }
    }
}

/// Incremental decoder: push body chunks in, take whole messages out.
/// Messages may be split across chunks and chunks may hold several messages.
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, if one is buffered.
    pub(crate) fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let flag = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        match flag {
            0 => {}
            1 => return Err(FrameError::Compressed),
            other => return Err(FrameError::BadFlag(other)),
        }
        if len > MAX_MESSAGE {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() - 5 < len {
            return Ok(None);
        }
        self.buf.advance(5);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Whether bytes of an incomplete frame are buffered.
    pub(crate) fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }
}

/// Encodes `msg` as one uncompressed gRPC frame.
pub(crate) fn encode_frame<M: prost::Message>(msg: &M) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(&body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> Vec<u8> {
        let mut v = vec![0];
        v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        v.extend_from_slice(msg);
        v
    }

    #[test]
    fn split_and_joined_frames() {
        let mut all = frame(b"hello");
        all.extend(frame(b""));
        all.extend(frame(b"world!"));
        // Feed one byte at a time.
        let mut d = FrameDecoder::default();
        let mut got = Vec::new();
        for b in &all {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![&b"hello"[..], &b""[..], &b"world!"[..]]);
        assert!(!d.has_partial());
        // Feed everything at once.
        let mut d = FrameDecoder::default();
        d.push(&all);
        let mut n = 0;
        while d.next_message().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn errors() {
        let mut d = FrameDecoder::default();
        d.push(&[1, 0, 0, 0, 0]);
        assert_eq!(d.next_message(), Err(FrameError::Compressed));
        let mut d = FrameDecoder::default();
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_message(), Err(FrameError::TooLarge(_))));
        let mut d = FrameDecoder::default();
        d.push(&[0, 0, 0]);
        assert_eq!(d.next_message(), Ok(None));
        assert!(d.has_partial());
    }
}
