//! Rolling a new model into the running daemon: load and check it off the hot path, promote it
//! between two micro-batches, roll back to the previous one without reading it from disk again.
//!
//! - **Asked for** through a [`Rollout`] handle: the admin API (`POST /admin/model`,
//!   `POST /admin/model/rollback`, [`crate::admin`]) and SIGHUP (the config file's `[model]`).
//! - **Loaded and checked on a thread of its own** while the live model keeps answering: the same
//!   manifest and graph checks as at start ([`Model::load`]), then a self-test on remembered users
//!   from the store: every score finite, the step graph's top 10 equal to the full graph's where the
//!   candidate steps, and the time of one call at the live batch size. Items are mapped by their
//!   external ids (the store keeps ids, not indices): items the candidate does not know drop out of
//!   its windows, new ones become recommendable. A candidate failing anything is refused with the
//!   reason; the live model keeps serving.
//! - **Promoted between micro-batches** by the polling thread ([`Desk::between_batches`]): a batch is
//!   scored by one model, each recommendation names the model that scored it, and the step states
//!   the old model left are rebuilt from each user's window on their next event (they carry their
//!   owner, so no state crosses models; the RAM cache of window states is emptied).
//! - **Rolled back** to the model it replaced, kept loaded for that.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::{Config, ModelMode, RolloutConfig, StatePrecision};
use crate::event::{Event, EventType, ModelRef, UserEvent};
use crate::memory::{Memories, StateCache, Store, StoreError, UserMemory};
use crate::metrics;
use crate::model::Model;
use crate::recommend::{self, Answered, StateKeeping};
use crate::supply::SkuMemory;

/// Remembered users the self-test scores.
const SELF_TEST_USERS: usize = 256;
/// The share of them on which a step graph's top 10 must equal the full graph's.
const MIN_STEP_PARITY: f64 = 0.99;

/// What an operator asks to roll to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollRequest {
    /// The candidate's model directory (`model.json`, graphs, vocabulary).
    pub path: PathBuf,
    /// `step`, `full` or `auto`; default: the mode the daemon was started with.
    #[serde(default)]
    pub mode: Option<ModelMode>,
    /// `false`: load and check only, and answer with the self-test; the live model stays.
    #[serde(default = "promote_by_default")]
    pub promote: bool,
}

fn promote_by_default() -> bool {
    true
}

pub enum Command {
    Roll(RollRequest),
    Rollback,
}

/// What a request came to, as the admin API answers it and the log records it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// `promoted`, `checked` (promote = false), `refused` or `rolled_back`.
    pub result: &'static str,
    /// The model answering once the request is done.
    pub live: ModelRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<ModelRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<ModelRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_test: Option<SelfTest>,
    /// The candidate beside the live model on live batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowReport>,
}

/// The candidate's self-test on remembered users.
#[derive(Debug, Clone, Serialize)]
pub struct SelfTest {
    /// Remembered users scored (0 with an empty store: then only the graphs' own checks ran).
    pub users: usize,
    /// Share of them whose step-graph top 10 equals the full graph's (when the candidate steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_full_same_top10: Option<f64>,
    /// Rows in the timed call (the live `batch.max_events`) and its time.
    pub batch_rows: usize,
    pub batch_ms: f64,
    /// Time to load and check the candidate.
    pub seconds: f64,
}

type Ask = (Command, oneshot::Sender<Outcome>);

/// The handle the admin API and SIGHUP hold.
#[derive(Clone)]
pub struct Rollout {
    requests: mpsc::Sender<Ask>,
}

impl Rollout {
    pub fn new() -> (Rollout, Desk) {
        let (requests, asked) = mpsc::channel();
        (
            Rollout { requests },
            Desk {
                asked,
                loading: None,
                shadow: None,
                previous: None,
            },
        )
    }

    /// Asks the pipeline and waits for the outcome; `None` when the pipeline is not running.
    pub async fn ask(&self, command: Command) -> Option<Outcome> {
        let (reply, outcome) = oneshot::channel();
        self.requests.send((command, reply)).ok()?;
        outcome.await.ok()
    }
}

struct Loading {
    request: RollRequest,
    reply: oneshot::Sender<Outcome>,
    job: std::thread::JoinHandle<Result<(Model, SelfTest), String>>,
}

/// The pipeline's side: commands are taken, and candidates promoted, between micro-batches.
pub struct Desk {
    asked: mpsc::Receiver<Ask>,
    loading: Option<Loading>,
    /// A candidate scoring live batches beside the live model.
    shadow: Option<Shadow>,
    /// The model the last promotion replaced, kept loaded for a rollback.
    previous: Option<Model>,
}

fn model_ref(model: &Model) -> ModelRef {
    ModelRef {
        name: model.manifest.name.clone(),
        version: model.manifest.version.clone(),
    }
}

impl Desk {
    /// Between two micro-batches on the polling thread: starts loading what was asked for, and
    /// promotes (or refuses) a candidate whose checks are done. Never waits for a load.
    pub fn between_batches(
        &mut self,
        config: &Config,
        store: &Store,
        live: &mut Model,
        window_states: &mut StateCache,
    ) {
        while let Ok((command, reply)) = self.asked.try_recv() {
            match command {
                Command::Roll(_) if self.loading.is_some() || self.shadow.is_some() => {
                    let reason = "another candidate is being checked or is in shadow; ask again when it is done";
                    let _ = reply.send(refused(live, None, reason.into(), None, None));
                }
                Command::Roll(request) => {
                    tracing::info!(path = %request.path.display(), promote = request.promote, "loading a candidate model next to the live one");
                    match start_loading(config, store, &request) {
                        Ok(job) => {
                            self.loading = Some(Loading {
                                request,
                                reply,
                                job,
                            })
                        }
                        Err(e) => {
                            let reason = format!("cannot start the thread that loads it: {e}");
                            let _ = reply.send(refused(live, None, reason, None, None));
                        }
                    }
                }
                Command::Rollback => {
                    let outcome = match self.previous.take() {
                        Some(previous) => {
                            let replaced = self.swap_live(live, previous);
                            window_states.clear();
                            metrics::record_model_reload("rolled_back");
                            tracing::warn!(live = %live.manifest.name, version = %live.manifest.version, replaced = %replaced.version, "rolled back to the previous model");
                            Outcome {
                                result: "rolled_back",
                                live: model_ref(live),
                                previous: Some(replaced),
                                candidate: None,
                                reason: None,
                                self_test: None,
                                shadow: None,
                            }
                        }
                        None => refused(
                            live,
                            None,
                            "no previous model to roll back to: none was promoted since the start"
                                .into(),
                            None,
                            None,
                        ),
                    };
                    let _ = reply.send(outcome);
                }
            }
        }
        if self.loading.as_ref().is_some_and(|l| l.job.is_finished()) {
            let Loading {
                request,
                reply,
                job,
            } = self.loading.take().expect("checked above");
            let loaded = job
                .join()
                .unwrap_or_else(|_| Err("loading the candidate panicked".into()));
            match loaded {
                Err(reason) => {
                    tracing::error!(path = %request.path.display(), %reason, "candidate model refused; the live model keeps serving");
                    let _ = reply.send(refused(live, None, reason, None, None));
                }
                Ok((candidate, test)) if config.rollout.shadow_events == 0 => {
                    let shadow = Shadow::new(candidate, test, request, reply, config);
                    self.end_shadow(shadow, config, live, window_states);
                }
                Ok((candidate, test)) => {
                    tracing::info!(candidate = %candidate.manifest.name, version = %candidate.manifest.version, events = config.rollout.shadow_events, "candidate model passed its self-test; scoring live batches in shadow");
                    metrics::record_model_role(
                        &candidate.manifest.name,
                        &candidate.manifest.version,
                        "shadow",
                        true,
                    );
                    self.shadow = Some(Shadow::new(candidate, test, request, reply, config));
                }
            }
        }
        let shadow_done = self.shadow.as_ref().is_some_and(|s| {
            s.events >= config.rollout.shadow_events
                || s.started.elapsed() >= Duration::from_secs(config.rollout.shadow_max_s)
        });
        if shadow_done {
            let shadow = self.shadow.take().expect("checked above");
            self.end_shadow(shadow, config, live, window_states);
        }
    }

    /// The candidate in shadow, if any: [`crate::pipeline`] has it score each batch beside the live
    /// model ([`Shadow::score`]).
    pub fn shadow(&mut self) -> Option<&mut Shadow> {
        self.shadow.as_mut()
    }

    /// Judges a candidate's shadow against the limits, then promotes it, or refuses it, or (with
    /// `promote: false`) only reports.
    fn end_shadow(
        &mut self,
        shadow: Shadow,
        config: &Config,
        live: &mut Model,
        window_states: &mut StateCache,
    ) {
        let report = shadow.report();
        let Shadow {
            model: candidate,
            window_states: candidate_states,
            test,
            request,
            reply,
            ..
        } = shadow;
        metrics::record_model_role(
            &candidate.manifest.name,
            &candidate.manifest.version,
            "shadow",
            false,
        );
        if let Some(report) = &report {
            metrics::record_shadow(report);
        }
        let breach = report.as_ref().and_then(|r| r.breach(&config.rollout));
        if let Some(reason) = breach {
            tracing::error!(candidate = %candidate.manifest.name, version = %candidate.manifest.version, %reason, ?report, "candidate model refused after its shadow; the live model keeps serving");
            let _ = reply.send(refused(
                live,
                Some(model_ref(&candidate)),
                reason,
                Some(test),
                report,
            ));
            return;
        }
        if !request.promote {
            tracing::info!(candidate = %candidate.manifest.name, version = %candidate.manifest.version, ?test, ?report, "candidate model checked; not promoted (promote = false)");
            metrics::record_model_reload("checked");
            let _ = reply.send(Outcome {
                result: "checked",
                live: model_ref(live),
                previous: None,
                candidate: Some(model_ref(&candidate)),
                reason: None,
                self_test: Some(test),
                shadow: report,
            });
            return;
        }
        let replaced = self.swap_live(live, candidate);
        // The shadow's window states were computed by the candidate on the same memories: they
        // stay valid, so the swap starts warm.
        *window_states = candidate_states;
        window_states.set_budget(config.store.state_cache_bytes);
        metrics::record_model_reload("promoted");
        tracing::info!(live = %live.manifest.name, version = %live.manifest.version, replaced = %replaced.name, replaced_version = %replaced.version, ?test, ?report, "candidate model promoted");
        let _ = reply.send(Outcome {
            result: "promoted",
            live: model_ref(live),
            previous: Some(replaced),
            candidate: None,
            reason: None,
            self_test: Some(test),
            shadow: report,
        });
    }

    /// Makes `incoming` the live model and keeps the one it replaces for a rollback; returns
    /// which that was.
    fn swap_live(&mut self, live: &mut Model, incoming: Model) -> ModelRef {
        let replaced = std::mem::replace(live, incoming);
        metrics::record_model_role(
            &replaced.manifest.name,
            &replaced.manifest.version,
            "live",
            false,
        );
        metrics::record_model_role(&live.manifest.name, &live.manifest.version, "live", true);
        let replaced_ref = model_ref(&replaced);
        self.previous = Some(replaced);
        replaced_ref
    }
}

/// The answer to a request that was refused: the live model keeps serving.
fn refused(
    live: &Model,
    candidate: Option<ModelRef>,
    reason: String,
    self_test: Option<SelfTest>,
    shadow: Option<ShadowReport>,
) -> Outcome {
    metrics::record_model_reload("refused");
    Outcome {
        result: "refused",
        live: model_ref(live),
        previous: None,
        candidate,
        reason: Some(reason),
        self_test,
        shadow,
    }
}

fn start_loading(
    config: &Config,
    store: &Store,
    request: &RollRequest,
) -> std::io::Result<std::thread::JoinHandle<Result<(Model, SelfTest), String>>> {
    let mut model_config = config.model.clone();
    model_config.path = request.path.clone();
    if let Some(mode) = request.mode {
        model_config.mode = mode;
    }
    let store = store.clone();
    let batch_rows = config.batch.max_events.max(1);
    let history_len = config.store.history_len;
    let precision = config.store.state_precision;
    std::thread::Builder::new()
        .name("model-candidate".into())
        .spawn(move || {
            let started = Instant::now();
            let mut model = Model::load(&model_config).map_err(|e| e.to_string())?;
            let mut test = self_test(&mut model, &store, batch_rows, history_len, precision)?;
            test.seconds = started.elapsed().as_secs_f64();
            Ok((model, test))
        })
}

/// The candidate's answers on remembered users: finite scores, step equal to full where it steps,
/// and one timed call at the live batch size.
fn self_test(
    model: &mut Model,
    store: &Store,
    batch_rows: usize,
    history_len: usize,
    precision: crate::config::StatePrecision,
) -> Result<SelfTest, String> {
    let users: Vec<(String, UserMemory)> = store
        .sample_users(SELF_TEST_USERS)
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|(_, m)| !m.recent_items.is_empty())
        .collect();
    let fail = |what: String| format!("the self-test failed: {what}");
    let window = model.manifest.window;
    let mut rows = Vec::with_capacity(users.len().max(1) * window);
    for (_, memory) in &users {
        model.encode_window(memory.recent_ids(), &mut rows);
    }
    let full = model
        .recommend(rows.clone(), users.len(), true)
        .map_err(|e| fail(format!("the full graph: {e}")))?;
    if let Some(bad) = full.iter().flatten().find(|item| !item.score.is_finite()) {
        return Err(fail(format!(
            "score {} for item {} is not finite",
            bad.score, bad.item_id
        )));
    }
    if full.len() != users.len() || (!users.is_empty() && full.iter().all(|top| top.is_empty())) {
        return Err(fail("the full graph answered no items".into()));
    }

    // Step against full: each user's window but the last item as their memory, the last as a
    // click, answered by the step path; the full graph saw the same window.
    let step_full_same_top10 = if model.step_state().is_some() && !users.is_empty() {
        let mut remembered = Remembered::default();
        let mut events = Vec::with_capacity(users.len());
        for (user, memory) in &users {
            let mut before = memory.clone();
            let last = before.recent_items.pop().expect("non-empty");
            before.model_state = None;
            remembered.0.insert(user.clone(), before);
            events.push(Some(Event::User(UserEvent::new(
                EventType::Click,
                user,
                &last,
                memory.last_event_ms,
            ))));
        }
        let mut cache = StateCache::new(64 << 20, precision);
        let answered = recommend::answer(
            model,
            &remembered,
            &events,
            history_len,
            StateKeeping {
                precision,
                cache: &mut cache,
            },
            true,
        )
        .map_err(|e| fail(format!("the step graph: {e}")))?;
        let top10 = |items: &[crate::event::ScoredItem]| {
            let mut ids: Vec<String> = items.iter().take(10).map(|i| i.item_id.clone()).collect();
            ids.sort();
            ids
        };
        let same = answered
            .answers
            .rank()
            .iter()
            .filter(|a| top10(&a.items) == top10(&full[a.message]))
            .count();
        let share = same as f64 / users.len() as f64;
        if share < MIN_STEP_PARITY {
            return Err(fail(format!(
                "the step graph's top 10 equals the full graph's for {:.1}% of {} remembered users \
                 (at least {:.0}% expected): its step and full graphs disagree",
                share * 100.0,
                users.len(),
                MIN_STEP_PARITY * 100.0
            )));
        }
        Some(share)
    } else {
        None
    };

    // One call at the live batch size, on the remembered windows repeated (an empty store: one
    // all-padding window).
    let mut batch = Vec::with_capacity(batch_rows * window);
    if rows.is_empty() {
        rows = vec![0; window];
    }
    while batch.len() < batch_rows * window {
        let take = (batch_rows * window - batch.len()).min(rows.len());
        batch.extend_from_slice(&rows[..take]);
    }
    let t = Instant::now();
    model
        .recommend(batch, batch_rows, true)
        .map_err(|e| fail(format!("the full graph at {batch_rows} rows: {e}")))?;
    Ok(SelfTest {
        users: users.len(),
        step_full_same_top10,
        batch_rows,
        batch_ms: t.elapsed().as_secs_f64() * 1e3,
        seconds: 0.0,
    })
}

/// The self-test's users as memories before their last event.
#[derive(Default)]
struct Remembered(std::collections::HashMap<String, UserMemory>);

impl Memories for Remembered {
    fn user(&self, user_id: &str) -> Result<Option<UserMemory>, StoreError> {
        Ok(self.0.get(user_id).cloned())
    }

    fn sku(&self, _sku: &str, _location: &str) -> Result<Option<SkuMemory>, StoreError> {
        Ok(None)
    }
}

/// A candidate scoring live micro-batches beside the live model, without publishing: the same
/// events on the same memories, its own window-state cache, its answers compared and dropped.
pub struct Shadow {
    model: Model,
    window_states: StateCache,
    test: SelfTest,
    request: RollRequest,
    reply: oneshot::Sender<Outcome>,
    started: Instant,
    events: u64,
    /// Per batch, milliseconds of inference: the live model's and the candidate's.
    live_ms: Vec<f64>,
    candidate_ms: Vec<f64>,
    overlap_sum: f64,
    compared: u64,
    live_top_score_sum: f64,
    candidate_top_score_sum: f64,
    errors: u64,
    first_error: Option<String>,
}

/// What a shadow showed.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowReport {
    pub events: u64,
    pub batches: usize,
    pub seconds: f64,
    /// Mean share of the live model's top 10 that the candidate's top 10 also holds.
    pub top10_overlap: f64,
    pub live_p99_ms: f64,
    pub candidate_p99_ms: f64,
    /// The candidate's p99 time per batch over the live model's (both over the second half of the
    /// batches, once the candidate's window states are warm).
    pub p99_ratio: f64,
    /// Mean score of the first recommended item: how the two models' scores sit.
    pub live_mean_top_score: f64,
    pub candidate_mean_top_score: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

impl ShadowReport {
    /// Why the candidate must not serve, if it must not.
    fn breach(&self, limits: &RolloutConfig) -> Option<String> {
        if self.errors > 0 {
            return Some(format!(
                "it failed on {} of {} live batches in shadow: {}",
                self.errors,
                self.batches,
                self.first_error.as_deref().unwrap_or("")
            ));
        }
        if self.p99_ratio > limits.max_p99_ratio {
            return Some(format!(
                "its p99 time per batch in shadow was {:.1} ms against the live model's {:.1} ms \
                 ({:.2}x; rollout.max_p99_ratio = {})",
                self.candidate_p99_ms, self.live_p99_ms, self.p99_ratio, limits.max_p99_ratio
            ));
        }
        if self.top10_overlap < limits.min_top10_overlap {
            return Some(format!(
                "its top 10 shared {:.1}% with the live model's in shadow (rollout.min_top10_overlap = {})",
                self.top10_overlap * 100.0,
                limits.min_top10_overlap
            ));
        }
        None
    }
}

fn p99(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let i = ((sorted.len() as f64 * 0.99).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

impl Shadow {
    fn new(
        model: Model,
        test: SelfTest,
        request: RollRequest,
        reply: oneshot::Sender<Outcome>,
        config: &Config,
    ) -> Shadow {
        Shadow {
            model,
            // A quarter of the live cache's budget: the shadow is short, and its RAM comes on top.
            window_states: StateCache::new(
                config.store.state_cache_bytes / 4,
                config.store.state_precision,
            ),
            test,
            request,
            reply,
            started: Instant::now(),
            events: 0,
            live_ms: Vec::new(),
            candidate_ms: Vec::new(),
            overlap_sum: 0.0,
            compared: 0,
            live_top_score_sum: 0.0,
            candidate_top_score_sum: 0.0,
            errors: 0,
            first_error: None,
        }
    }

    /// Scores one batch's user events as the live model just did (`live`, in `live_inference`)
    /// and compares; nothing it computes is kept but its window states.
    #[allow(clippy::too_many_arguments)]
    pub fn score(
        &mut self,
        memories: &impl Memories,
        events: &[Option<Event>],
        live: &[Answered],
        live_inference: Duration,
        history_len: usize,
        precision: StatePrecision,
        exclude_seen: bool,
    ) {
        if live.is_empty() {
            return;
        }
        let answered = recommend::answer(
            &mut self.model,
            memories,
            events,
            history_len,
            StateKeeping {
                precision,
                cache: &mut self.window_states,
            },
            exclude_seen,
        );
        self.events += live.len() as u64;
        let answered = match answered {
            Ok(a) => a,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
                return;
            }
        };
        self.live_ms.push(live_inference.as_secs_f64() * 1e3);
        self.candidate_ms
            .push(answered.inference.as_secs_f64() * 1e3);
        let theirs_ranked = answered.answers.rank();
        let theirs: std::collections::HashMap<usize, &[crate::event::ScoredItem]> = theirs_ranked
            .iter()
            .map(|a| (a.message, a.items.as_slice()))
            .collect();
        for mine in live {
            let Some(other) = theirs.get(&mine.message) else {
                continue;
            };
            let top: std::collections::HashSet<&str> = mine
                .items
                .iter()
                .take(10)
                .map(|i| i.item_id.as_str())
                .collect();
            let shared = other
                .iter()
                .take(10)
                .filter(|i| top.contains(i.item_id.as_str()))
                .count();
            self.overlap_sum += shared as f64 / top.len().max(1) as f64;
            self.live_top_score_sum += mine.items.first().map_or(0.0, |i| i.score as f64);
            self.candidate_top_score_sum += other.first().map_or(0.0, |i| i.score as f64);
            self.compared += 1;
        }
    }

    /// `None` before any batch was compared (a quiet input: nothing says it is worse).
    fn report(&self) -> Option<ShadowReport> {
        if self.candidate_ms.is_empty() && self.errors == 0 {
            return None;
        }
        let compared = self.compared.max(1) as f64;
        // Latency over the second half of the batches: in the first the candidate rebuilds every
        // user's window state (a cold cache), which it keeps when promoted, so the half after it
        // is what serving will cost.
        let warm = self.candidate_ms.len() / 2;
        let (live_p99, candidate_p99) = if self.candidate_ms.is_empty() {
            (0.0, 0.0)
        } else {
            (p99(&self.live_ms[warm..]), p99(&self.candidate_ms[warm..]))
        };
        Some(ShadowReport {
            events: self.events,
            batches: self.candidate_ms.len() + self.errors as usize,
            seconds: self.started.elapsed().as_secs_f64(),
            top10_overlap: self.overlap_sum / compared,
            live_p99_ms: live_p99,
            candidate_p99_ms: candidate_p99,
            p99_ratio: if live_p99 > 0.0 {
                candidate_p99 / live_p99
            } else {
                1.0
            },
            live_mean_top_score: self.live_top_score_sum / compared,
            candidate_mean_top_score: self.candidate_top_score_sum / compared,
            errors: self.errors,
            first_error: self.first_error.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ShadowReport {
        ShadowReport {
            events: 1000,
            batches: 20,
            seconds: 3.0,
            top10_overlap: 0.4,
            live_p99_ms: 10.0,
            candidate_p99_ms: 15.0,
            p99_ratio: 1.5,
            live_mean_top_score: 5.0,
            candidate_mean_top_score: 6.0,
            errors: 0,
            first_error: None,
        }
    }

    #[test]
    fn a_shadow_passes_within_the_limits_and_names_the_one_it_breaks() {
        let limits = RolloutConfig::default();
        assert_eq!(report().breach(&limits), None);
        let slow = ShadowReport {
            p99_ratio: 2.5,
            candidate_p99_ms: 25.0,
            ..report()
        };
        assert!(slow.breach(&limits).unwrap().contains("max_p99_ratio"));
        let failing = ShadowReport {
            errors: 2,
            first_error: Some("inference failed".into()),
            ..report()
        };
        assert!(failing
            .breach(&limits)
            .unwrap()
            .contains("inference failed"));
        let strict = RolloutConfig {
            min_top10_overlap: 0.5,
            ..RolloutConfig::default()
        };
        assert!(report()
            .breach(&strict)
            .unwrap()
            .contains("min_top10_overlap"));
    }

    #[test]
    fn p99_is_the_value_below_which_99_percent_lie() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(p99(&values), 198.0);
        assert_eq!(p99(&[3.0]), 3.0);
    }
}
