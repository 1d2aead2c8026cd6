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

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message};

use crate::batch::Batcher;
use crate::checkpoint::{Checkpoint, Partition, Standing};
use crate::config::Config;
use crate::event::InMessage;
use crate::memory::Store;
use crate::metrics::{self, Health};
use crate::shutdown::Shutdown;

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

/// Callbacks librdkafka runs inside `poll`: rebalances and statistics.
pub struct SourceContext {
    store: Store,
    checkpoint: Arc<Checkpoint>,
    health: Arc<Health>,
    shutdown: Shutdown,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let mut total = 0i64;
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                let key = (topic.clone(), *partition);
                if p.hi_offset < 0 {
                    continue;
                }
                // Lag from the next offset the pipeline will process, not librdkafka's fetch
                // position, which runs ahead (prefetch) and is unknown before a first message.
                let lag = match self.checkpoint.standing(&key) {
                    Standing::NotAssigned => continue,
                    Standing::At(next) => (p.hi_offset - next).max(0),
                    Standing::Unknown if p.consumer_lag >= 0 => p.consumer_lag,
                    Standing::Unknown if p.committed_offset >= 0 => {
                        (p.hi_offset - p.committed_offset).max(0)
                    }
                    // Never processed here and nothing committed: everything retained is waiting.
                    Standing::Unknown => (p.hi_offset - p.lo_offset.max(0)).max(0),
                };
                metrics::record_lag(topic, *partition, lag);
                total += lag;
            }
        }
        self.health.record_lag(total);
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
        if !self.checkpoint.wait_idle() {
            // A batch may still write its state and offsets: reading or committing offsets now
            // could apply events twice. Stop instead; a restart reads everything from the store.
            tracing::error!(
                deadline = ?self.checkpoint.deadline(),
                "a micro-batch is still unwritten after the in-flight deadline during a rebalance \
                 (outputs not acknowledged, or the store not written); stopping without taking \
                 the new assignment. Check the broker and the store volume; the restart resumes \
                 from the store"
            );
            self.health.failed.store(true, Ordering::Relaxed);
            self.shutdown.trigger();
            if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                let _ = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
            }
            return;
        }
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let stored = self.seek_to_stored_offsets(tpl);
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                self.checkpoint.assign(stored, !cooperative);
                // A new assignment has not stalled yet: the watchdog's clock starts now.
                self.health.record_progress();
                tracing::info!(partitions = ?partitions_of(tpl), "partitions assigned");
                r
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = partitions_of(tpl);
                self.commit_stored_offsets(consumer, &revoked);
                self.checkpoint.revoke(&revoked);
                for p in &revoked {
                    // Another instance reports this partition's lag now.
                    metrics::record_lag(&p.0, p.1, 0);
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
                self.checkpoint.release_all();
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the rebalance failed");
        }
        let n = self.checkpoint.assigned_count();
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
    /// Starts each partition at the next offset its store recorded; returns what was found.
    fn seek_to_stored_offsets(
        &self,
        tpl: &mut TopicPartitionList,
    ) -> Vec<(Partition, Option<i64>)> {
        let mut stored = Vec::new();
        for (topic, partition) in partitions_of(tpl) {
            let next = match self.store.next_offset(&topic, partition) {
                Ok(Some(next)) => {
                    if let Err(e) =
                        tpl.set_partition_offset(&topic, partition, Offset::Offset(next))
                    {
                        tracing::error!(%topic, partition, error = %e, "cannot set the start offset");
                    }
                    Some(next)
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(%topic, partition, error = %e, "cannot read the stored offset; using the group's committed offset");
                    None
                }
            };
            stored.push(((topic, partition), next));
        }
        stored
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
        health: Arc<Health>,
        shutdown: Shutdown,
    ) -> Result<Source, SourceError> {
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
        // Static membership (KIP-345): a restarted instance takes its partitions back at once
        // instead of waiting for its old member's session to expire and rebalancing the group.
        if let Some(id) = &config.kafka.instance_id {
            cc.set("group.instance.id", id);
        }
        let context = SourceContext {
            store,
            checkpoint: Arc::new(Checkpoint::new(config.in_flight_deadline())),
            health,
            shutdown,
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
