//! Stages 3 and 4 of a micro-batch: apply each user event to that user's memory and answer it with
//! top-K recommendations, through the model's `step` graph when it has one (`model.mode`), else
//! its `full` graph.
//!
//! Step mode keeps the model's state (recurrent state, key/value cache) in each user's memory, so an
//! event costs one incremental step. A user's events within one batch must be stepped in order, so
//! the batch runs in rounds: round r steps the r-th pending item of every user at once (usually one
//! round, since one user rarely has two events in a batch). A state written by another model or
//! version is rebuilt first by replaying the user's remembered items; an item the model does not
//! know leaves the state as it is and is answered by the `full` graph.
//!
//! Nothing here writes to the store: the pipeline writes the returned memories with the offsets.

use std::collections::{HashMap, VecDeque};

use crate::config::StatePrecision;
use crate::event::{Event, EventType, UserEvent};
use crate::memory::{Memories, ModelState, StateTensors, StoreError, UserMemory};
use crate::model::{Model, ModelError, TopK};

#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// One user event of the batch and the recommendation answering it.
pub struct Answered {
    /// Index of the event's message in the batch.
    pub message: usize,
    pub user_id: String,
    pub event_type: EventType,
    pub event_timestamp_ms: i64,
    pub items: TopK,
}

/// The batch's answers in message order, and the memories to store.
pub struct BatchAnswers {
    pub answers: Vec<Answered>,
    pub memories: HashMap<String, UserMemory>,
    /// Inference time alone (the rest is memory work).
    pub inference: std::time::Duration,
}

/// A user's pending steps in this batch: (item index, answer slot when it is an event, not a replay).
struct Lane {
    user: String,
    pending: VecDeque<(i64, Option<usize>)>,
    state: Vec<Vec<f32>>,
    /// The last `window` item indices stepped, for leaving seen items out.
    seen: VecDeque<i64>,
}

pub fn answer(
    model: &mut Model,
    store: &impl Memories,
    events: &[Option<Event>],
    history_len: usize,
    state_precision: StatePrecision,
    exclude_seen: bool,
) -> Result<BatchAnswers, RecommendError> {
    let stepping = model.step_state().is_some();
    let owner = model.state_owner();
    let window = model.manifest.window;
    let mut memories: HashMap<String, UserMemory> = HashMap::new();
    let mut answers: Vec<Answered> = Vec::new();
    let mut lanes: Vec<Lane> = Vec::new();
    let mut lane_of: HashMap<String, usize> = HashMap::new();
    // Answers by the full graph: (answer slot, window row).
    let mut full_slots: Vec<usize> = Vec::new();
    let mut full_rows: Vec<i64> = Vec::new();

    for (i, e) in events.iter().enumerate() {
        let Some(Event::User(e)) = e else { continue };
        let memory = match memories.entry(e.user_id.clone()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(store.user(&e.user_id)?.unwrap_or_default())
            }
        };
        if stepping && !lane_of.contains_key(&e.user_id) {
            lane_of.insert(e.user_id.clone(), lanes.len());
            lanes.push(open_lane(model, memory, &owner, &e.user_id));
        }
        memory.apply(e, history_len);
        let slot = answers.len();
        answers.push(answered(i, e));
        match (stepping, model.vocabulary.index_of(&e.item_id)) {
            (true, Some(item)) => lanes[lane_of[&e.user_id]]
                .pending
                .push_back((item, Some(slot))),
            _ => {
                model.encode_window(
                    memory.recent_items.iter().map(String::as_str),
                    &mut full_rows,
                );
                full_slots.push(slot);
            }
        }
    }

    let started = std::time::Instant::now();
    if !full_slots.is_empty() {
        let top = model.recommend(full_rows, full_slots.len(), exclude_seen)?;
        for (slot, items) in full_slots.into_iter().zip(top) {
            answers[slot].items = items;
        }
    }
    step_rounds(model, &mut lanes, &mut answers, window, exclude_seen)?;
    let inference = started.elapsed();

    for lane in lanes {
        if let Some(memory) = memories.get_mut(&lane.user) {
            memory.model_state = Some(ModelState {
                owner: owner.clone(),
                tensors: StateTensors::encode(lane.state, state_precision),
            });
        }
    }
    Ok(BatchAnswers {
        answers,
        memories,
        inference,
    })
}

fn answered(message: usize, e: &UserEvent) -> Answered {
    Answered {
        message,
        user_id: e.user_id.clone(),
        event_type: e.event_type,
        event_timestamp_ms: e.timestamp_ms,
        items: Vec::new(),
    }
}

/// Starts a user's lane from their stored state, or, when it is missing or was written by another
/// model, from an empty state with their remembered items queued for replay.
fn open_lane(model: &Model, memory: &UserMemory, owner: &str, user: &str) -> Lane {
    let mut lane = Lane {
        user: user.to_string(),
        pending: VecDeque::new(),
        state: model.empty_state(),
        seen: VecDeque::new(),
    };
    match &memory.model_state {
        Some(s) if s.owner == owner && s.tensors.len() == lane.state.len() => {
            lane.state = s.tensors.to_f32();
            let window = model.manifest.window;
            let skip = memory.recent_items.len().saturating_sub(window);
            lane.seen = memory.recent_items[skip..]
                .iter()
                .filter_map(|id| model.vocabulary.index_of(id))
                .collect();
        }
        _ => {
            let replay = memory
                .recent_items
                .iter()
                .filter_map(|id| model.vocabulary.index_of(id));
            lane.pending.extend(replay.map(|item| (item, None)));
        }
    }
    lane
}

fn step_rounds(
    model: &mut Model,
    lanes: &mut [Lane],
    answers: &mut [Answered],
    window: usize,
    exclude_seen: bool,
) -> Result<(), ModelError> {
    loop {
        let active: Vec<usize> = (0..lanes.len())
            .filter(|&l| !lanes[l].pending.is_empty())
            .collect();
        if active.is_empty() {
            return Ok(());
        }
        let mut items = Vec::with_capacity(active.len());
        let mut slots = Vec::with_capacity(active.len());
        for &l in &active {
            let (item, slot) = lanes[l]
                .pending
                .pop_front()
                .expect("active lanes have pending items");
            let seen = &mut lanes[l].seen;
            seen.push_back(item);
            if seen.len() > window {
                seen.pop_front();
            }
            items.push(item);
            slots.push(slot);
        }
        let seen: Vec<Vec<i64>> = active
            .iter()
            .map(|&l| lanes[l].seen.iter().copied().collect())
            .collect();
        let seen_refs: Vec<&[i64]> = seen.iter().map(Vec::as_slice).collect();
        let states: Vec<&[Vec<f32>]> = active.iter().map(|&l| lanes[l].state.as_slice()).collect();
        let (top, new_states) = model.step(items, &states, &seen_refs, exclude_seen)?;
        for (((&l, slot), items), state) in active.iter().zip(slots).zip(top).zip(new_states) {
            lanes[l].state = state;
            if let Some(slot) = slot {
                answers[slot].items = items;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExecutionProvider, ModelConfig, ModelMode};
    use crate::memory::Store;
    use std::path::{Path, PathBuf};

    fn model() -> Model {
        Model::load(&ModelConfig {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sasrec-ml100k"),
            execution_provider: ExecutionProvider::Cpu,
            allow_cpu_fallback: false,
            mode: ModelMode::Auto,
            exclude_seen: true,
            intra_threads: 1,
            intra_op_spinning: false,
            runtime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        })
        .unwrap()
    }

    fn click(user: &str, item: &str, ts: i64) -> Option<Event> {
        Some(Event::User(UserEvent::new(
            EventType::Click,
            user,
            item,
            ts,
        )))
    }

    /// A memory without state (or with another model's) is replayed; its answer equals `full` on
    /// the same window, and so does the answer of a user with two events in one batch.
    #[test]
    fn replayed_and_same_batch_states_answer_like_full() {
        let mut model = model();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut stale = UserMemory::default();
        for (t, item) in ["1", "50", "181", "not-an-item", "100"]
            .into_iter()
            .enumerate()
        {
            if let Some(Event::User(e)) = click("ann", item, t as i64) {
                stale.apply(&e, 50);
            }
        }
        stale.model_state = Some(ModelState {
            owner: "another-model@7".into(),
            tensors: vec![vec![1.0; 3]].into(),
        });
        let mut batch = crate::memory::StoreBatch::default();
        batch.put_user("ann".into(), stale);
        store.commit(&batch).unwrap();

        let events = vec![
            click("ann", "258", 10),
            click("bob", "1", 11),
            click("bob", "7", 12),
        ];
        let outcome = answer(&mut model, &store, &events, 50, StatePrecision::F32, true).unwrap();
        assert_eq!(outcome.answers.len(), 3);
        for (answer, history) in outcome.answers.iter().zip([
            vec!["1", "50", "181", "100", "258"],
            vec!["1"],
            vec!["1", "7"],
        ]) {
            let mut row = Vec::new();
            model.encode_window(history.iter().copied(), &mut row);
            let full = model.recommend(row, 1, true).unwrap().remove(0);
            let got: Vec<&str> = answer.items.iter().map(|i| i.item_id.as_str()).collect();
            let want: Vec<&str> = full.iter().map(|i| i.item_id.as_str()).collect();
            assert_eq!(got, want, "{}", answer.user_id);
        }
        let ann = &outcome.memories["ann"];
        assert_eq!(ann.model_state.as_ref().unwrap().owner, model.state_owner());
        assert_eq!(ann.clicks, 6);
    }
}
