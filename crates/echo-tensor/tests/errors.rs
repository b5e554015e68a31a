//! Bad input is an error that names the op and both shapes (or the dtype, or the index),
//! never a panic.

use echo_tensor::nn::{self, LoraParams};
use echo_tensor::{DType, Device, Tensor, IGNORE_INDEX};

fn err<T: std::fmt::Debug>(r: echo_tensor::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn shape_mismatches_name_both_shapes() {
    let a = Tensor::zeros([2, 3]);
    let b = Tensor::zeros([4, 5]);
    let e = err(a.add(&b));
    assert!(e.contains("add") && e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let e = err(a.matmul(&b));
    assert!(e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let e = err(a.linear(&Tensor::zeros([7, 4])));
    assert!(e.contains("[2, 3]") && e.contains("[7, 4]"), "{e}");
    let e = err(a.reshape([5]));
    assert!(e.contains("reshape") && e.contains("[5]"), "{e}");
    let e = err(Tensor::concat(&[&a, &b], 0));
    assert!(e.contains("concat") && e.contains("[4, 5]"), "{e}");
    let e = err(Tensor::new(vec![1.0; 5], [2, 3]));
    assert!(e.contains("5") && e.contains("[2, 3]"), "{e}");
    let e = err(a.narrow(1, 2, 2));
    assert!(e.contains("narrow") && e.contains("[2, 3]"), "{e}");
    let e = err(a.permute(&[0, 0]));
    assert!(e.contains("permute"), "{e}");
}

#[test]
fn fused_op_mismatches() {
    let q = Tensor::zeros([1, 4, 4, 8]);
    let k = Tensor::zeros([1, 4, 3, 8]); // 4 query heads cannot share 3 kv heads
    let e = err(nn::attention_forward(&q, &k, &k, &nn::AttnMask::padding(vec![true; 4])));
    assert!(e.contains("attention") && e.contains("[1, 4, 4, 8]") && e.contains("[1, 4, 3, 8]"), "{e}");
    let k = Tensor::zeros([1, 4, 2, 8]);
    let e = err(nn::attention_forward(&q, &k, &k, &nn::AttnMask::padding(vec![true; 3])));
    assert!(e.contains("mask") && e.contains("3"), "{e}");
    let w = Tensor::zeros([6, 5]);
    let a = Tensor::zeros([2, 4]);
    let b = Tensor::zeros([6, 2]);
    let e = err(nn::lora_forward(&Tensor::zeros([3, 5]), None, &LoraParams { w: &w, a: &a, b: &b, scale: 1.0 }, None));
    assert!(e.contains("[6, 5]") && e.contains("[2, 4]"), "{e}");
    let e = err(nn::rmsnorm_forward(&Tensor::zeros([2, 5]), Some(&Tensor::zeros([4])), 1e-5));
    assert!(e.contains("rmsnorm") && e.contains("[4]"), "{e}");
    let e = err(nn::swiglu_forward(&Tensor::zeros([2]), &Tensor::zeros([3])));
    assert!(e.contains("[2]") && e.contains("[3]"), "{e}");
}

#[test]
fn out_of_range_indices() {
    let table = Tensor::zeros([5, 2]);
    let e = err(table.index_select(&[1, 5]));
    assert!(e.contains("index 5") && e.contains("size 5"), "{e}");
    let e = err(nn::cross_entropy_forward(&Tensor::zeros([2, 3]), &[1, 3]));
    assert!(e.contains("index 3") && e.contains("size 3"), "{e}");
    let e = err(nn::cross_entropy_forward(&Tensor::zeros([2, 3]), &[-1, IGNORE_INDEX]));
    assert!(e.contains("index -1"), "{e}");
    let rope = echo_tensor::RopeTable::new(4, 8, 10_000.0, None);
    let e = err(nn::rope(&Tensor::zeros([1, 1, 1, 4]), &[8], &rope, false));
    assert!(e.contains("rope") && e.contains("index 8"), "{e}");
}

#[test]
fn dtype_and_device_errors() {
    let a = Tensor::zeros([2, 2]).to_dtype(DType::BF16);
    let e = err(a.add(&Tensor::zeros([2, 2])));
    assert!(e.contains("add") && e.contains("f32") && e.contains("bf16"), "{e}");
    let e = err(a.matmul(&a));
    assert!(e.contains("bf16"), "{e}");
    // A device that cannot exist on any machine: the error names it (tests/device.rs covers
    // the no-driver case; on a GPU machine cuda:0 would succeed).
    let e = err(Tensor::zeros([1]).to_device(Device::Cuda(4096)));
    assert!(e.contains("cuda:4096"), "{e}");
    let e = err(nn::kl_forward(&Tensor::zeros([1, 2]), &Tensor::zeros([1, 2]), 0.0));
    assert!(e.contains("tau"), "{e}");
}
