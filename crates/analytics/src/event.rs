//! What the engine sees of one completed request: the facts of its audit
//! record, with names reduced to stable hashes (the engine compares, it never
//! needs to read them back).

/// One completed data-plane request of an authenticated agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// When it arrived, milliseconds since the epoch.
    pub time_ms: i64,
    /// The resource touched (route and path), as [`stable_hash`].
    pub resource: u64,
    /// The tool or operation called (method and route), as [`stable_hash`];
    /// consecutive pairs form the agent's call sequence.
    pub operation: u64,
    /// Whether the method changes state (anything but GET/HEAD).
    pub write: bool,
    /// Refused by policy, authentication, containment or a limit.
    pub denied: bool,
    /// Failed after being allowed (5xx, upstream errors).
    pub error: bool,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Classification of the resource: 0 public … 3 restricted.
    pub classification: u8,
    /// The client address, as [`stable_hash`].
    pub source_ip: u64,
    /// Content-guard findings on the request or response.
    pub content_hits: u32,
}

/// FNV-1a, 64 bit: stable across processes and versions, so hashes in a
/// persisted baseline stay meaningful after a restart.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_separates_parts() {
        assert_eq!(stable_hash(&[b"a"]), stable_hash(&[b"a"]));
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        // The value is part of the persisted format: it must never change.
        assert_eq!(stable_hash(&[]), 0xcbf2_9ce4_8422_2325);
    }
}
