//! When to rebuild the table after changes: kube-proxy's
//! `--min-sync-period` rule, as a clock-free state machine.
//!
//! The source tells the [`Coalescer`] when something changed and asks it
//! when to act; it never reads a clock itself, so tests drive it with
//! made-up instants. Guarantees, for `settle <= period`:
//! - two runs are at least `period` apart (a burst of changes costs one
//!   rebuild per period, not one per change);
//! - a change is acted on at most `period` after it happened (never more
//!   than one period behind), and after a quiet spell already `settle`
//!   after it (the first change of a burst is not held back a period);
//! - a run reflects every change before it, so the last run of a burst
//!   sees its final state.
//!
//! `settle` is the quiet time to wait for after a change before acting:
//! a file being written generates several events, and acting on the first
//! would read it half-written.

use std::time::{Duration, Instant};

/// Decides when pending changes are due.
#[derive(Debug, Clone)]
pub struct Coalescer {
    period: Duration,
    settle: Duration,
    last_run: Option<Instant>,
    /// The oldest and newest change not yet acted on.
    pending: Option<(Instant, Instant)>,
}

impl Coalescer {
    /// At most one run per `period`; wait `settle` (capped at `period`)
    /// after the last change of a burst.
    pub fn new(period: Duration, settle: Duration) -> Self {
        Self {
            period,
            settle: settle.min(period),
            last_run: None,
            pending: None,
        }
    }

    /// Records a change seen at `now`.
    pub fn changed(&mut self, now: Instant) {
        self.pending = Some(match self.pending {
            Some((first, _)) => (first, now),
            None => (now, now),
        });
    }

    /// Whether a change waits to be acted on.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// When the pending changes are due, if any.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = self.pending?;
        // Quiet for `settle`, but a steady stream of changes does not hold
        // a run back longer than one period.
        let settled = (last + self.settle).min(first + self.period);
        Some(match self.last_run {
            Some(run) => settled.max(run + self.period),
            None => settled,
        })
    }

    /// If pending changes are due at `now`, records a run at `now` and
    /// returns true: the caller acts on the current state right away.
    pub fn take_due(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(deadline) if deadline <= now => {
                self.pending = None;
                self.last_run = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds changes at the given offsets (sorted) into a coalescer and
    /// runs it the way a source's loop does: wake at the next change or
    /// the deadline, whichever is first. Returns the run times.
    fn simulate(period: Duration, settle: Duration, changes: &[Duration]) -> Vec<Duration> {
        let base = Instant::now();
        let mut coalescer = Coalescer::new(period, settle);
        let mut runs = Vec::new();
        let mut changes = changes.iter().copied().peekable();
        loop {
            let next_change = changes.peek().copied();
            let deadline = coalescer.deadline().map(|d| d - base);
            match (next_change, deadline) {
                (Some(change), Some(deadline)) if deadline < change => {
                    assert!(coalescer.take_due(base + deadline));
                    runs.push(deadline);
                }
                (Some(change), _) => {
                    coalescer.changed(base + change);
                    changes.next();
                }
                (None, Some(deadline)) => {
                    assert!(!coalescer.take_due(base + deadline - MS), "not due early");
                    assert!(coalescer.take_due(base + deadline));
                    runs.push(deadline);
                }
                (None, None) => return runs,
            }
        }
    }

    #[test]
    fn first_change_after_quiet_runs_after_settle() {
        let runs = simulate(1000 * MS, 50 * MS, &[5000 * MS]);
        assert_eq!(runs, vec![5050 * MS]);
    }

    #[test]
    fn burst_of_500_within_a_second_gives_at_most_two_runs() {
        // One change every 2 ms for 1 s.
        let changes: Vec<_> = (0..500).map(|i| i * 2 * MS).collect();
        let runs = simulate(1000 * MS, 50 * MS, &changes);
        // A steady stream is acted on once a period at most: at 1 s (the
        // cap), and the last change (998 ms) is already in that run.
        assert_eq!(runs, vec![1000 * MS]);
        // Without settling the first change runs at once, the rest a
        // period later.
        let runs = simulate(1000 * MS, Duration::ZERO, &changes);
        assert_eq!(runs, vec![Duration::ZERO, 1000 * MS]);
    }

    #[test]
    fn change_right_after_a_run_waits_for_the_period() {
        let runs = simulate(
            1000 * MS,
            Duration::ZERO,
            &[Duration::ZERO, 10 * MS, 20 * MS],
        );
        assert_eq!(runs, vec![Duration::ZERO, 1000 * MS]);
    }

    #[test]
    fn nothing_pending_nothing_due() {
        let mut c = Coalescer::new(1000 * MS, 50 * MS);
        let now = Instant::now();
        assert!(!c.is_pending());
        assert_eq!(c.deadline(), None);
        assert!(!c.take_due(now));
        c.changed(now);
        assert!(c.is_pending());
        assert!(!c.take_due(now));
        assert!(c.take_due(now + 50 * MS));
        assert!(!c.is_pending());
    }

    proptest! {
        /// Runs are a period apart, and every change is acted on within a
        /// period of it.
        #[test]
        fn period_bounds(
            mut offsets in proptest::collection::vec(0u32..5000, 1..300),
            period_ms in 1u32..1500,
            settle_ms in 0u32..200,
        ) {
            offsets.sort_unstable();
            let changes: Vec<_> = offsets.iter().map(|&o| o * MS).collect();
            let period = period_ms * MS;
            let runs = simulate(period, settle_ms * MS, &changes);
            for pair in runs.windows(2) {
                prop_assert!(pair[1] - pair[0] >= period, "runs {:?}", pair);
            }
            for &change in &changes {
                let run = runs.iter().find(|&&r| r >= change);
                prop_assert!(run.is_some_and(|&r| r - change <= period),
                    "change at {:?} not acted on within {:?}: runs {:?}", change, period, runs);
            }
        }
    }
}
