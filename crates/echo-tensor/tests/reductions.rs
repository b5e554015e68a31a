//! The full reductions the trainer's losses and clipping rest on: what they accumulate in and
//! when they round, since the trainer's CPU results must not change by a bit.

use echo_tensor::Tensor;

#[test]
fn sum_all_div_divides_before_rounding() {
    // Values whose f64 sum is not an f32: dividing the f32-rounded sum differs from
    // dividing the f64 sum at least once over these seeds, and the op must be the latter.
    let mut rng = echo_tensor::Rng::new(11);
    let mut differs = 0;
    for _ in 0..64 {
        let x = Tensor::randn([257], 1.0, &mut rng);
        let exact: f64 = x.as_f32().iter().map(|&v| v as f64).sum::<f64>() / 3.0;
        let got = x.sum_all_div(3.0).unwrap().item().unwrap();
        assert_eq!(got, exact as f32);
        let rounded_first = x.sum_all().unwrap().item().unwrap() / 3.0;
        differs += usize::from(rounded_first != got);
    }
    assert!(differs > 0, "no case told the two roundings apart: the test would not catch a change");
}

#[test]
fn sum_all_is_sum_all_div_by_one() {
    let mut rng = echo_tensor::Rng::new(12);
    let x = Tensor::randn([3, 91], 5.0, &mut rng);
    let exact: f64 = x.as_f32().iter().map(|&v| v as f64).sum();
    assert_eq!(x.sum_all().unwrap().item().unwrap(), exact as f32);
    assert_eq!(x.sum_all_div(1.0).unwrap().item().unwrap(), exact as f32);
}

#[test]
fn sum_squares_squares_in_f64_across_tensors() {
    // 1e20 squared overflows f32 (max 3.4e38) but not f64.
    let big = Tensor::new(vec![1e20, -1e20], [2]).unwrap();
    let a = 1e20f32 as f64;
    assert_eq!(Tensor::sum_squares(&[&big]).unwrap(), a * a + a * a);
    let (three, four) = (Tensor::new(vec![3.0], [1]).unwrap(), Tensor::new(vec![4.0], [1]).unwrap());
    assert_eq!(Tensor::sum_squares(&[&three, &four]).unwrap(), 25.0);
    assert_eq!(Tensor::sum_squares(&[]).unwrap(), 0.0);
}

#[test]
fn map_runs_on_the_host() {
    let x = Tensor::new(vec![1.0, -2.0], [2]).unwrap();
    assert_eq!(x.map("abs", f32::abs).unwrap().as_f32(), &[1.0, 2.0]);
}
