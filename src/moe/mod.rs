//! Mixture-of-Experts layers for CNN segmentation (`../shared/spec/moe.md`): PatchConvMoE, its
//! gates, balancing losses and routing statistics.
