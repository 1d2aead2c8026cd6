//! Stages 3 and 4 of a micro-batch: apply each user event to that user's memory and answer it with
//! top-K recommendations, through the model's `step` graph when it has one (`model.mode`), else
//! its `full` graph.
//!
//! Step mode keeps the model's state (recurrent state, key/value cache) in each user's memory, so an
//! event costs one incremental step. A user's events within one batch must be stepped in order, so
//! the batch runs in rounds: round r steps the r-th pending item of every user at once. Where users
//! have bursts of events in the batch (a stream in time order) and the rounds would be short, the
//! model's `chunk` graph steps every burst in one call instead. An item the model does not know
//! leaves the state as it is and is answered by the `full` graph.
//!
//! Where the state lives depends on the model. A recurrent state (or memory slots) summarises more
//! than the window, so it is stored with the user's record. A sliding-window Transformer's
//! key/value cache is a function of the window, so it stays in the [`StateCache`] and the record
//! keeps only the window. A state that is missing (evicted, a restart, a moved partition) or was
//! written by another model or version is rebuilt first: for all such users of the batch at once
//! by the `prefill` graph when the model has one, else by replaying their remembered items.
//!
//! Nothing here writes to the store: the pipeline writes the returned memories with the offsets.

use std::collections::{HashMap, VecDeque};

use crate::config::StatePrecision;
use crate::event::{Event, EventType, UserEvent};
use crate::memory::{Memories, ModelState, StateCache, StateTensors, StoreError, UserMemory};
use crate::model::{Chunk, Model, ModelError, ScoredRows, TopK};

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

/// The batch's answers, still to be ranked, and the memories to store.
pub struct BatchAnswers {
    pub answers: Unranked,
    pub memories: HashMap<String, UserMemory>,
    /// Inference time alone (the rest is memory work).
    pub inference: std::time::Duration,
    /// Users whose step state had to be rebuilt, and how.
    pub rebuilt: Rebuilt,
    /// Items stepped in bursts by the chunk graph (the rest went one round per item).
    pub burst_items: u64,
}

/// A batch's answers before their items are chosen: each model call's scored rows and the answers
/// they fill. [`Unranked::rank`] may run on another thread than the model (the pipeline's encoder).
pub struct Unranked {
    answers: Vec<Answered>,
    /// (answer slot of each row, or `None` for a replayed item that answers nothing; the rows).
    calls: Vec<(Vec<Option<usize>>, ScoredRows)>,
}

impl Unranked {
    /// Answers in message order, each with its top K.
    pub fn rank(self) -> Vec<Answered> {
        let Unranked { mut answers, calls } = self;
        for (slots, rows) in calls {
            for (slot, items) in slots.into_iter().zip(rows.rank()) {
                if let Some(slot) = slot {
                    answers[slot].items = items;
                }
            }
        }
        answers
    }

    pub fn len(&self) -> usize {
        self.answers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.answers.is_empty()
    }
}

/// Answers that are ranked already.
impl From<Vec<Answered>> for Unranked {
    fn from(answers: Vec<Answered>) -> Unranked {
        Unranked {
            answers,
            calls: Vec::new(),
        }
    }
}

/// Step states rebuilt in one batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rebuilt {
    /// By one `prefill` call for all of them.
    pub prefilled: u64,
    /// By stepping their remembered items again.
    pub replayed: u64,
}

/// A user's pending steps in this batch: (item index, answer slot when it is an event, not a replay).
struct Lane {
    user: String,
    pending: VecDeque<(i64, Option<usize>)>,
    /// Stepped in place, at the precision it is kept at between batches.
    state: StateTensors,
    /// The last `window` item indices stepped, for leaving seen items out.
    seen: VecDeque<i64>,
}

/// How a batch keeps step state: the store's precision, and the RAM cache for state that is a
/// function of the window.
pub struct StateKeeping<'a> {
    pub precision: StatePrecision,
    pub cache: &'a mut StateCache,
}

pub fn answer(
    model: &mut Model,
    store: &impl Memories,
    events: &[Option<Event>],
    history_len: usize,
    keeping: StateKeeping<'_>,
    exclude_seen: bool,
) -> Result<BatchAnswers, RecommendError> {
    let StateKeeping { precision, cache } = keeping;
    let stepping = model.step_state().is_some();
    let from_window = model.state_from_window();
    let owner = model.state_owner();
    let window = model.manifest.window;
    // A lane's state is held, and stepped, at the precision it is kept at between batches, so no
    // per-user copy is made on the way in or out.
    let lane_precision = match from_window {
        true => cache.precision(),
        false => precision,
    };
    let state_lengths = model.state_lengths();
    let mut memories: HashMap<String, UserMemory> = HashMap::new();
    let mut answers: Vec<Answered> = Vec::new();
    let mut lanes: Vec<Lane> = Vec::new();
    let mut lane_of: HashMap<String, usize> = HashMap::new();
    // Answers by the full graph: (answer slot, window row).
    let mut full_slots: Vec<usize> = Vec::new();
    let mut full_rows: Vec<i64> = Vec::new();
    // States rebuilt by one prefill call: (lane, window row).
    let mut prefill_lanes: Vec<usize> = Vec::new();
    let mut prefill_rows: Vec<i64> = Vec::new();
    let mut rebuilt = Rebuilt::default();

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
            let kept = match from_window {
                true => cache.take(&e.user_id, memory),
                false => None,
            };
            let opening = Opening {
                kept,
                owner: &owner,
                lengths: &state_lengths,
                precision: lane_precision,
            };
            let lane = match open_lane(model, memory, opening, &e.user_id) {
                Opened::Ready(lane) => lane,
                Opened::Rebuild(lane) if model.has_prefill() => {
                    rebuilt.prefilled += 1;
                    prefill_lanes.push(lanes.len());
                    model.encode_window(memory.recent_ids(), &mut prefill_rows);
                    lane
                }
                Opened::Rebuild(mut lane) => {
                    rebuilt.replayed += 1;
                    lane.replay(model, memory, lane_precision);
                    lane
                }
            };
            lanes.push(lane);
        }
        memory.apply(e, history_len);
        let slot = answers.len();
        answers.push(answered(i, e));
        match (stepping, model.vocabulary.index_of(&e.item_id)) {
            (true, Some(item)) => lanes[lane_of[&e.user_id]]
                .pending
                .push_back((item, Some(slot))),
            _ => {
                model.encode_window(memory.recent_ids(), &mut full_rows);
                full_slots.push(slot);
            }
        }
    }

    let started = std::time::Instant::now();
    let mut calls = Vec::new();
    if !full_slots.is_empty() {
        let rows = model.recommend_scored(full_rows, full_slots.len(), exclude_seen)?;
        calls.push((full_slots.into_iter().map(Some).collect(), rows));
    }
    if !prefill_lanes.is_empty() {
        let states = model.prefill(prefill_rows, prefill_lanes.len(), lane_precision)?;
        for (l, state) in prefill_lanes.into_iter().zip(states) {
            lanes[l].state = state;
        }
    }
    let burst_items = step_bursts(model, &mut lanes, &mut calls, window, exclude_seen)?;
    step_rounds(model, &mut lanes, &mut calls, window, exclude_seen)?;
    let inference = started.elapsed();

    for lane in lanes {
        let Some(memory) = memories.get_mut(&lane.user) else {
            continue;
        };
        if from_window {
            memory.model_state = None;
            cache.put(&lane.user, memory, lane.state);
        } else {
            memory.model_state = Some(ModelState {
                owner: owner.clone(),
                tensors: lane.state,
            });
        }
    }
    Ok(BatchAnswers {
        answers: Unranked { answers, calls },
        memories,
        inference,
        rebuilt,
        burst_items,
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

enum Opened {
    /// The lane starts from the user's current state.
    Ready(Lane),
    /// The user's state is missing or another model's: the lane holds none until it is rebuilt
    /// from the window (by the prefill graph, or [`Lane::replay`]).
    Rebuild(Lane),
}

/// What a lane may start from.
struct Opening<'a> {
    /// The state kept in the [`StateCache`] for the record as it is now.
    kept: Option<StateTensors>,
    /// The model that may have written a state stored with the record (`name@version`).
    owner: &'a str,
    /// Values per user in each of the model's state tensors: a stored state of another shape is
    /// rebuilt.
    lengths: &'a [usize],
    /// The precision the lane's state is held at.
    precision: StatePrecision,
}

/// Starts a user's lane from their state: `kept` in the cache, else the one stored with the record
/// when this model wrote it in the shape it takes (also a record written before the cache
/// existed), which the lane takes over: the record gets the lane's state back after the batch. A
/// state is allocated only where none is found and nothing is to be rebuilt.
fn open_lane(model: &Model, memory: &mut UserMemory, opening: Opening<'_>, user: &str) -> Opened {
    let stored = memory
        .model_state
        .take()
        .filter(|s| s.owner == opening.owner && s.tensors.has_lengths(opening.lengths));
    let state = opening
        .kept
        .or_else(|| stored.map(|s| s.tensors))
        .map(|s| s.at_precision(opening.precision));
    let mut lane = Lane {
        user: user.to_string(),
        pending: VecDeque::new(),
        state: StateTensors::default(),
        seen: VecDeque::new(),
    };
    let window = model.manifest.window;
    let skip = memory.recent_items.len().saturating_sub(window);
    let seen = || {
        memory.recent_items[skip..]
            .iter()
            .filter_map(|id| model.vocabulary.index_of(id))
            .collect()
    };
    match state {
        Some(state) => {
            lane.state = state;
            lane.seen = seen();
            Opened::Ready(lane)
        }
        // A user with nothing remembered has nothing to rebuild.
        None if memory.recent_items.is_empty() => {
            lane.state = model.empty_state(opening.precision);
            Opened::Ready(lane)
        }
        None => {
            lane.seen = seen();
            Opened::Rebuild(lane)
        }
    }
}

impl Lane {
    /// Adds a stepped item to the items the lane's later answers leave out (the last `window`).
    fn see(&mut self, item: i64, window: usize) {
        self.seen.push_back(item);
        if self.seen.len() > window {
            self.seen.pop_front();
        }
    }

    /// Queues the user's remembered items to be stepped again ahead of this batch's events.
    fn replay(&mut self, model: &Model, memory: &UserMemory, precision: StatePrecision) {
        self.state = model.empty_state(precision);
        self.seen.clear();
        let replay = memory
            .recent_items
            .iter()
            .filter_map(|id| model.vocabulary.index_of(id));
        self.pending.extend(replay.map(|item| (item, None)));
    }
}

/// Bursts go to the chunk graph unless the step rounds they would take average at least this many
/// rows each. A chunk call takes and returns each user's whole cache, where a step round moves only
/// the newest entry; what it saves is the fixed cost of each step call. So full rounds are cheaper
/// and short ones are not. sasrec-ml100k, one thread, µs per event through ONNX Runtime:
/// 128 users × 2 events 10.1 in rounds vs 12.6 in one chunk call; 64 × 4 10.4 vs 11.6; 32 × 8 10.9
/// vs 10.4; 7 × 37 18.2 vs 10.5; 7 users with 2 to 130 events (MovieLens in time order) 49 vs 9.6.
const MIN_ROWS_PER_ROUND: usize = 64;

/// Steps the lanes with a burst of pending items (two or more) in one call of the chunk graph, when
/// the model has one and rounds would be short; the lanes' single items are left to `step_rounds`.
/// Returns the items it stepped.
fn step_bursts(
    model: &mut Model,
    lanes: &mut [Lane],
    calls: &mut Vec<(Vec<Option<usize>>, ScoredRows)>,
    window: usize,
    exclude_seen: bool,
) -> Result<u64, ModelError> {
    let Some(span) = model.chunk_span() else {
        return Ok(0);
    };
    let bursts = lanes.iter().map(|l| l.pending.len()).filter(|&n| n > 1);
    let (users, extra, longest) =
        bursts.fold((0, 0, 0), |(u, e, m), n| (u + 1, e + n - 1, m.max(n)));
    if users == 0 || extra / (longest - 1) >= MIN_ROWS_PER_ROUND {
        return Ok(0);
    }
    let cached = span - 1;
    let mut items = Vec::new();
    let mut slots = Vec::new();
    let mut keys = Vec::new();
    let mut tails = Vec::with_capacity(users * cached);
    let mut seen_items = Vec::new();
    let mut seen_ends = Vec::new();
    let mut states: Vec<&mut StateTensors> = Vec::with_capacity(users);
    // The chunk graph's pool: user b's cached slots at b × cached.., then every new item in order.
    let mut positions: Vec<i64> = Vec::new();
    for lane in lanes.iter_mut().filter(|l| l.pending.len() > 1) {
        let b = states.len();
        positions.clear();
        positions.extend((b * cached..(b + 1) * cached).map(|p| p as i64));
        for (item, slot) in std::mem::take(&mut lane.pending) {
            positions.push((users * cached + items.len()) as i64);
            keys.extend_from_slice(&positions[positions.len() - span..]);
            items.push(item);
            slots.push(slot);
            lane.see(item, window);
            let (front, back) = lane.seen.as_slices();
            seen_items.extend_from_slice(front);
            seen_items.extend_from_slice(back);
            seen_ends.push(seen_items.len());
        }
        tails.extend_from_slice(&positions[positions.len() - cached..]);
        states.push(&mut lane.state);
    }
    let mut start = 0;
    let seen: Vec<&[i64]> = seen_ends
        .iter()
        .map(|&end| {
            let row = &seen_items[start..end];
            start = end;
            row
        })
        .collect();
    let chunk = Chunk {
        items,
        keys,
        tails,
        states: &mut states,
        seen: &seen,
    };
    let rows = model.chunk_scored(chunk, exclude_seen)?;
    let stepped = slots.len() as u64;
    calls.push((slots, rows));
    Ok(stepped)
}

/// Steps every lane's pending items, one round per call of the step graph: round r takes the r-th
/// pending item of each lane that has one, and steps its state in place.
fn step_rounds(
    model: &mut Model,
    lanes: &mut [Lane],
    calls: &mut Vec<(Vec<Option<usize>>, ScoredRows)>,
    window: usize,
    exclude_seen: bool,
) -> Result<(), ModelError> {
    loop {
        let mut items = Vec::with_capacity(lanes.len());
        let mut slots = Vec::with_capacity(lanes.len());
        let mut seen: Vec<&[i64]> = Vec::with_capacity(lanes.len());
        let mut states: Vec<&mut StateTensors> = Vec::with_capacity(lanes.len());
        for lane in lanes.iter_mut() {
            let Some((item, slot)) = lane.pending.pop_front() else {
                continue;
            };
            lane.see(item, window);
            items.push(item);
            slots.push(slot);
            seen.push(lane.seen.make_contiguous());
            states.push(&mut lane.state);
        }
        if items.is_empty() {
            return Ok(());
        }
        let rows = model.step_scored(items, &mut states, &seen, exclude_seen)?;
        calls.push((slots, rows));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExecutionProvider, ModelConfig, ModelMode};
    use crate::memory::Store;
    use std::path::{Path, PathBuf};

    fn model_config() -> ModelConfig {
        ModelConfig {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sasrec-ml100k"),
            execution_provider: ExecutionProvider::Cpu,
            allow_cpu_fallback: false,
            mode: ModelMode::Auto,
            exclude_seen: true,
            intra_threads: 1,
            intra_op_spinning: false,
            runtime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        }
    }

    fn model() -> Model {
        Model::load(&model_config()).unwrap()
    }

    /// Amazon Games users' items in order, from the data set's first `lines` lines.
    fn games_histories(lines: usize) -> HashMap<String, Vec<String>> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text =
            std::fs::read_to_string(root.join("../shared/data/seqrec/sasrec_games/Video.txt"))
                .unwrap();
        let mut histories: HashMap<String, Vec<String>> = HashMap::new();
        for line in text.lines().take(lines) {
            let (user, item) = line.split_once(' ').unwrap();
            histories
                .entry(user.to_string())
                .or_default()
                .push(item.to_string());
        }
        histories
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
        let mut cache = StateCache::new(1 << 20, StatePrecision::F32);
        let keeping = StateKeeping {
            precision: StatePrecision::F32,
            cache: &mut cache,
        };
        let outcome = answer(&mut model, &store, &events, 50, keeping, true).unwrap();
        assert_eq!(outcome.answers.len(), 3);
        // ann's stale state is rebuilt in one prefill call; bob has nothing to rebuild.
        assert_eq!(
            outcome.rebuilt,
            Rebuilt {
                prefilled: 1,
                replayed: 0
            }
        );
        for (answer, history) in outcome.answers.rank().iter().zip([
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
        // A key/value cache is a function of the window: it stays in RAM, not in the record.
        let ann = &outcome.memories["ann"];
        assert!(ann.model_state.is_none());
        assert_eq!(ann.clicks, 6);
        assert!(cache.get("ann", ann).is_some());
        assert_eq!(cache.len(), 2);
    }

    /// Bursts (a user's several events in one batch, as MovieLens in time order delivers them) go
    /// through the chunk graph in one call; their answers and the states they leave equal stepping
    /// each event in its own round. Users in one batch have bursts of different lengths, some one
    /// event, and a burst may start from an empty or a full cache.
    #[test]
    fn bursts_in_one_chunk_answer_like_one_round_per_event() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let histories = games_histories(40_000);
        let mut users: Vec<&String> = histories
            .keys()
            .filter(|u| histories[*u].len() >= 30)
            .collect();
        users.sort();
        users.truncate(12);
        // Batch t: user u's next 1 + (u × 7 + t × 5) % 19 events (1 to 19).
        let mut batches: Vec<Vec<Option<Event>>> = Vec::new();
        let mut fed = vec![0; users.len()];
        for t in 0.. {
            let mut batch = Vec::new();
            for (u, user) in users.iter().enumerate() {
                let n = 1 + (u * 7 + t * 5) % 19;
                let history = &histories[*user];
                for item in &history[fed[u].min(history.len())..(fed[u] + n).min(history.len())] {
                    batch.push(click(user, item, batch.len() as i64));
                }
                fed[u] += n;
            }
            if batch.is_empty() {
                break;
            }
            batches.push(batch);
        }
        let run = |chunked: bool| {
            let mut model = Model::load(&ModelConfig {
                path: root.join("models/sasrec-games"),
                ..model_config()
            })
            .unwrap();
            if !chunked {
                model.forget_chunk();
            }
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), 1 << 24).unwrap();
            let mut cache = StateCache::new(1 << 30, StatePrecision::F32);
            let (mut answers, mut bursts) = (Vec::new(), 0);
            for events in &batches {
                let keeping = StateKeeping {
                    precision: StatePrecision::F32,
                    cache: &mut cache,
                };
                let outcome = answer(&mut model, &store, events, 50, keeping, true).unwrap();
                assert_eq!(outcome.rebuilt, Rebuilt::default());
                bursts += outcome.burst_items;
                for a in outcome.answers.rank() {
                    let items: Vec<String> = a.items.into_iter().map(|i| i.item_id).collect();
                    answers.push((a.user_id, items));
                }
                let mut batch = crate::memory::StoreBatch::default();
                for (user, memory) in outcome.memories {
                    batch.put_user(user, memory);
                }
                store.commit(&batch).unwrap();
            }
            let states: Vec<Vec<Vec<f32>>> = users
                .iter()
                .map(|u| {
                    let memory = store.user(u).unwrap().unwrap();
                    cache.get(u, &memory).unwrap().to_f32()
                })
                .collect();
            (answers, states, bursts)
        };
        let (chunked, chunked_states, bursts) = run(true);
        let (stepped, stepped_states, none) = run(false);
        let events: usize = batches.iter().map(Vec::len).sum();
        assert_eq!(none, 0);
        // 12 users with up to 19 events each make short rounds: every burst goes to the chunk graph,
        // and at most one user per batch has a single event (until histories run out).
        eprintln!(
            "{bursts} of {events} events in bursts, {} batches",
            batches.len()
        );
        assert!(
            bursts as f64 >= 0.8 * events as f64,
            "{bursts} of {events} events in bursts"
        );
        assert_eq!(chunked.len(), events);
        assert_eq!(stepped.len(), events);
        if let Some(i) = (0..events).find(|&i| chunked[i] != stepped[i]) {
            panic!(
                "event {i} of {events}: chunked {:?}, stepped {:?}",
                chunked[i], stepped[i]
            );
        }
        for (a, b) in chunked_states
            .iter()
            .flatten()
            .zip(stepped_states.iter().flatten())
        {
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(diff < 1e-4, "states differ by {diff}");
        }
    }

    /// Real histories (Amazon Games) stepped batch by batch, then each user's next event answered
    /// three ways: from the state kept in the cache, from one rebuilt by the prefill graph, and from
    /// one rebuilt by replaying the window. The three give the same top-10.
    #[test]
    fn rebuilt_states_answer_like_kept_ones() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut model = Model::load(&ModelConfig {
            path: root.join("models/sasrec-games"),
            ..model_config()
        })
        .unwrap();
        assert!(model.state_from_window() && model.has_prefill());
        let histories = games_histories(20_000);
        let mut users: Vec<&String> = histories
            .keys()
            .filter(|u| histories[*u].len() >= 8)
            .collect();
        users.sort();
        users.truncate(64);
        let longest = users.iter().map(|u| histories[*u].len()).max().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24).unwrap();
        let mut kept = StateCache::new(1 << 30, StatePrecision::F32);
        let precision = StatePrecision::F32;
        // Round t holds each user's t-th event but their last.
        for t in 0..longest - 1 {
            let events: Vec<Option<Event>> = users
                .iter()
                .filter(|u| t + 1 < histories[**u].len())
                .map(|u| click(u, &histories[*u][t], t as i64))
                .collect();
            let keeping = StateKeeping {
                precision,
                cache: &mut kept,
            };
            let outcome = answer(&mut model, &store, &events, 50, keeping, true).unwrap();
            assert_eq!(outcome.rebuilt, Rebuilt::default(), "round {t}");
            let mut batch = crate::memory::StoreBatch::default();
            for (user, memory) in outcome.memories {
                // The record is the window and counts: issue 13's target is ≤ 1 KB per user.
                let record = postcard::to_allocvec(&memory).unwrap().len();
                assert!(record <= 1024, "{user}: {record} bytes stored");
                batch.put_user(user, memory);
            }
            store.commit(&batch).unwrap();
        }
        let last: Vec<Option<Event>> = users
            .iter()
            .map(|u| click(u, histories[*u].last().unwrap(), longest as i64))
            .collect();
        let run = |model: &mut Model, cache: &mut StateCache| {
            let keeping = StateKeeping { precision, cache };
            let outcome = answer(model, &store, &last, 50, keeping, true).unwrap();
            let tops: Vec<Vec<String>> = outcome
                .answers
                .rank()
                .iter()
                .map(|a| a.items.iter().map(|i| i.item_id.clone()).collect())
                .collect();
            (tops, outcome.rebuilt)
        };
        let (from_kept, rebuilt) = run(&mut model, &mut kept);
        assert_eq!(rebuilt, Rebuilt::default());
        let (from_prefill, rebuilt) = run(
            &mut model,
            &mut StateCache::new(1 << 30, StatePrecision::F32),
        );
        assert_eq!(rebuilt.prefilled, users.len() as u64);
        model.forget_prefill();
        let (from_replay, rebuilt) = run(
            &mut model,
            &mut StateCache::new(1 << 30, StatePrecision::F32),
        );
        assert_eq!(rebuilt.replayed, users.len() as u64);
        assert_eq!(from_kept.len(), users.len());
        assert!(from_kept.iter().all(|top| top.len() == 10));
        assert_eq!(from_prefill, from_kept);
        assert_eq!(from_replay, from_kept);
    }
}
