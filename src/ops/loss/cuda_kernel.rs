//! CUDA launchers of the loss family (kernels in `kernels/loss.cu`).

use super::{CrossEntropyForward, CrossEntropyLayout, LossBackend};
use crate::backend::cuda::runtime::{dim32, grid_for};
use crate::backend::cuda::CudaBackend;
use crate::error::{Error, Result};
use crate::tensor::Storage;
use cudarc::driver::DeviceRepr;

const FAMILY: &str = "loss";

/// One launch (mirror: `CrossEntropyParams` in loss.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CrossEntropyParams {
    pub batch: u32,
    pub classes: u32,
    pub spatial: u32,
    pub has_weight: u32,
    pub ignore_index: f32,
    pub pad: u32,
}

// SAFETY: plain `#[repr(C)]` data with the layout of the .cu struct.
unsafe impl DeviceRepr for CrossEntropyParams {}
const _: () = assert!(
    std::mem::size_of::<CrossEntropyParams>() == 24,
    "CrossEntropyParams: size of the .cu struct"
);

fn params(
    op: &'static str,
    layout: CrossEntropyLayout,
    has_weight: bool,
) -> Result<CrossEntropyParams> {
    Ok(CrossEntropyParams {
        batch: dim32(op, layout.batch)?,
        classes: dim32(op, layout.classes)?,
        spatial: dim32(op, layout.spatial)?,
        has_weight: u32::from(has_weight),
        ignore_index: layout.ignore_index as f32,
        pad: 0,
    })
}

impl LossBackend for CudaBackend {
    fn cross_entropy_forward(
        &self,
        logits: &Storage,
        target: &Storage,
        weight: Option<&Storage>,
        layout: CrossEntropyLayout,
    ) -> Result<CrossEntropyForward> {
        const OP: &str = "cross_entropy";
        let x = self.buffer(OP, logits)?;
        let t = self.buffer(OP, target)?;
        let w = weight.map(|w| self.buffer(OP, w)).transpose()?;
        let p = params(OP, layout, w.is_some())?;
        let positions = layout.batch * layout.spatial;
        let (loss, weights, lse) = (
            self.alloc(positions)?,
            self.alloc(positions)?,
            self.alloc(positions)?,
        );
        let bad = self.upload_slice(&[0.0])?;
        if positions > 0 {
            let buffers = [x, t, w.unwrap_or(x), &loss, &weights, &lse, &bad];
            self.launch(
                FAMILY,
                "cross_entropy_forward",
                grid_for(positions),
                &p,
                &buffers,
            )?;
        }
        // The kernel records (position + 1) of an invalid target; report it like the CPU does.
        let flag = self
            .download(&bad)?
            .first()
            .map_or(0, |v| v.to_bits() as i32);
        if flag > 0 {
            let position = (flag - 1) as usize;
            let value = Storage::Cuda(t.clone())
                .try_to_vec()?
                .get(position)
                .copied()
                .unwrap_or(f32::NAN);
            return Err(Error::invalid(
                OP,
                format!(
                    "target value {value} at position {position} is neither a class in [0, {}) \
                     nor ignore_index {}",
                    layout.classes, layout.ignore_index
                ),
            ));
        }
        Ok(CrossEntropyForward {
            loss: Storage::Cuda(loss),
            weight: Storage::Cuda(weights),
            log_sum_exp: Storage::Cuda(lse),
        })
    }

    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        target: &Storage,
        weight: Option<&Storage>,
        log_sum_exp: &Storage,
        grad_loss: &Storage,
        layout: CrossEntropyLayout,
    ) -> Result<Storage> {
        const OP: &str = "cross_entropy_backward";
        let x = self.buffer(OP, logits)?;
        let t = self.buffer(OP, target)?;
        let w = weight.map(|w| self.buffer(OP, w)).transpose()?;
        let lse = self.buffer(OP, log_sum_exp)?;
        let g = self.buffer(OP, grad_loss)?;
        let p = params(OP, layout, w.is_some())?;
        let n = x.len();
        let inputs = [x, t, w.unwrap_or(x), lse, g];
        self.launch_into(
            FAMILY,
            "cross_entropy_backward",
            grid_for(n),
            &p,
            &inputs,
            n,
        )
    }
}
