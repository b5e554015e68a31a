//! Records → token ids with answer-only labels, following the LLM-Adapters recipe.
//!
//! Per record: `prompt = template(record)`, `full = prompt + output`; both are tokenised (with
//! the tokenizer's leading specials, e.g. BOS) and EOS is appended to `full`. The first
//! `len(tokens(prompt))` positions are the prompt: their labels are -100 (unless
//! `train_on_inputs`) and they make up the prompt mask. See the crate docs for what happens
//! when `tokens(prompt)` is not a prefix of `tokens(full)`, for the cutoff policy and for the
//! other formats (completion, plain text, chat).

use std::io::IsTerminal;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::chat::{ChatTemplate, Message};
use crate::error::{Error, Result};
use crate::record::{Record, RecordStream, Sample};
use crate::template::{Format, Template};
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

/// The fixed cap on a record's text, in bytes, whatever the cutoff (see
/// [`EncodeConfig::max_record_bytes`]).
pub const MAX_RECORD_BYTES: usize = 4 << 20;

/// Bytes of text allowed per token of the cutoff before a record is dropped untokenised.
pub const BYTES_PER_CUTOFF_TOKEN: usize = 64;

impl EncodeConfig {
    /// A record whose text is longer than this is dropped ([`DropReason::TooLarge`]) without
    /// being tokenised: `cutoff × 64` bytes (a token is rarely more than a few bytes, so such
    /// a record is far past the cutoff anyway), and never more than [`MAX_RECORD_BYTES`].
    /// Tokenising bounds memory by the record's size: a 50 MB string would take gigabytes.
    pub fn max_record_bytes(&self) -> usize {
        self.cutoff.map_or(MAX_RECORD_BYTES, |c| c.saturating_mul(BYTES_PER_CUTOFF_TOKEN).min(MAX_RECORD_BYTES))
    }

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
    /// Further unlearned ranges `[start, end)` after the prompt: in a multi-turn chat, what
    /// lies between the assistant turns. Empty for the other formats.
    pub masked: Vec<(u32, u32)>,
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

    /// Answer tokens (EOS included): the tokens learned under answer-only masking.
    pub fn answer_len(&self) -> usize {
        self.input_ids.len().saturating_sub(self.unlearned_len())
    }

    /// Prompt tokens and the further masked ranges: what answer-only masking does not learn.
    pub fn unlearned_len(&self) -> usize {
        let n = self.input_ids.len();
        self.prompt_len.min(n)
            + self.masked.iter().map(|&(a, b)| (b as usize).min(n) - (a as usize).min(n)).sum::<usize>()
    }

    /// Labels, HF style (not shifted): -100 on the prompt (and the further masked ranges)
    /// unless `train_on_inputs`, the token id elsewhere.
    pub fn labels(&self) -> Vec<i64> {
        let mut l: Vec<i64> = self.input_ids.iter().map(|&t| t as i64).collect();
        if !self.train_on_inputs {
            for (a, b) in self.unlearned_ranges() {
                l[a..b].fill(IGNORE_INDEX);
            }
        }
        l
    }

    /// What the echo pools over: 1 on the prompt before the first learned token, 0 from there
    /// on (and, in a batch, on padding). In a multi-turn chat the later unlearned stretches
    /// (user turns after the first answer) are left out: the echo is one vector per sample,
    /// so pooling a later turn would carry it back to the earlier answers, which at inference
    /// never see what comes after them.
    pub fn prompt_mask(&self) -> Vec<u8> {
        let mut m = vec![0u8; self.input_ids.len()];
        m[..self.prompt_len.min(self.input_ids.len())].fill(1);
        m
    }

    fn unlearned_ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let n = self.input_ids.len();
        std::iter::once((0, self.prompt_len.min(n)))
            .chain(self.masked.iter().map(move |&(a, b)| ((a as usize).min(n), (b as usize).min(n))))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// The prompt alone reaches the cutoff: no answer token would be learned.
    PromptOverCutoff,
    /// Longer than the cutoff under `Overlong::Drop`.
    OverCutoff,
    /// The record's text is longer than [`EncodeConfig::max_record_bytes`]: dropped without
    /// being tokenised (`tokens` is then the text's length in bytes).
    TooLarge,
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
    /// Of `dropped`: those whose text was over the size limit, never tokenised.
    #[serde(default)]
    pub dropped_too_large: usize,
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
                self.prompt_tokens += x.unlearned_len();
                self.answer_tokens += x.answer_len();
                self.truncated += x.truncated as usize;
                self.boundary_merges += x.boundary_merge as usize;
                self.longest = self.longest.max(x.len());
            }
            Encoded::Dropped(d) => {
                self.dropped += 1;
                self.dropped_prompt_over_cutoff += (d.reason == DropReason::PromptOverCutoff) as usize;
                self.dropped_too_large += (d.reason == DropReason::TooLarge) as usize;
            }
        }
    }

    /// Records the cutoff took learned (answer) tokens from: the truncated examples (a cut
    /// always takes the EOS, and with it the answer's tail) and the records dropped because
    /// their prompt alone reaches the cutoff (they lost every answer token), and those too
    /// large to tokenise. Records dropped under [`Overlong::Drop`] for being longer than the
    /// cutoff are not counted: dropping was asked for.
    pub fn answers_cut(&self) -> usize {
        self.truncated + self.dropped_prompt_over_cutoff + self.dropped_too_large
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
        self.dropped_too_large += o.dropped_too_large;
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

/// Encodes one record. Errors only if the tokenizer fails (or the record does not fit the
/// template); over-long samples come back as `Encoded::Dropped`.
pub fn encode_example(tok: &Tokenizer, template: &Template, record: &Record, cfg: &EncodeConfig) -> Result<Encoded> {
    Ok(encode_inner(tok, template, record, cfg, 0, 0)?.0)
}

/// Encodes one record of any format (see [`Sample`]).
pub fn encode_sample(tok: &Tokenizer, template: &Template, sample: &Sample, cfg: &EncodeConfig) -> Result<Encoded> {
    Ok(encode_any(tok, template, sample, cfg, 0, 0)?.0)
}

fn too_large(bytes: usize, cfg: &EncodeConfig, source: usize, record: usize) -> Option<(Encoded, usize)> {
    (bytes > cfg.max_record_bytes()).then(|| {
        let d = Dropped { source, record, reason: DropReason::TooLarge, prompt_tokens: 0, tokens: bytes };
        (Encoded::Dropped(d), 0)
    })
}

fn encode_inner(
    tok: &Tokenizer,
    template: &Template,
    r: &Record,
    cfg: &EncodeConfig,
    source: usize,
    record: usize,
) -> Result<(Encoded, usize)> {
    let bytes = r.instruction.len() + r.input.len() + r.output.len();
    if let Some(d) = too_large(bytes, cfg, source, record) {
        return Ok(d);
    }
    match template.format {
        Format::Instruction | Format::Completion => {}
        Format::Plain | Format::Chat(_) => {
            return Err(Error::Template {
                name: template.name.clone(),
                msg: format!(
                    "reads records with {}, but was given LLM-Adapters records (instruction, output)",
                    template.format.fields()
                ),
            })
        }
    }
    if !r.input.is_empty() && template.with_input.is_empty() {
        return Err(Error::Template {
            name: template.name.clone(),
            msg: "the record has an `input` but the template has no with-input form (set \
                  prompt_format_with_input, with {instruction} and {input})"
                .into(),
        });
    }
    let (ids, prompt_len, boundary_merge) = encode_pair(tok, template.prompt(r), &r.output)?;
    Ok(cut(ids, prompt_len, Vec::new(), boundary_merge, cfg, source, record))
}

/// `tokens(prompt + output) ++ [EOS]` and the prompt's length, with the boundary rule of the
/// crate docs.
fn encode_pair(tok: &Tokenizer, prompt: String, output: &str) -> Result<(Vec<u32>, usize, bool)> {
    let prompt_ids = tok.encode(&prompt)?;
    let mut full = prompt;
    full.push_str(output);
    let full_ids = tok.encode(&full)?;
    let (mut ids, boundary_merge) = if full_ids.starts_with(&prompt_ids) {
        (full_ids, false)
    } else {
        // A merge crosses the boundary: keep the prompt's own tokens (exactly what the model
        // is given at evaluation) and tokenise the output on its own after them.
        let mut v = prompt_ids.clone();
        v.extend(tok.encode_plain(output)?);
        (v, true)
    };
    ids.push(tok.eos_id());
    Ok((ids, prompt_ids.len(), boundary_merge))
}

fn encode_any(
    tok: &Tokenizer,
    template: &Template,
    s: &Sample,
    cfg: &EncodeConfig,
    source: usize,
    record: usize,
) -> Result<(Encoded, usize)> {
    if let Sample::Instruction(r) = s {
        return encode_inner(tok, template, r, cfg, source, record);
    }
    if let Some(d) = too_large(s.text_bytes(), cfg, source, record) {
        return Ok(d);
    }
    let mismatch = || Error::Template {
        name: template.name.clone(),
        msg: format!("reads records with {}", template.format.fields()),
    };
    let (ids, prompt_len, masked, merge) = match (s, &template.format) {
        (Sample::Completion { prompt, completion }, Format::Completion) => {
            let (ids, p, merge) = encode_pair(tok, prompt.clone(), completion)?;
            (ids, p, Vec::new(), merge)
        }
        (Sample::Text(t), Format::Plain) => {
            let mut ids = tok.encode(t)?;
            ids.push(tok.eos_id());
            (ids, 0, Vec::new(), false)
        }
        (Sample::Chat(m), Format::Chat(chat)) => {
            let (ids, p, masked) = encode_chat(tok, chat, m)?;
            (ids, p, masked, false)
        }
        _ => return Err(mismatch()),
    };
    Ok(cut(ids, prompt_len, masked, merge, cfg, source, record))
}

/// Unlearned ranges `[start, end)` of an example after its prompt.
type Ranges = Vec<(u32, u32)>;

/// A conversation's tokens: the whole conversation rendered by the chat template and
/// tokenised as written (the template writes its own special tokens). Assistant turn `i` is
/// found by rendering the messages before it with the generation prompt and the messages up
/// to it without: the first must be a prefix of the second, and the second of the whole
/// conversation, as text and as tokens. The learned span is the tokens in between, ending at
/// the turn's last EOS (its end-of-turn token; a following EOS is taken in when the template
/// writes it after the turn). Tokens after the last learned one are left out. Returns the
/// ids, the length of the unlearned head and the unlearned ranges between turns.
fn encode_chat(tok: &Tokenizer, chat: &ChatTemplate, msgs: &[Message]) -> Result<(Vec<u32>, usize, Ranges)> {
    let full = chat.render(msgs, false)?;
    let mut ids = tok.encode_plain(&full)?;
    let eos = tok.eos_id();
    let unstable = |i: usize, what: &str| Error::Template {
        name: format!("chat ({})", chat.origin().display()),
        msg: format!(
            "not prefix-stable at messages[{i}] (the assistant turn): {what}, so the turn's tokens \
             cannot be located; use a template whose rendering of a conversation's first turns is a \
             prefix of the whole conversation's"
        ),
    };
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = chat.render(&msgs[..i], true)?;
        let through = chat.render(&msgs[..=i], false)?;
        if !through.starts_with(&before) {
            return Err(unstable(
                i,
                "the text before the turn (with the generation prompt) is not a prefix of the text through it",
            ));
        }
        if !full.starts_with(&through) {
            return Err(unstable(i, "the text through the turn is not a prefix of the whole conversation's"));
        }
        let b = tok.encode_plain(&before)?;
        let t = tok.encode_plain(&through)?;
        if !t.starts_with(&b) || !ids.starts_with(&t) {
            return Err(unstable(i, "a token merges across the turn's boundary"));
        }
        let (start, mut end) = (b.len(), t.len());
        if let Some(k) = ids[start..end].iter().rposition(|&x| x == eos) {
            end = start + k + 1;
        } else if ids.get(end) == Some(&eos) {
            end += 1;
        }
        if end > start {
            spans.push((start, end));
        }
    }
    let Some(&(first, _)) = spans.first() else {
        return Err(Error::Template {
            name: format!("chat ({})", chat.origin().display()),
            msg: "no assistant token to learn in the conversation".into(),
        });
    };
    let last = spans[spans.len() - 1].1;
    ids.truncate(last);
    let masked = spans.windows(2).filter(|w| w[1].0 > w[0].1).map(|w| (w[0].1 as u32, w[1].0 as u32)).collect();
    Ok((ids, first, masked))
}

/// Applies the cutoff policy to an encoded sample; the second value is its length before the
/// cutoff.
fn cut(
    mut ids: Vec<u32>,
    prompt_len: usize,
    mut masked: Vec<(u32, u32)>,
    boundary_merge: bool,
    cfg: &EncodeConfig,
    source: usize,
    record: usize,
) -> (Encoded, usize) {
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
                return (Encoded::Dropped(d), total);
            }
            ids.truncate(c);
            masked.retain(|&(a, _)| (a as usize) < c);
            for r in &mut masked {
                r.1 = r.1.min(c as u32);
            }
            truncated = true;
        }
    }
    let ex = Example {
        source,
        record,
        input_ids: ids,
        prompt_len,
        masked,
        train_on_inputs: cfg.train_on_inputs,
        truncated,
        boundary_merge,
    };
    (Encoded::Kept(ex), total)
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
/// A chunk of a file stops growing past this many bytes of text.
const CHUNK_BYTES: usize = 64 << 20;

/// What every record of one dataset is encoded with.
struct Ctx<'a> {
    tok: &'a Tokenizer,
    template: &'a Template,
    cfg: &'a EncodeConfig,
    path: &'a Path,
    source: usize,
}

/// A record the chunk encoder takes: an LLM-Adapters [`Record`] or any [`Sample`].
trait Encodable: Sync {
    fn encode_with(&self, ctx: &Ctx, record: usize) -> Result<(Encoded, usize)>;
}

impl Encodable for Record {
    fn encode_with(&self, ctx: &Ctx, record: usize) -> Result<(Encoded, usize)> {
        encode_inner(ctx.tok, ctx.template, self, ctx.cfg, ctx.source, record)
    }
}

impl Encodable for Sample {
    fn encode_with(&self, ctx: &Ctx, record: usize) -> Result<(Encoded, usize)> {
        encode_any(ctx.tok, ctx.template, self, ctx.cfg, ctx.source, record)
    }
}

impl Ctx<'_> {
    /// Encodes `chunk` (records `first..`) in parallel and adds the results in order.
    fn encode_chunk<T: Encodable>(&self, first: usize, chunk: &[T], out: &mut EncodedDataset) -> Result<()> {
        let results: Vec<Result<(Encoded, usize)>> = chunk
            .par_iter()
            .enumerate()
            .map(|(i, r)| {
                r.encode_with(self, first + i).map_err(|e| Error::Encode {
                    path: self.path.to_path_buf(),
                    record: first + i,
                    msg: e.to_string(),
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
                "all {} records were dropped ({} with a prompt reaching the cutoff, {} over the \
                 size limit, {} longer than the cutoff under the drop policy)",
                r.dropped,
                r.dropped_prompt_over_cutoff,
                r.dropped_too_large,
                r.dropped - r.dropped_prompt_over_cutoff - r.dropped_too_large
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
    encode_all(&Ctx { tok, template, cfg, path, source }, records)
}

/// Encodes records of any format held in memory (as [`encode_records`]).
pub fn encode_samples(
    tok: &Tokenizer,
    template: &Template,
    samples: &[Sample],
    cfg: &EncodeConfig,
    path: &Path,
    source: usize,
) -> Result<EncodedDataset> {
    encode_all(&Ctx { tok, template, cfg, path, source }, samples)
}

/// Encodes in-memory items chunk by chunk (in parallel within a chunk, in order across).
fn encode_all<T: Encodable>(ctx: &Ctx, items: &[T]) -> Result<EncodedDataset> {
    let mut out = EncodedDataset { examples: Vec::new(), dropped: Vec::new(), report: Report::default() };
    for (c, chunk) in items.chunks(CHUNK).enumerate() {
        ctx.encode_chunk(c * CHUNK, chunk, &mut out)?;
    }
    finish(ctx.path, out)
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
        // Stop a chunk early once it holds many bytes: records are bounded in memory by
        // their size, not by their count.
        let mut bytes = 0;
        while chunk.len() < CHUNK && bytes < CHUNK_BYTES {
            match stream.next_sample(&template.format) {
                Some(r) => {
                    let r = r?;
                    bytes += r.text_bytes();
                    chunk.push(r);
                }
                None => break,
            }
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
