//! Echo backends that say who they are: each TCP line and each UDP datagram
//! is answered with `Hello from <pod> at <ip>\n`, so a client can tell which
//! Pod the gateway chose.
//!
//! TCP answers every line (a request without a final newline counts as a
//! line when the client closes), so several requests over one connection
//! show that every packet of a connection reaches the same Pod. A connection
//! whose first line is an HTTP request line gets one HTTP/1.1 response with
//! the same text instead, so `curl http://VIP:port/` works too.
//!
//! Sockets are created inside the Pod's namespace and served from ordinary
//! threads. Every blocking call has a short timeout and checks a stop flag,
//! so dropping the server stops it within a fraction of a second.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::netns::Netns;
use super::LabError;

/// How often blocked calls wake up to check the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Longest line kept before it is answered anyway (bounds memory).
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
    replies: AtomicU64,
    /// Every peer address a connection or datagram came from.
    peers: std::sync::Mutex<std::collections::BTreeSet<IpAddr>>,
}

impl Shared {
    fn saw(&self, peer: IpAddr) {
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(peer);
    }
}

/// A running echo server; stops (and joins its threads) on drop.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    pod: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `addr` (the Pod's IP of either family and targetPort) in
    /// namespace `ns`. An IPv6 listener takes IPv6 only (`IPV6_V6ONLY`,
    /// std's default for a specific address), so each family has its own.
    pub fn start_tcp(
        ns: &Netns,
        addr: impl Into<SocketAddr>,
        pod: &str,
    ) -> Result<EchoServer, LabError> {
        let addr = addr.into();
        let listener = ns.run(move || TcpListener::bind(addr))?.map_err(|e| {
            LabError::io(
                format!("TCP echo for {pod}: binding {addr} in {}", ns.name()),
                e,
            )
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| LabError::io("TCP echo: set_nonblocking", e))?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            let pod = pod.to_owned();
            thread::Builder::new()
                .name(format!("echo-tcp-{pod}"))
                .spawn(move || accept_loop(listener, &pod, &shared))
                .map_err(|e| LabError::io("spawning the TCP echo thread", e))?
        };
        Ok(EchoServer {
            addr,
            pod: pod.to_owned(),
            shared,
            thread: Some(thread),
        })
    }

    /// Answers datagrams on `addr` (either family) in namespace `ns`.
    pub fn start_udp(
        ns: &Netns,
        addr: impl Into<SocketAddr>,
        pod: &str,
    ) -> Result<EchoServer, LabError> {
        let addr = addr.into();
        let socket = ns.run(move || UdpSocket::bind(addr))?.map_err(|e| {
            LabError::io(
                format!("UDP echo for {pod}: binding {addr} in {}", ns.name()),
                e,
            )
        })?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| LabError::io("UDP echo: set_read_timeout", e))?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            let hello = hello(pod, addr.ip());
            thread::Builder::new()
                .name(format!("echo-udp-{pod}"))
                .spawn(move || udp_loop(socket, &hello, &shared))
                .map_err(|e| LabError::io("spawning the UDP echo thread", e))?
        };
        Ok(EchoServer {
            addr,
            pod: pod.to_owned(),
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// TCP connections accepted so far (0 for UDP).
    pub fn connections(&self) -> u64 {
        // Relaxed: a statistic; readers need no ordering with other memory.
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Replies sent so far: TCP lines or HTTP responses, UDP datagrams.
    pub fn replies(&self) -> u64 {
        // Relaxed: a statistic, as above.
        self.shared.replies.load(Ordering::Relaxed)
    }

    /// The addresses connections and datagrams came from so far: what the
    /// Pod sees as its peers.
    pub fn peers(&self) -> Vec<IpAddr> {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// Stops the server and waits for its threads (bounded by the poll
    /// interval).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Relaxed: the flag carries no data; threads only need to see it
        // eventually, and join() below orders everything they did.
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn hello(pod: &str, ip: IpAddr) -> String {
    format!("Hello from {pod} at {ip}\n")
}

fn stopped(shared: &Shared) -> bool {
    // Relaxed: see EchoServer::shutdown.
    shared.stop.load(Ordering::Relaxed)
}

/// Waits until `fd` is readable or `POLL` passes.
fn wait_readable(fd: &impl AsRawFd) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is a valid pollfd for the duration of the call and the
    // count is 1; the descriptor stays open because `fd` is borrowed.
    unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as libc::c_int) };
}

fn accept_loop(listener: TcpListener, pod: &str, shared: &Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stopped(shared) {
        match listener.accept() {
            Ok((stream, peer)) => {
                // Relaxed: statistic.
                shared.connections.fetch_add(1, Ordering::Relaxed);
                shared.saw(peer.ip());
                let shared = Arc::clone(shared);
                let pod = pod.to_owned();
                let spawned =
                    thread::Builder::new()
                        .name("echo-tcp-conn".into())
                        .spawn(move || {
                            let _ = serve_tcp(stream, &pod, &shared);
                        });
                match spawned {
                    Ok(handle) => workers.push(handle),
                    Err(error) => {
                        tracing::warn!(%error, "echo server cannot spawn a connection thread")
                    }
                }
                workers.retain(|w| !w.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_readable(&listener),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!(%error, "echo server accept failed");
                thread::sleep(POLL);
            }
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Is `line` an HTTP/1.x request line (`GET / HTTP/1.1`)?
fn is_http_request_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let _target = parts.next();
    let version = parts.next().unwrap_or_default();
    !method.is_empty()
        && method.iter().all(u8::is_ascii_uppercase)
        && version.starts_with(b"HTTP/1.")
        && parts.next().is_none()
}

fn serve_tcp(mut stream: TcpStream, pod: &str, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_nodelay(true)?;
    let hello = hello(pod, stream.local_addr()?.ip());
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut first_line = true;
    let mut http = false;
    while !stopped(shared) {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // The client closed: answer an unterminated last request.
            if !pending.is_empty() && !http {
                reply(&mut stream, hello.as_bytes(), shared)?;
            }
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if first_line {
                first_line = false;
                http = is_http_request_line(&line);
                if http {
                    continue;
                }
            }
            if http {
                if line == b"\r\n" || line == b"\n" {
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{hello}",
                        hello.len()
                    );
                    reply(&mut stream, response.as_bytes(), shared)?;
                    let _ = stream.shutdown(Shutdown::Write);
                    return Ok(());
                }
                continue;
            }
            reply(&mut stream, hello.as_bytes(), shared)?;
        }
        if pending.len() > MAX_LINE {
            pending.clear();
            if !http {
                reply(&mut stream, hello.as_bytes(), shared)?;
            }
        }
    }
    Ok(())
}

fn reply(stream: &mut TcpStream, bytes: &[u8], shared: &Shared) -> io::Result<()> {
    stream.write_all(bytes)?;
    // Relaxed: statistic.
    shared.replies.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn udp_loop(socket: UdpSocket, hello: &str, shared: &Shared) {
    let mut buf = [0u8; 65536];
    while !stopped(shared) {
        match socket.recv_from(&mut buf) {
            Ok((_, peer)) => {
                shared.saw(peer.ip());
                if socket.send_to(hello.as_bytes(), peer).is_ok() {
                    // Relaxed: statistic.
                    shared.replies.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => {
                tracing::warn!(%error, "UDP echo receive failed");
                thread::sleep(POLL);
            }
        }
    }
}
