//! Depthwise convolution (one input and one output channel per group): direct, memory-bound
//! loops over each `(image, channel)` plane, one kernel tap and output row at a time. An
//! im2col + GEMM would spend more time copying than multiplying here.
//!
//! The plane loops are written once and compiled three times ([`planes`]): for AVX-512F, for
//! AVX2+FMA and for the baseline target, so the compiler's vectorised row loops use the widest
//! vectors of the calling thread's [`kernel_path`](crate::backend::cpu::kernel_path).

use super::im2col::{for_each_tap_row, strided_dot, strided_update};
use crate::backend::cpu::{kernel_path, KernelPath};
use crate::ops::conv::Conv2dGeometry;
use rayon::prelude::*;

/// Runs `body` (a plane loop, `#[inline(always)]` all the way down) compiled for `path`'s
/// vector width.
#[inline(always)]
fn planes<R>(path: KernelPath, body: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn avx512<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(body: impl FnOnce() -> R) -> R {
            body()
        }
        match path {
            // SAFETY: the path is available on this CPU (`KernelPath::available`).
            KernelPath::Avx512 => return unsafe { avx512(body) },
            KernelPath::Avx2 => return unsafe { avx2(body) },
            KernelPath::Portable => {}
        }
    }
    let _ = path;
    body()
}

/// The plane sizes the three depthwise loops index with.
struct Planes {
    channels: usize,
    taps: usize,
    in_pixels: usize,
    out_pixels: usize,
    out_width: usize,
    in_width: usize,
    stride_w: usize,
}

impl Planes {
    fn of(geometry: &Conv2dGeometry) -> Planes {
        Planes {
            channels: geometry.out_channels,
            taps: geometry.taps(),
            in_pixels: geometry.in_pixels(),
            out_pixels: geometry.out_pixels(),
            out_width: geometry.out_size[1],
            in_width: geometry.in_size[1],
            stride_w: geometry.params.stride[1],
        }
    }
}

/// `out[n, c] = bias[c] + Σ_tap w[c, tap] · x[n, c, shifted by tap]`, in parallel over planes.
pub(in crate::ops::conv) fn forward(
    geometry: &Conv2dGeometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let Planes {
        channels,
        taps,
        in_pixels,
        out_pixels,
        out_width,
        in_width,
        stride_w,
    } = Planes::of(geometry);
    // Every plane is filled with its bias first, so the buffer needs no zeroing.
    let mut out = crate::backend::cpu::buffer_cache::uninit(geometry.output_len());
    let path = kernel_path();
    out.par_chunks_mut(out_pixels.max(1))
        .enumerate()
        .for_each(|(plane_index, out_plane)| {
            planes(path, || {
                let channel = plane_index % channels;
                let x_plane = &x[plane_index * in_pixels..][..in_pixels];
                let w = &weight[channel * taps..][..taps];
                out_plane.fill(bias.map_or(0.0, |b| b[channel]));
                for_each_tap_row(geometry, 0..out_pixels, |t| {
                    let tap_weight = w[t.tap];
                    let dst = &mut out_plane[t.oh * out_width + t.ow_start..];
                    let src = &x_plane[t.ih * in_width + t.iw_start..];
                    strided_update(dst, 1, src, stride_w, t.len(), |d, s| *d += tap_weight * s);
                });
            })
        });
    out
}

/// `∂L/∂x[n, c] = Σ_tap w[c, tap] · ∂L/∂out[n, c]` scattered back through each tap; planes are
/// independent, so threads never write the same element.
pub(in crate::ops::conv) fn input_backward(
    geometry: &Conv2dGeometry,
    grad_out: &[f32],
    weight: &[f32],
) -> Vec<f32> {
    let Planes {
        channels,
        taps,
        in_pixels,
        out_pixels,
        out_width,
        in_width,
        stride_w,
    } = Planes::of(geometry);
    let mut grad_x = crate::backend::cpu::buffer_cache::zeroed(geometry.input_len());
    let path = kernel_path();
    grad_x
        .par_chunks_mut(in_pixels.max(1))
        .enumerate()
        .for_each(|(plane_index, grad_plane)| {
            planes(path, || {
                let channel = plane_index % channels;
                let g_plane = &grad_out[plane_index * out_pixels..][..out_pixels];
                let w = &weight[channel * taps..][..taps];
                for_each_tap_row(geometry, 0..out_pixels, |t| {
                    let tap_weight = w[t.tap];
                    let dst = &mut grad_plane[t.ih * in_width + t.iw_start..];
                    let src = &g_plane[t.oh * out_width + t.ow_start..];
                    strided_update(dst, stride_w, src, 1, t.len(), |d, s| *d += tap_weight * s);
                });
            })
        });
    grad_x
}

/// `∂L/∂w[c, tap] = Σ_n Σ_p ∂L/∂out[n, c, p] · x[n, c, p shifted by tap]`, in parallel over
/// channels with the images summed in order (deterministic).
pub(in crate::ops::conv) fn weight_backward(
    geometry: &Conv2dGeometry,
    grad_out: &[f32],
    x: &[f32],
) -> Vec<f32> {
    let Planes {
        channels,
        taps,
        in_pixels,
        out_pixels,
        out_width,
        in_width,
        stride_w,
    } = Planes::of(geometry);
    let mut grad_w = crate::backend::cpu::buffer_cache::zeroed(geometry.weight_len());
    let path = kernel_path();
    grad_w
        .par_chunks_mut(taps)
        .enumerate()
        .for_each(|(channel, grad_taps)| {
            planes(path, || {
                let mut per_image = crate::backend::cpu::buffer_cache::zeroed(taps);
                for image in 0..geometry.batch {
                    let plane_index = image * channels + channel;
                    let g_plane = &grad_out[plane_index * out_pixels..][..out_pixels];
                    let x_plane = &x[plane_index * in_pixels..][..in_pixels];
                    per_image.fill(0.0);
                    for_each_tap_row(geometry, 0..out_pixels, |t| {
                        let g_row = &g_plane[t.oh * out_width + t.ow_start..];
                        let x_row = &x_plane[t.ih * in_width + t.iw_start..];
                        per_image[t.tap] += strided_dot(g_row, x_row, stride_w, t.len());
                    });
                    for (acc, v) in grad_taps.iter_mut().zip(&per_image) {
                        *acc += v;
                    }
                }
            })
        });
    grad_w
}
