//! Parsing a GGUF file (versions 2 and 3, little-endian): header, metadata key/values of every
//! type (arrays included), tensor infos, and the aligned data section. The file is
//! memory-mapped; nothing is trusted: every length, count and offset is checked against the
//! file size before it is used, so a truncated or corrupt file is an error naming the file
//! and the byte offset, never a panic or a huge allocation.

use super::dequant::GgmlType;
use crate::{Error, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// `general.alignment` when the file does not say.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

/// A metadata value. Integer widths are kept so a writer can round-trip them.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// An array of one element type (`elem_type` is kept for empty arrays and for writing).
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    /// The GGUF type code of this value.
    pub fn type_code(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// Any integer type as `i128` (wide enough for every GGUF integer).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(v) => v as i128,
            Value::I8(v) => v as i128,
            Value::U16(v) => v as i128,
            Value::I16(v) => v as i128,
            Value::U32(v) => v as i128,
            Value::I32(v) => v as i128,
            Value::U64(v) => v as i128,
            Value::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// A non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_int().and_then(|v| u64::try_from(v).ok())
    }

    /// Any number (integers widened).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// A short description for error messages (`u32 7`, `array of 3 string`, ...).
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) if s.len() > 40 => {
                format!("string {:?}...", &s[..s.char_indices().nth(40).map_or(s.len(), |(i, _)| i)])
            }
            Value::String(s) => format!("string {s:?}"),
            Value::Array(t, v) => format!("array of {} {}", v.len(), type_name(*t)),
            other => format!("{} {other:?}", type_name(other.type_code())),
        }
    }
}

/// The name of a GGUF metadata type code.
pub fn type_name(code: u32) -> &'static str {
    match code {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// One tensor's entry in the GGUF header.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml's `ne`: innermost (contiguous) dimension first. A PyTorch `[out, in]` weight has
    /// `ne = [in, out]`.
    pub ne: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.ne.iter().product()
    }
    /// The PyTorch-order shape (outermost first).
    pub fn torch_shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&d| d as usize).collect()
    }
    /// Bytes of the tensor's data (numel is a multiple of the block size, checked on open).
    pub fn byte_len(&self) -> u64 {
        let (block, bytes) = self.ggml_type.block();
        self.numel() / block as u64 * bytes as u64
    }
}

/// An open GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_start: u64,
    mmap: Mmap,
}

/// A GGUF format error naming the file.
pub(crate) fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::io(
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a valid GGUF file: {}", msg.into())),
    )
}

struct Cursor<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(bad(
                self.path,
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, but the file has {} bytes",
                    self.pos,
                    self.data.len()
                ),
            )),
        }
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("take returned N bytes"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }
    /// A count that must fit the rest of the file when each item takes at least `min_size` bytes.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n.saturating_mul(min_size as u64) > self.remaining() as u64 {
            return Err(bad(
                self.path,
                format!(
                    "truncated or corrupt: {what} = {n} at offset {at}, but only {} bytes follow",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(&format!("length of {what}"), 1)?;
        let at = self.pos;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| bad(self.path, format!("{what} at offset {at} is not valid UTF-8")))
    }
    fn value(&mut self, code: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match code {
            0 => Value::U8(self.arr::<1>(key)?[0]),
            1 => Value::I8(self.arr::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => {
                let at = self.pos;
                match self.arr::<1>(key)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(bad(
                            self.path,
                            format!("metadata `{key}`: bool byte {b} at offset {at} is neither 0 nor 1"),
                        ))
                    }
                }
            }
            8 => Value::String(self.string(&format!("metadata `{key}`"))?),
            9 => {
                if depth > 0 {
                    // ggml itself refuses nested arrays; so do we (they would also let a
                    // crafted file recurse without bound).
                    return Err(bad(self.path, format!("metadata `{key}`: nested arrays are not supported")));
                }
                let elem = self.u32(key)?;
                let min = elem_min_size(elem)
                    .ok_or_else(|| bad(self.path, format!("metadata `{key}`: unknown array element type {elem}")))?;
                let n = self.count(&format!("element count of `{key}`"), min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(key)?)),
            other => return Err(bad(self.path, format!("metadata `{key}`: unknown value type {other}"))),
        })
    }
}

/// The fewest bytes one value of a type takes (strings: their 8-byte length).
fn elem_min_size(code: u32) -> Option<usize> {
    Some(match code {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10 | 11 | 12 => 8,
        9 => 12,
        _ => return None,
    })
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: read-only map; like every mmap-based loader we assume nobody truncates the
        // file while we hold it.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, mmap)
    }

    fn parse(path: &Path, mmap: Mmap) -> Result<Self> {
        let mut c = Cursor { path, data: &mmap, pos: 0 };
        let magic: [u8; 4] = c.arr("the magic number")?;
        if magic != GGUF_MAGIC {
            return Err(bad(path, format!("bad magic {:?} (expected \"GGUF\")", String::from_utf8_lossy(&magic))));
        }
        let version = c.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(Error::Unsupported {
                path: path.to_path_buf(),
                what: format!("GGUF version {version} (supported: 2 and 3; version 1 files predate 2023-08 and must be re-converted)"),
            });
        }
        // Each tensor info takes at least 8 (name len) + 4 + 4 + 8 bytes; each key/value 8 + 4 + 1.
        let n_tensors = c.count("tensor count", 24)?;
        let n_kv = c.count("metadata count", 13)?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let code = c.u32(&format!("type of metadata `{key}`"))?;
            let v = c.value(code, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(bad(path, format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(bad(path, format!("general.alignment is {}, expected a power of two", v.describe()))),
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("name of tensor #{i}"))?;
            let n_dims = c.u32(&format!("dimension count of `{name}`"))? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad(path, format!("tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(c.u64(&format!("dimensions of `{name}`"))?);
            }
            let code = c.u32(&format!("type of `{name}`"))?;
            let ggml_type = GgmlType::from_code(code)
                .ok_or_else(|| bad(path, format!("tensor `{name}` has unknown GGML tensor type {code}")))?;
            let offset = c.u64(&format!("data offset of `{name}`"))?;
            let info = TensorInfo { name, ne, ggml_type, offset };
            let numel = info.ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let (block, block_bytes) = ggml_type.block();
            let block = block as u64;
            // The byte length must fit too: 2^62 f32 elements pass the element count and
            // overflow it (found by the `gguf` fuzz target).
            let bytes = numel.and_then(|n| (n / block).checked_mul(block_bytes as u64));
            match (numel, bytes) {
                (Some(n), Some(_)) if n > 0 && info.ne[0].is_multiple_of(block) => {}
                _ => {
                    return Err(bad(
                        path,
                        format!(
                            "tensor `{}` has dimensions {:?}: empty, overflowing, or a row not a multiple of {}'s block of {block}",
                            info.name,
                            info.ne,
                            ggml_type.name()
                        ),
                    ))
                }
            }
            if offset % alignment != 0 {
                return Err(bad(
                    path,
                    format!(
                        "tensor `{}` data offset {offset} is not a multiple of the alignment {alignment}",
                        info.name
                    ),
                ));
            }
            tensors.push(info);
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;
        let mut names = std::collections::HashSet::new();
        for t in &tensors {
            if !names.insert(t.name.as_str()) {
                return Err(bad(path, format!("tensor `{}` appears twice", t.name)));
            }
            let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(t.byte_len()));
            if end.is_none_or(|e| e > file_len) {
                return Err(bad(
                    path,
                    format!(
                        "truncated: tensor `{}` ({} bytes at data offset {}) ends past the end of the file ({file_len} bytes, data section at {data_start})",
                        t.name,
                        t.byte_len(),
                        t.offset
                    ),
                ));
            }
        }
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, alignment, data_start, mmap })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds checked on open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_start + t.offset) as usize;
        &self.mmap[start..start + t.byte_len() as usize]
    }

    /// A tensor dequantised to f32, in ggml order (row-major with `ne[0]` contiguous, i.e. the
    /// PyTorch shape [`TensorInfo::torch_shape`]).
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        super::dequant::dequantize(t.ggml_type, self.tensor_bytes(t), t.numel() as usize).map_err(|what| {
            Error::Unsupported { path: self.path.clone(), what: format!("tensor `{}`: {what}", t.name) }
        })
    }

    // Typed metadata accessors: each error names the file and the key.

    pub fn req(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.key_err(key, "missing"))
    }
    pub fn key_err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::Config { path: self.path.clone(), key: key.into(), msg: msg.into() }
    }
    pub fn u64_key(&self, key: &str) -> Result<u64> {
        let v = self.req(key)?;
        v.as_u64().ok_or_else(|| self.key_err(key, format!("expected a non-negative integer, got {}", v.describe())))
    }
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|_| self.u64_key(key)).transpose()
    }
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.key_err(key, format!("expected a number, got {}", v.describe()))),
        }
    }
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.key_err(key, format!("expected a string, got {}", v.describe()))),
        }
    }
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_bool().map(Some).ok_or_else(|| self.key_err(key, format!("expected a bool, got {}", v.describe())))
            }
        }
    }
    /// An array of strings.
    pub fn str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.req(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.key_err(key, format!("expected an array of strings, got {}", v.describe())))?;
        items
            .iter()
            .map(|x| x.as_str().ok_or_else(|| self.key_err(key, format!("expected strings, found {}", x.describe()))))
            .collect()
    }
    /// An array of integers.
    pub fn int_array(&self, key: &str) -> Result<Vec<i128>> {
        let v = self.req(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.key_err(key, format!("expected an array of integers, got {}", v.describe())))?;
        items
            .iter()
            .map(|x| x.as_int().ok_or_else(|| self.key_err(key, format!("expected integers, found {}", x.describe()))))
            .collect()
    }
}
