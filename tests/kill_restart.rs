//! The worst day, repeated: under a steady stream (about 1,000 events/s over 300 users, keyed by
//! user, 4 partitions), SIGKILL the daemon once it has its partitions back and is answering, start
//! it again, twenty times. Each life must make progress (the stall of issue 17 stopped consumption
//! for good after about the 7th kill), and at the end every input offset has an output and every
//! user's stored count equals what was sent: nothing lost, nothing applied twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

const KILLS: usize = 20;
const USERS: usize = 300;
const EVENTS_PER_SECOND: u64 = 1_000;

/// What the paced producer sent: each event's (partition, offset) and each user's count.
struct Sent {
    offsets: HashSet<(i64, i64)>,
    per_user: HashMap<String, u64>,
}

/// Produces click events on real MovieLens items at `EVENTS_PER_SECOND` until `stop`.
fn paced_producer(producer: FutureProducer, topic: String, stop: Arc<AtomicBool>) -> Sent {
    let items: Vec<String> = movielens_messages(5_000)
        .into_iter()
        .map(|(_, payload)| {
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            v["item_id"].as_str().unwrap().to_string()
        })
        .collect();
    let started = Instant::now();
    let mut deliveries = Vec::new();
    let mut per_user: HashMap<String, u64> = HashMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = started.elapsed().as_millis() as u64 * EVENTS_PER_SECOND / 1000;
        while n < due {
            let user = format!("u{}", (n * 7919) % USERS as u64);
            let payload = serde_json::json!({
                "event_type": "click",
                "user_id": user,
                "item_id": items[(n as usize * 31) % items.len()],
                "timestamp_ms": longmem::pipeline::now_ms(),
            })
            .to_string();
            let record = FutureRecord::to(&topic).key(&user).payload(&payload);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            *per_user.entry(user).or_default() += 1;
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = producer.flush(Duration::from_secs(30));
    let offsets = futures::executor::block_on(futures::future::join_all(deliveries))
        .into_iter()
        .map(|d| {
            let delivery = d.unwrap().map_err(|(e, _)| e).unwrap();
            (delivery.partition as i64, delivery.offset)
        })
        .collect();
    Sent { offsets, per_user }
}

#[test]
fn twenty_kills_under_load_lose_nothing_apply_nothing_twice_and_never_stall() {
    let broker = Broker::start();
    let topics = Topics::create(&broker, "kills", 4);
    let dir = tempfile::tempdir().unwrap();
    let (config, metrics) = write_config(dir.path(), &broker, &topics, "kills-group", 64);
    // Static membership, as docs/operations.md recommends: a restart takes its partitions back
    // without waiting for the killed member's session to expire.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[kafka.consumer]",
        "instance_id = \"kills-0\"\n[kafka.consumer]",
    );
    std::fs::write(&config, text).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let producing = {
        let (producer, topic, stop) = (broker.producer(), topics.input.clone(), stop.clone());
        std::thread::spawn(move || paced_producer(producer, topic, stop))
    };

    let mut restart_to_output = Vec::new();
    for kill in 1..=KILLS {
        let started = Instant::now();
        let daemon = Daemon::start(&config);
        wait_for(
            &format!("life {kill}: all 4 partitions assigned"),
            Duration::from_secs(60),
            || (metric(&metrics, "longmem_assigned_partitions")? == 4.0).then_some(()),
        );
        // A few seconds of work in this life: at 1,000 events/s, 1,500 answers.
        wait_for(
            &format!("life {kill}: 1,500 recommendations (the stall of issue 17 stops here)"),
            Duration::from_secs(90),
            || {
                let answered = metric(&metrics, "longmem_recommendations_produced_total")?;
                if answered > 0.0 && restart_to_output.len() < kill {
                    restart_to_output.push(started.elapsed());
                }
                (answered >= 1_500.0).then_some(())
            },
        );
        daemon.kill9();
    }
    stop.store(true, Ordering::Relaxed);
    let sent = producing.join().unwrap();
    eprintln!(
        "{} events sent over {KILLS} kills; restart to first output: {:?}",
        sent.offsets.len(),
        restart_to_output
    );

    let daemon = Daemon::start(&config);
    let mut reader = broker.reader(&topics.recommendations);
    let mut answered = HashSet::new();
    wait_for(
        "an answer to every event sent",
        Duration::from_secs(600),
        || {
            let mut recs = Vec::new();
            reader.poll_into(&mut recs, Duration::from_millis(500));
            answered.extend(answered_sources(&recs));
            sent.offsets.is_subset(&answered).then_some(())
        },
    );
    assert!(
        daemon.stop().success(),
        "the daemon exits cleanly on SIGTERM"
    );

    assert_each_event_applied_once(&dir.path().join("store"), &sent.per_user);
}
