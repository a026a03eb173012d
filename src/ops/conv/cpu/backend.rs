//! CPU kernels of the convolution family: dispatch on the geometry to the depthwise direct
//! loops, the pointwise GEMMs or the tiled im2col + GEMM paths (stride-1 input gradients run
//! as a flipped-kernel forward convolution, other strides through col2im).

use super::gemm_paths::{self, COL_TILE_ELEMS};
use super::{depthwise, direct};
use crate::backend::cpu::CpuBackend;
use crate::error::Result;
use crate::ops::conv::{Conv2dGeometry, ConvBackend};
use crate::tensor::Storage;

impl ConvBackend for CpuBackend {
    fn conv2d(
        &self,
        x: &Storage,
        weight: &Storage,
        bias: Option<&Storage>,
        geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        let op = "conv2d";
        let (x, weight) = (x.as_cpu(op)?, weight.as_cpu(op)?);
        let bias = bias.map(|b| b.as_cpu(op)).transpose()?;
        let out = if geometry.is_depthwise() {
            depthwise::forward(&geometry, x, weight, bias)
        } else if geometry.is_pointwise() {
            gemm_paths::pointwise_forward(&geometry, x, weight, bias)
        } else if direct::usable(&geometry) {
            direct::forward(&geometry, x, weight, bias)
        } else {
            gemm_paths::forward(&geometry, x, weight, bias, COL_TILE_ELEMS)
        };
        Ok(Storage::cpu(out))
    }

    fn conv2d_input_backward(
        &self,
        grad_out: &Storage,
        weight: &Storage,
        geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        let op = "conv2d_input_backward";
        let (grad_out, weight) = (grad_out.as_cpu(op)?, weight.as_cpu(op)?);
        let grad_x = if geometry.is_depthwise() {
            depthwise::input_backward(&geometry, grad_out, weight)
        } else if geometry.is_pointwise() {
            gemm_paths::pointwise_input_backward(&geometry, grad_out, weight)
        } else {
            gemm_paths::stride1_input_backward(&geometry, grad_out, weight, COL_TILE_ELEMS)
                .unwrap_or_else(|| {
                    gemm_paths::input_backward(&geometry, grad_out, weight, COL_TILE_ELEMS)
                })
        };
        Ok(Storage::cpu(grad_x))
    }

    fn conv2d_weight_backward(
        &self,
        grad_out: &Storage,
        x: &Storage,
        geometry: Conv2dGeometry,
    ) -> Result<Storage> {
        let op = "conv2d_weight_backward";
        let (grad_out, x) = (grad_out.as_cpu(op)?, x.as_cpu(op)?);
        let grad_w = if geometry.is_depthwise() {
            depthwise::weight_backward(&geometry, grad_out, x)
        } else if geometry.is_pointwise() {
            gemm_paths::pointwise_weight_backward(&geometry, grad_out, x)
        } else if direct::usable(&geometry) {
            direct::weight_backward(&geometry, grad_out, x)
        } else {
            gemm_paths::weight_backward(&geometry, grad_out, x, COL_TILE_ELEMS)
        };
        Ok(Storage::cpu(grad_w))
    }
}
