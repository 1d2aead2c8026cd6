//! Scaling 1 → 3 → 1 mid-stream on 8 partitions, with one of the three SIGKILLed and its store
//! deleted (a lost machine): the memory follows every partition through the changelog, so the
//! last instance, which ends up owning them all, holds every user's whole history (each event
//! applied once, none lost), and every input offset has an answer (issue 13, 5(b)).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn scaling_out_and_in_with_a_lost_machine_keeps_every_memory() {
    let broker = Broker::start();
    let topics = Topics::create(&broker, "scale", 8);
    let messages = movielens_messages(9_000);
    let sent_per_user = events_per_user(&messages);
    let (first, rest) = messages.split_at(3_000);
    let (second, third) = rest.split_at(3_000);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<(std::path::PathBuf, String)> = dirs
        .iter()
        .map(|d| write_config(d.path(), &broker, &topics, "scale", 64))
        .collect();
    let assigned = |i: usize| {
        metric(&configs[i].1, "longmem_assigned_partitions")
            .map(|v| v as u32)
            .unwrap_or(0)
    };
    let ready = |i: usize| http_get(&configs[i].1, "/readyz").map(|(code, _)| code) == Some(200);
    let mut reader = broker.reader(&topics.recommendations);
    let mut recs = Vec::new();
    let mut answered = |n: usize, what: &str| {
        wait_for(what, Duration::from_secs(180), || {
            reader.poll_into(&mut recs, Duration::from_millis(200));
            (answered_sources(&recs).len() >= n).then_some(())
        })
    };

    // One instance.
    let a = Daemon::start(&configs[0].0);
    broker.produce(&topics.input, first);
    answered(first.len(), "instance A to answer the first third");

    // Three.
    let b = Daemon::start(&configs[1].0);
    let c = Daemon::start(&configs[2].0);
    wait_for(
        "the group to spread the partitions over three instances",
        Duration::from_secs(90),
        || {
            let n = [assigned(0), assigned(1), assigned(2)];
            (n.iter().all(|&k| k > 0) && n.iter().sum::<u32>() == 8).then_some(())
        },
    );
    // Produced once all three own partitions, so that each of them applies some of it.
    broker.produce(&topics.input, second);
    answered(first.len() + second.len(), "the second third answered");

    // C's machine is lost with its disk; B is scaled in. A takes everything back.
    c.kill9();
    std::fs::remove_dir_all(dirs[2].path().join("store")).unwrap();
    assert!(b.stop().success());
    broker.produce(&topics.input, third);
    answered(messages.len(), "every event answered");
    wait_for(
        "instance A to own every partition, restored",
        Duration::from_secs(90),
        || (assigned(0) == 8 && ready(0)).then_some(()),
    );
    let restored = metric(&configs[0].1, "longmem_changelog_records_restored_total").unwrap_or(0.0);
    assert!(a.stop().success());

    assert_eq!(answered_sources(&recs).len(), messages.len());
    assert!(restored > 0.0, "instance A restored nothing");
    let store = longmem::memory::Store::open(&dirs[0].path().join("store"), 1 << 24).unwrap();
    for (user, sent) in &sent_per_user {
        let events = store.user(user).unwrap().map(|m| m.events()).unwrap_or(0);
        assert_eq!(
            events, *sent,
            "user {user}: events in the last instance's store"
        );
    }
    eprintln!(
        "{} users, {} events, {} recommendations; {restored} records restored by the last instance",
        sent_per_user.len(),
        messages.len(),
        recs.len()
    );
}
