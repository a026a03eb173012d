//! CUDA launchers of the optimizer family (kernels in `kernels/optimizer.cu`): one fused pass
//! per parameter tensor.

use super::{AdamHyper, AdamMoments, OptimizerBackend, SgdHyper};
use crate::backend::cuda::runtime::grid_for;
use crate::backend::cuda::{CudaBackend, CudaBuffer};
use crate::error::{Error, Result};
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "optimizer";

/// One SGD launch (mirror: `SgdParams` in optimizer.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SgdParams {
    pub n: u64,
    /// 0: no momentum, 1: first step (buffer = g), 2: with a momentum buffer.
    pub mode: u32,
    pub nesterov: u32,
    pub weight_decay: f32,
    pub momentum: f32,
    pub grad_scale: f32,
    pub neg_lr: f32,
}

/// One Adam launch (mirror: `AdamParams` in optimizer.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AdamParams {
    pub n: u64,
    pub grad_weight_decay: f32,
    pub param_scale: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    pub neg_step_size: f32,
    pub amsgrad: u32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu structs.
unsafe impl DeviceRepr for SgdParams {}
const _: () = assert!(
    std::mem::size_of::<SgdParams>() == 32,
    "SgdParams: size of the .cu struct"
);
unsafe impl DeviceRepr for AdamParams {}
const _: () = assert!(
    std::mem::size_of::<AdamParams>() == 48,
    "AdamParams: size of the .cu struct"
);
const _: () = assert!(
    std::mem::offset_of!(AdamParams, amsgrad) == 40,
    "AdamParams: 64-bit field offset"
);

impl CudaBackend {
    /// The buffer of `storage`, checked to hold `len` elements (`name` in the error).
    fn operand<'s>(
        &self,
        op: &'static str,
        name: &str,
        storage: &'s Storage,
        len: usize,
    ) -> Result<&'s CudaBuffer> {
        let buffer = self.buffer(op, storage)?;
        if buffer.len() != len {
            return Err(Error::shape(
                op,
                format!("{name} has {} elements, the parameter {len}", buffer.len()),
            ));
        }
        Ok(buffer)
    }
}

impl OptimizerBackend for CudaBackend {
    fn sgd_update(
        &self,
        hyper: SgdHyper,
        param: &Storage,
        grad: &Storage,
        momentum_buffer: Option<&Storage>,
    ) -> Result<(Storage, Option<Storage>)> {
        const OP: &str = "sgd_update";
        let n = param.len();
        let p = self.operand(OP, "param", param, n)?;
        let g = self.operand(OP, "grad", grad, n)?;
        let buf = momentum_buffer
            .map(|b| self.operand(OP, "momentum buffer", b, n))
            .transpose()?;
        let s = hyper.scalars();
        let mode = match (hyper.momentum == 0.0, buf.is_some()) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        let params = SgdParams {
            n: n as u64,
            mode,
            nesterov: u32::from(hyper.nesterov),
            weight_decay: s.weight_decay,
            momentum: s.momentum,
            grad_scale: s.grad_scale,
            neg_lr: s.neg_lr,
        };
        let new_param = self.alloc(n)?;
        let new_buf = if mode == 0 {
            None
        } else {
            Some(self.alloc(n)?)
        };
        if n > 0 {
            // Unused pointers (no buffer in, none out) are dummies the kernel does not touch.
            let buffers = [
                p,
                g,
                buf.unwrap_or(p),
                &new_param,
                new_buf.as_ref().unwrap_or(&new_param),
            ];
            self.launch(FAMILY, "sgd_update", grid_for(n), &params, &buffers)?;
        }
        Ok((Storage::Cuda(new_param), new_buf.map(Storage::Cuda)))
    }

    fn adam_update(
        &self,
        hyper: AdamHyper,
        param: &Storage,
        grad: &Storage,
        moments: &AdamMoments,
    ) -> Result<(Storage, AdamMoments)> {
        const OP: &str = "adam_update";
        let n = param.len();
        let p = self.operand(OP, "param", param, n)?;
        let g = self.operand(OP, "grad", grad, n)?;
        let m = self.operand(OP, "exp_avg", &moments.exp_avg, n)?;
        let v = self.operand(OP, "exp_avg_sq", &moments.exp_avg_sq, n)?;
        let s = hyper.scalars();
        let max = match (s.amsgrad, &moments.max_exp_avg_sq) {
            (false, _) => None,
            (true, Some(max)) => Some(self.operand(OP, "max_exp_avg_sq", max, n)?),
            (true, None) => {
                return Err(Error::invalid(
                    OP,
                    "amsgrad needs the max_exp_avg_sq buffer",
                ))
            }
        };
        let params = AdamParams {
            n: n as u64,
            grad_weight_decay: s.grad_weight_decay,
            param_scale: s.param_scale,
            one_minus_beta1: s.one_minus_beta1,
            beta2: s.beta2,
            one_minus_beta2: s.one_minus_beta2,
            bias_correction2_sqrt: s.bias_correction2_sqrt,
            eps: s.eps,
            neg_step_size: s.neg_step_size,
            amsgrad: u32::from(s.amsgrad),
            pad: 0,
        };
        let (new_p, new_m, new_v) = (self.alloc(n)?, self.alloc(n)?, self.alloc(n)?);
        let new_max = if max.is_some() {
            Some(self.alloc(n)?)
        } else {
            None
        };
        if n > 0 {
            let buffers = [
                p,
                g,
                m,
                v,
                max.unwrap_or(p),
                &new_p,
                &new_m,
                &new_v,
                new_max.as_ref().unwrap_or(&new_v),
            ];
            self.launch(FAMILY, "adam_update", grid_for(n), &params, &buffers)?;
        }
        let moments = AdamMoments {
            exp_avg: Storage::Cuda(new_m),
            exp_avg_sq: Storage::Cuda(new_v),
            max_exp_avg_sq: new_max.map(Storage::Cuda),
        };
        Ok((Storage::Cuda(new_p), moments))
    }
}
