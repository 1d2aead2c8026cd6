//! Steps 2–4 of a micro-batch on the polling thread: decode, score each user event (the encoder
//! ranks the scores), assess the supply-chain events, and gather the state the batch leaves.

use super::*;

pub(super) struct Worker<'a> {
    pub(super) config: &'a Config,
    pub(super) store: &'a Store,
    pub(super) pending: &'a Mutex<Pending>,
    pub(super) model: Model,
    /// Step state that is a function of the window, kept in RAM instead of the store.
    pub(super) state_cache: StateCache,
    pub(super) supply: Option<SupplyStage>,
    pub(super) stats: &'a RunStats,
}

impl Worker<'_> {
    /// Steps 2–4: decodes, answers and assesses one batch on the memories as the batches before it
    /// left them (pending ones included). The answers' ranking and the outputs are left to the
    /// encoder ([`super::encoder`]).
    /// A candidate model in `shadow` scores the same events beside the live one, unpublished.
    pub(super) fn compute(
        &mut self,
        batch: Vec<InMessage>,
        seq: u64,
        shadow: Option<&mut Shadow>,
    ) -> Result<Computed, PipelineError> {
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
                    let keep = self.config.limits.max_message_bytes;
                    dead_letters.push((i, DeadLetter::new(msg, rejection, now, keep)));
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
        metrics::record_burst_events(outcome.burst_items);
        self.stats
            .burst_items
            .fetch_add(outcome.burst_items, Ordering::Relaxed);
        self.stats.state_rebuilds.fetch_add(
            outcome.rebuilt.prefilled + outcome.rebuilt.replayed,
            Ordering::Relaxed,
        );
        metrics::record_stage(Stage::Inference, outcome.inference);
        self.stats.add_stage(Stage::Inference, outcome.inference);
        let memory_time = t.elapsed().saturating_sub(outcome.inference);
        metrics::record_stage(Stage::Memory, memory_time);
        self.stats.add_stage(Stage::Memory, memory_time);
        let mut answers = outcome.answers;
        if let Some(shadow) = shadow {
            // Ranked here, since the candidate's answers are compared with them.
            let ranked = answers.rank();
            // On the memories the live model just read: nothing of this batch is applied yet.
            shadow.score(
                &memories_view,
                &events,
                &ranked,
                outcome.inference,
                self.config.store.history_len,
                self.config.store.state_precision,
                self.config.model.exclude_seen,
            );
            answers = ranked.into();
        }
        let supply = match self.supply.as_mut() {
            Some(stage) => {
                let t = Instant::now();
                let out = stage.process(&memories_view, &batch, &events, now)?;
                metrics::record_stage(Stage::Inference, out.inference);
                self.stats.add_stage(Stage::Inference, out.inference);
                let memory_time = t.elapsed().saturating_sub(out.inference);
                metrics::record_stage(Stage::Memory, memory_time);
                self.stats.add_stage(Stage::Memory, memory_time);
                Some(out)
            }
            None => None,
        };

        // 6. what the state will be once the outputs are acknowledged; the next batch reads it
        // from `Pending` until the finisher has written it
        let mut writes = StoreBatch::default();
        for (user, memory) in outcome.memories {
            writes.put_user(user, memory);
        }
        let (alerts, duplicate_demand) = match supply {
            Some(s) => {
                for ((sku, location), memory) in s.memories {
                    writes.put_sku(sku, location, memory);
                }
                (s.alerts, Some(s.duplicate_demand))
            }
            None => (Vec::new(), None),
        };
        for msg in &batch {
            writes.advance(&msg.topic, msg.partition, msg.offset + 1);
        }
        Ok(Computed {
            seq,
            model: ModelRef {
                name: self.model.manifest.name.clone(),
                version: self.model.manifest.version.clone(),
            },
            batch,
            events,
            dead_letters,
            answers,
            alerts,
            duplicate_demand,
            writes,
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
