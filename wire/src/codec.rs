//! The one place that knows how messages are serialised: bincode 2.0.1 (pinned; see
//! `../shared/design/facts.md`) through serde, little-endian, variable-length integers.
//!
//! Every decode is bounded twice: the input must not exceed the caller's limit, and bincode's
//! own limit stops a claimed length (a `Vec` or `String` prefix) from allocating more than
//! [`MAX_MESSAGE_SIZE`]. Trailing bytes after a value are an error, so one frame is one message.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest encoded message any ferry process accepts (block payloads included).
pub const MAX_MESSAGE_SIZE: usize = 8 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_SIZE>()
}

/// Why encoding or decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("cannot encode: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("malformed message: {0} trailing bytes")]
    Trailing(usize),
}

/// Encodes `value`; refuses results larger than [`MAX_MESSAGE_SIZE`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let out = bincode::serde::encode_to_vec(value, config())?;
    if out.len() > MAX_MESSAGE_SIZE {
        return Err(CodecError::TooLarge {
            len: out.len(),
            limit: MAX_MESSAGE_SIZE,
        });
    }
    Ok(out)
}

/// Decodes one value from exactly `bytes`, which must be at most `limit` bytes long.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    let limit = limit.min(MAX_MESSAGE_SIZE);
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct T {
        a: u64,
        s: String,
        v: Vec<u8>,
    }

    #[test]
    fn round_trip() {
        let t = T {
            a: 7,
            s: "x".into(),
            v: vec![1, 2, 3],
        };
        let b = encode(&t).expect("encode");
        assert_eq!(decode::<T>(&b, 1024).expect("decode"), t);
    }

    #[test]
    fn limits() {
        let t = T {
            a: 1,
            s: String::new(),
            v: vec![0; 100],
        };
        let b = encode(&t).expect("encode");
        assert!(matches!(
            decode::<T>(&b, 50),
            Err(CodecError::TooLarge { .. })
        ));
        let mut extra = b.clone();
        extra.push(0);
        assert!(matches!(
            decode::<T>(&extra, 1024),
            Err(CodecError::Trailing(1))
        ));
        // A length prefix claiming 2^60 bytes must fail without allocating.
        let mut huge = vec![1u8, 0]; // a = 1, s = ""
        huge.push(255); // varint marker for a u64 length
        huge.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<T>(&huge, 1024).is_err());
        assert!(decode::<T>(&[], 1024).is_err());
        let big = T {
            a: 0,
            s: String::new(),
            v: vec![0; MAX_MESSAGE_SIZE + 1],
        };
        assert!(matches!(encode(&big), Err(CodecError::TooLarge { .. })));
    }
}
