//! The Kafka consumer: group membership, seeking to the offsets stored in sled, and the poll loop that
//! fills micro-batches.
//!
//! Guarantees:
//! - On every assignment a partition starts at the next offset recorded in the store, in the same
//!   atomic write as the state it produced; only partitions this store has never seen fall back to
//!   the group's committed offset (then `auto.offset.reset`).
//! - Rebalance callbacks run only inside poll, and wait until no batch is in flight (the pipeline
//!   computes the next batch while the last one's outputs are acknowledged and its state written:
//!   [`InFlight`]), so offsets are read from and committed to a store that holds every batch handed
//!   on. A revoked partition's stored offsets are committed synchronously before it is released, and
//!   messages of it still waiting in an unfinished batch are dropped (they were never applied; the
//!   next owner reads them again).
//! - Backpressure: nothing is polled while a batch is computed, at most one computed batch waits to
//!   be finished, and librdkafka's prefetch queue is bounded (`queued.max.messages.kbytes`), so a
//!   slow model slows consumption instead of growing memory.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message};

use crate::batch::Batcher;
use crate::config::Config;
use crate::event::InMessage;
use crate::memory::Store;
use crate::metrics::{self, Health};
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the Kafka consumer: {0}. Check the [kafka] settings")]
    Create(rdkafka::error::KafkaError),
    #[error("cannot subscribe to topics.input {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: rdkafka::error::KafkaError,
    },
}

type Partition = (String, i32);

/// Batches handed on by the pipeline whose state is not yet in the store. A rebalance waits for
/// none: the offsets it reads and commits must be those of everything processed.
#[derive(Default)]
pub struct InFlight {
    count: Mutex<usize>,
    idle: std::sync::Condvar,
}

impl InFlight {
    pub fn start(&self) {
        *self.count.lock().expect("in-flight lock") += 1;
    }

    /// A batch was written, or dropped unwritten (it will be replayed).
    pub fn end(&self) {
        let mut n = self.count.lock().expect("in-flight lock");
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.idle.notify_all();
        }
    }

    pub fn wait_idle(&self) {
        let mut n = self.count.lock().expect("in-flight lock");
        while *n > 0 {
            n = self.idle.wait(n).expect("in-flight lock");
        }
    }
}

/// Callbacks librdkafka runs inside `poll`: rebalances and statistics.
pub struct SourceContext {
    store: Store,
    in_flight: Arc<InFlight>,
    health: Arc<Health>,
    assigned: Mutex<HashSet<Partition>>,
    /// Partitions revoked since the poll loop last looked; their unprocessed messages are dropped.
    revoked: Mutex<Vec<Partition>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let assigned = self.assigned.lock().expect("assigned lock");
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if p.consumer_lag >= 0 && assigned.contains(&(topic.clone(), *partition)) {
                    metrics::record_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "Kafka client error (librdkafka retries on its own)");
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        self.in_flight.wait_idle();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.seek_to_stored_offsets(tpl);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                let mut assigned = self.assigned.lock().expect("assigned lock");
                if !cooperative {
                    assigned.clear();
                }
                assigned.extend(partitions_of(tpl));
                tracing::info!(partitions = ?partitions_of(tpl), "partitions assigned");
                r
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = partitions_of(tpl);
                self.commit_stored_offsets(consumer, &revoked);
                self.revoked
                    .lock()
                    .expect("revoked lock")
                    .extend(revoked.iter().cloned());
                let mut assigned = self.assigned.lock().expect("assigned lock");
                for p in &revoked {
                    assigned.remove(p);
                }
                tracing::info!(partitions = ?revoked, "partitions revoked");
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; releasing the assignment");
                self.assigned.lock().expect("assigned lock").clear();
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the rebalance failed");
        }
        let n = self.assigned.lock().expect("assigned lock").len();
        self.health.assigned_partitions.store(n, Ordering::Relaxed);
        metrics::record_assigned(n);
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl SourceContext {
    fn seek_to_stored_offsets(&self, tpl: &mut TopicPartitionList) {
        for (topic, partition) in partitions_of(tpl) {
            match self.store.next_offset(&topic, partition) {
                Ok(Some(next)) => {
                    if let Err(e) =
                        tpl.set_partition_offset(&topic, partition, Offset::Offset(next))
                    {
                        tracing::error!(%topic, partition, error = %e, "cannot set the start offset");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(%topic, partition, error = %e, "cannot read the stored offset; using the group's committed offset")
                }
            }
        }
    }

    fn commit_stored_offsets(&self, consumer: &BaseConsumer<Self>, partitions: &[Partition]) {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in partitions {
            if let Ok(Some(next)) = self.store.next_offset(topic, *partition) {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(next));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                tracing::warn!(error = %e, "committing revoked partitions failed; their next owner resumes from an older committed offset");
            }
        }
    }
}

pub struct Source {
    consumer: BaseConsumer<SourceContext>,
}

/// librdkafka defaults for the consumer that a user may override in `[kafka.consumer]`.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("auto.offset.reset", "earliest"),
    ("session.timeout.ms", "10000"),
    ("statistics.interval.ms", "5000"),
    ("queued.max.messages.kbytes", "16384"),
    // librdkafka's 500 ms default holds a quiet partition's next event that long: latency, not load.
    ("fetch.wait.max.ms", "10"),
    ("partition.assignment.strategy", "range,roundrobin"),
];

impl Source {
    pub fn new(config: &Config, store: Store, health: Arc<Health>) -> Result<Source, SourceError> {
        let mut cc = ClientConfig::new();
        for (k, v) in CONSUMER_DEFAULTS {
            cc.set(*k, *v);
        }
        for (k, v) in config.kafka.properties.iter().chain(&config.kafka.consumer) {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &config.kafka.bootstrap_servers)
            .set("group.id", &config.kafka.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let context = SourceContext {
            store,
            in_flight: Arc::default(),
            health,
            assigned: Mutex::new(HashSet::new()),
            revoked: Mutex::new(Vec::new()),
        };
        let consumer: BaseConsumer<SourceContext> = cc
            .create_with_context(context)
            .map_err(SourceError::Create)?;
        let topics: Vec<&str> = config.topics.input.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| SourceError::Subscribe {
                topics: config.topics.input.clone(),
                source,
            })?;
        Ok(Source { consumer })
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
            let polled = self.consumer.poll(timeout);
            self.drop_revoked(&mut batch);
            match polled {
                None if batch.is_empty() => break,
                None => {}
                Some(Ok(m)) => batch.push(
                    InMessage {
                        topic: m.topic().to_string(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        kafka_timestamp_ms: m.timestamp().to_millis(),
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

    fn drop_revoked(&self, batch: &mut Batcher<InMessage>) {
        let mut revoked = self
            .consumer
            .context()
            .revoked
            .lock()
            .expect("revoked lock");
        if revoked.is_empty() {
            return;
        }
        let gone: HashSet<Partition> = revoked.drain(..).collect();
        batch.retain(|m| !gone.contains(&(m.topic.clone(), m.partition)));
        tracing::info!(partitions = ?gone, "dropped unprocessed messages of revoked partitions");
    }

    /// The pipeline's count of batches handed on and not yet written.
    pub fn in_flight(&self) -> Arc<InFlight> {
        self.consumer.context().in_flight.clone()
    }

    /// Commits next offsets to Kafka, for lag monitoring and tools; the store is the source of truth.
    pub fn commit<'a>(
        &self,
        next_offsets: impl Iterator<Item = (&'a str, i32, i64)>,
    ) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in next_offsets {
            tpl.add_partition_offset(topic, partition, Offset::Offset(next))?;
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
        while Instant::now() < deadline
            && !self
                .consumer
                .context()
                .assigned
                .lock()
                .expect("assigned lock")
                .is_empty()
        {
            let _ = self.consumer.poll(Duration::from_millis(50));
        }
    }
}
