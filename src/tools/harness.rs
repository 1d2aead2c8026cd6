//! The harness the tools share: brokers to run against (the embedded mock cluster, a tansu process,
//! or a Kafka the user names), the daemon's pipeline on a thread of this process, the producer that
//! feeds it, and reading a topic back as typed records.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
use crate::metrics::{self, Health};
use crate::pipeline::{self, RunStats};
use crate::shutdown::Shutdown;

/// A progress bar for a long step of a tool.
pub fn progress(len: u64, msg: &'static str) -> ProgressBar {
    ProgressBar::new(len)
        .with_style(
            ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        )
        .with_message(msg)
}

/// Partitions of each topic a tool creates.
#[derive(Debug, Clone, Copy)]
pub struct Partitions {
    pub input: i32,
    pub recommendations: i32,
    pub alerts: i32,
    pub dead_letter: i32,
}

/// The broker a tool runs against; what the tool started stops when this is dropped.
pub struct Broker {
    pub bootstrap: String,
    embedded: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    process: Option<Child>,
}

impl Broker {
    /// The Kafka at `brokers` when given (topics created there unless they exist), else the
    /// embedded mock cluster with `partitions` (call it once `config`'s group id is final: the
    /// changelog topic is named after it). Sets `config`'s bootstrap servers, and the fetch
    /// wait the mock needs ([`harness_fetch_wait`]).
    pub fn start(
        brokers: Option<&str>,
        config: &mut Config,
        partitions: Partitions,
    ) -> anyhow::Result<Broker> {
        let broker = match brokers {
            Some(b) => Broker::external(b),
            None => {
                harness_fetch_wait(config, MOCK_FETCH_WAIT_MS);
                Broker::embedded()?
            }
        };
        broker.create_topics(config, partitions)?;
        config.kafka.bootstrap_servers = broker.bootstrap.clone();
        Ok(broker)
    }

    /// A Kafka this process did not start, at `bootstrap` (host:port).
    pub fn external(bootstrap: &str) -> Broker {
        Broker {
            bootstrap: bootstrap.to_string(),
            embedded: None,
            process: None,
        }
    }

    /// rdkafka's mock cluster inside this process, with no topics yet ([`Broker::create_topics`]).
    /// Runs using it need a short fetch wait ([`MOCK_FETCH_WAIT_MS`]).
    pub fn embedded() -> anyhow::Result<Broker> {
        let mock = MockCluster::new(1).context("cannot start the embedded Kafka mock cluster")?;
        Ok(Broker {
            bootstrap: mock.bootstrap_servers(),
            embedded: Some(mock),
            process: None,
        })
    }

    /// Creates `config`'s topics (existing ones are kept). The mock cluster serves no Admin API,
    /// so there they are created through the mock, the daemon's changelog topic included.
    pub fn create_topics(&self, config: &Config, partitions: Partitions) -> anyhow::Result<()> {
        let Some(mock) = &self.embedded else {
            return create_topics(&self.bootstrap, config, partitions);
        };
        for t in &config.topics.input {
            mock.create_topic(t, partitions.input, 1)?;
        }
        mock.create_topic(
            &config.topics.recommendations,
            partitions.recommendations,
            1,
        )?;
        mock.create_topic(&config.topics.alerts, partitions.alerts, 1)?;
        mock.create_topic(&config.topics.dead_letter, partitions.dead_letter, 1)?;
        if let Some(changelog) = config.changelog_topic() {
            mock.create_topic(&changelog, partitions.input, 1)?;
        }
        Ok(())
    }

    /// tansu, the Kafka-compatible broker, as a process on a free port of 127.0.0.1, from
    /// `$LONGMEM_TANSU` or `.tools/bin/tansu`.
    pub fn tansu() -> anyhow::Result<Broker> {
        let binary = std::env::var_os("LONGMEM_TANSU")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".tools/bin/tansu"));
        Broker::tansu_at(&binary)
    }

    /// [`Broker::tansu`] with the tansu binary at `binary`.
    pub fn tansu_at(binary: &std::path::Path) -> anyhow::Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start the tansu broker at {}; run `bash scripts/fetch-tools.sh`, set LONGMEM_TANSU, or pass --brokers",
                    binary.display()
                )
            })?;
        let broker = Broker {
            bootstrap: format!("127.0.0.1:{port}"),
            embedded: None,
            process: Some(child),
        };
        // Ready once it answers a metadata request: an open port alone may not answer yet.
        let probe: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .create()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while probe
            .fetch_metadata(None, Duration::from_millis(500))
            .is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "tansu at {} did not answer metadata requests within 20 s",
                    broker.bootstrap
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// How a tool's output names this broker.
    pub fn name(&self) -> &str {
        if self.embedded.is_some() {
            "the embedded broker"
        } else {
            &self.bootstrap
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.process.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Creates a tool's topics on a real broker; topics that already exist are kept as they are.
pub fn create_topics(
    bootstrap: &str,
    config: &Config,
    partitions: Partitions,
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut topics = vec![
        NewTopic::new(
            &config.topics.recommendations,
            partitions.recommendations,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(
            &config.topics.dead_letter,
            partitions.dead_letter,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(
            &config.topics.alerts,
            partitions.alerts,
            TopicReplication::Fixed(1),
        ),
    ];
    for t in &config.topics.input {
        topics.push(NewTopic::new(
            t,
            partitions.input,
            TopicReplication::Fixed(1),
        ));
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics(&topics, &options))
        .with_context(|| format!("cannot create the topics on {bootstrap}"))?;
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
                .spawn(move || pipeline::run(&config, health, stop, stats, None))?
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
/// The producer the commands that feed a stream of their own use (not the daemon's: [`crate::sink`]).
pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "500000")
        .create()?)
}

/// Produces `messages` (key, payload) to `topic`, at `rate` per second (0: as fast as possible), and
/// waits until the broker acknowledged every one; `what` names them in errors. Returns how many.
pub fn produce_all<K: AsRef<[u8]>, P: AsRef<[u8]>>(
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
        // Paced in steps of at least a millisecond: a sleep per message would cost the load
        // generator a wake-up per event (10,000 a second at 10,000 events/s), CPU taken from the
        // daemon it measures on the same cores.
        if rate > 0.0 {
            let due = Duration::from_secs_f64(i as f64 / rate);
            let ahead = due.saturating_sub(started.elapsed());
            if ahead >= Duration::from_millis(1) {
                std::thread::sleep(ahead);
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
pub fn send(
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
pub fn wait_delivered(
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
/// partitions, each message decoded as `T` (one that does not decode is an error).
pub fn read_topic<T: serde::de::DeserializeOwned>(
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
                if let Some(payload) = m.payload() {
                    // A record that does not decode is a wire-format drift, not a record to skip:
                    // skipped, a renamed field would score as zero alerts instead of failing.
                    let record = serde_json::from_slice(payload).with_context(|| {
                        format!(
                            "{topic} [{}] at offset {} is not a {}",
                            m.partition(),
                            m.offset(),
                            std::any::type_name::<T>()
                        )
                    })?;
                    recs.push(record);
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
