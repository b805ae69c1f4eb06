//! The XDP program that steers VIP traffic and backend replies to the
//! AF_XDP sockets, and a safe wrapper over libbpf to load, attach and feed
//! it.
//!
//! The object is built from `forwarder/bpf/cipgw.bpf.c` by build.rs and
//! embedded in the binary. Its maps are the interface between the control
//! plane and the program:
//!
//! - `cipgw_vips`: VIPs (any protocol to a VIP is redirected),
//! - `cipgw_backends`: backend endpoints `(addr, port, proto)` (their
//!   replies are redirected),
//! - `cipgw_ports`: ingress ifindex -> base slot in `cipgw_xsks`,
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
//! - The VIP and backend maps hold exactly what the userspace mirror says
//!   they hold, so a sync writes only the difference.

use std::collections::HashSet;
use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::fs::File;
use std::io;
use std::mem;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::ptr::{self, NonNull};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};

use cipgw_config::settings::XdpMode;
use libbpf_sys as sys;

/// The program's name in the object and in the kernel (at most 15 bytes,
/// the kernel's `BPF_OBJ_NAME_LEN - 1`).
pub const PROGRAM_NAME: &str = "cipgw_xdp";
/// VIP map: `__u32` address (network order) -> `__u8`.
pub const MAP_VIPS: &str = "cipgw_vips";
/// Backend map: `{__u32 addr; __u16 port; __u8 proto; __u8 pad}` -> `__u8`.
pub const MAP_BACKENDS: &str = "cipgw_backends";
/// Port map: `__u32` ifindex -> `__u32` base slot.
pub const MAP_PORTS: &str = "cipgw_ports";
/// XSKMAP: slot -> AF_XDP socket.
pub const MAP_XSKS: &str = "cipgw_xsks";

/// Capacity of `cipgw_xsks`: every (port, RX queue) needs a slot.
pub const XSK_SLOTS: u32 = 1024;
/// Capacity of `cipgw_ports`.
pub const MAX_PORTS: u32 = 64;
/// Capacity of `cipgw_vips`.
pub const MAX_VIPS: u32 = 65536;
/// Capacity of `cipgw_backends`.
pub const MAX_BACKENDS: u32 = 262_144;

/// A backend endpoint as the XDP program matches replies:
/// (Pod address, Pod port, IP protocol number).
pub type BackendKey = (Ipv4Addr, u16, u8);

/// The object file, aligned for libelf (`include_bytes!` only promises
/// byte alignment; ELF headers are read as 8-byte words).
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);

static OBJECT: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/cipgw.bpf.o")));

/// How the program ended up attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Generic XDP in the stack (`XDP_FLAGS_SKB_MODE`).
    Skb,
}

impl AttachMode {
    fn flag(self) -> u32 {
        match self {
            AttachMode::Native => sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Skb => sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        })
    }
}

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
    #[error("{needed} AF_XDP socket slots needed (ports x RX queues), {MAP_XSKS} has {XSK_SLOTS}")]
    TooManyQueues { needed: u64 },
}

/// What a map sync wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapDelta {
    pub vips_added: usize,
    pub vips_removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
}

impl MapDelta {
    fn merge(self, other: MapDelta) -> MapDelta {
        MapDelta {
            vips_added: self.vips_added + other.vips_added,
            vips_removed: self.vips_removed + other.vips_removed,
            backends_added: self.backends_added + other.backends_added,
            backends_removed: self.backends_removed + other.backends_removed,
        }
    }
}

/// The userspace copy of what `cipgw_vips` and `cipgw_backends` hold.
#[derive(Debug, Default)]
struct Mirror {
    vips: HashSet<Ipv4Addr>,
    backends: HashSet<BackendKey>,
}

/// One interface the program is attached to.
#[derive(Debug)]
struct Attachment {
    ifindex: u32,
    mode: AttachMode,
    /// The network namespace the ifindex belongs to.
    netns: File,
}

/// The loaded XDP program and its maps.
///
/// Map updates take `&self` (the VIP/backend mirror is behind a mutex), so
/// the control thread can share it; attaching and detaching take
/// `&mut self`.
pub struct XdpProgram {
    object: NonNull<sys::bpf_object>,
    prog_fd: RawFd,
    prog_id: u32,
    vips_fd: RawFd,
    backends_fd: RawFd,
    ports_fd: RawFd,
    xsks_fd: RawFd,
    attached: Vec<Attachment>,
    mirror: Mutex<Mirror>,
    /// Ids of programs an earlier gateway recorded as its own (in its
    /// state directory): recognised even where the kernel will not open
    /// an attached program by id (that takes CAP_SYS_ADMIN).
    known_ids: Vec<u32>,
}

// SAFETY: the `bpf_object` pointer is only dereferenced by libbpf in
// `load` (before the value exists) and in `Drop` (with exclusive access);
// every other use goes through the program and map fds, and the syscalls
// on those are thread-safe. The mirror is behind a mutex.
unsafe impl Send for XdpProgram {}
// SAFETY: as for `Send`: `&self` methods touch only fds (thread-safe
// syscalls) and the mutex-protected mirror, never the object.
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
            object,
            prog_fd: -1,
            prog_id: 0,
            vips_fd: -1,
            backends_fd: -1,
            ports_fd: -1,
            xsks_fd: -1,
            attached: Vec::new(),
            mirror: Mutex::new(Mirror::default()),
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

    fn find_program_fd(&self, name: &'static str) -> Result<RawFd, BpfError> {
        let cname = CString::new(name).expect("no NUL in program name");
        // SAFETY: the object is valid (owned by self); the name outlives
        // the call.
        let prog =
            unsafe { sys::bpf_object__find_program_by_name(self.object.as_ptr(), cname.as_ptr()) };
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
        let cname = CString::new(name).expect("no NUL in map name");
        // SAFETY: the object is valid (owned by self); the name outlives
        // the call.
        let map =
            unsafe { sys::bpf_object__find_map_by_name(self.object.as_ptr(), cname.as_ptr()) };
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

    /// Attaches the program to `ifindex` (in the calling thread's network
    /// namespace).
    ///
    /// `Auto` tries native mode, then SKB mode. A `cipgw_xdp` already on
    /// the interface (left by a gateway that crashed) is replaced; any
    /// other program makes this fail with [`BpfError::ForeignProgram`].
    pub fn attach(&mut self, ifindex: u32, mode: XdpMode) -> Result<AttachMode, BpfError> {
        let iface = describe_ifindex(ifindex);
        let modes: &[AttachMode] = match mode {
            XdpMode::Auto => &[AttachMode::Native, AttachMode::Skb],
            XdpMode::Native => &[AttachMode::Native],
            XdpMode::Skb => &[AttachMode::Skb],
        };
        let netns =
            File::open("/proc/thread-self/ns/net").map_err(|source| BpfError::Interface {
                iface: iface.clone(),
                what: "opening the thread's network namespace".into(),
                source,
            })?;

        let mut failures = Vec::new();
        for &want in modes {
            match self.attach_in_mode(ifindex, &iface, want) {
                Ok(()) => {
                    self.attached
                        .retain(|a| a.ifindex != ifindex || !same_netns(&a.netns, &netns));
                    self.attached.push(Attachment {
                        ifindex,
                        mode: want,
                        netns,
                    });
                    tracing::info!(iface = %iface, mode = %want, "XDP program attached");
                    return Ok(want);
                }
                // Someone else's program: trying another mode would not
                // change the answer.
                Err(e @ BpfError::ForeignProgram { .. }) => return Err(e),
                Err(e) => {
                    tracing::debug!(iface = %iface, mode = %want, error = %e, "XDP attach failed");
                    failures.push(format!("{want} mode: {}", error_chain(&e)));
                }
            }
        }
        Err(BpfError::Interface {
            iface,
            what: "attaching the XDP program".into(),
            source: io::Error::other(failures.join("; ")),
        })
    }

    fn attach_in_mode(&self, ifindex: u32, iface: &str, want: AttachMode) -> Result<(), BpfError> {
        let attached = query_xdp(ifindex).map_err(|source| BpfError::Interface {
            iface: iface.to_owned(),
            what: "querying attached XDP programs".into(),
            source,
        })?;

        // Classify what is there: ours from an earlier run (stale) or not.
        let mut stale: Vec<(u32, &'static str, u32, Option<OwnedFd>)> = Vec::new();
        for (id, mode_name, flag) in attached {
            let fd = match prog_fd_by_id(id) {
                Ok(fd) => fd,
                // Without CAP_SYS_ADMIN the kernel opens no program by id;
                // one the last gateway recorded is known all the same.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) && self.known_ids.contains(&id) => {
                    stale.push((id, mode_name, flag, None));
                    continue;
                }
                Err(source) => {
                    return Err(BpfError::Interface {
                        iface: iface.to_owned(),
                        what: format!("opening attached XDP program id {id}"),
                        source,
                    })
                }
            };
            let (_, name) = prog_info(fd.as_raw_fd()).map_err(|source| BpfError::Interface {
                iface: iface.to_owned(),
                what: format!("reading attached XDP program id {id}"),
                source,
            })?;
            if name != PROGRAM_NAME {
                return Err(BpfError::ForeignProgram {
                    iface: iface.to_owned(),
                    program: name,
                    id,
                    mode: mode_name,
                });
            }
            stale.push((id, mode_name, flag, Some(fd)));
        }

        // Same mode: swap atomically. Other modes: the kernel allows only
        // one of native and generic at a time, so remove those first.
        let mut replace_fd = None;
        let mut replace_unopened = false;
        for (id, mode_name, flag, fd) in &stale {
            let fd = fd.as_ref().map_or(-1, AsRawFd::as_raw_fd);
            if *flag == want.flag() {
                if *id != self.prog_id {
                    tracing::info!(
                        iface,
                        id,
                        mode = mode_name,
                        "replacing a stale cipgw XDP program"
                    );
                }
                if fd < 0 {
                    replace_unopened = true;
                } else {
                    replace_fd = Some(fd);
                }
                continue;
            }
            tracing::info!(
                iface,
                id,
                mode = mode_name,
                "detaching a stale cipgw XDP program"
            );
            let opts = attach_opts(fd);
            // SAFETY: plain syscall wrapper; `opts` outlives the call (an
            // unopened program is detached without naming it).
            let ret = unsafe {
                sys::bpf_xdp_detach(
                    ifindex as c_int,
                    *flag,
                    if fd < 0 { ptr::null() } else { &opts },
                )
            };
            if ret < 0 {
                return Err(BpfError::Interface {
                    iface: iface.to_owned(),
                    what: format!("detaching stale cipgw program id {id} ({mode_name} mode)"),
                    source: neg_errno(ret),
                });
            }
        }

        let ret = match replace_fd {
            Some(old) => {
                let opts = attach_opts(old);
                // SAFETY: plain syscall wrapper; our prog fd is valid while
                // self lives; `opts` outlives the call.
                unsafe { sys::bpf_xdp_attach(ifindex as c_int, self.prog_fd, want.flag(), &opts) }
            }
            // The earlier gateway's program, known by its id: replaced
            // without naming it (the kernel would not open it for us).
            None if replace_unopened => {
                // SAFETY: as above; no options.
                unsafe {
                    sys::bpf_xdp_attach(ifindex as c_int, self.prog_fd, want.flag(), ptr::null())
                }
            }
            None => {
                // SAFETY: as above; no options.
                unsafe {
                    sys::bpf_xdp_attach(
                        ifindex as c_int,
                        self.prog_fd,
                        want.flag() | sys::XDP_FLAGS_UPDATE_IF_NOEXIST,
                        ptr::null(),
                    )
                }
            }
        };
        if ret < 0 {
            return Err(BpfError::Interface {
                iface: iface.to_owned(),
                what: format!("bpf_xdp_attach in {want} mode"),
                source: neg_errno(ret),
            });
        }
        Ok(())
    }

    /// The interfaces the program is attached to, with their mode.
    pub fn attached(&self) -> Vec<(u32, AttachMode)> {
        self.attached.iter().map(|a| (a.ifindex, a.mode)).collect()
    }

    /// Detaches the program from one interface (if attached by this
    /// value).
    pub fn detach(&mut self, ifindex: u32) -> Result<(), BpfError> {
        let mut result = Ok(());
        let mut keep = Vec::new();
        for a in self.attached.drain(..) {
            if a.ifindex == ifindex {
                if let Err(e) = detach_one(self.prog_fd, &a) {
                    result = Err(e);
                }
            } else {
                keep.push(a);
            }
        }
        self.attached = keep;
        result
    }

    /// Detaches the program from every interface it was attached to,
    /// attempting all of them; returns the first error. An interface that
    /// has gone away, or whose program is no longer ours, counts as
    /// detached.
    pub fn detach_all(&mut self) -> Result<(), BpfError> {
        let mut result = Ok(());
        for a in mem::take(&mut self.attached) {
            if let Err(e) = detach_one(self.prog_fd, &a) {
                tracing::warn!(error = %e, "detaching XDP program");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Forgets where the program is attached, so that dropping it leaves
    /// it there: the kernel keeps the program and its maps for as long
    /// as it is attached, and the next gateway replaces it.
    pub fn leave_attached(&mut self) {
        self.attached.clear();
    }

    /// Directs frames received on `ifindex` to socket slots
    /// `base_slot + rx_queue`.
    pub fn set_port(&self, ifindex: u32, base_slot: u32) -> Result<(), BpfError> {
        if base_slot >= XSK_SLOTS {
            return Err(BpfError::SlotOutOfRange { slot: base_slot });
        }
        map_update(self.ports_fd, MAP_PORTS, &ifindex, &base_slot, || {
            format!("ifindex {ifindex}")
        })
    }

    /// Stops directing frames from `ifindex` to sockets.
    pub fn remove_port(&self, ifindex: u32) -> Result<(), BpfError> {
        map_delete(self.ports_fd, MAP_PORTS, &ifindex, || {
            format!("ifindex {ifindex}")
        })
    }

    /// Puts an AF_XDP socket at `slot` of `cipgw_xsks`.
    pub fn register_socket(&self, slot: u32, xsk_fd: RawFd) -> Result<(), BpfError> {
        if slot >= XSK_SLOTS {
            return Err(BpfError::SlotOutOfRange { slot });
        }
        let value = u32::try_from(xsk_fd).map_err(|_| BpfError::Map {
            map: MAP_XSKS,
            op: "update",
            key: format!("slot {slot}"),
            source: io::Error::from_raw_os_error(libc::EBADF),
        })?;
        map_update(self.xsks_fd, MAP_XSKS, &slot, &value, || {
            format!("slot {slot}")
        })
    }

    /// Empties `slot` of `cipgw_xsks`; frames for it then go to the kernel.
    pub fn unregister_socket(&self, slot: u32) -> Result<(), BpfError> {
        if slot >= XSK_SLOTS {
            return Err(BpfError::SlotOutOfRange { slot });
        }
        map_delete(self.xsks_fd, MAP_XSKS, &slot, || format!("slot {slot}"))
    }

    /// Adds one VIP.
    pub fn add_vip(&self, vip: Ipv4Addr) -> Result<(), BpfError> {
        let mut mirror = self.mirror();
        self.write_vip(&mut mirror, vip)
    }

    /// Removes one VIP.
    pub fn remove_vip(&self, vip: Ipv4Addr) -> Result<(), BpfError> {
        let mut mirror = self.mirror();
        self.erase_vip(&mut mirror, vip)
    }

    /// Adds one backend endpoint.
    pub fn add_backend(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Result<(), BpfError> {
        let mut mirror = self.mirror();
        self.write_backend(&mut mirror, (addr, port, proto))
    }

    /// Removes one backend endpoint.
    pub fn remove_backend(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Result<(), BpfError> {
        let mut mirror = self.mirror();
        self.erase_backend(&mut mirror, (addr, port, proto))
    }

    /// Makes the maps hold exactly `vips` and `backends`, writing only the
    /// difference. Equivalent to [`add_missing`](Self::add_missing) then
    /// [`remove_stale`](Self::remove_stale).
    pub fn sync_maps(
        &self,
        vips: &HashSet<Ipv4Addr>,
        backends: &HashSet<BackendKey>,
    ) -> Result<MapDelta, BpfError> {
        let added = self.add_missing(vips, backends)?;
        let removed = self.remove_stale(vips, backends)?;
        Ok(added.merge(removed))
    }

    /// Adds the entries of `vips` and `backends` the maps lack; removes
    /// nothing. Call before publishing a table that needs them.
    pub fn add_missing(
        &self,
        vips: &HashSet<Ipv4Addr>,
        backends: &HashSet<BackendKey>,
    ) -> Result<MapDelta, BpfError> {
        let mut mirror = self.mirror();
        let mut delta = MapDelta::default();
        for &vip in vips {
            if !mirror.vips.contains(&vip) {
                self.write_vip(&mut mirror, vip)?;
                delta.vips_added += 1;
            }
        }
        for &b in backends {
            if !mirror.backends.contains(&b) {
                self.write_backend(&mut mirror, b)?;
                delta.backends_added += 1;
            }
        }
        Ok(delta)
    }

    /// Removes the map entries not in `vips` and `backends`; adds nothing.
    /// Call after publishing a table that no longer needs them.
    pub fn remove_stale(
        &self,
        vips: &HashSet<Ipv4Addr>,
        backends: &HashSet<BackendKey>,
    ) -> Result<MapDelta, BpfError> {
        let mut mirror = self.mirror();
        let mut delta = MapDelta::default();
        let stale_vips: Vec<Ipv4Addr> = mirror.vips.difference(vips).copied().collect();
        for vip in stale_vips {
            self.erase_vip(&mut mirror, vip)?;
            delta.vips_removed += 1;
        }
        let stale_backends: Vec<BackendKey> =
            mirror.backends.difference(backends).copied().collect();
        for b in stale_backends {
            self.erase_backend(&mut mirror, b)?;
            delta.backends_removed += 1;
        }
        Ok(delta)
    }

    /// Takes over what a previous gateway's program (attached to one of
    /// `ifindexes`, about to be replaced by this one) steers: its VIP and
    /// backend entries are added to this program's maps, so traffic it
    /// steered keeps reaching the gateway until a full table says
    /// otherwise (a Kubernetes sync can take a while after a restart).
    /// Entries of a map with another key layout are not read.
    pub fn inherit_maps(&self, ifindexes: &[u32]) -> Result<MapDelta, BpfError> {
        for &ifindex in ifindexes {
            let entries = match attached_entries(ifindex, self.prog_id) {
                Ok(entries) => entries,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    tracing::warn!(
                        "the previous gateway's XDP maps cannot be read without CAP_SYS_ADMIN: \
                         its VIPs are steered again from the first sync on"
                    );
                    return Ok(MapDelta::default());
                }
                Err(source) => {
                    return Err(BpfError::Interface {
                        iface: describe_ifindex(ifindex),
                        what: "reading the maps of the XDP program attached before".into(),
                        source,
                    })
                }
            };
            if let Some((vips, backends)) = entries {
                return self.add_missing(&vips, &backends);
            }
        }
        Ok(MapDelta::default())
    }

    /// What the VIP and backend maps hold, per the mirror.
    pub fn map_contents(&self) -> (HashSet<Ipv4Addr>, HashSet<BackendKey>) {
        let mirror = self.mirror();
        (mirror.vips.clone(), mirror.backends.clone())
    }

    /// Whether the kernel's VIP map holds `vip` (a map lookup, for tests
    /// and diagnostics; the mirror is what syncs use).
    pub fn vip_in_kernel(&self, vip: Ipv4Addr) -> Result<bool, BpfError> {
        let key = u32::from_ne_bytes(vip.octets());
        map_contains::<u32, u8>(self.vips_fd, MAP_VIPS, &key, || vip.to_string())
    }

    /// Whether the kernel's backend map holds the endpoint.
    pub fn backend_in_kernel(
        &self,
        addr: Ipv4Addr,
        port: u16,
        proto: u8,
    ) -> Result<bool, BpfError> {
        let key = backend_key((addr, port, proto));
        map_contains::<[u8; 8], u8>(self.backends_fd, MAP_BACKENDS, &key, || {
            format!("{addr}:{port}/{proto}")
        })
    }

    fn mirror(&self) -> MutexGuard<'_, Mirror> {
        // The mirror is updated only after a successful map write, so it
        // is consistent even if a holder panicked.
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_vip(&self, mirror: &mut Mirror, vip: Ipv4Addr) -> Result<(), BpfError> {
        let key = u32::from_ne_bytes(vip.octets());
        map_update(self.vips_fd, MAP_VIPS, &key, &1u8, || vip.to_string())?;
        mirror.vips.insert(vip);
        Ok(())
    }

    fn erase_vip(&self, mirror: &mut Mirror, vip: Ipv4Addr) -> Result<(), BpfError> {
        let key = u32::from_ne_bytes(vip.octets());
        map_delete(self.vips_fd, MAP_VIPS, &key, || vip.to_string())?;
        mirror.vips.remove(&vip);
        Ok(())
    }

    fn write_backend(&self, mirror: &mut Mirror, b: BackendKey) -> Result<(), BpfError> {
        let key = backend_key(b);
        map_update(self.backends_fd, MAP_BACKENDS, &key, &1u8, || {
            format!("{}:{}/{}", b.0, b.1, b.2)
        })?;
        mirror.backends.insert(b);
        Ok(())
    }

    fn erase_backend(&self, mirror: &mut Mirror, b: BackendKey) -> Result<(), BpfError> {
        let key = backend_key(b);
        map_delete(self.backends_fd, MAP_BACKENDS, &key, || {
            format!("{}:{}/{}", b.0, b.1, b.2)
        })?;
        mirror.backends.remove(&b);
        Ok(())
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!(error = %e, "XDP program left attached");
        }
        // SAFETY: we own the object; nothing uses its fds after this
        // (they are closed with it).
        unsafe { sys::bpf_object__close(self.object.as_ptr()) };
    }
}

/// Base slots for ports with the given RX queue counts, laid out one after
/// the other: port `i` gets slots `base[i] .. base[i] + queues[i]`.
pub fn base_slots(rx_queues: &[u32]) -> Result<Vec<u32>, BpfError> {
    if rx_queues.len() > MAX_PORTS as usize {
        return Err(BpfError::TooManyQueues {
            needed: rx_queues.iter().map(|&q| u64::from(q)).sum(),
        });
    }
    let mut next = 0u64;
    let mut bases = Vec::with_capacity(rx_queues.len());
    for &q in rx_queues {
        bases.push(next as u32);
        next += u64::from(q);
    }
    if next > u64::from(XSK_SLOTS) {
        return Err(BpfError::TooManyQueues { needed: next });
    }
    Ok(bases)
}

/// The 8-byte key of `cipgw_backends`, as the C struct lays it out:
/// address and port in network order, protocol, zero pad.
fn backend_key((addr, port, proto): BackendKey) -> [u8; 8] {
    let a = addr.octets();
    let p = port.to_be_bytes();
    [a[0], a[1], a[2], a[3], p[0], p[1], proto, 0]
}

fn map_update<K, V>(
    fd: RawFd,
    map: &'static str,
    key: &K,
    value: &V,
    describe: impl FnOnce() -> String,
) -> Result<(), BpfError> {
    // SAFETY: `key` and `value` point to initialised values of the sizes
    // the map was created with (checked by the kernel against the fd's
    // map; our types mirror the C definitions).
    let ret = unsafe {
        sys::bpf_map_update_elem(
            fd,
            (key as *const K).cast(),
            (value as *const V).cast(),
            u64::from(sys::BPF_ANY),
        )
    };
    if ret < 0 {
        return Err(BpfError::Map {
            map,
            op: "update",
            key: describe(),
            source: neg_errno(ret),
        });
    }
    Ok(())
}

/// Deletes a key; a missing key is not an error.
fn map_delete<K>(
    fd: RawFd,
    map: &'static str,
    key: &K,
    describe: impl FnOnce() -> String,
) -> Result<(), BpfError> {
    // SAFETY: `key` points to an initialised value of the map's key size.
    let ret = unsafe { sys::bpf_map_delete_elem(fd, (key as *const K).cast()) };
    if ret < 0 && -ret != libc::ENOENT {
        return Err(BpfError::Map {
            map,
            op: "delete",
            key: describe(),
            source: neg_errno(ret),
        });
    }
    Ok(())
}

fn map_contains<K, V: Default>(
    fd: RawFd,
    map: &'static str,
    key: &K,
    describe: impl FnOnce() -> String,
) -> Result<bool, BpfError> {
    let mut value = V::default();
    // SAFETY: `key` is the map's key size; `value` is writable and of the
    // map's value size.
    let ret = unsafe {
        sys::bpf_map_lookup_elem(fd, (key as *const K).cast(), (&mut value as *mut V).cast())
    };
    match ret {
        0 => Ok(true),
        r if -r == libc::ENOENT => Ok(false),
        r => Err(BpfError::Map {
            map,
            op: "lookup",
            key: describe(),
            source: neg_errno(r),
        }),
    }
}

fn attach_opts(old_prog_fd: RawFd) -> sys::bpf_xdp_attach_opts {
    sys::bpf_xdp_attach_opts {
        sz: mem::size_of::<sys::bpf_xdp_attach_opts>() as sys::size_t,
        old_prog_fd,
        ..Default::default()
    }
}

/// Detaches our program from one attachment, in the network namespace it
/// was attached in. "Already gone" outcomes are success.
fn detach_one(prog_fd: RawFd, a: &Attachment) -> Result<(), BpfError> {
    let run = || -> c_int {
        let opts = attach_opts(prog_fd);
        // SAFETY: plain syscall wrapper; `opts` outlives the call. With
        // `old_prog_fd` set the kernel detaches only if our program is
        // still the one attached (XDP_FLAGS_REPLACE).
        unsafe { sys::bpf_xdp_detach(a.ifindex as c_int, a.mode.flag(), &opts) }
    };
    let here = File::open("/proc/thread-self/ns/net").ok();
    let ret = if here.as_ref().is_some_and(|h| same_netns(h, &a.netns)) {
        run()
    } else {
        // The ifindex means something else here: detach from a helper
        // thread that enters the attachment's namespace.
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a valid namespace fd; it affects only
                // this short-lived helper thread.
                if unsafe { libc::setns(a.netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return -io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EINVAL);
                }
                run()
            })
            .join()
            .unwrap_or(-libc::EINVAL)
        })
    };
    match -ret {
        0 => {
            tracing::info!(ifindex = a.ifindex, mode = %a.mode, "XDP program detached");
            Ok(())
        }
        // ENODEV: interface gone. EEXIST: another program replaced ours.
        libc::ENODEV | libc::EEXIST => {
            tracing::info!(
                ifindex = a.ifindex,
                "XDP program already gone: {}",
                neg_errno(ret)
            );
            Ok(())
        }
        _ => Err(BpfError::Interface {
            iface: describe_ifindex(a.ifindex),
            what: format!("detaching the XDP program ({} mode)", a.mode),
            source: neg_errno(ret),
        }),
    }
}

fn same_netns(a: &File, b: &File) -> bool {
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The programs attached to an interface: (id, mode name, mode flag).
fn query_xdp(ifindex: u32) -> io::Result<Vec<(u32, &'static str, u32)>> {
    let mut opts = sys::bpf_xdp_query_opts {
        sz: mem::size_of::<sys::bpf_xdp_query_opts>() as sys::size_t,
        ..Default::default()
    };
    // SAFETY: plain netlink query; `opts` is a valid, sized out-parameter.
    let ret = unsafe { sys::bpf_xdp_query(ifindex as c_int, 0, &mut opts) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    let mut found = Vec::new();
    if opts.drv_prog_id != 0 {
        found.push((opts.drv_prog_id, "native", sys::XDP_FLAGS_DRV_MODE));
    }
    if opts.skb_prog_id != 0 {
        found.push((opts.skb_prog_id, "skb", sys::XDP_FLAGS_SKB_MODE));
    }
    if opts.hw_prog_id != 0 {
        found.push((opts.hw_prog_id, "offload", sys::XDP_FLAGS_HW_MODE));
    }
    Ok(found)
}

/// The VIP and backend entries of the cipgw program (other than
/// `own_id`) attached to `ifindex`, if there is one.
fn attached_entries(
    ifindex: u32,
    own_id: u32,
) -> io::Result<Option<(HashSet<Ipv4Addr>, HashSet<BackendKey>)>> {
    for (id, _, _) in query_xdp(ifindex)? {
        if id == own_id {
            continue;
        }
        let prog = prog_fd_by_id(id)?;
        if prog_info(prog.as_raw_fd())?.1 != PROGRAM_NAME {
            continue;
        }
        let mut vips = HashSet::new();
        let mut backends = HashSet::new();
        for map_id in prog_map_ids(prog.as_raw_fd())? {
            // SAFETY: plain syscall wrapper.
            let fd = unsafe { sys::bpf_map_get_fd_by_id(map_id) };
            if fd < 0 {
                return Err(neg_errno(fd));
            }
            // SAFETY: the kernel just returned this fd to us.
            let map = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut info = sys::bpf_map_info::default();
            let mut len = mem::size_of::<sys::bpf_map_info>() as u32;
            // SAFETY: `info` is a zeroed out-parameter of `len` bytes.
            let ret = unsafe { sys::bpf_map_get_info_by_fd(fd, &mut info, &mut len) };
            if ret < 0 {
                return Err(neg_errno(ret));
            }
            let name = object_name(&info.name);
            match (name.as_slice(), info.key_size) {
                (n, 4) if n == MAP_VIPS.as_bytes() => {
                    for key in map_keys::<4>(map.as_raw_fd())? {
                        vips.insert(Ipv4Addr::from(key));
                    }
                }
                (n, 8) if n == MAP_BACKENDS.as_bytes() => {
                    for k in map_keys::<8>(map.as_raw_fd())? {
                        let addr = Ipv4Addr::new(k[0], k[1], k[2], k[3]);
                        backends.insert((addr, u16::from_be_bytes([k[4], k[5]]), k[6]));
                    }
                }
                _ => {}
            }
        }
        return Ok(Some((vips, backends)));
    }
    Ok(None)
}

/// The ids of the maps a program uses.
fn prog_map_ids(fd: RawFd) -> io::Result<Vec<u32>> {
    let mut info = sys::bpf_prog_info::default();
    let mut len = mem::size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: as in `prog_info`: no arrays requested.
    let ret = unsafe { sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    let mut info = sys::bpf_prog_info {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    let mut len = mem::size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: `map_ids` points at `nr_map_ids` u32s that outlive the
    // call; every other array field is zero.
    let ret = unsafe { sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    ids.truncate(info.nr_map_ids as usize);
    Ok(ids)
}

/// Every key of a hash map whose keys are `N` bytes.
fn map_keys<const N: usize>(fd: RawFd) -> io::Result<Vec<[u8; N]>> {
    let mut keys = Vec::new();
    let mut key = [0u8; N];
    let mut first = true;
    loop {
        let mut next = [0u8; N];
        let prev = if first {
            ptr::null()
        } else {
            key.as_ptr().cast()
        };
        // SAFETY: `prev` is null or N readable bytes, `next` N writable
        // bytes: the map's key size, checked by the caller.
        let ret = unsafe { sys::bpf_map_get_next_key(fd, prev, next.as_mut_ptr().cast()) };
        if ret < 0 {
            let e = neg_errno(ret);
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(keys);
            }
            return Err(e);
        }
        keys.push(next);
        key = next;
        first = false;
    }
}

fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(neg_errno(fd));
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// (id, name) of a program.
fn prog_info(fd: RawFd) -> io::Result<(u32, String)> {
    let mut info = sys::bpf_prog_info::default();
    let mut len = mem::size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a zeroed out-parameter of `len` bytes; all the
    // pointer fields in it are zero, so the kernel copies no arrays.
    let ret = unsafe { sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    let bytes = object_name(&info.name);
    Ok((info.id, String::from_utf8_lossy(&bytes).into_owned()))
}

/// A BPF object's name from the kernel's NUL-padded array.
fn object_name(name: &[c_char]) -> Vec<u8> {
    name.iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect()
}

/// "NAME (ifindex N)" in the calling thread's namespace, or "ifindex N".
pub(crate) fn describe_ifindex(ifindex: u32) -> String {
    let mut buf = [0 as c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    format!("{} (ifindex {ifindex})", name.to_string_lossy())
}

/// libbpf (1.x) returns `-errno`.
fn neg_errno(ret: c_int) -> io::Error {
    io::Error::from_raw_os_error(ret.checked_neg().unwrap_or(libc::EINVAL))
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
// libbpf's log, into tracing (and captured while loading, for the error).

std::thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Lines of libbpf output kept for a load error.
const CAPTURED_LINES: usize = 40;

fn capture_libbpf_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    CAPTURE.with(|c| *c.borrow_mut() = Some(Vec::new()));
    let out = f();
    let lines = CAPTURE.with(|c| c.borrow_mut().take()).unwrap_or_default();
    let skip = lines.len().saturating_sub(CAPTURED_LINES);
    (out, lines[skip..].join("\n"))
}

extern "C" {
    // libc's vsnprintf, with libbpf's `va_list` parameter type.
    fn vsnprintf(
        buf: *mut c_char,
        size: usize,
        fmt: *const c_char,
        ap: *mut sys::__va_list_tag,
    ) -> c_int;
}

unsafe extern "C" fn libbpf_log(
    level: sys::libbpf_print_level,
    fmt: *const c_char,
    ap: *mut sys::__va_list_tag,
) -> c_int {
    let mut buf = [0 as c_char; 1024];
    // SAFETY: libbpf hands us a printf format and its matching va_list;
    // vsnprintf writes at most buf.len() bytes, NUL-terminated.
    let n = unsafe { vsnprintf(buf.as_mut_ptr(), buf.len(), fmt, ap) };
    if n < 0 {
        return n;
    }
    // SAFETY: vsnprintf NUL-terminated the buffer.
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let msg = msg.trim_end();
    match level {
        sys::LIBBPF_WARN => tracing::warn!(target: "libbpf", "{msg}"),
        sys::LIBBPF_INFO => tracing::debug!(target: "libbpf", "{msg}"),
        _ => tracing::trace!(target: "libbpf", "{msg}"),
    }
    if level == sys::LIBBPF_WARN {
        CAPTURE.with(|c| {
            if let Some(lines) = c.borrow_mut().as_mut() {
                lines.extend(msg.lines().map(str::to_owned));
            }
        });
    }
    n
}

fn install_libbpf_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a process-wide callback with the signature
        // libbpf expects; the function lives for the whole program.
        unsafe { sys::libbpf_set_print(Some(libbpf_log)) };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_key_matches_the_c_layout() {
        let k = backend_key((Ipv4Addr::new(198, 18, 1, 10), 8080, 6));
        assert_eq!(k, [198, 18, 1, 10, 0x1f, 0x90, 6, 0]);
    }

    #[test]
    fn base_slots_are_consecutive_and_bounded() {
        assert_eq!(base_slots(&[2, 1, 4]).expect("fits"), vec![0, 2, 3]);
        assert!(matches!(
            base_slots(&[1000, 100]),
            Err(BpfError::TooManyQueues { needed: 1100 })
        ));
    }

    #[test]
    fn embedded_object_is_bpf_elf() {
        assert_eq!(&OBJECT.0[..4], b"\x7fELF");
        // e_machine (offset 18, little endian here) is EM_BPF = 247.
        assert_eq!(u16::from_le_bytes([OBJECT.0[18], OBJECT.0[19]]), 247);
    }
}
