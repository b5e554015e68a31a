//! Prompt templates: a name and two format strings, one for records with an `input` and one
//! for records without. Placeholders are `{instruction}` and `{input}`; they are substituted
//! in one pass over the template, so braces inside the data are never expanded. The output is
//! appended directly after the rendered prompt (the template ends where the response begins).
//!
//! `alpaca` is the Stanford Alpaca template that LLM-Adapters uses, written without the
//! indentation spaces that LLM-Adapters' triple-quoted f-strings leak into its prompts.
//!
//! A template also says which record shape it reads ([`Format`]): instruction records (Alpaca
//! or custom format strings), prompt/completion pairs, plain text, or chat conversations
//! rendered with the model's own chat template.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::record::Record;

/// The record shape a template reads and how its tokens are learned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// LLM-Adapters records (`instruction`, `input`, `output`) through the format strings;
    /// loss on the output + EOS.
    #[default]
    Instruction,
    /// `{"prompt", "completion"}` records: the prompt verbatim; loss on the completion + EOS.
    Completion,
    /// `{"text"}` records for continued pre-training: loss on every token (+ EOS).
    Plain,
    /// `{"messages": [{role, content}, ...]}` rendered with the model's chat template; loss on
    /// every assistant turn and its end-of-turn token.
    Chat(ChatTemplate),
}

impl Format {
    /// The record fields this format reads, for messages.
    pub fn fields(&self) -> &'static str {
        match self {
            Format::Instruction => "`instruction`, `output` (and optional `input`)",
            Format::Completion => "`prompt`, `completion`",
            Format::Plain => "`text`",
            Format::Chat(_) => "`messages`",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    /// Used when `input` is not empty; must contain `{instruction}` and `{input}`. Empty for
    /// a custom template without a with-input form (a record with an input is then an error).
    pub with_input: String,
    /// Used when `input` is empty; must contain `{instruction}` and not `{input}`.
    pub without_input: String,
    /// What records the template reads (not serialised: a chat template is loaded from the
    /// tokenizer's folder).
    #[serde(skip)]
    pub format: Format,
}

/// The template names [`Template::from_config`] knows.
pub const TEMPLATE_NAMES: &str = "alpaca, chat, completion, plain, custom";

/// The templates by name, as `[data] template` spells them ([`TEMPLATE_NAMES`]); which of
/// them needs what is [`Template::from_config`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    Alpaca,
    Chat,
    Completion,
    Plain,
    Custom,
}

impl TemplateKind {
    /// The config's spelling.
    pub fn name(self) -> &'static str {
        match self {
            TemplateKind::Alpaca => "alpaca",
            TemplateKind::Chat => "chat",
            TemplateKind::Completion => "completion",
            TemplateKind::Plain => "plain",
            TemplateKind::Custom => "custom",
        }
    }
}

pub const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with \
an input that provides further context. Write a response that appropriately completes the \
request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";

pub const ALPACA_WITHOUT_INPUT: &str = "Below is an instruction that describes a task. Write a \
response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n\
### Response:\n";

const INSTRUCTION: &str = "{instruction}";
const INPUT: &str = "{input}";

impl Default for Template {
    fn default() -> Self {
        Template::alpaca()
    }
}

impl Template {
    /// The Alpaca template (see the module docs).
    pub fn alpaca() -> Self {
        Template {
            name: "alpaca".into(),
            with_input: ALPACA_WITH_INPUT.into(),
            without_input: ALPACA_WITHOUT_INPUT.into(),
            format: Format::Instruction,
        }
    }

    /// Prompt/completion records: the prompt as given, the completion learned.
    pub fn completion() -> Self {
        Template {
            name: "completion".into(),
            with_input: String::new(),
            without_input: INSTRUCTION.into(),
            format: Format::Completion,
        }
    }

    /// Plain text records: every token learned.
    pub fn plain() -> Self {
        Template {
            name: "plain".into(),
            with_input: String::new(),
            without_input: INSTRUCTION.into(),
            format: Format::Plain,
        }
    }

    /// Chat records rendered with `chat`.
    pub fn chat(chat: ChatTemplate) -> Self {
        Template {
            name: "chat".into(),
            with_input: String::new(),
            without_input: String::new(),
            format: Format::Chat(chat),
        }
    }

    /// A built-in template by name that needs no tokenizer: `alpaca`, `completion`, `plain`
    /// (`chat` needs the model's folder: [`Template::from_config`]).
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "alpaca" => Ok(Template::alpaca()),
            "completion" => Ok(Template::completion()),
            "plain" => Ok(Template::plain()),
            _ => Err(Error::Template {
                name: name.into(),
                msg: format!(
                    "unknown template (known: {TEMPLATE_NAMES}; `chat` reads the model's chat_template, \
                     `custom` takes prompt_format and prompt_format_with_input)"
                ),
            }),
        }
    }

    /// The template a run config (or `xtask data`) names: `alpaca`, `completion`, `plain`,
    /// `chat` (the chat template of the tokenizer's folder, `tokenizer` being that folder or
    /// its `tokenizer.json`), or `custom` with `prompt_format` (and optionally
    /// `prompt_format_with_input`). Format strings are refused with any other name.
    pub fn from_config(
        name: &str,
        prompt_format: Option<&str>,
        prompt_format_with_input: Option<&str>,
        tokenizer: &Path,
    ) -> Result<Self> {
        if name != "custom" && (prompt_format.is_some() || prompt_format_with_input.is_some()) {
            return Err(Error::Template {
                name: name.into(),
                msg: "prompt_format / prompt_format_with_input are only read with template = \"custom\"".into(),
            });
        }
        match name {
            "custom" => {
                let without = prompt_format.ok_or_else(|| Error::Template {
                    name: name.into(),
                    msg: "template \"custom\" needs prompt_format (with {instruction}; and optionally \
                          prompt_format_with_input with {instruction} and {input})"
                        .into(),
                })?;
                Template::new("custom", prompt_format_with_input.unwrap_or(""), without)
            }
            "chat" => Ok(Template::chat(ChatTemplate::from_dir(tokenizer)?)),
            _ => Template::by_name(name),
        }
    }

    /// A custom template, checked. `with_input` may be empty: records with an input are then
    /// refused.
    pub fn new(name: &str, with_input: &str, without_input: &str) -> Result<Self> {
        let t = Template {
            name: name.into(),
            with_input: with_input.into(),
            without_input: without_input.into(),
            format: Format::Instruction,
        };
        t.validate()?;
        Ok(t)
    }

    /// Checks the placeholders (a template deserialised from a config should be validated).
    pub fn validate(&self) -> Result<()> {
        if self.format != Format::Instruction {
            return Ok(());
        }
        let err = |msg: String| Error::Template { name: self.name.clone(), msg };
        let count = |s: &str, p: &str| s.matches(p).count();
        if !self.with_input.is_empty()
            && (count(&self.with_input, INSTRUCTION) != 1 || count(&self.with_input, INPUT) != 1)
        {
            return Err(err(format!("`with_input` must contain {INSTRUCTION} and {INPUT} exactly once each")));
        }
        if count(&self.without_input, INSTRUCTION) != 1 || count(&self.without_input, INPUT) != 0 {
            return Err(err(format!("`without_input` must contain {INSTRUCTION} exactly once and no {INPUT}")));
        }
        Ok(())
    }

    /// The prompt for a record: everything before the output. As in LLM-Adapters, a record
    /// uses the with-input form when `input` is a non-empty string.
    pub fn prompt(&self, r: &Record) -> String {
        let fmt = if r.input.is_empty() { &self.without_input } else { &self.with_input };
        render(fmt, &r.instruction, &r.input)
    }

    /// Prompt followed by the output: the text the model is trained on (before EOS).
    pub fn full_text(&self, r: &Record) -> String {
        let mut s = self.prompt(r);
        s.push_str(&r.output);
        s
    }

    /// A stable description of the template for cache keys.
    pub fn fingerprint(&self) -> String {
        let base = format!("{}\u{0}{}\u{0}{}", self.name, self.with_input, self.without_input);
        match &self.format {
            Format::Chat(c) => format!("{base}\u{0}chat\u{0}{}", c.fingerprint()),
            _ => base,
        }
    }
}

fn render(fmt: &str, instruction: &str, input: &str) -> String {
    let mut out = String::with_capacity(fmt.len() + instruction.len() + input.len());
    let mut rest = fmt;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix(INSTRUCTION) {
            out.push_str(instruction);
            rest = t;
        } else if let Some(t) = tail.strip_prefix(INPUT) {
            out.push_str(input);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(instruction: &str, input: &str) -> Record {
        Record { instruction: instruction.into(), input: input.into(), output: "out".into(), answer: None }
    }

    #[test]
    fn alpaca_without_input_is_exact() {
        let p = Template::alpaca().prompt(&rec("Say hi.", ""));
        assert_eq!(
            p,
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
        );
        assert!(!p.contains("  "), "no doubled spaces / indentation: {p:?}");
        assert!(p.lines().all(|l| !l.starts_with(' ')), "no indented line: {p:?}");
    }

    #[test]
    fn alpaca_with_input_is_exact() {
        let p = Template::alpaca().prompt(&rec("Add.", "1 2"));
        assert_eq!(
            p,
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request.\n\n\
             ### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:\n"
        );
        assert!(p.lines().all(|l| !l.starts_with(' ')), "no indented line: {p:?}");
    }

    #[test]
    fn placeholders_in_data_are_not_expanded() {
        let t = Template::new("t", "I={instruction} N={input}", "I={instruction} {x}").unwrap();
        assert_eq!(t.prompt(&rec("{input}", "")), "I={input} {x}");
        assert_eq!(t.prompt(&rec("a", "{instruction}")), "I=a N={instruction}");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(Template::new("t", "{instruction}", "{instruction}").is_err());
        assert!(Template::new("t", "{instruction}{input}", "{instruction}{input}").is_err());
        assert!(Template::new("t", "{instruction}{input}", "none").is_err());
        assert!(Template::by_name("vicuna").is_err());
        let e = Template::by_name("vicuna").unwrap_err().to_string();
        assert!(e.contains("vicuna") && e.contains("alpaca"), "{e}");
    }

    #[test]
    fn full_text_is_prompt_plus_output() {
        let t = Template::alpaca();
        let r = rec("x", "");
        assert_eq!(t.full_text(&r), format!("{}out", t.prompt(&r)));
    }
}
