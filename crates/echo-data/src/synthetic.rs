//! A synthetic multiple-choice task in the LLM-Adapters format, so a training run needs no
//! downloaded data. Each question asks for the largest or the smallest of a few distinct
//! numbers, so the answer follows from the question alone:
//!
//! ```text
//! instruction: Which number is the largest?
//!
//!              Answer1: 17 Answer2: 42 Answer3: 8
//!
//!              Answer format: answer1/answer2/answer3
//! output:      the correct answer is answer2
//! answer:      answer2
//! ```
//!
//! The layout is the ARC/OpenBookQA one without its "Please choose the correct answer to the
//! question:" preface, so the evaluation's answer pattern (`answer1..5`) applies unchanged.
//! Prompts are short: with the Alpaca template around them, SmolLM2's tokenizer gives 60
//! tokens for 2 choices, 69 for 3 (the default), 78 for 4; answers are 7 tokens with EOS.
//! Generation is deterministic from the seed; the right answer's position is uniform over the
//! choices.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record::Record;
use echo_rng::Rng;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    pub count: usize,
    pub seed: u64,
    /// Choices per question, 2..=5.
    pub choices: usize,
    /// Numbers are drawn from 1..=max_value, all distinct within a question.
    pub max_value: u32,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec { count: 2000, seed: 0, choices: 3, max_value: 99 }
    }
}

/// Generates `spec.count` records.
pub fn synthetic_records(spec: &SyntheticSpec) -> Result<Vec<Record>> {
    if !(2..=5).contains(&spec.choices) {
        return Err(Error::Synthetic(format!("choices = {} (expected 2..=5)", spec.choices)));
    }
    if (spec.max_value as usize) < spec.choices {
        return Err(Error::Synthetic(format!(
            "max_value = {} cannot give {} distinct numbers",
            spec.max_value, spec.choices
        )));
    }
    let mut rng = Rng::derive(spec.seed, "data.synthetic");
    let mut out = Vec::with_capacity(spec.count);
    for _ in 0..spec.count {
        let largest = rng.below(2) == 0;
        let mut nums: Vec<u32> = Vec::with_capacity(spec.choices);
        while nums.len() < spec.choices {
            let x = 1 + rng.below(spec.max_value as usize) as u32;
            if !nums.contains(&x) {
                nums.push(x);
            }
        }
        let target = if largest { nums.iter().max() } else { nums.iter().min() };
        let k = nums.iter().position(|x| Some(x) == target).unwrap_or(0) + 1;
        let options: Vec<String> = nums.iter().enumerate().map(|(i, x)| format!("Answer{}: {x}", i + 1)).collect();
        let format: Vec<String> = (1..=spec.choices).map(|i| format!("answer{i}")).collect();
        let instruction = format!(
            "Which number is the {}?\n\n{}\n\nAnswer format: {}",
            if largest { "largest" } else { "smallest" },
            options.join(" "),
            format.join("/")
        );
        out.push(Record {
            instruction,
            input: String::new(),
            output: format!("the correct answer is answer{k}"),
            answer: Some(format!("answer{k}")),
        });
    }
    Ok(out)
}

/// Checks a synthetic record: recomputes the answer from the question.
pub fn solve(instruction: &str) -> Option<String> {
    let largest = if instruction.contains("Which number is the largest?") {
        true
    } else if instruction.contains("Which number is the smallest?") {
        false
    } else {
        return None;
    };
    let mut best: Option<(usize, u32)> = None;
    for (i, part) in instruction.split("Answer").enumerate().skip(1) {
        let Some((_, rest)) = part.split_once(": ") else {
            continue;
        };
        let Ok(x) = rest.split_whitespace().next()?.parse::<u32>() else {
            continue;
        };
        let better = match best {
            None => true,
            Some((_, b)) => (largest && x > b) || (!largest && x < b),
        };
        if better {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| format!("answer{i}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        let s = SyntheticSpec { count: 50, ..Default::default() };
        assert_eq!(synthetic_records(&s).unwrap(), synthetic_records(&s).unwrap());
        let t = SyntheticSpec { seed: 1, ..s.clone() };
        assert_ne!(synthetic_records(&s).unwrap(), synthetic_records(&t).unwrap());
    }

    #[test]
    fn answers_are_decidable_from_the_question() {
        for choices in 2..=5 {
            let s = SyntheticSpec { count: 300, seed: 9, choices, max_value: 99 };
            let recs = synthetic_records(&s).unwrap();
            let mut hits = vec![0usize; choices];
            for r in &recs {
                let a = r.answer.clone().unwrap();
                assert_eq!(solve(&r.instruction).as_deref(), Some(a.as_str()), "{r:?}");
                assert_eq!(r.output, format!("the correct answer is {a}"));
                assert!(r.instruction.ends_with(&format!("answer{choices}")));
                let k: usize = a.trim_start_matches("answer").parse().unwrap();
                hits[k - 1] += 1;
            }
            // Every position is the answer sometimes (uniform in expectation).
            assert!(hits.iter().all(|&h| h > 300 / choices / 3), "{hits:?}");
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(synthetic_records(&SyntheticSpec { choices: 1, ..Default::default() }).is_err());
        assert!(synthetic_records(&SyntheticSpec { choices: 6, ..Default::default() }).is_err());
        assert!(synthetic_records(&SyntheticSpec { max_value: 2, ..Default::default() }).is_err());
    }
}
