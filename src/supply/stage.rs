//! Stage 3b of a micro-batch: the batch's supply-chain events applied to their SKU × location
//! memories, the demand forecaster stepped once for every day that completed, and the alerts that
//! follow.
//!
//! Events of one SKU × location are applied in order. When an event starts a new day, the days that
//! completed are stepped through the forecaster first (their demand, zeros for silent days), so the
//! event is assessed against a forecast made after the previous day. Where the site's end-of-day
//! counts mark the day's end (`supply.closing_count_hour`), such a count closes its day and is
//! assessed after the step, that evening rather than at the next morning's first event. All SKU ×
//! locations waiting for a step go through the forecaster together: the batch runs in rounds, one
//! day per SKU × location per round (usually one round).
//!
//! Alert lifecycle per SKU × location: `stockout_risk` opens once when the stockout probability
//! reaches `supply.open_probability` and a `resolved` alert with the same id follows when it falls
//! to `supply.resolve_probability`; `supply_risk` opens when a supplier delay moves the next arrival
//! past the expected stockout, and resolves when that no longer holds. Times are the events' own
//! timestamps, so a replay raises the same alerts.
//!
//! Nothing here writes to the store: the pipeline writes the returned memories with the offsets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::sku::{self, assess, Assessment, Forecast, OpenAlert, RiskPolicy, SkuMemory, DAY_MS};
use crate::config::SupplyConfig;
use crate::event::{Direction, Event, InMessage, ModelRef, ShipmentStatus, SourceRef, SupplyEvent};
use crate::memory::{Memories, ModelState, StateTensors, StoreError};
use crate::model::forecaster::Forecaster;
use crate::model::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum SupplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    StockoutRisk,
    SupplyRisk,
    Resolved,
}

impl AlertKind {
    pub const ALL: [AlertKind; 3] = [
        AlertKind::StockoutRisk,
        AlertKind::SupplyRisk,
        AlertKind::Resolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::StockoutRisk => "stockout_risk",
            AlertKind::SupplyRisk => "supply_risk",
            AlertKind::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// `schemas/alert.json`. Deserialize too: the tools read alerts back as this type, so a renamed
/// field fails their reading instead of scoring nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub alert_id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub sku: String,
    pub location: String,
    pub probability: f64,
    pub expected_stockout_ms: Option<i64>,
    pub evidence: Evidence,
    pub suggested_reorder_qty: i64,
    pub model: ModelRef,
    pub source: SourceRef,
    pub event_timestamp_ms: i64,
    pub emitted_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    pub on_hand: i64,
    pub inbound: i64,
    pub next_arrival_ms: Option<i64>,
    /// Demand from the event until the next arrival (or the horizon), by quantile: `p05`, `p50`, ...
    pub forecast_quantiles: BTreeMap<String, f64>,
    pub horizon_hours: f64,
}

/// The batch's alerts (with the index of the message that raised each) and the memories to store.
pub struct SupplyOutcome {
    pub alerts: Vec<(usize, Alert)>,
    pub memories: HashMap<(String, String), SkuMemory>,
    pub inference: Duration,
    /// Demand records already counted (written twice by a retried batch) and skipped.
    pub duplicate_demand: u64,
}

/// One SKU × location's events in this batch and the days waiting to be stepped.
struct Lane {
    key: (String, String),
    events: VecDeque<(usize, SupplyEvent)>,
    days: VecDeque<(i64, f64)>,
    /// A closing count waiting for its day's forecast before its risk is read.
    reassess: Option<(usize, SupplyEvent)>,
}

pub struct SupplyStage {
    forecaster: Forecaster,
    config: SupplyConfig,
}

impl SupplyStage {
    pub fn new(forecaster: Forecaster, config: SupplyConfig) -> SupplyStage {
        SupplyStage { forecaster, config }
    }

    pub fn forecaster(&self) -> &Forecaster {
        &self.forecaster
    }

    pub fn process(
        &mut self,
        store: &impl Memories,
        batch: &[InMessage],
        events: &[Option<Event>],
        emitted_at_ms: i64,
    ) -> Result<SupplyOutcome, SupplyError> {
        let owner = self.forecaster.state_owner();
        let mut memories: HashMap<(String, String), SkuMemory> = HashMap::new();
        let mut lanes: Vec<Lane> = Vec::new();
        let mut lane_of: HashMap<(String, String), usize> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let Some(Event::Supply(e)) = e else { continue };
            let key = sku_location(e);
            if !memories.contains_key(&key) {
                let mut memory = store.sku(&key.0, &key.1)?.unwrap_or_default();
                if memory.forecaster.as_ref().is_some_and(|s| s.owner != owner) {
                    // Written by another forecaster: its state means nothing to this one.
                    memory.forecaster = None;
                    memory.forecast = None;
                }
                memories.insert(key.clone(), memory);
            }
            let lane = *lane_of.entry(key.clone()).or_insert_with(|| {
                lanes.push(Lane {
                    key,
                    events: VecDeque::new(),
                    days: VecDeque::new(),
                    reassess: None,
                });
                lanes.len() - 1
            });
            lanes[lane].events.push_back((i, e.clone()));
        }

        let mut outcome = SupplyOutcome {
            alerts: Vec::new(),
            memories: HashMap::new(),
            inference: Duration::ZERO,
            duplicate_demand: 0,
        };
        let levels = self.forecaster.manifest.quantiles.clone();
        let assessor = RiskAssessor {
            config: &self.config,
            levels: &levels,
            policy: RiskPolicy {
                lead_time_days: self.config.lead_time_days,
                review_days: self.config.review_days,
            },
            model: ModelRef {
                name: self.forecaster.manifest.name.clone(),
                version: self.forecaster.manifest.version.clone(),
            },
            batch,
            emitted_at_ms,
        };
        loop {
            // Apply each lane's events until one starts a new day (its completed days go first).
            for lane in lanes.iter_mut() {
                let memory = memories.get_mut(&lane.key).expect("loaded above");
                while lane.days.is_empty() {
                    let Some((_, event)) = lane.events.front() else {
                        break;
                    };
                    let closed = memory
                        .close_days(sku::event_timestamp(event), self.config.max_catch_up_days);
                    if !closed.is_empty() {
                        lane.days.extend(closed);
                        break;
                    }
                    let (i, event) = lane.events.pop_front().expect("front");
                    if !memory.apply(&event) {
                        outcome.duplicate_demand += 1;
                        continue;
                    }
                    let closed = closing_count(&self.config, memory, &event);
                    if closed.is_empty() {
                        assessor.assess(memory, &lane.key, i, &event, &mut outcome.alerts);
                    } else {
                        // Read the risk once the forecaster has taken in the day it closed.
                        lane.days.extend(closed);
                        lane.reassess = Some((i, event));
                    }
                }
            }
            // One forecaster step for every lane with a completed day waiting.
            let waiting: Vec<usize> = (0..lanes.len())
                .filter(|&l| !lanes[l].days.is_empty())
                .collect();
            if waiting.is_empty() {
                break;
            }
            let mut demand = Vec::with_capacity(waiting.len());
            let mut weekday = Vec::with_capacity(waiting.len());
            // A state of another shape (a damaged record) starts again, like another owner's.
            let lengths = self.forecaster.state_lengths();
            let mut states: Vec<StateTensors> = Vec::with_capacity(waiting.len());
            let mut days = Vec::with_capacity(waiting.len());
            for &l in &waiting {
                let (day, units) = lanes[l].days.pop_front().expect("waiting");
                let memory = &memories[&lanes[l].key];
                demand.push(units as f32);
                weekday.push(sku::weekday(day));
                states.push(
                    memory
                        .forecaster
                        .as_ref()
                        .map(|s| s.tensors.clone())
                        .filter(|t| t.has_lengths(&lengths))
                        .unwrap_or_else(|| self.forecaster.empty_state()),
                );
                days.push(day);
            }
            let t = Instant::now();
            let mut refs: Vec<&mut StateTensors> = states.iter_mut().collect();
            let quantiles = self.forecaster.step(demand, weekday, &mut refs)?;
            outcome.inference += t.elapsed();
            for (((&l, day), q), state) in waiting.iter().zip(days).zip(quantiles).zip(states) {
                let memory = memories.get_mut(&lanes[l].key).expect("loaded above");
                memory.forecaster = Some(ModelState {
                    owner: owner.clone(),
                    tensors: state,
                });
                memory.forecast = Some(Forecast {
                    first_day: day + 1,
                    quantiles: q,
                });
                let lane = &mut lanes[l];
                if lane.days.is_empty() {
                    if let Some((i, event)) = lane.reassess.take() {
                        assessor.assess(memory, &lane.key, i, &event, &mut outcome.alerts);
                    }
                }
            }
        }
        outcome.memories = memories;
        Ok(outcome)
    }
}

/// The day a closing count (`supply.closing_count_hour`) completes, with its demand; empty for any
/// other event, or a day already closed.
fn closing_count(c: &SupplyConfig, memory: &mut SkuMemory, event: &SupplyEvent) -> Vec<(i64, f64)> {
    let SupplyEvent::Inventory { timestamp_ms, .. } = event else {
        return Vec::new();
    };
    let closing = c
        .closing_count_hour
        .is_some_and(|hour| timestamp_ms.rem_euclid(DAY_MS) >= i64::from(hour) * DAY_MS / 24);
    if !closing {
        return Vec::new();
    }
    let tomorrow = (sku::day_of(*timestamp_ms) + 1) * DAY_MS;
    memory.close_days(tomorrow, c.max_catch_up_days)
}

/// Reads the risk after an event and runs the alert lifecycle on it.
struct RiskAssessor<'a> {
    config: &'a SupplyConfig,
    levels: &'a [f64],
    policy: RiskPolicy,
    model: ModelRef,
    batch: &'a [InMessage],
    emitted_at_ms: i64,
}

impl RiskAssessor<'_> {
    /// Assesses `memory` after `event` (message `i` of the batch) and adds the alerts it raises.
    fn assess(
        &self,
        memory: &mut SkuMemory,
        key: &(String, String),
        i: usize,
        event: &SupplyEvent,
        alerts: &mut Vec<(usize, Alert)>,
    ) {
        let now = sku::event_timestamp(event);
        let Some(a) = assess(memory, self.levels, now, &self.policy) else {
            return;
        };
        for (kind, severity, alert_id) in lifecycle(self.config, memory, event, &a) {
            alerts.push((
                i,
                alert(
                    key,
                    kind,
                    severity,
                    alert_id,
                    &a,
                    memory,
                    self.levels,
                    &self.model,
                    self.batch[i].source(),
                    event,
                    self.emitted_at_ms,
                ),
            ));
        }
    }
}

/// Opens and resolves this SKU × location's alerts after `event`; returns the alerts to emit.
fn lifecycle(
    c: &SupplyConfig,
    memory: &mut SkuMemory,
    event: &SupplyEvent,
    a: &Assessment,
) -> Vec<(AlertKind, Severity, String)> {
    let now = sku::event_timestamp(event);
    let (sku, location) = sku_location(event);
    let mut out = Vec::new();
    if let Some(open) = memory.stockout_alert.as_mut() {
        open.ran_out |= memory.on_hand == 0;
    }
    match &memory.stockout_alert {
        None if a.probability >= c.open_probability => {
            let imminent = a.expected_stockout_ms.is_some_and(|t| t - now <= DAY_MS);
            let severity = if a.probability >= c.critical_probability || imminent {
                Severity::Critical
            } else {
                Severity::Warning
            };
            let alert_id = format!("{sku}@{location}#stockout#{now}");
            memory.stockout_alert = Some(OpenAlert {
                alert_id: alert_id.clone(),
                opened_ms: now,
                ran_out: false,
            });
            out.push((AlertKind::StockoutRisk, severity, alert_id));
        }
        // Resolved when the risk has fallen to the resolve level, or when a delivery comes that
        // ends the shortage it warned of: after the shelf ran empty, or with the risk back under
        // halfway to the resolve level (just under the opening level it would flap back open at
        // the next sale). A shortage that builds up again is a new alert (one held open across
        // deliveries would sit open for weeks and date the next warning wrongly).
        Some(open)
            if a.probability <= c.resolve_probability
                || (is_delivery(event)
                    && (open.ran_out
                        || a.probability < (c.open_probability + c.resolve_probability) / 2.0)) =>
        {
            out.push((AlertKind::Resolved, Severity::Info, open.alert_id.clone()));
            memory.stockout_alert = None;
        }
        _ => {}
    }
    // The stock runs out before the next delivery arrives.
    let late = match (a.expected_stockout_ms, a.next_arrival_ms) {
        (Some(out_at), Some(arrival)) => arrival > out_at,
        _ => false,
    };
    match &memory.supply_risk_alert {
        None if late && matches!(event, SupplyEvent::SupplierDelay { .. }) => {
            let alert_id = format!("{sku}@{location}#supply#{now}");
            memory.supply_risk_alert = Some(OpenAlert {
                alert_id: alert_id.clone(),
                opened_ms: now,
                ran_out: false,
            });
            let severity = if a.probability >= c.critical_probability {
                Severity::Critical
            } else {
                Severity::Warning
            };
            out.push((AlertKind::SupplyRisk, severity, alert_id));
        }
        Some(open) if !late => {
            out.push((AlertKind::Resolved, Severity::Info, open.alert_id.clone()));
            memory.supply_risk_alert = None;
        }
        _ => {}
    }
    out
}

fn is_delivery(e: &SupplyEvent) -> bool {
    matches!(
        e,
        SupplyEvent::Shipment {
            direction: Direction::Inbound,
            status: ShipmentStatus::Delivered,
            ..
        }
    )
}

fn sku_location(e: &SupplyEvent) -> (String, String) {
    let (sku, location) = e.position();
    (sku.to_string(), location.to_string())
}

#[allow(clippy::too_many_arguments)]
fn alert(
    key: &(String, String),
    kind: AlertKind,
    severity: Severity,
    alert_id: String,
    a: &Assessment,
    memory: &SkuMemory,
    levels: &[f64],
    model: &ModelRef,
    source: SourceRef,
    event: &SupplyEvent,
    emitted_at_ms: i64,
) -> Alert {
    debug_assert_eq!(levels.len(), a.demand_quantiles.len());
    Alert {
        alert_id,
        kind,
        severity,
        sku: key.0.clone(),
        location: key.1.clone(),
        probability: (a.probability * 1e4).round() / 1e4,
        expected_stockout_ms: a.expected_stockout_ms,
        evidence: Evidence {
            on_hand: memory.on_hand,
            inbound: memory.inbound_total(),
            next_arrival_ms: a.next_arrival_ms,
            forecast_quantiles: a
                .demand_quantiles
                .iter()
                .map(|(level, v)| {
                    (
                        format!("p{:02}", (level * 100.0).round() as i64),
                        (v * 10.0).round() / 10.0,
                    )
                })
                .collect(),
            horizon_hours: (a.horizon_hours * 10.0).round() / 10.0,
        },
        suggested_reorder_qty: a.suggested_reorder_qty,
        model: model.clone(),
        source,
        event_timestamp_ms: sku::event_timestamp(event),
        emitted_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(on_hand: i64, ts: i64) -> SupplyEvent {
        SupplyEvent::Inventory {
            sku: "s".into(),
            location: "l".into(),
            on_hand,
            timestamp_ms: ts,
        }
    }

    fn delivery(quantity: i64, ts: i64) -> SupplyEvent {
        SupplyEvent::Shipment {
            shipment_id: "po-1".into(),
            sku: "s".into(),
            location: "l".into(),
            quantity,
            direction: Direction::Inbound,
            status: ShipmentStatus::Delivered,
            expected_arrival_ms: ts,
            timestamp_ms: ts,
        }
    }

    fn risk(probability: f64) -> Assessment {
        Assessment {
            probability,
            expected_stockout_ms: None,
            next_arrival_ms: None,
            horizon_hours: 24.0,
            demand_quantiles: Vec::new(),
            suggested_reorder_qty: 0,
        }
    }

    /// Applies `event` to the memory, then runs the lifecycle at `probability`: the alert kinds.
    fn step(
        c: &SupplyConfig,
        memory: &mut SkuMemory,
        event: SupplyEvent,
        probability: f64,
    ) -> Vec<AlertKind> {
        memory.apply(&event);
        lifecycle(c, memory, &event, &risk(probability))
            .into_iter()
            .map(|(kind, _, _)| kind)
            .collect()
    }

    fn config() -> SupplyConfig {
        SupplyConfig {
            open_probability: 0.5,
            resolve_probability: 0.2,
            critical_probability: 0.8,
            ..SupplyConfig::default()
        }
    }

    #[test]
    fn an_open_alert_is_raised_once_and_resolved_at_the_resolve_level() {
        let (c, mut m) = (config(), SkuMemory::default());
        assert_eq!(
            step(&c, &mut m, inventory(40, 1), 0.6),
            [AlertKind::StockoutRisk]
        );
        assert!(step(&c, &mut m, inventory(30, 2), 0.7).is_empty());
        // Between the two levels: hysteresis keeps it open.
        assert!(step(&c, &mut m, inventory(30, 3), 0.3).is_empty());
        assert_eq!(
            step(&c, &mut m, inventory(300, 4), 0.1),
            [AlertKind::Resolved]
        );
        assert!(m.stockout_alert.is_none());
    }

    #[test]
    fn a_delivery_after_the_shelf_ran_empty_resolves_even_when_the_risk_stays() {
        let (c, mut m) = (config(), SkuMemory::default());
        assert_eq!(
            step(&c, &mut m, inventory(10, 1), 0.9),
            [AlertKind::StockoutRisk]
        );
        let id = m.stockout_alert.clone().unwrap().alert_id;
        assert!(step(&c, &mut m, inventory(0, 2), 1.0).is_empty());
        // A short delivery: stock is back, the next shortage is already likely.
        assert_eq!(step(&c, &mut m, delivery(5, 3), 0.7), [AlertKind::Resolved]);
        // ...and is a new alert with a new id.
        assert_eq!(
            step(&c, &mut m, inventory(5, 4), 0.7),
            [AlertKind::StockoutRisk]
        );
        assert_ne!(m.stockout_alert.unwrap().alert_id, id);
    }

    #[test]
    fn a_delivery_resolves_well_below_the_opening_level_but_not_just_under_it() {
        let (c, mut m) = (config(), SkuMemory::default());
        assert_eq!(
            step(&c, &mut m, inventory(20, 1), 0.6),
            [AlertKind::StockoutRisk]
        );
        // The delivery came before the shelf ran empty and did not bring enough: still open.
        assert!(step(&c, &mut m, delivery(5, 2), 0.55).is_empty());
        // Nor one that leaves the risk just under the opening level (it would flap back open).
        assert!(step(&c, &mut m, delivery(5, 3), 0.4).is_empty());
        // The next one does: under halfway to the resolve level, resolved without waiting for 0.2.
        assert_eq!(
            step(&c, &mut m, delivery(50, 4), 0.3),
            [AlertKind::Resolved]
        );
    }

    #[test]
    fn a_count_from_the_closing_hour_closes_the_day_once() {
        let c = SupplyConfig {
            closing_count_hour: Some(20),
            ..config()
        };
        let day = 19_500;
        let at = |hour: i64| day * DAY_MS + hour * 3_600_000;
        let mut m = SkuMemory::default();
        m.close_days(at(9), 56);
        m.day_demand = 12.0;
        // A count during the day closes nothing, neither does a sale.
        assert!(closing_count(&c, &mut m, &inventory(40, at(13))).is_empty());
        assert!(closing_count(&c, &mut m, &delivery(5, at(21))).is_empty());
        // The evening count closes the day with its demand; a second one finds it closed.
        assert_eq!(
            closing_count(&c, &mut m, &inventory(40, at(20))),
            [(day, 12.0)]
        );
        assert_eq!(m.day, Some(day + 1));
        assert!(closing_count(&c, &mut m, &inventory(38, at(22))).is_empty());
        // Unset: the evening count closes nothing.
        let mut m = SkuMemory::default();
        m.close_days(at(9), 56);
        assert!(closing_count(&config(), &mut m, &inventory(40, at(21))).is_empty());
    }
}
