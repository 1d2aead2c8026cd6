//! Bad input on a real broker: a corpus of broken messages interleaved with good events. Each broken
//! message lands on the dead-letter topic with its original bytes, its source and the expected
//! reason; each good event gets its recommendation; the partition keeps moving; the counters, the
//! health probes and `promtool check metrics` agree.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::*;

const TS: i64 = 1_700_000_000_000;

fn click(user: &str, item: &str) -> String {
    format!(r#"{{"event_type":"click","user_id":"{user}","item_id":"{item}","timestamp_ms":{TS}}}"#)
}

/// (what is wrong, key, payload, expected reason)
type BadMessage = (&'static str, Option<Vec<u8>>, Vec<u8>, &'static str);

/// What a bad message's dead letter must say: (what is wrong, reason, original key, payload).
type Expected<'a> = (&'a str, &'a str, Option<Vec<u8>>, Vec<u8>);

/// The daemon's default `limits.max_message_bytes`: what a dead letter keeps of a key or payload.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

fn corpus() -> Vec<BadMessage> {
    let k = |s: &str| Some(s.as_bytes().to_vec());
    let p = |s: &str| s.as_bytes().to_vec();
    let good = click("u1", "50");
    vec![
        ("empty payload", k("u1"), vec![], "empty_payload"),
        (
            "oversize message",
            k("u1"),
            p(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000))),
            "oversize",
        ),
        // Close to the broker's 1 MB limit: its dead letter, in base64, would be over it, and a
        // dead letter the broker refuses stalls the partition. The dead letter keeps the first
        // limits.max_message_bytes bytes and says so.
        (
            "oversize message near the broker's limit",
            k("u1"),
            p(&format!(r#"{{"pad":"{}"}}"#, "x".repeat(900_000))),
            "oversize",
        ),
        (
            "a key of 200,000 bytes",
            Some(vec![b'u'; 200_000]),
            p(&good),
            "key_mismatch",
        ),
        (
            "invalid UTF-8",
            k("u1"),
            vec![b'{', 0xc3, 0x28, b'}'],
            "invalid_utf8",
        ),
        (
            "truncated JSON",
            k("u1"),
            p(&good[..good.len() - 7]),
            "malformed_json",
        ),
        (
            "not JSON at all",
            k("u1"),
            p("click u1 50"),
            "malformed_json",
        ),
        (
            "JSON with trailing garbage",
            k("u1"),
            p(&format!("{good}}}")),
            "malformed_json",
        ),
        (
            "JSON array",
            k("u1"),
            p(&format!("[{good}]")),
            "not_an_object",
        ),
        ("JSON string", k("u1"), p(r#""click""#), "not_an_object"),
        ("missing key", None, p(&good), "missing_key"),
        ("empty key", k(""), p(&good), "empty_key"),
        ("key of another user", k("u2"), p(&good), "key_mismatch"),
        (
            "unknown event type",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"wishlist","user_id":"u1","item_id":"50","timestamp_ms":{TS}}}"#
            )),
            "unknown_event_type",
        ),
        (
            "no event type",
            k("u1"),
            p(&format!(
                r#"{{"user_id":"u1","item_id":"50","timestamp_ms":{TS}}}"#
            )),
            "missing_field",
        ),
        (
            "missing item id",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"u1","timestamp_ms":{TS}}}"#
            )),
            "missing_field",
        ),
        (
            "missing timestamp",
            k("u1"),
            p(r#"{"event_type":"click","user_id":"u1","item_id":"50"}"#),
            "missing_field",
        ),
        (
            "misspelled field",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"u1","itemid":"50","item_id":"50","timestamp_ms":{TS}}}"#
            )),
            "unknown_field",
        ),
        (
            "numeric user id",
            k("1"),
            p(&format!(
                r#"{{"event_type":"click","user_id":1,"item_id":"50","timestamp_ms":{TS}}}"#
            )),
            "wrong_type",
        ),
        (
            "timestamp as text",
            k("u1"),
            p(
                r#"{"event_type":"click","user_id":"u1","item_id":"50","timestamp_ms":"2023-11-14"}"#,
            ),
            "wrong_type",
        ),
        (
            "null item id",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"u1","item_id":null,"timestamp_ms":{TS}}}"#
            )),
            "wrong_type",
        ),
        (
            "blank item id",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"u1","item_id":"  ","timestamp_ms":{TS}}}"#
            )),
            "invalid_value",
        ),
        (
            "control characters in id",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"u1","item_id":"a\u0007b","timestamp_ms":{TS}}}"#
            )),
            "forbidden_character",
        ),
        (
            "right-to-left override in the user id (the key carries it too)",
            k("b1\u{202e}"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"b1\u202e","item_id":"50","timestamp_ms":{TS}}}"#
            )),
            "forbidden_character",
        ),
        (
            "zero-width space in the user id, raw UTF-8",
            k("b\u{200b}1"),
            p(&format!(
                "{{\"event_type\":\"click\",\"user_id\":\"b\u{200b}1\",\"item_id\":\"50\",\"timestamp_ms\":{TS}}}"
            )),
            "forbidden_character",
        ),
        (
            "user id given twice (the last one matches the key)",
            k("b2"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"b1","item_id":"50","timestamp_ms":{TS},"user_id":"b2"}}"#
            )),
            "duplicate_field",
        ),
        (
            "event type given twice",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"u1","item_id":"50","timestamp_ms":{TS},"event_type":"purchase"}}"#
            )),
            "duplicate_field",
        ),
        (
            "byte-order mark before the JSON",
            k("u1"),
            [&[0xef, 0xbb, 0xbf][..], good.as_bytes()].concat(),
            "byte_order_mark",
        ),
        (
            "absurdly long id",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"click","user_id":"u1","item_id":"{}","timestamp_ms":{TS}}}"#,
                "9".repeat(500)
            )),
            "invalid_value",
        ),
        (
            "negative quantity",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"purchase","user_id":"u1","item_id":"50","timestamp_ms":{TS},"quantity":-3}}"#
            )),
            "out_of_range",
        ),
        (
            "zero quantity",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"purchase","user_id":"u1","item_id":"50","timestamp_ms":{TS},"quantity":0}}"#
            )),
            "out_of_range",
        ),
        (
            "negative price",
            k("u1"),
            p(&format!(
                r#"{{"event_type":"purchase","user_id":"u1","item_id":"50","timestamp_ms":{TS},"price":-1.5}}"#
            )),
            "out_of_range",
        ),
        (
            "negative stock on hand",
            k("sku1@dc1"),
            p(&format!(
                r#"{{"event_type":"inventory","sku":"sku1","location":"dc1","on_hand":-5,"timestamp_ms":{TS}}}"#
            )),
            "out_of_range",
        ),
        (
            "shipment with unknown direction",
            k("sku1@dc1"),
            p(&format!(
                r#"{{"event_type":"shipment","shipment_id":"s1","sku":"sku1","location":"dc1","quantity":5,"direction":"sideways","status":"created","expected_arrival_ms":{TS},"timestamp_ms":{TS}}}"#
            )),
            "invalid_value",
        ),
        (
            "supplier delay of ten years",
            k("sku1@dc1"),
            p(&format!(
                r#"{{"event_type":"supplier_delay","supplier":"v1","sku":"sku1","location":"dc1","delay_hours":87600,"new_expected_arrival_ms":{TS},"timestamp_ms":{TS}}}"#
            )),
            "out_of_range",
        ),
        (
            "timestamp in the year 2100",
            k("u1"),
            p(
                r#"{"event_type":"click","user_id":"u1","item_id":"50","timestamp_ms":4102444800000}"#,
            ),
            "timestamp_in_future",
        ),
        (
            "timestamp in seconds, not ms",
            k("u1"),
            p(r#"{"event_type":"click","user_id":"u1","item_id":"50","timestamp_ms":1700000000}"#),
            "timestamp_too_old",
        ),
        (
            "negative timestamp",
            k("u1"),
            p(r#"{"event_type":"click","user_id":"u1","item_id":"50","timestamp_ms":-1}"#),
            "timestamp_too_old",
        ),
    ]
}

#[test]
fn every_bad_message_lands_on_the_dead_letter_topic_with_its_reason() {
    let corpus = corpus();
    assert!(corpus.len() >= 20);
    let broker = Broker::start();
    // One partition: the bad messages sit between good ones on the same partition, which must keep moving.
    let topics = Topics::create(&broker, "badinput", 1);
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics_addr) = write_config(dir.path(), &broker, &topics, "badinput-group", 16);

    let mut messages = Vec::new();
    let mut expected_bad: HashMap<i64, Expected> = HashMap::new();
    let mut good = 0;
    for (n, (what, key, payload, reason)) in corpus.iter().enumerate() {
        for _ in 0..3 {
            let user = format!("user{}", good % 7);
            messages.push((
                Some(user.clone().into_bytes()),
                click(&user, &(1 + good % 40).to_string()).into_bytes(),
            ));
            good += 1;
        }
        expected_bad.insert(
            messages.len() as i64,
            (*what, *reason, key.clone(), payload.clone()),
        );
        messages.push((key.clone(), payload.clone()));
        if n == corpus.len() - 1 {
            messages.push((Some(b"user0".to_vec()), click("user0", "7").into_bytes()));
            good += 1;
        }
    }
    // Valid supply-chain events are accepted (and answered by the alert path of a later issue, not here).
    let supply = format!(
        r#"{{"event_type":"inventory","sku":"sku1","location":"dc1","on_hand":5,"timestamp_ms":{TS}}}"#
    );
    messages.push((Some(b"sku1@dc1".to_vec()), supply.into_bytes()));

    let mut daemon = Daemon::start(&config);
    wait_for("/readyz to answer 200", Duration::from_secs(60), || {
        http_get(&metrics_addr, "/readyz").filter(|(code, _)| *code == 200)
    });
    broker.produce(&topics.input, &messages);

    let dead = broker.read_until(&topics.dead_letter, Duration::from_secs(60), |r| {
        r.len() >= corpus.len()
    });
    let recs = broker.read_until(&topics.recommendations, Duration::from_secs(60), |r| {
        r.len() >= good
    });
    assert!(daemon.is_running(), "bad input must not stop the daemon");

    let dl_schema = schema("dead_letter");
    let rec_schema = schema("recommendation");
    let b64 = base64::engine::general_purpose::STANDARD;
    assert_eq!(
        dead.len(),
        corpus.len(),
        "exactly one dead letter per bad message"
    );
    for d in &dead {
        let v = d.json();
        assert!(
            dl_schema.is_valid(&v),
            "dead letter does not match its schema: {v}"
        );
        let offset = v["source"]["offset"].as_i64().unwrap();
        let (what, reason, original_key, payload) = expected_bad
            .get(&offset)
            .unwrap_or_else(|| panic!("a good event went to the dead-letter topic: {v}"));
        assert_eq!(v["reason"], *reason, "{what}: {}", v["detail"]);
        assert_eq!(v["source"]["topic"], topics.input.as_str());
        assert!(!v["detail"].as_str().unwrap().is_empty());
        let kept = payload.len().min(MAX_MESSAGE_BYTES);
        assert_eq!(
            &b64.decode(v["payload_base64"].as_str().unwrap()).unwrap(),
            &payload[..kept],
            "{what}: original bytes"
        );
        assert_eq!(v["payload_truncated"], payload.len() > kept, "{what}");
        assert_eq!(v["payload_bytes"], payload.len(), "{what}");
        // The key is kept like the payload, in the document and as the dead letter's Kafka key.
        let kept_key = original_key
            .as_ref()
            .map(|k| k[..k.len().min(MAX_MESSAGE_BYTES)].to_vec());
        let documented = v["key_base64"].as_str().map(|k| b64.decode(k).unwrap());
        assert_eq!(documented, kept_key, "{what}: original key");
        assert_eq!(d.key, kept_key, "{what}: the dead letter's Kafka key");
        let key_cut = original_key
            .as_ref()
            .is_some_and(|k| k.len() > MAX_MESSAGE_BYTES);
        assert_eq!(v["key_truncated"], key_cut, "{what}");
    }
    assert_eq!(recs.len(), good, "one recommendation per good user event");
    for r in &recs {
        let v = r.json();
        assert!(
            rec_schema.is_valid(&v),
            "recommendation does not match its schema: {v}"
        );
        assert!(!expected_bad.contains_key(&v["source"]["offset"].as_i64().unwrap()));
        assert!(!v["items"].as_array().unwrap().is_empty());
    }

    // The counters agree with what landed, and the exposition passes promtool. The lag comes with
    // librdkafka's statistics (every 5 s), possibly after the last counter on a loaded machine.
    let page = wait_for(
        "the reject counters and the consumer lag to be exported",
        Duration::from_secs(30),
        || {
            let (code, body) = http_get(&metrics_addr, "/metrics")?;
            (code == 200
                && body.contains("longmem_events_consumed_total{type=\"inventory\"} 1")
                && body.contains("longmem_consumer_lag_messages"))
            .then_some(body)
        },
    );
    let mut per_reason: HashMap<&str, usize> = HashMap::new();
    for (_, _, _, reason) in &corpus {
        *per_reason.entry(reason).or_default() += 1;
    }
    for (reason, n) in per_reason {
        let line = format!("longmem_events_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(page.contains(&line), "missing `{line}` in /metrics");
    }
    assert!(page.contains(&format!(
        "longmem_events_consumed_total{{type=\"click\"}} {good}"
    )));
    for name in [
        "longmem_batch_size_events_bucket",
        "longmem_inference_duration_seconds_bucket",
        "longmem_end_to_end_latency_seconds_bucket",
        "longmem_daemon_latency_seconds_bucket",
        "longmem_consumer_lag_messages",
        "longmem_store_size_bytes",
        "longmem_model_info{name=\"sasrec-ml100k\"",
        "longmem_execution_provider_info{provider=\"cpu\"} 1",
        "longmem_assigned_partitions 1",
    ] {
        assert!(page.contains(name), "missing {name} in /metrics:\n{page}");
    }
    let promtool = Command::new(tool("LONGMEM_PROMTOOL", ".tools/bin/promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    use std::io::Write;
    promtool
        .stdin
        .as_ref()
        .unwrap()
        .write_all(page.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(http_get(&metrics_addr, "/healthz").unwrap().0, 200);
    assert!(daemon.stop().success());
}
