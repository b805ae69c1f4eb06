//! Attaching the program to interfaces and detaching it again: in the
//! network namespace it was attached in, replacing only a `cipgw_xdp`
//! an earlier gateway left behind, never another project's program.

use std::ffi::c_int;
use std::fmt;
use std::fs::File;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::ptr;

use cipgw_config::settings::XdpMode;
use libbpf_sys as sys;

use super::ffi::{describe_ifindex, error_chain, neg_errno, prog_fd_by_id, prog_info, query_xdp};
use super::{BpfError, XdpProgram, PROGRAM_NAME};

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

/// One interface the program is attached to.
#[derive(Debug)]
pub(super) struct Attachment {
    ifindex: u32,
    mode: AttachMode,
    /// The network namespace the ifindex belongs to.
    netns: File,
}

impl XdpProgram {
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

    /// Takes a program taken over from the previous gateway
    /// ([`XdpProgram::adopt`]) as attached to `ifindex` where it is, in
    /// the mode it has there: from now on it is detached as if this
    /// value had attached it.
    pub fn keep_attached(&mut self, ifindex: u32) -> Result<AttachMode, BpfError> {
        let iface = describe_ifindex(ifindex);
        let attached = query_xdp(ifindex).map_err(|source| BpfError::Interface {
            iface: iface.clone(),
            what: "querying attached XDP programs".into(),
            source,
        })?;
        let mode = attached
            .iter()
            .find_map(|&(id, _, flag)| match flag {
                _ if id != self.prog_id => None,
                f if f == AttachMode::Native.flag() => Some(AttachMode::Native),
                f if f == AttachMode::Skb.flag() => Some(AttachMode::Skb),
                _ => None,
            })
            .ok_or_else(|| BpfError::NotKept(format!("it is no longer attached to {iface}")))?;
        let netns =
            File::open("/proc/thread-self/ns/net").map_err(|source| BpfError::Interface {
                iface: iface.clone(),
                what: "opening the thread's network namespace".into(),
                source,
            })?;
        self.attached
            .retain(|a| a.ifindex != ifindex || !same_netns(&a.netns, &netns));
        self.attached.push(Attachment {
            ifindex,
            mode,
            netns,
        });
        tracing::info!(iface = %iface, %mode, id = self.prog_id, "XDP program kept attached");
        Ok(mode)
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
