//! Where each input partition stands, in one place: which partitions this instance owns, the next
//! offset the pipeline will process on each, the partitions revoked since the poll loop last looked,
//! and the micro-batches handed on whose state is not yet in the store.
//!
//! The store holds the durable offsets (written with the state they produced, [`crate::memory`]);
//! Kafka's committed offsets follow them for tools and lag monitoring. What is here is the live view
//! between the two, shared by the consumer's callbacks (which run inside `poll`) and the pipeline's
//! threads. A rebalance must see no batch in flight before it reads or commits offsets, and waits
//! for that at most [`Checkpoint::deadline`]: a batch still unwritten after it is stuck (a broker
//! that does not acknowledge, a store that does not write), and the caller stops rather than risk
//! applying events twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// (topic, partition).
pub type Partition = (String, i32);

pub struct Checkpoint {
    in_flight: Mutex<usize>,
    idle: Condvar,
    deadline: Duration,
    partitions: Mutex<Partitions>,
}

#[derive(Default)]
struct Partitions {
    assigned: HashSet<Partition>,
    /// Next offset the pipeline will process, where known: the stored offset at assignment, then
    /// each finished batch's. Lag is measured from here, not from librdkafka's fetch position, which
    /// runs ahead of processing (prefetch) and is unknown before a partition's first message.
    next: HashMap<Partition, i64>,
    /// Revoked since the poll loop last looked: their unprocessed messages are to be dropped.
    revoked: Vec<Partition>,
}

/// Where one partition stands, for lag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Another instance owns it (or nobody yet).
    NotAssigned,
    /// Assigned; the next offset to process.
    At(i64),
    /// Assigned, but this store never processed it: it starts from the group's committed offset.
    Unknown,
}

impl Checkpoint {
    /// `deadline`: how long a rebalance waits for the batches in flight.
    pub fn new(deadline: Duration) -> Checkpoint {
        Checkpoint {
            in_flight: Mutex::new(0),
            idle: Condvar::new(),
            deadline,
            partitions: Mutex::new(Partitions::default()),
        }
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// A batch was handed on to be produced and written.
    pub fn batch_started(&self) {
        *self.in_flight.lock().expect("in-flight lock") += 1;
    }

    /// A batch was written, or dropped unwritten (it will be replayed).
    pub fn batch_ended(&self) {
        let mut n = self.in_flight.lock().expect("in-flight lock");
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    /// Waits until no batch is in flight; `false` when one still is after the deadline.
    pub fn wait_idle(&self) -> bool {
        let n = self.in_flight.lock().expect("in-flight lock");
        let (n, _) = self
            .idle
            .wait_timeout_while(n, self.deadline, |n| *n > 0)
            .expect("in-flight lock");
        *n == 0
    }

    /// Partitions taken on, each with the next offset its store recorded (if it ever processed it).
    /// An eager rebalance replaces the assignment; a cooperative one adds to it.
    pub fn assign(&self, partitions: Vec<(Partition, Option<i64>)>, replace: bool) {
        let mut p = self.partitions.lock().expect("partitions lock");
        if replace {
            p.assigned.clear();
            p.next.clear();
        }
        for (partition, stored) in partitions {
            if let Some(next) = stored {
                p.next.insert(partition.clone(), next);
            }
            p.assigned.insert(partition);
        }
    }

    /// Partitions given up: no longer ours, and their messages still waiting in a batch are dropped.
    pub fn revoke(&self, partitions: &[Partition]) {
        let mut p = self.partitions.lock().expect("partitions lock");
        for partition in partitions {
            p.assigned.remove(partition);
            p.next.remove(partition);
        }
        p.revoked.extend(partitions.iter().cloned());
    }

    /// Everything given up at once (a failed rebalance).
    pub fn release_all(&self) {
        let mut p = self.partitions.lock().expect("partitions lock");
        let all: Vec<Partition> = p.assigned.drain().collect();
        p.next.clear();
        p.revoked.extend(all);
    }

    /// The partitions revoked since the last call.
    pub fn take_revoked(&self) -> HashSet<Partition> {
        self.partitions
            .lock()
            .expect("partitions lock")
            .revoked
            .drain(..)
            .collect()
    }

    /// A finished batch's next offset on a partition. A partition revoked meanwhile stays gone: its
    /// lag is its new owner's to report.
    pub fn advanced(&self, topic: &str, partition: i32, next: i64) {
        let mut p = self.partitions.lock().expect("partitions lock");
        let key = (topic.to_string(), partition);
        if p.assigned.contains(&key) {
            p.next.insert(key, next);
        }
    }

    pub fn standing(&self, partition: &Partition) -> Standing {
        let p = self.partitions.lock().expect("partitions lock");
        match (p.assigned.contains(partition), p.next.get(partition)) {
            (false, _) => Standing::NotAssigned,
            (true, Some(&next)) => Standing::At(next),
            (true, None) => Standing::Unknown,
        }
    }

    pub fn assigned_count(&self) -> usize {
        self.partitions
            .lock()
            .expect("partitions lock")
            .assigned
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn p(n: i32) -> Partition {
        ("events".to_string(), n)
    }

    #[test]
    fn a_revoked_partition_is_not_brought_back_by_a_batch_that_finishes_later() {
        let c = Checkpoint::new(Duration::from_secs(1));
        c.assign(vec![(p(0), Some(10)), (p(1), None)], true);
        assert_eq!(c.standing(&p(0)), Standing::At(10));
        assert_eq!(c.standing(&p(1)), Standing::Unknown);
        c.revoke(&[p(0)]);
        c.advanced("events", 0, 42);
        assert_eq!(c.standing(&p(0)), Standing::NotAssigned);
        assert_eq!(c.take_revoked(), HashSet::from([p(0)]));
        assert!(c.take_revoked().is_empty(), "handed out once");
        c.advanced("events", 1, 7);
        assert_eq!(c.standing(&p(1)), Standing::At(7));
        assert_eq!(c.assigned_count(), 1);
    }

    #[test]
    fn an_eager_assignment_replaces_a_cooperative_one_adds() {
        let c = Checkpoint::new(Duration::from_secs(1));
        c.assign(vec![(p(0), Some(1))], true);
        c.assign(vec![(p(1), Some(2))], false);
        assert_eq!(c.assigned_count(), 2);
        c.assign(vec![(p(2), None)], true);
        assert_eq!(c.assigned_count(), 1);
        assert_eq!(c.standing(&p(0)), Standing::NotAssigned);
        c.release_all();
        assert_eq!(c.assigned_count(), 0);
        assert_eq!(c.take_revoked(), HashSet::from([p(2)]));
    }

    #[test]
    fn waiting_for_batches_in_flight_ends_when_they_end_or_at_the_deadline() {
        let c = Arc::new(Checkpoint::new(Duration::from_millis(200)));
        assert!(c.wait_idle(), "nothing in flight");
        c.batch_started();
        let started = std::time::Instant::now();
        assert!(
            !c.wait_idle(),
            "a stuck batch is reported, not waited for forever"
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        let ender = {
            let c = c.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                c.batch_ended();
            })
        };
        assert!(c.wait_idle());
        ender.join().unwrap();
    }
}
