//! The one endpoint a server with `network = "egress"` reaches: a TCP
//! listener on `127.0.0.1` inside its own (otherwise empty) network
//! namespace, whose descriptor is handed to the gateway. The gateway accepts
//! on it and runs the policy-checked proxy; the server sees an HTTP proxy at
//! `http://127.0.0.1:<port>` and nothing else (Landlock allows TCP `connect`
//! to that port only, and there is no other interface).
//!
//! How the descriptor travels: the gateway starts `sandbox-exec` with its
//! standard error as one end of a Unix socket pair. `sandbox-exec`, once in
//! the new namespaces, brings the loopback interface up (one netlink
//! message; it holds `CAP_NET_ADMIN` in the namespace it just made), binds
//! the listener, sends it over standard error (`SCM_RIGHTS`) and puts
//! `/dev/null` in its place before the server runs. No `unsafe`: `rustix`
//! wraps the socket calls and hands received descriptors back as `OwnedFd`.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketType,
};

/// `RTM_NEWLINK`, `IFF_UP`.
const RTM_NEWLINK: u16 = 16;
const IFF_UP: u32 = 1;
/// The loopback interface's index in a new network namespace (the kernel
/// registers it first, `LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: i32 = 1;

/// Brings up `lo`, binds the proxy listener on it and sends it to the
/// gateway over standard error, then points standard error at `/dev/null`.
/// Returns the port. Must run in the fresh network namespace, before
/// Landlock and seccomp.
pub(crate) fn open_in_sandbox() -> Result<u16, String> {
    loopback_up().map_err(|e| format!("cannot bring up the loopback interface: {e}"))?;
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot bind the egress listener: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let stderr = std::io::stderr();
    let fds = [listener.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err("cannot pass the egress listener".into());
    }
    rustix::net::sendmsg(
        stderr.as_fd(),
        &[IoSlice::new(&port.to_be_bytes())],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(|e| format!("cannot pass the egress listener to the gateway: {e}"))?;
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| e.to_string())?;
    rustix::stdio::dup2_stderr(&null).map_err(|e| e.to_string())?;
    Ok(port)
}

/// `ip link set lo up`, as one `RTM_NEWLINK` netlink request.
fn loopback_up() -> std::io::Result<()> {
    let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    // struct ifinfomsg: family AF_UNSPEC, padding, type, index, flags, change
    let mut link = Vec::with_capacity(16);
    link.extend_from_slice(&[0, 0, 0, 0]);
    link.extend_from_slice(&LOOPBACK_INDEX.to_ne_bytes());
    link.extend_from_slice(&IFF_UP.to_ne_bytes());
    link.extend_from_slice(&IFF_UP.to_ne_bytes());
    let message = crate::netlink::request(RTM_NEWLINK, &link);
    rustix::net::sendto(
        &socket,
        &message,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut answer = [0u8; 256];
    let (_, n) = rustix::net::recv(&socket, &mut answer[..], RecvFlags::empty())?;
    // The acknowledgement is an NLMSG_ERROR whose error is 0.
    if n < 20 || u16::from_ne_bytes([answer[4], answer[5]]) != crate::netlink::NLMSG_ERROR {
        return Err(std::io::Error::other("unexpected netlink answer"));
    }
    let errno = crate::netlink::error_of(&answer[16..n]).unwrap_or(0);
    if errno != 0 {
        return Err(std::io::Error::from_raw_os_error(-errno));
    }
    Ok(())
}

/// The gateway's side: receives the listener `sandbox-exec` sends over
/// `channel` (the other end of the server's standard error), waiting at
/// most `timeout`. Blocking: call it off the async runtime.
pub fn receive_listener(channel: &UnixStream, timeout: Duration) -> std::io::Result<TcpListener> {
    channel.set_read_timeout(Some(timeout))?;
    let mut port = [0u8; 2];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        channel,
        &mut [IoSliceMut::new(&mut port)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if received.bytes == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the sandbox ended before it passed its egress listener",
        ));
    }
    let mut listener = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for fd in fds {
                listener.get_or_insert(fd);
            }
        }
    }
    let fd = listener.ok_or_else(|| std::io::Error::other("no egress listener was passed"))?;
    let listener = TcpListener::from(fd);
    // Only a listening TCP socket on 127.0.0.1 is what was promised.
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() || addr.port() != u16::from_be_bytes(port) {
        return Err(std::io::Error::other(
            "the passed egress listener is not the promised one",
        ));
    }
    Ok(listener)
}
