//! Finite-difference gradient checks for every differentiable op and fused node, on random
//! shapes with odd sizes, GQA ratios above 1 and padded rows.

use echo_autograd::gradcheck::{assert_gradients, Options};
use echo_autograd::ops::{self, Dropout, Inject};
use echo_autograd::Var;
use echo_tensor::{Llama3Scaling, Rng, RopeTable, Tensor, IGNORE_INDEX};
use std::sync::Arc;

fn randn(dims: &[usize], rng: &mut Rng) -> Tensor {
    Tensor::randn(dims.to_vec(), 1.0, rng)
}

/// A few odd sizes drawn from a seeded generator, so shapes vary but runs repeat.
fn odd_sizes(rng: &mut Rng, n: usize, lo: usize, hi: usize) -> Vec<usize> {
    (0..n).map(|_| lo + rng.below(hi - lo + 1)).collect()
}

fn opts() -> Options {
    Options::default()
}

#[test]
fn broadcasting_arithmetic() {
    let mut rng = Rng::new(1);
    for dims in [[3usize, 5, 7], [2, 1, 9]] {
        let a = randn(&dims, &mut rng);
        let b = randn(&[1, dims[2]], &mut rng); // broadcast over leading dims
        assert_gradients("add", &[a.clone(), b.clone()], |v| ops::add(&v[0], &v[1]), opts());
        assert_gradients("sub", &[a.clone(), b.clone()], |v| ops::sub(&v[0], &v[1]), opts());
        assert_gradients("mul", &[a.clone(), b.clone()], |v| ops::mul(&v[0], &v[1]), opts());
        assert_gradients("scale", std::slice::from_ref(&a), |v| ops::scale(&v[0], -1.7), opts());
    }
}

#[test]
fn matmul_all_transposes_batched_and_shared() {
    let mut rng = Rng::new(2);
    let s = odd_sizes(&mut rng, 3, 3, 9);
    let (m, k, n) = (s[0], s[1], s[2]);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let a = randn(&if ta { [2, k, m] } else { [2, m, k] }, &mut rng);
        let b = randn(&if tb { [2, n, k] } else { [2, k, n] }, &mut rng);
        assert_gradients(&format!("matmul ta={ta} tb={tb}"), &[a, b], |v| ops::matmul_t(&v[0], &v[1], ta, tb), opts());
    }
    for tb in [false, true] {
        let a = randn(&[3, m, k], &mut rng);
        let b = randn(&if tb { [n, k] } else { [k, n] }, &mut rng);
        assert_gradients(
            &format!("matmul shared rhs tb={tb}"),
            &[a, b],
            |v| ops::matmul_t(&v[0], &v[1], false, tb),
            opts(),
        );
    }
}

#[test]
fn linear_with_trainable_weight() {
    let mut rng = Rng::new(3);
    let x = randn(&[2, 5, 7], &mut rng);
    let w = randn(&[11, 7], &mut rng);
    assert_gradients("linear", &[x, w], |v| ops::linear(&v[0], &v[1]), opts());
}

#[test]
fn layout_ops() {
    let mut rng = Rng::new(4);
    let a = randn(&[3, 4, 5], &mut rng);
    let b = randn(&[3, 2, 5], &mut rng);
    assert_gradients("reshape", std::slice::from_ref(&a), |v| ops::reshape(&v[0], [12, 5]), opts());
    assert_gradients("permute", std::slice::from_ref(&a), |v| ops::permute(&v[0], &[2, 0, 1]), opts());
    assert_gradients("narrow", std::slice::from_ref(&a), |v| ops::narrow(&v[0], 1, 1, 2), opts());
    assert_gradients("concat", &[a.clone(), b], |v| ops::concat(&[&v[0], &v[1]], 1), opts());
    // Repeated indices must accumulate in the embedding gradient.
    assert_gradients(
        "index_select",
        &[randn(&[7, 3], &mut rng)],
        |v| ops::index_select(&v[0], &[4, 0, 4, 6, 4]),
        opts(),
    );
}

#[test]
fn reductions_and_softmax() {
    let mut rng = Rng::new(5);
    let a = randn(&[3, 5, 7], &mut rng);
    assert_gradients("sum_all", std::slice::from_ref(&a), |v| ops::sum_all(&v[0]), opts());
    assert_gradients("mean_all", std::slice::from_ref(&a), |v| ops::mean_all(&v[0]), opts());
    for dim in 0..3 {
        for keep in [false, true] {
            assert_gradients(
                &format!("sum_dim {dim} {keep}"),
                std::slice::from_ref(&a),
                |v| ops::sum_dim(&v[0], dim, keep),
                opts(),
            );
        }
    }
    assert_gradients("softmax_last", &[a], |v| ops::softmax_last(&v[0]), opts());
}

#[test]
fn activations() {
    let mut rng = Rng::new(6);
    let a = randn(&[5, 9], &mut rng);
    assert_gradients("sigmoid", std::slice::from_ref(&a), |v| ops::sigmoid(&v[0]), opts());
    assert_gradients("silu", std::slice::from_ref(&a), |v| ops::silu(&v[0]), opts());
    let b = randn(&[5, 9], &mut rng);
    assert_gradients("swiglu", &[a, b], |v| ops::swiglu(&v[0], &v[1]), opts());
}

#[test]
fn rmsnorm_with_and_without_weight() {
    let mut rng = Rng::new(7);
    for d in odd_sizes(&mut rng, 2, 3, 13) {
        let x = randn(&[2, 3, d], &mut rng);
        let w = Tensor::randn([d], 0.3, &mut rng).add_scalar(1.0).unwrap();
        assert_gradients("rmsnorm", &[x.clone(), w], |v| ops::rmsnorm(&v[0], Some(&v[1]), 1e-5), opts());
        assert_gradients("rms_normalize", &[x], |v| ops::rms_normalize(&v[0], 1e-5), opts());
    }
}

#[test]
fn rope_default_and_llama3() {
    let mut rng = Rng::new(8);
    let scaling = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16.0,
    };
    for (theta, sc) in [(10_000.0, None), (500_000.0, Some(scaling))] {
        let table = Arc::new(RopeTable::new(6, 64, theta, sc));
        let x = randn(&[2, 5, 3, 6], &mut rng);
        let pos = Arc::new((0..10).map(|i| (i * 7) % 64).collect::<Vec<_>>());
        assert_gradients("rope", &[x], |v| ops::rope(&v[0], &pos, &table), opts());
    }
}

#[test]
fn attention_packed_examples() {
    let mut rng = Rng::new(19);
    // Two rows of [B, T] = [2, 9]: row 0 packs examples of 3, 4 and 1 tokens (then one pad),
    // row 1 examples of 5 and 4.
    let (b, t, hq, hkv, d) = (2, 9, 4, 2, 3);
    let q = randn(&[b, t, hq, d], &mut rng);
    let k = randn(&[b, t, hkv, d], &mut rng);
    let v = randn(&[b, t, hkv, d], &mut rng);
    let mask = Arc::new(echo_tensor::nn::AttnMask::packed(&[vec![3, 4, 1], vec![5, 4]], t));
    assert_gradients("attention packed", &[q, k, v], |x| ops::attention(&x[0], &x[1], &x[2], &mask), opts());
}

#[test]
fn attention_gqa_padding_odd_lengths() {
    let mut rng = Rng::new(9);
    // (batch, seq, q heads, kv heads, head dim)
    for (b, t, hq, hkv, d) in [(2, 5, 4, 2, 4), (2, 7, 3, 1, 6), (1, 4, 2, 2, 3)] {
        let q = randn(&[b, t, hq, d], &mut rng);
        let k = randn(&[b, t, hkv, d], &mut rng);
        let v = randn(&[b, t, hkv, d], &mut rng);
        // Right padding on the last sample.
        let mask = Arc::new(echo_tensor::nn::AttnMask::padding(
            (0..b * t).map(|i| !(i / t == b - 1 && i % t >= t - 2)).collect(),
        ));
        assert_gradients(
            &format!("attention b{b} t{t} hq{hq} hkv{hkv} d{d}"),
            &[q, k, v],
            |x| ops::attention(&x[0], &x[1], &x[2], &mask),
            opts(),
        );
    }
}

#[test]
fn lora_linear_plain_dropout_and_injection() {
    let mut rng = Rng::new(10);
    let (samples, t, d_in, d_out, r) = (3, 5, 7, 9, 3);
    let x = randn(&[samples, t, d_in], &mut rng);
    let w = randn(&[d_out, d_in], &mut rng);
    let a = randn(&[r, d_in], &mut rng);
    let b = randn(&[d_out, r], &mut rng);
    let g = randn(&[samples, r], &mut rng);
    let p = randn(&[samples, r], &mut rng);
    let w1 = w.clone();
    assert_gradients(
        "lora",
        &[x.clone(), a.clone(), b.clone()],
        move |v| ops::lora_linear(&v[0], &w1, &v[1], &v[2], 2.0, None, None),
        opts(),
    );
    let w2 = w.clone();
    assert_gradients(
        "lora dropout",
        &[x.clone(), a.clone(), b.clone()],
        move |v| {
            // A fresh generator per evaluation: the same mask every time.
            let mut drop_rng = Rng::new(99);
            ops::lora_linear(&v[0], &w2, &v[1], &v[2], 2.0, Some(Dropout { p: 0.3, rng: &mut drop_rng }), None)
        },
        opts(),
    );
    assert_gradients(
        "lora injection",
        &[x, a, b, g, p],
        move |v| ops::lora_linear(&v[0], &w, &v[1], &v[2], 0.5, None, Some(Inject { gate: &v[3], proj: &v[4] })),
        opts(),
    );
}

#[test]
fn dora_linear_with_injection() {
    let mut rng = Rng::new(11);
    let (samples, t, d_in, d_out, r) = (2, 3, 6, 5, 2);
    let x = randn(&[samples, t, d_in], &mut rng);
    let w = randn(&[d_out, d_in], &mut rng);
    let a = Tensor::randn([r, d_in], 0.3, &mut rng);
    let b = Tensor::randn([d_out, r], 0.3, &mut rng);
    let m = Tensor::rand_uniform([d_out], 0.5, 2.0, &mut rng);
    let g = randn(&[samples, r], &mut rng);
    let p = randn(&[samples, r], &mut rng);
    // The weight norm n(A, B) is detached (PEFT semantics), so finite differences agree only
    // for inputs n does not depend on: x, m, gate, projection with A, B held constant.
    let (w1, a1, b1) = (w.clone(), a.clone(), b.clone());
    assert_gradients(
        "dora x, m, gate, proj",
        &[x.clone(), m.clone(), g.clone(), p.clone()],
        move |v| {
            let (a_c, b_c) = (v[0].tape().constant(a1.clone()), v[0].tape().constant(b1.clone()));
            ops::dora_linear(&v[0], &w1, &a_c, &b_c, &v[1], 2.0, None, Some(Inject { gate: &v[2], proj: &v[3] }))
        },
        opts(),
    );
    // A and B are covered by the next test.
}

#[test]
fn dora_gradients_equal_lora_scaled_by_detached_norm() {
    // For A and B (on which the detached norm depends) compare DoRA's analytic gradients with
    // a different graph: the LoRA node times m / n0, with n0 a constant.
    let mut rng = Rng::new(17);
    let (samples, t, d_in, d_out, r) = (2, 5, 7, 6, 3);
    let x = randn(&[samples, t, d_in], &mut rng);
    let w = randn(&[d_out, d_in], &mut rng);
    let a = Tensor::randn([r, d_in], 0.3, &mut rng);
    let b = Tensor::randn([d_out, r], 0.3, &mut rng);
    let m = Tensor::rand_uniform([d_out], 0.5, 2.0, &mut rng);
    let seed = randn(&[samples, t, d_out], &mut rng);
    let n0 =
        echo_tensor::nn::dora_weight_norm(&echo_tensor::nn::LoraParams { w: &w, a: &a, b: &b, scale: 2.0 }).unwrap();
    let grads = |use_dora: bool| {
        let tape = echo_autograd::Tape::new();
        let (xv, av, bv, mv) = (tape.leaf(x.clone()), tape.leaf(a.clone()), tape.leaf(b.clone()), tape.leaf(m.clone()));
        let y = if use_dora {
            ops::dora_linear(&xv, &w, &av, &bv, &mv, 2.0, None, None).unwrap()
        } else {
            let c = ops::mul(&mv, &tape.constant(Tensor::ones([d_out]).div(&n0).unwrap())).unwrap();
            ops::mul(&ops::lora_linear(&xv, &w, &av, &bv, 2.0, None, None).unwrap(), &c).unwrap()
        };
        let g = tape.backward_from(&y, seed.clone(), &mut echo_autograd::ParamStore::new()).unwrap();
        [&xv, &av, &bv, &mv].map(|v| g.get(v).unwrap().clone())
    };
    let (dora, reference) = (grads(true), grads(false));
    for (name, (d, r)) in ["x", "A", "B", "m"].iter().zip(dora.iter().zip(&reference)) {
        let scale = r.as_f32().iter().fold(0f32, |s, v| s.max(v.abs()));
        let diff = d.max_abs_diff(r).unwrap();
        assert!(diff <= 1e-5 * scale.max(1.0), "d{name}: max diff {diff} (scale {scale})");
    }
}

#[test]
fn gated_injection_node() {
    let mut rng = Rng::new(12);
    let z = randn(&[3 * 4, 5], &mut rng);
    let g = randn(&[3, 5], &mut rng);
    let p = randn(&[3, 5], &mut rng);
    assert_gradients("gated_injection", &[z, g, p], |v| ops::gated_injection(&v[0], &v[1], &v[2]), opts());
}

#[test]
fn cross_entropy_with_ignored_rows() {
    let mut rng = Rng::new(13);
    let logits = Tensor::randn([6, 11], 2.0, &mut rng);
    let targets = [3, IGNORE_INDEX, 10, 0, IGNORE_INDEX, 7];
    assert_gradients("cross_entropy", &[logits], |v| ops::cross_entropy(&v[0], &targets, 4.0), opts());
}

#[test]
fn kl_divergence_student_with_temperature() {
    let mut rng = Rng::new(14);
    let teacher = Tensor::randn([5, 9], 2.0, &mut rng);
    let student = Tensor::randn([5, 9], 2.0, &mut rng);
    let weights = [1.0, 0.0, 1.0, 1.0, 0.0];
    for tau in [1.0, 2.5] {
        let t = teacher.clone();
        assert_gradients(
            &format!("kl tau={tau}"),
            std::slice::from_ref(&student),
            move |v| ops::kl_div(&t, &v[0], tau, &weights, 3.0),
            opts(),
        );
    }
}

#[test]
fn masked_mean_pool_with_empty_sample() {
    let mut rng = Rng::new(15);
    let x = randn(&[3, 5, 4], &mut rng);
    let mask = Tensor::new(vec![1., 1., 0., 1., 0., 0., 0., 0., 0., 0., 1., 1., 1., 1., 1.], [3, 5]).unwrap();
    assert_gradients("masked_mean_pool", &[x], move |v| ops::masked_mean_pool(&v[0], &mask), opts());
}

#[test]
fn composite_echo_like_graph() {
    // A miniature echo aggregation: softmax layer weights over pooled states, RMS-normalised,
    // a SiLU trunk and a sigmoid gate; checks that gradients compose through many nodes.
    let mut rng = Rng::new(16);
    let pooled = randn(&[3, 2, 6], &mut rng); // [S, B, d]
    let w = randn(&[3, 1, 1], &mut rng);
    let trunk = Tensor::randn([4, 6], 0.5, &mut rng);
    assert_gradients(
        "echo-like",
        &[pooled, w, trunk],
        |v: &[Var]| {
            let sw = ops::softmax_last(&ops::reshape(&v[1], [1, 3])?)?;
            let sw = ops::reshape(&sw, [3, 1, 1])?;
            let e = ops::sum_dim(&ops::mul(&v[0], &sw)?, 0, false)?;
            let e = ops::rms_normalize(&e, 1e-5)?;
            let u = ops::silu(&ops::linear(&e, &v[2])?)?;
            ops::sigmoid(&u)
        },
        opts(),
    );
}

/// The backward draws the dropout mask again from the generator's state before the forward
/// drew it (it keeps no mask; "lora dropout" above checks that it is the same mask): the
/// run's stream must move on exactly as if the mask were drawn once.
#[test]
fn lora_dropout_draws_each_mask_once_from_the_stream() {
    let mut rng = Rng::new(21);
    let tape = echo_autograd::Tape::new();
    let x = tape.leaf(randn(&[2, 3, 6], &mut rng));
    let (a, b) = (tape.leaf(randn(&[2, 6], &mut rng)), tape.leaf(randn(&[5, 2], &mut rng)));
    let w = randn(&[5, 6], &mut rng);
    let mut drop_rng = Rng::new(5);
    let mut expected = drop_rng.clone();
    for _ in 0..x.value().numel() {
        expected.bernoulli(0.3);
    }
    let y = ops::lora_linear(&x, &w, &a, &b, 2.0, Some(Dropout { p: 0.3, rng: &mut drop_rng }), None).unwrap();
    assert_eq!(drop_rng, expected, "the forward draws one mask");
    let loss = ops::sum_all(&y).unwrap();
    tape.backward(&loss, &mut echo_autograd::ParamStore::new()).unwrap();
}
