//! Backend choice for new connections.
//!
//! kube-proxy picks uniformly at random among ready endpoints, and so does
//! cipgw: each worker owns a small fast generator (wyrand), seeded from the
//! OS at start, and maps a 64-bit draw onto `0..n` by multiply-shift
//! (Lemire), whose bias for n endpoints is below n / 2^64.

/// A per-worker pseudo-random generator (wyrand). Not cryptographic: it
/// spreads connections, it does not keep secrets.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator seeded from the OS (per-process random hasher keys).
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        Self::new(h.finish())
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A uniform index in `0..n`; `n` must be non-zero.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chi-square goodness of fit over 3 and 10 endpoints. The critical
    /// values are for p = 0.001 (2 and 9 degrees of freedom), so a fair
    /// generator fails this one time in a thousand; the seed is fixed, so
    /// the test is deterministic.
    #[test]
    fn choice_is_uniform() {
        for (n, critical) in [(3usize, 13.82f64), (10, 27.88)] {
            let mut rng = Rng::new(0x5eed);
            let draws = 100_000;
            let mut counts = vec![0u64; n];
            for _ in 0..draws {
                counts[rng.below(n)] += 1;
            }
            let expected = draws as f64 / n as f64;
            let chi2: f64 = counts
                .iter()
                .map(|&c| (c as f64 - expected).powi(2) / expected)
                .sum();
            assert!(chi2 < critical, "n={n} chi2={chi2} counts={counts:?}");
        }
    }

    #[test]
    fn one_endpoint_always_wins() {
        let mut rng = Rng::from_entropy();
        assert!((0..1000).all(|_| rng.below(1) == 0));
    }
}
