//! Pooling over NCHW planes: max with indices (and its inverse, max-unpool), average, adaptive
//! average, each with its gradient kernel. Sizes, windows and divisors follow PyTorch exactly.
//!
//! Kernels see an input as `planes = N·C` independent `H×W` planes; `max_pool2d_with_indices`
//! returns, per output element, the flat position `h·W + w` of the maximum inside its plane.

mod cpu_kernel;
mod cuda_kernel;

use crate::error::{Error, Result};
use crate::tensor::{Shape, Storage, Tensor};

/// Options of [`Tensor::max_pool2d_with_indices`] (`nn.MaxPool2d`); `[height, width]` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2dParams {
    /// Window size.
    pub kernel: [usize; 2],
    /// Step between windows (PyTorch's default is the kernel size).
    pub stride: [usize; 2],
    /// Implicit `-inf` padding on each side; at most half the kernel.
    pub padding: [usize; 2],
    /// Spacing between the window's taps.
    pub dilation: [usize; 2],
    /// Round the output size up, so windows may hang over the bottom/right edge.
    pub ceil_mode: bool,
}

impl MaxPool2dParams {
    /// A square `kernel × kernel` window with stride `kernel`, no padding, no dilation.
    pub fn new(kernel: usize) -> Self {
        MaxPool2dParams {
            kernel: [kernel; 2],
            stride: [kernel; 2],
            padding: [0; 2],
            dilation: [1; 2],
            ceil_mode: false,
        }
    }

    /// The same options with stride `stride` on both axes.
    pub fn stride(self, stride: usize) -> Self {
        MaxPool2dParams {
            stride: [stride; 2],
            ..self
        }
    }

    /// The same options with padding `padding` on both axes.
    pub fn padding(self, padding: usize) -> Self {
        MaxPool2dParams {
            padding: [padding; 2],
            ..self
        }
    }

    /// The same options with dilation `dilation` on both axes.
    pub fn dilation(self, dilation: usize) -> Self {
        MaxPool2dParams {
            dilation: [dilation; 2],
            ..self
        }
    }

    /// The same options with `ceil_mode` set.
    pub fn ceil_mode(self, ceil_mode: bool) -> Self {
        MaxPool2dParams { ceil_mode, ..self }
    }
}

/// Options of [`Tensor::max_unpool2d`] (`nn.MaxUnpool2d`): the window of the max pool it inverts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxUnpool2dParams {
    /// Window size of the pool.
    pub kernel: [usize; 2],
    /// Stride of the pool.
    pub stride: [usize; 2],
    /// Padding of the pool.
    pub padding: [usize; 2],
}

impl MaxUnpool2dParams {
    /// A square `kernel × kernel` window with stride `kernel` and no padding.
    pub fn new(kernel: usize) -> Self {
        MaxUnpool2dParams {
            kernel: [kernel; 2],
            stride: [kernel; 2],
            padding: [0; 2],
        }
    }
}

impl From<MaxPool2dParams> for MaxUnpool2dParams {
    fn from(pool: MaxPool2dParams) -> Self {
        MaxUnpool2dParams {
            kernel: pool.kernel,
            stride: pool.stride,
            padding: pool.padding,
        }
    }
}

/// Options of [`Tensor::avg_pool2d`] (`nn.AvgPool2d`); `[height, width]` pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2dParams {
    /// Window size.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Implicit zero padding on each side; at most half the kernel.
    pub padding: [usize; 2],
    /// Round the output size up, so windows may hang over the bottom/right edge.
    pub ceil_mode: bool,
    /// Divide by the window size including padding (but never the part hanging past the padding).
    pub count_include_pad: bool,
    /// Divide every window sum by this instead.
    pub divisor_override: Option<usize>,
}

impl AvgPool2dParams {
    /// A square `kernel × kernel` window with stride `kernel`, no padding, PyTorch's defaults.
    pub fn new(kernel: usize) -> Self {
        AvgPool2dParams {
            kernel: [kernel; 2],
            stride: [kernel; 2],
            padding: [0; 2],
            ceil_mode: false,
            count_include_pad: true,
            divisor_override: None,
        }
    }

    /// The same options with stride `stride` on both axes.
    pub fn stride(self, stride: usize) -> Self {
        AvgPool2dParams {
            stride: [stride; 2],
            ..self
        }
    }

    /// The same options with padding `padding` on both axes.
    pub fn padding(self, padding: usize) -> Self {
        AvgPool2dParams {
            padding: [padding; 2],
            ..self
        }
    }

    /// The same options with `ceil_mode` set.
    pub fn ceil_mode(self, ceil_mode: bool) -> Self {
        AvgPool2dParams { ceil_mode, ..self }
    }

    /// The same options with `count_include_pad` set.
    pub fn count_include_pad(self, count_include_pad: bool) -> Self {
        AvgPool2dParams {
            count_include_pad,
            ..self
        }
    }

    /// The same options with a fixed divisor.
    pub fn divisor_override(self, divisor: usize) -> Self {
        AvgPool2dParams {
            divisor_override: Some(divisor),
            ..self
        }
    }
}

/// One windowed pooling call as the kernels see it: `planes` independent `input` planes, each
/// pooled to `output` (already computed and validated) with this window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    /// `N·C`.
    pub planes: usize,
    /// `[H, W]` of the input.
    pub input: [usize; 2],
    /// `[H, W]` of the output.
    pub output: [usize; 2],
    /// Window size.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Padding before the first row / column.
    pub padding: [usize; 2],
    /// Spacing between taps (1 for average pooling).
    pub dilation: [usize; 2],
}

/// An average-pooling call: the window plus PyTorch's divisor options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AvgPool2dGeometry {
    /// Sizes and window.
    pub window: Pool2dGeometry,
    /// Divide by the padded window size instead of the in-bounds count.
    pub count_include_pad: bool,
    /// Fixed divisor, when set.
    pub divisor_override: Option<usize>,
}

/// `planes` planes mapped from `input` size to `output` size: adaptive pooling (input → pooled)
/// and max-unpooling (`input` = pooled size, `output` = unpooled size). Backward kernels take
/// the forward's sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlaneResize {
    /// `N·C`.
    pub planes: usize,
    /// `[H, W]` of the forward input.
    pub input: [usize; 2],
    /// `[H, W]` of the forward output.
    pub output: [usize; 2],
}

/// Kernels of this family. Inputs are validated by the `Tensor` methods; index-driven kernels
/// still reject indices outside their plane.
pub trait PoolBackend {
    /// `(values, indices)`: the maximum of each window (NaN wins, first maximum on ties) and its
    /// flat position `h·W + w` in the input plane, as exact integers in f32.
    fn max_pool2d_with_indices(
        &self,
        x: &Storage,
        geometry: Pool2dGeometry,
    ) -> Result<(Storage, Storage)>;

    /// Gradient of max pooling: each `grad_out` element added at its maximum's position.
    fn max_pool2d_with_indices_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        geometry: Pool2dGeometry,
    ) -> Result<Storage>;

    /// `out[p, indices[p, i]] = x[p, i]` on zeroed `output` planes.
    fn max_unpool2d(&self, x: &Storage, indices: &Storage, sizes: PlaneResize) -> Result<Storage>;

    /// Gradient of max-unpooling: `grad_x[p, i] = grad_out[p, indices[p, i]]`.
    fn max_unpool2d_backward(
        &self,
        grad_out: &Storage,
        indices: &Storage,
        sizes: PlaneResize,
    ) -> Result<Storage>;

    /// Window sums over the in-bounds part of each window divided by PyTorch's divisor:
    /// `divisor_override`, else the window clipped to the padded input (`count_include_pad`), else
    /// the in-bounds count; windows entirely in the padding give 0.
    fn avg_pool2d(&self, x: &Storage, geometry: AvgPool2dGeometry) -> Result<Storage>;

    /// Gradient of average pooling: each `grad_out / divisor` added over its window.
    fn avg_pool2d_backward(
        &self,
        grad_out: &Storage,
        geometry: AvgPool2dGeometry,
    ) -> Result<Storage>;

    /// Means over windows `[⌊i·in/out⌋, ⌈(i+1)·in/out⌉)` on each axis (`sum / kh / kw`).
    fn adaptive_avg_pool2d(&self, x: &Storage, sizes: PlaneResize) -> Result<Storage>;

    /// Gradient of adaptive average pooling: each `grad_out / kh / kw` added over its window.
    fn adaptive_avg_pool2d_backward(
        &self,
        grad_out: &Storage,
        sizes: PlaneResize,
    ) -> Result<Storage>;
}

/// PyTorch's `pooling_output_shape` on one axis:
/// `⌊(in + 2p − d·(k−1) − 1 + (ceil ? s−1 : 0)) / s⌋ + 1`, one less under ceil_mode when the last
/// window would start past the input and its left padding. May be ≤ 0 for too small inputs.
fn pooled_len(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> i64 {
    let (input, kernel, stride, padding, dilation) = (
        input as i64,
        kernel as i64,
        stride as i64,
        padding as i64,
        dilation as i64,
    );
    let rounding = if ceil_mode { stride - 1 } else { 0 };
    let span = input + 2 * padding - dilation * (kernel - 1) - 1 + rounding;
    let mut out = span.div_euclid(stride) + 1;
    if ceil_mode && (out - 1) * stride >= input + padding {
        out -= 1;
    }
    out
}

/// Window options shared by max and average pooling, checked as PyTorch does.
struct WindowOptions {
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
}

/// `[N·C, H, W]` of an NCHW input with non-empty planes.
fn plane_dims(op: &'static str, x: &Tensor) -> Result<(usize, [usize; 2])> {
    x.expect_rank(op, "input", 4)?;
    let d = x.dims();
    if d[2] == 0 || d[3] == 0 {
        return Err(Error::shape(
            op,
            format!("input of shape {} has an empty spatial plane", x.shape()),
        ));
    }
    Ok((d[0] * d[1], [d[2], d[3]]))
}

/// Validates the window against the input and returns the geometry with the output size.
fn window_geometry(op: &'static str, x: &Tensor, w: &WindowOptions) -> Result<Pool2dGeometry> {
    let (planes, input) = plane_dims(op, x)?;
    for (name, values) in [
        ("kernel", w.kernel),
        ("stride", w.stride),
        ("dilation", w.dilation),
    ] {
        if values.contains(&0) {
            return Err(Error::invalid(
                op,
                format!("{name} must be positive, got {values:?}"),
            ));
        }
    }
    if (0..2).any(|a| w.padding[a] > w.kernel[a] / 2) {
        return Err(Error::invalid(
            op,
            format!(
                "padding {:?} must be at most half of kernel {:?}",
                w.padding, w.kernel
            ),
        ));
    }
    let mut output = [0usize; 2];
    for a in 0..2 {
        let len = pooled_len(
            input[a],
            w.kernel[a],
            w.stride[a],
            w.padding[a],
            w.dilation[a],
            w.ceil_mode,
        );
        if len < 1 {
            return Err(Error::shape(
                op,
                format!(
                    "input of shape {} is too small for kernel {:?} with padding {:?} and \
                     dilation {:?} (output size {len} on axis {})",
                    x.shape(),
                    w.kernel,
                    w.padding,
                    w.dilation,
                    a + 2
                ),
            ));
        }
        output[a] = len as usize;
    }
    Ok(Pool2dGeometry {
        planes,
        input,
        output,
        kernel: w.kernel,
        stride: w.stride,
        padding: w.padding,
        dilation: w.dilation,
    })
}

/// NCHW output dims for `x` with spatial size `output`.
fn nchw(x: &Tensor, output: [usize; 2]) -> Shape {
    let d = x.dims();
    Shape::new(vec![d[0], d[1], output[0], output[1]])
}

/// PyTorch's `_unpool_output_size`: the default `(in−1)·s − 2p + k`, or an explicit size that
/// must lie strictly within one stride of it.
fn unpooled_size(
    x: &Tensor,
    params: &MaxUnpool2dParams,
    requested: Option<[usize; 2]>,
) -> Result<[usize; 2]> {
    let op = "max_unpool2d";
    let d = x.dims();
    let mut default = [0i64; 2];
    for a in 0..2 {
        default[a] = (d[a + 2] as i64 - 1) * params.stride[a] as i64 + params.kernel[a] as i64
            - 2 * params.padding[a] as i64;
    }
    match requested {
        None => {
            if default.iter().any(|&s| s < 1) {
                return Err(Error::shape(
                    op,
                    format!(
                        "input of shape {} with kernel {:?}, stride {:?}, padding {:?} unpools \
                         to an empty size {default:?}",
                        x.shape(),
                        params.kernel,
                        params.stride,
                        params.padding
                    ),
                ));
            }
            Ok([default[0] as usize, default[1] as usize])
        }
        Some(size) => {
            for a in 0..2 {
                let (min, max) = (
                    default[a] - params.stride[a] as i64,
                    default[a] + params.stride[a] as i64,
                );
                let s = size[a] as i64;
                if size[a] == 0 || s <= min || s >= max {
                    return Err(Error::shape(
                        op,
                        format!(
                            "output size {size:?} for input of shape {} must be within one \
                             stride {:?} of the default {default:?}",
                            x.shape(),
                            params.stride
                        ),
                    ));
                }
            }
            Ok(size)
        }
    }
}

impl Tensor {
    /// 2-D max pooling of an NCHW tensor (`F.max_pool2d(..., return_indices=True)`): the window
    /// maxima and the flat `h·W + w` position of each inside its input plane (f32 integers,
    /// not differentiable). The gradient flows to the maxima's positions.
    pub fn max_pool2d_with_indices(&self, params: MaxPool2dParams) -> Result<(Tensor, Tensor)> {
        let options = WindowOptions {
            kernel: params.kernel,
            stride: params.stride,
            padding: params.padding,
            dilation: params.dilation,
            ceil_mode: params.ceil_mode,
        };
        let geometry = window_geometry("max_pool2d", self, &options)?;
        let (values, indices) = self
            .backend()
            .max_pool2d_with_indices(&self.storage(), geometry)?;
        let out_shape = nchw(self, geometry.output);
        let indices = Tensor::from_storage(indices, out_shape.clone())?;
        let saved_indices = indices.clone();
        let input_shape = self.shape().clone();
        let values = Tensor::from_op("max_pool2d", values, out_shape, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad = g.backend().max_pool2d_with_indices_backward(
                    &g.storage(),
                    &saved_indices.storage(),
                    geometry,
                )?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })?;
        Ok((values, indices))
    }

    /// 2-D max pooling of an NCHW tensor (`F.max_pool2d`).
    pub fn max_pool2d(&self, params: MaxPool2dParams) -> Result<Tensor> {
        Ok(self.max_pool2d_with_indices(params)?.0)
    }

    /// Inverse of max pooling (`F.max_unpool2d`): each value of this NCHW tensor is written at
    /// the flat position `indices` (from [`Tensor::max_pool2d_with_indices`], same shape) of a
    /// zero plane of size `output_size`, by default `(in−1)·stride − 2·padding + kernel`.
    pub fn max_unpool2d(
        &self,
        indices: &Tensor,
        params: MaxUnpool2dParams,
        output_size: Option<[usize; 2]>,
    ) -> Result<Tensor> {
        let op = "max_unpool2d";
        let (planes, input) = plane_dims(op, self)?;
        if indices.shape() != self.shape() {
            return Err(Error::shape(
                op,
                format!(
                    "indices of shape {} must have the input's shape {}",
                    indices.shape(),
                    self.shape()
                ),
            ));
        }
        self.same_device(op, indices)?;
        if params.kernel.contains(&0) || params.stride.contains(&0) {
            return Err(Error::invalid(
                op,
                format!(
                    "kernel {:?} and stride {:?} must be positive",
                    params.kernel, params.stride
                ),
            ));
        }
        let output = unpooled_size(self, &params, output_size)?;
        let sizes = PlaneResize {
            planes,
            input,
            output,
        };
        let indices = indices.detach();
        let storage = self
            .backend()
            .max_unpool2d(&self.storage(), &indices.storage(), sizes)?;
        let input_shape = self.shape().clone();
        Tensor::from_op(op, storage, nchw(self, output), &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad =
                    g.backend()
                        .max_unpool2d_backward(&g.storage(), &indices.storage(), sizes)?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })
    }

    /// 2-D average pooling of an NCHW tensor (`F.avg_pool2d`, with PyTorch's divisor rules).
    pub fn avg_pool2d(&self, params: AvgPool2dParams) -> Result<Tensor> {
        let op = "avg_pool2d";
        if params.divisor_override == Some(0) {
            return Err(Error::invalid(op, "divisor_override must be positive"));
        }
        let options = WindowOptions {
            kernel: params.kernel,
            stride: params.stride,
            padding: params.padding,
            dilation: [1; 2],
            ceil_mode: params.ceil_mode,
        };
        let geometry = AvgPool2dGeometry {
            window: window_geometry(op, self, &options)?,
            count_include_pad: params.count_include_pad,
            divisor_override: params.divisor_override,
        };
        let storage = self.backend().avg_pool2d(&self.storage(), geometry)?;
        let input_shape = self.shape().clone();
        let out_shape = nchw(self, geometry.window.output);
        Tensor::from_op(op, storage, out_shape, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad = g.backend().avg_pool2d_backward(&g.storage(), geometry)?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })
    }

    /// Adaptive average pooling of an NCHW tensor to `[oh, ow]` (`F.adaptive_avg_pool2d`):
    /// output `i` averages input `[⌊i·in/out⌋, ⌈(i+1)·in/out⌉)`; works for any size, larger
    /// than the input included.
    pub fn adaptive_avg_pool2d(&self, output_size: [usize; 2]) -> Result<Tensor> {
        let op = "adaptive_avg_pool2d";
        let (planes, input) = plane_dims(op, self)?;
        if output_size.contains(&0) {
            return Err(Error::invalid(
                op,
                format!(
                    "output size {output_size:?} must be positive (input shape {})",
                    self.shape()
                ),
            ));
        }
        let sizes = PlaneResize {
            planes,
            input,
            output: output_size,
        };
        let storage = self.backend().adaptive_avg_pool2d(&self.storage(), sizes)?;
        let input_shape = self.shape().clone();
        Tensor::from_op(op, storage, nchw(self, output_size), &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| {
                let grad = g
                    .backend()
                    .adaptive_avg_pool2d_backward(&g.storage(), sizes)?;
                Ok(vec![Some(Tensor::from_storage(grad, input_shape)?)])
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::pooled_len;

    #[test]
    fn output_size_follows_pytorch_ceil_rule() {
        // 7 with kernel 2 stride 2: floor gives 3, ceil 4.
        assert_eq!(pooled_len(7, 2, 2, 0, 1, false), 3);
        assert_eq!(pooled_len(7, 2, 2, 0, 1, true), 4);
        // With padding 1 the ceil window would start at the right padding: dropped.
        assert_eq!(pooled_len(7, 2, 2, 1, 1, true), 4);
        assert_eq!(pooled_len(8, 3, 2, 1, 1, false), 4);
        assert_eq!(pooled_len(8, 3, 2, 0, 1, true), 4);
        assert_eq!(pooled_len(9, 3, 1, 1, 2, false), 7);
        assert!(pooled_len(2, 3, 1, 0, 2, false) < 1);
    }
}
