//! The model manifest (`model.json`) and the item vocabulary of a model directory.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::ModelError;

#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<serde_json::Value>,
}

/// `model.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// `full`: the graph re-reads the item window on every call.
    pub kind: String,
    #[serde(default = "default_model_file")]
    pub model_file: String,
    pub vocabulary_file: String,
    pub n_items: usize,
    /// Sequence length the graph was exported with.
    pub window: usize,
    /// Items in one recommendation.
    pub k: usize,
    /// Items a graph that ranks itself (`top_items`) returns per row (≥ k); the surplus lets the
    /// daemon drop items the user has just seen and still return k. Defaults to k. A graph that
    /// returns `scores` is ranked by the daemon, which always finds k.
    #[serde(default)]
    pub candidates: usize,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The incremental graph, when the model has one.
    #[serde(default)]
    pub step: Option<StepManifest>,
}

/// `model.json`'s `step` section: stored state + one new item → new state + top candidates.
#[derive(Debug, Clone, Deserialize)]
pub struct StepManifest {
    pub model_file: String,
    /// Name of the int64 [batch] input holding the new item.
    pub item_input: String,
    /// `all`: the state summarises the whole history; `window`: the model was checked against `full`
    /// on the last `window` items only.
    pub history: String,
    pub state: Vec<StateSpec>,
    /// A graph that builds the state after a whole window in one call. Only for `history = "all"`,
    /// where the state is a function of the window: the daemon then keeps it in RAM, never in the
    /// store, and rebuilds a missing one with this graph.
    #[serde(default)]
    pub prefill: Option<PrefillManifest>,
    /// A graph that steps several items per user in one call, for users with a burst of events in
    /// one micro-batch. Only for `history = "all"` with sliding state (`append_axis`).
    #[serde(default)]
    pub chunk: Option<ChunkManifest>,
}

impl StepManifest {
    /// Whether the state is an exact function of the user's last `window` items (a sliding-window
    /// Transformer's key/value cache), so it can be rebuilt instead of stored.
    pub fn state_from_window(&self) -> bool {
        self.history == "all"
    }
}

/// `step.prefill`: `input` (int64 [batch, window], left-padded as `full` takes it) → each state
/// tensor under its spec's `output` name.
#[derive(Debug, Clone, Deserialize)]
pub struct PrefillManifest {
    pub model_file: String,
    #[serde(default = "default_prefill_input")]
    pub input: String,
}

fn default_prefill_input() -> String {
    "item_seq".into()
}

/// `step.chunk`: every new item of the batch's bursting users (`items`, int64 [rows], each user's in
/// order), the positions each one attends to (`keys`, int64 [rows, span]) and each user's positions
/// after its items (`tails`, int64 [batch, span - 1]), with the step state (one row per user) → every
/// item's `scores` and the whole new state. Positions index one pool: the users' cached slots
/// (user b's slot j at b × (span - 1) + j, oldest first), then the new items.
#[derive(Debug, Clone, Deserialize)]
pub struct ChunkManifest {
    pub model_file: String,
    /// Positions one item attends to, itself included; the cache holds `span - 1` per user.
    pub span: usize,
    #[serde(default = "default_chunk_items")]
    pub items_input: String,
    #[serde(default = "default_chunk_keys")]
    pub keys_input: String,
    #[serde(default = "default_chunk_tails")]
    pub tails_input: String,
}

fn default_chunk_items() -> String {
    "items".into()
}

fn default_chunk_keys() -> String {
    "keys".into()
}

fn default_chunk_tails() -> String {
    "tails".into()
}

/// One state tensor of the step graph: read from `input`, its successor written to `output`.
#[derive(Debug, Clone, Deserialize)]
pub struct StateSpec {
    pub name: String,
    pub input: String,
    pub output: String,
    pub dtype: String,
    /// Dimensions, with the string "batch" at `batch_axis`.
    pub shape: Vec<serde_json::Value>,
    pub batch_axis: usize,
    /// When set, the graph's `output` holds only the newest entry along this axis (size 1 there),
    /// and the daemon drops the oldest entry and appends it: a sliding key/value cache then costs
    /// the graph no copies of the old entries, and the write-back one entry instead of the window.
    /// Unset: `output` is the whole new state.
    #[serde(default)]
    pub append_axis: Option<usize>,
}

impl StateSpec {
    /// The fixed dimensions, with 1 for the batch axis.
    pub fn dims(&self) -> Vec<usize> {
        self.shape
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).unwrap_or(1))
            .collect()
    }

    /// Floats per user.
    pub fn floats_per_user(&self) -> usize {
        self.dims().iter().product()
    }

    /// (product of dims before the batch axis, product after): a user's slice of a batch tensor is
    /// `outer` blocks of `inner` floats.
    pub fn outer_inner(&self) -> (usize, usize) {
        let d = self.dims();
        (
            d[..self.batch_axis].iter().product(),
            d[self.batch_axis + 1..].iter().product(),
        )
    }

    /// Floats per user in the graph's output: the whole state, or with `append_axis` one entry
    /// along it.
    pub fn output_floats_per_user(&self) -> usize {
        match self.append_axis {
            Some(axis) => self.floats_per_user() / self.dims()[axis],
            None => self.floats_per_user(),
        }
    }
}

/// Reads and parses a `model.json`; errors name the file, and the field that does not parse.
/// `hint` says what the directory should be when the file cannot be read.
pub(super) fn read_manifest<T: serde::de::DeserializeOwned>(
    path: &Path,
    hint: &str,
) -> Result<T, ModelError> {
    let err = |message: String| ModelError::Manifest {
        path: path.to_path_buf(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("cannot be read ({e}); {hint}")))?;
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
        .map_err(|e| err(format!("field `{}`: {}", e.path(), e.inner())))
}

fn default_model_file() -> String {
    "model.onnx".into()
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest, ModelError> {
        let path = dir.join("model.json");
        let err = |message: String| ModelError::Manifest {
            path: path.clone(),
            message,
        };
        let manifest: Manifest = read_manifest(
            &path,
            "model.path must be a directory with model.json, the ONNX file and the vocabulary",
        )?;
        if manifest.kind != "full" {
            return Err(err(format!(
                "kind `{}` is not supported by this version; supported: full",
                manifest.kind
            )));
        }
        let mut manifest = manifest;
        if manifest.candidates == 0 {
            manifest.candidates = manifest.k;
        }
        if manifest.candidates < manifest.k {
            return Err(err(format!(
                "field `candidates` ({}) is smaller than `k` ({}); the graph must return at least k items",
                manifest.candidates, manifest.k
            )));
        }
        for (field, value) in [
            ("window", manifest.window),
            ("k", manifest.k),
            ("n_items", manifest.n_items),
        ] {
            if value == 0 {
                return Err(err(format!("field `{field}` must be at least 1")));
            }
        }
        let has = |specs: &[TensorSpec], name: &str, dtype: &str| {
            specs.iter().any(|s| s.name == name && s.dtype == dtype)
        };
        if !has(&manifest.inputs, "item_seq", "int64") {
            return Err(err(
                "inputs must contain `item_seq` (int64 [batch, window])".into(),
            ));
        }
        let ranked_in_graph = has(&manifest.outputs, "top_items", "int64")
            && has(&manifest.outputs, "top_scores", "float32");
        if !ranked_in_graph && !has(&manifest.outputs, "scores", "float32") {
            return Err(err(
                "outputs must contain `scores` (float32 [batch, n_items + 1]), or `top_items` (int64 [batch, candidates]) and `top_scores` (float32 [batch, candidates])".into(),
            ));
        }
        if let Some(step) = &manifest.step {
            if !matches!(step.history.as_str(), "all" | "window") {
                return Err(err(format!(
                    "step.history `{}` is not one of \"all\" (the state is a function of the window) or \"window\"",
                    step.history
                )));
            }
            if step.prefill.is_some() && !step.state_from_window() {
                return Err(err(
                    "step.prefill needs step.history = \"all\": a prefill graph rebuilds state that is a function of the window".into(),
                ));
            }
            for s in &step.state {
                let batch_ok = s.shape.get(s.batch_axis).and_then(|v| v.as_str()) == Some("batch");
                let dims_ok = s
                    .shape
                    .iter()
                    .enumerate()
                    .all(|(i, d)| i == s.batch_axis || d.as_u64().is_some_and(|d| d > 0));
                if s.dtype != "float32" || !batch_ok || !dims_ok {
                    return Err(err(format!(
                        "step state `{}`: expected float32 with \"batch\" at batch_axis {} and positive sizes elsewhere",
                        s.name, s.batch_axis
                    )));
                }
                if let Some(axis) = s.append_axis {
                    if axis <= s.batch_axis || axis >= s.shape.len() {
                        return Err(err(format!(
                            "step state `{}`: append_axis {axis} must be an axis after batch_axis {} (the state has {} axes)",
                            s.name,
                            s.batch_axis,
                            s.shape.len()
                        )));
                    }
                }
            }
            if let Some(chunk) = &step.chunk {
                // Each user's cache slots are the pool positions the chunk graph's keys name.
                let cached = chunk.span.saturating_sub(1) as u64;
                let sliding = step.state.iter().all(|s| {
                    s.append_axis
                        .is_some_and(|a| s.shape.get(a).and_then(|d| d.as_u64()) == Some(cached))
                });
                if !step.state_from_window() || chunk.span < 2 || !sliding {
                    return Err(err(format!(
                        "step.chunk (span {}) needs step.history = \"all\" and every state tensor sliding (`append_axis`) over span - 1 = {cached} entries; re-export the model (training/reexport.py), or remove step.chunk to step one event per call",
                        chunk.span
                    )));
                }
            }
        }
        Ok(manifest)
    }
}

/// External item id ↔ model index.
pub struct Vocabulary {
    ids: Vec<String>,
    index: HashMap<String, i64>,
}

impl Vocabulary {
    pub fn load(path: &Path, n_items: usize) -> Result<Vocabulary, ModelError> {
        let err = |message: String| ModelError::Vocabulary {
            path: path.to_path_buf(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| err(format!("cannot be read: {e}")))?;
        let mut ids = vec![String::new()];
        ids.extend(text.lines().map(str::to_string));
        if ids.len() - 1 != n_items {
            return Err(err(format!(
                "has {} items but the manifest says n_items = {n_items}",
                ids.len() - 1
            )));
        }
        let index = ids
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, id)| (id.clone(), i as i64))
            .collect();
        Ok(Vocabulary { ids, index })
    }

    pub fn index_of(&self, item_id: &str) -> Option<i64> {
        self.index.get(item_id).copied()
    }

    pub fn id_of(&self, index: i64) -> Option<&str> {
        usize::try_from(index)
            .ok()
            .filter(|&i| i > 0)
            .and_then(|i| self.ids.get(i))
            .map(String::as_str)
    }
}
