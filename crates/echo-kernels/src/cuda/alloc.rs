//! A caching device allocator: freed buffers go back to a free list keyed by size class and
//! are handed out again without a driver call, as PyTorch's caching allocator does. All work
//! runs on the device's one stream, so a buffer reused after its previous owner dropped it is
//! ordered after every kernel that used it: no event is needed.

use super::Result;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

/// Usage counters, in bytes (size classes, not requested sizes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub in_use: usize,
    pub cached: usize,
    pub peak_in_use: usize,
    /// Driver allocations made (a reuse from the cache does not count).
    pub driver_allocs: usize,
}

pub struct Pool {
    stream: Arc<CudaStream>,
    inner: Mutex<PoolInner>,
}

#[derive(Default)]
struct PoolInner {
    free: BTreeMap<usize, Vec<CudaSlice<u8>>>,
    stats: PoolStats,
}

/// The size class of a request: powers of two up to 1 MiB (at least 512 B), then multiples
/// of 2 MiB, so reuse is likely and waste is bounded.
pub fn size_class(bytes: usize) -> usize {
    const MIB: usize = 1 << 20;
    if bytes <= MIB {
        bytes.max(512).next_power_of_two()
    } else {
        bytes.div_ceil(2 * MIB) * 2 * MIB
    }
}

impl Pool {
    pub fn new(stream: Arc<CudaStream>) -> Arc<Pool> {
        Arc::new(Pool { stream, inner: Mutex::new(PoolInner::default()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `len` elements of `T`, contents undefined.
    pub fn alloc<T: DeviceRepr>(self: &Arc<Self>, len: usize) -> Result<GpuBuf<T>> {
        let class = size_class(len * std::mem::size_of::<T>());
        let reused = {
            let mut inner = self.lock();
            let slice = inner.free.get_mut(&class).and_then(|v| v.pop());
            if slice.is_some() {
                inner.stats.cached -= class;
            }
            slice
        };
        let slice = match reused {
            Some(s) => s,
            None => {
                // SAFETY: u8 has no invalid bit patterns; callers write before reading.
                let fresh = match unsafe { self.stream.alloc::<u8>(class) } {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of memory, perhaps only because of what we cache: give it back, retry.
                        self.empty_cache();
                        unsafe { self.stream.alloc::<u8>(class) }?
                    }
                };
                self.lock().stats.driver_allocs += 1;
                fresh
            }
        };
        let mut inner = self.lock();
        inner.stats.in_use += class;
        inner.stats.peak_in_use = inner.stats.peak_in_use.max(inner.stats.in_use);
        Ok(GpuBuf { slice: Some(slice), len, pool: self.clone(), _t: PhantomData })
    }

    /// Frees every cached (unused) block back to the driver.
    pub fn empty_cache(&self) {
        let free = std::mem::take(&mut self.lock().free);
        self.lock().stats.cached = 0;
        drop(free);
    }

    pub fn stats(&self) -> PoolStats {
        self.lock().stats
    }

    fn give_back(&self, slice: CudaSlice<u8>) {
        let class = slice.len();
        let mut inner = self.lock();
        inner.stats.in_use -= class;
        inner.stats.cached += class;
        inner.free.entry(class).or_default().push(slice);
    }
}

/// A device buffer of `len` elements of `T` from the [`Pool`]; returned to it on drop.
pub struct GpuBuf<T> {
    slice: Option<CudaSlice<u8>>,
    len: usize,
    pool: Arc<Pool>,
    _t: PhantomData<T>,
}

impl<T> GpuBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw device address (what a kernel parameter receives).
    pub fn ptr(&self) -> u64 {
        let slice = self.slice.as_ref().expect("live buffer");
        // Event tracking is off (one stream), so the guard records nothing.
        let (p, _guard) = slice.device_ptr(&self.pool.stream);
        p
    }

    /// The device address of element `offset` (for views into part of a buffer).
    pub fn ptr_at(&self, offset: usize) -> u64 {
        assert!(offset <= self.len, "ptr_at({offset}) past a buffer of {}", self.len);
        self.ptr() + (offset * std::mem::size_of::<T>()) as u64
    }

    pub(crate) fn bytes(&self) -> &CudaSlice<u8> {
        self.slice.as_ref().expect("live buffer")
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut CudaSlice<u8> {
        self.slice.as_mut().expect("live buffer")
    }
}

impl<T> Drop for GpuBuf<T> {
    fn drop(&mut self) {
        if let Some(s) = self.slice.take() {
            self.pool.give_back(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes() {
        assert_eq!(size_class(0), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        assert_eq!(size_class((1 << 20) + 1), 2 << 20);
        assert_eq!(size_class((5 << 20) + 7), 6 << 20);
    }
}
