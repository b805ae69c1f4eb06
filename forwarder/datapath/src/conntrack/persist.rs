//! The flow table's file: a shared mapping under `--state-dir` that
//! outlives the process, so a restarted (or upgraded, or crashed) gateway
//! adopts the flows of the one before it and established connections keep
//! their Pods.
//!
//! Layout: a 4 KiB header, then the slab's records exactly as
//! `slab.rs` lays them out in memory. The header is read field by
//! field at named offsets and validated, never trusted:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `CIPGWCT\0` |
//! | 8..12 | layout version ([`LAYOUT_VERSION`]), little endian |
//! | 12..16 | bytes per record |
//! | 16..24 | records (slot 0 included) |
//! | 24..32 | the conntrack clock's zero, CLOCK_MONOTONIC nanoseconds |
//! | 32..48 | the kernel's boot id (a clock from another boot means nothing) |
//! | 48..52 | [`STATE_IN_USE`] while a gateway runs on it, [`STATE_CLEAN`] after a clean stop |
//! | 52..56 | records handed out so far, plus one (the slab's bump counter): adoption reads no record past it |
//! | 56..60 | number of source NAT addresses the records' SNAT indexes refer to (at most 127) |
//! | 60 | address family of the records: 4 (or 0, written by gateways before IPv6) or 6 |
//! | 64..2096 | those addresses, 4 (IPv4) or 16 (IPv6) bytes each in network order |
//! | 2096..2100 | IPv6: number of VIP prefixes the records' VIP indexes refer to (at most 249) |
//! | 2104..4096 | those prefixes (the VIPs' high halves), 8 bytes each, little endian (`slab.rs`, `VipPrefixTable`); appended to while the table is in use |
//!
//! Each family has a file of its own ([`TableLayout`]): `conntrack.table`
//! for IPv4 (unchanged since before IPv6, so an upgrade keeps its flows),
//! `conntrack6.table` for IPv6. IPv6 records were 96 bytes before they
//! held the VIP as a prefix index (64 now): the record size in the header
//! tells the two layouts apart, so an older IPv6 file is set aside while
//! the IPv4 one, unchanged, is still adopted (the version stays 2).
//!
//! A file that does not match (another layout, record count or boot, a
//! short file) is renamed aside with a log line and a fresh one takes its
//! place. Records are validated one by one on adoption
//! ([`super::Conntrack::adopt`]); a crash mid-write leaves at most a record
//! whose sequence is odd, which is discarded.
//!
//! One gateway at a time: the file is locked (`flock`) while mapped.
//!
//! Huge pages: when the directory is a hugetlbfs mount (e.g. `mount -t
//! hugetlbfs -o pagesize=2M none /run/cipgw`, with pages reserved in
//! `/proc/sys/vm/nr_hugepages`), the file is sized in whole huge pages and
//! the table is backed by them: a lookup's two random accesses then cost
//! no page walk (transparent huge pages never materialise for it on these
//! VMs). When too few huge pages are free, opening fails with
//! [`io::ErrorKind::OutOfMemory`] and the caller falls back to normal
//! pages.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What a table file holds: which family's records, of what size, under
/// which name in the state directory ([`crate::conntrack::Conntrack::LAYOUT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    pub file_name: &'static str,
    /// 4 or 6.
    pub family: u8,
    pub record_bytes: usize,
}
/// Bump whenever the record layout, the state bits or this header change.
pub const LAYOUT_VERSION: u32 = 2;
/// Bytes before the first record (one page).
pub const HEADER_BYTES: usize = 4096;

const MAGIC: [u8; 8] = *b"CIPGWCT\0";
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_RECORD_BYTES: usize = 12;
const OFF_RECORDS: usize = 16;
const OFF_EPOCH: usize = 24;
const OFF_BOOT_ID: usize = 32;
const OFF_STATE: usize = 48;
const OFF_NEVER_USED: usize = 52;
const OFF_SNAT_COUNT: usize = 56;
const OFF_FAMILY: usize = 60;
const OFF_SNAT_ADDRESSES: usize = 64;
const OFF_VIP_PREFIXES: usize = 2096;
/// SNAT addresses the header has room for (the records' 7-bit index).
const SNAT_HEADER_MAX: usize = 127;

/// A gateway runs on the table (or crashed while it did).
pub const STATE_IN_USE: u32 = 1;
/// The last gateway stopped cleanly: every record was at rest.
pub const STATE_CLEAN: u32 = 2;

/// `statfs` magic of hugetlbfs (linux/magic.h).
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// How long a starting gateway waits for the previous one to let go of
/// the file (a graceful stop takes a few seconds at most).
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What the file held when it was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// No table file: a fresh one was made.
    Fresh,
    /// A compatible table; `clean` when its gateway stopped cleanly.
    Compatible { clean: bool },
    /// An incompatible or corrupt table, renamed to `aside` (removed on
    /// huge pages, which it would hold for ever).
    SetAside {
        aside: Option<PathBuf>,
        reason: String,
    },
}

/// An open, locked and mapped table file.
#[derive(Debug)]
pub struct TableFile {
    path: PathBuf,
    /// Holds the `flock` for as long as the mapping lives.
    _file: File,
    map: NonNull<u8>,
    len: usize,
    records: usize,
    previous: Previous,
    /// The huge page size backing the table, if it is on hugetlbfs.
    huge_page: Option<usize>,
    /// The source NAT addresses the adopted records refer to.
    previous_snat: Vec<IpAddr>,
    /// 4 or 6: the records' (and SNAT addresses') family.
    family: u8,
}

// SAFETY: the mapping is plain shared memory owned by this value; every
// access to it goes through atomics (the records, the state word, the
// VIP prefixes) or happens before the table is shared (the rest of the
// header, on open).
unsafe impl Send for TableFile {}
// SAFETY: as above.
unsafe impl Sync for TableFile {}

impl TableFile {
    /// Opens (or creates) `dir/<layout.file_name>` for `records` records of
    /// `layout.record_bytes` each, taking it over from a previous gateway when it
    /// is compatible. `epoch_ns` is the clock zero a fresh table gets.
    pub fn open(
        dir: &Path,
        records: usize,
        layout: TableLayout,
        epoch_ns: u64,
    ) -> io::Result<TableFile> {
        Self::open_with(dir, records, layout, epoch_ns, false)
    }

    /// [`TableFile::open`] for a table beside another one whose clock it
    /// shares (the IPv6 table beside the IPv4 one): a previous table is
    /// taken over only if its clock's zero is `epoch_ns` too (both were
    /// written by one gateway), else set aside, so that one `now` holds
    /// for both.
    pub fn open_beside(
        dir: &Path,
        records: usize,
        layout: TableLayout,
        epoch_ns: u64,
    ) -> io::Result<TableFile> {
        Self::open_with(dir, records, layout, epoch_ns, true)
    }

    fn open_with(
        dir: &Path,
        records: usize,
        layout: TableLayout,
        epoch_ns: u64,
        same_epoch: bool,
    ) -> io::Result<TableFile> {
        let record_bytes = layout.record_bytes;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(layout.file_name);
        let huge_page = huge_page_size(dir)?;
        let len = (HEADER_BYTES + records * record_bytes).next_multiple_of(huge_page.unwrap_or(1));
        let boot_id = boot_id()?;
        let mut file = open_locked(&path)?;
        let size = file.metadata()?.len();
        let mut previous = Previous::Fresh;
        if size > 0 {
            let checked = check_header(&file, size, len, records, layout, &boot_id).and_then(
                |clean| match (same_epoch, header_epoch(&file)) {
                    (true, Ok(epoch)) if epoch != epoch_ns => Err(format!(
                        "its clock starts at {epoch} ns, the table beside it at {epoch_ns} ns"
                    )),
                    (true, Err(e)) => Err(e),
                    _ => Ok(clean),
                },
            );
            match checked {
                Ok(clean) => previous = Previous::Compatible { clean },
                Err(reason) => {
                    let aside = if huge_page.is_some() {
                        std::fs::remove_file(&path)?;
                        None
                    } else {
                        let aside = aside_path(&path);
                        std::fs::rename(&path, &aside)?;
                        Some(aside)
                    };
                    previous = Previous::SetAside { aside, reason };
                    file = open_locked(&path)?;
                }
            }
        }
        if !matches!(previous, Previous::Compatible { .. }) {
            // Sparse until the gateway populates it (`populate`).
            file.set_len(len as u64)?;
        }
        // SAFETY: a fresh shared mapping of `len` bytes of a file we just
        // sized to at least `len`; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            return Err(match (huge_page, error.raw_os_error()) {
                (Some(page), Some(libc::ENOMEM)) => io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "{} needs {} huge pages of {} KiB; fewer are free \
                         (reserve them in /proc/sys/vm/nr_hugepages)",
                        path.display(),
                        len / page,
                        page >> 10
                    ),
                ),
                _ => error,
            });
        }
        let map =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        let mut table = TableFile {
            path,
            _file: file,
            map,
            len,
            records,
            previous,
            huge_page,
            previous_snat: Vec::new(),
            family: layout.family,
        };
        if matches!(table.previous, Previous::Compatible { .. }) {
            table.previous_snat = table.snat_addresses();
        } else {
            table.write_header(records, layout, epoch_ns, &boot_id);
        }
        table.set_state(STATE_IN_USE);
        Ok(table)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn previous(&self) -> &Previous {
        &self.previous
    }

    /// The huge page size backing the table, when it is on hugetlbfs.
    pub fn huge_page_size(&self) -> Option<usize> {
        self.huge_page
    }

    /// The conntrack clock's zero (CLOCK_MONOTONIC, ns): a fresh table's
    /// own, or the adopted table's, so its flows' times stay right.
    pub fn epoch_ns(&self) -> u64 {
        u64::from_le_bytes(self.header_bytes(OFF_EPOCH))
    }

    /// The records' memory: `records` records right after the header,
    /// page aligned.
    pub(super) fn records_ptr(&self) -> (NonNull<u8>, usize) {
        // SAFETY: HEADER_BYTES < len: the header lies inside the mapping.
        let ptr = unsafe { self.map.add(HEADER_BYTES) };
        (ptr, self.records)
    }

    /// Backs and maps every page of the file now, header included,
    /// contents unchanged ([`super::Conntrack::populate`]): pages a
    /// previous gateway wrote are only mapped; the rest are allocated in
    /// the file, so that a full tmpfs fails the start instead of a later
    /// record write (SIGBUS).
    pub(super) fn populate(&self) -> io::Result<()> {
        // SAFETY: the whole shared writable mapping made in `open`,
        // page aligned (the kernel picked it), which lives as long as self.
        unsafe { super::populate_pages(self.map.as_ptr(), self.len) }
    }

    /// Marks the table as left cleanly (every record at rest).
    pub fn mark_clean(&self) {
        self.set_state(STATE_CLEAN);
    }

    /// Hands the table to the next gateway while this process lives on:
    /// marks it clean and lets go of the lock, so that the next gateway's
    /// [`TableFile::open`] returns at once. The caller must not write to
    /// the table after this (its workers and control loop have stopped);
    /// the mapping itself stays valid until drop.
    pub fn hand_over(&self) -> io::Result<()> {
        self.mark_clean();
        // SAFETY: flock on the file descriptor this value owns.
        if unsafe { libc::flock(self._file.as_raw_fd(), libc::LOCK_UN) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The slab's count of records handed out (plus one), kept here so
    /// that it outlives the process. A fresh table's is 0, read as 1.
    pub(super) fn never_used(&self) -> &AtomicU32 {
        // SAFETY: OFF_NEVER_USED is 4-byte aligned inside the mapping,
        // which lives as long as self; any u32 is a valid value.
        unsafe { &*self.map.as_ptr().add(OFF_NEVER_USED).cast::<AtomicU32>() }
    }

    /// The table of VIP prefixes the records' indexes refer to (see
    /// [`super::slab::VipPrefixTable`]), in the header.
    pub(super) fn vip_prefixes_ptr(&self) -> NonNull<super::slab::VipPrefixTable> {
        const _: () = assert!(
            OFF_VIP_PREFIXES + super::slab::VIP_PREFIX_TABLE_BYTES == HEADER_BYTES
                && OFF_SNAT_ADDRESSES + 16 * SNAT_HEADER_MAX <= OFF_VIP_PREFIXES
        );
        // SAFETY: OFF_VIP_PREFIXES + the table's bytes end at the header's
        // end, inside the mapping; the offset is 8-byte aligned in the
        // page-aligned mapping.
        unsafe { self.map.add(OFF_VIP_PREFIXES).cast() }
    }

    /// The source NAT addresses the records a previous gateway left
    /// refer to (index 1 is the first).
    pub fn previous_snat_addresses(&self) -> &[IpAddr] {
        &self.previous_snat
    }

    /// Bytes of one address of the file's family.
    fn address_bytes(&self) -> usize {
        if self.family == 6 {
            16
        } else {
            4
        }
    }

    /// The source NAT addresses the header holds now.
    pub fn snat_addresses(&self) -> Vec<IpAddr> {
        let count = u32::from_le_bytes(self.header_bytes(OFF_SNAT_COUNT)) as usize;
        let bytes = self.address_bytes();
        (0..count.min(SNAT_HEADER_MAX))
            .map(|i| {
                let raw = self.header_bytes::<16>(OFF_SNAT_ADDRESSES + bytes * i);
                if bytes == 16 {
                    IpAddr::from(raw)
                } else {
                    IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
                }
            })
            .collect()
    }

    /// Records the source NAT addresses this gateway's records refer to
    /// (at most 127; more are cut; of the file's family, others are
    /// skipped). Only before the table is shared.
    pub fn set_snat_addresses(&self, addresses: &[IpAddr]) {
        let width = self.address_bytes();
        let addresses: Vec<[u8; 16]> = addresses
            .iter()
            .filter_map(|a| match (a, width) {
                (IpAddr::V4(v4), 4) => {
                    let mut raw = [0u8; 16];
                    raw[..4].copy_from_slice(&v4.octets());
                    Some(raw)
                }
                (IpAddr::V6(v6), 16) => Some(v6.octets()),
                _ => None,
            })
            .take(SNAT_HEADER_MAX)
            .collect();
        let mut bytes = [0u8; 8 + 16 * SNAT_HEADER_MAX];
        bytes[..4].copy_from_slice(&(addresses.len() as u32).to_le_bytes());
        bytes[OFF_FAMILY - OFF_SNAT_COUNT] = self.family;
        for (i, a) in addresses.iter().enumerate() {
            bytes[8 + width * i..8 + width * (i + 1)].copy_from_slice(&a[..width]);
        }
        let len = 8 + width * SNAT_HEADER_MAX;
        let bytes = &bytes[..len];
        // SAFETY: bytes OFF_SNAT_COUNT..OFF_SNAT_COUNT + len (at most
        // 56 + 2040) lie inside the 4 KiB header, inside the mapping;
        // written before the table is shared. The family byte at 60 is
        // this file's, as written with the header.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_ptr().add(OFF_SNAT_COUNT),
                bytes.len(),
            );
        }
    }

    fn state_word(&self) -> &AtomicU32 {
        // SAFETY: OFF_STATE is 4-byte aligned inside the page-aligned
        // mapping, which lives as long as self; any u32 is a valid value.
        unsafe { &*self.map.as_ptr().add(OFF_STATE).cast::<AtomicU32>() }
    }

    fn set_state(&self, state: u32) {
        // Release: a later gateway that reads CLEAN also sees the records
        // as they were left (same machine; the file is shared memory).
        self.state_word().store(state, Ordering::Release);
    }

    fn header_bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        // SAFETY: offset + N lies inside the header, inside the mapping;
        // the header is only written before the table is shared.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(offset), out.as_mut_ptr(), N);
        }
        out
    }

    fn write_header(&self, records: usize, layout: TableLayout, epoch_ns: u64, boot_id: &[u8; 16]) {
        let record_bytes = layout.record_bytes;
        let mut header = [0u8; 61];
        header[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
        header[OFF_NEVER_USED..OFF_NEVER_USED + 4].copy_from_slice(&1u32.to_le_bytes());
        header[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
        header[OFF_RECORD_BYTES..OFF_RECORD_BYTES + 4]
            .copy_from_slice(&(record_bytes as u32).to_le_bytes());
        header[OFF_RECORDS..OFF_RECORDS + 8].copy_from_slice(&(records as u64).to_le_bytes());
        header[OFF_EPOCH..OFF_EPOCH + 8].copy_from_slice(&epoch_ns.to_le_bytes());
        header[OFF_BOOT_ID..OFF_BOOT_ID + 16].copy_from_slice(boot_id);
        header[OFF_FAMILY] = layout.family;
        // SAFETY: 61 bytes at the start of the mapping, before the table
        // is shared with any other thread.
        unsafe {
            std::ptr::copy_nonoverlapping(header.as_ptr(), self.map.as_ptr(), header.len());
        }
    }
}

impl Drop for TableFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; nothing
        // refers into it any more (the slab holds an Arc of self).
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.len);
        }
    }
}

/// The current CLOCK_MONOTONIC time in nanoseconds (the clock `Instant`
/// reads on Linux, shared by every process of this boot).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `Instant` at which CLOCK_MONOTONIC read `epoch_ns`; now when that
/// is in the future (which a validated table never gives).
pub fn instant_of(epoch_ns: u64) -> Instant {
    let now = Instant::now();
    let ago = Duration::from_nanos(monotonic_ns().saturating_sub(epoch_ns));
    now.checked_sub(ago).unwrap_or(now)
}

/// The huge page size of the filesystem holding `dir`, if it is a
/// hugetlbfs.
fn huge_page_size(dir: &Path) -> io::Result<Option<usize>> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: all-zero bytes are a valid statfs (plain integers).
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
    let huge = st.f_type as i64 == HUGETLBFS_MAGIC;
    Ok(huge.then_some(st.f_bsize as usize))
}

fn open_locked(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(error);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "{} is still locked by another gateway after {LOCK_WAIT:?}",
                path.display()
            )));
        }
        // Short: a gateway handing over lets go within milliseconds and
        // every one of them is a gap in forwarding.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Checks a table file's header; `Ok(clean)` when it can be adopted,
/// else why not.
/// The clock zero in a table file's header.
fn header_epoch(file: &File) -> Result<u64, String> {
    use std::os::unix::fs::FileExt;
    let mut epoch = [0u8; 8];
    file.read_exact_at(&mut epoch, OFF_EPOCH as u64)
        .map_err(|e| format!("unreadable header: {e}"))?;
    Ok(u64::from_le_bytes(epoch))
}

fn check_header(
    file: &File,
    size: u64,
    len: usize,
    records: usize,
    layout: TableLayout,
    boot_id: &[u8; 16],
) -> Result<bool, String> {
    use std::os::unix::fs::FileExt;
    let record_bytes = layout.record_bytes;
    let mut header = [0u8; 61];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| format!("unreadable header: {e}"))?;
    let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
    if header[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
        return Err("not a cipgw connection table (bad magic)".into());
    }
    let version = u32_at(OFF_VERSION);
    if version != LAYOUT_VERSION {
        return Err(format!(
            "layout version {version}, this gateway reads {LAYOUT_VERSION}"
        ));
    }
    let family = match header[OFF_FAMILY] {
        0 => 4,
        other => other,
    };
    if family != layout.family {
        return Err(format!(
            "holds IPv{family} flows, this file is for IPv{}",
            layout.family
        ));
    }
    if u32_at(OFF_RECORD_BYTES) as usize != record_bytes {
        return Err(format!(
            "{} bytes per record, this gateway uses {record_bytes}",
            u32_at(OFF_RECORD_BYTES)
        ));
    }
    if u64_at(OFF_RECORDS) != records as u64 {
        return Err(format!(
            "sized for {} records, this gateway wants {records} (--conntrack-max changed)",
            u64_at(OFF_RECORDS)
        ));
    }
    if size < len as u64 {
        return Err(format!("truncated: {size} bytes of {len}"));
    }
    if header[OFF_BOOT_ID..OFF_BOOT_ID + 16] != boot_id[..] {
        return Err("written before the machine last booted".into());
    }
    if u64_at(OFF_EPOCH) > monotonic_ns() {
        return Err("its clock lies in the future".into());
    }
    let mut vip_count = [0u8; 4];
    file.read_exact_at(&mut vip_count, OFF_VIP_PREFIXES as u64)
        .map_err(|e| format!("unreadable header: {e}"))?;
    let vip_count = u32::from_le_bytes(vip_count);
    if vip_count as usize > super::slab::VIP_PREFIXES_MAX {
        return Err(format!(
            "{vip_count} VIP prefixes, at most {} fit",
            super::slab::VIP_PREFIXES_MAX
        ));
    }
    match u32_at(OFF_STATE) {
        STATE_CLEAN => Ok(true),
        STATE_IN_USE => Ok(false),
        other => Err(format!("unknown state {other}")),
    }
}

/// `conntrack.table.aside-<unix seconds>`: kept for a post-mortem, never
/// read again.
fn aside_path(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".aside-{secs}"));
    PathBuf::from(name)
}

/// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), as 16 bytes.
fn boot_id() -> io::Result<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let hex: Vec<u8> = text.trim().bytes().filter(u8::is_ascii_hexdigit).collect();
    let mut id = [0u8; 16];
    for (i, pair) in hex.chunks(2).take(16).enumerate() {
        let digits = std::str::from_utf8(pair).unwrap_or("0");
        id[i] = u8::from_str_radix(digits, 16).unwrap_or(0);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: TableLayout = TableLayout {
        file_name: "conntrack.table",
        family: 4,
        record_bytes: 32,
    };
    const V6: TableLayout = TableLayout {
        file_name: "conntrack6.table",
        family: 6,
        record_bytes: 64,
    };

    #[test]
    fn each_family_has_its_file_and_its_snat_addresses() {
        let dir = dir("families");
        let v4 = TableFile::open(&dir, 16, V4, monotonic_ns()).expect("v4");
        let v6 = TableFile::open(&dir, 16, V6, monotonic_ns()).expect("v6 beside it");
        let a4: IpAddr = "198.18.0.1".parse().expect("literal");
        let a6: IpAddr = "2001:2::1".parse().expect("literal");
        v4.set_snat_addresses(&[a4, a6]);
        v6.set_snat_addresses(&[a4, a6]);
        assert_eq!(v4.snat_addresses(), vec![a4], "only the file's family");
        assert_eq!(v6.snat_addresses(), vec![a6]);
        drop((v4, v6));
        let v6 = TableFile::open(&dir, 16, V6, monotonic_ns()).expect("v6 again");
        assert_eq!(v6.previous(), &Previous::Compatible { clean: false });
        assert_eq!(v6.previous_snat_addresses(), &[a6]);
        drop(v6);
        // An IPv6 table where IPv4 is expected: set aside, not adopted.
        std::fs::rename(dir.join(V6.file_name), dir.join(V4.file_name)).expect("rename");
        let v4 = TableFile::open(
            &dir,
            16,
            TableLayout {
                record_bytes: V6.record_bytes,
                ..V4
            },
            monotonic_ns(),
        )
        .expect("fresh v4");
        match v4.previous() {
            Previous::SetAside { reason, .. } => assert!(reason.contains("IPv6"), "{reason}"),
            other => panic!("an IPv6 table must not be adopted as IPv4: {other:?}"),
        }
        drop(v4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_table_beside_another_is_adopted_only_with_the_same_clock() {
        let dir = dir("beside");
        let epoch = monotonic_ns() - 5_000_000_000;
        let v6 = TableFile::open_beside(&dir, 16, V6, epoch).expect("fresh");
        assert_eq!(v6.epoch_ns(), epoch);
        drop(v6);
        let v6 = TableFile::open_beside(&dir, 16, V6, epoch).expect("same clock");
        assert_eq!(v6.previous(), &Previous::Compatible { clean: false });
        drop(v6);
        let other = epoch + 1_000_000_000;
        let v6 = TableFile::open_beside(&dir, 16, V6, other).expect("another clock");
        match v6.previous() {
            Previous::SetAside { reason, .. } => assert!(reason.contains("clock"), "{reason}"),
            other => panic!("a table on another clock must not be adopted: {other:?}"),
        }
        assert_eq!(
            v6.epoch_ns(),
            other,
            "the fresh table takes the clock beside it"
        );
        drop(v6);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cipgw-persist-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_fresh_table_is_adopted_by_the_next_opener_with_its_clock() {
        let dir = dir("adopt");
        let epoch = monotonic_ns() - 5_000_000_000;
        let first = TableFile::open(&dir, 16, V4, epoch).expect("fresh");
        assert_eq!(first.previous(), &Previous::Fresh);
        assert_eq!(first.epoch_ns(), epoch);
        drop(first);
        let second = TableFile::open(&dir, 16, V4, monotonic_ns()).expect("adopt");
        assert_eq!(second.previous(), &Previous::Compatible { clean: false });
        assert_eq!(second.epoch_ns(), epoch, "the adopted clock");
        second.mark_clean();
        drop(second);
        let third = TableFile::open(&dir, 16, V4, monotonic_ns()).expect("adopt");
        assert_eq!(third.previous(), &Previous::Compatible { clean: true });
        drop(third);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_incompatible_table_is_set_aside() {
        let dir = dir("aside");
        drop(TableFile::open(&dir, 16, V4, monotonic_ns()).expect("fresh"));
        // Another layout version.
        let path = dir.join(V4.file_name);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[OFF_VERSION] = 99;
        std::fs::write(&path, &bytes).expect("write");
        let table = TableFile::open(&dir, 16, V4, monotonic_ns()).expect("fresh again");
        match table.previous() {
            Previous::SetAside { aside, reason } => {
                assert!(reason.contains("layout version 99"), "{reason}");
                assert!(aside.as_ref().is_some_and(|a| a.exists()));
            }
            other => panic!("expected the table set aside, got {other:?}"),
        }
        drop(table);
        // More VIP prefixes than the header holds.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[OFF_VIP_PREFIXES..OFF_VIP_PREFIXES + 4].copy_from_slice(&250u32.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        let table = TableFile::open(&dir, 16, V4, monotonic_ns()).expect("fresh again");
        assert!(
            matches!(table.previous(), Previous::SetAside { reason, .. } if reason.contains("250 VIP prefixes")),
            "{:?}",
            table.previous()
        );
        drop(table);
        // Another size.
        let table = TableFile::open(&dir, 32, V4, monotonic_ns()).expect("resized");
        assert!(
            matches!(table.previous(), Previous::SetAside { reason, .. } if reason.contains("--conntrack-max")),
            "{:?}",
            table.previous()
        );
        drop(table);
        // Garbage.
        std::fs::write(dir.join(V4.file_name), b"not a table").expect("write");
        let table = TableFile::open(&dir, 32, V4, monotonic_ns()).expect("fresh");
        assert!(matches!(table.previous(), Previous::SetAside { .. }));
        drop(table);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_gateway_at_a_time() {
        let dir = dir("lock");
        let first = TableFile::open(&dir, 16, V4, monotonic_ns()).expect("fresh");
        let waiter = std::thread::spawn({
            let dir = dir.clone();
            move || TableFile::open(&dir, 16, V4, monotonic_ns()).map(|t| t.previous().clone())
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "waits while the first holds the file"
        );
        drop(first);
        let previous = waiter
            .join()
            .expect("no panic")
            .expect("opened once released");
        assert_eq!(previous, Previous::Compatible { clean: false });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_table_handed_over_opens_clean_while_its_first_holder_lives() {
        let dir = dir("handover");
        let first = TableFile::open(&dir, 16, V4, monotonic_ns()).expect("fresh");
        let epoch = first.epoch_ns();
        first.hand_over().expect("unlock");
        let second = TableFile::open(&dir, 16, V4, monotonic_ns()).expect("opens at once");
        assert_eq!(second.previous(), &Previous::Compatible { clean: true });
        assert_eq!(second.epoch_ns(), epoch, "the clock goes on");
        drop(first);
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
