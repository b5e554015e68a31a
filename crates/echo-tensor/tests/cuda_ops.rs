//! Every op on CUDA against its CPU twin: random inputs with odd sizes, broadcasts, GQA,
//! padded rows. Every test is `#[ignore]`d (it needs a GPU): `cargo test` lists them as
//! ignored, and `--include-ignored` runs them, failing with the reason where no GPU is usable.
//!
//! Errors are relative to `max(1, max |cpu|)`, infinities and NaNs must match: exact for
//! layout ops and casts, about 1e-6 for element-wise maths, 1e-5 to 2e-5 where a sum runs in
//! another order (GEMMs, norms, attention, losses), looser where bf16 operands enter.

use echo_tensor::nn::{self, Injection, LoraParams, Want};
use echo_tensor::{Buffer, DType, Device, Error, Rng, RopeTable, Shape, Tensor, IGNORE_INDEX};

/// The GPU these tests need. They are `#[ignore]`d, so `cargo test` lists them as ignored on
/// every machine; asked for explicitly (`--include-ignored`, as device-bundle/run.sh does), a
/// missing GPU is a failure that says why, never a silent pass.
fn require_gpu() -> Device {
    if let Some(why) = echo_kernels::cuda::probe().unusable() {
        panic!("this test needs a usable CUDA device: {why}");
    }
    Device::Cuda(0)
}

fn up(t: &Tensor, d: Device) -> Tensor {
    t.to_device(d).expect("upload")
}

/// `g` (on the GPU) against `c` (on the CPU).
#[track_caller]
fn close(g: &Tensor, c: &Tensor, tol: f32, what: &str) {
    assert!(matches!(g.device(), Device::Cuda(_)), "{what}: result on {}", g.device());
    assert_eq!(c.device(), Device::Cpu, "{what}: reference on the cpu");
    assert_eq!(g.shape(), c.shape(), "{what}: shapes");
    assert_eq!(g.dtype(), c.dtype(), "{what}: dtypes");
    let (gv, cv) = (g.to_vec_f32(), c.to_vec_f32());
    let scale = cv.iter().filter(|v| v.is_finite()).fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in gv.iter().zip(&cv).enumerate() {
        let ok = if a.is_nan() || b.is_nan() {
            a.is_nan() && b.is_nan()
        } else if a.is_infinite() || b.is_infinite() {
            a == b
        } else {
            (a - b).abs() <= tol * scale
        };
        assert!(ok, "{what}: element {i}: gpu {a} vs cpu {b} (tol {tol} x {scale})");
    }
}

/// Values a bf16 holds exactly (so a bf16 GPU operand and the f32 CPU operand agree).
fn bf16_exact(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).to_dtype(DType::F32)
}

fn bits16(t: &Tensor) -> Vec<u16> {
    match t.buffer() {
        Buffer::BF16(v) => v.iter().map(|h| h.to_bits()).collect(),
        Buffer::F16(v) => v.iter().map(|h| h.to_bits()).collect(),
        Buffer::F32(_) => panic!("not a 16-bit tensor"),
    }
}

fn err_text<T: std::fmt::Debug>(r: echo_tensor::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------- storage

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn storage_round_trips_and_casts() {
    let d = require_gpu();
    let mut rng = Rng::new(1);
    let x = Tensor::randn([3, 5, 7], 2.0, &mut rng);
    let xg = up(&x, d);
    assert_eq!((xg.device(), xg.shape(), xg.dtype()), (d, x.shape(), DType::F32));
    assert_eq!(xg.to_vec_f32(), x.to_vec_f32());
    assert_eq!(xg.to_device(Device::Cpu).unwrap().to_vec_f32(), x.to_vec_f32());
    assert_eq!(xg.max_abs_diff(&x).unwrap(), 0.0);
    for dt in [DType::BF16, DType::F16] {
        let h = xg.to_dtype(dt);
        assert_eq!((h.device(), h.dtype()), (d, dt));
        assert_eq!(bits16(&h.to_device(Device::Cpu).unwrap()), bits16(&x.to_dtype(dt)), "{dt} rounding as the host's");
        close(&h.to_dtype(DType::F32), &x.to_dtype(dt).to_dtype(DType::F32), 0.0, "widened back");
        let hh = up(&x.to_dtype(dt), d);
        assert_eq!(bits16(&hh.to_device(Device::Cpu).unwrap()), bits16(&x.to_dtype(dt)), "{dt} upload keeps the bits");
        assert_eq!(hh.to_vec_f32(), x.to_dtype(dt).to_vec_f32());
    }
    let special = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        1e-40,
        f32::from_bits(0x3F80_8000),
        f32::from_bits(0x3F81_8000),
    ];
    let s = Tensor::new(special.clone(), [special.len()]).unwrap();
    let sg = up(&s, d).to_dtype(DType::BF16).to_device(Device::Cpu).unwrap();
    assert_eq!(bits16(&sg), bits16(&s.to_dtype(DType::BF16)), "special values through the cast kernel");
    assert_eq!(up(&Tensor::scalar(4.5), d).item().unwrap(), 4.5);
    let r = xg.reshape([15, 7]).unwrap();
    close(&r, &x.reshape([15, 7]).unwrap(), 0.0, "reshape shares device data");
    close(&Tensor::full_on(-1.25, [4, 3], d).unwrap(), &Tensor::full(-1.25, [4, 3]), 0.0, "full_on");
    let weak = xg.downgrade();
    assert!(weak.is_alive());
    drop((xg, r));
    assert!(!weak.is_alive(), "device data is freed with its last tensor");
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn device_data_is_not_read_as_host_and_devices_do_not_mix() {
    let d = require_gpu();
    let c = Tensor::ones([2, 2]);
    let g = up(&c, d);
    assert!(matches!(g.f32s("probe"), Err(Error::DeviceUnavailable { .. })));
    assert!(matches!(g.clone().f32_mut("probe"), Err(Error::DeviceUnavailable { .. })));
    let e = g.map("my_map", |v| v * 2.0).expect_err("closures stay on the host");
    assert!(
        matches!(e, Error::DeviceUnavailable { .. })
            && e.to_string().contains("my_map")
            && e.to_string().contains("cuda:0"),
        "{e}"
    );
    assert!(
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g.as_f32().len())).is_err(),
        "as_f32 never hands out device memory"
    );
    let e = g.add(&c).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { op: "add", lhs: Device::Cuda(0), rhs: Device::Cpu }), "{e:?}");
    let e = c.matmul(&g).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { op: "matmul", lhs: Device::Cpu, rhs: Device::Cuda(0) }), "{e:?}");
    assert!(matches!(Tensor::concat(&[&g, &g, &c], 0), Err(Error::DeviceMismatch { .. })));
    assert!(matches!(nn::swiglu_forward(&c, &g), Err(Error::DeviceMismatch { .. })));
    let mut acc = g.clone();
    assert!(matches!(acc.add_assign(&c), Err(Error::DeviceMismatch { .. })));
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn validation_errors_read_as_on_the_cpu() {
    let d = require_gpu();
    let (a, b) = (Tensor::zeros([2, 3]), Tensor::zeros([4, 5]));
    let (ag, bg) = (up(&a, d), up(&b, d));
    assert_eq!(err_text(ag.add(&bg)), err_text(a.add(&b)));
    assert_eq!(err_text(ag.matmul(&bg)), err_text(a.matmul(&b)));
    assert_eq!(err_text(ag.narrow(1, 2, 2)), err_text(a.narrow(1, 2, 2)));
    assert_eq!(err_text(ag.permute(&[0, 0])), err_text(a.permute(&[0, 0])));
    assert_eq!(err_text(ag.index_select(&[1, 2])), err_text(a.index_select(&[1, 2])));
    assert_eq!(err_text(ag.scatter_add_rows(&[0, 7], 3)), err_text(a.scatter_add_rows(&[0, 7], 3)));
    let h = a.to_dtype(DType::BF16);
    assert_eq!(err_text(up(&h, d).add(&ag)), err_text(h.add(&a)));
    assert_eq!(err_text(up(&h, d).exp()), err_text(h.exp()));
    let (l, lg) = (Tensor::zeros([2, 3]), up(&Tensor::zeros([2, 3]), d));
    assert_eq!(err_text(nn::cross_entropy_forward(&lg, &[1, 3])), err_text(nn::cross_entropy_forward(&l, &[1, 3])));
    let rope = RopeTable::new(4, 8, 10_000.0, None);
    let x = Tensor::zeros([1, 1, 1, 4]);
    assert_eq!(err_text(nn::rope(&up(&x, d), &[8], &rope, false)), err_text(nn::rope(&x, &[8], &rope, false)));
}

// ---------------------------------------------------------------- generic ops

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn binary_ops_with_broadcasts() {
    let d = require_gpu();
    let mut rng = Rng::new(2);
    let shapes: [(&[usize], &[usize]); 6] = [
        (&[3, 1, 5], &[4, 5]),
        (&[2, 3], &[2, 3]),
        (&[7], &[]),
        (&[], &[2, 1, 3]),
        (&[1, 4, 1], &[3, 1, 6]),
        (&[2, 1, 3, 1, 5, 1], &[4, 1, 1, 5, 2]),
    ];
    for (sa, sb) in shapes {
        let a = Tensor::randn(sa, 1.0, &mut rng);
        let b = Tensor::rand_uniform(sb, 0.5, 2.0, &mut rng);
        let (ag, bg) = (up(&a, d), up(&b, d));
        let what = format!("{sa:?} . {sb:?}");
        close(&ag.add(&bg).unwrap(), &a.add(&b).unwrap(), 1e-6, &format!("add {what}"));
        close(&ag.sub(&bg).unwrap(), &a.sub(&b).unwrap(), 1e-6, &format!("sub {what}"));
        close(&ag.mul(&bg).unwrap(), &a.mul(&b).unwrap(), 1e-6, &format!("mul {what}"));
        close(&ag.div(&bg).unwrap(), &a.div(&b).unwrap(), 1e-6, &format!("div {what}"));
        close(&bg.div(&ag).unwrap(), &b.div(&a).unwrap(), 1e-6, &format!("div {what} swapped"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn unary_ops() {
    let d = require_gpu();
    let mut rng = Rng::new(3);
    let x = Tensor::randn([5, 37], 3.0, &mut rng);
    let pos = x.map("abs", |v| v.abs() + 0.1).unwrap();
    let (xg, pg) = (up(&x, d), up(&pos, d));
    type Op = fn(&Tensor) -> echo_tensor::Result<Tensor>;
    let ops: [(&str, Op); 8] = [
        ("scale", |t| t.scale(0.37)),
        ("add_scalar", |t| t.add_scalar(-1.5)),
        ("neg", |t| t.neg()),
        ("exp", |t| t.exp()),
        ("sqr", |t| t.sqr()),
        ("sigmoid", |t| t.sigmoid()),
        ("silu", |t| t.silu()),
        ("ln", |t| t.ln()),
    ];
    for (name, f) in ops {
        let (g, c) = if name == "ln" { (&pg, &pos) } else { (&xg, &x) };
        close(&f(g).unwrap(), &f(c).unwrap(), 1e-6, name);
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn add_assign_broadcast_to_and_sum_to() {
    let d = require_gpu();
    let mut rng = Rng::new(4);
    let (a, b) = (Tensor::randn([6, 11], 1.0, &mut rng), Tensor::randn([6, 11], 1.0, &mut rng));
    let bg = up(&b, d);
    let mut alone = up(&a, d);
    alone.add_assign(&bg).unwrap();
    close(&alone, &a.add(&b).unwrap(), 1e-6, "add_assign in place");
    let mut shared = up(&a, d);
    let saved = shared.clone();
    shared.add_assign(&bg).unwrap();
    close(&shared, &a.add(&b).unwrap(), 1e-6, "add_assign on shared data");
    close(&saved, &a, 0.0, "the other holder still sees the old data");

    let small = Tensor::randn([3, 1, 5], 1.0, &mut rng);
    close(
        &up(&small, d).broadcast_to([2, 3, 4, 5]).unwrap(),
        &small.broadcast_to([2, 3, 4, 5]).unwrap(),
        0.0,
        "broadcast_to",
    );
    let big = Tensor::randn([2, 3, 4, 5], 1.0, &mut rng);
    let bigg = up(&big, d);
    for target in [vec![3, 1, 5], vec![5], vec![1], vec![], vec![2, 1, 4, 1], vec![2, 3, 4, 5]] {
        let s = Shape::new(target);
        close(&bigg.sum_to(&s).unwrap(), &big.sum_to(&s).unwrap(), 1e-5, &format!("sum_to {s}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn layout_ops() {
    let d = require_gpu();
    let mut rng = Rng::new(5);
    let x = Tensor::randn([2, 3, 4, 5], 1.0, &mut rng);
    let xg = up(&x, d);
    close(&xg.permute(&[2, 0, 3, 1]).unwrap(), &x.permute(&[2, 0, 3, 1]).unwrap(), 0.0, "permute");
    close(&xg.transpose(1, 3).unwrap(), &x.transpose(1, 3).unwrap(), 0.0, "transpose");
    for (dim, start, len) in [(0, 1, 1), (2, 1, 2), (3, 0, 5), (3, 4, 1), (1, 3, 0)] {
        close(
            &xg.narrow(dim, start, len).unwrap(),
            &x.narrow(dim, start, len).unwrap(),
            0.0,
            &format!("narrow {dim} {start} {len}"),
        );
    }
    let parts: Vec<Tensor> = [1, 3, 2].iter().map(|&n| Tensor::randn([2, n, 5], 1.0, &mut rng)).collect();
    let gparts: Vec<Tensor> = parts.iter().map(|p| up(p, d)).collect();
    let (pr, gr): (Vec<&Tensor>, Vec<&Tensor>) = (parts.iter().collect(), gparts.iter().collect());
    close(&Tensor::concat(&gr, 1).unwrap(), &Tensor::concat(&pr, 1).unwrap(), 0.0, "concat dim 1");
    let rows: Vec<Tensor> = [2, 1].iter().map(|&n| Tensor::randn([n, 7], 1.0, &mut rng)).collect();
    let grows: Vec<Tensor> = rows.iter().map(|p| up(p, d)).collect();
    close(
        &Tensor::concat(&[&grows[0], &grows[1]], 0).unwrap(),
        &Tensor::concat(&[&rows[0], &rows[1]], 0).unwrap(),
        0.0,
        "concat dim 0",
    );

    let idx = [3usize, 0, 10, 3, 7];
    for table in [Tensor::randn([11, 6], 1.0, &mut rng), Tensor::randn([11, 2, 3], 1.0, &mut rng)] {
        close(&up(&table, d).index_select(&idx).unwrap(), &table.index_select(&idx).unwrap(), 0.0, "index_select");
        // A bf16 table (the frozen embedding) is gathered and widened on the device.
        let t16 = up(&table.to_dtype(DType::BF16), d);
        close(
            &t16.index_select(&idx).unwrap(),
            &bf16_exact(&table).index_select(&idx).unwrap(),
            0.0,
            "index_select bf16",
        );
        let src = Tensor::randn(Shape::new([&[idx.len()][..], &table.dims()[1..]].concat()), 1.0, &mut rng);
        close(
            &up(&src, d).scatter_add_rows(&idx, 11).unwrap(),
            &src.scatter_add_rows(&idx, 11).unwrap(),
            0.0,
            "scatter_add_rows",
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn matmul_all_transposes_batched_and_shared() {
    let d = require_gpu();
    let mut rng = Rng::new(6);
    for (batch, m, k, n) in [(vec![], 7, 13, 5), (vec![2, 3], 5, 17, 9), (vec![1], 33, 1, 4), (vec![2], 3, 0, 4)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let ad = [batch.clone(), if ta { vec![k, m] } else { vec![m, k] }].concat();
                let bd = if tb { vec![n, k] } else { vec![k, n] };
                let a = Tensor::randn(ad, 1.0, &mut rng);
                for b in [
                    Tensor::randn(bd.clone(), 1.0, &mut rng),
                    Tensor::randn([batch.clone(), bd.clone()].concat(), 1.0, &mut rng),
                ] {
                    let what = format!("a {} b {} ta {ta} tb {tb}", a.shape(), b.shape());
                    close(
                        &up(&a, d).matmul_t(&up(&b, d), ta, tb).unwrap(),
                        &a.matmul_t(&b, ta, tb).unwrap(),
                        1e-5,
                        &what,
                    );
                }
            }
        }
    }
    let x = Tensor::randn([2, 3, 17], 1.0, &mut rng);
    let w = Tensor::randn([9, 17], 0.2, &mut rng);
    close(&up(&x, d).linear(&up(&w, d)).unwrap(), &x.linear(&w).unwrap(), 1e-5, "linear f32");
    // bf16 weight: x is cast to bf16 for cuBLAS. With bf16-exact inputs only the summation
    // order differs; with any x the bf16 rounding of x shows (bf16 tolerance).
    let (xr, wr) = (bf16_exact(&x), bf16_exact(&w));
    let w16 = up(&w.to_dtype(DType::BF16), d);
    close(&up(&xr, d).linear(&w16).unwrap(), &xr.linear(&wr).unwrap(), 1e-4, "linear bf16, exact inputs");
    close(&up(&x, d).linear(&w16).unwrap(), &x.linear(&wr).unwrap(), 2e-2, "linear bf16");
    let dy = bf16_exact(&Tensor::randn([2, 3, 9], 1.0, &mut rng));
    close(
        &up(&dy, d).matmul(&w16).unwrap(),
        &dy.matmul(&wr).unwrap(),
        1e-4,
        "dy W with a bf16 W (linear's input gradient)",
    );
    // Anywhere else a bf16 operand is refused, as on the CPU.
    let e = up(&Tensor::zeros([9, 4]), d).matmul_t(&w16, true, false).unwrap_err();
    assert!(matches!(e, Error::UnsupportedDType { op: "matmul", .. }), "{e:?}");
    assert!(matches!(w16.matmul(&up(&Tensor::zeros([17, 2]), d)), Err(Error::UnsupportedDType { op: "matmul", .. })));
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn reductions_and_softmax() {
    let d = require_gpu();
    let mut rng = Rng::new(7);
    let x = Tensor::randn([4, 6, 35], 1.0, &mut rng);
    let xg = up(&x, d);
    for dim in 0..3 {
        for keep in [false, true] {
            close(
                &xg.sum_dim(dim, keep).unwrap(),
                &x.sum_dim(dim, keep).unwrap(),
                1e-5,
                &format!("sum_dim {dim} {keep}"),
            );
            close(
                &xg.max_dim(dim, keep).unwrap(),
                &x.max_dim(dim, keep).unwrap(),
                0.0,
                &format!("max_dim {dim} {keep}"),
            );
        }
    }
    let empty = Tensor::zeros([3, 0, 2]);
    close(&up(&empty, d).sum_dim(1, false).unwrap(), &empty.sum_dim(1, false).unwrap(), 0.0, "sum over an empty dim");
    close(&up(&empty, d).max_dim(1, true).unwrap(), &empty.max_dim(1, true).unwrap(), 0.0, "max over an empty dim");
    close(&xg.sum_all().unwrap(), &x.sum_all().unwrap(), 1e-6, "sum_all");
    close(&xg.mean_all().unwrap(), &x.mean_all().unwrap(), 1e-6, "mean_all");
    close(&xg.sum_all_div(7.0).unwrap(), &x.sum_all_div(7.0).unwrap(), 1e-6, "sum_all_div");
    let other = Tensor::randn([5, 3], 1.0, &mut rng);
    let (cpu, gpu) =
        (Tensor::sum_squares(&[&x, &other]).unwrap(), Tensor::sum_squares(&[&xg, &up(&other, d)]).unwrap());
    assert!((gpu - cpu).abs() <= 1e-5 * cpu, "sum_squares: {gpu} on the device vs {cpu}");
    let logits = Tensor::randn([3, 5, 37], 10.0, &mut rng);
    close(&up(&logits, d).softmax_last().unwrap(), &logits.softmax_last().unwrap(), 1e-6, "softmax_last");
}

// ---------------------------------------------------------------- fused ops

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn rmsnorm_forward_backward() {
    let d = require_gpu();
    let mut rng = Rng::new(8);
    let (x, w, dy) = (
        Tensor::randn([3, 5, 67], 2.0, &mut rng),
        Tensor::randn([67], 1.0, &mut rng),
        Tensor::randn([3, 5, 67], 1.0, &mut rng),
    );
    let (xg, wg, dyg) = (up(&x, d), up(&w, d), up(&dy, d));
    for weighted in [true, false] {
        let (wc, wgo) = if weighted { (Some(&w), Some(&wg)) } else { (None, None) };
        let (y, rstd) = nn::rmsnorm_forward(&x, wc, 1e-5).unwrap();
        let (yg, rstdg) = nn::rmsnorm_forward(&xg, wgo, 1e-5).unwrap();
        close(&yg, &y, 2e-5, "rmsnorm y");
        close(&rstdg, &rstd, 2e-5, "rmsnorm rstd");
        for want_dw in [true, false] {
            let (dx, dw) = nn::rmsnorm_backward(&dy, &x, wc, &rstd, want_dw).unwrap();
            let (dxg, dwg) = nn::rmsnorm_backward(&dyg, &xg, wgo, &rstdg, want_dw).unwrap();
            close(&dxg, &dx, 2e-5, "rmsnorm dx");
            assert_eq!(dw.is_some(), dwg.is_some());
            if let (Some(dwg), Some(dw)) = (dwg, dw) {
                close(&dwg, &dw, 2e-5, "rmsnorm dw");
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn rope_forward_and_inverse() {
    let d = require_gpu();
    let mut rng = Rng::new(9);
    let table = RopeTable::new(16, 64, 10_000.0, None);
    let x = Tensor::randn([2, 9, 3, 16], 1.0, &mut rng);
    let positions: Vec<usize> = (0..18).map(|i| if i < 9 { i } else { 40 + i }).collect();
    for inverse in [false, true] {
        close(
            &nn::rope(&up(&x, d), &positions, &table, inverse).unwrap(),
            &nn::rope(&x, &positions, &table, inverse).unwrap(),
            1e-6,
            "rope",
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn attention_gqa_with_padding() {
    let d = require_gpu();
    let mut rng = Rng::new(10);
    for (b, t, hq, hkv, hd) in [(2, 9, 6, 2, 16), (1, 17, 4, 1, 8), (3, 5, 3, 3, 5), (2, 33, 8, 2, 64)] {
        let q = Tensor::randn([b, t, hq, hd], 1.0, &mut rng);
        let k = Tensor::randn([b, t, hkv, hd], 1.0, &mut rng);
        let v = Tensor::randn([b, t, hkv, hd], 1.0, &mut rng);
        let dout = Tensor::randn([b, t, hq, hd], 1.0, &mut rng);
        // right padding on sample 0, left padding (a query with no key) on the last
        let valid: Vec<bool> =
            (0..b * t).map(|i| !((i / t == 0 && b > 1 && i % t >= t - 3) || (i / t == b - 1 && i % t == 0))).collect();
        let valid = nn::AttnMask::padding(valid);
        let (qg, kg, vg, dg) = (up(&q, d), up(&k, d), up(&v, d), up(&dout, d));
        let what = format!("B={b} T={t} Hq={hq} Hkv={hkv} D={hd}");
        let (out, lse) = nn::attention_forward(&q, &k, &v, &valid).unwrap();
        let (outg, lseg) = nn::attention_forward(&qg, &kg, &vg, &valid).unwrap();
        close(&outg, &out, 2e-5, &format!("attention out {what}"));
        close(&lseg, &lse, 2e-5, &format!("attention lse {what}"));
        let (dq, dk, dv) = nn::attention_backward(&q, &k, &v, &valid, &out, &lse, &dout).unwrap();
        let (dqg, dkg, dvg) = nn::attention_backward(&qg, &kg, &vg, &valid, &outg, &lseg, &dg).unwrap();
        close(&dqg, &dq, 2e-5, &format!("attention dq {what}"));
        close(&dkg, &dk, 2e-5, &format!("attention dk {what}"));
        close(&dvg, &dv, 2e-5, &format!("attention dv {what}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn attention_packed_examples() {
    let d = require_gpu();
    let mut rng = Rng::new(12);
    // Examples packed one after the other, across the kernels' 32-key tiles, then padding.
    for (rows, t, hq, hkv, hd) in
        [(vec![vec![3usize, 40, 1, 29], vec![70]], 80, 4, 2, 16), (vec![vec![33, 31, 2]], 66, 3, 1, 64)]
    {
        let b = rows.len();
        let q = Tensor::randn([b, t, hq, hd], 1.0, &mut rng);
        let k = Tensor::randn([b, t, hkv, hd], 1.0, &mut rng);
        let v = Tensor::randn([b, t, hkv, hd], 1.0, &mut rng);
        let dout = Tensor::randn([b, t, hq, hd], 1.0, &mut rng);
        let mask = nn::AttnMask::packed(&rows, t);
        let (qg, kg, vg, dg) = (up(&q, d), up(&k, d), up(&v, d), up(&dout, d));
        let what = format!("packed {rows:?} T={t} Hq={hq} Hkv={hkv} D={hd}");
        let (out, lse) = nn::attention_forward(&q, &k, &v, &mask).unwrap();
        let (outg, lseg) = nn::attention_forward(&qg, &kg, &vg, &mask).unwrap();
        close(&outg, &out, 2e-5, &format!("attention out {what}"));
        close(&lseg, &lse, 2e-5, &format!("attention lse {what}"));
        let (dq, dk, dv) = nn::attention_backward(&q, &k, &v, &mask, &out, &lse, &dout).unwrap();
        let (dqg, dkg, dvg) = nn::attention_backward(&qg, &kg, &vg, &mask, &outg, &lseg, &dg).unwrap();
        close(&dqg, &dq, 2e-5, &format!("attention dq {what}"));
        close(&dkg, &dk, 2e-5, &format!("attention dk {what}"));
        close(&dvg, &dv, 2e-5, &format!("attention dv {what}"));
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn swiglu_forward_backward() {
    let d = require_gpu();
    let mut rng = Rng::new(11);
    let (g, u, dy) = (
        Tensor::randn([3, 41], 4.0, &mut rng),
        Tensor::randn([3, 41], 1.0, &mut rng),
        Tensor::randn([3, 41], 1.0, &mut rng),
    );
    let (gg, ug, dyg) = (up(&g, d), up(&u, d), up(&dy, d));
    close(&nn::swiglu_forward(&gg, &ug).unwrap(), &nn::swiglu_forward(&g, &u).unwrap(), 1e-6, "swiglu");
    let ((dgg, dug), (dgc, duc)) =
        (nn::swiglu_backward(&dyg, &gg, &ug).unwrap(), nn::swiglu_backward(&dy, &g, &u).unwrap());
    close(&dgg, &dgc, 1e-6, "swiglu dgate");
    close(&dug, &duc, 1e-6, "swiglu dup");
}

/// One LoRA problem on both devices; `bf16_w` puts the base weight on the GPU in bf16 (the
/// CPU reference then uses the same bf16 values in f32, and `x`, `dy` are bf16-exact so the
/// cast to bf16 for cuBLAS loses nothing).
fn lora_case(d: Device, bf16_w: bool, dropout: bool, inject: bool, want: Want) {
    let mut rng = Rng::new(12);
    let (s, t, din, dout, r) = (2, 3, 33, 17, 4);
    let mut x = Tensor::randn([s, t, din], 1.0, &mut rng);
    let mut w = Tensor::randn([dout, din], 0.2, &mut rng);
    let mut dy = Tensor::randn([s, t, dout], 1.0, &mut rng);
    if bf16_w {
        (x, w, dy) = (bf16_exact(&x), bf16_exact(&w), bf16_exact(&dy));
    }
    let (a, b) = (Tensor::randn([r, din], 0.2, &mut rng), Tensor::randn([dout, r], 0.2, &mut rng));
    let (gate, proj) = (Tensor::randn([s, r], 1.0, &mut rng), Tensor::randn([s, r], 1.0, &mut rng));
    let keep: Vec<f32> = (0..x.numel()).map(|_| if rng.bernoulli(0.8) { 1.0 / 0.8 } else { 0.0 }).collect();
    let keep = Tensor::new(keep, x.shape().clone()).unwrap();
    let xd = x.mul(&keep).unwrap();
    let wg = if bf16_w { up(&w.to_dtype(DType::BF16), d) } else { up(&w, d) };
    let (xg, ag, bg, dyg, keepg, xdg, gateg, projg) =
        (up(&x, d), up(&a, d), up(&b, d), up(&dy, d), up(&keep, d), up(&xd, d), up(&gate, d), up(&proj, d));
    let p = LoraParams { w: &w, a: &a, b: &b, scale: 1.7 };
    let pg = LoraParams { w: &wg, a: &ag, b: &bg, scale: 1.7 };
    let inj = Injection { gate: &gate, proj: &proj };
    let injg = Injection { gate: &gateg, proj: &projg };
    let what = format!("lora bf16_w={bf16_w} dropout={dropout} inject={inject} {want:?}");
    let (xdc, xdgo) = if dropout { (Some(&xd), Some(&xdg)) } else { (None, None) };
    let (kc, kgo) = if dropout { (Some(&keep), Some(&keepg)) } else { (None, None) };
    let (y, z) = nn::lora_forward(&x, xdc, &p, inject.then_some(&inj)).unwrap();
    let (yg, zg) = nn::lora_forward(&xg, xdgo, &pg, inject.then_some(&injg)).unwrap();
    let tol = if bf16_w { 1e-4 } else { 1e-5 };
    close(&yg, &y, tol, &format!("{what} y"));
    close(&zg, &z, tol, &format!("{what} z"));
    let gc = nn::lora_backward(&dy, &x, xdc, kc, &p, &z, want).unwrap();
    let gg = nn::lora_backward(&dyg, &xg, xdgo, kgo, &pg, &zg, want).unwrap();
    for (name, g, c) in
        [("dx", gg.dx, gc.dx), ("da", gg.da, gc.da), ("db", gg.db, gc.db), ("dz", Some(gg.dz), Some(gc.dz))]
    {
        assert_eq!(g.is_some(), c.is_some(), "{what} {name} presence");
        if let (Some(g), Some(c)) = (g, c) {
            close(&g, &c, tol, &format!("{what} {name}"));
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn lora_forward_backward_f32_and_bf16_weights() {
    let d = require_gpu();
    let all = Want { dx: true, da: true, db: true };
    for bf16_w in [false, true] {
        for (dropout, inject) in [(false, false), (true, true), (false, true)] {
            lora_case(d, bf16_w, dropout, inject, all);
        }
        lora_case(d, bf16_w, true, false, Want { dx: false, da: true, db: false });
    }
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn gated_injection_forward_backward() {
    let d = require_gpu();
    let mut rng = Rng::new(13);
    let (z, dz) = (Tensor::randn([6, 5], 1.0, &mut rng), Tensor::randn([6, 5], 1.0, &mut rng));
    let (g, p) = (Tensor::randn([2, 5], 1.0, &mut rng), Tensor::randn([2, 5], 1.0, &mut rng));
    let (gg, pg) = (up(&g, d), up(&p, d));
    let (inj, injg) = (Injection { gate: &g, proj: &p }, Injection { gate: &gg, proj: &pg });
    close(
        &nn::gated_inject_forward(&up(&z, d), &injg).unwrap(),
        &nn::gated_inject_forward(&z, &inj).unwrap(),
        1e-6,
        "inject",
    );
    let ((dgg, dpg), (dgc, dpc)) =
        (nn::gated_inject_backward(&up(&dz, d), &injg).unwrap(), nn::gated_inject_backward(&dz, &inj).unwrap());
    close(&dgg, &dgc, 1e-5, "inject dgate");
    close(&dpg, &dpc, 1e-5, "inject dproj");
}

/// The echo's output site adds the same per-sample term to a module's output: a width far
/// above the adapter ranks (and `LR_MAX_RANK`), not a multiple of the 32-wide column blocks,
/// and samples of more tokens than the backward's 8 row lanes.
#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn gated_injection_at_a_module_output_width() {
    let d = require_gpu();
    let mut rng = Rng::new(15);
    let (samples, tokens, width) = (3, 21, 331);
    let z = Tensor::randn([samples * tokens, width], 1.0, &mut rng);
    let dz = Tensor::randn([samples * tokens, width], 1.0, &mut rng);
    let (g, p) = (Tensor::randn([samples, width], 1.0, &mut rng), Tensor::randn([samples, width], 1.0, &mut rng));
    let (gg, pg) = (up(&g, d), up(&p, d));
    let (inj, injg) = (Injection { gate: &g, proj: &p }, Injection { gate: &gg, proj: &pg });
    close(
        &nn::gated_inject_forward(&up(&z, d), &injg).unwrap(),
        &nn::gated_inject_forward(&z, &inj).unwrap(),
        1e-6,
        "inject at the output",
    );
    let ((dgg, dpg), (dgc, dpc)) =
        (nn::gated_inject_backward(&up(&dz, d), &injg).unwrap(), nn::gated_inject_backward(&dz, &inj).unwrap());
    close(&dgg, &dgc, 1e-5, "inject at the output, dgate");
    close(&dpg, &dpc, 1e-5, "inject at the output, dproj");
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn dora_norm_forward_backward() {
    let d = require_gpu();
    let mut rng = Rng::new(14);
    let (din, dout, r) = (33, 17, 4);
    let x = Tensor::randn([2, 3, din], 1.0, &mut rng);
    let w = Tensor::randn([dout, din], 0.2, &mut rng);
    let (a, b) = (Tensor::randn([r, din], 0.2, &mut rng), Tensor::randn([dout, r], 0.2, &mut rng));
    let m = Tensor::rand_uniform([dout], 0.5, 1.5, &mut rng);
    let dy = Tensor::randn([2, 3, dout], 1.0, &mut rng);
    let (xg, wg, ag, bg, mg, dyg) = (up(&x, d), up(&w, d), up(&a, d), up(&b, d), up(&m, d), up(&dy, d));
    let p = LoraParams { w: &w, a: &a, b: &b, scale: 0.7 };
    let pg = LoraParams { w: &wg, a: &ag, b: &bg, scale: 0.7 };
    close(&nn::dora_weight_norm(&pg).unwrap(), &nn::dora_weight_norm(&p).unwrap(), 1e-5, "dora norm");
    let (wr, w16) = (bf16_exact(&w), up(&w.to_dtype(DType::BF16), d));
    let norm_bf16 = nn::dora_weight_norm(&LoraParams { w: &w16, ..pg }).unwrap();
    close(&norm_bf16, &nn::dora_weight_norm(&LoraParams { w: &wr, ..p }).unwrap(), 1e-5, "dora norm, bf16 W");

    let (y, saved) = nn::dora_forward(&x, None, &p, &m, None).unwrap();
    let (yg, savedg) = nn::dora_forward(&xg, None, &pg, &mg, None).unwrap();
    close(&yg, &y, 1e-5, "dora y");
    close(&savedg.pre, &saved.pre, 1e-5, "dora pre");
    close(&savedg.norm, &saved.norm, 1e-5, "dora norm saved");
    close(&savedg.z, &saved.z, 1e-5, "dora z");
    let want = Want { dx: true, da: true, db: true };
    let (gc, dmc) = nn::dora_backward(&dy, &x, None, None, &p, &m, &saved, want, true).unwrap();
    let (gg, dmg) = nn::dora_backward(&dyg, &xg, None, None, &pg, &mg, &savedg, want, true).unwrap();
    close(&dmg.unwrap(), &dmc.unwrap(), 1e-5, "dora dm");
    close(&gg.dx.unwrap(), &gc.dx.unwrap(), 1e-5, "dora dx");
    close(&gg.da.unwrap(), &gc.da.unwrap(), 1e-5, "dora da");
    close(&gg.db.unwrap(), &gc.db.unwrap(), 1e-5, "dora db");
    close(&gg.dz, &gc.dz, 1e-5, "dora dz");
}

#[test]
#[ignore = "needs a CUDA GPU; device-bundle/run.sh runs it with --include-ignored"]
fn cross_entropy_kl_and_pooling() {
    let d = require_gpu();
    let mut rng = Rng::new(15);
    let logits = Tensor::randn([7, 1001], 5.0, &mut rng);
    let targets: Vec<i64> = (0..7).map(|r| if r % 3 == 1 { IGNORE_INDEX } else { rng.below(1001) as i64 }).collect();
    let row_scale: Vec<f32> = (0..7).map(|_| rng.uniform()).collect();
    let lg = up(&logits, d);
    let (l, z) = nn::cross_entropy_forward(&logits, &targets).unwrap();
    let (lgl, zg) = nn::cross_entropy_forward(&lg, &targets).unwrap();
    close(&lgl, &l, 1e-5, "ce loss");
    close(&zg, &z, 1e-5, "ce lse");
    close(
        &nn::cross_entropy_backward(&lg, &targets, &zg, &row_scale).unwrap(),
        &nn::cross_entropy_backward(&logits, &targets, &z, &row_scale).unwrap(),
        1e-5,
        "ce dlogits",
    );

    let (t, s) = (Tensor::randn([5, 257], 5.0, &mut rng), Tensor::randn([5, 257], 5.0, &mut rng));
    let (tg, sg) = (up(&t, d), up(&s, d));
    let rs = [0.0, 0.5, -1.0, 2.0, 1.0];
    close(&nn::kl_forward(&tg, &sg, 2.0).unwrap(), &nn::kl_forward(&t, &s, 2.0).unwrap(), 2e-5, "kl");
    close(
        &nn::kl_backward_student(&tg, &sg, 2.0, &rs).unwrap(),
        &nn::kl_backward_student(&t, &s, 2.0, &rs).unwrap(),
        2e-5,
        "kl dstudent",
    );

    let x = Tensor::randn([3, 7, 10], 1.0, &mut rng);
    let mask: Vec<f32> = (0..21)
        .map(|i| {
            if i < 7 {
                0.0
            } else if rng.bernoulli(0.6) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::new(mask, [3, 7]).unwrap();
    let dout = Tensor::randn([3, 10], 1.0, &mut rng);
    let (xg, mg) = (up(&x, d), up(&mask, d));
    close(
        &nn::masked_mean_forward(&xg, &mg).unwrap(),
        &nn::masked_mean_forward(&x, &mask).unwrap(),
        1e-6,
        "masked mean",
    );
    let (dg, dc) = (
        nn::masked_mean_backward(&up(&dout, d), x.shape(), &mg).unwrap(),
        nn::masked_mean_backward(&dout, x.shape(), &mask).unwrap(),
    );
    close(&dg, &dc, 1e-6, "masked mean dx");
}
