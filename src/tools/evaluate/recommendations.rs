//! `longmem evaluate recommendations` (alias `longmem eval recommendations`): recommendation quality
//! measured on the daemon's live output.
//!
//! MovieLens-100k is replayed in timestamp order through a broker and the daemon (as `demo` does, at
//! full speed and without broken messages). Every event of a user is answered by a recommendation;
//! the recommendation answering a user's event is checked against that user's next event. Two
//! figures come out of the same run:
//! - `held-out`: each user's last event only (users with 3 events or more), i.e. the training
//!   pipeline's leave-one-out test split, set next to the model card's offline figure for the
//!   protocol the daemon serves (`full_recent`: all items ranked, the user's last `window` items
//!   left out). Both come from the same model on the same prefixes, so they should agree; a gap of
//!   more than `--max-gap` fails the command: it is a bug between training and serving.
//! - `every event`: every event after a user's first, the quality users see along the stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::config::{Config, ModelMode};
use crate::event::Recommendation;
use crate::tools::demo::{self, DemoArgs, Replay};

#[derive(Debug, clap::Args)]
pub struct RecommendationEvalArgs {
    /// A real Kafka (host:port); the run creates topics of its own there. Default: the embedded broker.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Base configuration; the run overrides brokers, store path and topics.
    #[arg(long, default_value = "config/default.toml")]
    pub config: PathBuf,
    /// The model directory to evaluate (default: the configuration's `model.path`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `step`, `full` or `auto` (default: the configuration's `model.mode`).
    #[arg(long)]
    pub mode: Option<ModelMode>,
    /// MovieLens-100k in RecBole atomic files (what the ML-100k models were trained and tested on).
    #[arg(long, default_value = "../shared/data/seqrec/recbole_ml100k")]
    pub data: PathBuf,
    /// Largest accepted relative gap between the live held-out HR@10 / NDCG@10 and the card's.
    #[arg(long, default_value_t = 0.01)]
    pub max_gap: f64,
    /// Write the figures as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// HR@10 and NDCG@10 over a set of (recommendation, next item) cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quality {
    pub hr_at_10: f64,
    pub ndcg_at_10: f64,
    pub cases: usize,
}

#[derive(Debug, Default)]
struct Tally {
    hits: usize,
    ndcg: f64,
    cases: usize,
}

impl Tally {
    fn add(&mut self, rec: &Recommendation, next_item: &str) {
        self.cases += 1;
        if let Some(rank) = rec
            .items
            .iter()
            .take(10)
            .position(|i| i.item_id == next_item)
        {
            self.hits += 1;
            self.ndcg += 1.0 / ((rank + 2) as f64).log2();
        }
    }

    fn quality(&self) -> Quality {
        let n = self.cases.max(1) as f64;
        Quality {
            hr_at_10: self.hits as f64 / n,
            ndcg_at_10: self.ndcg / n,
            cases: self.cases,
        }
    }
}

/// Scores the live recommendations against the stream: (held-out, every event). `events` are
/// (user, item) in stream order; every user event must have exactly one recommendation.
pub fn score_live(
    events: &[(&str, &str)],
    recommendations: &[Recommendation],
) -> anyhow::Result<(Quality, Quality)> {
    let mut items_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for (user, item) in events {
        items_of.entry(user).or_default().push(item);
    }
    // A user's recommendations in the order of the events they answer: one partition per user key,
    // so offsets give that order.
    let mut recs_of: HashMap<&str, Vec<&Recommendation>> = HashMap::new();
    for r in recommendations {
        recs_of.entry(r.user_id.as_str()).or_default().push(r);
    }
    let (mut held_out, mut every) = (Tally::default(), Tally::default());
    for (user, items) in &items_of {
        let mut recs = recs_of.remove(user).unwrap_or_default();
        if recs.len() != items.len() {
            bail!(
                "user {user} has {} events but {} recommendations were read back: the daemon lost or \
                 duplicated answers",
                items.len(),
                recs.len()
            );
        }
        recs.sort_by_key(|r| (r.source.partition, r.source.offset));
        for (j, next) in items.iter().enumerate().skip(1) {
            every.add(recs[j - 1], next);
        }
        if items.len() >= 3 {
            held_out.add(recs[items.len() - 2], items[items.len() - 1]);
        }
    }
    if let Some(user) = recs_of.keys().next() {
        bail!("recommendations for user {user}, who has no event in the stream");
    }
    Ok((held_out.quality(), every.quality()))
}

/// The card's offline figure for the protocol the daemon serves, from the model's metrics.json.
fn card_figure(model_dir: &Path) -> anyhow::Result<Quality> {
    let path = model_dir.join("metrics.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {} (the model's measured figures)",
            path.display()
        )
    })?;
    let metrics: serde_json::Value = serde_json::from_str(&text)?;
    let figure = &metrics["full_recent"];
    match (figure["hr@10"].as_f64(), figure["ndcg@10"].as_f64()) {
        (Some(hr), Some(ndcg)) => Ok(Quality {
            hr_at_10: hr,
            ndcg_at_10: ndcg,
            cases: figure["users"].as_u64().unwrap_or(0) as usize,
        }),
        _ => bail!(
            "{} has no `full_recent` figure; add it with `.tools/venv/bin/python training/reevaluate.py {}`",
            path.display(),
            model_dir.display()
        ),
    }
}

fn relative_gap(live: f64, card: f64) -> f64 {
    if card == 0.0 {
        live.abs()
    } else {
        (live - card).abs() / card
    }
}

pub fn run(args: RecommendationEvalArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    if let Some(model) = &args.model {
        config.model.path = model.clone();
    }
    if let Some(mode) = args.mode {
        config.model.mode = mode;
    }
    let card = card_figure(&config.model.path)?;
    let replay_args = DemoArgs {
        brokers: args.brokers.clone(),
        config: args.config.clone(),
        data: args.data.clone(),
        rate: 0,
        limit: 0,
        bad: 0,
        samples: 0,
    };
    print!("longmem evaluate recommendations: ");
    let Replay {
        events,
        recommendations,
        stats,
        elapsed,
        ..
    } = demo::replay_movielens(&replay_args, config.clone())?;
    let pairs: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.user_id.as_str(), e.item_id.as_str()))
        .collect();
    let (held_out, every) = score_live(&pairs, &recommendations)?;
    let processed = stats.messages.load(std::sync::atomic::Ordering::Relaxed);

    let hr_gap = relative_gap(held_out.hr_at_10, card.hr_at_10);
    let ndcg_gap = relative_gap(held_out.ndcg_at_10, card.ndcg_at_10);
    println!(
        "\n| cases | live HR@10 | live NDCG@10 | model card HR@10 | model card NDCG@10 | gap HR / NDCG |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| held-out (each user's last event, {} users) | {:.4} | {:.4} | {:.4} | {:.4} | {:.2}% / {:.2}% |",
        held_out.cases,
        held_out.hr_at_10,
        held_out.ndcg_at_10,
        card.hr_at_10,
        card.ndcg_at_10,
        100.0 * hr_gap,
        100.0 * ndcg_gap
    );
    println!(
        "| every event after a user's first ({}) | {:.4} | {:.4} | – | – | – |",
        every.cases, every.hr_at_10, every.ndcg_at_10
    );
    println!(
        "\n{processed} events in {:.1} s ({:.0} events/s) through {} ({:?} mode)",
        elapsed.as_secs_f64(),
        processed as f64 / elapsed.as_secs_f64().max(1e-9),
        config.model.path.display(),
        config.model.mode
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"model": config.model.path, "mode": format!("{:?}", config.model.mode),
            "held_out": held_out, "every_event": every, "card_full_recent": card,
            "gap": {"hr_at_10": hr_gap, "ndcg_at_10": ndcg_gap}, "events": processed,
            "seconds": elapsed.as_secs_f64()});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    if hr_gap > args.max_gap || ndcg_gap > args.max_gap {
        bail!(
            "the live held-out figures differ from the model card's by more than {:.1}%: training and \
             serving disagree (model, vocabulary, seen-item window or event order)",
            100.0 * args.max_gap
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, ModelRef, ScoredItem, SourceRef};

    fn rec(user: &str, offset: i64, items: &[&str]) -> Recommendation {
        Recommendation {
            user_id: user.into(),
            items: items
                .iter()
                .map(|i| ScoredItem {
                    item_id: i.to_string(),
                    score: 0.0,
                })
                .collect(),
            model: ModelRef {
                name: "m".into(),
                version: "1".into(),
            },
            source: SourceRef {
                topic: "t".into(),
                partition: 0,
                offset,
            },
            event_type: EventType::Click,
            event_timestamp_ms: 0,
            ingest_timestamp_ms: 0,
            emitted_at_ms: 0,
        }
    }

    #[test]
    fn each_answer_is_checked_against_the_users_next_event() {
        let events = [("a", "1"), ("b", "9"), ("a", "2"), ("a", "3"), ("b", "8")];
        // Read back out of order: offsets restore each user's order.
        let recs = [
            rec("a", 3, &["3", "x"]), // answers a's 2nd event; a's 3rd is "3": rank 0
            rec("a", 0, &["x", "y"]), // answers a's 1st; a's 2nd is "2": miss
            rec("b", 1, &["x", "8"]), // answers b's 1st; b's 2nd is "8": rank 1
            rec("a", 4, &["z"]),      // answers a's last event: nothing to check
            rec("b", 5, &["x"]),      // answers b's last event
        ];
        let (held_out, every) = score_live(&events, &recs).unwrap();
        // Held out: only users with 3+ events (a), their last event: hit at rank 0.
        assert_eq!(held_out.cases, 1);
        assert_eq!((held_out.hr_at_10, held_out.ndcg_at_10), (1.0, 1.0));
        // Every event: a's 2nd (miss), a's 3rd (rank 0), b's 2nd (rank 1).
        assert_eq!(every.cases, 3);
        assert!((every.hr_at_10 - 2.0 / 3.0).abs() < 1e-12);
        assert!((every.ndcg_at_10 - (1.0 + 1.0 / 3f64.log2()) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_lost_answer_is_an_error_not_a_lower_score() {
        let events = [("a", "1"), ("a", "2")];
        let err = score_live(&events, &[rec("a", 0, &["2"])]).unwrap_err();
        assert!(err.to_string().contains("2 events but 1"), "{err}");
    }
}
