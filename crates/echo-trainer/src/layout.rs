//! Where each sample of a step's batch lies, padded or packed, and the per-sample views the
//! echo path needs from it: the pooling window of each sample, the sub-batch of the routed
//! samples, and the sample of every token.
//!
//! A padded batch has one sample per row, spanning the whole row (its padding is masked by the
//! attention mask and carries no label). A packed batch lists, per row, the lengths of the
//! examples placed one after the other in it; a sample spans exactly its own tokens. Everything
//! per sample (routing, pooling, the injection, CE and KD positions) goes through this type,
//! which is why a packed step equals the padded one to f32 rounding.

use crate::error::{Result, TrainError};
use echo_model::Batch;

/// Token spans of the samples: `(flat offset, length)` in sample order.
#[derive(Debug)]
pub struct Samples {
    spans: Vec<(usize, usize)>,
    /// `Some(rows)` when packed (the example lengths per row), `None` when padded.
    packed: Option<Vec<Vec<usize>>>,
    batch: usize,
    seq: usize,
    /// The sample of every flat position (`usize::MAX` on a packed row's trailing padding).
    of_token: Vec<usize>,
}

impl Samples {
    /// The layout a step input names: packed rows (`packed`, one list of example lengths per
    /// row of the `[batch, seq]` arrays) or, with `None`, padded.
    pub fn from_input(packed: Option<&[Vec<usize>]>, batch: usize, seq: usize) -> Result<Samples> {
        match packed {
            None => Ok(Samples::padded(batch, seq)),
            Some(rows) if rows.len() == batch => Samples::packed(rows, seq),
            Some(rows) => {
                Err(TrainError::Batch(format!("{} packed rows listed for a batch of {batch} rows", rows.len())))
            }
        }
    }

    /// Padded `[batch, seq]`: sample `b` is row `b`.
    pub fn padded(batch: usize, seq: usize) -> Samples {
        let spans = (0..batch).map(|b| (b * seq, seq)).collect();
        let of_token = (0..batch * seq).map(|i| i / seq).collect();
        Samples { spans, packed: None, batch, seq, of_token }
    }

    /// Packed `[rows.len(), seq]`: `rows[b]` lists the example lengths in row `b`.
    pub fn packed(rows: &[Vec<usize>], seq: usize) -> Result<Samples> {
        let mut spans = Vec::new();
        let mut of_token = vec![usize::MAX; rows.len() * seq];
        for (b, lens) in rows.iter().enumerate() {
            let used: usize = lens.iter().sum();
            if used > seq {
                return Err(TrainError::Batch(format!(
                    "packed row {b} holds {used} tokens, more than the batch's {seq}"
                )));
            }
            let mut at = b * seq;
            for &n in lens {
                if n == 0 {
                    return Err(TrainError::Batch(format!("packed row {b} lists an empty example")));
                }
                of_token[at..at + n].fill(spans.len());
                spans.push((at, n));
                at += n;
            }
        }
        Ok(Samples { spans, packed: Some(rows.to_vec()), batch: rows.len(), seq, of_token })
    }

    pub fn count(&self) -> usize {
        self.spans.len()
    }

    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// The flat position where sample `s` starts.
    pub fn start(&self, s: usize) -> usize {
        self.spans[s].0
    }

    /// The sample of a flat position of the batch.
    pub fn of(&self, flat: usize) -> usize {
        self.of_token[flat]
    }

    /// The model's batch over these samples (padded: position ids `0..T`; packed: attention
    /// inside each example, positions restarting at each).
    pub fn model_batch<I: Copy + Into<i64>, M: Copy + Into<i64>>(
        &self,
        ids: &[I],
        attention_mask: &[M],
        vocab: usize,
    ) -> echo_model::Result<Batch> {
        match &self.packed {
            None => Batch::new(ids, attention_mask, self.batch, self.seq, vocab),
            Some(rows) => Batch::packed(ids, rows, self.seq, vocab),
        }
    }

    /// Labels with every packed example's first label dropped: under the HF shift, the last
    /// position of one example must not be scored against the next example's first token.
    pub fn labels(&self, labels: &[i64]) -> Vec<i64> {
        let mut out = labels.to_vec();
        if self.is_packed() {
            for &(at, _) in &self.spans {
                out[at] = echo_tensor::IGNORE_INDEX;
            }
        }
        out
    }

    /// A pooling window per sample: `(gather, mask, width)` where `gather` (`[S * width]`)
    /// holds the flat batch positions to pool from and `mask` (`[S, width]`) the prompt mask
    /// on them (0 past a sample's end). `None` when the batch already has that layout
    /// (padded: the batch itself, `[B, T]`).
    pub fn pooling_window(&self, prompt_mask: &[f32]) -> Option<(Vec<usize>, Vec<f32>, usize)> {
        if !self.is_packed() {
            return None;
        }
        // Only the prompt is pooled: the window ends at the last masked position of any sample.
        let width = self
            .spans
            .iter()
            .map(|&(at, n)| prompt_mask[at..at + n].iter().rposition(|&m| m > 0.0).map_or(1, |p| p + 1))
            .max()
            .unwrap_or(1);
        let mut gather = Vec::with_capacity(self.count() * width);
        let mut mask = Vec::with_capacity(self.count() * width);
        for &(at, n) in &self.spans {
            for j in 0..width {
                // Past the sample's end: any position of the sample, masked out.
                gather.push(if j < n { at + j } else { at });
                mask.push(if j < n { prompt_mask[at + j] } else { 0.0 });
            }
        }
        Some((gather, mask, width))
    }

    /// The batch of the samples `which` (in that order) alone, for the echo forward:
    /// `(ids, attention mask, layout of the sub-batch, where each kept sample starts in it)`.
    pub fn select(&self, ids: &[u32], attention_mask: &[u8], which: &[usize]) -> Selected {
        match &self.packed {
            None => {
                let rows = |b: usize| b * self.seq..(b + 1) * self.seq;
                let starts = (0..which.len()).map(|k| k * self.seq).collect();
                Selected {
                    ids: which.iter().flat_map(|&b| ids[rows(b)].iter().copied()).collect(),
                    attention_mask: which.iter().flat_map(|&b| attention_mask[rows(b)].iter().copied()).collect(),
                    samples: Samples::padded(which.len(), self.seq),
                    starts,
                }
            }
            Some(_) => {
                let (mut sub_ids, mut lens, mut starts) = (Vec::new(), Vec::new(), Vec::new());
                for &s in which {
                    let (at, n) = self.spans[s];
                    starts.push(sub_ids.len());
                    sub_ids.extend_from_slice(&ids[at..at + n]);
                    lens.push(n);
                }
                let t = sub_ids.len();
                let samples = Samples::packed(&[lens], t).expect("the selected spans fill their row exactly");
                Selected { ids: sub_ids, attention_mask: vec![1; t], samples, starts }
            }
        }
    }

    /// Per flat position, its sample's index among `which` (the echo sub-batch's token to
    /// injection-row map; padding after packed examples maps to row 0, whose output it never
    /// reaches).
    pub fn token_rows(&self) -> Vec<usize> {
        self.of_token.iter().map(|&s| if s == usize::MAX { 0 } else { s }).collect()
    }
}

/// A sub-batch of some samples.
#[derive(Debug)]
pub struct Selected {
    pub ids: Vec<u32>,
    pub attention_mask: Vec<u8>,
    pub samples: Samples,
    /// Flat start of each selected sample in the sub-batch.
    pub starts: Vec<usize>,
}

impl Selected {
    /// The sub-batch position of flat position `flat` of the original batch, which belongs to
    /// the `k`-th selected sample starting at `from` there.
    pub fn position(&self, k: usize, from: usize, flat: usize) -> usize {
        self.starts[k] + (flat - from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_spans_windows_and_selection() {
        let s = Samples::packed(&[vec![3, 2], vec![4]], 5).unwrap();
        assert_eq!(s.count(), 3);
        assert_eq!((0..10).map(|i| s.of(i)).collect::<Vec<_>>(), [0, 0, 0, 1, 1, 2, 2, 2, 2, usize::MAX]);
        let labels: Vec<i64> = (0..10).collect();
        assert_eq!(s.labels(&labels), [-100, 1, 2, -100, 4, -100, 6, 7, 8, 9]);
        // Prompt: 2 tokens of sample 0, 1 of sample 1, 3 of sample 2.
        let pm = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let (gather, mask, width) = s.pooling_window(&pm).unwrap();
        assert_eq!(width, 3);
        assert_eq!(gather, [0, 1, 2, 3, 4, 3, 5, 6, 7]);
        assert_eq!(mask, [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let ids: Vec<u32> = (10..20).collect();
        let sel = s.select(&ids, &[1; 10], &[2, 0]);
        assert_eq!(sel.ids, [15, 16, 17, 18, 10, 11, 12]);
        assert_eq!(sel.starts, [0, 4]);
        assert_eq!(sel.position(1, 0, 2), 6);
        assert_eq!(sel.samples.token_rows(), [0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn padded_is_one_sample_per_row() {
        let s = Samples::padded(2, 3);
        assert!(s.pooling_window(&[1.0; 6]).is_none());
        assert_eq!(s.labels(&[5, 6, 7, 8, 9, 10]), [5, 6, 7, 8, 9, 10]);
        let sel = s.select(&[1, 2, 3, 4, 5, 6], &[1, 1, 0, 1, 1, 1], &[1]);
        assert_eq!((sel.ids, sel.attention_mask, sel.starts), (vec![4, 5, 6], vec![1, 1, 1], vec![0]));
        assert_eq!(s.of(4), 1);
    }

    #[test]
    fn bad_packings_are_refused() {
        assert!(Samples::packed(&[vec![3, 3]], 5).unwrap_err().to_string().contains("6 tokens"));
        assert!(Samples::packed(&[vec![0]], 5).unwrap_err().to_string().contains("empty"));
    }
}
