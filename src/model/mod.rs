//! The model runtime: a model directory's manifest, its vocabulary, and an ONNX Runtime session.
//!
//! A model directory holds `model.json` (the manifest: names and shapes of inputs and outputs,
//! window, K, vocabulary file, version), the ONNX graph and the vocabulary (one external item id per
//! line; line i is item index i, index 0 is padding). The `full` contract: input `item_seq` int64
//! [batch, window] left-padded with 0; output `scores` float32 [batch, n_items + 1], from which the
//! daemon picks each row's best K, or a graph's own ranking, `top_items` int64 [batch, candidates]
//! and `top_scores` float32 [batch, candidates] ([`Ranking`]). Each micro-batch is one `run` call.
//!
//! Execution providers: CPU by default. With `execution_provider = "cuda"` (cargo feature `cuda`) a
//! failed CUDA registration is an error unless `allow_cpu_fallback` is set; [`Model::provider`] says
//! which provider actually runs, and the metrics export it.

pub mod forecaster;
mod manifest;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use manifest::{ChunkManifest, Manifest, StateSpec, StepManifest, TensorSpec, Vocabulary};
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};

use crate::config::{ExecutionProvider, ModelConfig, ModelMode, StatePrecision};
use crate::event::ScoredItem;
use crate::memory::StateTensors;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "ONNX Runtime library not found: {0}. Set model.runtime_library or ORT_DYLIB_PATH to libonnxruntime.so \
         (scripts/fetch-tools.sh downloads it from the onnxruntime==1.31.1 wheel)"
    )]
    RuntimeMissing(String),
    #[error("cannot load the ONNX Runtime library {path}: {message}")]
    RuntimeLoad { path: String, message: String },
    #[error("model manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("vocabulary {path}: {message}")]
    Vocabulary { path: PathBuf, message: String },
    #[error("cannot load ONNX model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error(
        "the CUDA execution provider could not be registered: {0}. Check the GPU, the CUDA/cuDNN libraries on \
         LD_LIBRARY_PATH and that ORT_DYLIB_PATH points at the onnxruntime-gpu build; or set \
         model.allow_cpu_fallback = true to run on CPU"
    )]
    Cuda(String),
    #[error("inference failed: {0}")]
    Run(String),
}

/// Where libonnxruntime.so is: `model.runtime_library` when set, else `ORT_DYLIB_PATH`, else next
/// to the binary (`libonnxruntime.so`, `../lib/libonnxruntime.so`), else `.tools/onnxruntime/` in the
/// working directory (where `scripts/fetch-tools.sh` puts it).
pub fn runtime_library(configured: Option<&Path>) -> Result<PathBuf, ModelError> {
    let named = configured
        .map(|p| (p.to_path_buf(), "model.runtime_library"))
        .or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH").map(|p| (PathBuf::from(p), "ORT_DYLIB_PATH"))
        });
    if let Some((path, from)) = named {
        return if path.exists() {
            Ok(path)
        } else {
            Err(ModelError::RuntimeMissing(format!(
                "{} (from {from}) does not exist",
                path.display()
            )))
        };
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("libonnxruntime.so"));
        candidates.push(dir.join("../lib/libonnxruntime.so"));
    }
    candidates.push(PathBuf::from(".tools/onnxruntime/libonnxruntime.so"));
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| {
            ModelError::RuntimeMissing(format!(
                "neither model.runtime_library nor ORT_DYLIB_PATH is set, and it is not at {}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// Loads the ONNX Runtime shared library and creates the process's one environment; later calls
/// reuse it (ONNX Runtime allows one environment per process).
pub fn init_runtime(library: Option<&Path>) -> Result<ort::environment::Environment, ModelError> {
    static INIT: std::sync::OnceLock<Result<ort::environment::Environment, String>> =
        std::sync::OnceLock::new();
    let path = runtime_library(library)?;
    INIT.get_or_init(|| {
        let builder = ort::init_from(&path).map_err(|e| e.to_string())?;
        builder
            .with_name("longmem")
            .build()
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|message| ModelError::RuntimeLoad {
        path: path.display().to_string(),
        message,
    })
}

pub struct Model {
    pub manifest: Manifest,
    /// Shared with the rows a batch hands on for ranking ([`ScoredRows`]).
    pub vocabulary: Arc<Vocabulary>,
    full: Graph,
    step: Option<Graph>,
    /// Builds a step state from a window in one call (`step.prefill`), when the step graph runs.
    prefill: Option<Graph>,
    /// Steps a burst of items per user in one call (`step.chunk`), when the step graph runs.
    chunk: Option<Graph>,
    provider: ExecutionProvider,
    /// Score buffers that ranked rows gave back, for the next batch's scores.
    spare_scores: SpareScores,
}

/// Score buffers returned by [`ScoredRows::rank`] (on another thread) for reuse: a batch's scores
/// are megabytes, and a fresh buffer each batch cost page faults and zeroing.
type SpareScores = Arc<std::sync::Mutex<Vec<Vec<f32>>>>;

/// One ONNX graph with the outputs the daemon fetches.
struct Graph {
    session: Session,
    run_options: RunOptions<ort::session::HasSelectedOutputs>,
    /// How a recommender graph's rows become top K (None for graphs that only build state).
    ranking: Option<Ranking>,
    /// One batch buffer per state input, kept between calls: a sasrec-ml100k batch of 256 is 6 MB,
    /// and allocating it afresh cost page faults and zeroing on every micro-batch.
    state_batches: Vec<Vec<f32>>,
}

/// Where a row's top K is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ranking {
    /// The graph returns every item's score (`scores`) and the daemon keeps the best K, leaving the
    /// row's seen items out as it goes. ONNX Runtime's TopK cost about as much as the rest of
    /// sasrec's step graph on CPU (docs/performance.md, "Ranking in the daemon"), so the shipped
    /// graphs end at `scores`.
    Scores,
    /// The graph ranks (`top_items`, `top_scores`: `candidates` per row, seen items included) and
    /// the daemon drops the seen ones: a graph exported with its TopK, such as one for a GPU, where
    /// ranking on the device saves copying every score back.
    InGraph,
}

/// Top-K items for one row of a batch.
pub type TopK = Vec<ScoredItem>;

/// A batch's rows as a graph answered them, not yet ranked: every item's score (the daemon keeps
/// each row's best K in [`ScoredRows::rank`]) or the graph's own ranking. Ranking and naming the
/// items cost about a third of what the step graph does, so the pipeline ranks on another thread
/// than the one that runs the model.
pub struct ScoredRows {
    rows: Rows,
}

enum Rows {
    Ranked(Vec<TopK>),
    Scores {
        /// `rows × width` scores, index 0 the padding.
        scores: Vec<f32>,
        width: usize,
        /// Row r's items to leave out: `skip[skip_ends[r - 1]..skip_ends[r]]`.
        skip: Vec<i64>,
        skip_ends: Vec<usize>,
        k: usize,
        vocabulary: Arc<Vocabulary>,
        /// Where `scores` goes once ranked.
        spare: SpareScores,
    },
}

impl ScoredRows {
    pub fn len(&self) -> usize {
        match &self.rows {
            Rows::Ranked(top) => top.len(),
            Rows::Scores { skip_ends, .. } => skip_ends.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each row's top K, best first.
    pub fn rank(self) -> Vec<TopK> {
        let (scores, width, skip, skip_ends, k, vocabulary, spare) = match self.rows {
            Rows::Ranked(top) => return top,
            Rows::Scores {
                scores,
                width,
                skip,
                skip_ends,
                k,
                vocabulary,
                spare,
            } => (scores, width, skip, skip_ends, k, vocabulary, spare),
        };
        let mut masked = Vec::with_capacity(width);
        let mut start = 0;
        let top = scores
            .chunks(width)
            .zip(skip_ends)
            .map(|(row, end)| {
                let row_skip = &skip[start..end];
                start = end;
                best_k_in(row, k, row_skip, &mut masked)
                    .into_iter()
                    .filter_map(|(i, score)| named(&vocabulary, i, score))
                    .collect()
            })
            .collect();
        let mut spare = spare.lock().expect("spare scores lock");
        // Two in flight at most (one being ranked, one being scored); more would only hold memory.
        if spare.len() < 2 {
            spare.push(scores);
        }
        top
    }
}

fn named(vocabulary: &Vocabulary, index: i64, score: f32) -> Option<ScoredItem> {
    vocabulary.id_of(index).map(|id| ScoredItem {
        item_id: id.to_string(),
        score,
    })
}

fn run_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Run(e.to_string())
}

impl Model {
    pub fn load(config: &ModelConfig) -> Result<Model, ModelError> {
        let env = init_runtime(config.runtime_library.as_deref())?;
        let manifest = Manifest::load(&config.path)?;
        let vocabulary = Arc::new(Vocabulary::load(
            &config.path.join(&manifest.vocabulary_file),
            manifest.n_items,
        )?);
        let (full, provider) = open_graph(
            &env,
            config,
            &config.path.join(&manifest.model_file),
            true,
            &[],
        )?;
        let use_step =
            match config.mode {
                ModelMode::Full => false,
                ModelMode::Auto => manifest.step.is_some(),
                ModelMode::Step if manifest.step.is_some() => true,
                ModelMode::Step => return Err(ModelError::Manifest {
                    path: config.path.join("model.json"),
                    message:
                        "has no `step` graph, but model.mode = \"step\"; use \"full\" or \"auto\""
                            .into(),
                }),
            };
        let step = match (&manifest.step, use_step) {
            (Some(spec), true) => {
                let outputs: Vec<&str> = spec.state.iter().map(|s| s.output.as_str()).collect();
                let path = config.path.join(&spec.model_file);
                Some(open_graph(&env, config, &path, true, &outputs)?.0)
            }
            _ => None,
        };
        // The graphs beside `step` that read and write its state, loaded only when it runs.
        let state_graph =
            |file: Option<&String>, ranked: bool| -> Result<Option<Graph>, ModelError> {
                let (Some(spec), Some(_), Some(file)) = (&manifest.step, &step, file) else {
                    return Ok(None);
                };
                let outputs: Vec<&str> = spec.state.iter().map(|s| s.output.as_str()).collect();
                let path = config.path.join(file);
                Ok(Some(open_graph(&env, config, &path, ranked, &outputs)?.0))
            };
        let step_spec = manifest.step.as_ref();
        let prefill = state_graph(
            step_spec
                .and_then(|s| s.prefill.as_ref())
                .map(|p| &p.model_file),
            false,
        )?;
        let chunk = state_graph(
            step_spec
                .and_then(|s| s.chunk.as_ref())
                .map(|c| &c.model_file),
            true,
        )?;
        Ok(Model {
            manifest,
            vocabulary,
            full,
            step,
            prefill,
            chunk,
            provider,
            spare_scores: SpareScores::default(),
        })
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// The step graph's state description when the daemon runs it (`model.mode`).
    pub fn step_state(&self) -> Option<&[StateSpec]> {
        self.step
            .as_ref()
            .and(self.manifest.step.as_ref())
            .map(|s| s.state.as_slice())
    }

    /// Whether the step state is a function of the user's window, so it is kept in RAM and rebuilt
    /// rather than stored (`step.history = "all"`).
    pub fn state_from_window(&self) -> bool {
        self.step.is_some()
            && self
                .manifest
                .step
                .as_ref()
                .is_some_and(StepManifest::state_from_window)
    }

    /// Whether [`Model::prefill`] can rebuild a state in one call (else it is replayed step by step).
    pub fn has_prefill(&self) -> bool {
        self.prefill.is_some()
    }

    /// As if the model directory had no prefill graph (tests of the replay path).
    #[cfg(test)]
    pub(crate) fn forget_prefill(&mut self) {
        self.prefill = None;
    }

    /// The positions one item attends to in [`Model::chunk_scored`] (itself included), when the
    /// chunk graph is loaded.
    pub fn chunk_span(&self) -> Option<usize> {
        self.chunk.as_ref()?;
        Some(self.manifest.step.as_ref()?.chunk.as_ref()?.span)
    }

    /// As if the model directory had no chunk graph (tests compare it with stepping one by one).
    #[cfg(test)]
    pub(crate) fn forget_chunk(&mut self) {
        self.chunk = None;
    }

    /// Identifies the graph that wrote a stored state: state of another model or version is rebuilt.
    pub fn state_owner(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    /// The state of a user the model has seen nothing of, held at `precision`.
    pub fn empty_state(&self, precision: StatePrecision) -> StateTensors {
        StateTensors::zeros(self.state_lengths(), precision)
    }

    /// Values per user in each state tensor of the step graph (none without one).
    pub fn state_lengths(&self) -> Vec<usize> {
        self.step_state().map(state::lengths).unwrap_or_default()
    }

    /// Left-pads (or cuts to the most recent) item indices to the model's window; unknown items are skipped.
    pub fn encode_window<'a>(
        &self,
        recent_items: impl DoubleEndedIterator<Item = &'a str>,
        out: &mut Vec<i64>,
    ) {
        let window = self.manifest.window;
        let mut row: Vec<i64> = recent_items
            .rev()
            .filter_map(|id| self.vocabulary.index_of(id))
            .take(window)
            .collect();
        row.resize(window, 0);
        row.reverse();
        out.extend_from_slice(&row);
    }

    /// The `full` graph for a whole micro-batch: `item_seq` holds `rows × window` indices. With
    /// `exclude_seen`, items in a row's own window are dropped from its recommendations.
    pub fn recommend(
        &mut self,
        item_seq: Vec<i64>,
        rows: usize,
        exclude_seen: bool,
    ) -> Result<Vec<TopK>, ModelError> {
        Ok(self.recommend_scored(item_seq, rows, exclude_seen)?.rank())
    }

    /// [`Model::recommend`] with the ranking left to the caller.
    pub fn recommend_scored(
        &mut self,
        item_seq: Vec<i64>,
        rows: usize,
        exclude_seen: bool,
    ) -> Result<ScoredRows, ModelError> {
        if rows == 0 {
            return Ok(ScoredRows {
                rows: Rows::Ranked(Vec::new()),
            });
        }
        let window = self.manifest.window;
        debug_assert_eq!(item_seq.len(), rows * window);
        let input = Tensor::from_array(([rows, window], item_seq.clone())).map_err(run_err)?;
        let outputs = self
            .full
            .session
            .run_with_options(ort::inputs!["item_seq" => input], &self.full.run_options)
            .map_err(run_err)?;
        let seen: Vec<&[i64]> = item_seq.chunks(window).collect();
        top_k(
            &self.manifest,
            &self.vocabulary,
            &self.spare_scores,
            &outputs,
            self.full.ranking,
            rows,
            exclude_seen.then_some(&seen[..]),
        )
    }

    /// The `prefill` graph: each row's state after its window (`rows × window` indices, left-padded
    /// as [`Model::encode_window`] writes them), equal to stepping the row's items one by one; held
    /// at `precision`.
    pub fn prefill(
        &mut self,
        item_seq: Vec<i64>,
        rows: usize,
        precision: StatePrecision,
    ) -> Result<Vec<StateTensors>, ModelError> {
        let (Some(graph), Some(spec)) = (self.prefill.as_mut(), self.manifest.step.as_ref()) else {
            return Err(ModelError::Run("the prefill graph is not loaded".into()));
        };
        let Some(prefill) = spec.prefill.as_ref() else {
            return Err(ModelError::Run("the manifest has no step.prefill".into()));
        };
        if rows == 0 {
            return Ok(Vec::new());
        }
        let window = self.manifest.window;
        debug_assert_eq!(item_seq.len(), rows * window);
        let input = Tensor::from_array(([rows, window], item_seq)).map_err(run_err)?;
        let outputs = graph
            .session
            .run_with_options(
                vec![(prefill.input.clone(), input.into_dyn())],
                &graph.run_options,
            )
            .map_err(run_err)?;
        let mut states = vec![StateTensors::zeros(state::lengths(&spec.state), precision); rows];
        let mut rows: Vec<&mut StateTensors> = states.iter_mut().collect();
        write_state_outputs(&spec.state, &outputs, &mut rows, StateOutputs::Whole)?;
        Ok(states)
    }

    /// The `step` graph for one round of a micro-batch: row r feeds `items[r]` to the state
    /// `states[r]`, which is replaced by the new state in place (at its own precision). Returns each
    /// row's top-K.
    pub fn step(
        &mut self,
        items: Vec<i64>,
        states: &mut [&mut StateTensors],
        seen: &[&[i64]],
        exclude_seen: bool,
    ) -> Result<Vec<TopK>, ModelError> {
        Ok(self.step_scored(items, states, seen, exclude_seen)?.rank())
    }

    /// [`Model::step`] with the ranking left to the caller.
    pub fn step_scored(
        &mut self,
        items: Vec<i64>,
        states: &mut [&mut StateTensors],
        seen: &[&[i64]],
        exclude_seen: bool,
    ) -> Result<ScoredRows, ModelError> {
        let rows = items.len();
        let (Some(graph), Some(spec)) = (self.step.as_mut(), self.manifest.step.as_ref()) else {
            return Err(ModelError::Run("the step graph is not loaded".into()));
        };
        if rows == 0 {
            return Ok(ScoredRows {
                rows: Rows::Ranked(Vec::new()),
            });
        }
        let item = Tensor::from_array(([rows], items)).map_err(run_err)?;
        let rows = StatefulRows {
            inputs: vec![(spec.item_input.clone(), item.into())],
            rows,
            states,
            seen: exclude_seen.then_some(seen),
            outputs: StateOutputs::Step,
        };
        let ranking = RankingContext {
            manifest: &self.manifest,
            vocabulary: &self.vocabulary,
            spare: &self.spare_scores,
        };
        run_stateful(graph, &spec.state, rows, ranking)
    }
}

/// A stateful recommender graph's call: its other inputs, the rows it answers, the states it
/// replaces in place, and the items each row leaves out (`None`: nothing).
struct StatefulRows<'a, 'b> {
    inputs: Vec<(String, SessionInputValue<'static>)>,
    rows: usize,
    states: &'a mut [&'b mut StateTensors],
    seen: Option<&'a [&'a [i64]]>,
    outputs: StateOutputs,
}

/// What ranking a graph's rows needs from the model.
struct RankingContext<'a> {
    manifest: &'a Manifest,
    vocabulary: &'a Arc<Vocabulary>,
    spare: &'a SpareScores,
}

/// Runs a graph that takes and returns step state (`step`, `chunk`): the rows' states are stacked
/// into the graph's inputs and replaced by its outputs; returns the rows' scores for ranking.
fn run_stateful(
    graph: &mut Graph,
    specs: &[StateSpec],
    call: StatefulRows<'_, '_>,
    context: RankingContext<'_>,
) -> Result<ScoredRows, ModelError> {
    let Graph {
        session,
        run_options,
        ranking,
        state_batches,
    } = graph;
    let StatefulRows {
        inputs: given,
        rows,
        states,
        seen,
        outputs: from,
    } = call;
    let mut inputs: Vec<(String, SessionInputValue<'_>)> =
        Vec::with_capacity(given.len() + specs.len());
    inputs.extend(given);
    push_state_inputs(specs, states, state_batches, &mut inputs)?;
    let outputs = session
        .run_with_options(inputs, run_options)
        .map_err(run_err)?;
    let top = top_k(
        context.manifest,
        context.vocabulary,
        context.spare,
        &outputs,
        *ranking,
        rows,
        seen,
    )?;
    write_state_outputs(specs, &outputs, states, from)?;
    Ok(top)
}

/// The `chunk` graph: several items per user in one call. `items` holds every user's new items,
/// each user's in order; `keys` and `tails` the pool positions ([`ChunkManifest`]) each item attends
/// to and each user keeps; `states[b]`, user b's state, is replaced in place by the state after its
/// items; `seen[r]` the items row r leaves out. Returns one row per item.
pub struct Chunk<'a, 'b> {
    pub items: Vec<i64>,
    pub keys: Vec<i64>,
    pub tails: Vec<i64>,
    pub states: &'a mut [&'b mut StateTensors],
    pub seen: &'a [&'a [i64]],
}

impl Model {
    pub fn chunk_scored(
        &mut self,
        chunk: Chunk<'_, '_>,
        exclude_seen: bool,
    ) -> Result<ScoredRows, ModelError> {
        let Chunk {
            items,
            keys,
            tails,
            states,
            seen,
        } = chunk;
        let (Some(graph), Some(spec)) = (self.chunk.as_mut(), self.manifest.step.as_ref()) else {
            return Err(ModelError::Run("the chunk graph is not loaded".into()));
        };
        let Some(chunk) = spec.chunk.as_ref() else {
            return Err(ModelError::Run("the manifest has no step.chunk".into()));
        };
        let (rows, users) = (items.len(), states.len());
        if keys.len() != rows * chunk.span || tails.len() != users * (chunk.span - 1) {
            return Err(run_err(format!(
                "a chunk of {rows} items for {users} users needs {rows} × {} keys and {users} × {} tails, got {} and {}",
                chunk.span,
                chunk.span - 1,
                keys.len(),
                tails.len()
            )));
        }
        if rows == 0 {
            return Ok(ScoredRows {
                rows: Rows::Ranked(Vec::new()),
            });
        }
        let inputs = vec![
            (
                chunk.items_input.clone(),
                Tensor::from_array(([rows], items)).map_err(run_err)?.into(),
            ),
            (
                chunk.keys_input.clone(),
                Tensor::from_array(([rows, chunk.span], keys))
                    .map_err(run_err)?
                    .into(),
            ),
            (
                chunk.tails_input.clone(),
                Tensor::from_array(([users, chunk.span - 1], tails))
                    .map_err(run_err)?
                    .into(),
            ),
        ];
        let rows = StatefulRows {
            inputs,
            rows,
            states,
            seen: exclude_seen.then_some(seen),
            outputs: StateOutputs::Whole,
        };
        let ranking = RankingContext {
            manifest: &self.manifest,
            vocabulary: &self.vocabulary,
            spare: &self.spare_scores,
        };
        run_stateful(graph, &spec.state, rows, ranking)
    }
}

/// Adds each state tensor of a batch to a step graph's inputs: the rows' states stacked along the
/// spec's batch axis in `buffers` (one per state input, kept between calls), which the inputs
/// borrow.
fn push_state_inputs<'b>(
    specs: &[StateSpec],
    states: &[&mut StateTensors],
    buffers: &'b mut Vec<Vec<f32>>,
    inputs: &mut Vec<(String, SessionInputValue<'b>)>,
) -> Result<(), ModelError> {
    let lengths = state::lengths(specs);
    if let Some(bad) = states.iter().find(|s| !s.has_lengths(&lengths)) {
        return Err(run_err(format!(
            "a state of {} tensors does not fit the step graph's {lengths:?} values per user",
            bad.len()
        )));
    }
    let rows: Vec<&StateTensors> = states.iter().map(|s| &**s).collect();
    buffers.resize_with(specs.len(), Vec::new);
    for ((n, s), buffer) in specs.iter().enumerate().zip(buffers.iter_mut()) {
        let mut shape = s.dims();
        shape[s.batch_axis] = rows.len();
        let batch = state::gather(s, n, &rows, buffer);
        let tensor = TensorRef::from_array_view((shape, batch)).map_err(run_err)?;
        inputs.push((s.input.clone(), tensor.into()));
    }
    Ok(())
}

/// Which graph a state output came from: the step graph's may hold only the newest entry of a
/// state with `append_axis`; the prefill and chunk graphs' are always the whole state.
#[derive(Clone, Copy, PartialEq)]
enum StateOutputs {
    Step,
    Whole,
}

/// Writes a graph's state outputs back into the rows' states, in place.
fn write_state_outputs(
    specs: &[StateSpec],
    outputs: &ort::session::SessionOutputs<'_>,
    states: &mut [&mut StateTensors],
    from: StateOutputs,
) -> Result<(), ModelError> {
    let rows = states.len();
    for (n, s) in specs.iter().enumerate() {
        let (_, batch) = outputs[s.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(run_err)?;
        let append_axis = s.append_axis.filter(|_| from == StateOutputs::Step);
        let expected = match append_axis {
            Some(_) => s.output_floats_per_user(),
            None => s.floats_per_user(),
        };
        if batch.len() != rows * expected {
            return Err(run_err(format!(
                "state output `{}` has {} floats, expected {rows} × {expected}",
                s.output,
                batch.len(),
            )));
        }
        match append_axis {
            Some(axis) => state::append(s, n, axis, batch, states),
            None => state::scatter(s, n, batch, states),
        }
    }
    Ok(())
}

/// The batch's rows for ranking: each row's `scores` (copied out of the graph's output) with the
/// items to leave out of it (`skip`, one list per row; `None` leaves nothing out), or the graph's
/// own ranking ([`Ranking`]) with those items dropped.
fn top_k(
    manifest: &Manifest,
    vocabulary: &Arc<Vocabulary>,
    spare: &SpareScores,
    outputs: &ort::session::SessionOutputs<'_>,
    ranking: Option<Ranking>,
    rows: usize,
    skip: Option<&[&[i64]]>,
) -> Result<ScoredRows, ModelError> {
    let skip_of = |row: usize| skip.and_then(|s| s.get(row).copied()).unwrap_or(&[]);
    if ranking == Some(Ranking::Scores) {
        let (_, scores) = outputs["scores"]
            .try_extract_tensor::<f32>()
            .map_err(run_err)?;
        let width = manifest.n_items + 1;
        if scores.len() != rows * width {
            return Err(run_err(format!(
                "expected {rows}×{width} scores, got {}; the manifest's `n_items` does not match the graph",
                scores.len()
            )));
        }
        let mut skipped = Vec::new();
        let mut skip_ends = Vec::with_capacity(rows);
        for row in 0..rows {
            skipped.extend_from_slice(skip_of(row));
            skip_ends.push(skipped.len());
        }
        let mut copy = spare
            .lock()
            .expect("spare scores lock")
            .pop()
            .unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(scores);
        return Ok(ScoredRows {
            rows: Rows::Scores {
                scores: copy,
                width,
                skip: skipped,
                skip_ends,
                k: manifest.k,
                vocabulary: vocabulary.clone(),
                spare: spare.clone(),
            },
        });
    }
    let (_, items) = outputs["top_items"]
        .try_extract_tensor::<i64>()
        .map_err(run_err)?;
    let (_, scores) = outputs["top_scores"]
        .try_extract_tensor::<f32>()
        .map_err(run_err)?;
    let (k, candidates) = (manifest.k, manifest.candidates);
    if items.len() != rows * candidates || scores.len() != items.len() {
        return Err(run_err(format!(
            "expected {rows}×{candidates} outputs, got {} items and {} scores; the manifest's `candidates` does not match the graph",
            items.len(),
            scores.len()
        )));
    }
    let top = items
        .chunks(candidates)
        .zip(scores.chunks(candidates))
        .enumerate()
        .map(|(row, (items, scores))| {
            let skip = skip_of(row);
            items
                .iter()
                .copied()
                .zip(scores.iter().copied())
                .filter(|(i, _)| !skip.contains(i))
                .filter_map(|(i, s)| named(vocabulary, i, s))
                .take(k)
                .collect()
        })
        .collect();
    Ok(ScoredRows {
        rows: Rows::Ranked(top),
    })
}

/// The `k` highest of one row of scores (index 0 is padding and never ranked), best first, equal
/// scores in index order as ONNX's TopK returns them; `skip` items and NaN scores are left out.
#[cfg(test)]
fn best_k(scores: &[f32], k: usize, skip: &[i64]) -> Vec<(i64, f32)> {
    best_k_in(scores, k, skip, &mut Vec::new())
}

/// [`best_k`] with a scratch row of the caller's, kept between rows.
///
/// Two passes. The first finds a floor that the k-th best cannot be below: the row is read as
/// `COLUMNS`-wide blocks and each column keeps its highest rankable score (element-wise maxima,
/// one vector instruction per 4–8 scores); each column's maximum is a distinct rankable item, so the
/// k-th highest of them is at most the k-th best of the row. The second pass looks only at blocks of
/// 16 with a score at or above that floor (one vector comparison each), usually a handful. A single
/// pass that raises its floor as it goes looked at about 450 of MovieLens-100k's 1,683 scores per
/// row, each a hard-to-predict branch, and was 13% of the pipeline thread.
fn best_k_in(scores: &[f32], k: usize, skip: &[i64], masked: &mut Vec<f32>) -> Vec<(i64, f32)> {
    const BLOCK: usize = 16;
    let mut best: Vec<(i64, f32)> = Vec::with_capacity(k + 1);
    if k == 0 || scores.is_empty() {
        return best;
    }
    // Seen items as a bitmap, for the exact check of each candidate.
    let mut skipped = vec![0u64; scores.len().div_ceil(64)];
    for i in skip.iter().filter_map(|&i| usize::try_from(i).ok()) {
        if let Some(word) = skipped.get_mut(i / 64) {
            *word |= 1 << (i % 64);
        }
    }
    let floor = rank_floor(scores, k, skip, masked);
    let consider = |best: &mut Vec<(i64, f32)>, i: usize, s: f32| {
        if i == 0 || s.is_nan() || s < floor || (best.len() == k && s <= best[k - 1].1) {
            return;
        }
        if skipped[i / 64] & (1 << (i % 64)) != 0 {
            return;
        }
        let at = best.partition_point(|&(_, held)| held >= s);
        best.insert(at, (i as i64, s));
        best.truncate(k);
    };
    let blocks = scores.chunks_exact(BLOCK);
    let tail = blocks.remainder();
    let whole = scores.len() - tail.len();
    for (b, block) in blocks.enumerate() {
        // A fixed-size block and `|` rather than `any` (no early exit): one vector comparison.
        let bar = best
            .last()
            .filter(|_| best.len() == k)
            .map_or(floor, |&(_, s)| s.max(floor));
        if !block.iter().fold(false, |beats, &s| beats | (s >= bar)) {
            continue;
        }
        for (j, &s) in block.iter().enumerate() {
            consider(&mut best, b * BLOCK + j, s);
        }
    }
    for (j, &s) in tail.iter().enumerate() {
        consider(&mut best, whole + j, s);
    }
    best
}

/// A score the k-th best rankable score of `scores` is at least (−∞ when the row is too short to
/// be worth it): the k-th highest of the column maxima of the row read `columns` wide, over a copy
/// in `masked` with padding and `skip` items at −∞ (NaN never wins a comparison, so it is never a
/// maximum).
fn rank_floor(scores: &[f32], k: usize, skip: &[i64], masked: &mut Vec<f32>) -> f32 {
    const COLUMNS: usize = 16;
    let columns = k.div_ceil(COLUMNS).max(1) * COLUMNS;
    if scores.len() < 4 * columns {
        return f32::NEG_INFINITY;
    }
    masked.clear();
    masked.extend_from_slice(scores);
    masked[0] = f32::NEG_INFINITY;
    for i in skip.iter().filter_map(|&i| usize::try_from(i).ok()) {
        if let Some(s) = masked.get_mut(i) {
            *s = f32::NEG_INFINITY;
        }
    }
    let mut maxima = vec![f32::NEG_INFINITY; columns];
    let rows = masked.chunks_exact(columns);
    let tail = rows.remainder();
    for row in rows {
        // Element-wise over equal-length slices: compiles to packed max instructions.
        for (m, &s) in maxima.iter_mut().zip(row) {
            *m = if s > *m { s } else { *m };
        }
    }
    for (m, &s) in maxima.iter_mut().zip(tail) {
        *m = if s > *m { s } else { *m };
    }
    // The k-th highest; −∞ columns (nothing rankable) sort last and give −∞, no pruning.
    maxima.sort_unstable_by(|a, b| b.total_cmp(a));
    maxima[k - 1]
}

/// What `run` would load, checked without loading it (`longmem check-config`): the model's and the
/// forecaster's manifests (with supply on), every graph and vocabulary file they name, and the ONNX
/// Runtime library. Returns a line saying what was found.
pub fn check_installed(config: &crate::config::Config) -> Result<String, ModelError> {
    let dir = &config.model.path;
    let manifest = Manifest::load(dir)?;
    let mut files = vec![
        dir.join(&manifest.model_file),
        dir.join(&manifest.vocabulary_file),
    ];
    if let Some(step) = &manifest.step {
        files.push(dir.join(&step.model_file));
        if let Some(prefill) = &step.prefill {
            files.push(dir.join(&prefill.model_file));
        }
        if let Some(chunk) = &step.chunk {
            files.push(dir.join(&chunk.model_file));
        }
    }
    if config.supply.enabled {
        let forecaster = forecaster::ForecasterManifest::load(&config.supply.forecaster)?;
        files.push(config.supply.forecaster.join(&forecaster.step.model_file));
    }
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(ModelError::Load {
            path: missing.clone(),
            message: "the file is missing: the model directory is incomplete".into(),
        });
    }
    let library = runtime_library(config.model.runtime_library.as_deref())?;
    Ok(format!(
        "model {} v{}, ONNX Runtime {}",
        manifest.name,
        manifest.version,
        library.display()
    ))
}

/// Opens one graph on the configured execution provider, fetching only `outputs` (each must exist)
/// and, for a recommender graph (`ranked`), what its rows are ranked from: `scores` when the graph
/// has no `top_items` of its own, else `top_items` and `top_scores`.
fn open_graph(
    env: &ort::environment::Environment,
    config: &ModelConfig,
    path: &Path,
    ranked: bool,
    outputs: &[&str],
) -> Result<(Graph, ExecutionProvider), ModelError> {
    let load_err = |e: &dyn std::fmt::Display| ModelError::Load {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut builder = Session::builder(env)
        .map_err(|e| load_err(&e))?
        .with_intra_threads(config.intra_threads)
        .map_err(|e| load_err(&e))?
        .with_intra_op_spinning(config.intra_op_spinning)
        .map_err(|e| load_err(&e))?;
    let provider = match config.execution_provider {
        ExecutionProvider::Cpu => ExecutionProvider::Cpu,
        ExecutionProvider::Cuda => register_cuda(&mut builder, config.allow_cpu_fallback)?,
    };
    let session = builder.commit_from_file(path).map_err(|e| load_err(&e))?;
    let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
    let ranking = ranked.then(|| match names.contains(&"top_items") {
        true => Ranking::InGraph,
        false => Ranking::Scores,
    });
    let ranked_from: &[&str] = match ranking {
        Some(Ranking::Scores) => &["scores"],
        Some(Ranking::InGraph) => &["top_items", "top_scores"],
        None => &[],
    };
    let mut selector = ort::session::OutputSelector::no_default();
    for wanted in ranked_from.iter().chain(outputs) {
        if !names.contains(wanted) {
            return Err(load_err(&format!(
                "the graph has no output `{wanted}` (it has {names:?})"
            )));
        }
        selector = selector.with(*wanted);
    }
    let run_options = RunOptions::new()
        .map_err(|e| load_err(&e))?
        .with_outputs(selector);
    Ok((
        Graph {
            session,
            run_options,
            ranking,
            state_batches: Vec::new(),
        },
        provider,
    ))
}

#[cfg(feature = "cuda")]
fn register_cuda(
    builder: &mut ort::session::builder::SessionBuilder,
    allow_cpu_fallback: bool,
) -> Result<ExecutionProvider, ModelError> {
    let cuda = ort::ep::CUDA::default().build().error_on_failure();
    match cuda.register(builder) {
        Ok(()) => Ok(ExecutionProvider::Cuda),
        Err(e) if allow_cpu_fallback => {
            tracing::warn!(error = %e, "CUDA execution provider unavailable; falling back to CPU as allowed by model.allow_cpu_fallback");
            Ok(ExecutionProvider::Cpu)
        }
        Err(e) => Err(ModelError::Cuda(e.to_string())),
    }
}

#[cfg(not(feature = "cuda"))]
fn register_cuda(
    _builder: &mut ort::session::builder::SessionBuilder,
    allow_cpu_fallback: bool,
) -> Result<ExecutionProvider, ModelError> {
    if allow_cpu_fallback {
        tracing::warn!(
            "this build has no CUDA support (cargo feature `cuda`); running on CPU as allowed"
        );
        Ok(ExecutionProvider::Cpu)
    } else {
        Err(ModelError::Cuda(
            "this binary was built without the `cuda` cargo feature".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn vocabulary_maps_both_ways_and_checks_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.txt");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        let v = Vocabulary::load(&path, 3).unwrap();
        assert_eq!(v.index_of("b"), Some(2));
        assert_eq!(v.id_of(3), Some("c"));
        assert_eq!(v.id_of(0), None);
        assert_eq!(v.id_of(4), None);
        assert!(Vocabulary::load(&path, 4).is_err());
    }

    /// A full sort of the row, as ONNX's TopK orders it (higher score first, then lower index).
    fn sorted_best(scores: &[f32], k: usize, skip: &[i64]) -> Vec<(i64, f32)> {
        let mut all: Vec<(i64, f32)> = (1..scores.len() as i64)
            .map(|i| (i, scores[i as usize]))
            .filter(|(i, s)| !s.is_nan() && !skip.contains(i))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }

    #[test]
    fn best_k_ranks_like_a_full_sort_and_leaves_out_padding_seen_items_and_nan() {
        // Ties at the k-th place, NaN, negative scores, padding (index 0) scoring highest.
        let scores = [9.0, 1.0, 3.0, f32::NAN, 3.0, -1.0, 3.0, 0.5, 2.0];
        assert_eq!(best_k(&scores, 3, &[]), vec![(2, 3.0), (4, 3.0), (6, 3.0)]);
        assert_eq!(best_k(&scores, 3, &[4]), vec![(2, 3.0), (6, 3.0), (8, 2.0)]);
        assert_eq!(best_k(&scores, 0, &[]), vec![]);
        // More wanted than there are items: every ranked item, once.
        assert_eq!(best_k(&scores, 20, &[]).len(), 7);
    }

    proptest::proptest! {
        #[test]
        fn best_k_equals_the_head_of_a_full_sort(
            // Few distinct values, so ties are common; rows span several blocks; some NaN and -inf.
            row in proptest::collection::vec(-4i8..5, 1..700),
            k in 0usize..30,
            skip in proptest::collection::vec(-5i64..720, 0..80),
        ) {
            let scores: Vec<f32> = row
                .iter()
                .map(|&v| match v {
                    4 => f32::NAN,
                    -4 => f32::NEG_INFINITY,
                    v => f32::from(v) / 2.0,
                })
                .collect();
            proptest::prop_assert_eq!(best_k(&scores, k, &skip), sorted_best(&scores, k, &skip));
        }
    }

    #[test]
    fn manifest_errors_name_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.json") && err.contains("cannot be read"),
            "{err}"
        );
        std::fs::write(
            dir.path().join("model.json"),
            r#"{"name":"x","version":"1"}"#,
        )
        .unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("kind") || err.contains("missing field"),
            "{err}"
        );
    }

    /// An `append_axis` must name an axis after the batch axis: anything else is refused at load
    /// with the state's name, before a step could write past a user's state.
    #[test]
    fn append_axis_outside_the_state_is_refused() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sasrec-ml100k");
        let text = std::fs::read_to_string(shipped.join("model.json")).unwrap();
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let k_cache = json["step"]["state"]
            .as_array()
            .unwrap()
            .iter()
            .position(|s| s["name"] == "k_cache")
            .expect("the shipped model has a k_cache");
        assert_eq!(
            json["step"]["state"][k_cache]["append_axis"], 3,
            "the shipped cache appends"
        );
        for bad in [0, 1, 5] {
            json["step"]["state"][k_cache]["append_axis"] = bad.into();
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("model.json"), json.to_string()).unwrap();
            let err = Manifest::load(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains("k_cache") && err.contains("append_axis"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn chunk_that_does_not_fit_the_cache_is_refused() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sasrec-ml100k");
        let text = std::fs::read_to_string(shipped.join("model.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["step"]["chunk"]["span"], 25,
            "the shipped model has a chunk graph"
        );
        for (field, bad) in [
            ("/step/chunk/span", serde_json::json!(24)),
            ("/step/chunk/span", serde_json::json!(0)),
            ("/step/history", serde_json::json!("window")),
        ] {
            let mut json = json.clone();
            *json.pointer_mut(field).unwrap() = bad.clone();
            // A prefill graph also needs history "all": without it only the chunk is at fault.
            json["step"].as_object_mut().unwrap().remove("prefill");
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("model.json"), json.to_string()).unwrap();
            let err = Manifest::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains("step.chunk"), "{field} = {bad}: {err}");
        }
    }

    #[test]
    fn shipped_manifest_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sasrec-ml100k");
        let m = Manifest::load(&dir).unwrap();
        let v = Vocabulary::load(&dir.join(&m.vocabulary_file), m.n_items).unwrap();
        assert!(v.index_of("50").is_some());
        assert_eq!(m.kind, "full");
    }

    fn shipped_model_config(provider: ExecutionProvider, allow_cpu_fallback: bool) -> ModelConfig {
        ModelConfig {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("models/sasrec-ml100k"),
            execution_provider: provider,
            allow_cpu_fallback,
            exclude_seen: true,
            mode: ModelMode::Auto,
            intra_threads: 1,
            intra_op_spinning: false,
            runtime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        }
    }

    #[test]
    fn shipped_model_recommends_k_unseen_items() {
        let mut model = Model::load(&shipped_model_config(ExecutionProvider::Cpu, false)).unwrap();
        assert_eq!(model.provider(), ExecutionProvider::Cpu);
        let (k, window) = (model.manifest.k, model.manifest.window);
        let histories: [&[&str]; 3] = [&["50", "181", "258"], &[], &["not-in-vocabulary", "1"]];
        let mut item_seq = Vec::new();
        for h in histories {
            model.encode_window(h.iter().copied(), &mut item_seq);
        }
        assert_eq!(item_seq.len(), 3 * window);
        assert_eq!(
            &item_seq[window - 3..window],
            &[
                model.vocabulary.index_of("50").unwrap(),
                model.vocabulary.index_of("181").unwrap(),
                model.vocabulary.index_of("258").unwrap()
            ]
        );
        let top = model.recommend(item_seq, 3, true).unwrap();
        assert_eq!(top.len(), 3);
        for (row, h) in top.iter().zip(histories) {
            assert_eq!(row.len(), k);
            assert!(
                row.windows(2).all(|w| w[0].score >= w[1].score),
                "best first"
            );
            assert!(
                row.iter().all(|i| !h.contains(&i.item_id.as_str())),
                "seen items are left out"
            );
        }
    }

    /// Rows handed on for ranking are ranked as they were scored, whichever is ranked first and
    /// whether their score buffer is fresh or one an earlier, larger batch gave back.
    #[test]
    fn rows_ranked_later_on_reused_buffers_equal_rows_ranked_at_once() {
        let config = shipped_model_config(ExecutionProvider::Cpu, false);
        let mut model = Model::load(&config).unwrap();
        let mut fresh = Model::load(&config).unwrap();
        let rows_of = |model: &Model, histories: &[&[&str]]| {
            let mut seq = Vec::new();
            for h in histories {
                model.encode_window(h.iter().copied(), &mut seq);
            }
            seq
        };
        let big: [&[&str]; 3] = [&["50", "181"], &["1"], &["258", "100", "7"]];
        let small: [&[&str]; 1] = [&["300", "50"]];
        let (big_seq, small_seq) = (rows_of(&model, &big), rows_of(&model, &small));
        let want_big = fresh.recommend(big_seq.clone(), 3, true).unwrap();
        let want_small = fresh.recommend(small_seq.clone(), 1, true).unwrap();
        let names = |top: &[TopK]| -> Vec<Vec<String>> {
            top.iter()
                .map(|r| r.iter().map(|i| i.item_id.clone()).collect())
                .collect()
        };
        // Two batches in flight, ranked in the opposite order.
        let first = model.recommend_scored(big_seq.clone(), 3, true).unwrap();
        let second = model.recommend_scored(small_seq.clone(), 1, true).unwrap();
        assert_eq!((first.len(), second.len()), (3, 1));
        assert_eq!(names(&second.rank()), names(&want_small));
        assert_eq!(names(&first.rank()), names(&want_big));
        // Now both buffers are spare: the small batch gets one that held three rows.
        for _ in 0..2 {
            let got = model.recommend_scored(small_seq.clone(), 1, true).unwrap();
            assert_eq!(names(&got.rank()), names(&want_small));
            let got = model.recommend(big_seq.clone(), 3, true).unwrap();
            assert_eq!(names(&got), names(&want_big));
        }
        assert!(model.spare_scores.lock().unwrap().len() <= 2);
    }

    /// `step` fed event by event gives the same recommendations as `full` on the same prefix (the
    /// shipped SASRec's state covers its whole receptive field, so this holds for any history).
    #[test]
    #[cfg(feature = "tools")] // the MovieLens reader lives with the tools
    fn step_matches_full_on_real_histories() {
        let events = crate::tools::datasets::movielens_events(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/seqrec/recbole_ml100k"),
        )
        .unwrap();
        let mut histories: HashMap<String, Vec<String>> = HashMap::new();
        for e in events.iter().take(20_000) {
            histories
                .entry(e.user_id.clone())
                .or_default()
                .push(e.item_id.clone());
        }
        assert_step_matches_full("models/sasrec-ml100k", &histories);
    }

    /// The same on Amazon Games with the Games SASRec, whose two graphs share one `weights.bin`.
    #[test]
    fn step_matches_full_on_games_with_shared_weights() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/seqrec/sasrec_games/Video.txt");
        let mut histories: HashMap<String, Vec<String>> = HashMap::new();
        for line in std::fs::read_to_string(path).unwrap().lines().take(3_000) {
            let (user, item) = line.split_once(' ').unwrap();
            histories
                .entry(user.to_string())
                .or_default()
                .push(item.to_string());
        }
        assert_step_matches_full("models/sasrec-games", &histories);
    }

    fn assert_step_matches_full(dir: &str, histories: &HashMap<String, Vec<String>>) {
        let mut config = shipped_model_config(ExecutionProvider::Cpu, false);
        config.path = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut model = Model::load(&config).unwrap();
        assert!(model.step_state().is_some(), "{dir} has a step graph");
        let mut users: Vec<&String> = histories.keys().collect();
        users.sort();
        let window = model.manifest.window;
        let (mut compared, mut max_diff) = (0, 0f32);
        for user in users.into_iter().take(40) {
            let items: Vec<i64> = histories[user]
                .iter()
                .filter_map(|i| model.vocabulary.index_of(i))
                .collect();
            let mut state = model.empty_state(StatePrecision::F32);
            let mut seen: Vec<i64> = Vec::new();
            for (t, &item) in items.iter().enumerate() {
                seen.push(item);
                let recent = &seen[seen.len().saturating_sub(window)..];
                let top = model
                    .step(vec![item], &mut [&mut state], &[recent], true)
                    .unwrap();
                // Compare at a few points, including histories longer than the window.
                if t % 17 == 16 || t + 1 == items.len() {
                    let full = model.recommend(row_of(&model, recent), 1, true).unwrap();
                    let step_ids: Vec<&str> = top[0].iter().map(|i| i.item_id.as_str()).collect();
                    let full_ids: Vec<&str> = full[0].iter().map(|i| i.item_id.as_str()).collect();
                    assert_eq!(
                        step_ids,
                        full_ids,
                        "{dir}: user {user} after {} events",
                        t + 1
                    );
                    for (a, b) in top[0].iter().zip(&full[0]) {
                        max_diff = max_diff.max((a.score - b.score).abs());
                    }
                    compared += 1;
                }
            }
        }
        assert!(compared >= 40, "{dir}: compared {compared} points");
        assert!(
            max_diff < 1e-4,
            "{dir}: largest score difference {max_diff}"
        );
    }

    /// The full graph's input row for a window of item indices.
    fn row_of(model: &Model, items: &[i64]) -> Vec<i64> {
        let ids: Vec<&str> = items
            .iter()
            .map(|&i| model.vocabulary.id_of(i).unwrap())
            .collect();
        let mut row = Vec::new();
        model.encode_window(ids.into_iter(), &mut row);
        row
    }

    /// A graph that ranks itself (`top_items`, `top_scores`) and the same weights cut to `scores`
    /// give the same answers, full and step, with and without seen items: the daemon's ranking
    /// and the graph's agree. No shipped model ranks in its graph, so this fixture is where that
    /// path runs (tests/fixtures/tiny-sasrec/README.md).
    #[test]
    fn a_graph_that_ranks_itself_answers_like_one_that_returns_scores() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let load = |variant: &str| {
            let mut config = shipped_model_config(ExecutionProvider::Cpu, false);
            config.path = root.join("tests/fixtures/tiny-sasrec").join(variant);
            Model::load(&config).unwrap()
        };
        let mut in_graph = load("ranked-in-graph");
        let mut by_daemon = load("scores");
        assert_eq!(in_graph.full.ranking, Some(Ranking::InGraph));
        assert_eq!(
            in_graph.step.as_ref().unwrap().ranking,
            Some(Ranking::InGraph)
        );
        assert_eq!(by_daemon.full.ranking, Some(Ranking::Scores));
        let text =
            std::fs::read_to_string(root.join("training/tests/data/tiny_user_item.txt")).unwrap();
        let mut histories: HashMap<&str, Vec<i64>> = HashMap::new();
        for line in text.lines() {
            let (user, item) = line.split_once(' ').unwrap();
            let item = in_graph.vocabulary.index_of(item).unwrap();
            histories.entry(user).or_default().push(item);
        }
        let ids = |top: &TopK| -> Vec<String> { top.iter().map(|i| i.item_id.clone()).collect() };
        let k = in_graph.manifest.k;
        let mut answers = 0;
        for items in histories.values() {
            let mut states = [
                in_graph.empty_state(StatePrecision::F32),
                by_daemon.empty_state(StatePrecision::F32),
            ];
            for t in 0..items.len() {
                let seen = &items[..=t];
                let [a, b] = &mut states;
                let stepped = in_graph
                    .step(vec![items[t]], &mut [a], &[seen], true)
                    .unwrap();
                let want = by_daemon
                    .step(vec![items[t]], &mut [b], &[seen], true)
                    .unwrap();
                assert_eq!(ids(&stepped[0]), ids(&want[0]), "step after {seen:?}");
                let row = row_of(&in_graph, seen);
                for exclude_seen in [true, false] {
                    let got = in_graph.recommend(row.clone(), 1, exclude_seen).unwrap();
                    let want = by_daemon.recommend(row.clone(), 1, exclude_seen).unwrap();
                    assert_eq!(ids(&got[0]), ids(&want[0]), "full after {seen:?}");
                    assert_eq!(got[0].len(), k);
                    for (g, w) in got[0].iter().zip(&want[0]) {
                        assert!((g.score - w.score).abs() < 1e-5, "{g:?} vs {w:?}");
                    }
                    let leaked = got[0].iter().any(|i| {
                        let index = in_graph.vocabulary.index_of(&i.item_id).unwrap();
                        seen.contains(&index)
                    });
                    assert!(!(leaked && exclude_seen), "a seen item after {seen:?}");
                    answers += 1;
                }
            }
        }
        assert_eq!(answers, 2 * text.lines().count());
    }

    /// Every recommender shipped under models/ loads and answers.
    #[test]
    fn every_shipped_recommender_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let mut loaded = Vec::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            let dir = entry.unwrap().path();
            let Ok(text) = std::fs::read_to_string(dir.join("model.json")) else {
                continue;
            };
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            if json["kind"] != "full" {
                continue; // the demand forecaster has its own runtime
            }
            let mut config = shipped_model_config(ExecutionProvider::Cpu, false);
            config.path = dir.clone();
            let mut model = Model::load(&config).unwrap();
            let first = model.vocabulary.id_of(1).unwrap().to_string();
            let mut row = Vec::new();
            model.encode_window([first.as_str()].into_iter(), &mut row);
            let top = model.recommend(row, 1, true).unwrap();
            assert_eq!(top[0].len(), model.manifest.k, "{}", dir.display());
            assert!(
                model.step_state().is_some(),
                "{} has a step graph",
                dir.display()
            );
            loaded.push(dir);
        }
        assert!(loaded.len() >= 3, "loaded {loaded:?}");
    }

    /// On a machine without a GPU the CUDA provider cannot register: refuse, or run on CPU if allowed.
    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_that_cannot_register_refuses_to_start_unless_fallback_is_allowed() {
        if std::env::var_os("LONGMEM_EXPECT_CUDA").is_some() {
            return; // on a GPU machine the provider does register; see GPU.md
        }
        let err = Model::load(&shipped_model_config(ExecutionProvider::Cuda, false))
            .err()
            .expect("refused");
        assert!(matches!(err, ModelError::Cuda(_)), "{err}");
        assert!(err.to_string().contains("allow_cpu_fallback"), "{err}");
        let model = Model::load(&shipped_model_config(ExecutionProvider::Cuda, true)).unwrap();
        assert_eq!(model.provider(), ExecutionProvider::Cpu);
    }

    #[test]
    fn missing_runtime_library_is_a_clear_error() {
        let err = init_runtime(Some(Path::new("/nonexistent/libonnxruntime.so")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ORT_DYLIB_PATH") && err.contains("does not exist"),
            "{err}"
        );
    }
}
