//! The tools around the daemon, never part of it: they start brokers, feed real and simulated data,
//! run the daemon in process and score what it answers. The daemon's modules do not use them (the
//! `tools` cargo feature; `cargo check --no-default-features` proves it). One file per subcommand,
//! named after it, over two shared modules.
//!
//! - [`harness`]: brokers (embedded, tansu, a named Kafka), the in-process daemon, the feeding
//!   producer, reading a topic back as typed records.
//! - [`datasets`]: the public data sets under `../shared/data` and how each becomes events.
//! - [`demo`]: `longmem demo`, MovieLens-100k through the daemon on an embedded broker.
//! - [`bench`]: `longmem bench`, throughput, latency, CPU and memory on tansu, next to the ceilings.
//! - [`simulate`]: `longmem simulate supply-chain`, a supply chain driven by SupplyGraph and SCMS,
//!   with its stockouts.
//! - [`evaluate`]: `longmem evaluate supply-chain` and `longmem evaluate recommendations`.

pub mod bench;
pub mod datasets;
pub mod demo;
pub mod evaluate;
pub mod harness;
pub mod simulate;
