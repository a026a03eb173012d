//! The original's analytic FLOP counts (`cal_op_flops.py`), in MFLOPs (ops / 1e6), batch 1.
//!
//! - conv: `(k_h·k_w·C_in/groups + bias)·C_out·⌊H/s⌋·⌊W/s⌋` (one multiply-add counts 1);
//! - BN (affine): `2·H·W·C`; ReLU: `H·W·C`; pool: `k_h·k_w·⌊H/s⌋·⌊W/s⌋·C`.
//!
//! Every count takes the map size the original gives it, including its quirks: the stem's
//! `stem_1` is counted at `⌊H/2⌋×⌊W/2⌋` although it has no padding, and the gate's last conv
//! and the predictor are counted without their bias.

/// `count_Conv_flop(h, w, c_in, c_out, [k, k], bias, stride, groups)`.
pub fn conv(
    hw: [usize; 2],
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
) -> f64 {
    let out = (hw[0] / stride) as f64 * (hw[1] / stride) as f64;
    (kernel * kernel * (c_in / groups)) as f64 * c_out as f64 * out / 1e6
}

/// `count_BN_flop(h, w, c, affine=True)`.
pub fn batch_norm(hw: [usize; 2], channels: usize) -> f64 {
    2.0 * (hw[0] * hw[1] * channels) as f64 / 1e6
}

/// `count_ReLU_flop(h, w, c)`.
pub fn relu(hw: [usize; 2], channels: usize) -> f64 {
    (hw[0] * hw[1] * channels) as f64 / 1e6
}

/// `count_ConvBNReLU_flop`: the conv, then BN and ReLU at the strided size.
pub fn conv_bn_relu(
    hw: [usize; 2],
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
) -> f64 {
    let out = [hw[0] / stride, hw[1] / stride];
    conv(hw, c_in, c_out, kernel, stride, 1) + batch_norm(out, c_out) + relu(out, c_out)
}

/// `SepConv.get_flop` (3×3, stride 1): depthwise, 1×1 conv-BN-ReLU, depthwise, 1×1 conv + BN.
pub fn sep_conv(hw: [usize; 2], channels: usize) -> f64 {
    let depthwise = conv(hw, channels, channels, 3, 1, channels);
    2.0 * depthwise
        + conv_bn_relu(hw, channels, channels, 1, 1)
        + conv(hw, channels, channels, 1, 1, 1)
        + batch_norm(hw, channels)
}

/// The cell op (`Mixed_OP`): SepConv plus the identity, which costs nothing.
pub fn cell_op(hw: [usize; 2], channels: usize) -> f64 {
    sep_conv(hw, channels)
}

/// `res_keep_flops`: a ReLU.
pub fn keep(hw: [usize; 2], channels: usize) -> f64 {
    relu(hw, channels)
}

/// `res_up_flops`: ReLU, then 1×1 conv-BN-ReLU C→C/2 (the bilinear ×2 is not counted).
pub fn up(hw: [usize; 2], channels: usize) -> f64 {
    relu(hw, channels) + conv_bn_relu(hw, channels, channels / 2, 1, 1)
}

/// `res_down_flops`: ReLU, then 1×1 stride-2 conv-BN-ReLU C→2C.
pub fn down(hw: [usize; 2], channels: usize) -> f64 {
    relu(hw, channels) + conv_bn_relu(hw, channels, 2 * channels, 1, 2)
}

/// `gate_flops`: 1×1 conv-BN-ReLU C→C/2, the pool, the 1×1 conv to `gates` (no bias term), at
/// the cell's size or, with the small gate, at `⌊size/4⌋`.
pub fn gate(hw: [usize; 2], channels: usize, gates: usize, small: bool) -> f64 {
    // Maps under 4 pixels are gated at 1×1 (see `Gate::alphas`).
    let hw = if small {
        [(hw[0] / 4).max(1), (hw[1] / 4).max(1)]
    } else {
        hw
    };
    let half = channels / 2;
    conv_bn_relu(hw, channels, half, 1, 1)
        + (hw[0] * hw[1] * half) as f64 / 1e6
        + conv([1, 1], half, gates, 1, 1, 1)
}

/// `DynamicStem.flops` at input size `hw` with `channels` (64): `stem_1` at `⌊hw/2⌋`, `stem_2`
/// at `⌊hw/2⌋`, `stem_3`'s depthwise from `⌊hw/2⌋` with stride 2 and its 1×1 at `⌊⌊hw/2⌋/2⌋`.
pub fn stem(hw: [usize; 2], channels: usize) -> f64 {
    let half = [hw[0] / 2, hw[1] / 2];
    let quarter = [half[0] / 2, half[1] / 2];
    conv_bn_relu(hw, 3, channels, 3, 2)
        + conv(half, channels, channels, 3, 1, channels)
        + conv_bn_relu(half, channels, channels, 1, 1)
        + conv(half, channels, channels, 3, 2, channels)
        + conv_bn_relu(quarter, channels, channels, 1, 1)
}

/// `SemSegDecoderHead.flops`: a 1×1 conv-BN-ReLU per scale (`feature_hw[k]`, channels
/// `c·2^k` → `c` for k = 0, else half) and the 3×3 predictor to `classes` at scale 0, no bias.
pub fn head(feature_hw: &[[usize; 2]], channels: usize, classes: usize) -> f64 {
    let mut total = 0.0;
    for (k, &hw) in feature_hw.iter().enumerate() {
        let c_in = channels << k;
        let c_out = if k == 0 { c_in } else { c_in / 2 };
        total += conv_bn_relu(hw, c_in, c_out, 1, 1);
    }
    total
        + feature_hw
            .first()
            .map_or(0.0, |&hw| conv(hw, channels, classes, 3, 1, 1))
}
