//! GEMM against a triple-loop reference: every transpose combination, shapes that are not
//! multiples of any micro-kernel tile, accumulation and strided (per-head) views.

use echo_kernels::cpu::gemm::{gemm, matmul, matmul_naive, MatRef, Par};
use echo_tensor::{Rng, Tensor};

fn rand_vec(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

fn assert_close(got: &[f32], want: &[f32], k: usize, what: &str) {
    // f32 accumulation over k terms of unit-variance products.
    let tol = 1e-5 * (k as f32).sqrt() * 4.0 + 1e-6;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}: element {i}: {g} vs {w}");
    }
}

#[test]
fn all_transposes_odd_shapes() {
    let mut rng = Rng::new(1);
    for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (33, 17, 65), (129, 31, 47), (64, 100, 3), (250, 577, 97)] {
        for ta in [false, true] {
            for tb in [false, true] {
                let a = rand_vec(m * k, &mut rng);
                let b = rand_vec(k * n, &mut rng);
                let mut want = vec![0.0; m * n];
                matmul_naive(&mut want, &a, &b, m, k, n, ta, tb);
                for par in [Par::Serial, Par::Rayon] {
                    let mut got = vec![f32::NAN; m * n];
                    matmul(&mut got, &a, &b, m, k, n, ta, tb, 1.0, false, par);
                    assert_close(&got, &want, k, &format!("m{m} k{k} n{n} ta{ta} tb{tb} {par:?}"));
                }
            }
        }
    }
}

#[test]
fn accumulate_and_alpha() {
    let mut rng = Rng::new(2);
    let (m, k, n) = (9, 11, 10);
    let (a, b) = (rand_vec(m * k, &mut rng), rand_vec(k * n, &mut rng));
    let c0 = rand_vec(m * n, &mut rng);
    let mut want = vec![0.0; m * n];
    matmul_naive(&mut want, &a, &b, m, k, n, false, false);
    let want: Vec<f32> = want.iter().zip(&c0).map(|(p, c)| c + 0.5 * p).collect();
    let mut got = c0.clone();
    matmul(&mut got, &a, &b, m, k, n, false, false, 0.5, true, Par::Rayon);
    assert_close(&got, &want, k, "accumulate");
}

#[test]
fn strided_head_views() {
    // Head 1 of a [T, H, D] tensor times head 1's transpose: what attention does.
    let mut rng = Rng::new(3);
    let (t, h, d) = (7, 3, 5);
    let q = rand_vec(t * h * d, &mut rng);
    let head: Vec<f32> = (0..t).flat_map(|i| q[(i * h + 1) * d..(i * h + 2) * d].to_vec()).collect();
    let mut want = vec![0.0; t * t];
    matmul_naive(&mut want, &head, &head, t, d, t, false, true);
    let mut got = vec![0.0; t * t];
    let qv = MatRef { data: &q, offset: d, rs: h * d, cs: 1 };
    let kt = MatRef { data: &q, offset: d, rs: 1, cs: h * d };
    gemm(t, t, d, &mut got, 0, t, qv, kt, 1.0, false, Par::Serial);
    assert_close(&got, &want, d, "strided");
}

#[test]
fn tensor_matmul_batched_and_shared() {
    let mut rng = Rng::new(4);
    let a = Tensor::randn([3, 5, 7], 1.0, &mut rng);
    let w = Tensor::randn([9, 7], 1.0, &mut rng);
    let y = a.linear(&w).unwrap();
    assert_eq!(y.dims(), &[3, 5, 9]);
    for bi in 0..3 {
        let ab = a.narrow(0, bi, 1).unwrap().reshape([5, 7]).unwrap();
        let mut want = vec![0.0; 45];
        matmul_naive(&mut want, ab.as_f32(), w.as_f32(), 5, 7, 9, false, true);
        assert_close(&y.as_f32()[bi * 45..(bi + 1) * 45], &want, 7, "linear");
    }
    let b = Tensor::randn([3, 5, 4], 1.0, &mut rng);
    let c = a.matmul_t(&b, true, false).unwrap(); // [3, 7, 4]
    assert_eq!(c.dims(), &[3, 7, 4]);
    let mut want = vec![0.0; 28];
    matmul_naive(&mut want, &a.as_f32()[35..70], &b.as_f32()[20..40], 7, 5, 4, true, false);
    assert_close(&c.as_f32()[28..56], &want, 5, "batched ta");
}
