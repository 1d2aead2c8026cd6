//! Supply-chain events for the tests: a calendar from Monday 2023-01-02 and one SKU × location's
//! purchases, counts and shipments at `plant-1`.

use serde_json::{json, Value};

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
