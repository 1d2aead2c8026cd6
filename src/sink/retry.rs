//! Waits between produce attempts: exponential, capped, with full jitter.

use std::time::Duration;

/// The first retry waits up to this long...
pub(super) const RETRY_BASE: Duration = Duration::from_millis(100);
/// ...doubling with each failure, up to this.
pub(super) const RETRY_CAP: Duration = Duration::from_secs(5);

/// Exponential backoff with full jitter: a random wait in [0, min(cap, base × 2^(attempt-1))], so
/// that instances which failed together (a broker restart) do not all retry at the same moment.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    // Each RandomState is keyed afresh (randomly per thread, then stepped per instance): random
    // enough to spread retries, with no extra crate.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    ceiling.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_is_jittered() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 1..40 {
            let ceiling = (base * 2u32.pow((attempt - 1).min(20))).min(cap);
            let waits: Vec<Duration> = (0..50).map(|_| backoff(attempt, base, cap)).collect();
            assert!(
                waits.iter().all(|w| *w <= ceiling),
                "attempt {attempt}: {waits:?}"
            );
            let distinct: std::collections::HashSet<_> = waits.iter().collect();
            assert!(
                distinct.len() > 40,
                "attempt {attempt}: not jittered: {waits:?}"
            );
        }
    }
}
