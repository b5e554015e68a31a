//! [`Gpu`]: one device's context, its stream, its cuBLAS handle, the kernel modules loaded so
//! far, and its caching allocator. Kernel files are compiled (or read from the disk cache) the
//! first time one of their kernels is launched.

use super::alloc::{GpuBuf, Pool, PoolStats};
use super::source::{self, Param};
use super::{libs, CudaError, Result};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// One kernel argument. See [`Param`] for the matching C types.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
}

impl Arg {
    pub fn param(&self) -> Param {
        match self {
            Arg::Ptr(_) => Param::Ptr,
            Arg::I32(_) => Param::I32,
            Arg::I64(_) => Param::I64,
            Arg::F32(_) => Param::F32,
            Arg::F64(_) => Param::F64,
        }
    }
}

pub struct Gpu {
    pub ordinal: usize,
    /// `sm_XY`, what kernels are compiled for.
    pub arch: String,
    pub name: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    pool: Arc<Pool>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<&'static str, CudaFunction>>,
    /// (file, compiled this run rather than read from the cache)
    compile_log: Mutex<Vec<(String, bool)>>,
}

static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();

impl Gpu {
    /// The device `ordinal`, opened once per process. Probes first, so a machine without CUDA
    /// gets an error, not a panic.
    pub fn get(ordinal: usize) -> Result<Arc<Gpu>> {
        let map = GPUS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = map.get(&ordinal) {
            return Ok(g.clone());
        }
        let g = Arc::new(Self::open(ordinal)?);
        map.insert(ordinal, g.clone());
        Ok(g)
    }

    fn open(ordinal: usize) -> Result<Gpu> {
        let p = super::probe();
        if let Some(e) = p.unusable() {
            return Err(e);
        }
        let count = p.devices.unwrap_or(0);
        if ordinal >= count {
            return Err(CudaError::BadOrdinal { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        // One stream does all the work, so per-buffer event tracking is pure overhead.
        // SAFETY: turned off before any buffer exists; nothing here uses a second stream.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability()?;
        let name = ctx.name()?;
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let pool = Pool::new(stream.clone());
        Ok(Gpu {
            ordinal,
            arch: source::arch_for(major, minor),
            name,
            ctx,
            stream,
            blas,
            pool,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            compile_log: Mutex::new(Vec::new()),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    /// Waits for all queued work; surfaces asynchronous kernel errors.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize()?;
        Ok(())
    }

    /// Kernel files loaded so far, and whether each was compiled in this process.
    pub fn compile_log(&self) -> Vec<(String, bool)> {
        self.compile_log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn module(&self, src: &'static source::KernelSource) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = modules.get(src.file) {
            return Ok(m.clone());
        }
        if !libs::nvrtc_present() {
            return Err(CudaError::NoNvrtc);
        }
        let compiled = source::cubin_cached(src, &self.arch)?;
        let module = self.ctx.load_module(Ptx::from_binary(compiled.cubin))?;
        self.compile_log.lock().unwrap_or_else(|e| e.into_inner()).push((src.file.to_string(), !compiled.from_cache));
        modules.insert(src.file, module.clone());
        Ok(module)
    }

    /// Compiles (or loads from cache) every kernel file now, e.g. before timing anything.
    pub fn load_all(&self) -> Result<()> {
        for s in source::SOURCES {
            self.module(s)?;
        }
        Ok(())
    }

    pub fn function(&self, name: &str) -> Result<CudaFunction> {
        if let Some(f) = self.functions.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
            return Ok(f.clone());
        }
        let (src, k) = source::find_kernel(name).ok_or_else(|| CudaError::UnknownKernel(name.into()))?;
        let f = self.module(src)?.load_function(k.name)?;
        self.functions.lock().unwrap_or_else(|e| e.into_inner()).insert(k.name, f.clone());
        Ok(f)
    }

    /// Launches kernel `name` on the device's stream. The arguments are checked against the
    /// kernel's declared parameters ([`source::SOURCES`]) first: a mismatch is a bug in a
    /// wrapper, reported as an error instead of a wild memory access.
    pub fn launch(&self, name: &str, grid: (u32, u32, u32), block: (u32, u32, u32), args: &[Arg]) -> Result<()> {
        let (_, k) = source::find_kernel(name).ok_or_else(|| CudaError::UnknownKernel(name.into()))?;
        let got: Vec<Param> = args.iter().map(Arg::param).collect();
        if got != k.params {
            return Err(CudaError::Unsupported(format!(
                "launch of {name}: arguments {got:?}, kernel takes {:?}",
                k.params
            )));
        }
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // nothing to do (an empty tensor)
        }
        if grid.1 > 65_535 || grid.2 > 65_535 {
            return Err(CudaError::Unsupported(format!("launch of {name}: grid {grid:?} exceeds 65535 in y or z")));
        }
        let f = self.function(name)?;
        let cfg = LaunchConfig { grid_dim: grid, block_dim: block, shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::Ptr(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::F64(v) => b.arg(v),
            };
        }
        // SAFETY: the argument list matches the kernel's declaration (checked above); the
        // wrappers in `ops` check every buffer's length against the dimensions they pass.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `len` elements, contents undefined.
    pub fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<GpuBuf<T>> {
        self.pool.alloc(len)
    }

    /// `len` zeroed elements.
    pub fn zeros<T: DeviceRepr>(&self, len: usize) -> Result<GpuBuf<T>> {
        let mut b = self.pool.alloc::<T>(len)?;
        self.memset_zero(&mut b)?;
        Ok(b)
    }

    pub fn memset_zero<T>(&self, b: &mut GpuBuf<T>) -> Result<()> {
        let bytes = b.len() * std::mem::size_of::<T>();
        if bytes > 0 {
            let mut view = b.bytes_mut().slice_mut(0..bytes);
            self.stream.memset_zeros(&mut view)?;
        }
        Ok(())
    }

    /// A new buffer holding `host`.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<GpuBuf<T>> {
        let mut b = self.pool.alloc::<T>(host.len())?;
        self.copy_to(host, &mut b)?;
        Ok(b)
    }

    /// Copies `host` into the start of `dst`.
    pub fn copy_to<T: DeviceRepr>(&self, host: &[T], dst: &mut GpuBuf<T>) -> Result<()> {
        assert!(host.len() <= dst.len(), "copy_to: {} elements into a buffer of {}", host.len(), dst.len());
        if host.is_empty() {
            return Ok(());
        }
        let n = host.len();
        // SAFETY: the byte buffer holds at least n elements of T (its class is >= len * size).
        let mut view = unsafe { dst.bytes_mut().transmute_mut::<T>(n) }.expect("buffer large enough");
        self.stream.memcpy_htod(host, &mut view)?;
        Ok(())
    }

    /// The buffer's contents, after all queued work.
    pub fn download<T: DeviceRepr + Default + Clone>(&self, src: &GpuBuf<T>) -> Result<Vec<T>> {
        let mut host = vec![T::default(); src.len()];
        if !host.is_empty() {
            // SAFETY: as in copy_to.
            let view = unsafe { src.bytes().transmute::<T>(src.len()) }.expect("buffer large enough");
            self.stream.memcpy_dtoh(&view, &mut host)?;
        }
        self.synchronize()?;
        Ok(host)
    }
}
