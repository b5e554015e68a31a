//! Text generation with a KV cache: batched greedy decoding or seeded temperature / top-p
//! sampling, with a pluggable projection so an adapter can act at inference.
//!
//! Training runs the whole sequence through [`Llama::forward`]; generating token by token that
//! way costs O(T²) per new token. Here each layer keeps the rotated keys and the values of
//! every token seen ([`KvCache`]), so a decode step projects only the new token and attends
//! over the cache in O(T) (`echo_kernels::cpu::decode`). No autograd: plain [`Tensor`]s and
//! `echo_tensor::nn` forwards on the same weights and RoPE table as `Llama`.
//!
//! **Batching and padding.** Prompts of different lengths are *left*-padded in the cache: row
//! `b` with `pad_b` pad slots puts its token `t` in slot `pad_b + t`. Then every row's last
//! prompt token, and every later token, sits in the same slot, so one decode step appends one
//! slot for the whole batch. Pad slots are invalid keys (never attended), and RoPE uses the
//! *real* position `slot - pad_b`, so each row computes exactly what it would alone.
//! A finished row (EOS or budget) keeps being fed a pad token until the batch finishes; its
//! output is ignored.

use crate::{Error, Llama, Proj, Result};
use echo_kernels::cpu::decode::{cache_write, decode_attention, linear_few_rows, DecodeDims, FEW_ROWS};
use echo_tensor::{nn, Rng, Tensor};
use std::time::Instant;

/// Computes `x Wᵀ` (plus an adapter's contribution, if any) for one projection of one layer
/// at inference. `x` is `[B, Q, in]`, `w` the frozen `[out, in]` weight; returns `[B, Q, out]`.
/// Closures `FnMut(layer, proj, &x, &w) -> Result<Tensor>` implement it.
pub trait InferProjector {
    fn project(&mut self, layer: usize, proj: Proj, x: &Tensor, w: &Tensor) -> Result<Tensor>;
}

/// The base model: every projection is `x Wᵀ` ([`linear`]).
pub struct PlainInfer;

impl InferProjector for PlainInfer {
    fn project(&mut self, _layer: usize, _proj: Proj, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        linear(x, w)
    }
}

/// `x Wᵀ` for `x` `[..., in]` and `w` `[out, in]`, as [`Tensor::linear`], but a decode step's
/// few rows go through `linear_few_rows`, which streams each weight row once instead of
/// packing the whole matrix as the general GEMM does (3x faster for 2-3 rows on SmolLM2).
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let k = x.shape().last();
    let rows = x.numel() / k.max(1);
    if rows > FEW_ROWS || w.rank() != 2 || w.dims()[1] != k || x.rank() < 1 {
        return Ok(x.linear(w)?);
    }
    let n = w.dims()[0];
    let mut out = vec![0.0f32; rows * n];
    linear_few_rows(x.f32s("linear")?, rows, k, w.f32s("linear")?, n, &mut out);
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = n;
    Ok(Tensor::new(out, dims)?)
}

impl<F: FnMut(usize, Proj, &Tensor, &Tensor) -> Result<Tensor>> InferProjector for F {
    fn project(&mut self, layer: usize, proj: Proj, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        self(layer, proj, x, w)
    }
}

/// Keys (after RoPE) and values of every layer, `[B, Hkv, S, D]` each, and which slots hold
/// real tokens.
#[derive(Clone)]
pub struct KvCache {
    pub batch: usize,
    pub capacity: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    key_valid: Vec<bool>,
    /// Pad slots at the start of each row.
    pads: Vec<usize>,
    /// Slots filled so far (the same for every row).
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Left-pad slots of each row.
    pub fn pads(&self) -> &[usize] {
        &self.pads
    }
}

/// Runs the model incrementally over a batch: [`Decoder::prefill`] once, then
/// [`Decoder::step`] per new token. Both return next-token logits `[B, V]`. Cloning forks
/// the cache, e.g. to score several continuations of one prefilled prompt.
#[derive(Clone)]
pub struct Decoder<'m> {
    model: &'m Llama,
    cache: KvCache,
}

impl<'m> Decoder<'m> {
    /// A decoder for `batch` sequences of up to `capacity` slots (longest prompt + new tokens).
    pub fn new(model: &'m Llama, batch: usize, capacity: usize) -> Result<Self> {
        let c = &model.config;
        if batch == 0 || capacity == 0 {
            return Err(Error::Input(format!("decoder needs batch > 0 and capacity > 0, got {batch} and {capacity}")));
        }
        // The cache is sized by `capacity`: bounded by the context (a slot past it could only
        // hold a position the model does not have), so a bad capacity is an error, not an abort.
        if capacity > c.max_position_embeddings {
            return Err(Error::Input(format!(
                "decoder capacity {capacity} exceeds max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let per_layer = batch
            .checked_mul(c.num_key_value_heads * capacity * c.head_dim)
            .filter(|&n| n <= isize::MAX as usize / 4)
            .ok_or_else(|| Error::Input(format!("a KV cache for batch {batch} × capacity {capacity} is too large")))?;
        let cache = KvCache {
            batch,
            capacity,
            k: (0..c.num_hidden_layers).map(|_| vec![0.0; per_layer]).collect(),
            v: (0..c.num_hidden_layers).map(|_| vec![0.0; per_layer]).collect(),
            key_valid: vec![false; batch * capacity],
            pads: vec![0; batch],
            len: 0,
        };
        Ok(Decoder { model, cache })
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// Runs the prompts (left-padded to the longest) through the model, filling the cache.
    /// Returns the logits after each prompt's last token.
    pub fn prefill(&mut self, prompts: &[Vec<u32>], proj: &mut dyn InferProjector) -> Result<Tensor> {
        if !self.cache.is_empty() {
            return Err(Error::Input("prefill on a decoder that already holds tokens".into()));
        }
        if prompts.len() != self.cache.batch {
            return Err(Error::Input(format!("{} prompts for a decoder of batch {}", prompts.len(), self.cache.batch)));
        }
        if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
            return Err(Error::Input(format!(
                "prompt {i} is empty (generation needs at least one token to condition on)"
            )));
        }
        let t = prompts.iter().map(Vec::len).max().expect("batch > 0");
        let pad_id = 0u32;
        let mut ids = Vec::with_capacity(self.cache.batch * t);
        for (b, p) in prompts.iter().enumerate() {
            self.cache.pads[b] = t - p.len();
            ids.extend(std::iter::repeat_n(pad_id, t - p.len()));
            ids.extend_from_slice(p);
        }
        self.run(&ids, t, proj)
    }

    /// Appends one token per sequence and returns the next logits.
    pub fn step(&mut self, tokens: &[u32], proj: &mut dyn InferProjector) -> Result<Tensor> {
        if self.cache.is_empty() {
            return Err(Error::Input("step before prefill".into()));
        }
        if tokens.len() != self.cache.batch {
            return Err(Error::Input(format!("{} tokens for a decoder of batch {}", tokens.len(), self.cache.batch)));
        }
        self.run(tokens, 1, proj)
    }

    /// The forward over `q_len` new slots per row (`ids` is `[B, q_len]`).
    fn run(&mut self, ids: &[u32], q_len: usize, proj: &mut dyn InferProjector) -> Result<Tensor> {
        let m = self.model;
        let c = &m.config;
        let (b, d) = (self.cache.batch, c.hidden_size);
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let offset = self.cache.len;
        let cap = self.cache.capacity;
        if offset + q_len > cap {
            return Err(Error::Input(format!("KV cache full: {offset} + {q_len} slots exceed its capacity {cap}")));
        }
        let mut ids_us = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= c.vocab_size {
                return Err(Error::Input(format!(
                    "token {id} (row {}, slot {}) is outside the vocabulary [0, {})",
                    i / q_len,
                    offset + i % q_len,
                    c.vocab_size
                )));
            }
            ids_us.push(id as usize);
        }
        // Real positions: slot minus the row's left padding (pad slots get 0; never attended).
        let mut positions = Vec::with_capacity(b * q_len);
        for row in 0..b {
            let pad = self.cache.pads[row];
            for i in 0..q_len {
                let pos = (offset + i).saturating_sub(pad);
                if pos >= c.max_position_embeddings {
                    return Err(Error::Input(format!(
                        "row {row} reaches position {pos}, beyond max_position_embeddings {}",
                        c.max_position_embeddings
                    )));
                }
                positions.push(pos);
            }
        }
        for row in 0..b {
            for slot in offset..offset + q_len {
                self.cache.key_valid[row * cap + slot] = slot >= self.cache.pads[row];
            }
        }
        let dims = DecodeDims { batch: b, q_len, q_heads: hq, kv_heads: hkv, head_dim: hd, capacity: cap };
        let scale = 1.0 / (hd as f32).sqrt();
        let eps = c.rms_norm_eps;
        let rope = m.rope_table(positions.iter().max().map_or(0, |&p| p + 1));
        let mut h = m.embed.index_select(&ids_us)?.reshape([b, q_len, d])?;
        for (l, blk) in m.blocks.iter().enumerate() {
            let (x, _) = nn::rmsnorm_forward(&h, Some(&blk.attn_norm), eps)?;
            let q = proj.project(l, Proj::Q, &x, blk.weight(Proj::Q))?;
            let k = proj.project(l, Proj::K, &x, blk.weight(Proj::K))?;
            let v = proj.project(l, Proj::V, &x, blk.weight(Proj::V))?;
            let q = nn::rope(&q.reshape([b, q_len, hq, hd])?, &positions, &rope, false)?;
            let k = nn::rope(&k.reshape([b, q_len, hkv, hd])?, &positions, &rope, false)?;
            let v = v.reshape([b, q_len, hkv, hd])?;
            cache_write(&dims, k.f32s("decode")?, &mut self.cache.k[l], offset);
            cache_write(&dims, v.f32s("decode")?, &mut self.cache.v[l], offset);
            let mut att = vec![0.0f32; b * q_len * hq * hd];
            decode_attention(
                &dims,
                q.f32s("decode")?,
                &self.cache.k[l],
                &self.cache.v[l],
                &self.cache.key_valid,
                offset,
                scale,
                &mut att,
            );
            let a = Tensor::new(att, [b, q_len, hq * hd])?;
            h = h.add(&proj.project(l, Proj::O, &a, blk.weight(Proj::O))?)?;
            let (x, _) = nn::rmsnorm_forward(&h, Some(&blk.mlp_norm), eps)?;
            let gate = proj.project(l, Proj::Gate, &x, blk.weight(Proj::Gate))?;
            let up = proj.project(l, Proj::Up, &x, blk.weight(Proj::Up))?;
            let mlp = nn::swiglu_forward(&gate, &up)?;
            h = h.add(&proj.project(l, Proj::Down, &mlp, blk.weight(Proj::Down))?)?;
        }
        self.cache.len += q_len;
        // Only each row's last slot needs the LM head (the norm is per row, so pick first).
        let last: Vec<usize> = (0..b).map(|row| row * q_len + q_len - 1).collect();
        let h_last = h.reshape([b * q_len, d])?.index_select(&last)?;
        let (h_last, _) = nn::rmsnorm_forward(&h_last, Some(&m.norm), eps)?;
        linear(&h_last, &m.lm_head)
    }
}

/// Temperature / top-p (nucleus) sampling, seeded.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Logits are divided by this; `0` means greedy.
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`.
    pub top_p: f32,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// A sequence stops after emitting any of these (the token is kept in its output).
    pub eos_token_ids: Vec<u32>,
    /// Fed to finished rows while the rest of the batch goes on (default 0).
    pub pad_token_id: Option<u32>,
    /// `None`: greedy (argmax, first index on ties).
    pub sampling: Option<Sampling>,
}

impl GenerateOptions {
    /// Greedy decoding stopping on the model config's EOS ids.
    pub fn greedy(model: &Llama, max_new_tokens: usize) -> Self {
        GenerateOptions {
            max_new_tokens,
            eos_token_ids: model.config.eos_token_ids.clone(),
            pad_token_id: model.config.pad_token_id,
            sampling: None,
        }
    }
}

/// Timings of one [`generate`] call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationStats {
    /// Real (unpadded) prompt tokens over the batch.
    pub prompt_tokens: usize,
    pub prefill_secs: f64,
    /// Decode steps run (one token per sequence each).
    pub decode_steps: usize,
    pub decode_secs: f64,
    /// Tokens emitted over the batch (EOS included).
    pub new_tokens: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// New tokens per sequence, the EOS that stopped it included.
    pub tokens: Vec<Vec<u32>>,
    /// Whether each sequence stopped on an EOS (else it ran out of `max_new_tokens`).
    pub stopped_on_eos: Vec<bool>,
    pub stats: GenerationStats,
}

/// Index of the largest logit (the first on ties; NaNs never win).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Draws a token from `softmax(logits / temperature)` restricted to the top-p nucleus.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits[argmax(logits) as usize] as f64;
    let inv_t = 1.0 / s.temperature as f64;
    let mut probs: Vec<(f64, u32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (if x.is_nan() { 0.0 } else { ((x as f64 - max) * inv_t).exp() }, i as u32))
        .collect();
    // Most likely first; ties by id, so the order (and the draw) is deterministic.
    probs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let total: f64 = probs.iter().map(|p| p.0).sum();
    let target = s.top_p as f64 * total;
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        mass += p.0;
        kept += 1;
        if mass >= target {
            break;
        }
    }
    let mut u = rng.uniform() as f64 * mass;
    for p in &probs[..kept] {
        if u < p.0 {
            return p.1;
        }
        u -= p.0;
    }
    probs[kept - 1].1
}

/// Generates up to `max_new_tokens` for each prompt (token ids), batched.
pub fn generate(
    model: &Llama,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    proj: &mut dyn InferProjector,
) -> Result<Generation> {
    generate_streaming(model, prompts, opts, proj, &mut |_, _| {})
}

/// [`generate`], calling `on_token(sequence, token)` as each token is chosen.
pub fn generate_streaming(
    model: &Llama,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    proj: &mut dyn InferProjector,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Generation> {
    let c = &model.config;
    if prompts.is_empty() {
        return Err(Error::Input("no prompts".into()));
    }
    if let Some(s) = &opts.sampling {
        if !(s.temperature >= 0.0 && s.temperature.is_finite()) {
            return Err(Error::Input(format!("temperature {} must be finite and >= 0", s.temperature)));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0) {
            return Err(Error::Input(format!("top_p {} must be in (0, 1]", s.top_p)));
        }
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + opts.max_new_tokens > c.max_position_embeddings {
        return Err(Error::Input(format!(
            "prompt of {longest} tokens + {} new tokens exceeds max_position_embeddings {}",
            opts.max_new_tokens, c.max_position_embeddings
        )));
    }
    let b = prompts.len();
    let mut out = Generation {
        tokens: vec![Vec::new(); b],
        stopped_on_eos: vec![false; b],
        stats: GenerationStats { prompt_tokens: prompts.iter().map(Vec::len).sum(), ..Default::default() },
    };
    if opts.max_new_tokens == 0 {
        return Ok(out);
    }
    let mut rng = opts.sampling.as_ref().map(|s| Rng::derive(s.seed, "generate"));
    let pad = opts.pad_token_id.unwrap_or(0);
    // The last token chosen is never fed back, hence the `- 1`.
    let mut dec = Decoder::new(model, b, longest + opts.max_new_tokens - 1)?;
    let t0 = Instant::now();
    let mut logits = dec.prefill(prompts, proj)?;
    out.stats.prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let v = c.vocab_size;
    let mut done = vec![false; b];
    for step in 0..opts.max_new_tokens {
        let l = logits.f32s("generate")?;
        let mut feed = vec![pad; b];
        for row in 0..b {
            if done[row] {
                continue;
            }
            let lr = &l[row * v..(row + 1) * v];
            let tok = match (&opts.sampling, rng.as_mut()) {
                (Some(s), Some(r)) => sample(lr, s, r),
                _ => argmax(lr),
            };
            out.tokens[row].push(tok);
            out.stats.new_tokens += 1;
            on_token(row, tok);
            feed[row] = tok;
            if opts.eos_token_ids.contains(&tok) {
                done[row] = true;
                out.stopped_on_eos[row] = true;
            }
        }
        if step + 1 == opts.max_new_tokens || done.iter().all(|&d| d) {
            break;
        }
        logits = dec.step(&feed, proj)?;
        out.stats.decode_steps += 1;
    }
    out.stats.decode_secs = t1.elapsed().as_secs_f64();
    Ok(out)
}
