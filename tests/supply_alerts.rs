//! The supply-chain path on a real broker: purchases with a location are forwarded as demand to
//! their SKU × location, days of demand step the forecaster, and inventory alerts follow the
//! lifecycle: raised once, resolved with the same id, raised again with a new one; a supplier delay
//! that pushes the next delivery past the expected stockout raises `supply_risk`; bad supply-chain
//! input lands on the dead-letter topic with its reason.

mod common;

use std::time::Duration;

use common::supply::*;
use common::*;
use serde_json::{json, Value};

#[test]
fn alerts_follow_stock_forecast_and_deliveries() {
    let broker = Broker::start();
    let topics = Topics::create(&broker, "supply", 1);
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics) = write_config(dir.path(), &broker, &topics, "supply-test", 64);
    // The 20:00 counts close their day: alerts are read with the forecast that has taken it in
    // (days without a count still close at the next morning's first event).
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("closing_count_hour = 20\n");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);
    let mut days = Days::new(&broker, &topics, &["A", "B"]);
    let mut day_events = |day: i64, supply| days.play(day, supply);

    for day in 0..14 {
        day_events(
            day,
            vec![
                inventory("A", 10_000, at(day, 20)),
                inventory("B", 10_000, at(day, 20)),
            ],
        );
    }
    // A: 40 units left and nothing inbound; B: 150 left, 3,000 arriving in two days.
    day_events(
        14,
        vec![
            inventory("A", 40, at(14, 20)),
            shipment("B", "po-1", 3_000, "in_transit", at(16, 12), at(14, 19)),
            inventory("B", 150, at(14, 20)),
        ],
    );
    // B's supplier slips the delivery to day 25, after the stock is expected to run out.
    day_events(
        15,
        vec![msg(
            "B@plant-1",
            json!({"event_type": "supplier_delay", "supplier": "vendor-1", "sku": "B", "location": "plant-1",
                   "delay_hours": 216, "new_expected_arrival_ms": at(25, 12), "timestamp_ms": at(15, 8)}),
        )],
    );
    // A is replenished; so, early after all, is B.
    day_events(
        16,
        vec![
            shipment("A", "po-2", 5_000, "delivered", at(16, 12), at(16, 12)),
            shipment("B", "po-1", 3_000, "delivered", at(16, 13), at(16, 13)),
        ],
    );
    day_events(17, vec![]);
    // A runs low again.
    day_events(18, vec![inventory("A", 30, at(18, 20))]);
    // Bad supply-chain input between the good events.
    broker.produce(
        &topics.input,
        &[
            inventory("A", -5, at(18, 21)),
            msg(
                "A@plant-1",
                json!({"event_type": "shipment", "shipment_id": "x", "sku": "A", "location": "plant-1",
                       "direction": "inbound", "status": "created", "expected_arrival_ms": at(20, 0), "timestamp_ms": at(18, 21)}),
            ),
            msg(
                "A@elsewhere",
                json!({"event_type": "supplier_delay", "supplier": "v", "sku": "A", "location": "plant-1",
                       "delay_hours": 1, "new_expected_arrival_ms": at(20, 0), "timestamp_ms": at(18, 21)}),
            ),
            msg(
                "A@plant-1",
                json!({"event_type": "demand", "sku": "A", "location": "plant-1", "quantity": 3,
                       "timestamp_ms": at(18, 21), "source": "somewhere"}),
            ),
            inventory("A", 30, at(18, 22)),
        ],
    );

    let dead = broker.read_until(&topics.dead_letter, Duration::from_secs(60), |r| {
        r.len() >= 4
    });
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|r| r.json()["reason"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "key_mismatch",
            "missing_field",
            "out_of_range",
            "wrong_type"
        ],
        "{dead:?}"
    );

    let alerts = broker.read_until(&topics.alerts, Duration::from_secs(60), |r| {
        let kinds: Vec<Value> = r.iter().map(|m| m.json()).collect();
        let count = |sku: &str, kind: &str| {
            kinds
                .iter()
                .filter(|a| a["sku"] == sku && a["kind"] == kind)
                .count()
        };
        count("A", "stockout_risk") >= 2
            && count("B", "supply_risk") >= 1
            && count("B", "resolved") >= 1
    });
    let validator = schema("alert");
    let docs: Vec<Value> = alerts.iter().map(|r| r.json()).collect();
    for (r, a) in alerts.iter().zip(&docs) {
        assert!(validator.is_valid(a), "{a}");
        let key = format!(
            "{}@{}",
            a["sku"].as_str().unwrap(),
            a["location"].as_str().unwrap()
        );
        assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
    }
    let of = |sku: &str| -> Vec<&Value> { docs.iter().filter(|a| a["sku"] == sku).collect() };

    // A: raised once while low (not once per event), resolved by the delivery with the same id,
    // raised again with a new id when it runs low again.
    let a = of("A");
    let kinds: Vec<&str> = a.iter().map(|x| x["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["stockout_risk", "resolved", "stockout_risk"],
        "{a:#?}"
    );
    assert_eq!(a[0]["alert_id"], a[1]["alert_id"]);
    assert_ne!(a[0]["alert_id"], a[2]["alert_id"]);
    assert!(a[0]["probability"].as_f64().unwrap() >= 0.5, "{}", a[0]);
    // Raised by the closing count itself, after the forecaster stepped on its day.
    assert_eq!(a[0]["event_timestamp_ms"], at(14, 20), "{}", a[0]);
    assert_eq!(a[0]["evidence"]["on_hand"], 40);
    assert!(
        a[0]["suggested_reorder_qty"].as_i64().unwrap() > 0,
        "{}",
        a[0]
    );
    assert!(
        a[0]["expected_stockout_ms"].as_i64().unwrap() > at(14, 20),
        "{}",
        a[0]
    );

    // B: quiet while the delivery was due in time; the delay raises supply_risk (and the stockout
    // risk it implies); the delivery resolves both.
    let b = of("B");
    let raised: Vec<&&Value> = b.iter().filter(|x| x["kind"] != "resolved").collect();
    assert!(
        raised
            .iter()
            .all(|x| x["event_timestamp_ms"].as_i64().unwrap() >= at(15, 8)),
        "{b:#?}"
    );
    let supply = b
        .iter()
        .find(|x| x["kind"] == "supply_risk")
        .expect("supply_risk");
    assert!(
        supply["evidence"]["next_arrival_ms"].as_i64().unwrap() == at(25, 12),
        "{supply}"
    );
    for opened in &raised {
        assert!(
            b.iter()
                .any(|x| x["kind"] == "resolved" && x["alert_id"] == opened["alert_id"]),
            "{} never resolved: {b:#?}",
            opened["alert_id"]
        );
    }

    let (_, body) = http_get(&metrics, "/metrics").expect("metrics");
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let stockout_alerts = docs.iter().filter(|a| a["kind"] == "stockout_risk").count();
    assert_eq!(
        value("longmem_alerts_produced_total{kind=\"stockout_risk\"}") as usize,
        stockout_alerts
    );
    assert_eq!(
        value("longmem_demand_records_forwarded_total") as usize,
        days.purchases()
    );
    drop(daemon);
}
