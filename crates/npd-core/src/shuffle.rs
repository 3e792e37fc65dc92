//! Seeded orders: the same seed gives the same order on every machine.

/// A seeded permutation of `0..n` (see [`seeded_shuffle`]).
pub fn seeded_permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    seeded_shuffle(&mut order, seed);
    order
}

/// Shuffles `items` in place with a seed (Fisher-Yates over xorshift64):
/// prompt orders and the train/eval split of a prompts file.
pub fn seeded_shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// The seed of one unit of sampling (a batch named by its first prompt, or
/// one prompt) derived from a run's seed: a resumed or retried unit draws
/// the same noise, and units never share a stream (splitmix64's finaliser
/// over the two).
pub fn derive_seed(seed: u64, unit: u64) -> u64 {
    let mut x = seed ^ unit.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permutation_holds_every_index_once_and_depends_on_the_seed() {
        let a = seeded_permutation(50, 1);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, seeded_permutation(50, 1));
        assert_ne!(a, seeded_permutation(50, 2));
    }
}
