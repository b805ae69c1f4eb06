//! Thin wrappers over the libbpf calls the rest of the module makes (map
//! element operations, program and map introspection, the XDP query), and
//! libbpf's log routed into tracing.

use std::ffi::{c_char, c_int, CStr};
use std::io;
use std::mem;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::Once;

use libbpf_sys as sys;

use super::BpfError;

pub(super) fn map_update<K, V>(
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
pub(super) fn map_delete<K>(
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

/// Whether the map holds `key`.
pub(super) fn map_contains<K, V: Default>(
    fd: RawFd,
    map: &'static str,
    key: &K,
    describe: impl FnOnce() -> String,
) -> Result<bool, BpfError> {
    Ok(map_lookup::<K, V>(fd, map, key, describe)?.is_some())
}

/// The value the map holds for `key`, if any.
pub(super) fn map_lookup<K, V: Default>(
    fd: RawFd,
    map: &'static str,
    key: &K,
    describe: impl FnOnce() -> String,
) -> Result<Option<V>, BpfError> {
    let mut value = V::default();
    // SAFETY: `key` is the map's key size; `value` is writable and of the
    // map's value size.
    let ret = unsafe {
        sys::bpf_map_lookup_elem(fd, (key as *const K).cast(), (&mut value as *mut V).cast())
    };
    match ret {
        0 => Ok(Some(value)),
        r if -r == libc::ENOENT => Ok(None),
        r => Err(BpfError::Map {
            map,
            op: "lookup",
            key: describe(),
            source: neg_errno(r),
        }),
    }
}

/// The programs attached to an interface: (id, mode name, mode flag).
pub(super) fn query_xdp(ifindex: u32) -> io::Result<Vec<(u32, &'static str, u32)>> {
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

/// The ids of the maps a program uses.
pub(super) fn prog_map_ids(fd: RawFd) -> io::Result<Vec<u32>> {
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
pub(super) fn map_keys<const N: usize>(fd: RawFd) -> io::Result<Vec<[u8; N]>> {
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

pub(super) fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(neg_errno(fd));
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// (id, name) of a program.
pub(super) fn prog_info(fd: RawFd) -> io::Result<(u32, String)> {
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
pub(super) fn object_name(name: &[c_char]) -> Vec<u8> {
    name.iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect()
}

/// "NAME (ifindex N)" in the calling thread's namespace, or "ifindex N".
pub(super) fn describe_ifindex(ifindex: u32) -> String {
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
pub(super) fn neg_errno(ret: c_int) -> io::Error {
    io::Error::from_raw_os_error(ret.checked_neg().unwrap_or(libc::EINVAL))
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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

pub(super) fn capture_libbpf_log<T>(f: impl FnOnce() -> T) -> (T, String) {
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

pub(super) fn install_libbpf_logger() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a process-wide callback with the signature
        // libbpf expects; the function lives for the whole program.
        unsafe { sys::libbpf_set_print(Some(libbpf_log)) };
    });
}
