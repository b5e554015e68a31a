//! `cargo xtask compare-adapters A B`: how two PEFT adapters of one base model differ, module by
//! module. For each projection both adapt: the norm of each one's weight update `ΔW = s B A`,
//! the cosine between the two updates, and the overlap of their output subspaces (the column
//! spaces of `B`: 1 = the same directions, about `r / d_out` for unrelated random ones). All
//! from the low-rank factors (`r × r` products, in f64), never forming `ΔW`.
//!
//! For the study (docs/results.md): does the plain route of an Echo-LoRA adapter learn what
//! LoRA's learns? For DoRA adapters the update compared is the direction part `s B A`; the
//! magnitude vectors are left out (said in the output).

use anyhow::{bail, Context, Result};
use echo_model::weights::WeightFiles;
use echo_model::Proj;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// The first PEFT adapter folder (e.g. the LoRA arm's `best-adapter/`).
    a: PathBuf,
    /// The second PEFT adapter folder (e.g. the Echo-LoRA arm's).
    b: PathBuf,
    /// Also write every row as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One adapted projection of one adapter: its factors and scale.
struct Factors {
    /// `[r, d_in]`, row-major.
    a: Vec<f64>,
    /// `[d_out, r]`, row-major.
    b: Vec<f64>,
    r: usize,
    d_in: usize,
    d_out: usize,
    scale: f64,
}

/// The comparison of one projection.
#[derive(Serialize, Clone, Debug)]
pub struct Row {
    pub layer: usize,
    pub module: String,
    pub norm_a: f64,
    pub norm_b: f64,
    /// `<ΔW_a, ΔW_b> / (|ΔW_a| |ΔW_b|)`; `None` when either update is zero.
    pub cosine: Option<f64>,
    /// `|Q_aᵀ Q_b|_F² / min(rank)` of orthonormal bases of the `B` column spaces; `None` when
    /// either `B` is zero.
    pub subspace_overlap: Option<f64>,
    /// The overlap two random subspaces of these ranks would have on average (`r_b / d_out`).
    pub random_overlap: f64,
    /// Frobenius inner product `<ΔW_a, ΔW_b>`.
    pub inner: f64,
}

/// `Σ_ij x[i, j] y[j, i]` = `tr(x y)` for `x: [n, m]`, `y: [m, n]`.
fn trace_of_product(x: &[f64], y: &[f64], n: usize, m: usize) -> f64 {
    let mut t = 0.0;
    for i in 0..n {
        for j in 0..m {
            t += x[i * m + j] * y[j * n + i];
        }
    }
    t
}

/// `Bᵀ C` for `B: [d, p]`, `C: [d, q]` (row-major): `[p, q]`.
fn cols_gram(b: &[f64], c: &[f64], d: usize, p: usize, q: usize) -> Vec<f64> {
    let mut g = vec![0.0; p * q];
    for k in 0..d {
        for i in 0..p {
            let bi = b[k * p + i];
            for j in 0..q {
                g[i * q + j] += bi * c[k * q + j];
            }
        }
    }
    g
}

/// `A Cᵀ` for `A: [p, n]`, `C: [q, n]` (row-major): `[p, q]`.
fn rows_gram(a: &[f64], c: &[f64], n: usize, p: usize, q: usize) -> Vec<f64> {
    let mut g = vec![0.0; p * q];
    for i in 0..p {
        for j in 0..q {
            g[i * q + j] = a[i * n..(i + 1) * n].iter().zip(&c[j * n..(j + 1) * n]).map(|(x, y)| x * y).sum();
        }
    }
    g
}

/// `<s1 B1 A1, s2 B2 A2>_F = s1 s2 tr((B1ᵀ B2)(A2 A1ᵀ))`.
fn inner(x: &Factors, y: &Factors) -> f64 {
    let bb = cols_gram(&x.b, &y.b, x.d_out, x.r, y.r); // [r1, r2]
    let aa = rows_gram(&y.a, &x.a, x.d_in, y.r, x.r); // [r2, r1]
    x.scale * y.scale * trace_of_product(&bb, &aa, x.r, y.r)
}

/// An orthonormal basis (as columns, `[d, k]` row-major, and `k`) of the column space of
/// `b: [d, r]`, by modified Gram-Schmidt; columns that add less than 1e-10 of their norm are
/// dropped.
fn orthonormal_columns(b: &[f64], d: usize, r: usize) -> (Vec<Vec<f64>>, usize) {
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for j in 0..r {
        let mut v: Vec<f64> = (0..d).map(|k| b[k * r + j]).collect();
        let start: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        for q in &basis {
            let dot: f64 = v.iter().zip(q).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(q).for_each(|(x, y)| *x -= dot * y);
        }
        let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if start > 0.0 && norm > 1e-10 * start {
            v.iter_mut().for_each(|x| *x /= norm);
            basis.push(v);
        }
    }
    let k = basis.len();
    (basis, k)
}

fn overlap(x: &Factors, y: &Factors) -> Option<f64> {
    let (qx, kx) = orthonormal_columns(&x.b, x.d_out, x.r);
    let (qy, ky) = orthonormal_columns(&y.b, y.d_out, y.r);
    if kx == 0 || ky == 0 {
        return None;
    }
    let mut sum = 0.0;
    for u in &qx {
        for v in &qy {
            let dot: f64 = u.iter().zip(v).map(|(a, b)| a * b).sum();
            sum += dot * dot;
        }
    }
    Some(sum / kx.min(ky) as f64)
}

/// The comparison of two adapters' factors of one projection.
fn compare(layer: usize, module: &str, x: &Factors, y: &Factors) -> Row {
    let (nx, ny) = (inner(x, x).max(0.0).sqrt(), inner(y, y).max(0.0).sqrt());
    let ip = inner(x, y);
    Row {
        layer,
        module: module.to_string(),
        norm_a: nx,
        norm_b: ny,
        cosine: (nx > 0.0 && ny > 0.0).then(|| ip / (nx * ny)),
        subspace_overlap: overlap(x, y),
        random_overlap: y.r.min(x.d_out) as f64 / x.d_out as f64,
        inner: ip,
    }
}

/// An adapter's projections: `(layer, projection) -> factors`.
type Sites = BTreeMap<(usize, Proj), Factors>;

/// Every adapted projection of a PEFT folder, and whether it is a DoRA adapter.
fn load(dir: &Path) -> Result<(Sites, bool)> {
    let config = echo_adapters::parse_adapter_config(&dir.join("adapter_config.json"))?;
    let files = WeightFiles::open_files(&[dir.join("adapter_model.safetensors")])?;
    let scale = config.scale() as f64;
    let mut out = BTreeMap::new();
    for name in files.names() {
        let Some(site) =
            name.strip_prefix("base_model.model.model.layers.").and_then(|s| s.strip_suffix(".lora_A.weight"))
        else {
            continue;
        };
        let (layer, path) = site.split_once('.').context("a lora_A key without a layer")?;
        let layer: usize = layer.parse().with_context(|| format!("{name}: layer `{layer}`"))?;
        let proj = Proj::ALL.into_iter().find(|p| p.block_path() == path).with_context(|| format!("{name}: module"))?;
        let read = |kind| -> Result<(Vec<f64>, Vec<usize>)> {
            let key = echo_adapters::peft_key(layer, proj, kind);
            let t = files.finite_f32_tensor(&key, None).with_context(|| format!("{}", dir.display()))?;
            Ok((t.try_to_vec_f32()?.into_iter().map(f64::from).collect(), t.dims().to_vec()))
        };
        let (a, da) = read(echo_adapters::Kind::A)?;
        let (b, db) = read(echo_adapters::Kind::B)?;
        if da.len() != 2 || db.len() != 2 || da[0] != db[1] {
            bail!("{}: {name}: lora_A {da:?} and lora_B {db:?} do not make a [out, r] x [r, in] pair", dir.display());
        }
        out.insert((layer, proj), Factors { a, b, r: da[0], d_in: da[1], d_out: db[0], scale });
    }
    if out.is_empty() {
        bail!("{}: no lora_A / lora_B tensors in adapter_model.safetensors", dir.display());
    }
    Ok((out, config.method == echo_adapters::Method::Dora))
}

pub fn run(args: CompareArgs) -> Result<()> {
    let (fa, dora_a) = load(&args.a)?;
    let (fb, dora_b) = load(&args.b)?;
    let mut rows = Vec::new();
    for ((layer, proj), x) in &fa {
        let Some(y) = fb.get(&(*layer, *proj)) else { continue };
        if (x.d_in, x.d_out) != (y.d_in, y.d_out) {
            bail!(
                "layer {layer} {}: shapes differ ({}x{} vs {}x{})",
                proj.short_name(),
                x.d_out,
                x.d_in,
                y.d_out,
                y.d_in
            );
        }
        rows.push(compare(*layer, proj.short_name(), x, y));
    }
    if rows.is_empty() {
        bail!("{} and {}: no projection adapted by both", args.a.display(), args.b.display());
    }
    let only = |m: &Sites, o: &Sites| m.keys().filter(|k| !o.contains_key(k)).count();
    println!("A = {}\nB = {}", args.a.display(), args.b.display());
    if dora_a || dora_b {
        println!("(DoRA: the update compared is the direction part s·B·A; the magnitude vectors are left out)");
    }
    println!(
        "{:>5} {:<10} {:>10} {:>10} {:>7} {:>8} {:>8} {:>8}",
        "layer", "module", "|dW_A|", "|dW_B|", "B/A", "cosine", "overlap", "random"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for r in &rows {
        let ratio = if r.norm_a > 0.0 { format!("{:.2}", r.norm_b / r.norm_a) } else { "-".into() };
        println!(
            "{:>5} {:<10} {:>10.4} {:>10.4} {:>7} {:>8} {:>8} {:>8.3}",
            r.layer,
            r.module,
            r.norm_a,
            r.norm_b,
            ratio,
            opt(r.cosine),
            opt(r.subspace_overlap),
            r.random_overlap
        );
    }
    // All modules together: the updates as one long vector each.
    let (sa, sb, si) =
        rows.iter().fold((0.0, 0.0, 0.0), |(a, b, i), r| (a + r.norm_a.powi(2), b + r.norm_b.powi(2), i + r.inner));
    let total_cos = (sa > 0.0 && sb > 0.0).then(|| si / (sa.sqrt() * sb.sqrt()));
    println!(
        "all {} modules: |dW_A| {:.4}, |dW_B| {:.4}, cosine {}{}",
        rows.len(),
        sa.sqrt(),
        sb.sqrt(),
        opt(total_cos),
        match (only(&fa, &fb), only(&fb, &fa)) {
            (0, 0) => String::new(),
            (x, y) => format!(" ({x} modules only in A, {y} only in B, not compared)"),
        }
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "a": args.a, "b": args.b, "rows": rows,
            "total": { "norm_a": sa.sqrt(), "norm_b": sb.sqrt(), "cosine": total_cos },
        });
        echo_model::weights::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn factors(seed: u64, r: usize, d_in: usize, d_out: usize, scale: f64) -> Factors {
        let mut rng = echo_rng::Rng::new(seed);
        let mut draw = |n: usize| (0..n).map(|_| rng.normal() as f64).collect::<Vec<_>>();
        Factors { a: draw(r * d_in), b: draw(d_out * r), r, d_in, d_out, scale }
    }

    /// `s B A`, formed.
    fn dense(f: &Factors) -> Vec<f64> {
        let mut w = vec![0.0; f.d_out * f.d_in];
        for o in 0..f.d_out {
            for i in 0..f.d_in {
                w[o * f.d_in + i] = f.scale * (0..f.r).map(|k| f.b[o * f.r + k] * f.a[k * f.d_in + i]).sum::<f64>();
            }
        }
        w
    }

    #[test]
    fn the_factored_inner_product_and_norms_equal_the_dense_ones() {
        let (x, y) = (factors(1, 3, 7, 5, 2.0), factors(2, 4, 7, 5, 0.5));
        let (dx, dy) = (dense(&x), dense(&y));
        let ip: f64 = dx.iter().zip(&dy).map(|(a, b)| a * b).sum();
        assert!((inner(&x, &y) - ip).abs() < 1e-9 * ip.abs().max(1.0), "{} vs {ip}", inner(&x, &y));
        let n: f64 = dx.iter().map(|a| a * a).sum::<f64>().sqrt();
        let row = compare(0, "q_proj", &x, &y);
        assert!((row.norm_a - n).abs() < 1e-9 * n);
        assert!(row.cosine.unwrap().abs() <= 1.0);
    }

    #[test]
    fn an_adapter_against_itself_or_a_rescaled_copy_is_cosine_one_overlap_one() {
        let x = factors(3, 4, 9, 6, 1.0);
        let mut y = factors(3, 4, 9, 6, 1.0);
        y.scale = 3.0;
        let row = compare(0, "v_proj", &x, &y);
        assert!((row.cosine.unwrap() - 1.0).abs() < 1e-12);
        assert!((row.subspace_overlap.unwrap() - 1.0).abs() < 1e-12);
        assert!((row.norm_b / row.norm_a - 3.0).abs() < 1e-12);
        // The negated update: cosine -1, the same subspace.
        y.b.iter_mut().for_each(|v| *v = -*v);
        let row = compare(0, "v_proj", &x, &y);
        assert!((row.cosine.unwrap() + 1.0).abs() < 1e-12);
        assert!((row.subspace_overlap.unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn an_untrained_adapter_has_no_cosine_and_no_subspace() {
        let x = factors(4, 2, 5, 4, 1.0);
        let mut y = factors(5, 2, 5, 4, 1.0);
        y.b.iter_mut().for_each(|v| *v = 0.0);
        let row = compare(1, "k_proj", &x, &y);
        assert_eq!((row.norm_b, row.cosine, row.subspace_overlap), (0.0, None, None));
    }
}
