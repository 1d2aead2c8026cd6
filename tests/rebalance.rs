//! Scaling out through the consumer group: a second instance joins mid-stream and takes over some
//! partitions. The first instance flushes and commits what it applied before releasing them, so the
//! second starts exactly where the first stopped: across both stores, every user's event count equals
//! the events sent, and every event is answered.

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
    // A first: its partitions go to B, which resumes from A's commits and finds nothing left to do.
    assert!(a.stop().success());
    assert!(b.stop().success());

    let store_a = longmem::memory::Store::open(&dir_a.path().join("store"), 1 << 24).unwrap();
    let store_b = longmem::memory::Store::open(&dir_b.path().join("store"), 1 << 24).unwrap();
    let users_b = store_b.user_count();
    assert!(users_b > 0, "instance B never processed anything");
    for (user, sent) in &sent_per_user {
        let count =
            |s: &longmem::memory::Store| s.user(user).unwrap().map(|m| m.events()).unwrap_or(0);
        assert_eq!(
            count(&store_a) + count(&store_b),
            *sent,
            "user {user}: events applied across both instances"
        );
    }
    eprintln!(
        "users in A's store: {}, in B's store: {users_b}; {} recommendations for {} events",
        store_a.user_count(),
        recs.len(),
        messages.len()
    );
}
