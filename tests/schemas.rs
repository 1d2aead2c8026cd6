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
        polled_at_ms: NOW,
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
    fields_agree("recommendation", &[v]);

    // A dead letter for each reason, including a message without key or payload.
    let validator = schema("dead_letter");
    let mut dead_letters = Vec::new();
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
            polled_at_ms: NOW,
        };
        let rejection = event::decode(&msg, &LimitsConfig::default(), NOW).unwrap_err();
        let v = serde_json::to_value(DeadLetter::new(&msg, rejection, NOW, 1024)).unwrap();
        assert!(validator.is_valid(&v), "{v}");
        dead_letters.push(v);
    }
    fields_agree("dead_letter", &dead_letters);
    // Alerts of every kind, with and without an expected stockout and a next arrival.
    let validator = schema("alert");
    let mut alerts = Vec::new();
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
        alerts.push(v);
    }
    fields_agree("alert", &alerts);

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

/// Field by field, a schema and what the Rust type writes agree, at every level of nesting: the
/// schema's properties are the fields the type can write (over `written`, values of that type), and
/// its required fields are those the type always writes (less those the schema gives a default,
/// which the decoder fills in).
fn fields_agree(name: &str, written: &[serde_json::Value]) {
    let text = std::fs::read_to_string(repo().join(format!("schemas/{name}.json"))).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let objects: Vec<&serde_json::Value> = written.iter().collect();
    check_level(name, &doc, &objects);
}

fn check_level(path: &str, schema: &serde_json::Value, objects: &[&serde_json::Value]) {
    use std::collections::BTreeSet;
    let Some(properties) = schema["properties"].as_object() else {
        return; // a map (such as forecast_quantiles) or a scalar: no named fields
    };
    assert!(!objects.is_empty(), "{path}: no values to compare with");
    let declared: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let maps: Vec<&serde_json::Map<String, serde_json::Value>> = objects
        .iter()
        .map(|o| {
            o.as_object()
                .unwrap_or_else(|| panic!("{path}: the type writes {o}, not an object"))
        })
        .collect();
    let sometimes: BTreeSet<&str> = maps
        .iter()
        .flat_map(|m| m.keys().map(String::as_str))
        .collect();
    let always: BTreeSet<&str> = sometimes
        .iter()
        .copied()
        .filter(|k| maps.iter().all(|m| m.contains_key(*k)))
        .filter(|k| properties[*k].get("default").is_none())
        .collect();
    assert_eq!(
        declared, sometimes,
        "{path}: the schema's properties (left) are not the fields the Rust type writes (right)"
    );
    assert_eq!(
        required, always,
        "{path}: the schema's required fields (left) are not the fields the Rust type always writes (right)"
    );
    for (field, sub) in properties {
        let values: Vec<&serde_json::Value> = maps
            .iter()
            .filter_map(|m| m.get(field))
            .filter(|v| !v.is_null())
            .collect();
        if sub["type"] == "array" {
            let items: Vec<&serde_json::Value> = values
                .iter()
                .filter_map(|v| v.as_array())
                .flatten()
                .collect();
            check_level(&format!("{path}.{field}[]"), &sub["items"], &items);
        } else {
            check_level(&format!("{path}.{field}"), sub, &values);
        }
    }
}

/// Each input schema's fields, one by one, are what the decoder and the Rust event types know:
/// every example field merged into one document decodes and serialises back to that same document;
/// the required fields alone do too; and leaving out any required field is a reject.
#[test]
fn input_schemas_and_event_types_agree_field_by_field() {
    for name in INPUTS {
        let text = std::fs::read_to_string(repo().join(format!("schemas/{name}.json"))).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut full = serde_json::Map::new();
        for example in doc["examples"].as_array().unwrap() {
            for (k, v) in example.as_object().unwrap() {
                full.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let required: Vec<&str> = doc["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let minimal: serde_json::Map<String, serde_json::Value> = full
            .iter()
            .filter(|(k, _)| required.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut written = Vec::new();
        for document in [&full, &minimal] {
            let document = serde_json::Value::Object(document.clone());
            let event =
                decode(&document).unwrap_or_else(|r| panic!("{name}: {document} rejected: {r:?}"));
            let back = serde_json::to_value(&event).unwrap();
            // What the decoder fills in for an absent field is the schema's `default`.
            let mut expected = document.as_object().unwrap().clone();
            for (k, p) in doc["properties"].as_object().unwrap() {
                if let Some(default) = p.get("default") {
                    expected.entry(k.clone()).or_insert_with(|| default.clone());
                }
            }
            let expected = serde_json::Value::Object(expected);
            assert!(
                same_json(&back, &expected),
                "{name}: decoded and written back as {back}, not {expected}"
            );
            written.push(back);
        }
        fields_agree(name, &written);
        for field in &required {
            let mut missing = full.clone();
            missing.remove(*field);
            let document = serde_json::Value::Object(missing);
            assert!(
                decode(&document).is_err(),
                "{name}: accepted without required `{field}`: {document}"
            );
        }
    }
}

/// JSON equality where `72` and `72.0` are the same number.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
