//! `longmem demo`: the whole daemon on real data, with nothing to install beforehand.
//!
//! Starts an embedded broker (librdkafka's in-process mock cluster, with enough partitions that its
//! per-partition retention drops nothing) unless `--brokers` names a real one, streams MovieLens-100k
//! into the input topic in timestamp order, runs the pipeline on it and prints a summary. Everything
//! it starts stops before it returns.
//!
//! The MovieLens → commerce mapping lives here and only here: a rating ≥ 4 is a `purchase`, any other
//! rating a `click`; user and item ids are MovieLens's; the event time is the rating's timestamp.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

use crate::config::Config;
use crate::event::Recommendation;
use crate::metrics::{self, Health};
use crate::pipeline::{self, RunStats};
use crate::shutdown::Shutdown;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// A real Kafka to use instead of the embedded broker (host:port,...); the run creates topics
    /// of its own there, named after the configured ones with a `.demo-<unix time>` suffix.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Base configuration; the demo overrides brokers, store path and topics' partitions.
    #[arg(long, default_value = "config/default.toml")]
    pub config: PathBuf,
    /// MovieLens-100k in RecBole atomic files.
    #[arg(long, default_value = "../shared/data/seqrec/recbole_ml100k")]
    pub data: PathBuf,
    /// Events per second offered to the daemon (0: as fast as the producer can, which measures the
    /// pipeline's capacity; latency then includes the backlog).
    #[arg(long, default_value_t = 3_000)]
    pub rate: u64,
    /// Stream only the first N events (0: all 100,000).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Broken messages mixed into the stream, to show the dead-letter path.
    #[arg(long, default_value_t = 40)]
    pub bad: usize,
    /// Users shown with their recommendations.
    #[arg(long, default_value_t = 3)]
    pub samples: usize,
}

/// One MovieLens rating as a longmem event.
pub struct ReplayEvent {
    pub user_id: String,
    pub item_id: String,
    pub timestamp_ms: i64,
    pub purchase: bool,
}

impl ReplayEvent {
    pub fn to_json(&self) -> String {
        let kind = if self.purchase { "purchase" } else { "click" };
        serde_json::json!({
            "event_type": kind,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "timestamp_ms": self.timestamp_ms,
        })
        .to_string()
    }
}

/// Ratings from `ml-100k.inter`, ordered by timestamp (ties in file order).
pub fn movielens_events(dir: &Path) -> anyhow::Result<Vec<ReplayEvent>> {
    let path = dir.join("ml-100k.inter");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}; the demo needs MovieLens-100k from ../shared/data (pass --data DIR)",
            path.display()
        )
    })?;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let parsed = (f.len() == 4)
            .then(|| Some((f[2].parse::<f64>().ok()?, f[3].parse::<f64>().ok()?)))
            .flatten();
        let Some((rating, ts)) = parsed else {
            bail!(
                "{}:{}: expected `user item rating timestamp`",
                path.display(),
                n + 1
            );
        };
        events.push(ReplayEvent {
            user_id: f[0].to_string(),
            item_id: f[1].to_string(),
            timestamp_ms: (ts * 1000.0) as i64,
            purchase: rating >= 4.0,
        });
    }
    events.sort_by_key(|e| e.timestamp_ms);
    Ok(events)
}

fn movielens_titles(dir: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(dir.join("ml-100k.item")) else {
        return HashMap::new();
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 3).then(|| (f[0].to_string(), format!("{} ({})", f[1], f[2])))
        })
        .collect()
}

/// Broken messages of several kinds, keyed so each lands on a real partition.
fn bad_messages(n: usize, sample: &ReplayEvent) -> Vec<(Option<String>, Vec<u8>)> {
    let good = sample.to_json();
    let user = Some(sample.user_id.clone());
    let kinds: Vec<(Option<String>, Vec<u8>)> = vec![
        (user.clone(), good.as_bytes()[..good.len() / 2].to_vec()),
        (None, good.clone().into_bytes()),
        (
            user.clone(),
            good.replace("\"timestamp_ms\":", "\"timestamp_ms\":9").into_bytes(),
        ),
        (user.clone(), vec![0xc3, 0x28, 0xa0, 0xa1]),
        (
            user.clone(),
            format!(
                r#"{{"event_type":"purchase","user_id":"{}","item_id":"1","timestamp_ms":{},"quantity":-3}}"#,
                sample.user_id, sample.timestamp_ms
            )
            .into_bytes(),
        ),
    ];
    (0..n).map(|i| kinds[i % kinds.len()].clone()).collect()
}

struct Broker {
    bootstrap: String,
    _mock: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
}

fn start_broker(args: &DemoArgs, config: &Config) -> anyhow::Result<Broker> {
    if let Some(b) = &args.brokers {
        create_topics(b, config)?;
        return Ok(Broker {
            bootstrap: b.clone(),
            _mock: None,
        });
    }
    let mock = MockCluster::new(1).context("cannot start the embedded Kafka mock cluster")?;
    // The mock keeps ≤ 100k messages or 5 MiB per partition: spread 100k events (and their outputs) wide.
    for t in &config.topics.input {
        mock.create_topic(t, 8, 1)?;
    }
    mock.create_topic(&config.topics.recommendations, 32, 1)?;
    mock.create_topic(&config.topics.dead_letter, 4, 1)?;
    mock.create_topic(&config.topics.alerts, 4, 1)?;
    Ok(Broker {
        bootstrap: mock.bootstrap_servers(),
        _mock: Some(mock),
    })
}

/// Creates the demo's topics on a real broker; topics that already exist are kept as they are.
pub(crate) fn create_topics(bootstrap: &str, config: &Config) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut topics = vec![
        NewTopic::new(
            &config.topics.recommendations,
            8,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(&config.topics.dead_letter, 1, TopicReplication::Fixed(1)),
        NewTopic::new(&config.topics.alerts, 1, TopicReplication::Fixed(1)),
    ];
    for t in &config.topics.input {
        topics.push(NewTopic::new(t, 8, TopicReplication::Fixed(1)));
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics(&topics, &options))
        .with_context(|| format!("cannot create the demo topics on {bootstrap}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => bail!("cannot create topic {topic} on {bootstrap}: {e}"),
        }
    }
    Ok(())
}

/// The harness brokers (rdkafka's embedded mock cluster, tansu) hold a fetch for its whole
/// `fetch.wait.max.ms` even when data arrives meanwhile, where a Kafka broker answers at once; with
/// the daemon's 500 ms default the tools would measure that wait instead of the daemon. Unless the
/// config sets it, their runs use `ms` (docs/performance.md, "Broker settings of the tools").
pub fn harness_fetch_wait(config: &mut Config, ms: u32) {
    config
        .kafka
        .consumer
        .entry("fetch.wait.max.ms".to_string())
        .or_insert_with(|| ms.to_string());
}

/// The mock cluster reads any offset straight from memory, so a short wait never starves a fetch.
pub const MOCK_FETCH_WAIT_MS: u32 = 10;

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let titles = movielens_titles(&args.data);
    print!("longmem demo: ");
    let replay = replay_movielens(&args, config)?;
    print_summary(&args, &replay, &titles);
    Ok(())
}

/// A MovieLens-100k replay through the daemon: the stream, what the daemon answered (read back from
/// the broker) and its running totals.
pub struct Replay {
    pub events: Vec<ReplayEvent>,
    pub recommendations: Vec<Recommendation>,
    pub stats: Arc<RunStats>,
    pub produced: u64,
    pub elapsed: Duration,
}

/// Streams MovieLens-100k (with `args.bad` broken messages) through an in-process daemon running
/// `config` on the embedded broker or `args.brokers`, and reads its recommendations back.
pub fn replay_movielens(args: &DemoArgs, mut config: Config) -> anyhow::Result<Replay> {
    let mut events = movielens_events(&args.data)?;
    if args.limit > 0 {
        events.truncate(args.limit);
    }
    if args.brokers.is_some() {
        // A real broker may hold earlier runs' topics: this run gets topics of its own.
        let run = format!("demo-{}", crate::pipeline::now_ms() / 1000);
        config.topics.suffix_with(&run);
    }
    let broker = start_broker(args, &config)?;
    if args.brokers.is_none() {
        harness_fetch_wait(&mut config, MOCK_FETCH_WAIT_MS);
    }
    let store_dir = tempfile::Builder::new().prefix("longmem-demo-").tempdir()?;
    config.kafka.bootstrap_servers = broker.bootstrap.clone();
    config.kafka.group_id = format!("longmem-demo-{}", std::process::id());
    config.store.path = store_dir.path().to_path_buf();

    println!(
        "{} MovieLens-100k ratings (rating ≥ 4 → purchase, else click) at {} on {}, model {}",
        events.len(),
        if args.rate == 0 {
            "full speed".to_string()
        } else {
            format!("{} events/s", args.rate)
        },
        if args.brokers.is_some() {
            broker.bootstrap.as_str()
        } else {
            "the embedded broker"
        },
        config.model.path.display(),
    );
    let daemon = InProcessDaemon::start(&config)?;
    let outcome = drive(args, &config, &events, &daemon);
    let stats = daemon.stats.clone();
    let pipeline_result = daemon.stop()?;
    let (produced, elapsed) = outcome?;
    pipeline_result?;

    // Read what the daemon produced back from the broker.
    let recommendations = read_topic(&broker.bootstrap, &config.topics.recommendations)?;
    Ok(Replay {
        events,
        recommendations,
        stats,
        produced,
        elapsed,
    })
}

/// The daemon's pipeline on a thread of this process, for the commands that feed it a stream of
/// their own (`demo`, `evaluate supply-chain`).
pub struct InProcessDaemon {
    pub health: Arc<Health>,
    pub stats: Arc<RunStats>,
    stop: Shutdown,
    thread: std::thread::JoinHandle<Result<(), pipeline::PipelineError>>,
}

impl InProcessDaemon {
    pub fn start(config: &Config) -> anyhow::Result<InProcessDaemon> {
        metrics::install();
        let health = Arc::new(Health::default());
        let stop = Shutdown::new();
        let stats = Arc::new(RunStats::default());
        let thread = {
            let (config, health, stop, stats) =
                (config.clone(), health.clone(), stop.clone(), stats.clone());
            std::thread::Builder::new()
                .name("pipeline".into())
                .spawn(move || pipeline::run(&config, health, stop, stats))?
        };
        Ok(InProcessDaemon {
            health,
            stats,
            stop,
            thread,
        })
    }

    /// Waits until partitions are assigned (at most a minute); fails if the pipeline stops first.
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.health.is_ready() {
            if self.is_finished() || self.health.failed.load(Ordering::Relaxed) {
                bail!("the daemon stopped during start-up (see the error above)");
            }
            if Instant::now() > deadline {
                bail!("the daemon was not ready after 60 s (no partitions assigned)");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Whether the pipeline has stopped (it only does on its own after an error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the pipeline after its batch in hand; returns how it ended.
    pub fn stop(self) -> anyhow::Result<Result<(), pipeline::PipelineError>> {
        self.stop.trigger();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))
    }
}

/// Waits for the daemon to be ready, streams the events, waits until all are processed.
fn drive(
    args: &DemoArgs,
    config: &Config,
    events: &[ReplayEvent],
    daemon: &InProcessDaemon,
) -> anyhow::Result<(u64, Duration)> {
    daemon.wait_ready()?;
    let stats = &daemon.stats;
    let producer = producer(&config.kafka.bootstrap_servers)?;
    // The stream: every event keyed by its user, with the broken messages spread evenly through it.
    let bad = match events.get(events.len() / 2) {
        Some(sample) => bad_messages(args.bad, sample),
        None => Vec::new(),
    };
    let bad_every = events.len() / bad.len().max(1) + 1;
    let mut bad_iter = bad.into_iter();
    let mut stream: Vec<(Option<String>, Vec<u8>)> = Vec::with_capacity(events.len() + args.bad);
    for (i, e) in events.iter().enumerate() {
        stream.push((Some(e.user_id.clone()), e.to_json().into_bytes()));
        if i % bad_every == bad_every - 1 {
            stream.extend(bad_iter.next());
        }
    }
    stream.extend(bad_iter);

    let total = stream.len() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("streaming");
    let started = Instant::now();
    let messages = stream
        .iter()
        .map(|(key, payload)| (key.as_deref(), payload));
    let rate = args.rate as f64;
    produce_all(
        &producer,
        &config.topics.input[0],
        messages,
        rate,
        &bar,
        "demo event",
    )?;
    bar.set_position(total);
    bar.set_message("processing");
    let deadline = Instant::now() + Duration::from_secs(300);
    while stats.messages.load(Ordering::Relaxed) < total {
        if daemon.is_finished() {
            bail!("the daemon stopped before it processed every event (see the error above)");
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {total} events processed after 5 minutes",
                stats.messages.load(Ordering::Relaxed)
            );
        }
        bar.set_position(stats.messages.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    Ok((total, elapsed))
}

/// The producer the commands that feed a stream of their own use (not the daemon's: [`crate::sink`]).
pub(crate) fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "500000")
        .create()?)
}

/// Produces `messages` (key, payload) to `topic`, at `rate` per second (0: as fast as possible), and
/// waits until the broker acknowledged every one; `what` names them in errors. Returns how many.
pub(crate) fn produce_all<K: AsRef<[u8]>, P: AsRef<[u8]>>(
    producer: &FutureProducer,
    topic: &str,
    messages: impl Iterator<Item = (Option<K>, P)>,
    rate: f64,
    bar: &ProgressBar,
    what: &str,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    let mut pending = Vec::new();
    for (i, (key, payload)) in messages.enumerate() {
        if rate > 0.0 {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        let key = key.as_ref().map(|k| k.as_ref());
        pending.push(send(producer, topic, key, payload.as_ref(), what)?);
        if i % 1000 == 0 {
            bar.set_position(i as u64);
        }
    }
    let n = pending.len();
    wait_delivered(producer, pending, what)?;
    Ok(n)
}

/// Queues one message, waiting while the producer's local queue is full.
pub(crate) fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    what: &str,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    loop {
        match producer.send_result(record) {
            Ok(d) => return Ok(d),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err((e, _)) => bail!("producing a {what} failed: {e}"),
        }
    }
}

/// Waits until the broker acknowledged every delivery; the first failure is the error.
pub(crate) fn wait_delivered(
    producer: &FutureProducer,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    what: &str,
) -> anyhow::Result<()> {
    let _ = producer.flush(Duration::from_secs(60));
    for d in futures::executor::block_on(futures::future::join_all(pending)) {
        match d {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => bail!("producing a {what} failed: {e}"),
            Err(_) => bail!("producing a {what} was canceled"),
        }
    }
    Ok(())
}

/// Reads a topic from the beginning to its end (the high watermarks when the read starts), all
/// partitions, keeping the messages that decode as `T`.
pub(crate) fn read_topic<T: serde::de::DeserializeOwned>(
    bootstrap: &str,
    topic: &str,
) -> anyhow::Result<Vec<T>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "longmem-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or(0) as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let mut recs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Past the watermarks, read on until the topic is quiet for a second: some Kafka-compatible
    // brokers report a high watermark that trails the last message.
    let mut quiet_since = Instant::now();
    while (!ends.is_empty() || quiet_since.elapsed() < Duration::from_secs(1))
        && Instant::now() < deadline
    {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                if let Some(r) = m.payload().and_then(|p| serde_json::from_slice(p).ok()) {
                    recs.push(r);
                }
                if ends
                    .get(&m.partition())
                    .is_some_and(|&end| m.offset() + 1 >= end)
                {
                    ends.remove(&m.partition());
                }
            }
            Some(Err(e)) => bail!("reading {topic} back failed: {e}"),
            None => {}
        }
    }
    Ok(recs)
}

fn print_summary(args: &DemoArgs, replay: &Replay, titles: &HashMap<String, String>) {
    let Replay {
        events,
        recommendations: recs,
        stats,
        produced,
        elapsed,
    } = replay;
    let processed = stats.messages.load(Ordering::Relaxed);
    let busy = Duration::from_nanos(stats.busy_nanos.load(Ordering::Relaxed));
    println!();
    println!("== longmem demo summary ==");
    println!("events streamed            {produced}");
    println!(
        "events processed           {processed} in {:.1} s wall ({:.0} events/s offered and sustained)",
        elapsed.as_secs_f64(),
        processed as f64 / elapsed.as_secs_f64()
    );
    println!(
        "pipeline capacity          {:.0} events/s (events per second of busy pipeline time, {:.2} s busy)",
        processed as f64 / busy.as_secs_f64().max(1e-9),
        busy.as_secs_f64()
    );
    let stages: Vec<String> = stats
        .stage_seconds()
        .iter()
        .map(|(s, secs)| format!("{s} {:.0}%", 100.0 * secs / busy.as_secs_f64().max(1e-9)))
        .collect();
    println!("busy time by stage         {}", stages.join(", "));
    if let Some((p50, p99)) = stats.latency_ms() {
        println!("end-to-end latency         p50 {p50:.1} ms, p99 {p99:.1} ms (Kafka timestamp → output acknowledged)");
    }
    println!(
        "recommendations produced   {} acknowledged, {} read back from the topic",
        stats.recommendations.load(Ordering::Relaxed),
        recs.len()
    );
    let rejects = stats.rejects.lock().expect("rejects lock");
    let total_rejects: u64 = rejects.values().sum();
    let by_reason: Vec<String> = rejects.iter().map(|(r, n)| format!("{r}={n}")).collect();
    println!(
        "rejected to dead letters   {total_rejects} ({})",
        by_reason.join(", ")
    );

    // Sample users: those with the most events, so their history says something.
    let mut per_user: HashMap<&str, Vec<&ReplayEvent>> = HashMap::new();
    for e in events {
        per_user.entry(&e.user_id).or_default().push(e);
    }
    let last_rec: HashMap<&str, &Recommendation> =
        recs.iter().map(|r| (r.user_id.as_str(), r)).collect();
    let mut users: Vec<&str> = per_user
        .keys()
        .copied()
        .filter(|u| last_rec.contains_key(u))
        .collect();
    users.sort_by_key(|u| {
        (
            std::cmp::Reverse(per_user[u].len()),
            u.parse::<u64>().unwrap_or(0),
        )
    });
    let title = |id: &str| {
        titles
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("item {id}"))
    };
    for user in users.into_iter().step_by(97).take(args.samples) {
        let history = &per_user[user];
        let rec = last_rec[user];
        println!();
        println!("user {user}: {} events; the last five:", history.len());
        for e in history.iter().rev().take(5).rev() {
            println!(
                "    {:<8} {}",
                if e.purchase { "purchase" } else { "click" },
                title(&e.item_id)
            );
        }
        println!(
            "  recommended by {} v{}:",
            rec.model.name, rec.model.version
        );
        for item in &rec.items {
            println!("    {:>7.3}  {}", item.score, title(&item.item_id));
        }
    }
}
