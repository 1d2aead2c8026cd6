//! The supply-chain memory of one SKU at one location, and the stockout risk read from it.
//!
//! The memory holds what a planner would look at: stock on hand (the last inventory count, minus
//! demand and outbound deliveries since, plus inbound deliveries since), the open inbound
//! shipments with their expected arrivals, the demand of the day being counted, and the demand
//! forecaster's recurrent state with the forecast it made after the last completed day. Days are
//! UTC calendar days of the events' own timestamps, so a replay gives the same answers as the live
//! stream did.
//!
//! Risk: the forecast gives quantiles of the cumulative demand over the next 1..H days. The
//! probability of a stockout before the next inbound arrival (with nothing on the way: within one
//! replenishment lead time, the time an order placed now would take) is the probability that demand
//! until then exceeds the stock on hand, read off those quantiles (piecewise linear between them);
//! the expected stockout time is when median demand overtakes on-hand stock plus the arrivals due
//! by then.
//!
//! Nothing here talks to Kafka, the store or the model runtime: [`super::stage`] drives it.

use serde::{Deserialize, Serialize};

use crate::event::{Direction, ShipmentStatus, SupplyEvent};
use crate::memory::ModelState;

pub const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since the Unix epoch) of a timestamp.
pub fn day_of(timestamp_ms: i64) -> i64 {
    timestamp_ms.div_euclid(DAY_MS)
}

/// Day of the week of a UTC day, 0 = Monday (the forecaster's convention). 1970-01-01 was a Thursday.
pub fn weekday(day: i64) -> i64 {
    (day + 3).rem_euclid(7)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SkuMemory {
    pub on_hand: i64,
    /// Timestamp of the last inventory count; 0 = never counted (on hand is then only what the
    /// deliveries and demand seen so far imply).
    pub counted_at_ms: i64,
    /// Open inbound shipments (created or in transit).
    pub inbound: Vec<Inbound>,
    /// The day whose demand is being counted; `None` before the first event.
    pub day: Option<i64>,
    pub day_demand: f64,
    /// The forecaster's state after the last completed day.
    pub forecaster: Option<ModelState>,
    /// The forecast made after the last completed day: it starts on `day`.
    pub forecast: Option<Forecast>,
    pub stockout_alert: Option<OpenAlert>,
    pub supply_risk_alert: Option<OpenAlert>,
    /// Per source partition of the purchases, the last offset whose demand was counted: demand
    /// records replayed after a crash are recognised and not counted twice.
    pub demand_seen: Vec<DemandWatermark>,
    pub last_event_ms: i64,
    /// The replenishment lead time this SKU × location's orders are planned with (expected arrival
    /// minus order time, averaged over its orders); `None` until an order is seen.
    pub lead_time_ms: Option<i64>,
    /// The share of an order's quantity that its deliveries bring (delivered ÷ ordered, averaged
    /// over its deliveries); `None` until one is seen (then taken as 1). Short deliveries, when the
    /// supplier has not made enough, are what leave a shelf empty with an order on the way.
    pub fill_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inbound {
    pub shipment_id: String,
    pub quantity: i64,
    pub expected_arrival_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemandWatermark {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    /// The first forecast day: quantile row h covers days `first_day ..= first_day + h`.
    pub first_day: i64,
    /// Cumulative demand quantiles, `horizon × levels`, row-major.
    pub quantiles: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenAlert {
    pub alert_id: String,
    pub opened_ms: i64,
    /// The shelf has been seen empty while this alert was open: the shortage it warned of came.
    pub ran_out: bool,
}

impl SkuMemory {
    /// The days that complete before `timestamp_ms`'s day, each with its demand, oldest first;
    /// at most `max_days` (a SKU silent for longer restarts its count from the most recent days).
    /// Moves the memory to the new day.
    pub fn close_days(&mut self, timestamp_ms: i64, max_days: usize) -> Vec<(i64, f64)> {
        let today = day_of(timestamp_ms);
        let Some(day) = self.day else {
            self.day = Some(today);
            return Vec::new();
        };
        if today <= day {
            return Vec::new(); // same day, or an event from an earlier day: counted into this one
        }
        let first = day.max(today - max_days as i64);
        let closed = (first..today)
            .map(|d| (d, if d == day { self.day_demand } else { 0.0 }))
            .collect();
        self.day = Some(today);
        self.day_demand = 0.0;
        closed
    }

    /// Applies one event. Returns false for a demand record that was counted before (written twice
    /// by a retried batch), which changes nothing.
    pub fn apply(&mut self, event: &SupplyEvent) -> bool {
        match event {
            SupplyEvent::Demand {
                quantity, source, ..
            } => {
                let mark = self
                    .demand_seen
                    .iter_mut()
                    .find(|w| w.topic == source.topic && w.partition == source.partition);
                match mark {
                    Some(w) if w.offset >= source.offset => return false,
                    Some(w) => w.offset = source.offset,
                    None => self.demand_seen.push(DemandWatermark {
                        topic: source.topic.clone(),
                        partition: source.partition,
                        offset: source.offset,
                    }),
                }
                self.day_demand += *quantity as f64;
                self.on_hand = (self.on_hand - quantity).max(0);
            }
            SupplyEvent::Inventory {
                on_hand,
                timestamp_ms,
                ..
            } => {
                // A count older than the one we hold is stale.
                if *timestamp_ms >= self.counted_at_ms {
                    self.on_hand = (*on_hand).max(0);
                    self.counted_at_ms = *timestamp_ms;
                }
            }
            SupplyEvent::Shipment {
                shipment_id,
                quantity,
                direction,
                status,
                expected_arrival_ms,
                ..
            } => {
                let open = self
                    .inbound
                    .iter()
                    .position(|s| &s.shipment_id == shipment_id);
                match (direction, status) {
                    (Direction::Inbound, ShipmentStatus::Created | ShipmentStatus::InTransit) => {
                        if open.is_none() {
                            let planned = (expected_arrival_ms - event_timestamp(event)).max(0);
                            self.lead_time_ms = Some(match self.lead_time_ms {
                                Some(l) => (3 * l + planned) / 4,
                                None => planned,
                            });
                        }
                        let shipment = Inbound {
                            shipment_id: shipment_id.clone(),
                            quantity: *quantity,
                            expected_arrival_ms: *expected_arrival_ms,
                        };
                        match open {
                            Some(i) => self.inbound[i] = shipment,
                            None => self.inbound.push(shipment),
                        }
                    }
                    (Direction::Inbound, ShipmentStatus::Delivered) => {
                        if let Some(i) = open {
                            let ordered = self.inbound.remove(i).quantity;
                            if ordered > 0 {
                                let fill = (*quantity as f64 / ordered as f64).clamp(0.0, 1.0);
                                self.fill_rate = Some(0.75 * self.expected_fill() + 0.25 * fill);
                            }
                        }
                        self.on_hand += quantity;
                    }
                    (Direction::Inbound, ShipmentStatus::Cancelled) => {
                        if let Some(i) = open {
                            self.inbound.remove(i);
                        }
                    }
                    (Direction::Outbound, ShipmentStatus::Delivered) => {
                        self.on_hand = (self.on_hand - quantity).max(0);
                    }
                    (Direction::Outbound, _) => {}
                }
            }
            SupplyEvent::SupplierDelay {
                new_expected_arrival_ms,
                ..
            } => {
                // The supplier's open deliveries to this SKU × location slip to the new date.
                for s in &mut self.inbound {
                    s.expected_arrival_ms = s.expected_arrival_ms.max(*new_expected_arrival_ms);
                }
            }
        }
        self.last_event_ms = self.last_event_ms.max(event_timestamp(event));
        true
    }

    /// The share of an open order expected to arrive.
    pub fn expected_fill(&self) -> f64 {
        self.fill_rate.unwrap_or(1.0)
    }

    pub fn inbound_total(&self) -> i64 {
        self.inbound.iter().map(|s| s.quantity).sum()
    }

    pub fn next_arrival_ms(&self) -> Option<i64> {
        self.inbound.iter().map(|s| s.expected_arrival_ms).min()
    }
}

pub fn event_timestamp(event: &SupplyEvent) -> i64 {
    match event {
        SupplyEvent::Inventory { timestamp_ms, .. }
        | SupplyEvent::Shipment { timestamp_ms, .. }
        | SupplyEvent::SupplierDelay { timestamp_ms, .. }
        | SupplyEvent::Demand { timestamp_ms, .. } => *timestamp_ms,
    }
}

/// What the forecast says about one SKU × location at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// P(stock runs out before an order placed now could arrive, or before the next arrival if
    /// that is later): the largest P(demand until t > on hand + arrivals before t) over the
    /// deliveries due in that window and its end.
    pub probability: f64,
    pub expected_stockout_ms: Option<i64>,
    pub next_arrival_ms: Option<i64>,
    /// Hours from now to the moment that risk is read at (a delivery's arrival or the window's end).
    pub horizon_hours: f64,
    /// Quantiles of the demand from now to then, by level.
    pub demand_quantiles: Vec<(f64, f64)>,
    /// Order-up-to quantity: the high quantile of demand over lead time + review period, less stock
    /// on hand and inbound.
    pub suggested_reorder_qty: i64,
}

pub struct RiskPolicy {
    pub lead_time_days: f64,
    pub review_days: f64,
}

/// The forecast's quantile levels with the cumulative demand at fractional day `x` after the
/// start of its first day (linear within a day; zero at x = 0).
fn quantiles_at(forecast: &Forecast, levels: &[f64], x: f64) -> Vec<f64> {
    let q = levels.len();
    let horizon = forecast.quantiles.len() / q;
    let x = x.clamp(0.0, horizon as f64);
    let whole = x.floor() as usize;
    let frac = x - whole as f64;
    let row = |d: usize| -> Vec<f64> {
        if d == 0 {
            vec![0.0; q]
        } else {
            forecast.quantiles[(d - 1) * q..d * q]
                .iter()
                .map(|&v| v as f64)
                .collect()
        }
    };
    let lo = row(whole);
    if whole >= horizon {
        return lo;
    }
    let hi = row(whole + 1);
    lo.iter()
        .zip(&hi)
        .map(|(a, b)| a + (b - a) * frac)
        .collect()
}

/// P(D > stock) for a demand whose quantiles are `values` at `levels`: the CDF is linear between
/// known points, from (0, 0) below the lowest quantile, and its tail beyond the highest quantile
/// reaches 1 after another (highest − median) units.
pub fn exceedance(levels: &[f64], values: &[f64], stock: f64) -> f64 {
    let mid = levels.len() / 2;
    let mut points: Vec<(f64, f64)> = vec![(0.0, 0.0)];
    for (&l, &v) in levels.iter().zip(values) {
        let v = v.max(points.last().unwrap().0);
        points.push((v, l));
    }
    let top = *values.last().unwrap();
    points.push((top + (top - values[mid]).max(1.0), 1.0));
    if stock < 0.0 {
        return 1.0;
    }
    for w in points.windows(2) {
        let ((x0, p0), (x1, p1)) = (w[0], w[1]);
        if stock <= x1 {
            let cdf = if x1 > x0 {
                p0 + (p1 - p0) * (stock - x0) / (x1 - x0)
            } else {
                p1
            };
            return (1.0 - cdf).clamp(0.0, 1.0);
        }
    }
    0.0
}

/// Assesses stockout risk at `now_ms`. `None` until the forecaster has completed a day.
pub fn assess(
    memory: &SkuMemory,
    levels: &[f64],
    now_ms: i64,
    policy: &RiskPolicy,
) -> Option<Assessment> {
    let forecast = memory.forecast.as_ref()?;
    let horizon = forecast.quantiles.len() / levels.len();
    let start_ms = forecast.first_day * DAY_MS;
    let horizon_end_ms = start_ms + horizon as i64 * DAY_MS;
    let x_of = |t: i64| ((t - start_ms) as f64 / DAY_MS as f64).clamp(0.0, horizon as f64);
    let mid = levels.len() / 2;
    // Demand already counted today is part of the forecast's first day.
    let counted = if memory.day == Some(forecast.first_day) {
        memory.day_demand
    } else {
        0.0
    };
    let until = |t: i64| -> Vec<f64> {
        quantiles_at(forecast, levels, x_of(t))
            .into_iter()
            .map(|v| (v - counted).max(0.0))
            .collect()
    };

    // The risk window: until an order placed now could arrive (the lead time this position's
    // orders are planned with, else the configured one), or until the next delivery if that is
    // later. Stock can run out before each delivery due in the window, or at its end: the risk is
    // the largest of those exceedance probabilities, each against on-hand stock plus what has
    // arrived by then (a small delivery does not end the risk).
    let next_arrival_ms = memory.next_arrival_ms();
    let lead_ms = memory
        .lead_time_ms
        .unwrap_or((policy.lead_time_days * DAY_MS as f64) as i64);
    let clamp = |t: i64| t.clamp(now_ms, horizon_end_ms.max(now_ms));
    let end_ms = clamp(next_arrival_ms.map_or(now_ms + lead_ms, |a| a.max(now_ms + lead_ms)));
    let stock = memory.on_hand as f64;
    // Deliveries bring what this position's deliveries have been bringing, not always the order.
    let fill = memory.expected_fill();
    let mut arrivals: Vec<(i64, f64)> = memory
        .inbound
        .iter()
        .map(|s| (s.expected_arrival_ms, s.quantity as f64 * fill))
        .collect();
    arrivals.sort_unstable_by_key(|&(at, _)| at);
    let mut probability = 0.0f64;
    let (mut demand, mut worst_ms) = (Vec::new(), end_ms);
    let mut arrived_before = 0.0;
    let checkpoints = arrivals
        .iter()
        .map(|&(at, quantity)| (clamp(at), quantity))
        .filter(|&(at, _)| at < end_ms)
        .chain(std::iter::once((end_ms, 0.0)));
    for (at, quantity) in checkpoints {
        let d = until(at);
        let p = exceedance(levels, &d, stock + arrived_before);
        if p > probability || demand.is_empty() {
            probability = p;
            demand = d;
            worst_ms = at;
        }
        arrived_before += quantity;
    }

    // Expected stockout: the first moment median demand exceeds stock plus arrivals due by then,
    // searched hour by hour over the forecast horizon (only the median, without allocating: this
    // runs for every supply-chain event).
    let q = levels.len();
    let median_at = |x: f64| -> f64 {
        let whole = x.floor() as usize;
        let at = |d: usize| {
            if d == 0 {
                0.0
            } else {
                forecast.quantiles[(d - 1) * q + mid] as f64
            }
        };
        let v = if whole >= horizon {
            at(horizon)
        } else {
            at(whole) + (at(whole + 1) - at(whole)) * (x - whole as f64)
        };
        (v - counted).max(0.0)
    };
    let (mut next, mut arrived) = (0, 0.0);
    let mut expected_stockout_ms = None;
    let mut t = now_ms;
    while t <= horizon_end_ms {
        while next < arrivals.len() && arrivals[next].0 <= t {
            arrived += arrivals[next].1;
            next += 1;
        }
        let need = median_at(x_of(t));
        if need > 0.0 && need >= stock + arrived {
            expected_stockout_ms = Some(t);
            break;
        }
        t += DAY_MS / 24;
    }

    let cover_ms = now_ms + lead_ms + (policy.review_days * DAY_MS as f64) as i64;
    let high = until(cover_ms)[levels.len() - 1];
    let suggested_reorder_qty = (high - stock - memory.inbound_total() as f64 * fill)
        .ceil()
        .max(0.0) as i64;

    Some(Assessment {
        probability,
        expected_stockout_ms,
        next_arrival_ms,
        horizon_hours: (worst_ms - now_ms) as f64 / 3_600_000.0,
        demand_quantiles: levels.iter().copied().zip(demand).collect(),
        suggested_reorder_qty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SourceRef;

    const LEVELS: [f64; 5] = [0.05, 0.25, 0.5, 0.75, 0.95];

    fn shipment(id: &str, qty: i64, status: ShipmentStatus, arrival: i64) -> SupplyEvent {
        SupplyEvent::Shipment {
            shipment_id: id.into(),
            sku: "s".into(),
            location: "l".into(),
            quantity: qty,
            direction: Direction::Inbound,
            status,
            expected_arrival_ms: arrival,
            timestamp_ms: 1,
        }
    }

    fn demand(qty: i64, ts: i64, offset: i64) -> SupplyEvent {
        SupplyEvent::Demand {
            sku: "s".into(),
            location: "l".into(),
            quantity: qty,
            timestamp_ms: ts,
            source: SourceRef {
                topic: "events".into(),
                partition: 0,
                offset,
            },
        }
    }

    /// A forecast of exactly `per_day` units a day at every quantile level except a spread of ±20%.
    fn flat_forecast(first_day: i64, per_day: f32, horizon: usize) -> Forecast {
        let mut q = Vec::new();
        for h in 1..=horizon {
            let m = per_day * h as f32;
            q.extend([0.8 * m, 0.9 * m, m, 1.1 * m, 1.2 * m]);
        }
        Forecast {
            first_day,
            quantiles: q,
        }
    }

    #[test]
    fn weekdays_follow_the_calendar() {
        assert_eq!(weekday(day_of(0)), 3); // 1970-01-01, Thursday
        assert_eq!(weekday(day_of(1_672_531_200_000)), 6); // 2023-01-01, Sunday
        assert_eq!(day_of(-1), -1);
    }

    #[test]
    fn closing_days_carries_the_counted_demand_and_fills_silent_days_with_zero() {
        let mut m = SkuMemory::default();
        assert!(m.close_days(5 * DAY_MS + 10, 56).is_empty());
        assert!(m.apply(&demand(3, 5 * DAY_MS + 20, 1)));
        assert!(m.apply(&demand(4, 5 * DAY_MS + 30, 2)));
        assert!(m.close_days(5 * DAY_MS + 40, 56).is_empty(), "same day");
        assert_eq!(
            m.close_days(8 * DAY_MS + 1, 56),
            vec![(5, 7.0), (6, 0.0), (7, 0.0)]
        );
        assert_eq!((m.day, m.day_demand), (Some(8), 0.0));
        // A long silence keeps only the most recent days.
        assert_eq!(m.close_days(108 * DAY_MS, 2), vec![(106, 0.0), (107, 0.0)]);
    }

    #[test]
    fn replayed_demand_is_not_counted_twice() {
        let mut m = SkuMemory {
            on_hand: 10,
            ..Default::default()
        };
        assert!(m.apply(&demand(2, 1, 7)));
        assert!(!m.apply(&demand(2, 1, 7)));
        assert!(!m.apply(&demand(2, 1, 6)));
        assert!(m.apply(&demand(20, 1, 8)));
        assert_eq!(
            (m.on_hand, m.day_demand),
            (0, 22.0),
            "on hand stops at zero"
        );
    }

    #[test]
    fn shipments_move_stock_and_delays_move_arrivals() {
        let mut m = SkuMemory::default();
        m.apply(&SupplyEvent::Inventory {
            sku: "s".into(),
            location: "l".into(),
            on_hand: 50,
            timestamp_ms: 100,
        });
        m.apply(&shipment("a", 30, ShipmentStatus::Created, 1_000));
        m.apply(&shipment("b", 20, ShipmentStatus::InTransit, 2_000));
        assert_eq!((m.inbound_total(), m.next_arrival_ms()), (50, Some(1_000)));
        // Planned lead times (arrival - order time, here 999 and 1,999 ms) are averaged, the newest weighing 1/4.
        assert_eq!(m.lead_time_ms, Some((3 * 999 + 1_999) / 4));
        m.apply(&SupplyEvent::SupplierDelay {
            supplier: "v".into(),
            sku: "s".into(),
            location: "l".into(),
            delay_hours: 1.0,
            new_expected_arrival_ms: 1_500,
            timestamp_ms: 200,
        });
        assert_eq!(m.next_arrival_ms(), Some(1_500));
        assert_eq!(m.inbound[1].expected_arrival_ms, 2_000, "later ones stay");
        assert_eq!(m.expected_fill(), 1.0, "no delivery seen yet");
        // "a" comes short: 12 of the 30 ordered; the fill rate moves a quarter of the way to 0.4.
        m.apply(&shipment("a", 12, ShipmentStatus::Delivered, 1_500));
        assert!(
            (m.expected_fill() - 0.85).abs() < 1e-12,
            "{:?}",
            m.fill_rate
        );
        m.apply(&shipment("b", 20, ShipmentStatus::Cancelled, 2_000));
        assert_eq!((m.on_hand, m.inbound_total()), (62, 0));
        assert!(
            (m.expected_fill() - 0.85).abs() < 1e-12,
            "a cancellation is not a delivery"
        );
        // A stale count does not overwrite a newer one.
        m.apply(&SupplyEvent::Inventory {
            sku: "s".into(),
            location: "l".into(),
            on_hand: 1,
            timestamp_ms: 50,
        });
        assert_eq!(m.on_hand, 62);
    }

    #[test]
    fn exceedance_reads_the_quantiles() {
        let values = [80.0, 90.0, 100.0, 110.0, 120.0];
        assert!((exceedance(&LEVELS, &values, 100.0) - 0.5).abs() < 1e-9);
        assert!((exceedance(&LEVELS, &values, 120.0) - 0.05).abs() < 1e-9);
        assert!((exceedance(&LEVELS, &values, 85.0) - 0.85).abs() < 1e-9);
        assert_eq!(exceedance(&LEVELS, &values, 10_000.0), 0.0);
        assert_eq!(exceedance(&LEVELS, &values, -1.0), 1.0);
        assert!(exceedance(&LEVELS, &values, 0.0) > 0.99);
    }

    #[test]
    fn stock_that_runs_out_before_the_next_delivery_is_at_risk() {
        let policy = RiskPolicy {
            lead_time_days: 7.0,
            review_days: 7.0,
        };
        let mut m = SkuMemory {
            on_hand: 100,
            day: Some(10),
            forecast: Some(flat_forecast(10, 10.0, 28)),
            ..Default::default()
        };
        let now = 10 * DAY_MS;
        // Nothing on the way and the configured 7-day lead time: 70 units of demand in that time.
        let a = assess(&m, &LEVELS, now, &policy).unwrap();
        assert!(a.probability < 0.01, "{a:?}");
        assert!((a.horizon_hours - 168.0).abs() < 1e-9);
        // Orders here take 14 days: 140 units of demand by then, more than the 100 on hand; the
        // stockout is expected on day 10.
        m.lead_time_ms = Some(14 * DAY_MS);
        let a = assess(&m, &LEVELS, now, &policy).unwrap();
        assert!(a.probability > 0.95, "below the 5% quantile: {a:?}");
        let out = a.expected_stockout_ms.unwrap();
        assert!((out - (now + 10 * DAY_MS)).abs() <= DAY_MS / 24, "{a:?}");
        assert!(
            (152..=153).contains(&a.suggested_reorder_qty),
            "1.2 x (14 + 7) x 10 - 100, rounded up: {a:?}"
        );
        // A delivery in 5 days: 50 units of demand by then against 100 on hand.
        m.inbound.push(Inbound {
            shipment_id: "a".into(),
            quantity: 500,
            expected_arrival_ms: now + 5 * DAY_MS,
        });
        let a = assess(&m, &LEVELS, now, &policy).unwrap();
        assert!(a.probability < 0.01, "{a:?}");
        assert_eq!(a.expected_stockout_ms, None, "{a:?}");
        assert!((a.horizon_hours - 120.0).abs() < 1e-9);
        assert_eq!(a.suggested_reorder_qty, 0, "1.2 x 21 x 10 < 100 + 500");
        // A delivery that brings too little does not end the risk: 60 on hand and 5 units in 5
        // days last until day 6, before an order placed now could come (14 days).
        m.on_hand = 60;
        m.inbound[0].quantity = 5;
        let a = assess(&m, &LEVELS, now, &policy).unwrap();
        assert!(a.probability > 0.95, "{a:?}");
        assert!((a.horizon_hours - 336.0).abs() < 1e-9, "{a:?}");
        let out = a.expected_stockout_ms.unwrap();
        assert!(
            (out - (now + 6 * DAY_MS + DAY_MS / 2)).abs() <= DAY_MS / 24,
            "{a:?}"
        );
        // Demand already counted today uses up part of the first forecast day.
        m.on_hand = 100;
        m.inbound[0].quantity = 500;
        m.day_demand = 10.0;
        let a = assess(&m, &LEVELS, now + DAY_MS / 2, &policy).unwrap();
        let median = a.demand_quantiles[2].1;
        assert!((median - 40.0).abs() < 1e-6, "{a:?}");
    }
}
