//! The XDP program that steers VIP traffic and backend replies to the
//! AF_XDP sockets, and a safe wrapper over libbpf to load, attach and feed
//! it.
//!
//! The object is built from `forwarder/bpf/cipgw.bpf.c` by build.rs and
//! embedded in the binary. Its maps are the interface between the control
//! plane and the program:
//!
//! - `cipgw_vips`, `cipgw_vips6`: VIPs (any protocol to a VIP is
//!   redirected),
//! - `cipgw_backends`, `cipgw_backends6`: backend endpoints `(addr, port,
//!   proto)` (their replies are redirected, and ICMP errors quoting a
//!   datagram sent to them),
//! - `cipgw_snat`, `cipgw_snat6`, `cipgw_snat_on`: the source NAT
//!   addresses and ports (`snat.rs`), `cipgw_dns`, `cipgw_dns6`: the DNS
//!   addresses (`dns.rs`),
//! - `cipgw_frags`, `cipgw_frags6`: written by the program itself, read by nothing here:
//!   datagrams whose first fragment it redirected as a backend reply, so
//!   that their later fragments (no ports) follow,
//! - `cipgw_ports`: ingress ifindex -> base slot in `cipgw_xsks`, and
//!   `cipgw_portidx` the same for ifindexes below [`PORT_INDEX_SIZE`]
//!   (an array: every redirected frame asks for its port, and the
//!   verifier makes an array's lookup a load),
//! - `cipgw_xsks`: the AF_XDP sockets, at `base slot + RX queue`.
//!
//! Invariants this module keeps:
//! - The program is attached with `bpf_xdp_attach` (no libxdp dispatcher,
//!   which fails on these machines), and is detached again by
//!   [`XdpProgram::detach_all`] or on drop, in the network namespace it was
//!   attached in, and only if it is still ours (`XDP_FLAGS_REPLACE` with our
//!   fd as the expected program).
//! - Another project's XDP program is never replaced; a `cipgw_xdp` left
//!   behind by a crashed gateway is.
//! - The VIP and backend maps hold exactly what the userspace mirror
//!   ([`Steering`]) says they hold, so a change writes only the
//!   difference. The control plane changes them through [`XdpMaps`], one
//!   entry at a time, in the order the daemon's apply sets.
//!
//! One concern per file: [`attach`](XdpProgram::attach) and detach in
//! `attach.rs`, the maps in `maps.rs`, the raw libbpf calls and libbpf's
//! log in `ffi.rs`; loading the object and the errors here.

mod attach;
mod dns;
mod ffi;
mod maps;
mod share;
mod snat;
pub use dns::{MAP_DNS, MAP_DNS6};
pub use share::{object_digest, SharedProgram};

use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{OwnedFd, RawFd};
use std::ptr::NonNull;

use libbpf_sys as sys;

pub use attach::AttachMode;
pub use maps::{base_slots, Added, Steering, XdpMaps};

use attach::Attachment;
use ffi::{capture_libbpf_log, install_libbpf_logger, neg_errno, prog_info};

/// The program's name in the object and in the kernel (at most 15 bytes,
/// the kernel's `BPF_OBJ_NAME_LEN - 1`).
pub const PROGRAM_NAME: &str = "cipgw_xdp";
/// VIP map: `__u32` address (network order) -> `__u8`.
pub const MAP_VIPS: &str = "cipgw_vips";
/// Backend map: `{__u32 addr; __u16 port; __u8 proto; __u8 pad}` -> `__u8`.
pub const MAP_BACKENDS: &str = "cipgw_backends";
/// Port map: `__u32` ifindex -> `__u32` base slot.
pub const MAP_PORTS: &str = "cipgw_ports";
/// Port index: `__u32` ifindex below [`PORT_INDEX_SIZE`] -> `__u32` base
/// slot plus one (0: not a port); written after `cipgw_ports`, cleared
/// before it.
pub const MAP_PORT_INDEX: &str = "cipgw_portidx";
/// Entries of `cipgw_portidx` (the program's `PORT_INDEX_SIZE`): ports
/// at a higher ifindex are found in `cipgw_ports` alone.
pub const PORT_INDEX_SIZE: u32 = 4096;
/// XSKMAP: slot -> AF_XDP socket.
pub const MAP_XSKS: &str = "cipgw_xsks";
pub const MAP_SNAT: &str = "cipgw_snat";
pub const MAP_SNAT_ON: &str = "cipgw_snat_on";
/// IPv6 VIP map: 16-byte address -> `__u8`.
pub const MAP_VIPS6: &str = "cipgw_vips6";
/// IPv6 backend map: `{__u8 addr[16]; __u16 port; __u8 proto; __u8 pad}`
/// -> `__u8`.
pub const MAP_BACKENDS6: &str = "cipgw_backends6";
pub const MAP_SNAT6: &str = "cipgw_snat6";
/// Every map the control plane writes, in the order a gateway hands them
/// to the next one ([`SharedProgram`]).
pub const CONTROL_MAPS: [&str; 12] = [
    MAP_VIPS,
    MAP_BACKENDS,
    MAP_PORTS,
    MAP_XSKS,
    MAP_SNAT,
    MAP_SNAT_ON,
    MAP_DNS,
    MAP_VIPS6,
    MAP_BACKENDS6,
    MAP_SNAT6,
    MAP_DNS6,
    MAP_PORT_INDEX,
];

/// Capacity of `cipgw_xsks`: every (port, RX queue) needs a slot.
pub const XSK_SLOTS: u32 = 1024;
/// Capacity of `cipgw_ports`.
pub const MAX_PORTS: u32 = 64;
/// Capacity of `cipgw_vips` (and of `cipgw_vips6`).
pub const MAX_VIPS: u32 = 65536;
/// Capacity of `cipgw_backends` (and of `cipgw_backends6`).
pub const MAX_BACKENDS: u32 = 262_144;

/// A backend endpoint as the XDP program matches replies:
/// (Pod address, Pod port, IP protocol number); the address's family
/// picks the map.
pub type BackendKey = (IpAddr, u16, u8);

/// The object file, aligned for libelf (`include_bytes!` only promises
/// byte alignment; ELF headers are read as 8-byte words).
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/cipgw.bpf.o")));

/// Why loading, attaching or updating the XDP program failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("opening the embedded XDP object: {0}")]
    Open(#[source] io::Error),
    #[error("loading the XDP program into the kernel (needs root / CAP_BPF+CAP_NET_ADMIN): {source}{log}")]
    Load {
        #[source]
        source: io::Error,
        /// The last lines libbpf reported (verifier log included).
        log: String,
    },
    #[error("the XDP object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("interface {iface}: {what}: {source}")]
    Interface {
        iface: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "interface {iface} already has XDP program {program:?} (id {id}) attached in {mode} mode; \
         cipgw does not replace other programs: detach it first (ip link set dev IF xdp off)"
    )]
    ForeignProgram {
        iface: String,
        program: String,
        id: u32,
        mode: &'static str,
    },
    #[error("map {map}: {op} {key}: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("socket slot {slot} out of range: {MAP_XSKS} has {XSK_SLOTS} slots")]
    SlotOutOfRange { slot: u32 },
    #[error("the previous gateway's XDP program cannot be kept: {0}")]
    NotKept(String),
    #[error("{needed} AF_XDP socket slots needed (ports x RX queues), {MAP_XSKS} has {XSK_SLOTS}")]
    TooManyQueues { needed: u64 },
}

/// The loaded XDP program and its maps.
///
/// Writing the VIP and backend maps ([`XdpMaps`], [`XdpProgram::add_missing`],
/// [`XdpProgram::inherit_maps`]), attaching and detaching take `&mut self`;
/// the socket and port maps and lookups take `&self`.
pub struct XdpProgram {
    /// The libbpf object this process loaded; None for a program taken
    /// over from the previous gateway ([`XdpProgram::adopt`]), whose fds
    /// `adopted` holds instead.
    object: Option<NonNull<sys::bpf_object>>,
    adopted: Vec<OwnedFd>,
    prog_fd: RawFd,
    prog_id: u32,
    vips_fd: RawFd,
    backends_fd: RawFd,
    ports_fd: RawFd,
    xsks_fd: RawFd,
    snat_fd: RawFd,
    snat_on_fd: RawFd,
    dns_fd: RawFd,
    vips6_fd: RawFd,
    backends6_fd: RawFd,
    snat6_fd: RawFd,
    dns6_fd: RawFd,
    port_index_fd: RawFd,
    attached: Vec<Attachment>,
    /// What `cipgw_vips` and `cipgw_backends` hold: changed only after a
    /// successful map write.
    mirror: Steering,
    /// Ids of programs an earlier gateway recorded as its own (in its
    /// state directory): recognised even where the kernel will not open
    /// an attached program by id (that takes CAP_SYS_ADMIN).
    known_ids: Vec<u32>,
}

// SAFETY: the `bpf_object` pointer is only dereferenced by libbpf in
// `load` (before the value exists) and in `Drop` (with exclusive access);
// every other use goes through the program and map fds, and the syscalls
// on those are thread-safe.
unsafe impl Send for XdpProgram {}
// SAFETY: as for `Send`: `&self` methods touch only fds (thread-safe
// syscalls) and read plain fields (the mirror changes only under
// `&mut self`), never the object.
unsafe impl Sync for XdpProgram {}

impl fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpProgram")
            .field("prog_fd", &self.prog_fd)
            .field("prog_id", &self.prog_id)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl XdpProgram {
    /// Opens the embedded object and loads the program and its maps into
    /// the kernel. Maps are private to this instance (not pinned).
    pub fn load() -> Result<XdpProgram, BpfError> {
        install_libbpf_logger();
        let name = CString::new("cipgw").expect("no NUL in object name");
        let opts = sys::bpf_object_open_opts {
            sz: mem::size_of::<sys::bpf_object_open_opts>() as sys::size_t,
            object_name: name.as_ptr(),
            ..Default::default()
        };
        // SAFETY: OBJECT is a valid, 'static buffer of the given length;
        // `opts` and the name it points to outlive the call (libbpf copies
        // the name).
        let object = unsafe {
            sys::bpf_object__open_mem(
                OBJECT.0.as_ptr().cast(),
                OBJECT.0.len() as sys::size_t,
                &opts,
            )
        };
        let Some(object) = NonNull::new(object) else {
            return Err(BpfError::Open(io::Error::last_os_error()));
        };

        // From here on `program` owns the object: an early return closes
        // it in Drop (with nothing attached yet).
        let mut program = XdpProgram {
            object: Some(object),
            adopted: Vec::new(),
            prog_fd: -1,
            prog_id: 0,
            vips_fd: -1,
            backends_fd: -1,
            ports_fd: -1,
            xsks_fd: -1,
            snat_fd: -1,
            snat_on_fd: -1,
            dns_fd: -1,
            vips6_fd: -1,
            backends6_fd: -1,
            snat6_fd: -1,
            dns6_fd: -1,
            port_index_fd: -1,
            attached: Vec::new(),
            mirror: Steering::default(),
            known_ids: Vec::new(),
        };

        let (ret, log) = capture_libbpf_log(|| {
            // SAFETY: the object was opened above and not loaded yet; we
            // have exclusive access to it.
            unsafe { sys::bpf_object__load(object.as_ptr()) }
        });
        if ret != 0 {
            return Err(BpfError::Load {
                source: neg_errno(ret),
                log: if log.is_empty() {
                    String::new()
                } else {
                    format!("\nlibbpf:\n{log}")
                },
            });
        }

        program.prog_fd = program.find_program_fd(PROGRAM_NAME)?;
        program.vips_fd = program.map_fd(MAP_VIPS)?;
        program.backends_fd = program.map_fd(MAP_BACKENDS)?;
        program.ports_fd = program.map_fd(MAP_PORTS)?;
        program.xsks_fd = program.map_fd(MAP_XSKS)?;
        program.snat_fd = program.map_fd(MAP_SNAT)?;
        program.snat_on_fd = program.map_fd(MAP_SNAT_ON)?;
        program.dns_fd = program.map_fd(MAP_DNS)?;
        program.vips6_fd = program.map_fd(MAP_VIPS6)?;
        program.backends6_fd = program.map_fd(MAP_BACKENDS6)?;
        program.snat6_fd = program.map_fd(MAP_SNAT6)?;
        program.dns6_fd = program.map_fd(MAP_DNS6)?;
        program.port_index_fd = program.map_fd(MAP_PORT_INDEX)?;
        program.prog_id = prog_info(program.prog_fd)
            .map(|(id, _)| id)
            .map_err(|source| BpfError::Load {
                source,
                log: " (reading the loaded program's id)".into(),
            })?;
        tracing::debug!(prog_id = program.prog_id, "XDP program loaded");
        Ok(program)
    }

    /// Programs with these ids, found attached, are an earlier gateway's
    /// (see `known_ids`).
    pub fn recognise(&mut self, ids: Vec<u32>) {
        self.known_ids = ids;
    }

    /// The kernel's id of the loaded program.
    pub fn program_id(&self) -> u32 {
        self.prog_id
    }

    /// The loaded object (only [`XdpProgram::load`] looks into it).
    fn object(&self, name: &'static str) -> Result<NonNull<sys::bpf_object>, BpfError> {
        self.object.ok_or(BpfError::Missing {
            kind: "loaded object for",
            name,
        })
    }

    fn find_program_fd(&self, name: &'static str) -> Result<RawFd, BpfError> {
        let object = self.object(name)?;
        let cname = CString::new(name).expect("no NUL in program name");
        // SAFETY: the object is valid (owned by self); the name outlives
        // the call.
        let prog =
            unsafe { sys::bpf_object__find_program_by_name(object.as_ptr(), cname.as_ptr()) };
        if prog.is_null() {
            return Err(BpfError::Missing {
                kind: "program",
                name,
            });
        }
        // SAFETY: `prog` belongs to our loaded object.
        let fd = unsafe { sys::bpf_program__fd(prog) };
        if fd < 0 {
            return Err(BpfError::Missing {
                kind: "loaded program",
                name,
            });
        }
        Ok(fd)
    }

    fn map_fd(&self, name: &'static str) -> Result<RawFd, BpfError> {
        let object = self.object(name)?;
        let cname = CString::new(name).expect("no NUL in map name");
        // SAFETY: the object is valid (owned by self); the name outlives
        // the call.
        let map = unsafe { sys::bpf_object__find_map_by_name(object.as_ptr(), cname.as_ptr()) };
        if map.is_null() {
            return Err(BpfError::Missing { kind: "map", name });
        }
        // SAFETY: `map` belongs to our loaded object.
        let fd = unsafe { sys::bpf_map__fd(map) };
        if fd < 0 {
            return Err(BpfError::Missing {
                kind: "loaded map",
                name,
            });
        }
        Ok(fd)
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!(error = %e, "XDP program left attached");
        }
        if let Some(object) = self.object {
            // SAFETY: we own the object; nothing uses its fds after this
            // (they are closed with it). Adopted fds close with `adopted`.
            unsafe { sys::bpf_object__close(object.as_ptr()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_object_is_bpf_elf() {
        assert_eq!(&OBJECT.0[..4], b"\x7fELF");
        // e_machine (offset 18, little endian here) is EM_BPF = 247.
        assert_eq!(u16::from_le_bytes([OBJECT.0[18], OBJECT.0[19]]), 247);
    }

    /// The kernel keeps 15 bytes of a map's name (`BPF_OBJ_NAME_LEN` - 1),
    /// and a hand-over checks each map it is given by that name: a longer
    /// one would never match, and no program would be kept.
    #[test]
    fn map_names_fit_the_kernels() {
        for name in CONTROL_MAPS.iter().chain([&PROGRAM_NAME]) {
            assert!(name.len() <= 15, "{name} is longer than the kernel keeps");
        }
    }
}
