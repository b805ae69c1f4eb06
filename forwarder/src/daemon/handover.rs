//! Make-before-break restarts: a new gateway takes the data path over from
//! the running one after it has prepared everything it can.
//!
//! Two processes cannot hold the same AF_XDP queues, the connection
//! table's lock or the admin address at once, so a plain restart (stop,
//! then start) drops VIP traffic for the whole of the old process's exit
//! and the new one's start (~250 ms, see benches/RESULTS.md). Instead, a
//! gateway started while another runs on the same `--state-dir` first
//! does everything that does not conflict: it reads and checks its
//! configuration and control file, compiles the table, loads the XDP
//! program and fills its maps, starts the netlink monitor. A broken
//! upgrade therefore fails while the running gateway still forwards. Only
//! then does it ask the running gateway to let go, over a Unix socket in
//! the state directory (`handover.sock`):
//!
//! 1. new -> old: `release\n`;
//! 2. the old gateway stops its workers (closing its AF_XDP sockets),
//!    marks the table clean and unlocks it, then answers `released MODE
//!    IFACES\n` (its sockets' mode, `copy` or `zero-copy`, on its
//!    comma-separated interfaces) and closes its admin endpoint;
//! 3. the new gateway adopts the table, binds the admin address, opens its
//!    sockets, attaches its program over the old one and starts workers.
//!
//! The old gateway then stays idle, not ready, until it is told to stop
//! (SIGTERM or SIGINT), and exits 0 without touching the XDP program. That
//! fits a DaemonSet rolling update with `maxSurge: 1, maxUnavailable: 0`:
//! the new Pod starts beside the old one, takes over, turns ready, and
//! only then is the old Pod terminated; an old container that exited by
//! itself instead would be restarted and take the data path back.
//!
//! Without a gateway listening (none running, or one that crashed and
//! left the socket file behind) the new gateway starts as before.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// The socket's file name under `--state-dir`.
pub const SOCKET_FILE: &str = "handover.sock";
const RELEASE: &str = "release";
const RELEASED: &str = "released";
/// How long the new gateway waits for the old one to let go: its workers
/// stop within a batch, so this only bounds a gateway that hangs.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
/// How long the old gateway waits for a request line after a connection.
const REQUEST_WAIT: Duration = Duration::from_secs(1);

/// What asking the running gateway to let go came to.
#[derive(Debug, PartialEq, Eq)]
pub enum TakeOver {
    /// No gateway listens on the state directory's socket.
    NoneRunning,
    /// The running gateway let go of its queues, table and admin address;
    /// it says how its AF_XDP sockets were bound.
    Released(Option<SocketMode>),
}

/// How a gateway's AF_XDP sockets on its interfaces were bound: the next
/// gateway on the same interfaces binds the same way at once, instead of
/// first trying zero-copy on a driver that refuses it (~30 ms of gap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketMode {
    /// Every socket fell back to copy mode.
    pub copy_mode: bool,
    /// The interfaces, in `--iface` order.
    pub ifaces: Vec<String>,
}

impl SocketMode {
    /// `copy IF,IF` or `zero-copy IF,IF`.
    fn encode(&self) -> String {
        let mode = if self.copy_mode { "copy" } else { "zero-copy" };
        format!("{mode} {}", self.ifaces.join(","))
    }

    /// The inverse of [`SocketMode::encode`]; None for anything else.
    fn decode(text: &str) -> Option<SocketMode> {
        let (mode, ifaces) = text.split_once(' ')?;
        let copy_mode = match mode {
            "copy" => true,
            "zero-copy" => false,
            _ => return None,
        };
        let ifaces: Vec<String> = ifaces.split(',').map(str::to_owned).collect();
        (!ifaces.iter().any(String::is_empty)).then_some(SocketMode { copy_mode, ifaces })
    }
}

/// Asks the gateway running on `state_dir`, if any, to let go of the data
/// path, and waits until it has.
pub fn take_over(state_dir: &Path) -> io::Result<TakeOver> {
    let path = state_dir.join(SOCKET_FILE);
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(TakeOver::NoneRunning)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(RELEASE_WAIT))?;
    stream.write_all(format!("{RELEASE}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("waiting for the running gateway to let go: {e}"),
            )
        })?;
    let answer = answer.trim_end();
    let Some(rest) = answer.strip_prefix(RELEASED) else {
        return Err(io::Error::other(format!(
            "the running gateway answered {answer:?} instead of {RELEASED:?}"
        )));
    };
    Ok(TakeOver::Released(SocketMode::decode(rest.trim_start())))
}

/// A request from a new gateway to let go; answer it with
/// [`Request::released`] once everything is released.
#[derive(Debug)]
pub struct Request {
    stream: UnixStream,
}

impl Request {
    /// Tells the new gateway that it may go on, and how this gateway's
    /// sockets were bound.
    pub fn released(mut self, mode: &SocketMode) -> io::Result<()> {
        self.stream
            .write_all(format!("{RELEASED} {}\n", mode.encode()).as_bytes())
    }
}

/// The running gateway's end: a thread that waits for one request, then
/// sets the stop flag (workers stop at once) and hands the request to the
/// control loop.
#[derive(Debug)]
pub struct Listener {
    path: PathBuf,
    requests: mpsc::Receiver<Request>,
}

impl Listener {
    /// Listens on the state directory's socket (replacing a file a crashed
    /// gateway left behind). `stop` is set when a request comes.
    pub fn start(state_dir: &Path, stop: Arc<AtomicBool>) -> io::Result<Listener> {
        let path = state_dir.join(SOCKET_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        let (tx, requests) = mpsc::channel();
        std::thread::Builder::new()
            .name("cipgw-handover".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    if read_request(&stream) {
                        // Release: workers see everything before the stop.
                        stop.store(true, Ordering::Release);
                        let _ = tx.send(Request { stream });
                        return;
                    }
                }
            })?;
        Ok(Listener { path, requests })
    }

    /// The request, if one came.
    pub fn request(&self) -> Option<Request> {
        self.requests.try_recv().ok()
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether the peer asked to take over (anything else is ignored).
fn read_request(stream: &UnixStream) -> bool {
    if stream.set_read_timeout(Some(REQUEST_WAIT)).is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.trim_end() == RELEASE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cipgw-handover-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test directory");
        dir
    }

    #[test]
    fn with_nobody_listening_there_is_nothing_to_take_over() {
        let dir = dir("none");
        assert_eq!(take_over(&dir).expect("no error"), TakeOver::NoneRunning);
        // A socket file a crashed gateway left behind.
        drop(UnixListener::bind(dir.join(SOCKET_FILE)).expect("bind"));
        assert_eq!(take_over(&dir).expect("no error"), TakeOver::NoneRunning);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_request_stops_the_running_gateway_which_answers_when_released() {
        let dir = dir("request");
        let stop = Arc::new(AtomicBool::new(false));
        let listener = Listener::start(&dir, Arc::clone(&stop)).expect("listen");
        let taker = std::thread::spawn({
            let dir = dir.clone();
            move || take_over(&dir)
        });
        let request = loop {
            if let Some(request) = listener.request() {
                break request;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(stop.load(Ordering::Acquire), "the stop flag is set first");
        assert!(!taker.is_finished(), "the new gateway waits for the answer");
        let mode = SocketMode {
            copy_mode: true,
            ifaces: vec!["to-client".into(), "to-pods".into()],
        };
        request.released(&mode).expect("answer");
        let outcome = taker.join().expect("no panic").expect("released");
        assert_eq!(outcome, TakeOver::Released(Some(mode)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn socket_modes_read_back_and_anything_else_is_no_hint() {
        for copy_mode in [true, false] {
            let mode = SocketMode {
                copy_mode,
                ifaces: vec!["eth0".into()],
            };
            assert_eq!(SocketMode::decode(&mode.encode()), Some(mode));
        }
        for text in ["", "copy", "copy ", "fast eth0", "copy eth0,,eth1"] {
            assert_eq!(SocketMode::decode(text), None, "{text:?}");
        }
    }
}
