//! Wires the stages and owns the order of every micro-batch:
//!
//! 1. poll a micro-batch ([`Source::next_batch`]);
//! 2. decode and validate each message; rejects become dead letters;
//! 3. apply each user event to that user's memory (read from sled, changed in memory only);
//! 4. one ONNX Runtime call for all of the batch's user events → top-K per event;
//!    3b/4b. apply each supply-chain event to its SKU × location memory, step the demand
//!    forecaster for the days that completed, assess stockout risk → alerts ([`crate::inventory`]);
//! 5. produce recommendations, alerts, demand records (purchases that name a location, forwarded to
//!    their SKU × location's partition) and dead letters, and wait for the broker's
//!    acknowledgements (on failure: produce the same outputs again; the state is still unwritten);
//! 6. write the changed memories and every partition's next offset to sled in one atomic batch, flush;
//! 7. commit the offsets to Kafka (for lag monitoring and tools).
//!
//! A crash before step 6 replays the batch from unchanged state (outputs repeat, none is missing); a
//! crash after it replays nothing. Each event is applied to the state exactly once; each output is
//! delivered at least once and carries its source offset, so consumers can drop repeats.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::event::{
    self, DeadLetter, Event, EventType, InMessage, ModelRef, Recommendation, RejectReason,
    SupplyEvent,
};
use crate::inventory::{self, Inventory};
use crate::memory::{Store, StoreBatch, StoreError};
use crate::metrics::{self, Health, Stage};
use crate::model::forecaster::Forecaster;
use crate::model::{Model, ModelError};
use crate::recommend;
use crate::shutdown::Shutdown;
use crate::sink::{Output, Sink, SinkError};
use crate::source::{Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Recommend(#[from] recommend::RecommendError),
    #[error(transparent)]
    Inventory(#[from] inventory::InventoryError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Running totals for callers in the same process (the demo, benchmarks); operators use /metrics.
#[derive(Default)]
pub struct RunStats {
    pub messages: AtomicU64,
    /// Micro-batches processed (messages / batches = the mean batch size).
    pub batches: AtomicU64,
    pub recommendations: AtomicU64,
    pub dead_letters: AtomicU64,
    /// Nanoseconds spent processing batches (not waiting for input).
    pub busy_nanos: AtomicU64,
    pub rejects: Mutex<BTreeMap<&'static str, u64>>,
    /// Nanoseconds per pipeline stage, indexed like [`Stage::ALL`].
    pub stage_nanos: [AtomicU64; Stage::ALL.len()],
    /// End-to-end latency in microseconds, from the Kafka timestamp to the output's acknowledgement.
    pub latency_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl RunStats {
    fn record_stage(&self, stage: Stage, since: Instant) {
        let elapsed = since.elapsed();
        metrics::record_stage(stage, elapsed);
        self.add_stage(stage, elapsed);
    }

    fn add_stage(&self, stage: Stage, elapsed: Duration) {
        self.stage_nanos[stage as usize].fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Seconds spent in each stage so far.
    pub fn stage_seconds(&self) -> Vec<(&'static str, f64)> {
        Stage::ALL
            .iter()
            .map(|s| {
                (
                    s.as_str(),
                    self.stage_nanos[*s as usize].load(Ordering::Relaxed) as f64 / 1e9,
                )
            })
            .collect()
    }

    fn record_latency(&self, micros: u64) {
        let mut h = self.latency_us.lock().expect("latency lock");
        let h = h.get_or_insert_with(|| {
            hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds")
        });
        let _ = h.record(micros.clamp(1, 3_600_000_000));
    }

    /// The end-to-end latency histogram so far (microseconds), starting a new one.
    pub fn take_latency(&self) -> Option<hdrhistogram::Histogram<u64>> {
        self.latency_us.lock().expect("latency lock").take()
    }

    /// (p50, p99) end-to-end latency in milliseconds, if any output was acknowledged.
    pub fn latency_ms(&self) -> Option<(f64, f64)> {
        let h = self.latency_us.lock().expect("latency lock");
        h.as_ref().filter(|h| !h.is_empty()).map(|h| {
            (
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
            )
        })
    }
}

/// Runs the pipeline on the calling thread until `shutdown` triggers; blocking (call it from a
/// dedicated thread, never from an async runtime's worker).
pub fn run(
    config: &Config,
    health: Arc<Health>,
    shutdown: Shutdown,
    stats: Arc<RunStats>,
) -> Result<(), PipelineError> {
    let result = run_inner(config, &health, &shutdown, &stats);
    if let Err(e) = &result {
        health.failed.store(true, Ordering::Relaxed);
        tracing::error!(error = %e, "pipeline stopped");
    }
    result
}

fn run_inner(
    config: &Config,
    health: &Arc<Health>,
    shutdown: &Shutdown,
    stats: &RunStats,
) -> Result<(), PipelineError> {
    let model = Model::load(&config.model)?;
    if config.store.history_len < model.manifest.window {
        tracing::warn!(
            history_len = config.store.history_len,
            window = model.manifest.window,
            "store.history_len is shorter than the model's window; the model sees fewer items than it could"
        );
    }
    metrics::record_model(
        &model.manifest.name,
        &model.manifest.version,
        model.provider().as_str(),
    );
    tracing::info!(
        model = %model.manifest.name,
        version = %model.manifest.version,
        provider = model.provider().as_str(),
        "model loaded"
    );
    let inventory = if config.supply.enabled {
        let mut forecaster_config = config.model.clone();
        forecaster_config.path = config.supply.forecaster.clone();
        let forecaster = Forecaster::load(&forecaster_config)?;
        tracing::info!(
            forecaster = %forecaster.manifest.name,
            version = %forecaster.manifest.version,
            demand_topic = config.supply.demand_topic(&config.topics),
            "demand forecaster loaded"
        );
        Some(Inventory::new(forecaster, config.supply.clone()))
    } else {
        None
    };
    health.model_loaded.store(true, Ordering::Relaxed);

    let store = Store::open(&config.store.path, config.store.cache_bytes)?;
    metrics::record_store(&store);
    let sink = Sink::new(config)?;
    let source = Source::new(config, store.clone(), health.clone())?;
    let mut worker = Worker {
        config,
        store: &store,
        sink: &sink,
        model,
        inventory,
        shutdown,
        stats,
    };
    let max_wait = Duration::from_millis(config.batch.max_wait_ms);
    let mut last_gauges = Instant::now();
    let outcome = loop {
        if shutdown.is_triggered() {
            break Ok(());
        }
        let batch = source.next_batch(config.batch.max_events, max_wait, shutdown);
        if !batch.is_empty() {
            let started = Instant::now();
            match worker.process(&batch) {
                Ok(Some(next_offsets)) => {
                    let t = Instant::now();
                    if let Err(e) =
                        source.commit(next_offsets.iter().map(|(t, p, o)| (t.as_str(), *p, *o)))
                    {
                        tracing::warn!(error = %e, "committing offsets to Kafka failed; the store keeps them, the next commit catches up");
                    }
                    stats.record_stage(Stage::Commit, t);
                }
                Ok(None) => break Ok(()), // interrupted by shutdown before anything was written
                Err(e) => break Err(e),
            }
            stats
                .busy_nanos
                .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        if last_gauges.elapsed() > Duration::from_secs(1) {
            metrics::record_store(&store);
            last_gauges = Instant::now();
        }
    };
    source.close();
    sink.flush(Duration::from_secs(5));
    metrics::record_store(&store);
    health.assigned_partitions.store(0, Ordering::Relaxed);
    outcome
}

struct Worker<'a> {
    config: &'a Config,
    store: &'a Store,
    sink: &'a Sink,
    model: Model,
    inventory: Option<Inventory>,
    shutdown: &'a Shutdown,
    stats: &'a RunStats,
}

/// (topic, partition, next offset to read) of a partition a batch advanced.
type NextOffset = (String, i32, i64);

impl Worker<'_> {
    /// Processes one batch through steps 2–6. Returns the next offsets written, or `None` if shutdown
    /// interrupted the batch before its state was written (it will be replayed).
    fn process(&mut self, batch: &[InMessage]) -> Result<Option<Vec<NextOffset>>, PipelineError> {
        metrics::record_batch_size(batch.len());
        let now = now_ms();

        // 2. decode
        let t = Instant::now();
        let mut events: Vec<Option<Event>> = Vec::with_capacity(batch.len());
        let mut dead_letters: Vec<(usize, DeadLetter)> = Vec::new();
        for (i, msg) in batch.iter().enumerate() {
            match event::decode(msg, &self.config.limits, now) {
                Ok(e) => {
                    metrics::record_consumed(e.event_type());
                    events.push(Some(e));
                }
                Err(rejection) => {
                    metrics::record_rejected(rejection.reason);
                    self.count_reject(rejection.reason);
                    tracing::debug!(topic = %msg.topic, partition = msg.partition, offset = msg.offset, reason = rejection.reason.as_str(), detail = %rejection.detail, "rejected");
                    dead_letters.push((i, DeadLetter::new(msg, rejection, now)));
                    events.push(None);
                }
            }
        }
        self.stats.record_stage(Stage::Decode, t);

        // 3. memory and 4. inference
        let t = Instant::now();
        let outcome = recommend::answer(
            &mut self.model,
            self.store,
            &events,
            self.config.store.history_len,
            self.config.store.state_precision,
            self.config.model.exclude_seen,
        )?;
        metrics::record_stage(Stage::Inference, outcome.inference);
        self.stats.add_stage(Stage::Inference, outcome.inference);
        let memory_time = t.elapsed().saturating_sub(outcome.inference);
        metrics::record_stage(Stage::Memory, memory_time);
        self.stats.add_stage(Stage::Memory, memory_time);
        let rows = outcome.answers;
        let memories = outcome.memories;
        let supply = match self.inventory.as_mut() {
            Some(inventory) => {
                let t = Instant::now();
                let out = inventory.process(self.store, batch, &events, now)?;
                metrics::record_stage(Stage::Inference, out.inference);
                self.stats.add_stage(Stage::Inference, out.inference);
                let memory_time = t.elapsed().saturating_sub(out.inference);
                metrics::record_stage(Stage::Memory, memory_time);
                self.stats.add_stage(Stage::Memory, memory_time);
                Some(out)
            }
            None => None,
        };

        // 5. produce and wait for acknowledgements
        let t = Instant::now();
        let model_ref = ModelRef {
            name: self.model.manifest.name.clone(),
            version: self.model.manifest.version.clone(),
        };
        let emitted_at = now_ms();
        let topics = &self.config.topics;
        let mut outputs: Vec<Output> = Vec::with_capacity(rows.len() + dead_letters.len());
        for row in &rows {
            let msg = &batch[row.message];
            let rec = Recommendation {
                user_id: row.user_id.clone(),
                items: row.items.clone(),
                model: model_ref.clone(),
                source: msg.source(),
                event_type: row.event_type,
                event_timestamp_ms: row.event_timestamp_ms,
                ingest_timestamp_ms: msg.kafka_timestamp_ms.unwrap_or(emitted_at),
                emitted_at_ms: emitted_at,
            };
            outputs.push(Output {
                topic: &topics.recommendations,
                key: Some(row.user_id.as_bytes()),
                payload: serde_json::to_vec(&rec).expect("recommendations serialize"),
            });
        }
        // Purchases that name a location are that SKU × location's demand: forwarded, keyed by
        // sku@location, to the partition its supply events live on.
        let mut demand_records: Vec<(String, Vec<u8>)> = Vec::new();
        if self.inventory.is_some() {
            for (msg, e) in batch.iter().zip(&events) {
                let Some(Event::User(e)) = e else { continue };
                let (EventType::Purchase, Some(location)) = (e.event_type, &e.location) else {
                    continue;
                };
                let record = SupplyEvent::Demand {
                    sku: e.item_id.clone(),
                    location: location.clone(),
                    quantity: e.quantity.unwrap_or(1),
                    timestamp_ms: e.timestamp_ms,
                    source: msg.source(),
                };
                demand_records.push((
                    format!("{}@{location}", e.item_id),
                    serde_json::to_vec(&record).expect("demand records serialize"),
                ));
            }
        }
        let demand_topic = self.config.supply.demand_topic(topics);
        for (key, payload) in &demand_records {
            outputs.push(Output {
                topic: demand_topic,
                key: Some(key.as_bytes()),
                payload: payload.clone(),
            });
        }
        let alert_keys: Vec<String> = supply
            .iter()
            .flat_map(|s| &s.alerts)
            .map(|(_, a)| format!("{}@{}", a.sku, a.location))
            .collect();
        for ((_, alert), key) in supply.iter().flat_map(|s| &s.alerts).zip(&alert_keys) {
            outputs.push(Output {
                topic: &topics.alerts,
                key: Some(key.as_bytes()),
                payload: serde_json::to_vec(alert).expect("alerts serialize"),
            });
        }
        for (i, dl) in &dead_letters {
            outputs.push(Output {
                topic: &topics.dead_letter,
                key: batch[*i].key.as_deref(),
                payload: serde_json::to_vec(dl).expect("dead letters serialize"),
            });
        }
        let mut attempt = 0u32;
        while let Err(e) = self.sink.send_all(&outputs) {
            if self.shutdown.is_triggered() {
                tracing::warn!(error = %e, "stopping with a batch whose outputs were not acknowledged; it will be replayed");
                return Ok(None);
            }
            attempt += 1;
            metrics::record_produce_retry();
            let backoff = Duration::from_millis((100u64 << attempt.min(6)).min(5_000));
            tracing::error!(error = %e, attempt, ?backoff, "producing the batch's outputs failed; retrying the whole batch (state unchanged)");
            std::thread::sleep(backoff);
        }
        let acked_ms = now_ms();
        self.stats.record_stage(Stage::Produce, t);
        for row in &rows {
            if let Some(ts) = batch[row.message].kafka_timestamp_ms {
                let micros = (acked_ms - ts).max(0) as u64 * 1000;
                metrics::record_end_to_end(micros as f64 / 1e6);
                self.stats.record_latency(micros);
            }
        }
        metrics::record_outputs(rows.len() as u64, dead_letters.len() as u64);
        if let Some(s) = &supply {
            for (_, alert) in &s.alerts {
                metrics::record_alert(alert.kind);
            }
            metrics::record_demand(demand_records.len() as u64, s.duplicate_demand);
        }

        // 6. state and offsets, atomically
        let t = Instant::now();
        let mut writes = StoreBatch::default();
        for (user, memory) in memories {
            writes.put_user(user, memory);
        }
        for ((sku, location), memory) in supply.map(|s| s.memories).unwrap_or_default() {
            writes.put_sku(sku, location, memory);
        }
        for msg in batch {
            writes.advance(&msg.topic, msg.partition, msg.offset + 1);
        }
        self.store.commit(&writes)?;
        self.stats.record_stage(Stage::Store, t);

        self.stats
            .messages
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.stats
            .recommendations
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.stats
            .dead_letters
            .fetch_add(dead_letters.len() as u64, Ordering::Relaxed);
        Ok(Some(
            writes
                .next_offsets()
                .map(|(t, p, o)| (t.to_string(), p, o))
                .collect(),
        ))
    }

    fn count_reject(&self, reason: RejectReason) {
        *self
            .stats
            .rejects
            .lock()
            .expect("rejects lock")
            .entry(reason.as_str())
            .or_default() += 1;
    }
}
