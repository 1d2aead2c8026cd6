//! Reading topics back: every partition from the beginning, and what the outputs answered.

use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::Message;

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("outputs are JSON")
    }
}

/// The (partition, offset) of every input event that `outputs` answer.
pub fn answered_sources(outputs: &[Record]) -> std::collections::HashSet<(i64, i64)> {
    outputs
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["source"]["partition"].as_i64().unwrap(),
                v["source"]["offset"].as_i64().unwrap(),
            )
        })
        .collect()
}

pub struct Reader {
    pub(super) consumer: BaseConsumer,
}

impl Reader {
    pub fn poll_into(&mut self, records: &mut Vec<Record>, max: Duration) {
        let deadline = Instant::now() + max;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.consumer.poll(left) {
                Some(Ok(m)) => records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                }),
                Some(Err(e)) => panic!("reading failed: {e}"),
                None => break,
            }
        }
    }
}
