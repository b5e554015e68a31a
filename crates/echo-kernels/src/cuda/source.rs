//! The kernel sources, the one list of NVRTC options, NVRTC compilation, and the on-disk
//! cubin cache.
//!
//! Every `kernels/*.cu` file is embedded with `include_str!`, so a binary carries its
//! kernels. On first use a file is compiled by NVRTC for the device's architecture straight
//! to a cubin (`--gpu-architecture=sm_XY`), which is cached on disk under a key made of the
//! source's SHA-256, the options, the architecture and the NVRTC version: a changed kernel,
//! option, GPU or toolkit compiles afresh, anything else loads in milliseconds.
//! `cargo xtask check-kernels` compiles the same files with nvcc using [`compile_options`].
//!
//! [`SOURCES`] also declares every kernel's parameter list ([`Param`]); launches are checked
//! against it, and `check-kernels` checks it against the parameters NVRTC actually emits in
//! PTX, so a wrapper and its `.cu` signature cannot drift apart unnoticed.

use super::{CudaError, Result};
use sha2::{Digest, Sha256};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

/// Options given to NVRTC at run time, and to nvcc by `cargo xtask check-kernels` (both
/// accept these spellings). No fast math: the kernels are compared with their CPU twins.
pub const NVRTC_OPTIONS: &[&str] =
    &["--std=c++17", "--fmad=true", "--ftz=false", "--prec-div=true", "--prec-sqrt=true"];

/// Every option the kernels are compiled with: [`NVRTC_OPTIONS`] and the tile sizes of
/// [`super::tiles`] as `-D` definitions (the same list for NVRTC and nvcc).
pub fn compile_options() -> Vec<String> {
    let mut o: Vec<String> = NVRTC_OPTIONS.iter().map(|s| s.to_string()).collect();
    o.extend(super::tiles::defines());
    o
}

/// The architecture option for `arch` (`sm_90`), the same for NVRTC and nvcc.
pub fn arch_option(arch: &str) -> String {
    format!("--gpu-architecture={arch}")
}

/// `sm_XY` for compute capability `(X, Y)`.
pub fn arch_for(major: i32, minor: i32) -> String {
    format!("sm_{major}{minor}")
}

/// A kernel parameter as the launch wrappers pass it: `Ptr` is any device pointer (8 bytes),
/// `I32` an `int`, `I64` a `long long`, `F32` a `float`, `F64` a `double`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    Ptr,
    I32,
    I64,
    F32,
    F64,
}

impl Param {
    /// The PTX parameter type NVRTC emits for it.
    pub fn ptx_type(self) -> &'static str {
        match self {
            Param::Ptr | Param::I64 => ".u64",
            Param::I32 => ".u32",
            Param::F32 => ".f32",
            Param::F64 => ".f64",
        }
    }
}

pub struct KernelFn {
    pub name: &'static str,
    pub params: &'static [Param],
}

pub struct KernelSource {
    /// File name under `kernels/`.
    pub file: &'static str,
    pub src: &'static str,
    pub kernels: &'static [KernelFn],
}

use Param::{Ptr as P, F32, F64, I32, I64};

macro_rules! kernels {
    ($($file:literal => [$($name:literal: [$($p:expr),* $(,)?]),* $(,)?]),* $(,)?) => {
        &[$(KernelSource {
            file: $file,
            src: include_str!(concat!("../../../../kernels/", $file)),
            kernels: &[$(KernelFn { name: $name, params: &[$($p),*] }),*],
        }),*]
    };
}

/// Every kernel file and the kernels it defines, with their parameters in order.
pub const SOURCES: &[KernelSource] = kernels![
    "lowrank.cu" => [
        "lowrank_shrink": [P, P, P, I32, I32, I32, I64, I64, F32, P, P, I32],
        "lowrank_expand": [P, P, P, I32, I32, I32, I64, I64, F32, P, I32],
        "lowrank_wgrad": [P, P, P, I32, I32, I32, F32, I32],
        "gated_inject_fwd": [P, P, P, I32, I32, I32],
        "gated_inject_bwd": [P, P, P, P, P, I32, I32],
        "dora_scale_fwd": [P, P, P, P, I32, I32],
        "dora_scale_bwd": [P, P, P, P, P, P, I32, I32],
    ],
    "norm.cu" => [
        "rmsnorm_fwd": [P, P, P, P, I32, I32, F32],
        "rmsnorm_bwd_dx": [P, P, P, P, P, I32, I32],
        "rmsnorm_bwd_dw": [P, P, P, P, I32, I32],
    ],
    "rope.cu" => [
        "rope_apply": [P, P, P, P, I32, I32, I32, I32],
    ],
    "activation.cu" => [
        "swiglu_fwd": [P, P, P, I64],
        "swiglu_bwd": [P, P, P, P, P, I64],
    ],
    "attention.cu" => [
        "attention_fwd": [P, P, P, P, P, P, P, I32, I32, I32, I32, I32, F32],
        "attention_bwd_delta": [P, P, P, I32, I32, I32, I32],
        "attention_bwd_dq": [P, P, P, P, P, P, P, P, P, I32, I32, I32, I32, I32, F32],
        "attention_bwd_dkv": [P, P, P, P, P, P, P, P, P, P, I32, I32, I32, I32, I32, F32],
    ],
    "loss.cu" => [
        "cross_entropy_fwd": [P, P, P, P, I32, I32],
        "cross_entropy_bwd": [P, P, P, P, P, I32, I32],
        "kl_fwd": [P, P, P, I32, I32, F32],
        "kl_bwd_student": [P, P, P, P, I32, I32, F32],
    ],
    "pool.cu" => [
        "pool_counts": [P, P, I32, I32],
        "masked_mean_fwd": [P, P, P, P, I32, I32, I32],
        "masked_mean_bwd": [P, P, P, P, I32, I32, I32],
    ],
    "embed.cu" => [
        "embed_gather_f32": [P, P, P, I32, I32],
        "embed_gather_bf16": [P, P, P, I32, I32],
        "embed_scatter_add": [P, P, P, I32, I32],
    ],
    "adamw.cu" => [
        "adamw_step": [P, P, P, P, I64, F32, F32, F32, F32, F32, F32, F64, F64],
    ],
    "cast.cu" => [
        "f32_to_bf16": [P, P, I64],
        "bf16_to_f32": [P, P, I64],
    ],
    // A shape or stride vector is six `long long`s (TS_VEC6): one line of I64 each below.
    "tensor.cu" => [
        "tensor_unary": [P, P, I64, I32, F32],
        "tensor_binary": [
            P, P, P, I64, I32,
            I64, I64, I64, I64, I64, I64, // dims
            I64, I64, I64, I64, I64, I64, // a strides
            I64, I64, I64, I64, I64, I64, // b strides
        ],
        "tensor_add_assign": [P, P, I64],
        "tensor_reduce_rows": [P, P, I64, I64, I32],
        "tensor_reduce_cols": [P, P, I64, I64, I64, I32],
        "tensor_reduce_strided": [
            P, P, I64, I64, I32,
            I64, I64, I64, I64, I64, I64, // kept dims
            I64, I64, I64, I64, I64, I64, // their strides in x
            I64, I64, I64, I64, I64, I64, // reduced dims
            I64, I64, I64, I64, I64, I64, // their strides in x
        ],
        "tensor_softmax_rows": [P, P, I64, I64],
        "tensor_copy_2d": [P, I64, I64, P, I64, I64, I64, I64],
        "tensor_gather": [
            P, P, I64,
            I64, I64, I64, I64, I64, I64, // dims
            I64, I64, I64, I64, I64, I64, // strides in x
        ],
        "tensor_fill": [P, I64, F32],
    ],
];

/// The source defining kernel `name`, and the kernel's declaration.
pub fn find_kernel(name: &str) -> Option<(&'static KernelSource, &'static KernelFn)> {
    SOURCES.iter().find_map(|s| s.kernels.iter().find(|k| k.name == name).map(|k| (s, k)))
}

/// The source for file `file` (e.g. `lowrank.cu`).
pub fn find_source(file: &str) -> Option<&'static KernelSource> {
    SOURCES.iter().find(|s| s.file == file)
}

/// NVRTC's version, `(major, minor)`. Call only after [`super::libs::nvrtc_present`].
pub fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }.result()?;
    Ok((major, minor))
}

/// What NVRTC produces: a cubin for a real architecture (`sm_XY`), PTX for a virtual one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Cubin,
    Ptx,
}

/// Compiles `src` with NVRTC for `arch` (`sm_90` for a cubin, `compute_90` for PTX) with
/// [`compile_options`]. Call only after [`super::libs::nvrtc_present`].
pub fn nvrtc_compile(src: &KernelSource, arch: &str, output: Output) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result as nr, sys};
    let code = CString::new(src.src).map_err(|_| CudaError::Unsupported(format!("{} holds a NUL byte", src.file)))?;
    let name = CString::new(src.file).expect("file names have no NUL");
    let prog = nr::create_program(&code, Some(&name))?;
    let mut options = compile_options();
    options.push(arch_option(arch));
    // SAFETY: `prog` is live until destroy_program below; the buffers are sized by NVRTC.
    let out = unsafe {
        let compiled = nr::compile_program(prog, &options);
        let log = nr::get_program_log(prog).ok().map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned());
        let result = match compiled {
            Err(e) => Err(CudaError::Compile {
                file: src.file.into(),
                arch: arch.into(),
                log: log.filter(|l| !l.trim().is_empty()).unwrap_or_else(|| e.to_string()),
            }),
            Ok(()) => match output {
                Output::Ptx => nr::get_ptx(prog)
                    .map(|p| {
                        let mut bytes: Vec<u8> = p.iter().map(|&c| c as u8).collect();
                        while bytes.last() == Some(&0) {
                            bytes.pop();
                        }
                        bytes
                    })
                    .map_err(CudaError::from),
                Output::Cubin => {
                    let mut size = 0usize;
                    match sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                        Err(e) => Err(e.into()),
                        Ok(()) => {
                            let mut buf = vec![0u8; size];
                            sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut _)
                                .result()
                                .map(|_| buf)
                                .map_err(CudaError::from)
                        }
                    }
                }
            },
        };
        let _ = nr::destroy_program(prog);
        result
    };
    out
}

/// Where compiled kernels are cached: `$ECHO_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/echo-lora/kernels`, else `~/.cache/echo-lora/kernels`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("ECHO_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(Path::new(&d).join("echo-lora/kernels"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/echo-lora/kernels"))
}

/// The cache file name for `src` on `arch` with NVRTC `version`: source hash, options, arch
/// and NVRTC version all enter the key.
pub fn cache_key(src: &KernelSource, arch: &str, version: (i32, i32)) -> String {
    let mut h = Sha256::new();
    h.update(src.src.as_bytes());
    for o in compile_options() {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    h.update([0u8]);
    h.update(arch.as_bytes());
    h.update(format!("nvrtc{}.{}", version.0, version.1).as_bytes());
    let digest = h.finalize();
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let stem = src.file.trim_end_matches(".cu");
    format!("{stem}-{arch}-nvrtc{}.{}-{hex}.cubin", version.0, version.1)
}

/// A compiled kernel file and where it came from.
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub from_cache: bool,
    /// The cache file (read or written), `None` when no cache folder could be used.
    pub cache_path: Option<PathBuf>,
}

/// The cubin for `src` on `arch`: from the disk cache when present, else compiled by NVRTC
/// and written to the cache (atomically: a temporary file renamed into place). A cache that
/// cannot be written only costs a recompilation next time.
pub fn cubin_cached(src: &KernelSource, arch: &str) -> Result<Compiled> {
    let version = nvrtc_version()?;
    let path = cache_dir().map(|d| d.join(cache_key(src, arch, version)));
    if let Some(p) = &path {
        if let Ok(cubin) = std::fs::read(p) {
            if !cubin.is_empty() {
                return Ok(Compiled { cubin, from_cache: true, cache_path: path });
            }
        }
    }
    let cubin = nvrtc_compile(src, arch, Output::Cubin)?;
    let written = path.as_ref().and_then(|p| write_atomic(p, &cubin).ok().map(|_| p.clone()));
    Ok(Compiled { cubin, from_cache: false, cache_path: written })
}

/// The cache folder is made on first use; the write itself is the workspace's one atomic write.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    echo_io::write_atomic(path, bytes)
}

/// The parameter types (`.u64`, `.u32`, `.f32`, ...) of `.entry name` in PTX text.
pub fn ptx_params(ptx: &str, name: &str) -> Option<Vec<String>> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let rest = &ptx[start..];
    let end = rest.find(')')?;
    Some(
        rest[..end]
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                while let Some(tok) = it.next() {
                    if tok == ".param" {
                        return it.next().map(|t| t.to_string());
                    }
                }
                None
            })
            .collect(),
    )
}

/// Every mismatch between `src`'s declared kernels and the PTX NVRTC made of it: a missing
/// entry, a different parameter count or type. Empty when they agree.
pub fn verify_ptx(src: &KernelSource, ptx: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for k in src.kernels {
        match ptx_params(ptx, k.name) {
            None => problems.push(format!("{}: no `.entry {}` in the PTX (missing extern \"C\"?)", src.file, k.name)),
            Some(got) => {
                let want: Vec<&str> = k.params.iter().map(|p| p.ptx_type()).collect();
                if got != want {
                    problems.push(format!(
                        "{}: {} takes {:?} in PTX, the wrapper table says {:?}",
                        src.file, k.name, got, want
                    ));
                }
            }
        }
    }
    let declared: Vec<&str> = src.kernels.iter().map(|k| k.name).collect();
    for line in ptx.lines() {
        if let Some(pos) = line.find(".entry ") {
            let name = line[pos + 7..].split('(').next().unwrap_or("").trim();
            if !name.is_empty() && !declared.contains(&name) {
                problems.push(format!("{}: kernel {name} is not declared in cuda/source.rs", src.file));
            }
        }
    }
    problems
}

/// The run-time compile path without a GPU: NVRTC compiles `src` to a cubin for `arch`
/// (`sm_90`) and to PTX for the matching virtual architecture, whose kernel entries must
/// match the declared parameter lists. `Err` holds NVRTC's log or the mismatches.
pub fn nvrtc_check(src: &KernelSource, arch: &str) -> std::result::Result<(), String> {
    nvrtc_compile(src, arch, Output::Cubin).map_err(|e| e.to_string())?;
    let virt = arch.replacen("sm_", "compute_", 1);
    let ptx = nvrtc_compile(src, &virt, Output::Ptx).map_err(|e| e.to_string())?;
    let problems = verify_ptx(src, &String::from_utf8_lossy(&ptx));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_is_embedded_and_declares_its_kernels() {
        for s in SOURCES {
            assert!(!s.kernels.is_empty(), "{}", s.file);
            for k in s.kernels {
                assert!(
                    s.src.contains(&format!("extern \"C\" __global__ void {}(", k.name)),
                    "{} lacks {}",
                    s.file,
                    k.name
                );
            }
        }
        assert!(find_kernel("attention_fwd").is_some());
        assert!(find_kernel("nope").is_none());
    }

    #[test]
    fn reads_ptx_entry_parameters() {
        let ptx =
            ".visible .entry k(\n\t.param .u64 k_param_0,\n\t.param .u32 k_param_1,\n\t.param .f32 k_param_2\n)\n{\n}";
        assert_eq!(ptx_params(ptx, "k").unwrap(), vec![".u64", ".u32", ".f32"]);
        assert!(ptx_params(ptx, "other").is_none());
    }

    #[test]
    fn cache_key_changes_with_arch_and_version() {
        let s = &SOURCES[0];
        let a = cache_key(s, "sm_90", (13, 0));
        assert_ne!(a, cache_key(s, "sm_80", (13, 0)));
        assert_ne!(a, cache_key(s, "sm_90", (13, 1)));
        assert!(a.starts_with("lowrank-sm_90-nvrtc13.0-") && a.ends_with(".cubin"), "{a}");
    }
}
