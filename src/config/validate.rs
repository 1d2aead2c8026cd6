//! The rules a configuration must keep, checked all at once so an operator sees every key to fix.

use super::*;

impl Config {
    /// Checks every rule and reports every key that breaks one, not only the first.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.kafka.bootstrap_servers.trim().is_empty() {
            errors.push(key_error(
                "kafka.bootstrap_servers",
                "is empty; give host:port of at least one broker",
            ));
        }
        if self.rollout.max_p99_ratio.is_nan() || self.rollout.max_p99_ratio <= 0.0 {
            errors.push(key_error(
                "rollout.max_p99_ratio",
                "must be above 0 (2.0: a candidate may take up to twice the live model's p99)",
            ));
        }
        if !(0.0..=1.0).contains(&self.rollout.min_top10_overlap) {
            errors.push(key_error(
                "rollout.min_top10_overlap",
                "is a share of the top 10: between 0 and 1",
            ));
        }
        if self.admin.listen.as_deref() == Some(self.metrics.listen.as_str()) {
            errors.push(key_error(
                "admin.listen",
                "is the metrics listener's address; the admin API needs a listener of its own \
                 (the metrics port is open to Prometheus, a model swap must not be)",
            ));
        }
        if self.kafka.group_id.trim().is_empty() {
            errors.push(key_error(
                "kafka.group_id",
                "is empty; every instance of one deployment uses the same group id",
            ));
        }
        for (section, props) in [
            ("kafka.properties", &self.kafka.properties),
            ("kafka.consumer", &self.kafka.consumer),
            ("kafka.producer", &self.kafka.producer),
        ] {
            for key in props.keys() {
                if MANAGED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                    errors.push(key_error(
                        &format!("{section}.{key}"),
                        "is set by longmem itself to keep its delivery guarantees and cannot be overridden",
                    ));
                }
            }
        }
        if self.kafka.produce_timeout_ms == 0 {
            errors.push(key_error("kafka.produce_timeout_ms", "must be at least 1"));
        }
        if self.topics.input.is_empty() {
            errors.push(key_error(
                "topics.input",
                "is empty; list at least one input topic",
            ));
        }
        let outputs = [
            ("topics.recommendations", &self.topics.recommendations),
            ("topics.alerts", &self.topics.alerts),
            ("topics.dead_letter", &self.topics.dead_letter),
        ];
        for (key, topic) in outputs {
            if topic.trim().is_empty() {
                errors.push(key_error(key, "is empty; name the output topic"));
            }
            if self.topics.input.contains(topic) {
                errors.push(key_error(
                    key,
                    format!(
                        "`{topic}` is also an input topic; the daemon would consume its own output"
                    ),
                ));
            }
        }
        if let Some(topic) = &self.supply.demand_topic {
            if !self.topics.input.contains(topic) {
                errors.push(key_error(
                    "supply.demand_topic",
                    format!("`{topic}` is not one of topics.input; demand must be read back to be counted"),
                ));
            }
        }
        let p = &self.supply;
        let probabilities = [
            ("supply.open_probability", p.open_probability),
            ("supply.critical_probability", p.critical_probability),
            ("supply.resolve_probability", p.resolve_probability),
        ];
        for (key, v) in probabilities {
            if !(0.0..=1.0).contains(&v) {
                errors.push(key_error(key, "must be a probability between 0 and 1"));
            }
        }
        if p.resolve_probability >= p.open_probability
            || p.critical_probability < p.open_probability
        {
            errors.push(key_error(
                "supply.resolve_probability",
                "must be below supply.open_probability, which must not exceed supply.critical_probability",
            ));
        }
        if !(p.lead_time_days >= 0.0 && p.review_days >= 0.0) {
            errors.push(key_error(
                "supply.lead_time_days",
                "lead time and review days must be >= 0",
            ));
        }
        if !(1..=365).contains(&p.max_catch_up_days) {
            errors.push(key_error(
                "supply.max_catch_up_days",
                "must be between 1 and 365",
            ));
        }
        if p.closing_count_hour.is_some_and(|h| h > 23) {
            errors.push(key_error(
                "supply.closing_count_hour",
                "must be an hour of the day, 0 to 23 (UTC)",
            ));
        }
        if !(1..=100_000).contains(&self.batch.max_events) {
            errors.push(key_error(
                "batch.max_events",
                "must be between 1 and 100000",
            ));
        }
        if self.batch.max_wait_ms > 60_000 {
            errors.push(key_error(
                "batch.max_wait_ms",
                "must be at most 60000 (one minute)",
            ));
        }
        if !(1..=10_000).contains(&self.store.history_len) {
            errors.push(key_error(
                "store.history_len",
                "must be between 1 and 10000",
            ));
        }
        if self
            .kafka
            .instance_id
            .as_ref()
            .is_some_and(|id| id.trim().is_empty())
        {
            errors.push(key_error(
                "kafka.instance_id",
                "must not be empty; leave it unset for dynamic membership",
            ));
        }
        if self.metrics.stall_timeout_s * 1000 <= self.kafka.produce_timeout_ms {
            errors.push(key_error(
                "metrics.stall_timeout_s",
                format!(
                    "must be longer than kafka.produce_timeout_ms ({} ms): a batch waiting for the \
                     broker's acknowledgement is not stalled",
                    self.kafka.produce_timeout_ms
                ),
            ));
        }
        if self.model.intra_threads == 0 {
            errors.push(key_error("model.intra_threads", "must be at least 1"));
        }
        if cfg!(not(feature = "cuda")) && self.model.execution_provider == ExecutionProvider::Cuda {
            errors.push(key_error(
                "model.execution_provider",
                "\"cuda\" needs a build with `--features cuda`; this binary supports only \"cpu\"",
            ));
        }
        if self.metrics.listen.parse::<SocketAddr>().is_err() {
            errors.push(key_error(
                "metrics.listen",
                format!(
                    "`{}` is not an ip:port address such as 127.0.0.1:9464",
                    self.metrics.listen
                ),
            ));
        }
        if self.limits.max_message_bytes < 64 {
            errors.push(key_error("limits.max_message_bytes", "must be at least 64"));
        }
        // A dead letter carries up to this many bytes of the key and of the payload, each a third
        // longer in base64, and the kept key again as its Kafka key: it must fit what the
        // producer sends, or the broker refuses it and the partition stalls.
        let max_record = self
            .kafka
            .client_config(&[], &self.kafka.producer)
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1_000_000);
        let dead_letter = self.limits.max_message_bytes.saturating_mul(4) + 4096;
        if dead_letter > max_record {
            errors.push(key_error(
                "limits.max_message_bytes",
                format!(
                    "is {}: a dead letter can then reach {dead_letter} bytes, more than the producer \
                     sends ({max_record}, message.max.bytes). Lower it to at most {}, or raise \
                     kafka.producer message.max.bytes and the dead-letter topic's max.message.bytes",
                    self.limits.max_message_bytes,
                    (max_record.saturating_sub(4096)) / 4,
                ),
            ));
        }
        if self.limits.max_id_len == 0 {
            errors.push(key_error("limits.max_id_len", "must be at least 1"));
        }
        if self.limits.max_future_skew_ms < 0 {
            errors.push(key_error(
                "limits.max_future_skew_ms",
                "must not be negative",
            ));
        }
        if self.limits.max_quantity < 1 {
            errors.push(key_error("limits.max_quantity", "must be at least 1"));
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Keys(errors)),
        }
    }
}

/// librdkafka settings longmem owns: overriding them would break "outputs acknowledged before the
/// offset moves" or exactly-once state.
pub const MANAGED_KAFKA_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "acks",
    "group.id",
    "bootstrap.servers",
];
