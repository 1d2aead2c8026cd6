//! The integration tests' shared harness: a real Kafka-protocol broker (tansu) on 127.0.0.1, the
//! `longmem` binary as a child process, and Kafka clients to feed and read topics. Everything it
//! starts is killed on drop. Waits poll a condition against a deadline; nothing sleeps blindly.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(default));
    assert!(
        path.exists(),
        "{} not found; run `bash scripts/fetch-tools.sh` (or `make test`), or set {var}",
        path.display()
    );
    path
}

pub fn ort_library() -> PathBuf {
    tool("ORT_DYLIB_PATH", ".tools/onnxruntime/libonnxruntime.so")
}

/// A tansu broker with in-memory storage, on a free port.
pub struct Broker {
    child: Child,
    pub bootstrap: String,
}

impl Broker {
    pub fn start() -> Broker {
        let tansu = tool("LONGMEM_TANSU", ".tools/bin/tansu");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let broker = Broker {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        };
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .create()
            .unwrap();
        wait_for(
            "the broker to answer metadata requests",
            Duration::from_secs(20),
            || {
                consumer
                    .fetch_metadata(None, Duration::from_millis(500))
                    .ok()
            },
        );
        broker
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results =
            futures::executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
                .unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        wait_for(
            &format!("topic {name} to have {partitions} partitions"),
            Duration::from_secs(20),
            || {
                let md = consumer
                    .fetch_metadata(Some(name), Duration::from_millis(500))
                    .ok()?;
                (md.topics().first()?.partitions().len() == partitions as usize).then_some(())
            },
        );
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// Produces and waits for every acknowledgement.
    pub fn produce(&self, topic: &str, messages: &[(Option<Vec<u8>>, Vec<u8>)]) {
        let producer = self.producer();
        produce_with(&producer, topic, messages);
    }

    /// Reads every partition of `topic` from the beginning until `done` says the collected messages
    /// are enough, or `timeout` passes (then panics).
    pub fn read_until(
        &self,
        topic: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Vec<Record> {
        let mut reader = self.reader(topic);
        let mut records = Vec::new();
        wait_for(&format!("enough messages on {topic}"), timeout, || {
            reader.poll_into(&mut records, Duration::from_millis(200));
            done(&records).then_some(())
        });
        records
    }

    pub fn reader(&self, topic: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("test-reader-{}", free_port()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Reader { consumer }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    messages: &[(Option<Vec<u8>>, Vec<u8>)],
) {
    let futures: Vec<_> = messages
        .iter()
        .map(|(key, payload)| {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    let _ = producer.flush(Duration::from_secs(30));
    for r in futures::executor::block_on(futures::future::join_all(futures)) {
        r.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("outputs are JSON")
    }
}

/// The (partition, offset) of every input event that `outputs` answer.
pub fn answered_sources(outputs: &[Record]) -> std::collections::HashSet<(i64, i64)> {
    outputs
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["source"]["partition"].as_i64().unwrap(),
                v["source"]["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

pub struct Reader {
    consumer: BaseConsumer,
}

impl Reader {
    pub fn poll_into(&mut self, records: &mut Vec<Record>, max: Duration) {
        let deadline = Instant::now() + max;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.consumer.poll(left) {
                Some(Ok(m)) => records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) => panic!("reading failed: {e}"),
                None => break,
            }
        }
    }
}

/// The topics of one test, named after it so tests never share data.
pub struct Topics {
    pub input: String,
    pub recommendations: String,
    pub alerts: String,
    pub dead_letter: String,
}

impl Topics {
    pub fn create(broker: &Broker, test: &str, input_partitions: i32) -> Topics {
        let t = Topics {
            input: format!("{test}.events"),
            recommendations: format!("{test}.recs"),
            alerts: format!("{test}.alerts"),
            dead_letter: format!("{test}.dlq"),
        };
        broker.create_topic(&t.input, input_partitions);
        broker.create_topic(&t.recommendations, input_partitions);
        broker.create_topic(&t.alerts, 1);
        broker.create_topic(&t.dead_letter, 1);
        t
    }
}

/// Writes a daemon config for `broker` and `topics` into `dir`; returns (path, metrics address).
pub fn write_config(
    dir: &Path,
    broker: &Broker,
    topics: &Topics,
    group: &str,
    max_events: usize,
) -> (PathBuf, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let text = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
produce_timeout_ms = 20000
[kafka.consumer]
"session.timeout.ms" = "6000"
"statistics.interval.ms" = "1000"
[topics]
input = ["{input}"]
recommendations = "{recs}"
alerts = "{alerts}"
dead_letter = "{dlq}"
[batch]
max_events = {max_events}
max_wait_ms = 5
[store]
path = "{store}"
history_len = 50
cache_bytes = 16777216
[model]
path = "{model}"
runtime_library = "{ort}"
[metrics]
listen = "{metrics}"
[supply]
forecaster = "{forecaster}"
"#,
        bootstrap = broker.bootstrap,
        input = topics.input,
        recs = topics.recommendations,
        alerts = topics.alerts,
        dlq = topics.dead_letter,
        store = dir.join("store").display(),
        model = repo().join("models/sasrec-ml100k").display(),
        ort = ort_library().display(),
        forecaster = repo().join("models/demand-supplygraph").display(),
    );
    let path = dir.join("longmem.toml");
    std::fs::write(&path, text).unwrap();
    (path, metrics)
}

/// The `longmem run` daemon as a child process.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_longmem"))
            .args(["run", "--config"])
            .arg(config)
            .env("LONGMEM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start longmem");
        Daemon { child }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL: no chance to flush or commit anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let status = wait_for(
            "the daemon to exit after SIGTERM",
            Duration::from_secs(30),
            || self.child.try_wait().unwrap(),
        );
        std::mem::forget(self);
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTP GET on the daemon's metrics address: (status code, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// JSON Schema validators for `schemas/<name>.json`.
pub fn schema(name: &str) -> jsonschema::Validator {
    let text =
        std::fs::read_to_string(repo().join("schemas").join(format!("{name}.json"))).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("schema {name}: {e}"))
}

/// Real events: the first `n` MovieLens-100k ratings in time order, as (key, payload).
pub fn movielens_messages(n: usize) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    let events = longmem::tools::demo::movielens_events(
        &repo().join("../shared/data/seqrec/recbole_ml100k"),
    )
    .unwrap();
    events
        .iter()
        .take(n)
        .map(|e| {
            (
                Some(e.user_id.clone().into_bytes()),
                e.to_json().into_bytes(),
            )
        })
        .collect()
}

/// How many of `messages` each user (the message key) sent.
pub fn events_per_user(
    messages: &[(Option<Vec<u8>>, Vec<u8>)],
) -> std::collections::HashMap<String, u64> {
    let mut sent = std::collections::HashMap::new();
    for (key, _) in messages {
        *sent
            .entry(String::from_utf8(key.clone().unwrap()).unwrap())
            .or_default() += 1;
    }
    sent
}
