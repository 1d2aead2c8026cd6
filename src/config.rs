//! Typed configuration: TOML file, then `LONGMEM__SECTION__KEY` environment overrides, then validation.
//!
//! Everything is checked before any connection is opened: an unknown key or a bad value stops the
//! daemon at start with a message that names the key and says what is allowed. Every key that breaks
//! a rule is named at once; an unknown key or a value of the wrong type stops the reading of the file
//! where it is, so that one comes alone. Kafka client settings
//! that longmem does not model itself pass through verbatim to librdkafka (`[kafka.properties]`,
//! `[kafka.consumer]`, `[kafka.producer]`), so any Kafka (SASL, SSL, cloud) can be reached.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of environment overrides: `LONGMEM__BATCH__MAX_EVENTS=1024` sets `batch.max_events`.
pub const ENV_PREFIX: &str = "LONGMEM__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("{} config keys are wrong:{}", .0.len(), .0.iter().map(|e| format!("\n  - {e}")).collect::<String>())]
    Keys(Vec<ConfigError>),
}

fn key_error(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    pub store: StoreConfig,
    pub model: ModelConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub supply: SupplyConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated host:port list.
    pub bootstrap_servers: String,
    /// `group.id` of the consumer group; instances with the same id share the input partitions.
    pub group_id: String,
    /// librdkafka properties for both the consumer and the producer (security.protocol, sasl.*, ssl.*).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for the producer only.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// How long to wait for the broker to acknowledge a micro-batch's outputs before retrying it.
    #[serde(default = "default_produce_timeout_ms")]
    pub produce_timeout_ms: u64,
    /// `group.instance.id`: static group membership (KIP-345). Unique per instance and stable
    /// across its restarts (in Kubernetes, the StatefulSet pod's name), so that a restarted instance
    /// gets its partitions back at once instead of after a session timeout and a rebalance.
    #[serde(default)]
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    pub input: Vec<String>,
    pub recommendations: String,
    pub alerts: String,
    pub dead_letter: String,
}

impl TopicsConfig {
    /// Gives every topic a `.{run}` suffix: the commands that feed a broker themselves (demo,
    /// evaluations, the benchmark) get topics of their own, apart from earlier runs'.
    pub fn suffix_with(&mut self, run: &str) {
        for t in self.input.iter_mut().chain([
            &mut self.recommendations,
            &mut self.alerts,
            &mut self.dead_letter,
        ]) {
            *t = format!("{t}.{run}");
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// A micro-batch closes when it holds this many events...
    pub max_events: usize,
    /// ...or when this many milliseconds passed since its first event, whichever comes first.
    pub max_wait_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 256,
            max_wait_ms: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Directory of the sled database (created if missing).
    pub path: PathBuf,
    /// Recent items kept per user; at least the model's window.
    #[serde(default = "default_history_len")]
    pub history_len: usize,
    /// sled's page cache in bytes. (RSS still grows with the number of users beyond it while
    /// users' records are rewritten; docs/performance.md has the measurements.)
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// How step-model state is stored: `f16` halves the bytes per user (the model computes in
    /// f32 either way; live quality matches the model card within the evaluation's 1%), `f32`
    /// keeps it bit-exact.
    #[serde(default)]
    pub state_precision: StatePrecision,
    /// RAM for step state that is rebuilt rather than stored (a Transformer's key/value cache, a
    /// function of the user's window), in bytes. A user beyond it has theirs rebuilt on their next
    /// event (one prefill call per micro-batch).
    #[serde(default = "default_state_cache_bytes")]
    pub state_cache_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatePrecision {
    F32,
    #[default]
    F16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
}

/// Which graph answers events: `step` keeps the model's recurrent state or key/value cache in the
/// store and costs one incremental step per event; `full` re-reads the recent-item window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelMode {
    /// `step` when the model directory has a step graph, else `full`.
    Auto,
    Full,
    Step,
}

impl ExecutionProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model directory holding `model.json`, the ONNX file and the vocabulary.
    pub path: PathBuf,
    #[serde(default = "default_provider")]
    pub execution_provider: ExecutionProvider,
    /// With `execution_provider = "cuda"`: run on CPU instead of refusing to start when CUDA cannot be registered.
    #[serde(default)]
    pub allow_cpu_fallback: bool,
    #[serde(default = "default_mode")]
    pub mode: ModelMode,
    /// Leave items the user has just interacted with (the model's input window) out of their recommendations.
    #[serde(default = "default_true")]
    pub exclude_seen: bool,
    /// ONNX Runtime intra-op threads.
    #[serde(default = "default_threads")]
    pub intra_threads: usize,
    /// Let ONNX Runtime's intra-op threads spin between calls instead of sleeping: a little less
    /// latency per call for a core kept busy even when events are few (onnxruntime #11118).
    #[serde(default)]
    pub intra_op_spinning: bool,
    /// Path of libonnxruntime.so; when unset, `ORT_DYLIB_PATH` is used.
    #[serde(default)]
    pub runtime_library: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    pub listen: String,
    /// The watchdog: with partitions assigned and messages waiting, no micro-batch completed for
    /// this many seconds means the pipeline is stalled, and /healthz fails so that a supervisor
    /// restarts the daemon.
    pub stall_timeout_s: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
            stall_timeout_s: 60,
        }
    }
}

/// The supply-chain half: per SKU × location memory, the demand forecaster and inventory alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupplyConfig {
    /// Off: supply-chain events are validated and counted, nothing more.
    pub enabled: bool,
    /// The demand forecaster's directory (`training/forecast.py`); runs on `[model]`'s execution
    /// provider and threads.
    pub forecaster: PathBuf,
    /// Where purchases that name a location are forwarded as `demand` records keyed by
    /// `sku@location`, so that they land on the partition of that SKU × location's supply events.
    /// Must be one of `topics.input` (and the topic the supply events arrive on); default: the first.
    pub demand_topic: Option<String>,
    /// A stockout-risk alert opens when the stockout probability reaches this (low: a warning
    /// early enough to order, at the precision a reorder-point rule has; 0.5 gives fewer alerts,
    /// about two days before the shelf empties)...
    pub open_probability: f64,
    /// ...is `critical` from this probability, or when the stockout is expected within a day...
    pub critical_probability: f64,
    /// ...and resolves when the probability falls to this (hysteresis, so it does not flap), or when
    /// a delivery ends the shortage.
    pub resolve_probability: f64,
    /// Replenishment lead time and review period behind the suggested reorder quantity.
    pub lead_time_days: f64,
    pub review_days: f64,
    /// A SKU × location silent for longer than this many days restarts its daily demand count from
    /// the most recent ones.
    pub max_catch_up_days: usize,
    /// An inventory count stamped at or after this UTC hour is the day's closing count: the day's
    /// demand is complete, so the forecaster steps on it and the risk is read with the new
    /// forecast that evening (demand stamped later that day counts towards the next). Unset: a day
    /// closes at the next day's first event of its SKU × location, the next morning.
    pub closing_count_hour: Option<u32>,
}

impl Default for SupplyConfig {
    fn default() -> Self {
        SupplyConfig {
            enabled: true,
            forecaster: PathBuf::from("models/demand-supplygraph"),
            demand_topic: None,
            open_probability: 0.1,
            critical_probability: 0.8,
            resolve_probability: 0.03,
            lead_time_days: 7.0,
            review_days: 7.0,
            max_catch_up_days: 56,
            closing_count_hour: None,
        }
    }
}

impl SupplyConfig {
    /// The topic demand records go to.
    pub fn demand_topic<'a>(&'a self, topics: &'a TopicsConfig) -> &'a str {
        self.demand_topic.as_deref().unwrap_or(&topics.input[0])
    }
}

/// Bounds on input that separate absurd events from real ones; they go to the dead-letter topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_id_len: usize,
    /// Events stamped more than this far ahead of the daemon's clock are rejected.
    pub max_future_skew_ms: i64,
    /// Events stamped before this epoch millisecond are rejected (default 1995-01-01).
    pub min_timestamp_ms: i64,
    pub max_quantity: i64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_bytes: 64 * 1024,
            max_id_len: 128,
            max_future_skew_ms: 3_600_000,
            min_timestamp_ms: 788_918_400_000,
            max_quantity: 1_000_000,
        }
    }
}

fn default_produce_timeout_ms() -> u64 {
    30_000
}
fn default_history_len() -> usize {
    50
}
fn default_state_cache_bytes() -> u64 {
    128 * 1024 * 1024
}
fn default_cache_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_provider() -> ExecutionProvider {
    ExecutionProvider::Cpu
}
fn default_threads() -> usize {
    1
}
fn default_mode() -> ModelMode {
    ModelMode::Auto
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Reads `path`, applies the process environment's overrides and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::from_toml(&text, path, std::env::vars())
    }

    /// Parses TOML text, applies `LONGMEM__` overrides from `env` and validates.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut tree: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        overrides.sort();
        for (var, raw) in overrides {
            apply_override(&mut tree, &var, &raw)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(tree)).map_err(|e| {
                let key = e.path().to_string();
                let message = e.into_inner().message().to_string();
                key_error(&key, message)
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule and reports every key that breaks one, not only the first.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.kafka.bootstrap_servers.trim().is_empty() {
            errors.push(key_error(
                "kafka.bootstrap_servers",
                "is empty; give host:port of at least one broker",
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

    /// How long a rebalance waits for batches in flight, and shutdown for the pipeline: one
    /// delivery attempt of a batch's outputs (librdkafka's message timeout) and a sled flush fit.
    pub fn in_flight_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.kafka.produce_timeout_ms)
            + std::time::Duration::from_secs(30)
    }

    /// The effective configuration as TOML, as `check-config` prints it.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a validated config always serializes")
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

/// Applies one `LONGMEM__A__B=value` override to the TOML tree. The value is read as a TOML value
/// (`1024`, `true`, `["a","b"]`) and otherwise taken as a string; a comma-separated string sets a list.
/// Below `kafka.properties`, `kafka.consumer` and `kafka.producer`, `_` in the name stands for `.`
/// (`LONGMEM__KAFKA__PROPERTIES__SASL_MECHANISM` sets `sasl.mechanism`).
fn apply_override(tree: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let env_error = |message: &str| ConfigError::Env {
        var: var.to_string(),
        message: message.to_string(),
    };
    let mut path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(env_error("has an empty section; use LONGMEM__SECTION__KEY"));
    }
    let librdkafka_property = path.len() == 3
        && path[0] == "kafka"
        && ["properties", "consumer", "producer"].contains(&path[1].as_str());
    if librdkafka_property {
        path[2] = path[2].replace('_', ".");
    }
    let (last, parents) = path.split_last().expect("split yields at least one part");
    let mut table = tree;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| env_error(&format!("`{part}` is a value, not a section")))?;
    }
    let existing_is_list = matches!(table.get(last), Some(toml::Value::Array(_)));
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        // librdkafka takes every property as a string, `10` included.
        _ if librdkafka_property => toml::Value::String(raw.to_string()),
        Ok(mut t) => t.remove("v").expect("parsed table has v"),
        Err(_) if existing_is_list => toml::Value::Array(
            raw.split(',')
                .map(|s| toml::Value::String(s.trim().to_string()))
                .filter(|v| v.as_str() != Some(""))
                .collect(),
        ),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    // A string setting must stay a string even when it looks like a number (`group_id = 42`).
    let value = match (table.get(last), value) {
        (Some(toml::Value::String(_)), v) if !v.is_str() => toml::Value::String(raw.to_string()),
        (_, v) => v,
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
group_id = "longmem"
[topics]
input = ["events"]
recommendations = "recs"
alerts = "alerts"
dead_letter = "dlq"
[store]
path = "var/store"
[model]
path = "models/sasrec-ml100k"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml(text, Path::new("test.toml"), env)
    }

    #[test]
    fn defaults_fill_optional_sections() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.batch.max_events, 256);
        assert_eq!(c.metrics.listen, "127.0.0.1:9464");
        assert_eq!(c.model.execution_provider, ExecutionProvider::Cpu);
    }

    #[test]
    fn shipped_configs_are_valid() {
        for file in ["config/default.toml", "config/production.toml"] {
            let text =
                std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
            let c = load(&text, &[]).unwrap_or_else(|e| panic!("{file}: {e}"));
            // The names operators and scripts rely on.
            assert!(!c.topics.input.is_empty(), "{file}");
            assert!(!c.kafka.group_id.is_empty(), "{file}");
        }
    }

    #[test]
    fn environment_overrides_each_kind_of_value() {
        let c = load(
            MINIMAL,
            &[
                ("LONGMEM__BATCH__MAX_EVENTS", "64"),
                ("LONGMEM__TOPICS__INPUT", "a, b"),
                ("LONGMEM__KAFKA__GROUP_ID", "42"),
                ("LONGMEM__KAFKA__PROPERTIES__SASL_MECHANISM", "PLAIN"),
                ("LONGMEM__KAFKA__CONSUMER__FETCH_WAIT_MAX_MS", "10"),
                ("LONGMEM__METRICS__LISTEN", "0.0.0.0:9000"),
                ("OTHER", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.batch.max_events, 64);
        assert_eq!(c.topics.input, vec!["a", "b"]);
        assert_eq!(c.kafka.group_id, "42");
        assert_eq!(
            c.kafka.properties.get("sasl.mechanism").map(String::as_str),
            Some("PLAIN")
        );
        assert_eq!(c.metrics.listen, "0.0.0.0:9000");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load(
            &format!("{MINIMAL}\n[batch]\nmax_events = 5\nmax_wiat_ms = 3\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("batch") && err.contains("max_wiat_ms"),
            "{err}"
        );
        let err = load(MINIMAL, &[("LONGMEM__STORE__PATHH", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("pathh"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key_and_what_is_allowed() {
        let cases = [
            ("LONGMEM__BATCH__MAX_EVENTS", "0", "batch.max_events"),
            ("LONGMEM__BATCH__MAX_EVENTS", "many", "batch.max_events"),
            (
                "LONGMEM__MODEL__EXECUTION_PROVIDER",
                "tpu",
                "model.execution_provider",
            ),
            ("LONGMEM__METRICS__LISTEN", "localhost", "metrics.listen"),
            (
                "LONGMEM__TOPICS__DEAD_LETTER",
                "events",
                "topics.dead_letter",
            ),
            (
                "LONGMEM__KAFKA__CONSUMER__ENABLE_AUTO_COMMIT",
                "true",
                "kafka.consumer.enable.auto.commit",
            ),
        ];
        for (var, value, key) in cases {
            let err = load(MINIMAL, &[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(key), "{var}={value}: {err}");
        }
        let err = load(MINIMAL, &[("LONGMEM__MODEL__EXECUTION_PROVIDER", "tpu")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cpu") && err.contains("cuda"), "{err}");
    }

    #[test]
    fn every_wrong_key_is_reported_at_once() {
        let err = load(
            MINIMAL,
            &[
                ("LONGMEM__BATCH__MAX_EVENTS", "0"),
                ("LONGMEM__MODEL__INTRA_THREADS", "0"),
                ("LONGMEM__TOPICS__ALERTS", "events"),
            ],
        )
        .unwrap_err();
        let ConfigError::Keys(errors) = &err else {
            panic!("expected every wrong key, got {err}");
        };
        assert_eq!(errors.len(), 3, "{err}");
        let text = err.to_string();
        for key in ["batch.max_events", "model.intra_threads", "topics.alerts"] {
            assert!(text.contains(key), "{key} missing from: {text}");
        }
    }

    #[test]
    fn effective_config_round_trips() {
        let c = load(MINIMAL, &[]).unwrap();
        let again = load(&c.to_toml(), &[]).unwrap();
        assert_eq!(again.to_toml(), c.to_toml());
    }
}
