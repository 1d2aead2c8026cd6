//! `longmem bench`: how fast the daemon is on a real broker, and how close to its ceilings.
//!
//! One run, on one broker (tansu started on 127.0.0.1, the embedded mock cluster with `--embedded`,
//! or the Kafka `--brokers` names):
//! - **workload**: `--events` click/purchase events over `--users` users; each user's activity and each
//!   item's popularity are drawn from MovieLens-100k's own (so a few items and users dominate, as in
//!   life), keyed by user.
//! - **per model × mode** (`step`, `full`): the events are preloaded, then the daemon drains them
//!   (sustained events/s from its first micro-batch to its last, as the passthrough ceiling is
//!   timed, with the wait from the partitions being ready to that first batch apart; CPU seconds
//!   per million events, mean micro-batch); then it is offered
//!   25/50/75/100% of that rate for `--phase-seconds` each, and the end-to-end latency (Kafka
//!   timestamp at produce → recommendation acknowledged by the broker) is read per phase. Peak RSS of
//!   the process and sled bytes per user close the row.
//! - **ceilings**, same broker and batch settings: (a) passthrough: the daemon's own consumer and
//!   producer copying each message to an output topic, no decoding, state or model; (b) the model
//!   alone through ONNX Runtime at the daemon's mean batch and at 256; (c) the store alone: read,
//!   update and write each event's user record with that model's state size, committed per batch.
//!
//! Writes `bench.json` and `bench.md` under `--out`; `scripts/plot_bench.py` draws latency against
//! throughput from the JSON (`make bench` does both).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::config::{Config, ModelMode, StatePrecision};
use crate::event::{EventType, UserEvent};
use crate::memory::{ModelState, StateTensors, Store, StoreBatch, UserMemory};
use crate::metrics::Health;
use crate::model::Model;
use crate::shutdown::Shutdown;
use crate::sink::{Output, Sink};
use crate::source::Source;
use crate::tools::datasets;
use crate::tools::harness::{
    harness_fetch_wait, produce_all, producer, Broker, InProcessDaemon, Partitions,
    MOCK_FETCH_WAIT_MS,
};
use crate::tools::simulate::Rng;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A Kafka to benchmark against (host:port). Default: tansu started on 127.0.0.1 from
    /// $LONGMEM_TANSU or .tools/bin/tansu (`bash scripts/fetch-tools.sh` fetches it).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Run on the embedded broker (rdkafka's mock cluster, in this process) instead of tansu. It
    /// holds an empty fetch for 10 ms where tansu needs 100 ms, so its latency cells show the
    /// daemon's own latency more closely; it keeps at most 100k messages or 5 MiB per partition.
    #[arg(long, conflicts_with = "brokers")]
    pub embedded: bool,
    /// Base configuration (batching, store cache, threads); the run overrides brokers, topics,
    /// store path and model.
    #[arg(long, default_value = "config/default.toml")]
    pub config: PathBuf,
    /// MovieLens-100k (RecBole atomic files): the user-activity and item-popularity distributions.
    #[arg(long, default_value = "../shared/data/seqrec/recbole_ml100k")]
    pub data: PathBuf,
    /// Events preloaded for each model × mode's peak run.
    #[arg(long, default_value_t = 40_000)]
    pub events: usize,
    /// Distinct users the events are spread over.
    #[arg(long, default_value_t = 20_000)]
    pub users: usize,
    /// Model directories to benchmark.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "models/sasrec-ml100k,models/gru4rec-ml100k,models/memory-ml100k"
    )]
    pub models: Vec<PathBuf>,
    /// Scoring modes to benchmark (a model without a step graph runs `full` only).
    #[arg(long, value_delimiter = ',', default_value = "step,full")]
    pub modes: Vec<ModelMode>,
    /// Length of each latency phase (25/50/75/100% of the peak rate).
    #[arg(long, default_value_t = 6.0)]
    pub phase_seconds: f64,
    /// Results folder (bench.json, bench.md).
    #[arg(long, default_value = "results/bench")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyPhase {
    pub offered_fraction: f64,
    pub offered_per_s: f64,
    pub sustained_per_s: f64,
    pub mean_batch: f64,
    /// Step states rebuilt from the window (state-cache misses) per event answered in the phase.
    pub rebuilt_per_event: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The daemon's share of the latency: from taking each event off the consumer to its output's
    /// acknowledgement. The end-to-end figure less this is the wait before the daemon (the broker
    /// holding a fetch, the consumer's queue).
    pub daemon_p50_ms: f64,
    pub daemon_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelRun {
    pub model: String,
    pub mode: String,
    pub events: usize,
    /// The drain's rate from its first micro-batch to its last (the passthrough is timed alike).
    pub events_per_s: f64,
    /// The same events over the time from the partitions being ready: what `events_per_s` was
    /// before it left the first fetch's wait out (the figures of earlier commits).
    pub events_per_s_from_ready: f64,
    /// Seconds from the partitions being ready to the first micro-batch polled.
    pub first_batch_after_ready_s: f64,
    pub cpu_seconds_per_million: f64,
    pub mean_batch: f64,
    /// Step states rebuilt from the window (state-cache misses) per event of the drain.
    pub rebuilt_per_event: f64,
    /// Events of the drain stepped in bursts (several of a user's in one chunk-graph call).
    pub burst_per_event: f64,
    pub busy_seconds_by_stage: Vec<(String, f64)>,
    pub latency: Vec<LatencyPhase>,
    /// The daemon's peak resident memory: the process's peak less the benchmark's own share.
    pub peak_rss_bytes: u64,
    pub store_bytes_per_user: f64,
    /// Step state stored per user (0 when it is kept in RAM and rebuilt from the window).
    pub state_bytes_per_user: usize,
    /// The model alone: rows/s at the daemon's mean batch, and at 256.
    pub model_rows_per_s_at_mean_batch: f64,
    pub model_rows_per_s_at_256: f64,
    /// The store alone: events/s read-modify-written with this model's state size.
    pub store_events_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    /// The commit the binary was built from (build.rs), `-dirty` with uncommitted code changes.
    pub commit: String,
    pub command: String,
    pub broker: String,
    pub users: usize,
    pub passthrough_per_s: f64,
    pub runs: Vec<ModelRun>,
}

/// Users and items with MovieLens-100k's activity and popularity; deterministic.
pub struct Workload {
    pub events: Vec<(String, Vec<u8>)>,
}

/// Draws from a cumulative weight table.
fn draw(cumulative: &[u64], rng: &mut Rng) -> usize {
    let x = rng.next_u64() % cumulative.last().copied().unwrap_or(1).max(1);
    cumulative.partition_point(|&c| c <= x)
}

impl Workload {
    pub fn from_movielens(data: &Path, events: usize, users: usize) -> anyhow::Result<Workload> {
        let ratings = datasets::movielens_events(data)?;
        let mut item_count: std::collections::HashMap<&str, u64> = Default::default();
        let mut user_count: std::collections::HashMap<&str, u64> = Default::default();
        for r in &ratings {
            *item_count.entry(&r.item_id).or_default() += 1;
            *user_count.entry(&r.user_id).or_default() += 1;
        }
        let mut items: Vec<(&str, u64)> = item_count.into_iter().collect();
        items.sort_unstable();
        let mut activity: Vec<u64> = user_count.into_values().collect();
        activity.sort_unstable();
        let mut rng = Rng::new(1);
        let mut running = 0;
        let item_cum: Vec<u64> = items
            .iter()
            .map(|(_, c)| {
                running += c;
                running
            })
            .collect();
        running = 0;
        let user_cum: Vec<u64> = (0..users)
            .map(|_| {
                running += activity[rng.below(activity.len())];
                running
            })
            .collect();
        let now = crate::pipeline::now_ms();
        let events = (0..events)
            .map(|i| {
                let user = format!("bench-user-{}", draw(&user_cum, &mut rng));
                let item = items[draw(&item_cum, &mut rng)].0;
                let kind = if rng.below(4) == 0 {
                    EventType::Purchase
                } else {
                    EventType::Click
                };
                let event = UserEvent::new(kind, &user, item, now - 60_000 + (i as i64 % 60_000));
                let payload = serde_json::to_vec(&event).expect("a UserEvent always serialises");
                (user, payload)
            })
            .collect();
        Ok(Workload { events })
    }

    /// `count` (key, payload) messages from the `from`-th event on, wrapping around.
    fn messages(&self, from: usize, count: usize) -> impl Iterator<Item = (Option<&str>, &[u8])> {
        (0..count).map(move |i| {
            let (user, payload) = &self.events[(from + i) % self.events.len()];
            (Some(user.as_str()), payload.as_slice())
        })
    }

    fn distinct_users(&self) -> usize {
        let users: std::collections::HashSet<&str> =
            self.events.iter().map(|(u, _)| u.as_str()).collect();
        users.len()
    }
}

fn bar(len: u64, msg: String) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

/// This process's user + system CPU seconds.
#[allow(unsafe_code)]
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Peak resident set (VmHWM) since the last [`reset_peak_rss`], in bytes.
fn peak_rss() -> u64 {
    process_status_bytes("VmHWM")
}

/// Current resident set (VmRSS), in bytes.
fn current_rss() -> u64 {
    process_status_bytes("VmRSS")
}

/// A kB field of /proc/self/status (`VmHWM`, `VmRSS`, ...) in bytes; 0 where there is none.
pub fn process_status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn reset_peak_rss() {
    // "5" resets the peak RSS counter (Linux ≥ 4.0); without it the figure is the process's peak.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Topics of their own for one measurement, created on the broker.
fn fresh_topics(base: &Config, broker: &Broker, label: &str) -> anyhow::Result<Config> {
    let mut config = base.clone();
    let run = format!("bench-{}-{label}", crate::pipeline::now_ms());
    config.topics.input.truncate(1);
    config.topics.suffix_with(&run);
    config.kafka.bootstrap_servers = broker.bootstrap.clone();
    config.kafka.group_id = format!("longmem-{run}");
    config.supply.enabled = false;
    // The benchmark's own layout: 8 input partitions, as many as a production input topic.
    let partitions = Partitions {
        input: 8,
        recommendations: 8,
        alerts: 1,
        dead_letter: 1,
    };
    broker.create_topics(&config, partitions)?;
    Ok(config)
}

fn wait_processed(
    daemon: &InProcessDaemon,
    target: u64,
    bar: &ProgressBar,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let done = daemon.stats.messages.load(Ordering::Relaxed);
        bar.set_position(done);
        if done >= target {
            return Ok(());
        }
        if daemon.is_finished() {
            bail!("the daemon stopped during the benchmark (see the error above)");
        }
        if Instant::now() > deadline {
            bail!("only {done} of {target} events processed after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (a) The daemon's own consumer and producer, copying each message to an output topic.
fn passthrough(base: &Config, broker: &Broker, workload: &Workload) -> anyhow::Result<f64> {
    let config = fresh_topics(base, broker, "passthrough")?;
    let producer = producer(&broker.bootstrap)?;
    let n = workload.events.len();
    let b = bar(n as u64, "passthrough: preload".into());
    let topic = &config.topics.input[0];
    produce_all(
        &producer,
        topic,
        workload.messages(0, n),
        0.0,
        &b,
        "benchmark event",
    )?;
    b.set_message("passthrough: copy");
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), config.store.cache_bytes)?;
    let health = Arc::new(Health::default());
    let shutdown = Shutdown::new();
    let source = Source::new(&config, store, None, health.clone(), shutdown.clone())?;
    let sink = Sink::new(&config)?;
    let max_wait = Duration::from_millis(config.batch.max_wait_ms);
    let (mut copied, mut started) = (0usize, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while copied < n {
        if Instant::now() > deadline {
            bail!("passthrough copied only {copied} of {n} messages in 5 minutes");
        }
        let batch = source.next_batch(config.batch.max_events, max_wait, &shutdown);
        if batch.is_empty() {
            continue;
        }
        started.get_or_insert_with(Instant::now);
        let outputs: Vec<Output> = batch
            .iter()
            .map(|m| {
                Output::keyed(
                    &config.topics.recommendations,
                    m.key.clone(),
                    m.payload.clone().unwrap_or_default(),
                )
            })
            .collect();
        sink.send_all(&outputs)?;
        let mut next: std::collections::BTreeMap<(&str, i32), i64> = Default::default();
        for m in &batch {
            next.insert((m.topic.as_str(), m.partition), m.offset + 1);
        }
        let _ = source.commit(next.into_iter().map(|((t, p), o)| (t, p, o)));
        copied += batch.len();
        b.set_position(copied as u64);
    }
    b.finish_and_clear();
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    source.close();
    Ok(n as f64 / elapsed.as_secs_f64().max(1e-9))
}

/// (b) The model alone: rows per second at `batch` rows per call, about `seconds` long.
fn model_ceiling(
    model: &mut Model,
    mode: ModelMode,
    batch: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let n_items = model.manifest.n_items;
    let window = model.manifest.window;
    let mut rng = Rng::new(42);
    // The model's own arithmetic: states at f32, stepped in place call after call.
    let mut states = vec![model.empty_state(StatePrecision::F32); batch];
    let started = Instant::now();
    let mut rows = 0usize;
    while started.elapsed().as_secs_f64() < seconds {
        match (mode, model.step_state().is_some()) {
            (ModelMode::Full, _) | (_, false) => {
                let seq: Vec<i64> = (0..batch * window)
                    .map(|_| 1 + rng.below(n_items) as i64)
                    .collect();
                model.recommend(seq, batch, true)?;
            }
            _ => {
                let items: Vec<i64> = (0..batch).map(|_| 1 + rng.below(n_items) as i64).collect();
                let mut states: Vec<&mut StateTensors> = states.iter_mut().collect();
                let seen: Vec<Vec<i64>> = (0..batch)
                    .map(|_| (0..window).map(|_| 1 + rng.below(n_items) as i64).collect())
                    .collect();
                let seen: Vec<&[i64]> = seen.iter().map(Vec::as_slice).collect();
                model.step(items, &mut states, &seen, true)?;
            }
        }
        rows += batch;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// (c) The store alone: each event's user record read, updated and written back with `state_floats`
/// of model state (stored at the daemon's precision), committed with offsets every `batch` events.
fn store_ceiling(
    workload: &Workload,
    history_len: usize,
    state_floats: usize,
    precision: StatePrecision,
    batch: usize,
    cache_bytes: u64,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path(), cache_bytes)?;
    let started = Instant::now();
    for (n, chunk) in workload.events.chunks(batch.max(1)).enumerate() {
        let mut writes = StoreBatch::default();
        let mut memories: std::collections::HashMap<&str, UserMemory> = Default::default();
        for (user, payload) in chunk {
            let memory = match memories.entry(user.as_str()) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(store.user(user)?.unwrap_or_default())
                }
            };
            let event: UserEvent = serde_json::from_slice(payload)?;
            memory.apply(&event, history_len);
            memory.model_state = (state_floats > 0).then(|| ModelState {
                owner: "bench@1".into(),
                tensors: StateTensors::encode(vec![vec![0.5; state_floats]], precision),
            });
        }
        for (user, memory) in memories {
            writes.put_user(user.to_string(), memory);
        }
        writes.advance("bench", 0, ((n + 1) * batch) as i64);
        store.commit(&writes)?;
    }
    Ok(workload.events.len() as f64 / started.elapsed().as_secs_f64())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut base = Config::load(&args.config)?;
    let broker = match &args.brokers {
        Some(b) => Broker::external(b),
        // Each harness broker holds an empty fetch for the whole fetch.wait.max.ms; tansu much
        // shorter than 100 ms answers a deep backlog with nothing at all (issue 17).
        None if args.embedded => {
            harness_fetch_wait(&mut base, MOCK_FETCH_WAIT_MS);
            Broker::embedded()?
        }
        None => {
            harness_fetch_wait(&mut base, 100);
            Broker::tansu()?
        }
    };
    let bootstrap = broker.bootstrap.clone();
    let workload = Workload::from_movielens(&args.data, args.events, args.users)?;
    let users = workload.distinct_users();
    println!(
        "longmem bench: {} events over {users} users (MovieLens-100k activity and popularity) on {bootstrap}",
        args.events
    );
    let passthrough_per_s = passthrough(&base, &broker, &workload)?;
    println!("passthrough ceiling: {passthrough_per_s:.0} events/s");

    let mut runs = Vec::new();
    for model_dir in &args.models {
        for &mode in &args.modes {
            let mut config = fresh_topics(&base, &broker, &format!("{}-{mode:?}", runs.len()))?;
            config.model.path = model_dir.clone();
            config.model.mode = mode;
            let mut model = Model::load(&config.model)?;
            if mode == ModelMode::Step && model.step_state().is_none() {
                println!("{}: no step graph, skipping step mode", model_dir.display());
                continue;
            }
            // State the store keeps per user: none in full mode, none for a state that is a
            // function of the window (kept in RAM, rebuilt on a miss).
            let state_floats: usize = match mode {
                ModelMode::Full => 0,
                _ if model.state_from_window() => 0,
                _ => model.state_lengths().iter().sum(),
            };
            runs.push(measure(
                &args,
                config,
                &bootstrap,
                &workload,
                &mut model,
                state_floats,
                users,
            )?);
        }
    }

    let report = Report {
        machine: machine(),
        commit: env!("LONGMEM_BUILD_COMMIT").to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        broker: if args.brokers.is_some() {
            bootstrap.clone()
        } else if args.embedded {
            "the embedded broker (rdkafka's mock cluster, in the benchmark's process)".into()
        } else {
            "tansu (memory storage) on the same machine".into()
        },
        users,
        passthrough_per_s,
        runs,
    };
    let markdown = markdown(&report);
    println!("\n{markdown}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    std::fs::write(
        args.out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(args.out.join("bench.md"), &markdown)?;
    println!("wrote {}/bench.json and bench.md", args.out.display());
    Ok(())
}

fn measure(
    args: &BenchArgs,
    mut config: Config,
    bootstrap: &str,
    workload: &Workload,
    model: &mut Model,
    state_floats: usize,
    users: usize,
) -> anyhow::Result<ModelRun> {
    let label = format!(
        "{} {:?}",
        config
            .model
            .path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        config.model.mode
    )
    .to_lowercase();
    let n = workload.events.len();
    let producer = producer(bootstrap)?;
    let topic = config.topics.input[0].clone();
    let b = bar(n as u64, format!("{label}: preload"));
    produce_all(
        &producer,
        &topic,
        workload.messages(0, n),
        0.0,
        &b,
        "benchmark event",
    )?;
    b.finish_and_clear();

    let store_dir = tempfile::tempdir()?;
    config.store.path = store_dir.path().to_path_buf();
    // The daemon's share of the process: the peak over the run less what the benchmark itself
    // held when the daemon started (the workload, the producer, the model loaded for the ceiling).
    reset_peak_rss();
    let before_daemon = current_rss();
    let daemon = InProcessDaemon::start(&config)?;
    let mut drain_rebuilt = 0.0;
    let mut drain_bursts = 0.0;
    let (mut first_batch_after, mut from_ready) = (0.0, 0.0);
    let result = (|| -> anyhow::Result<(f64, f64, f64, Vec<LatencyPhase>)> {
        daemon.wait_ready()?;
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let b = bar(n as u64, format!("{label}: peak"));
        wait_processed(&daemon, n as u64, &b, Duration::from_secs(600))?;
        let finished = Instant::now();
        b.finish_and_clear();
        let cpu = cpu_seconds() - cpu0;
        let first = daemon.stats.first_batch.get().copied().unwrap_or(t0);
        // Readiness is polled every 50 ms, so the first batch can come before it was seen: then
        // "ready" is the first batch.
        let ready = t0.min(first);
        first_batch_after = first.duration_since(ready).as_secs_f64();
        from_ready = n as f64 / finished.duration_since(ready).as_secs_f64();
        let peak = n as f64 / finished.duration_since(first).as_secs_f64().max(1e-9);
        let batches = daemon.stats.batches.load(Ordering::Relaxed).max(1);
        let mean_batch = daemon.stats.messages.load(Ordering::Relaxed) as f64 / batches as f64;
        drain_rebuilt = daemon.stats.state_rebuilds.load(Ordering::Relaxed) as f64 / n as f64;
        drain_bursts = daemon.stats.burst_items.load(Ordering::Relaxed) as f64 / n as f64;

        let mut phases = Vec::new();
        let mut cursor = 0usize;
        for fraction in [0.25, 0.5, 0.75, 1.0] {
            let rate = peak * fraction;
            let count = (rate * args.phase_seconds).max(1.0) as usize;
            let before = daemon.stats.messages.load(Ordering::Relaxed);
            let batches_before = daemon.stats.batches.load(Ordering::Relaxed);
            let rebuilt_before = daemon.stats.state_rebuilds.load(Ordering::Relaxed);
            daemon.stats.take_latency();
            daemon.stats.take_daemon_latency();
            let b = bar(
                count as u64,
                format!("{label}: {:.0}% of peak", 100.0 * fraction),
            );
            let started = Instant::now();
            let events = workload.messages(cursor, count);
            produce_all(&producer, &topic, events, rate, &b, "benchmark event")?;
            cursor += count;
            wait_processed(&daemon, before + count as u64, &b, Duration::from_secs(300))?;
            let sustained = count as f64 / started.elapsed().as_secs_f64();
            let batches = daemon.stats.batches.load(Ordering::Relaxed) - batches_before;
            let rebuilt = daemon.stats.state_rebuilds.load(Ordering::Relaxed) - rebuilt_before;
            b.finish_and_clear();
            let h = daemon.stats.take_latency().context("no latency recorded")?;
            let own = daemon
                .stats
                .take_daemon_latency()
                .context("no daemon latency recorded")?;
            let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
            phases.push(LatencyPhase {
                offered_fraction: fraction,
                offered_per_s: rate,
                sustained_per_s: sustained,
                mean_batch: count as f64 / batches.max(1) as f64,
                rebuilt_per_event: rebuilt as f64 / count as f64,
                p50_ms: ms(&h, 0.5),
                p95_ms: ms(&h, 0.95),
                p99_ms: ms(&h, 0.99),
                max_ms: h.max() as f64 / 1e3,
                daemon_p50_ms: ms(&own, 0.5),
                daemon_p99_ms: ms(&own, 0.99),
            });
        }
        Ok((peak, cpu / n as f64 * 1e6, mean_batch, phases))
    })();
    let stages: Vec<(String, f64)> = daemon
        .stats
        .stage_seconds()
        .into_iter()
        .map(|(s, v)| (s.to_string(), v))
        .collect();
    let stopped = daemon.stop()?;
    let (peak, cpu_per_million, mean_batch, latency) = result?;
    stopped?;
    let peak_rss_bytes = peak_rss().saturating_sub(before_daemon);
    let store = Store::open(&config.store.path, config.store.cache_bytes)?;
    let store_bytes_per_user = store.size_on_disk() as f64 / users.max(1) as f64;
    drop(store);

    let at_mean = model_ceiling(
        model,
        config.model.mode,
        mean_batch.round().max(1.0) as usize,
        2.0,
    )?;
    let at_256 = model_ceiling(model, config.model.mode, 256, 2.0)?;
    let store_events_per_s = store_ceiling(
        workload,
        config.store.history_len,
        state_floats,
        config.store.state_precision,
        mean_batch.round().max(1.0) as usize,
        config.store.cache_bytes,
    )?;
    let run = ModelRun {
        model: config.model.path.display().to_string(),
        mode: format!("{:?}", config.model.mode).to_lowercase(),
        events: n,
        events_per_s: peak,
        events_per_s_from_ready: from_ready,
        first_batch_after_ready_s: first_batch_after,
        cpu_seconds_per_million: cpu_per_million,
        mean_batch,
        rebuilt_per_event: drain_rebuilt,
        burst_per_event: drain_bursts,
        busy_seconds_by_stage: stages,
        latency,
        peak_rss_bytes,
        store_bytes_per_user,
        state_bytes_per_user: StateTensors::encode(
            vec![vec![0.0; state_floats]],
            config.store.state_precision,
        )
        .bytes(),
        model_rows_per_s_at_mean_batch: at_mean,
        model_rows_per_s_at_256: at_256,
        store_events_per_s,
    };
    println!(
        "{label}: {:.0} events/s, mean batch {:.0}, model alone {:.0}/s, store alone {:.0}/s",
        run.events_per_s,
        run.mean_batch,
        run.model_rows_per_s_at_mean_batch,
        run.store_events_per_s
    );
    Ok(run)
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "Machine: {}; commit {}; broker: {}; command: `{}`\n\n",
        r.machine, r.commit, r.broker, r.command
    ));
    s.push_str(&format!(
        "Passthrough ceiling (the daemon's consumer and producer, no state or model): {:.0} events/s\n\n",
        r.passthrough_per_s
    ));
    s.push_str("Events/s are timed from the first micro-batch to the last, as the passthrough is; the wait from the partitions being ready to that first batch is its own column, and \"from ready\" includes it.\n\n");
    s.push_str("| model | mode | events/s | of passthrough | first batch after ready | events/s from ready | of model alone (mean batch) | of store alone | mean batch | states rebuilt | in bursts | CPU s / M events | daemon peak RSS | store B/user | stored state B/user |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for run in &r.runs {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0}% | {:.2} s | {:.0} | {:.0}% ({:.0}/s) | {:.0}% ({:.0}/s) | {:.0} | {:.0}% | {:.0}% | {:.0} | {:.0} MiB | {:.0} | {} |\n",
            run.model.rsplit('/').next().unwrap_or(&run.model),
            run.mode,
            run.events_per_s,
            100.0 * run.events_per_s / r.passthrough_per_s.max(1e-9),
            run.first_batch_after_ready_s,
            run.events_per_s_from_ready,
            100.0 * run.events_per_s / run.model_rows_per_s_at_mean_batch.max(1e-9),
            run.model_rows_per_s_at_mean_batch,
            100.0 * run.events_per_s / run.store_events_per_s.max(1e-9),
            run.store_events_per_s,
            run.mean_batch,
            100.0 * run.rebuilt_per_event,
            100.0 * run.burst_per_event,
            run.cpu_seconds_per_million,
            run.peak_rss_bytes as f64 / (1 << 20) as f64,
            run.store_bytes_per_user,
            run.state_bytes_per_user,
        ));
    }
    s.push_str("\nEnd-to-end latency (produced → recommendation acknowledged) at fractions of each run's peak, and the daemon's share of it (taken off the consumer → acknowledged; the rest is the broker's fetch and the consumer's queue):\n\n");
    s.push_str(
        "| model | mode | offered | sustained | mean batch | states rebuilt | p50 ms | p95 ms | p99 ms | max ms | in daemon p50 ms | in daemon p99 ms |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for run in &r.runs {
        for p in &run.latency {
            s.push_str(&format!(
                "| {} | {} | {:.0}% ({:.0}/s) | {:.0}/s | {:.0} | {:.0}% | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
                run.model.rsplit('/').next().unwrap_or(&run.model),
                run.mode,
                100.0 * p.offered_fraction,
                p.offered_per_s,
                p.sustained_per_s,
                p.mean_batch,
                100.0 * p.rebuilt_per_event,
                p.p50_ms,
                p.p95_ms,
                p.p99_ms,
                p.max_ms,
                p.daemon_p50_ms,
                p.daemon_p99_ms,
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_follow_the_weights() {
        let cumulative = [1, 1, 4, 10]; // weights 1, 0, 3, 6
        let mut rng = Rng::new(7);
        let mut counts = [0usize; 4];
        for _ in 0..100_000 {
            counts[draw(&cumulative, &mut rng)] += 1;
        }
        assert_eq!(counts[1], 0, "a zero weight is never drawn");
        for (i, w) in [(0, 0.1), (2, 0.3), (3, 0.6)] {
            let share = counts[i] as f64 / 100_000.0;
            assert!((share - w).abs() < 0.01, "{i}: {share} vs {w}");
        }
    }
}
