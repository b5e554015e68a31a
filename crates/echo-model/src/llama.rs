//! The LLaMA decoder as HF transformers computes it, built from echo-autograd's fused nodes.
//! The same forward serves training (a recording tape) and scoring (`Tape::inference()`).
//!
//! Every projection goes through a [`Projector`], the seam where adapters (LoRA, DoRA, the echo
//! path's injection) attach without this crate knowing about them.

use crate::device::{place, Role};
use crate::weights::WeightFiles;
use crate::{Error, LlamaConfig, Result};
use echo_autograd::ops;
use echo_autograd::{Tape, Var};
use echo_tensor::nn::AttnMask;
use echo_tensor::{Device, RopeTable, Tensor, IGNORE_INDEX};
use std::path::Path;
use std::sync::Arc;

/// The seven projections of a LLaMA block, in HF's naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// The short name used in configs and PEFT's `target_modules` (`q_proj`, ...).
    pub fn short_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// The module path inside a block (`self_attn.q_proj`, `mlp.up_proj`, ...).
    pub fn block_path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn module_path(self, layer: usize) -> String {
        format!("model.layers.{layer}.{}", self.block_path())
    }

    pub fn from_short_name(s: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.short_name() == s)
    }
}

/// In configs a projection is its short name (`q_proj`).
impl serde::Serialize for Proj {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.short_name())
    }
}

impl<'de> serde::Deserialize<'de> for Proj {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Proj::from_short_name(&name).ok_or_else(|| {
            let known: Vec<&str> = Proj::ALL.iter().map(|p| p.short_name()).collect();
            serde::de::Error::custom(format!("unknown module `{name}`, expected one of {}", known.join(", ")))
        })
    }
}

/// Computes `x W^T` for one projection, possibly plus an adapter's contribution.
pub trait Projector {
    fn project(&mut self, layer: usize, proj: Proj, x: &Var, w: &Tensor) -> echo_autograd::Result<Var>;
}

/// The base model alone: every projection is the frozen weight.
pub struct Plain;

impl Projector for Plain {
    fn project(&mut self, _layer: usize, _proj: Proj, x: &Var, w: &Tensor) -> echo_autograd::Result<Var> {
        ops::linear(x, &x.tape().constant(w.clone()))
    }
}

/// Frozen weights of one decoder block.
pub struct Block {
    pub attn_norm: Tensor,
    pub mlp_norm: Tensor,
    /// Projection weights in [`Proj::ALL`] order, `[out, in]` each.
    pub proj: [Tensor; 7],
}

impl Block {
    pub fn weight(&self, p: Proj) -> &Tensor {
        &self.proj[p as usize]
    }
}

pub struct Llama {
    pub config: LlamaConfig,
    pub embed: Tensor,
    pub blocks: Vec<Block>,
    pub norm: Tensor,
    /// The output projection `[vocab, hidden]`; shares its data with `embed` when tied.
    pub lm_head: Tensor,
    pub rope: Arc<RopeTable>,
}

/// One batch of token ids, `[B, T]` row-major, with its attention mask and position ids:
/// either padded (one example per row) or packed (several examples one after the other in a
/// row, attending only within themselves, positions restarting at each).
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<usize>,
    pub mask: Arc<AttnMask>,
    pub positions: Arc<Vec<usize>>,
}

fn check_ids<I: Copy + Into<i64>>(input_ids: &[I], seq: usize, vocab: usize) -> Result<Vec<usize>> {
    let mut ids = Vec::with_capacity(input_ids.len());
    for (i, t) in input_ids.iter().enumerate() {
        let t: i64 = (*t).into();
        if t < 0 || t as usize >= vocab {
            return Err(Error::Input(format!(
                "input_ids[{}, {}] = {t} is outside the vocabulary [0, {vocab})",
                i / seq,
                i % seq
            )));
        }
        ids.push(t as usize);
    }
    Ok(ids)
}

impl Batch {
    /// Packed rows: `rows[b]` lists the lengths of the examples placed one after the other in
    /// row `b` of `input_ids` (`[B, T]`, `T = seq`); what follows them is padding. Each example
    /// attends only to itself and its positions start at 0, so its outputs equal those of the
    /// same example alone in a padded batch.
    pub fn packed<I: Copy + Into<i64>>(input_ids: &[I], rows: &[Vec<usize>], seq: usize, vocab: usize) -> Result<Self> {
        let batch = rows.len();
        if input_ids.len() != batch * seq {
            return Err(Error::Input(format!(
                "input_ids has {} elements; {batch} packed rows of {seq} need {}",
                input_ids.len(),
                batch * seq
            )));
        }
        if let Some((b, lens)) = rows.iter().enumerate().find(|(_, l)| l.iter().sum::<usize>() > seq) {
            return Err(Error::Input(format!(
                "packed row {b} holds {} tokens, more than its {seq}",
                lens.iter().sum::<usize>()
            )));
        }
        let ids = check_ids(input_ids, seq, vocab)?;
        let mut positions = vec![0usize; batch * seq];
        for (b, lens) in rows.iter().enumerate() {
            let mut at = b * seq;
            for &n in lens {
                positions[at..at + n].iter_mut().enumerate().for_each(|(p, x)| *x = p);
                at += n;
            }
        }
        let mask = AttnMask::packed(rows, seq);
        Ok(Batch { batch, seq, input_ids: ids, mask: Arc::new(mask), positions: Arc::new(positions) })
    }

    /// Validates ids against the vocabulary and the mask's values; position ids are
    /// `0..T` on every row (HF's default; with right padding these are the real positions).
    /// Ids and mask as HF holds them (i64) or as the data pipeline does (`u32` ids, `u8` mask).
    pub fn new<I: Copy + Into<i64>, M: Copy + Into<i64>>(
        input_ids: &[I],
        attention_mask: &[M],
        batch: usize,
        seq: usize,
        vocab: usize,
    ) -> Result<Self> {
        if input_ids.len() != batch * seq || attention_mask.len() != batch * seq {
            return Err(Error::Input(format!(
                "input_ids has {} and attention_mask {} elements; [B, T] = [{batch}, {seq}] needs {}",
                input_ids.len(),
                attention_mask.len(),
                batch * seq
            )));
        }
        let ids = check_ids(input_ids, seq, vocab)?;
        let mut valid = Vec::with_capacity(attention_mask.len());
        for (i, m) in attention_mask.iter().enumerate() {
            let m: i64 = (*m).into();
            match m {
                0 => valid.push(false),
                1 => valid.push(true),
                _ => {
                    return Err(Error::Input(format!(
                        "attention_mask[{}, {}] = {m}; expected 0 or 1",
                        i / seq,
                        i % seq
                    )))
                }
            }
        }
        let positions = (0..batch).flat_map(|_| 0..seq).collect();
        let mask = Arc::new(AttnMask::padding(valid));
        Ok(Batch { batch, seq, input_ids: ids, mask, positions: Arc::new(positions) })
    }
}

/// What a forward pass returns.
pub struct Hidden {
    /// The final-normed hidden states `[B, T, d]` (the LM head's input).
    pub hidden: Var,
    /// Boundary hidden states `h_l` (block `l`'s residual output, `[B, T, d]`), one per
    /// requested layer, in the order requested.
    pub boundary: Vec<Var>,
}

/// Label positions under HF's shift: logits at `(b, t)` are scored against `labels[b, t+1]`.
/// Returns the flat row indices `b*T + t` that count and their targets.
pub fn shifted_targets(labels: &[i64], batch: usize, seq: usize) -> (Vec<usize>, Vec<i64>) {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let l = labels[b * seq + t + 1];
            if l != IGNORE_INDEX {
                rows.push(b * seq + t);
                targets.push(l);
            }
        }
    }
    (rows, targets)
}

/// Positions the RoPE table is built for at load: tables are sized by the positions in use
/// (`Llama::rope_table` extends for a longer call), never by `max_position_embeddings` alone,
/// which may be 2^24. 8192 × head_dim/2 × 2 floats is 4 MiB at head_dim 128.
pub const ROPE_PRECOMPUTED: usize = 8192;

/// The table a model starts with: `min(max_position_embeddings, ROPE_PRECOMPUTED)` positions.
pub(crate) fn initial_rope(c: &LlamaConfig) -> Arc<RopeTable> {
    let n = c.max_position_embeddings.min(ROPE_PRECOMPUTED);
    Arc::new(RopeTable::new(c.head_dim, n, c.rope_theta, c.rope_scaling))
}

/// The layer index of a `model.layers.N.…` tensor name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?.split_once('.')?.0.parse().ok()
}

/// A tensor name a LLaMA model has: the embedding, final norm and head, and per layer the
/// two norms and seven projections. `rotary_emb.inv_freq`, a buffer some older conversions
/// saved, is derived from the config and accepted.
fn is_llama_tensor(name: &str) -> bool {
    if matches!(name, "model.embed_tokens.weight" | "model.norm.weight" | "lm_head.weight") {
        return true;
    }
    let Some((layer, rest)) = name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) else {
        return false;
    };
    if layer.parse::<usize>().is_err() {
        return false;
    }
    matches!(rest, "input_layernorm.weight" | "post_attention_layernorm.weight" | "self_attn.rotary_emb.inv_freq")
        || Proj::ALL.iter().any(|p| rest.strip_suffix(".weight") == Some(p.block_path()))
}

/// The first four of `names`, comma-separated, with `…` when there are more.
fn first_names(names: &[&str]) -> String {
    let mut listed: Vec<&str> = names.iter().copied().take(4).collect();
    if names.len() > listed.len() {
        listed.push("…");
    }
    listed.join(", ")
}

/// The weights hold exactly the layers the config declares: a tensor of a layer beyond
/// `num_hidden_layers` is an error naming the tensors (weights silently ignored would be a
/// different model); so is a tensor a LLaMA model does not have (an attention bias, a second
/// head). A config declaring more layers than the files hold is a missing tensor error before
/// anything is sized by the declared count.
fn check_tensor_names(c: &LlamaConfig, w: &WeightFiles) -> Result<()> {
    let n = c.num_hidden_layers;
    let names = w.names();
    let beyond: Vec<&str> = names.iter().copied().filter(|name| layer_of(name).is_some_and(|l| l >= n)).collect();
    if let Some(first) = beyond.first() {
        return Err(Error::UnexpectedTensors {
            path: w.path_of(first).map(Path::to_path_buf).unwrap_or_default(),
            declared: n,
            count: beyond.len(),
            names: first_names(&beyond),
        });
    }
    let unknown: Vec<&str> = names.iter().copied().filter(|name| !is_llama_tensor(name)).collect();
    if let Some(first) = unknown.first() {
        return Err(Error::UnknownTensors {
            path: w.path_of(first).map(Path::to_path_buf).unwrap_or_default(),
            count: unknown.len(),
            names: first_names(&unknown),
        });
    }
    let found = names.iter().filter_map(|name| layer_of(name)).max().map_or(0, |l| l + 1);
    if found < n {
        let name = format!("model.layers.{found}.input_layernorm.weight");
        return Err(Error::MissingTensor {
            path: names.first().and_then(|f| w.path_of(f)).map(Path::to_path_buf).unwrap_or_default(),
            name,
            hint: format!(" (config.json declares num_hidden_layers = {n}, the weights hold {found} layer(s))"),
        });
    }
    Ok(())
}

impl Llama {
    /// Loads `config.json` and the safetensors weights of a HF model folder.
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_on(dir, Device::Cpu)
    }

    /// [`Llama::load`] onto `device` (see [`Llama::from_weights_on`]).
    pub fn load_on(dir: &Path, device: Device) -> Result<Self> {
        let config = LlamaConfig::from_dir(dir)?;
        let files = WeightFiles::open_dir(dir)?;
        Self::from_weights_on(config, &files, device)
    }

    /// Builds the model from open weight files, checking every shape against the config.
    pub fn from_weights(config: LlamaConfig, w: &WeightFiles) -> Result<Self> {
        Self::from_weights_on(config, w, Device::Cpu)
    }

    /// [`Llama::from_weights`] with each tensor placed on `device` as soon as it is read (see
    /// `device.rs`: bf16 frozen matrices and f32 norms on a GPU), so at most one tensor at a
    /// time is held on the host in f32.
    pub fn from_weights_on(config: LlamaConfig, w: &WeightFiles, device: Device) -> Result<Self> {
        let c = &config;
        let (d, q_out, kv_out) =
            (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        check_tensor_names(c, w)?;
        // Each tensor is checked finite once, here: a NaN weight would otherwise flow through
        // every forward (and a NaN adapter merged into it) with no word.
        let matrix = |name: &str, shape: &[usize]| -> Result<Tensor> {
            place(w.finite_f32_tensor(name, Some(shape))?, Role::Matrix, device)
        };
        let vector = |name: &str, shape: &[usize]| -> Result<Tensor> {
            place(w.finite_f32_tensor(name, Some(shape))?, Role::Vector, device)
        };
        let embed = matrix("model.embed_tokens.weight", &[c.vocab_size, d])?;
        // Sized by the files (checked above), not by the declared count alone.
        let mut blocks = Vec::with_capacity(c.num_hidden_layers.min(crate::bounds::MAX_LAYERS));
        for l in 0..c.num_hidden_layers {
            let shape = |p: Proj| -> [usize; 2] {
                match p {
                    Proj::Q => [q_out, d],
                    Proj::K | Proj::V => [kv_out, d],
                    Proj::O => [d, q_out],
                    Proj::Gate | Proj::Up => [c.intermediate_size, d],
                    Proj::Down => [d, c.intermediate_size],
                }
            };
            let load = |p: Proj| matrix(&format!("{}.weight", p.module_path(l)), &shape(p));
            blocks.push(Block {
                attn_norm: vector(&format!("model.layers.{l}.input_layernorm.weight"), &[d])?,
                mlp_norm: vector(&format!("model.layers.{l}.post_attention_layernorm.weight"), &[d])?,
                proj: [
                    load(Proj::Q)?,
                    load(Proj::K)?,
                    load(Proj::V)?,
                    load(Proj::O)?,
                    load(Proj::Gate)?,
                    load(Proj::Up)?,
                    load(Proj::Down)?,
                ],
            });
        }
        let norm = vector("model.norm.weight", &[d])?;
        let lm_head = if c.tie_word_embeddings && !w.contains("lm_head.weight") {
            embed.clone()
        } else {
            matrix("lm_head.weight", &[c.vocab_size, d])?
        };
        let rope = initial_rope(c);
        Ok(Llama { config, embed, blocks, norm, lm_head, rope })
    }

    /// The RoPE table covering positions `0..end`: the model's own when it is long enough,
    /// else one built for this call (the same values for every position both cover, so the
    /// rotation is the same). Positions are checked against `max_position_embeddings` first.
    pub fn rope_table(&self, end: usize) -> Arc<RopeTable> {
        if end <= self.rope.max_pos {
            return self.rope.clone();
        }
        let c = &self.config;
        Arc::new(RopeTable::new(c.head_dim, end, c.rope_theta, c.rope_scaling))
    }

    /// The decoder over a batch. `capture` lists the blocks whose output `h_l` to return.
    pub fn forward(&self, tape: &Tape, batch: &Batch, proj: &mut dyn Projector, capture: &[usize]) -> Result<Hidden> {
        let c = &self.config;
        if let Some(&l) = capture.iter().find(|&&l| l >= self.blocks.len()) {
            return Err(Error::Input(format!("cannot capture block {l}: the model has {} blocks", self.blocks.len())));
        }
        // Positions, not the row length, must fit: a packed row may be longer than the context.
        let positions_used = batch.positions.iter().max().map_or(0, |&p| p + 1);
        if positions_used > c.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence length {positions_used} exceeds max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let (b, t, d) = (batch.batch, batch.seq, c.hidden_size);
        let (hq, hkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rope = self.rope_table(positions_used);
        let embed = tape.constant(self.embed.clone());
        let mut h = ops::reshape(&ops::index_select(&embed, &batch.input_ids)?, [b, t, d])?;
        let mut boundary = vec![None; capture.len()];
        for (l, blk) in self.blocks.iter().enumerate() {
            let x = ops::rmsnorm(&h, Some(&tape.constant(blk.attn_norm.clone())), c.rms_norm_eps)?;
            let q = proj.project(l, Proj::Q, &x, blk.weight(Proj::Q))?;
            let k = proj.project(l, Proj::K, &x, blk.weight(Proj::K))?;
            let v = proj.project(l, Proj::V, &x, blk.weight(Proj::V))?;
            let q = ops::rope(&ops::reshape(&q, [b, t, hq, hd])?, &batch.positions, &rope)?;
            let k = ops::rope(&ops::reshape(&k, [b, t, hkv, hd])?, &batch.positions, &rope)?;
            let v = ops::reshape(&v, [b, t, hkv, hd])?;
            let a = ops::reshape(&ops::attention(&q, &k, &v, &batch.mask)?, [b, t, hq * hd])?;
            h = ops::add(&h, &proj.project(l, Proj::O, &a, blk.weight(Proj::O))?)?;
            let x = ops::rmsnorm(&h, Some(&tape.constant(blk.mlp_norm.clone())), c.rms_norm_eps)?;
            let gate = proj.project(l, Proj::Gate, &x, blk.weight(Proj::Gate))?;
            let up = proj.project(l, Proj::Up, &x, blk.weight(Proj::Up))?;
            let m = ops::swiglu(&gate, &up)?;
            h = ops::add(&h, &proj.project(l, Proj::Down, &m, blk.weight(Proj::Down))?)?;
            for (slot, _) in capture.iter().enumerate().filter(|(_, &cl)| cl == l) {
                boundary[slot] = Some(h.clone());
            }
        }
        let hidden = ops::rmsnorm(&h, Some(&tape.constant(self.norm.clone())), c.rms_norm_eps)?;
        Ok(Hidden { hidden, boundary: boundary.into_iter().map(|v| v.expect("every capture filled")).collect() })
    }

    /// Logits `[rows.len(), V]` for the given flat rows of `hidden` (`[B, T, d]`): the LM head
    /// runs only where it is needed.
    pub fn logits_at(&self, hidden: &Var, rows: &[usize]) -> Result<Var> {
        let d = self.config.hidden_size;
        let flat = ops::reshape(hidden, [hidden.value().numel() / d, d])?;
        let picked = ops::index_select(&flat, rows)?;
        Ok(ops::linear(&picked, &hidden.tape().constant(self.lm_head.clone()))?)
    }

    /// Masked LM loss with HF's shift, mean over counted tokens. Returns the loss and the
    /// number of counted tokens; errors when no token carries a label.
    pub fn lm_loss(&self, hidden: &Var, labels: &[i64], batch: &Batch) -> Result<(Var, usize)> {
        if labels.len() != batch.batch * batch.seq {
            return Err(Error::Input(format!(
                "labels has {} elements, the batch {}",
                labels.len(),
                batch.batch * batch.seq
            )));
        }
        let (rows, targets) = shifted_targets(labels, batch.batch, batch.seq);
        if rows.is_empty() {
            return Err(Error::Input("no position carries a label (all -100 after the shift)".into()));
        }
        let logits = self.logits_at(hidden, &rows)?;
        Ok((ops::cross_entropy(&logits, &targets, rows.len() as f32)?, rows.len()))
    }
}
