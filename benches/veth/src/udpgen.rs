//! Open-loop UDP generator: AF_PACKET with `PACKET_QDISC_BYPASS`, frames
//! built in user space, sent with `sendmmsg(2)` in batches.
//!
//! Why not trafgen: over veth it is closed-loop (a frame of its TX ring is
//! freed only when the far end frees the packet), so it never offers more
//! than the gateway takes and never shows loss. This generator does not
//! wait for anything: a frame the receiving veth cannot queue is dropped
//! by the kernel (`ENOBUFS`, counted as `refused`) and the next one goes
//! out, so the offered rate stays what one core can build and hand to
//! `veth_xmit` (about 1.0-1.2 Mpps here).
//!
//! With `--rate`, the generator offers that many frames a second and no
//! more (a batch leaves once the frames offered so far are due): for a
//! loss search, which asks at what rate a gateway still delivers (nearly)
//! every frame, where the open loop measures what it delivers overloaded.
//!
//! Two flow patterns:
//! - established: `flows` fixed 5-tuples (source ports `sport..sport+flows`)
//!   sent round robin; every frame is built once up front;
//! - new: every frame a 5-tuple not seen before in the run: the source port
//!   walks 1024..65535 and then the source address steps through
//!   `--new-src` (a /18 gives 10^9 distinct tuples, 15 minutes at 1 Mpps).
//!   Only the two fields and the checksums are rewritten per frame.
//!
//! Frames are Ethernet II + IPv4 (no options, DF clear, TTL 64) + UDP with
//! full IPv4 and UDP checksums (AF_XDP gateways need complete checksums),
//! or, when `--dst` is an IPv6 address, Ethernet II + IPv6 (no extension
//! headers, hop limit 64) + UDP with its checksum over the IPv6
//! pseudo-header (RFC 8200 section 8.1); the smallest IPv6 frame is 62
//! bytes (66 on the wire, no payload), the default there. The new-flow
//! pattern's default sources are 198.18.64.0/18 or 2001:2:0:40::/64.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::util::{parse_mac, pin_to_cpu, Cidr};

/// Smallest Ethernet frame without FCS (IEEE 802.3: 64 bytes with FCS).
const MIN_FRAME: usize = 60;
/// Smallest IPv6 UDP frame without FCS: Ethernet + IPv6 + UDP headers,
/// no payload.
const MIN_FRAME6: usize = 14 + 40 + 8;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Largest frame this generator builds (standard MTU).
const MAX_FRAME: usize = 1514;
const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
/// First source port of the new-flow pattern (below are well-known ports).
const NEW_FLOW_FIRST_PORT: u32 = 1024;
const NEW_FLOW_PORTS: u32 = 65536 - NEW_FLOW_FIRST_PORT;

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Interface to send on (in the current network namespace).
    #[arg(long)]
    iface: String,
    /// Source MAC (the interface's own).
    #[arg(long)]
    src_mac: String,
    /// Destination MAC (the gateway's interface facing us).
    #[arg(long)]
    dst_mac: String,
    /// Source address of the established pattern (of `--dst`'s family).
    #[arg(long)]
    src: IpAddr,
    /// Destination address (a VIP, or a backend for plain forwarding);
    /// an IPv6 address makes IPv6 frames.
    #[arg(long)]
    dst: IpAddr,
    #[arg(long)]
    dport: u16,
    /// First source port of the established pattern.
    #[arg(long, default_value_t = 10_000)]
    sport: u16,
    /// Established flows, sent round robin.
    #[arg(long, default_value_t = 1024)]
    flows: u16,
    /// A new flow every frame instead of `--flows` established ones.
    #[arg(long)]
    new_flows: bool,
    /// Source addresses the new-flow pattern walks through [default:
    /// 198.18.64.0/18, or 2001:2:0:40::/64 for IPv6].
    #[arg(long)]
    new_src: Option<Cidr>,
    /// Frame size without FCS [default: 60 = a 64-byte frame on the wire;
    /// 62 for IPv6, its smallest].
    #[arg(long)]
    frame_size: Option<usize>,
    /// Frames per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seconds to send for.
    #[arg(long)]
    duration: f64,
    /// Frames offered per second, at most [default: as many as the core
    /// can send].
    #[arg(long)]
    rate: Option<f64>,
    /// Core to pin the sending thread to.
    #[arg(long)]
    cpu: Option<usize>,
}

/// What one run sent, printed as a JSON line.
#[derive(Debug, Serialize)]
struct GenReport {
    /// Frames the kernel took (handed to the veth).
    sent: u64,
    /// Frames the kernel refused (receiving veth queue full): offered,
    /// not delivered.
    refused: u64,
    seconds: f64,
    offered_pps: f64,
}

pub fn run(args: &GenArgs) -> anyhow::Result<()> {
    let six = args.dst.is_ipv6();
    let min = if six { MIN_FRAME6 } else { MIN_FRAME };
    let frame_size = args.frame_size.unwrap_or(min);
    if !(min..=MAX_FRAME).contains(&frame_size) {
        bail!("--frame-size must be {min} to {MAX_FRAME}");
    }
    if args.src.is_ipv6() != six {
        bail!(
            "--src {} is not of the family of --dst {}",
            args.src,
            args.dst
        );
    }
    let default_new_src = if six {
        "2001:2:0:40::/64"
    } else {
        "198.18.64.0/18"
    };
    let new_src = match args.new_src {
        Some(c) => c,
        None => default_new_src.parse().map_err(anyhow::Error::msg)?,
    };
    if new_src.is_ipv6() != six {
        bail!(
            "--new-src {new_src} is not of the family of --dst {}",
            args.dst
        );
    }
    if args.batch == 0 || args.batch > 1024 {
        bail!("--batch must be 1 to 1024");
    }
    if args.flows == 0 {
        bail!("--flows must be at least 1");
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate >= 1.0) {
            bail!("--rate must be at least 1 frame per second, not {rate}");
        }
    }
    if let Some(cpu) = args.cpu {
        pin_to_cpu(cpu)?;
    }
    let template = Template {
        src_mac: parse_mac(&args.src_mac)?,
        dst_mac: parse_mac(&args.dst_mac)?,
        dst: args.dst,
        dport: args.dport,
        len: frame_size,
    };
    let socket = PacketSocket::open(&args.iface)?;
    let deadline = Duration::from_secs_f64(args.duration);
    let pace = Pace { rate: args.rate };
    let report = if args.new_flows {
        send_new_flows(&socket, &template, new_src, args.batch, deadline, pace)?
    } else {
        let frames: Vec<Vec<u8>> = (0..args.flows)
            .map(|i| template.build(args.src, args.sport.wrapping_add(i)))
            .collect();
        send_established(&socket, &frames, args.batch, deadline, pace)?
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Round robin over prebuilt frames.
fn send_established(
    socket: &PacketSocket,
    frames: &[Vec<u8>],
    batch: usize,
    duration: Duration,
    pace: Pace,
) -> anyhow::Result<GenReport> {
    let mut out = Batch::new(batch);
    let mut next = 0usize;
    let mut counts = Counts::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        pace.wait(start, counts.offered());
        for j in 0..batch {
            out.set(j, &frames[(next + j) % frames.len()]);
        }
        next = (next + batch) % frames.len();
        counts.add(socket.send(&mut out, batch)?);
    }
    Ok(counts.report(start.elapsed()))
}

/// A 5-tuple never used before in the run, every frame.
fn send_new_flows(
    socket: &PacketSocket,
    template: &Template,
    sources: Cidr,
    batch: usize,
    duration: Duration,
    pace: Pace,
) -> anyhow::Result<GenReport> {
    let hosts = sources.hosts();
    let mut bufs: Vec<Vec<u8>> = (0..batch)
        .map(|_| template.build(sources.addr, 0))
        .collect();
    let mut out = Batch::new(batch);
    let mut seq: u64 = 0;
    let mut counts = Counts::default();
    let start = Instant::now();
    while start.elapsed() < duration {
        pace.wait(start, counts.offered());
        for (j, buf) in bufs.iter_mut().enumerate() {
            let port = NEW_FLOW_FIRST_PORT + (seq % u64::from(NEW_FLOW_PORTS)) as u32;
            let host = (seq / u64::from(NEW_FLOW_PORTS)) % hosts;
            let src = sources.nth(host);
            template.set_source(buf, src, port as u16);
            out.set(j, buf);
            seq += 1;
        }
        counts.add(socket.send(&mut out, batch)?);
    }
    Ok(counts.report(start.elapsed()))
}

#[derive(Debug, Default)]
struct Counts {
    sent: u64,
    refused: u64,
}

/// The offered rate's limit, if any (`--rate`).
#[derive(Debug, Clone, Copy)]
struct Pace {
    rate: Option<f64>,
}

impl Pace {
    /// Returns once `offered` frames since `start` are due at the rate:
    /// the next batch may go. Sleeps while more than a millisecond ahead,
    /// then spins (a sleep overshoots by tens of microseconds, the time
    /// of a batch at these rates).
    fn wait(self, start: Instant, offered: u64) {
        let Some(rate) = self.rate else { return };
        let due = start + Duration::from_secs_f64(offered as f64 / rate);
        loop {
            let now = Instant::now();
            let Some(ahead) = due.checked_duration_since(now) else {
                return;
            };
            if ahead > Duration::from_millis(1) {
                std::thread::sleep(ahead - Duration::from_millis(1));
            } else if ahead.is_zero() {
                return;
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

impl Counts {
    fn offered(&self) -> u64 {
        self.sent + self.refused
    }

    fn add(&mut self, (sent, refused): (usize, usize)) {
        self.sent += sent as u64;
        self.refused += refused as u64;
    }

    fn report(&self, elapsed: Duration) -> GenReport {
        let seconds = elapsed.as_secs_f64();
        GenReport {
            sent: self.sent,
            refused: self.refused,
            seconds,
            offered_pps: (self.sent + self.refused) as f64 / seconds,
        }
    }
}

/// The fixed parts of every frame.
#[derive(Debug)]
struct Template {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// Its family is the frames' (IPv4 or IPv6).
    dst: IpAddr,
    dport: u16,
    len: usize,
}

impl Template {
    /// Where the UDP header starts.
    fn l4(&self) -> usize {
        if self.dst.is_ipv6() {
            14 + 40
        } else {
            14 + 20
        }
    }

    fn build(&self, src: IpAddr, sport: u16) -> Vec<u8> {
        let mut f = vec![0u8; self.len];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        let ip_len = (self.len - 14) as u16;
        match self.dst {
            IpAddr::V4(dst) => {
                f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
                let ip = &mut f[14..34];
                ip[0] = 0x45; // version 4, IHL 5 (RFC 791)
                ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
                ip[8] = 64; // TTL
                ip[9] = IPPROTO_UDP;
                ip[16..20].copy_from_slice(&dst.octets());
            }
            IpAddr::V6(dst) => {
                f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                let ip = &mut f[14..54];
                ip[0] = 0x60; // version 6, traffic class and flow label 0 (RFC 8200)
                ip[4..6].copy_from_slice(&(ip_len - 40).to_be_bytes()); // payload length
                ip[6] = IPPROTO_UDP; // next header
                ip[7] = 64; // hop limit
                ip[24..40].copy_from_slice(&dst.octets());
            }
        }
        let l4 = self.l4();
        let udp_len = (self.len - l4) as u16;
        f[l4 + 2..l4 + 4].copy_from_slice(&self.dport.to_be_bytes());
        f[l4 + 4..l4 + 6].copy_from_slice(&udp_len.to_be_bytes());
        for (i, b) in f[l4 + 8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        self.set_source(&mut f, src, sport);
        f
    }

    /// Writes source address and port and recomputes the checksums (IPv4
    /// header and UDP; UDP only for IPv6). `src` is of the template's
    /// family.
    fn set_source(&self, f: &mut [u8], src: IpAddr, sport: u16) {
        let l4 = self.l4();
        // The pseudo-header's addresses (RFC 768, RFC 8200 section 8.1).
        let addresses = match src {
            IpAddr::V4(src) => {
                f[26..30].copy_from_slice(&src.octets());
                f[24..26].fill(0);
                let ip_sum = fold(sum16(&f[14..34], 0));
                f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
                26..34
            }
            IpAddr::V6(src) => {
                f[22..38].copy_from_slice(&src.octets());
                22..54
            }
        };
        f[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
        f[l4 + 6..l4 + 8].fill(0);
        let udp = &f[l4..];
        let mut pseudo = sum16(&f[addresses], 0);
        pseudo += u32::from(IPPROTO_UDP) + udp.len() as u32;
        let mut udp_sum = fold(sum16(udp, pseudo));
        if udp_sum == 0 {
            udp_sum = 0xffff; // RFC 768: 0 means "no checksum" (IPv6: not allowed)
        }
        f[l4 + 6..l4 + 8].copy_from_slice(&udp_sum.to_be_bytes());
    }
}

/// One's complement sum of big-endian 16-bit words (RFC 1071), unfolded.
fn sum16(bytes: &[u8], mut acc: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for w in &mut chunks {
        acc += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The `mmsghdr`/`iovec` arrays of one `sendmmsg` call. Entries point at
/// frames owned by the caller, which must outlive the next `send`.
struct Batch {
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("len", &self.iov.len())
            .finish()
    }
}

impl Batch {
    fn new(n: usize) -> Batch {
        let iov = vec![
            libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            n
        ];
        // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are
        // a valid value (null pointers, zero lengths).
        let msgs = vec![unsafe { std::mem::zeroed::<libc::mmsghdr>() }; n];
        Batch { iov, msgs }
    }

    fn set(&mut self, j: usize, frame: &[u8]) {
        self.iov[j] = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
    }
}

/// An AF_PACKET socket bound to one interface, sending only (protocol 0:
/// it receives nothing), bypassing the qdisc layer.
#[derive(Debug)]
struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn open(iface: &str) -> anyhow::Result<PacketSocket> {
        let name = std::ffi::CString::new(iface).context("interface name")?;
        // SAFETY: `name` is a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error()).context(format!("interface {iface}"));
        }
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, one)
            .context("PACKET_QDISC_BYPASS")?;
        // Root may exceed wmem_max; a namespace cannot raise it otherwise.
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20)
            .context("SO_SNDBUFFORCE")?;
        // SAFETY: sockaddr_ll is plain data; all-zero is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context(format!("bind to {iface}"));
        }
        Ok(PacketSocket { fd })
    }

    /// Sends the first `n` frames of `batch`. Returns (sent, refused): a
    /// frame the kernel refuses (ENOBUFS: the receiving veth's queue is
    /// full) is skipped, not retried, which keeps the generator open-loop.
    fn send(&self, batch: &mut Batch, n: usize) -> anyhow::Result<(usize, usize)> {
        let (mut sent, mut refused, mut at) = (0, 0, 0);
        while at < n {
            for j in at..n {
                batch.msgs[j].msg_hdr.msg_iov = &mut batch.iov[j];
                batch.msgs[j].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: msgs[at..n] point at iovecs of this batch, which
            // point at frames the caller keeps alive for this call; the
            // count matches the slice.
            let rc = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    batch.msgs[at..].as_mut_ptr(),
                    (n - at) as libc::c_uint,
                    0,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        refused += 1;
                        at += 1;
                    }
                    Some(libc::EINTR) | Some(libc::EAGAIN) => {}
                    _ => return Err(err).context("sendmmsg"),
                }
                continue;
            }
            let rc = rc as usize;
            sent += rc;
            at += rc;
            // A short count means the next frame failed; sendmmsg drops
            // that error. Count it refused and go on (open loop).
            if at < n {
                refused += 1;
                at += 1;
            }
        }
        Ok((sent, refused))
    }
}

fn setsockopt(fd: &OwnedFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a c_int that lives for the call; the length is
    // its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::{Ipv4Addr, Ipv6Addr};

    fn template() -> Template {
        Template {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: Ipv4Addr::new(198, 19, 0, 10).into(),
            dport: 9000,
            len: MIN_FRAME,
        }
    }

    fn template6(len: usize) -> Template {
        Template {
            dst: "2001:2:0:100::a".parse().unwrap(),
            len,
            ..template()
        }
    }

    #[test]
    fn checksums_verify_to_zero() {
        let t = template();
        for (src, port) in [
            (Ipv4Addr::new(198, 18, 0, 2), 10_000),
            (Ipv4Addr::new(198, 18, 64, 77), 65535),
        ] {
            let f = t.build(src.into(), port);
            assert_eq!(f.len(), 60);
            assert_eq!(fold(sum16(&f[14..34], 0)), 0, "IPv4 header checksum");
            let udp = &f[34..];
            let pseudo = sum16(&f[26..34], 0) + u32::from(IPPROTO_UDP) + udp.len() as u32;
            assert_eq!(fold(sum16(udp, pseudo)), 0, "UDP checksum");
        }
    }

    #[test]
    fn rewriting_the_source_matches_a_fresh_build() {
        let t = template();
        let mut f = t.build(Ipv4Addr::new(198, 18, 0, 2).into(), 1);
        t.set_source(&mut f, Ipv4Addr::new(198, 18, 100, 3).into(), 4242);
        assert_eq!(f, t.build(Ipv4Addr::new(198, 18, 100, 3).into(), 4242));
        let t6 = template6(MIN_FRAME6);
        let mut f = t6.build("2001:2::2".parse().unwrap(), 1);
        t6.set_source(&mut f, "2001:2:0:40::7".parse().unwrap(), 4242);
        assert_eq!(f, t6.build("2001:2:0:40::7".parse().unwrap(), 4242));
    }

    #[test]
    fn ipv6_frames_are_well_formed_with_valid_checksums() {
        for len in [MIN_FRAME6, 80, 81] {
            let t = template6(len);
            let src: Ipv6Addr = "2001:2:0:40::1:2".parse().unwrap();
            let f = t.build(src.into(), 10_000);
            assert_eq!(f.len(), len);
            assert_eq!(&f[12..14], &[0x86, 0xdd]);
            assert_eq!(f[14] >> 4, 6, "version");
            assert_eq!(
                usize::from(u16::from_be_bytes([f[18], f[19]])),
                len - 54,
                "payload length"
            );
            assert_eq!((f[20], f[21]), (IPPROTO_UDP, 64));
            assert_eq!(&f[22..38], &src.octets());
            assert_eq!(
                Ipv6Addr::from(<[u8; 16]>::try_from(&f[38..54]).unwrap()),
                t.dst
            );
            assert_eq!(u16::from_be_bytes([f[54], f[55]]), 10_000);
            assert_eq!(u16::from_be_bytes([f[56], f[57]]), 9000);
            assert_eq!(usize::from(u16::from_be_bytes([f[58], f[59]])), len - 54);
            let udp = &f[54..];
            let pseudo = sum16(&f[22..54], 0) + u32::from(IPPROTO_UDP) + udp.len() as u32;
            assert_eq!(fold(sum16(udp, pseudo)), 0, "UDP checksum");
            assert_ne!(&f[60..62], &[0, 0], "never a zero UDP checksum");
        }
    }
}
