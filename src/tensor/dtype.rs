//! Element types for reading and writing weights. Compute is always f32; f16, bf16 and i64
//! (e.g. `num_batches_tracked`) are converted on the way in and out.

use super::{Shape, Tensor};
use crate::error::{Error, Result};
use half::{bf16, f16};

/// A stored element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float (the compute type).
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 64-bit signed integer; converted exactly while |v| ≤ 2^24.
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
        }
    }

    /// The name used in safetensors headers.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::I64 => "I64",
        }
    }
}

/// Largest integer magnitude an f32 holds exactly.
const F32_EXACT_INT: i64 = 1 << 24;

impl Tensor {
    /// A CPU tensor from little-endian bytes of `dtype` (any alignment).
    pub fn from_bytes(bytes: &[u8], dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let expected = shape.numel() * dtype.size();
        if bytes.len() != expected {
            return Err(Error::shape(
                "from_bytes",
                format!(
                    "{} bytes of {} cannot have shape {shape} ({expected} bytes expected)",
                    bytes.len(),
                    dtype.name()
                ),
            ));
        }
        let chunks = bytes.chunks_exact(dtype.size());
        let data: Vec<f32> = match dtype {
            DType::F32 => chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F16 => chunks
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => chunks
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::I64 => {
                let mut out = Vec::with_capacity(shape.numel());
                for c in chunks {
                    let v = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                    if v.abs() > F32_EXACT_INT {
                        return Err(Error::invalid(
                            "from_bytes",
                            format!("i64 value {v} is too large to hold exactly (|v| ≤ 2^24)"),
                        ));
                    }
                    out.push(v as f32);
                }
                out
            }
        };
        Tensor::from_vec(data, shape)
    }

    /// The elements as little-endian bytes of `dtype` (i64 rounds to the nearest integer); a
    /// failed device-to-host copy is an error.
    pub fn to_bytes(&self, dtype: DType) -> Result<Vec<u8>> {
        let data = self.try_to_vec()?;
        Ok(match dtype {
            DType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => data
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            DType::BF16 => data
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
            DType::I64 => data
                .iter()
                .flat_map(|&v| (v.round() as i64).to_le_bytes())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_each_dtype() {
        let t = Tensor::from_vec(vec![1.5, -2.0, 0.25, 3.0], [2, 2]).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16, DType::I64] {
            let bytes = t.to_bytes(dtype).unwrap();
            assert_eq!(bytes.len(), 4 * dtype.size());
            let back = Tensor::from_bytes(&bytes, dtype, [2, 2]).unwrap();
            let expected = if dtype == DType::I64 {
                vec![2.0, -2.0, 0.0, 3.0]
            } else {
                vec![1.5, -2.0, 0.25, 3.0]
            };
            assert_eq!(back.try_to_vec().unwrap(), expected, "{dtype:?}");
        }
        // Hand-checked encodings: f16 1.0 = 0x3C00, bf16 1.0 = 0x3F80.
        let one = Tensor::from_vec(vec![1.0], [1]).unwrap();
        assert_eq!(one.to_bytes(DType::F16).unwrap(), vec![0x00, 0x3C]);
        assert_eq!(one.to_bytes(DType::BF16).unwrap(), vec![0x80, 0x3F]);
        assert!(Tensor::from_bytes(&[0u8; 7], DType::F32, [2]).is_err());
        let huge = (1i64 << 40).to_le_bytes();
        assert!(Tensor::from_bytes(&huge, DType::I64, [1]).is_err());
    }
}
