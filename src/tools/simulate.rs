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

use std::path::PathBuf;

use crate::event::{Direction, Event, EventType, ShipmentStatus, SupplyEvent, UserEvent};
use crate::supply::DAY_MS;
use crate::tools::datasets::{self, ScmsHistory, SupplyGraph};
use crate::tools::harness::{self, progress};
use anyhow::Context;
use rdkafka::producer::FutureProducer;
use serde::Serialize;

/// 2023-01-01T00:00:00Z, SupplyGraph's first day.
pub const START_MS: i64 = 1_672_531_200_000;
/// SCMS's purchase orders take months (international freight of medicines); SupplyGraph's plants
/// deliver within days. Lead times are drawn from SCMS's distribution scaled so its median becomes
/// this many days: the real shape (spread, long tail) at a daily scale.
const LEAD_TIME_MEDIAN_DAYS: f64 = 6.5;
/// The UTC hour of each position's end-of-day stock count, after the day's last sale.
pub const COUNT_HOUR: u32 = 20;

/// One event of the stream, in time order; `key` is its Kafka key.
#[derive(Debug, Clone)]
pub struct SimEvent {
    pub day: usize,
    pub timestamp_ms: i64,
    pub key: String,
    pub event: Event,
}

impl SimEvent {
    pub fn is_purchase(&self) -> bool {
        self.event.event_type() == EventType::Purchase
    }

    /// The message value, serialised from the event type the daemon decodes into.
    pub fn payload(&self) -> String {
        serde_json::to_string(&self.event).expect("an Event always serialises")
    }
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

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Random seed: the same seed gives the same stream.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// SKU × location positions to simulate (at most SupplyGraph's products × 3 locations).
    #[arg(long, default_value_t = 60)]
    pub positions: usize,
    /// SupplyGraph's `homogeneous/` folder.
    #[arg(long, default_value = "../shared/data/supply/supplygraph/homogeneous")]
    pub supplygraph: PathBuf,
    /// The SCMS delivery history (PO, scheduled and delivered dates: lead times and delays).
    #[arg(
        long,
        default_value = "../shared/data/supply/scms_delivery_history/SCMS_Delivery_History_Dataset.csv"
    )]
    pub scms: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SimulateCommand {
    #[command(flatten)]
    pub sim: SimulateArgs,
    /// Directory for `events.jsonl` (one `{"key", "value"}` per line, in time order) and
    /// `ground_truth.json` (the stockouts and each position's policy).
    #[arg(long, default_value = "var/simulation")]
    pub out: PathBuf,
    /// Also produce the events to this topic on `--brokers`, in time order.
    #[arg(long, requires = "brokers")]
    pub topic: Option<String>,
    /// The Kafka to produce to with `--topic` (host:port,...).
    #[arg(long)]
    pub brokers: Option<String>,
}

pub fn load_simulation(args: &SimulateArgs) -> anyhow::Result<Simulation> {
    let graph = datasets::load_supplygraph(&args.supplygraph)?;
    let scms = datasets::load_scms(&args.scms)?;
    Ok(simulate(&graph, &scms, args.seed, args.positions))
}

pub fn run(cmd: SimulateCommand) -> anyhow::Result<()> {
    let sim = load_simulation(&cmd.sim)?;
    std::fs::create_dir_all(&cmd.out)
        .with_context(|| format!("cannot create {}", cmd.out.display()))?;
    let bar = progress(sim.events.len() as u64, "writing");
    let mut lines = String::new();
    for (i, e) in sim.events.iter().enumerate() {
        lines.push_str(&serde_json::json!({"key": e.key, "value": e.event}).to_string());
        lines.push('\n');
        if i % 1000 == 0 {
            bar.set_position(i as u64);
        }
    }
    std::fs::write(cmd.out.join("events.jsonl"), lines)?;
    let truth = serde_json::json!({"seed": cmd.sim.seed, "days": sim.days, "stockouts": sim.stockouts, "positions": sim.positions});
    std::fs::write(
        cmd.out.join("ground_truth.json"),
        serde_json::to_string_pretty(&truth)?,
    )?;
    if let (Some(brokers), Some(topic)) = (&cmd.brokers, &cmd.topic) {
        let producer = harness::producer(brokers)?;
        let mut pending = Vec::new();
        for (i, e) in sim.events.iter().enumerate() {
            pending.push(send(&producer, topic, e)?);
            if i % 1000 == 0 {
                bar.set_position(i as u64);
            }
        }
        harness::wait_delivered(&producer, pending, "simulated event")?;
    }
    bar.finish_and_clear();
    println!(
        "simulated {} positions over {} days: {} events, {} stockouts → {}",
        sim.positions.len(),
        sim.days,
        sim.events.len(),
        sim.stockouts.len(),
        cmd.out.display()
    );
    Ok(())
}

/// Queues one simulated event for `topic` (keyed as the daemon expects).
pub fn send(
    producer: &FutureProducer,
    topic: &str,
    e: &SimEvent,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    harness::send(
        producer,
        topic,
        Some(e.key.as_bytes()),
        e.payload().as_bytes(),
        "simulated event",
    )
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
            let push = |list: &mut Vec<SimEvent>, ts: i64, key: &str, event: Event| {
                list.push(SimEvent {
                    day,
                    timestamp_ms: ts,
                    key: key.to_string(),
                    event,
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
                    push(
                        &mut day_events,
                        t0 + 7 * 3_600_000,
                        &key,
                        Event::Supply(SupplyEvent::Shipment {
                            shipment_id: o.id.clone(),
                            sku: sku.clone(),
                            location: location.clone(),
                            quantity,
                            direction: Direction::Inbound,
                            status: ShipmentStatus::Delivered,
                            expected_arrival_ms: START_MS
                                + o.due_day as i64 * DAY_MS
                                + 12 * 3_600_000,
                            timestamp_ms: t0 + 7 * 3_600_000,
                        }),
                    );
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
                        Event::Supply(SupplyEvent::SupplierDelay {
                            supplier: format!("plant-supplier-{}", p % 7),
                            sku: sku.clone(),
                            location: location.clone(),
                            delay_hours: ((o.arrival_day - o.due_day) * 24) as f64,
                            new_expected_arrival_ms: START_MS
                                + o.arrival_day as i64 * DAY_MS
                                + 7 * 3_600_000,
                            timestamp_ms: t0 + 8 * 3_600_000,
                        }),
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
                        Event::User(UserEvent {
                            quantity: Some(take),
                            location: Some(location.clone()),
                            ..UserEvent::new(EventType::Purchase, &user, &sku, ts)
                        }),
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
                        Event::Supply(SupplyEvent::Shipment {
                            shipment_id: order.id.clone(),
                            sku: sku.clone(),
                            location: location.clone(),
                            quantity,
                            direction: Direction::Inbound,
                            status: ShipmentStatus::Created,
                            expected_arrival_ms: START_MS
                                + order.due_day as i64 * DAY_MS
                                + 12 * 3_600_000,
                            timestamp_ms: ts,
                        }),
                    );
                    orders.push(order);
                }
            }
            let counted_at = t0 + i64::from(COUNT_HOUR) * 3_600_000;
            push(
                &mut day_events,
                counted_at,
                &key,
                Event::Supply(SupplyEvent::Inventory {
                    sku: sku.clone(),
                    location: location.clone(),
                    on_hand,
                    timestamp_ms: counted_at,
                }),
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
            .all(|(x, y)| x.payload() == y.payload()));
        // Stock moves only by purchases (down) and deliveries (up): replay the counts.
        let mut on_hand: Option<i64> = None;
        let mut expected = 0i64;
        for e in &a.events {
            let v: serde_json::Value = serde_json::from_str(&e.payload()).unwrap();
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
            .filter(|e| e.payload().contains("\"delivered\""))
            .map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.payload()).unwrap()["quantity"]
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
