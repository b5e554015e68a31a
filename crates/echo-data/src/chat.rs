//! The model's own chat template: `chat_template` in `tokenizer_config.json`, a Jinja
//! template rendered through minijinja exactly as `transformers`' `apply_chat_template` renders
//! it (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`).
//! Training on chat data and `cargo xtask generate --chat` both render through here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template with the special-token strings it may refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    /// Where the template came from (named in errors).
    origin: PathBuf,
    env: Arc<minijinja::Environment<'static>>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("origin", &self.origin).finish()
    }
}

impl PartialEq for ChatTemplate {
    fn eq(&self, o: &Self) -> bool {
        self.source == o.source && self.bos_token == o.bos_token && self.eos_token == o.eos_token
    }
}

impl Eq for ChatTemplate {}

fn tmpl_err(origin: &Path, msg: impl Into<String>) -> Error {
    Error::Template { name: format!("chat ({})", origin.display()), msg: msg.into() }
}

/// A token named in tokenizer_config.json: a plain string or an AddedToken object.
fn special(cfg: &serde_json::Value, key: &str) -> String {
    match &cfg[key] {
        serde_json::Value::String(s) => s.clone(),
        v => v["content"].as_str().unwrap_or_default().to_string(),
    }
}

impl ChatTemplate {
    /// Compiles `source`; `origin` names it in errors.
    pub fn new(source: &str, bos_token: &str, eos_token: &str, origin: impl Into<PathBuf>) -> Result<Self> {
        let origin = origin.into();
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| tmpl_err(&origin, format!("not a valid Jinja template: {e}")))?;
        Ok(ChatTemplate {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            origin,
            env: Arc::new(env),
        })
    }

    /// The `chat_template` of an HF model folder's `tokenizer_config.json` (or of the folder
    /// holding the given `tokenizer.json`), with its `bos_token` and `eos_token`.
    pub fn from_dir(dir_or_file: impl AsRef<Path>) -> Result<Self> {
        let p = dir_or_file.as_ref();
        let dir = if p.is_dir() { p.to_path_buf() } else { p.parent().map(Path::to_path_buf).unwrap_or_default() };
        let path = dir.join("tokenizer_config.json");
        let bytes =
            std::fs::read(&path).map_err(|e| Error::io(&path, "cannot read (needed for the chat template)", e))?;
        let cfg: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
            path: path.clone(),
            line: e.line() as u64,
            column: e.column() as u64,
            record: None,
            msg: e.to_string(),
        })?;
        let source = match &cfg["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            // A list of named templates (some tokenizers): take `default`.
            serde_json::Value::Array(a) => a
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(str::to_owned)
                .ok_or_else(|| tmpl_err(&path, "chat_template is a list without a `default` entry"))?,
            _ => return Err(tmpl_err(&path, "no chat_template (expected a Jinja string in tokenizer_config.json)")),
        };
        ChatTemplate::new(&source, &special(&cfg, "bos_token"), &special(&cfg, "eos_token"), path)
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Renders `messages`; `add_generation_prompt` appends the opening of an assistant turn
    /// (what generation starts from).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        self.env
            .get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| tmpl_err(&self.origin, format!("rendering failed: {e}")))
    }

    /// A stable description for cache keys.
    pub fn fingerprint(&self) -> String {
        format!("{}\u{0}{}\u{0}{}", self.source, self.bos_token, self.eos_token)
    }
}
