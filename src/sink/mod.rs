//! The Kafka producer for every output: recommendations, alerts and dead letters, and the one owner
//! of produce retries ([`Sink::deliver`]: the whole batch again, after a jittered, capped
//! [`retry::backoff`]).
//!
//! - `mod.rs`: the producer, its settings, delivery of a batch's outputs.
//! - `retry.rs`: how long to wait before the next attempt.

//!
//! Idempotent (`enable.idempotence`, `acks=all`), so broker-side retries never duplicate or reorder a
//! partition's outputs. [`Sink::send_all`] returns only when the broker acknowledged every output of
//! the batch, or with an error if any failed: the pipeline never moves an offset past an event whose
//! output is not durable on the broker.

mod retry;

use std::time::{Duration, Instant};

use futures::future::join_all;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::Config;
use crate::metrics;
use crate::shutdown::Shutdown;
pub use retry::backoff;
use retry::{RETRY_BASE, RETRY_CAP};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka producer: {0}. Check the [kafka] settings")]
    Create(KafkaError),
    #[error("delivery to topic {topic} failed: {error}")]
    Delivery { topic: String, error: KafkaError },
    #[error(
        "the broker refused outputs to topic {topic}, and retrying cannot change that: {error}. \
         Check that the topic exists, that this instance may write it (WRITE on the topic, \
         IDEMPOTENT_WRITE on the cluster) and that its records fit the topic's max.message.bytes, \
         then restart: the batch was not written to the store, so it is processed again"
    )]
    Refused { topic: String, error: KafkaError },
    #[error(
        "the producer failed for good: {error}. Restart the instance (a new producer starts a new \
         idempotent session); the batch was not written to the store, so it is processed again"
    )]
    Fatal { error: KafkaError },
    #[error("the producer dropped a delivery report (it is shutting down)")]
    Canceled,
}

/// One message to produce.
pub struct Output {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// A partition chosen by the pipeline (the changelog's, co-partitioned with the input); `None`:
    /// the producer's partitioner, by key.
    pub partition: Option<i32>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

impl Output {
    /// A message partitioned by its key.
    pub fn keyed(topic: &str, key: Option<Vec<u8>>, payload: Vec<u8>) -> Output {
        Output {
            topic: topic.to_string(),
            key,
            payload,
            partition: None,
            headers: Vec::new(),
        }
    }
}

/// Where the broker wrote one output: (partition, offset).
pub type Delivered = (i32, i64);

pub struct Sink {
    producer: FutureProducer,
}

/// librdkafka defaults for the producer that a user may override in `[kafka.producer]`.
/// No linger: the finisher enqueues a whole batch's outputs at once and then waits for them, so
/// lingering adds its time to every batch and fills no request that the batch does not fill by
/// itself.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "0"),
    ("compression.type", "lz4"),
    ("queue.buffering.max.messages", "100000"),
    ("queue.buffering.max.kbytes", "65536"),
];

impl Sink {
    pub fn new(config: &Config) -> Result<Sink, SinkError> {
        let mut cc = config
            .kafka
            .client_config(PRODUCER_DEFAULTS, &config.kafka.producer);
        cc.set("enable.idempotence", "true").set("acks", "all").set(
            "message.timeout.ms",
            config.kafka.produce_timeout_ms.to_string(),
        );
        let producer: FutureProducer = cc.create().map_err(SinkError::Create)?;
        Ok(Sink { producer })
    }

    /// Produces every output until the broker has acknowledged them all, retrying the whole batch
    /// after a failure with [`backoff`] (the batch's state is still unwritten, so a retry can repeat
    /// an output but never lose one). Returns the last failure once `shutdown` triggers.
    pub fn deliver(
        &self,
        outputs: &[Output],
        shutdown: &Shutdown,
    ) -> Result<Vec<Delivered>, SinkError> {
        let mut attempt = 0u32;
        loop {
            match self.send_all(outputs).map_err(SinkError::classified) {
                Ok(delivered) => return Ok(delivered),
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => wait_to_retry(&mut attempt, e, shutdown)?,
            }
        }
    }

    /// Produces every output and waits for all acknowledgements; returns where each was written,
    /// in the order of `outputs`.
    pub fn send_all(&self, outputs: &[Output]) -> Result<Vec<Delivered>, SinkError> {
        let mut pending = Vec::with_capacity(outputs.len());
        for out in outputs {
            let mut record = FutureRecord::<[u8], [u8]>::to(&out.topic).payload(&out.payload[..]);
            if let Some(key) = &out.key {
                record = record.key(key);
            }
            if let Some(partition) = out.partition {
                record = record.partition(partition);
            }
            if !out.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(out.headers.len());
                for (name, value) in &out.headers {
                    headers = headers.insert(Header {
                        key: name,
                        value: Some(value),
                    });
                }
                record = record.headers(headers);
            }
            // The local queue is bounded; when it is full, wait for deliveries to drain it.
            let started = Instant::now();
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push((out.topic.as_str(), delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if started.elapsed() < Duration::from_secs(60) =>
                    {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((error, _)) => {
                        return Err(SinkError::Delivery {
                            topic: out.topic.to_string(),
                            error,
                        })
                    }
                }
            }
        }
        let topics: Vec<&str> = pending.iter().map(|(t, _)| *t).collect();
        let results = futures::executor::block_on(join_all(pending.into_iter().map(|(_, d)| d)));
        let mut delivered = Vec::with_capacity(results.len());
        for (topic, result) in topics.into_iter().zip(results) {
            match result {
                Ok(Ok(d)) => delivered.push((d.partition, d.offset)),
                Ok(Err((error, _))) => {
                    return Err(SinkError::Delivery {
                        topic: topic.to_string(),
                        error,
                    })
                }
                Err(_) => return Err(SinkError::Canceled),
            }
        }
        Ok(delivered)
    }

    /// Waits for anything still queued (used at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(Timeout::After(timeout));
    }
}

impl SinkError {
    /// A delivery failure that no retry can clear, as the error that says so.
    fn classified(self) -> SinkError {
        match self {
            SinkError::Delivery { topic, error } => match permanence(&error) {
                Some(Permanence::Refused) => SinkError::Refused { topic, error },
                Some(Permanence::Fatal) => SinkError::Fatal { error },
                None => SinkError::Delivery { topic, error },
            },
            other => other,
        }
    }

    /// Whether no retry can deliver the batch (the pipeline stops and says why), rather than not
    /// yet (the broker is away, a leader moves: retried).
    pub fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Refused { .. } | SinkError::Fatal { .. })
    }
}

enum Permanence {
    /// The broker refuses the records or this client's right to write them.
    Refused,
    /// The idempotent producer cannot go on (librdkafka's fatal error).
    Fatal,
}

/// Waits before the next attempt after failure `e`; returns it when `shutdown` triggers.
fn wait_to_retry(attempt: &mut u32, e: SinkError, shutdown: &Shutdown) -> Result<(), SinkError> {
    if shutdown.is_triggered() {
        return Err(e);
    }
    *attempt += 1;
    metrics::record_produce_retry();
    let wait = backoff(*attempt, RETRY_BASE, RETRY_CAP);
    tracing::error!(error = %e, attempt = *attempt, ?wait, "producing the batch's outputs failed; retrying the whole batch (state unchanged)");
    let until = Instant::now() + wait;
    while Instant::now() < until && !shutdown.is_triggered() {
        std::thread::sleep(Duration::from_millis(50).min(wait));
    }
    Ok(())
}

/// Delivery errors that retrying the batch cannot clear. Everything else (timeouts, brokers down,
/// leaders moving) is retried: the broker may come back.
fn permanence(error: &KafkaError) -> Option<Permanence> {
    use RDKafkaErrorCode as E;
    match error.rdkafka_error_code()? {
        E::TopicAuthorizationFailed
        | E::ClusterAuthorizationFailed
        | E::MessageSizeTooLarge
        | E::MessageBatchTooLarge
        | E::InvalidMessageSize
        | E::InvalidRecord
        | E::InvalidTopic
        | E::PolicyViolation
        | E::UnknownTopic
        | E::InvalidRequiredAcks
        | E::UnsupportedForMessageFormat => Some(Permanence::Refused),
        E::Fatal => Some(Permanence::Fatal),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaRespErr;

    fn delivery(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn refusals_and_fatal_errors_are_permanent_and_outages_are_retried() {
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            assert!(
                matches!(permanence(&delivery(code)), Some(Permanence::Refused)),
                "{code:?}"
            );
        }
        assert!(matches!(
            permanence(&delivery(RDKafkaErrorCode::Fatal)),
            Some(Permanence::Fatal)
        ));
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
        ] {
            assert!(permanence(&delivery(code)).is_none(), "{code:?}");
        }
        assert!(permanence(&KafkaError::Canceled).is_none());
    }

    /// The embedded broker (rdkafka's mock cluster) refuses every produce request as unauthorized:
    /// the batch fails at once with an error that says what to check, instead of being retried
    /// for ever while its partition stalls.
    #[test]
    fn a_refused_batch_fails_at_once_and_says_what_to_check() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("outputs", 1, 1).expect("topic");
        cluster.request_errors(
            rdkafka::types::RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1000],
        );
        let path = std::path::Path::new("config/default.toml");
        let text = std::fs::read_to_string(path).expect("config/default.toml");
        let env = [(
            "LONGMEM__KAFKA__BOOTSTRAP_SERVERS".to_string(),
            cluster.bootstrap_servers(),
        )];
        let config = Config::from_toml(&text, path, env).expect("config");
        let sink = Sink::new(&config).expect("producer");
        let outputs = [Output::keyed(
            "outputs",
            Some(b"u1".to_vec()),
            b"{}".to_vec(),
        )];
        // Retried instead, the batch would come back only at this shutdown, as not yet delivered.
        let shutdown = std::sync::Arc::new(Shutdown::new());
        let later = shutdown.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            later.trigger();
        });
        let err = sink
            .deliver(&outputs, &shutdown)
            .expect_err("an unauthorized produce cannot succeed");
        assert!(err.is_permanent(), "retried until shutdown: {err}");
        let message = err.to_string();
        assert!(
            message.contains("outputs") && message.contains("WRITE on the topic"),
            "{message}"
        );
    }
}
