//! The eviction queues: flows that may make way for new ones, oldest
//! first, behind a spin lock. Each worker has a pair (`PerWorker` in the
//! parent module). One holds flows not yet assured (every new flow passes
//! through its worker's once: queued, and in a flood one older flow
//! evicted, for a few dozen nanoseconds under the lock); the other holds
//! assured flows that began to close. The
//! lock is a test-and-test-and-set whose release is a plain store, so a
//! round costs one locked instruction; std's `Mutex` adds a second one
//! (an exchange on release, for its waiter bookkeeping), which on this
//! path is measurable.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::slab::RecordId;

/// An unreplied flow waiting in the queue: its record, the sequence it
/// had (a reused record is a different flow), and its two home buckets,
/// so the queue can prefetch what evicting it will touch and the
/// eviction unlinks its keys without hashing them again.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Queued {
    pub id: RecordId,
    pub seq: u32,
    pub forward_home: u32,
    pub reply_home: u32,
}

/// A closing flow waiting in the closing queue: its record and the
/// sequence it had. Evictions from this queue are rare (a table full of
/// assured flows), so it keeps no buckets to prefetch.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Closing {
    pub id: RecordId,
    pub seq: u32,
}

/// Bytes of queue per flow: one entry in each queue.
pub(super) const QUEUE_BYTES: usize =
    std::mem::size_of::<Queued>() + std::mem::size_of::<Closing>();

#[derive(Debug)]
pub(super) struct EvictionQueue<T> {
    locked: AtomicBool,
    /// The entries as the last holder left them, for
    /// [`EvictionQueue::looks_empty`].
    queued: AtomicUsize,
    entries: UnsafeCell<VecDeque<T>>,
}

// SAFETY: `entries` is only reached through a `QueueGuard`, and at most
// one guard exists at a time (the `locked` flag), so the queue is never
// touched from two threads at once; the entries are plain data.
unsafe impl<T: Copy + Send> Sync for EvictionQueue<T> {}

impl<T> EvictionQueue<T> {
    /// A queue of at most `capacity` entries, allocated once.
    pub fn new(capacity: usize) -> EvictionQueue<T> {
        EvictionQueue {
            locked: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            entries: UnsafeCell::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Writes every free slot of the queue's buffer once, entries
    /// unchanged: the allocator hands the buffer over untouched, and a
    /// worker's first push onto each of its pages would take a page fault
    /// (see [`super::Conntrack::populate`]). The filler entries are gone
    /// again before the lock is released.
    pub fn populate(&self, filler: T)
    where
        T: Copy,
    {
        let mut queue = self.lock();
        let (len, capacity) = (queue.len(), queue.capacity());
        // Within the capacity: the buffer never moves.
        queue.extend(std::iter::repeat(filler).take(capacity - len));
        queue.truncate(len);
    }

    /// Whether the queue was empty when its last holder let go: a
    /// look without the lock, for a caller that may skip an empty queue
    /// (a full table's insert, which has a closing flow to evict only
    /// now and then, and took this lock, a locked instruction, on every
    /// insert). Entries queued since may be missed; the next look sees
    /// them.
    #[inline]
    pub fn looks_empty(&self) -> bool {
        // Relaxed: a hint; the entries themselves are read under the lock.
        self.queued.load(Ordering::Relaxed) == 0
    }

    pub fn lock(&self) -> QueueGuard<'_, T> {
        let mut spins = 0u32;
        loop {
            // Relaxed: a test before the swap, to spin on a shared line.
            if !self.locked.load(Ordering::Relaxed)
                && self
                    .locked
                    // Acquire: what the last holder did to the queue is
                    // visible to us.
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return QueueGuard { queue: self };
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
}

/// The queue, locked.
pub(super) struct QueueGuard<'a, T> {
    queue: &'a EvictionQueue<T>,
}

impl<T> QueueGuard<'_, T> {
    /// Appends an entry; a full queue (it never grows) drops its oldest
    /// entry, which by then mostly belongs to a flow that moved on long
    /// ago.
    pub fn push(&mut self, entry: T) {
        if self.len() == self.capacity() {
            self.pop_front();
        }
        self.push_back(entry);
    }
}

impl<T> Deref for QueueGuard<'_, T> {
    type Target = VecDeque<T>;

    fn deref(&self) -> &VecDeque<T> {
        // SAFETY: this guard is the only one (see `Sync` above).
        unsafe { &*self.queue.entries.get() }
    }
}

impl<T> DerefMut for QueueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut VecDeque<T> {
        // SAFETY: this guard is the only one (see `Sync` above).
        unsafe { &mut *self.queue.entries.get() }
    }
}

impl<T> Drop for QueueGuard<'_, T> {
    fn drop(&mut self) {
        // Relaxed: a hint (see `looks_empty`); we are its only writer
        // while we hold the lock.
        self.queue.queued.store(self.len(), Ordering::Relaxed);
        // Release: our changes to the queue are visible to the next
        // holder.
        self.queue.locked.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: RecordId) -> Queued {
        Queued {
            id,
            seq: 2,
            forward_home: 0,
            reply_home: 0,
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_entry_and_never_grows() {
        let queue = EvictionQueue::new(3);
        let mut q = queue.lock();
        let capacity = q.capacity();
        for id in 1..=capacity as u32 + 2 {
            q.push(entry(id));
        }
        assert_eq!(q.len(), capacity);
        assert_eq!(q.capacity(), capacity);
        assert_eq!(q.front().map(|e| e.id), Some(3));
    }

    #[test]
    fn threads_take_turns() {
        let queue = EvictionQueue::new(4096);
        std::thread::scope(|s| {
            for t in 0..4 {
                let queue = &queue;
                s.spawn(move || {
                    for i in 0..1000 {
                        queue.lock().push(entry(t * 1000 + i));
                    }
                });
            }
        });
        assert_eq!(queue.lock().len(), 4000);
    }

    /// Populating writes the free slots and leaves the entries as they
    /// were, in order, wrapped around the buffer or not.
    #[test]
    fn populate_keeps_every_entry() {
        let queue = EvictionQueue::new(8);
        for id in 1..=6 {
            queue.lock().push(entry(id));
        }
        queue.lock().pop_front();
        queue.lock().pop_front();
        for id in 7..=9 {
            queue.lock().push(entry(id));
        }
        let (front, back) = {
            let q = queue.lock();
            let (front, back) = q.as_slices();
            (front.len(), back.len())
        };
        assert!(
            back > 0,
            "the entries wrap around the buffer ({front} + {back})"
        );
        let capacity = queue.lock().capacity();
        queue.populate(entry(0));
        let q = queue.lock();
        let ids: Vec<RecordId> = q.iter().map(|e| e.id).collect();
        assert_eq!(ids, [3, 4, 5, 6, 7, 8, 9], "entries and their order kept");
        assert_eq!(q.capacity(), capacity, "the buffer did not grow");
    }
}
