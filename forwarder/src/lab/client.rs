//! Client helpers for tests and the demo. They use the calling thread's
//! namespace: run them inside one with [`Netns::try_run`] or
//! [`Topology::in_client`]. Every call is bounded by its `timeout`, which
//! covers the whole exchange. They take addresses of either family
//! (anything that converts into a `SocketAddr` or an `IpAddr`).
//!
//! [`Netns::try_run`]: super::Netns::try_run
//! [`Topology::in_client`]: super::Topology::in_client

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream,
    UdpSocket,
};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::LabError;

/// Time left before `deadline`, or a timeout error for `what`.
fn remaining(deadline: Instant, what: &str, timeout: Duration) -> Result<Duration, LabError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(LabError::Timeout {
            what: what.to_owned(),
            after: timeout,
        })
    } else {
        Ok(left)
    }
}

/// Maps an I/O error to a timeout error when it is one.
fn io_error(what: &str, timeout: Duration, e: io::Error) -> LabError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => LabError::Timeout {
            what: what.to_owned(),
            after: timeout,
        },
        _ => LabError::io(what, e),
    }
}

fn connect(addr: SocketAddr, what: &str, timeout: Duration) -> Result<TcpStream, LabError> {
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| io_error(what, timeout, e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| LabError::io(what, e))?;
    Ok(stream)
}

/// Connects to `addr`, sends `payload`, closes its sending side and returns
/// everything received until the server closes.
pub fn tcp_request(
    addr: impl Into<SocketAddr>,
    payload: &[u8],
    timeout: Duration,
) -> Result<String, LabError> {
    let addr = addr.into();
    let what = format!("TCP request to {addr}");
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, &what, timeout)?;
    stream
        .set_write_timeout(Some(remaining(deadline, &what, timeout)?))
        .map_err(|e| LabError::io(&what, e))?;
    stream
        .write_all(payload)
        .map_err(|e| io_error(&what, timeout, e))?;
    stream.shutdown(Shutdown::Write).map_err(|e| {
        // A reset that arrived after the write leaves the socket closed:
        // shutdown says "not connected", the pending error says why.
        let cause = match stream.take_error() {
            Ok(Some(reset)) => reset,
            _ => e,
        };
        io_error(&what, timeout, cause)
    })?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline, &what, timeout)?))
            .map_err(|e| LabError::io(&what, e))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(&what, timeout, e)),
        }
    }
    Ok(String::from_utf8_lossy(&received).into_owned())
}

/// Sends `requests` lines over one connection to `addr`, waiting for one
/// reply line after each, and returns the replies without their newlines.
/// With an echo server behind a VIP, all replies name the same Pod.
pub fn tcp_session(
    addr: impl Into<SocketAddr>,
    requests: usize,
    timeout: Duration,
) -> Result<Vec<String>, LabError> {
    let addr = addr.into();
    let what = format!("TCP session with {addr}");
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, &what, timeout)?;
    let mut replies = Vec::with_capacity(requests);
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    for i in 0..requests {
        stream
            .set_write_timeout(Some(remaining(deadline, &what, timeout)?))
            .map_err(|e| LabError::io(&what, e))?;
        stream
            .write_all(format!("request {i}\n").as_bytes())
            .map_err(|e| io_error(&what, timeout, e))?;
        let line = loop {
            if let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                break String::from_utf8_lossy(&line[..end]).into_owned();
            }
            stream
                .set_read_timeout(Some(remaining(deadline, &what, timeout)?))
                .map_err(|e| LabError::io(&what, e))?;
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(LabError::io(
                        &what,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("closed after {i} of {requests} replies"),
                        ),
                    ))
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(&what, timeout, e)),
            }
        };
        replies.push(line);
    }
    Ok(replies)
}

/// Sends one datagram from a fresh socket (so a fresh source port, a new
/// flow) to `addr` and returns the first datagram that comes back.
pub fn udp_request(
    addr: impl Into<SocketAddr>,
    payload: &[u8],
    timeout: Duration,
) -> Result<String, LabError> {
    let addr = addr.into();
    let what = format!("UDP request to {addr}");
    let socket = UdpSocket::bind(unspecified(&addr)).map_err(|e| LabError::io(&what, e))?;
    socket.connect(addr).map_err(|e| LabError::io(&what, e))?;
    socket
        .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(|e| LabError::io(&what, e))?;
    socket.send(payload).map_err(|e| LabError::io(&what, e))?;
    let mut buf = [0u8; 65536];
    let n = socket
        .recv(&mut buf)
        .map_err(|e| io_error(&what, timeout, e))?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The wildcard address of `addr`'s family, port 0: a fresh local port.
fn unspecified(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into(),
    }
}

/// ICMP echo type and code (RFC 792).
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
/// ICMPv6 echo request and reply types (RFC 4443, section 4).
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Sends one ICMP (IPv4) or ICMPv6 (IPv6) echo request to `addr` and
/// returns the round-trip time.
///
/// Uses a Linux ping socket (`SOCK_DGRAM` with `IPPROTO_ICMP` or
/// `IPPROTO_ICMPV6`): the kernel fills in the identifier and checksum and
/// hands back only this socket's replies. Lab namespaces allow them for
/// every group (`net.ipv4.ping_group_range`, which governs both families);
/// elsewhere this may fail with EACCES.
pub fn ping(addr: impl Into<IpAddr>, timeout: Duration) -> Result<Duration, LabError> {
    let addr = addr.into();
    let what = format!("ping {addr}");
    let (domain, protocol, request_type, reply_type, peer) = match addr {
        IpAddr::V4(a) => (
            libc::AF_INET,
            libc::IPPROTO_ICMP,
            ICMP_ECHO_REQUEST,
            ICMP_ECHO_REPLY,
            SocketAddr::from(SocketAddrV4::new(a, 0)),
        ),
        IpAddr::V6(a) => (
            libc::AF_INET6,
            libc::IPPROTO_ICMPV6,
            ICMPV6_ECHO_REQUEST,
            ICMPV6_ECHO_REPLY,
            SocketAddr::from(SocketAddrV6::new(a, 0, 0, 0)),
        ),
    };
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(LabError::io(&what, io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created socket that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // A ping socket speaks datagrams, which is all UdpSocket's send/recv do.
    let socket = UdpSocket::from(owned);
    socket.connect(peer).map_err(|e| LabError::io(&what, e))?;
    let seq: u16 = 1;
    let mut request = [0u8; 16];
    request[0] = request_type;
    request[6..8].copy_from_slice(&seq.to_be_bytes());
    request[8..].copy_from_slice(b"cipgwlab");
    let start = Instant::now();
    let deadline = start + timeout;
    socket.send(&request).map_err(|e| LabError::io(&what, e))?;
    let mut buf = [0u8; 1500];
    loop {
        socket
            .set_read_timeout(Some(remaining(deadline, &what, timeout)?))
            .map_err(|e| LabError::io(&what, e))?;
        let n = socket
            .recv(&mut buf)
            .map_err(|e| io_error(&what, timeout, e))?;
        if n >= 8 && buf[0] == reply_type && buf[6..8] == seq.to_be_bytes() {
            return Ok(start.elapsed());
        }
    }
}
