//! Grouped linear layers on the CPU: `y[j] = x[j] · W_jᵀ + b_j` for `n` groups at once, where
//! `x` is `[n, rows, in]` and every group has its own weight `[out, in]` and optional bias
//! `[out]`, each a separate tensor (the experts of a Soft-MoE layer). The weights are read where
//! they are: no stacked copy in the forward and no split of a stacked gradient in the backward.
//! Groups run in parallel. A group of at most [`SMALL_ROWS`] rows (Soft-MoE's `b·p` slots, often
//! 2) is computed by dot products and row updates that stream each weight row once, forward and
//! backward (the packed GEMM would copy the whole weight to multiply a couple of rows); larger
//! groups call the packed GEMM on the weight as it is stored.

use crate::backend::cpu::buffer_cache::{uninit, zeroed};
use crate::backend::cpu::gemm::{gemm, Operand};
use crate::backend::Device;
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};
use rayon::prelude::*;

/// Rows per group up to which the direct loops run instead of the packed GEMM.
pub const SMALL_ROWS: usize = 8;

/// Shape of one grouped product.
#[derive(Clone, Copy, Debug)]
struct GroupDims {
    groups: usize,
    rows: usize,
    inputs: usize,
    outputs: usize,
}

impl Tensor {
    /// `self[j] · weights[j]ᵀ + biases[j]` for every group `j`: `self` is `[n, rows, in]`,
    /// `weights` `n` tensors `[out, in]`, `biases` (when given) `n` tensors `[out]`; the result
    /// is `[n, rows, out]`, with gradients for `self` and every weight and bias. CPU tensors
    /// only (an error names the device otherwise; see [`Tensor::supports_grouped_linear`]).
    pub fn grouped_linear(
        &self,
        weights: &[&Tensor],
        biases: Option<&[&Tensor]>,
    ) -> Result<Tensor> {
        let dims = check_shapes(self, weights, biases)?;
        let mut inputs: Vec<&Tensor> = Vec::with_capacity(1 + 2 * dims.groups);
        inputs.push(self);
        inputs.extend_from_slice(weights);
        if let Some(b) = biases {
            inputs.extend_from_slice(b);
        }
        if let Some(t) = inputs.iter().find(|t| t.device() != Device::Cpu) {
            return Err(Error::Unsupported(format!(
                "grouped_linear: CPU tensors only, got {} on {}",
                t.shape(),
                t.device()
            )));
        }
        let out_dims = vec![dims.groups, dims.rows, dims.outputs];
        let macs = dims.groups * dims.rows * dims.inputs * dims.outputs;
        if super::super::macs::record(macs) {
            return Tensor::zeros(out_dims, &Device::Cpu);
        }
        let storages: Vec<Storage> = inputs.iter().map(|t| t.storage()).collect();
        let y = forward(&storages, dims, biases.is_some())?;
        let saved: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        let has_bias = biases.is_some();
        Tensor::from_op(
            "grouped_linear",
            Storage::cpu(y),
            out_dims,
            &inputs,
            move || {
                Box::new(move |g: &Tensor, needs: &[bool]| {
                    let storages: Vec<Storage> = saved.iter().map(|t| t.storage()).collect();
                    backward(&g.storage(), &storages, dims, has_bias, needs)
                })
            },
        )
    }

    /// True when [`Tensor::grouped_linear`] runs on this tensor's device.
    pub fn supports_grouped_linear(&self) -> bool {
        self.device() == Device::Cpu
    }
}

fn check_shapes(x: &Tensor, weights: &[&Tensor], biases: Option<&[&Tensor]>) -> Result<GroupDims> {
    let bad = |what: String| Error::shape("grouped_linear", what);
    let [groups, rows, inputs] = *x.dims() else {
        return Err(bad(format!(
            "input {} must be [groups, rows, in]",
            x.shape()
        )));
    };
    if weights.len() != groups {
        return Err(bad(format!(
            "{} weights for the {groups} groups of input {}",
            weights.len(),
            x.shape()
        )));
    }
    let outputs = match weights.first().map(|w| w.dims()) {
        Some(&[out, inp]) if inp == inputs => out,
        _ => 0,
    };
    for (j, w) in weights.iter().enumerate() {
        if w.dims() != [outputs, inputs] || outputs == 0 {
            return Err(bad(format!(
                "weight {j} {} must be [out, {inputs}] like weight 0 for input {}",
                w.shape(),
                x.shape()
            )));
        }
    }
    if let Some(biases) = biases {
        if biases.len() != groups {
            return Err(bad(format!("{} biases for {groups} groups", biases.len())));
        }
        if let Some((j, b)) = biases
            .iter()
            .enumerate()
            .find(|(_, b)| b.dims() != [outputs])
        {
            return Err(bad(format!("bias {j} {} must be [{outputs}]", b.shape())));
        }
    }
    Ok(GroupDims {
        groups,
        rows,
        inputs,
        outputs,
    })
}

/// `x`, the weights and the biases as CPU slices.
type Slices<'a> = (&'a [f32], Vec<&'a [f32]>, Option<Vec<&'a [f32]>>);

/// The CPU slices of `x`, the weights and (when `has_bias`) the biases, in that order.
fn slices(storages: &[Storage], dims: GroupDims, has_bias: bool) -> Result<Slices<'_>> {
    let n = dims.groups;
    let x = storages[0].as_cpu("grouped_linear")?;
    let weights = storages[1..=n]
        .iter()
        .map(|s| s.as_cpu("grouped_linear"))
        .collect::<Result<Vec<_>>>()?;
    let biases = has_bias
        .then(|| {
            storages[n + 1..=2 * n]
                .iter()
                .map(|s| s.as_cpu("grouped_linear"))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    Ok((x, weights, biases))
}

fn forward(storages: &[Storage], d: GroupDims, has_bias: bool) -> Result<Vec<f32>> {
    let (x, weights, biases) = slices(storages, d, has_bias)?;
    let mut y = zeroed(d.groups * d.rows * d.outputs);
    if y.is_empty() {
        return Ok(y);
    }
    let simd = Simd::current();
    y.par_chunks_mut(d.rows * d.outputs)
        .enumerate()
        .for_each(|(j, y)| {
            let x = &x[j * d.rows * d.inputs..(j + 1) * d.rows * d.inputs];
            let w = weights[j];
            if d.rows <= SMALL_ROWS {
                simd.small_forward(x, w, y, (d.inputs, d.outputs));
            } else {
                let b = Operand::transposed(w);
                gemm(d.rows, d.outputs, d.inputs, Operand::plain(x), b, y, 0.0);
            }
            if let Some(biases) = &biases {
                for y in y.chunks_exact_mut(d.outputs) {
                    y.iter_mut().zip(biases[j]).for_each(|(y, b)| *y += b);
                }
            }
        });
    Ok(y)
}

/// One group's gradients: input `[rows, in]`, weight `[out, in]`, bias `[out]` (each empty
/// when not needed).
type GroupGrads = (Vec<f32>, Vec<f32>, Vec<f32>);

fn backward(
    grad: &Storage,
    storages: &[Storage],
    d: GroupDims,
    has_bias: bool,
    needs: &[bool],
) -> Result<Vec<Option<Tensor>>> {
    let g = grad.as_cpu("grouped_linear backward")?;
    let (x, weights, _) = slices(storages, d, false)?;
    let n = d.groups;
    let need_x = needs[0];
    let need_w = |j: usize| needs[1 + j];
    let need_b = |j: usize| has_bias && needs[1 + n + j];
    let (rows, inp, out) = (d.rows, d.inputs, d.outputs);
    let simd = Simd::current();
    let grads: Vec<GroupGrads> = (0..n)
        .into_par_iter()
        .map(|j| {
            let x = &x[j * rows * inp..(j + 1) * rows * inp];
            let g = &g[j * rows * out..(j + 1) * rows * out];
            let w = weights[j];
            let mut dx = if need_x {
                zeroed(rows * inp)
            } else {
                Vec::new()
            };
            // The direct loops write every element of ∂W (its first row of `x` assigns).
            let mut dw = match (need_w(j), rows <= SMALL_ROWS && rows > 0) {
                (false, _) => Vec::new(),
                (true, true) => uninit(out * inp),
                (true, false) => zeroed(out * inp),
            };
            if rows <= SMALL_ROWS {
                simd.small_backward(x, w, g, &mut dx, &mut dw, (inp, out));
            } else {
                if need_x {
                    let (a, b) = (Operand::plain(g), Operand::plain(w));
                    gemm(rows, inp, out, a, b, &mut dx, 0.0);
                }
                if need_w(j) {
                    let (a, b) = (Operand::transposed(g), Operand::plain(x));
                    gemm(out, inp, rows, a, b, &mut dw, 0.0);
                }
            }
            let mut db = Vec::new();
            if need_b(j) {
                db = vec![0.0; out];
                for g in g.chunks_exact(out) {
                    db.iter_mut().zip(g).for_each(|(d, g)| *d += g);
                }
            }
            (dx, dw, db)
        })
        .collect();
    let mut result: Vec<Option<Tensor>> = Vec::with_capacity(1 + 2 * n);
    result.push(if need_x {
        let dx: Vec<f32> = grads
            .iter()
            .flat_map(|(dx, _, _)| dx.iter().copied())
            .collect();
        Some(Tensor::from_vec(dx, [n, rows, inp])?)
    } else {
        None
    });
    let mut dbs = Vec::with_capacity(n);
    for (j, (_, dw, db)) in grads.into_iter().enumerate() {
        result.push(
            need_w(j)
                .then(|| Tensor::from_vec(dw, [out, inp]))
                .transpose()?,
        );
        dbs.push(need_b(j).then(|| Tensor::from_vec(db, [out])).transpose()?);
    }
    if has_bias {
        result.extend(dbs);
    }
    Ok(result)
}

/// The instruction set the direct loops are compiled for, from the calling thread's
/// [`kernel_path`](crate::backend::cpu::kernel_path) (read before the parallel loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Simd {
    fn current() -> Simd {
        use crate::backend::cpu::KernelPath;
        match crate::backend::cpu::kernel_path() {
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2 if KernelPath::Avx2.available() => Simd::Avx2,
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 if KernelPath::Avx512.available() => Simd::Avx512,
            _ => Simd::Portable,
        }
    }
}

/// Methods of [`Simd`] that run one generic loop compiled for the chosen instruction set
/// (`f32::mul_add` is an FMA instruction there; the portable form multiplies and adds).
macro_rules! simd_dispatch {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) => $body:ident;)*) => {
        impl Simd {
            $(fn $name(self, $($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2($($arg: $ty),*) { $body($($arg),*, f32::mul_add) }
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    unsafe fn avx512($($arg: $ty),*) { $body($($arg),*, f32::mul_add) }
                    // SAFETY: `Simd::current` picks a variant only when the CPU has its features.
                    match self {
                        Simd::Avx2 => return unsafe { avx2($($arg),*) },
                        Simd::Avx512 => return unsafe { avx512($($arg),*) },
                        Simd::Portable => {}
                    }
                }
                $body($($arg),*, |a, b, c| a * b + c)
            })*
        }
    };
}

simd_dispatch! {
    fn small_forward(x: &[f32], w: &[f32], y: &mut [f32], in_out: (usize, usize)) => small_forward;
    fn small_backward(
        x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], dw: &mut [f32], in_out: (usize, usize)
    ) => small_backward;
}

/// One group's `y[i, o] = x[i] · w[o]` (no bias), a dot product per output, each weight row read
/// once for all rows.
#[inline(always)]
fn small_forward(
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    (inp, out): (usize, usize),
    madd: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    for (o, w) in w.chunks_exact(inp).enumerate() {
        for (i, x) in x.chunks_exact(inp).enumerate() {
            y[i * out + o] = dot(x, w, madd);
        }
    }
}

/// One group's gradients in one pass over the weight rows: `∂x[i] += g[i, o]·w[o]` and
/// `∂w[o] = Σ_i g[i, o]·x[i]` (an empty `dx` or `dw` is not wanted; `dw` is overwritten, `dx`
/// accumulated into).
#[inline(always)]
fn small_backward(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    (inp, out): (usize, usize),
    madd: impl Fn(f32, f32, f32) -> f32 + Copy,
) {
    for (o, w) in w.chunks_exact(inp).enumerate() {
        for (i, x) in x.chunks_exact(inp).enumerate() {
            let go = g[i * out + o];
            if !dx.is_empty() {
                axpy(go, w, &mut dx[i * inp..(i + 1) * inp], madd);
            }
            if !dw.is_empty() {
                let dw = &mut dw[o * inp..(o + 1) * inp];
                if i == 0 {
                    dw.iter_mut().zip(x).for_each(|(d, x)| *d = go * x);
                } else {
                    axpy(go, x, dw, madd);
                }
            }
        }
    }
}

/// `Σ a·b`, with sixteen running sums so the loop vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32], madd: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] = madd(a[l], b[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += alpha · x`.
#[inline(always)]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32], madd: impl Fn(f32, f32, f32) -> f32) {
    y.iter_mut()
        .zip(x)
        .for_each(|(y, x)| *y = madd(alpha, *x, *y));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Rng;

    /// Each group against `linear` (the packed GEMM path), forward and every gradient, at a
    /// small (direct loops) and a large (packed GEMM) row count, on every kernel path this CPU
    /// runs (`MOESEG_REQUIRE_SIMD` turns a skipped one into a failure).
    #[test]
    fn grouped_linear_matches_per_group_linear() -> Result<()> {
        use crate::backend::cpu::{simd_paths_to_test, with_kernel_path, KernelPath};
        let simd = simd_paths_to_test("grouped_linear_matches_per_group_linear")
            .map_err(|e| Error::invalid("test", e))?;
        for path in std::iter::once(KernelPath::Portable).chain(simd) {
            with_kernel_path(path, check_against_linear)?;
        }
        Ok(())
    }

    fn check_against_linear() -> Result<()> {
        let mut rng = Rng::new(7);
        for rows in [2, SMALL_ROWS + 5] {
            let (n, inp, out) = (3, 37, 21);
            let x = Tensor::randn([n, rows, inp], 0.0, 1.0, &mut rng)?.with_requires_grad(true);
            let ws: Vec<Tensor> = (0..n)
                .map(
                    |_| Ok(Tensor::randn([out, inp], 0.0, 1.0, &mut rng)?.with_requires_grad(true)),
                )
                .collect::<Result<_>>()?;
            let bs: Vec<Tensor> = (0..n)
                .map(|_| Ok(Tensor::randn([out], 0.0, 1.0, &mut rng)?.with_requires_grad(true)))
                .collect::<Result<_>>()?;
            let up = Tensor::randn([n, rows, out], 0.0, 1.0, &mut rng)?;
            let (wr, br): (Vec<&Tensor>, Vec<&Tensor>) = (ws.iter().collect(), bs.iter().collect());
            let y = x.grouped_linear(&wr, Some(&br))?;
            y.mul(&up)?.sum_all()?.backward()?;
            let grads = |ts: &[&Tensor]| -> Result<Vec<Vec<f32>>> {
                ts.iter()
                    .map(|t| {
                        t.grad()
                            .ok_or_else(|| Error::invalid("test", "no grad"))?
                            .try_to_vec()
                    })
                    .collect()
            };
            let got_y = y.try_to_vec()?;
            let mut got = grads(&[&x])?;
            got.extend(grads(&wr)?);
            got.extend(grads(&br)?);
            x.clear_grad();
            ws.iter().chain(&bs).for_each(|t| t.clear_grad());
            let mut expect_y = Vec::new();
            let mut total: Option<Tensor> = None;
            for j in 0..n {
                let xj = x.narrow(0, j, 1)?.reshape_to([rows, inp])?;
                let yj = xj.linear(&ws[j], Some(&bs[j]))?;
                expect_y.extend(yj.try_to_vec()?);
                let uj = up.narrow(0, j, 1)?.reshape_to([rows, out])?;
                let term = yj.mul(&uj)?.sum_all()?;
                total = Some(match total {
                    Some(t) => t.add(&term)?,
                    None => term,
                });
            }
            total
                .ok_or_else(|| Error::invalid("test", "no groups"))?
                .backward()?;
            let mut expect = grads(&[&x])?;
            expect.extend(grads(&wr)?);
            expect.extend(grads(&br)?);
            got.insert(0, got_y);
            expect.insert(0, expect_y);
            for (k, (g, e)) in got.iter().zip(&expect).enumerate() {
                assert_eq!(g.len(), e.len(), "tensor {k} at rows {rows}");
                for (a, b) in g.iter().zip(e) {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "tensor {k} rows {rows}: {a} vs {b}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn grouped_linear_rejects_mismatched_weights() -> Result<()> {
        let x = Tensor::zeros(vec![2, 3, 4], &Device::Cpu)?;
        let w = Tensor::zeros(vec![5, 4], &Device::Cpu)?;
        let bad = Tensor::zeros(vec![5, 3], &Device::Cpu)?;
        assert!(x.grouped_linear(&[&w], None).is_err());
        assert!(x.grouped_linear(&[&w, &bad], None).is_err());
        assert_eq!(x.grouped_linear(&[&w, &w], None)?.dims(), [2, 3, 5]);
        Ok(())
    }
}
