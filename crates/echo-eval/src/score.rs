//! Scoring one test set: greedy generation read by the answer pattern, or log-likelihood of
//! each candidate answer. Both batch records (sorted by prompt length, so little padding)
//! through the KV-cache decoder of `echo_model::generate`. A record that does not fit the
//! model's context is skipped and listed, not scored ([`positions_needed`] says when).

use crate::datasets::{answer_prefix, candidates, extract_answer, Dataset};
use crate::{Error, Result};
use echo_data::{Template, Tokenizer};
use echo_model::{generate, Decoder, GenerateOptions, Llama, PlainInfer};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Greedy generation, prediction = first match of the answer pattern (the protocol).
    Generate,
    /// Each candidate answer scored by the log-likelihood of `prefix + candidate` after the
    /// prompt; the best one is the prediction (never "no answer").
    Loglik,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "generate" => Ok(Mode::Generate),
            "loglik" => Ok(Mode::Loglik),
            _ => Err(Error::Input(format!("mode: expected `generate` or `loglik`, got `{s}`"))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Mode::Generate => "generate",
            Mode::Loglik => "loglik",
        }
    }
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub mode: Mode,
    /// Records per forward batch.
    pub batch: usize,
    /// Generation budget (the protocol's 32).
    pub max_new_tokens: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { mode: Mode::Generate, batch: 16, max_new_tokens: 32 }
    }
}

/// One record's outcome.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    pub dataset: String,
    /// Index of the record in the dataset's test.json.
    pub index: usize,
    pub answer: String,
    /// `None`: the generated text held no match of the answer pattern.
    pub prediction: Option<String>,
    pub correct: bool,
    /// Generation mode: the generated text (special tokens removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Loglik mode: (candidate, summed log-probability) for each candidate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<Vec<(String, f64)>>,
}

/// A record left out because it does not fit the model's context (see [`positions_needed`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub dataset: String,
    /// Index of the record in the dataset's test.json.
    pub index: usize,
    /// Positions the record needs.
    pub positions: usize,
    /// The model's `max_position_embeddings`.
    pub limit: usize,
}

/// What [`score_dataset`] produced: a prediction per record that fits, in record order, and
/// the records that do not fit, in record order.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub predictions: Vec<Prediction>,
    pub skipped: Vec<Skipped>,
}

/// The positions a record occupies in the model's context, decided before anything is
/// scored. A record fits when this is at most `max_position_embeddings`.
///
/// - **generate**: `prompt + max_new_tokens`. Generation refuses a batch whose prompt plus
///   budget exceeds the context (`echo_model::generate`), and the budget counts in full even
///   though most answers stop early on EOS: whether a record is scored must not depend on what
///   the model writes, or two adapters would be compared on different records.
/// - **loglik**: `prompt + longest continuation - 1`, a continuation being the answer prefix
///   plus one candidate (`the correct answer is answer3`). Every continuation token is scored
///   from the logits of the position before it, so the last token of the longest one is scored
///   but never fed: that is the decoder's capacity for this record alone.
///
/// Either way the rule depends only on the tokenizer, the template, the record and the
/// options, never on the weights: every model evaluated with the same tokenizer and context
/// skips the same records.
pub fn positions_needed(prompt: usize, mode: Mode, max_new_tokens: usize, longest_continuation: usize) -> usize {
    match mode {
        Mode::Generate => prompt + max_new_tokens,
        Mode::Loglik => prompt + longest_continuation.max(1) - 1,
    }
}

/// Scores every record of `ds` that fits the model's context and lists the others (see
/// [`positions_needed`]); `progress(n)` is called after each batch with the records done so
/// far in this dataset, skipped ones included.
pub fn score_dataset(
    model: &Llama,
    tok: &Tokenizer,
    template: &Template,
    ds: &Dataset,
    opts: &EvalOptions,
    progress: &mut dyn FnMut(usize),
) -> Result<Scored> {
    if opts.batch == 0 {
        return Err(Error::Input("batch must be > 0".into()));
    }
    let limit = model.config.max_position_embeddings;
    let prompts: Vec<Vec<u32>> = ds
        .records
        .iter()
        .map(|r| tok.encode(&template.prompt(r)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Input(e.to_string()))?;
    // Loglik: each record's candidates, tokenised once, up front (the fit needs their length).
    let sets: Vec<Option<Candidates>> = match opts.mode {
        Mode::Generate => prompts.iter().map(|_| None).collect(),
        Mode::Loglik => {
            (0..prompts.len()).map(|i| split_candidates(tok, ds, i, &prompts[i]).map(Some)).collect::<Result<_>>()?
        }
    };
    let mut skipped = Vec::new();
    let mut order = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let longest = sets[i].as_ref().map_or(0, |s| s.context.len() - p.len() + s.longest_suffix());
        let positions = positions_needed(p.len(), opts.mode, opts.max_new_tokens, longest);
        if positions > limit {
            skipped.push(Skipped { dataset: ds.name.clone(), index: i, positions, limit });
        } else {
            order.push(i);
        }
    }
    order.sort_by_key(|&i| (prompts[i].len(), i));
    let mut out: Vec<Option<Prediction>> = vec![None; prompts.len()];
    let mut done = skipped.len();
    if done > 0 {
        progress(done);
    }
    for chunk in chunks(&order, opts.batch, &sets, limit) {
        let preds = match opts.mode {
            Mode::Generate => generate_batch(model, tok, ds, chunk, &prompts, opts.max_new_tokens)?,
            Mode::Loglik => loglik_batch(
                model,
                tok,
                ds,
                chunk,
                chunk.iter().map(|&i| sets[i].as_ref().expect("loglik sets every record's candidates")).collect(),
            )?,
        };
        for (i, p) in chunk.iter().zip(preds) {
            out[*i] = Some(p);
        }
        done += chunk.len();
        progress(done);
    }
    Ok(Scored { predictions: out.into_iter().flatten().collect(), skipped })
}

/// Consecutive runs of `order` of at most `batch` records. In loglik mode a run also keeps
/// its decoder within the context: rows are left-padded to the longest context, and a row
/// whose candidates ended is fed padding while the others go on, so the batch needs
/// `longest context + longest suffix - 1` positions, which two records that fit alone can
/// exceed together. A run is cut before a record that would push it past `limit`.
fn chunks<'a>(order: &'a [usize], batch: usize, sets: &[Option<Candidates>], limit: usize) -> Vec<&'a [usize]> {
    let mut out = Vec::new();
    let mut start = 0;
    let (mut ctx, mut suffix) = (0, 0);
    for (k, &i) in order.iter().enumerate() {
        let (c, s) = sets[i].as_ref().map_or((0, 1), |s| (s.context.len(), s.longest_suffix()));
        let full = k - start == batch;
        let overflows = sets[i].is_some() && ctx.max(c) + suffix.max(s) - 1 > limit;
        if k > start && (full || overflows) {
            out.push(&order[start..k]);
            start = k;
            (ctx, suffix) = (0, 0);
        }
        (ctx, suffix) = (ctx.max(c), suffix.max(s));
    }
    if start < order.len() {
        out.push(&order[start..]);
    }
    out
}

fn answer_of(ds: &Dataset, i: usize) -> String {
    ds.records[i].answer.clone().expect("datasets::load checks every record has an answer")
}

fn generate_batch(
    model: &Llama,
    tok: &Tokenizer,
    ds: &Dataset,
    idx: &[usize],
    prompts: &[Vec<u32>],
    max_new: usize,
) -> Result<Vec<Prediction>> {
    let batch: Vec<Vec<u32>> = idx.iter().map(|&i| prompts[i].clone()).collect();
    let mut opts = GenerateOptions::greedy(model, max_new);
    if !opts.eos_token_ids.contains(&tok.eos_id()) {
        opts.eos_token_ids.push(tok.eos_id());
    }
    opts.pad_token_id = Some(tok.pad_id());
    let gen = generate(model, &batch, &opts, &mut PlainInfer)?;
    idx.iter()
        .zip(&gen.tokens)
        .map(|(&i, new)| {
            let text = tok.decode(new, true).map_err(|e| Error::Input(e.to_string()))?;
            let prediction = extract_answer(&text, ds.pattern);
            let answer = answer_of(ds, i);
            Ok(Prediction {
                dataset: ds.name.clone(),
                index: i,
                correct: prediction.as_deref() == Some(answer.as_str()),
                answer,
                prediction,
                output: Some(text),
                scores: None,
            })
        })
        .collect()
}

/// `log softmax(row)[id]` for every requested id, from one logits row.
fn log_probs(row: &[f32], ids: impl Iterator<Item = u32>) -> Vec<f64> {
    let lse = echo_kernels::cpu::loss::log_sum_exp(row, 1.0) as f64;
    ids.map(|id| row[id as usize] as f64 - lse).collect()
}

/// One record's loglik set-up: the context every candidate shares (prompt + the common
/// tokens of the continuations) and each candidate's remaining tokens (at least one).
struct Candidates {
    names: Vec<String>,
    context: Vec<u32>,
    suffixes: Vec<Vec<u32>>,
}

impl Candidates {
    fn longest_suffix(&self) -> usize {
        self.suffixes.iter().map(Vec::len).max().unwrap_or(1)
    }
}

fn split_candidates(tok: &Tokenizer, ds: &Dataset, i: usize, prompt: &[u32]) -> Result<Candidates> {
    let r = &ds.records[i];
    let names = candidates(r, ds.pattern);
    let prefix = answer_prefix(r);
    // The continuation is tokenised on its own and appended to the prompt's tokens: the
    // boundary rule the training data uses (echo_data::encode).
    let conts: Vec<Vec<u32>> = names
        .iter()
        .map(|c| tok.encode_plain(&format!("{prefix}{c}")))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Input(e.to_string()))?;
    let shortest = conts.iter().map(Vec::len).min().unwrap_or(0);
    if shortest == 0 {
        return Err(Error::Input(format!(
            "{}: record {i}: a candidate answer tokenises to nothing",
            ds.path.display()
        )));
    }
    let mut shared = 0;
    while shared < shortest - 1 && conts.iter().all(|c| c[shared] == conts[0][shared]) {
        shared += 1;
    }
    let mut context = prompt.to_vec();
    context.extend_from_slice(&conts[0][..shared]);
    Ok(Candidates { names, context, suffixes: conts.iter().map(|c| c[shared..].to_vec()).collect() })
}

fn loglik_batch(
    model: &Llama,
    tok: &Tokenizer,
    ds: &Dataset,
    idx: &[usize],
    sets: Vec<&Candidates>,
) -> Result<Vec<Prediction>> {
    let b = sets.len();
    let v = model.config.vocab_size;
    let longest_ctx = sets.iter().map(|s| s.context.len()).max().unwrap_or(1);
    let longest_suffix = sets.iter().flat_map(|s| s.suffixes.iter().map(Vec::len)).max().unwrap_or(1);
    let mut dec = Decoder::new(model, b, longest_ctx + longest_suffix - 1)?;
    let contexts: Vec<Vec<u32>> = sets.iter().map(|s| s.context.clone()).collect();
    let first = dec.prefill(&contexts, &mut PlainInfer)?;
    let first = first.f32s("loglik")?;
    // scores[row][candidate]: the first suffix token is scored from the prefill's logits.
    let mut scores: Vec<Vec<f64>> = sets
        .iter()
        .enumerate()
        .map(|(row, s)| log_probs(&first[row * v..(row + 1) * v], s.suffixes.iter().map(|x| x[0])))
        .collect();
    let most = sets.iter().map(|s| s.suffixes.len()).max().unwrap_or(0);
    let pad = tok.pad_id();
    for j in 0..most {
        let len_j = sets.iter().filter_map(|s| s.suffixes.get(j)).map(Vec::len).max().unwrap_or(0);
        if len_j <= 1 {
            continue;
        }
        // Candidate j of every row continues from the shared context on a fork of the cache.
        let mut fork = dec.clone();
        for step in 1..len_j {
            let feed: Vec<u32> =
                sets.iter().map(|s| s.suffixes.get(j).and_then(|x| x.get(step - 1)).copied().unwrap_or(pad)).collect();
            let logits = fork.step(&feed, &mut PlainInfer)?;
            let l = logits.f32s("loglik")?;
            for (row, s) in sets.iter().enumerate() {
                if let Some(&id) = s.suffixes.get(j).and_then(|x| x.get(step)) {
                    scores[row][j] += log_probs(&l[row * v..(row + 1) * v], std::iter::once(id))[0];
                }
            }
        }
    }
    Ok(idx
        .iter()
        .zip(sets)
        .zip(scores)
        .map(|((&i, s), sc)| {
            let best = (0..sc.len()).fold(0, |best, j| if sc[j] > sc[best] { j } else { best });
            let answer = answer_of(ds, i);
            let prediction = s.names[best].clone();
            Prediction {
                dataset: ds.name.clone(),
                index: i,
                correct: prediction == answer,
                answer,
                prediction: Some(prediction),
                output: None,
                scores: Some(s.names.iter().cloned().zip(sc).collect()),
            }
        })
        .collect())
}
