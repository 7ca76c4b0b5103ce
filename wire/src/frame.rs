//! Length-prefixed framing, sans-IO.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes (one encoded message).
//! [`FrameDecoder`] is fed whatever bytes arrive and hands out whole frames. A length above the
//! decoder's limit, or zero, is an error raised as soon as the 4 length bytes are seen, before
//! anything is allocated for the body: a peer cannot make us reserve memory it has not sent.

/// Bytes in the length prefix.
pub const PREFIX: usize = 4;

/// Why a stream of frames was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: u64, limit: usize },
    #[error("empty frame")]
    Empty,
    #[error("stream ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
}

/// Prefixes `payload` with its length.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reassembles frames from arbitrary byte pieces.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    limit: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            limit,
            failed: None,
        }
    }

    /// Feeds received bytes. After an error the decoder stays failed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        self.buf.extend_from_slice(bytes);
        self.check_prefix()
    }

    fn check_prefix(&mut self) -> Result<(), FrameError> {
        if self.buf.len() >= PREFIX {
            let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            let err = if len == 0 {
                Some(FrameError::Empty)
            } else if len as usize > self.limit {
                Some(FrameError::TooLarge {
                    len: len as u64,
                    limit: self.limit,
                })
            } else {
                None
            };
            if let Some(e) = err {
                self.buf = Vec::new();
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// The next whole frame's payload, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.len() < PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if self.buf.len() < PREFIX + len {
            return Ok(None);
        }
        let rest = self.buf.split_off(PREFIX + len);
        let mut frame = std::mem::replace(&mut self.buf, rest);
        frame.drain(..PREFIX);
        self.check_prefix()?;
        Ok(Some(frame))
    }

    /// Call at end of stream: an error if a partial frame is pending.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reassembles_across_pieces() {
        let mut wire = encode_frame(b"hello");
        wire.extend(encode_frame(b"w"));
        wire.extend(encode_frame(&[7u8; 300]));
        for step in [1usize, 2, 3, 5, 64, 1000] {
            let mut d = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(step) {
                d.push(piece).expect("push");
                while let Some(f) = d.next_frame().expect("frame") {
                    got.push(f);
                }
            }
            d.finish().expect("finish");
            assert_eq!(
                got,
                vec![b"hello".to_vec(), b"w".to_vec(), vec![7u8; 300]],
                "{step}"
            );
        }
    }

    #[test]
    fn refuses_oversized_before_body() {
        let mut d = FrameDecoder::new(1024);
        let e = d.push(&u32::MAX.to_be_bytes()).expect_err("must refuse");
        assert_eq!(
            e,
            FrameError::TooLarge {
                len: u32::MAX as u64,
                limit: 1024
            }
        );
        assert!(d.buf.capacity() < 64, "no body allocation");
        assert!(d.push(b"more").is_err(), "stays failed");
        let mut d = FrameDecoder::new(1024);
        assert_eq!(d.push(&[0, 0, 0, 0]), Err(FrameError::Empty));
        let mut d = FrameDecoder::new(1024);
        d.push(&encode_frame(b"abc")[..5]).expect("push");
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.finish(), Err(FrameError::Truncated(5)));
    }
}
