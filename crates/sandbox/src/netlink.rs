//! The few bytes of the netlink protocol the sandbox speaks to the kernel
//! (bringing up a sandbox's loopback, asking or setting the kernel audit):
//! one request, answered by an acknowledgement.

/// `NLMSG_ERROR`: an error, or (error 0) an acknowledgement.
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST | NLM_F_ACK`.
const REQUEST_ACK: u16 = 0x1 | 0x4;

/// A request of `kind` carrying `payload`, to the kernel, asking for an
/// acknowledgement.
pub(crate) fn request(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(16 + payload.len());
    // struct nlmsghdr: length, type, flags, sequence, port (0: the kernel).
    message.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&REQUEST_ACK.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes());
    message.extend_from_slice(payload);
    message
}

/// The error an `NLMSG_ERROR` payload carries (0 for an acknowledgement).
pub(crate) fn error_of(payload: &[u8]) -> Option<i32> {
    let b = payload.get(..4)?;
    Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}
