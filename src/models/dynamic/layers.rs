//! The building blocks of the dynamic routing network, named as the original's modules so the
//! state-dict keys match (`../shared/spec/dynamic_routing.md`): the `dl_lib` conv wrapper
//! (conv, then `norm`, then an optional ReLU), the stride-4 stem, the separable-conv cell op
//! with its identity, and the soft conditional gate.

use crate::error::Result;
use crate::nn::init::FanMode;
use crate::nn::{
    AdaptiveAvgPool2d, BatchNorm2d, Conv2d, ConvOptions, Module, OwnTensor, Sequential,
};
use crate::ops::interpolate::{InterpolateMode, Resize};
use crate::tensor::Tensor;
use std::any::Any;

/// The bilinear mode of every resize in the network (`align_corners=False`).
pub const BILINEAR: InterpolateMode = InterpolateMode::Bilinear {
    align_corners: false,
};

/// A Kaiming-normal (fan_in, relu) conv whose bias, if any, is the constant `bias_value`
/// (`weight_init.kaiming_init_module(mode='fan_in', bias=…)`).
pub fn kaiming_conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    options: ConvOptions,
    bias_value: f32,
) -> Result<Conv2d> {
    let conv = Conv2d::new(
        in_channels,
        out_channels,
        kernel,
        options.kaiming_normal(FanMode::FanIn),
    )?;
    if let Some(bias) = &conv.bias {
        bias.replace_data(&Tensor::full([out_channels], bias_value, &bias.device())?)?;
    }
    Ok(conv)
}

/// A depthwise 3×3 conv without norm or activation (`groups = channels`).
pub fn depthwise3x3(channels: usize, stride: usize) -> Result<Conv2d> {
    kaiming_conv(
        channels,
        channels,
        3,
        ConvOptions::new()
            .stride(stride)
            .padding(1)
            .groups(channels)
            .no_bias(),
        0.0,
    )
}

/// `dl_lib.layers.Conv2d`: a conv (own `weight`, optional `bias`), then its `norm` child, then
/// an optional ReLU.
pub struct ConvNorm {
    /// The convolution.
    pub conv: Conv2d,
    /// `norm` (BatchNorm, affine, eps 1e-5, momentum 0.1).
    pub norm: BatchNorm2d,
    /// Whether a ReLU follows the norm.
    pub relu: bool,
}

impl ConvNorm {
    /// A bias-free `kernel`×`kernel` conv with BN and, if `relu`, a ReLU.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        options: ConvOptions,
        relu: bool,
    ) -> Result<Self> {
        Ok(ConvNorm {
            conv: kaiming_conv(in_channels, out_channels, kernel, options.no_bias(), 0.0)?,
            norm: BatchNorm2d::new(out_channels)?,
            relu,
        })
    }

    /// A 1×1 conv-BN(-ReLU) with the given stride.
    pub fn pointwise(
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        relu: bool,
    ) -> Result<Self> {
        Self::new(
            in_channels,
            out_channels,
            1,
            ConvOptions::new().stride(stride),
            relu,
        )
    }
}

impl Module for ConvNorm {
    fn type_name(&self) -> &'static str {
        "DlConv2d"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let x = self.norm.forward(&self.conv.forward(input)?)?;
        if self.relu {
            x.relu()
        } else {
            Ok(x)
        }
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        self.conv.own_tensors()
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("norm".to_string(), &self.norm as &dyn Module)]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A module without parameters whose forward is a fixed function (ReLU, identity): it keeps
/// the original's Sequential indices (`res_up.0` is a ReLU, so the conv is `res_up.1`).
pub struct Function {
    name: &'static str,
    apply: fn(&Tensor) -> Result<Tensor>,
}

impl Function {
    /// `nn.ReLU()`.
    pub fn relu() -> Self {
        Function {
            name: "ReLU",
            apply: Tensor::relu,
        }
    }

    /// `Identity` (the cell's `skip_connect`).
    pub fn identity() -> Self {
        Function {
            name: "Identity",
            apply: |x| Ok(x.clone()),
        }
    }
}

impl Module for Function {
    fn type_name(&self) -> &'static str {
        self.name
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        (self.apply)(input)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `DynamicStem` (SEPT_STEM): `stem_1` 3×3 s2 conv-BN-ReLU 3→C with **no padding**, `stem_2`
/// depthwise 3×3 + 1×1 conv-BN-ReLU, `stem_3` depthwise 3×3 s2 + 1×1 conv-BN-ReLU.
pub struct Stem {
    /// `stem_1`.
    pub stem_1: ConvNorm,
    /// `stem_2`: `[depthwise, pointwise]`.
    pub stem_2: Sequential,
    /// `stem_3`: `[depthwise s2, pointwise]`.
    pub stem_3: Sequential,
}

impl Stem {
    /// The stem with `channels` outputs (64 in the original).
    pub fn new(channels: usize) -> Result<Self> {
        let separable = |stride| -> Result<Sequential> {
            Ok(Sequential::default()
                .push(depthwise3x3(channels, stride)?)
                .push(ConvNorm::pointwise(channels, channels, 1, true)?))
        };
        Ok(Stem {
            stem_1: ConvNorm::new(3, channels, 3, ConvOptions::new().stride(2), true)?,
            stem_2: separable(1)?,
            stem_3: separable(2)?,
        })
    }
}

impl Module for Stem {
    fn type_name(&self) -> &'static str {
        "DynamicStem"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let x = self.stem_1.forward(input)?;
        let x = self.stem_2.forward(&x)?;
        self.stem_3.forward(&x)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("stem_1".to_string(), &self.stem_1 as &dyn Module),
            ("stem_2".to_string(), &self.stem_2),
            ("stem_3".to_string(), &self.stem_3),
        ]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `SepConv` 3×3 (`_ops.0.op`): depthwise 3×3, 1×1 conv-BN-ReLU, depthwise 3×3, 1×1 conv-BN
/// (no ReLU, no leading ReLU).
pub struct SepConv {
    /// `op`: the four layers.
    pub op: Sequential,
}

impl SepConv {
    /// A C→C separable block.
    pub fn new(channels: usize) -> Result<Self> {
        Ok(SepConv {
            op: Sequential::default()
                .push(depthwise3x3(channels, 1)?)
                .push(ConvNorm::pointwise(channels, channels, 1, true)?)
                .push(depthwise3x3(channels, 1)?)
                .push(ConvNorm::pointwise(channels, channels, 1, false)?),
        })
    }
}

impl Module for SepConv {
    fn type_name(&self) -> &'static str {
        "SepConv"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.op.forward(input)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("op".to_string(), &self.op as &dyn Module)]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `Mixed_OP` over `['sep_conv_3x3', 'skip_connect']`: the **sum** SepConv(x) + x.
pub struct MixedOp {
    /// `_ops`: `[SepConv, Identity]`.
    pub ops: Sequential,
}

impl MixedOp {
    /// The cell op at `channels`.
    pub fn new(channels: usize) -> Result<Self> {
        Ok(MixedOp {
            ops: Sequential::default()
                .push(SepConv::new(channels)?)
                .push(Function::identity()),
        })
    }
}

impl Module for MixedOp {
    fn type_name(&self) -> &'static str {
        "Mixed_OP"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for op in &self.ops.layers {
            let y = op.forward(input)?;
            sum = Some(match sum {
                Some(s) => s.add(&y)?,
                None => y,
            });
        }
        sum.ok_or_else(|| crate::Error::invalid("Mixed_OP", "no candidate ops"))
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("_ops".to_string(), &self.ops as &dyn Module)]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `gate_conv_beta`: 1×1 conv-BN-ReLU C→C/2 (no bias), global average pool, 1×1 conv to the
/// node's gate count (bias `gate_bias`); α = relu(tanh(·)) per image per path.
pub struct Gate {
    /// `[conv-BN-ReLU, AdaptiveAvgPool2d(1), conv with bias]`.
    pub layers: Sequential,
    /// Bilinear ×0.25 of the gate input first (`SMALL_GATE`).
    pub small: bool,
}

impl Gate {
    /// A gate on `channels` inputs with `gates` outputs.
    pub fn new(channels: usize, gates: usize, gate_bias: f32, small: bool) -> Result<Self> {
        let half = channels / 2;
        Ok(Gate {
            layers: Sequential::default()
                .push(ConvNorm::pointwise(channels, half, 1, true)?)
                .push(AdaptiveAvgPool2d([1, 1]))
                .push(kaiming_conv(half, gates, 1, ConvOptions::new(), gate_bias)?),
            small,
        })
    }

    /// α `[B, gates]` = relu(tanh(gate logits)).
    pub fn alphas(&self, input: &Tensor) -> Result<Tensor> {
        let x = if self.small {
            let [h, w] = [input.dims()[2], input.dims()[3]];
            if h >= 4 && w >= 4 {
                input.interpolate(Resize::Scale([0.25, 0.25]), BILINEAR)?
            } else {
                // Maps under 4 pixels (small inputs only): at least 1×1 instead of PyTorch's
                // error on an empty output.
                input.interpolate(Resize::Size([(h / 4).max(1), (w / 4).max(1)]), BILINEAR)?
            }
        } else {
            input.clone()
        };
        let logits = self.layers.forward(&x)?;
        let batch = logits.dims()[0];
        logits.tanh()?.relu()?.reshape(&[batch as isize, -1])
    }
}

impl Module for Gate {
    fn type_name(&self) -> &'static str {
        "GateConvBeta"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        self.alphas(input)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.layers.children()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
