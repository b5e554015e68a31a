//! LLM-Adapters records and a streaming reader for them.
//!
//! Two layouts are accepted, told apart by the first non-blank byte of the file:
//! a JSON array of objects (`[ {...}, {...} ]`, the LLM-Adapters files) or JSON Lines (objects
//! separated by white space, normally one per line). The reader never holds more than one
//! record's bytes: it scans the top level itself (tracking strings and nesting), hands each
//! object to `serde_json`, and maps serde's line/column back to the file's, so every error
//! points at the real place. Bytes are checked to be UTF-8 record by record, so a bad byte is
//! reported with its offset, line and column rather than as a generic decode failure.
//!
//! Fields: `instruction` and `output` are required non-empty strings; `input` is optional
//! (absent or null = "", as in JSONL sets without inputs); `answer` is optional (the evaluation label of the commonsense sets). Other
//! fields are ignored.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::chat::Message;
use crate::error::{Error, Result};
use crate::template::Format;

/// One instruction-tuning record in the LLM-Adapters format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// The raw shape as read: every field optional, so a missing one gets our own error message
/// (with the record's index and position) instead of serde's.
#[derive(Deserialize)]
struct RawRecord {
    instruction: Option<String>,
    input: Option<String>,
    output: Option<String>,
    answer: Option<String>,
}

/// How the file lays out its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[ {...}, {...} ]`
    Array,
    /// JSON Lines: `{...}\n{...}\n`
    Lines,
}

/// Reads every record of a file (JSON array or JSON Lines). An empty file, or one with no
/// records, is an error: a dataset with nothing in it is never what a run wants.
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<Record>> {
    let path = path.as_ref();
    let mut out = Vec::new();
    for r in RecordStream::open(path)? {
        out.push(r?);
    }
    if out.is_empty() {
        return Err(Error::EmptyDataset { path: path.to_path_buf(), detail: "the file holds no records".into() });
    }
    Ok(out)
}

/// Writes records as a pretty JSON array (the LLM-Adapters layout), atomically.
pub fn write_records_json(path: impl AsRef<Path>, records: &[Record]) -> Result<()> {
    let path = path.as_ref();
    let bytes = serde_json::to_vec_pretty(records).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        record: None,
        msg: e.to_string(),
    })?;
    crate::cache::write_atomic(path, &bytes)
}

/// A streaming reader: yields records one by one, holding one record's bytes at a time.
/// After the first error it yields nothing more.
pub struct RecordStream<R: BufRead = BufReader<File>> {
    path: PathBuf,
    sc: Scanner<R>,
    layout: Option<Layout>,
    index: usize,
    done: bool,
    buf: Vec<u8>,
}

impl RecordStream<BufReader<File>> {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
        Ok(Self::from_reader(path, BufReader::with_capacity(1 << 16, f)))
    }
}

impl<R: BufRead> RecordStream<R> {
    /// Reads from any buffered reader; `path` is only used to name errors.
    pub fn from_reader(path: impl AsRef<Path>, reader: R) -> Self {
        RecordStream {
            path: path.as_ref().to_path_buf(),
            sc: Scanner::new(reader),
            layout: None,
            index: 0,
            done: false,
            buf: Vec::new(),
        }
    }

    /// Bytes consumed so far (drives progress bars).
    pub fn bytes_read(&self) -> u64 {
        self.sc.offset
    }

    /// Records yielded so far.
    pub fn records_read(&self) -> usize {
        self.index
    }

    /// The layout, once the first byte has been seen.
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    fn err_here(&self, msg: String) -> Error {
        Error::Json { path: self.path.clone(), line: self.sc.line, column: self.sc.col, record: None, msg }
    }

    fn io_err(&self, e: std::io::Error) -> Error {
        Error::io(&self.path, "read failed", e)
    }

    /// Advances to the next record's `{`, or returns None at the end of the data.
    fn seek_record(&mut self) -> Result<Option<()>> {
        let first = self.layout.is_none();
        if first {
            self.sc.skip_bom().map_err(|e| self.io_err(e))?;
            self.sc.skip_ws().map_err(|e| self.io_err(e))?;
            match self.sc.peek().map_err(|e| self.io_err(e))? {
                None => {
                    return Err(Error::EmptyDataset { path: self.path.clone(), detail: "the file is empty".into() })
                }
                Some(b'[') => {
                    self.sc.bump().map_err(|e| self.io_err(e))?;
                    self.layout = Some(Layout::Array);
                    self.sc.skip_ws().map_err(|e| self.io_err(e))?;
                    if self.sc.peek().map_err(|e| self.io_err(e))? == Some(b']') {
                        self.sc.bump().map_err(|e| self.io_err(e))?;
                        self.expect_eof()?;
                        return Ok(None);
                    }
                }
                Some(b'{') => self.layout = Some(Layout::Lines),
                Some(b) => {
                    return Err(self.err_here(format!(
                        "expected a JSON array of records ('[') or JSON Lines (one object per \
                         line, starting with '{{'), found {}",
                        show_byte(b)
                    )))
                }
            }
        }
        let layout = self.layout.unwrap_or(Layout::Lines);
        if !first {
            self.sc.skip_ws().map_err(|e| self.io_err(e))?;
            if layout == Layout::Array {
                match self.sc.peek().map_err(|e| self.io_err(e))? {
                    Some(b',') => {
                        self.sc.bump().map_err(|e| self.io_err(e))?;
                        self.sc.skip_ws().map_err(|e| self.io_err(e))?;
                    }
                    Some(b']') => {
                        self.sc.bump().map_err(|e| self.io_err(e))?;
                        self.expect_eof()?;
                        return Ok(None);
                    }
                    Some(b) => {
                        return Err(self.err_here(format!(
                            "after record [{}]: expected ',' or ']', found {}",
                            self.index - 1,
                            show_byte(b)
                        )))
                    }
                    None => {
                        return Err(self.err_here(format!(
                            "unexpected end of file after record [{}]: expected ',' or ']'",
                            self.index - 1
                        )))
                    }
                }
            } else if self.sc.peek().map_err(|e| self.io_err(e))?.is_none() {
                return Ok(None);
            }
        }
        match self.sc.peek().map_err(|e| self.io_err(e))? {
            Some(b'{') => Ok(Some(())),
            Some(b) => {
                Err(self.err_here(format!("expected '{{' starting record [{}], found {}", self.index, show_byte(b))))
            }
            None => {
                Err(self.err_here(format!("unexpected end of file: expected '{{' starting record [{}]", self.index)))
            }
        }
    }

    fn expect_eof(&mut self) -> Result<()> {
        self.sc.skip_ws().map_err(|e| self.io_err(e))?;
        match self.sc.peek().map_err(|e| self.io_err(e))? {
            None => Ok(()),
            Some(b) => Err(self.err_here(format!("trailing characters after the closing ']': found {}", show_byte(b)))),
        }
    }

    /// Reads the next record's bytes into `buf` (checked to be UTF-8); returns its index and
    /// where it starts.
    fn read_raw(&mut self) -> Result<Option<(usize, u64, u64)>> {
        if self.seek_record()?.is_none() {
            return Ok(None);
        }
        let (start_line, start_col, start_off) = (self.sc.line, self.sc.col, self.sc.offset);
        let index = self.index;
        self.buf.clear();
        // Copy bytes until the object's closing brace, tracking strings so that braces inside
        // them do not count.
        let (mut depth, mut in_str, mut esc) = (0usize, false, false);
        loop {
            let b = match self.sc.bump().map_err(|e| self.io_err(e))? {
                Some(b) => b,
                None => {
                    return Err(self.err_here(format!(
                        "record [{index}]: unexpected end of file inside the record that starts \
                         at line {start_line} column {start_col}{}",
                        if in_str { " (unterminated string)" } else { " (missing '}')" }
                    )))
                }
            };
            self.buf.push(b);
            if in_str {
                if esc {
                    esc = false;
                } else if b == b'\\' {
                    esc = true;
                } else if b == b'"' {
                    in_str = false;
                }
                continue;
            }
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        if let Err(e) = std::str::from_utf8(&self.buf) {
            let bad = e.valid_up_to();
            let (line, column) = advance_pos(start_line, start_col, &self.buf[..bad]);
            return Err(Error::InvalidUtf8 { path: self.path.clone(), offset: start_off + bad as u64, line, column });
        }
        Ok(Some((index, start_line, start_col)))
    }

    /// A serde error inside the record that starts at (line, col), mapped to the file's place.
    fn json_err(&self, e: serde_json::Error, index: usize, start_line: u64, start_col: u64) -> Error {
        let (line, column) = if e.line() <= 1 {
            (start_line, start_col + e.column().saturating_sub(1) as u64)
        } else {
            (start_line + e.line() as u64 - 1, e.column() as u64)
        };
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let msg = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        Error::Json { path: self.path.clone(), line, column, record: Some(index), msg }
    }

    /// When a record lacks the instruction fields, a record of another known shape gets a
    /// message naming the template it fits.
    fn other_shape(&self, index: usize, line: u64, column: u64) -> Option<Error> {
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&self.buf).ok()?;
        let fits = shape_of(&map)?;
        (fits != "alpaca").then(|| Error::Shape {
            path: self.path.clone(),
            record: index,
            line,
            column,
            msg: shape_msg(
                "alpaca",
                Format::Instruction.fields(),
                &map,
                &format!(" (a `{fits}` record: set [data] template = \"{fits}\")"),
            ),
        })
    }

    fn read_one(&mut self) -> Result<Option<Record>> {
        let Some((index, start_line, start_col)) = self.read_raw()? else {
            return Ok(None);
        };
        let raw: RawRecord =
            serde_json::from_slice(&self.buf).map_err(|e| self.json_err(e, index, start_line, start_col))?;
        let missing = |field| Error::MissingField {
            path: self.path.clone(),
            record: index,
            line: start_line,
            column: start_col,
            field,
        };
        let empty = |field| Error::EmptyField {
            path: self.path.clone(),
            record: index,
            line: start_line,
            column: start_col,
            field,
        };
        if raw.instruction.is_none() {
            if let Some(e) = self.other_shape(index, start_line, start_col) {
                return Err(e);
            }
        }
        let instruction = raw.instruction.ok_or_else(|| missing("instruction"))?;
        let output = raw.output.ok_or_else(|| missing("output"))?;
        if instruction.is_empty() {
            return Err(empty("instruction"));
        }
        if output.is_empty() {
            return Err(empty("output"));
        }
        self.index += 1;
        Ok(Some(Record { instruction, input: raw.input.unwrap_or_default(), output, answer: raw.answer }))
    }
}

impl<R: BufRead> Iterator for RecordStream<R> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let res = self.read_one();
        self.fuse(res)
    }
}

impl<R: BufRead> RecordStream<R> {
    /// The next record in the shape `format` reads (LLM-Adapters records go through the same
    /// checks as the [`Record`] iterator). A record of another shape is an error naming the
    /// record, the fields expected and the fields found. After an error, yields nothing more.
    pub fn next_sample(&mut self, format: &Format) -> Option<Result<Sample>> {
        if self.done {
            return None;
        }
        let res = if *format == Format::Instruction {
            self.read_one().map(|r| r.map(Sample::Instruction))
        } else {
            self.read_sample(format)
        };
        self.fuse(res)
    }

    /// One read's outcome as an iterator item; the end of the file or an error ends the stream.
    fn fuse<T>(&mut self, res: Result<Option<T>>) -> Option<Result<T>> {
        let item = res.transpose();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }

    fn read_sample(&mut self, format: &Format) -> Result<Option<Sample>> {
        let Some((index, line, column)) = self.read_raw()? else {
            return Ok(None);
        };
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&self.buf).map_err(|e| self.json_err(e, index, line, column))?;
        let template = match format {
            Format::Completion => "completion",
            Format::Plain => "plain",
            Format::Chat(_) => "chat",
            Format::Instruction => "alpaca",
        };
        let shape_err = |map: &serde_json::Map<String, serde_json::Value>, why: &str| {
            let hint = match shape_of(map) {
                Some(fits) if fits != template => format!(" (a `{fits}` record: set [data] template = \"{fits}\")"),
                _ => why.to_string(),
            };
            Error::Shape {
                path: self.path.clone(),
                record: index,
                line,
                column,
                msg: shape_msg(template, format.fields(), map, &hint),
            }
        };
        let string = |key: &str, why: &str| -> Result<String> {
            match map.get(key) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                _ => Err(shape_err(&map, why)),
            }
        };
        let sample = match format {
            Format::Completion => {
                let prompt = string("prompt", ": `prompt` must be a string")?;
                let completion = string("completion", ": `completion` must be a string")?;
                if completion.is_empty() {
                    return Err(self.empty(index, line, column, "completion"));
                }
                Sample::Completion { prompt, completion }
            }
            Format::Plain => {
                let text = string("text", ": `text` must be a string")?;
                if text.is_empty() {
                    return Err(self.empty(index, line, column, "text"));
                }
                Sample::Text(text)
            }
            Format::Chat(_) => {
                let Some(serde_json::Value::Array(list)) = map.get("messages") else {
                    return Err(shape_err(&map, ": `messages` must be a list of {role, content} objects"));
                };
                let mut messages = Vec::with_capacity(list.len());
                for (k, m) in list.iter().enumerate() {
                    let role = m.get("role").and_then(|v| v.as_str());
                    let content = m.get("content").and_then(|v| v.as_str());
                    match (role, content) {
                        (Some(role @ ("system" | "user" | "assistant")), Some(content)) => {
                            messages.push(Message::new(role, content))
                        }
                        _ => {
                            return Err(shape_err(
                                &map,
                                &format!(
                                    ": messages[{k}] must be {{\"role\": \"system\"|\"user\"|\"assistant\", \
                                     \"content\": a string}}, found {}",
                                    short_json(m)
                                ),
                            ))
                        }
                    }
                }
                if !messages.iter().any(|m| m.role == "assistant") {
                    return Err(shape_err(&map, ": no assistant message, so nothing would be learned"));
                }
                Sample::Chat(messages)
            }
            Format::Instruction => unreachable!("instruction records are read by read_one"),
        };
        self.index += 1;
        Ok(Some(sample))
    }

    fn empty(&self, record: usize, line: u64, column: u64, field: &'static str) -> Error {
        Error::EmptyField { path: self.path.clone(), record, line, column, field }
    }
}

/// One record of any format a template reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sample {
    Instruction(Record),
    Completion { prompt: String, completion: String },
    Text(String),
    Chat(Vec<Message>),
}

impl Sample {
    /// Bytes of the record's text (what the size limit is checked on before tokenising).
    pub fn text_bytes(&self) -> usize {
        match self {
            Sample::Instruction(r) => r.instruction.len() + r.input.len() + r.output.len(),
            Sample::Completion { prompt, completion } => prompt.len() + completion.len(),
            Sample::Text(t) => t.len(),
            Sample::Chat(m) => m.iter().map(|m| m.content.len() + m.role.len()).sum(),
        }
    }
}

/// Which template a record's fields fit, if any.
fn shape_of(map: &serde_json::Map<String, serde_json::Value>) -> Option<&'static str> {
    if map.contains_key("messages") {
        Some("chat")
    } else if map.contains_key("instruction") && map.contains_key("output") {
        Some("alpaca")
    } else if map.contains_key("prompt") && map.contains_key("completion") {
        Some("completion")
    } else if map.contains_key("text") {
        Some("plain")
    } else {
        None
    }
}

fn shape_msg(template: &str, expected: &str, map: &serde_json::Map<String, serde_json::Value>, hint: &str) -> String {
    format!("template `{template}` expects {expected}, found {}{hint}", field_list(map))
}

fn field_list(map: &serde_json::Map<String, serde_json::Value>) -> String {
    if map.is_empty() {
        return "no fields".into();
    }
    let names: Vec<String> = map.keys().take(8).map(|k| format!("`{k}`")).collect();
    let more = if map.len() > 8 { format!(" and {} more", map.len() - 8) } else { String::new() };
    format!("fields {}{more}", names.join(", "))
}

fn short_json(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() <= 80 {
        return s;
    }
    let mut end = 77;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn show_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("byte 0x{b:02X}")
    }
}

/// Line and column after reading `bytes` from (line, col).
fn advance_pos(mut line: u64, mut col: u64, bytes: &[u8]) -> (u64, u64) {
    for &b in bytes {
        if b == b'\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
    }
    (line, col)
}

/// Byte-at-a-time reader over a `BufRead` that keeps offset, line and column.
struct Scanner<R> {
    r: R,
    offset: u64,
    line: u64,
    col: u64,
}

impl<R: BufRead> Scanner<R> {
    fn new(r: R) -> Self {
        Scanner { r, offset: 0, line: 1, col: 1 }
    }

    fn peek(&mut self) -> std::io::Result<Option<u8>> {
        loop {
            match self.r.fill_buf() {
                Ok(b) => return Ok(b.first().copied()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn bump(&mut self) -> std::io::Result<Option<u8>> {
        let b = self.peek()?;
        if let Some(b) = b {
            self.r.consume(1);
            self.offset += 1;
            if b == b'\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        Ok(b)
    }

    fn skip_ws(&mut self) -> std::io::Result<()> {
        while let Some(b) = self.peek()? {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.bump()?;
            } else {
                break;
            }
        }
        Ok(())
    }

    /// A UTF-8 byte-order mark is not JSON, but editors write it; skip it (line 1 column 1
    /// stays where a reader expects it).
    fn skip_bom(&mut self) -> std::io::Result<()> {
        let buf = self.r.fill_buf()?;
        if buf.starts_with(&[0xEF, 0xBB, 0xBF]) {
            self.r.consume(3);
            self.offset += 3;
        }
        Ok(())
    }
}

/// SHA-256 of a file's bytes, read in blocks.
pub(crate) fn hash_file(path: &Path) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).map_err(|e| Error::io(path, "cannot open", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, "read failed", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}
