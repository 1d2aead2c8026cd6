//! The JSON Schemas in `schemas/` and the Rust types agree: every schema example and every fixture is
//! judged the same way by the schema (with a JSON Schema 2020-12 validator) and by `event::decode`,
//! and what the Rust output types serialize to is valid under the output schemas.

mod common;

use common::{repo, schema};
use longmem::config::LimitsConfig;
use longmem::event::{
    self, DeadLetter, Event, InMessage, ModelRef, Recommendation, Rejection, ScoredItem, SourceRef,
    SupplyEvent,
};
use longmem::supply::{Alert, AlertKind, Evidence, Severity};

const NOW: i64 = 1_763_900_000_000;
const INPUTS: [&str; 6] = [
    "click",
    "purchase",
    "inventory",
    "shipment",
    "supplier_delay",
    "demand",
];
const OUTPUTS: [&str; 3] = ["recommendation", "alert", "dead_letter"];

fn decode(doc: &serde_json::Value) -> Result<Event, Rejection> {
    // Key the message the way a correct producer would, so only the document itself is judged.
    let key = match doc["event_type"].as_str() {
        Some("click" | "purchase") => doc["user_id"].as_str().unwrap_or("k").to_string(),
        _ => format!(
            "{}@{}",
            doc["sku"].as_str().unwrap_or(""),
            doc["location"].as_str().unwrap_or("")
        ),
    };
    let msg = InMessage {
        topic: "events".into(),
        partition: 0,
        offset: 0,
        key: Some(key.into_bytes()),
        payload: Some(serde_json::to_vec(doc).unwrap()),
        kafka_timestamp_ms: Some(NOW),
    };
    event::decode(&msg, &LimitsConfig::default(), NOW)
}

#[test]
fn every_schema_is_2020_12_and_its_examples_are_valid() {
    for name in INPUTS.iter().chain(&OUTPUTS) {
        let text = std::fs::read_to_string(repo().join(format!("schemas/{name}.json"))).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            doc["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        let examples = doc["examples"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has no examples"));
        assert!(!examples.is_empty(), "{name}");
        let validator = schema(name);
        for example in examples {
            let errors: Vec<String> = validator
                .iter_errors(example)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{name} example {example}: {errors:?}");
        }
    }
}

#[test]
fn input_examples_decode_as_their_event_type() {
    for name in INPUTS {
        let text = std::fs::read_to_string(repo().join(format!("schemas/{name}.json"))).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        for example in doc["examples"].as_array().unwrap() {
            let event =
                decode(example).unwrap_or_else(|r| panic!("{name} example rejected: {r:?}"));
            assert_eq!(event.event_type().as_str(), name);
        }
    }
}

#[test]
fn schema_and_decoder_agree_on_every_fixture() {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/events.jsonl")).unwrap();
    let mut checked = 0;
    for line in text.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = row["schema"].as_str().unwrap();
        let doc = &row["event"];
        let by_schema = schema(name).is_valid(doc);
        let by_decoder = decode(doc);
        if row["valid"].as_bool().unwrap() {
            assert!(by_schema, "schema {name} rejects a valid fixture: {doc}");
            let e = by_decoder
                .unwrap_or_else(|r| panic!("decoder rejects a valid fixture {doc}: {r:?}"));
            assert_eq!(e.event_type().as_str(), name);
        } else {
            assert!(
                !by_schema,
                "schema {name} accepts an invalid fixture: {doc}"
            );
            let r = by_decoder.expect_err(&format!("decoder accepts an invalid fixture: {doc}"));
            assert_eq!(
                r.reason.as_str(),
                row["reason"].as_str().unwrap(),
                "{doc}: {}",
                r.detail
            );
        }
        checked += 1;
    }
    assert!(checked >= 25);
}

#[test]
fn rust_outputs_match_the_output_schemas() {
    let source = SourceRef {
        topic: "longmem.events".into(),
        partition: 2,
        offset: 41,
    };
    let rec = Recommendation {
        user_id: "196".into(),
        items: vec![ScoredItem {
            item_id: "50".into(),
            score: 3.5,
        }],
        model: ModelRef {
            name: "sasrec-ml100k".into(),
            version: "1".into(),
        },
        source: source.clone(),
        event_type: longmem::event::EventType::Purchase,
        event_timestamp_ms: 881_250_949_000,
        ingest_timestamp_ms: NOW,
        emitted_at_ms: NOW + 3,
    };
    let v = serde_json::to_value(&rec).unwrap();
    assert!(schema("recommendation").is_valid(&v), "{v}");

    // A dead letter for each reason, including a message without key or payload.
    let validator = schema("dead_letter");
    for payload in [
        None,
        Some(vec![0xff, 0xfe]),
        Some(b"{\"event_type\":\"x\"}".to_vec()),
    ] {
        let msg = InMessage {
            topic: source.topic.clone(),
            partition: 0,
            offset: 9,
            key: None,
            payload,
            kafka_timestamp_ms: None,
        };
        let rejection = event::decode(&msg, &LimitsConfig::default(), NOW).unwrap_err();
        let v = serde_json::to_value(DeadLetter::new(&msg, rejection, NOW)).unwrap();
        assert!(validator.is_valid(&v), "{v}");
    }
    // Alerts of every kind, with and without an expected stockout and a next arrival.
    let validator = schema("alert");
    for (kind, stockout, arrival) in [
        (AlertKind::StockoutRisk, Some(NOW + 86_400_000), None),
        (
            AlertKind::SupplyRisk,
            Some(NOW + 3_600_000),
            Some(NOW + 7 * 86_400_000),
        ),
        (AlertKind::Resolved, None, Some(NOW)),
    ] {
        let alert = Alert {
            alert_id: format!("SOS001L12P@plant-1903#stockout#{NOW}"),
            kind,
            severity: Severity::Warning,
            sku: "SOS001L12P".into(),
            location: "plant-1903".into(),
            probability: 0.62,
            expected_stockout_ms: stockout,
            evidence: Evidence {
                on_hand: 420,
                inbound: 0,
                next_arrival_ms: arrival,
                forecast_quantiles: [("p05".to_string(), 310.5), ("p50".to_string(), 480.0)]
                    .into_iter()
                    .collect(),
                horizon_hours: 120.0,
            },
            suggested_reorder_qty: 800,
            model: ModelRef {
                name: "demand-supplygraph".into(),
                version: "1".into(),
            },
            source: source.clone(),
            event_timestamp_ms: NOW - 5,
            emitted_at_ms: NOW,
        };
        let v = serde_json::to_value(&alert).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{v}: {errors:?}");
    }

    // The demand record the daemon forwards decodes as one and is valid under its schema.
    let demand = SupplyEvent::Demand {
        sku: "50".into(),
        location: "store-7".into(),
        quantity: 2,
        timestamp_ms: NOW - 10,
        source: source.clone(),
    };
    let v = serde_json::to_value(&demand).unwrap();
    assert!(schema("demand").is_valid(&v), "{v}");
    assert_eq!(decode(&v).unwrap(), Event::Supply(demand));

    for reason in longmem::event::RejectReason::ALL {
        let v = serde_json::to_value(reason).unwrap();
        let text = std::fs::read_to_string(repo().join("schemas/dead_letter.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            doc["properties"]["reason"]["enum"]
                .as_array()
                .unwrap()
                .contains(&v),
            "reason {v} is missing from schemas/dead_letter.json"
        );
    }
}
