//! longmem: Kafka commerce events → sled long-term memory → ONNX Runtime → recommendations.
//!
//! The modules follow one event through the daemon:
//! [`source`] (consumer, rebalances, micro-batcher) → [`event`] (decode and validate) →
//! [`memory`] (sled) → [`recommend`] with [`model`] (ONNX Runtime) → [`sink`] (producer), wired by [`pipeline`],
//! with [`checkpoint`] keeping where each partition stands and which batches are in flight, and
//! [`changelog`] keeping the memory's durable copy in Kafka and restoring partitions from it;
//! configured by [`config`], observed through [`metrics`], stopped by [`shutdown`].
//! [`tools`] (the `tools` feature, on by default) holds what runs the daemon from outside: the demo,
//! the benchmark, the supply-chain simulator and the evaluations. The daemon's modules never use
//! it: `cargo check --no-default-features` builds the core alone (part of `make lint`).

pub mod admin;
pub mod changelog;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod recommend;
pub mod rollout;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod supply;
#[cfg(feature = "tools")]
pub mod tools;
