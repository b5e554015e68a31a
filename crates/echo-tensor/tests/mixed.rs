//! bf16 frozen weights on the CPU (`echo_tensor`'s `mixed`): the twin of the GPU's mixed
//! precision, checked against its definition written out with f32 ops: the activation that
//! meets the weight rounded to bf16, the weight widened, everything else f32.

use echo_tensor::nn::{self, Injection, LoraParams, Want};
use echo_tensor::{DType, Rng, Tensor};

fn round(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).to_dtype(DType::F32)
}

#[track_caller]
fn close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    let d = a.max_abs_diff(b).unwrap();
    let scale = b.as_f32().iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(d <= tol * scale, "{what}: max diff {d} (scale {scale})");
}

struct Setup {
    x: Tensor,
    xd: Tensor,
    keep: Tensor,
    w16: Tensor,
    w32: Tensor,
    a: Tensor,
    b: Tensor,
    gate: Tensor,
    proj: Tensor,
    dy: Tensor,
}

fn setup() -> Setup {
    let mut rng = Rng::new(9);
    let (rows, din, dout, r) = (6, 20, 12, 4);
    let x = Tensor::randn([2, 3, din], 1.0, &mut rng);
    let keep =
        Tensor::new((0..rows * din).map(|i| if i % 7 == 0 { 0.0 } else { 1.25 }).collect(), [2, 3, din]).unwrap();
    let xd = x.mul(&keep).unwrap();
    let w16 = Tensor::randn([dout, din], 0.3, &mut rng).to_dtype(DType::BF16);
    let w32 = w16.to_dtype(DType::F32);
    Setup {
        x,
        xd,
        keep,
        w16,
        w32,
        a: Tensor::randn([r, din], 0.3, &mut rng),
        b: Tensor::randn([dout, r], 0.3, &mut rng),
        gate: Tensor::randn([2, r], 1.0, &mut rng),
        proj: Tensor::randn([2, r], 1.0, &mut rng),
        dy: Tensor::randn([2, 3, dout], 1.0, &mut rng),
    }
}

#[test]
fn linear_rounds_the_activation_and_widens_the_weight() {
    let s = setup();
    let y = s.x.linear(&s.w16).unwrap();
    close(&y, &round(&s.x).linear(&s.w32).unwrap(), 1e-6, "x W^T");
    // The input gradient `dy W` rounds dy.
    let dy2 = s.dy.reshape([6, 12]).unwrap();
    close(&dy2.matmul(&s.w16).unwrap(), &round(&dy2).matmul(&s.w32).unwrap(), 1e-6, "dy W");
    // Only a shared, untransposed right operand may be bf16; a bf16 left operand never.
    assert!(s.w16.matmul_t(&s.x.reshape([6, 20]).unwrap(), false, true).unwrap_err().to_string().contains("bf16"));
    assert!(dy2.matmul_t(&s.w16, true, false).is_err());
}

#[test]
fn lora_and_dora_with_a_bf16_base_weight() {
    let s = setup();
    let scale = 1.5;
    let p16 = LoraParams { w: &s.w16, a: &s.a, b: &s.b, scale };
    let p32 = LoraParams { w: &s.w32, a: &s.a, b: &s.b, scale };
    let inj = Injection { gate: &s.gate, proj: &s.proj };
    let (y, z) = nn::lora_forward(&s.x, Some(&s.xd), &p16, Some(&inj)).unwrap();
    let (y32, z32) = nn::lora_forward(&s.x, Some(&s.xd), &p32, Some(&inj)).unwrap();
    // The low-rank path is the f32 one; the base product sees round(x).
    assert_eq!(z.to_vec_f32(), z32.to_vec_f32());
    let base_shift = round(&s.x).linear(&s.w32).unwrap().sub(&s.x.linear(&s.w32).unwrap()).unwrap();
    close(&y, &y32.add(&base_shift).unwrap(), 1e-5, "lora y");

    let want = Want { dx: true, da: true, db: true };
    let g = nn::lora_backward(&s.dy, &s.x, Some(&s.xd), Some(&s.keep), &p16, &z, want).unwrap();
    let g32 = nn::lora_backward(&s.dy, &s.x, Some(&s.xd), Some(&s.keep), &p32, &z, want).unwrap();
    assert_eq!(g.da.as_ref().unwrap().to_vec_f32(), g32.da.as_ref().unwrap().to_vec_f32());
    assert_eq!(g.db.as_ref().unwrap().to_vec_f32(), g32.db.as_ref().unwrap().to_vec_f32());
    assert_eq!(g.dz.to_vec_f32(), g32.dz.to_vec_f32());
    let dy2 = s.dy.reshape([6, 12]).unwrap();
    let dx_shift =
        round(&dy2).matmul(&s.w32).unwrap().sub(&dy2.matmul(&s.w32).unwrap()).unwrap().reshape([2, 3, 20]).unwrap();
    close(g.dx.as_ref().unwrap(), &g32.dx.unwrap().add(&dx_shift).unwrap(), 1e-5, "lora dx");
    // dx without dropout and without a request for it.
    let nodrop = nn::lora_backward(&s.dy, &s.x, None, None, &p16, &z, Want { dx: true, ..Default::default() }).unwrap();
    let nodrop32 =
        nn::lora_backward(&s.dy, &s.x, None, None, &p32, &z, Want { dx: true, ..Default::default() }).unwrap();
    close(nodrop.dx.as_ref().unwrap(), &nodrop32.dx.unwrap().add(&dx_shift).unwrap(), 1e-5, "lora dx, no dropout");
    assert!(nodrop.da.is_none() && nodrop.db.is_none());

    // DoRA: the norm of the widened weight, the same scaling.
    let n16 = nn::dora_weight_norm(&p16).unwrap();
    assert_eq!(n16.to_vec_f32(), nn::dora_weight_norm(&p32).unwrap().to_vec_f32());
    let m = Tensor::ones([12]);
    let (y, _) = nn::dora_forward(&s.x, None, &p16, &m, None).unwrap();
    let (pre, _) = nn::lora_forward(&s.x, None, &p16, None).unwrap();
    close(&y, &pre.div(&n16).unwrap(), 1e-6, "dora y");
}

#[test]
fn a_bf16_embedding_is_gathered_widened() {
    let mut rng = Rng::new(3);
    let table = Tensor::randn([10, 4], 1.0, &mut rng).to_dtype(DType::BF16);
    let rows = table.index_select(&[3, 0, 3, 9]).unwrap();
    assert_eq!(rows.dtype(), DType::F32);
    assert_eq!(rows.to_vec_f32(), table.to_dtype(DType::F32).index_select(&[3, 0, 3, 9]).unwrap().to_vec_f32());
    assert!(table.index_select(&[10]).unwrap_err().to_string().contains("index 10"));
    // f16 stays a storage type.
    assert!(table.to_dtype(DType::F16).index_select(&[0]).unwrap_err().to_string().contains("f16"));
}
