//! AF_XDP sockets for one worker: one UMEM, one socket per
//! (port, interface, RX queue) the worker serves, all sharing the UMEM.
//!
//! Sharing one UMEM across a worker's sockets is what lets a frame received
//! on one interface be transmitted on another without a copy. Each
//! (interface, queue) pair gets its own fill and completion rings
//! (XDP_SHARED_UMEM; libxdp sets that up).
//!
//! Every frame of the UMEM is in exactly one place at a time, and its
//! [`Frame`] handle (neither `Copy` nor `Clone`) is how that is kept: the
//! worker's free list, an RX batch, a TX queue or the hold queue hold
//! handles; a fill, RX, TX or completion ring holds the frame itself, the
//! handle having been given up when the frame went on the ring and made
//! anew when it came off. Only this module makes handles (from the UMEM at
//! start-up, from the RX and completion rings), and the rings are private
//! to it, so a frame reaches a ring only by moving its handle there
//! ([`WorkerIo::receive`], [`WorkerIo::transmit`],
//! [`WorkerIo::reclaim_and_refill`]). Each socket counts the frames it gave
//! the kernel and got back ([`WorkerIo::frames_in_kernel`]), which lets the
//! worker check that no frame is lost or counted twice. The loop that
//! moves frames lives in the worker; this module sets things up and makes
//! the moves.
//!
//! Sockets are created with `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`: cipgw loads
//! its own XDP program ([`crate::bpf`]) and registers each socket's fd in its
//! XSKMAP. Zero-copy is tried first in `Auto` mode (veth has none: bind fails
//! with EOPNOTSUPP, and everything is rebuilt in copy mode).
//!
//! Opening is two steps so that a restart can do the slow one while the
//! gateway it replaces still holds the queues: [`WorkerIo::prepare`]
//! creates the UMEM (mapping and pinning its frames, ~10 ms for 16 MiB),
//! [`PreparedIo::bind`] binds the sockets (microseconds), trying a queue
//! again while the kernel is still freeing it from the old socket.

use std::collections::HashSet;
use std::ffi::{c_char, CString};
use std::fmt;
use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
pub use xsk_rs::socket::XdpStatistics;
pub use xsk_rs::umem::frame::{Data, DataMut};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

use crate::route::PortId;
use crate::wire::ethernet::MacAddr;

/// Whether to bind sockets in zero-copy mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Zero-copy where the driver has it, else copy mode.
    #[default]
    Auto,
    /// Zero-copy or fail.
    Required,
    /// Copy mode only.
    Off,
}

/// Sizes and modes of a worker's UMEM and sockets. Ring sizes must be
/// powers of two; the frame size a power of two of at least 2048.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    /// Bytes per UMEM frame (one packet per frame; no multi-buffer).
    pub frame_size: u32,
    /// Frames in the worker's UMEM, shared by all its sockets.
    pub frame_count: u32,
    /// Descriptors per RX ring.
    pub rx_size: u32,
    /// Descriptors per TX ring.
    pub tx_size: u32,
    /// Descriptors per fill ring.
    pub fill_size: u32,
    /// Descriptors per completion ring.
    pub comp_size: u32,
    /// Frames a worker takes from one RX ring per iteration.
    pub rx_batch: u32,
    /// How long an idle worker polls (yielding) before it sleeps.
    pub idle_spin: std::time::Duration,
    /// Headroom reserved for the application at the start of each frame,
    /// ahead of the kernel's XDP headroom.
    pub frame_headroom: u32,
    pub zero_copy: ZeroCopy,
    /// Bind with XDP_USE_NEED_WAKEUP (the kernel tells when a kick is
    /// needed, instead of the worker always making the syscall).
    pub need_wakeup: bool,
    /// Back the UMEM with huge pages where the kernel has enough of them
    /// reserved (`vm.nr_hugepages`), else as without the flag: memory
    /// advised for transparent huge pages (vendor/xsk-rs/CIPGW-PATCH.md;
    /// [`WorkerIo::huge_pages`] and [`WorkerIo::page_backing`] tell
    /// which). Every received frame's header prefetch is a TLB miss on
    /// small pages (two 2 KiB frames per 4 KiB page, thousands of
    /// frames), a nested page walk in a VM; a 2 MiB page holds a thousand
    /// frames.
    pub huge_pages: bool,
    /// Copy mode: descriptors the kernel sends per TX kick
    /// (XDP_MAX_TX_SKB_BUDGET, Linux 6.17+; the kernel's default is 32).
    /// Clamped to `tx_size`; older kernels keep 32.
    pub tx_budget: u32,
    /// Preferred busy polling of each socket's NAPI context, if wanted.
    pub busy_poll: Option<BusyPoll>,
}

/// Preferred busy polling (Documentation/networking/napi.rst): the
/// worker's syscalls on a socket run that socket's NAPI poll, and the
/// kernel leaves the NAPI to the worker while it keeps polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// SO_BUSY_POLL: how long a blocking call may busy-poll (µs). The
    /// worker's calls do not block, so this only has to be non-zero.
    pub usecs: u32,
    /// SO_BUSY_POLL_BUDGET: packets one busy poll may take in.
    pub budget: u16,
}

/// The kernel's copy-mode TX budget per kick (net/xdp/xsk.c TX_BATCH_SIZE).
pub const KERNEL_TX_BATCH: u32 = 32;

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frame_size: 2048,
            frame_count: 4096,
            rx_size: 2048,
            tx_size: 2048,
            fill_size: 2048,
            comp_size: 2048,
            rx_batch: 64,
            idle_spin: std::time::Duration::ZERO,
            frame_headroom: 0,
            zero_copy: ZeroCopy::Auto,
            need_wakeup: true,
            huge_pages: false,
            tx_budget: 2048,
            busy_poll: None,
        }
    }
}

/// One (port, interface, RX queue) a worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAssignment {
    pub port: PortId,
    pub ifname: String,
    pub ifindex: u32,
    pub queue: u32,
}

/// Why a worker's AF_XDP setup failed.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("AF_XDP configuration: {0}")]
    Config(String),
    #[error("creating the UMEM ({frames} frames of {frame_size} bytes): {source}")]
    Umem {
        frames: u32,
        frame_size: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("AF_XDP socket on {ifname} queue {queue} ({mode}): {reason}: {source}")]
    Socket {
        ifname: String,
        queue: u32,
        mode: &'static str,
        reason: String,
        #[source]
        source: io::Error,
    },
    #[error("{ifname} queue {queue} is assigned twice to the same worker")]
    DuplicateQueue { ifname: String, queue: u32 },
    #[error("interface {ifname}: {what}: {source}")]
    Interface {
        ifname: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl XskError {
    /// Whether binding failed because another socket still holds the
    /// queue: a gateway that is handing over closes its sockets, and the
    /// kernel lets go of a queue shortly after.
    pub fn is_queue_busy(&self) -> bool {
        matches!(self, XskError::Socket { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
    }
}

/// One frame of a worker's UMEM: owning the handle is owning the frame.
///
/// Neither `Copy` nor `Clone`, so a frame cannot be queued twice or kept
/// after it was handed on: giving a frame to a ring, a queue or the free
/// list moves its handle there. Dropping a handle loses its frame for as
/// long as the worker runs; debug builds of the worker notice (see the
/// module doc). The frame's address and lengths are all it holds, laid
/// out as xsk-rs's descriptor so a slice of handles is a slice of
/// descriptors for the rings.
///
/// ```compile_fail,E0599
/// fn twice(frame: cipgw::xsk::Frame) -> (cipgw::xsk::Frame, cipgw::xsk::Frame) {
///     (frame.clone(), frame)
/// }
/// ```
#[repr(transparent)]
#[derive(Debug)]
#[must_use = "a frame goes on a ring, a queue or the free list; dropped, it is lost to the UMEM"]
pub struct Frame(FrameDesc);

impl Frame {
    /// Bytes of packet data in the frame.
    #[inline]
    fn len(&self) -> usize {
        self.0.lengths().data()
    }
}

/// The descriptors of `frames`, for a ring to copy.
#[inline]
fn descriptors(frames: &[Frame]) -> &[FrameDesc] {
    // SAFETY: `Frame` is `repr(transparent)` over `FrameDesc`, so a slice
    // of one has the layout of a slice of the other of the same length;
    // the result borrows `frames` and shares its lifetime.
    unsafe { std::slice::from_raw_parts(frames.as_ptr().cast::<FrameDesc>(), frames.len()) }
}

/// The rings of one AF_XDP socket and where it is bound.
pub struct PortSocket {
    pub port: PortId,
    pub ifname: String,
    pub ifindex: u32,
    pub queue: u32,
    /// Whether the socket is bound in zero-copy mode.
    pub zero_copy: bool,
    /// Whether the socket was bound with XDP_USE_NEED_WAKEUP (else every
    /// kick is a syscall).
    pub need_wakeup: bool,
    /// Whether busy polling is set on the socket.
    pub busy_poll: bool,
    /// Descriptors in the TX ring.
    pub tx_size: u32,
    tx: TxQueue,
    rx: RxQueue,
    fill: FillQueue,
    comp: CompQueue,
    /// Frames given to the fill ring and not yet taken off the RX ring
    /// (on either ring, or with the driver in between).
    receiving: u32,
    /// Frames given to the TX ring and not yet taken off the completion
    /// ring.
    transmitting: u32,
}

impl fmt::Debug for PortSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortSocket")
            .field("port", &self.port)
            .field("ifname", &self.ifname)
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("zero_copy", &self.zero_copy)
            .field("fd", &self.fd())
            .field("receiving", &self.receiving)
            .field("transmitting", &self.transmitting)
            .finish_non_exhaustive()
    }
}

impl PortSocket {
    /// The socket's fd, for [`crate::bpf::XdpProgram::register_socket`].
    #[inline]
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// The kernel's drop and ring counters for this socket.
    pub fn stats(&self) -> io::Result<XdpStatistics> {
        self.rx.fd().xdp_statistics()
    }

    /// Kicks the kernel to transmit what was queued on the TX ring, if it
    /// asked for a kick (XDP_USE_NEED_WAKEUP; always, without it) — a
    /// `sendto` syscall only then. Transient "try again" errors are not
    /// errors.
    #[inline]
    pub fn kick_tx(&mut self) -> io::Result<()> {
        if !self.need_wakeup || self.tx.needs_wakeup() {
            self.tx.wakeup()?;
        }
        Ok(())
    }

    /// Descriptors on the TX ring the kernel has not taken yet. In copy
    /// mode the kernel takes them only during a kick, at most its TX
    /// budget per kick, so a non-zero count means another kick is due.
    #[inline]
    pub fn tx_unsent(&mut self) -> u32 {
        self.tx_size - self.tx.nb_free_exact()
    }

    /// Busy polling: runs the socket's NAPI poll once from this thread (a
    /// non-blocking `recvfrom`, which the kernel turns into one busy-poll
    /// round when SO_BUSY_POLL is set), so the RX ring fills without
    /// waiting for the kernel's softirq or NAPI thread. Does nothing until
    /// the socket has seen its first packet (the kernel learns the
    /// socket's NAPI id from it).
    #[inline]
    pub fn busy_poll_rx(&mut self) {
        // SAFETY: a zero-length receive into no buffer on an fd this
        // socket owns; MSG_DONTWAIT keeps it from blocking. The result is
        // of no interest: frames show up on the RX ring.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Wakes the driver to pick up new fill-ring entries, if it asked for
    /// it: a zero-timeout `poll` on the socket.
    #[inline]
    pub fn kick_fill(&mut self) -> io::Result<()> {
        if self.fill.needs_wakeup() {
            self.fill.wakeup(self.rx.fd_mut(), 0)?;
        }
        Ok(())
    }
}

/// Everything one worker needs to move packets: its UMEM, its free
/// frames, and its sockets.
pub struct WorkerIo {
    umem: Umem,
    /// Frames the worker holds that nothing else uses; room for every
    /// frame of the UMEM, so it never grows.
    free: Vec<Frame>,
    /// Descriptors the RX and completion rings write into, copied into
    /// handles at once: as long as the longer of an RX batch and a
    /// completion ring.
    scratch: Vec<FrameDesc>,
    pub sockets: Vec<PortSocket>,
    /// The configuration the UMEM and sockets were built with.
    pub config: XskConfig,
    /// Largest packet a frame holds (frame size minus headrooms).
    pub frame_mtu: u32,
    /// What backs the UMEM ([`WorkerIo::page_backing`]).
    pages: UmemPages,
}

impl fmt::Debug for WorkerIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerIo")
            .field("free", &self.free.len())
            .field("sockets", &self.sockets)
            .field("config", &self.config)
            .field("frame_mtu", &self.frame_mtu)
            .finish_non_exhaustive()
    }
}

impl WorkerIo {
    /// Creates the worker's UMEM and binds one socket per assignment, in
    /// the calling thread's network namespace. Does not touch XDP programs
    /// or maps: register each [`PortSocket::fd`] with the XDP program
    /// afterwards.
    pub fn open(config: &XskConfig, queues: &[QueueAssignment]) -> Result<WorkerIo, XskError> {
        let now = Instant::now();
        match config.zero_copy {
            ZeroCopy::Off => Self::prepare(config, queues, false)?.bind(now),
            ZeroCopy::Required => Self::prepare(config, queues, true)?.bind(now),
            ZeroCopy::Auto => Self::prepare(config, queues, true)?.bind_or_copy(now),
        }
    }

    /// Whether the UMEM got reserved huge pages (see
    /// [`XskConfig::huge_pages`]).
    pub fn huge_pages(&self) -> bool {
        self.pages.huge_pages
    }

    /// The UMEM's size in bytes: in copy mode its frames lie a little
    /// more than a frame apart ([`COPY_MODE_FRAME_SPREAD`]).
    pub fn umem_bytes(&self) -> u64 {
        self.pages.bytes
    }

    /// How the kernel backs the UMEM (transparent huge pages or not), or
    /// `None` where /proc/self/smaps cannot tell. Reads the whole smaps
    /// file: for the start-up report. Asked of the bound sockets' UMEM,
    /// it describes the one they use, also when zero-copy binding failed
    /// and copy mode made a fresh one.
    pub fn page_backing(&self) -> Option<cipgw_datapath::PageBacking> {
        if self.pages.start == 0 {
            return None;
        }
        cipgw_datapath::page_backing(self.pages.start)
    }

    /// Creates the worker's UMEM for sockets in zero-copy or copy mode,
    /// without binding any: what can be done while another process (a
    /// gateway about to let go) still holds the queues.
    pub fn prepare(
        config: &XskConfig,
        queues: &[QueueAssignment],
        zero_copy: bool,
    ) -> Result<PreparedIo, XskError> {
        Self::prepare_until(config, queues, zero_copy, None)
    }

    /// [`WorkerIo::prepare`]; with `huge_pages_until`, reserved huge pages
    /// too few to map are tried again until then (see
    /// [`PreparedIo::prepare_again`]).
    fn prepare_until(
        config: &XskConfig,
        queues: &[QueueAssignment],
        zero_copy: bool,
        huge_pages_until: Option<Instant>,
    ) -> Result<PreparedIo, XskError> {
        let mut seen = HashSet::new();
        for q in queues {
            if !seen.insert((q.ifname.as_str(), q.queue)) {
                return Err(XskError::DuplicateQueue {
                    ifname: q.ifname.clone(),
                    queue: q.queue,
                });
            }
        }
        let umem_config = umem_config(config, zero_copy)?;
        let frame_mtu = umem_config.mtu();
        let frames = NonZeroU32::new(config.frame_count)
            .ok_or_else(|| XskError::Config("frame_count must be positive".into()))?;
        let umem_error = |e: &dyn std::error::Error| XskError::Umem {
            frames: config.frame_count,
            frame_size: config.frame_size,
            source: Box::new(io::Error::other(error_chain(e))),
        };
        // Reserved huge pages only where the kernel has them (MAP_HUGETLB
        // fails otherwise): then memory advised for transparent huge
        // pages, which works the same on whatever pages it gets.
        let huge = if config.huge_pages {
            umem_on_huge_pages(umem_config, frames, huge_pages_until)
        } else {
            None
        };
        let huge_pages = huge.is_some();
        let (umem, descs) = match huge {
            Some(umem) => umem,
            None => Umem::new(umem_config, frames, false).map_err(|e| umem_error(&e))?,
        };
        let start = match descs.first() {
            // SAFETY: `first` is one of this UMEM's own descriptors, on no
            // ring yet; only its address is taken, nothing is read.
            Some(first) => unsafe { umem.data(first) }.contents().as_ptr() as usize,
            None => 0,
        };
        Ok(PreparedIo {
            umem,
            descs,
            pages: UmemPages {
                huge_pages,
                start,
                bytes: u64::from(config.frame_count) * u64::from(umem_config.frame_stride()),
            },
            frame_mtu,
            config: *config,
            queues: queues.to_vec(),
            zero_copy,
        })
    }

    /// Frames in the UMEM (wherever they currently are).
    #[inline]
    pub fn frame_count(&self) -> u32 {
        self.config.frame_count
    }

    /// Frames on the free list.
    #[inline]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Frames the kernel has: given to the sockets' fill or TX rings and
    /// not yet back from their RX or completion rings.
    pub fn frames_in_kernel(&self) -> FramesInKernel {
        // Each socket gets back on its RX and completion rings what it
        // gave its own fill and TX rings, so no count goes below zero;
        // should one, wrapping shows it as a wrong total in the worker's
        // check rather than as an overflow panic here.
        let (mut receiving, mut transmitting) = (0u32, 0u32);
        for s in &self.sockets {
            receiving = receiving.wrapping_add(s.receiving);
            transmitting = transmitting.wrapping_add(s.transmitting);
        }
        FramesInKernel {
            receiving: receiving as usize,
            transmitting: transmitting as usize,
        }
    }

    /// Puts a frame back on the free list.
    #[inline]
    pub fn recycle(&mut self, frame: Frame) {
        self.free.push(frame);
    }

    /// Puts frames back on the free list.
    #[inline]
    pub fn recycle_all(&mut self, frames: impl IntoIterator<Item = Frame>) {
        self.free.extend(frames);
    }

    /// The packet data of a frame, to read.
    ///
    /// # Safety
    ///
    /// `frame` must be a frame of this `WorkerIo` (one worker's handles
    /// never meet another's UMEM). Holding the handle is what makes the
    /// access exclusive: the kernel has no frame whose handle is out.
    #[inline]
    pub unsafe fn data<'a>(&'a self, frame: &'a Frame) -> Data<'a> {
        // SAFETY: the frame belongs to this UMEM (the caller's promise)
        // and, its handle being out, is on no ring; `&Frame` rules out a
        // writer through the same handle.
        unsafe { self.umem.data(&frame.0) }
    }

    /// The packet data of a frame, to write; its cursor sets the length.
    ///
    /// # Safety
    ///
    /// As for [`WorkerIo::data`].
    #[inline]
    pub unsafe fn data_mut<'a>(&'a self, frame: &'a mut Frame) -> DataMut<'a> {
        // SAFETY: as in `data`; `&mut Frame` makes this the only access
        // to the frame while the result lives.
        unsafe { self.umem.data_mut(&mut frame.0) }
    }

    /// Gives up to `per_socket` free frames to each socket's fill ring so
    /// the kernel can receive into them; returns how many were given in
    /// total. Frames stay on the free list where a ring is full or the
    /// free list runs out.
    pub fn prefill(&mut self, per_socket: usize) -> usize {
        let mut given = 0;
        for s in 0..self.sockets.len() {
            given += self.fill(s, per_socket);
            let socket = &mut self.sockets[s];
            if let Err(e) = socket.kick_fill() {
                tracing::debug!(
                    ifname = %socket.ifname, queue = socket.queue, error = %e, "fill wakeup"
                );
            }
        }
        given
    }

    /// Socket `s`: frames the kernel finished sending back to the free
    /// list, then free frames onto the fill ring (waking the driver if it
    /// asked for it).
    pub fn reclaim_and_refill(&mut self, s: usize) {
        let socket = &mut self.sockets[s];
        let room = (self.free.capacity() - self.free.len()).min(self.scratch.len());
        // SAFETY: the ring writes descriptors of frames of this UMEM (all
        // the worker's sockets share it) that the kernel has finished
        // with; each becomes the one handle to its frame.
        let done = unsafe { socket.comp.consume(&mut self.scratch[..room]) };
        socket.transmitting = socket.transmitting.wrapping_sub(done as u32);
        self.free
            .extend(self.scratch[..done].iter().map(|&desc| Frame(desc)));
        if self.fill(s, usize::MAX) > 0 {
            // Only a syscall when the kernel asked for one.
            let _ = self.sockets[s].kick_fill();
        }
    }

    /// Moves up to `max` frames from the end of the free list onto socket
    /// `s`'s fill ring; returns how many.
    fn fill(&mut self, s: usize, max: usize) -> usize {
        let socket = &mut self.sockets[s];
        let wanted = max.min(self.free.len());
        if wanted == 0 {
            return 0;
        }
        // A reservation is all-or-nothing: ask only for what fits.
        let room = socket
            .fill
            .nb_free(u32::try_from(wanted).unwrap_or(u32::MAX));
        let from = self.free.len() - wanted.min(room as usize);
        // SAFETY: free frames belong to this UMEM and, their handles being
        // on the free list, are on no ring and used by nobody: the kernel
        // may write them.
        let given = unsafe { socket.fill.produce(descriptors(&self.free[from..])) };
        // `produce` takes all or nothing; given frames are the kernel's
        // now, and their handles go.
        self.free.truncate(self.free.len() - given);
        socket.receiving = socket.receiving.wrapping_add(given as u32);
        given
    }

    /// Takes frames off socket `s`'s RX ring onto the end of `batch`: at
    /// most an RX batch, and no more than `batch` has room for (it never
    /// grows). Returns how many.
    pub fn receive(&mut self, s: usize, batch: &mut Vec<Frame>) -> usize {
        let socket = &mut self.sockets[s];
        let room = (batch.capacity() - batch.len())
            .min(self.config.rx_batch as usize)
            .min(self.scratch.len());
        // SAFETY: the ring writes descriptors of frames of this UMEM the
        // kernel received into and hands over; each becomes the one handle
        // to its frame.
        let n = unsafe { socket.rx.consume(&mut self.scratch[..room]) };
        socket.receiving = socket.receiving.wrapping_sub(n as u32);
        batch.extend(self.scratch[..n].iter().map(|&desc| Frame(desc)));
        n
    }

    /// Moves frames from the front of `queue` onto socket `s`'s TX ring,
    /// as many as fit; the rest stay queued, in order.
    pub fn transmit(&mut self, s: usize, queue: &mut Vec<Frame>) -> Sent {
        let socket = &mut self.sockets[s];
        if queue.is_empty() {
            return Sent::default();
        }
        // A reservation is all-or-nothing: ask for what fits.
        let room = socket
            .tx
            .nb_free(u32::try_from(queue.len()).unwrap_or(u32::MAX));
        let fits = queue.len().min(room as usize);
        // SAFETY: queued frames belong to this UMEM and are on no ring;
        // once produced the kernel owns them until they come back on the
        // completion ring, and their handles go.
        let frames = unsafe { socket.tx.produce(descriptors(&queue[..fits])) };
        let bytes = queue[..frames].iter().map(Frame::len).sum();
        queue.drain(..frames);
        socket.transmitting = socket.transmitting.wrapping_add(frames as u32);
        Sent { frames, bytes }
    }
}

/// What [`WorkerIo::transmit`] put on a TX ring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub frames: usize,
    pub bytes: usize,
}

/// Frames with the kernel, by direction ([`WorkerIo::frames_in_kernel`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FramesInKernel {
    /// On fill rings, with the driver, or on RX rings.
    pub receiving: usize,
    /// On TX rings, being sent, or on completion rings.
    pub transmitting: usize,
}

/// A worker's UMEM, created before its sockets are bound
/// ([`WorkerIo::prepare`]).
pub struct PreparedIo {
    umem: Umem,
    descs: Vec<FrameDesc>,
    frame_mtu: u32,
    config: XskConfig,
    queues: Vec<QueueAssignment>,
    zero_copy: bool,
    pages: UmemPages,
}

/// What a UMEM lies on, kept to report it once its sockets are bound.
#[derive(Debug, Clone, Copy)]
struct UmemPages {
    /// Whether it is on reserved huge pages.
    huge_pages: bool,
    /// The address of its first frame (0 for none), to find its mapping
    /// in /proc/self/smaps.
    start: usize,
    /// Its size: frames times their stride.
    bytes: u64,
}

impl UmemPages {
    /// Until when a UMEM made to replace this one, just closed, may wait
    /// for the reserved huge pages this one held; `None` if it held none.
    fn released_by(self) -> Option<Instant> {
        self.huge_pages.then(|| Instant::now() + HUGE_PAGES_RELEASE)
    }
}

impl fmt::Debug for PreparedIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedIo")
            .field("frames", &self.descs.len())
            .field("queues", &self.queues)
            .field("zero_copy", &self.zero_copy)
            .finish_non_exhaustive()
    }
}

/// How long a bind waits before trying a busy queue again.
const BUSY_RETRY: Duration = Duration::from_micros(200);

/// How long a UMEM made again ([`PreparedIo::prepare_again`]) waits for
/// the reserved huge pages the one it replaces held. The kernel unpins a
/// closed UMEM's pages from a work queue (`xdp_umem_release_deferred`),
/// a moment after the close; until then they are not free.
const HUGE_PAGES_RELEASE: Duration = Duration::from_secs(1);

/// How long a UMEM made again waits before trying huge pages again.
const HUGE_PAGES_RETRY: Duration = Duration::from_millis(1);

impl PreparedIo {
    /// Whether the sockets are to be bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Drops this UMEM and prepares a fresh one for the same queues, in
    /// zero-copy mode or not. If this one was on reserved huge pages, the
    /// fresh one waits for the kernel to give them back (at most
    /// [`HUGE_PAGES_RELEASE`]): otherwise a pool reserved for one UMEM
    /// would leave the fresh one without.
    pub fn prepare_again(self, zero_copy: bool) -> Result<PreparedIo, XskError> {
        let PreparedIo {
            umem,
            descs,
            config,
            queues,
            pages,
            ..
        } = self;
        drop((descs, umem));
        WorkerIo::prepare_until(&config, &queues, zero_copy, pages.released_by())
    }

    /// [`PreparedIo::bind`]; if zero-copy binding fails, everything is
    /// made again in copy mode.
    pub fn bind_or_copy(self, busy_until: Instant) -> Result<WorkerIo, XskError> {
        if !self.zero_copy || self.config.zero_copy == ZeroCopy::Required {
            return self.bind(busy_until);
        }
        let (config, queues, pages) = (self.config, self.queues.clone(), self.pages);
        match self.bind(busy_until) {
            Ok(io) => Ok(io),
            Err(e @ XskError::Socket { .. }) if !e.is_queue_busy() => {
                tracing::info!(
                    error = %e,
                    "AF_XDP zero-copy unavailable, using copy mode"
                );
                // Everything built so far was dropped with the error;
                // start over with a fresh UMEM in copy mode, on the huge
                // pages the dropped one held once the kernel frees them.
                WorkerIo::prepare_until(&config, &queues, false, pages.released_by())?
                    .bind(busy_until)
            }
            Err(e) => Err(e),
        }
    }

    /// Binds one socket per queue on the UMEM. A queue another socket
    /// still holds (the kernel frees a closed socket's queue a moment
    /// later, from a work queue) is tried again, cheaply, until
    /// `busy_until`.
    pub fn bind(self, busy_until: Instant) -> Result<WorkerIo, XskError> {
        let PreparedIo {
            umem,
            descs,
            frame_mtu,
            config,
            queues,
            zero_copy,
            pages,
        } = self;
        let config = &config;
        let socket_config = socket_config(config, zero_copy)?;
        let mode = if zero_copy { "zero-copy" } else { "copy mode" };

        let mut sockets = Vec::with_capacity(queues.len());
        for q in &queues {
            let iface: Interface = q.ifname.parse().map_err(|_| XskError::Interface {
                ifname: q.ifname.clone(),
                what: "interface name",
                source: io::Error::from(io::ErrorKind::InvalidInput),
            })?;
            let mut busy = 0u32;
            let created = loop {
                // SAFETY: every socket is created with
                // XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD (see `socket_config`),
                // which is what xsk-rs requires when a UMEM is shared;
                // (interface, queue) pairs are unique (checked in
                // `WorkerIo::prepare`), so each socket gets fresh fill and
                // completion rings. A failed attempt leaves the UMEM as it
                // was (libxdp and xsk-rs undo it), so trying again is sound.
                let created = unsafe { Socket::new(socket_config, &umem, &iface, q.queue) };
                match created {
                    Err(e) if os_error(&e) == Some(libc::EBUSY) && Instant::now() < busy_until => {
                        busy += 1;
                        std::thread::sleep(BUSY_RETRY);
                    }
                    other => break other,
                }
            };
            let (tx, rx, rings) = created.map_err(|e| XskError::Socket {
                ifname: q.ifname.clone(),
                queue: q.queue,
                mode,
                reason: e.to_string(),
                source: os_error(&e)
                    .map(io::Error::from_raw_os_error)
                    .unwrap_or_else(|| io::Error::other("no OS error")),
            })?;
            let (fill, comp) = rings.ok_or_else(|| XskError::Socket {
                ifname: q.ifname.clone(),
                queue: q.queue,
                mode,
                reason: "libxdp returned no fill/completion rings".into(),
                source: io::Error::other("shared (interface, queue) context"),
            })?;
            tracing::debug!(ifname = %q.ifname, queue = q.queue, mode, busy, "AF_XDP socket bound");
            let fd = rx.fd().as_raw_fd();
            if !zero_copy && config.tx_budget > KERNEL_TX_BATCH {
                let budget = config.tx_budget.min(config.tx_size);
                if let Err(e) = set_socket_option(fd, SOL_XDP, XDP_MAX_TX_SKB_BUDGET, budget) {
                    tracing::debug!(
                        ifname = %q.ifname, queue = q.queue, budget, error = %e,
                        "copy-mode TX budget not raised (needs Linux 6.17); 32 frames per kick"
                    );
                }
            }
            let busy_poll = match config.busy_poll {
                Some(b) => match enable_busy_poll(fd, b) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(
                            ifname = %q.ifname, queue = q.queue, mode, error = %e,
                            "busy polling unavailable on this socket; the kernel's \
                             softirq or NAPI thread fills its RX ring"
                        );
                        false
                    }
                },
                None => false,
            };
            sockets.push(PortSocket {
                port: q.port,
                ifname: q.ifname.clone(),
                ifindex: q.ifindex,
                queue: q.queue,
                zero_copy,
                need_wakeup: config.need_wakeup,
                busy_poll,
                tx_size: config.tx_size,
                tx,
                rx,
                fill,
                comp,
                receiving: 0,
                transmitting: 0,
            });
        }
        // The only handles made from nothing: one per frame of a new UMEM.
        let mut free = Vec::with_capacity(descs.len());
        free.extend(descs.into_iter().map(Frame));
        let scratch_len = config.rx_batch.max(config.comp_size) as usize;
        Ok(WorkerIo {
            umem,
            free,
            scratch: vec![FrameDesc::default(); scratch_len],
            sockets,
            config: *config,
            frame_mtu,
            pages,
        })
    }
}

/// A UMEM on reserved huge pages, or `None` where too few are free;
/// tried again until `until`, if given (see [`PreparedIo::prepare_again`]).
fn umem_on_huge_pages(
    config: UmemConfig,
    frames: NonZeroU32,
    until: Option<Instant>,
) -> Option<(Umem, Vec<FrameDesc>)> {
    loop {
        match Umem::new(config, frames, true) {
            Ok(umem) => return Some(umem),
            Err(_) if until.is_some_and(|until| Instant::now() < until) => {
                std::thread::sleep(HUGE_PAGES_RETRY);
            }
            Err(_) => return None,
        }
    }
}

/// The OS error behind a socket's creation failing, if any.
fn os_error(e: &xsk_rs::socket::SocketCreateError) -> Option<i32> {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(io::Error::raw_os_error)
}

/// Bytes between the frames of a copy-mode UMEM beyond the frame size:
/// one cache line.
///
/// Every received packet starts at the same offset of its frame, so with
/// frames a power of two apart every packet's first line falls in the
/// same few cache sets: with 2 KiB frames, two of the L1 data cache's 64
/// sets (16 lines, for a batch of 64 headers) and 64 of a 1 MiB L2's
/// 2,048 (512 lines, for an RX ring of 2,048). A line more per frame
/// moves each frame's packet a line on from the last one's, over every
/// set. Measured on veth (benches/RESULTS.md, session 37): the worker's
/// loop took 22-26% less of the gateway core, and the kernel's taking of
/// a buffer for each received frame (`xp_alloc`) nine tenths less, as an
/// unaligned pool hands out buffer heads from a stack of hot ones.
///
/// Copy mode only: such frames are registered as unaligned chunks
/// (vendor/xsk-rs/CIPGW-PATCH.md), and for zero-copy the kernel refuses
/// a fill-ring chunk that crosses into a page not physically contiguous
/// with its first (and the frame is lost with it), which frames off a
/// power-of-two stride do on 4 KiB pages. Zero-copy frames stay aligned.
pub const COPY_MODE_FRAME_SPREAD: u32 = 64;

/// Bytes from one frame's start to the next in a UMEM for zero-copy or
/// copy mode (see [`COPY_MODE_FRAME_SPREAD`]).
fn frame_stride(c: &XskConfig, zero_copy: bool) -> u32 {
    if zero_copy {
        c.frame_size
    } else {
        c.frame_size.saturating_add(COPY_MODE_FRAME_SPREAD)
    }
}

fn umem_config(c: &XskConfig, zero_copy: bool) -> Result<UmemConfig, XskError> {
    let frame_size = FrameSize::new(c.frame_size).map_err(|e| XskError::Config(e.to_string()))?;
    UmemConfig::builder()
        .frame_size(frame_size)
        .frame_stride(frame_stride(c, zero_copy))
        .fill_queue_size(queue_size("fill_size", c.fill_size)?)
        .comp_queue_size(queue_size("comp_size", c.comp_size)?)
        .frame_headroom(c.frame_headroom)
        .build()
        .map_err(|e| XskError::Config(e.to_string()))
}

fn socket_config(c: &XskConfig, zero_copy: bool) -> Result<SocketConfig, XskError> {
    let mut bind = if zero_copy {
        BindFlags::XDP_ZEROCOPY
    } else {
        BindFlags::XDP_COPY
    };
    if c.need_wakeup {
        bind |= BindFlags::XDP_USE_NEED_WAKEUP;
    }
    Ok(SocketConfig::builder()
        .rx_queue_size(queue_size("rx_size", c.rx_size)?)
        .tx_queue_size(queue_size("tx_size", c.tx_size)?)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .xdp_flags(XdpFlags::empty())
        .bind_flags(bind)
        .build())
}

/// linux/socket.h: the AF_XDP socket option level.
const SOL_XDP: libc::c_int = 283;
/// linux/if_xdp.h (6.17+): copy-mode descriptors sent per TX kick.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

fn set_socket_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: u32,
) -> io::Result<()> {
    // SAFETY: `value` is a live u32 for the duration of the call and its
    // size is passed along; the kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SO_PREFER_BUSY_POLL, SO_BUSY_POLL and SO_BUSY_POLL_BUDGET on one
/// socket (setting SO_BUSY_POLL needs CAP_NET_ADMIN above the sysctl),
/// once it is known that the kernel can busy-poll it.
///
/// A socket busy-polls the NAPI whose id it carries. Since Linux 6.13
/// (commit "xsk: Bring back busy polling support") an AF_XDP socket gets
/// that id at bind, and only in zero-copy mode from a driver that maps
/// its queues to NAPIs; a copy-mode socket (veth, or any driver without
/// zero-copy) has none, so busy polling cannot work there and would only
/// delay receive (the interface's NAPI would wait for its timer).
fn enable_busy_poll(fd: RawFd, b: BusyPoll) -> io::Result<()> {
    let napi_id = get_socket_option(fd, libc::SOL_SOCKET, libc::SO_INCOMING_NAPI_ID)?;
    if napi_id == 0 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the socket has no NAPI id (copy mode, or a driver that does not map \
             queues to NAPIs): nothing to busy-poll",
        ));
    }
    set_socket_option(fd, libc::SOL_SOCKET, libc::SO_PREFER_BUSY_POLL, 1)?;
    set_socket_option(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, b.usecs)?;
    set_socket_option(
        fd,
        libc::SOL_SOCKET,
        libc::SO_BUSY_POLL_BUDGET,
        u32::from(b.budget),
    )
}

fn get_socket_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<u32> {
    let mut value: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live for the call and `len` holds the
    // size of `value`, which the kernel writes at most.
    let ret =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut u32).cast(), &mut len) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

fn queue_size(what: &str, n: u32) -> Result<QueueSize, XskError> {
    QueueSize::new(n).map_err(|e| XskError::Config(format!("{what}: {e}")))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

// ---------------------------------------------------------------------
// Interface facts, from the calling thread's network namespace (ioctls on
// a socket follow the thread's namespace; /sys may belong to another).

/// The ifindex of an interface.
pub fn interface_index(ifname: &str) -> io::Result<u32> {
    let name = CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(index)
}

/// The Ethernet address of an interface.
pub fn interface_mac(ifname: &str) -> io::Result<MacAddr> {
    let sock = ioctl_socket()?;
    let mut req = ifreq(ifname)?;
    // SAFETY: SIOCGIFHWADDR reads the name and writes `ifru_hwaddr` of a
    // properly sized ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl succeeded, so the union holds a hardware address.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if i32::from(hw.sa_family) != i32::from(libc::ARPHRD_ETHER) {
        return Err(io::Error::other(format!(
            "{ifname} is not an Ethernet interface (ARPHRD {})",
            hw.sa_family
        )));
    }
    let mut mac = [0u8; 6];
    for (m, &b) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *m = b as u8;
    }
    Ok(mac)
}

/// `struct ethtool_channels` (linux/ethtool.h).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// linux/ethtool.h: get channel counts.
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// How many RX queues an interface has in use: the driver's channel
/// counts (rx + combined, as `ethtool -l` shows them), else the
/// `queues/rx-*` entries in sysfs when that sysfs shows this namespace's
/// interface, else 1.
pub fn rx_queue_count(ifname: &str) -> io::Result<u32> {
    let ifindex = interface_index(ifname)?;
    let sock = ioctl_socket()?;
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..Default::default()
    };
    let mut req = ifreq(ifname)?;
    req.ifr_ifru.ifru_data = (&mut channels as *mut EthtoolChannels).cast::<c_char>();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GCHANNELS reads and writes a
    // `struct ethtool_channels`, which `ifru_data` points to and which
    // outlives the call.
    let ret = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if ret == 0 {
        let n = channels.rx_count.saturating_add(channels.combined_count);
        if n > 0 {
            return Ok(n);
        }
    }
    // No channel info (EOPNOTSUPP): ask sysfs, if it is this namespace's.
    let dir = format!("/sys/class/net/{ifname}");
    let sysfs_index = fs::read_to_string(format!("{dir}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if sysfs_index == Some(ifindex) {
        if let Ok(entries) = fs::read_dir(format!("{dir}/queues")) {
            let n = entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count();
            if n > 0 {
                return Ok(u32::try_from(n).unwrap_or(u32::MAX));
            }
        }
    }
    Ok(1)
}

/// `napi_defer_hard_irqs` and `gro_flush_timeout` of one interface, set
/// for preferred busy polling and put back as they were when dropped.
///
/// With both non-zero, a NAPI poll that ends (in busy polling or not)
/// leaves the device's interrupts masked and arms a timer instead; while
/// the worker busy-polls more often than the timer's period, the kernel's
/// own receive path (softirq, or the NAPI thread) stays out of the way.
/// For veth the "interrupt" is the peer's transmit scheduling the NAPI.
#[derive(Debug)]
pub struct NapiTuning {
    dir: String,
    old_defer: String,
    old_timeout: String,
}

impl NapiTuning {
    /// Sets the interface's values through sysfs, if the sysfs mounted
    /// here shows the calling thread's namespace's interface (else
    /// `Ok(None)`: nothing to set there, busy polling then works without
    /// the timer's help only).
    pub fn apply(
        ifname: &str,
        defer_hard_irqs: u32,
        gro_flush_timeout_ns: u64,
    ) -> io::Result<Option<NapiTuning>> {
        let ifindex = interface_index(ifname)?;
        let dir = format!("/sys/class/net/{ifname}");
        let sysfs_index = fs::read_to_string(format!("{dir}/ifindex"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if sysfs_index != Some(ifindex) {
            return Ok(None);
        }
        let old_defer = fs::read_to_string(format!("{dir}/napi_defer_hard_irqs"))?;
        let old_timeout = fs::read_to_string(format!("{dir}/gro_flush_timeout"))?;
        fs::write(
            format!("{dir}/napi_defer_hard_irqs"),
            defer_hard_irqs.to_string(),
        )?;
        let tuning = NapiTuning {
            dir,
            old_defer: old_defer.trim().to_owned(),
            old_timeout: old_timeout.trim().to_owned(),
        };
        // From here on, dropping `tuning` puts both values back.
        fs::write(
            format!("{}/gro_flush_timeout", tuning.dir),
            gro_flush_timeout_ns.to_string(),
        )?;
        Ok(Some(tuning))
    }
}

impl Drop for NapiTuning {
    fn drop(&mut self) {
        for (file, value) in [
            ("napi_defer_hard_irqs", &self.old_defer),
            ("gro_flush_timeout", &self.old_timeout),
        ] {
            if let Err(e) = fs::write(format!("{}/{file}", self.dir), value) {
                tracing::warn!(dir = %self.dir, file, error = %e, "could not restore a NAPI setting");
            }
        }
    }
}

fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the fd was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(ifname: &str) -> io::Result<libc::ifreq> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data (a name array and a union of plain
    // fields); all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as c_char;
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let c = XskConfig::default();
        for zero_copy in [true, false] {
            let u = umem_config(&c, zero_copy).expect("umem config");
            assert_eq!(u.frame_size().get(), 2048);
            assert!(u.mtu() >= 1514, "a frame holds a full Ethernet frame");
            socket_config(&c, zero_copy).expect("socket config");
        }
    }

    #[test]
    fn copy_mode_frames_lie_a_line_more_than_a_frame_apart() {
        let c = XskConfig::default();
        let zero_copy = umem_config(&c, true).expect("zero-copy umem config");
        assert_eq!(zero_copy.frame_stride(), 2048);
        assert!(
            !zero_copy.unaligned_chunks(),
            "zero-copy frames stay aligned"
        );
        let copy = umem_config(&c, false).expect("copy-mode umem config");
        assert_eq!(copy.frame_stride(), 2048 + 64);
        assert!(copy.unaligned_chunks());
        assert_eq!(copy.mtu(), zero_copy.mtu(), "the spread adds no room");
        // Every packet a line on from the last one's: 64 frames' first
        // lines fall in 64 different sets of a 32 KiB, 8-way L1 (set =
        // address bits 6-11).
        let sets: HashSet<u32> = (0..64)
            .map(|i| (i * copy.frame_stride() + 256) >> 6 & 63)
            .collect();
        assert_eq!(sets.len(), 64, "one set each");
    }

    #[test]
    fn frames_are_handed_to_rings_as_descriptors() {
        assert_eq!(size_of::<Frame>(), size_of::<FrameDesc>());
        assert_eq!(align_of::<Frame>(), align_of::<FrameDesc>());
        let frames = [Frame(FrameDesc::default()), Frame(FrameDesc::default())];
        let descs = descriptors(&frames);
        assert_eq!(descs.len(), frames.len(), "one descriptor per frame");
        assert_eq!(
            descs.as_ptr().cast::<Frame>(),
            frames.as_ptr(),
            "the descriptors are the frames' own memory, not a copy"
        );
    }

    #[test]
    fn bad_sizes_are_rejected() {
        let c = XskConfig {
            rx_size: 1000,
            ..XskConfig::default()
        };
        assert!(matches!(socket_config(&c, false), Err(XskError::Config(_))));
        let c = XskConfig {
            frame_size: 3000,
            ..XskConfig::default()
        };
        assert!(matches!(umem_config(&c, true), Err(XskError::Config(_))));
    }

    #[test]
    fn loopback_facts() {
        assert_eq!(interface_index("lo").expect("lo exists"), 1);
        assert!(interface_mac("lo").is_err(), "lo is not Ethernet");
        assert!(rx_queue_count("lo").expect("lo queues") >= 1);
        assert!(interface_index("no-such-if0").is_err());
        assert!(ifreq("a-name-that-is-far-too-long").is_err());
    }
}
