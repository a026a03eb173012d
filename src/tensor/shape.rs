//! Shapes: dimension lists, row-major strides, axis normalisation and broadcasting rules
//! (NumPy / PyTorch semantics: align trailing dimensions, a size-1 dimension stretches).

use crate::error::{Error, Result};
use std::fmt;

/// The dimensions of a contiguous row-major tensor, outermost first (NCHW for images).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar of rank 0).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }

    /// Size of dimension `axis` (already normalised).
    pub fn dim(&self, axis: usize) -> usize {
        self.0[axis]
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }

    /// Turns a possibly negative axis into an index in `0..rank`.
    pub fn axis(&self, op: &'static str, axis: isize) -> Result<usize> {
        let rank = self.0.len() as isize;
        let normalised = if axis < 0 { axis + rank } else { axis };
        if normalised < 0 || normalised >= rank {
            return Err(Error::Axis {
                op,
                axis,
                shape: self.0.clone(),
            });
        }
        Ok(normalised as usize)
    }

    /// Splits the shape around `axis` into `(outer, size, inner)` element counts, the view
    /// every per-axis kernel (reductions, softmax, concat, gather) works on.
    pub fn outer_size_inner(&self, axis: usize) -> (usize, usize, usize) {
        let outer = self.0[..axis].iter().product();
        let inner = self.0[axis + 1..].iter().product();
        (outer, self.0[axis], inner)
    }

    /// Checks that the shape has exactly `rank` dimensions.
    pub fn expect_rank(&self, op: &'static str, name: &str, rank: usize) -> Result<()> {
        if self.rank() != rank {
            return Err(Error::shape(
                op,
                format!(
                    "{name} must have rank {rank}, got shape {:?} (rank {})",
                    self.0,
                    self.rank()
                ),
            ));
        }
        Ok(())
    }

    /// The shape both operands broadcast to.
    pub fn broadcast(op: &'static str, lhs: &Shape, rhs: &Shape) -> Result<Shape> {
        let rank = lhs.rank().max(rhs.rank());
        let mut dims = vec![0; rank];
        for (i, dim) in dims.iter_mut().enumerate() {
            let l = lhs.padded_dim(rank, i);
            let r = rhs.padded_dim(rank, i);
            *dim = match (l, r) {
                (a, b) if a == b => a,
                (1, b) => b,
                (a, 1) => a,
                _ => {
                    return Err(Error::Broadcast {
                        op,
                        lhs: lhs.0.clone(),
                        rhs: rhs.0.clone(),
                    })
                }
            };
        }
        Ok(Shape(dims))
    }

    /// Strides to read this shape as if it were broadcast to `target` (0 on stretched axes).
    /// `target` must be a broadcast of `self`.
    pub fn broadcast_strides(&self, target: &Shape) -> Vec<usize> {
        let rank = target.rank();
        let own = self.strides();
        let offset = rank - self.rank();
        (0..rank)
            .map(|i| {
                if i < offset || self.0[i - offset] == 1 {
                    0
                } else {
                    own[i - offset]
                }
            })
            .collect()
    }

    fn padded_dim(&self, rank: usize, i: usize) -> usize {
        let offset = rank - self.rank();
        if i < offset {
            1
        } else {
            self.0[i - offset]
        }
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Shape(dims)
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Shape(dims.to_vec())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Self {
        Shape(dims.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(shape: &Shape) -> Self {
        shape.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_follows_numpy_rules() {
        let a = Shape::from([4, 1, 3]);
        let b = Shape::from([5, 1]);
        assert_eq!(Shape::broadcast("t", &a, &b).unwrap().dims(), &[4, 5, 3]);
        assert!(Shape::broadcast("t", &Shape::from([2, 3]), &Shape::from([4])).is_err());
        assert_eq!(a.broadcast_strides(&Shape::from([4, 5, 3])), vec![3, 0, 1]);
        assert_eq!(b.broadcast_strides(&Shape::from([4, 5, 3])), vec![0, 1, 0]);
    }

    #[test]
    fn axis_normalisation_rejects_out_of_range() {
        let s = Shape::from([2, 3, 4]);
        assert_eq!(s.axis("t", -1).unwrap(), 2);
        assert_eq!(s.axis("t", 0).unwrap(), 0);
        assert!(s.axis("t", 3).is_err());
        assert!(s.axis("t", -4).is_err());
        assert_eq!(s.strides(), vec![12, 4, 1]);
        assert_eq!(s.outer_size_inner(1), (2, 3, 4));
    }
}
