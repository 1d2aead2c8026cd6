//! Step 5's outputs on the encoder thread: rank each answer, then encode the recommendations,
//! demand records, alerts, dead letters and the changelog's copy of the batch's writes.
//!
//! This is a third of what a batch costs after the model has run; on its own thread it runs while
//! the polling thread decodes and scores the next batch.

use super::*;

/// A batch the polling thread has answered and assessed (steps 2–4), on its way to the encoder.
pub(super) struct Computed {
    pub(super) seq: u64,
    /// The model that answered it (a rollout may swap models between two batches).
    pub(super) model: ModelRef,
    pub(super) batch: Vec<InMessage>,
    pub(super) events: Vec<Option<Event>>,
    pub(super) dead_letters: Vec<(usize, DeadLetter)>,
    pub(super) answers: Unranked,
    pub(super) alerts: Vec<(usize, Alert)>,
    pub(super) duplicate_demand: Option<u64>,
    /// The state and offsets once the outputs are acknowledged.
    pub(super) writes: StoreBatch,
}

pub(super) struct Encoder<'a> {
    pub(super) config: &'a Config,
    /// The changelog topic, when the memory is also kept there.
    pub(super) changelog: Option<&'a str>,
}

impl Encoder<'_> {
    /// Encodes each computed batch, in order, and hands it to the finisher. After a failure it
    /// hands on the error (the finisher reports it in order) and ends the batches behind it here.
    pub(super) fn run(
        self,
        computed: mpsc::Receiver<Computed>,
        hand_on: mpsc::SyncSender<Result<Prepared, PipelineError>>,
        checkpoint: &Checkpoint,
        stats: &RunStats,
    ) {
        for batch in computed.iter() {
            stats.busy_begin();
            let t = Instant::now();
            let prepared = self.encode(batch);
            stats.record_stage(Stage::Encode, t);
            let failed = prepared.is_err();
            // Blocks while the finisher is a batch behind: that wait counts as busy.
            let handed_on = hand_on.send(prepared);
            stats.busy_end();
            if handed_on.is_err() {
                // The finisher stopped (its report says why): end this batch and every later one.
                checkpoint.batch_ended();
                for _ in computed.iter() {
                    checkpoint.batch_ended();
                }
                return;
            }
            if failed {
                for _ in computed.iter() {
                    checkpoint.batch_ended();
                }
                return;
            }
        }
    }

    fn encode(&self, c: Computed) -> Result<Prepared, PipelineError> {
        let Computed {
            seq,
            model,
            batch,
            events,
            dead_letters,
            answers,
            alerts,
            duplicate_demand,
            writes,
        } = c;
        let rows = answers.rank();
        let emitted_at = now_ms();
        let topics = &self.config.topics;
        let mut outputs: Vec<Output> = Vec::with_capacity(rows.len() + dead_letters.len());
        let recommendations = rows.len() as u64;
        let answered_at_ms: Vec<i64> = rows
            .iter()
            .filter_map(|row| batch[row.message].kafka_timestamp_ms)
            .collect();
        let answered_polled_at_ms: Vec<i64> = rows
            .iter()
            .map(|row| batch[row.message].polled_at_ms)
            .collect();
        // Each answer moves into its output: its ten items and ids are not copied again.
        for row in rows {
            let msg = &batch[row.message];
            let rec = Recommendation {
                user_id: row.user_id,
                items: row.items,
                model: model.clone(),
                source: msg.source(),
                event_type: row.event_type,
                event_timestamp_ms: row.event_timestamp_ms,
                ingest_timestamp_ms: msg.kafka_timestamp_ms.unwrap_or(emitted_at),
                emitted_at_ms: emitted_at,
            };
            let payload = serde_json::to_vec(&rec).expect("recommendations serialize");
            outputs.push(Output::keyed(
                &topics.recommendations,
                Some(rec.user_id.into_bytes()),
                payload,
            ));
        }
        // Purchases that name a location are that SKU × location's demand: forwarded, keyed by
        // sku@location, to the partition its supply events live on.
        let mut demand_records = 0u64;
        if self.config.supply.enabled {
            let demand_topic = self.config.supply.demand_topic(topics);
            for (msg, e) in batch.iter().zip(&events) {
                let Some(Event::User(e)) = e else { continue };
                let (EventType::Purchase, Some(location)) = (e.event_type, &e.location) else {
                    continue;
                };
                let record = SupplyEvent::Demand {
                    sku: e.item_id.clone(),
                    location: location.clone(),
                    quantity: e.quantity.unwrap_or(1),
                    timestamp_ms: e.timestamp_ms,
                    source: msg.source(),
                };
                outputs.push(Output::keyed(
                    demand_topic,
                    Some(format!("{}@{location}", e.item_id).into_bytes()),
                    serde_json::to_vec(&record).expect("demand records serialize"),
                ));
                demand_records += 1;
            }
        }
        let mut alert_kinds = Vec::with_capacity(alerts.len());
        for (_, alert) in &alerts {
            outputs.push(Output::keyed(
                &topics.alerts,
                Some(format!("{}@{}", alert.sku, alert.location).into_bytes()),
                serde_json::to_vec(alert).expect("alerts serialize"),
            ));
            alert_kinds.push(alert.kind);
        }
        let keep = self.config.limits.max_message_bytes;
        for (i, dl) in &dead_letters {
            outputs.push(Output::keyed(
                &topics.dead_letter,
                batch[*i]
                    .key
                    .as_deref()
                    .map(|k| event::kept(k, keep).to_vec()),
                serde_json::to_vec(dl).expect("dead letters serialize"),
            ));
        }

        // The changelog's copy of the writes, produced last (in the same acknowledged batch).
        let mut changelog_records = 0;
        let mut changelog_markers = Vec::new();
        if let Some(topic) = self.changelog {
            let mut user_partition: HashMap<&str, i32> = HashMap::new();
            let mut sku_partition: HashMap<(&str, &str), i32> = HashMap::new();
            for (msg, e) in batch.iter().zip(&events) {
                match e {
                    Some(Event::User(u)) => {
                        user_partition.insert(&u.user_id, msg.partition);
                    }
                    Some(Event::Supply(s)) => {
                        sku_partition.insert(s.position(), msg.partition);
                    }
                    None => {}
                }
            }
            let records = changelog::records(topic, &writes, |owner| match owner {
                RecordOwner::User(u) => user_partition.get(u).copied(),
                RecordOwner::Sku(s, l) => sku_partition.get(&(*s, *l)).copied(),
            })?;
            changelog_records = records.records.len() as u64;
            outputs.extend(records.records);
            changelog_markers = records.markers;
        }
        Ok(Prepared {
            seq,
            outputs,
            writes,
            recommendations,
            answered_at_ms,
            answered_polled_at_ms,
            dead_letters: dead_letters.len() as u64,
            alerts: alert_kinds,
            demand_records,
            duplicate_demand,
            messages: batch.len() as u64,
            changelog_records,
            changelog_markers,
        })
    }
}
