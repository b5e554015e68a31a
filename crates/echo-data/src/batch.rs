//! Batches: right-padded to the longest row or packed (examples one after the other in a row,
//! no padding between them), seeded shuffling per epoch, optional length bucketing, and a
//! resumable position.
//!
//! An epoch's plan (which examples go in which batch, in which order) is a pure function of
//! (seed, epoch, config, example lengths), so a checkpoint only has to store a
//! [`BatchPosition`]; resuming recomputes the plan and continues at the same batch.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::encode::{Example, IGNORE_INDEX};
use crate::error::{Error, Result};
use echo_rng::Rng;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchConfig {
    pub batch_size: usize,
    pub seed: u64,
    /// Shuffle every epoch (seeded by `seed` and the epoch number).
    pub shuffle: bool,
    /// Length bucketing: after shuffling, every window of `bucket * batch_size` examples is
    /// sorted by length, so a batch holds examples of similar length (less padding), and the
    /// order of the batches is shuffled again. The batch holding the longest example comes
    /// first, so a run that would run out of memory does so at once (as HF's
    /// `group_by_length`). `None` = off.
    pub bucket: Option<usize>,
    /// Drop the last, smaller batch of each epoch.
    pub drop_last: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { batch_size: 16, seed: 42, shuffle: true, bucket: None, drop_last: false }
    }
}

/// Where a run stands: the next batch is batch `index` of epoch `epoch` (both from 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchPosition {
    pub epoch: u64,
    pub index: usize,
}

/// A batch, every `[B, T]` array row-major (`row * seq_len + t`): padded (one example per
/// row, `packed = None`) or packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Rows.
    pub batch_size: usize,
    pub seq_len: usize,
    /// Packed layout: per row, the lengths of the examples placed one after the other in it
    /// (in example order); the model must keep attention inside each example and restart
    /// positions at each (`echo_model::Batch::packed`). `None`: padded, one example per row.
    pub packed: Option<Vec<Vec<usize>>>,
    /// Padded with the tokenizer's pad id.
    pub input_ids: Vec<u32>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<u8>,
    /// HF style, not shifted: -100 on padding, and on the prompt under answer-only masking.
    /// Packed, also -100 on each example's first token, so that under the shift no example's
    /// last position is scored against the next example's first token (in a padded row the
    /// first label is never a target either).
    pub labels: Vec<i64>,
    /// 1 on prompt tokens only (what the echo pools over: [`Example::prompt_mask`]), 0 on
    /// answer and padding.
    pub prompt_mask: Vec<u8>,
    /// Real tokens per example.
    pub lengths: Vec<usize>,
    /// Prompt tokens per example (every unlearned token: in a multi-turn chat, the turns
    /// between the assistant's too).
    pub prompt_lengths: Vec<usize>,
    /// Index of each row's example in the batcher's example list.
    pub example_indices: Vec<usize>,
    /// The position this batch was taken from.
    pub position: BatchPosition,
}

impl Batch {
    /// Pads `rows` into a batch (right padding).
    pub fn from_examples(examples: &[&Example], pad_id: u32) -> Batch {
        let b = examples.len();
        let t = examples.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut batch = Batch {
            batch_size: b,
            seq_len: t,
            packed: None,
            input_ids: vec![pad_id; b * t],
            attention_mask: vec![0; b * t],
            labels: vec![IGNORE_INDEX; b * t],
            prompt_mask: vec![0; b * t],
            lengths: Vec::with_capacity(b),
            prompt_lengths: Vec::with_capacity(b),
            example_indices: Vec::new(),
            position: BatchPosition::default(),
        };
        for (row, e) in examples.iter().enumerate() {
            let o = row * t;
            let n = e.len();
            batch.input_ids[o..o + n].copy_from_slice(&e.input_ids);
            batch.attention_mask[o..o + n].fill(1);
            batch.labels[o..o + n].copy_from_slice(&e.labels());
            let mask = e.prompt_mask();
            batch.prompt_mask[o..o + n].copy_from_slice(&mask);
            batch.lengths.push(n);
            batch.prompt_lengths.push(mask.iter().map(|&m| m as usize).sum());
        }
        batch
    }

    /// Packs `examples` one after the other into a single row (no padding at all). Every
    /// per-example quantity stays per example: the prompt mask, the labels (the first token's
    /// label dropped, see [`Batch::labels`]) and the lengths.
    pub fn packed(examples: &[&Example]) -> Batch {
        let t: usize = examples.iter().map(|e| e.len()).sum();
        let mut batch = Batch {
            batch_size: 1,
            seq_len: t,
            packed: Some(vec![examples.iter().map(|e| e.len()).collect()]),
            input_ids: Vec::with_capacity(t),
            attention_mask: vec![1; t],
            labels: Vec::with_capacity(t),
            prompt_mask: Vec::with_capacity(t),
            lengths: Vec::with_capacity(examples.len()),
            prompt_lengths: Vec::with_capacity(examples.len()),
            example_indices: Vec::new(),
            position: BatchPosition::default(),
        };
        for e in examples {
            batch.input_ids.extend_from_slice(&e.input_ids);
            let at = batch.labels.len();
            batch.labels.extend(e.labels());
            if !e.is_empty() {
                batch.labels[at] = IGNORE_INDEX;
            }
            let mask = e.prompt_mask();
            batch.prompt_lengths.push(mask.iter().map(|&m| m as usize).sum());
            batch.prompt_mask.extend(mask);
            batch.lengths.push(e.len());
        }
        batch
    }

    /// A batch from HF-style arrays (`[batch, seq]` row-major; ids as i64 as the fixtures and
    /// transformers hold them), padded or, with `packed`, packed. Per example, the prompt is
    /// its real tokens before its first label (the positions [`Example::prompt_mask`] marks;
    /// later unlabelled stretches, such as a chat's later user turns, are left out, since
    /// pooling them would carry what follows an answer back to it), the length its real
    /// tokens; the examples are numbered from 0. What the step takes from the data pipeline, for inputs
    /// that come from elsewhere (fixtures, benches, checks).
    pub fn from_arrays(
        input_ids: &[i64],
        attention_mask: &[i64],
        labels: &[i64],
        batch: usize,
        seq: usize,
        packed: Option<Vec<Vec<usize>>>,
    ) -> Result<Batch> {
        let n = batch * seq;
        if input_ids.len() != n || attention_mask.len() != n || labels.len() != n {
            return Err(Error::Batch(format!(
                "input_ids {}, attention_mask {}, labels {} elements; [B, T] = [{batch}, {seq}] needs {n}",
                input_ids.len(),
                attention_mask.len(),
                labels.len()
            )));
        }
        let ids = input_ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                u32::try_from(t)
                    .map_err(|_| Error::Batch(format!("input_ids[{}, {}] = {t} is no token id", i / seq, i % seq)))
            })
            .collect::<Result<Vec<u32>>>()?;
        let mask = attention_mask
            .iter()
            .enumerate()
            .map(|(i, &m)| match m {
                0 | 1 => Ok(m as u8),
                _ => Err(Error::Batch(format!("attention_mask[{}, {}] = {m}; expected 0 or 1", i / seq, i % seq))),
            })
            .collect::<Result<Vec<u8>>>()?;
        // Each example's span: a padded row, or the lengths a packed row lists.
        let spans: Vec<(usize, usize)> = match &packed {
            None => (0..batch).map(|b| (b * seq, seq)).collect(),
            Some(rows) => {
                if rows.len() != batch {
                    return Err(Error::Batch(format!("{} packed rows listed for {batch} rows", rows.len())));
                }
                let mut spans = Vec::new();
                for (b, lens) in rows.iter().enumerate() {
                    if lens.iter().sum::<usize>() > seq {
                        return Err(Error::Batch(format!("packed row {b} holds more than {seq} tokens")));
                    }
                    let mut at = b * seq;
                    for &len in lens {
                        spans.push((at, len));
                        at += len;
                    }
                }
                spans
            }
        };
        let mut prompt_mask = vec![0u8; n];
        let (mut lengths, mut prompt_lengths) = (Vec::new(), Vec::new());
        for &(at, len) in &spans {
            let first_label = labels[at..at + len].iter().position(|&l| l != IGNORE_INDEX).unwrap_or(len);
            let mut prompt = 0;
            for i in at..at + first_label {
                prompt_mask[i] = mask[i];
                prompt += mask[i] as usize;
            }
            lengths.push(mask[at..at + len].iter().map(|&m| m as usize).sum());
            prompt_lengths.push(prompt);
        }
        Ok(Batch {
            batch_size: batch,
            seq_len: seq,
            packed,
            input_ids: ids,
            attention_mask: mask,
            labels: labels.to_vec(),
            prompt_mask,
            example_indices: (0..lengths.len()).collect(),
            lengths,
            prompt_lengths,
            position: BatchPosition::default(),
        })
    }

    /// Examples in the batch.
    pub fn examples(&self) -> usize {
        self.lengths.len()
    }

    /// Positions whose label is not -100.
    pub fn label_tokens(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Real (non-padding) tokens.
    pub fn tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

pub struct Batcher {
    examples: Arc<[Example]>,
    pad_id: u32,
    cfg: BatchConfig,
    pos: BatchPosition,
    /// The plan of `pos.epoch`.
    plan: Vec<Vec<usize>>,
}

impl Batcher {
    /// Fails on an empty example list or a zero batch size.
    pub fn new(examples: impl Into<Arc<[Example]>>, pad_id: u32, cfg: BatchConfig) -> Result<Self> {
        let examples = examples.into();
        if examples.is_empty() {
            return Err(Error::Batcher("no examples to batch (empty dataset)".into()));
        }
        if cfg.batch_size == 0 {
            return Err(Error::Batcher("batch_size must be at least 1".into()));
        }
        if cfg.bucket == Some(0) {
            return Err(Error::Batcher("bucket must be at least 1 batch (or off)".into()));
        }
        if cfg.drop_last && examples.len() < cfg.batch_size {
            return Err(Error::Batcher(format!(
                "drop_last with {} examples and batch_size {} leaves no batch",
                examples.len(),
                cfg.batch_size
            )));
        }
        let plan = plan_epoch(&examples, &cfg, 0);
        Ok(Batcher { examples, pad_id, cfg, pos: BatchPosition::default(), plan })
    }

    pub fn examples(&self) -> &[Example] {
        &self.examples
    }

    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    pub fn batches_per_epoch(&self) -> usize {
        let (n, b) = (self.examples.len(), self.cfg.batch_size);
        if self.cfg.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The position of the next batch.
    pub fn position(&self) -> BatchPosition {
        self.pos
    }

    /// Continues from a saved position. `index == batches_per_epoch()` is accepted and means
    /// the start of the next epoch.
    pub fn seek(&mut self, pos: BatchPosition) -> Result<()> {
        let n = self.batches_per_epoch();
        if pos.index > n {
            return Err(Error::Batcher(format!(
                "position {}:{} is past the end of an epoch of {n} batches (was the dataset or \
                 batch size changed since the checkpoint?)",
                pos.epoch, pos.index
            )));
        }
        let pos = if pos.index == n { BatchPosition { epoch: pos.epoch + 1, index: 0 } } else { pos };
        if pos.epoch != self.pos.epoch {
            self.plan = plan_epoch(&self.examples, &self.cfg, pos.epoch);
        }
        self.pos = pos;
        Ok(())
    }

    /// The plan of an epoch: example indices per batch, in order.
    pub fn epoch_plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        plan_epoch(&self.examples, &self.cfg, epoch)
    }

    /// The next batch; moves on to the next epoch after the last batch of one.
    pub fn next_batch(&mut self) -> Batch {
        let pos = self.pos;
        let mut batch = self.make(&self.plan[pos.index]);
        batch.position = pos;
        let next = BatchPosition { epoch: pos.epoch, index: pos.index + 1 };
        // Cannot fail: index + 1 <= batches_per_epoch.
        let _ = self.seek(next);
        batch
    }

    /// The batch at a position, without moving.
    pub fn batch_at(&self, pos: BatchPosition) -> Result<Batch> {
        let n = self.batches_per_epoch();
        if pos.index >= n {
            return Err(Error::Batcher(format!("batch {} of an epoch of {n} batches", pos.index)));
        }
        let mut batch = if pos.epoch == self.pos.epoch {
            self.make(&self.plan[pos.index])
        } else {
            self.make(&plan_epoch(&self.examples, &self.cfg, pos.epoch)[pos.index])
        };
        batch.position = pos;
        Ok(batch)
    }

    fn make(&self, idx: &[usize]) -> Batch {
        let rows: Vec<&Example> = idx.iter().map(|&i| &self.examples[i]).collect();
        let mut b = Batch::from_examples(&rows, self.pad_id);
        b.example_indices = idx.to_vec();
        b
    }
}

fn plan_epoch(examples: &[Example], cfg: &BatchConfig, epoch: u64) -> Vec<Vec<usize>> {
    let n = examples.len();
    let bs = cfg.batch_size;
    let mut order: Vec<usize> = (0..n).collect();
    if cfg.shuffle {
        Rng::derive(cfg.seed, &format!("data.shuffle/epoch {epoch}")).shuffle(&mut order);
    }
    if let Some(w) = cfg.bucket {
        // Longest first within a window; ties keep the shuffled order (stable sort).
        for win in order.chunks_mut(w * bs) {
            win.sort_by_key(|&i| std::cmp::Reverse(examples[i].len()));
        }
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(bs).map(<[usize]>::to_vec).collect();
    if cfg.drop_last && batches.last().is_some_and(|b| b.len() < bs) {
        batches.pop();
    }
    if cfg.bucket.is_some() {
        if cfg.shuffle {
            Rng::derive(cfg.seed, &format!("data.bucket/epoch {epoch}")).shuffle(&mut batches);
        }
        let longest = |b: &Vec<usize>| b.iter().map(|&i| examples[i].len()).max().unwrap_or(0);
        if let Some(k) = (0..batches.len()).max_by_key(|&k| (longest(&batches[k]), std::cmp::Reverse(k))) {
            batches.swap(0, k);
        }
    }
    batches
}
