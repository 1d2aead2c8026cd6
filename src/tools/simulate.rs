//! `longmem simulate supply-chain`: a supply-chain event stream driven by real data, with the
//! ground truth of when and where stock actually ran out.
//!
//! - Demand: SupplyGraph's daily sales orders (a real FMCG manufacturer, 2023-01-01..2023-08-09)
//!   per product, split over up to three of the product's real plant × storage-location pairs
//!   with shares drawn per seed. A day's demand is served from stock as it comes (a few `purchase`
//!   events from distributors, each naming its location); demand that finds the shelf empty is
//!   lost, as in a shop. In the ground truth a stockout starts with the first lost sale and lasts
//!   until stock is back on the shelf (a day without demand on an empty shelf does not end it).
//! - Replenishment: each SKU × location reviews its stock once a week on its own weekday and, below
//!   its reorder level, orders up to its order-up-to level: the planner's own rule of thumb on the
//!   last four weeks of sales, with a per-SKU safety factor drawn from 0.6–1.4 (planners are not all
//!   equally careful), so some positions run out and some never do. Deliveries carry at most what
//!   the plant has made: SupplyGraph's real daily production of the product, in the position's
//!   share, less what earlier deliveries took; a delivery finding nothing made comes a day later.
//! - Lead times and delays, both from the real USAID SCMS delivery history: each SKU × location's
//!   lead time is an SCMS order's (scheduled delivery minus PO sent to vendor) scaled from its months
//!   to SupplyGraph's days (SCMS's median, 92 days, becomes 6.5; 2–21 days); each order's delay is
//!   an SCMS delivery's (delivered minus scheduled date, in days; early deliveries count as on time). A late order is announced by a `supplier_delay` two days before
//!   it was due.
//! - Events per day: purchases, an `inventory` count at the end of the day, and `shipment` events
//!   (created, in transit, delivered).
//!
//! Everything is a pure function of the data and the seed.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::json;

use crate::supply::DAY_MS;

/// 2023-01-01T00:00:00Z, SupplyGraph's first day.
pub const START_MS: i64 = 1_672_531_200_000;
/// The UTC hour of each position's end-of-day stock count, after the day's last sale.
pub const COUNT_HOUR: u32 = 20;

/// One event of the stream, in time order; `key` is its Kafka key.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub day: usize,
    pub timestamp_ms: i64,
    pub key: String,
    pub payload: String,
    pub is_purchase: bool,
}

/// A stretch of days from a SKU × location's first lost sale until it has stock again; `last_day`
/// is the last day a sale was lost.
#[derive(Debug, Clone, Serialize)]
pub struct Stockout {
    pub sku: String,
    pub location: String,
    pub first_day: usize,
    pub last_day: usize,
    /// When the shelf went empty on the first day.
    pub start_ms: i64,
    pub lost_units: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Position {
    pub sku: String,
    pub location: String,
    pub lead_time_days: i64,
    pub review_weekday: usize,
    pub safety_factor: f64,
}

pub struct Simulation {
    pub events: Vec<SimEvent>,
    pub stockouts: Vec<Stockout>,
    pub positions: Vec<Position>,
    pub days: usize,
}

/// A small deterministic generator (SplitMix64), so a seed means the same stream everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// SupplyGraph's products with their daily sales orders and their plant × storage locations.
pub struct SupplyGraph {
    pub products: Vec<String>,
    /// demand[p][day], units (sales orders).
    pub demand: Vec<Vec<f64>>,
    /// production[p][day], units: what the plant makes, and so what replenishment can deliver.
    pub production: Vec<Vec<f64>>,
    pub locations: BTreeMap<String, Vec<String>>,
}

/// One of SupplyGraph's daily unit series: (product names, series[product][day]).
fn load_series(path: &Path) -> anyhow::Result<(Vec<String>, Vec<Vec<f64>>)> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (SupplyGraph's homogeneous/ folder expected)",
            path.display()
        )
    })?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let products: Vec<String> = header[1..].iter().map(|s| s.trim().to_string()).collect();
    let mut series = vec![Vec::new(); products.len()];
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cells: Vec<&str> = line.split(',').collect();
        for (p, values) in series.iter_mut().enumerate() {
            let v = cells.get(p + 1).map(|c| c.trim()).unwrap_or("");
            values.push(if v.is_empty() {
                0.0
            } else {
                v.parse::<f64>()
                    .with_context(|| format!("{}: `{v}`", path.display()))?
                    .max(0.0)
            });
        }
    }
    Ok((products, series))
}

pub fn load_supplygraph(dir: &Path) -> anyhow::Result<SupplyGraph> {
    let (products, demand) = load_series(&dir.join("Temporal_Data/Unit/Sales_Order.csv"))?;
    let production_path = dir.join("Temporal_Data/Unit/Production.csv");
    let (made, production) = load_series(&production_path)?;
    if made != products {
        bail!(
            "{}: its products differ from the sales orders'",
            production_path.display()
        );
    }
    let nodes = dir.join("Nodes/Nodes_Type_Plant_Storage.csv");
    let text = std::fs::read_to_string(&nodes)
        .with_context(|| format!("cannot read {}", nodes.display()))?;
    let mut locations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() < 3 {
            continue;
        }
        let storage = cells[2].trim().trim_end_matches(".0");
        let location = format!("plant-{}/sl-{}", cells[1].trim(), storage);
        let list = locations.entry(cells[0].trim().to_string()).or_default();
        if !list.contains(&location) {
            list.push(location);
        }
    }
    Ok(SupplyGraph {
        products,
        demand,
        production,
        locations,
    })
}

/// Delivery delays in days from the SCMS history: delivered minus scheduled date, early = 0.
/// What the simulator takes from the SCMS delivery history, in days.
pub struct ScmsHistory {
    /// Delivered minus scheduled date (early counts as on time), capped at 60.
    pub delays: Vec<i64>,
    /// Scheduled delivery minus PO sent to vendor, where both are known and positive.
    pub lead_times: Vec<i64>,
}

/// SCMS's purchase orders take months (international freight of medicines); SupplyGraph's plants
/// deliver within days. Lead times are drawn from SCMS's distribution scaled so its median becomes
/// this many days: the real shape (spread, long tail) at a daily scale.
const LEAD_TIME_MEDIAN_DAYS: f64 = 6.5;

pub fn load_scms(path: &Path) -> anyhow::Result<ScmsHistory> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes).replace('\r', "\n");
    let mut rows = csv_rows(&text);
    let header = rows.next().context("SCMS file is empty")?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim_start_matches('\u{feff}') == name)
    };
    let (Some(po_sent), Some(scheduled), Some(delivered)) = (
        col("PO Sent to Vendor Date"),
        col("Scheduled Delivery Date"),
        col("Delivered to Client Date"),
    ) else {
        bail!(
            "{}: no `PO Sent to Vendor Date` / `Scheduled Delivery Date` / `Delivered to Client Date` columns",
            path.display()
        );
    };
    let mut history = ScmsHistory {
        delays: Vec::new(),
        lead_times: Vec::new(),
    };
    for row in rows {
        let Some(s) = row.get(scheduled).and_then(|v| scms_day(v)) else {
            continue;
        };
        if let Some(d) = row.get(delivered).and_then(|v| scms_day(v)) {
            history.delays.push((d - s).clamp(0, 60));
        }
        if let Some(po) = row.get(po_sent).and_then(|v| us_day(v)) {
            if s > po {
                history.lead_times.push(s - po);
            }
        }
    }
    if history.delays.len() < 100 || history.lead_times.len() < 100 {
        bail!(
            "{}: only {} rows with both delivery dates and {} with a PO date before the scheduled one",
            path.display(),
            history.delays.len(),
            history.lead_times.len()
        );
    }
    Ok(history)
}

impl ScmsHistory {
    fn lead_time_median(&self) -> f64 {
        let mut sorted = self.lead_times.clone();
        sorted.sort_unstable();
        sorted.get(sorted.len() / 2).copied().unwrap_or(1).max(1) as f64
    }

    /// One lead time in days, at SupplyGraph's scale (at least 2, at most 21).
    fn draw_lead_time(&self, median: f64, rng: &mut Rng) -> i64 {
        let drawn = self.lead_times[rng.below(self.lead_times.len())] as f64;
        ((drawn * LEAD_TIME_MEDIAN_DAYS / median).round() as i64).clamp(2, 21)
    }
}

/// Days since 1970 of an SCMS date such as `11/13/06` (month/day/two-digit year).
fn us_day(s: &str) -> Option<i64> {
    let mut parts = s.trim().split('/');
    let month: usize = parts.next()?.parse().ok()?;
    let day = parts.next()?;
    let year = parts.next()?;
    let name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .get(month.checked_sub(1)?)?;
    scms_day(&format!("{day}-{name}-{year}"))
}

/// Days since 1970 of an SCMS date such as `2-Jun-06`.
fn scms_day(s: &str) -> Option<i64> {
    let mut parts = s.trim().split('-');
    let day: i64 = parts.next()?.parse().ok()?;
    let name = parts.next()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == name)? as i64
        + 1;
    let year: i64 = 2000 + parts.next()?.parse::<i64>().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// A minimal CSV reader: commas, double-quoted fields with "" escapes.
fn csv_rows(text: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    text.lines().filter(|l| !l.trim().is_empty()).map(|line| {
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(std::mem::take(&mut field)),
                (c, _) => field.push(c),
            }
        }
        fields.push(field);
        fields
    })
}

struct Order {
    id: String,
    quantity: i64,
    due_day: usize,
    arrival_day: usize,
}

/// Simulates up to `max_positions` SKU × locations over SupplyGraph's days.
pub fn simulate(
    graph: &SupplyGraph,
    scms: &ScmsHistory,
    seed: u64,
    max_positions: usize,
) -> Simulation {
    let mut rng = Rng::new(seed);
    let days = graph.demand.first().map(Vec::len).unwrap_or(0);
    // Positions: every product that sells, over up to three of its locations, with demand shares.
    let mut slots: Vec<(usize, String, f64)> = Vec::new();
    for (p, name) in graph.products.iter().enumerate() {
        if graph.demand[p].iter().sum::<f64>() < 1.0 {
            continue;
        }
        let mut locs = graph
            .locations
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec!["plant-0/sl-0".into()]);
        while locs.len() > 3 {
            let i = rng.below(locs.len());
            locs.remove(i);
        }
        let weights: Vec<f64> = locs.iter().map(|_| 0.2 + rng.unit()).collect();
        let total: f64 = weights.iter().sum();
        for (l, w) in locs.into_iter().zip(weights) {
            slots.push((p, l, w / total));
        }
    }
    while slots.len() > max_positions {
        let i = rng.below(slots.len());
        slots.remove(i);
    }

    let mut events = Vec::new();
    let mut stockouts = Vec::new();
    let mut positions = Vec::new();
    let lead_median = scms.lead_time_median();
    for (n, (p, location, share)) in slots.into_iter().enumerate() {
        let sku = graph.products[p].clone();
        let key = format!("{sku}@{location}");
        let lead = scms.draw_lead_time(lead_median, &mut rng);
        let review = rng.below(7);
        let safety = 0.6 + 0.8 * rng.unit();
        positions.push(Position {
            sku: sku.clone(),
            location: location.clone(),
            lead_time_days: lead,
            review_weekday: review,
            safety_factor: safety,
        });
        let demand: Vec<f64> = graph.demand[p]
            .iter()
            .map(|d| (d * share).round())
            .collect();
        let opening: f64 = demand.iter().take(28).sum::<f64>() / 28.0;
        let mut on_hand = (opening * 14.0).round() as i64;
        let mut served_history: Vec<f64> = Vec::new();
        let mut orders: Vec<Order> = Vec::new();
        let mut open: Option<Stockout> = None;
        // Production not yet shipped to this position (units), starting with two weeks' worth.
        let mut made: f64 = graph.production[p].iter().take(14).sum::<f64>() * share;
        for (day, &wanted_units) in demand.iter().enumerate() {
            let t0 = START_MS + day as i64 * DAY_MS;
            let mut day_events: Vec<SimEvent> = Vec::new();
            let push = |list: &mut Vec<SimEvent>,
                        ts: i64,
                        key: &str,
                        payload: serde_json::Value,
                        is_purchase: bool| {
                list.push(SimEvent {
                    day,
                    timestamp_ms: ts,
                    key: key.to_string(),
                    payload: payload.to_string(),
                    is_purchase,
                });
            };
            // The plant's real production, this position's share of it, is what deliveries can carry.
            made += graph.production[p].get(day).copied().unwrap_or(0.0) * share;
            // Deliveries arrive in the morning, short when production fell behind (the rest is
            // cancelled); with nothing made yet the truck comes a day later, unannounced.
            for o in orders
                .iter_mut()
                .filter(|o| o.arrival_day == day && made < 1.0)
            {
                o.arrival_day += 1;
            }
            orders.retain(|o| {
                if o.arrival_day == day {
                    let quantity = o.quantity.min(made.floor() as i64);
                    made -= quantity as f64;
                    on_hand += quantity;
                    push(&mut day_events, t0 + 7 * 3_600_000, &key, json!({"event_type": "shipment", "shipment_id": o.id, "sku": sku, "location": location,
                        "quantity": quantity, "direction": "inbound", "status": "delivered",
                        "expected_arrival_ms": START_MS + o.due_day as i64 * DAY_MS + 12 * 3_600_000, "timestamp_ms": t0 + 7 * 3_600_000}), false);
                    false
                } else {
                    true
                }
            });
            for o in &orders {
                if o.arrival_day > o.due_day && o.due_day >= 2 && day == o.due_day - 2 {
                    push(
                        &mut day_events,
                        t0 + 8 * 3_600_000,
                        &key,
                        json!({"event_type": "supplier_delay", "supplier": format!("plant-supplier-{}", p % 7),
                        "sku": sku, "location": location, "delay_hours": ((o.arrival_day - o.due_day) * 24) as f64,
                        "new_expected_arrival_ms": START_MS + o.arrival_day as i64 * DAY_MS + 7 * 3_600_000, "timestamp_ms": t0 + 8 * 3_600_000}),
                        false,
                    );
                }
            }
            // The day's demand in a few purchases between 09:00 and 17:00, served while stock lasts.
            let wanted = wanted_units as i64;
            let pieces = if wanted <= 0 {
                0
            } else {
                (1 + rng.below(4)).min(wanted as usize)
            };
            let mut served = 0i64;
            let mut lost = 0i64;
            let mut empty_at = None;
            for i in 0..pieces {
                let q = if i + 1 == pieces {
                    wanted - (wanted / pieces as i64) * i as i64
                } else {
                    wanted / pieces as i64
                };
                let ts = t0
                    + (9 + (8 * i / pieces.max(1)) as i64) * 3_600_000
                    + rng.below(3_000_000) as i64;
                let take = q.min(on_hand);
                if take > 0 {
                    on_hand -= take;
                    served += take;
                    let user = format!("distributor-{}", rng.below(40));
                    push(
                        &mut day_events,
                        ts,
                        &user,
                        json!({"event_type": "purchase", "user_id": user,
                        "item_id": sku, "timestamp_ms": ts, "quantity": take, "location": location}),
                        true,
                    );
                }
                if take < q {
                    lost += q - take;
                    empty_at.get_or_insert(ts);
                }
            }
            served_history.push(served as f64);
            // Ground truth.
            if lost > 0 {
                match open.as_mut() {
                    Some(s) => {
                        s.last_day = day;
                        s.lost_units += lost;
                    }
                    None => {
                        open = Some(Stockout {
                            sku: sku.clone(),
                            location: location.clone(),
                            first_day: day,
                            last_day: day,
                            start_ms: empty_at.unwrap_or(t0),
                            lost_units: lost,
                        })
                    }
                }
            } else if on_hand > 0 {
                stockouts.extend(open.take());
            }
            // Weekly review at the end of the day: order up to the target if below the reorder level.
            let weekday = (day + 6) % 7; // 2023-01-01 was a Sunday; 0 = Monday
            if weekday == review && day >= 7 {
                let recent = &served_history[served_history.len().saturating_sub(28)..];
                let mean = recent.iter().sum::<f64>() / recent.len() as f64;
                let reorder = mean * (lead as f64 + 7.0) * safety;
                let target = reorder + mean * 7.0;
                let pipeline: i64 = orders.iter().map(|o| o.quantity).sum();
                let position = (on_hand + pipeline) as f64;
                if position < reorder && target - position >= 1.0 {
                    let quantity = (target - position).round() as i64;
                    let delay = scms.delays[rng.below(scms.delays.len())];
                    let order = Order {
                        id: format!("po-{seed}-{n}-{day}"),
                        quantity,
                        due_day: day + lead as usize,
                        arrival_day: day + lead as usize + delay as usize,
                    };
                    let ts = t0 + 18 * 3_600_000;
                    push(
                        &mut day_events,
                        ts,
                        &key,
                        json!({"event_type": "shipment", "shipment_id": order.id, "sku": sku, "location": location, "quantity": quantity,
                        "direction": "inbound", "status": "created", "expected_arrival_ms": START_MS + order.due_day as i64 * DAY_MS + 12 * 3_600_000, "timestamp_ms": ts}),
                        false,
                    );
                    orders.push(order);
                }
            }
            let counted_at = t0 + i64::from(COUNT_HOUR) * 3_600_000;
            push(
                &mut day_events,
                counted_at,
                &key,
                json!({"event_type": "inventory", "sku": sku, "location": location, "on_hand": on_hand, "timestamp_ms": counted_at}),
                false,
            );
            events.extend(day_events);
        }
        stockouts.extend(open.take());
    }
    events.sort_by_key(|e| (e.day, e.timestamp_ms));
    Simulation {
        events,
        stockouts,
        positions,
        days,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scms_dates_are_read() {
        assert_eq!(scms_day("1-Jan-70"), Some(36_525)); // two-digit years are 20xx
        assert_eq!(
            scms_day("2-Jun-06").unwrap() - scms_day("1-Jun-06").unwrap(),
            1
        );
        assert_eq!(
            scms_day("1-Mar-08").unwrap() - scms_day("28-Feb-08").unwrap(),
            2,
            "2008 is a leap year"
        );
        assert_eq!(scms_day("Date Not Captured"), None);
        assert_eq!(us_day("11/13/06"), scms_day("13-Nov-06"));
        assert_eq!(us_day("N/A - From RDC"), None);
    }

    #[test]
    fn quoted_csv_fields_keep_their_commas() {
        let rows: Vec<Vec<String>> = csv_rows("a,\"b, c\",\"d \"\"e\"\"\"\n1,2,3").collect();
        assert_eq!(rows[0], vec!["a", "b, c", "d \"e\""]);
        assert_eq!(rows[1].len(), 3);
    }

    #[test]
    fn simulation_is_deterministic_and_conserves_stock() {
        let graph = SupplyGraph {
            products: vec!["P".into()],
            demand: vec![(0..60)
                .map(|d| {
                    if d % 7 == 5 {
                        0.0
                    } else {
                        20.0 + (d % 3) as f64
                    }
                })
                .collect()],
            // Production stops every Sunday and runs short of demand in weeks 4 and 5.
            production: vec![(0..60)
                .map(|d| match d {
                    _ if d % 7 == 6 => 0.0,
                    21..=34 => 5.0,
                    _ => 26.0,
                })
                .collect()],
            locations: [("P".to_string(), vec!["plant-1/sl-1".to_string()])]
                .into_iter()
                .collect(),
        };
        let scms = ScmsHistory {
            delays: vec![0; 90].into_iter().chain([5, 10, 20]).collect(),
            lead_times: vec![30, 60, 92, 120, 250],
        };
        let a = simulate(&graph, &scms, 7, 10);
        let b = simulate(&graph, &scms, 7, 10);
        assert_eq!(a.events.len(), b.events.len());
        assert!(a
            .events
            .iter()
            .zip(&b.events)
            .all(|(x, y)| x.payload == y.payload));
        // Stock moves only by purchases (down) and deliveries (up): replay the counts.
        let mut on_hand: Option<i64> = None;
        let mut expected = 0i64;
        for e in &a.events {
            let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
            match v["event_type"].as_str().unwrap() {
                "purchase" => expected -= v["quantity"].as_i64().unwrap(),
                "shipment" if v["status"] == "delivered" => {
                    expected += v["quantity"].as_i64().unwrap()
                }
                "inventory" => {
                    if on_hand.is_some() {
                        assert_eq!(v["on_hand"].as_i64().unwrap(), expected, "{v}");
                    }
                    on_hand = v["on_hand"].as_i64();
                    expected = on_hand.unwrap();
                }
                _ => {}
            }
        }
        // Deliveries never carry more than the plant made (plus its two weeks of opening stock).
        let delivered: i64 = a
            .events
            .iter()
            .filter(|e| e.payload.contains("\"delivered\""))
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.payload).unwrap()["quantity"]
                    .as_i64()
                    .unwrap()
            })
            .sum();
        let production = &graph.production[0];
        let made: f64 = production.iter().sum::<f64>() + production.iter().take(14).sum::<f64>();
        assert!(delivered as f64 <= made, "{delivered} > {made}");
        assert!(
            !a.stockouts.is_empty(),
            "the production shortfall runs the shelf empty"
        );
        assert!(a
            .events
            .windows(2)
            .all(|w| (w[0].day, w[0].timestamp_ms) <= (w[1].day, w[1].timestamp_ms)));
    }
}
