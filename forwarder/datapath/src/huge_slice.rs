//! A slice on memory of its own, aligned to a 2 MiB huge page and advised
//! for transparent huge pages (MADV_HUGEPAGE), for a worker's flow caches
//! ([`crate::pipeline`]); and [`page_backing`], which reads back what the
//! kernel made of such advice, for the gateway's start-up report on its
//! UMEMs and for tests.
//!
//! Each packet a flow cache serves reads an entry at random over its 448
//! KiB (IPv4) or 832 KiB (IPv6). On 4 KiB pages that is 112 or 208 pages,
//! more than the core's first-level TLB holds, and the kernel's work on a
//! gateway core between two batches (the receive path, the copy-mode
//! transmit) evicts their entries from the second level as well (as the
//! profiles suggest; the host that measured it has no TLB counters): a
//! page walk, nested in a VM, before the entry's line. On one huge page
//! one TLB entry covers a whole cache, and the worker's own time per
//! packet fell by 13-22% on veth (benches/RESULTS.md, session 34). The
//! connection table advises its pages likewise
//! ([`crate::conntrack::advise_huge_pages`]), but it spans many huge pages
//! already; a cache smaller than one gets one only if it is placed on one.
//!
//! Where transparent huge pages are off, or the kernel has none at hand,
//! the slice works the same on small pages, of which only those written
//! are backed.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The huge page size the slice is aligned to (x86-64's and arm64's
/// with 4 KiB base pages).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// Advises the whole pages of `[start, start + bytes)` for transparent
/// huge pages (MADV_HUGEPAGE); a range smaller than a huge page is left
/// alone, as none fits in it. Only a hint: where transparent huge pages
/// are off, or the kernel has none at hand, the memory stays on small
/// pages, and works the same.
///
/// # Safety
///
/// The range lies inside an allocation the caller owns. (MADV_HUGEPAGE
/// changes how the kernel backs the pages, never their contents.)
pub(crate) unsafe fn advise_huge_pages(start: usize, bytes: usize) {
    if bytes < HUGE_PAGE {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let aligned = start.next_multiple_of(page);
    let len = (start + bytes - aligned) / page * page;
    // SAFETY: [aligned, aligned + len) lies inside [start, start + bytes),
    // which the caller owns.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

/// How the kernel backs one mapping of this process, from
/// /proc/self/smaps: to tell whether memory advised for huge pages got
/// them. The figures are the mapping's, which the kernel may have merged
/// with adjacent mappings of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBacking {
    /// The mapping's size.
    pub size_kib: u64,
    /// How much of it transparent huge pages back (`AnonHugePages`).
    pub transparent_huge_kib: u64,
    /// Whether the kernel may back it with transparent huge pages
    /// (`THPeligible`): advised, or THP `always`, and not off.
    pub thp_eligible: bool,
}

/// The backing of the mapping that holds `addr`, or `None` where
/// /proc/self/smaps is unreadable or no mapping holds it. Reads the whole
/// file: for start-up reports and tests, not for a data path.
pub fn page_backing(addr: usize) -> Option<PageBacking> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut lines = smaps.lines();
    // A mapping's header line is "low-high perms ...": its fields follow
    // until the next header.
    let header_holds = |line: &str| -> Option<bool> {
        let (low, high) = line.split_once(' ')?.0.split_once('-')?;
        let low = usize::from_str_radix(low, 16).ok()?;
        let high = usize::from_str_radix(high, 16).ok()?;
        Some((low..high).contains(&addr))
    };
    lines.find(|line| header_holds(line) == Some(true))?;
    let mut backing = PageBacking {
        size_kib: 0,
        transparent_huge_kib: 0,
        thp_eligible: false,
    };
    for line in lines.take_while(|line| header_holds(line).is_none()) {
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let kib = || value.trim_end_matches(" kB").parse().unwrap_or(0);
        match field {
            "Size" => backing.size_kib = kib(),
            "AnonHugePages" => backing.transparent_huge_kib = kib(),
            "THPeligible" => backing.thp_eligible = value == "1",
            _ => {}
        }
    }
    Some(backing)
}

/// `len` `T`s starting on a huge page boundary, in an allocation rounded
/// up to whole huge pages.
pub(crate) struct HugePageSlice<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: the slice owns its elements as a `Box<[T]>` would, and is sent
// or shared as one.
unsafe impl<T: Send> Send for HugePageSlice<T> {}
// SAFETY: as above: `&HugePageSlice<T>` gives out only `&[T]`.
unsafe impl<T: Sync> Sync for HugePageSlice<T> {}

impl<T: Clone> HugePageSlice<T> {
    /// `len` clones of `fill`, on memory advised for huge pages before its
    /// first write (the write that has the kernel back it).
    ///
    /// # Panics
    ///
    /// If the size overflows `usize`; aborts if the allocation fails, as
    /// `Box` does.
    pub(crate) fn filled(fill: T, len: usize) -> Self {
        // No memory for no bytes: zero elements, or zero-sized ones.
        let ptr = Self::layout(len).map_or(NonNull::dangling(), |layout| {
            // SAFETY: `layout` has a non-zero size (see `layout`).
            let raw = unsafe { alloc(layout) };
            let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
                handle_alloc_error(layout)
            };
            // SAFETY: [raw, raw + size) is the allocation just made, which
            // this slice owns.
            unsafe { advise_huge_pages(raw as usize, layout.size()) };
            ptr
        });
        for i in 0..len {
            // SAFETY: `i < len`, inside the allocation, which `layout`
            // sized and aligned for `len` `T`s (or, with no allocation, a
            // zero-sized write to a well-aligned dangling pointer).
            unsafe { ptr.add(i).write(fill.clone()) };
        }
        Self { ptr, len }
    }
}

impl<T> HugePageSlice<T> {
    /// The allocation of `len` `T`s, `None` if it would be empty.
    fn layout(len: usize) -> Option<Layout> {
        let bytes = std::mem::size_of::<T>()
            .checked_mul(len)
            .expect("huge page slice size overflows");
        if bytes == 0 {
            return None;
        }
        let size = bytes
            .checked_next_multiple_of(HUGE_PAGE)
            .expect("huge page slice size overflows");
        let align = HUGE_PAGE.max(std::mem::align_of::<T>());
        Some(
            Layout::from_size_align(size, align)
                .expect("a power-of-two alignment and a size under isize::MAX"),
        )
    }
}

impl<T> Default for HugePageSlice<T> {
    /// An empty slice, with no allocation.
    fn default() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl<T> Drop for HugePageSlice<T> {
    fn drop(&mut self) {
        // SAFETY: the elements are initialized (see `deref`) and dropped
        // once, here; nothing reads them after.
        unsafe { std::ptr::drop_in_place(&mut **self as *mut [T]) };
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: allocated in `filled` with this same layout (`len`
            // never changes).
            unsafe { dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

impl<T> Deref for HugePageSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` holds `len` initialized `T`s (written in
        // `filled`), or is dangling and well aligned with `len` 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> DerefMut for HugePageSlice<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> std::fmt::Debug for HugePageSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugePageSlice")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_starts_on_a_huge_page_and_holds_its_fill() {
        let mut slice = HugePageSlice::filled((7u64, 9u32), 10_000);
        assert_eq!(slice.len(), 10_000, "the length asked for");
        assert_eq!(
            slice.as_ptr() as usize % HUGE_PAGE,
            0,
            "the slice starts on a huge page boundary"
        );
        assert!(
            slice.iter().all(|&e| e == (7, 9)),
            "every element is the fill"
        );
        slice[9_999] = (1, 2);
        assert_eq!(slice[9_999], (1, 2), "elements are writable");
        let moved = std::thread::spawn(move || slice[0])
            .join()
            .expect("the slice moves to another thread");
        assert_eq!(moved, (7, 9));
    }

    #[test]
    fn dropping_the_slice_drops_every_element() {
        let shared = std::sync::Arc::new(());
        let slice = HugePageSlice::filled(std::sync::Arc::clone(&shared), 1_000);
        assert_eq!(
            std::sync::Arc::strong_count(&shared),
            1_001,
            "a clone per element"
        );
        drop(slice);
        assert_eq!(
            std::sync::Arc::strong_count(&shared),
            1,
            "every clone dropped"
        );
    }

    #[test]
    fn an_empty_slice_allocates_nothing() {
        let empty = HugePageSlice::filled(0u8, 0);
        assert!(empty.is_empty(), "no elements");
        let default = HugePageSlice::<u32>::default();
        assert!(default.is_empty(), "the default is empty");
        let zero_sized = HugePageSlice::filled((), 5);
        assert_eq!(zero_sized.len(), 5, "zero-sized elements need no memory");
    }

    /// The slice's memory is advised for transparent huge pages: the
    /// kernel marks its mapping eligible (`THPeligible: 1` in
    /// /proc/self/smaps) wherever transparent huge pages are not off.
    /// Whether a huge page backs it also depends on the free memory's
    /// fragmentation, which a test cannot control.
    #[test]
    fn its_memory_is_eligible_for_transparent_huge_pages() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if thp.is_empty() || thp.contains("[never]") {
            eprintln!("transparent huge pages are off here: nothing to check");
            return;
        }
        let slice = HugePageSlice::filled(1u8, HUGE_PAGE);
        let start = slice.as_ptr() as usize;
        let backing = page_backing(start).expect("/proc/self/smaps has the slice's mapping");
        assert!(
            backing.thp_eligible,
            "the mapping at {start:#x} is eligible for transparent huge pages (THP: {}): {backing:?}",
            thp.trim()
        );
        assert!(
            backing.size_kib >= (HUGE_PAGE >> 10) as u64,
            "the mapping at {start:#x} spans the slice's huge page: {backing:?}"
        );
    }
}
