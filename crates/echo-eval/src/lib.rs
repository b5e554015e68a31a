//! The commonsense evaluation of echo-lora (the LLM-Adapters protocol of `docs/method.md`).
//!
//! ```text
//! data/<name>/test.json ─► datasets::load ─► score::score_dataset ─► Prediction per record
//!                          (answer pattern)   (generate | loglik)      └► EvalReport (JSON)
//! ```
//!
//! An adapter is evaluated by merging it into the base weights first ([`apply_adapter`]): the
//! merged model computes what model + adapter computes, at no extra inference cost, and the
//! decoder stays adapter-agnostic. Echo-LoRA's echo path is training-only, so an Echo adapter
//! is a plain PEFT adapter here.

pub mod datasets;
pub mod score;

pub use datasets::{answer_pattern, discover, extract_answer, known_datasets, load, Dataset};
pub use score::{positions_needed, score_dataset, EvalOptions, Mode, Prediction, Scored, Skipped};

use echo_autograd::ParamStore;
use echo_data::{Template, Tokenizer};
use echo_model::Llama;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Model(#[from] echo_model::Error),
    #[error(transparent)]
    Tensor(#[from] echo_tensor::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Merges the PEFT adapter in `adapter_dir` into `model`'s weights. An adapter made for
/// another model (its tensors do not fit this model's shapes) is an error naming both.
pub fn apply_adapter(model: &mut Llama, adapter_dir: &Path, model_dir: &Path) -> Result<usize> {
    let mut store = ParamStore::new();
    let adapters = echo_adapters::load_peft(adapter_dir, model, &mut store).map_err(|e| {
        Error::Input(format!("adapter {} does not fit the model {}: {e}", adapter_dir.display(), model_dir.display()))
    })?;
    let merged = echo_adapters::merged_weights(model, &adapters, &store)
        .map_err(|e| Error::Input(format!("merging {}: {e}", adapter_dir.display())))?;
    let n = merged.len();
    // `merged_weights` yields one weight per site, in `sites()` order.
    for (site, (_, w)) in adapters.sites().zip(merged) {
        model.blocks[site.layer].proj[site.proj as usize] = w;
    }
    Ok(n)
}

/// Accuracy of one test set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DatasetScore {
    pub name: String,
    pub total: usize,
    pub correct: usize,
    /// Records whose generated text held no match of the answer pattern (counted wrong).
    pub no_answer: usize,
    /// Records left out because they do not fit the model's context (not in `total`; see
    /// [`positions_needed`]). Absent in reports written before it existed, hence the default.
    #[serde(default)]
    pub skipped: usize,
    /// `correct / total`: the accuracy over the records scored.
    pub accuracy: f64,
}

impl DatasetScore {
    pub fn from_predictions(name: &str, preds: &[Prediction], skipped: usize) -> Self {
        let correct = preds.iter().filter(|p| p.correct).count();
        let no_answer = preds.iter().filter(|p| p.prediction.is_none()).count();
        DatasetScore {
            name: name.into(),
            total: preds.len(),
            correct,
            no_answer,
            skipped,
            accuracy: if preds.is_empty() { 0.0 } else { correct as f64 / preds.len() as f64 },
        }
    }
}

/// Everything one evaluation produced: what was run, per-dataset scores, every prediction.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalReport {
    pub model: String,
    pub adapter: Option<String>,
    pub mode: Mode,
    /// How text was decoded (`greedy`; the LLM-Adapters script uses 4-beam search).
    pub decoding: String,
    pub max_new_tokens: usize,
    pub limit: Option<usize>,
    pub datasets: Vec<DatasetScore>,
    /// Unweighted mean of the dataset accuracies (how the papers average), over the datasets
    /// with at least one record scored.
    pub average: f64,
    pub seconds: f64,
    pub predictions: Vec<Prediction>,
    /// Every record left out because it does not fit the model's context.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

impl EvalReport {
    /// The mean accuracy over the datasets with a record scored (a dataset whose every record
    /// was skipped has no accuracy to average).
    pub fn average_of(scores: &[DatasetScore]) -> f64 {
        let scored: Vec<f64> = scores.iter().filter(|s| s.total > 0).map(|s| s.accuracy).collect();
        if scored.is_empty() {
            0.0
        } else {
            scored.iter().sum::<f64>() / scored.len() as f64
        }
    }

    /// A Markdown table: one row per dataset, then the average. `records` counts the records
    /// scored; `skipped` those that do not fit the model's context.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| dataset | records | accuracy | no answer | skipped (too long) |\n| --- | ---: | ---: | ---: | ---: |\n",
        );
        for d in &self.datasets {
            s += &format!(
                "| {} | {} | {:.1}% | {} | {} |\n",
                d.name,
                d.total,
                100.0 * d.accuracy,
                d.no_answer,
                d.skipped
            );
        }
        s += &format!("| **average** | | **{:.1}%** | | |\n", 100.0 * self.average);
        s
    }
}

/// What [`evaluate`] produced over all datasets.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub scores: Vec<DatasetScore>,
    pub predictions: Vec<Prediction>,
    pub skipped: Vec<Skipped>,
}

/// Evaluates `model` (adapter already applied) on every dataset in turn; a record that does
/// not fit the model's context is skipped and counted, and the run goes on.
/// `progress(dataset, done_in_dataset)` follows the work.
pub fn evaluate(
    model: &Llama,
    tok: &Tokenizer,
    data: &[Dataset],
    opts: &EvalOptions,
    progress: &mut dyn FnMut(&str, usize),
) -> Result<Evaluation> {
    let template = Template::alpaca();
    let mut out = Evaluation { scores: Vec::new(), predictions: Vec::new(), skipped: Vec::new() };
    for ds in data {
        let scored = score_dataset(model, tok, &template, ds, opts, &mut |n| progress(&ds.name, n))?;
        out.scores.push(DatasetScore::from_predictions(&ds.name, &scored.predictions, scored.skipped.len()));
        out.predictions.extend(scored.predictions);
        out.skipped.extend(scored.skipped);
    }
    Ok(out)
}
