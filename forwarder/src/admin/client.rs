//! A minimal HTTP/1.0 GET (and DELETE) over `std::net::TcpStream`, for the CLI and
//! tests: the admin endpoint is local, small and answers with a
//! `Content-Length` (HTTP/1.0 gets no chunked encoding).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Most bytes an answer may have.
const MAX_ANSWER: u64 = 256 << 20;

/// A status and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no cipgw admin endpoint at {addr}: connection refused")]
    Refused { addr: SocketAddr },
    #[error("cipgw admin endpoint at {addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("cipgw admin endpoint at {addr}: {what}: {source}")]
    Io {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cipgw admin endpoint at {addr}: malformed answer: {what}")]
    Malformed { addr: SocketAddr, what: String },
}

/// `GET path` (with its query) from `addr`, all of it within
/// `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, ClientError> {
    get_accepting(addr, path, "*/*", timeout)
}

/// [`get`] with an `Accept` header (e.g. `text/plain` for the Prometheus
/// text format of `/metrics`).
pub fn get_accepting(
    addr: SocketAddr,
    path: &str,
    accept: &str,
    timeout: Duration,
) -> Result<Response, ClientError> {
    request(addr, "GET", path, accept, timeout)
}

/// `DELETE path` (with its query) at `addr`, all of it within `timeout`
/// (`cipgw conntrack --delete`).
pub fn delete(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, ClientError> {
    request(addr, "DELETE", path, "*/*", timeout)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: &str,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let io_err = |what: &'static str| {
        move |source: io::Error| match source.kind() {
            io::ErrorKind::ConnectionRefused => ClientError::Refused { addr },
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                ClientError::Timeout { addr, timeout }
            }
            _ => ClientError::Io { addr, what, source },
        }
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io_err("connect"))?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(io_err("set a timeout"))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io_err("send"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout { addr, timeout });
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(io_err("set a timeout"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() as u64 > MAX_ANSWER {
                    return Err(ClientError::Malformed {
                        addr,
                        what: format!("longer than {MAX_ANSWER} bytes"),
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("receive")(e)),
        }
    }
    parse(addr, &raw)
}

fn parse(addr: SocketAddr, raw: &[u8]) -> Result<Response, ClientError> {
    let bad = |what: &str| ClientError::Malformed {
        addr,
        what: what.to_owned(),
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("status line {status_line:?}")))?;
    let mut content_type = None;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-type") {
                content_type = Some(value.to_owned());
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            }
        }
    }
    let mut body = &raw[split + 4..];
    if let Some(len) = length {
        if body.len() < len {
            return Err(bad("answer shorter than its Content-Length"));
        }
        body = &body[..len];
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| bad("body not UTF-8"))?;
    Ok(Response {
        status,
        content_type,
        body,
    })
}
