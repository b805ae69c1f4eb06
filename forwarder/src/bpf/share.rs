//! Keeping the attached program across a make-before-break restart: the
//! running gateway hands the next one its program's and control maps'
//! fds (over the hand-over socket, `SCM_RIGHTS`: no CAP_SYS_ADMIN, which
//! opening a program by id would take), and the next gateway, when its
//! own object is byte for byte the same ([`object_digest`]), keeps that
//! program attached and writes its maps instead of loading and attaching
//! a program of its own (~20 ms of a hand-over's gap on two interfaces).
//!
//! The maps a start fills as a whole (`cipgw_ports` and its
//! `cipgw_portidx`, `cipgw_snat`,
//! `cipgw_snat6`, `cipgw_snat_on`, `cipgw_dns`, `cipgw_dns6`) are set to
//! this gateway's settings by [`XdpProgram::take_over_maps`] once the
//! running gateway has let go; the VIP and backend maps of both families
//! are read into the mirror at adoption,
//! as a program replaced at start inherits them, and `cipgw_xsks` gets
//! the new sockets (the old ones leave it when they close).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::mem;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use cipgw_config::settings::XdpMode;
use libbpf_sys as sys;
use sha2::{Digest, Sha256};

use super::ffi::{map_delete, map_keys, neg_errno, object_name, prog_info, query_xdp};
use super::maps::{add_entries, read_steering};
use super::{
    Added, BpfError, Steering, XdpProgram, CONTROL_MAPS, MAP_DNS, MAP_DNS6, MAP_PORTS, MAP_SNAT,
    MAP_SNAT6, OBJECT, PROGRAM_NAME,
};

/// The SHA-256 of the embedded object, in hex: two gateways with the same
/// digest load the same program with the same maps.
pub fn object_digest() -> String {
    let digest = Sha256::digest(&OBJECT.0);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// A program and its control maps as one gateway hands them to the next:
/// the program's fd, then one fd per map of [`CONTROL_MAPS`], in order.
#[derive(Debug)]
pub struct SharedProgram {
    pub fds: Vec<OwnedFd>,
}

impl SharedProgram {
    /// Copies of the same fds.
    pub fn try_clone(&self) -> io::Result<SharedProgram> {
        let fds = self
            .fds
            .iter()
            .map(OwnedFd::try_clone)
            .collect::<io::Result<Vec<_>>>()?;
        Ok(SharedProgram { fds })
    }
}

impl XdpProgram {
    /// Copies of the program's and control maps' fds, for the next
    /// gateway ([`XdpProgram::adopt`]).
    pub fn share(&self) -> io::Result<SharedProgram> {
        let raw = [
            self.prog_fd,
            self.vips_fd,
            self.backends_fd,
            self.ports_fd,
            self.xsks_fd,
            self.snat_fd,
            self.snat_on_fd,
            self.dns_fd,
            self.vips6_fd,
            self.backends6_fd,
            self.snat6_fd,
            self.dns6_fd,
            self.port_index_fd,
        ];
        let fds = raw
            .iter()
            // SAFETY: these fds stay open as long as self lives, which
            // outlives this borrow; the copies are owned by the result.
            .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()?;
        Ok(SharedProgram { fds })
    }

    /// Takes over the program the running gateway shared, if it is
    /// attached to every one of `ifindexes` in a mode `mode` allows; its
    /// VIP and backend maps are read into the mirror. Nothing is written
    /// and nothing attached: until [`XdpProgram::keep_attached`] the
    /// value does not detach the program when dropped.
    pub fn adopt(
        shared: SharedProgram,
        ifindexes: &[u32],
        mode: XdpMode,
    ) -> Result<XdpProgram, BpfError> {
        let not_kept = |why: String| BpfError::NotKept(why);
        if shared.fds.len() != 1 + CONTROL_MAPS.len() {
            return Err(not_kept(format!(
                "{} fds handed over, {} expected",
                shared.fds.len(),
                1 + CONTROL_MAPS.len()
            )));
        }
        let prog_fd = shared.fds[0].as_raw_fd();
        let (prog_id, name) =
            prog_info(prog_fd).map_err(|e| not_kept(format!("reading the program: {e}")))?;
        if name != PROGRAM_NAME {
            return Err(not_kept(format!("the program handed over is {name:?}")));
        }
        for (fd, want) in shared.fds[1..].iter().zip(CONTROL_MAPS) {
            let got = map_name(fd.as_raw_fd())
                .map_err(|e| not_kept(format!("reading map {want}: {e}")))?;
            if got != want.as_bytes() {
                return Err(not_kept(format!(
                    "map {:?} handed over where {want} was expected",
                    String::from_utf8_lossy(&got)
                )));
            }
        }
        for &ifindex in ifindexes {
            let attached = query_xdp(ifindex).map_err(|e| {
                not_kept(format!(
                    "{}: querying XDP: {e}",
                    super::ffi::describe_ifindex(ifindex)
                ))
            })?;
            let allowed = attached.iter().any(|&(id, mode_name, _)| {
                id == prog_id
                    && match mode {
                        XdpMode::Auto => true,
                        XdpMode::Native => mode_name == "native",
                        XdpMode::Skb => mode_name == "skb",
                    }
            });
            if !allowed {
                return Err(not_kept(format!(
                    "it is not attached to {} (in the mode --xdp-mode asks for)",
                    super::ffi::describe_ifindex(ifindex)
                )));
            }
        }
        let fd = |i: usize| shared.fds[i].as_raw_fd();
        let mut program = XdpProgram {
            object: None,
            adopted: Vec::new(),
            prog_fd,
            prog_id,
            vips_fd: fd(1),
            backends_fd: fd(2),
            ports_fd: fd(3),
            xsks_fd: fd(4),
            snat_fd: fd(5),
            snat_on_fd: fd(6),
            dns_fd: fd(7),
            vips6_fd: fd(8),
            backends6_fd: fd(9),
            snat6_fd: fd(10),
            dns6_fd: fd(11),
            port_index_fd: fd(12),
            attached: Vec::new(),
            mirror: Steering::default(),
            known_ids: vec![prog_id],
        };
        program.adopted = shared.fds;
        program.mirror = read_steering(&[
            program.vips_fd,
            program.backends_fd,
            program.vips6_fd,
            program.backends6_fd,
        ])
        .map_err(|e| not_kept(format!("reading its VIP and backend maps: {e}")))?;
        Ok(program)
    }

    /// Adds what the VIP and backend maps of a program the running
    /// gateway shared (and this one replaces: another object) hold, as
    /// [`XdpProgram::inherit_maps`] does from the attached program, but
    /// without opening anything by id (no CAP_SYS_ADMIN). Maps of another
    /// name or key size are not read.
    pub fn inherit_shared(&mut self, shared: &SharedProgram) -> Result<Added, BpfError> {
        let mut steering = Steering::default();
        // The program's fd comes first; only maps after it.
        for fd in shared.fds.iter().skip(1) {
            add_entries(fd.as_raw_fd(), &mut steering).map_err(|source| BpfError::Map {
                map: "of the previous gateway",
                op: "read",
                key: "every key".into(),
                source,
            })?;
        }
        self.add_missing(&steering)
    }

    /// Whether this program was taken over from the previous gateway.
    pub fn is_adopted(&self) -> bool {
        self.object.is_none()
    }

    /// Sets the maps a start fills as a whole to this gateway's settings,
    /// on a program taken over once the running gateway has let go: the
    /// interfaces' base slots (and no other interface), the source NAT
    /// addresses and ports (or none), and the DNS addresses steered.
    pub fn take_over_maps(
        &self,
        ports: &[(u32, u32)],
        snat: Option<(&[IpAddr], RangeInclusive<u16>)>,
        dns: &[(IpAddr, u16)],
    ) -> Result<(), BpfError> {
        // A port this gateway does not keep goes as any port goes
        // (`remove_port`: out of `cipgw_portidx` first, then
        // `cipgw_ports`).
        let keep: HashSet<u32> = ports.iter().map(|&(ifindex, _)| ifindex).collect();
        for key in listed_keys::<4>(self.ports_fd, MAP_PORTS)? {
            let ifindex = u32::from_ne_bytes(key);
            if !keep.contains(&ifindex) {
                self.remove_port(ifindex)?;
            }
        }
        for &(ifindex, base) in ports {
            self.set_port(ifindex, base)?;
        }
        let addresses = snat.as_ref().map_or(&[][..], |(a, _)| *a);
        let keep: HashSet<[u8; 4]> = addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(a) => Some(a.octets()),
                IpAddr::V6(_) => None,
            })
            .collect();
        retain_keys(self.snat_fd, MAP_SNAT, &keep)?;
        let keep: HashSet<[u8; 16]> = addresses
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(a) => Some(a.octets()),
                IpAddr::V4(_) => None,
            })
            .collect();
        retain_keys(self.snat6_fd, MAP_SNAT6, &keep)?;
        match snat {
            Some((addresses, range)) => self.set_snat(addresses, range)?,
            None => {
                super::ffi::map_update(self.snat_on_fd, super::MAP_SNAT_ON, &0u32, &0u32, || {
                    "0".into()
                })?
            }
        }
        let keep: HashSet<[u8; 8]> = dns
            .iter()
            .filter_map(|&(a, p)| match a {
                IpAddr::V4(a) => Some(super::dns::dns_key(a, p)),
                IpAddr::V6(_) => None,
            })
            .collect();
        retain_keys(self.dns_fd, MAP_DNS, &keep)?;
        let keep: HashSet<[u8; 20]> = dns
            .iter()
            .filter_map(|&(a, p)| match a {
                IpAddr::V6(a) => Some(super::maps::backend6_key(a, p, 17)),
                IpAddr::V4(_) => None,
            })
            .collect();
        retain_keys(self.dns6_fd, MAP_DNS6, &keep)?;
        for &(address, port) in dns {
            self.steer_dns(address, port)?;
        }
        Ok(())
    }
}

/// Deletes every key of the map that `keep` lacks.
fn retain_keys<const N: usize>(
    fd: RawFd,
    map: &'static str,
    keep: &HashSet<[u8; N]>,
) -> Result<(), BpfError> {
    for key in listed_keys::<N>(fd, map)?
        .iter()
        .filter(|k| !keep.contains(*k))
    {
        map_delete(fd, map, key, || format!("{key:?}"))?;
    }
    Ok(())
}

/// Every key of hash map `map` (`N` bytes each).
fn listed_keys<const N: usize>(fd: RawFd, map: &'static str) -> Result<Vec<[u8; N]>, BpfError> {
    map_keys::<N>(fd).map_err(|source| BpfError::Map {
        map,
        op: "list",
        key: "every key".into(),
        source,
    })
}

/// A map's name, as the kernel has it.
fn map_name(fd: RawFd) -> io::Result<Vec<u8>> {
    let mut info = sys::bpf_map_info::default();
    let mut len = mem::size_of::<sys::bpf_map_info>() as u32;
    // SAFETY: `info` is a zeroed out-parameter of `len` bytes.
    let ret = unsafe { sys::bpf_map_get_info_by_fd(fd, &mut info, &mut len) };
    if ret < 0 {
        return Err(neg_errno(ret));
    }
    Ok(object_name(&info.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads the program twice (root only): what one holds, the other
    /// inherits through the shared fds; the second one could not keep
    /// the first (it is not attached anywhere).
    #[test]
    fn a_replacing_program_inherits_the_shared_maps() {
        if !crate::lab::require_root() {
            return;
        }
        let vip = IpAddr::from([198, 18, 100, 7]);
        let backend = (IpAddr::from([198, 18, 2, 11]), 8080, 6);
        let vip6: IpAddr = "2001:2:0:100::7".parse().expect("literal");
        let backend6 = ("2001:2:0:2::11".parse().expect("literal"), 8080, 17);
        let mut old = XdpProgram::load().expect("load the first program");
        crate::bpf::XdpMaps::add_vip(&mut old, vip).expect("add a VIP");
        crate::bpf::XdpMaps::add_backend(&mut old, backend).expect("add a backend");
        crate::bpf::XdpMaps::add_vip(&mut old, vip6).expect("add an IPv6 VIP");
        crate::bpf::XdpMaps::add_backend(&mut old, backend6).expect("add an IPv6 backend");
        let shared = old.share().expect("share");
        let spare = shared.try_clone().expect("copy the fds");
        let unattached = XdpProgram::adopt(spare, &[1], XdpMode::Auto);
        assert!(
            matches!(unattached, Err(BpfError::NotKept(_))),
            "a program attached nowhere is not kept: {unattached:?}"
        );
        let mut new = XdpProgram::load().expect("load the second program");
        let added = new.inherit_shared(&shared).expect("inherit");
        assert_eq!((added.vips, added.backends), (2, 2));
        for vip in [vip, vip6] {
            assert!(new.vip_in_kernel(vip).expect("look the VIP up"), "{vip}");
        }
        for backend in [backend, backend6] {
            assert!(
                new.backend_in_kernel(backend.0, backend.1, backend.2)
                    .expect("look the backend up"),
                "{backend:?}"
            );
        }
    }

    #[test]
    fn the_digest_is_of_the_embedded_object_and_stable() {
        let digest = object_digest();
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(digest, object_digest());
    }
}
