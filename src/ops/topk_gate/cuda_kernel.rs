//! CUDA launchers of the top-k gate family (kernels in `kernels/topk_gate.cu`): softmax, choice
//! (per token, or in token order under a capacity), weights and counts, and the weights'
//! backward.

use super::{TopkGateBackend, TopkGateParams, TopkGateStorages};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::{Error, Result};
use crate::tensor::Storage;
use cudarc::driver::{DeviceRepr, LaunchConfig};

const FAMILY: &str = "topk_gate";

/// One launch (mirror: `GateParams` in topk_gate.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GateParams {
    pub tokens: u32,
    pub experts: u32,
    pub k: u32,
    pub capacity: u32,
    pub straight_through: u32,
    pub eps: f32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for GateParams {}
const _: () = assert!(
    std::mem::size_of::<GateParams>() == 24,
    "GateParams: size of the .cu struct"
);

fn gate_params(
    op: &'static str,
    tokens: usize,
    experts: usize,
    p: TopkGateParams,
) -> Result<GateParams> {
    Ok(GateParams {
        tokens: dim32(op, tokens)?,
        experts: dim32(op, experts)?,
        k: dim32(op, p.k)?,
        capacity: dim32(op, p.capacity)?,
        straight_through: u32::from(p.uses_straight_through()),
        eps: p.eps,
    })
}

impl TopkGateBackend for CudaBackend {
    fn topk_gate_forward(
        &self,
        logits: &Storage,
        selection: Option<&Storage>,
        tokens: usize,
        experts: usize,
        params: TopkGateParams,
    ) -> Result<TopkGateStorages> {
        const OP: &str = "topk_gate";
        let k = params.k;
        if k == 0 || k > experts {
            return Err(Error::invalid(
                OP,
                format!("k = {k} must be between 1 and E = {experts}"),
            ));
        }
        let logits = self.buffer(OP, logits)?;
        let selection = selection.map(|s| self.buffer(OP, s)).transpose()?;
        let p = gate_params(OP, tokens, experts, params)?;
        let per_token = grid_for(tokens);
        let probs = self.launch_into(
            FAMILY,
            "topk_gate_softmax",
            per_token,
            &p,
            &[logits],
            tokens * experts,
        )?;
        let probs_buffer = self.buffer(OP, &probs)?;
        let scores = selection.unwrap_or(probs_buffer);
        let indices = self.alloc(tokens * k)?;
        let counts = self.fill(experts, 0.0)?;
        let counts_buffer = self.buffer(OP, &counts)?;
        if tokens > 0 {
            if params.capacity == 0 {
                self.launch(
                    FAMILY,
                    "topk_gate_choose",
                    per_token,
                    &p,
                    &[scores, &indices],
                )?;
            } else {
                let one = LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (1, 1, 1),
                    shared_mem_bytes: 0,
                };
                self.launch(
                    FAMILY,
                    "topk_gate_choose_capacity",
                    one,
                    &p,
                    &[scores, counts_buffer, &indices],
                )?;
            }
        }
        let weights = self.launch_into(
            FAMILY,
            "topk_gate_weights",
            per_token,
            &p,
            &[probs_buffer, &indices],
            tokens * k,
        )?;
        let top1_counts = self.alloc(experts)?;
        if experts > 0 {
            let buffers = [&indices, counts_buffer, &top1_counts];
            self.launch(FAMILY, "topk_gate_counts", grid_for(experts), &p, &buffers)?;
        }
        Ok(TopkGateStorages {
            probs: probs.clone(),
            indices: Storage::Cuda(indices),
            weights,
            counts: counts.clone(),
            top1_counts: Storage::Cuda(top1_counts),
        })
    }

    fn routing_weights_backward(
        &self,
        grad_weights: &Storage,
        probs: &Storage,
        indices: &Storage,
        tokens: usize,
        experts: usize,
        params: TopkGateParams,
    ) -> Result<Storage> {
        const OP: &str = "routing_weights_backward";
        let g = self.buffer(OP, grad_weights)?;
        let (probs, indices) = (self.buffer(OP, probs)?, self.buffer(OP, indices)?);
        let p = gate_params(OP, tokens, experts, params)?;
        if params.k == 0 || experts == 0 {
            return self.fill(tokens * experts, 0.0);
        }
        self.launch_into(
            FAMILY,
            OP,
            grid_for(tokens),
            &p,
            &[g, probs, indices],
            tokens * experts,
        )
    }
}
