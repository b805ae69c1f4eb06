pub use inner::Mmap;

use std::{io, ptr::NonNull};

/// The size of the huge pages `MAP_HUGETLB` maps (the kernel's
/// default, "Hugepagesize" in /proc/meminfo), or 2 MiB where
/// it cannot be read.
fn hugetlb_page_size() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let kib = info.lines().find_map(|l| l.strip_prefix("Hugepagesize:"))?;
            kib.trim().strip_suffix("kB")?.trim().parse::<usize>().ok()
        })
        .filter(|&kib| kib > 0)
        .map_or(2 << 20, |kib| kib << 10)
}

#[cfg(not(test))]
mod inner {
    use libc::{
        MADV_DONTFORK, MADV_HUGEPAGE, MADV_POPULATE_WRITE, MAP_ANONYMOUS, MAP_FAILED, MAP_HUGETLB,
        MAP_POPULATE, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE,
    };
    use log::error;
    use std::ptr;

    use super::*;

    /// The size of a transparent huge page (x86-64, arm64 with 4 KiB
    /// pages).
    const HUGE_PAGE: usize = 2 << 20;

    /// The base page size the fallback population steps by.
    const BASE_PAGE: usize = 4096;

    /// An anonymous memory mapped region.
    #[derive(Debug)]
    pub struct Mmap {
        addr: NonNull<libc::c_void>,
        /// The length mapped, which `munmap()` is given back: `len`
        /// rounded up to whole huge pages where the region is aligned
        /// for transparent huge pages or on hugetlbfs.
        len: usize,
    }

    unsafe impl Send for Mmap {}

    impl Mmap {
        /// Maps `len` bytes, populated up front so the data path takes
        /// no page fault.
        ///
        /// With `use_huge_pages` the region comes from the reserved
        /// hugetlbfs pool (`MAP_HUGETLB`), and fails where too few are
        /// free.
        ///
        /// Otherwise (cipgw's patch, see `CIPGW-PATCH.md`) a region of
        /// at least one huge page is private anonymous memory aligned to
        /// 2 MiB, rounded up to whole huge pages and advised
        /// `MADV_HUGEPAGE` before it is populated. Where transparent huge
        /// pages are `always` or `madvise` the kernel backs it with 2 MiB
        /// pages, which no reservation needs: the header prefetch of
        /// each received frame then finds its translation in the TLB.
        /// Where they are `never` it is on 4 KiB pages, as upstream's
        /// shared mapping is.
        pub fn new(len: usize, use_huge_pages: bool) -> io::Result<Self> {
            if use_huge_pages || len < HUGE_PAGE {
                // As upstream maps every UMEM.
                // MAP_ANONYMOUS: mapping not backed by a file.
                // MAP_SHARED: shares this mapping, so changes are visible
                // to other processes mapping the same file.
                // MAP_POPULATE: pre-populate page tables, reduces
                // blocking on page faults later.
                let mut flags = MAP_ANONYMOUS | MAP_SHARED | MAP_POPULATE;
                let mut len = len;
                if use_huge_pages {
                    flags |= MAP_HUGETLB;
                    // The kernel maps whole huge pages, and `munmap()`
                    // of a hugetlbfs mapping fails (EINVAL) on a length
                    // that is not a whole number of them (cipgw patch).
                    len = len.next_multiple_of(hugetlb_page_size());
                }
                // SAFETY: a fresh anonymous mapping; no existing memory is
                // touched.
                let addr = unsafe {
                    libc::mmap(ptr::null_mut(), len, PROT_READ | PROT_WRITE, flags, -1, 0)
                };
                return Self::mapped(addr, len);
            }
            let len = len.next_multiple_of(HUGE_PAGE);
            // One huge page more than needed, so that a 2 MiB boundary
            // lies within the first huge page; the slack is unmapped
            // below.
            let slack_len = len + HUGE_PAGE;
            // SAFETY: as above; not populated yet, so that the advice
            // comes before the first page is taken.
            let raw = unsafe {
                libc::mmap(
                    ptr::null_mut(),
                    slack_len,
                    PROT_READ | PROT_WRITE,
                    MAP_ANONYMOUS | MAP_PRIVATE,
                    -1,
                    0,
                )
            };
            if raw == MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let raw = raw as usize;
            let start = raw.next_multiple_of(HUGE_PAGE);
            let head = start - raw;
            let tail = slack_len - head - len;
            // SAFETY: both ranges lie in the mapping just made, outside
            // [start, start + len), and nothing refers to them.
            unsafe {
                if head > 0 {
                    libc::munmap(raw as *mut libc::c_void, head);
                }
                if tail > 0 {
                    libc::munmap((start + len) as *mut libc::c_void, tail);
                }
            }
            let region = Self::mapped(start as *mut libc::c_void, len)?;
            // SAFETY: advice on the mapping this function owns. It fails
            // only where the kernel has no transparent huge pages, and
            // then the region stays on 4 KiB pages.
            unsafe { libc::madvise(region.addr.as_ptr(), len, MADV_HUGEPAGE) };
            // Private memory would be copied into a forked child (pinned
            // pages are copied at the fork, not shared as upstream's
            // shared mapping is); a child has no use for the UMEM.
            // SAFETY: as above; the advice changes only what a fork
            // inherits.
            unsafe { libc::madvise(region.addr.as_ptr(), len, MADV_DONTFORK) };
            region.populate();
            Ok(region)
        }

        fn mapped(addr: *mut libc::c_void, len: usize) -> io::Result<Self> {
            if addr == MAP_FAILED {
                Err(io::Error::last_os_error())
            } else {
                let addr =
                    NonNull::new(addr).expect("ptr non-null since we confirmed `mmap()` succeeded");

                Ok(Mmap { addr, len })
            }
        }

        /// Takes every page of the region now, as `MAP_POPULATE` would
        /// have: `MADV_POPULATE_WRITE` (Linux 5.14), else a write to each
        /// base page.
        fn populate(&self) {
            // SAFETY: the range is this mapping, readable and writable.
            let populated =
                unsafe { libc::madvise(self.addr.as_ptr(), self.len, MADV_POPULATE_WRITE) == 0 };
            if !populated {
                let base = self.addr.as_ptr().cast::<u8>();
                for offset in (0..self.len).step_by(BASE_PAGE) {
                    // SAFETY: `offset` is within the mapping, which no
                    // one else refers to yet; a zero is what the page
                    // already holds.
                    unsafe { ptr::write_volatile(base.add(offset), 0) };
                }
            }
        }

        /// Returns a pointer to the start of the mmap'd region.
        #[inline]
        pub fn addr(&self) -> NonNull<libc::c_void> {
            self.addr
        }
    }

    impl Drop for Mmap {
        fn drop(&mut self) {
            let err = unsafe { libc::munmap(self.addr.as_ptr(), self.len) };

            if err != 0 {
                error!(
                    "`munmap()` failed with error: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

#[cfg(test)]
mod inner {
    use std::mem::ManuallyDrop;

    use super::*;

    #[derive(Debug)]
    struct VecParts<T> {
        ptr: NonNull<T>,
        len: usize,
        capacity: usize,
    }

    unsafe impl<T> Send for VecParts<T> {}

    impl<T> VecParts<T> {
        fn new(v: Vec<T>) -> Self {
            let mut v = ManuallyDrop::new(v);

            Self {
                ptr: NonNull::new(v.as_mut_ptr()).expect("obtained pointer from Vec"),
                len: v.len(),
                capacity: v.capacity(),
            }
        }
    }

    impl<T> Drop for VecParts<T> {
        fn drop(&mut self) {
            unsafe { Vec::from_raw_parts(self.ptr.as_ptr(), self.len, self.capacity) };
        }
    }

    /// A mocked [`Mmap`] that uses the heap for memory.
    #[derive(Debug)]
    pub struct Mmap(VecParts<u8>);

    impl Mmap {
        pub fn new(len: usize, _use_huge_pages: bool) -> io::Result<Self> {
            Ok(Self(VecParts::new(vec![0; len])))
        }

        /// Returns a pointer to the start of the mmap'd region.
        #[inline]
        pub fn addr(&self) -> NonNull<libc::c_void> {
            NonNull::new(self.0.ptr.as_ptr() as *mut libc::c_void).unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn confirm_pointer_offset_is_a_single_byte() {
        assert_eq!(std::mem::size_of::<libc::c_void>(), 1);
    }

    #[cfg(not(miri))]
    #[test]
    fn hugetlb_pages_are_whole_base_pages() {
        let size = super::hugetlb_page_size();
        assert!(size >= 2 << 20, "{size}");
        assert_eq!(size % 4096, 0, "{size}");
    }
}
