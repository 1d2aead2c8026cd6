//! The broker: tansu on a free port, topics named after each test, and feeding them.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;

use super::{free_port, tool, wait_for, Reader, Record};

/// A tansu broker with in-memory storage, on a free port: the one `longmem bench` starts.
pub struct Broker {
    _tansu: longmem::tools::harness::Broker,
    pub bootstrap: String,
}

impl Broker {
    pub fn start() -> Broker {
        let binary = tool("LONGMEM_TANSU", ".tools/bin/tansu");
        let tansu =
            longmem::tools::harness::Broker::tansu_at(&binary).unwrap_or_else(|e| panic!("{e:#}"));
        Broker {
            bootstrap: tansu.bootstrap.clone(),
            _tansu: tansu,
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results =
            futures::executor::block_on(admin.create_topics([&topic], &AdminOptions::new()))
                .unwrap();
        for r in results {
            r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
        }
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .unwrap();
        wait_for(
            &format!("topic {name} to have {partitions} partitions"),
            Duration::from_secs(20),
            || {
                let md = consumer
                    .fetch_metadata(Some(name), Duration::from_millis(500))
                    .ok()?;
                (md.topics().first()?.partitions().len() == partitions as usize).then_some(())
            },
        );
    }

    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("linger.ms", "5")
            .create()
            .unwrap()
    }

    /// Produces and waits for every acknowledgement.
    pub fn produce(&self, topic: &str, messages: &[(Option<Vec<u8>>, Vec<u8>)]) {
        let producer = self.producer();
        produce_with(&producer, topic, messages);
    }

    /// Reads every partition of `topic` from the beginning until `done` says the collected messages
    /// are enough, or `timeout` passes (then panics).
    pub fn read_until(
        &self,
        topic: &str,
        timeout: Duration,
        mut done: impl FnMut(&[Record]) -> bool,
    ) -> Vec<Record> {
        let mut reader = self.reader(topic);
        let mut records = Vec::new();
        wait_for(&format!("enough messages on {topic}"), timeout, || {
            reader.poll_into(&mut records, Duration::from_millis(200));
            done(&records).then_some(())
        });
        records
    }

    pub fn reader(&self, topic: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("test-reader-{}", free_port()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        Reader { consumer }
    }
}

pub fn produce_with(
    producer: &FutureProducer,
    topic: &str,
    messages: &[(Option<Vec<u8>>, Vec<u8>)],
) {
    let futures: Vec<_> = messages
        .iter()
        .map(|(key, payload)| {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            producer.send_result(record).map_err(|(e, _)| e).unwrap()
        })
        .collect();
    let _ = producer.flush(Duration::from_secs(30));
    for r in futures::executor::block_on(futures::future::join_all(futures)) {
        r.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// The topics of one test, named after it so tests never share data.
pub struct Topics {
    pub input: String,
    pub recommendations: String,
    pub alerts: String,
    pub dead_letter: String,
}

impl Topics {
    pub fn create(broker: &Broker, test: &str, input_partitions: i32) -> Topics {
        let t = Topics {
            input: format!("{test}.events"),
            recommendations: format!("{test}.recs"),
            alerts: format!("{test}.alerts"),
            dead_letter: format!("{test}.dlq"),
        };
        broker.create_topic(&t.input, input_partitions);
        broker.create_topic(&t.recommendations, input_partitions);
        broker.create_topic(&t.alerts, 1);
        broker.create_topic(&t.dead_letter, 1);
        t
    }
}
