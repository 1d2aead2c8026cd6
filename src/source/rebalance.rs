//! What librdkafka calls back inside `poll`: rebalances (seek to the stored offsets on assignment,
//! commit them on revocation, never while a batch is in flight) and statistics (lag from the
//! pipeline's own position).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::ClientContext;

use crate::changelog::Restorer;
use crate::checkpoint::{Checkpoint, Partition, Standing};
use crate::memory::Store;
use crate::metrics::{self, Health};
use crate::shutdown::Shutdown;

/// Callbacks librdkafka runs inside `poll`: rebalances and statistics.
pub struct SourceContext {
    pub(super) store: Store,
    /// Restores newly assigned partitions from the changelog (when the memory is kept there).
    pub(super) restorer: Option<Arc<Restorer>>,
    pub(super) checkpoint: Arc<Checkpoint>,
    pub(super) health: Arc<Health>,
    pub(super) shutdown: Shutdown,
    /// Each partition's leader broker as of the last statistics (to wake one fetcher per broker).
    pub(super) leaders: Mutex<HashMap<Partition, i32>>,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let mut total = 0i64;
        let mut leaders = self.leaders.lock().expect("leaders lock");
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                let key = (topic.clone(), *partition);
                if p.leader >= 0 {
                    leaders.insert(key.clone(), p.leader);
                }
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
                if let Some(restorer) = &self.restorer {
                    // Nothing of these partitions is fetched before their memory is restored (or
                    // found current): the poll loop resumes them then, at the restored offsets.
                    if let Err(e) = consumer.pause(tpl) {
                        tracing::error!(error = %e, "cannot pause the assigned partitions for their restore");
                    }
                    restorer.request(partitions_of(tpl));
                }
                // A new assignment has not stalled yet: the watchdog's clock starts now.
                self.health.record_progress();
                tracing::info!(partitions = ?partitions_of(tpl), "partitions assigned");
                r
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked = partitions_of(tpl);
                if let Some(restorer) = &self.restorer {
                    restorer.cancel(&revoked);
                }
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
