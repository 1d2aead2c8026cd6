//! The model runtime: a model directory's manifest, its vocabulary, and an ONNX Runtime session.
//!
//! A model directory holds `model.json` (the manifest: names and shapes of inputs and outputs,
//! window, K, vocabulary file, version), the ONNX graph and the vocabulary (one external item id per
//! line; line i is item index i, index 0 is padding). The `full` contract: input `item_seq` int64
//! [batch, window] left-padded with 0; outputs `top_items` int64 [batch, K] and `top_scores` float32
//! [batch, K]. Each micro-batch is one `run` call.
//!
//! Execution providers: CPU by default. With `execution_provider = "cuda"` (cargo feature `cuda`) a
//! failed CUDA registration is an error unless `allow_cpu_fallback` is set; [`Model::provider`] says
//! which provider actually runs, and the metrics export it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::session::{RunOptions, Session};
use ort::value::Tensor;
use serde::Deserialize;

use crate::config::{ExecutionProvider, ModelConfig};
use crate::event::ScoredItem;

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
    /// Items the graph returns per row (≥ k); the surplus lets the daemon drop items the user has
    /// just seen and still return k. Defaults to k.
    #[serde(default)]
    pub candidates: usize,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
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
        let text = std::fs::read_to_string(&path).map_err(|e| {
            err(format!(
                "cannot be read ({e}); model.path must be a directory with model.json, the ONNX file and the vocabulary"
            ))
        })?;
        let manifest: Manifest =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&text))
                .map_err(|e| err(format!("field `{}`: {}", e.path(), e.inner())))?;
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
        if !has(&manifest.outputs, "top_items", "int64")
            || !has(&manifest.outputs, "top_scores", "float32")
        {
            return Err(err(
                "outputs must contain `top_items` (int64 [batch, k]) and `top_scores` (float32 [batch, k])".into(),
            ));
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

/// Loads the ONNX Runtime shared library and creates the process's one environment; later calls
/// reuse it (ONNX Runtime allows one environment per process).
pub fn init_runtime(library: Option<&Path>) -> Result<ort::environment::Environment, ModelError> {
    static INIT: std::sync::OnceLock<Result<ort::environment::Environment, String>> =
        std::sync::OnceLock::new();
    let path = match library {
        Some(p) => p.to_path_buf(),
        None => match std::env::var_os("ORT_DYLIB_PATH") {
            Some(p) => PathBuf::from(p),
            None => {
                return Err(ModelError::RuntimeMissing(
                    "ORT_DYLIB_PATH is not set".into(),
                ))
            }
        },
    };
    if !path.exists() {
        return Err(ModelError::RuntimeMissing(format!(
            "{} does not exist",
            path.display()
        )));
    }
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
    pub vocabulary: Vocabulary,
    session: Session,
    provider: ExecutionProvider,
    run_options: RunOptions<ort::session::HasSelectedOutputs>,
}

/// Top-K items for one row of a batch.
pub type TopK = Vec<ScoredItem>;

impl Model {
    pub fn load(config: &ModelConfig) -> Result<Model, ModelError> {
        let env = init_runtime(config.runtime_library.as_deref())?;
        let manifest = Manifest::load(&config.path)?;
        let vocabulary = Vocabulary::load(
            &config.path.join(&manifest.vocabulary_file),
            manifest.n_items,
        )?;
        let model_path = config.path.join(&manifest.model_file);
        let load_err = |e: &dyn std::fmt::Display| ModelError::Load {
            path: model_path.clone(),
            message: e.to_string(),
        };
        let mut builder = Session::builder(&env)
            .map_err(|e| load_err(&e))?
            .with_intra_threads(config.intra_threads)
            .map_err(|e| load_err(&e))?;
        let provider = match config.execution_provider {
            ExecutionProvider::Cpu => ExecutionProvider::Cpu,
            ExecutionProvider::Cuda => register_cuda(&mut builder, config.allow_cpu_fallback)?,
        };
        let session = builder
            .commit_from_file(&model_path)
            .map_err(|e| load_err(&e))?;
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for wanted in ["top_items", "top_scores"] {
            if !names.contains(&wanted) {
                return Err(load_err(&format!(
                    "the graph has no output `{wanted}` (it has {names:?})"
                )));
            }
        }
        let selector = ort::session::OutputSelector::no_default()
            .with("top_items")
            .with("top_scores");
        let run_options = RunOptions::new()
            .map_err(|e| load_err(&e))?
            .with_outputs(selector);
        Ok(Model {
            manifest,
            vocabulary,
            session,
            provider,
            run_options,
        })
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.provider
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

    /// One inference call for a whole micro-batch: `item_seq` holds `rows × window` indices. With
    /// `exclude_seen`, items in a row's own window are dropped from its recommendations.
    pub fn recommend(
        &mut self,
        item_seq: Vec<i64>,
        rows: usize,
        exclude_seen: bool,
    ) -> Result<Vec<TopK>, ModelError> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let window = self.manifest.window;
        debug_assert_eq!(item_seq.len(), rows * window);
        let input = Tensor::from_array(([rows, window], item_seq.clone()))
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run_with_options(ort::inputs!["item_seq" => input], &self.run_options)
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let (_, items) = outputs["top_items"]
            .try_extract_tensor::<i64>()
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let (_, scores) = outputs["top_scores"]
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let (k, candidates) = (self.manifest.k, self.manifest.candidates);
        if items.len() != rows * candidates || scores.len() != items.len() {
            return Err(ModelError::Run(format!(
                "expected {rows}×{candidates} outputs, got {} items and {} scores; the manifest's `candidates` does not match the graph",
                items.len(),
                scores.len()
            )));
        }
        Ok(items
            .chunks(candidates)
            .zip(scores.chunks(candidates))
            .zip(item_seq.chunks(window))
            .map(|((items, scores), seen)| {
                items
                    .iter()
                    .zip(scores)
                    .filter(|(i, _)| !(exclude_seen && seen.contains(i)))
                    .filter_map(|(&i, &s)| {
                        self.vocabulary.id_of(i).map(|id| ScoredItem {
                            item_id: id.to_string(),
                            score: s,
                        })
                    })
                    .take(k)
                    .collect()
            })
            .collect())
    }
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

    #[test]
    fn shipped_manifest_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ml100k-sasrec");
        let m = Manifest::load(&dir).unwrap();
        let v = Vocabulary::load(&dir.join(&m.vocabulary_file), m.n_items).unwrap();
        assert!(v.index_of("50").is_some());
        assert_eq!(m.kind, "full");
    }

    fn shipped_model_config(provider: ExecutionProvider, allow_cpu_fallback: bool) -> ModelConfig {
        ModelConfig {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ml100k-sasrec"),
            execution_provider: provider,
            allow_cpu_fallback,
            exclude_seen: true,
            intra_threads: 1,
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
