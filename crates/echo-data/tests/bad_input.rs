//! Bad input: every case is refused with an error naming the file and the place, or (for
//! over-long samples) counted and reported.

mod common;

use common::{file_with, tokenizer, train};
use echo_data::{
    encode_file, encode_records, read_records, EncodeConfig, Error, Overlong, Progress, Record, RecordStream, Template,
};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// 1-based column of `needle` in line `line` (1-based) of `text`.
fn col_of(text: &str, line: usize, needle: &str) -> u64 {
    text.lines().nth(line - 1).unwrap().find(needle).unwrap() as u64 + 1
}

#[test]
fn malformed_json_names_file_line_and_column() {
    let d = tmp();
    let text = "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"c\" \"output\": \"d\"}\n]\n";
    let p = file_with(&d, "bad.json", text.as_bytes());
    let err = read_records(&p).unwrap_err();
    match &err {
        Error::Json { path, line, column, record, .. } => {
            assert_eq!(path, &p);
            assert_eq!(*line, 3);
            assert_eq!(*column, col_of(text, 3, "\"output\""));
            assert_eq!(*record, Some(1));
        }
        e => panic!("wrong error {e:?}"),
    }
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{}:3:", p.display())), "{msg}");
    assert!(msg.contains("record [1]"), "{msg}");
}

#[test]
fn malformed_record_deep_in_a_real_file_is_located_exactly() {
    // Break the 5000th record of boolq (remove the colon after its "output").
    let text = std::fs::read_to_string(train("boolq")).unwrap();
    let mut pos = 0;
    for _ in 0..5000 {
        pos += text[pos..].find("\"output\":").unwrap() + 1;
    }
    let at = pos - 1; // the opening quote of the 5000th "output"
    let colon = at + "\"output\"".len();
    let broken = format!("{}{}", &text[..colon], &text[colon + 1..]);
    let line = text[..at].matches('\n').count() + 1;
    let d = tmp();
    let p = file_with(&d, "train.json", broken.as_bytes());
    let err = read_records(&p).unwrap_err();
    let Error::Json { line: l, column, record, .. } = err else { panic!("{err:?}") };
    assert_eq!(l as usize, line);
    assert_eq!(record, Some(4999));
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    // In the broken text the key is followed by " \"the correct...": serde stops at the value's
    // opening quote, where it expected the colon.
    assert_eq!(&broken[colon..colon + 2], " \"");
    assert_eq!(column as usize, (colon + 1) - line_start + 1);
    // The streaming reader yields the 4999 good records first, then the error.
    let mut s = RecordStream::open(&p).unwrap();
    assert_eq!(s.by_ref().take(4999).filter(Result::is_ok).count(), 4999);
    assert!(s.next().unwrap().is_err());
    assert!(s.next().is_none(), "nothing after the first error");
}

#[test]
fn structural_errors() {
    let d = tmp();
    // (text, message, the byte the error points at)
    let cases: [(&str, &str, usize); 5] = [
        ("[{\"instruction\": \"a\", \"output\": \"b\"},]", "expected '{'", 37),
        ("[{\"instruction\": \"a\", \"output\": \"b\"} {}]", "expected ',' or ']'", 37),
        ("hello", "expected a JSON array", 0),
        ("[{\"instruction\": \"a\", \"output\": \"b", "unexpected end of file", 34),
        ("[{\"instruction\": \"a\", \"output\": \"b\"}] x", "trailing characters", 38),
    ];
    for (text, want, at) in cases {
        let (line, column) = (1, at as u64 + 1);
        let p = file_with(&d, "x.json", text.as_bytes());
        let err = read_records(&p).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want), "{text:?}: {msg}");
        match err {
            Error::Json { line: l, column: c, .. } => assert_eq!((l, c), (line, column), "{text:?}: {msg}"),
            e => panic!("{text:?}: {e:?}"),
        }
    }
}

#[test]
fn a_record_missing_a_field() {
    let d = tmp();
    let text = "[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c\", \"answer\": \"x\"}\n]";
    let p = file_with(&d, "m.json", text.as_bytes());
    match read_records(&p).unwrap_err() {
        Error::MissingField { path, record, line, column, field } => {
            assert_eq!((path, record, line, column, field), (p.clone(), 1, 3, 2, "output"));
        }
        e => panic!("{e:?}"),
    }
    let p = file_with(&d, "m2.jsonl", b"{\"output\": \"b\"}\n");
    let msg = read_records(&p).unwrap_err().to_string();
    assert!(msg.contains("field `instruction` is missing") && msg.contains("m2.jsonl:1:1"), "{msg}");
    // A field of the wrong type is a JSON error naming the record.
    let p = file_with(&d, "t.json", b"[{\"instruction\": \"a\", \"output\": 5}]");
    let msg = read_records(&p).unwrap_err().to_string();
    assert!(msg.contains("record [0]") && msg.contains("invalid type"), "{msg}");
}

#[test]
fn an_empty_output() {
    let d = tmp();
    let p = file_with(
        &d,
        "e.json",
        b"[{\"instruction\": \"a\", \"output\": \"b\"}, {\"instruction\": \"a\", \"output\": \"\"}]",
    );
    match read_records(&p).unwrap_err() {
        Error::EmptyField { record, field, line, column, .. } => {
            assert_eq!((record, field, line, column), (1, "output", 1, 39))
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn non_utf8_bytes() {
    let d = tmp();
    let mut bytes = b"[\n {\"instruction\": \"a\", \"output\": \"b\"},\n {\"instruction\": \"c".to_vec();
    let bad_at = bytes.len();
    bytes.extend_from_slice(b"\xFF\xFE\", \"output\": \"d\"}\n]");
    let p = file_with(&d, "u.json", &bytes);
    match read_records(&p).unwrap_err() {
        Error::InvalidUtf8 { path, offset, line, column } => {
            assert_eq!(path, p);
            assert_eq!(offset, bad_at as u64);
            assert_eq!(line, 3);
            let line_start = bytes[..bad_at].iter().rposition(|&b| b == b'\n').unwrap() + 1;
            assert_eq!(column, (bad_at - line_start + 1) as u64);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn an_empty_dataset() {
    let d = tmp();
    for (name, text) in
        [("a.json", ""), ("b.json", "  \n\n"), ("c.json", "[]"), ("d.json", "[ \n ]\n"), ("e.jsonl", "\n\n")]
    {
        let p = file_with(&d, name, text.as_bytes());
        let err = read_records(&p).unwrap_err();
        assert!(matches!(err, Error::EmptyDataset { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{err}");
        // The pipeline refuses it too.
        let err =
            encode_file(&p, &tokenizer(), &Template::alpaca(), &EncodeConfig::default(), Progress::Hidden).unwrap_err();
        assert!(matches!(err, Error::EmptyDataset { .. }), "{name}: {err:?}");
    }
}

#[test]
fn jsonl_is_read_and_located() {
    let d = tmp();
    let p = file_with(&d, "ok.jsonl", b"{\"instruction\": \"a\", \"output\": \"b\"}\n\n{\"instruction\": \"c\", \"input\": \"i\", \"output\": \"d\", \"answer\": \"d\", \"extra\": 1}\n");
    let r = read_records(&p).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[1],
        Record { instruction: "c".into(), input: "i".into(), output: "d".into(), answer: Some("d".into()) }
    );
    let p = file_with(
        &d,
        "bad.jsonl",
        b"{\"instruction\": \"a\", \"output\": \"b\"}\n{\"instruction\": \"a\" \"output\": \"b\"}\n",
    );
    match read_records(&p).unwrap_err() {
        Error::Json { line, column, record, .. } => {
            let text = "{\"instruction\": \"a\" \"output\": \"b\"}";
            assert_eq!((line, column, record), (2, col_of(text, 1, "\"output\""), Some(1)))
        }
        e => panic!("{e:?}"),
    }
}

fn boolq_head(n: usize) -> Vec<Record> {
    read_records(train("boolq")).unwrap().into_iter().take(n).collect()
}

#[test]
fn a_cutoff_shorter_than_every_prompt_is_an_error_that_says_so() {
    let tok = tokenizer();
    let recs = boolq_head(50);
    let cfg = EncodeConfig { cutoff: Some(8), ..Default::default() };
    let err = encode_records(&tok, &Template::alpaca(), &recs, &cfg, "boolq".as_ref(), 0).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoExamples { .. }), "{err:?}");
    assert!(msg.contains("all 50 records were dropped") && msg.contains("prompt"), "{msg}");
}

#[test]
fn a_cutoff_shorter_than_some_prompts_drops_and_reports_exactly_those() {
    let tok = tokenizer();
    let tpl = Template::alpaca();
    let recs = boolq_head(400);
    let plens: Vec<usize> = recs.iter().map(|r| tok.encode(&tpl.prompt(r)).unwrap().len()).collect();
    let mut sorted = plens.clone();
    sorted.sort_unstable();
    let cutoff = sorted[200]; // about half of the prompts reach it
    for overlong in [Overlong::Truncate, Overlong::Drop] {
        let cfg = EncodeConfig { cutoff: Some(cutoff), overlong, train_on_inputs: false };
        let ds = encode_records(&tok, &tpl, &recs, &cfg, "boolq".as_ref(), 0).unwrap();
        let want: Vec<usize> = (0..recs.len()).filter(|&i| plens[i] >= cutoff).collect();
        let got: Vec<usize> = ds
            .dropped
            .iter()
            .filter(|d| d.reason == echo_data::DropReason::PromptOverCutoff)
            .map(|d| d.record)
            .collect();
        assert_eq!(got, want);
        assert_eq!(ds.report.dropped_prompt_over_cutoff, want.len());
        assert_eq!(ds.report.examples + ds.report.dropped, recs.len(), "every record accounted for");
        assert!(ds.examples.iter().all(|e| e.len() <= cutoff && e.prompt_len < e.len()));
        if overlong == Overlong::Truncate {
            assert_eq!(ds.report.dropped, want.len());
            assert_eq!(ds.report.truncated, ds.examples.iter().filter(|e| e.truncated).count());
            assert!(ds
                .examples
                .iter()
                .filter(|e| e.truncated)
                .all(|e| e.len() == cutoff && *e.input_ids.last().unwrap() != tok.eos_id()));
        }
    }
}

/// Found by the `tokenizer` fuzz target: the tokenizers crate deserialises the `decoder` section
/// with `expect`, so a syntax error inside it (here a raw control character in a string) was a
/// panic, not an error.
#[test]
fn a_syntax_error_inside_the_tokenizer_decoder_is_an_error_not_a_panic() {
    let d = tmp();
    let text = std::fs::read_to_string(common::fixture_dir().join("tokenizer.json")).unwrap();
    let decoder = text.find("\"decoder\": {").expect("the fixture has a decoder");
    let at = decoder + text[decoder..].find("ByteLevel").expect("a ByteLevel decoder");
    let broken = format!("{}Byte\u{1}Level{}", &text[..at], &text[at + "ByteLevel".len()..]);
    let p = file_with(&d, "tokenizer.json", broken.as_bytes());
    let Err(err) = echo_data::Tokenizer::from_dir(d.path()) else { panic!("a broken tokenizer.json loaded") };
    let msg = err.to_string();
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("not valid JSON") && msg.contains("control character"), "{msg}");
}
