//! Steps 2–4 of a micro-batch on the polling thread: decode, answer each user event, assess the
//! supply-chain events, and build the batch's outputs.

use super::*;

pub(super) struct Worker<'a> {
    pub(super) config: &'a Config,
    pub(super) store: &'a Store,
    pub(super) pending: &'a Mutex<Pending>,
    pub(super) model: Model,
    /// Step state that is a function of the window, kept in RAM instead of the store.
    pub(super) state_cache: StateCache,
    pub(super) supply: Option<SupplyStage>,
    /// The changelog topic, when the memory is also kept there.
    pub(super) changelog: Option<String>,
    pub(super) stats: &'a RunStats,
}

impl Worker<'_> {
    /// Steps 2–4 and the outputs of step 5: decodes, answers and assesses one batch on the
    /// memories as the batches before it left them (pending ones included).
    /// A candidate model in `shadow` scores the same events beside the live one, unpublished.
    pub(super) fn prepare(
        &mut self,
        batch: &[InMessage],
        seq: u64,
        shadow: Option<&mut Shadow>,
    ) -> Result<Prepared, PipelineError> {
        metrics::record_batch_size(batch.len());
        let now = now_ms();
        let memories_view = PendingView {
            store: self.store,
            pending: self.pending,
        };

        // 2. decode
        let t = Instant::now();
        let mut events: Vec<Option<Event>> = Vec::with_capacity(batch.len());
        let mut dead_letters: Vec<(usize, DeadLetter)> = Vec::new();
        for (i, msg) in batch.iter().enumerate() {
            match event::decode(msg, &self.config.limits, now) {
                Ok(e) => {
                    metrics::record_consumed(e.event_type());
                    events.push(Some(e));
                }
                Err(rejection) => {
                    metrics::record_rejected(rejection.reason);
                    self.count_reject(rejection.reason);
                    tracing::debug!(topic = %msg.topic, partition = msg.partition, offset = msg.offset, reason = rejection.reason.as_str(), detail = %rejection.detail, "rejected");
                    dead_letters.push((i, DeadLetter::new(msg, rejection, now)));
                    events.push(None);
                }
            }
        }
        self.stats.record_stage(Stage::Decode, t);

        // 3. memory and 4. inference
        let t = Instant::now();
        let outcome = recommend::answer(
            &mut self.model,
            &memories_view,
            &events,
            self.config.store.history_len,
            recommend::StateKeeping {
                precision: self.config.store.state_precision,
                cache: &mut self.state_cache,
            },
            self.config.model.exclude_seen,
        )?;
        metrics::record_state_cache(outcome.rebuilt, &self.state_cache);
        metrics::record_stage(Stage::Inference, outcome.inference);
        self.stats.add_stage(Stage::Inference, outcome.inference);
        let memory_time = t.elapsed().saturating_sub(outcome.inference);
        metrics::record_stage(Stage::Memory, memory_time);
        self.stats.add_stage(Stage::Memory, memory_time);
        if let Some(shadow) = shadow {
            // On the memories the live model just read: nothing of this batch is applied yet.
            shadow.score(
                &memories_view,
                &events,
                &outcome.answers,
                outcome.inference,
                self.config.store.history_len,
                self.config.store.state_precision,
                self.config.model.exclude_seen,
            );
        }
        let rows = outcome.answers;
        let memories = outcome.memories;
        let supply = match self.supply.as_mut() {
            Some(stage) => {
                let t = Instant::now();
                let out = stage.process(&memories_view, batch, &events, now)?;
                metrics::record_stage(Stage::Inference, out.inference);
                self.stats.add_stage(Stage::Inference, out.inference);
                let memory_time = t.elapsed().saturating_sub(out.inference);
                metrics::record_stage(Stage::Memory, memory_time);
                self.stats.add_stage(Stage::Memory, memory_time);
                Some(out)
            }
            None => None,
        };

        // 5. the outputs
        let model_ref = ModelRef {
            name: self.model.manifest.name.clone(),
            version: self.model.manifest.version.clone(),
        };
        let emitted_at = now_ms();
        let topics = &self.config.topics;
        let mut outputs: Vec<Output> = Vec::with_capacity(rows.len() + dead_letters.len());
        let recommendations = rows.len() as u64;
        let answered_at_ms: Vec<i64> = rows
            .iter()
            .filter_map(|row| batch[row.message].kafka_timestamp_ms)
            .collect();
        // Each answer moves into its output: its ten items and ids are not copied again.
        for row in rows {
            let msg = &batch[row.message];
            let rec = Recommendation {
                user_id: row.user_id,
                items: row.items,
                model: model_ref.clone(),
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
        if self.supply.is_some() {
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
        let mut alerts = Vec::new();
        for (_, alert) in supply.iter().flat_map(|s| &s.alerts) {
            outputs.push(Output::keyed(
                &topics.alerts,
                Some(format!("{}@{}", alert.sku, alert.location).into_bytes()),
                serde_json::to_vec(alert).expect("alerts serialize"),
            ));
            alerts.push(alert.kind);
        }
        for (i, dl) in &dead_letters {
            outputs.push(Output::keyed(
                &topics.dead_letter,
                batch[*i].key.clone(),
                serde_json::to_vec(dl).expect("dead letters serialize"),
            ));
        }

        // 6. what the state and offsets will be, once the outputs are acknowledged
        let mut writes = StoreBatch::default();
        for (user, memory) in memories {
            writes.put_user(user, memory);
        }
        let duplicate_demand = supply.as_ref().map(|s| s.duplicate_demand);
        for ((sku, location), memory) in supply.map(|s| s.memories).unwrap_or_default() {
            writes.put_sku(sku, location, memory);
        }
        for msg in batch {
            writes.advance(&msg.topic, msg.partition, msg.offset + 1);
        }
        // The changelog's copy of those writes, produced last (in the same acknowledged batch).
        let mut changelog_records = 0;
        let mut changelog_markers = Vec::new();
        if let Some(topic) = &self.changelog {
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
            dead_letters: dead_letters.len() as u64,
            alerts,
            demand_records,
            duplicate_demand,
            messages: batch.len() as u64,
            changelog_records,
            changelog_markers,
        })
    }

    fn count_reject(&self, reason: RejectReason) {
        *self
            .stats
            .rejects
            .lock()
            .expect("rejects lock")
            .entry(reason.as_str())
            .or_default() += 1;
    }
}
