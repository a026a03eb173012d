//! MAC counting (`ops::macs::count_macs`) on hand-computed cases, independent of the networks.

use moeseg::moe::{PatchConvMoE, PatchConvMoeConfig};
use moeseg::nn::ConvOptions;
use moeseg::nn::{Conv2d, ConvTranspose2d, Linear, Module};
use moeseg::ops::conv::ConvTranspose2dParams;
use moeseg::ops::macs::{count_macs, is_counting};
use moeseg::{Device, Tensor};

#[test]
fn conv_transposed_conv_and_linear_count_by_hand() {
    let x = Tensor::zeros([2, 3, 8, 10], &Device::Cpu).unwrap();
    // 3×3, 3→4, padding 1, stride 2: out 4×5; MACs = 2·4·(4·5)·(3·9) = 4320.
    let conv = Conv2d::new(3, 4, 3, ConvOptions::new().stride(2).padding(1)).unwrap();
    let (y, macs) = count_macs(|| conv.forward(&x)).unwrap();
    assert_eq!(y.dims(), &[2, 4, 4, 5]);
    assert_eq!(macs, 4320);
    // Grouped 3×3 6→6, groups 3, on 1×6×5×5 with padding 1: 25 · 6 · 2 · 9 = 2700.
    let grouped = Conv2d::new(6, 6, 3, ConvOptions::new().padding(1).groups(3).no_bias()).unwrap();
    let (_, macs) =
        count_macs(|| grouped.forward(&Tensor::zeros([1, 6, 5, 5], &Device::Cpu)?)).unwrap();
    assert_eq!(macs, 2700);
    // Transposed 2×2 stride 2, 4→3 on 1×4×3×3: every input pixel meets every tap once:
    // 9 · 4 · 3 · 4 = 432; output 6×6.
    let params = ConvTranspose2dParams {
        stride: [2, 2],
        ..ConvTranspose2dParams::default()
    };
    let up = ConvTranspose2d::new(4, 3, 2, params, false).unwrap();
    let (y, macs) = count_macs(|| up.forward(&Tensor::zeros([1, 4, 3, 3], &Device::Cpu)?)).unwrap();
    assert_eq!(y.dims(), &[1, 3, 6, 6]);
    assert_eq!(macs, 432);
    // Linear 7→5 on 3 rows: 105.
    let linear = Linear::new(7, 5, true).unwrap();
    let (_, macs) = count_macs(|| linear.forward(&Tensor::zeros([3, 7], &Device::Cpu)?)).unwrap();
    assert_eq!(macs, 105);
    assert!(!is_counting());
}

#[test]
fn patch_conv_moe_counts_gate_on_halo_tokens_and_k_experts() {
    // 3×3 conv 4→4 on 1×4×10×10, E=8 k=2, 3×3 grid: patches 4×4 (padded map 12×12), halo
    // tokens 6×6, 9 tokens. Gate 2conv_gap (1×1, 8 hidden): (4·8 + 8·8)·36·9 = 31104.
    // Experts: 2 · 9 · 16 pixels · 4 · 36 = 41472. Total 72576.
    let conv = Conv2d::new(4, 4, 3, ConvOptions::new().padding(1).no_bias()).unwrap();
    let moe = PatchConvMoE::from_conv(&conv, PatchConvMoeConfig::default()).unwrap();
    moeseg::nn::set_training(&moe, false);
    let x = Tensor::zeros([1, 4, 10, 10], &Device::Cpu).unwrap();
    let (y, macs) = count_macs(|| moe.forward(&x)).unwrap();
    assert_eq!(y.dims(), &[1, 4, 10, 10]);
    assert_eq!(macs, 72576);
    // The dense conv it replaces: 100 · 4 · 36 = 14400.
    let (_, dense) = count_macs(|| conv.forward(&x)).unwrap();
    assert_eq!(dense, 14400);
}

#[test]
fn outside_a_count_ops_compute() {
    let conv = Conv2d::new(1, 1, 1, ConvOptions::new().no_bias()).unwrap();
    let x = Tensor::ones([1, 1, 2, 2], &Device::Cpu).unwrap();
    let w = conv.weight.try_to_vec().unwrap()[0];
    let y = conv.forward(&x).unwrap().try_to_vec().unwrap();
    assert!(y.iter().all(|&v| (v - w).abs() < 1e-6) && w != 0.0);
}

/// ViT-Tiny at 224² counted by hand: patch embedding (196 patches × 192 × 3·16·16), per block
/// qkv, the two attention products (3 heads × 197² × 64 each), the projection and the MLP
/// (192 → 768 → 192) on 197 tokens, and the 1000-class head on the class token; the Soft-MoE
/// version's MLPs in blocks 6–11 run on its 128 slots instead, plus its three routing products
/// (logits, slots, combine: 197 × 192 × 128 each).
#[test]
fn vit_tiny_and_its_soft_moe_version_count_by_hand() {
    use moeseg::models::vit::{VisionTransformer, VitConfig, VitSize};
    let (t, d, h, m, depth) = (197u64, 192u64, 3u64, 768u64, 12u64);
    let embed = 196 * d * 3 * 16 * 16;
    let attention = t * d * 3 * d + 2 * h * t * t * (d / h) + t * d * d;
    let mlp = |tokens: u64| 2 * tokens * d * m;
    let head = d * 1000;
    let dense = embed + depth * (attention + mlp(t)) + head;
    let soft = embed + depth * attention + 6 * mlp(t) + 6 * (mlp(128) + 3 * t * d * 128) + head;
    for (config, expected) in [
        (VitConfig::vit(VitSize::Tiny), dense),
        (VitConfig::soft_moe_vit(VitSize::Tiny), soft),
    ] {
        let net = VisionTransformer::new(config).unwrap();
        let counts = moeseg::models::complexity(&net, [1, 3, 224, 224]).unwrap();
        assert_eq!(counts.macs, expected);
    }
}
