//! The demand forecaster's runtime: its `step` graph, one completed day of one SKU × location per
//! row (that day's demand and weekday, plus the stored state) → the new state and quantiles of the
//! cumulative demand over the next `horizon` days.
//!
//! Its directory holds `model.json` with `"kind": "forecaster"` (written by `training/forecast.py`),
//! the graphs and their shared `weights.bin`.

use std::path::Path;

use ort::session::SessionInputValue;
use ort::value::Tensor;
use serde::Deserialize;

use super::manifest::read_manifest;
use super::{
    init_runtime, open_graph, push_state_inputs, run_err, write_state_outputs, Graph, ModelError,
    StateSpec,
};
use crate::config::{ExecutionProvider, ModelConfig, StatePrecision};
use crate::memory::StateTensors;

#[derive(Debug, Clone, Deserialize)]
pub struct ForecasterManifest {
    pub name: String,
    pub version: String,
    pub kind: String,
    /// Days forecast after each step.
    pub horizon: usize,
    /// Quantile levels of the `quantiles` output, ascending.
    pub quantiles: Vec<f64>,
    pub step: ForecasterStep,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ForecasterStep {
    pub model_file: String,
    pub state: Vec<StateSpec>,
}

pub struct Forecaster {
    pub manifest: ForecasterManifest,
    graph: Graph,
    provider: ExecutionProvider,
}

impl ForecasterManifest {
    pub fn load(dir: &Path) -> Result<ForecasterManifest, ModelError> {
        let path = dir.join("model.json");
        let err = |message: String| ModelError::Manifest {
            path: path.clone(),
            message,
        };
        let m: ForecasterManifest = read_manifest(
            &path,
            "supply.forecaster must be a forecaster's model directory",
        )?;
        if m.kind != "forecaster" {
            return Err(err(format!(
                "kind `{}` is not a demand forecaster (expected \"forecaster\")",
                m.kind
            )));
        }
        if m.quantiles.is_empty() || m.quantiles.windows(2).any(|w| w[0] >= w[1]) {
            return Err(err(format!(
                "quantiles {:?} must be ascending levels",
                m.quantiles
            )));
        }
        if m.step.state.iter().any(|s| s.batch_axis != 0) {
            return Err(err(
                "every state tensor must have its batch axis first".into()
            ));
        }
        Ok(m)
    }
}

impl Forecaster {
    /// Loads the forecaster in `config.path`, on `config`'s execution provider and threads.
    pub fn load(config: &ModelConfig) -> Result<Forecaster, ModelError> {
        let env = init_runtime(config.runtime_library.as_deref())?;
        let manifest = ForecasterManifest::load(&config.path)?;
        let outputs: Vec<&str> = ["quantiles"]
            .into_iter()
            .chain(manifest.step.state.iter().map(|s| s.output.as_str()))
            .collect();
        let (graph, provider) = open_graph(
            &env,
            config,
            &config.path.join(&manifest.step.model_file),
            false,
            &outputs,
        )?;
        Ok(Forecaster {
            manifest,
            graph,
            provider,
        })
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// `name@version`: a state written by another forecaster is never fed to this one.
    pub fn state_owner(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    /// The state of a SKU × location the forecaster has seen nothing of.
    pub fn empty_state(&self) -> StateTensors {
        StateTensors::zeros(self.state_lengths(), StatePrecision::F32)
    }

    /// Values per SKU × location in each state tensor.
    pub fn state_lengths(&self) -> Vec<usize> {
        super::state::lengths(&self.manifest.step.state)
    }

    /// Floats in one row's `quantiles` output: horizon × levels.
    pub fn quantiles_per_row(&self) -> usize {
        self.manifest.horizon * self.manifest.quantiles.len()
    }

    /// Steps one completed day per row. `weekday`: 0 = Monday. Returns each row's cumulative
    /// demand quantiles (horizon × levels, row-major); each row's state is replaced by its new one.
    pub fn step(
        &mut self,
        demand: Vec<f32>,
        weekday: Vec<i64>,
        states: &mut [&mut StateTensors],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let rows = demand.len();
        if rows == 0 {
            return Ok(Vec::new());
        }
        let per_row = self.quantiles_per_row();
        let spec = &self.manifest.step;
        let mut inputs: Vec<(String, SessionInputValue<'_>)> = vec![
            (
                "demand".into(),
                Tensor::from_array(([rows], demand))
                    .map_err(run_err)?
                    .into(),
            ),
            (
                "day_of_week".into(),
                Tensor::from_array(([rows], weekday))
                    .map_err(run_err)?
                    .into(),
            ),
        ];
        let graph = &mut self.graph;
        push_state_inputs(&spec.state, states, &mut graph.state_batches, &mut inputs)?;
        let outputs = graph
            .session
            .run_with_options(inputs, &graph.run_options)
            .map_err(run_err)?;
        let (_, q) = outputs["quantiles"]
            .try_extract_tensor::<f32>()
            .map_err(run_err)?;
        if q.len() != rows * per_row {
            return Err(ModelError::Run(format!(
                "`quantiles` has {} values for {rows} rows; the manifest promises {per_row} per row",
                q.len()
            )));
        }
        let quantiles = q.chunks(per_row).map(|c| c.to_vec()).collect();
        write_state_outputs(&spec.state, &outputs, states, super::StateOutputs::Step)?;
        Ok(quantiles)
    }
}
