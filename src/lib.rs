//! longmem: Kafka commerce events → sled long-term memory → ONNX Runtime → recommendations.
//!
//! The modules follow one event through the daemon:
//! [`source`] (consumer) → [`batch`] (micro-batcher) → [`event`] (decode and validate) →
//! [`memory`] (sled) → [`recommend`] with [`model`] (ONNX Runtime) → [`sink`] (producer), wired by [`pipeline`],
//! configured by [`config`], observed through [`metrics`], stopped by [`shutdown`].
//! [`demo`] runs the whole daemon on MovieLens-100k against an embedded broker; [`stream_eval`]
//! scores its live recommendations, [`evaluate`] its inventory alerts.

pub mod batch;
pub mod bench;
pub mod config;
pub mod demo;
pub mod evaluate;
pub mod event;
pub mod inventory;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod recommend;
pub mod shutdown;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod stream_eval;
pub mod supply;
