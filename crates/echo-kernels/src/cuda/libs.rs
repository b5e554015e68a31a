//! Finding the CUDA libraries at run time without letting cudarc panic.
//!
//! cudarc loads `libcuda`, `libnvrtc` and `libcublas` by bare name (the loader's search path)
//! and panics when it cannot. We first ask cudarc's own `is_culib_present` (same names, no
//! panic). When NVRTC or cuBLAS is not on the loader path we look in the usual places — the
//! folders in `ECHO_CUDA_LIB_DIR` (colon-separated), `$CUDA_HOME`/`$CUDA_PATH`,
//! `/usr/local/cuda`, and the `nvidia/*/lib` folders of pip-installed NVIDIA wheels (a PyTorch
//! install, or the repo's `.venv-cuda`) — and load the library from there once with
//! `RTLD_GLOBAL`, kept for the life of the process. The loader then resolves cudarc's bare
//! name to that already-loaded object by its soname.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Libraries we loaded by full path; never unloaded (cudarc holds symbols from them).
static PRELOADED: Mutex<Vec<(PathBuf, libloading::os::unix::Library)>> = Mutex::new(Vec::new());

/// Whether the NVIDIA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: loading libcuda runs its initialisers only; cudarc does the same on first use.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded, preloading it from a known folder when needed.
pub fn nvrtc_present() -> bool {
    // SAFETY: as above, for libnvrtc.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return true;
    }
    // libnvrtc loads its builtins library by name at compile time: preload it first.
    preload_any(&["libnvrtc-builtins.so.13", "libnvrtc-builtins.so.12"], true);
    preload_any(&["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], false);
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether cuBLAS can be loaded, preloading it (and cuBLASLt, its dependency) when needed.
pub fn cublas_present() -> bool {
    // SAFETY: as above, for libcublas.
    if unsafe { cudarc::cublas::sys::is_culib_present() } {
        return true;
    }
    preload_any(&["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"], false);
    preload_any(&["libcublas.so.13", "libcublas.so.12", "libcublas.so"], false);
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// The folders searched, in order, for libraries the loader does not find by itself.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(list) = std::env::var("ECHO_CUDA_LIB_DIR") {
        dirs.extend(std::env::split_paths(&list));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Ok(root) = std::env::var(var) {
            dirs.push(Path::new(&root).join("lib64"));
            dirs.push(Path::new(&root).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    // pip wheels: <site-packages>/nvidia/<component or cu13>/lib
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            roots.push(dir.join(".venv-cuda/lib"));
        }
    }
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        roots.push(Path::new(&venv).join("lib"));
    }
    if let Ok(home) = std::env::var("HOME") {
        roots.push(Path::new(&home).join(".local/lib"));
    }
    roots.extend(["/usr/local/lib", "/usr/lib", "/opt/conda/lib"].map(PathBuf::from));
    for root in roots {
        for py in read_dir_sorted(&root).into_iter().filter(|p| file_name_starts(p, "python3")) {
            for sp in ["site-packages", "dist-packages"] {
                let nvidia = py.join(sp).join("nvidia");
                for comp in read_dir_sorted(&nvidia) {
                    dirs.push(comp.join("lib"));
                }
            }
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs.dedup();
    dirs
}

fn file_name_starts(p: &Path, prefix: &str) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix))
}

fn read_dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Loads the first of `names` found in [`search_dirs`] (with `prefix_match`, any file whose
/// name starts with one of them, e.g. `libnvrtc-builtins.so.13.0`). Returns its path.
fn preload_any(names: &[&str], prefix_match: bool) -> Option<PathBuf> {
    for dir in search_dirs() {
        for name in names {
            let candidates: Vec<PathBuf> = if prefix_match {
                read_dir_sorted(&dir).into_iter().filter(|p| file_name_starts(p, name)).collect()
            } else {
                vec![dir.join(name)]
            };
            for path in candidates.into_iter().filter(|p| p.is_file()) {
                if preload(&path) {
                    return Some(path);
                }
            }
        }
    }
    None
}

/// Loads `path` with `RTLD_NOW | RTLD_GLOBAL` and keeps it loaded. True on success.
pub fn preload(path: &Path) -> bool {
    let mut held = PRELOADED.lock().unwrap_or_else(|e| e.into_inner());
    if held.iter().any(|(p, _)| p == path) {
        return true;
    }
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: NVIDIA's libraries have no initialisers with preconditions on the caller.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            held.push((path.to_path_buf(), lib));
            true
        }
        Err(_) => false,
    }
}

/// The libraries loaded by full path so far (for messages).
pub fn preloaded() -> Vec<PathBuf> {
    PRELOADED.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(p, _)| p.clone()).collect()
}
