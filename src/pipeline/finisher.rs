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
        let mut markers = Markers::default();
        let mut waiting = None;
        loop {
            let Some(prepared) = waiting.take().or_else(|| handed.recv().ok()) else {
                break;
            };
            self.stats.busy_begin();
            let mut finished = match prepared {
                Ok(mut prepared) => self.finish(&mut prepared, &mut markers),
                Err(e) => Finished::Failed(e),
            };
            if matches!(finished, Finished::Written(_)) {
                match handed.try_recv() {
                    Ok(next) => waiting = Some(next),
                    // Nothing waiting: the markers go now, after the batch is answered and written.
                    Err(_) => {
                        if let Err(e) = self.deliver_markers(&mut markers) {
                            finished = Finished::Failed(e);
                        }
                    }
                }
            }
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
        self.record_trailing_markers(&markers);
    }

    /// The previous batch's carried markers are produced in front of this batch's outputs and
    /// replaced by this batch's own. Markers lost with a batch that fails are no loss: a marker
    /// says how far its input partition is processed, and each later one says more.
    fn finish(&self, p: &mut Prepared, markers: &mut Markers) -> Finished {
        // 5. produce and wait for acknowledgements
        let t = Instant::now();
        let mut outputs = std::mem::take(&mut markers.carried);
        let carried_markers = outputs.len();
        outputs.append(&mut p.outputs);
        let delivered = match self.sink.deliver(&outputs, self.shutdown) {
            Ok(delivered) => delivered,
            Err(e) => return undelivered(e, "outputs"),
        };
        // This batch's markers wait for its outputs' acknowledgements: one in the changelog means
        // every output of its batch is on the broker (a restore trusts the batch's records and
        // offsets from it).
        markers.carried = std::mem::take(&mut p.changelog_markers);
        // The store records how far each changelog partition holds its records, in the same
        // write as the state.
        if let Some(topic) = self.changelog {
            let first_record = delivered.len() - p.changelog_records as usize;
            let carried = delivered[..carried_markers].iter();
            for (partition, offset) in carried.chain(&delivered[first_record..]) {
                p.writes.changelog_reached(topic, *partition, offset + 1);
                markers.unrecorded.remove(partition);
            }
            metrics::record_changelog_produced(p.changelog_records + carried_markers as u64);
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

    /// Produces the last batch's offset markers on their own (no batch is waiting to carry them).
    /// A marker that cannot be produced (stopping) is left out: the next batch's markers cover its
    /// batch too. The store's changelog position is not moved past them here (a store write per
    /// batch cost 5% of the drain rate): the partition's next batch moves it past its own records,
    /// a clean stop records them ([`Finisher::record_trailing_markers`]), and a restart after a
    /// crash reads them again (a few records).
    fn deliver_markers(&self, markers: &mut Markers) -> Result<(), PipelineError> {
        let sending = std::mem::take(&mut markers.carried);
        if sending.is_empty() {
            return Ok(());
        }
        match self.sink.deliver(&sending, self.shutdown) {
            Ok(delivered) => {
                metrics::record_changelog_produced(sending.len() as u64);
                for (partition, offset) in delivered {
                    let (first, next) = markers
                        .unrecorded
                        .entry(partition)
                        .or_insert((offset, offset + 1));
                    *first = (*first).min(offset);
                    *next = (*next).max(offset + 1);
                }
                Ok(())
            }
            Err(e) if e.is_permanent() => Err(e.into()),
            Err(e) => {
                tracing::warn!(error = %e, "stopping before the last batch's changelog offset markers were acknowledged; a restore of its partitions elsewhere processes that batch again");
                Ok(())
            }
        }
    }

    /// At a clean stop: moves the store's changelog position past the markers that went out on
    /// their own, where it still stands right before them, so that a restart finds the store
    /// current and reads nothing.
    fn record_trailing_markers(&self, markers: &Markers) {
        let Some(topic) = self.changelog else {
            return;
        };
        for (&partition, &(first, next)) in &markers.unrecorded {
            if let Err(e) = self
                .store
                .changelog_skip_markers(topic, partition, first, next)
            {
                tracing::warn!(error = %e, "cannot record the last offset markers in the store; a restart reads them again");
                return;
            }
        }
        if let Err(e) = self.store.flush() {
            tracing::warn!(error = %e, "cannot flush the store at stop; a restart reads the last offset markers again");
        }
    }
}

/// A batch's offset markers between its acknowledgement and the store's record of them.
#[derive(Default)]
struct Markers {
    /// The last written batch's, when the next batch was already waiting: they go out in front of
    /// its outputs, in the same round trip.
    carried: Vec<Output>,
    /// Changelog partitions whose last records are markers that went out on their own, past the
    /// store's position: (the first one's offset, the offset after the last).
    unrecorded: BTreeMap<i32, (i64, i64)>,
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
