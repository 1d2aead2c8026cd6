//! Every metric longmem exports, declared and described here once, and the HTTP endpoint that serves
//! them with the health probes: `/metrics` (Prometheus text), `/healthz` (the process is alive, its
//! pipeline has not failed, and the watchdog does not see it stalled: messages waiting on assigned
//! partitions and no micro-batch completed for `metrics.stall_timeout_s`) and `/readyz` (healthy,
//! the model is loaded and partitions are assigned).
//!
//! Conventions: prefix `longmem_`, units in the name, labels with bounded values only (event type,
//! reject reason, pipeline stage, topic and partition); never a user or item id.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::event::{EventType, RejectReason};
use crate::pipeline::now_ms;
use crate::shutdown::Shutdown;
use crate::supply::AlertKind;

pub const EVENTS_CONSUMED: &str = "longmem_events_consumed_total";
pub const EVENTS_REJECTED: &str = "longmem_events_rejected_total";
pub const RECOMMENDATIONS: &str = "longmem_recommendations_produced_total";
pub const DEAD_LETTERS: &str = "longmem_dead_letters_produced_total";
pub const PRODUCE_RETRIES: &str = "longmem_produce_retries_total";
pub const BATCH_SIZE: &str = "longmem_batch_size_events";
pub const BATCH_STAGE: &str = "longmem_batch_stage_duration_seconds";
pub const INFERENCE: &str = "longmem_inference_duration_seconds";
pub const END_TO_END: &str = "longmem_end_to_end_latency_seconds";
pub const DAEMON_LATENCY: &str = "longmem_daemon_latency_seconds";
pub const CONSUMER_LAG: &str = "longmem_consumer_lag_messages";
pub const ASSIGNED_PARTITIONS: &str = "longmem_assigned_partitions";
pub const STORE_SIZE: &str = "longmem_store_size_bytes";
pub const STORE_VOLUME_SIZE: &str = "longmem_store_volume_size_bytes";
pub const STORE_VOLUME_AVAILABLE: &str = "longmem_store_volume_available_bytes";
pub const ALERTS: &str = "longmem_alerts_produced_total";
pub const DEMAND_FORWARDED: &str = "longmem_demand_records_forwarded_total";
pub const DEMAND_DUPLICATES: &str = "longmem_demand_records_duplicate_total";
pub const STALLS: &str = "longmem_pipeline_stalls_total";
pub const STATE_REBUILDS: &str = "longmem_state_rebuilds_total";
pub const BURST_EVENTS: &str = "longmem_burst_events_total";
pub const STATE_CACHE_BYTES: &str = "longmem_state_cache_bytes";
pub const STATE_CACHE_USERS: &str = "longmem_state_cache_users";
pub const MODEL_INFO: &str = "longmem_model_info";
pub const MODEL_RELOADS: &str = "longmem_model_reloads_total";
pub const SHADOW_OVERLAP: &str = "longmem_model_shadow_top10_overlap";
pub const SHADOW_P99_RATIO: &str = "longmem_model_shadow_p99_ratio";
pub const CHANGELOG_RECORDS: &str = "longmem_changelog_records_produced_total";
pub const RESTORING_PARTITIONS: &str = "longmem_changelog_restoring_partitions";
pub const RESTORED_RECORDS: &str = "longmem_changelog_records_restored_total";
pub const RESTORE_SECONDS: &str = "longmem_changelog_restore_duration_seconds";
pub const EXECUTION_PROVIDER: &str = "longmem_execution_provider_info";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];
const STAGE_BUCKETS: &[f64] = &[
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(END_TO_END.into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(DAEMON_LATENCY.into()), LATENCY_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(INFERENCE.into()), STAGE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_STAGE.into()), STAGE_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process");
            describe();
            // Zero-valued series from the start, so dashboards and alerts see every type and reason.
            for t in EventType::ALL {
                counter!(EVENTS_CONSUMED, "type" => t.as_str()).absolute(0);
            }
            for r in RejectReason::ALL {
                counter!(EVENTS_REJECTED, "reason" => r.as_str()).absolute(0);
            }
            for k in AlertKind::ALL {
                counter!(ALERTS, "kind" => k.as_str()).absolute(0);
            }
            for how in ["prefill", "replay"] {
                counter!(STATE_REBUILDS, "how" => how).absolute(0);
            }
            for c in [
                RECOMMENDATIONS,
                DEAD_LETTERS,
                PRODUCE_RETRIES,
                DEMAND_FORWARDED,
                DEMAND_DUPLICATES,
                STALLS,
                CHANGELOG_RECORDS,
                BURST_EVENTS,
                RESTORED_RECORDS,
            ] {
                counter!(c).absolute(0);
            }
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        EVENTS_CONSUMED,
        Unit::Count,
        "Valid events consumed, by event type."
    );
    describe_counter!(
        EVENTS_REJECTED,
        Unit::Count,
        "Messages rejected to the dead-letter topic, by reason."
    );
    describe_counter!(
        RECOMMENDATIONS,
        Unit::Count,
        "Recommendations acknowledged by the broker."
    );
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Dead letters acknowledged by the broker."
    );
    describe_counter!(
        PRODUCE_RETRIES,
        Unit::Count,
        "Micro-batches whose outputs had to be produced again after a delivery failure."
    );
    describe_counter!(
        ALERTS,
        Unit::Count,
        "Inventory alerts acknowledged by the broker, by kind (stockout_risk, supply_risk, resolved)."
    );
    describe_counter!(
        DEMAND_FORWARDED,
        Unit::Count,
        "Purchases with a location forwarded as demand records to their SKU x location's partition."
    );
    describe_counter!(
        DEMAND_DUPLICATES,
        Unit::Count,
        "Demand records already counted (written again by a retried batch) and skipped."
    );
    describe_counter!(
        STALLS,
        Unit::Count,
        "Times the watchdog found the pipeline stalled: messages waiting on assigned partitions and no micro-batch completed for metrics.stall_timeout_s (/healthz fails meanwhile)."
    );
    describe_counter!(
        STATE_REBUILDS,
        Unit::Count,
        "Users whose step state was rebuilt from their window (not in the state cache: evicted, a restart, a moved partition, another model), by how: one prefill call per batch, or replaying their items."
    );
    describe_counter!(
        BURST_EVENTS,
        Unit::Count,
        "User events stepped by the chunk graph: bursts of a user's events in one micro-batch, several per user in one call instead of one step round each."
    );
    describe_histogram!(BATCH_SIZE, Unit::Count, "Messages per micro-batch.");
    describe_histogram!(
        BATCH_STAGE,
        Unit::Seconds,
        "Time per micro-batch in each pipeline stage."
    );
    describe_histogram!(
        INFERENCE,
        Unit::Seconds,
        "ONNX Runtime time per micro-batch."
    );
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "From the event's Kafka timestamp to the broker's acknowledgement of its output."
    );
    describe_histogram!(
        DAEMON_LATENCY,
        Unit::Seconds,
        "The daemon's share of the end-to-end latency: from taking the event off the consumer to the broker's acknowledgement of its output. The rest is the wait before it (the broker's fetch, a backlog)."
    );
    describe_gauge!(
        CONSUMER_LAG,
        Unit::Count,
        "Messages between the partition's high watermark and the consumer's position."
    );
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        Unit::Count,
        "Input partitions assigned to this instance."
    );
    describe_gauge!(STORE_SIZE, Unit::Bytes, "Size of the sled store on disk.");
    describe_gauge!(
        STATE_CACHE_BYTES,
        Unit::Bytes,
        "Bytes of step state held in RAM (bounded by store.state_cache_bytes)."
    );
    describe_gauge!(
        STATE_CACHE_USERS,
        Unit::Count,
        "Users whose step state is held in RAM."
    );
    describe_gauge!(
        STORE_VOLUME_SIZE,
        Unit::Bytes,
        "Size of the filesystem the store lives on."
    );
    describe_gauge!(
        STORE_VOLUME_AVAILABLE,
        Unit::Bytes,
        "Bytes still available to longmem on the store's filesystem."
    );
    describe_counter!(
        CHANGELOG_RECORDS,
        Unit::Count,
        "Memory records and offset markers produced to the changelog topic."
    );
    describe_gauge!(
        RESTORING_PARTITIONS,
        Unit::Count,
        "Input partitions paused while their memory is restored from the changelog."
    );
    describe_counter!(
        RESTORED_RECORDS,
        Unit::Count,
        "Changelog records applied to the store by restores."
    );
    describe_histogram!(
        RESTORE_SECONDS,
        Unit::Seconds,
        "Time to restore the changelog partitions of one assignment (read to their ends and applied)."
    );
    describe_gauge!(
        MODEL_INFO,
        "Models by name, version and role (live): 1 while the model holds the role, 0 after it was replaced."
    );
    describe_gauge!(
        SHADOW_OVERLAP,
        "The last candidate's mean top-10 overlap with the live model over its shadow."
    );
    describe_gauge!(
        SHADOW_P99_RATIO,
        "The last candidate's p99 inference time per batch over the live model's, in its shadow."
    );
    describe_counter!(
        MODEL_RELOADS,
        Unit::Count,
        "Model rollouts by result: promoted, checked (not promoted on request), refused, rolled_back."
    );
    describe_gauge!(
        EXECUTION_PROVIDER,
        "The ONNX Runtime execution provider actually in use: 1 for the provider label."
    );
}

pub fn record_state_cache(rebuilt: crate::recommend::Rebuilt, cache: &crate::memory::StateCache) {
    counter!(STATE_REBUILDS, "how" => "prefill").increment(rebuilt.prefilled);
    counter!(STATE_REBUILDS, "how" => "replay").increment(rebuilt.replayed);
    gauge!(STATE_CACHE_BYTES).set(cache.bytes() as f64);
    gauge!(STATE_CACHE_USERS).set(cache.len() as f64);
}

pub fn record_burst_events(n: u64) {
    counter!(BURST_EVENTS).increment(n);
}

pub fn record_consumed(t: EventType) {
    counter!(EVENTS_CONSUMED, "type" => t.as_str()).increment(1);
}

pub fn record_rejected(r: RejectReason) {
    counter!(EVENTS_REJECTED, "reason" => r.as_str()).increment(1);
}

pub fn record_outputs(recommendations: u64, dead_letters: u64) {
    counter!(RECOMMENDATIONS).increment(recommendations);
    counter!(DEAD_LETTERS).increment(dead_letters);
}

pub fn record_alert(kind: AlertKind) {
    counter!(ALERTS, "kind" => kind.as_str()).increment(1);
}

pub fn record_demand(forwarded: u64, duplicates: u64) {
    counter!(DEMAND_FORWARDED).increment(forwarded);
    counter!(DEMAND_DUPLICATES).increment(duplicates);
}

pub fn record_changelog_produced(records: u64) {
    counter!(CHANGELOG_RECORDS).increment(records);
}

/// One assignment's partitions restored: how many records were applied and how long it took.
pub fn record_restore(records: u64, seconds: f64) {
    counter!(RESTORED_RECORDS).increment(records);
    histogram!(RESTORE_SECONDS).record(seconds);
}

pub fn record_restoring(partitions: usize) {
    gauge!(RESTORING_PARTITIONS).set(partitions as f64);
}

pub fn record_produce_retry() {
    counter!(PRODUCE_RETRIES).increment(1);
}

pub fn record_batch_size(n: usize) {
    histogram!(BATCH_SIZE).record(n as f64);
}

/// A pipeline stage of one micro-batch, for [`record_stage`].
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Decode,
    Memory,
    Inference,
    /// Ranking the answers and encoding the outputs, on the encoder thread.
    Encode,
    Produce,
    Store,
    Commit,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Decode,
        Stage::Memory,
        Stage::Inference,
        Stage::Encode,
        Stage::Produce,
        Stage::Store,
        Stage::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Memory => "memory",
            Stage::Inference => "inference",
            Stage::Encode => "encode",
            Stage::Produce => "produce",
            Stage::Store => "store",
            Stage::Commit => "commit",
        }
    }
}

pub fn record_stage(stage: Stage, elapsed: Duration) {
    histogram!(BATCH_STAGE, "stage" => stage.as_str()).record(elapsed.as_secs_f64());
    if let Stage::Inference = stage {
        histogram!(INFERENCE).record(elapsed.as_secs_f64());
    }
}

pub fn record_end_to_end(seconds: f64) {
    histogram!(END_TO_END).record(seconds);
}

pub fn record_daemon_latency(seconds: f64) {
    histogram!(DAEMON_LATENCY).record(seconds);
}

pub fn record_lag(topic: &str, partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag as f64);
}

pub fn record_assigned(partitions: usize) {
    gauge!(ASSIGNED_PARTITIONS).set(partitions as f64);
}

pub fn record_store(store: &crate::memory::Store) {
    gauge!(STORE_SIZE).set(store.size_on_disk() as f64);
    if let Some((size, available)) = store.volume() {
        gauge!(STORE_VOLUME_SIZE).set(size as f64);
        gauge!(STORE_VOLUME_AVAILABLE).set(available as f64);
    }
}

pub fn record_model(name: &str, version: &str, provider: &str) {
    record_model_role(name, version, "live", true);
    // Every result's series from the start, so a rate or an alert has a zero to start from.
    for result in ["promoted", "checked", "refused", "rolled_back"] {
        counter!(MODEL_RELOADS, "result" => result).increment(0);
    }
    for p in ["cpu", "cuda"] {
        gauge!(EXECUTION_PROVIDER, "provider" => p).set(if p == provider { 1.0 } else { 0.0 });
    }
}

/// `longmem_model_info{name,version,role}`: 1 while that model has that role, 0 once it has not.
pub fn record_model_role(name: &str, version: &str, role: &'static str, holds: bool) {
    gauge!(MODEL_INFO, "name" => name.to_string(), "version" => version.to_string(), "role" => role)
        .set(if holds { 1.0 } else { 0.0 });
}

/// What the last candidate's shadow showed against the live model.
pub fn record_shadow(report: &crate::rollout::ShadowReport) {
    gauge!(SHADOW_OVERLAP).set(report.top10_overlap);
    gauge!(SHADOW_P99_RATIO).set(report.p99_ratio);
}

/// A model rollout's end: `promoted`, `checked`, `refused` or `rolled_back`.
pub fn record_model_reload(result: &'static str) {
    counter!(MODEL_RELOADS, "result" => result).increment(1);
}

/// What `/healthz` and `/readyz` report, updated by the pipeline.
#[derive(Default)]
pub struct Health {
    pub model_loaded: AtomicBool,
    pub assigned_partitions: AtomicUsize,
    /// Set when the pipeline stopped on an error it cannot recover from.
    pub failed: AtomicBool,
    /// Messages waiting on the assigned partitions, as of the consumer's last statistics.
    lag: AtomicI64,
    /// When a micro-batch last completed, or partitions were last assigned (ms since the epoch).
    last_progress_ms: AtomicI64,
    /// Set by the watchdog while the pipeline makes no progress with messages waiting.
    stalled: AtomicBool,
    /// Input partitions paused while their memory is restored from the changelog.
    pub restoring_partitions: AtomicUsize,
}

impl Health {
    /// Serving every assigned partition: model loaded, partitions assigned, none of them still
    /// being restored from the changelog, and live.
    pub fn is_ready(&self) -> bool {
        self.model_loaded.load(Ordering::Relaxed)
            && self.assigned_partitions.load(Ordering::Relaxed) > 0
            && self.restoring_partitions.load(Ordering::Relaxed) == 0
            && self.is_live()
    }

    pub fn is_live(&self) -> bool {
        !self.failed.load(Ordering::Relaxed) && !self.stalled.load(Ordering::Relaxed)
    }

    pub fn record_lag(&self, messages: i64) {
        self.lag.store(messages, Ordering::Relaxed);
    }

    /// A micro-batch completed (or partitions were assigned): the pipeline is moving.
    pub fn record_progress(&self) {
        self.last_progress_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// One watchdog look at the pipeline: stalled when partitions are assigned, messages wait on
    /// them, and nothing completed for `timeout`. Logs and counts each stall once, and its end.
    pub fn check_stall(&self, timeout: Duration) -> bool {
        let lag = self.lag.load(Ordering::Relaxed);
        let partitions = self.assigned_partitions.load(Ordering::Relaxed);
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        let idle_ms = if last == 0 { 0 } else { now_ms() - last };
        let stalled = partitions > 0 && lag > 0 && idle_ms > timeout.as_millis() as i64;
        let was = self.stalled.swap(stalled, Ordering::Relaxed);
        if stalled && !was {
            counter!(STALLS).increment(1);
            tracing::error!(
                idle_seconds = idle_ms / 1000,
                lag,
                partitions,
                "pipeline stalled: no micro-batch completed while messages wait on assigned \
                 partitions; /healthz fails so that the daemon is restarted. If the broker \
                 answers fetches slowly, raise kafka.consumer fetch.wait.max.ms \
                 (docs/operations.md, LongmemPipelineStalled)"
            );
        } else if was && !stalled {
            tracing::info!(lag, "pipeline moving again; /healthz passes");
        }
        stalled
    }
}

/// Runs [`Health::check_stall`] every second until shutdown.
pub async fn watchdog(health: Arc<Health>, timeout: Duration, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => { health.check_stall(timeout); }
            _ = shutdown.wait() => break,
        }
    }
}

#[derive(Clone)]
struct HttpState {
    handle: PrometheusHandle,
    health: Arc<Health>,
}

/// Binds the metrics address now (so a taken port is a start-up error) and returns the server future.
pub async fn bind(
    listen: &str,
    handle: PrometheusHandle,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let addr: SocketAddr = listen.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("metrics.listen {listen}: {e}"),
        )
    })?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on metrics.listen {addr}: {e}; choose a free port"),
        )
    })?;
    let upkeep_handle = handle.clone();
    let app = Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { handle, health });
    Ok(async move {
        // Histograms are drained into their buckets on upkeep; without an HTTP listener of the
        // exporter's own, that is our job.
        let mut upkeep_stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => upkeep_handle.run_upkeep(),
                    _ = upkeep_stop.wait() => break,
                }
            }
        });
        let mut stop = shutdown;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
    })
}

async fn metrics_page(
    State(state): State<HttpState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.handle.render(),
    )
}

async fn healthz(State(state): State<HttpState>) -> (StatusCode, &'static str) {
    if state.health.failed.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "pipeline failed\n")
    } else if state.health.stalled.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "pipeline stalled: messages wait and no micro-batch completed\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    let restoring = state.health.restoring_partitions.load(Ordering::Relaxed);
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why);
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n".into())
    } else if !state.health.model_loaded.load(Ordering::Relaxed) {
        unavailable("model not loaded\n".into())
    } else if !state.health.is_live() {
        unavailable("pipeline failed or stalled\n".into())
    } else if restoring > 0 {
        unavailable(format!(
            "restoring {restoring} partitions' memory from the changelog\n"
        ))
    } else {
        unavailable("no partitions assigned\n".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(partitions: usize, lag: i64, idle: Duration) -> Health {
        let h = Health::default();
        h.model_loaded.store(true, Ordering::Relaxed);
        h.assigned_partitions.store(partitions, Ordering::Relaxed);
        h.record_lag(lag);
        h.last_progress_ms
            .store(now_ms() - idle.as_millis() as i64, Ordering::Relaxed);
        h
    }

    #[test]
    fn stalled_only_with_partitions_lag_and_no_progress_past_the_timeout() {
        let timeout = Duration::from_secs(60);
        let stalled = health(4, 37_814, Duration::from_secs(150));
        assert!(stalled.check_stall(timeout));
        assert!(!stalled.is_live() && !stalled.is_ready());

        assert!(
            !health(4, 0, Duration::from_secs(150)).check_stall(timeout),
            "idle, nothing waits"
        );
        assert!(
            !health(0, 500, Duration::from_secs(150)).check_stall(timeout),
            "no partitions"
        );
        assert!(
            !health(4, 500, Duration::from_secs(30)).check_stall(timeout),
            "recent progress"
        );
        let fresh = Health::default();
        fresh.assigned_partitions.store(4, Ordering::Relaxed);
        fresh.record_lag(10);
        assert!(
            !fresh.check_stall(timeout),
            "nothing assigned or completed yet"
        );
    }

    #[test]
    fn a_stall_ends_when_a_batch_completes() {
        let h = health(4, 1_000, Duration::from_secs(120));
        assert!(h.check_stall(Duration::from_secs(60)));
        h.record_progress();
        assert!(!h.check_stall(Duration::from_secs(60)));
        assert!(h.is_live() && h.is_ready());
    }
}
