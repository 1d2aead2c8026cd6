//! The memory's durable copy in Kafka: every change to a user's or a SKU × location's record is also
//! produced to the changelog topic, and a partition this instance is assigned is restored from it
//! before its input is processed. Kafka replicates the changelog; sled is the local, fast copy.
//!
//! The way Kafka Streams and Quix Streams keep state, with Kafka as the replication engine:
//! - **Co-partitioned.** Changelog partition `p` holds the records of the keys of input partition
//!   `p` (of every input topic: they must have as many partitions as the changelog, checked at
//!   start by [`prepare`]). Records are keyed by their store key (`u/<user>`, `s/<sku>\0<location>`),
//!   so compaction keeps each record's last version.
//! - **Stamped.** Each record carries, in `longmem.source` headers, the input offsets its batch
//!   reached on its partition (`topic:partition:next_offset`, as Quix Streams stamps its changelog
//!   with the offset that produced it). After a batch's records comes one offset marker per input
//!   partition it advanced (key `o/<topic>\0<partition>`, value the next offset), so a restore
//!   knows how far the state reaches.
//! - **In order with the outputs.** A batch's changelog records are produced with its outputs by the
//!   same idempotent producer; once all are acknowledged, sled writes the state, the input offsets
//!   and the changelog position in one batch ([`crate::pipeline`]). Its markers go out after those
//!   acknowledgements, in front of the next batch's outputs (or on their own when none waits), so a
//!   batch costs one round trip to the broker. Until its marker lands, a batch is in the store and
//!   the changelog but not covered: this store resumes after it (it holds the batch), while a
//!   restore elsewhere leaves its records out and processes its input again.
//! - **Restored on assignment.** [`Restorer`]: a partition whose store is behind its changelog
//!   partition (a partition that moved here, a lost volume, a crash between the acknowledgement and
//!   the sled write) is paused, its changelog read from the store's position to the end and applied,
//!   then resumed from the offsets the changelog says; the other partitions keep flowing. Records
//!   not followed by their batch's marker (a batch cut short by a crash) are not applied: the input
//!   they came from is processed again. A store ahead of its changelog (another cluster's, or a
//!   changelog topic recreated) is not trusted: the partition is restored from the changelog's start.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;

use crate::checkpoint::Partition;
use crate::config::Config;
use crate::memory::STORE_FORMAT;
use crate::memory::{
    offset_key, position_bytes, read_position, RecordKey, RecordOwner, Store, StoreBatch,
    StoreError,
};
use crate::metrics::{self, Health};
use crate::shutdown::Shutdown;
use crate::sink::Output;

/// Header: an input offset the record's batch reached, `topic:partition:next_offset` (one per input
/// topic advanced on the partition).
pub const SOURCE_HEADER: &str = "longmem.source";
/// Header: the store format of the record's encoding ([`STORE_FORMAT`]).
pub const FORMAT_HEADER: &str = "longmem.format";

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Restored records applied per sled batch (a crash mid-restore keeps what was applied, and the
/// restart reads on from there). The size of a daemon's micro-batch: restoring a million users took
/// 8.9 s in batches of 256, 9.9 s in batches of 1,024 and 15 s with 3.4 GiB peak RSS in batches of
/// 8,192 (benches/key_flood.py --restore; why sled's memory grows with its batches is not known).
const RESTORE_CHUNK: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("cannot read the metadata of topic {topic}: {error}. Check kafka.bootstrap_servers and that the topic exists")]
    Metadata {
        topic: String,
        error: rdkafka::error::KafkaError,
    },
    #[error(
        "the input topics and the changelog are not co-partitioned: {counts}. Each input partition's \
         memory lives in the changelog partition of the same number, so every input topic needs as \
         many partitions as the changelog. Repartition the topics, or set store.changelog_topic to a \
         new topic (created with the input's partition count)"
    )]
    NotCoPartitioned { counts: String },
    #[error("input topic {topic} does not exist (or has no partitions) after waiting {waited:?}; create it first")]
    NoInput { topic: String, waited: Duration },
    #[error("cannot create the changelog topic {topic}: {error}. Create it yourself (cleanup.policy=compact, one partition per input partition) or check the client's ACLs")]
    Create { topic: String, error: String },
    #[error("cannot read changelog {topic} partition {partition}: {error}")]
    Read {
        topic: String,
        partition: i32,
        error: rdkafka::error::KafkaError,
    },
    #[error(
        "changelog {topic} partition {partition} offset {offset} was written by store format {found}, \
         this build writes format {expected}: run the version that wrote it, or start this one with a \
         new store.changelog_topic"
    )]
    Format {
        topic: String,
        partition: i32,
        offset: i64,
        found: String,
        expected: u32,
    },
    #[error("cannot start the restore thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A client with the shared `[kafka.properties]` (security settings) and nothing else of longmem's.
fn client_config(config: &Config) -> rdkafka::ClientConfig {
    config.kafka.client_config(&[], &Default::default())
}

/// Partitions of `topic`, or `None` when it does not exist.
fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<Option<usize>, ChangelogError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(|error| ChangelogError::Metadata {
            topic: topic.to_string(),
            error,
        })?;
    Ok(metadata
        .topics()
        .first()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// At start: checks that the input topics are co-partitioned with the changelog, and creates the
/// changelog (`cleanup.policy=compact`, the input's partition count) when it is absent. Waits up to
/// `wait_for_input` for the input topics to exist.
pub fn prepare(config: &Config, wait_for_input: Duration) -> Result<(), ChangelogError> {
    let Some(changelog) = config.changelog_topic() else {
        return Ok(());
    };
    let consumer: BaseConsumer =
        client_config(config)
            .create()
            .map_err(|error| ChangelogError::Metadata {
                topic: changelog.clone(),
                error,
            })?;
    let deadline = Instant::now() + wait_for_input;
    let mut counts = Vec::new();
    for topic in &config.topics.input {
        let n = loop {
            match partition_count(&consumer, topic)? {
                Some(n) => break n,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(500)),
                None => {
                    return Err(ChangelogError::NoInput {
                        topic: topic.clone(),
                        waited: wait_for_input,
                    })
                }
            }
        };
        counts.push((topic.clone(), n));
    }
    let input_partitions = counts[0].1;
    match partition_count(&consumer, &changelog)? {
        Some(n) => counts.push((changelog.clone(), n)),
        None => {
            create_topic(config, &consumer, &changelog, input_partitions)?;
            tracing::info!(topic = %changelog, partitions = input_partitions, "created the changelog topic (cleanup.policy=compact)");
            counts.push((changelog.clone(), input_partitions));
        }
    }
    if counts.iter().any(|(_, n)| *n != input_partitions) {
        let counts = counts
            .iter()
            .map(|(t, n)| format!("{t} has {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(ChangelogError::NotCoPartitioned { counts });
    }
    Ok(())
}

/// Creates the topic and waits until `consumer` sees it in the metadata.
fn create_topic(
    config: &Config,
    consumer: &BaseConsumer,
    topic: &str,
    partitions: usize,
) -> Result<(), ChangelogError> {
    let create_error = |error: String| ChangelogError::Create {
        topic: topic.to_string(),
        error,
    };
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(|e| create_error(e.to_string()))?;
    let replication = config.store.changelog_replication_factor.unwrap_or(-1);
    let new = NewTopic::new(
        topic,
        partitions as i32,
        TopicReplication::Fixed(replication),
    )
    .set("cleanup.policy", "compact");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics([&new], &options))
        .map_err(|e| create_error(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, e)) => return Err(create_error(e.to_string())),
        }
    }
    // The metadata of a new topic reaches every broker a moment later.
    let deadline = Instant::now() + Duration::from_secs(30);
    while partition_count(consumer, topic)?.is_none() {
        if Instant::now() > deadline {
            return Err(create_error(
                "it did not appear in the metadata within 30 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A batch's changelog entries.
pub struct BatchRecords {
    /// Every changed record, to the changelog partition of the input partition that changed it;
    /// produced with the batch's outputs.
    pub records: Vec<Output>,
    /// One offset marker per input partition the batch advanced; produced only once everything
    /// else of the batch is acknowledged (with the next batch's outputs), so a marker in the
    /// changelog means the batch's outputs are all on the broker (acknowledgements of different
    /// partitions come in any order).
    pub markers: Vec<Output>,
}

/// The changelog entries of a batch; `partition_of` names the input partition of a record's events.
pub fn records(
    topic: &str,
    writes: &StoreBatch,
    partition_of: impl Fn(&RecordOwner) -> Option<i32>,
) -> Result<BatchRecords, StoreError> {
    // The offsets each changelog partition's records reach, as headers.
    let mut stamps: HashMap<i32, Vec<(&'static str, Vec<u8>)>> = HashMap::new();
    for (input, partition, next) in writes.next_offsets() {
        stamps
            .entry(partition)
            .or_insert_with(|| vec![(FORMAT_HEADER, STORE_FORMAT.to_string().into_bytes())])
            .push((
                SOURCE_HEADER,
                format!("{input}:{partition}:{next}").into_bytes(),
            ));
    }
    let mut out = Vec::new();
    for (key, value, owner) in writes.encoded_records()? {
        let Some(partition) = partition_of(&owner) else {
            // Every changed record comes from an event of the batch; one without is a bug, and
            // skipping its changelog record only costs a replay on the next restore.
            tracing::error!(key = %String::from_utf8_lossy(&key), "a changed record without an input partition; not in the changelog");
            continue;
        };
        out.push(Output {
            topic: topic.to_string(),
            key: Some(key),
            payload: value,
            partition: Some(partition),
            headers: stamps.get(&partition).cloned().unwrap_or_default(),
        });
    }
    let markers = writes
        .next_offsets()
        .map(|(input, partition, next)| Output {
            topic: topic.to_string(),
            key: Some(offset_key(input, partition)),
            payload: position_bytes(next).to_vec(),
            partition: Some(partition),
            headers: stamps.get(&partition).cloned().unwrap_or_default(),
        })
        .collect();
    Ok(BatchRecords {
        records: out,
        markers,
    })
}

/// The input offsets a record's batch reached, from its headers.
fn stamps_of(message: &impl Message) -> Vec<(String, i32, i64)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .filter(|h| h.key == SOURCE_HEADER)
        .filter_map(|h| {
            let text = std::str::from_utf8(h.value?).ok()?;
            let mut parts = text.rsplitn(3, ':');
            let next = parts.next()?.parse().ok()?;
            let partition = parts.next()?.parse().ok()?;
            let topic = parts.next()?.to_string();
            Some((topic, partition, next))
        })
        .collect()
}

fn format_of(message: &impl Message) -> Option<String> {
    message.headers()?.iter().find_map(|h| {
        (h.key == FORMAT_HEADER)
            .then(|| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
    })
}

/// What one restore did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Changelog records read (records and markers).
    pub read: u64,
    /// Records applied to the store.
    pub applied: u64,
    /// Records left out: their batch's marker never followed (a batch cut short).
    pub discarded: u64,
}

/// A changelog record read and not yet covered: (changelog offset, key, value, its stamps).
type Waiting = (i64, Vec<u8>, Vec<u8>, Vec<(String, i32, i64)>);

/// Applies changelog records in the order they were written, a record once every input offset it
/// is stamped with is covered by a marker.
struct Replay {
    /// Next input offset per input topic, as far as the store or the markers read so far say.
    reached: HashMap<String, i64>,
    /// Records read but not yet covered by a marker: (changelog offset, key, value, stamps).
    waiting: Vec<Waiting>,
    /// Ready to write: records, and input offsets from markers.
    records: Vec<(Vec<u8>, Vec<u8>)>,
    offsets: HashMap<(String, i32), i64>,
}

impl Replay {
    fn covered(&self, stamps: &[(String, i32, i64)]) -> bool {
        stamps
            .iter()
            .all(|(t, _, next)| self.reached.get(t).is_some_and(|r| r >= next))
    }

    fn read(&mut self, offset: i64, key: Vec<u8>, value: Vec<u8>, stamps: Vec<(String, i32, i64)>) {
        match RecordKey::parse(&key) {
            Some(RecordKey::Offset(topic, partition)) => {
                let Some(next) = read_position(&value) else {
                    tracing::warn!(offset, "an offset marker that is not 8 bytes; skipped");
                    return;
                };
                let reached = self.reached.entry(topic.to_string()).or_insert(next);
                *reached = (*reached).max(next);
                let slot = self
                    .offsets
                    .entry((topic.to_string(), partition))
                    .or_insert(next);
                *slot = (*slot).max(next);
                let waiting = std::mem::take(&mut self.waiting);
                for (o, k, v, s) in waiting {
                    if self.covered(&s) {
                        self.records.push((k, v));
                    } else {
                        self.waiting.push((o, k, v, s));
                    }
                }
            }
            Some(RecordKey::User | RecordKey::Sku) if stamps.is_empty() => {
                tracing::warn!(
                    offset,
                    "a changelog record without its source offsets; skipped"
                );
            }
            Some(RecordKey::User | RecordKey::Sku) => {
                if self.covered(&stamps) {
                    self.records.push((key, value));
                } else {
                    self.waiting.push((offset, key, value, stamps));
                }
            }
            None => tracing::warn!(offset, "a changelog record with an unknown key; skipped"),
        }
    }

    /// The changelog position that is safe to record: no waiting record before it.
    fn safe_position(&self, read_up_to: i64) -> i64 {
        self.waiting
            .first()
            .map(|(o, ..)| *o)
            .unwrap_or(read_up_to)
            .min(read_up_to)
    }
}

/// How long a restore waits for a changelog partition's end to be reported before taking a quiet
/// spell as its end (a broker that never reports it). The end normally comes with a fetch: the
/// fetch response's high watermark, not a ListOffsets answer, which some Kafka-compatible brokers
/// (tansu) give as the first offset of the last record batch plus one.
const QUIET_GIVE_UP: Duration = Duration::from_secs(10);

/// One changelog partition being read by [`restore`].
struct Reading {
    replay: Replay,
    result: Restored,
    /// The next offset to read, and whether a fetch reported it as the partition's end.
    next: i64,
    at_end: bool,
    /// The position the read started from, and whether a record came yet.
    from: i64,
    first: bool,
}

/// Reads changelog partitions `partitions` from the store's positions to their ends, together, and
/// applies them; the input offsets of `inputs` come from the markers. A partition whose store
/// position is the changelog's end, or that holds no record, is not read. Stops early, having
/// applied a consistent prefix, when `keep_going` turns false.
pub fn restore(
    config: &Config,
    store: &Store,
    topic: &str,
    partitions: &[i32],
    inputs: &[String],
    keep_going: &dyn Fn() -> bool,
) -> Result<Vec<(i32, Restored)>, ChangelogError> {
    let read_error = |partition: i32| {
        move |error| ChangelogError::Read {
            topic: topic.to_string(),
            partition,
            error,
        }
    };
    let mut cc = client_config(config);
    cc.set("group.id", format!("{}.restore", config.kafka.group_id))
        .set("enable.auto.commit", "false")
        // The end of a partition is where a fetch response's high watermark says it is.
        .set("enable.partition.eof", "true")
        // A position past the changelog's end (a store that is ahead of it) restarts from its start.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        // Bounded like the main consumer's prefetch: a restore reads ahead of what it applies.
        .set("queued.max.messages.kbytes", "16384");
    let first_partition = partitions.first().copied().unwrap_or(0);
    let consumer: BaseConsumer<RestoreContext> = cc
        .create_with_context(RestoreContext)
        .map_err(read_error(first_partition))?;
    // Leaders known before the watermark queries: otherwise the first waits out librdkafka's retry
    // backoff (100 ms) for the metadata it asks for.
    consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(read_error(first_partition))?;
    let mut readings: HashMap<i32, Reading> = HashMap::new();
    let mut done = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for &partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(read_error(partition))?;
        let stored = store.changelog_position(topic, partition)?;
        if stored == Some(high) || low == high {
            // The last record of the partition is the last this store applied (current), or the
            // partition holds no record to restore. Not trusted as an end are answers between
            // those: a broker may give less than the partition's end (see `QUIET_GIVE_UP`).
            done.push((partition, Restored::default()));
            continue;
        }
        // What the store already reaches counts as covered (untrusted once the store turns out
        // to be ahead of its changelog).
        let reached: HashMap<String, i64> = inputs
            .iter()
            .filter_map(|t| match store.next_offset(t, partition) {
                Ok(Some(next)) => Some(Ok((t.clone(), next))),
                Ok(None) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        let start = match stored {
            Some(position) => Offset::Offset(position),
            None => Offset::Beginning,
        };
        tpl.add_partition_offset(topic, partition, start)
            .map_err(read_error(partition))?;
        let from = stored.unwrap_or(0);
        readings.insert(
            partition,
            Reading {
                replay: Replay {
                    reached,
                    waiting: Vec::new(),
                    records: Vec::new(),
                    offsets: HashMap::new(),
                },
                result: Restored::default(),
                next: from,
                at_end: false,
                from,
                first: true,
            },
        );
    }
    if readings.is_empty() {
        close_in_background(consumer);
        return Ok(done);
    }
    consumer.assign(&tpl).map_err(read_error(first_partition))?;
    read_to_end(&consumer, store, topic, &mut readings, keep_going)?;
    close_in_background(consumer);
    // One fsync for the whole restore: a sled batch is atomic, so a crash before it leaves a
    // prefix of the chunks with their positions, and the next restore continues from there.
    store.flush()?;
    done.extend(readings.into_iter().map(|(p, r)| (p, r.result)));
    Ok(done)
}

/// Closing a consumer polls it in 100 ms steps until librdkafka has closed it: the restored
/// partitions need not wait for that.
fn close_in_background(consumer: BaseConsumer<RestoreContext>) {
    // Should the thread not start, the consumer is dropped (closed) here.
    let _ = std::thread::Builder::new()
        .name("restore-close".into())
        .spawn(move || drop(consumer));
}

/// The restore consumer's context: rdkafka also hands each partition's end to the client's error
/// callback, and for a restore that end is the news it waits for, not an error.
struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(%error, reason, "changelog restore: Kafka client error (librdkafka retries on its own)");
        }
    }
}

impl ConsumerContext for RestoreContext {}

/// Polls the changelog partitions of `readings` until their ends (or `keep_going` turns false),
/// applying each partition's records to `store` once they are covered by their batch's marker.
fn read_to_end(
    consumer: &BaseConsumer<RestoreContext>,
    store: &Store,
    topic: &str,
    readings: &mut HashMap<i32, Reading>,
    keep_going: &dyn Fn() -> bool,
) -> Result<(), ChangelogError> {
    let expected_format = STORE_FORMAT.to_string();
    let mut last_record = Instant::now();
    while keep_going() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last_record = Instant::now();
                let partition = m.partition();
                let Some(r) = readings.get_mut(&partition) else {
                    continue;
                };
                if r.first && m.offset() < r.from {
                    tracing::warn!(
                        changelog = topic,
                        partition,
                        store_position = r.from,
                        "the store is ahead of its changelog (another cluster's store, or the \
                         changelog was recreated): not trusted; restoring the partition from the \
                         changelog's start"
                    );
                    r.replay.reached.clear();
                }
                r.first = false;
                r.result.read += 1;
                if let Some(found) = format_of(&m).filter(|f| *f != expected_format) {
                    return Err(ChangelogError::Format {
                        topic: topic.to_string(),
                        partition,
                        offset: m.offset(),
                        found,
                        expected: STORE_FORMAT,
                    });
                }
                r.next = m.offset() + 1;
                let (Some(key), Some(value)) = (m.key(), m.payload()) else {
                    continue;
                };
                r.replay
                    .read(m.offset(), key.to_vec(), value.to_vec(), stamps_of(&m));
                if r.replay.records.len() >= RESTORE_CHUNK {
                    r.take_chunk(partition).apply(store, topic)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                // Reported once per end reached, after every record before it was delivered.
                if let Some(r) = readings.get_mut(&partition) {
                    r.at_end = true;
                }
                if readings.values().all(|r| r.at_end) {
                    break;
                }
            }
            Some(Err(e)) => {
                return Err(ChangelogError::Read {
                    topic: topic.to_string(),
                    partition: readings.keys().copied().min().unwrap_or(0),
                    error: e,
                })
            }
            None if last_record.elapsed() >= QUIET_GIVE_UP => {
                tracing::warn!(
                    changelog = topic,
                    quiet_seconds = QUIET_GIVE_UP.as_secs(),
                    "the broker never reported the changelog's end; taking a quiet spell as the end"
                );
                break;
            }
            None => {}
        }
    }
    let complete = keep_going();
    for (&partition, r) in readings.iter_mut() {
        if complete {
            // At the end, records still waiting belong to a batch that never completed: left
            // out, its input is processed again from the marker's offset.
            r.result.discarded = r.replay.waiting.len() as u64;
            r.replay.waiting.clear();
        }
        // Stopped early (revoked, stopping): what is applied is a consistent prefix.
        r.take_chunk(partition).apply(store, topic)?;
    }
    Ok(())
}

impl Reading {
    /// What the replay has ready, with the input offsets and the changelog position it reaches.
    fn take_chunk(&mut self, partition: i32) -> Chunk {
        let records = std::mem::take(&mut self.replay.records);
        self.result.applied += records.len() as u64;
        Chunk {
            partition,
            records,
            offsets: self
                .replay
                .offsets
                .iter()
                .map(|((t, p), n)| (t.clone(), *p, *n))
                .collect(),
            position: self.replay.safe_position(self.next),
        }
    }
}

/// Restored records of one changelog partition ready to write, with the input offsets and the
/// changelog position they reach: one sled batch.
struct Chunk {
    partition: i32,
    records: Vec<(Vec<u8>, Vec<u8>)>,
    offsets: Vec<(String, i32, i64)>,
    position: i64,
}

impl Chunk {
    fn apply(mut self, store: &Store, topic: &str) -> Result<(), StoreError> {
        // In key order sled walks to neighbouring leaves; of a key written twice, the last wins.
        self.records.reverse();
        self.records.sort_by(|a, b| a.0.cmp(&b.0)); // stable: the last write first per key
        self.records.dedup_by(|later, first| later.0 == first.0);
        store.apply_restored(
            &self.records,
            &self.offsets,
            (topic, self.partition, self.position),
        )
    }
}

/// A partition restored and ready to resume: the input partition and its next offset per the store.
pub struct Ready {
    pub partition: Partition,
    pub next_offset: Option<i64>,
    generation: u64,
}

struct Request {
    partitions: Vec<Partition>,
    generation: u64,
}

/// Restores assigned partitions on a thread of its own, one changelog partition at a time, while
/// the poll loop keeps the other partitions flowing; revoked partitions' restores stop early.
pub struct Restorer {
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    ready: Mutex<mpsc::Receiver<Ready>>,
    /// The current assignment's generation of each partition being restored.
    restoring: Arc<Mutex<HashMap<Partition, u64>>>,
    generation: std::sync::atomic::AtomicU64,
    health: Arc<Health>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Restorer {
    pub fn start(
        config: &Config,
        store: Store,
        health: Arc<Health>,
        shutdown: Shutdown,
    ) -> Result<Option<Restorer>, ChangelogError> {
        let Some(topic) = config.changelog_topic() else {
            return Ok(None);
        };
        let (requests, requested) = mpsc::channel::<Request>();
        let (done, ready) = mpsc::channel::<Ready>();
        let restoring: Arc<Mutex<HashMap<Partition, u64>>> = Arc::default();
        let thread = {
            let (config, restoring, health) = (config.clone(), restoring.clone(), health.clone());
            std::thread::Builder::new()
                .name("restore".into())
                .spawn(move || {
                    for request in requested.iter() {
                        if shutdown.is_triggered() {
                            break;
                        }
                        run_request(
                            &config, &store, &topic, &restoring, &shutdown, &health, request, &done,
                        );
                    }
                })
                .map_err(ChangelogError::Thread)?
        };
        Ok(Some(Restorer {
            requests: Mutex::new(Some(requests)),
            ready: Mutex::new(ready),
            restoring,
            generation: Default::default(),
            health,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Queues the restore of newly assigned (and paused) partitions.
    pub fn request(&self, partitions: Vec<Partition>) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut restoring = self.restoring.lock().expect("restoring lock");
            for p in &partitions {
                restoring.insert(p.clone(), generation);
            }
            self.publish(restoring.len());
        }
        if let Some(tx) = self.requests.lock().expect("requests lock").as_ref() {
            let _ = tx.send(Request {
                partitions,
                generation,
            });
        }
    }

    /// Revoked partitions: their restores stop, and their results are ignored.
    pub fn cancel(&self, partitions: &[Partition]) {
        let mut restoring = self.restoring.lock().expect("restoring lock");
        for p in partitions {
            restoring.remove(p);
        }
        self.publish(restoring.len());
    }

    /// Partitions restored since the last call that are still assigned in the same generation.
    pub fn take_ready(&self) -> Vec<Ready> {
        let ready: Vec<Ready> = self.ready.lock().expect("ready lock").try_iter().collect();
        ready.into_iter().filter(|r| self.is_current(r)).collect()
    }

    /// Whether `ready` still belongs to its partition's current assignment (not revoked, not
    /// assigned again since, which starts a new restore).
    pub fn is_current(&self, ready: &Ready) -> bool {
        self.restoring
            .lock()
            .expect("restoring lock")
            .get(&ready.partition)
            == Some(&ready.generation)
    }

    /// The partition of `ready` was resumed: it is no longer restoring.
    pub fn resumed(&self, ready: &Ready) {
        let mut restoring = self.restoring.lock().expect("restoring lock");
        if restoring.get(&ready.partition) == Some(&ready.generation) {
            restoring.remove(&ready.partition);
        }
        self.publish(restoring.len());
    }

    /// Whether a partition is paused for a restore.
    pub fn is_restoring(&self, partition: &Partition) -> bool {
        self.restoring
            .lock()
            .expect("restoring lock")
            .contains_key(partition)
    }

    fn publish(&self, restoring: usize) {
        self.health
            .restoring_partitions
            .store(restoring, Ordering::Relaxed);
        metrics::record_restoring(restoring);
    }

    /// Stops the thread after the restore in hand (the shutdown also stops it early).
    pub fn stop(&self) {
        self.requests.lock().expect("requests lock").take();
        self.restoring.lock().expect("restoring lock").clear();
        if let Some(t) = self.thread.lock().expect("thread lock").take() {
            let _ = t.join();
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_request(
    config: &Config,
    store: &Store,
    topic: &str,
    restoring: &Mutex<HashMap<Partition, u64>>,
    shutdown: &Shutdown,
    health: &Health,
    request: Request,
    done: &mpsc::Sender<Ready>,
) {
    let current = |p: &Partition| {
        restoring.lock().expect("restoring lock").get(p) == Some(&request.generation)
    };
    let numbers: HashSet<i32> = request
        .partitions
        .iter()
        .filter(|p| current(p))
        .map(|(_, p)| *p)
        .collect();
    let mut numbers: Vec<i32> = numbers.into_iter().collect();
    numbers.sort_unstable();
    if numbers.is_empty() {
        return;
    }
    let started = Instant::now();
    let keep_going = || !shutdown.is_triggered() && request.partitions.iter().any(current);
    let fail = |what: String| {
        // Processing the partition without its memory would answer from an empty or stale one;
        // a restart tries the restore again.
        tracing::error!(
            changelog = topic,
            "{what}; stopping (the restart tries again)"
        );
        health.failed.store(true, Ordering::Relaxed);
        shutdown.trigger();
    };
    let restored = match restore(
        config,
        store,
        topic,
        &numbers,
        &config.topics.input,
        &keep_going,
    ) {
        Ok(restored) => restored,
        Err(e) => {
            return fail(format!(
                "restoring partitions {numbers:?} from the changelog failed: {e}"
            ))
        }
    };
    if !keep_going() {
        return; // revoked or stopping: the partitions are not resumed here
    }
    let seconds = started.elapsed().as_secs_f64();
    let applied: u64 = restored.iter().map(|(_, r)| r.applied).sum();
    metrics::record_restore(applied, seconds);
    for (partition, r) in &restored {
        if r.read > 0 {
            tracing::info!(
                changelog = topic,
                partition,
                read = r.read,
                applied = r.applied,
                discarded = r.discarded,
                seconds,
                "restored the partition's memory from the changelog"
            );
        }
    }
    for input in request.partitions.iter().filter(|p| numbers.contains(&p.1)) {
        let next_offset = match store.next_offset(&input.0, input.1) {
            Ok(n) => n,
            Err(e) => return fail(format!("cannot read the restored offset: {e}")),
        };
        let _ = done.send(Ready {
            partition: input.clone(),
            next_offset,
            generation: request.generation,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(topic: &str, next: i64) -> (Vec<u8>, Vec<u8>) {
        (offset_key(topic, 0), position_bytes(next).to_vec())
    }

    fn replay(reached: &[(&str, i64)]) -> Replay {
        Replay {
            reached: reached.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            waiting: Vec::new(),
            records: Vec::new(),
            offsets: HashMap::new(),
        }
    }

    fn stamp(topic: &str, next: i64) -> Vec<(String, i32, i64)> {
        vec![(topic.to_string(), 0, next)]
    }

    #[test]
    fn a_chunk_writes_the_last_version_of_each_record_with_its_positions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store"), 1 << 20).unwrap();
        let user = |clicks| {
            postcard::to_allocvec(&crate::memory::UserMemory {
                clicks,
                ..Default::default()
            })
            .unwrap()
        };
        let chunk = Chunk {
            partition: 3,
            // Out of key order, and user b twice: its later version must win.
            records: vec![
                (b"u/b".to_vec(), user(1)),
                (b"u/a".to_vec(), user(7)),
                (b"u/b".to_vec(), user(2)),
            ],
            offsets: vec![("in".to_string(), 3, 42)],
            position: 9,
        };
        chunk.apply(&store, "log").unwrap();
        assert_eq!(store.user("a").unwrap().unwrap().clicks, 7);
        assert_eq!(store.user("b").unwrap().unwrap().clicks, 2);
        assert_eq!(store.next_offset("in", 3).unwrap(), Some(42));
        assert_eq!(store.changelog_position("log", 3).unwrap(), Some(9));
    }

    #[test]
    fn records_wait_for_the_marker_of_their_batch() {
        let mut r = replay(&[]);
        r.read(0, b"u/a".to_vec(), b"A1".to_vec(), stamp("in", 10));
        assert!(r.records.is_empty(), "no marker yet");
        let (k, v) = marker("in", 10);
        r.read(1, k, v, Vec::new());
        assert_eq!(r.records, vec![(b"u/a".to_vec(), b"A1".to_vec())]);
        assert_eq!(r.offsets[&("in".to_string(), 0)], 10);
    }

    #[test]
    fn a_batch_cut_short_is_left_out_and_its_replay_applied() {
        // A crash after two records of a batch that reached 20; the next owner processed the same
        // input in two batches (15, then 20).
        let mut r = replay(&[("in", 10)]);
        r.read(5, b"u/a".to_vec(), b"A-crashed".to_vec(), stamp("in", 20));
        r.read(6, b"u/b".to_vec(), b"B-crashed".to_vec(), stamp("in", 20));
        assert_eq!(
            r.safe_position(7),
            5,
            "the position never passes a waiting record"
        );
        r.read(7, b"u/a".to_vec(), b"A-15".to_vec(), stamp("in", 15));
        let (k, v) = marker("in", 15);
        r.read(8, k, v, Vec::new());
        // Only what the marker covers is applied; the crashed batch's records still wait.
        assert_eq!(r.records, vec![(b"u/a".to_vec(), b"A-15".to_vec())]);
        assert_eq!(r.waiting.len(), 2);
        r.read(9, b"u/b".to_vec(), b"B-20".to_vec(), stamp("in", 20));
        let (k, v) = marker("in", 20);
        r.read(10, k, v, Vec::new());
        // In changelog order, so the replayed B-20 is written after the crashed B.
        let values: Vec<&[u8]> = r.records.iter().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(
            values,
            vec![&b"A-15"[..], b"A-crashed", b"B-crashed", b"B-20"]
        );
        assert!(r.waiting.is_empty());
        assert_eq!(r.safe_position(11), 11);
    }

    #[test]
    fn records_the_store_already_reaches_apply_at_once() {
        let mut r = replay(&[("in", 30)]);
        r.read(0, b"s/x\0y".to_vec(), b"S".to_vec(), stamp("in", 25));
        assert_eq!(r.records.len(), 1);
    }
}
