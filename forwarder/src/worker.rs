//! A worker: one thread, pinned to one core, owning the AF_XDP sockets of
//! every (interface, queue) assigned to it and the UMEM they share.
//!
//! The loop, per iteration:
//! 1. load the current service table and network snapshot (one atomic
//!    load each, see [`crate::table::TableHandle::cache`]);
//! 2. per socket: reclaim completed TX frames, top the fill ring up, (with
//!    busy polling) run the socket's NAPI poll from this thread, take a
//!    batch from RX and run each frame through the [`Pipeline`]; forwarded
//!    frames are queued for the egress port's TX ring (same UMEM: no
//!    copy), everything else returns to the free list;
//! 3. per port: one produce of what is queued (frames that find the TX
//!    ring full wait for the next iteration, up to a ring's worth), then
//!    kicks while the ring holds frames the kernel has not taken: in copy
//!    mode the kernel sends only during a kick, a bounded number per kick;
//! 4. frames waiting for a neighbour are retried; those waiting too long
//!    are dropped and counted;
//! 5. with nothing to do for a while, `poll(2)` on all sockets (bounded),
//!    so an idle gateway does not burn its cores. Busy polling spins
//!    longer first: while it sleeps, the kernel's receive path only comes
//!    back after the interfaces' `gro_flush_timeout`.
//!
//! Rings are only touched from this thread. Nothing here allocates after
//! start-up: every buffer is sized once.
//!
//! Frames move as [`Frame`] handles (see [`crate::xsk`]): from an RX batch
//! to a TX queue, the hold queue or the free list, and from there to a
//! ring. Debug builds check at the end of every iteration that the free
//! list, the RX batch, the TX queues, the hold queue and the kernel's
//! rings together hold every frame of the UMEM, and panic naming the
//! counts if not: a frame lost or counted twice shows at once, not as a
//! gateway that stops receiving hours later.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::counters::{DropReason, SocketStat, WorkerCounters};
use crate::metrics::WorkerLatency;
use crate::pipeline::{set_l2, BatchContext, Pipeline, Verdict};
use crate::route::{NetSnapshot, PortId};
use crate::table::TableReader;
use crate::xsk::{Frame, WorkerIo};

/// Frames that may wait for neighbour resolution at once, per worker.
pub const HOLD_CAPACITY: usize = 256;
/// How long a frame waits for its next hop's MAC (the kernel's ARP gives
/// up after about 3 s with default settings).
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle wait before the loop checks its stop flag and held frames again.
const IDLE_POLL_MS: i32 = 50;
/// Empty iterations before the worker sleeps in poll(2).
const SPIN_BEFORE_SLEEP: u32 = 32;
/// With busy polling, how long the worker at least keeps polling an idle
/// gateway before it sleeps: longer than the gaps of a request/response
/// exchange, so the next request does not wait for the kernel's NAPI
/// timer.
const BUSY_POLL_IDLE_SPIN: Duration = Duration::from_millis(2);
/// How often the worker copies its sockets' kernel statistics into its
/// counters (one getsockopt per socket).
const SOCKET_STATS_EVERY: Duration = Duration::from_millis(250);
/// Kicks per port per iteration while the TX ring holds unsent frames
/// (each sends up to the socket's TX budget).
const MAX_TX_KICKS: u32 = 4;

/// Asks the kernel to resolve a neighbour; never blocks.
pub type ResolveFn = Arc<dyn Fn(u32, IpAddr) + Send + Sync>;

/// What a worker needs from the rest of the gateway.
pub struct WorkerShared {
    /// This worker's view of the published table (registered by the
    /// control thread, which waits on it before retiring flows).
    pub table: TableReader,
    pub net: Arc<ArcSwap<NetSnapshot>>,
    pub stop: Arc<AtomicBool>,
    pub resolve: ResolveFn,
    /// Seconds since this instant are the conntrack clock.
    pub epoch: Instant,
    /// Pass-through mode (benchmarks): forward every frame to the other
    /// port, addressed to this peer's MAC, without parsing beyond L2.
    pub pass_through: Option<Ipv4Addr>,
    /// Told when the worker has left its loop (it touches no table or
    /// flow after), before its sockets close: closing an AF_XDP socket
    /// waits for RCU grace periods, which a gateway handing over need
    /// not wait for before it answers.
    pub left: crossbeam::channel::Sender<()>,
}

impl std::fmt::Debug for WorkerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerShared").finish_non_exhaustive()
    }
}

/// A frame waiting for its next hop's MAC.
#[derive(Debug)]
struct Held {
    frame: Frame,
    port: PortId,
    next_hop: IpAddr,
    since: Instant,
}

/// One worker's state.
pub struct Worker {
    io: WorkerIo,
    pipeline: Pipeline,
    shared: WorkerShared,
    /// Per egress port: frames to transmit this iteration.
    tx_pending: Vec<Vec<Frame>>,
    /// Per port: index of this worker's socket that transmits on it.
    tx_socket: Vec<Option<usize>>,
    held: VecDeque<Held>,
    /// The frames of one RX batch; empty between batches.
    rx_batch: Vec<Frame>,
    latency: WorkerLatency,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("sockets", &self.io.sockets.len())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// `ports` is the number of attached interfaces (PortIds 0..ports).
    pub fn new(
        io: WorkerIo,
        pipeline: Pipeline,
        shared: WorkerShared,
        ports: usize,
        latency: WorkerLatency,
    ) -> Self {
        let mut tx_socket = vec![None; ports];
        for (i, s) in io.sockets.iter().enumerate() {
            let slot = &mut tx_socket[usize::from(s.port)];
            if slot.is_none() {
                *slot = Some(i);
            }
        }
        let frames = io.frame_count() as usize;
        let rx_batch = io.config.rx_batch as usize;
        Self {
            tx_pending: (0..ports).map(|_| Vec::with_capacity(frames)).collect(),
            tx_socket,
            held: VecDeque::with_capacity(HOLD_CAPACITY),
            rx_batch: Vec::with_capacity(rx_batch),
            io,
            pipeline,
            shared,
            latency,
        }
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        self.pipeline.counters()
    }

    /// Runs until the stop flag is set.
    pub fn run(mut self) {
        // On this thread and core, before the first packet waits for it
        // (a pass-through worker has no use for the pipeline's tables).
        if self.shared.pass_through.is_none() {
            self.pipeline.take_memory();
        }
        let mut idle_rounds = 0u32;
        let busy_poll = self.io.sockets.iter().any(|s| s.busy_poll);
        let idle_spin = if busy_poll {
            self.io.config.idle_spin.max(BUSY_POLL_IDLE_SPIN)
        } else {
            self.io.config.idle_spin
        };
        let mut idle_since: Option<Instant> = None;
        let mut socket_stats_due = Instant::now();
        // Acquire: pairs with the Release store that asks workers to stop,
        // so everything the stopping thread did before is visible here.
        while !self.shared.stop.load(Ordering::Acquire) {
            let table = Arc::clone(self.shared.table.load());
            let net = self.shared.net.load_full();
            let now = Instant::now();
            self.latency.flush_if_due(now);
            if now >= socket_stats_due {
                self.copy_socket_stats();
                socket_stats_due = now + SOCKET_STATS_EVERY;
            }
            let ctx = BatchContext {
                table: &table,
                net: &net,
                now: now.duration_since(self.shared.epoch).as_secs() as u32,
            };
            let mut work = 0;
            for s in 0..self.io.sockets.len() {
                self.io.reclaim_and_refill(s);
                if self.io.sockets[s].busy_poll {
                    self.io.sockets[s].busy_poll_rx();
                }
                work += self.receive(s, &ctx);
            }
            if !self.held.is_empty() {
                work += self.retry_held(&net, now);
            }
            // Frames the kernel took are work: more may be waiting to
            // leave, and a sleeping worker would not kick them out.
            work += self.transmit();
            if cfg!(debug_assertions) {
                self.check_frames();
            }
            if work > 0 {
                idle_rounds = 0;
                idle_since = None;
                continue;
            }
            idle_rounds += 1;
            if idle_rounds < SPIN_BEFORE_SLEEP {
                continue;
            }
            if now.duration_since(*idle_since.get_or_insert(now)) >= idle_spin {
                // Nothing of this iteration's table is used past here.
                self.shared.table.idle();
                self.sleep();
                idle_rounds = 0;
                idle_since = None;
            } else if !busy_poll {
                // Still polling, but the receive work is the kernel's
                // (softirq or NAPI thread, often on this core): let it run.
                // SAFETY: sched_yield has no preconditions.
                unsafe {
                    libc::sched_yield();
                }
            }
        }
        self.shared.table.idle();
        // The receiver may be gone (a gateway stopping anyway).
        let _ = self.shared.left.send(());
        // The sockets close as `self` drops, here.
    }

    /// The kernel's statistics of this worker's sockets, summed, into its
    /// counters (the admin endpoint exports them).
    fn copy_socket_stats(&mut self) {
        let mut sum = [0u64; SocketStat::COUNT];
        for socket in &self.io.sockets {
            let Ok(st) = socket.stats() else {
                continue;
            };
            for stat in SocketStat::ALL {
                sum[stat as usize] += match stat {
                    SocketStat::RxRingFull => st.rx_ring_full(),
                    SocketStat::RxDropped => st.rx_dropped(),
                    SocketStat::FillRingEmpty => st.rx_fill_ring_empty_descs(),
                    SocketStat::RxInvalid => st.rx_invalid_descs(),
                    SocketStat::TxInvalid => st.tx_invalid_descs(),
                    SocketStat::TxRingEmpty => st.tx_ring_empty_descs(),
                };
            }
        }
        let counters = self.pipeline.counters();
        for (counter, value) in counters.socket.iter().zip(sum) {
            counter.set(value);
        }
    }

    /// Panics unless every frame of the UMEM is in exactly one place:
    /// free, in the RX batch, queued for TX, held, or with the kernel.
    fn check_frames(&self) {
        let free = self.io.free_count();
        let batch = self.rx_batch.len();
        let queued: usize = self.tx_pending.iter().map(Vec::len).sum();
        let held = self.held.len();
        let kernel = self.io.frames_in_kernel();
        let total = self.io.frame_count() as usize;
        let counted = free + batch + queued + held + kernel.receiving + kernel.transmitting;
        assert!(
            counted == total,
            "UMEM frames do not add up: {free} free + {batch} in the RX batch + {queued} queued \
             for TX + {held} held + {} on fill/RX rings + {} on TX/completion rings = {counted}, \
             but the UMEM has {total}",
            kernel.receiving,
            kernel.transmitting,
        );
    }

    /// Takes one batch from a socket's RX ring through the pipeline.
    fn receive(&mut self, s: usize, ctx: &BatchContext<'_>) -> usize {
        // Out of `self` while its frames are handed on (an empty Vec in
        // its place allocates nothing), back, empty, at the end.
        let mut batch = std::mem::take(&mut self.rx_batch);
        let n = self.io.receive(s, &mut batch);
        if n > 0 {
            self.process_batch(&mut batch, self.io.sockets[s].port, ctx);
        }
        self.rx_batch = batch;
        n
    }

    /// Runs a batch of received frames through the pipeline and hands
    /// each on; leaves `batch` empty.
    fn process_batch(&mut self, batch: &mut Vec<Frame>, ingress: PortId, ctx: &BatchContext<'_>) {
        let n = batch.len();
        let batch_started = Instant::now();
        let counters = Arc::clone(self.pipeline.counters());
        counters.rx_packets.add(n as u64);
        if let Some(peer) = self.shared.pass_through {
            self.pass_through(batch, ingress, peer, ctx.net);
            // Timed like a pipeline batch: the veth benchmark's baseline
            // for the batch time per frame.
            self.latency.record_batch(n, batch_started.elapsed());
            return;
        }
        // Fetch the batch's header lines, then its conntrack lines
        // (and its new flows' reply buckets, their backends picked
        // ahead), before processing any frame, in the order processed.
        for frame in batch.iter() {
            // SAFETY: a frame of this worker's UMEM, just received; only
            // its address is used here (a prefetch hint).
            Pipeline::prefetch_headers(unsafe { self.io.data(frame) }.contents());
        }
        for frame in batch.iter() {
            // SAFETY: a frame of this worker's UMEM, just received; only
            // read here.
            let data = unsafe { self.io.data(frame) };
            self.pipeline.prefetch(data.contents());
        }
        self.pipeline.prefetch_flows(ctx);
        for mut frame in batch.drain(..) {
            let verdict = {
                // SAFETY: a frame of this worker's UMEM; the handle makes
                // this the only access to it.
                let mut data = unsafe { self.io.data_mut(&mut frame) };
                let len = data.contents().len();
                counters.rx_bytes.add(len as u64);
                // Open the whole frame so an answer may grow into it, then
                // set the length the verdict leaves.
                data.cursor().set_pos(usize::MAX);
                let verdict = self.latency.time_packet(|| {
                    self.pipeline
                        .process(data.contents_mut(), len, ingress, ctx)
                });
                let out_len = match verdict {
                    Verdict::Respond { len, .. } => len,
                    _ => len,
                };
                data.cursor().set_pos(out_len);
                verdict
            };
            match verdict {
                Verdict::Forward { port } | Verdict::Respond { port, .. } => {
                    self.queue_tx(port, frame)
                }
                Verdict::AwaitNeighbour { port, next_hop } => self.hold(frame, port, next_hop),
                // AF_XDP cannot hand a frame back to the kernel; the
                // pipeline counted it as passed.
                Verdict::Pass | Verdict::Drop(_) | Verdict::HandedOff => self.io.recycle(frame),
            }
        }
        self.latency.record_batch(n, batch_started.elapsed());
    }

    /// The benchmark's upper bound: L2 forwarding to the other port.
    fn pass_through(
        &mut self,
        batch: &mut Vec<Frame>,
        ingress: PortId,
        peer: Ipv4Addr,
        net: &NetSnapshot,
    ) {
        let ports = self.tx_pending.len();
        let egress = ((usize::from(ingress) + 1) % ports) as PortId;
        let addresses = net
            .port(egress)
            .and_then(|p| net.neighbour(egress, peer).map(|mac| (p.mac, mac)));
        let counters = Arc::clone(self.pipeline.counters());
        for mut frame in batch.drain(..) {
            match addresses {
                Some((src, dst)) => {
                    {
                        // SAFETY: as in `process_batch`: a frame of this
                        // worker's UMEM, the handle the only access.
                        let mut data = unsafe { self.io.data_mut(&mut frame) };
                        counters.rx_bytes.add(data.contents().len() as u64);
                        set_l2(data.contents_mut(), src, dst);
                    }
                    self.queue_tx(egress, frame);
                }
                None => {
                    counters.count_drop(DropReason::NeighbourTimeout);
                    self.io.recycle(frame);
                }
            }
        }
        if addresses.is_none() {
            if let Some(p) = net.port(egress) {
                (self.shared.resolve)(p.ifindex, peer.into());
            }
        }
    }

    fn queue_tx(&mut self, port: PortId, frame: Frame) {
        match self.tx_pending.get_mut(usize::from(port)) {
            Some(q) if self.tx_socket[usize::from(port)].is_some() => q.push(frame),
            _ => {
                self.pipeline.counters().count_drop(DropReason::NoTxQueue);
                self.io.recycle(frame);
            }
        }
    }

    fn hold(&mut self, frame: Frame, port: PortId, next_hop: IpAddr) {
        if self.held.len() >= HOLD_CAPACITY {
            self.pipeline
                .counters()
                .count_drop(DropReason::NeighbourQueueFull);
            self.io.recycle(frame);
            return;
        }
        let fresh = !self
            .held
            .iter()
            .any(|h| h.port == port && h.next_hop == next_hop);
        if fresh {
            let net = self.shared.net.load();
            if let Some(p) = net.port(port) {
                (self.shared.resolve)(p.ifindex, next_hop);
            }
        }
        self.held.push_back(Held {
            frame,
            port,
            next_hop,
            since: Instant::now(),
        });
    }

    /// Sends held frames whose neighbour resolved; drops the expired.
    fn retry_held(&mut self, net: &NetSnapshot, now: Instant) -> usize {
        let mut sent = 0;
        for _ in 0..self.held.len() {
            let Some(mut h) = self.held.pop_front() else {
                break;
            };
            match (net.neighbour_ip(h.port, h.next_hop), net.port(h.port)) {
                (Some(mac), Some(port)) => {
                    {
                        // SAFETY: a frame of this worker's UMEM; the
                        // handle makes this the only access to it.
                        let mut data = unsafe { self.io.data_mut(&mut h.frame) };
                        set_l2(data.contents_mut(), port.mac, mac);
                    }
                    self.pipeline.counters().neighbour_resolved.inc();
                    self.queue_tx(h.port, h.frame);
                    sent += 1;
                }
                _ if now.duration_since(h.since) > HOLD_TIMEOUT => {
                    self.pipeline
                        .counters()
                        .count_drop(DropReason::NeighbourTimeout);
                    self.io.recycle(h.frame);
                }
                _ => self.held.push_back(h),
            }
        }
        sent
    }

    /// Per egress port: one produce of everything queued, then kicks while
    /// the TX ring holds frames the kernel has not taken. Returns how many
    /// frames the kernel took from the TX rings meanwhile.
    fn transmit(&mut self) -> usize {
        let counters = Arc::clone(self.pipeline.counters());
        let mut taken = 0;
        for port in 0..self.tx_pending.len() {
            let Some(s) = self.tx_socket[port] else {
                continue;
            };
            let pending = &mut self.tx_pending[port];
            if !pending.is_empty() {
                let sent = self.io.transmit(s, pending);
                counters.tx_packets.add(sent.frames as u64);
                counters.tx_bytes.add(sent.bytes as u64);
                // What found no room waits for the next iteration (the kicks
                // below make room), up to a ring's worth; the rest is
                // dropped, newest first, so a stalled port cannot hoard the
                // UMEM.
                let keep = self.io.sockets[s].tx_size as usize;
                if pending.len() > keep {
                    for _ in keep..pending.len() {
                        counters.count_drop(DropReason::TxRingFull);
                    }
                    self.io.recycle_all(pending.drain(keep..));
                }
            }
            let socket = &mut self.io.sockets[s];
            // Copy mode sends only during a kick, at most the TX budget
            // per kick: kick until the ring is drained (bounded), also in
            // iterations that queued nothing new. Errors (EAGAIN, ENOBUFS)
            // leave frames on the ring for the next kick.
            let mut unsent = socket.tx_unsent();
            for _ in 0..MAX_TX_KICKS {
                if unsent == 0 {
                    break;
                }
                let _ = socket.kick_tx();
                let left = socket.tx_unsent();
                taken += unsent.saturating_sub(left) as usize;
                unsent = left;
            }
        }
        taken
    }

    /// Waits for RX on any socket, at most `IDLE_POLL_MS` (1 ms while
    /// frames wait to be sent).
    fn sleep(&mut self) {
        let mut fds: [libc::pollfd; 64] = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 64];
        let n = self.io.sockets.len().min(fds.len());
        for (pfd, s) in fds.iter_mut().zip(&self.io.sockets) {
            pfd.fd = s.fd();
            pfd.events = libc::POLLIN;
        }
        // Frames waiting for a neighbour or for room on a TX ring need the
        // loop back soon; nothing else wakes it for them.
        let waiting = !self.held.is_empty() || self.tx_pending.iter().any(|q| !q.is_empty());
        let timeout = if waiting { 1 } else { IDLE_POLL_MS };
        // SAFETY: `fds` is a valid array of `n` initialised pollfd structs
        // that outlives the call.
        unsafe {
            libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, timeout);
        }
    }
}
