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
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::config::{Config, ModelMode};
use crate::event::{Event, EventType, ModelRef, UserEvent};
use crate::memory::{Memories, StateCache, Store, StoreError, UserMemory};
use crate::metrics;
use crate::model::Model;
use crate::recommend::{self, StateKeeping};
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
                Command::Roll(_) if self.loading.is_some() => {
                    let _ = reply.send(
                        self.refusal(
                            live,
                            None,
                            "another model is being loaded and checked; ask again when it is done"
                                .into(),
                        ),
                    );
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
                            let _ = reply.send(self.refusal(live, None, reason));
                        }
                    }
                }
                Command::Rollback => {
                    let outcome = match self.previous.take() {
                        Some(previous) => {
                            let replaced = std::mem::replace(live, previous);
                            window_states.clear();
                            promote_metrics(&replaced, live);
                            metrics::record_model_reload("rolled_back");
                            tracing::warn!(live = %live.manifest.name, version = %live.manifest.version, replaced = %replaced.manifest.version, "rolled back to the previous model");
                            let outcome = Outcome {
                                result: "rolled_back",
                                live: model_ref(live),
                                previous: Some(model_ref(&replaced)),
                                candidate: None,
                                reason: None,
                                self_test: None,
                            };
                            self.previous = Some(replaced);
                            outcome
                        }
                        None => self.refusal(
                            live,
                            None,
                            "no previous model to roll back to: none was promoted since the start"
                                .into(),
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
            let outcome = match loaded {
                Err(reason) => {
                    tracing::error!(path = %request.path.display(), %reason, "candidate model refused; the live model keeps serving");
                    self.refusal(live, None, reason)
                }
                Ok((candidate, test)) if !request.promote => {
                    tracing::info!(candidate = %candidate.manifest.name, version = %candidate.manifest.version, ?test, "candidate model checked; not promoted (promote = false)");
                    metrics::record_model_reload("checked");
                    Outcome {
                        result: "checked",
                        live: model_ref(live),
                        previous: None,
                        candidate: Some(model_ref(&candidate)),
                        reason: None,
                        self_test: Some(test),
                    }
                }
                Ok((candidate, test)) => {
                    let replaced = std::mem::replace(live, candidate);
                    window_states.clear();
                    promote_metrics(&replaced, live);
                    metrics::record_model_reload("promoted");
                    tracing::info!(live = %live.manifest.name, version = %live.manifest.version, replaced = %replaced.manifest.name, replaced_version = %replaced.manifest.version, ?test, "candidate model promoted");
                    let outcome = Outcome {
                        result: "promoted",
                        live: model_ref(live),
                        previous: Some(model_ref(&replaced)),
                        candidate: None,
                        reason: None,
                        self_test: Some(test),
                    };
                    self.previous = Some(replaced);
                    outcome
                }
            };
            let _ = reply.send(outcome);
        }
    }

    fn refusal(&self, live: &Model, candidate: Option<ModelRef>, reason: String) -> Outcome {
        metrics::record_model_reload("refused");
        Outcome {
            result: "refused",
            live: model_ref(live),
            previous: None,
            candidate,
            reason: Some(reason),
            self_test: None,
        }
    }
}

fn promote_metrics(replaced: &Model, live: &Model) {
    metrics::record_model_role(
        &replaced.manifest.name,
        &replaced.manifest.version,
        "live",
        false,
    );
    metrics::record_model_role(&live.manifest.name, &live.manifest.version, "live", true);
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
    // A user with no remembered items still gets an answer: the timed call needs rows.
    let mut rows = Vec::with_capacity(users.len().max(1) * window);
    for (_, memory) in &users {
        model.encode_window(memory.recent_items.iter().map(String::as_str), &mut rows);
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

    // One call at the live batch size, on the remembered windows repeated.
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
