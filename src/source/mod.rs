//! The Kafka consumer: group membership, seeking to the offsets stored in sled, and the poll loop that
//! fills micro-batches.
//!
//! Guarantees:
//! - On every assignment a partition starts at the next offset recorded in the store, in the same
//!   atomic write as the state it produced; only partitions this store has never seen fall back to
//!   the group's committed offset (then `auto.offset.reset`).
//! - Rebalance callbacks run only inside poll, and wait until no batch is in flight (the pipeline
//!   computes the next batch while the last one's outputs are acknowledged and its state written:
//!   [`Checkpoint`]), so offsets are read from and committed to a store that holds every batch handed
//!   on. A revoked partition's stored offsets are committed synchronously before it is released, and
//!   messages of it still waiting in an unfinished batch are dropped (they were never applied; the
//!   next owner reads them again).
//! - Backpressure: nothing is polled while a batch is computed, at most one computed batch waits to
//!   be finished, and librdkafka's prefetch queue is bounded (`queued.max.messages.kbytes`), so a
//!   slow model slows consumption instead of growing memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

use crate::changelog::{Ready, Restorer};
use crate::checkpoint::{Checkpoint, Partition, Standing};
use crate::config::Config;
use crate::event::InMessage;
use crate::memory::Store;
use crate::metrics::Health;
use crate::shutdown::Shutdown;

mod batch;
mod rebalance;

use batch::Batcher;
pub use rebalance::SourceContext;

/// The longest poll while a partition is being restored: its resume waits for the next poll.
const RESTORE_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the Kafka consumer: {0}. Check the [kafka] settings")]
    Create(rdkafka::error::KafkaError),
    #[error("cannot subscribe to topics.input {topics:?}: {error}")]
    Subscribe {
        topics: Vec<String>,
        error: rdkafka::error::KafkaError,
    },
}

pub struct Source {
    consumer: BaseConsumer<SourceContext>,
    /// Partitions restored from the changelog and not yet resumed (a seek that failed is retried).
    to_resume: Mutex<Vec<Ready>>,
}

/// librdkafka defaults for the consumer that a user may override in `[kafka.consumer]`.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    ("session.timeout.ms", "10000"),
    ("statistics.interval.ms", "5000"),
    ("queued.max.messages.kbytes", "16384"),
    // How long the broker may hold a fetch that finds nothing new. A Kafka broker answers as soon
    // as there is data, so this costs no latency under load. Keep it well above the broker's time
    // to read a deep backlog: a broker that cuts its read off at this wait (tansu) answers every
    // fetch empty once reading takes longer, and consumption stops for good (issue 17: 10 ms
    // stalled the daemon after a backlog of ~40k messages built up; docs/operations.md).
    ("fetch.wait.max.ms", "500"),
    ("partition.assignment.strategy", "range,roundrobin"),
];

impl Source {
    pub fn new(
        config: &Config,
        store: Store,
        restorer: Option<Arc<Restorer>>,
        health: Arc<Health>,
        shutdown: Shutdown,
    ) -> Result<Source, SourceError> {
        let mut cc = config
            .kafka
            .client_config(CONSUMER_DEFAULTS, &config.kafka.consumer);
        cc.set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        // Static membership (KIP-345): a restarted instance takes its partitions back at once
        // instead of waiting for its old member's session to expire and rebalancing the group.
        if let Some(id) = &config.kafka.instance_id {
            cc.set("group.instance.id", id);
        }
        let context = SourceContext {
            store,
            restorer,
            checkpoint: Arc::new(Checkpoint::new(config.in_flight_deadline())),
            health,
            shutdown,
            leaders: Mutex::new(HashMap::new()),
        };
        let consumer: BaseConsumer<SourceContext> = cc
            .create_with_context(context)
            .map_err(SourceError::Create)?;
        let topics: Vec<&str> = config.topics.input.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|error| SourceError::Subscribe {
                topics: config.topics.input.clone(),
                error,
            })?;
        Ok(Source {
            consumer,
            to_resume: Mutex::new(Vec::new()),
        })
    }

    /// Polls one micro-batch (see [`Batcher`]); returns early, possibly empty, when `shutdown` triggers
    /// or the input is idle.
    pub fn next_batch(
        &self,
        max_events: usize,
        max_wait: Duration,
        shutdown: &Shutdown,
    ) -> Vec<InMessage> {
        let mut batch = Batcher::new(max_events, max_wait, Duration::from_millis(100));
        while let Some(timeout) = batch.next_timeout(Instant::now()) {
            self.resume_restored();
            // While a restore runs, polls return soon, so its partitions resume as it ends.
            let polled = self.consumer.poll(if self.restore_running() {
                timeout.min(RESTORE_POLL)
            } else {
                timeout
            });
            self.drop_revoked(&mut batch);
            match polled {
                None if batch.is_empty() => break,
                None => {}
                // A partition still being restored is paused; should a message of it slip through,
                // it is read again from the restored offset.
                Some(Ok(m)) if self.is_restoring(m.topic(), m.partition()) => {}
                Some(Ok(m)) => batch.push(
                    InMessage {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        kafka_timestamp_ms: m.timestamp().to_millis(),
                        polled_at_ms: crate::pipeline::now_ms(),
                    },
                    Instant::now(),
                ),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error; continuing"),
            }
            if shutdown.is_triggered() {
                break;
            }
        }
        batch.into_items()
    }

    /// Whether any partition is being restored (one atomic load, before any lock).
    fn restore_running(&self) -> bool {
        let context = self.consumer.context();
        context.health.restoring_partitions.load(Ordering::Relaxed) > 0
    }

    fn is_restoring(&self, topic: &str, partition: i32) -> bool {
        self.restore_running()
            && self
                .consumer
                .context()
                .restorer
                .as_ref()
                .is_some_and(|r| r.is_restoring(&(topic.to_string(), partition)))
    }

    /// Resumes the partitions whose restore finished, from the offsets the restored store holds.
    fn resume_restored(&self) {
        let context = self.consumer.context();
        let Some(restorer) = &context.restorer else {
            return;
        };
        let mut to_resume = self.to_resume.lock().expect("to_resume lock");
        to_resume.extend(restorer.take_ready());
        let mut resumed: Vec<Partition> = Vec::new();
        to_resume.retain(|ready| {
            let (topic, partition) = &ready.partition;
            if !restorer.is_current(ready)
                || context.checkpoint.standing(&ready.partition) == Standing::NotAssigned
            {
                return false; // revoked meanwhile, or assigned again (a new restore runs)
            }
            if let Some(next) = ready.next_offset {
                if let Err(e) =
                    self.consumer
                        .seek(topic, *partition, Offset::Offset(next), Duration::from_secs(5))
                {
                    tracing::warn!(%topic, partition, error = %e, "cannot seek to the restored offset yet; retrying");
                    return true;
                }
                context.checkpoint.advanced(topic, *partition, next);
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, *partition);
            if let Err(e) = self.consumer.resume(&tpl) {
                tracing::warn!(%topic, partition, error = %e, "cannot resume the restored partition yet; retrying");
                return true;
            }
            restorer.resumed(ready);
            resumed.push((topic.clone(), *partition));
            tracing::info!(%topic, partition, next_offset = ready.next_offset, "partition restored; consuming");
            false
        });
        drop(to_resume);
        self.wake_fetchers(&resumed);
    }

    /// librdkafka's broker threads do not look at a resumed partition again until they wake for
    /// something else, which when idle is their 1 s serve timeout: each restore cost up to a second
    /// more before the partition's first fetch. A request to a partition's leader wakes that
    /// broker's thread, which then finds all its resumed partitions fetchable: one ListOffsets per
    /// leader (one in all while the leaders are not known yet). The wake-up is the request being
    /// queued, not its answer, so the wait for it is short: behind a fetch the broker holds, the
    /// answer can take up to `fetch.wait.max.ms`, and the fetch's return wakes the thread anyway.
    fn wake_fetchers(&self, resumed: &[Partition]) {
        let leaders = self
            .consumer
            .context()
            .leaders
            .lock()
            .expect("leaders lock")
            .clone();
        let mut woken = HashSet::new();
        for partition in resumed {
            if !woken.insert(leaders.get(partition).copied()) {
                continue;
            }
            let (topic, partition) = partition;
            if let Err(e) =
                self.consumer
                    .fetch_watermarks(topic, *partition, Duration::from_millis(10))
            {
                tracing::debug!(%topic, partition, error = %e, "no answer yet to the request that wakes a resumed partition's fetcher (it was sent)");
            }
        }
    }

    fn drop_revoked(&self, batch: &mut Batcher<InMessage>) {
        let gone = self.consumer.context().checkpoint.take_revoked();
        if gone.is_empty() {
            return;
        }
        batch.retain(|m| !gone.contains(&(m.topic.clone(), m.partition)));
        tracing::info!(partitions = ?gone, "dropped unprocessed messages of revoked partitions");
    }

    /// Where the partitions stand, and the batches handed on and not yet written.
    pub fn checkpoint(&self) -> Arc<Checkpoint> {
        self.consumer.context().checkpoint.clone()
    }

    /// Commits next offsets to Kafka, for lag monitoring and tools; the store is the source of truth.
    pub fn commit<'a>(
        &self,
        next_offsets: impl Iterator<Item = (&'a str, i32, i64)>,
    ) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        let checkpoint = &self.consumer.context().checkpoint;
        for (topic, partition, next) in next_offsets {
            tpl.add_partition_offset(topic, partition, Offset::Offset(next))?;
            checkpoint.advanced(topic, partition, next);
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&tpl, CommitMode::Async)
    }

    /// Leaves the group: revocation runs (committing stored offsets) before this returns.
    pub fn close(self) {
        self.consumer.unsubscribe();
        // Serve the revoke callback that unsubscribe queued.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.consumer.context().checkpoint.assigned_count() > 0 {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
    }
}
