//! Packed attention is exact: examples placed one after the other in a row (block-diagonal
//! causal mask, [`AttnMask::packed`]) give the same outputs, log-sum-exps and gradients as the
//! same examples each alone in a padded batch, to f32 rounding.

use echo_kernels::cpu::attention::{attention_backward, attention_forward, AttnDims, AttnMask};

/// Deterministic uniform values in [-1, 1), from the workspace's generator.
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = echo_rng::Rng::new(seed);
    (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
}

struct Grads {
    out: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn run(d: &AttnDims, q: &[f32], k: &[f32], v: &[f32], dout: &[f32], mask: &AttnMask) -> Grads {
    let scale = 1.0 / (d.head_dim as f32).sqrt();
    let mut out = vec![0.0; q.len()];
    let mut lse = vec![0.0; d.batch * d.q_heads * d.seq];
    attention_forward(d, q, k, v, mask, scale, &mut out, &mut lse);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(d, q, k, v, mask, scale, &out, &lse, dout, &mut dq, &mut dk, &mut dv);
    Grads { out, lse, dq, dk, dv }
}

#[test]
fn packed_rows_equal_each_example_alone() {
    let (hq, hkv, hd) = (6, 2, 16);
    // Two packed rows of 40: [7, 13, 1, 11] (32 tokens, then 8 of padding) and [19, 21].
    let rows = vec![vec![7usize, 13, 1, 11], vec![19, 21]];
    let t = 40;
    let packed_dims = AttnDims { batch: rows.len(), seq: t, q_heads: hq, kv_heads: hkv, head_dim: hd };
    let (qn, kn) = (rows.len() * t * hq * hd, rows.len() * t * hkv * hd);
    let (q, k, v, dout) = (values(1, qn), values(2, kn), values(3, kn), values(4, qn));
    let packed = run(&packed_dims, &q, &k, &v, &dout, &AttnMask::packed(&rows, t));

    let (mut worst, mut compared) = (0.0f32, 0usize);
    for (b, lens) in rows.iter().enumerate() {
        let mut at = 0;
        for &n in lens {
            // The example alone: a batch of one row of n tokens, no padding.
            let take = |src: &[f32], heads: usize| -> Vec<f32> {
                let w = heads * hd;
                src[(b * t + at) * w..(b * t + at + n) * w].to_vec()
            };
            let dims = AttnDims { batch: 1, seq: n, q_heads: hq, kv_heads: hkv, head_dim: hd };
            let alone = run(
                &dims,
                &take(&q, hq),
                &take(&k, hkv),
                &take(&v, hkv),
                &take(&dout, hq),
                &AttnMask::padding(vec![true; n]),
            );
            for (name, got, want) in [
                ("out", take(&packed.out, hq), &alone.out),
                ("dq", take(&packed.dq, hq), &alone.dq),
                ("dk", take(&packed.dk, hkv), &alone.dk),
                ("dv", take(&packed.dv, hkv), &alone.dv),
            ] {
                for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    let diff = (g - w).abs();
                    assert!(diff <= 1e-5 * (1.0 + w.abs()), "row {b} example at {at}: {name}[{i}] {g} vs {w}");
                    worst = worst.max(diff);
                    compared += 1;
                }
            }
            for h in 0..hq {
                for i in 0..n {
                    let (g, w) = (packed.lse[(b * hq + h) * t + at + i], alone.lse[h * n + i]);
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "lse row {b} head {h} pos {}", at + i);
                }
            }
            at += n;
        }
        // Padding after the examples: no key to attend, so zero output and zero gradients.
        for i in at..t {
            let w = hq * hd;
            assert!(packed.out[(b * t + i) * w..(b * t + i + 1) * w].iter().all(|&x| x == 0.0));
            assert!(packed.dq[(b * t + i) * w..(b * t + i + 1) * w].iter().all(|&x| x == 0.0));
            let wk = hkv * hd;
            assert!(packed.dk[(b * t + i) * wk..(b * t + i + 1) * wk].iter().all(|&x| x == 0.0));
        }
    }
    assert!(compared > 10_000);
    println!("packed vs alone: {compared} values, max |diff| {worst:e}");
}

#[test]
fn a_padded_mask_is_one_run_per_row_and_unchanged() {
    // AttnMask::padding keeps the pre-packing rule: every query sees every valid key before it.
    let (b, t, hq, hkv, hd) = (2, 6, 2, 1, 4);
    let dims = AttnDims { batch: b, seq: t, q_heads: hq, kv_heads: hkv, head_dim: hd };
    let (qn, kn) = (b * t * hq * hd, b * t * hkv * hd);
    let (q, k, v, dout) = (values(5, qn), values(6, kn), values(7, kn), values(8, qn));
    let valid: Vec<bool> = (0..b * t).map(|i| !(i / t == 0 && i % t >= 4)).collect();
    let padded = run(&dims, &q, &k, &v, &dout, &AttnMask::padding(valid.clone()));
    // Row 1 (no padding) equals a packed row holding one example of 6.
    let one = run(&dims, &q, &k, &v, &dout, &AttnMask::packed(&[vec![4], vec![6]], t));
    let w = hq * hd;
    assert_eq!(padded.out[t * w..], one.out[t * w..]);
    assert_eq!(padded.out[..4 * w], one.out[..4 * w]);
}

#[test]
fn bad_masks_are_described() {
    let m = AttnMask { key_valid: vec![true; 4], key_start: vec![0, 0, 3, 2] };
    let e = m.check(1, 4).unwrap_err();
    assert!(e.contains("key_start[0, 2] = 3"), "{e}");
    let m = AttnMask { key_valid: vec![true; 4], key_start: vec![0, 1, 0, 0] };
    assert!(m.check(1, 4).unwrap_err().contains("key_start[0, 2]"));
    assert!(AttnMask::padding(vec![true; 3]).check(1, 4).unwrap_err().contains("needs 4"));
    assert!(AttnMask::packed(&[vec![2, 2], vec![1]], 4).check(2, 4).is_ok());
}
