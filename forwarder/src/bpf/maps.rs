//! The maps the control plane writes: which VIPs and backends the
//! program steers (`cipgw_vips`, `cipgw_backends` and their IPv6
//! counterparts `cipgw_vips6`, `cipgw_backends6`, mirrored in userspace
//! as one set of either family so that a change writes only the
//! difference) and where it steers them (`cipgw_ports` with
//! `cipgw_portidx`, `cipgw_xsks`).

use std::collections::HashSet;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_sys as sys;

use super::ffi::{
    describe_ifindex, map_contains, map_delete, map_keys, map_lookup, map_update, neg_errno,
    object_name, prog_fd_by_id, prog_info, prog_map_ids, query_xdp,
};
use super::{
    BackendKey, BpfError, XdpProgram, MAP_BACKENDS, MAP_BACKENDS6, MAP_PORTS, MAP_PORT_INDEX,
    MAP_VIPS, MAP_VIPS6, MAP_XSKS, MAX_PORTS, PORT_INDEX_SIZE, PROGRAM_NAME, XSK_SLOTS,
};

/// What `cipgw_vips` and `cipgw_backends` hold, or are to hold: the VIPs
/// whose traffic and the backends whose replies the program steers to
/// the AF_XDP sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steering {
    pub vips: HashSet<IpAddr>,
    pub backends: HashSet<BackendKey>,
}

impl Steering {
    /// Number of entries, VIPs and backends.
    pub fn len(&self) -> usize {
        self.vips.len() + self.backends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vips.is_empty() && self.backends.is_empty()
    }
}

/// What [`XdpProgram::add_missing`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Added {
    pub vips: usize,
    pub backends: usize,
}

/// The VIP and backend maps as a running gateway changes them: what they
/// hold, and one entry added or removed at a time. Adding what is there
/// or removing what is not changes nothing. The order of the writes is
/// the caller's (the daemon applies a table make-before-break), which is
/// why this is a trait: that order is tested on an in-memory map, without
/// a kernel.
pub trait XdpMaps {
    /// What the maps hold.
    fn steering(&self) -> &Steering;
    fn add_vip(&mut self, vip: IpAddr) -> Result<(), BpfError>;
    fn remove_vip(&mut self, vip: IpAddr) -> Result<(), BpfError>;
    fn add_backend(&mut self, backend: BackendKey) -> Result<(), BpfError>;
    fn remove_backend(&mut self, backend: BackendKey) -> Result<(), BpfError>;
}

impl XdpProgram {
    /// Directs frames received on `ifindex` to socket slots
    /// `base_slot + rx_queue`.
    pub fn set_port(&self, ifindex: u32, base_slot: u32) -> Result<(), BpfError> {
        if base_slot >= XSK_SLOTS {
            return Err(BpfError::SlotOutOfRange { slot: base_slot });
        }
        map_update(self.ports_fd, MAP_PORTS, &ifindex, &base_slot, || {
            format!("ifindex {ifindex}")
        })?;
        self.write_port_index(ifindex, base_slot + 1)
    }

    /// Stops directing frames from `ifindex` to sockets.
    pub fn remove_port(&self, ifindex: u32) -> Result<(), BpfError> {
        self.write_port_index(ifindex, 0)?;
        map_delete(self.ports_fd, MAP_PORTS, &ifindex, || {
            format!("ifindex {ifindex}")
        })
    }

    /// The base slot `cipgw_portidx` holds for `ifindex`: `None` for
    /// an interface that is not a port or whose ifindex is past the index
    /// (the program then asks `cipgw_ports`). For diagnostics and tests.
    pub fn indexed_port(&self, ifindex: u32) -> Result<Option<u32>, BpfError> {
        if ifindex >= PORT_INDEX_SIZE {
            return Ok(None);
        }
        let value = map_lookup::<u32, u32>(self.port_index_fd, MAP_PORT_INDEX, &ifindex, || {
            format!("ifindex {ifindex}")
        })?;
        Ok(value.and_then(|base_plus_one| base_plus_one.checked_sub(1)))
    }

    /// Sets `ifindex`'s entry of `cipgw_portidx` (base slot plus one; 0,
    /// no port: an array's entries are never deleted), when the index
    /// reaches that far. Written after `cipgw_ports` gains a port and
    /// before it loses one.
    fn write_port_index(&self, ifindex: u32, base_plus_one: u32) -> Result<(), BpfError> {
        if ifindex >= PORT_INDEX_SIZE {
            return Ok(());
        }
        map_update(
            self.port_index_fd,
            MAP_PORT_INDEX,
            &ifindex,
            &base_plus_one,
            || format!("ifindex {ifindex}"),
        )
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

    /// Adds the entries of `wanted` the maps lack; removes nothing. For
    /// filling the maps before the program is attached; a running
    /// gateway changes them through [`XdpMaps`], in the daemon's order.
    pub fn add_missing(&mut self, wanted: &Steering) -> Result<Added, BpfError> {
        let mut added = Added::default();
        for &vip in &wanted.vips {
            if !self.mirror.vips.contains(&vip) {
                self.add_vip(vip)?;
                added.vips += 1;
            }
        }
        for &b in &wanted.backends {
            if !self.mirror.backends.contains(&b) {
                self.add_backend(b)?;
                added.backends += 1;
            }
        }
        Ok(added)
    }

    /// Takes over what a previous gateway's program (attached to one of
    /// `ifindexes`, about to be replaced by this one) steers: its VIP and
    /// backend entries are added to this program's maps, so traffic it
    /// steered keeps reaching the gateway until a full table says
    /// otherwise (a Kubernetes sync can take a while after a restart).
    /// Entries of a map with another key layout are not read.
    pub fn inherit_maps(&mut self, ifindexes: &[u32]) -> Result<Added, BpfError> {
        for &ifindex in ifindexes {
            let entries = match attached_entries(ifindex, self.prog_id) {
                Ok(entries) => entries,
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    tracing::warn!(
                        "the previous gateway's XDP maps cannot be read without CAP_SYS_ADMIN: \
                         its VIPs are steered again from the first sync on"
                    );
                    return Ok(Added::default());
                }
                Err(source) => {
                    return Err(BpfError::Interface {
                        iface: describe_ifindex(ifindex),
                        what: "reading the maps of the XDP program attached before".into(),
                        source,
                    })
                }
            };
            if let Some(steering) = entries {
                return self.add_missing(&steering);
            }
        }
        Ok(Added::default())
    }

    /// Whether the kernel's VIP map holds `vip` (a map lookup, for tests
    /// and diagnostics; the mirror is what syncs use).
    pub fn vip_in_kernel(&self, vip: IpAddr) -> Result<bool, BpfError> {
        let describe = || vip.to_string();
        match vip {
            IpAddr::V4(v4) => {
                map_contains::<[u8; 4], u8>(self.vips_fd, MAP_VIPS, &v4.octets(), describe)
            }
            IpAddr::V6(v6) => {
                map_contains::<[u8; 16], u8>(self.vips6_fd, MAP_VIPS6, &v6.octets(), describe)
            }
        }
    }

    /// Whether the kernel's backend map holds the endpoint.
    pub fn backend_in_kernel(&self, addr: IpAddr, port: u16, proto: u8) -> Result<bool, BpfError> {
        let describe = || format!("{addr}:{port}/{proto}");
        match addr {
            IpAddr::V4(a) => map_contains::<[u8; 8], u8>(
                self.backends_fd,
                MAP_BACKENDS,
                &backend_key(a, port, proto),
                describe,
            ),
            IpAddr::V6(a) => map_contains::<[u8; 20], u8>(
                self.backends6_fd,
                MAP_BACKENDS6,
                &backend6_key(a, port, proto),
                describe,
            ),
        }
    }
}

impl XdpMaps for XdpProgram {
    fn steering(&self) -> &Steering {
        &self.mirror
    }

    fn add_vip(&mut self, vip: IpAddr) -> Result<(), BpfError> {
        let describe = || vip.to_string();
        match vip {
            IpAddr::V4(a) => map_update(self.vips_fd, MAP_VIPS, &a.octets(), &1u8, describe)?,
            IpAddr::V6(a) => map_update(self.vips6_fd, MAP_VIPS6, &a.octets(), &1u8, describe)?,
        }
        self.mirror.vips.insert(vip);
        Ok(())
    }

    fn remove_vip(&mut self, vip: IpAddr) -> Result<(), BpfError> {
        let describe = || vip.to_string();
        match vip {
            IpAddr::V4(a) => map_delete(self.vips_fd, MAP_VIPS, &a.octets(), describe)?,
            IpAddr::V6(a) => map_delete(self.vips6_fd, MAP_VIPS6, &a.octets(), describe)?,
        }
        self.mirror.vips.remove(&vip);
        Ok(())
    }

    fn add_backend(&mut self, b: BackendKey) -> Result<(), BpfError> {
        let describe = || format!("{}:{}/{}", b.0, b.1, b.2);
        match b.0 {
            IpAddr::V4(a) => map_update(
                self.backends_fd,
                MAP_BACKENDS,
                &backend_key(a, b.1, b.2),
                &1u8,
                describe,
            )?,
            IpAddr::V6(a) => map_update(
                self.backends6_fd,
                MAP_BACKENDS6,
                &backend6_key(a, b.1, b.2),
                &1u8,
                describe,
            )?,
        }
        self.mirror.backends.insert(b);
        Ok(())
    }

    fn remove_backend(&mut self, b: BackendKey) -> Result<(), BpfError> {
        let describe = || format!("{}:{}/{}", b.0, b.1, b.2);
        match b.0 {
            IpAddr::V4(a) => map_delete(
                self.backends_fd,
                MAP_BACKENDS,
                &backend_key(a, b.1, b.2),
                describe,
            )?,
            IpAddr::V6(a) => map_delete(
                self.backends6_fd,
                MAP_BACKENDS6,
                &backend6_key(a, b.1, b.2),
                describe,
            )?,
        }
        self.mirror.backends.remove(&b);
        Ok(())
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

/// The 8-byte key of `cipgw_backends` (and `cipgw_dns`), as the C
/// struct lays it out: address and port in network order, protocol, zero
/// pad.
pub(super) fn backend_key(addr: Ipv4Addr, port: u16, proto: u8) -> [u8; 8] {
    let a = addr.octets();
    let p = port.to_be_bytes();
    [a[0], a[1], a[2], a[3], p[0], p[1], proto, 0]
}

/// The 20-byte key of `cipgw_backends6` (and `cipgw_dns6`): the same
/// with a 16-byte address.
pub(super) fn backend6_key(addr: Ipv6Addr, port: u16, proto: u8) -> [u8; 20] {
    let mut key = [0; 20];
    key[..16].copy_from_slice(&addr.octets());
    key[16..18].copy_from_slice(&port.to_be_bytes());
    key[18] = proto;
    key
}

/// The VIP and backend entries of the cipgw program (other than
/// `own_id`) attached to `ifindex`, if there is one.
fn attached_entries(ifindex: u32, own_id: u32) -> io::Result<Option<Steering>> {
    for (id, _, _) in query_xdp(ifindex)? {
        if id == own_id {
            continue;
        }
        let prog = prog_fd_by_id(id)?;
        if prog_info(prog.as_raw_fd())?.1 != PROGRAM_NAME {
            continue;
        }
        let mut maps = Vec::new();
        for map_id in prog_map_ids(prog.as_raw_fd())? {
            // SAFETY: plain syscall wrapper.
            let fd = unsafe { sys::bpf_map_get_fd_by_id(map_id) };
            if fd < 0 {
                return Err(neg_errno(fd));
            }
            // SAFETY: the kernel just returned this fd to us.
            maps.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let mut steering = Steering::default();
        for map in &maps {
            add_entries(map.as_raw_fd(), &mut steering)?;
        }
        return Ok(Some(steering));
    }
    Ok(None)
}

/// What the VIP and backend maps at these fds hold.
pub(super) fn read_steering(fds: &[RawFd]) -> io::Result<Steering> {
    let mut steering = Steering::default();
    for &fd in fds {
        add_entries(fd, &mut steering)?;
    }
    Ok(steering)
}

/// Adds the entries of the map at `fd` to `steering` if it is the VIP or
/// the backend map (by name and key size); any other map is left alone.
pub(super) fn add_entries(fd: RawFd, steering: &mut Steering) -> io::Result<()> {
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
            for key in map_keys::<4>(fd)? {
                steering.vips.insert(Ipv4Addr::from(key).into());
            }
        }
        (n, 8) if n == MAP_BACKENDS.as_bytes() => {
            for k in map_keys::<8>(fd)? {
                let addr = Ipv4Addr::new(k[0], k[1], k[2], k[3]);
                let port = u16::from_be_bytes([k[4], k[5]]);
                steering.backends.insert((addr.into(), port, k[6]));
            }
        }
        (n, 16) if n == MAP_VIPS6.as_bytes() => {
            for key in map_keys::<16>(fd)? {
                steering.vips.insert(Ipv6Addr::from(key).into());
            }
        }
        (n, 20) if n == MAP_BACKENDS6.as_bytes() => {
            for k in map_keys::<20>(fd)? {
                let mut addr = [0; 16];
                addr.copy_from_slice(&k[..16]);
                let port = u16::from_be_bytes([k[16], k[17]]);
                steering
                    .backends
                    .insert((Ipv6Addr::from(addr).into(), port, k[18]));
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_key_matches_the_c_layout() {
        let k = backend_key(Ipv4Addr::new(198, 18, 1, 10), 8080, 6);
        assert_eq!(k, [198, 18, 1, 10, 0x1f, 0x90, 6, 0]);
        let k = backend6_key(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11), 8080, 17);
        assert_eq!(
            k,
            [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x11, 0x1f, 0x90, 17, 0]
        );
    }

    #[test]
    fn base_slots_are_consecutive_and_bounded() {
        assert_eq!(base_slots(&[2, 1, 4]).expect("fits"), vec![0, 2, 3]);
        assert!(matches!(
            base_slots(&[1000, 100]),
            Err(BpfError::TooManyQueues { needed: 1100 })
        ));
    }
}
