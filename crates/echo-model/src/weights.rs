//! Safetensors files, memory-mapped: a single `model.safetensors` or a sharded set behind
//! `model.safetensors.index.json`. Every header is validated when the file is opened (offsets
//! inside the file, no overlaps); a tensor's bytes are converted to f32 straight from the map,
//! so a weight is copied exactly once. Also writes safetensors files atomically.

use crate::{Error, Result};
use echo_tensor::Tensor;
use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

struct Mapped {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    meta: Metadata,
}

/// An open set of safetensors files, looked up by tensor name.
pub struct WeightFiles {
    files: Vec<Mapped>,
    owner: HashMap<String, usize>,
}

fn open_mapped(path: &Path) -> Result<Mapped> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not
    // truncated by another process while we hold it.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::SafeTensors { path: path.to_path_buf(), msg };
    if mmap.len() < 8 {
        return Err(bad(format!("file is {} bytes, shorter than the 8-byte header length", mmap.len())));
    }
    SafeTensors::deserialize(&mmap).map_err(|e| bad(e.to_string()))?;
    let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| bad(e.to_string()))?;
    Ok(Mapped { path: path.to_path_buf(), mmap, data_start: 8 + n, meta })
}

impl WeightFiles {
    /// Opens the weights of a HF model folder.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        if index.exists() {
            return Self::open_index(&index);
        }
        let single = dir.join("model.safetensors");
        if !single.exists() {
            return Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model folder",
                ),
            ));
        }
        Self::open_files(&[single])
    }

    /// Opens a sharded set through its index (`{"weight_map": {tensor: shard file}}`).
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::json(index, &e))?;
        let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Config {
            path: index.to_path_buf(),
            key: "weight_map".into(),
            msg: "missing or not an object".into(),
        })?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<String> = Vec::new();
        let mut wanted: BTreeMap<String, String> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| Error::Config {
                path: index.to_path_buf(),
                key: format!("weight_map.{tensor}"),
                msg: "shard name must be a string".into(),
            })?;
            if !shards.iter().any(|s| s == shard) {
                if !dir.join(shard).exists() {
                    return Err(Error::MissingShard {
                        index: index.to_path_buf(),
                        shard: shard.into(),
                        tensor: tensor.clone(),
                    });
                }
                shards.push(shard.to_string());
            }
            wanted.insert(tensor.clone(), shard.to_string());
        }
        let paths: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        let set = Self::open_files(&paths)?;
        for (tensor, shard) in wanted {
            match set.owner.get(&tensor) {
                Some(&i) if set.files[i].path == dir.join(&shard) => {}
                _ => {
                    return Err(Error::MissingTensor {
                        path: dir.join(&shard),
                        name: tensor,
                        hint: format!(" (the index {} says it is in this shard)", index.display()),
                    })
                }
            }
        }
        Ok(set)
    }

    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut owner = HashMap::new();
        for p in paths {
            let m = open_mapped(p)?;
            for name in m.meta.tensors().keys() {
                owner.insert(name.clone(), files.len());
            }
            files.push(m);
        }
        Ok(WeightFiles { files, owner })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.owner.contains_key(name)
    }

    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.owner.keys().map(|s| s.as_str()).collect();
        v.sort();
        v
    }

    fn locate(&self, name: &str) -> Result<(&Mapped, Dtype, Vec<usize>, &[u8])> {
        let Some(&i) = self.owner.get(name) else {
            let path = self.files.first().map(|f| f.path.clone()).unwrap_or_default();
            let hint =
                if self.files.len() > 1 { format!(" in any of {} shards", self.files.len()) } else { String::new() };
            return Err(Error::MissingTensor { path, name: name.into(), hint });
        };
        let f = &self.files[i];
        let info = f.meta.info(name).expect("owner map and metadata agree");
        let (a, b) = info.data_offsets;
        Ok((f, info.dtype, info.shape.clone(), &f.mmap[f.data_start + a..f.data_start + b]))
    }

    /// Dtype and shape of a tensor, without reading it.
    pub fn info(&self, name: &str) -> Result<(String, Vec<usize>)> {
        let (_, dtype, shape, _) = self.locate(name)?;
        Ok((format!("{dtype:?}"), shape))
    }

    /// A floating-point tensor as f32; `expected` shape is checked when given.
    pub fn f32_tensor(&self, name: &str, expected: Option<&[usize]>) -> Result<Tensor> {
        let (f, dtype, shape, bytes) = self.locate(name)?;
        if let Some(e) = expected {
            if e != shape.as_slice() {
                return Err(Error::TensorShape {
                    path: f.path.clone(),
                    name: name.into(),
                    expected: e.to_vec(),
                    got: shape,
                });
            }
        }
        let data: Vec<f32> = match dtype {
            Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::BF16 => bytes.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::F16 => bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => {
                return Err(Error::TensorDType {
                    path: f.path.clone(),
                    name: name.into(),
                    expected: "F32, BF16 or F16".into(),
                    got: format!("{other:?}"),
                })
            }
        };
        Ok(Tensor::new(data, shape)?)
    }

    /// [`WeightFiles::f32_tensor`] refusing NaN and infinities ([`check_finite`]): how model
    /// weights and adapters are loaded. A bf16/f16 NaN or infinity stays one in f32, so the one
    /// pass over the converted values covers every stored dtype.
    pub fn finite_f32_tensor(&self, name: &str, expected: Option<&[usize]>) -> Result<Tensor> {
        let t = self.f32_tensor(name, expected)?;
        let (f, ..) = self.locate(name)?;
        check_finite(&f.path, name, t.dims(), t.as_f32())?;
        Ok(t)
    }

    /// The file holding `name`.
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.owner.get(name).map(|&i| self.files[i].path.as_path())
    }

    /// An integer tensor (I64, or I32 widened) with its shape.
    pub fn i64_tensor(&self, name: &str) -> Result<(Vec<i64>, Vec<usize>)> {
        let (f, dtype, shape, bytes) = self.locate(name)?;
        let data = match dtype {
            Dtype::I64 => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            Dtype::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
            other => {
                return Err(Error::TensorDType {
                    path: f.path.clone(),
                    name: name.into(),
                    expected: "I64 or I32".into(),
                    got: format!("{other:?}"),
                })
            }
        };
        Ok((data, shape))
    }
}

/// Errors with the first NaN or infinity of `data` (a tensor `name` of `shape` from `path`),
/// naming its index in `shape` and its value. One pass, no allocation.
pub fn check_finite(path: &Path, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
    let Some(flat) = data.iter().position(|x| !x.is_finite()) else { return Ok(()) };
    let mut index = vec![0; shape.len()];
    let mut rest = flat;
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        *slot = rest % dim.max(1);
        rest /= dim.max(1);
    }
    if shape.is_empty() {
        index.push(flat);
    }
    Err(Error::NonFinite {
        path: path.to_path_buf(),
        name: name.into(),
        shape: shape.to_vec(),
        index,
        value: data[flat],
    })
}

/// A tensor to be written.
pub enum SaveTensor {
    F32(Vec<f32>, Vec<usize>),
    Bf16(Vec<half::bf16>, Vec<usize>),
    I64(Vec<i64>, Vec<usize>),
}

/// The floating-point type a file is written in: f32 (exact, what training keeps), or bf16
/// (half the size, rounded to nearest even: how adapters are usually shared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SaveDtype {
    #[default]
    F32,
    Bf16,
}

impl SaveTensor {
    pub fn from_tensor(t: &Tensor) -> Self {
        SaveTensor::F32(t.to_vec_f32(), t.dims().to_vec())
    }

    /// This tensor in `dtype` (integer tensors stay as they are).
    pub fn into_dtype(self, dtype: SaveDtype) -> Self {
        match (self, dtype) {
            (SaveTensor::F32(v, s), SaveDtype::Bf16) => {
                SaveTensor::Bf16(v.into_iter().map(half::bf16::from_f32).collect(), s)
            }
            (t, _) => t,
        }
    }

    fn bytes(&self) -> (Dtype, Vec<usize>, Vec<u8>) {
        match self {
            SaveTensor::F32(v, s) => (Dtype::F32, s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            SaveTensor::Bf16(v, s) => (Dtype::BF16, s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            SaveTensor::I64(v, s) => (Dtype::I64, s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
}

/// Writes a safetensors file atomically: a temporary file in the same folder, synced, then
/// renamed over `path`, so a crash never leaves a half-written file where a good one was.
pub fn save_safetensors(
    path: &Path,
    tensors: Vec<(String, SaveTensor)>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let prepared: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, t)| {
            let (d, s, b) = t.bytes();
            (n, d, s, b)
        })
        .collect();
    let views = prepared
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::SafeTensors { path: path.to_path_buf(), msg: e.to_string() })?;
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| Error::SafeTensors { path: path.to_path_buf(), msg: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// [`echo_io::write_atomic`] with this crate's error, naming the path.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    echo_io::write_atomic(path, bytes).map_err(|e| Error::io(path, e))
}
