//! The tools around the daemon, never part of it: they start brokers, feed real and simulated data,
//! run the daemon in process and score what it answers. The daemon's modules do not use them (the
//! `tools` cargo feature; `cargo check --no-default-features` proves it).
//!
//! - [`demo`]: MovieLens-100k through the daemon on an embedded broker; also the tools' shared
//!   harness (the in-process daemon, the feeding producer, topic creation, reading a topic back).
//! - [`bench`]: throughput, latency, CPU and memory on tansu, next to the ceilings.
//! - [`simulate`]: a supply chain driven by SupplyGraph and SCMS, with its stockouts.
//! - [`evaluate`]: `simulate supply-chain` and `evaluate supply-chain` (alerts against stockouts).
//! - [`stream_eval`]: `evaluate recommendations` (live HR@10 / NDCG@10 against the model card).

pub mod bench;
pub mod demo;
pub mod evaluate;
pub mod simulate;
pub mod stream_eval;
