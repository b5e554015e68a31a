//! The KV-cache attention kernel against the full causal attention (`attention_forward`,
//! recomputed over the whole sequence) on random data: GQA, left padding, the cache filled in
//! one chunk and then token by token.

use echo_kernels::cpu::decode::{cache_write, decode_attention, DecodeDims};
use echo_tensor::{nn, Rng, Tensor};

#[test]
fn cached_attention_matches_full_recompute() {
    let (b, t, hq, hkv, d) = (3, 11, 6, 2, 8);
    let mut rng = Rng::new(7);
    let q = Tensor::randn([b, t, hq, d], 1.5, &mut rng);
    let k = Tensor::randn([b, t, hkv, d], 1.5, &mut rng);
    let v = Tensor::randn([b, t, hkv, d], 1.0, &mut rng);
    // Left padding: row 0 none, row 1 three pad slots, row 2 five.
    let pads = [0usize, 3, 5];
    let valid: Vec<bool> = (0..b * t).map(|i| i % t >= pads[i / t]).collect();
    let (full, _) = nn::attention_forward(&q, &k, &v, &nn::AttnMask::padding(valid.clone())).unwrap();
    let full = full.to_vec_f32();

    let cap = t + 2; // spare slots must not matter
    let mut kc = vec![f32::NAN; b * hkv * cap * d]; // unwritten slots are never read
    let mut vc = kc.clone();
    let mut key_valid = vec![false; b * cap];
    let (qs, ks, vs) = (q.to_vec_f32(), k.to_vec_f32(), v.to_vec_f32());
    let row = |x: &[f32], heads: usize, lo: usize, len: usize| -> Vec<f32> {
        (0..b).flat_map(|bb| x[(bb * t + lo) * heads * d..(bb * t + lo + len) * heads * d].to_vec()).collect()
    };
    let mut offset = 0;
    let mut worst = 0f32;
    for len in [4usize, 1, 1, 2, 1, 1, 1] {
        let dims = DecodeDims { batch: b, q_len: len, q_heads: hq, kv_heads: hkv, head_dim: d, capacity: cap };
        cache_write(&dims, &row(&ks, hkv, offset, len), &mut kc, offset);
        cache_write(&dims, &row(&vs, hkv, offset, len), &mut vc, offset);
        for bb in 0..b {
            for s in offset..offset + len {
                key_valid[bb * cap + s] = valid[bb * t + s];
            }
        }
        let mut out = vec![0.0f32; b * len * hq * d];
        decode_attention(
            &dims,
            &row(&qs, hq, offset, len),
            &kc,
            &vc,
            &key_valid,
            offset,
            1.0 / (d as f32).sqrt(),
            &mut out,
        );
        let want = row(&full, hq, offset, len);
        for (i, (a, w)) in out.iter().zip(&want).enumerate() {
            let (bb, slot) = (i / (len * hq * d), offset + i / (hq * d) % len);
            if slot < pads[bb] {
                assert_eq!(*a, 0.0, "a query with no valid key outputs zero");
            }
            worst = worst.max((a - w).abs());
        }
        offset += len;
    }
    assert_eq!(offset, t);
    println!("max |cached - full| = {worst:e}");
    assert!(worst < 1e-5, "cached attention differs from the full recompute by {worst}");
}

#[test]
fn cached_attention_sees_the_cache() {
    // Guard: changing an earlier cached value must change a later query's output.
    let dims = DecodeDims { batch: 1, q_len: 1, q_heads: 2, kv_heads: 1, head_dim: 4, capacity: 3 };
    let q = vec![0.3f32; 8];
    let k = vec![0.1f32; 12];
    let mut v: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let valid = vec![true; 3];
    let run = |v: &[f32]| {
        let mut out = vec![0.0f32; 8];
        decode_attention(&dims, &q, &k, v, &valid, 2, 0.5, &mut out);
        out
    };
    let a = run(&v);
    v[0] = 100.0;
    assert_ne!(run(&v), a);
}

#[test]
fn few_row_linear_matches_gemm() {
    let mut rng = Rng::new(11);
    for (m, k, n) in [(1usize, 37usize, 50usize), (3, 64, 129), (16, 100, 7), (17, 33, 20), (2, 576, 1000)] {
        let x = Tensor::randn([m, k], 1.0, &mut rng);
        let w = Tensor::randn([n, k], 1.0, &mut rng);
        let want = x.linear(&w).unwrap();
        let got = echo_model::generate::linear(&x.reshape([1, m, k]).unwrap(), &w).unwrap();
        assert_eq!(got.dims(), &[1, m, n]);
        let diff = got.reshape([m, n]).unwrap().max_abs_diff(&want).unwrap();
        assert!(diff < 1e-4 * (k as f32).sqrt(), "m={m} k={k} n={n}: {diff}");
    }
}
