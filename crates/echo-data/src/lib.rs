//! The data pipeline of echo-lora: instruction records in, padded batches with answer-only
//! labels out, exactly as the LLM-Adapters recipes build them.
//!
//! ```text
//! JSON / JSONL ─► Record ─► Template ─► prompt, prompt+output ─► Tokenizer ─► Example
//!   (record.rs)             (template.rs)                        (encode.rs)      │
//!                                       Cache (cache.rs), MixSpec (mix.rs)        ▼
//!                                                             Batcher ─► Batch [B, T]
//! ```
//!
//! Nothing here depends on the tensor crates: a [`Batch`] is plain row-major vectors
//! (`input_ids: Vec<u32>`, `attention_mask`, `labels: Vec<i64>` with -100, `prompt_mask`,
//! per-row lengths) that the trainer turns into tensors.
//!
//! # The recipe
//!
//! For a record, `prompt = template(instruction, input)` and `full = prompt + output`. Both are
//! tokenised; the model sees `tokens(full) + [EOS]`. With answer-only masking (the default;
//! LLM-Adapters' `train_on_inputs=False`) the first `len(tokens(prompt))` labels are -100, so
//! the loss is taken on the output and the EOS only. With `train_on_inputs` every label is the
//! token itself (the LLM-Adapters default, for baselines). Either way [`Example::prompt_mask`]
//! marks the prompt tokens, which the echo path pools over. Labels are not shifted (HF style:
//! the logits at `t` are scored against the label at `t + 1`).
//!
//! A tokenizer whose post-processor adds special tokens keeps its leading ones (a BOS) at the
//! start of the prompt, where they count as prompt; trailing ones are not added, since EOS is
//! appended explicitly after the answer.
//!
//! # The prompt/answer boundary
//!
//! LLM-Adapters assumes `tokens(prompt)` is a prefix of `tokens(prompt + output)`. With BPE
//! that fails when a merge crosses the boundary (e.g. a template ending in a space: `": "` +
//! `"the"` tokenises as `":"`, `" the"`). We check the prefix for every record. When it fails
//! the rule is: **the prompt keeps its own tokenisation, and the output is tokenised on its
//! own and appended** (`tokens(prompt) ++ tokens(output) ++ [EOS]`). The prompt tokens are then
//! exactly what the model is given at evaluation, every prompt position is masked and every
//! answer position learned, and the rule does not depend on where the merge happened. Such
//! examples are flagged ([`Example::boundary_merge`]) and counted
//! ([`Report::boundary_merges`]). With the Alpaca template, whose prompt ends in a newline,
//! byte-level BPE tokenizers never merge across it; the count on the four commonsense train
//! sets is 0 with the fixture tokenizer and with SmolLM2's.
//!
//! # Over-long samples
//!
//! `cutoff` (LLM-Adapters `cutoff_len`) bounds the tokens of a sample, EOS included.
//! [`Overlong::Truncate`] keeps the first `cutoff` tokens, as LLM-Adapters does (the answer's
//! tail and the EOS are lost); [`Overlong::Drop`] drops the sample. Under either, a sample
//! whose prompt alone reaches the cutoff is dropped: it would have nothing to learn. Every
//! truncated and dropped record is counted in the [`Report`] and dropped ones are listed
//! ([`EncodedDataset::dropped`]); a dataset with no example left is an error.
//!
//! # Formats
//!
//! A [`Template`] names the record shape it reads ([`Format`]); a record of another shape is
//! an error naming the record, the fields expected and found, and the template they fit.
//!
//! - **LLM-Adapters** (`alpaca`, or `custom` format strings with `{instruction}`/`{input}`):
//!   as above.
//! - **completion** (`{"prompt", "completion"}`): the prompt verbatim, then the same recipe:
//!   loss on the completion and the EOS, the same boundary rule.
//! - **plain** (`{"text"}`, continued pre-training): `tokens(text) + [EOS]`, every token
//!   learned; the prompt mask is empty (the echo pools to zero).
//! - **chat** (`{"messages": [{"role": "system"|"user"|"assistant", "content"}]}`): the
//!   conversation rendered with the model's own `chat_template` ([`ChatTemplate`]) and
//!   tokenised as written (the template writes its own special tokens; no EOS is appended).
//!   Each assistant turn is located by rendering the messages before it (with the generation
//!   prompt) and through it: each must be a prefix of the next and of the whole conversation,
//!   as text and as tokens, else the record is an error (the template is not prefix-stable).
//!   The loss covers every assistant turn up to and including its end-of-turn token (the
//!   turn's last EOS), nothing else; tokens after the last learned one are left out.
//!   [`Example::prompt_len`] is the unlearned head, [`Example::masked`] the unlearned
//!   stretches between turns; the prompt mask marks both (what is not learned, as always).
//!
//! # Size limit
//!
//! Before tokenising, a record whose text is longer than `cutoff × 64` bytes (at most
//! [`MAX_RECORD_BYTES`]) is dropped with [`DropReason::TooLarge`] and counted in
//! [`Report::dropped_too_large`] (and in [`Report::answers_cut`]): tokenising costs memory in
//! proportion to the text, and such a record is far past the cutoff anyway.
//!
//! # Bad input
//!
//! Readers refuse, never repair: malformed JSON (file, line, column), a record without
//! `instruction` or `output`, an empty `instruction` or `output`, non-UTF-8 bytes (byte
//! offset, line, column), an empty file or array. See [`Error`].

pub mod batch;
pub mod cache;
pub mod chat;
pub mod encode;
pub mod error;
pub mod mix;
pub mod record;
pub use echo_rng as rng;
pub mod synthetic;
pub mod template;
pub mod tokenizer;

pub use batch::{Batch, BatchConfig, BatchPosition, Batcher};
pub use cache::{load_dataset, load_mix, user_cache_root, write_atomic, Cache, CacheStatus, MixedDataset};
pub use chat::{ChatTemplate, Message};
pub use encode::{
    encode_example, encode_file, encode_records, encode_sample, encode_samples, DropReason, Dropped, EncodeConfig,
    Encoded, EncodedDataset, Example, Overlong, Progress, Report, IGNORE_INDEX, MAX_RECORD_BYTES,
};
pub use error::{Error, Result};
pub use mix::{split_validation, MixSource, MixSpec};
pub use record::{read_records, write_records_json, Layout, Record, RecordStream, Sample};
pub use synthetic::{synthetic_records, SyntheticSpec};
pub use template::{Format, Template, TemplateKind, TEMPLATE_NAMES};
pub use tokenizer::Tokenizer;
