//! Typed configuration: TOML file, then `LONGMEM__SECTION__KEY` environment overrides, then validation.
//!
//! Everything is checked before any connection is opened: an unknown key or a bad value stops the
//! daemon at start with a message that names the key and says what is allowed. Every key that breaks
//! a rule is named at once; an unknown key or a value of the wrong type stops the reading of the file
//! where it is, so that one comes alone. Kafka client settings
//! that longmem does not model itself pass through verbatim to librdkafka (`[kafka.properties]`,
//! `[kafka.consumer]`, `[kafka.producer]`), so any Kafka (SASL, SSL, cloud) can be reached.
//!
//! Here the types and their defaults; `env.rs` the environment layer; `validate.rs` the rules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod env;
mod validate;

use env::apply_override;
pub use validate::MANAGED_KAFKA_PROPERTIES;

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
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub rollout: RolloutConfig,
}

/// How a candidate model earns promotion ([`crate::rollout`]): after its self-test it scores live
/// micro-batches beside the live model, without publishing, and is refused past these limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Live events the candidate scores in shadow before it is promoted (0: promote right after
    /// the self-test).
    pub shadow_events: u64,
    /// The shadow ends after this many seconds even with fewer events (a quiet input).
    pub shadow_max_s: u64,
    /// Refuse a candidate whose p99 time per micro-batch in shadow is above this multiple of the
    /// live model's on the same batches.
    pub max_p99_ratio: f64,
    /// Refuse a candidate whose mean top-10 overlap with the live model is below this share
    /// (0: report it only; a better model may well disagree).
    pub min_top10_overlap: f64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            shadow_events: 1000,
            shadow_max_s: 30,
            max_p99_ratio: 2.0,
            min_top10_overlap: 0.0,
        }
    }
}

/// The admin API (model rollouts, [`crate::admin`]): off unless `listen` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin API, never the metrics listener's: unset, there is none (SIGHUP still
    /// rolls to the config file's `[model]`).
    pub listen: Option<String>,
    /// A file holding the bearer token the admin API requires (else `LONGMEM_ADMIN_TOKEN`);
    /// required when `listen` is reachable beyond loopback.
    pub token_file: Option<PathBuf>,
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

impl KafkaConfig {
    /// A librdkafka client's settings: longmem's `defaults` for that client, overridden by
    /// `[kafka.properties]`, overridden by `role` (`[kafka.consumer]` or `[kafka.producer]`), and
    /// the bootstrap servers.
    pub fn client_config(
        &self,
        defaults: &[(&str, &str)],
        role: &BTreeMap<String, String>,
    ) -> rdkafka::ClientConfig {
        let mut cc = rdkafka::ClientConfig::new();
        for (k, v) in defaults {
            cc.set(*k, *v);
        }
        for (k, v) in self.properties.iter().chain(role) {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &self.bootstrap_servers);
        cc
    }
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
    /// Also produce every change of a record to the changelog topic, the memory's durable copy in
    /// Kafka: a partition that moves to another instance (or a lost volume) is restored from it.
    #[serde(default = "default_true")]
    pub changelog: bool,
    /// The changelog topic; default `<kafka.group_id>.memory-changelog`. One partition per input
    /// partition; created with `cleanup.policy=compact` when absent.
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// Replication factor when the daemon creates the changelog topic; unset: the broker's default.
    #[serde(default)]
    pub changelog_replication_factor: Option<i32>,
}

impl Config {
    /// The changelog topic, when the changelog is on.
    pub fn changelog_topic(&self) -> Option<String> {
        self.store.changelog.then(|| {
            self.store
                .changelog_topic
                .clone()
                .unwrap_or_else(|| format!("{}.memory-changelog", self.kafka.group_id))
        })
    }
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

/// The keys of the config whose values are paths.
const PATH_KEYS: [(&str, &str); 5] = [
    ("store", "path"),
    ("model", "path"),
    ("model", "runtime_library"),
    ("supply", "forecaster"),
    ("admin", "token_file"),
];

/// Makes each relative path in `tree` relative to `folder` instead (`folder/../x` becomes `x`).
fn resolve_paths_from(tree: &mut toml::Table, folder: &Path) {
    for (section, key) in PATH_KEYS {
        let Some(toml::Value::String(value)) = tree
            .get_mut(section)
            .and_then(|s| s.as_table_mut())
            .and_then(|s| s.get_mut(key))
        else {
            continue;
        };
        let path = Path::new(value.as_str());
        if path.is_relative() {
            *value = normalize(&folder.join(path)).display().to_string();
        }
    }
}

/// Removes `.` and each `name/..` pair without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
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

    /// Parses TOML text, applies `LONGMEM__` overrides from `env` and validates. Relative paths
    /// written in the file resolve against the file's folder (as Prometheus and systemd read
    /// theirs), so a config works from any working directory; paths from the environment and the
    /// built-in defaults stay relative to the working directory.
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
        resolve_paths_from(&mut tree, path.parent().unwrap_or(Path::new("")));
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
    fn paths_in_the_file_are_relative_to_the_file() {
        let text = format!("{MINIMAL}runtime_library = \"/opt/ort/libonnxruntime.so\"\n[supply]\nforecaster = \"../models/f\"\n");
        let env = [("LONGMEM__MODEL__PATH".to_string(), "here/m".to_string())];
        let c = Config::from_toml(&text, Path::new("/etc/longmem/conf.toml"), env).unwrap();
        assert_eq!(c.store.path, Path::new("/etc/longmem/var/store"));
        assert_eq!(c.supply.forecaster, Path::new("/etc/models/f"));
        // Absolute paths stay; the environment's are the operator's, relative to where they run.
        assert_eq!(
            c.model.runtime_library.as_deref(),
            Some(Path::new("/opt/ort/libonnxruntime.so"))
        );
        assert_eq!(c.model.path, Path::new("here/m"));
        // A file named without a folder: paths stay as written.
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(c.store.path, Path::new("var/store"));
        assert_eq!(
            normalize(Path::new("config/../models/./a")),
            Path::new("models/a")
        );
        assert_eq!(normalize(Path::new("../../a")), Path::new("../../a"));
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
            // Its dead letters would be more than the producer sends.
            (
                "LONGMEM__LIMITS__MAX_MESSAGE_BYTES",
                "500000",
                "limits.max_message_bytes",
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
        // Raising what the producer sends makes room for it.
        load(
            MINIMAL,
            &[
                ("LONGMEM__LIMITS__MAX_MESSAGE_BYTES", "500000"),
                ("LONGMEM__KAFKA__PRODUCER__MESSAGE_MAX_BYTES", "4000000"),
            ],
        )
        .unwrap();
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
