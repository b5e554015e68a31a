//! Device handling that runs on any machine: without a usable CUDA driver, asking for a GPU
//! is a clean error naming the device and the reason (never a panic: cudarc panics when
//! libcuda is missing, so the tensor layer must probe first), and device errors read well.
//! The GPU results themselves are checked in `cuda_ops.rs`.

use echo_tensor::{DType, Device, Error, Tensor};

fn no_gpu() -> Option<String> {
    echo_kernels::cuda::probe().unusable().map(|why| why.to_string())
}

#[test]
fn to_device_without_a_driver_is_a_clean_error() {
    let Some(why) = no_gpu() else {
        println!("a usable GPU is present: the no-driver path is not exercised here");
        return;
    };
    for t in [Tensor::zeros([2, 3]), Tensor::ones([4]).to_dtype(DType::BF16), Tensor::scalar(1.0).to_dtype(DType::F16)]
    {
        let e = t.to_device(Device::Cuda(0)).expect_err("no usable GPU");
        assert!(matches!(e, Error::DeviceUnavailable { device: Device::Cuda(0), .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("to_device") && msg.contains("cuda:0") && msg.contains(&why), "{msg}");
    }
    let e = Tensor::full_on(1.0, [3], Device::Cuda(1)).expect_err("no usable GPU").to_string();
    assert!(e.contains("full_on") && e.contains("cuda:1") && e.contains(&why), "{e}");
}

#[test]
fn the_runtime_calls_need_no_gpu_on_the_host_and_fail_cleanly_without_one() {
    Device::Cpu.synchronize().unwrap();
    Device::Cpu.release_cached_memory().unwrap();
    assert_eq!(Device::Cpu.peak_memory_in_use(), None);
    let Some(why) = no_gpu() else {
        println!("a usable GPU is present: the no-driver path is not exercised here");
        return;
    };
    for e in [Device::Cuda(0).synchronize().unwrap_err(), Device::Cuda(0).release_cached_memory().unwrap_err()] {
        assert!(matches!(e, Error::DeviceUnavailable { device: Device::Cuda(0), .. }), "{e:?}");
        assert!(e.to_string().contains(&why), "{e}");
    }
    assert_eq!(Device::Cuda(0).peak_memory_in_use(), None);
}

#[test]
fn host_moves_are_clones() {
    let x = Tensor::new(vec![1.0, 2.0, 3.0], [3]).unwrap();
    let y = x.to_device(Device::Cpu).unwrap();
    assert_eq!((y.device(), y.to_vec_f32()), (Device::Cpu, vec![1.0, 2.0, 3.0]));
    let f = Tensor::full_on(2.5, [2, 2], Device::Cpu).unwrap();
    assert_eq!((f.device(), f.to_vec_f32()), (Device::Cpu, vec![2.5; 4]));
    assert_eq!(x.try_to_vec_f32().unwrap(), x.to_vec_f32());
    assert_eq!(x.try_to_dtype(DType::BF16).unwrap().dtype(), DType::BF16);
}

#[test]
fn device_errors_name_both_devices_and_the_reason() {
    let e = Error::DeviceMismatch { op: "add", lhs: Device::Cpu, rhs: Device::Cuda(0) }.to_string();
    assert!(e.contains("add") && e.contains("cpu") && e.contains("cuda:0"), "{e}");
    let e = Error::Cuda {
        op: "matmul",
        device: Device::Cuda(1),
        source: echo_kernels::cuda::CudaError::Unsupported("too big".into()),
    };
    let msg = e.to_string();
    assert!(msg.contains("matmul") && msg.contains("cuda:1") && msg.contains("too big"), "{msg}");
    assert!(std::error::Error::source(&e).is_some(), "the CUDA error is kept as the source");
}

#[test]
fn tensors_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tensor>();
}
