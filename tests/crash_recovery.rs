//! Durability on a real broker: SIGKILL the daemon in the middle of a stream, restart it, and check
//! that every event was applied to the stored state exactly once and answered at least once.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

#[test]
fn sigkill_mid_stream_loses_nothing_and_applies_each_event_once() {
    let broker = Broker::start();
    let topics = Topics::create(&broker, "crash", 4);
    let dir = tempfile::tempdir().unwrap();
    // Small batches: many commit points, so the kill lands between and inside them.
    let (config, _) = write_config(dir.path(), &broker, &topics, "crash-group", 32);

    let messages = movielens_messages(12_000);
    let sent_per_user = events_per_user(&messages);

    // The first third is waiting when the daemon starts; the rest arrives while it runs and crashes.
    let (first, rest) = messages.split_at(4_000);
    broker.produce(&topics.input, first);
    let daemon = Daemon::start(&config);
    let mut reader = broker.reader(&topics.recommendations);
    let mut recs = Vec::new();
    wait_for("the first recommendations", Duration::from_secs(60), || {
        reader.poll_into(&mut recs, Duration::from_millis(100));
        (recs.len() >= 500).then_some(())
    });
    let producer = broker.producer();
    let (before_kill, after_kill) = rest.split_at(4_000);
    produce_with(&producer, &topics.input, before_kill);
    daemon.kill9();
    reader.poll_into(&mut recs, Duration::from_millis(500));
    let answered_before_restart = recs.len();
    assert!(
        answered_before_restart < messages.len(),
        "the daemon finished everything before it was killed; the test did not crash it mid-stream"
    );
    produce_with(&producer, &topics.input, after_kill);

    let daemon = Daemon::start(&config);
    let schema = schema("recommendation");
    let sources: HashSet<(i64, i64)> =
        wait_for("an answer to every event", Duration::from_secs(120), || {
            reader.poll_into(&mut recs, Duration::from_millis(200));
            let seen = answered_sources(&recs);
            (seen.len() >= messages.len()).then_some(seen)
        });
    assert!(
        daemon.stop().success(),
        "the daemon exits cleanly on SIGTERM"
    );

    // Every event has at least one output, and every output is a valid recommendation.
    assert_eq!(sources.len(), messages.len());
    for r in &recs {
        let v = r.json();
        assert!(schema.is_valid(&v), "invalid recommendation: {v}");
        assert_eq!(
            r.key.as_deref(),
            Some(v["user_id"].as_str().unwrap().as_bytes())
        );
    }
    let repeats = recs.len() - sources.len();
    eprintln!(
        "{} events, {} recommendations ({repeats} repeated after the crash), {answered_before_restart} answered before the kill",
        messages.len(),
        recs.len()
    );

    // Every user's stored event count equals what was sent: each event applied exactly once.
    assert_each_event_applied_once(&dir.path().join("store"), &sent_per_user);
}
