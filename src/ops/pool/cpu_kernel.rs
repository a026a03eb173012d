//! CPU kernels of the pooling family.
//!
//! Each kind of pooling first lists, per axis, the input range every output position reads
//! ([`AxisWindow`]); the loops below then only walk those ranges. Forward kernels run in
//! parallel over output rows; gradient kernels scatter into the input, so they run one task per
//! (n, c) plane, which keeps the accumulation order (and the result) deterministic.

use super::{AvgPool2dGeometry, PlaneResize, Pool2dGeometry, PoolBackend};
use crate::backend::cpu::{CpuBackend, PAR_CHUNK};
use crate::error::{Error, Result};
use crate::tensor::Storage;
use rayon::prelude::*;

/// The input positions one output position reads along one axis, `start, start + step, … < end`
/// (none when `start >= end`), and `padded_len`, the window's length clipped to the padded
/// input (the average-pool divisor when padding counts).
#[derive(Clone, Copy, Debug)]
struct AxisWindow {
    start: usize,
    end: usize,
    padded_len: usize,
}

impl AxisWindow {
    fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
}

/// Max-pool windows: taps `o·s − p + j·d` for `j < k`, the negative ones skipped.
fn max_pool_windows(
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Vec<AxisWindow> {
    let (input, kernel, stride, padding, dilation) = (
        input as i64,
        kernel as i64,
        stride as i64,
        padding as i64,
        dilation as i64,
    );
    (0..output as i64)
        .map(|o| {
            let origin = o * stride - padding;
            let end = (origin + (kernel - 1) * dilation + 1).min(input);
            let mut start = origin;
            while start < 0 {
                start += dilation;
            }
            AxisWindow {
                start: start as usize,
                end: end.max(0) as usize,
                padded_len: 0,
            }
        })
        .collect()
}

/// Average-pool windows: `[o·s − p, o·s − p + k)` clipped to the padded input for the divisor
/// and to the input for the taps.
fn avg_pool_windows(
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Vec<AxisWindow> {
    let (input, kernel, stride, padding) =
        (input as i64, kernel as i64, stride as i64, padding as i64);
    (0..output as i64)
        .map(|o| {
            let origin = o * stride - padding;
            let padded_end = (origin + kernel).min(input + padding);
            AxisWindow {
                start: origin.max(0) as usize,
                end: padded_end.min(input).max(0) as usize,
                padded_len: (padded_end - origin).max(0) as usize,
            }
        })
        .collect()
}

/// Adaptive windows: `[⌊o·in/out⌋, ⌈(o+1)·in/out⌉)`.
fn adaptive_windows(input: usize, output: usize) -> Vec<AxisWindow> {
    (0..output)
        .map(|o| {
            let start = o * input / output;
            let end = ((o + 1) * input).div_ceil(output);
            AxisWindow {
                start,
                end,
                padded_len: end - start,
            }
        })
        .collect()
}

/// Rows per rayon task so that each task reads about `PAR_CHUNK` input elements.
fn rows_per_task(row_len: usize, reads_per_output: usize) -> usize {
    (PAR_CHUNK / (row_len * reads_per_output).max(1)).max(1)
}

/// Max pooling over the given windows: `(values, flat indices)`, row-parallel. Like PyTorch,
/// the first maximum wins ties, a NaN wins over numbers, and the index starts at the window's
/// first tap.
fn windowed_max(
    x: &[f32],
    geometry: &Pool2dGeometry,
    rows: &[AxisWindow],
    cols: &[AxisWindow],
) -> (Vec<f32>, Vec<f32>) {
    let [in_h, in_w] = geometry.input;
    let [out_h, out_w] = geometry.output;
    let [step_h, step_w] = geometry.dilation;
    let mut values = crate::backend::cpu::buffer_cache::zeroed(geometry.planes * out_h * out_w);
    let mut indices = crate::backend::cpu::buffer_cache::zeroed(values.len());
    let reads = geometry.kernel[0] * geometry.kernel[1];
    values
        .par_chunks_mut(out_w)
        .zip(indices.par_chunks_mut(out_w))
        .enumerate()
        .with_min_len(rows_per_task(out_w, reads))
        .for_each(|(row, (values, indices))| {
            let plane = &x[(row / out_h) * in_h * in_w..][..in_h * in_w];
            let rw = &rows[row % out_h];
            for ((value, index), cw) in values.iter_mut().zip(indices.iter_mut()).zip(cols) {
                let mut best = f32::NEG_INFINITY;
                let mut best_index = rw.start * in_w + cw.start;
                for h in (rw.start..rw.end).step_by(step_h) {
                    for w in (cw.start..cw.end).step_by(step_w) {
                        let v = plane[h * in_w + w];
                        if v > best || v.is_nan() {
                            best = v;
                            best_index = h * in_w + w;
                        }
                    }
                }
                *value = best;
                *index = best_index as f32;
            }
        });
    (values, indices)
}

/// Window sums divided by `divide(sum, row_window, col_window)`, row-parallel; empty windows
/// give 0.
fn windowed_mean(
    x: &[f32],
    sizes: PlaneResize,
    rows: &[AxisWindow],
    cols: &[AxisWindow],
    divide: impl Fn(f32, &AxisWindow, &AxisWindow) -> f32 + Sync,
) -> Vec<f32> {
    let [in_h, in_w] = sizes.input;
    let [out_h, out_w] = sizes.output;
    let mut out = crate::backend::cpu::buffer_cache::zeroed(sizes.planes * out_h * out_w);
    let reads = rows.first().map_or(1, |r| r.len()) * cols.first().map_or(1, |c| c.len());
    out.par_chunks_mut(out_w)
        .enumerate()
        .with_min_len(rows_per_task(out_w, reads))
        .for_each(|(row, out_row)| {
            let plane = &x[(row / out_h) * in_h * in_w..][..in_h * in_w];
            let rw = &rows[row % out_h];
            for (out, cw) in out_row.iter_mut().zip(cols) {
                if rw.len() == 0 || cw.len() == 0 {
                    continue;
                }
                let mut sum = 0.0f32;
                for h in rw.start..rw.end {
                    for &v in &plane[h * in_w + cw.start..h * in_w + cw.end] {
                        sum += v;
                    }
                }
                *out = divide(sum, rw, cw);
            }
        });
    out
}

/// Gradient of [`windowed_mean`]: `divide(grad_out, …)` added over each window, one task per
/// plane.
fn windowed_mean_backward(
    grad_out: &[f32],
    sizes: PlaneResize,
    rows: &[AxisWindow],
    cols: &[AxisWindow],
    divide: impl Fn(f32, &AxisWindow, &AxisWindow) -> f32 + Sync,
) -> Vec<f32> {
    let [in_h, in_w] = sizes.input;
    let [out_h, out_w] = sizes.output;
    let mut grad_in = crate::backend::cpu::buffer_cache::zeroed(sizes.planes * in_h * in_w);
    grad_in
        .par_chunks_mut(in_h * in_w)
        .zip(grad_out.par_chunks(out_h * out_w))
        .for_each(|(plane, grad_plane)| {
            for (rw, grad_row) in rows.iter().zip(grad_plane.chunks(out_w)) {
                for (cw, &g) in cols.iter().zip(grad_row) {
                    if rw.len() == 0 || cw.len() == 0 {
                        continue;
                    }
                    let delta = divide(g, rw, cw);
                    for h in rw.start..rw.end {
                        for v in &mut plane[h * in_w + cw.start..h * in_w + cw.end] {
                            *v += delta;
                        }
                    }
                }
            }
        });
    grad_in
}

/// A flat index stored as f32, checked against the plane it points into.
fn plane_index(op: &'static str, index: f32, plane_len: usize) -> Result<usize> {
    if index >= 0.0 && (index as usize) < plane_len {
        Ok(index as usize)
    } else {
        Err(Error::invalid(
            op,
            format!("index {index} is outside a plane of {plane_len} elements"),
        ))
    }
}

/// `combine(&mut dst[p, indices[p, i]], src[p, i])` into zeroed planes of `dst_plane`
/// elements, one task per plane.
fn scatter_by_index(
    op: &'static str,
    src: &[f32],
    indices: &[f32],
    src_plane: usize,
    dst_plane: usize,
    combine: impl Fn(&mut f32, f32) + Sync,
) -> Result<Vec<f32>> {
    let planes = src.len() / src_plane.max(1);
    let mut dst = crate::backend::cpu::buffer_cache::zeroed(planes * dst_plane);
    dst.par_chunks_mut(dst_plane.max(1))
        .zip(src.par_chunks(src_plane.max(1)))
        .zip(indices.par_chunks(src_plane.max(1)))
        .try_for_each(|((dst, src), indices)| {
            for (&v, &index) in src.iter().zip(indices) {
                combine(&mut dst[plane_index(op, index, dst_plane)?], v);
            }
            Ok(())
        })?;
    Ok(dst)
}

/// `out[p, i] = src[p, indices[p, i]]`, one task per plane.
fn gather_by_index(
    op: &'static str,
    src: &[f32],
    indices: &[f32],
    src_plane: usize,
    out_plane: usize,
) -> Result<Vec<f32>> {
    let mut out = crate::backend::cpu::buffer_cache::zeroed(indices.len());
    out.par_chunks_mut(out_plane.max(1))
        .zip(src.par_chunks(src_plane.max(1)))
        .zip(indices.par_chunks(out_plane.max(1)))
        .try_for_each(|((out, src), indices)| {
            for (o, &index) in out.iter_mut().zip(indices) {
                *o = src[plane_index(op, index, src_plane)?];
            }
            Ok(())
        })?;
    Ok(out)
}

/// The sizes of a windowed pooling call, for the mean helpers.
fn resize_of(geometry: &Pool2dGeometry) -> PlaneResize {
    PlaneResize {
        planes: geometry.planes,
        input: geometry.input,
        output: geometry.output,
    }
}

/// Windows of an average pool and its divisor rule.
fn avg_pool_plan(
    geometry: &AvgPool2dGeometry,
) -> (
    Vec<AxisWindow>,
    Vec<AxisWindow>,
    impl Fn(f32, &AxisWindow, &AxisWindow) -> f32 + Sync,
) {
    let w = &geometry.window;
    let axis = |a: usize| {
        avg_pool_windows(
            w.input[a],
            w.output[a],
            w.kernel[a],
            w.stride[a],
            w.padding[a],
        )
    };
    let (count_include_pad, divisor_override) =
        (geometry.count_include_pad, geometry.divisor_override);
    let divide = move |value: f32, rw: &AxisWindow, cw: &AxisWindow| {
        let divisor = match divisor_override {
            Some(d) => d,
            None if count_include_pad => rw.padded_len * cw.padded_len,
            None => rw.len() * cw.len(),
        };
        value / divisor as f32
    };
    (axis(0), axis(1), divide)
}

/// PyTorch divides adaptive-pool sums by each window side in turn.
fn adaptive_divide(value: f32, rw: &AxisWindow, cw: &AxisWindow) -> f32 {
    value / rw.len() as f32 / cw.len() as f32
}

fn adaptive_plan(sizes: &PlaneResize) -> (Vec<AxisWindow>, Vec<AxisWindow>) {
    (
        adaptive_windows(sizes.input[0], sizes.output[0]),
        adaptive_windows(sizes.input[1], sizes.output[1]),
    )
}

fn plane_len(size: [usize; 2]) -> usize {
    size[0] * size[1]
}

impl PoolBackend for CpuBackend {
    fn max_pool2d_with_indices(
        &self,
        x: &Storage,
        geometry: Pool2dGeometry,
    ) -> Result<(Storage, Storage)> {
        let x = x.as_cpu("max_pool2d")?;
        let g = &geometry;
        let axis = |a: usize| {
            max_pool_windows(
                g.input[a],
                g.output[a],
                g.kernel[a],
                g.stride[a],
                g.padding[a],
                g.dilation[a],
            )
        };
        let (values, indices) = windowed_max(x, g, &axis(0), &axis(1));
        Ok((Storage::cpu(values), Storage::cpu(indices)))
    }

    fn max_pool2d_with_indices_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        geometry: Pool2dGeometry,
    ) -> Result<Storage> {
        let op = "max_pool2d_backward";
        let grad = scatter_by_index(
            op,
            grad_out.as_cpu(op)?,
            indices.as_cpu(op)?,
            plane_len(geometry.output),
            plane_len(geometry.input),
            |dst, v| *dst += v,
        )?;
        Ok(Storage::cpu(grad))
    }

    fn max_unpool2d(&self, x: &Storage, indices: &Storage, sizes: PlaneResize) -> Result<Storage> {
        let op = "max_unpool2d";
        let out = scatter_by_index(
            op,
            x.as_cpu(op)?,
            indices.as_cpu(op)?,
            plane_len(sizes.input),
            plane_len(sizes.output),
            |dst, v| *dst = v,
        )?;
        Ok(Storage::cpu(out))
    }

    fn max_unpool2d_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        sizes: PlaneResize,
    ) -> Result<Storage> {
        let op = "max_unpool2d_backward";
        let grad = gather_by_index(
            op,
            grad_out.as_cpu(op)?,
            indices.as_cpu(op)?,
            plane_len(sizes.output),
            plane_len(sizes.input),
        )?;
        Ok(Storage::cpu(grad))
    }

    fn avg_pool2d(&self, x: &Storage, geometry: AvgPool2dGeometry) -> Result<Storage> {
        let (rows, cols, divide) = avg_pool_plan(&geometry);
        let sizes = resize_of(&geometry.window);
        let out = windowed_mean(x.as_cpu("avg_pool2d")?, sizes, &rows, &cols, divide);
        Ok(Storage::cpu(out))
    }

    fn avg_pool2d_backward(
        &self,
        grad_out: &Storage,
        geometry: AvgPool2dGeometry,
    ) -> Result<Storage> {
        let (rows, cols, divide) = avg_pool_plan(&geometry);
        let sizes = resize_of(&geometry.window);
        let grad_out = grad_out.as_cpu("avg_pool2d_backward")?;
        let grad = windowed_mean_backward(grad_out, sizes, &rows, &cols, divide);
        Ok(Storage::cpu(grad))
    }

    fn adaptive_avg_pool2d(&self, x: &Storage, sizes: PlaneResize) -> Result<Storage> {
        let (rows, cols) = adaptive_plan(&sizes);
        let x = x.as_cpu("adaptive_avg_pool2d")?;
        let out = windowed_mean(x, sizes, &rows, &cols, adaptive_divide);
        Ok(Storage::cpu(out))
    }

    fn adaptive_avg_pool2d_backward(
        &self,
        grad_out: &Storage,
        sizes: PlaneResize,
    ) -> Result<Storage> {
        let (rows, cols) = adaptive_plan(&sizes);
        let grad_out = grad_out.as_cpu("adaptive_avg_pool2d_backward")?;
        let grad = windowed_mean_backward(grad_out, sizes, &rows, &cols, adaptive_divide);
        Ok(Storage::cpu(grad))
    }
}
