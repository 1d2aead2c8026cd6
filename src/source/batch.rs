//! The micro-batcher: a batch closes when it holds `batch.max_events` messages or when
//! `batch.max_wait_ms` has passed since its first message, whichever comes first. An empty batch
//! waits at most `idle` for its first message, so the pipeline regularly gets control back (to see a
//! shutdown, update gauges) even when the input is quiet.

use std::time::{Duration, Instant};

pub struct Batcher<T> {
    max_events: usize,
    max_wait: Duration,
    idle: Duration,
    first_at: Option<Instant>,
    items: Vec<T>,
}

impl<T> Batcher<T> {
    pub fn new(max_events: usize, max_wait: Duration, idle: Duration) -> Batcher<T> {
        Batcher {
            max_events,
            max_wait,
            idle,
            first_at: None,
            items: Vec::with_capacity(max_events),
        }
    }

    /// How long the next poll may wait, or `None` when the batch is complete.
    pub fn next_timeout(&self, now: Instant) -> Option<Duration> {
        if self.items.len() >= self.max_events {
            return None;
        }
        match self.first_at {
            None => Some(self.idle),
            Some(t) => self
                .max_wait
                .checked_sub(now.duration_since(t))
                .filter(|d| !d.is_zero()),
        }
    }

    pub fn push(&mut self, item: T, now: Instant) {
        self.first_at.get_or_insert(now);
        self.items.push(item);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Drops items that must not be processed (for example, of a revoked partition).
    pub fn retain(&mut self, keep: impl FnMut(&T) -> bool) {
        self.items.retain(keep);
        if self.items.is_empty() {
            self.first_at = None;
        }
    }

    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn closes_on_count() {
        let t0 = Instant::now();
        let mut b = Batcher::new(3, 50 * MS, 100 * MS);
        assert_eq!(b.next_timeout(t0), Some(100 * MS));
        for i in 0..3 {
            assert!(b.next_timeout(t0).is_some());
            b.push(i, t0);
        }
        assert_eq!(b.next_timeout(t0), None);
        assert_eq!(b.into_items(), vec![0, 1, 2]);
    }

    #[test]
    fn closes_on_wait_counted_from_the_first_item() {
        let t0 = Instant::now();
        let mut b = Batcher::new(100, 50 * MS, 100 * MS);
        b.push(1, t0 + 10 * MS);
        assert_eq!(b.next_timeout(t0 + 30 * MS), Some(30 * MS));
        assert_eq!(b.next_timeout(t0 + 60 * MS), None);
    }

    #[test]
    fn retain_to_empty_restarts_the_wait() {
        let t0 = Instant::now();
        let mut b = Batcher::new(100, 50 * MS, 100 * MS);
        b.push(1, t0);
        b.retain(|_| false);
        assert!(b.is_empty());
        assert_eq!(b.next_timeout(t0 + 500 * MS), Some(100 * MS));
    }
}
