//! The LLM-Adapters commonsense test sets: where they are, what answers they allow, and how a
//! prediction is read out of generated text.
//!
//! A data folder holds one sub-folder per dataset, each with a `test.json` (a JSON list of
//! `{instruction, input, output, answer}`). A dataset's *answer pattern* is the list of words
//! its answers come from (boolq: `true|false`; ARC: `answer1..answer5`, ...), exactly the
//! alternations of the LLM-Adapters evaluation script; the prediction is the first match of
//! the pattern in the generated text (leftmost position; at one position the first
//! alternative, as a regex alternation does).

use crate::{Error, Result};
use echo_data::Record;
use std::path::{Path, PathBuf};

/// Dataset names with their answer alternatives, as in the LLM-Adapters evaluation script.
const PATTERNS: &[(&str, &[&str])] = &[
    ("boolq", &["true", "false"]),
    ("piqa", &["solution1", "solution2"]),
    ("social_i_qa", &["answer1", "answer2", "answer3", "answer4", "answer5"]),
    ("ARC-Challenge", &["answer1", "answer2", "answer3", "answer4", "answer5"]),
    ("ARC-Easy", &["answer1", "answer2", "answer3", "answer4", "answer5"]),
    ("openbookqa", &["answer1", "answer2", "answer3", "answer4", "answer5"]),
    ("hellaswag", &["ending1", "ending2", "ending3", "ending4"]),
    ("winogrande", &["option1", "option2"]),
];

/// Names of the datasets whose answer pattern is known.
pub fn known_datasets() -> Vec<&'static str> {
    PATTERNS.iter().map(|p| p.0).collect()
}

/// The answer alternatives of a known dataset.
pub fn answer_pattern(name: &str) -> Option<&'static [&'static str]> {
    PATTERNS.iter().find(|p| p.0 == name).map(|p| p.1)
}

/// One test set, loaded.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub name: String,
    pub path: PathBuf,
    pub records: Vec<Record>,
    pub pattern: &'static [&'static str],
}

/// Sub-folders of `data_dir` that hold a `test.json`, sorted by name.
pub fn discover(data_dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(data_dir)
        .map_err(|e| Error::Input(format!("{}: cannot list the data folder: {e}", data_dir.display())))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("test.json").is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    names.sort();
    Ok(names)
}

/// Loads the named test sets from `data_dir` (all that it holds and whose pattern is known
/// when `names` is empty), keeping the first `limit` records of each.
pub fn load(data_dir: &Path, names: &[String], limit: Option<usize>) -> Result<Vec<Dataset>> {
    let found = discover(data_dir)?;
    let names: Vec<String> = if names.is_empty() {
        let usable: Vec<String> = found.iter().filter(|n| answer_pattern(n).is_some()).cloned().collect();
        if usable.is_empty() {
            return Err(Error::Input(format!(
                "{}: no test set found (expected sub-folders named one of {} with a test.json; found: {})",
                data_dir.display(),
                known_datasets().join(", "),
                list_or_none(&found)
            )));
        }
        usable
    } else {
        names.to_vec()
    };
    let mut out = Vec::new();
    for name in &names {
        let dir = data_dir.join(name);
        let path = dir.join("test.json");
        if !path.is_file() {
            let what = if dir.is_dir() {
                format!("{} has no test.json", dir.display())
            } else {
                format!("no dataset `{name}` in {}", data_dir.display())
            };
            return Err(Error::Input(format!("{what} (datasets with a test.json there: {})", list_or_none(&found))));
        }
        let pattern = answer_pattern(name).ok_or_else(|| {
            Error::Input(format!(
                "dataset `{name}`: no answer pattern known for this name (known: {})",
                known_datasets().join(", ")
            ))
        })?;
        let mut records = echo_data::read_records(&path).map_err(|e| Error::Input(e.to_string()))?;
        if let Some(i) = records.iter().position(|r| r.answer.is_none()) {
            return Err(Error::Input(format!(
                "{}: record {i} has no `answer` field (the evaluation compares against it)",
                path.display()
            )));
        }
        if let Some(n) = limit {
            records.truncate(n);
        }
        out.push(Dataset { name: name.clone(), path, records, pattern });
    }
    Ok(out)
}

fn list_or_none(found: &[String]) -> String {
    if found.is_empty() {
        "none".into()
    } else {
        found.join(", ")
    }
}

/// The first match of any alternative in `text` (leftmost; at one position, the first
/// alternative listed), as `re.findall("a|b|...", text)[0]` does. `None`: no answer.
pub fn extract_answer(text: &str, pattern: &[&str]) -> Option<String> {
    (0..text.len())
        .filter(|&i| text.is_char_boundary(i))
        .find_map(|i| pattern.iter().find(|alt| text[i..].starts_with(**alt)))
        .map(|s| s.to_string())
}

/// The candidates a record offers, for log-likelihood scoring: the alternatives listed on
/// its `Answer format:` line when they belong to the pattern (ARC questions with 3 or 5
/// choices say so there), else the whole pattern. The record's answer is always included.
pub fn candidates(record: &Record, pattern: &[&str]) -> Vec<String> {
    let listed: Vec<String> = record
        .instruction
        .rsplit_once("Answer format:")
        .map(|(_, rest)| {
            rest.lines()
                .next()
                .unwrap_or("")
                .split('/')
                .map(|s| s.trim().to_string())
                .filter(|s| pattern.contains(&s.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let mut out = if listed.len() >= 2 { listed } else { pattern.iter().map(|s| s.to_string()).collect() };
    if let Some(a) = &record.answer {
        if !out.contains(a) {
            out.push(a.clone());
        }
    }
    out
}

/// The text the model is trained to write before the answer, read off the record's `output`
/// (`"the correct answer is answer2"` → `"the correct answer is "`).
pub fn answer_prefix(record: &Record) -> String {
    match &record.answer {
        Some(a) if record.output.ends_with(a.as_str()) => record.output[..record.output.len() - a.len()].to_string(),
        _ => "the correct answer is ".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(instruction: &str, output: &str, answer: &str) -> Record {
        Record {
            instruction: instruction.into(),
            input: String::new(),
            output: output.into(),
            answer: Some(answer.into()),
        }
    }

    #[test]
    fn first_match_is_leftmost_then_first_alternative() {
        let p = answer_pattern("boolq").unwrap();
        assert_eq!(extract_answer("the correct answer is false, not true", p).as_deref(), Some("false"));
        assert_eq!(extract_answer("True or False?", p), None, "case-sensitive, as the reference script");
        let arc = answer_pattern("ARC-Easy").unwrap();
        assert_eq!(extract_answer("I pick answer3. answer1 is wrong", arc).as_deref(), Some("answer3"));
        assert_eq!(extract_answer("no idea", arc), None);
        assert_eq!(extract_answer("é answer2", arc).as_deref(), Some("answer2"), "multi-byte text");
    }

    #[test]
    fn candidates_follow_the_answer_format_line() {
        let p = answer_pattern("ARC-Easy").unwrap();
        let r = rec(
            "Q?\n\nAnswer1: a Answer2: b Answer3: c\n\nAnswer format: answer1/answer2/answer3",
            "the correct answer is answer2",
            "answer2",
        );
        assert_eq!(candidates(&r, p), ["answer1", "answer2", "answer3"]);
        let r = rec("Q without a format line", "the correct answer is answer5", "answer5");
        assert_eq!(candidates(&r, p).len(), 5);
        let b = rec("q\n\nAnswer format: true/false", "the correct answer is true", "true");
        assert_eq!(candidates(&b, answer_pattern("boolq").unwrap()), ["true", "false"]);
        assert_eq!(answer_prefix(&b), "the correct answer is ");
    }
}
