//! `cargo xtask data`: what the model will see. Tokenises a dataset exactly as training does
//! and prints the counts; `--show K` prints K examples with the masked (unlearned) tokens
//! marked, so the answer-only mask can be checked by eye; `--json` prints the counts as one
//! JSON object. A malformed file is an error (non-zero exit) naming file, line and column.
//! `--template` takes the names `[data] template` does and goes through the same
//! `Template::from_config` as training.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use echo_data::{
    load_dataset, synthetic_records, write_records_json, Cache, CacheStatus, DropReason, EncodeConfig, EncodedDataset,
    Example, Format, Overlong, Progress, SyntheticSpec, Template, Tokenizer, IGNORE_INDEX,
};

#[derive(clap::Args)]
pub struct DataArgs {
    /// HF model folder with tokenizer.json (and tokenizer_config.json / config.json for EOS
    /// and pad), the tokenizer.json file itself, or `smollm2` (the cached SmolLM2-135M-Instruct,
    /// fetched on first use).
    #[arg(long, value_name = "DIR")]
    tokenizer: String,
    /// Dataset: a JSON array or JSON Lines file of the records --template reads.
    #[arg(long, value_name = "FILE", required_unless_present = "synthetic", conflicts_with = "synthetic")]
    data: Option<PathBuf>,
    /// Use N records of the synthetic task instead of a file.
    #[arg(long, value_name = "N")]
    synthetic: Option<usize>,
    /// Seed of the synthetic task.
    #[arg(long, default_value_t = 0, requires = "synthetic")]
    seed: u64,
    /// Also write the synthetic records to FILE (LLM-Adapters JSON).
    #[arg(long, value_name = "FILE", requires = "synthetic")]
    write: Option<PathBuf>,
    /// Cutoff length in tokens, EOS included (0 = none).
    #[arg(long, value_name = "N", default_value_t = 256)]
    cutoff: usize,
    /// Drop over-long samples instead of truncating them.
    #[arg(long)]
    drop_overlong: bool,
    /// Learn the prompt tokens too (LLM-Adapters' train_on_inputs).
    #[arg(long)]
    train_on_inputs: bool,
    /// Template, as `[data] template`: `alpaca` (LLM-Adapters records), `chat`
    /// (`{"messages": [...]}` through the tokenizer folder's chat_template), `completion`
    /// (`{"prompt", "completion"}`), `plain` (`{"text"}`) or `custom` (with --prompt-format).
    #[arg(long, default_value = "alpaca")]
    template: String,
    /// With --template custom: the prompt of a record without input, with {instruction}.
    #[arg(long, value_name = "FORMAT")]
    prompt_format: Option<String>,
    /// With --template custom: the prompt of a record with an input, with {instruction} and {input}.
    #[arg(long, value_name = "FORMAT")]
    prompt_format_with_input: Option<String>,
    /// Print the first K examples with masked tokens marked.
    #[arg(long, value_name = "K", default_value_t = 0)]
    show: usize,
    /// Print one JSON object of counts.
    #[arg(long)]
    json: bool,
    /// Do not read or write the tokenisation cache (`data/` in the user cache folder:
    /// $ECHO_LORA_CACHE, else $XDG_CACHE_HOME/echo-lora, else ~/.cache/echo-lora).
    #[arg(long)]
    no_cache: bool,
}

pub fn run(args: DataArgs) -> Result<()> {
    let tok = Tokenizer::from_dir(crate::model::resolve_alias(&args.tokenizer)?)?;
    let template = Template::from_config(
        &args.template,
        args.prompt_format.as_deref(),
        args.prompt_format_with_input.as_deref(),
        tok.path(),
    )?;
    let cfg = EncodeConfig {
        cutoff: (args.cutoff > 0).then_some(args.cutoff),
        overlong: if args.drop_overlong { Overlong::Drop } else { Overlong::Truncate },
        train_on_inputs: args.train_on_inputs,
    };
    let (data_name, ds, cache) = match (&args.data, args.synthetic) {
        (Some(path), _) => {
            let cache = if args.no_cache { None } else { Some(Cache::user_default().map_err(anyhow::Error::msg)?) };
            let (ds, status) = load_dataset(path, &tok, &template, &cfg, cache.as_ref(), Progress::Auto)?;
            (path.display().to_string(), ds, status)
        }
        (None, Some(n)) => {
            let spec = SyntheticSpec { count: n, seed: args.seed, ..Default::default() };
            let records = synthetic_records(&spec)?;
            let name = match &args.write {
                Some(out) => {
                    write_records_json(out, &records)?;
                    out.display().to_string()
                }
                None => format!("synthetic (n={n}, seed={})", args.seed),
            };
            let ds = echo_data::encode_records(&tok, &template, &records, &cfg, Path::new(&name), 0)?;
            (name, ds, CacheStatus::Off)
        }
        (None, None) => anyhow::bail!("give --data FILE or --synthetic N"),
    };

    if args.json {
        print_json(&args, &data_name, &tok, &ds, &cache)
    } else {
        print_human(&args, &data_name, &tok, &template, &cfg, &ds, &cache)
    }
}

fn cache_line(c: &CacheStatus) -> String {
    match c {
        CacheStatus::Hit(p) => format!("hit {}", p.display()),
        CacheStatus::Miss(p) => format!("written {}", p.display()),
        CacheStatus::Rebuilt(p, why) => format!("rebuilt {} (was unusable: {why})", p.display()),
        CacheStatus::Off => "off".into(),
    }
}

/// Masked runs as one decoded span in ⟦…⟧, learned tokens one by one in ‹…›.
struct Shown {
    segments: Vec<(bool, String)>,
}

fn render(tok: &Tokenizer, e: &Example) -> Result<Shown> {
    let labels = e.labels();
    let mut segments: Vec<(bool, String)> = Vec::new();
    let mut i = 0;
    while i < e.len() {
        if labels[i] == IGNORE_INDEX {
            let start = i;
            while i < e.len() && labels[i] == IGNORE_INDEX {
                i += 1;
            }
            segments.push((true, tok.decode(&e.input_ids[start..i], false)?));
        } else {
            segments.push((false, tok.decode(&e.input_ids[i..i + 1], false)?));
            i += 1;
        }
    }
    Ok(Shown { segments })
}

fn print_human(
    args: &DataArgs,
    data: &str,
    tok: &Tokenizer,
    template: &Template,
    cfg: &EncodeConfig,
    ds: &EncodedDataset,
    cache: &CacheStatus,
) -> Result<()> {
    let r = &ds.report;
    let bos = match tok.special_prefix() {
        [] => "no BOS".to_string(),
        p => format!("prefix {p:?} kept at the prompt's start"),
    };
    println!("data       {data}");
    println!(
        "tokenizer  {} (vocab {}; EOS {} from {}; pad {} from {}; {bos})",
        tok.path().display(),
        tok.vocab_size(),
        tok.eos_id(),
        tok.eos_source(),
        tok.pad_id(),
        tok.pad_source()
    );
    let learned = match (&template.format, cfg.train_on_inputs) {
        (Format::Plain, _) => "every token (plain text)",
        (_, true) => "every token (train_on_inputs)",
        (Format::Chat(_), false) => "every assistant turn + its end-of-turn token only",
        (Format::Completion, false) => "the completion + EOS only",
        (Format::Instruction, false) => "the answer + EOS only",
    };
    println!(
        "recipe     template {} · loss on {learned} · cutoff {}",
        template.name,
        match cfg.cutoff {
            Some(c) => format!("{c} ({})", if cfg.overlong == Overlong::Drop { "drop" } else { "truncate" }),
            None => "none".into(),
        }
    );
    println!("records    {} → {} examples", r.records, r.examples);
    println!("tokens     {} (prompt {}, answer + EOS {})", r.tokens, r.prompt_tokens, r.answer_tokens);
    println!(
        "truncated  {}   dropped {} ({} with the prompt alone at the cutoff, {} over {} bytes, never tokenised)",
        r.truncated,
        r.dropped,
        r.dropped_prompt_over_cutoff,
        r.dropped_too_large,
        cfg.max_record_bytes()
    );
    println!("longest    {} tokens ({} before the cutoff)", r.longest, r.longest_before_cutoff);
    println!("boundary   {} prompt/answer merges (prompt kept, answer tokenised alone)", r.boundary_merges);
    println!("cache      {}", cache_line(cache));
    for d in ds.dropped.iter().take(5) {
        if d.reason == DropReason::TooLarge {
            println!("  dropped record [{}]: {:?}, {} bytes of text", d.record, d.reason, d.tokens);
        } else {
            println!(
                "  dropped record [{}]: {:?}, prompt {} tokens, sample {} tokens",
                d.record, d.reason, d.prompt_tokens, d.tokens
            );
        }
    }
    if ds.dropped.len() > 5 {
        println!("  … and {} more dropped", ds.dropped.len() - 5);
    }
    if args.show > 0 {
        println!();
        println!("⟦…⟧ masked: label -100, not learned.  ‹…› one learned token each.");
    }
    for (k, e) in ds.examples.iter().take(args.show).enumerate() {
        println!();
        println!(
            "── example {} of {} (record [{}]) · {} tokens: {} masked, {} learned{}{} ──",
            k + 1,
            ds.examples.len(),
            e.record,
            e.len(),
            e.labels().iter().filter(|&&l| l == IGNORE_INDEX).count(),
            e.labels().iter().filter(|&&l| l != IGNORE_INDEX).count(),
            if e.truncated { " · truncated at the cutoff (no EOS)" } else { "" },
            if e.boundary_merge { " · boundary merge" } else { "" },
        );
        let mut line = String::new();
        for (masked, text) in render(tok, e)?.segments {
            if masked {
                line.push_str(&format!("⟦{text}⟧"));
            } else {
                line.push_str(&format!("‹{text}›"));
            }
        }
        println!("{line}");
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct JsonOut<'a> {
    data: &'a str,
    tokenizer: String,
    #[serde(flatten)]
    report: &'a echo_data::Report,
    cache: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    shown: Vec<serde_json::Value>,
}

fn print_json(args: &DataArgs, data: &str, tok: &Tokenizer, ds: &EncodedDataset, cache: &CacheStatus) -> Result<()> {
    let mut shown = Vec::new();
    for e in ds.examples.iter().take(args.show) {
        let segs = render(tok, e)?.segments;
        shown.push(serde_json::json!({
            "record": e.record,
            "tokens": e.len(),
            "prompt_tokens": e.prompt_len,
            "masked": e.masked,
            "truncated": e.truncated,
            "input_ids": e.input_ids,
            "labels": e.labels(),
            "segments": segs.iter().map(|(m, t)| serde_json::json!({"masked": m, "text": t})).collect::<Vec<_>>(),
        }));
    }
    let out = JsonOut {
        data,
        tokenizer: tok.path().display().to_string(),
        report: &ds.report,
        cache: cache_line(cache),
        shown,
    };
    println!("{}", serde_json::to_string(&out).context("JSON")?);
    Ok(())
}
