//! Records → token ids with answer-only labels, following the LLM-Adapters recipe.
//!
//! Per record: `prompt = template(record)`, `full = prompt + output`; both are tokenised (with
//! the tokenizer's leading specials, e.g. BOS) and EOS is appended to `full`. The first
//! `len(tokens(prompt))` positions are the prompt: their labels are -100 (unless
//! `train_on_inputs`) and they make up the prompt mask. See the crate docs for what happens
//! when `tokens(prompt)` is not a prefix of `tokens(full)` and for the cutoff policy.

use std::io::IsTerminal;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::{Record, RecordStream};
use crate::template::Template;
use crate::tokenizer::Tokenizer;

/// The label of a position the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// What to do with a sample longer than the cutoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlong {
    /// Keep the first `cutoff` tokens (the LLM-Adapters behaviour: the answer's tail and the
    /// EOS are cut). A sample whose prompt alone fills the cutoff has nothing left to learn
    /// and is dropped.
    Truncate,
    /// Drop the sample.
    Drop,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeConfig {
    /// Maximum tokens per sample (LLM-Adapters `cutoff_len`, 256 in the commonsense recipe);
    /// `None` = no limit.
    pub cutoff: Option<usize>,
    pub overlong: Overlong,
    /// Learn the prompt tokens too (LLM-Adapters' default, for baselines). The prompt mask
    /// still marks the prompt.
    pub train_on_inputs: bool,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        EncodeConfig { cutoff: Some(256), overlong: Overlong::Truncate, train_on_inputs: false }
    }
}

impl EncodeConfig {
    pub fn fingerprint(&self) -> String {
        format!("cutoff={:?};overlong={:?};train_on_inputs={}", self.cutoff, self.overlong, self.train_on_inputs)
    }
}

/// One tokenised sample. Labels and the prompt mask are functions of `prompt_len` and are
/// computed on demand (storing them would triple the memory of a large dataset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Which dataset of a mix it came from (0 for a single file).
    pub source: usize,
    /// Index of its record in that dataset's file.
    pub record: usize,
    /// `prompt tokens ++ answer tokens ++ [EOS]`, possibly cut at the cutoff.
    pub input_ids: Vec<u32>,
    /// Number of leading prompt tokens (BOS included). Always < `input_ids.len()`.
    pub prompt_len: usize,
    pub train_on_inputs: bool,
    /// Cut at the cutoff (EOS and possibly answer tokens lost).
    pub truncated: bool,
    /// The prompt's tokens were not a prefix of the full text's (see crate docs).
    pub boundary_merge: bool,
}

impl Example {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Answer tokens (EOS included).
    pub fn answer_len(&self) -> usize {
        self.input_ids.len().saturating_sub(self.prompt_len)
    }

    /// Labels, HF style (not shifted): -100 on the prompt unless `train_on_inputs`, the token
    /// id elsewhere.
    pub fn labels(&self) -> Vec<i64> {
        let mut l: Vec<i64> = self.input_ids.iter().map(|&t| t as i64).collect();
        if !self.train_on_inputs {
            l[..self.prompt_len.min(self.input_ids.len())].fill(IGNORE_INDEX);
        }
        l
    }

    /// 1 on prompt tokens, 0 on answer tokens (and, in a batch, on padding).
    pub fn prompt_mask(&self) -> Vec<u8> {
        let mut m = vec![0u8; self.input_ids.len()];
        m[..self.prompt_len.min(self.input_ids.len())].fill(1);
        m
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The prompt alone reaches the cutoff: no answer token would be learned.
    PromptOverCutoff,
    /// Longer than the cutoff under `Overlong::Drop`.
    OverCutoff,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub source: usize,
    pub record: usize,
    pub reason: DropReason,
    pub prompt_tokens: usize,
    /// Tokens of the whole sample (with EOS) before the cutoff.
    pub tokens: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    Kept(Example),
    Dropped(Dropped),
}

/// Counts over a dataset. Every record is either an example or dropped; truncation and
/// boundary merges are counted among the examples.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Records read.
    pub records: usize,
    /// Examples kept.
    pub examples: usize,
    /// Tokens of the kept examples (prompt + answer + EOS, after truncation, before padding).
    pub tokens: usize,
    pub prompt_tokens: usize,
    /// Answer tokens with EOS: what the loss is taken on under answer-only masking.
    pub answer_tokens: usize,
    pub truncated: usize,
    pub dropped: usize,
    /// Of `dropped`: those whose prompt alone reaches the cutoff.
    pub dropped_prompt_over_cutoff: usize,
    /// Examples whose prompt/answer boundary fell inside a merged token (see crate docs).
    pub boundary_merges: usize,
    /// Longest kept example, in tokens.
    pub longest: usize,
    /// Longest sample before any cutoff, dropped ones included (to choose a cutoff).
    pub longest_before_cutoff: usize,
}

impl Report {
    fn count(&mut self, e: &Encoded, untruncated_len: usize) {
        self.records += 1;
        self.longest_before_cutoff = self.longest_before_cutoff.max(untruncated_len);
        match e {
            Encoded::Kept(x) => {
                self.examples += 1;
                self.tokens += x.len();
                self.prompt_tokens += x.prompt_len;
                self.answer_tokens += x.answer_len();
                self.truncated += x.truncated as usize;
                self.boundary_merges += x.boundary_merge as usize;
                self.longest = self.longest.max(x.len());
            }
            Encoded::Dropped(d) => {
                self.dropped += 1;
                self.dropped_prompt_over_cutoff += (d.reason == DropReason::PromptOverCutoff) as usize;
            }
        }
    }

    /// Records the cutoff took learned (answer) tokens from: the truncated examples (a cut
    /// always takes the EOS, and with it the answer's tail) and the records dropped because
    /// their prompt alone reaches the cutoff (they lost every answer token). Records dropped
    /// under [`Overlong::Drop`] for being longer than the cutoff are not counted: dropping
    /// was asked for.
    pub fn answers_cut(&self) -> usize {
        self.truncated + self.dropped_prompt_over_cutoff
    }

    /// Adds another report's counts (e.g. over the datasets of a mix).
    pub fn merge(&mut self, o: &Report) {
        self.records += o.records;
        self.examples += o.examples;
        self.tokens += o.tokens;
        self.prompt_tokens += o.prompt_tokens;
        self.answer_tokens += o.answer_tokens;
        self.truncated += o.truncated;
        self.dropped += o.dropped;
        self.dropped_prompt_over_cutoff += o.dropped_prompt_over_cutoff;
        self.boundary_merges += o.boundary_merges;
        self.longest = self.longest.max(o.longest);
        self.longest_before_cutoff = self.longest_before_cutoff.max(o.longest_before_cutoff);
    }
}

/// Examples of one dataset, with what happened to every record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedDataset {
    pub examples: Vec<Example>,
    pub dropped: Vec<Dropped>,
    pub report: Report,
}

/// Encodes one record. Errors only if the tokenizer fails; over-long samples come back as
/// `Encoded::Dropped`.
pub fn encode_example(tok: &Tokenizer, template: &Template, record: &Record, cfg: &EncodeConfig) -> Result<Encoded> {
    Ok(encode_inner(tok, template, record, cfg, 0, 0)?.0)
}

fn encode_inner(
    tok: &Tokenizer,
    template: &Template,
    r: &Record,
    cfg: &EncodeConfig,
    source: usize,
    record: usize,
) -> Result<(Encoded, usize)> {
    let prompt = template.prompt(r);
    let prompt_ids = tok.encode(&prompt)?;
    let mut full = prompt;
    full.push_str(&r.output);
    let full_ids = tok.encode(&full)?;
    let (mut ids, boundary_merge) = if full_ids.starts_with(&prompt_ids) {
        (full_ids, false)
    } else {
        // A merge crosses the boundary: keep the prompt's own tokens (exactly what the model
        // is given at evaluation) and tokenise the output on its own after them.
        let mut v = prompt_ids.clone();
        v.extend(tok.encode_plain(&r.output)?);
        (v, true)
    };
    ids.push(tok.eos_id());
    let prompt_len = prompt_ids.len();
    let total = ids.len();
    let mut truncated = false;
    if let Some(c) = cfg.cutoff {
        if total > c {
            let reason = if prompt_len >= c {
                Some(DropReason::PromptOverCutoff)
            } else if cfg.overlong == Overlong::Drop {
                Some(DropReason::OverCutoff)
            } else {
                None
            };
            if let Some(reason) = reason {
                let d = Dropped { source, record, reason, prompt_tokens: prompt_len, tokens: total };
                return Ok((Encoded::Dropped(d), total));
            }
            ids.truncate(c);
            truncated = true;
        }
    }
    let ex = Example {
        source,
        record,
        input_ids: ids,
        prompt_len,
        train_on_inputs: cfg.train_on_inputs,
        truncated,
        boundary_merge,
    };
    Ok((Encoded::Kept(ex), total))
}

/// Whether long loops draw a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// When both stdout and stderr are terminals.
    Auto,
    Hidden,
}

impl Progress {
    fn bar(self, len: u64, what: &str) -> indicatif::ProgressBar {
        let show = self == Progress::Auto && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        if !show {
            return indicatif::ProgressBar::hidden();
        }
        let pb = indicatif::ProgressBar::new(len);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what.to_string());
        pb
    }
}

const CHUNK: usize = 1024;

/// What every record of one dataset is encoded with.
struct Ctx<'a> {
    tok: &'a Tokenizer,
    template: &'a Template,
    cfg: &'a EncodeConfig,
    path: &'a Path,
    source: usize,
}

impl Ctx<'_> {
    /// Encodes `chunk` (records `first..`) in parallel and adds the results in order.
    fn encode_chunk(&self, first: usize, chunk: &[Record], out: &mut EncodedDataset) -> Result<()> {
        let results: Vec<Result<(Encoded, usize)>> =
            chunk
                .par_iter()
                .enumerate()
                .map(|(i, r)| {
                    encode_inner(self.tok, self.template, r, self.cfg, self.source, first + i).map_err(|e| {
                        Error::Encode { path: self.path.to_path_buf(), record: first + i, msg: e.to_string() }
                    })
                })
                .collect();
        for res in results {
            let (enc, untruncated) = res?;
            out.report.count(&enc, untruncated);
            match enc {
                Encoded::Kept(x) => out.examples.push(x),
                Encoded::Dropped(d) => out.dropped.push(d),
            }
        }
        Ok(())
    }
}

fn finish(path: &Path, out: EncodedDataset) -> Result<EncodedDataset> {
    let r = &out.report;
    if r.records == 0 {
        return Err(Error::EmptyDataset { path: path.to_path_buf(), detail: "no records".into() });
    }
    if r.examples == 0 {
        let detail = if r.dropped_prompt_over_cutoff == r.dropped {
            format!(
                "all {} records were dropped because their prompt alone reaches the cutoff \
                 (longest sample {} tokens); raise the cutoff",
                r.dropped, r.longest_before_cutoff
            )
        } else {
            format!(
                "all {} records were dropped ({} with a prompt reaching the cutoff, {} longer \
                 than the cutoff under the drop policy)",
                r.dropped,
                r.dropped_prompt_over_cutoff,
                r.dropped - r.dropped_prompt_over_cutoff
            )
        };
        return Err(Error::NoExamples { path: path.to_path_buf(), detail });
    }
    Ok(out)
}

/// Encodes records held in memory. `path` names the dataset in errors; `source` is stored in
/// every example. Fails if no example is left.
pub fn encode_records(
    tok: &Tokenizer,
    template: &Template,
    records: &[Record],
    cfg: &EncodeConfig,
    path: &Path,
    source: usize,
) -> Result<EncodedDataset> {
    let mut out = EncodedDataset { examples: Vec::new(), dropped: Vec::new(), report: Report::default() };
    let ctx = Ctx { tok, template, cfg, path, source };
    for (c, chunk) in records.chunks(CHUNK).enumerate() {
        ctx.encode_chunk(c * CHUNK, chunk, &mut out)?;
    }
    finish(path, out)
}

/// Streams a file through the tokenizer, CHUNK records at a time (in parallel within a
/// chunk), with a progress bar over the file's bytes. Fails on the first bad record, or if no
/// example is left.
pub fn encode_file(
    path: impl AsRef<Path>,
    tok: &Tokenizer,
    template: &Template,
    cfg: &EncodeConfig,
    progress: Progress,
) -> Result<EncodedDataset> {
    let path = path.as_ref();
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, "cannot open", e))?.len();
    let pb = progress.bar(len, &format!("tokenising {}", path.display()));
    let mut stream = RecordStream::open(path)?;
    let mut out = EncodedDataset { examples: Vec::new(), dropped: Vec::new(), report: Report::default() };
    let ctx = Ctx { tok, template, cfg, path, source: 0 };
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut first = 0;
    loop {
        chunk.clear();
        for r in stream.by_ref().take(CHUNK) {
            chunk.push(r?);
        }
        if chunk.is_empty() {
            break;
        }
        ctx.encode_chunk(first, &chunk, &mut out)?;
        first += chunk.len();
        pb.set_position(stream.bytes_read());
    }
    pb.finish_and_clear();
    finish(path, out)
}
