//! The pre-tokenisation cache.
//!
//! Key: SHA-256 over a format version, the data file's bytes, the tokenizer's fingerprint
//! (tokenizer.json's bytes and the EOS/pad/BOS ids), the template's strings and the encode
//! config. One file per key, `<dir>/<key>.bin`, written to a temporary file and renamed into
//! place, so a reader never sees half a file. The file ends with a SHA-256 of its contents; a
//! file that fails any check is ignored with a warning and rebuilt.
//!
//! Layout (little-endian): `b"ECHODATA"`, u32 version, 32-byte key, the report (12 × u64),
//! u64 number of examples, each `u64 source, u64 record, u32 prompt_len, u8 flags, u32
//! masked ranges, that many × (u32 start, u32 end), u32 len, len × u32 ids`, u64 number of
//! dropped, each `u64 source, u64 record, u8 reason, u64 prompt_tokens, u64 tokens`, then the
//! 32-byte checksum.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::encode::{encode_file, DropReason, Dropped, EncodeConfig, EncodedDataset, Example, Progress, Report};
use crate::error::{Error, Result};
use crate::mix::MixSpec;
use crate::template::Template;
use crate::tokenizer::Tokenizer;

/// The one folder echo-lora keeps things in between runs (imported models, tokenised data):
/// `$ECHO_LORA_CACHE` when set, else `$XDG_CACHE_HOME/echo-lora`, else `~/.cache/echo-lora`.
pub fn user_cache_root() -> std::result::Result<PathBuf, String> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = env("ECHO_LORA_CACHE") {
        return Ok(p);
    }
    if let Some(p) = env("XDG_CACHE_HOME") {
        return Ok(p.join("echo-lora"));
    }
    env("HOME")
        .map(|h| h.join(".cache").join("echo-lora"))
        .ok_or_else(|| "no cache folder: set ECHO_LORA_CACHE (or XDG_CACHE_HOME or HOME)".to_string())
}

const MAGIC: &[u8; 8] = b"ECHODATA";
const VERSION: u32 = 2;

#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
}

/// What the cache did for one load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// Loaded from this file.
    Hit(PathBuf),
    /// Not there: tokenised and written.
    Miss(PathBuf),
    /// There but unusable (the reason): tokenised and rewritten.
    Rebuilt(PathBuf, String),
    /// No cache in use.
    Off,
}

impl Cache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Cache { dir: dir.into() }
    }

    /// `<user cache root>/data` (see [`user_cache_root`]): where training and `xtask data`
    /// keep tokenised datasets, shared by every checkout and run of the user.
    pub fn user_default() -> std::result::Result<Self, String> {
        Ok(Cache::new(user_cache_root()?.join("data")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key; `data_sha256` is the SHA-256 of the data file's bytes.
    pub fn key(data_sha256: &[u8; 32], tok: &Tokenizer, template: &Template, cfg: &EncodeConfig) -> String {
        let mut h = Sha256::new();
        h.update(MAGIC);
        h.update(VERSION.to_le_bytes());
        h.update(data_sha256);
        h.update(tok.fingerprint());
        let t = template.fingerprint();
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
        h.update(cfg.fingerprint().as_bytes());
        hex(&h.finalize())
    }

    pub fn path_for(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.bin"))
    }

    /// Loads the encoded dataset of `data` from the cache, or tokenises it and stores it.
    /// A cache that cannot be written is a warning, not an error: the data is still returned.
    pub fn load_or_encode(
        &self,
        data: impl AsRef<Path>,
        tok: &Tokenizer,
        template: &Template,
        cfg: &EncodeConfig,
        progress: Progress,
    ) -> Result<(EncodedDataset, CacheStatus)> {
        let data = data.as_ref();
        let key = Cache::key(&crate::record::hash_file(data)?, tok, template, cfg);
        let file = self.path_for(&key);
        let mut stale = None;
        match std::fs::read(&file) {
            Ok(buf) => match decode(&buf, &key) {
                Ok(ds) => return Ok((ds, CacheStatus::Hit(file))),
                Err(why) => {
                    tracing::warn!("cache file {} is unusable ({why}); rebuilding it", file.display());
                    stale = Some(why);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => stale = Some(format!("cannot read it: {e}")),
        }
        let ds = encode_file(data, tok, template, cfg, progress)?;
        if let Err(e) = std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(&self.dir, "cannot create cache folder", e))
            .and_then(|_| write_atomic(&file, &encode(&ds, &key)))
        {
            tracing::warn!("could not write the cache: {e}");
        }
        let status = match stale {
            Some(why) => CacheStatus::Rebuilt(file, why),
            None => CacheStatus::Miss(file),
        };
        Ok((ds, status))
    }
}

/// Loads one dataset, through the cache when one is given.
pub fn load_dataset(
    data: impl AsRef<Path>,
    tok: &Tokenizer,
    template: &Template,
    cfg: &EncodeConfig,
    cache: Option<&Cache>,
    progress: Progress,
) -> Result<(EncodedDataset, CacheStatus)> {
    match cache {
        Some(c) => c.load_or_encode(data, tok, template, cfg, progress),
        None => Ok((encode_file(data, tok, template, cfg, progress)?, CacheStatus::Off)),
    }
}

/// A mixed dataset: examples carry their source index; `reports[s]` is source `s`'s report
/// (before mixing) and `report` their sum.
#[derive(Clone, Debug)]
pub struct MixedDataset {
    pub examples: Vec<Example>,
    pub counts: Vec<usize>,
    pub reports: Vec<Report>,
    pub dropped: Vec<Dropped>,
}

/// Encodes (through the cache) every source of a mix, then mixes the examples by weight.
pub fn load_mix(
    spec: &MixSpec,
    tok: &Tokenizer,
    template: &Template,
    cfg: &EncodeConfig,
    cache: Option<&Cache>,
    progress: Progress,
) -> Result<MixedDataset> {
    let mut per_source = Vec::new();
    let mut reports = Vec::new();
    let mut dropped = Vec::new();
    for (s, src) in spec.sources.iter().enumerate() {
        let (mut ds, _) = load_dataset(&src.path, tok, template, cfg, cache, progress)?;
        for e in &mut ds.examples {
            e.source = s;
        }
        for d in &mut ds.dropped {
            d.source = s;
        }
        reports.push(ds.report);
        dropped.extend(ds.dropped);
        per_source.push(ds.examples);
    }
    let sizes: Vec<usize> = per_source.iter().map(Vec::len).collect();
    let counts = spec.counts(&sizes)?;
    let examples = spec.apply(per_source)?.into_iter().map(|(_, e)| e).collect();
    Ok(MixedDataset { examples, counts, reports, dropped })
}

impl MixedDataset {
    pub fn report(&self) -> Report {
        let mut r = Report::default();
        for x in &self.reports {
            r.merge(x);
        }
        r
    }
}

/// [`echo_io::write_atomic`] with this crate's error, naming the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    echo_io::write_atomic(path, bytes).map_err(|e| Error::io(path, "cannot write", e))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn report_fields(r: &Report) -> [usize; 12] {
    [
        r.records,
        r.examples,
        r.tokens,
        r.prompt_tokens,
        r.answer_tokens,
        r.truncated,
        r.dropped,
        r.dropped_prompt_over_cutoff,
        r.boundary_merges,
        r.longest,
        r.longest_before_cutoff,
        r.dropped_too_large,
    ]
}

fn encode(ds: &EncodedDataset, key: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(64 + ds.report.tokens * 4 + ds.examples.len() * 32);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.extend_from_slice(key.as_bytes());
    for x in report_fields(&ds.report) {
        v.extend_from_slice(&(x as u64).to_le_bytes());
    }
    v.extend_from_slice(&(ds.examples.len() as u64).to_le_bytes());
    for e in &ds.examples {
        v.extend_from_slice(&(e.source as u64).to_le_bytes());
        v.extend_from_slice(&(e.record as u64).to_le_bytes());
        v.extend_from_slice(&(e.prompt_len as u32).to_le_bytes());
        let flags = e.train_on_inputs as u8 | (e.truncated as u8) << 1 | (e.boundary_merge as u8) << 2;
        v.push(flags);
        v.extend_from_slice(&(e.masked.len() as u32).to_le_bytes());
        for &(a, b) in &e.masked {
            v.extend_from_slice(&a.to_le_bytes());
            v.extend_from_slice(&b.to_le_bytes());
        }
        v.extend_from_slice(&(e.input_ids.len() as u32).to_le_bytes());
        for id in &e.input_ids {
            v.extend_from_slice(&id.to_le_bytes());
        }
    }
    v.extend_from_slice(&(ds.dropped.len() as u64).to_le_bytes());
    for d in &ds.dropped {
        v.extend_from_slice(&(d.source as u64).to_le_bytes());
        v.extend_from_slice(&(d.record as u64).to_le_bytes());
        v.push(match d.reason {
            DropReason::PromptOverCutoff => 0,
            DropReason::OverCutoff => 1,
            DropReason::TooLarge => 2,
        });
        v.extend_from_slice(&(d.prompt_tokens as u64).to_le_bytes());
        v.extend_from_slice(&(d.tokens as u64).to_le_bytes());
    }
    let sum = Sha256::digest(&v);
    v.extend_from_slice(&sum);
    v
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        if self.b.len() < n {
            return Err("file is cut short".into());
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "bad u32")?))
    }
    fn u64(&mut self) -> std::result::Result<usize, String> {
        let x = u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "bad u64")?);
        usize::try_from(x).map_err(|_| "count too large".to_string())
    }
}

fn decode(buf: &[u8], key: &str) -> std::result::Result<EncodedDataset, String> {
    if buf.len() < MAGIC.len() + 4 + key.len() + 32 {
        return Err("file is too short".into());
    }
    let (body, sum) = buf.split_at(buf.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err("checksum mismatch (corrupted)".into());
    }
    let mut r = Reader { b: body };
    if r.take(8)? != MAGIC {
        return Err("not an echo-data cache file".into());
    }
    let version = r.u32()?;
    if version != VERSION {
        return Err(format!("format version {version}, expected {VERSION}"));
    }
    if r.take(key.len())? != key.as_bytes() {
        return Err("key mismatch".into());
    }
    let mut f = [0usize; 12];
    for x in &mut f {
        *x = r.u64()?;
    }
    let report = Report {
        records: f[0],
        examples: f[1],
        tokens: f[2],
        prompt_tokens: f[3],
        answer_tokens: f[4],
        truncated: f[5],
        dropped: f[6],
        dropped_prompt_over_cutoff: f[7],
        boundary_merges: f[8],
        longest: f[9],
        longest_before_cutoff: f[10],
        dropped_too_large: f[11],
    };
    let n = r.u64()?;
    if n != report.examples {
        return Err("example count disagrees with the report".into());
    }
    let mut examples = Vec::with_capacity(n.min(body.len() / 20));
    for _ in 0..n {
        let source = r.u64()?;
        let record = r.u64()?;
        let prompt_len = r.u32()? as usize;
        let flags = r.u8()?;
        let nm = r.u32()? as usize;
        let mut masked = Vec::with_capacity(nm.min(r.b.len() / 8));
        for _ in 0..nm {
            masked.push((r.u32()?, r.u32()?));
        }
        let len = r.u32()? as usize;
        let raw = r.take(len * 4)?;
        let input_ids: Vec<u32> = raw.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if prompt_len >= len {
            return Err("an example without answer tokens".into());
        }
        examples.push(Example {
            source,
            record,
            input_ids,
            prompt_len,
            masked,
            train_on_inputs: flags & 1 != 0,
            truncated: flags & 2 != 0,
            boundary_merge: flags & 4 != 0,
        });
    }
    let nd = r.u64()?;
    if nd != report.dropped {
        return Err("dropped count disagrees with the report".into());
    }
    let mut dropped = Vec::with_capacity(nd.min(body.len() / 25));
    for _ in 0..nd {
        let source = r.u64()?;
        let record = r.u64()?;
        let reason = match r.u8()? {
            0 => DropReason::PromptOverCutoff,
            1 => DropReason::OverCutoff,
            2 => DropReason::TooLarge,
            x => return Err(format!("unknown drop reason {x}")),
        };
        dropped.push(Dropped { source, record, reason, prompt_tokens: r.u64()?, tokens: r.u64()? });
    }
    if !r.b.is_empty() {
        return Err("trailing bytes".into());
    }
    Ok(EncodedDataset { examples, dropped, report })
}
