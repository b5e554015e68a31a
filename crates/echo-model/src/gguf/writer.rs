//! A minimal GGUF v3 writer: metadata of any type, tensors encoded in their ggml type. The
//! converter built on it is [`super::export`]; tests use it directly to build files.

use super::dequant::{quantize, GgmlType};
use super::reader::{Value, GGUF_MAGIC};
use crate::weights::write_atomic;
use crate::Result;
use std::path::Path;

pub struct GgufWriter {
    pub alignment: u64,
    pub version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { alignment: 32, version: 3, metadata: Vec::new(), tensors: Vec::new() }
    }

    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        self.metadata.push((key.into(), v));
        self
    }
    pub fn u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.kv(key, Value::U32(v))
    }
    pub fn f32(&mut self, key: &str, v: f32) -> &mut Self {
        self.kv(key, Value::F32(v))
    }
    pub fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.kv(key, Value::String(v.into()))
    }
    pub fn strs(&mut self, key: &str, v: &[&str]) -> &mut Self {
        self.kv(key, Value::Array(8, v.iter().map(|s| Value::String((*s).into())).collect()))
    }
    pub fn i32s(&mut self, key: &str, v: &[i32]) -> &mut Self {
        self.kv(key, Value::Array(5, v.iter().map(|&x| Value::I32(x)).collect()))
    }

    /// Adds a tensor from raw bytes already in `ty`'s encoding. `ne` is ggml order
    /// (innermost first).
    pub fn raw_tensor(&mut self, name: &str, ne: &[u64], ty: GgmlType, bytes: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), ne.to_vec(), ty, bytes));
        self
    }

    /// Adds a tensor given in PyTorch order (`shape`, row-major `data`), quantised to `ty`.
    pub fn tensor(&mut self, name: &str, shape: &[usize], data: &[f32], ty: GgmlType) -> &mut Self {
        let ne: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let bytes = quantize(ty, data);
        self.raw_tensor(name, &ne, ty, bytes)
    }

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => Self::put_str(out, s),
            Value::Array(t, items) => {
                out.extend(t.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for it in items {
                    Self::put_value(out, it);
                }
            }
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
        }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let a = self.alignment as usize;
        let pad = |out: &mut Vec<u8>| out.resize(out.len().div_ceil(a) * a, 0);
        let mut out = Vec::new();
        out.extend(GGUF_MAGIC);
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            Self::put_str(&mut out, k);
            out.extend(v.type_code().to_le_bytes());
            Self::put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, ne, ty, bytes) in &self.tensors {
            Self::put_str(&mut out, name);
            out.extend((ne.len() as u32).to_le_bytes());
            for d in ne {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.code().to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + bytes.len() as u64).div_ceil(self.alignment) * self.alignment;
        }
        pad(&mut out);
        for (_, _, _, bytes) in &self.tensors {
            out.extend(bytes);
            pad(&mut out);
        }
        out
    }

    /// Writes the file atomically (temporary name, fsync, rename); returns its size in bytes.
    pub fn write(&self, path: &Path) -> Result<u64> {
        let bytes = self.to_bytes();
        write_atomic(path, &bytes)?;
        Ok(bytes.len() as u64)
    }
}
