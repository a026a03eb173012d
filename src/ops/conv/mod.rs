//! Convolution: conv2d and conv_transpose2d (NCHW, PyTorch weight layouts), forward and both
//! gradients.
//!
//! Everything is expressed through three kernels of one [`Conv2dGeometry`]: `conv2d`, its input
//! gradient `conv2d_input_backward` and its weight gradient `conv2d_weight_backward`. The
//! transposed convolution is the adjoint of conv2d, so its forward *is* `conv2d_input_backward`,
//! its input gradient is `conv2d` and its weight gradient is `conv2d_weight_backward` with the
//! roles of input and output gradient swapped.

pub(crate) mod cpu;
mod cuda_kernel;
#[cfg(test)]
mod tests;

use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// Hyper-parameters of a 2-d convolution (`nn.Conv2d`), per axis `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output positions.
    pub stride: [usize; 2],
    /// Implicit zeros added around the input: `[top, bottom, left, right]`.
    pub padding: [usize; 4],
    /// Spacing between kernel taps.
    pub dilation: [usize; 2],
    /// Channel groups: input and output channels split into `groups` independent convolutions.
    pub groups: usize,
}

impl Conv2dParams {
    /// PyTorch's `nn.Conv2d(stride=s, padding=p, dilation=d, groups=g)`: one value for both
    /// axes, the same padding on all four sides.
    pub fn new(stride: usize, padding: usize, dilation: usize, groups: usize) -> Self {
        Conv2dParams {
            stride: [stride; 2],
            padding: [padding; 4],
            dilation: [dilation; 2],
            groups,
        }
    }
}

impl Default for Conv2dParams {
    /// Stride 1, no padding, no dilation, one group.
    fn default() -> Self {
        Conv2dParams::new(1, 0, 1, 1)
    }
}

/// Hyper-parameters of a transposed 2-d convolution (`nn.ConvTranspose2d`), per axis
/// `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTranspose2dParams {
    /// Step between input positions in the output.
    pub stride: [usize; 2],
    /// `dilation·(k−1) − padding` zeros are cropped from both sides of the full output.
    pub padding: [usize; 2],
    /// Extra rows/columns added at the bottom/right to pick one of the `stride` sizes that
    /// map to the same input size; must be smaller than the stride or the dilation.
    pub output_padding: [usize; 2],
    /// Spacing between kernel taps.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

impl ConvTranspose2dParams {
    /// PyTorch's `nn.ConvTranspose2d(stride, padding, output_padding, dilation, groups)` with
    /// one value for both axes.
    pub fn new(
        stride: usize,
        padding: usize,
        output_padding: usize,
        dilation: usize,
        groups: usize,
    ) -> Self {
        ConvTranspose2dParams {
            stride: [stride; 2],
            padding: [padding; 2],
            output_padding: [output_padding; 2],
            dilation: [dilation; 2],
            groups,
        }
    }
}

impl Default for ConvTranspose2dParams {
    /// Stride 1, no padding, no output padding, no dilation, one group.
    fn default() -> Self {
        ConvTranspose2dParams::new(1, 0, 0, 1, 1)
    }
}

/// Every size of one convolution `x [batch, in_channels, in_size] ⋆ w [out_channels,
/// in_channels/groups, kernel] → out [batch, out_channels, out_size]`, validated. Kernels may
/// rely on it; `out_size` may be smaller than the formula's (transposed convolutions with
/// `output_padding ≥ stride`), taps beyond the input are skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Images in the batch.
    pub batch: usize,
    /// Channels of the convolution's input.
    pub in_channels: usize,
    /// `[height, width]` of the input.
    pub in_size: [usize; 2],
    /// Channels of the convolution's output.
    pub out_channels: usize,
    /// `[kh, kw]` of the kernel.
    pub kernel: [usize; 2],
    /// `[height, width]` of the output.
    pub out_size: [usize; 2],
    /// Stride, padding, dilation, groups.
    pub params: Conv2dParams,
}

impl Conv2dGeometry {
    /// Input channels seen by one group.
    pub fn in_channels_per_group(&self) -> usize {
        self.in_channels / self.params.groups
    }

    /// Output channels produced by one group.
    pub fn out_channels_per_group(&self) -> usize {
        self.out_channels / self.params.groups
    }

    /// Kernel taps `kh·kw`.
    pub fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// Rows of the im2col matrix (and columns of one group's weight matrix): `Cin/g · kh · kw`.
    pub fn col_rows(&self) -> usize {
        self.in_channels_per_group() * self.taps()
    }

    /// Input pixels per channel.
    pub fn in_pixels(&self) -> usize {
        self.in_size[0] * self.in_size[1]
    }

    /// Output positions per channel.
    pub fn out_pixels(&self) -> usize {
        self.out_size[0] * self.out_size[1]
    }

    /// Elements of the input, output and weight tensors.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_pixels()
    }

    /// Elements of the output tensor.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_pixels()
    }

    /// Elements of the weight tensor.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.col_rows()
    }

    /// One input and one output channel per group: a per-channel (depthwise) filter.
    pub fn is_depthwise(&self) -> bool {
        self.in_channels_per_group() == 1 && self.out_channels_per_group() == 1
    }

    /// A 1×1 kernel at stride 1 without padding: the input *is* the im2col matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.params.stride == [1, 1] && self.params.padding == [0; 4]
    }
}

/// Kernels of this family (burn-style: the gradients are named so each backend can make them
/// fast). Inputs are contiguous NCHW / `[Cout, Cin/g, kh, kw]` storages of `geometry`.
pub trait ConvBackend {
    /// `out[n, o, p] = bias[o] + Σ_{c, tap} w[o, c, tap] · x[n, g(o)·Cin/g + c, p·stride +
    /// tap·dilation − padding]`, zero outside the input.
    fn conv2d(
        &self,
        x: &Storage,
        weight: &Storage,
        bias: Option<&Storage>,
        geometry: Conv2dGeometry,
    ) -> Result<Storage>;

    /// `∂L/∂x` from `∂L/∂out` (shape `[batch, in_channels, in_size]`): every output gradient
    /// scattered back through the kernel; also the forward of the transposed convolution.
    fn conv2d_input_backward(
        &self,
        grad_out: &Storage,
        weight: &Storage,
        geometry: Conv2dGeometry,
    ) -> Result<Storage>;

    /// `∂L/∂w[o, c, tap] = Σ_{n, p} ∂L/∂out[n, o, p] · x[n, c, p·stride + tap·dilation −
    /// padding]` (shape of the weight).
    fn conv2d_weight_backward(
        &self,
        grad_out: &Storage,
        x: &Storage,
        geometry: Conv2dGeometry,
    ) -> Result<Storage>;
}

impl Tensor {
    /// 2-d convolution of an NCHW input with a `[Cout, Cin/groups, kh, kw]` weight and an
    /// optional `[Cout]` bias (`torch.nn.functional.conv2d`, with padding per side).
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor> {
        let op = "conv2d";
        let geometry = conv2d_geometry(self, weight, params)?;
        check_devices_and_bias(op, self, weight, bias, geometry.out_channels)?;
        if super::macs::record(geometry.output_len() * geometry.col_rows()) {
            let out_size = geometry.out_size;
            let shape = [
                geometry.batch,
                geometry.out_channels,
                out_size[0],
                out_size[1],
            ];
            return Tensor::zeros(shape, &self.device());
        }
        let backend = self.backend();
        let bias_storage = bias.map(Tensor::storage);
        let out = backend.conv2d(
            &self.storage(),
            &weight.storage(),
            bias_storage.as_ref(),
            geometry,
        )?;
        let out_shape = [
            geometry.batch,
            geometry.out_channels,
            geometry.out_size[0],
            geometry.out_size[1],
        ];
        let (x, w) = (self.detach(), weight.detach());
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Tensor::from_op(op, out, out_shape, &inputs, move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let backend = g.backend();
                let grad_input = needs[0]
                    .then(|| {
                        let grad =
                            backend.conv2d_input_backward(&g.storage(), &w.storage(), geometry)?;
                        Tensor::from_storage(grad, x.shape().clone())
                    })
                    .transpose()?;
                let grad_weight = needs[1]
                    .then(|| {
                        let grad =
                            backend.conv2d_weight_backward(&g.storage(), &x.storage(), geometry)?;
                        Tensor::from_storage(grad, w.shape().clone())
                    })
                    .transpose()?;
                let mut grads = vec![grad_input, grad_weight];
                if needs.len() > 2 {
                    grads.push(needs[2].then(|| g.sum(&[0, 2, 3], false)).transpose()?);
                }
                Ok(grads)
            })
        })
    }

    /// Transposed 2-d convolution (`torch.nn.functional.conv_transpose2d`) of an NCHW input
    /// with a `[Cin, Cout/groups, kh, kw]` weight and an optional `[Cout]` bias. The output
    /// size is `(in − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1`, or
    /// `output_size` when given (which must be one of the `stride` sizes reachable that way).
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: ConvTranspose2dParams,
        output_size: Option<[usize; 2]>,
    ) -> Result<Tensor> {
        let op = "conv_transpose2d";
        let geometry = conv_transpose2d_geometry(self, weight, params, output_size)?;
        // The adjoint convolution maps the output back onto `self`: its "input" is our output.
        check_devices_and_bias(op, self, weight, bias, geometry.in_channels)?;
        // One MAC per (input pixel, input channel, output channel of its group, tap).
        if super::macs::record(geometry.output_len() * geometry.col_rows()) {
            let in_size = geometry.in_size;
            let shape = [geometry.batch, geometry.in_channels, in_size[0], in_size[1]];
            return Tensor::zeros(shape, &self.device());
        }
        let out =
            self.backend()
                .conv2d_input_backward(&self.storage(), &weight.storage(), geometry)?;
        let out_shape = [
            geometry.batch,
            geometry.in_channels,
            geometry.in_size[0],
            geometry.in_size[1],
        ];
        let (x, w) = (self.detach(), weight.detach());
        let out = Tensor::from_op(op, out, out_shape, &[self, weight], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let backend = g.backend();
                let grad_input = needs[0]
                    .then(|| {
                        let grad = backend.conv2d(&g.storage(), &w.storage(), None, geometry)?;
                        Tensor::from_storage(grad, x.shape().clone())
                    })
                    .transpose()?;
                let grad_weight = needs[1]
                    .then(|| {
                        let grad =
                            backend.conv2d_weight_backward(&x.storage(), &g.storage(), geometry)?;
                        Tensor::from_storage(grad, w.shape().clone())
                    })
                    .transpose()?;
                Ok(vec![grad_input, grad_weight])
            })
        })?;
        match bias {
            Some(bias) => out.add(&bias.reshape(&[1, -1, 1, 1])?),
            None => Ok(out),
        }
    }
}

/// Checks that weight and bias live with the input and that the bias is `[channels]`.
fn check_devices_and_bias(
    op: &'static str,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    channels: usize,
) -> Result<()> {
    x.same_device(op, weight)?;
    if let Some(bias) = bias {
        x.same_device(op, bias)?;
        if bias.dims() != [channels] {
            return Err(Error::shape(
                op,
                format!(
                    "bias must have shape [{channels}] for weight {}, got {}",
                    weight.shape(),
                    bias.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// Rejects zero strides, dilations and groups.
fn check_positive(
    op: &'static str,
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
) -> Result<()> {
    if stride.contains(&0) || dilation.contains(&0) || groups == 0 {
        return Err(Error::invalid(
            op,
            format!(
                "stride {stride:?}, dilation {dilation:?} and groups {groups} must be positive"
            ),
        ));
    }
    Ok(())
}

/// Ranks, kernel and channel/group divisibility shared by both ops; returns the four dims of
/// input and weight.
fn check_operands(
    op: &'static str,
    x: &Tensor,
    weight: &Tensor,
    groups: usize,
) -> Result<([usize; 4], [usize; 4])> {
    x.expect_rank(op, "input (NCHW)", 4)?;
    weight.expect_rank(op, "weight", 4)?;
    let xd: [usize; 4] = [x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]];
    let wd: [usize; 4] = [
        weight.dims()[0],
        weight.dims()[1],
        weight.dims()[2],
        weight.dims()[3],
    ];
    if wd[2] == 0 || wd[3] == 0 || wd[0] == 0 || wd[1] == 0 {
        return Err(Error::shape(
            op,
            format!("weight {} must not have empty dimensions", weight.shape()),
        ));
    }
    if !xd[1].is_multiple_of(groups) {
        return Err(Error::shape(
            op,
            format!(
                "input {} has {} channels, not divisible by groups {groups}",
                x.shape(),
                xd[1]
            ),
        ));
    }
    Ok((xd, wd))
}

/// Validates `conv2d(x, weight, params)` and computes its geometry.
fn conv2d_geometry(x: &Tensor, weight: &Tensor, params: Conv2dParams) -> Result<Conv2dGeometry> {
    let op = "conv2d";
    check_positive(op, params.stride, params.dilation, params.groups)?;
    let groups = params.groups;
    let ([batch, in_channels, h, w], [out_channels, per_group, kh, kw]) =
        check_operands(op, x, weight, groups)?;
    if !out_channels.is_multiple_of(groups) || per_group * groups != in_channels {
        return Err(Error::shape(
            op,
            format!(
                "weight {} does not fit input {} with groups {groups}: expected \
                 [Cout divisible by {groups}, {}, kh, kw]",
                weight.shape(),
                x.shape(),
                in_channels / groups
            ),
        ));
    }
    let [top, bottom, left, right] = params.padding;
    let padded = [h + top + bottom, w + left + right];
    let kernel = [kh, kw];
    let mut out_size = [0; 2];
    for axis in 0..2 {
        let extent = params.dilation[axis] * (kernel[axis] - 1) + 1;
        if extent > padded[axis] {
            return Err(Error::shape(
                op,
                format!(
                    "padded input size {padded:?} of input {} is smaller than the dilated \
                     kernel {:?} of weight {} (dilation {:?})",
                    x.shape(),
                    [
                        params.dilation[0] * (kh - 1) + 1,
                        params.dilation[1] * (kw - 1) + 1
                    ],
                    weight.shape(),
                    params.dilation
                ),
            ));
        }
        out_size[axis] = (padded[axis] - extent) / params.stride[axis] + 1;
    }
    Ok(Conv2dGeometry {
        batch,
        in_channels,
        in_size: [h, w],
        out_channels,
        kernel,
        out_size,
        params,
    })
}

/// Validates `conv_transpose2d(x, weight, params, output_size)` and returns the geometry of
/// the convolution it is the adjoint of (whose input is the transposed convolution's output).
fn conv_transpose2d_geometry(
    x: &Tensor,
    weight: &Tensor,
    params: ConvTranspose2dParams,
    output_size: Option<[usize; 2]>,
) -> Result<Conv2dGeometry> {
    let op = "conv_transpose2d";
    check_positive(op, params.stride, params.dilation, params.groups)?;
    let groups = params.groups;
    let ([batch, in_channels, h, w], [weight_in, per_group, kh, kw]) =
        check_operands(op, x, weight, groups)?;
    if weight_in != in_channels {
        return Err(Error::shape(
            op,
            format!(
                "weight {} must be [Cin = {in_channels}, Cout/groups, kh, kw] for input {}",
                weight.shape(),
                x.shape()
            ),
        ));
    }
    for axis in 0..2 {
        let padding = params.output_padding[axis];
        if padding >= params.stride[axis] && padding >= params.dilation[axis] {
            return Err(Error::invalid(
                op,
                format!(
                    "output_padding {:?} must be smaller than either stride {:?} or dilation {:?}",
                    params.output_padding, params.stride, params.dilation
                ),
            ));
        }
    }
    let kernel = [kh, kw];
    let input = [h, w];
    let mut size = [0; 2];
    for axis in 0..2 {
        // (in − 1)·s − 2p + d·(k − 1) + 1, computed without going below zero.
        let full = (input[axis].max(1) - 1) * params.stride[axis]
            + params.dilation[axis] * (kernel[axis] - 1)
            + 1;
        let smallest = full
            .checked_sub(2 * params.padding[axis])
            .filter(|&s| s > 0);
        let Some(smallest) = smallest.filter(|_| input[axis] > 0) else {
            return Err(Error::shape(
                op,
                format!(
                    "input {} with weight {} and padding {:?} gives an empty output",
                    x.shape(),
                    weight.shape(),
                    params.padding
                ),
            ));
        };
        size[axis] = match output_size {
            None => smallest + params.output_padding[axis],
            Some(requested) => {
                let largest = smallest + params.stride[axis] - 1;
                if requested[axis] < smallest || requested[axis] > largest {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "output_size {requested:?} for input {} and weight {}: size {axis} \
                             must be in {smallest}..={largest}",
                            x.shape(),
                            weight.shape()
                        ),
                    ));
                }
                requested[axis]
            }
        };
    }
    let [ph, pw] = params.padding;
    Ok(Conv2dGeometry {
        batch,
        in_channels: per_group * groups,
        in_size: size,
        out_channels: in_channels,
        kernel,
        out_size: input,
        params: Conv2dParams {
            stride: params.stride,
            padding: [ph, ph, pw, pw],
            dilation: params.dilation,
            groups,
        },
    })
}
