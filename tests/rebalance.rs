//! Scaling out through the consumer group: a second instance joins mid-stream and takes over some
//! partitions. The first instance writes what it applied before releasing them, and the second
//! restores their memory from the changelog and starts exactly where the first stopped; when the
//! first leaves, the second takes the rest the same way. Every event is answered, and the second
//! instance's store ends with every user's whole history: each event applied once, none lost.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_joining_instance_takes_over_partitions_without_gaps_or_double_counts() {
    let broker = Broker::start();
    let topics = Topics::create(&broker, "rebalance", 4);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (config_a, metrics_a) = write_config(dir_a.path(), &broker, &topics, "rebalance-group", 32);
    let (config_b, metrics_b) = write_config(dir_b.path(), &broker, &topics, "rebalance-group", 32);

    let messages = movielens_messages(9_000);
    let sent_per_user = events_per_user(&messages);
    let (first, rest) = messages.split_at(3_000);
    let (second, third) = rest.split_at(3_000);

    let a = Daemon::start(&config_a);
    broker.produce(&topics.input, first);
    let mut reader = broker.reader(&topics.recommendations);
    let mut recs = Vec::new();
    wait_for(
        "instance A to answer the first events",
        Duration::from_secs(60),
        || {
            reader.poll_into(&mut recs, Duration::from_millis(100));
            (recs.len() >= 1_000).then_some(())
        },
    );

    let b = Daemon::start(&config_b);
    broker.produce(&topics.input, second);
    let assigned = |addr: &str| metric(addr, "longmem_assigned_partitions").map(|v| v as u32);
    wait_for(
        "the group to split the partitions between A and B",
        Duration::from_secs(60),
        || {
            let (a_n, b_n) = (assigned(&metrics_a)?, assigned(&metrics_b)?);
            (a_n > 0 && b_n > 0 && a_n + b_n == 4).then_some(())
        },
    );
    broker.produce(&topics.input, third);

    wait_for("an answer to every event", Duration::from_secs(120), || {
        reader.poll_into(&mut recs, Duration::from_millis(200));
        let seen = answered_sources(&recs);
        (seen.len() >= messages.len()).then_some(())
    });
    // A leaves: B takes its partitions, restores their memory from the changelog and is ready.
    assert!(a.stop().success());
    wait_for(
        "instance B to own every partition and finish restoring",
        Duration::from_secs(60),
        || {
            let ready = http_get(&metrics_b, "/readyz").map(|(code, _)| code) == Some(200);
            (assigned(&metrics_b) == Some(4) && ready).then_some(())
        },
    );
    let restored = metric(&metrics_b, "longmem_changelog_records_restored_total").unwrap_or(0.0);
    assert!(b.stop().success());

    let store_a = longmem::memory::Store::open(&dir_a.path().join("store"), 1 << 24).unwrap();
    let store_b = longmem::memory::Store::open(&dir_b.path().join("store"), 1 << 24).unwrap();
    assert!(
        restored > 0.0,
        "instance B restored nothing from the changelog"
    );
    for (user, sent) in &sent_per_user {
        let events = store_b.user(user).unwrap().map(|m| m.events()).unwrap_or(0);
        assert_eq!(
            events, *sent,
            "user {user}: events in the store of the instance that owns every partition"
        );
    }
    eprintln!(
        "users in A's store: {}, in B's store: {}; {restored} records restored; {} recommendations for {} events",
        store_a.user_count(),
        store_b.user_count(),
        recs.len(),
        messages.len()
    );
}
