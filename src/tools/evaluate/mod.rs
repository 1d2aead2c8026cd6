//! `longmem evaluate`: replay data through the daemon and score what it answers.
//!
//! - [`supply_chain`]: inventory alerts against a simulation's stockouts, next to the reorder-point
//!   rule.
//! - [`recommendations`]: live HR@10 / NDCG@10 on MovieLens-100k against the model card.

pub mod recommendations;
pub mod supply_chain;
