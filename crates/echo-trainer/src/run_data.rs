//! The run's data as the loop uses it: the examples loaded, tokenised and split as `[data]`
//! says ([`load_data`], refusing a cutoff that eats too many answers), micro-batches in the
//! step's arrays, and the validation loss of the plain route.

use crate::config::{DataSection, RunConfig};
use crate::error::{Context, Result, TrainError};
use echo_adapters::Adapters;
use echo_autograd::{ParamStore, Tape};
use echo_data::{Batch as DataBatch, EncodeConfig, Example, Overlong, Progress, Report, Template, Tokenizer};
use echo_model::Llama;
use std::path::{Path, PathBuf};

/// The loaded data: train and validation examples.
pub struct Data {
    pub train: Vec<Example>,
    pub val: Vec<Example>,
    pub pad_id: u32,
    /// What encoding did to the records (over all of them, before the validation split):
    /// how many the cutoff truncated or dropped.
    pub report: Report,
}

/// Reads, tokenises and splits the data as `[data]` says.
pub fn load_data(cfg: &RunConfig, tok: &Tokenizer, progress: bool) -> Result<Data> {
    let d = &cfg.data;
    // The same templates as `cargo xtask data --template` (chat reads the tokenizer's folder).
    let template = Template::from_config(
        d.template.name(),
        d.prompt_format.as_deref(),
        d.prompt_format_with_input.as_deref(),
        tok.path(),
    )
    .context("data.template")?;
    let enc = EncodeConfig { cutoff: Some(d.cutoff), overlong: d.overlong, train_on_inputs: d.train_on_inputs };
    let prog = if progress { Progress::Auto } else { Progress::Hidden };
    let (examples, report) = if d.train == ["synthetic"] {
        let spec = echo_data::SyntheticSpec { count: d.synthetic_records, seed: cfg.train.seed, ..Default::default() };
        let records = echo_data::synthetic_records(&spec)?;
        let ds = echo_data::encode_records(tok, &template, &records, &enc, Path::new("synthetic"), 0)?;
        (ds.examples, ds.report)
    } else {
        let weights = if d.weights.is_empty() { vec![1.0; d.train.len()] } else { d.weights.clone() };
        let sources = d
            .train
            .iter()
            .zip(weights)
            .map(|(p, w)| echo_data::MixSource { path: PathBuf::from(p), weight: w })
            .collect();
        let spec = echo_data::MixSpec { sources, total: None, seed: cfg.train.seed };
        let cache = echo_data::Cache::user_default()?;
        let mixed = echo_data::load_mix(&spec, tok, &template, &enc, Some(&cache), prog)?;
        let report = mixed.report();
        (mixed.examples, report)
    };
    check_cutoff(d, &report)?;
    if examples.len() <= d.val_count {
        return Err(TrainError::config(format!(
            "data: {} examples cannot leave data.val_count = {} for validation and some for training",
            examples.len(),
            d.val_count
        )));
    }
    let (train, val) = echo_data::split_validation(examples, d.val_count, cfg.train.seed)?;
    Ok(Data { train, val, pad_id: tok.pad_id(), report })
}

/// Refuses data from which the cutoff took learned tokens in more than
/// `data.max_truncated_fraction` of the records (under `overlong = "truncate"`).
fn check_cutoff(d: &DataSection, r: &Report) -> Result<()> {
    let cut = r.answers_cut();
    if d.overlong != Overlong::Truncate || r.records == 0 || cut as f64 <= d.max_truncated_fraction * r.records as f64 {
        return Ok(());
    }
    Err(TrainError::config(format!(
        "data: data.cutoff = {} takes learned (answer) tokens from {cut} of {} records ({:.1}%: {} truncated, {} \
         dropped because the prompt alone reaches the cutoff, {} dropped untokenised as over {} bytes), more than \
         data.max_truncated_fraction = {} allows. \
         The longest sample has {} tokens: raise data.cutoff ({} keeps every sample whole), set data.overlong = \
         \"drop\" to leave the long ones out, or raise data.max_truncated_fraction to accept the loss",
        d.cutoff,
        r.records,
        100.0 * cut as f64 / r.records as f64,
        r.truncated,
        r.dropped_prompt_over_cutoff,
        r.dropped_too_large,
        d.cutoff * 64,
        d.max_truncated_fraction,
        r.longest_before_cutoff,
        r.longest_before_cutoff,
    )))
}

/// One line on what the cutoff did to the data, printed before the first step.
pub fn describe_data(d: &DataSection, data: &Data) -> String {
    let r = &data.report;
    let mut s = format!(
        "data: {} records, {} examples ({} train, {} validation); cutoff {} tokens (data.cutoff): {} truncated, {} \
         dropped",
        r.records,
        data.train.len() + data.val.len(),
        data.train.len(),
        data.val.len(),
        d.cutoff,
        r.truncated,
        r.dropped,
    );
    if r.dropped > 0 {
        let over = r.dropped - r.dropped_prompt_over_cutoff - r.dropped_too_large;
        s += &format!(" ({} with a prompt reaching the cutoff", r.dropped_prompt_over_cutoff);
        if r.dropped_too_large > 0 {
            s += &format!(", {} over the size limit (cutoff × 64 bytes), never tokenised", r.dropped_too_large);
        }
        if over > 0 {
            s += &format!(", {over} longer than it under data.overlong = \"drop\"");
        }
        s += ")";
    }
    if r.answers_cut() > 0 && r.records > 0 {
        s += &format!(
            "; answer tokens cut from {:.1}% of the records (data.max_truncated_fraction {})",
            100.0 * r.answers_cut() as f64 / r.records as f64,
            d.max_truncated_fraction
        );
    }
    s + &format!("; longest sample {} tokens", r.longest_before_cutoff)
}

/// A micro-batch of `examples`: packed into one row (`train.packing`) or padded.
pub(crate) fn micro_batch(examples: &[&Example], pad_id: u32, packing: bool) -> DataBatch {
    if packing {
        DataBatch::packed(examples)
    } else {
        DataBatch::from_examples(examples, pad_id)
    }
}

/// Counted positions under the HF shift.
pub(crate) fn counted(labels: &[i64], batch: usize, seq: usize) -> usize {
    echo_model::shifted_targets(labels, batch, seq).0.len()
}

/// Mean validation loss of the deployed (plain) route over `val`, batched by `micro`
/// (packed into one row per micro-batch with `packing`).
pub fn validation_loss(
    model: &Llama,
    adapters: &Adapters,
    store: &ParamStore,
    val: &[Example],
    pad_id: u32,
    micro: usize,
    packing: bool,
) -> Result<Option<f32>> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in val.chunks(micro.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let mb = micro_batch(&refs, pad_id, packing);
        if counted(&mb.labels, mb.batch_size, mb.seq_len) == 0 {
            continue;
        }
        let batch = crate::layout::Samples::from_input(mb.packed.as_deref(), mb.batch_size, mb.seq_len)?.model_batch(
            &mb.input_ids,
            &mb.attention_mask,
            model.config.vocab_size,
        )?;
        let tape = Tape::inference();
        let mut proj = adapters.projector(store, None, None);
        let hidden = model.forward(&tape, &batch, &mut proj, &[])?.hidden;
        let (loss, n) = model.lm_loss(&hidden, &mb.labels, &batch)?;
        sum += loss.value().item()? as f64 * n as f64;
        count += n;
    }
    Ok((count > 0).then(|| (sum / count as f64) as f32))
}
