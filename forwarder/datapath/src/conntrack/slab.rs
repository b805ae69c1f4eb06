//! The flow records: one record per flow, holding both directions
//! (client, VIP, backend, ports, protocol, counter slot, source NAT
//! address and port, state, last seen), in a slab allocated once at start
//! and addressed by a `u32` index. Each address family has its own layout
//! ([`RecordLayout`]): an IPv4 record is 32 bytes (two per cache line, a
//! lookup touches one), an IPv6 record 64 bytes, one line (the client and
//! backend addresses whole, the VIP's low half and an index into the
//! table's VIP prefixes ([`VipPrefixTable`]), and the same ports, target
//! and life words). A lookup compares its key against a record's words
//! as they are stored ([`RecordLayout::holds`]) and decodes only the
//! record that matches.
//!
//! Readers never lock. A record is a sequence lock in the style of the
//! kernel's seqcount: its `life` word carries a sequence number that is
//! even while the record holds a live flow and odd while it is free or
//! being written. A reader loads `life`, the data words, and `life`
//! again; it believes the data only if the sequence did not change. The
//! flow's state and last-seen time live in the same word as the sequence,
//! so a state change is one compare-and-swap that fails when the flow was
//! removed meanwhile.
//!
//! Free records form a lock-free stack (Treiber) threaded through their
//! first word, with a tag against ABA; records never used yet are handed
//! out by a bump counter, so the slab's pages are only touched as flows
//! arrive. An inserting worker takes never-used records a block at a
//! time ([`FreshRecords`]): a table filling up then pays the counter's
//! locked instruction once per block, not once per flow.

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cipgw_config::Protocol;

use super::persist::TableFile;
use super::{Direction, FlowKey};

/// A record index; 0 is never used, so a slot word of 0 can mean empty.
pub(super) type RecordId = u32;

/// The flow a record holds, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowData<A> {
    pub client: A,
    pub client_port: u16,
    pub vip: A,
    pub vip_port: u16,
    pub backend: A,
    pub backend_port: u16,
    pub protocol: Protocol,
    /// The (Service port, endpoint)'s counter slot; slots from [`MAX_SLOT`] up are
    /// stored as [`super::NO_SLOT`].
    pub slot: u32,
    /// Source NAT: 0 without, else 1 + the index of the SNAT address in
    /// the table's list (below [`SNAT_ADDRESSES_MAX`] + 1).
    pub snat_index: u8,
    /// Source NAT: the gateway port the backend sees (0 without).
    pub snat_port: u16,
}

/// SNAT addresses a table can tell apart (7 bits of the record).
pub(crate) const SNAT_ADDRESSES_MAX: usize = 127;
/// Counter slots a record can hold (24 bits; the all-ones value is
/// [`super::NO_SLOT`]).
pub(crate) const MAX_SLOT: u32 = 0xff_ffff;

/// How a family's flows are laid out in a record's data words. Sealed
/// (see [`crate::family`]): implemented for [`Ipv4Addr`] and
/// [`Ipv6Addr`] only.
///
/// Both layouts end with the same `target` word: backend port (bits
/// 48..64), SNAT port (32..48, 0 without), protocol (bit 31: 0 TCP, 1
/// UDP), SNAT address index (24..31, 0 without), counter slot (0..24, all
/// ones for none). The first word doubles as the free list's link while
/// the record is free.
pub trait RecordLayout: Copy + Eq + Debug + Sized + 'static {
    /// The data words, as loaded.
    type Words: Copy + Eq + Debug + Default + AsRef<[u64]> + AsMut<[u64]>;
    /// The data words in the record.
    type AtomicWords: Default + Debug + Send + Sync + AsRef<[AtomicU64]>;

    /// The part of the VIP the record holds as an index into the table's
    /// VIP prefixes: an IPv6 VIP's high half; `None` for IPv4, whose
    /// record holds the VIP whole.
    fn vip_prefix(flow: &FlowData<Self>) -> Option<u64>;
    /// The data words of `flow`, its VIP prefix (if any) at `vip_index`.
    fn encode(flow: &FlowData<Self>, vip_index: u8) -> Self::Words;
    /// The flow of `words`, its VIP prefix (if any) read from `vips`.
    fn decode(words: &Self::Words, vips: &VipPrefixTable) -> FlowData<Self>;
    /// Whether `words` hold a flow whose `direction` key is `key`, its
    /// SNAT index naming the address `snat_address` gives for it and
    /// its VIP prefix read from `vips`: the same answer as decoding
    /// them and comparing the flow's key, from only the fields that key
    /// is made of, compared as stored.
    fn holds(
        words: &Self::Words,
        direction: Direction,
        key: &FlowKey<Self>,
        snat_address: impl Fn(u8) -> Self,
        vips: &VipPrefixTable,
    ) -> bool;
}

/// The target word's protocol bit.
#[inline]
fn protocol_bit(protocol: Protocol) -> u64 {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

#[inline]
fn encode_target<A>(d: &FlowData<A>) -> u64 {
    (u64::from(d.backend_port) << 48)
        | (u64::from(d.snat_port) << 32)
        | (protocol_bit(d.protocol) << 31)
        | (u64::from(d.snat_index & 0x7f) << 24)
        | u64::from(d.slot.min(MAX_SLOT))
}

/// The target word's fields: backend port, protocol, slot, SNAT index,
/// SNAT port.
#[inline]
fn decode_target(target: u64) -> (u16, Protocol, u32, u8, u16) {
    (
        (target >> 48) as u16,
        if (target >> 31) & 1 == 0 {
            Protocol::Tcp
        } else {
            Protocol::Udp
        },
        match target as u32 & MAX_SLOT {
            MAX_SLOT => super::NO_SLOT,
            slot => slot,
        },
        ((target >> 24) & 0x7f) as u8,
        (target >> 32) as u16,
    )
}

/// IPv4: client address (bits 32..64 of word 0), client port (16..32),
/// VIP port (0..16); VIP (32..64 of word 1), backend address (0..32);
/// the target word. 32 bytes with the life word.
impl RecordLayout for Ipv4Addr {
    type Words = [u64; 3];
    type AtomicWords = [AtomicU64; 3];

    #[inline]
    fn vip_prefix(_: &FlowData<Self>) -> Option<u64> {
        None
    }

    #[inline]
    fn encode(d: &FlowData<Self>, _: u8) -> [u64; 3] {
        [
            (u64::from(u32::from(d.client)) << 32)
                | (u64::from(d.client_port) << 16)
                | u64::from(d.vip_port),
            (u64::from(u32::from(d.vip)) << 32) | u64::from(u32::from(d.backend)),
            encode_target(d),
        ]
    }

    #[inline]
    fn decode(&[client, addrs, target]: &[u64; 3], _: &VipPrefixTable) -> FlowData<Self> {
        let (backend_port, protocol, slot, snat_index, snat_port) = decode_target(target);
        FlowData {
            client: Ipv4Addr::from((client >> 32) as u32),
            client_port: (client >> 16) as u16,
            vip_port: client as u16,
            vip: Ipv4Addr::from((addrs >> 32) as u32),
            backend: Ipv4Addr::from(addrs as u32),
            backend_port,
            protocol,
            slot,
            snat_index,
            snat_port,
        }
    }

    #[inline]
    fn holds(
        &[client, addrs, target]: &[u64; 3],
        direction: Direction,
        key: &FlowKey<Self>,
        snat_address: impl Fn(u8) -> Self,
        _: &VipPrefixTable,
    ) -> bool {
        let protocol = (target >> 31) & 1 == protocol_bit(key.protocol);
        let (src, dst) = (u64::from(u32::from(key.src)), u64::from(u32::from(key.dst)));
        match direction {
            Direction::Forward => {
                client == (src << 32) | (u64::from(key.src_port) << 16) | u64::from(key.dst_port)
                    && addrs >> 32 == dst
                    && protocol
            }
            Direction::Reply => {
                let (backend_port, _, _, snat_index, snat_port) = decode_target(target);
                addrs as u32 as u64 == src
                    && backend_port == key.src_port
                    && protocol
                    && if snat_index == 0 {
                        client >> 16 == (dst << 16) | u64::from(key.dst_port)
                    } else {
                        snat_port == key.dst_port && snat_address(snat_index) == key.dst
                    }
            }
        }
    }
}

/// An IPv6 address as a record holds it: two words, high half first.
#[inline]
fn halves(addr: Ipv6Addr) -> [u64; 2] {
    let bits = u128::from(addr);
    [(bits >> 64) as u64, bits as u64]
}

/// IPv6: the client address, two words (high half first); the VIP's low
/// half; the backend address, two words; the VIP's prefix index (bits
/// 32..40 of word 5: its high half is the table's VIP prefix of that
/// index), client port (16..32) and VIP port (0..16); the target word. 64
/// bytes with the life word: one cache line (72 bytes with the VIP whole,
/// 96 in the slab, and every record across two lines; benches/RESULTS.md,
/// session 28).
impl RecordLayout for Ipv6Addr {
    type Words = [u64; 7];
    type AtomicWords = [AtomicU64; 7];

    #[inline]
    fn vip_prefix(d: &FlowData<Self>) -> Option<u64> {
        Some((u128::from(d.vip) >> 64) as u64)
    }

    #[inline]
    fn encode(d: &FlowData<Self>, vip_index: u8) -> [u64; 7] {
        let [c0, c1] = halves(d.client);
        let [b0, b1] = halves(d.backend);
        [
            c0,
            c1,
            u128::from(d.vip) as u64,
            b0,
            b1,
            (u64::from(vip_index) << 32) | (u64::from(d.client_port) << 16) | u64::from(d.vip_port),
            encode_target(d),
        ]
    }

    #[inline]
    fn decode(w: &[u64; 7], vips: &VipPrefixTable) -> FlowData<Self> {
        let addr = |hi: u64, lo: u64| Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
        let (backend_port, protocol, slot, snat_index, snat_port) = decode_target(w[6]);
        FlowData {
            client: addr(w[0], w[1]),
            client_port: (w[5] >> 16) as u16,
            vip: addr(vips.prefix((w[5] >> 32) as u8), w[2]),
            vip_port: w[5] as u16,
            backend: addr(w[3], w[4]),
            backend_port,
            protocol,
            slot,
            snat_index,
            snat_port,
        }
    }

    #[inline]
    fn holds(
        w: &[u64; 7],
        direction: Direction,
        key: &FlowKey<Self>,
        snat_address: impl Fn(u8) -> Self,
        vips: &VipPrefixTable,
    ) -> bool {
        let protocol = (w[6] >> 31) & 1 == protocol_bit(key.protocol);
        match direction {
            Direction::Forward => {
                let [vip_high, vip_low] = halves(key.dst);
                halves(key.src) == [w[0], w[1]]
                    && w[2] == vip_low
                    && w[5] as u32 == (u32::from(key.src_port) << 16) | u32::from(key.dst_port)
                    && protocol
                    && vips.prefix((w[5] >> 32) as u8) == vip_high
            }
            Direction::Reply => {
                let (backend_port, _, _, snat_index, snat_port) = decode_target(w[6]);
                halves(key.src) == [w[3], w[4]]
                    && backend_port == key.src_port
                    && protocol
                    && if snat_index == 0 {
                        halves(key.dst) == [w[0], w[1]] && (w[5] >> 16) as u16 == key.dst_port
                    } else {
                        snat_port == key.dst_port && snat_address(snat_index) == key.dst
                    }
            }
        }
    }
}

/// VIP prefixes an IPv6 table can hold: as many as fill its file's
/// header after the SNAT addresses ([`super::persist`]).
pub(crate) const VIP_PREFIXES_MAX: usize = 249;

/// The high halves of the IPv6 VIPs a table's records hold, by index.
/// A VIP is a Service's ClusterIP, so all of one Service CIDR share a
/// high half when the CIDR is a /64 or narrower, as clusters' are
/// (kube-apiserver's `--service-cluster-ip-range` takes at most a /108
/// for IPv6, and the ServiceCIDR API's examples are /64s): a cluster has
/// one or a few. A wider CIDR takes an entry per /64 its VIPs use.
/// A record keeps an 8-bit index instead of those 64 bits, which brings
/// an IPv6 record to one cache line.
///
/// Entries are appended and never changed or removed while the table
/// lives (its file included), so an index in a record always means the
/// same prefix. An insert finds its VIP's prefix among the first entries
/// (one, mostly) without a lock; a prefix not seen before is appended
/// under [`VipPrefixes`]'s lock, once in the table's life. When all
/// [`VIP_PREFIXES_MAX`] entries are taken, a new flow to a VIP of yet
/// another prefix is refused ([`super::InsertError::VipPrefixesFull`]).
///
/// The layout is shared memory (the table file's header, bytes
/// 2096..4096): a count, 4 bytes of padding, then the prefixes.
#[repr(C)]
#[derive(Debug)]
pub struct VipPrefixTable {
    count: AtomicU32,
    _padding: u32,
    prefixes: [AtomicU64; VIP_PREFIXES_MAX],
}

/// Bytes of a [`VipPrefixTable`], as the table file lays it out.
pub(crate) const VIP_PREFIX_TABLE_BYTES: usize = 8 + 8 * VIP_PREFIXES_MAX;
const _: () = assert!(std::mem::size_of::<VipPrefixTable>() == VIP_PREFIX_TABLE_BYTES);

impl VipPrefixTable {
    fn new() -> Self {
        VipPrefixTable {
            count: AtomicU32::new(0),
            _padding: 0,
            prefixes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The prefix at `index`; 0 for an index past the table (a record's
    /// that is torn, which its sequence check rejects, or corrupt, which
    /// adoption rejects: it does not encode back).
    #[inline(always)]
    pub fn prefix(&self, index: u8) -> u64 {
        // Relaxed: a record's index was published (the record's Release)
        // after its inserter saw the entry (it appended it, or loaded the
        // count with Acquire), so whoever reads the record sees the entry.
        self.prefixes
            .get(usize::from(index))
            .map_or(0, |p| p.load(Ordering::Relaxed))
    }

    /// Entries in use.
    #[inline]
    pub fn len(&self) -> usize {
        // Acquire: pairs with the Release in `VipPrefixes::append`, so
        // the entries below the count are seen written.
        (self.count.load(Ordering::Acquire) as usize).min(VIP_PREFIXES_MAX)
    }

    /// The index of `prefix`, if the table holds it.
    #[inline]
    pub fn index_of(&self, prefix: u64) -> Option<u8> {
        let count = self.len();
        let mut index = 0;
        while index < count {
            // Relaxed: entries below the count are written (see `len`).
            if self.prefixes[index].load(Ordering::Relaxed) == prefix {
                return Some(index as u8);
            }
            index += 1;
        }
        None
    }
}

/// A slab's [`VipPrefixTable`]: in its table file's header, or in
/// process memory.
#[derive(Debug)]
struct VipPrefixes {
    table: NonNull<VipPrefixTable>,
    /// The table's memory when it is not in a file (the file's mapping
    /// is kept alive by the slab's records).
    _owned: Option<Box<VipPrefixTable>>,
    /// Serialises appends (a few in a table's life).
    append: Mutex<()>,
}

// SAFETY: the table is atomics in memory that `_owned` or the slab's
// table file keeps alive as long as self; sharing or sending references
// to it is as safe as for the atomics themselves.
unsafe impl Send for VipPrefixes {}
// SAFETY: as above.
unsafe impl Sync for VipPrefixes {}

impl VipPrefixes {
    fn owned() -> VipPrefixes {
        let owned = Box::new(VipPrefixTable::new());
        VipPrefixes {
            table: NonNull::from(&*owned),
            _owned: Some(owned),
            append: Mutex::new(()),
        }
    }

    /// The table at `table`, inside a file mapping the slab keeps alive.
    fn mapped(table: NonNull<VipPrefixTable>) -> VipPrefixes {
        VipPrefixes {
            table,
            _owned: None,
            append: Mutex::new(()),
        }
    }

    /// The index of `prefix`, appended if the table lacks it; `None` when
    /// the table is full.
    #[inline]
    fn index_or_append(&self, prefix: u64) -> Option<u8> {
        self.index_of(prefix).or_else(|| self.append(prefix))
    }

    #[cold]
    #[inline(never)]
    fn append(&self, prefix: u64) -> Option<u8> {
        let _appending = self.append.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(index) = self.index_of(prefix) {
            return Some(index);
        }
        let count = self.len();
        if count == VIP_PREFIXES_MAX {
            return None;
        }
        // Relaxed: published by the Release store of the count below.
        self.prefixes[count].store(prefix, Ordering::Relaxed);
        // Release: whoever loads the new count (Acquire, `len`) sees the
        // entry written.
        self.count.store(count as u32 + 1, Ordering::Release);
        Some(count as u8)
    }
}

impl Deref for VipPrefixes {
    type Target = VipPrefixTable;

    #[inline(always)]
    fn deref(&self) -> &VipPrefixTable {
        // SAFETY: `table` points to a VipPrefixTable that `_owned` or the
        // slab's table file keeps alive while self lives (a file's is
        // 8-byte aligned in its page-aligned header); all bytes are a
        // valid table (atomics; counts past the end are clamped).
        unsafe { self.table.as_ref() }
    }
}

/// The `life` word: sequence (bits 40..64), state bits (32..40), last
/// seen (0..32, the caller's coarse seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Life(pub u64);

impl Life {
    const SEQ_SHIFT: u32 = 40;

    #[inline]
    pub const fn new(seq: u32, bits: u8, seen: u32) -> Life {
        Life(((seq as u64 & 0xff_ffff) << Self::SEQ_SHIFT) | ((bits as u64) << 32) | seen as u64)
    }

    #[inline]
    pub const fn seq(self) -> u32 {
        (self.0 >> Self::SEQ_SHIFT) as u32
    }

    /// Even and not 0: the record holds a live flow (0 is a record never
    /// used).
    #[inline]
    pub const fn is_live(self) -> bool {
        self.seq() & 1 == 0 && self.seq() != 0
    }

    #[inline]
    pub const fn bits(self) -> u8 {
        (self.0 >> 32) as u8
    }

    #[inline]
    pub const fn seen(self) -> u32 {
        self.0 as u32
    }

    #[inline]
    pub const fn with(self, bits: u8, seen: u32) -> Life {
        Life::new(self.seq(), bits, seen)
    }

    /// The same flow state with the next sequence number.
    #[inline]
    pub const fn next_seq(self) -> Life {
        Life::new(self.seq().wrapping_add(1), self.bits(), self.seen())
    }
}

/// One flow: its family's data words, then the life word. Aligned to 32
/// bytes, so an IPv4 record (32 bytes) never straddles a cache line.
#[repr(C, align(32))]
pub struct Record<A: RecordLayout> {
    /// See [`RecordLayout`]. While the record is free, word 0 is the next
    /// free record's index.
    data: A::AtomicWords,
    /// See [`Life`].
    life: AtomicU64,
}

impl<A: RecordLayout> Default for Record<A> {
    fn default() -> Self {
        Self {
            data: A::AtomicWords::default(),
            life: AtomicU64::new(0),
        }
    }
}

impl<A: RecordLayout> Debug for Record<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("data", &self.data)
            .field("life", &self.life)
            .finish()
    }
}

impl<A: RecordLayout> Record<A> {
    /// The first data word: the free list's link while free.
    #[inline]
    fn link(&self) -> &AtomicU64 {
        &self.data.as_ref()[0]
    }

    /// The target word (the last data word, in both layouts).
    #[inline]
    fn target(&self) -> &AtomicU64 {
        let words = self.data.as_ref();
        &words[words.len() - 1]
    }

    /// Loads the data words (Relaxed: callers validate them, by the
    /// sequence or by running before the table is shared).
    #[inline]
    fn load_words(&self) -> A::Words {
        let mut words = A::Words::default();
        for (out, word) in words.as_mut().iter_mut().zip(self.data.as_ref()) {
            *out = word.load(Ordering::Relaxed);
        }
        words
    }
}

/// Bytes of slab per flow of family `A`.
pub(super) const fn record_bytes<A: RecordLayout>() -> usize {
    std::mem::size_of::<Record<A>>()
}

/// The records: `len` of them from `ptr`, in the memory `owner` keeps
/// mapped. Where they live is looked at only to set them up; a record's
/// every access goes straight to `ptr` (a match on where they live cost a
/// load and a branch per access, a few dozen instructions per evicting
/// insert).
#[derive(Debug)]
struct Records<A: RecordLayout> {
    ptr: std::ptr::NonNull<Record<A>>,
    len: usize,
    owner: RecordMemory<A>,
}

/// Where the records live: process memory, or a table file's mapping
/// that outlives the process ([`super::persist`]).
#[derive(Debug)]
enum RecordMemory<A: RecordLayout> {
    Owned(super::ZeroedSlice<Record<A>>),
    /// Keeps the mapping alive as long as the records are used.
    Mapped(Arc<TableFile>),
}

impl<A: RecordLayout> Records<A> {
    fn owned(records: super::ZeroedSlice<Record<A>>) -> Records<A> {
        // The slice's memory is its own mapping: it stays where it is
        // when the slice (a pointer and a length) moves into `owner`.
        let (ptr, len) = (std::ptr::NonNull::from(&records[..]).cast(), records.len());
        Records {
            ptr,
            len,
            owner: RecordMemory::Owned(records),
        }
    }

    /// The `len` records at `ptr`, inside the mapping of `file`.
    fn mapped(ptr: std::ptr::NonNull<Record<A>>, len: usize, file: Arc<TableFile>) -> Records<A> {
        Records {
            ptr,
            len,
            owner: RecordMemory::Mapped(file),
        }
    }
}

// SAFETY: the records are atomics in memory that `owner` keeps mapped;
// sharing or sending references to them is as safe as for a slice of
// them.
unsafe impl<A: RecordLayout> Send for Records<A> {}
// SAFETY: as above.
unsafe impl<A: RecordLayout> Sync for Records<A> {}

impl<A: RecordLayout> Deref for Records<A> {
    type Target = [Record<A>];

    #[inline(always)]
    fn deref(&self) -> &[Record<A>] {
        // SAFETY: `ptr` is the start of `len` records inside memory that
        // `owner` keeps mapped while self lives (an owned slice's own
        // mapping, or a table file's, page-aligned, so 32-byte aligned);
        // all bytes are a valid Record (AtomicU64s only).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// Never-used records one inserting worker took from the slab ahead of
/// its inserts ([`Slab::alloc_from`]): ids `next..end`. Records taken
/// and not yet handed out are counted in no flow; a table file's next
/// gateway finds them never written and frees them.
#[derive(Debug, Default)]
pub(super) struct FreshRecords(AtomicU64);

impl FreshRecords {
    #[inline]
    fn get(&self) -> (RecordId, RecordId) {
        // Relaxed: one thread at a time hands these out, under a lock
        // that orders it after the last.
        let word = self.0.load(Ordering::Relaxed);
        (word as u32, (word >> 32) as u32)
    }

    #[inline]
    fn set(&self, next: RecordId, end: RecordId) {
        // Relaxed: as in `get`.
        self.0
            .store((u64::from(end) << 32) | u64::from(next), Ordering::Relaxed);
    }
}

/// The slab of records and its free list.
#[derive(Debug)]
pub(super) struct Slab<A: RecordLayout> {
    records: Records<A>,
    /// Top of the free stack: tag (bits 32..64) | record id (0..32, 0 =
    /// empty).
    free_head: AtomicU64,
    /// Records `1..never_used` have been handed out at least once (owned
    /// records; a table file keeps its own count in its header, so the
    /// next gateway reads only the records ever used).
    never_used: AtomicU32,
    /// What IPv6 records' VIP prefix indexes refer to.
    vips: VipPrefixes,
    /// How a record about to be claimed is asked for.
    write_prefetch: super::WritePrefetch,
}

impl<A: RecordLayout> Slab<A> {
    /// A slab for `capacity` records, zeroed lazily by the kernel.
    pub fn new(capacity: u32) -> Slab<A> {
        let len = capacity as usize + 1;
        // SAFETY: a Record is AtomicU64s only, for which all-zero bytes
        // are a valid value (a record never used).
        let records = unsafe { super::zeroed_slice::<Record<A>>(len) };
        super::advise_huge_pages(&records);
        Slab {
            records: Records::owned(records),
            free_head: AtomicU64::new(0),
            never_used: AtomicU32::new(1),
            vips: VipPrefixes::owned(),
            write_prefetch: super::WritePrefetch::detect(),
        }
    }

    /// Backs and maps every page of the records now, in process memory or
    /// in the table file (see [`super::Conntrack::populate`]).
    pub fn populate(&self) -> std::io::Result<()> {
        match &self.records.owner {
            RecordMemory::Owned(records) => records.populate(),
            RecordMemory::Mapped(file) => file.populate(),
        }
    }

    /// A slab over a table file's records (`capacity` + 1 of them). Its
    /// free list starts empty: adoption ([`Slab::release`]) rebuilds it.
    pub fn in_file(file: Arc<TableFile>) -> Slab<A> {
        let (ptr, len) = file.records_ptr();
        let vips = VipPrefixes::mapped(file.vip_prefixes_ptr());
        Slab {
            records: Records::mapped(ptr.cast::<Record<A>>(), len, file),
            free_head: AtomicU64::new(0),
            never_used: AtomicU32::new(1),
            vips,
            write_prefetch: super::WritePrefetch::detect(),
        }
    }

    /// The table file the records live in, if any.
    pub fn file(&self) -> Option<&TableFile> {
        match &self.records.owner {
            RecordMemory::Mapped(file) => Some(file),
            RecordMemory::Owned(_) => None,
        }
    }

    /// Records in the slab, id 0 included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// A record's life word as it is, live or not (for adoption).
    pub fn raw_life(&self, id: RecordId) -> Life {
        // Relaxed: adoption runs before the table is shared.
        self.record(id)
            .map_or(Life(0), |r| Life(r.life.load(Ordering::Relaxed)))
    }

    /// Adoption: whether a record's data words are exactly what
    /// [`Slab::publish`] writes for the flow they decode to (no stray
    /// bits from another layout or a scribble).
    pub fn is_canonical(&self, id: RecordId) -> bool {
        self.record(id).is_some_and(|r| {
            // Relaxed: adoption runs before the table is shared.
            let words = r.load_words();
            let flow = A::decode(&words, &self.vips);
            let vip_index = A::vip_prefix(&flow).map_or(Some(0), |p| self.vips.index_of(p));
            vip_index.is_some_and(|index| A::encode(&flow, index) == words)
        })
    }

    /// Adoption: records `1..=id` have been used.
    pub fn set_high_water(&self, id: RecordId) {
        // Relaxed: adoption runs before the table is shared.
        self.never_used().store(id + 1, Ordering::Relaxed);
    }

    /// The count of records handed out: in the table file's header when
    /// there is one.
    #[inline]
    fn never_used(&self) -> &AtomicU32 {
        match &self.records.owner {
            RecordMemory::Mapped(file) => file.never_used(),
            RecordMemory::Owned(_) => &self.never_used,
        }
    }

    /// Adoption: rewrites a live record's counter slot (the slots of
    /// another process mean nothing here). Only before the table is
    /// shared.
    pub fn set_slot(&self, id: RecordId, slot: u32) {
        if let Some(r) = self.record(id) {
            // Relaxed: adoption runs before the table is shared.
            let target = r.target().load(Ordering::Relaxed);
            r.target().store(
                (target & !u64::from(MAX_SLOT)) | u64::from(slot.min(MAX_SLOT)),
                Ordering::Relaxed,
            );
        }
    }

    /// Adoption: a record that holds no flow (free, torn or discarded)
    /// goes on the free list, its sequence odd so no reader believes it.
    pub fn release(&self, id: RecordId) {
        let Some(r) = self.record(id) else {
            return;
        };
        let life = Life(r.life.load(Ordering::Relaxed));
        if life.is_live() {
            // Relaxed: adoption runs before the table is shared.
            r.life.store(life.next_seq().0, Ordering::Relaxed);
        }
        self.free(id);
    }

    /// Records that may hold a flow: ids `1..high_water()`.
    pub fn high_water(&self) -> RecordId {
        // Relaxed: a scan bound; records handed out later hold flows
        // inserted after the scan began, which it may skip.
        self.never_used().load(Ordering::Relaxed)
    }

    #[inline]
    fn record(&self, id: RecordId) -> Option<&Record<A>> {
        self.records.get(id as usize).filter(|_| id != 0)
    }

    /// Hints the CPU to fetch a record's line.
    #[inline]
    pub fn prefetch(&self, id: RecordId) {
        if let Some(r) = self.record(id) {
            super::prefetch(r);
        }
    }

    /// [`Slab::prefetch`] for a record about to be claimed and written
    /// (an eviction's victim).
    #[inline]
    pub fn prefetch_for_write(&self, id: RecordId) {
        if let Some(r) = self.record(id) {
            self.write_prefetch.item(r);
        }
    }

    /// A live record's life word alone (its flow left unread), or `None`
    /// when the record is free or being written.
    #[inline]
    pub fn life(&self, id: RecordId) -> Option<Life> {
        // Acquire: as the first load of `read`.
        let life = Life(self.record(id)?.life.load(Ordering::Acquire));
        life.is_live().then_some(life)
    }

    /// Reads a live record: its flow and current life, or `None` when the
    /// record is free, being written, or changed while being read.
    ///
    /// Always inlined: left to the compiler, one more caller (the flow
    /// cache's `Conntrack::stamp`) made it a call, and the eviction's
    /// claims around it were inlined instead, several times: the IPv4
    /// insert grew from 11.6 to 21.7 KB and the gateway's new flows took
    /// a fifth longer (benches/RESULTS.md, session 20).
    #[inline(always)]
    pub fn read(&self, id: RecordId) -> Option<(FlowData<A>, Life)> {
        let (words, life) = self.read_words(id)?;
        Some((A::decode(&words, &self.vips), life))
    }

    /// [`Slab::read`] of a record whose flow's `direction` key is `key`
    /// (`None` for any other): the key is compared against the words as
    /// stored ([`RecordLayout::holds`]), and only a match is decoded.
    #[inline(always)]
    pub fn read_holding(
        &self,
        id: RecordId,
        direction: Direction,
        key: &FlowKey<A>,
        snat_address: impl Fn(u8) -> A,
    ) -> Option<(FlowData<A>, Life)> {
        let (words, life) = self.read_words(id)?;
        A::holds(&words, direction, key, snat_address, &self.vips)
            .then(|| (A::decode(&words, &self.vips), life))
    }

    /// [`Slab::read`]'s words, not decoded.
    #[inline(always)]
    fn read_words(&self, id: RecordId) -> Option<(A::Words, Life)> {
        let r = self.record(id)?;
        // Acquire: pairs with the Release in `publish`, so the data words
        // written before the sequence became even are seen.
        let first = Life(r.life.load(Ordering::Acquire));
        if !first.is_live() {
            return None;
        }
        // Relaxed: validated by the sequence check below.
        let words = r.load_words();
        // Acquire fence: the data loads above happen before the second
        // load of `life`; if any of them saw a newer writer's store, that
        // writer's Release fence (see `publish`) makes its odd sequence
        // visible to the load below.
        fence(Ordering::Acquire);
        let second = Life(r.life.load(Ordering::Relaxed));
        if second.seq() != first.seq() {
            return None;
        }
        Some((words, second))
    }

    /// The flow in a record the caller claimed ([`Slab::claim`]) and has
    /// not yet freed or published again: its data words stay as they were
    /// until then, so they are read without a sequence check.
    #[inline]
    pub fn claimed(&self, id: RecordId) -> Option<FlowData<A>> {
        // Relaxed: the successful claim (AcqRel) made the flow's
        // publication visible, and no one else writes a claimed record.
        Some(A::decode(&self.record(id)?.load_words(), &self.vips))
    }

    /// The source NAT index of the flow in a claimed record (see
    /// [`Slab::claimed`]), from its target word alone.
    #[inline]
    pub fn claimed_snat_index(&self, id: RecordId) -> u8 {
        // Relaxed: as in `claimed`.
        self.record(id)
            .map_or(0, |r| decode_target(r.target().load(Ordering::Relaxed)).3)
    }

    /// Replaces a live record's life word (state, last seen) if it is
    /// still `current`; on failure returns what it is now.
    #[inline]
    pub fn update(&self, id: RecordId, current: Life, new: Life) -> Result<(), Life> {
        let Some(r) = self.record(id) else {
            return Err(Life(1 << Life::SEQ_SHIFT));
        };
        // Relaxed: the life word publishes nothing but itself; the
        // sequence in it makes the swap fail once the flow is removed.
        r.life
            .compare_exchange_weak(current.0, new.0, Ordering::Relaxed, Ordering::Relaxed)
            .map(|_| ())
            .map_err(Life)
    }

    /// Takes a free record, or `None` when all are in use (the tests'
    /// [`Slab::alloc_from`] without a worker's records).
    #[cfg(test)]
    pub fn alloc(&self) -> Option<RecordId> {
        self.pop_free()
            .or_else(|| self.bump(1).map(|(first, _)| first))
    }

    /// Takes a free record; else one of `fresh`, never used; else takes
    /// up to `block` never-used records into `fresh` and gives the first.
    /// `None` when all are in use or in other workers' `fresh`. The
    /// caller alone hands out `fresh`'s records (the inserting worker,
    /// under its queue's lock).
    #[inline]
    pub fn alloc_from(&self, fresh: &FreshRecords, block: u32) -> Option<RecordId> {
        if let Some(id) = self.pop_free() {
            return Some(id);
        }
        let (next, end) = fresh.get();
        let (id, end) = if next < end {
            (next, end)
        } else {
            self.bump(block)?
        };
        fresh.set(id + 1, end);
        Some(id)
    }

    /// Pops the free stack's top record, if any.
    #[inline]
    fn pop_free(&self) -> Option<RecordId> {
        // Acquire: the popped record's `next` word and its claim (odd
        // sequence) were written before it was pushed (Release below).
        let mut head = self.free_head.load(Ordering::Acquire);
        loop {
            let id = head as u32;
            let r = self.record(id)?;
            // Relaxed: if another thread popped this record meanwhile and
            // rewrote its link, the tag makes the swap below fail.
            let next = r.link().load(Ordering::Relaxed) as u32;
            let tag = (head >> 32).wrapping_add(1);
            match self.free_head.compare_exchange_weak(
                head,
                (tag << 32) | u64::from(next),
                // Acquire on success: as for the load above.
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(id),
                Err(now) => head = now,
            }
        }
    }

    /// Takes up to `count` (at least one) never-used records: ids
    /// `first..end`.
    fn bump(&self, count: u32) -> Option<(RecordId, RecordId)> {
        let len = self.records.len() as u32;
        let end_from = |first: u32| first.saturating_add(count.max(1)).min(len);
        // Relaxed: never-used records are all zero and published by
        // `publish` itself; the counter orders nothing.
        let first = self
            .never_used()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < len).then(|| end_from(n))
            })
            .ok()?;
        Some((first, end_from(first)))
    }

    /// The (even) sequence [`Slab::publish`] will give a record taken
    /// with [`Slab::alloc`].
    pub fn pending_seq(&self, id: RecordId) -> u32 {
        // Relaxed: the record is ours until published.
        let seq = self
            .record(id)
            .map_or(0, |r| Life(r.life.load(Ordering::Relaxed)).seq());
        Self::live_seq_after(seq)
    }

    /// The live sequence that follows a free (odd) or never-used (0) one;
    /// never 0, also when the 24-bit counter wraps.
    fn live_seq_after(seq: u32) -> u32 {
        let next = if seq == 0 { 2 } else { (seq + 1) & 0xff_ffff };
        if next == 0 {
            2
        } else {
            next
        }
    }

    /// The VIP prefix index [`Slab::publish`] wants for `flow` (0 for
    /// IPv4), its prefix appended to the table's if new; `None` when the
    /// table of VIP prefixes is full.
    #[inline]
    pub fn vip_index(&self, flow: &FlowData<A>) -> Option<u8> {
        match A::vip_prefix(flow) {
            None => Some(0),
            Some(prefix) => self.vips.index_or_append(prefix),
        }
    }

    /// VIP prefixes the table holds (IPv6).
    #[cfg(test)]
    pub fn vips_in_use(&self) -> usize {
        self.vips.len()
    }

    /// Writes a flow into a record taken with [`Slab::alloc`] and makes it
    /// live (even sequence), its VIP prefix at `vip_index`
    /// ([`Slab::vip_index`]). Returns its life.
    pub fn publish(
        &self,
        id: RecordId,
        flow: &FlowData<A>,
        vip_index: u8,
        bits: u8,
        seen: u32,
    ) -> Life {
        let Some(r) = self.record(id) else {
            return Life(1 << Life::SEQ_SHIFT);
        };
        // Relaxed: the record is ours (free or never used); readers only
        // believe an even, non-zero sequence.
        let seq = Life(r.life.load(Ordering::Relaxed)).seq();
        let live = Self::live_seq_after(seq);
        if seq == 0 {
            // Never used: mark it as being written first.
            // Relaxed: ordered before the data stores by the fence below.
            r.life.store(Life::new(1, 0, 0).0, Ordering::Relaxed);
        }
        // Release fence: a reader whose data loads see any store below
        // also sees, after its Acquire fence, the odd sequence.
        fence(Ordering::Release);
        let words = A::encode(flow, vip_index);
        for (word, value) in r.data.as_ref().iter().zip(words.as_ref()) {
            // Relaxed: published by the Release store of `life`.
            word.store(*value, Ordering::Relaxed);
        }
        let life = Life::new(live, bits, seen);
        // Release: the data words above are visible to whoever sees the
        // even sequence.
        r.life.store(life.0, Ordering::Release);
        life
    }

    /// Ends a live flow if its life is still `current`: the sequence turns
    /// odd, so no reader believes the record any more and no state change
    /// can succeed. Exactly one caller wins; it must then unlink the flow
    /// and [`Slab::free`] the record.
    pub fn claim(&self, id: RecordId, current: Life) -> bool {
        let Some(r) = self.record(id) else {
            return false;
        };
        current.is_live()
            && r.life
                .compare_exchange(
                    current.0,
                    current.next_seq().0,
                    // AcqRel: the claim is ordered after the reads that
                    // chose the victim and before the record's reuse.
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Returns a claimed record to the free stack.
    pub fn free(&self, id: RecordId) {
        let Some(r) = self.record(id) else {
            return;
        };
        // Relaxed: ordered by the Release swap of the head below.
        let mut head = self.free_head.load(Ordering::Relaxed);
        loop {
            r.link().store(head & 0xffff_ffff, Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            match self.free_head.compare_exchange_weak(
                head,
                (tag << 32) | u64::from(id),
                // Release: the `next` word and the claim are visible to
                // the thread that pops this record.
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(n: u8) -> FlowData<Ipv4Addr> {
        FlowData {
            client: Ipv4Addr::new(198, 18, 0, n),
            client_port: 40000 + u16::from(n),
            vip: Ipv4Addr::new(198, 19, 255, 1),
            vip_port: 80,
            backend: Ipv4Addr::new(198, 19, 0, n),
            backend_port: 8080,
            protocol: if n % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            slot: u32::from(n) * 1000,
            snat_index: n % 3,
            snat_port: if n % 3 == 0 { 0 } else { 61000 + u16::from(n) },
        }
    }

    #[test]
    fn snat_fields_and_slots_round_trip_through_the_words() {
        let mut f = flow(1);
        for (index, port, slot) in [(0, 0, 0), (127, 65535, MAX_SLOT - 1), (5, 61000, 7)] {
            f.snat_index = index;
            f.snat_port = port;
            f.slot = slot;
            let words = Ipv4Addr::encode(&f, 0);
            assert_eq!(
                Ipv4Addr::decode(&words, &VipPrefixTable::new()),
                f,
                "index {index} port {port} slot {slot}"
            );
        }
        f.slot = super::super::NO_SLOT;
        let words = Ipv4Addr::encode(&f, 0);
        assert_eq!(
            Ipv4Addr::decode(&words, &VipPrefixTable::new()).slot,
            super::super::NO_SLOT
        );
        f.protocol = Protocol::Udp;
        let words = Ipv4Addr::encode(&f, 0);
        assert_eq!(Ipv4Addr::decode(&words, &VipPrefixTable::new()), f);
    }

    fn flow6(n: u8) -> FlowData<Ipv6Addr> {
        let v4 = flow(n);
        let addr = |last: u16| Ipv6Addr::new(0x2001, 2, 0, 0xffff, 0xfedc, 0xba98, 0x7654, last);
        FlowData {
            client: addr(u16::from(n)),
            vip: addr(0xffff),
            backend: addr(0x8000 | u16::from(n)),
            client_port: v4.client_port,
            vip_port: v4.vip_port,
            backend_port: v4.backend_port,
            protocol: v4.protocol,
            slot: v4.slot,
            snat_index: v4.snat_index,
            snat_port: v4.snat_port,
        }
    }

    /// Publishes `flow` into record `id`, its VIP prefix appended as needed.
    fn publish<A: RecordLayout>(
        slab: &Slab<A>,
        id: RecordId,
        flow: &FlowData<A>,
        bits: u8,
        seen: u32,
    ) -> Life {
        let vip_index = slab.vip_index(flow).expect("room for the VIP prefix");
        slab.publish(id, flow, vip_index, bits, seen)
    }

    #[test]
    fn ipv6_flows_round_trip_through_the_words() {
        let vips = VipPrefixes::owned();
        for n in 0..6 {
            let mut f = flow6(n);
            let index = vips
                .index_or_append(Ipv6Addr::vip_prefix(&f).expect("IPv6 has one"))
                .expect("room");
            assert_eq!(index, 0, "one VIP prefix");
            assert_eq!(
                Ipv6Addr::decode(&Ipv6Addr::encode(&f, index), &vips),
                f,
                "flow {n}"
            );
            f.client = Ipv6Addr::from(u128::MAX);
            f.vip = Ipv6Addr::from(u128::MAX - u128::from(n));
            f.slot = MAX_SLOT - 1;
            f.snat_index = 127;
            let index = vips
                .index_or_append(Ipv6Addr::vip_prefix(&f).expect("IPv6 has one"))
                .expect("room");
            assert_eq!(index, 1, "all-ones VIPs share the second prefix");
            assert_eq!(
                Ipv6Addr::decode(&Ipv6Addr::encode(&f, index), &vips),
                f,
                "flow {n}, all ones"
            );
        }
        assert_eq!(vips.len(), 2);
    }

    /// Each new VIP prefix takes the next index, once; a full table
    /// refuses new prefixes and still finds those it holds.
    #[test]
    fn vip_prefixes_are_appended_once_until_the_table_is_full() {
        let vips = VipPrefixes::owned();
        for round in 0..2 {
            for n in 0..VIP_PREFIXES_MAX as u64 {
                let prefix = 0x2001_0002_0000_0000 | n;
                assert_eq!(
                    vips.index_or_append(prefix),
                    Some(n as u8),
                    "prefix {n}, round {round}"
                );
            }
        }
        assert_eq!(vips.len(), VIP_PREFIXES_MAX);
        assert_eq!(vips.index_or_append(0x2001_0002_0001_0000), None, "full");
        assert_eq!(vips.prefix(VIP_PREFIXES_MAX as u8), 0, "past the table");
        assert_eq!(vips.prefix(u8::MAX), 0);
    }

    #[test]
    fn records_are_32_bytes_for_ipv4_and_64_for_ipv6() {
        assert_eq!(record_bytes::<Ipv4Addr>(), 32);
        assert_eq!(record_bytes::<Ipv6Addr>(), 64);
    }

    #[test]
    fn ipv6_records_round_trip_and_are_reused_after_free() {
        let slab = Slab::<Ipv6Addr>::new(1);
        let a = slab.alloc().expect("a record");
        let life = publish(&slab, a, &flow6(4), 0x42, 7);
        assert_eq!(slab.read(a), Some((flow6(4), life)));
        assert!(slab.is_canonical(a));
        assert!(slab.claim(a, life));
        slab.free(a);
        assert_eq!(slab.alloc(), Some(a), "freed records come back");
        publish(&slab, a, &flow6(5), 0, 9);
        assert_eq!(slab.read(a).map(|(d, _)| d), Some(flow6(5)));
    }

    /// A record whose VIP prefix index names no prefix of the table (a
    /// scribbled file) does not encode back, so adoption discards it.
    #[test]
    fn an_ipv6_record_with_an_unknown_vip_index_is_not_canonical() {
        let slab = Slab::<Ipv6Addr>::new(1);
        let a = slab.alloc().expect("a record");
        slab.publish(a, &flow6(4), 0, 0, 7);
        assert!(
            !slab.is_canonical(a),
            "index 0 before any prefix was appended"
        );
        publish(&slab, a, &flow6(4), 0, 7);
        assert!(slab.is_canonical(a));
        slab.publish(a, &flow6(4), 1, 0, 7);
        assert!(!slab.is_canonical(a), "index 1 of a one-prefix table");
    }

    /// Fields of a flow or key, as indexes into small sets of values
    /// (so that keys often match and every field's difference is tried):
    /// addresses, ports, protocol; then the flow's slot, SNAT index (3
    /// names no address of a two-address pool) and SNAT port.
    type Fields = ([usize; 3], [usize; 3], bool, u32, u8, usize);

    const PORTS: [u16; 4] = [0, 80, 8080, 61000];

    fn protocol(udp: bool) -> Protocol {
        if udp {
            Protocol::Udp
        } else {
            Protocol::Tcp
        }
    }

    /// [`RecordLayout::holds`] answers as decoding the words and
    /// comparing the flow's key does, in both directions, for the flow's
    /// own keys, for every key that differs from one in a single field
    /// (every value of the field's set), and for `key` (fields given by
    /// `replace`, the rest the direction's own); source NAT from a pool
    /// of `addrs[0..2]`.
    fn assert_holds_as_decoded<A: crate::family::IpFamily>(
        addrs: [A; 4],
        (a, p, udp, slot, snat_index, snat_port): Fields,
        replace: [Option<usize>; 5],
    ) {
        let flow = FlowData {
            client: addrs[a[0]],
            vip: addrs[a[1]],
            backend: addrs[a[2]],
            client_port: PORTS[p[0]],
            vip_port: PORTS[p[1]],
            backend_port: PORTS[p[2]],
            protocol: protocol(udp),
            slot,
            snat_index,
            snat_port: PORTS[snat_port],
        };
        let snat = super::super::snat::SnatPool::new(&super::super::snat::SnatConfig {
            addresses: addrs[..2].to_vec(),
            ports: 1024..=65535,
        })
        .expect("a valid pool");
        let vips = VipPrefixes::owned();
        let vip_index = A::vip_prefix(&flow)
            .map_or(Some(0), |prefix| vips.index_or_append(prefix))
            .expect("room for the VIP prefix");
        let words = A::encode(&flow, vip_index);
        let decoded = A::decode(&words, &vips);
        for direction in [Direction::Forward, Direction::Reply] {
            let own = decoded.key(direction, &snat);
            let with = |replace: [Option<usize>; 5]| FlowKey {
                src: replace[0].map_or(own.src, |i| addrs[i]),
                dst: replace[1].map_or(own.dst, |i| addrs[i]),
                src_port: replace[2].map_or(own.src_port, |i| PORTS[i]),
                dst_port: replace[3].map_or(own.dst_port, |i| PORTS[i]),
                protocol: replace[4].map_or(own.protocol, |i| protocol(i == 1)),
            };
            let one_field = (0..5).flat_map(|field| {
                (0..4).map(move |value| {
                    let mut replace = [None; 5];
                    replace[field] = Some(value % if field == 4 { 2 } else { 4 });
                    replace
                })
            });
            for key in [own, with(replace)].into_iter().chain(one_field.map(with)) {
                assert_eq!(
                    A::holds(&words, direction, &key, |i| snat.address(i), &vips),
                    key == own,
                    "{direction:?} key {key:?} of {flow:?}"
                );
            }
        }
    }

    fn fields() -> impl proptest::strategy::Strategy<Value = Fields> {
        use proptest::prelude::*;
        (
            [0..4usize, 0..4, 0..4],
            [0..4usize, 0..4, 0..4],
            any::<bool>(),
            prop_oneof![Just(0), Just(MAX_SLOT - 1), Just(super::super::NO_SLOT)],
            0..4u8,
            0..4usize,
        )
    }

    fn replaced() -> impl proptest::strategy::Strategy<Value = [Option<usize>; 5]> {
        [
            proptest::option::of(0..4usize),
            proptest::option::of(0..4usize),
            proptest::option::of(0..4usize),
            proptest::option::of(0..4usize),
            proptest::option::of(0..2usize),
        ]
    }

    proptest::proptest! {
        #[test]
        fn a_key_is_held_as_the_decoded_flow_has_it_ipv4(f in fields(), r in replaced()) {
            let addrs = [[198, 18, 0, 1], [198, 18, 0, 2], [198, 19, 0, 3], [0, 0, 0, 0]];
            assert_holds_as_decoded(addrs.map(Ipv4Addr::from), f, r);
        }

        /// Two VIP prefixes (2001:2:0:0 and 2001:2:0:1) and the
        /// unspecified address, whose prefix is 0.
        #[test]
        fn a_key_is_held_as_the_decoded_flow_has_it_ipv6(f in fields(), r in replaced()) {
            let addrs = [
                Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2),
                Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1),
                Ipv6Addr::UNSPECIFIED,
            ];
            assert_holds_as_decoded(addrs, f, r);
        }
    }

    #[test]
    fn records_round_trip_and_are_reused_after_free() {
        let slab = Slab::<Ipv4Addr>::new(2);
        let a = slab.alloc().expect("first record");
        let b = slab.alloc().expect("second record");
        assert_eq!(slab.alloc(), None, "capacity is 2");
        let life = publish(&slab, a, &flow(1), 0x42, 7);
        publish(&slab, b, &flow(2), 0, 8);
        assert_eq!(slab.read(a), Some((flow(1), life)));
        assert_eq!((life.bits(), life.seen()), (0x42, 7));
        assert!(slab.claim(a, life));
        assert!(!slab.claim(a, life), "only one claim wins");
        assert_eq!(slab.read(a), None, "a claimed record is not read");
        slab.free(a);
        assert_eq!(slab.alloc(), Some(a), "freed records come back");
        let again = publish(&slab, a, &flow(3), 0, 9);
        assert_ne!(again.seq(), life.seq(), "reuse changes the sequence");
        assert_eq!(slab.read(a).map(|(d, _)| d), Some(flow(3)));
        assert!(
            slab.update(a, life, life.with(1, 10)).is_err(),
            "a stale life cannot update the reused record"
        );
    }

    /// A worker takes never-used records a block at a time and hands
    /// them out before taking more; freed records come first; the last
    /// block is what is left; another worker's records are not handed
    /// out.
    #[test]
    fn fresh_records_are_taken_a_block_at_a_time() {
        let slab = Slab::<Ipv4Addr>::new(12);
        let (mine, theirs) = (FreshRecords::default(), FreshRecords::default());
        assert_eq!(slab.alloc_from(&mine, 8), Some(1));
        assert_eq!(slab.high_water(), 9, "records 1..9 taken at once");
        assert_eq!(slab.alloc_from(&mine, 8), Some(2));
        slab.free(1);
        assert_eq!(slab.alloc_from(&mine, 8), Some(1), "a freed record first");
        assert_eq!(slab.alloc_from(&theirs, 8), Some(9));
        assert_eq!(slab.high_water(), 13, "only 9..13 were left");
        for want in 3..9 {
            assert_eq!(slab.alloc_from(&mine, 8), Some(want));
        }
        assert_eq!(slab.alloc_from(&mine, 8), None, "10..13 are theirs");
        for want in 10..13 {
            assert_eq!(slab.alloc_from(&theirs, 1), Some(want));
        }
        assert_eq!(slab.alloc_from(&theirs, 1), None, "all 12 handed out");
    }

    #[test]
    fn id_zero_and_out_of_range_are_never_records() {
        let slab = Slab::<Ipv4Addr>::new(1);
        assert_eq!(slab.read(0), None);
        assert_eq!(slab.alloc(), Some(1));
        assert_eq!(slab.read(1), None, "a record never published is not live");
        slab.free(1);
        assert_eq!(slab.read(5), None);
        assert!(!slab.claim(0, Life::new(0, 0, 0)));
        slab.free(9);
        assert_eq!(slab.alloc(), Some(1));
        assert_eq!(slab.alloc(), None);
    }

    #[test]
    fn the_live_sequence_skips_zero_when_it_wraps() {
        assert_eq!(Slab::<Ipv4Addr>::live_seq_after(0), 2);
        assert_eq!(Slab::<Ipv4Addr>::live_seq_after(7), 8);
        assert_eq!(Slab::<Ipv4Addr>::live_seq_after(0xff_ffff), 2);
        assert!(Life::new(2, 0, 0).is_live());
        assert!(!Life::new(0, 0, 0).is_live());
        assert!(!Life::new(3, 0, 0).is_live());
    }
}
