//! Steps 5–6 of each micro-batch on the finisher thread: produce the outputs and wait for the
//! broker, then write the state and offsets in one atomic batch.

use super::*;

/// Steps 5–6 for each prepared batch, in order, on its own thread: produce the outputs and wait for
/// the broker's acknowledgements (on failure: produce them again; the state is still unwritten),
/// then write the state and offsets in one atomic batch and flush.
pub(super) struct Finisher<'a> {
    pub(super) store: &'a Store,
    pub(super) sink: &'a Sink,
    pub(super) pending: &'a Mutex<Pending>,
    pub(super) checkpoint: &'a Checkpoint,
    pub(super) shutdown: &'a Shutdown,
    pub(super) stats: &'a RunStats,
    /// The changelog topic, when the memory is also kept there.
    pub(super) changelog: Option<&'a str>,
}

impl Finisher<'_> {
    /// An error handed on by the encoder is reported in its batch's place.
    pub(super) fn run(
        self,
        handed: mpsc::Receiver<Result<Prepared, PipelineError>>,
        report: mpsc::Sender<Finished>,
    ) {
        for prepared in handed.iter() {
            self.stats.busy_begin();
            let finished = match prepared {
                Ok(mut prepared) => self.finish(&mut prepared),
                Err(e) => Finished::Failed(e),
            };
            self.stats.busy_end();
            self.checkpoint.batch_ended();
            let stop = !matches!(finished, Finished::Written(_));
            let _ = report.send(finished);
            if stop {
                // Later batches were computed on this one's state: none of them may be written.
                // Take (and drop) them until the pipeline stops handing any on.
                for _ in handed.iter() {
                    self.checkpoint.batch_ended();
                }
                return;
            }
        }
    }

    fn finish(&self, p: &mut Prepared) -> Finished {
        // 5. produce and wait for acknowledgements
        let t = Instant::now();
        let delivered = match self.sink.deliver(&p.outputs, self.shutdown) {
            Ok(delivered) => delivered,
            Err(e) => return undelivered(e, "outputs"),
        };
        // Only now the markers: one in the changelog means every output of the batch is on the
        // broker (a restore trusts the batch's records and offsets from it).
        let markers = match self.sink.deliver(&p.changelog_markers, self.shutdown) {
            Ok(delivered) => delivered,
            Err(e) => return undelivered(e, "changelog markers"),
        };
        // The store records how far each changelog partition holds its records, in the same
        // write as the state.
        if let Some(topic) = self.changelog {
            let first = delivered.len() - p.changelog_records as usize;
            for (partition, offset) in delivered[first..].iter().chain(&markers) {
                p.writes.changelog_reached(topic, *partition, offset + 1);
            }
            metrics::record_changelog_produced(p.changelog_records + markers.len() as u64);
        }
        let acked_ms = now_ms();
        self.stats.record_stage(Stage::Produce, t);
        let micros_to_ack = |since_ms: &i64| (acked_ms - since_ms).max(0) as u64 * 1000;
        for micros in p.answered_at_ms.iter().map(micros_to_ack) {
            metrics::record_end_to_end(micros as f64 / 1e6);
            self.stats.record_latency(micros);
        }
        for micros in p.answered_polled_at_ms.iter().map(micros_to_ack) {
            metrics::record_daemon_latency(micros as f64 / 1e6);
            self.stats.record_daemon_latency(micros);
        }
        metrics::record_outputs(p.recommendations, p.dead_letters);
        for kind in &p.alerts {
            metrics::record_alert(*kind);
        }
        if let Some(duplicates) = p.duplicate_demand {
            metrics::record_demand(p.demand_records, duplicates);
        }

        // 6. state and offsets, atomically
        let t = Instant::now();
        if let Err(e) = self.store.commit(&p.writes) {
            return Finished::Failed(e.into());
        }
        self.pending
            .lock()
            .expect("pending lock")
            .forget(p.seq, &p.writes);
        self.stats.record_stage(Stage::Store, t);

        self.stats.messages.fetch_add(p.messages, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .recommendations
            .fetch_add(p.recommendations, Ordering::Relaxed);
        self.stats
            .dead_letters
            .fetch_add(p.dead_letters, Ordering::Relaxed);
        Finished::Written(
            p.writes
                .next_offsets()
                .map(|(t, p, o)| (t.to_string(), p, o))
                .collect(),
        )
    }
}

/// A batch whose `what` could not be delivered: a permanent refusal stops the pipeline with the
/// reason; otherwise shutdown came while it was being retried.
fn undelivered(e: SinkError, what: &str) -> Finished {
    if e.is_permanent() {
        return Finished::Failed(e.into());
    }
    tracing::warn!(error = %e, "stopping with a batch whose {what} were not acknowledged; it will be replayed");
    Finished::Interrupted
}
