//! The hash index from a 5-tuple to its flow record: 64-byte buckets of
//! seven slots, each slot a 32-bit signature (the hash's high half, its
//! lowest bit set) and a 32-bit reference (record id and direction). One
//! flow has two slots, one per direction; a lookup reads one bucket line,
//! then the records whose signature matches (almost always exactly one).
//!
//! A key's home bucket comes from its hash; when the home bucket is full
//! the slot goes to the next bucket with room, and every bucket passed
//! counts one more overflowing key, so a lookup goes on to the next bucket
//! only while the current one's count is non-zero (folly's F14 does the
//! same). Chains are short: the table is sized for 3.5 keys per bucket at
//! `max_flows` (half full), and the hash is keyed per process, so clients
//! cannot aim their flows at one chain. A chain longer than
//! [`MAX_CHAIN`] buckets is refused rather than searched.
//!
//! Readers never lock and never write. Writers lock the buckets they
//! change with a bit in the bucket's meta word, always a contiguous run
//! from a key's home upwards, taken in increasing order and held only for
//! the one slot change: no writer waits on another for long, and none can
//! deadlock. Slots never move, so a key present for the whole of a lookup
//! is always found; a reference read from a slot may point to a record
//! that has since been reused, which the record's sequence check catches.
//! A slot is placed only while its record still holds the flow being
//! linked (asked under the chain's lock), and a flow's remover, after
//! ending the flow, clears the slot if it finds it in the home bucket
//! (the link is done: only the remover stores to a slot in use) and
//! otherwise searches under the same lock, so no slot outlives its flow:
//! a slot word names a record, and a slot left behind would be taken for
//! the record's next flow of the same key.

use std::sync::atomic::{AtomicU64, Ordering};

use super::slab::RecordId;

/// Slots per bucket: seven references and one meta word fill 64 bytes.
pub(super) const SLOTS: usize = 7;
/// Buckets a key may be placed away from its home, at most.
pub(super) const MAX_CHAIN: usize = 16;
/// Keys per bucket the index is sized for at full table (of 7).
const KEYS_PER_BUCKET_NUM: usize = 7;
const KEYS_PER_BUCKET_DEN: usize = 2;

/// Meta word: lock bit (63) and the count of keys that overflowed past
/// this bucket (0..32).
const LOCKED: u64 = 1 << 63;
const OVERFLOW: u64 = 0xffff_ffff;

#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Bucket {
    meta: AtomicU64,
    slots: [AtomicU64; SLOTS],
}

impl Bucket {
    /// The first slot whose bits under `mask` equal `want` (an empty
    /// one: `u64::MAX`, 0), for a writer holding this bucket's lock, or
    /// for a flow's remover looking for its slot (see
    /// [`FlowIndex::unlink_reference`]).
    #[inline(always)]
    fn slot_matching(&self, mask: u64, want: u64) -> Option<&AtomicU64> {
        // Relaxed: under the lock, no one else stores to the slots; a
        // remover's slot, once stored, changes only by its own store.
        self.slots
            .iter()
            .find(|s| s.load(Ordering::Relaxed) & mask == want)
    }

    /// The first empty slot, for a writer holding this bucket's lock.
    #[inline(always)]
    fn free_slot(&self) -> Option<&AtomicU64> {
        self.slot_matching(u64::MAX, 0)
    }
}

/// Bytes of index per flow (two keys) when the table is full.
pub(super) const INDEX_BYTES_PER_FLOW: usize =
    2 * std::mem::size_of::<Bucket>() * KEYS_PER_BUCKET_DEN / KEYS_PER_BUCKET_NUM + 1;

/// Which of a flow's two keys a slot stands for.
pub(super) const FORWARD: u32 = 0;
pub(super) const REPLY: u32 = 1;

/// A hash's signature: its high half with the lowest bit set, so that no
/// signature is 0 and an empty slot (0) never matches one: a lookup
/// compares each slot once, without testing it for empty first. One bit
/// less of signature: a key shares its signature with another one time
/// in 2^31, and the record's key tells them apart.
#[inline]
fn signature(hash: u64) -> u64 {
    (hash >> 32) | 1
}

/// Bit `i` set for each slot `i` of `bucket` whose signature is `sig`:
/// a hint, which the caller confirms by reading the slot again (a slot
/// may change at any moment, before or after this read).
///
/// On x86-64, the seven slots are read in four loads and their
/// signatures compared at once (14 instructions, against about 45 for
/// the compiler's slot-by-slot loop, which loads, shifts, compares and
/// places each bit in turn): every new flow scans two buckets in full
/// (its two links' existence checks), and source NAT scans one per port
/// it probes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn signature_matches(bucket: &Bucket, sig: u64) -> u32 {
    let matches: u32;
    // SAFETY: `bucket` is a live, 64-byte aligned `Bucket` (align(64)),
    // so the loads (8 bytes at offset 8, then three aligned 16-byte ones)
    // read its seven slots and nothing else. Other workers store to the
    // slots concurrently, atomically: an aligned 8-byte load, and each
    // naturally aligned 8-byte half of an aligned 16-byte SSE load, is
    // read atomically (Intel SDM vol. 3A 9.1.1; AMD APM vol. 2 7.3.2),
    // as relaxed loads of the `AtomicU64`s would be, and x86 keeps loads
    // in order (the Acquire the slot loads asked for). The asm is not
    // marked read-only, so the compiler orders it with every other
    // memory access, as it does atomic loads. Only SSE2, which every
    // x86-64 has, and general registers are used; the stack is not.
    //
    // Lanes: the bucket is sixteen 32-bit lanes, word k's high half in
    // lane 2k + 1 (little endian); `shufps` 0xDD gathers the odd lanes
    // of two registers, so `a` holds the high halves of words 0-3 and
    // `b` of words 4-7. Word 0, the meta word, is not read but taken as
    // zero, never a signature, and shifted out: a link has just written
    // it (the lock), and a 16-byte load over that 8-byte store waits for
    // it to reach the cache instead of taking it from the store (a stall
    // that undid the scan's savings in time).
    unsafe {
        std::arch::asm!(
            "movd {s}, {sig:e}",
            "pshufd {s}, {s}, 0",
            "xorps {a}, {a}",
            "movhps {a}, qword ptr [{p} + 8]",
            "shufps {a}, xmmword ptr [{p} + 16], 0xDD",
            "movdqa {b}, xmmword ptr [{p} + 32]",
            "shufps {b}, xmmword ptr [{p} + 48], 0xDD",
            "pcmpeqd {a}, {s}",
            "pcmpeqd {b}, {s}",
            "movmskps {m:e}, {a}",
            "movmskps {t:e}, {b}",
            "shl {t:e}, 4",
            "or {m:e}, {t:e}",
            "shr {m:e}, 1",
            p = in(reg) bucket as *const Bucket,
            sig = in(reg) sig,
            s = out(xmm_reg) _,
            a = out(xmm_reg) _,
            b = out(xmm_reg) _,
            m = out(reg) matches,
            t = out(reg) _,
            options(nostack),
        );
    }
    matches
}

/// [`signature_matches`] without SIMD, slot by slot.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline(always)]
fn signature_matches_by_slot(bucket: &Bucket, sig: u64) -> u32 {
    bucket
        .slots
        .iter()
        .enumerate()
        .fold(0, |matches, (i, slot)| {
            // Acquire: pairs with the Release in `link`.
            let word = slot.load(Ordering::Acquire);
            matches | u32::from(word >> 32 == sig) << i
        })
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn signature_matches(bucket: &Bucket, sig: u64) -> u32 {
    signature_matches_by_slot(bucket, sig)
}

/// A slot's content: signature and reference; never 0.
#[inline]
pub(super) fn slot_word(hash: u64, id: RecordId, direction: u32) -> u64 {
    (signature(hash) << 32) | u64::from(slot_reference(id, direction))
}

/// A slot word's low half: record id and direction, as [`reference`]
/// reads them back.
#[inline]
pub(super) fn slot_reference(id: RecordId, direction: u32) -> u32 {
    id << 1 | direction
}

/// The bits of a slot word that name a flow's key: its reference and
/// the signature's lowest bit, set in every slot in use (reference 0,
/// record 0's forward key, is also an empty slot's low half).
const REFERENCE_AND_IN_USE: u64 = 1 << 32 | 0xffff_ffff;

/// Record id and direction of a slot word.
#[inline]
pub(super) fn reference(word: u64) -> (RecordId, u32) {
    let r = word as u32;
    (r >> 1, r & 1)
}

/// The outcome of placing a key.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Placed<T> {
    Linked,
    /// A live flow already holds the key (what `existing` returned).
    Exists(T),
    /// The record to link was no longer live (nothing placed).
    Gone,
    /// The key's chain is too long.
    ChainFull,
}

#[derive(Debug)]
pub(super) struct FlowIndex {
    buckets: super::ZeroedSlice<Bucket>,
    /// Buckets a hash maps to; the rest (MAX_CHAIN) only take overflow.
    homes: u64,
    /// How a bucket about to be locked is asked for.
    write_prefetch: super::WritePrefetch,
}

impl FlowIndex {
    /// Maps every page of the index now (see
    /// [`super::Conntrack::populate`]).
    pub fn populate(&self) -> std::io::Result<()> {
        self.buckets.populate()
    }

    /// An index for `flows` flows (two keys each), zeroed lazily.
    pub fn new(flows: usize) -> FlowIndex {
        let homes = (2 * flows * KEYS_PER_BUCKET_DEN)
            .div_ceil(KEYS_PER_BUCKET_NUM)
            .max(1);
        // SAFETY: a Bucket is eight AtomicU64s, for which all-zero bytes
        // are a valid value (an empty slot, an unlocked bucket).
        let buckets = unsafe { super::zeroed_slice::<Bucket>(homes + MAX_CHAIN) };
        FlowIndex {
            buckets,
            homes: homes as u64,
            write_prefetch: super::WritePrefetch::detect(),
        }
    }

    /// Asks for transparent huge pages under the buckets (see
    /// [`super::advise_huge_pages`]). A table that adopts flows asks only
    /// after adopting them: with the advice, the first touch of each
    /// 2 MiB region clears a whole huge page, and adopting a few hundred
    /// flows at random buckets would clear hundreds of MiB while no
    /// worker runs (35-200 ms measured); khugepaged merges the small
    /// pages they touched later.
    pub fn advise_huge_pages(&self) {
        super::advise_huge_pages(&self.buckets);
    }

    /// The home bucket of a hash (Lemire's multiply-shift reduction of
    /// the low half; the high half is the signature).
    #[inline]
    pub fn home(&self, hash: u64) -> usize {
        (((hash & 0xffff_ffff) * self.homes) >> 32) as usize
    }

    /// Hints the CPU to fetch a hash's home bucket.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if let Some(b) = self.buckets.get(self.home(hash)) {
            super::prefetch(b);
        }
    }

    /// Hints the CPU to fetch the bucket of a key about to be linked
    /// there, for the write (see [`super::WritePrefetch`]).
    #[inline]
    pub fn prefetch_for_write(&self, hash: u64) {
        self.prefetch_home_for_write(self.home(hash));
    }

    /// Hints the CPU to fetch a home bucket by its number, for a write:
    /// an evicted flow's keys are unlinked there.
    #[inline]
    pub fn prefetch_home_for_write(&self, home: usize) {
        if let Some(b) = self.buckets.get(home) {
            self.write_prefetch.item(b);
        }
    }

    /// Calls `check` with the reference of every slot whose signature
    /// matches `hash`, in the key's chain, until it returns `Some`.
    ///
    /// Always inlined: as a call, its result (a found flow, tens of
    /// bytes) went back through the stack, written field by field and
    /// read back in 16-byte loads, which the CPU cannot forward from
    /// the narrower stores, and every lookup waited for them (most of a
    /// cached lookup's time in `perf`; inlined, 1.4x the cached lookups
    /// per second: benches/RESULTS.md, session 16).
    ///
    /// Slot by slot, stopping at the first match: a lookup mostly finds
    /// its key early in the home bucket. With [`signature_matches`]'
    /// scan of all seven, the cached lookups lost an eighth of their
    /// rate, and with it in the batch's prefetch pass
    /// ([`super::Conntrack::prefetch_flow`]), the lookups at 1 M flows a
    /// twentieth (benches/RESULTS.md, session 21).
    #[inline(always)]
    pub fn find<T>(
        &self,
        hash: u64,
        mut check: impl FnMut(RecordId, u32) -> Option<T>,
    ) -> Option<T> {
        let sig = signature(hash);
        let home = self.home(hash);
        for bucket in self.buckets.get(home..)?.iter().take(MAX_CHAIN) {
            for slot in &bucket.slots {
                // Acquire: pairs with the Release in `link`: the record
                // behind a reference was published before it.
                let word = slot.load(Ordering::Acquire);
                if word >> 32 == sig {
                    let (id, direction) = reference(word);
                    if let Some(found) = check(id, direction) {
                        return Some(found);
                    }
                }
            }
            // Acquire: a count seen as zero means no key of this chain
            // sits further on, as of a moment no earlier than the slots
            // read above.
            if bucket.meta.load(Ordering::Acquire) & OVERFLOW == 0 {
                return None;
            }
        }
        None
    }

    /// [`FlowIndex::find`] for a key that is most likely not there (a new
    /// flow's, as [`FlowIndex::link`] checks it and as a lookup whose
    /// second pass found no candidate searches for it; a source NAT
    /// port's reply key): each bucket's seven signatures are compared at
    /// once ([`signature_matches`]), and only the matches are then looked
    /// at.
    /// Its own loop, not a shared one with `find`: behind a shared
    /// generic, the compiler unrolled `find`'s slot loop with a record
    /// check in each of the seven copies, and the lookup grew 2.5-fold
    /// in code (a slower gateway, whose kernel work between batches
    /// leaves little of the packet path in the instruction cache;
    /// benches/RESULTS.md, session 19).
    #[inline(always)]
    pub fn find_likely_absent<T>(
        &self,
        hash: u64,
        mut check: impl FnMut(RecordId, u32) -> Option<T>,
    ) -> Option<T> {
        let sig = signature(hash);
        let home = self.home(hash);
        for bucket in self.buckets.get(home..)?.iter().take(MAX_CHAIN) {
            let mut matches = signature_matches(bucket, sig);
            while matches != 0 {
                let slot = matches.trailing_zeros() as usize;
                matches &= matches - 1;
                // Acquire: as in `find`. Read again: the slot may have
                // changed since its signature was compared.
                let word = bucket.slots.get(slot)?.load(Ordering::Acquire);
                if word >> 32 == sig {
                    let (id, direction) = reference(word);
                    if let Some(found) = check(id, direction) {
                        return Some(found);
                    }
                }
            }
            // Acquire: as in `find`.
            if bucket.meta.load(Ordering::Acquire) & OVERFLOW == 0 {
                return None;
            }
        }
        None
    }

    /// Whether `hash`'s chain may hold a key of that hash: a slot of its
    /// home bucket carries its signature, or the chain goes on past the
    /// home bucket (which [`FlowIndex::find_likely_absent`] then
    /// searches). If not, a lookup that found no candidate ahead (a new
    /// flow's) misses without reading a record or saving a register for
    /// what a match would need (see `Conntrack::lookup_absent`), and a
    /// link places its key without searching for it
    /// ([`FlowIndex::find_existing`]).
    ///
    /// The home bucket only: a loop over the chain was unrolled sixteen
    /// times in the gateway's build (1.7 KB for one lookup's miss). A
    /// key it may hold is then searched from the home bucket again, so
    /// such a lookup or link scans that bucket twice (a dozen
    /// instructions): rare for new flows, whose home bucket seldom
    /// carries their signature or overflows.
    #[inline(always)]
    pub fn may_hold(&self, hash: u64) -> bool {
        let Some(home) = self.buckets.get(self.home(hash)) else {
            return false;
        };
        // Acquire: as in `find`.
        signature_matches(home, signature(hash)) != 0
            || home.meta.load(Ordering::Acquire) & OVERFLOW != 0
    }

    /// Places `word` in the chain of `hash` unless `existing` finds a live
    /// flow for the same key there (checked under the home bucket's lock,
    /// which every writer of this key holds, so two writers of one key
    /// cannot both place it), or `live` says the record `word` names no
    /// longer holds the flow being linked.
    ///
    /// `live` is asked under the chain's locks, just before the slot is
    /// stored; a remover changes a record's sequence before it unlinks
    /// the record's keys, and looks for a slot it did not find in the
    /// home bucket under the same locks. So either `live` sees the
    /// removal and nothing is placed, or the remover finds the slot
    /// (stored, or under these locks after us): no slot outlives its
    /// flow. (A slot word names a record, not a flow: a slot left behind
    /// would be taken for the record's next flow of the same key.)
    #[inline]
    pub fn link<T>(
        &self,
        hash: u64,
        word: u64,
        existing: impl FnMut(RecordId, u32) -> Option<T>,
        live: impl FnOnce() -> bool,
    ) -> Placed<T> {
        let home = self.home(hash);
        let Some(home_bucket) = self.buckets.get(home) else {
            return Placed::ChainFull;
        };
        let _home = HomeLock::new(self, home);
        if self.may_hold(hash) {
            if let Some(found) = self.find_existing(hash, existing) {
                return Placed::Exists(found);
            }
        }
        let Some(free) = home_bucket.free_slot() else {
            return self.link_past_home(home, word, live);
        };
        if !live() {
            return Placed::Gone;
        }
        // Release: the record is visible to a reader that sees the
        // reference.
        free.store(word, Ordering::Release);
        Placed::Linked
    }

    /// [`FlowIndex::link`]'s check for a live flow of the key, for a chain
    /// that may hold one ([`FlowIndex::may_hold`]; almost never, but for
    /// a chain that overflows). Out of line, so a link that needs no
    /// search neither copies the key to the stack for it nor keeps
    /// registers for a record's decoded flow (as a lookup's miss,
    /// `Conntrack::lookup_absent`).
    #[inline(never)]
    fn find_existing<T>(
        &self,
        hash: u64,
        existing: impl FnMut(RecordId, u32) -> Option<T>,
    ) -> Option<T> {
        self.find_likely_absent(hash, existing)
    }

    /// [`FlowIndex::link`] when the home bucket is full (under its lock):
    /// places `word` in the first bucket after it with room, locking the
    /// chain up to it, and counts it as overflowing in every bucket it
    /// passed. Out of line: a table at most half full rarely comes here,
    /// and the home bucket's path stays short.
    #[cold]
    #[inline(never)]
    fn link_past_home<T>(&self, home: usize, word: u64, live: impl FnOnce() -> bool) -> Placed<T> {
        let mut held = Held::after(self, home);
        for b in home + 1..home + MAX_CHAIN {
            if !held.extend_to(b) {
                break;
            }
            let Some(bucket) = self.buckets.get(b) else {
                break;
            };
            if let Some(free) = bucket.free_slot() {
                if !live() {
                    return Placed::Gone;
                }
                for passed in &self.buckets[home..b] {
                    // Relaxed: under the lock; published with the slot.
                    let meta = passed.meta.load(Ordering::Relaxed);
                    passed.meta.store(meta + 1, Ordering::Relaxed);
                }
                // Release: the record and the counts above are visible to
                // a reader that sees the reference.
                free.store(word, Ordering::Release);
                return Placed::Linked;
            }
        }
        Placed::ChainFull
    }

    /// Clears the slot holding exactly `word` in the chain of `hash`.
    /// Returns whether it was there.
    pub fn unlink(&self, hash: u64, word: u64) -> bool {
        self.unlink_matching(self.home(hash), u64::MAX, word)
    }

    /// Clears the slot of record `id`'s key in `direction` in the chain
    /// from bucket `home`, for a remover that kept the key's home but not
    /// its hash (the eviction queue: rehashing a victim's two keys cost
    /// more than the rest of its unlinks). Returns whether it was there.
    ///
    /// The reference alone names the slot: a record holds one flow at a
    /// time, and no slot outlives its flow (see the module's docs), so
    /// the only slot with this reference is the one of the flow the
    /// caller claimed. The signature's lowest bit, always set in a slot
    /// in use, tells it from an empty slot (reference 0 is record 0's
    /// forward key).
    ///
    /// Only the flow's remover (the caller, who claimed it) calls this,
    /// and a slot found in the home bucket is cleared without the lock:
    /// a link stores its slot once, under the lock, so a slot found is a
    /// link done, and no one but the flow's remover stores to a slot in
    /// use (a linker takes empty slots only). A slot not found there is
    /// searched for under the locks: its link may still be under way
    /// (its linker then sees, under the lock, that the flow was claimed,
    /// and places nothing), or it sits further down the chain, whose
    /// overflow counts change with it. A lock is a locked instruction,
    /// which waits for every store before it to reach the cache: a
    /// flood's eviction unlinked two keys with two of them (benches/
    /// RESULTS.md, session 24).
    #[inline]
    pub fn unlink_reference(&self, home: usize, id: RecordId, direction: u32) -> bool {
        let want = 1 << 32 | u64::from(slot_reference(id, direction));
        if let Some(slot) = self
            .buckets
            .get(home)
            .and_then(|bucket| bucket.slot_matching(REFERENCE_AND_IN_USE, want))
        {
            // Release: pairs with `find`'s Acquire, as in
            // `unlink_matching`.
            slot.store(0, Ordering::Release);
            return true;
        }
        self.unlink_reference_locked(home, want)
    }

    /// [`FlowIndex::unlink_reference`]'s search under the locks, for a
    /// slot not found in the home bucket. Out of line: rare, and inlined
    /// its locking and calls made every unlink save and restore six
    /// registers (14 instructions of the home bucket's 30 or so).
    #[cold]
    #[inline(never)]
    fn unlink_reference_locked(&self, home: usize, want: u64) -> bool {
        self.unlink_matching(home, REFERENCE_AND_IN_USE, want)
    }

    /// Clears the first slot whose bits under `mask` equal `want`, in
    /// the chain from bucket `home`, and lowers the overflow counts of
    /// the buckets it had passed. The home bucket is searched inline;
    /// the rest of the chain, rarely there, out of line.
    #[inline]
    fn unlink_matching(&self, home: usize, mask: u64, want: u64) -> bool {
        let Some(home_bucket) = self.buckets.get(home) else {
            return false;
        };
        let _home = HomeLock::new(self, home);
        if let Some(slot) = home_bucket.slot_matching(mask, want) {
            // Release: pairs with `find`'s Acquire, for symmetry with
            // `link`; an empty slot publishes nothing.
            slot.store(0, Ordering::Release);
            return true;
        }
        // Relaxed: under the lock.
        home_bucket.meta.load(Ordering::Relaxed) & OVERFLOW != 0
            && self.unlink_past_home(home, mask, want)
    }

    /// [`FlowIndex::unlink_matching`] past the home bucket (under its
    /// lock), locking the chain as far as it searches.
    #[cold]
    #[inline(never)]
    fn unlink_past_home(&self, home: usize, mask: u64, want: u64) -> bool {
        let mut held = Held::after(self, home);
        for b in home + 1..home + MAX_CHAIN {
            if !held.extend_to(b) {
                return false;
            }
            let Some(bucket) = self.buckets.get(b) else {
                return false;
            };
            if let Some(slot) = bucket.slot_matching(mask, want) {
                // Release: as in `unlink_matching`.
                slot.store(0, Ordering::Release);
                for passed in &self.buckets[home..b] {
                    // Relaxed: under the lock.
                    let meta = passed.meta.load(Ordering::Relaxed);
                    if meta & OVERFLOW != 0 {
                        passed.meta.store(meta - 1, Ordering::Relaxed);
                    }
                }
                return true;
            }
            // Relaxed: under the lock.
            if bucket.meta.load(Ordering::Relaxed) & OVERFLOW == 0 {
                return false;
            }
        }
        false
    }

    /// Slots in use, and whether every overflow count equals the keys
    /// that sit past its bucket (tests).
    #[cfg(test)]
    pub fn audit(&self, home_of: impl Fn(u64) -> usize) -> (usize, bool) {
        let mut used = 0;
        let mut counts = vec![0u64; self.buckets.len()];
        for (b, bucket) in self.buckets.iter().enumerate() {
            for slot in &bucket.slots {
                let word = slot.load(Ordering::Relaxed);
                if word != 0 {
                    used += 1;
                    for passed in &mut counts[home_of(word)..b] {
                        *passed += 1;
                    }
                }
            }
        }
        let consistent = self
            .buckets
            .iter()
            .zip(&counts)
            .all(|(bucket, &c)| bucket.meta.load(Ordering::Relaxed) == c);
        (used, consistent)
    }

    /// Keys that overflowed past a bucket (tests and diagnostics).
    #[cfg(test)]
    pub fn overflow(&self, bucket: usize) -> u64 {
        self.buckets[bucket].meta.load(Ordering::Relaxed) & OVERFLOW
    }

    /// Takes bucket `b`'s lock: one compare-exchange when it is free
    /// (inlined into every writer), the spinning out of line.
    #[inline]
    fn lock(&self, b: usize) {
        let Some(bucket) = self.buckets.get(b) else {
            return;
        };
        // Relaxed: a test before the swap, to spin on a shared line.
        let meta = bucket.meta.load(Ordering::Relaxed);
        if meta & LOCKED == 0
            && bucket
                .meta
                // Acquire: what the last holder wrote under the lock is
                // visible to us.
                .compare_exchange_weak(meta, meta | LOCKED, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return;
        }
        Self::lock_contended(bucket);
    }

    #[cold]
    #[inline(never)]
    fn lock_contended(bucket: &Bucket) {
        let mut spins = 0u32;
        loop {
            // Relaxed: a test before the swap, to spin on a shared line.
            let meta = bucket.meta.load(Ordering::Relaxed);
            if meta & LOCKED == 0
                && bucket
                    .meta
                    .compare_exchange_weak(
                        meta,
                        meta | LOCKED,
                        // Acquire: as in `lock`.
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return;
            }
            spins += 1;
            if spins % 64 == 0 {
                // The holder may have been preempted on our core.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    #[inline]
    fn unlock(&self, b: usize) {
        if let Some(bucket) = self.buckets.get(b) {
            // Relaxed: only the lock holder writes the meta word, so a
            // plain load and store clear the bit without a locked
            // instruction.
            let meta = bucket.meta.load(Ordering::Relaxed);
            // Release: what we wrote under the lock is visible to the next
            // holder.
            bucket.meta.store(meta & !LOCKED, Ordering::Release);
        }
    }
}

/// The lock of a key's home bucket, released on drop: every writer of a
/// key holds it, so two writers of one key never both place it.
struct HomeLock<'a> {
    index: &'a FlowIndex,
    home: usize,
}

impl<'a> HomeLock<'a> {
    #[inline]
    fn new(index: &'a FlowIndex, home: usize) -> HomeLock<'a> {
        index.lock(home);
        HomeLock { index, home }
    }
}

impl Drop for HomeLock<'_> {
    #[inline]
    fn drop(&mut self) {
        self.index.unlock(self.home);
    }
}

/// Locks of the buckets after a home bucket (whose lock the caller
/// holds), from `first` to `last`, released on drop; none while `last`
/// is below `first`.
struct Held<'a> {
    index: &'a FlowIndex,
    first: usize,
    last: usize,
}

impl<'a> Held<'a> {
    /// None yet: the chain after `home`.
    fn after(index: &'a FlowIndex, home: usize) -> Held<'a> {
        Held {
            index,
            first: home + 1,
            last: home,
        }
    }

    /// Locks buckets up to `b`; false when `b` is past the index.
    fn extend_to(&mut self, b: usize) -> bool {
        if b >= self.index.buckets.len() {
            return false;
        }
        while self.last < b {
            self.last += 1;
            self.index.lock(self.last);
        }
        true
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        for b in self.first..=self.last {
            self.index.unlock(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash whose home is bucket 0 of a one-home index, with a
    /// signature of its own for each `n` below 2^31 (the signature's
    /// lowest bit is always set).
    fn hash(n: u32) -> u64 {
        u64::from(n) << 33
    }

    #[test]
    fn a_buckets_signatures_are_matched_the_same_at_once_as_slot_by_slot() {
        let sigs = [signature(hash(1)), signature(hash(2)), signature(u64::MAX)];
        let bucket = Bucket::default();
        // Every mix of the three signatures and empty slots over the
        // seven slots, with the meta word locked, counting, or both.
        let mut rng = crate::lb::Rng::new(7);
        for round in 0..2_000 {
            let meta = [0, LOCKED, LOCKED | 13, 5][round % 4];
            bucket.meta.store(meta, Ordering::Relaxed);
            for (i, slot) in bucket.slots.iter().enumerate() {
                let word = match rng.below(4) {
                    3 => 0,
                    k => slot_word(u64::from(sigs[k] as u32) << 32, i as u32, FORWARD),
                };
                slot.store(word, Ordering::Relaxed);
            }
            for sig in sigs {
                assert_eq!(
                    signature_matches(&bucket, sig),
                    signature_matches_by_slot(&bucket, sig),
                    "round {round}, signature {sig:#x}"
                );
            }
        }
        // Each slot alone, the first and the last among them.
        for i in 0..SLOTS {
            for slot in &bucket.slots {
                slot.store(0, Ordering::Relaxed);
            }
            bucket.slots[i].store(slot_word(hash(9), 1, REPLY), Ordering::Relaxed);
            assert_eq!(signature_matches(&bucket, signature(hash(9))), 1 << i);
        }
    }

    #[test]
    fn full_buckets_overflow_into_the_next_and_counts_track_it() {
        let index = FlowIndex::new(1);
        assert_eq!(index.homes, 1);
        let words: Vec<u64> = (1..=20)
            .map(|id| slot_word(hash(id), id, FORWARD))
            .collect();
        for (i, &w) in words.iter().enumerate() {
            let placed = index.link(hash(i as u32 + 1), w, |_, _| None::<()>, || true);
            assert_eq!(placed, Placed::Linked, "key {i}");
        }
        // 7 at home, 7 in the next, 6 in the third.
        assert_eq!(
            (index.overflow(0), index.overflow(1), index.overflow(2)),
            (13, 6, 0)
        );
        for (i, &w) in words.iter().enumerate() {
            let found = index.find(hash(i as u32 + 1), |id, _| Some(id));
            assert_eq!(found, Some(reference(w).0), "key {i} is found");
        }
        // Removing a key from the third bucket lowers both counts.
        assert!(index.unlink(hash(20), words[19]));
        assert_eq!((index.overflow(0), index.overflow(1)), (12, 5));
        assert!(!index.unlink(hash(20), words[19]), "already gone");
        assert_eq!(index.find(hash(20), |id, _| Some(id)), None);
        // A freed home slot is reused before the chain grows.
        assert!(index.unlink(hash(1), words[0]));
        assert_eq!(
            index.link(
                hash(99),
                slot_word(hash(99), 99, REPLY),
                |_, _| None::<()>,
                || true
            ),
            Placed::Linked
        );
        assert_eq!(index.overflow(0), 12);
        assert_eq!(
            index.find(hash(99), |id, d| Some((id, d))),
            Some((99, REPLY))
        );
    }

    #[test]
    fn unlink_by_reference_clears_only_that_records_slot() {
        let index = FlowIndex::new(1);
        // Record 0's forward key has reference 0, the content of an
        // empty slot's low half: an empty slot ahead of it must not
        // match. Record 1 takes the home bucket's first slot and record
        // 0 the second; the first is freed below.
        let words: Vec<u64> = (0..10)
            .map(|id| slot_word(hash(id + 1), id, if id == 8 { REPLY } else { FORWARD }))
            .collect();
        for id in [1, 0, 2, 3, 4, 5, 6, 7, 8, 9] {
            let placed = index.link(hash(id + 1), words[id as usize], |_, _| None::<()>, || true);
            assert_eq!(placed, Placed::Linked, "record {id}");
        }
        assert_eq!(index.overflow(0), 3, "records 7 to 9 overflowed");
        assert!(index.unlink(hash(2), words[1]), "record 1 unlinked by word");
        assert!(
            !index.unlink_reference(0, 8, FORWARD),
            "record 8 holds only its reply key"
        );
        assert!(index.unlink_reference(0, 8, REPLY), "record 8's reply key");
        assert_eq!(index.overflow(0), 2, "its overflow counted out");
        assert!(
            index.unlink_reference(0, 0, FORWARD),
            "record 0, reference 0"
        );
        assert_eq!(index.find(hash(1), |id, _| Some(id)), None);
        assert!(!index.unlink_reference(0, 0, FORWARD), "already gone");
        for id in [2, 3, 4, 5, 6, 7, 9] {
            assert_eq!(
                index.find(hash(id + 1), |found, _| Some(found)),
                Some(id),
                "record {id} is still found"
            );
        }
        let (used, consistent) = index.audit(|_| 0);
        assert_eq!((used, consistent), (7, true));
    }

    /// A remover clears its slot in the home bucket without the lock
    /// (a linker of another key may hold it), and one past the home
    /// bucket under the locks, once the holder lets go.
    #[test]
    fn a_remover_clears_its_home_slot_while_a_linker_holds_the_lock() {
        let index = FlowIndex::new(1);
        for id in 1..=8 {
            let placed = index.link(
                hash(id),
                slot_word(hash(id), id, FORWARD),
                |_, _| None::<()>,
                || true,
            );
            assert_eq!(placed, Placed::Linked, "record {id}");
        }
        assert_eq!(index.overflow(0), 1, "record 8 sits past the home bucket");
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let holder = HomeLock::new(&index, 0);
            s.spawn(|| {
                let cleared = index.unlink_reference(0, 3, FORWARD);
                done.send(("home", cleared)).expect("the test waits");
                let cleared = index.unlink_reference(0, 8, FORWARD);
                done.send(("past home", cleared)).expect("the test waits");
            });
            assert_eq!(
                finished.recv_timeout(std::time::Duration::from_secs(60)),
                Ok(("home", true)),
                "the home bucket's slot is cleared while its lock is held"
            );
            drop(holder);
            assert_eq!(
                finished.recv_timeout(std::time::Duration::from_secs(60)),
                Ok(("past home", true)),
                "the slot past home is cleared once the lock is free"
            );
        });
        assert_eq!(index.overflow(0), 0, "record 8's overflow counted out");
        assert_eq!(index.find(hash(3), |id, _| Some(id)), None);
        let (used, consistent) = index.audit(|_| 0);
        assert_eq!((used, consistent), (6, true));
    }

    #[test]
    fn link_reports_an_existing_key_and_chains_have_an_end() {
        let index = FlowIndex::new(1);
        let w = slot_word(hash(5), 5, FORWARD);
        assert_eq!(
            index.link(hash(5), w, |_, _| None::<()>, || true),
            Placed::Linked
        );
        assert_eq!(
            index.link(hash(5), w, |id, _| Some(id), || true),
            Placed::Exists(5)
        );
        assert_eq!(
            index.link(
                hash(6),
                slot_word(hash(6), 6, FORWARD),
                |_, _| None::<()>,
                || false
            ),
            Placed::Gone,
            "a record no longer live gets no slot"
        );
        assert_eq!(index.find(hash(6), |id, _| Some(id)), None);
        let mut placed = 1;
        while index.link(
            hash(7),
            slot_word(hash(7), 7, FORWARD),
            |_, _| None::<()>,
            || true,
        ) == Placed::Linked
        {
            placed += 1;
            assert!(placed <= SLOTS * MAX_CHAIN, "the chain must end");
        }
        assert_eq!(placed, SLOTS * MAX_CHAIN);
    }
}
