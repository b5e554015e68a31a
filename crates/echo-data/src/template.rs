//! Prompt templates: a name and two format strings, one for records with an `input` and one
//! for records without. Placeholders are `{instruction}` and `{input}`; they are substituted
//! in one pass over the template, so braces inside the data are never expanded. The output is
//! appended directly after the rendered prompt (the template ends where the response begins).
//!
//! `alpaca` is the Stanford Alpaca template that LLM-Adapters uses, written without the
//! indentation spaces that LLM-Adapters' triple-quoted f-strings leak into its prompts.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::Record;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    /// Used when `input` is not empty; must contain `{instruction}` and `{input}`.
    pub with_input: String,
    /// Used when `input` is empty; must contain `{instruction}` and not `{input}`.
    pub without_input: String,
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
        }
    }

    /// A built-in template by name. Known: `alpaca`.
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "alpaca" => Ok(Template::alpaca()),
            _ => Err(Error::Template {
                name: name.into(),
                msg: "unknown template (known: alpaca; or give the two format strings)".into(),
            }),
        }
    }

    /// A custom template, checked.
    pub fn new(name: &str, with_input: &str, without_input: &str) -> Result<Self> {
        let t = Template { name: name.into(), with_input: with_input.into(), without_input: without_input.into() };
        t.validate()?;
        Ok(t)
    }

    /// Checks the placeholders (a template deserialised from a config should be validated).
    pub fn validate(&self) -> Result<()> {
        let err = |msg: String| Error::Template { name: self.name.clone(), msg };
        let count = |s: &str, p: &str| s.matches(p).count();
        if count(&self.with_input, INSTRUCTION) != 1 || count(&self.with_input, INPUT) != 1 {
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
        format!("{}\u{0}{}\u{0}{}", self.name, self.with_input, self.without_input)
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
