//! The supply-chain half of the daemon: each SKU × location's memory (stock on hand, inbound
//! deliveries, daily demand, the forecaster's state) and its stockout risk ([`sku`]), and the stage
//! that applies a micro-batch's supply-chain events to those memories, steps the demand forecaster
//! and raises and resolves alerts ([`stage`]). Configured by `[supply]`; driven by the pipeline after
//! the recommendations of the same batch.

pub mod sku;
pub mod stage;

pub use sku::*;
pub use stage::*;
