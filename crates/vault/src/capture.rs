//! Payload capture: a request body and its response body, sealed together
//! under a data key of their own. The row that holds the wrapped data key is
//! deleted when retention ends, which makes the ciphertext unreadable
//! everywhere it may have been copied (crypto-shredding).
//!
//! Plaintext layout before sealing: request length (8 bytes, big-endian) ‖
//! request ‖ response. The associated data is `capture:<request id>`.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::envelope::{self, SealError, Sealed};
use crate::kek::Kek;

/// One captured exchange, before sealing.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// The audit record's request id.
    pub request_id: String,
    /// The route.
    pub route: String,
    /// Captured request bytes (at most the route's capture limit).
    pub request: Vec<u8>,
    /// Captured response bytes (at most the route's capture limit).
    pub response: Vec<u8>,
    /// SHA-256 over the whole request body, including any part not stored.
    pub request_sha256: [u8; 32],
    /// SHA-256 over the whole response body.
    pub response_sha256: [u8; 32],
    /// Total request body length.
    pub request_bytes: u64,
    /// Total response body length.
    pub response_bytes: u64,
    /// Whether either body was longer than what was stored.
    pub truncated: bool,
    /// When the capture is destroyed, seconds since the epoch.
    pub expires_at: i64,
}

impl Capture {
    /// Bytes of body content held (what counts against the memory budget).
    pub fn kept_bytes(&self) -> usize {
        self.request.len() + self.response.len()
    }
}

/// Streaming digest and bounded copy of one body.
#[derive(Debug, Clone, Default)]
pub struct BodyTap {
    hasher: Sha256,
    kept: Vec<u8>,
    total: u64,
    limit: usize,
}

impl BodyTap {
    /// Keeps at most `limit` bytes; digests everything.
    pub fn new(limit: usize) -> Self {
        BodyTap {
            limit,
            ..Default::default()
        }
    }

    /// Feeds one chunk, keeping as much as the limit allows.
    pub fn push(&mut self, chunk: &[u8]) {
        self.push_up_to(chunk, usize::MAX);
    }

    /// How many bytes of the next chunk could be kept.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.kept.len())
    }

    /// Feeds one chunk, keeping at most `allowance` bytes of it (the rest is
    /// only digested, and the capture will be marked truncated).
    pub fn push_up_to(&mut self, chunk: &[u8], allowance: usize) {
        self.hasher.update(chunk);
        self.total += chunk.len() as u64;
        let keep = self.room().min(allowance).min(chunk.len());
        self.kept.extend_from_slice(&chunk[..keep]);
    }

    /// (kept bytes, digest, total length, truncated).
    pub fn finish(self) -> (Vec<u8>, [u8; 32], u64, bool) {
        let truncated = self.total > self.kept.len() as u64;
        (
            self.kept,
            self.hasher.finalize().into(),
            self.total,
            truncated,
        )
    }
}

fn aad(request_id: &str) -> Vec<u8> {
    format!("capture:{request_id}").into_bytes()
}

/// Seals the bodies of `capture`.
pub fn seal(kek: &Kek, capture: &Capture) -> Sealed {
    let mut plain = Zeroizing::new(Vec::with_capacity(
        8 + capture.request.len() + capture.response.len(),
    ));
    plain.extend_from_slice(&(capture.request.len() as u64).to_be_bytes());
    plain.extend_from_slice(&capture.request);
    plain.extend_from_slice(&capture.response);
    envelope::seal(kek, &aad(&capture.request_id), &plain)
}

/// A request body and its response body, decrypted.
pub type Bodies = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

/// Opens a sealed capture: (request, response).
pub fn open(kek: &Kek, request_id: &str, sealed: &Sealed) -> Result<Bodies, SealError> {
    let plain = envelope::open(kek, &aad(request_id), sealed)?;
    let len = plain
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or(SealError::Malformed)? as usize;
    let rest = &plain[8..];
    if len > rest.len() {
        return Err(SealError::Malformed);
    }
    Ok((
        Zeroizing::new(rest[..len].to_vec()),
        Zeroizing::new(rest[len..].to_vec()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_digests_all_and_keeps_the_limit() {
        let mut tap = BodyTap::new(4);
        tap.push(b"abc");
        tap.push(b"defg");
        let (kept, digest, total, truncated) = tap.finish();
        assert_eq!((kept.as_slice(), total, truncated), (&b"abcd"[..], 7, true));
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(b"abcdefg")));
        // An allowance below the room (the memory budget) keeps less.
        let mut tap = BodyTap::new(100);
        tap.push_up_to(b"abcdef", 2);
        assert_eq!(tap.room(), 98);
        let (kept, digest, total, truncated) = tap.finish();
        assert_eq!((kept.as_slice(), total, truncated), (&b"ab"[..], 6, true));
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(b"abcdef")));
    }

    #[test]
    fn seal_round_trip_bound_to_request_id() {
        let kek = Kek::generate();
        let c = Capture {
            request_id: "r1".into(),
            request: b"question".to_vec(),
            response: b"answer".to_vec(),
            ..Default::default()
        };
        let sealed = seal(&kek, &c);
        let (q, a) = open(&kek, "r1", &sealed).unwrap();
        assert_eq!(
            (q.as_slice(), a.as_slice()),
            (&b"question"[..], &b"answer"[..])
        );
        assert_eq!(
            open(&kek, "r2", &sealed).unwrap_err(),
            SealError::Authentication
        );
    }
}
