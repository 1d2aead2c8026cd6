//! `longmem evaluate supply-chain`: inventory alerts against a simulation's stockouts.
//!
//! The evaluation replays a simulation ([`crate::tools::simulate`]) through the daemon on a broker, day by
//! day (a day's early supply-chain events, then its purchases, which the daemon answers and
//! forwards as demand, then the rest of the day), reads the alerts it raised and scores them against
//! the simulation's ground truth. In the same run it scores the reorder-point rule a planner would
//! use, computed from the same events: alert when stock on hand falls below mean daily demand ×
//! lead time + z·σ·√lead time (28-day window, z = 1.65), clear when it is back above.
//!
//! Scoring, after a warm-up (the first `warmup_days`, while both have too little history):
//! - an alert is right when a stockout of its SKU × location starts within `window_days` after it
//!   was raised; precision = right alerts / alerts;
//! - a stockout is caught when an alert raised at most `window_days` before it started was still
//!   open when it started; recall = caught / stockouts; warning time = start − raise (median), or
//!   start − the end of the position's previous stockout when the alert was raised before that
//!   ended (an alert left open through one stockout was raised for that one, not the next).
//!   A median over the caught stockouts favours whoever catches fewer (the missed ones are the
//!   hard, short-notice ones), so fairer ones are printed too: over every stockout (a missed one
//!   counts as no warning), over the stockouts both alerting methods caught, and the median of
//!   the per-stockout difference over those.
//!
//! The simulated site counts its stock at the end of each day, so by default the evaluation lets
//! those counts close the day (`supply.closing_count_hour`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;

use crate::config::Config;
use crate::event::{Event, EventType, ShipmentStatus, SupplyEvent};
use crate::supply::{Alert, AlertKind, DAY_MS};
use crate::tools::harness::{self, progress, read_topic, Broker, InProcessDaemon, Partitions};
use crate::tools::simulate::{
    self, load_simulation, send, SimEvent, SimulateArgs, Simulation, Stockout,
};

#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub sim: SimulateArgs,
    /// A real Kafka (host:port); the run creates topics of its own there. Default: the embedded broker.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Base configuration; the run overrides brokers, store path and topics.
    #[arg(long, default_value = "config/default.toml")]
    pub config: PathBuf,
    /// Days before anything is scored.
    #[arg(long, default_value_t = 35)]
    pub warmup_days: usize,
    /// How far ahead an alert may warn and still count.
    #[arg(long, default_value_t = 14)]
    pub window_days: i64,
    /// Write the scores as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Let the simulation's end-of-day counts close the day (`supply.closing_count_hour`, when the
    /// configuration leaves it unset); `false`: days close at the next morning's first event.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub closing_count: bool,
    /// Produce the whole stream at once instead of day by day, to measure throughput. Purchases'
    /// forwarded demand then reaches each SKU × location after its later supply events, so the
    /// alerts are scored but mean little.
    #[arg(long)]
    pub unpaced: bool,
}

/// One alert episode of one SKU × location: raised at, resolved at.
#[derive(Debug, Clone, Copy)]
struct Episode {
    raised_ms: i64,
    resolved_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Score {
    pub alerts: usize,
    pub right_alerts: usize,
    pub precision: f64,
    pub stockouts: usize,
    pub caught: usize,
    pub recall: f64,
    pub median_warning_hours: Option<f64>,
    /// Over every stockout, a missed one counting as zero warning.
    pub median_warning_all_hours: Option<f64>,
    /// Per stockout (in `Simulation::stockouts` order, after the warm-up): hours of warning, if caught.
    #[serde(skip)]
    pub warnings: Vec<Option<f64>>,
}

fn score(
    episodes: &HashMap<(String, String), Vec<Episode>>,
    stockouts: &[Stockout],
    from_ms: i64,
    window_ms: i64,
) -> Score {
    // When the position's previous stockout ended (stock back the next day): an alert still open
    // from before then was raised for that one, and warns of the next only from then on.
    let previous_end = |s: &Stockout| {
        stockouts
            .iter()
            .filter(|p| p.sku == s.sku && p.location == s.location && p.last_day < s.first_day)
            .map(|p| simulate::START_MS + (p.last_day as i64 + 1) * DAY_MS)
            .max()
    };
    let stockouts: Vec<&Stockout> = stockouts.iter().filter(|s| s.start_ms >= from_ms).collect();
    let (mut alerts, mut right) = (0, 0);
    for ((sku, location), list) in episodes {
        for e in list.iter().filter(|e| e.raised_ms >= from_ms) {
            alerts += 1;
            if stockouts.iter().any(|s| {
                &s.sku == sku
                    && &s.location == location
                    && s.start_ms >= e.raised_ms
                    && s.start_ms - e.raised_ms <= window_ms
            }) {
                right += 1;
            }
        }
    }
    let warnings: Vec<Option<f64>> = stockouts
        .iter()
        .map(|s| {
            let key = (s.sku.clone(), s.location.clone());
            let open = episodes.get(&key).into_iter().flatten().filter(|e| {
                e.raised_ms <= s.start_ms
                    && s.start_ms - e.raised_ms <= window_ms
                    && e.resolved_ms.is_none_or(|r| r >= s.start_ms)
            });
            let since = previous_end(s).unwrap_or(i64::MIN);
            open.min_by_key(|e| e.raised_ms)
                .map(|e| (s.start_ms - e.raised_ms.max(since)) as f64 / 3_600_000.0)
        })
        .collect();
    let caught: Vec<f64> = warnings.iter().flatten().copied().collect();
    let all: Vec<f64> = warnings.iter().map(|w| w.unwrap_or(0.0)).collect();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Score {
        alerts,
        right_alerts: right,
        precision: ratio(right, alerts),
        stockouts: stockouts.len(),
        caught: caught.len(),
        recall: ratio(caught.len(), stockouts.len()),
        median_warning_hours: median(caught),
        median_warning_all_hours: median(all),
        warnings,
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    (!values.is_empty()).then(|| values[values.len() / 2])
}

/// Over the stockouts both caught: each side's median warning, and how the two compare stockout by
/// stockout.
#[derive(Debug, Serialize)]
struct Paired {
    stockouts: usize,
    longmem_median_warning_hours: Option<f64>,
    reorder_point_median_warning_hours: Option<f64>,
    /// Median of (longmem's warning − the rule's), per stockout: > 0 means longmem warned earlier.
    median_difference_hours: Option<f64>,
    longmem_earlier: usize,
    rule_earlier: usize,
}

fn paired_warning(ours: &Score, theirs: &Score) -> Paired {
    let both: Vec<(f64, f64)> = ours
        .warnings
        .iter()
        .zip(&theirs.warnings)
        .filter_map(|(a, b)| Some(((*a)?, (*b)?)))
        .collect();
    let difference: Vec<f64> = both.iter().map(|(a, b)| a - b).collect();
    Paired {
        stockouts: both.len(),
        longmem_median_warning_hours: median(both.iter().map(|p| p.0).collect()),
        reorder_point_median_warning_hours: median(both.iter().map(|p| p.1).collect()),
        longmem_earlier: difference.iter().filter(|&&d| d > 0.0).count(),
        rule_earlier: difference.iter().filter(|&&d| d < 0.0).count(),
        median_difference_hours: median(difference),
    }
}

/// Per scored stockout: where and when, and each method's warning in hours (null = missed), for
/// working out which stockouts one method sees coming and the other does not.
fn stockout_rows(sim: &Simulation, from_ms: i64, ours: &Score, rule: &Score) -> serde_json::Value {
    let scored = sim.stockouts.iter().filter(|s| s.start_ms >= from_ms);
    scored
        .zip(ours.warnings.iter().zip(&rule.warnings))
        .map(|(s, (a, b))| {
            serde_json::json!({"sku": s.sku, "location": s.location, "start_ms": s.start_ms,
                "lost_units": s.lost_units, "longmem_warning_hours": a, "reorder_point_warning_hours": b})
        })
        .collect()
}

/// The planner's reorder-point rule over the same events: (sku, location) → alert episodes.
fn reorder_point_rule(sim: &Simulation) -> HashMap<(String, String), Vec<Episode>> {
    let lead: HashMap<(String, String), f64> = sim
        .positions
        .iter()
        .map(|p| ((p.sku.clone(), p.location.clone()), p.lead_time_days as f64))
        .collect();
    struct State {
        on_hand: i64,
        today: f64,
        history: Vec<f64>,
        day: usize,
        open: Option<i64>,
    }
    let mut states: HashMap<(String, String), State> = HashMap::new();
    let mut out: HashMap<(String, String), Vec<Episode>> = HashMap::new();
    for e in &sim.events {
        // The rule sees what a planner's system sees: sales, deliveries and counts per position.
        let (sku, location) = match &e.event {
            Event::User(u) => (
                u.item_id.as_str(),
                u.location.as_deref().unwrap_or_default(),
            ),
            Event::Supply(s) => s.position(),
        };
        let key = (sku.to_string(), location.to_string());
        let s = states.entry(key.clone()).or_insert(State {
            on_hand: 0,
            today: 0.0,
            history: Vec::new(),
            day: e.day,
            open: None,
        });
        while s.day < e.day {
            s.history.push(std::mem::take(&mut s.today));
            s.day += 1;
        }
        match &e.event {
            Event::User(u) if u.event_type == EventType::Purchase => {
                let q = u.quantity.unwrap_or(1);
                s.today += q as f64;
                s.on_hand = (s.on_hand - q).max(0);
            }
            Event::Supply(SupplyEvent::Shipment {
                status: ShipmentStatus::Delivered,
                quantity,
                ..
            }) => s.on_hand += quantity,
            Event::Supply(SupplyEvent::Inventory { on_hand, .. }) => {
                s.on_hand = *on_hand;
                let recent = &s.history[s.history.len().saturating_sub(28)..];
                if recent.len() < 7 {
                    continue;
                }
                let n = recent.len() as f64;
                let mean = recent.iter().sum::<f64>() / n;
                let sd = (recent.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
                let l = lead.get(&key).copied().unwrap_or(7.0);
                let rop = mean * l + 1.65 * sd * l.sqrt();
                let below = (s.on_hand as f64) < rop;
                match (s.open, below) {
                    (None, true) => s.open = Some(e.timestamp_ms),
                    (Some(raised), false) => {
                        out.entry(key.clone()).or_default().push(Episode {
                            raised_ms: raised,
                            resolved_ms: Some(e.timestamp_ms),
                        });
                        s.open = None;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for (key, s) in states {
        if let Some(raised) = s.open {
            out.entry(key).or_default().push(Episode {
                raised_ms: raised,
                resolved_ms: None,
            });
        }
    }
    out
}

pub fn run(args: EvaluateArgs) -> anyhow::Result<()> {
    let sim = load_simulation(&args.sim)?;
    let mut config = Config::load(&args.config)?;
    let run = format!(
        "eval-{}-{}",
        args.sim.seed,
        crate::pipeline::now_ms() / 1000
    );
    config.topics.input.truncate(1);
    config.topics.suffix_with(&run);
    config.supply.demand_topic = None;
    config.supply.enabled = true;
    if args.closing_count {
        config
            .supply
            .closing_count_hour
            .get_or_insert(simulate::COUNT_HOUR);
    }
    let partitions = Partitions {
        input: 8,
        recommendations: 8,
        alerts: 1,
        dead_letter: 1,
    };
    config.kafka.group_id = format!("longmem-eval-{}", std::process::id());
    let broker = Broker::start(args.brokers.as_deref(), &mut config, partitions)?;
    let store_dir = tempfile::Builder::new().prefix("longmem-eval-").tempdir()?;
    config.store.path = store_dir.path().to_path_buf();

    let purchases = sim.events.iter().filter(|e| e.is_purchase()).count();
    println!(
        "longmem evaluate supply-chain: seed {}, {} positions, {} days, {} events ({} purchases), {} stockouts, on {}",
        args.sim.seed,
        sim.positions.len(),
        sim.days,
        sim.events.len(),
        purchases,
        sim.stockouts.len(),
        broker.name()
    );
    let daemon = InProcessDaemon::start(&config)?;
    let replayed = replay(&config, &sim, args.unpaced, &daemon);
    let stats = daemon.stats.clone();
    let result = daemon.stop()?;
    let elapsed = replayed?;
    result?;

    let alerts: Vec<Alert> = read_topic(&broker.bootstrap, &config.topics.alerts)?;
    let mut longmem: HashMap<(String, String), Vec<Episode>> = HashMap::new();
    let mut open: HashMap<String, ((String, String), i64)> = HashMap::new();
    for a in &alerts {
        let key = (a.sku.clone(), a.location.clone());
        let at = a.event_timestamp_ms;
        match a.kind {
            AlertKind::StockoutRisk => {
                open.insert(a.alert_id.clone(), (key, at));
            }
            AlertKind::Resolved => {
                if let Some((key, raised)) = open.remove(&a.alert_id) {
                    longmem.entry(key).or_default().push(Episode {
                        raised_ms: raised,
                        resolved_ms: Some(at),
                    });
                }
            }
            AlertKind::SupplyRisk => {}
        }
    }
    for (_, (key, raised)) in open {
        longmem.entry(key).or_default().push(Episode {
            raised_ms: raised,
            resolved_ms: None,
        });
    }
    let from = simulate::START_MS + args.warmup_days as i64 * DAY_MS;
    let window = args.window_days * DAY_MS;
    let ours = score(&longmem, &sim.stockouts, from, window);
    let rule = score(&reorder_point_rule(&sim), &sim.stockouts, from, window);
    let busy = Duration::from_nanos(stats.busy_nanos.load(Ordering::Relaxed));
    let messages = stats.messages.load(Ordering::Relaxed);

    let paired = paired_warning(&ours, &rule);
    let hours = |h: Option<f64>| h.map_or_else(|| "–".into(), |h| format!("{h:.0} h"));
    println!(
        "\n| alerts | precision | recall | median warning (caught) | (every stockout) | (caught by both) | alerts raised | stockouts caught |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, s, paired) in [
        (
            "longmem (forecaster)",
            &ours,
            paired.longmem_median_warning_hours,
        ),
        (
            "reorder-point rule",
            &rule,
            paired.reorder_point_median_warning_hours,
        ),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {} | {} | {} | {} | {} of {} |",
            s.precision,
            s.recall,
            hours(s.median_warning_hours),
            hours(s.median_warning_all_hours),
            hours(paired),
            s.alerts,
            s.caught,
            s.stockouts
        );
    }
    println!(
        "(every stockout: a missed one counts as no warning; caught by both: {} stockouts, longmem \
         earlier on {}, the rule on {}, median difference {})",
        paired.stockouts,
        paired.longmem_earlier,
        paired.rule_earlier,
        paired
            .median_difference_hours
            .map_or_else(|| "–".into(), |h| format!("{h:+.0} h")),
    );
    println!(
        "\nreplay: {messages} messages (incl. forwarded demand) in {:.1} s, {:.0} messages per busy second; supply_risk alerts: {}",
        elapsed.as_secs_f64(),
        messages as f64 / busy.as_secs_f64().max(1e-9),
        alerts
            .iter()
            .filter(|a| a.kind == AlertKind::SupplyRisk)
            .count()
    );
    let stages: Vec<String> = stats
        .stage_seconds()
        .into_iter()
        .map(|(stage, s)| format!("{stage} {s:.1} s"))
        .collect();
    println!("busy time by stage: {}", stages.join(", "));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({"seed": args.sim.seed, "positions": sim.positions.len(), "events": sim.events.len(),
            "longmem": ours, "reorder_point": rule,
            "caught_by_both": paired, "messages": messages, "busy_seconds": busy.as_secs_f64(),
            "wall_seconds": elapsed.as_secs_f64(),
            "stockouts": stockout_rows(&sim, from, &ours, &rule), "alerts": alerts});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// Day by day: the day's supply-chain events before its first purchase, its purchases (waiting until
/// the daemon has answered them, so their forwarded demand is on the partitions first), then the
/// rest of the day.
fn replay(
    config: &Config,
    sim: &Simulation,
    unpaced: bool,
    daemon: &InProcessDaemon,
) -> anyhow::Result<Duration> {
    daemon.wait_ready()?;
    let stats = &daemon.stats;
    let producer = harness::producer(&config.kafka.bootstrap_servers)?;
    let topic = &config.topics.input[0];
    let started = Instant::now();
    let bar = progress(sim.days as u64, "days");
    let mut purchases = 0u64;
    let mut sent = 0u64;
    let wait_until = |what: &str, done: &dyn Fn() -> bool| -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !done() {
            if daemon.is_finished() {
                bail!("the daemon stopped during the replay (see the error above)");
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    };
    if unpaced {
        let pending: Vec<_> = sim
            .events
            .iter()
            .map(|e| send(&producer, topic, e))
            .collect::<anyhow::Result<_>>()?;
        harness::wait_delivered(&producer, pending, "simulated event")?;
        let purchases = sim.events.iter().filter(|e| e.is_purchase()).count() as u64;
        let expected = sim.events.len() as u64 + purchases;
        wait_until("the daemon to process the stream", &|| {
            bar.set_position(stats.messages.load(Ordering::Relaxed) * sim.days as u64 / expected);
            stats.messages.load(Ordering::Relaxed) >= expected
        })?;
        bar.finish_and_clear();
        return Ok(started.elapsed());
    }
    for day in 0..sim.days {
        let events: Vec<&SimEvent> = sim.events.iter().filter(|e| e.day == day).collect();
        // The day's purchases run from first to last; supply events before and after them frame them.
        let (first_purchase, last_purchase) = events
            .iter()
            .filter(|e| e.is_purchase())
            .fold((i64::MAX, i64::MIN), |(lo, hi), e| {
                (lo.min(e.timestamp_ms), hi.max(e.timestamp_ms))
            });
        let (before, rest): (Vec<&SimEvent>, Vec<&SimEvent>) = events
            .iter()
            .copied()
            .partition(|e| !e.is_purchase() && e.timestamp_ms < first_purchase);
        let (during, after): (Vec<&SimEvent>, Vec<&SimEvent>) = rest
            .iter()
            .copied()
            .partition(|e| e.is_purchase() || e.timestamp_ms <= last_purchase);
        for part in [before, during, after] {
            let n_purchases = part.iter().filter(|e| e.is_purchase()).count() as u64;
            let pending: Vec<_> = part
                .iter()
                .map(|e| send(&producer, topic, e))
                .collect::<anyhow::Result<_>>()?;
            harness::wait_delivered(&producer, pending, "simulated event")?;
            sent += part.len() as u64;
            purchases += n_purchases;
            // Every message so far processed, forwarded demand included.
            let expected = sent + purchases;
            wait_until("the daemon to catch up", &|| {
                stats.messages.load(Ordering::Relaxed) >= expected
            })?;
        }
        bar.set_position(day as u64 + 1);
    }
    bar.finish_and_clear();
    Ok(started.elapsed())
}
