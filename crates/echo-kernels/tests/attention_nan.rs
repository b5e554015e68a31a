//! NaN propagates through the CPU attention (full and KV-cache decode) instead of turning into a
//! plausible zero output, while a query with no key to attend (left padding) still outputs
//! zeros. `finite_checksum` prints the bits of a finite case so a change to these kernels can
//! be compared with the previous version's output bit for bit.

use echo_kernels::cpu::attention::{attention_backward, attention_forward, AttnDims, AttnMask};
use echo_kernels::cpu::decode::{cache_write, decode_attention, DecodeDims};

/// Deterministic uniform values in [-1, 1) (splitmix64).
fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

const DIMS: AttnDims = AttnDims { batch: 2, seq: 5, q_heads: 4, kv_heads: 2, head_dim: 8 };

struct Case {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    valid: Vec<bool>,
}

fn case() -> Case {
    let (b, t, hq, hkv, d) = (DIMS.batch, DIMS.seq, DIMS.q_heads, DIMS.kv_heads, DIMS.head_dim);
    // Batch 1 is left-padded by two: its queries 0 and 1 have no key to attend.
    let valid = (0..b * t).map(|i| !(i / t == 1 && i % t < 2)).collect();
    Case { q: values(1, b * t * hq * d), k: values(2, b * t * hkv * d), v: values(3, b * t * hkv * d), valid }
}

fn forward(c: &Case) -> (Vec<f32>, Vec<f32>) {
    let (b, t, hq, d) = (DIMS.batch, DIMS.seq, DIMS.q_heads, DIMS.head_dim);
    let mut out = vec![0.0; b * t * hq * d];
    let mut lse = vec![0.0; b * hq * t];
    attention_forward(
        &DIMS,
        &c.q,
        &c.k,
        &c.v,
        &AttnMask::padding(c.valid.clone()),
        1.0 / (d as f32).sqrt(),
        &mut out,
        &mut lse,
    );
    (out, lse)
}

/// The output of query `(b, i)`, head `h`.
fn row(out: &[f32], b: usize, i: usize, h: usize) -> &[f32] {
    let (t, hq, d) = (DIMS.seq, DIMS.q_heads, DIMS.head_dim);
    &out[((b * t + i) * hq + h) * d..][..d]
}

#[test]
fn a_nan_query_gives_nan_output_not_zeros() {
    let mut c = case();
    let (hq, d) = (DIMS.q_heads, DIMS.head_dim);
    // Query (batch 0, position 3, head 1): one NaN element.
    c.q[(3 * hq + 1) * d + 2] = f32::NAN;
    let (out, _) = forward(&c);
    assert!(row(&out, 0, 3, 1).iter().all(|x| x.is_nan()), "{:?}", row(&out, 0, 3, 1));
    // The other heads and positions stay finite.
    assert!(row(&out, 0, 3, 0).iter().all(|x| x.is_finite()));
    assert!(row(&out, 0, 2, 1).iter().all(|x| x.is_finite()));
}

#[test]
fn an_all_nan_query_row_gives_nan_not_zeros() {
    // Every score of the row NaN: `max` skips NaN, so this used to look like "no key".
    let mut c = case();
    let (hq, d) = (DIMS.q_heads, DIMS.head_dim);
    c.q[(2 * hq) * d..(2 * hq + 1) * d].fill(f32::NAN); // batch 0, position 2, head 0
    let (out, lse) = forward(&c);
    assert!(row(&out, 0, 2, 0).iter().all(|x| x.is_nan()), "{:?}", row(&out, 0, 2, 0));
    assert!(lse[2].is_nan());
}

#[test]
fn a_nan_key_reaches_every_query_that_attends_it() {
    let mut c = case();
    let (hkv, d) = (DIMS.kv_heads, DIMS.head_dim);
    c.k[hkv * d] = f32::NAN; // batch 0, key position 1, kv head 0
    let (out, _) = forward(&c);
    // Query heads 0 and 1 read kv head 0; positions >= 1 attend key 1.
    for i in 1..DIMS.seq {
        for h in 0..2 {
            assert!(row(&out, 0, i, h).iter().all(|x| x.is_nan()), "position {i} head {h}");
        }
    }
    assert!(row(&out, 0, 0, 0).iter().all(|x| x.is_finite()), "position 0 does not attend key 1");
    assert!(row(&out, 0, 3, 2).iter().all(|x| x.is_finite()), "head 2 reads kv head 1");
}

#[test]
fn a_query_with_no_key_still_outputs_zeros_and_zero_gradient() {
    let c = case();
    let (out, lse) = forward(&c);
    for i in 0..2 {
        for h in 0..DIMS.q_heads {
            assert!(row(&out, 1, i, h).iter().all(|&x| x == 0.0), "padding row {i} head {h}");
            assert_eq!(lse[(DIMS.q_heads + h) * DIMS.seq + i], f32::INFINITY);
        }
    }
    let n = out.len();
    let dout = values(4, n);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; c.k.len()], vec![0.0; c.v.len()]);
    let scale = 1.0 / (DIMS.head_dim as f32).sqrt();
    attention_backward(
        &DIMS,
        &c.q,
        &c.k,
        &c.v,
        &AttnMask::padding(c.valid.clone()),
        scale,
        &out,
        &lse,
        &dout,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    assert!(dq.iter().chain(&dk).chain(&dv).all(|x| x.is_finite()));
    for i in 0..2 {
        for h in 0..DIMS.q_heads {
            assert!(row(&dq, 1, i, h).iter().all(|&x| x == 0.0));
        }
    }
}

#[test]
fn a_nan_query_gives_a_nan_gradient() {
    let mut c = case();
    let (hq, d) = (DIMS.q_heads, DIMS.head_dim);
    c.q[(3 * hq + 1) * d] = f32::NAN;
    let (out, lse) = forward(&c);
    let n = out.len();
    let dout = values(4, n);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; c.k.len()], vec![0.0; c.v.len()]);
    let scale = 1.0 / (d as f32).sqrt();
    attention_backward(
        &DIMS,
        &c.q,
        &c.k,
        &c.v,
        &AttnMask::padding(c.valid.clone()),
        scale,
        &out,
        &lse,
        &dout,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    assert!(row(&dq, 0, 3, 1).iter().all(|x| x.is_nan()));
}

fn decode(c: &Case) -> Vec<f32> {
    // The whole sequence as one decode call at offset 0 over a cache of capacity T.
    let (b, t, hq, hkv, d) = (DIMS.batch, DIMS.seq, DIMS.q_heads, DIMS.kv_heads, DIMS.head_dim);
    let dims = DecodeDims { batch: b, q_len: t, q_heads: hq, kv_heads: hkv, head_dim: d, capacity: t };
    let mut kc = vec![0.0; b * hkv * t * d];
    let mut vc = vec![0.0; b * hkv * t * d];
    cache_write(&dims, &c.k, &mut kc, 0);
    cache_write(&dims, &c.v, &mut vc, 0);
    let mut out = vec![0.0; c.q.len()];
    decode_attention(&dims, &c.q, &kc, &vc, &c.valid, 0, 1.0 / (d as f32).sqrt(), &mut out);
    out
}

#[test]
fn decode_propagates_nan_and_keeps_zeros_for_padding() {
    let c = case();
    let out = decode(&c);
    for i in 0..2 {
        assert!(row(&out, 1, i, 0).iter().all(|&x| x == 0.0), "padding row {i}");
    }
    assert!(out.iter().all(|x| x.is_finite()));
    let (hq, d) = (DIMS.q_heads, DIMS.head_dim);
    let mut one = case();
    one.q[(3 * hq + 1) * d + 2] = f32::NAN;
    assert!(row(&decode(&one), 0, 3, 1).iter().all(|x| x.is_nan()));
    let mut all = case();
    all.q[(2 * hq) * d..(2 * hq + 1) * d].fill(f32::NAN);
    let out = decode(&all);
    assert!(row(&out, 0, 2, 0).iter().all(|x| x.is_nan()), "{:?}", row(&out, 0, 2, 0));
}

/// Prints a checksum of the finite case's forward, backward and decode bits (run with
/// `--nocapture` before and after a change to these kernels: it must not move).
#[test]
fn finite_checksum() {
    let c = case();
    let (out, lse) = forward(&c);
    let n = out.len();
    let dout = values(4, n);
    let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; c.k.len()], vec![0.0; c.v.len()]);
    let scale = 1.0 / (DIMS.head_dim as f32).sqrt();
    attention_backward(
        &DIMS,
        &c.q,
        &c.k,
        &c.v,
        &AttnMask::padding(c.valid.clone()),
        scale,
        &out,
        &lse,
        &dout,
        &mut dq,
        &mut dk,
        &mut dv,
    );
    let dec = decode(&c);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in out.iter().chain(&lse).chain(&dq).chain(&dk).chain(&dv).chain(&dec) {
        h = (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
    }
    println!("attention finite checksum {h:016x}");
}
