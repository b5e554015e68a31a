//! Forward values of the fused ops against direct, unfused formulas (gradient checks prove
//! backward matches forward; these prove forward computes the right thing).

use echo_tensor::nn::{self, Injection, LoraParams};
use echo_tensor::{Llama3Scaling, Rng, RopeTable, Tensor, IGNORE_INDEX};

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}: element {i}: {x} vs {y}");
    }
}

/// Naive attention: full score matrix, causal + key mask, GQA by head index.
fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor, valid: &[bool]) -> Vec<f32> {
    let (b, t, hq, d) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let hkv = k.dims()[2];
    let (q, k, v) = (q.as_f32(), k.as_f32(), v.as_f32());
    let mut out = vec![0.0f32; b * t * hq * d];
    for bi in 0..b {
        for h in 0..hq {
            let g = h / (hq / hkv);
            for i in 0..t {
                let mut s: Vec<f64> = vec![f64::NEG_INFINITY; t];
                for j in 0..=i {
                    if valid[bi * t + j] {
                        let dot: f64 = (0..d)
                            .map(|e| (q[((bi * t + i) * hq + h) * d + e] * k[((bi * t + j) * hkv + g) * d + e]) as f64)
                            .sum();
                        s[j] = dot / (d as f64).sqrt();
                    }
                }
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for e in 0..d {
                    let o: f64 =
                        (0..t).map(|j| (s[j] - m).exp() / z * v[((bi * t + j) * hkv + g) * d + e] as f64).sum();
                    out[((bi * t + i) * hq + h) * d + e] = o as f32;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_naive_with_gqa_and_padding() {
    let mut rng = Rng::new(1);
    for (b, t, hq, hkv, d) in [(2, 9, 6, 2, 8), (3, 4, 3, 3, 5), (1, 17, 4, 1, 16)] {
        let q = Tensor::randn([b, t, hq, d], 1.0, &mut rng);
        let k = Tensor::randn([b, t, hkv, d], 1.0, &mut rng);
        let v = Tensor::randn([b, t, hkv, d], 1.0, &mut rng);
        // right padding on sample 0, left padding (a query with nothing to attend) on the last
        let valid: Vec<bool> = (0..b * t)
            .map(|i| {
                let (s, p) = (i / t, i % t);
                !((s == 0 && b > 1 && p >= t - 3) || (s == b - 1 && p == 0))
            })
            .collect();
        let (out, lse) = nn::attention_forward(&q, &k, &v, &nn::AttnMask::padding(valid.clone())).unwrap();
        close(out.as_f32(), &naive_attention(&q, &k, &v, &valid), 1e-5, "attention");
        assert_eq!(lse.dims(), &[b, hq, t]);
    }
}

#[test]
fn rmsnorm_matches_formula() {
    let mut rng = Rng::new(2);
    let x = Tensor::randn([3, 7], 2.0, &mut rng);
    let w = Tensor::randn([7], 1.0, &mut rng);
    let (y, _) = nn::rmsnorm_forward(&x, Some(&w), 1e-5).unwrap();
    let mut want = vec![];
    for row in x.as_f32().chunks(7) {
        let ms: f32 = row.iter().map(|v| v * v).sum::<f32>() / 7.0;
        want.extend(row.iter().zip(w.as_f32()).map(|(v, w)| w * v / (ms + 1e-5).sqrt()));
    }
    close(y.as_f32(), &want, 1e-6, "rmsnorm");
}

#[test]
fn rope_rotates_half_pairs_and_inverse_undoes_it() {
    let table = RopeTable::new(4, 8, 10_000.0, None);
    let x = Tensor::new(vec![1.0, 2.0, 3.0, 4.0], [1, 1, 1, 4]).unwrap();
    let y = nn::rope(&x, &[3], &table, false).unwrap();
    // dims (0, 2) rotate by 3 * 1, dims (1, 3) by 3 * 10000^(-1/2)
    let (a0, a1) = (3.0f32, 3.0f32 * 0.01);
    let want = [
        1.0 * a0.cos() - 3.0 * a0.sin(),
        2.0 * a1.cos() - 4.0 * a1.sin(),
        3.0 * a0.cos() + 1.0 * a0.sin(),
        4.0 * a1.cos() + 2.0 * a1.sin(),
    ];
    close(y.as_f32(), &want, 1e-6, "rope");
    let back = nn::rope(&y, &[3], &table, true).unwrap();
    close(back.as_f32(), x.as_f32(), 1e-6, "rope inverse");
}

#[test]
fn llama3_scaling_has_three_regimes() {
    let s = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };
    let plain = echo_kernels::cpu::rope::inv_freq(128, 500_000.0, None);
    let scaled = echo_kernels::cpu::rope::inv_freq(128, 500_000.0, Some(s));
    let mut regimes = [0usize; 3];
    for (p, q) in plain.iter().zip(&scaled) {
        let wavelen = 2.0 * std::f64::consts::PI / p;
        if wavelen < 8192.0 / 4.0 {
            assert_eq!(p, q, "high frequencies are kept");
            regimes[0] += 1;
        } else if wavelen > 8192.0 {
            assert!((q - p / 8.0).abs() < 1e-15, "low frequencies are divided by the factor");
            regimes[1] += 1;
        } else {
            assert!(*q < *p && *q > p / 8.0, "medium frequencies are interpolated");
            regimes[2] += 1;
        }
    }
    assert!(regimes.iter().all(|&n| n > 0), "test should cover all regimes: {regimes:?}");
}

#[test]
fn swiglu_and_pooling_match_formulas() {
    let g = Tensor::new(vec![-1.0, 0.0, 2.0], [3]).unwrap();
    let u = Tensor::new(vec![3.0, 5.0, -1.0], [3]).unwrap();
    let y = nn::swiglu_forward(&g, &u).unwrap();
    let silu = |x: f32| x / (1.0 + (-x).exp());
    close(y.as_f32(), &[silu(-1.0) * 3.0, 0.0, -silu(2.0)], 1e-6, "swiglu");
    let x = Tensor::new((0..12).map(|v| v as f32).collect(), [2, 3, 2]).unwrap();
    let mask = Tensor::new(vec![1.0, 0.0, 1.0, 0.0, 0.0, 0.0], [2, 3]).unwrap();
    let p = nn::masked_mean_forward(&x, &mask).unwrap();
    close(p.as_f32(), &[2.0, 3.0, 0.0, 0.0], 0.0, "masked mean");
}

#[test]
fn cross_entropy_and_kl_match_formulas() {
    let logits = Tensor::new(vec![1.0, 2.0, 3.0, 0.5, 0.5, 0.5], [2, 3]).unwrap();
    let (loss, _) = nn::cross_entropy_forward(&logits, &[2, IGNORE_INDEX]).unwrap();
    let lse = (1f32.exp() + 2f32.exp() + 3f32.exp()).ln();
    close(loss.as_f32(), &[lse - 3.0, 0.0], 1e-6, "ce");
    let teacher = Tensor::new(vec![0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [2, 3]).unwrap();
    let kl = nn::kl_forward(&teacher, &logits, 2.0).unwrap();
    let sm = |v: &[f32]| {
        let z: f32 = v.iter().map(|x| (x / 2.0).exp()).sum();
        v.iter().map(|x| (x / 2.0).exp() / z).collect::<Vec<_>>()
    };
    let want: Vec<f32> = (0..2)
        .map(|r| {
            let (pt, ps) = (sm(&teacher.as_f32()[r * 3..r * 3 + 3]), sm(&logits.as_f32()[r * 3..r * 3 + 3]));
            pt.iter().zip(&ps).map(|(a, b)| a * (a.ln() - b.ln())).sum()
        })
        .collect();
    close(kl.as_f32(), &want, 1e-6, "kl");
    assert!(kl.as_f32()[1].abs() < 1e-7, "identical distributions have zero KL");
}

#[test]
fn lora_and_injection_match_composition() {
    let mut rng = Rng::new(3);
    let (s, t, din, dout, r) = (2, 3, 5, 4, 2);
    let x = Tensor::randn([s, t, din], 1.0, &mut rng);
    let w = Tensor::randn([dout, din], 1.0, &mut rng);
    let a = Tensor::randn([r, din], 1.0, &mut rng);
    let b = Tensor::randn([dout, r], 1.0, &mut rng);
    let g = Tensor::randn([s, r], 1.0, &mut rng);
    let p = Tensor::randn([s, r], 1.0, &mut rng);
    let params = LoraParams { w: &w, a: &a, b: &b, scale: 1.5 };
    let (y, z) = nn::lora_forward(&x, None, &params, Some(&Injection { gate: &g, proj: &p })).unwrap();
    let gp = g.mul(&p).unwrap().reshape([s, 1, r]).unwrap();
    let z_want = x.linear(&a).unwrap().add(&gp).unwrap();
    close(z.as_f32(), z_want.as_f32(), 1e-5, "bottleneck");
    let y_want = x.linear(&w).unwrap().add(&z_want.linear(&b).unwrap().scale(1.5).unwrap()).unwrap();
    close(y.as_f32(), y_want.as_f32(), 1e-5, "lora output");
}

#[test]
fn dora_norm_matches_direct_norm() {
    let mut rng = Rng::new(4);
    let (din, dout, r) = (9, 6, 3);
    let w = Tensor::randn([dout, din], 1.0, &mut rng);
    let a = Tensor::randn([r, din], 1.0, &mut rng);
    let b = Tensor::randn([dout, r], 1.0, &mut rng);
    let n = nn::dora_weight_norm(&LoraParams { w: &w, a: &a, b: &b, scale: 0.7 }).unwrap();
    let full = w.add(&b.matmul(&a).unwrap().scale(0.7).unwrap()).unwrap();
    let want: Vec<f32> = full.as_f32().chunks(din).map(|row| row.iter().map(|v| v * v).sum::<f32>().sqrt()).collect();
    close(n.as_f32(), &want, 1e-5, "dora norm");
}

#[test]
fn casts_round_trip_and_broadcast() {
    let x = Tensor::new(vec![1.0, -2.5, 3.140625, 65504.0], [2, 2]).unwrap();
    for dt in [echo_tensor::DType::BF16, echo_tensor::DType::F16] {
        let y = x.to_dtype(dt);
        assert_eq!(y.dtype(), dt);
        close(&y.to_dtype(echo_tensor::DType::F32).to_vec_f32(), &[1.0, -2.5, 3.140625, 65504.0], 1e-2, "cast");
    }
    let col = Tensor::new(vec![10.0, 20.0], [2, 1]).unwrap();
    let row = Tensor::new(vec![1.0, 2.0, 3.0], [3]).unwrap();
    let s = col.add(&row).unwrap();
    assert_eq!(s.dims(), &[2, 3]);
    close(s.as_f32(), &[11., 12., 13., 21., 22., 23.], 0.0, "broadcast add");
    close(s.sum_to(&[3].into()).unwrap().as_f32(), &[32., 34., 36.], 0.0, "sum_to");
    let p = Tensor::new((0..6).map(|v| v as f32).collect(), [2, 3]).unwrap().permute(&[1, 0]).unwrap();
    close(p.as_f32(), &[0., 3., 1., 4., 2., 5.], 0.0, "permute");
}
