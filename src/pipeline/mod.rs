//! Wires the stages and owns the order of every micro-batch:
//!
//! 1. poll a micro-batch ([`Source::next_batch`]);
//! 2. decode and validate each message; rejects become dead letters;
//! 3. apply each user event to that user's memory (read from sled, changed in memory only);
//! 4. one ONNX Runtime call for all of the batch's user events → every item's score per event;
//!    3b/4b. apply each supply-chain event to its SKU × location memory, step the demand
//!    forecaster for the days that completed, assess stockout risk → alerts ([`crate::supply::stage`]);
//! 5. rank each event's top K and encode the outputs; produce recommendations, alerts, demand records (purchases that name a location, forwarded to
//!    their SKU × location's partition), dead letters and the changed records to the changelog, and
//!    wait for the broker's acknowledgements (on failure: produce the same outputs again; the state
//!    is still unwritten). The changelog's offset markers, which say a batch is complete, follow
//!    its acknowledgements: in front of the next batch's outputs when that is already waiting
//!    (one round trip per batch under load), otherwise on their own once the batch is written;
//! 6. write the changed memories and every partition's next offset to sled in one atomic batch, flush;
//! 7. commit the offsets to Kafka (for lag monitoring and tools).
//!
//! Steps 1–4 run on the polling thread, the ranking and encoding of step 5 on an encoder thread, and
//! the rest of 5–6 on a finisher thread, so the next batch is computed while the last ones are
//! encoded, acknowledged and written (one waits between each two at most). The next batch reads
//! the memories a handed-on batch changed from [`Pending`] until they are in the store.
//! Batches are finished in order; a batch that is not written (shutdown, error) takes every later
//! one with it, since they were computed on its state. Rebalances wait until nothing is in flight
//! ([`crate::checkpoint::Checkpoint`]).
//!
//! A crash before step 6 replays the batch from unchanged state (outputs repeat, none is missing); a
//! crash after it replays nothing. Each event is applied to the state exactly once; each output is
//! delivered at least once and carries its source offset, so consumers can drop repeats.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::changelog::{self, ChangelogError};
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::event::{
    self, DeadLetter, Event, EventType, InMessage, ModelRef, Recommendation, RejectReason,
    SupplyEvent,
};
use crate::memory::{Pending, PendingView, RecordOwner, StateCache, Store, StoreBatch, StoreError};
use crate::metrics::{self, Health, Stage};
use crate::model::forecaster::Forecaster;
use crate::model::{Model, ModelError};
use crate::recommend::{self, Unranked};
use crate::rollout::{Desk, Shadow};
use crate::shutdown::Shutdown;
use crate::sink::{Output, Sink, SinkError};
use crate::source::{Source, SourceError};
use crate::supply::{Alert, AlertKind, SupplyError, SupplyStage};

mod encoder;
mod finisher;
mod worker;

use encoder::{Computed, Encoder};
use finisher::Finisher;
use worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Recommend(#[from] recommend::RecommendError),
    #[error(transparent)]
    Supply(#[from] SupplyError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Changelog(#[from] ChangelogError),
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
    /// Users whose step state was not in the state cache and was rebuilt from their window (by the
    /// prefill graph or by replaying it): each costs about a window's worth of model work.
    pub state_rebuilds: AtomicU64,
    /// User events stepped in bursts by the chunk graph (several of one user's in one call).
    pub burst_items: AtomicU64,
    /// Nanoseconds during which a batch was being processed by either thread (not waiting for input).
    pub busy_nanos: AtomicU64,
    /// Threads at work now, and since when at least one has been.
    busy_since: Mutex<(usize, Option<Instant>)>,
    pub rejects: Mutex<BTreeMap<&'static str, u64>>,
    /// Nanoseconds per pipeline stage, indexed like [`Stage::ALL`].
    pub stage_nanos: [AtomicU64; Stage::ALL.len()],
    /// End-to-end latency in microseconds, from the Kafka timestamp to the output's acknowledgement.
    pub latency_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// The daemon's share of it: from taking the event off the consumer to that acknowledgement.
    pub daemon_latency_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// When the first micro-batch was polled: a drain is timed from it, as the passthrough ceiling
    /// is, so that the wait for the first fetch after an assignment is reported on its own.
    pub first_batch: std::sync::OnceLock<Instant>,
}

impl RunStats {
    /// Marks a thread busy; overlapping busy stretches of the two threads count once.
    fn busy_begin(&self) {
        let mut b = self.busy_since.lock().expect("busy lock");
        b.0 += 1;
        b.1.get_or_insert_with(Instant::now);
    }

    fn busy_end(&self) {
        let mut b = self.busy_since.lock().expect("busy lock");
        b.0 = b.0.saturating_sub(1);
        if b.0 == 0 {
            if let Some(since) = b.1.take() {
                self.busy_nanos
                    .fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }

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
        record_micros(&self.latency_us, micros);
    }

    fn record_daemon_latency(&self, micros: u64) {
        record_micros(&self.daemon_latency_us, micros);
    }

    /// The end-to-end latency histogram so far (microseconds), starting a new one.
    pub fn take_latency(&self) -> Option<hdrhistogram::Histogram<u64>> {
        self.latency_us.lock().expect("latency lock").take()
    }

    /// The daemon's own latency histogram so far (consumer → acknowledged, microseconds), starting
    /// a new one.
    pub fn take_daemon_latency(&self) -> Option<hdrhistogram::Histogram<u64>> {
        self.daemon_latency_us.lock().expect("latency lock").take()
    }

    /// (p50, p99) end-to-end latency in milliseconds, if any output was acknowledged.
    pub fn latency_ms(&self) -> Option<(f64, f64)> {
        p50_p99_ms(&self.latency_us)
    }

    /// (p50, p99) of the daemon's share of it in milliseconds, if any output was acknowledged.
    pub fn daemon_latency_ms(&self) -> Option<(f64, f64)> {
        p50_p99_ms(&self.daemon_latency_us)
    }
}

fn p50_p99_ms(histogram: &Mutex<Option<hdrhistogram::Histogram<u64>>>) -> Option<(f64, f64)> {
    let h = histogram.lock().expect("latency lock");
    h.as_ref().filter(|h| !h.is_empty()).map(|h| {
        (
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
        )
    })
}

fn record_micros(histogram: &Mutex<Option<hdrhistogram::Histogram<u64>>>, micros: u64) {
    let mut h = histogram.lock().expect("latency lock");
    let h = h.get_or_insert_with(|| {
        hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds")
    });
    let _ = h.record(micros.clamp(1, 3_600_000_000));
}

/// Runs the pipeline on the calling thread until `shutdown` triggers; blocking (call it from a
/// dedicated thread, never from an async runtime's worker).
/// `rollout`: where model rollouts are asked for ([`crate::rollout::Rollout`]); `None` for none.
pub fn run(
    config: &Config,
    health: Arc<Health>,
    shutdown: Shutdown,
    stats: Arc<RunStats>,
    rollout: Option<Desk>,
) -> Result<(), PipelineError> {
    let result = run_inner(config, &health, &shutdown, &stats, rollout);
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
    mut rollout: Option<Desk>,
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
    let supply = if config.supply.enabled {
        let mut forecaster_config = config.model.clone();
        forecaster_config.path = config.supply.forecaster.clone();
        let forecaster = Forecaster::load(&forecaster_config)?;
        tracing::info!(
            forecaster = %forecaster.manifest.name,
            version = %forecaster.manifest.version,
            demand_topic = config.supply.demand_topic(&config.topics),
            "demand forecaster loaded"
        );
        Some(SupplyStage::new(forecaster, config.supply.clone()))
    } else {
        None
    };
    health.model_loaded.store(true, Ordering::Relaxed);

    let store = Store::open(&config.store.path, config.store.cache_bytes)?;
    metrics::record_store(&store);
    let sink = Sink::new(config)?;
    let changelog_topic = config.changelog_topic();
    changelog::prepare(config, Duration::from_secs(60))?;
    let restorer =
        changelog::Restorer::start(config, store.clone(), health.clone(), shutdown.clone())?
            .map(Arc::new);
    let source = Source::new(
        config,
        store.clone(),
        restorer.clone(),
        health.clone(),
        shutdown.clone(),
    )?;
    let checkpoint = source.checkpoint();
    let pending = Mutex::new(Pending::default());
    let mut worker = Worker {
        config,
        store: &store,
        pending: &pending,
        model,
        state_cache: StateCache::new(config.store.state_cache_bytes, config.store.state_precision),
        supply,
        stats,
    };
    let encoder = Encoder {
        config,
        changelog: changelog_topic.as_deref(),
    };
    let finisher = Finisher {
        store: &store,
        sink: &sink,
        pending: &pending,
        checkpoint: &checkpoint,
        shutdown,
        stats,
        changelog: changelog_topic.as_deref(),
    };
    let max_wait = Duration::from_millis(config.batch.max_wait_ms);
    // One batch is computed while the ones before it are encoded, produced, acknowledged and
    // written: at most one waits between each two stages (backpressure).
    let (to_encoder, computed) = mpsc::sync_channel::<Computed>(1);
    let (hand_on, handed) = mpsc::sync_channel::<Result<Prepared, PipelineError>>(1);
    let (report, reports) = mpsc::channel::<Finished>();
    let outcome = std::thread::scope(|scope| {
        let checkpoint = &checkpoint;
        scope.spawn(move || encoder.run(computed, hand_on, checkpoint, stats));
        scope.spawn(move || finisher.run(handed, report));
        let mut last_gauges = Instant::now();
        let mut seq = 0u64;
        let outcome = loop {
            match commit_finished(&source, reports.try_iter(), stats, health) {
                Ok(true) => {}
                Ok(false) => break Ok(()), // shutdown interrupted a batch; it will be replayed
                Err(e) => break Err(e),
            }
            if shutdown.is_triggered() {
                break Ok(());
            }
            // A model swap happens here, between two batches: each batch is scored by one model.
            if let Some(desk) = rollout.as_mut() {
                desk.between_batches(config, &store, &mut worker.model, &mut worker.state_cache);
            }
            let batch = source.next_batch(config.batch.max_events, max_wait, shutdown);
            if !batch.is_empty() {
                stats.first_batch.get_or_init(Instant::now);
                stats.busy_begin();
                seq += 1;
                let shadow = rollout.as_mut().and_then(|desk| desk.shadow());
                let computed = match worker.compute(batch, seq, shadow) {
                    Ok(c) => c,
                    Err(e) => {
                        stats.busy_end();
                        break Err(e);
                    }
                };
                pending
                    .lock()
                    .expect("pending lock")
                    .remember(seq, &computed.writes);
                checkpoint.batch_started();
                // Blocks while the encoder is a batch behind: that wait counts as busy.
                let handed_on = to_encoder.send(computed);
                stats.busy_end();
                if handed_on.is_err() {
                    checkpoint.batch_ended();
                    break Ok(()); // the encoder and finisher stopped; the report says why
                }
            }
            if last_gauges.elapsed() > Duration::from_secs(1) {
                metrics::record_store(&store);
                last_gauges = Instant::now();
            }
        };
        // Let the encoder and finisher write what they were handed, then commit those offsets too.
        drop(to_encoder);
        let finished = commit_finished(&source, reports.iter(), stats, health);
        outcome.and(finished.map(|_| ()))
    });
    source.close();
    if let Some(restorer) = &restorer {
        restorer.stop();
    }
    sink.flush(Duration::from_secs(5));
    metrics::record_store(&store);
    health.assigned_partitions.store(0, Ordering::Relaxed);
    outcome
}

/// Commits the finished batches' offsets to Kafka; `Ok(false)` once one was interrupted by shutdown.
fn commit_finished(
    source: &Source,
    reports: impl Iterator<Item = Finished>,
    stats: &RunStats,
    health: &Health,
) -> Result<bool, PipelineError> {
    for report in reports {
        match report {
            Finished::Written(next_offsets) => {
                health.record_progress();
                let t = Instant::now();
                if let Err(e) =
                    source.commit(next_offsets.iter().map(|(t, p, o)| (t.as_str(), *p, *o)))
                {
                    tracing::warn!(error = %e, "committing offsets to Kafka failed; the store keeps them, the next commit catches up");
                }
                stats.record_stage(Stage::Commit, t);
            }
            Finished::Interrupted => return Ok(false),
            Finished::Failed(e) => return Err(e),
        }
    }
    Ok(true)
}

/// (topic, partition, next offset to read) of a partition a batch advanced.
type NextOffset = (String, i32, i64);

/// A computed batch on its way out: its outputs, then its state and offsets.
struct Prepared {
    seq: u64,
    outputs: Vec<Output>,
    writes: StoreBatch,
    recommendations: u64,
    /// Kafka timestamps of the events answered with a recommendation (end-to-end latency).
    answered_at_ms: Vec<i64>,
    /// When each of those events was taken from the consumer (the daemon's own latency).
    answered_polled_at_ms: Vec<i64>,
    dead_letters: u64,
    alerts: Vec<AlertKind>,
    demand_records: u64,
    duplicate_demand: Option<u64>,
    messages: u64,
    /// Changelog records among the outputs (the last ones).
    changelog_records: u64,
    /// The changelog's offset markers, produced once the outputs are acknowledged (with the next
    /// batch's outputs, or on their own).
    changelog_markers: Vec<Output>,
}

enum Finished {
    Written(Vec<NextOffset>),
    /// Shutdown came while the outputs could not be produced; nothing was written.
    Interrupted,
    Failed(PipelineError),
}
