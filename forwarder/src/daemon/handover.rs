//! Make-before-break restarts: a new gateway takes the data path over from
//! the running one after it has prepared everything it can.
//!
//! Two processes cannot hold the same AF_XDP queues, the connection
//! table's lock or the admin address at once, so a plain restart (stop,
//! then start) drops VIP traffic for the whole of the old process's exit
//! and the new one's start (~250 ms, see benches/RESULTS.md). Instead, a
//! gateway started while another runs on the same `--state-dir` first
//! does everything that does not conflict: it reads and checks its
//! configuration and control file, compiles the table, gets (or loads)
//! the XDP program and fills its maps, creates its UMEMs, starts the
//! netlink monitor. A broken upgrade therefore fails while the running
//! gateway still forwards. Only then does it ask the running gateway to
//! let go, over a Unix socket in the state directory (`handover.sock`):
//!
//! 1. new -> old: `program\n`; old -> new: `program DIGEST MODE IFACES\n`
//!    (the SHA-256 of its XDP object, its sockets' mode, `copy` or
//!    `zero-copy`, on its comma-separated interfaces) with the fds of its
//!    attached program and control maps (`SCM_RIGHTS`,
//!    [`crate::bpf::SharedProgram`]). The new gateway keeps that program
//!    when its own object has the same digest, else loads its own; it
//!    fills the maps and creates its UMEMs (in the mode it was told);
//! 2. new -> old: `release\n`; the old gateway, woken at once, stops its
//!    workers, marks the table clean and unlocks it as soon as they have
//!    left their loops, answers `released MODE IFACES\n`, then waits for
//!    its workers' AF_XDP sockets to close and closes its admin endpoint;
//! 3. the new gateway adopts the table, binds its sockets (retrying
//!    while the kernel frees the old sockets' queues) and puts them in
//!    the XSKMAP (of the kept program, which forwards to them from that
//!    moment; or attaches its own program over the old one) and starts
//!    workers, then binds the admin address.
//!
//! Between 1 and 2 both gateways may write a kept program's VIP and
//! backend maps; the new one only adds what its table needs (the old
//! one's workers pass traffic for a VIP their table lacks on, as if it
//! were not steered), and what the new one's table lacks it removes once
//! it has taken over (a control file) or with its first full sync
//! (Kubernetes). If the new gateway fails before 2, the old one goes on.
//!
//! A gateway of an earlier version answers `program` by closing the
//! connection; the new one then asks it with `release` alone, and
//! replaces its program. A new gateway of an earlier version asks with
//! `release` alone; that is still answered.
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
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel;

use crate::bpf::SharedProgram;

/// The socket's file name under `--state-dir`.
pub const SOCKET_FILE: &str = "handover.sock";
const PROGRAM: &str = "program";
const RELEASE: &str = "release";
const RELEASED: &str = "released";
/// How long the new gateway waits for the old one to let go: its workers
/// stop within a batch, so this only bounds a gateway that hangs.
const RELEASE_WAIT: Duration = Duration::from_secs(5);
/// How long the old gateway waits for a request line after a connection.
const REQUEST_WAIT: Duration = Duration::from_secs(1);
/// How long the old gateway waits for `release` after it shared its
/// program: the new gateway fills the maps of a full table meanwhile.
const PREPARE_WAIT: Duration = Duration::from_secs(60);
/// At most this many fds come with the program (the program and its
/// control maps, with room to spare).
const MAX_FDS: usize = 16;

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

/// What runs on the state directory, as the new gateway first asks it.
#[derive(Debug)]
pub enum Running {
    /// No gateway listens on the state directory's socket.
    None,
    /// A gateway of an earlier version, which shares no program: ask it
    /// to let go with [`take_over`].
    WithoutOffer,
    /// A gateway that shared its program; ask it to let go with
    /// [`Offer::release`].
    Offer(Offer),
}

/// The running gateway's program and sockets' mode, on the connection
/// that asks it to let go.
#[derive(Debug)]
pub struct Offer {
    stream: UnixStream,
    /// The SHA-256 of its XDP object ([`crate::bpf::object_digest`]).
    pub digest: String,
    /// How its AF_XDP sockets were bound.
    pub mode: Option<SocketMode>,
    /// Its program and control maps; taken by whoever keeps them.
    pub program: Option<SharedProgram>,
}

/// Asks the gateway running on `state_dir`, if any, for its program,
/// without asking it to let go yet.
pub fn ask(state_dir: &Path) -> io::Result<Running> {
    let Some(stream) = connect(state_dir)? else {
        return Ok(Running::None);
    };
    stream.set_read_timeout(Some(RELEASE_WAIT))?;
    (&stream).write_all(format!("{PROGRAM}\n").as_bytes())?;
    let (answer, fds) = recv_line_with_fds(&stream).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("asking the running gateway for its program: {e}"),
        )
    })?;
    let Some(answer) = answer else {
        // An earlier version closes a connection whose request it does
        // not know.
        return Ok(Running::WithoutOffer);
    };
    let Some(rest) = answer.strip_prefix(PROGRAM) else {
        return Err(io::Error::other(format!(
            "the running gateway answered {answer:?} instead of {PROGRAM:?}"
        )));
    };
    let (digest, mode) = rest.trim_start().split_once(' ').unwrap_or((rest, ""));
    Ok(Running::Offer(Offer {
        stream,
        digest: digest.trim().to_owned(),
        mode: SocketMode::decode(mode),
        program: (!fds.is_empty()).then_some(SharedProgram { fds }),
    }))
}

impl Offer {
    /// Asks the running gateway to let go of the data path, and waits
    /// until it has; it says again how its sockets were bound.
    pub fn release(self) -> io::Result<Option<SocketMode>> {
        release_on(&self.stream)
    }
}

/// Asks the gateway running on `state_dir`, if any, to let go of the data
/// path, and waits until it has (the request of a gateway that did not
/// ask for the program first, or that talks to one of an earlier
/// version).
pub fn take_over(state_dir: &Path) -> io::Result<TakeOver> {
    match connect(state_dir)? {
        None => Ok(TakeOver::NoneRunning),
        Some(stream) => release_on(&stream).map(TakeOver::Released),
    }
}

/// Connects to the state directory's socket; None if nobody listens
/// (none running, or a socket file a crashed gateway left behind).
fn connect(state_dir: &Path) -> io::Result<Option<UnixStream>> {
    match UnixStream::connect(state_dir.join(SOCKET_FILE)) {
        Ok(stream) => Ok(Some(stream)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn release_on(stream: &UnixStream) -> io::Result<Option<SocketMode>> {
    stream.set_read_timeout(Some(RELEASE_WAIT))?;
    let mut writer = stream;
    writer.write_all(format!("{RELEASE}\n").as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(|e| {
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
    Ok(SocketMode::decode(rest.trim_start()))
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
    pub fn released(self, mode: &SocketMode) -> io::Result<()> {
        (&self.stream).write_all(format!("{RELEASED} {}\n", mode.encode()).as_bytes())
    }
}

/// What the running gateway shares with the next one.
#[derive(Debug)]
pub struct Sharing {
    /// The SHA-256 of its XDP object.
    pub digest: String,
    /// Its attached program and control maps.
    pub program: SharedProgram,
    /// How its AF_XDP sockets were bound.
    pub mode: SocketMode,
}

/// The running gateway's end: a thread that answers one new gateway
/// (its program first, if asked), then on `release` sets the stop flag
/// (workers stop at once) and hands the request to the control loop,
/// which waits on [`Listener::requests`] and so wakes at once.
#[derive(Debug)]
pub struct Listener {
    path: PathBuf,
    requests: channel::Receiver<Request>,
}

impl Listener {
    /// Listens on the state directory's socket (replacing a file a crashed
    /// gateway left behind). `stop` is set when a request comes.
    pub fn start(
        state_dir: &Path,
        stop: Arc<AtomicBool>,
        sharing: Sharing,
    ) -> io::Result<Listener> {
        let path = state_dir.join(SOCKET_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(&path)?;
        let (tx, requests) = channel::bounded(1);
        std::thread::Builder::new()
            .name("cipgw-handover".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let mut line = read_line(&stream, REQUEST_WAIT);
                    if line.as_deref() == Some(PROGRAM) {
                        if let Err(e) = offer(&stream, &sharing) {
                            tracing::warn!(error = %e, "sharing the XDP program with the next gateway");
                            continue;
                        }
                        line = read_line(&stream, PREPARE_WAIT);
                    }
                    if line.as_deref() == Some(RELEASE) {
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

    /// Where the request comes, for a loop that waits on it.
    pub fn requests(&self) -> &channel::Receiver<Request> {
        &self.requests
    }

    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Answers `program`: the digest and sockets' mode, with the fds.
fn offer(stream: &UnixStream, sharing: &Sharing) -> io::Result<()> {
    let line = format!("{PROGRAM} {} {}\n", sharing.digest, sharing.mode.encode());
    let fds: Vec<RawFd> = sharing.program.fds.iter().map(AsRawFd::as_raw_fd).collect();
    send_with_fds(stream, line.as_bytes(), &fds)
}

/// One request line (without its end), or None for a timeout, an error
/// or the end of the stream.
fn read_line(stream: &UnixStream, wait: Duration) -> Option<String> {
    stream.set_read_timeout(Some(wait)).ok()?;
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim_end().to_owned()),
        _ => None,
    }
}

/// Room for the control message of `MAX_FDS` fds (`CMSG_SPACE`), aligned
/// as `cmsghdr`.
type ControlBuffer = [u64; 16];

/// Writes `bytes` with `fds` attached (`SCM_RIGHTS`).
fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds to send, at most {MAX_FDS}", fds.len()),
        ));
    }
    let fd_bytes = mem::size_of_val(fds) as u32;
    let mut control: ControlBuffer = [0; 16];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(fd_bytes) } as _;
        // SAFETY: `control` holds CMSG_SPACE(16 fds) bytes (checked in the
        // test below), so the first header and `fds.len()` fds after it
        // fit; CMSG_FIRSTHDR is not null for a buffer that large.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: `msg` points to `iov` and `control`, which outlive the call;
    // the kernel only reads them.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // The fds went with the first byte; the rest of a short write
    // follows without them.
    let mut writer = stream;
    writer.write_all(&bytes[sent as usize..])
}

/// Reads one line and the fds that came with it; None for a stream that
/// ended before any byte. The peer sends nothing after the line until
/// this side answers, so no byte past it is read.
fn recv_line_with_fds(stream: &UnixStream) -> io::Result<(Option<String>, Vec<OwnedFd>)> {
    let mut line = Vec::new();
    let mut fds = Vec::new();
    loop {
        let mut buf = [0u8; 512];
        let mut control: ControlBuffer = [0; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is a valid empty message.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control) as _;
        // SAFETY: `msg` points to `buf` and `control`, writable and alive
        // for the call.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: the kernel filled `msg_controllen` bytes of `control`
        // with well-formed headers; CMSG_FIRSTHDR/NXTHDR stay inside
        // them; SCM_RIGHTS data is an array of fds now ours.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / mem::size_of::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(ptr::read_unaligned(data.add(i))));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("more fds came than expected"));
        }
        if n == 0 {
            if line.is_empty() {
                return Ok((None, fds));
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        line.extend_from_slice(&buf[..n as usize]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            return Ok((Some(String::from_utf8_lossy(&line).into_owned()), fds));
        }
        if line.len() > 4096 {
            return Err(io::Error::other("an answer line of over 4 KiB"));
        }
    }
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

    fn mode() -> SocketMode {
        SocketMode {
            copy_mode: true,
            ifaces: vec!["to-client".into(), "to-pods".into()],
        }
    }

    /// Two fds standing in for a program and a map.
    fn sharing() -> Sharing {
        let fds = (0..2)
            .map(|_| OwnedFd::from(std::fs::File::open("/dev/null").expect("open /dev/null")))
            .collect();
        Sharing {
            digest: "ab".repeat(32),
            program: SharedProgram { fds },
            mode: mode(),
        }
    }

    fn wait_request(listener: &Listener) -> Request {
        listener
            .requests()
            .recv_timeout(Duration::from_secs(5))
            .expect("a request within 5 s")
    }

    #[test]
    fn with_nobody_listening_there_is_nothing_to_take_over() {
        let dir = dir("none");
        assert_eq!(take_over(&dir).expect("no error"), TakeOver::NoneRunning);
        assert!(matches!(ask(&dir).expect("no error"), Running::None));
        // A socket file a crashed gateway left behind.
        drop(UnixListener::bind(dir.join(SOCKET_FILE)).expect("bind"));
        assert_eq!(take_over(&dir).expect("no error"), TakeOver::NoneRunning);
        assert!(matches!(ask(&dir).expect("no error"), Running::None));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_request_stops_the_running_gateway_which_answers_when_released() {
        let dir = dir("request");
        let stop = Arc::new(AtomicBool::new(false));
        let listener = Listener::start(&dir, Arc::clone(&stop), sharing()).expect("listen");
        let taker = std::thread::spawn({
            let dir = dir.clone();
            move || take_over(&dir)
        });
        let request = wait_request(&listener);
        assert!(stop.load(Ordering::Acquire), "the stop flag is set first");
        assert!(!taker.is_finished(), "the new gateway waits for the answer");
        request.released(&mode()).expect("answer");
        let outcome = taker.join().expect("no panic").expect("released");
        assert_eq!(outcome, TakeOver::Released(Some(mode())));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_program_comes_first_with_its_fds_and_nothing_stops_until_release() {
        let dir = dir("offer");
        let stop = Arc::new(AtomicBool::new(false));
        let listener = Listener::start(&dir, Arc::clone(&stop), sharing()).expect("listen");
        let Running::Offer(mut offer) = ask(&dir).expect("asked") else {
            panic!("the running gateway offered no program");
        };
        assert_eq!(offer.digest, "ab".repeat(32));
        assert_eq!(offer.mode, Some(mode()));
        let program = offer.program.take().expect("fds came");
        assert_eq!(program.fds.len(), 2);
        for fd in &program.fds {
            // SAFETY: F_GETFD on an fd we own.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert!(
                flags >= 0 && flags & libc::FD_CLOEXEC != 0,
                "a live close-on-exec fd"
            );
        }
        assert!(!stop.load(Ordering::Acquire), "the running gateway goes on");
        assert!(listener.request().is_none(), "no request before release");
        let releasing = std::thread::spawn(move || offer.release());
        let request = wait_request(&listener);
        assert!(stop.load(Ordering::Acquire), "the stop flag is set first");
        request.released(&mode()).expect("answer");
        let mode_back = releasing.join().expect("no panic").expect("released");
        assert_eq!(mode_back, Some(mode()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_gateway_of_an_earlier_version_offers_nothing_and_still_lets_go() {
        let dir = dir("earlier");
        // Session 5's listener: reads one line; anything but `release`
        // closes the connection.
        let listener = UnixListener::bind(dir.join(SOCKET_FILE)).expect("bind");
        let old = std::thread::spawn(move || {
            for stream in listener.incoming() {
                let stream = stream.expect("accept");
                if read_line(&stream, REQUEST_WAIT).as_deref() == Some(RELEASE) {
                    (&stream)
                        .write_all(b"released copy to-client,to-pods\n")
                        .expect("answer");
                    return;
                }
            }
        });
        assert!(matches!(ask(&dir).expect("asked"), Running::WithoutOffer));
        assert_eq!(
            take_over(&dir).expect("released"),
            TakeOver::Released(Some(mode()))
        );
        old.join().expect("no panic");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_control_buffer_holds_the_most_fds() {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((MAX_FDS * mem::size_of::<RawFd>()) as u32) };
        assert!(space as usize <= mem::size_of::<ControlBuffer>());
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
