//! Supply-chain events for the tests: a calendar from Monday 2023-01-02 and one SKU × location's
//! purchases, counts and shipments at `plant-1`.

use std::time::Duration;

use serde_json::{json, Value};

use super::{wait_for, Broker, Reader, Record, Topics};

/// Monday 2023-01-02 00:00 UTC.
pub const BASE: i64 = 1_672_617_600_000;
pub const DAY: i64 = 86_400_000;
pub const HOUR: i64 = 3_600_000;

pub fn at(day: i64, hour: i64) -> i64 {
    BASE + day * DAY + hour * HOUR
}

pub fn msg(key: &str, doc: Value) -> (Option<Vec<u8>>, Vec<u8>) {
    (Some(key.as_bytes().to_vec()), doc.to_string().into_bytes())
}

pub fn purchase(user: &str, sku: &str, qty: i64, ts: i64) -> (Option<Vec<u8>>, Vec<u8>) {
    msg(
        user,
        json!({"event_type": "purchase", "user_id": user, "item_id": sku, "timestamp_ms": ts,
               "quantity": qty, "location": "plant-1"}),
    )
}

pub fn inventory(sku: &str, on_hand: i64, ts: i64) -> (Option<Vec<u8>>, Vec<u8>) {
    msg(
        &format!("{sku}@plant-1"),
        json!({"event_type": "inventory", "sku": sku, "location": "plant-1", "on_hand": on_hand, "timestamp_ms": ts}),
    )
}

pub fn shipment(
    sku: &str,
    id: &str,
    qty: i64,
    status: &str,
    arrival: i64,
    ts: i64,
) -> (Option<Vec<u8>>, Vec<u8>) {
    msg(
        &format!("{sku}@plant-1"),
        json!({"event_type": "shipment", "shipment_id": id, "sku": sku, "location": "plant-1", "quantity": qty,
               "direction": "inbound", "status": status, "expected_arrival_ms": arrival, "timestamp_ms": ts}),
    )
}

/// Plays a supply chain one day at a time: three distributors buy each SKU (less at weekends), and
/// once the daemon has answered those purchases (so their forwarded demand is in the partition
/// first), the day's supply-chain events follow.
pub struct Days<'a> {
    broker: &'a Broker,
    input: String,
    skus: Vec<&'static str>,
    reader: Reader,
    answered: Vec<Record>,
    purchases: usize,
}

impl<'a> Days<'a> {
    pub fn new(broker: &'a Broker, topics: &Topics, skus: &[&'static str]) -> Days<'a> {
        Days {
            broker,
            input: topics.input.clone(),
            skus: skus.to_vec(),
            reader: broker.reader(&topics.recommendations),
            answered: Vec::new(),
            purchases: 0,
        }
    }

    pub fn play(&mut self, day: i64, supply: Vec<(Option<Vec<u8>>, Vec<u8>)>) {
        let weekend = matches!(day % 7, 5 | 6);
        let units = if weekend { 4 } else { 10 };
        let mut batch = Vec::new();
        for (n, user) in ["u1", "u2", "u3"].iter().enumerate() {
            for (k, sku) in self.skus.iter().enumerate() {
                batch.push(purchase(user, sku, units, at(day, 9 + (n + k) as i64)));
            }
        }
        self.purchases += batch.len();
        self.broker.produce(&self.input, &batch);
        let (reader, answered, purchases) = (&mut self.reader, &mut self.answered, self.purchases);
        wait_for(
            "the day's purchases to be answered",
            Duration::from_secs(60),
            || {
                reader.poll_into(answered, Duration::from_millis(100));
                (answered.len() >= purchases).then_some(())
            },
        );
        self.broker.produce(&self.input, &supply);
    }

    /// Purchases produced so far.
    pub fn purchases(&self) -> usize {
        self.purchases
    }
}
