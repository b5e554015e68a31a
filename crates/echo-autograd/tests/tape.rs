//! Behaviour of the tape itself: no_grad, frozen vs trainable parameters, gradient
//! accumulation across micro-batches, and release of activations during backward.

use echo_autograd::ops;
use echo_autograd::{ParamStore, Tape};
use echo_kernels::cpu::gemm::thread_flops;
use echo_tensor::{Rng, Tensor};

#[test]
fn no_grad_records_nothing_and_restores() {
    let tape = Tape::new();
    let x = tape.leaf(Tensor::ones([2, 3]));
    {
        let _g = tape.no_grad();
        let y = ops::scale(&x, 2.0).unwrap();
        assert!(!y.requires_grad());
    }
    assert!(tape.is_recording());
    let y = ops::scale(&x, 2.0).unwrap();
    assert!(y.requires_grad());
    assert_eq!(tape.len(), 2, "the leaf and the one recorded scale");
    let inference = Tape::inference();
    let z = ops::scale(&inference.leaf(Tensor::ones([1])), 3.0).unwrap();
    assert!(!z.requires_grad());
    assert!(inference.is_empty());
}

#[test]
fn frozen_weights_get_no_grad_buffer_and_no_weight_gemm() {
    let mut rng = Rng::new(1);
    let (n, d_in, d_out) = (16, 24, 40);
    let mut store = ParamStore::new();
    let w_frozen = store.add("w_frozen", Tensor::randn([d_out, d_in], 0.1, &mut rng), false).unwrap();
    let w_train = store.add("w_train", Tensor::randn([d_out, d_in], 0.1, &mut rng), true).unwrap();
    let x = Tensor::randn([n, d_in], 1.0, &mut rng);

    let backward_flops = |id| {
        let tape = Tape::new();
        let xv = tape.leaf(x.clone());
        let y = ops::linear(&xv, &tape.param(&store, id)).unwrap();
        let loss = ops::sum_all(&y).unwrap();
        let mut s = ParamStore::new();
        // Rebuild a store holding the same params so `store` stays borrowed immutably.
        for (_, p) in store.iter() {
            s.add(p.name.clone(), p.value.clone(), p.trainable).unwrap();
        }
        let before = thread_flops();
        tape.backward(&loss, &mut s).unwrap();
        (thread_flops() - before, s.grad(id).is_some())
    };
    let dx_flops = 2 * (n * d_out * d_in) as u64;
    let (frozen_flops, frozen_has_grad) = backward_flops(w_frozen);
    let (train_flops, train_has_grad) = backward_flops(w_train);
    assert!(!frozen_has_grad, "frozen weight must not get a gradient buffer");
    assert!(train_has_grad);
    assert_eq!(frozen_flops, dx_flops, "frozen: only the input-gradient GEMM");
    assert_eq!(train_flops, 2 * dx_flops, "trainable: input and weight gradients");
}

#[test]
fn gradients_accumulate_across_micro_batches() {
    let mut rng = Rng::new(2);
    let w = Tensor::randn([5, 7], 0.5, &mut rng);
    let x = Tensor::randn([6, 7], 1.0, &mut rng);
    let step = |store: &mut ParamStore, rows: std::ops::Range<usize>, weight: f32| {
        let id = store.id("w").unwrap();
        let tape = Tape::new();
        let xs = tape.constant(x.narrow(0, rows.start, rows.len()).unwrap());
        let y = ops::silu(&ops::linear(&xs, &tape.param(store, id)).unwrap()).unwrap();
        let loss = ops::scale(&ops::sum_all(&y).unwrap(), weight).unwrap();
        tape.backward(&loss, store).unwrap();
    };
    let mut whole = ParamStore::new();
    whole.add("w", w.clone(), true).unwrap();
    step(&mut whole, 0..6, 1.0);
    let mut micro = ParamStore::new();
    micro.add("w", w, true).unwrap();
    step(&mut micro, 0..2, 1.0);
    step(&mut micro, 2..6, 1.0);
    let id = whole.id("w").unwrap();
    let diff = whole.grad(id).unwrap().max_abs_diff(micro.grad(id).unwrap()).unwrap();
    assert!(diff < 1e-5, "accumulated micro-batch gradient differs by {diff}");
    micro.zero_grad();
    assert!(micro.grad(id).is_none());
}

#[test]
fn activations_are_released_during_backward() {
    let mut rng = Rng::new(3);
    let tape = Tape::new();
    let x = tape.leaf(Tensor::randn([4, 8], 1.0, &mut rng));
    let w = tape.constant(Tensor::randn([8, 8], 0.3, &mut rng));
    let h = ops::linear(&x, &w).unwrap();
    // silu saves its input `h`; once the user's handle is gone only the tape keeps it.
    let y = ops::silu(&h).unwrap();
    let weak = h.value().downgrade();
    drop(h);
    assert!(weak.is_alive(), "the silu node still needs its input");
    let loss = ops::sum_all(&y).unwrap();
    tape.backward(&loss, &mut ParamStore::new()).unwrap();
    assert!(!weak.is_alive(), "the activation outlived backward");
    assert!(tape.is_empty(), "backward empties the tape");
}

#[test]
fn foreign_variables_and_non_scalar_losses_are_errors() {
    let (t1, t2) = (Tape::new(), Tape::new());
    let a = t1.leaf(Tensor::ones([2]));
    let b = t2.leaf(Tensor::ones([2]));
    let err = ops::add(&a, &b).err().expect("mixing tapes must fail").to_string();
    assert!(err.contains("another tape"), "{err}");
    let err = t1.backward(&a, &mut ParamStore::new()).err().expect("non-scalar loss").to_string();
    assert!(err.contains("scalar") && err.contains("[2]"), "{err}");
    let mut store = ParamStore::new();
    store.add("p", Tensor::ones([1]), true).unwrap();
    let err = store.add("p", Tensor::ones([1]), true).unwrap_err().to_string();
    assert!(err.contains("`p`"), "{err}");
}
