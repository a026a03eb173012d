//! Elementwise math: unary maps, scalar ops and broadcasting binary ops, with their backward.
//!
//! Binary ops broadcast like PyTorch; their backward sums the output gradient back over the
//! broadcast axes ([`Tensor::sum_to`]).

mod cpu_kernel;
mod cuda_kernel;

use crate::error::Result;
use crate::tensor::{Shape, Storage, Tensor};

/// A unary elementwise map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `e^x`
    Exp,
    /// `ln x`
    Log,
    /// `√x`
    Sqrt,
    /// `|x|`
    Abs,
    /// `sign(x)` (0 at 0)
    Sign,
    /// `x + c`
    AddScalar(f32),
    /// `x · c`
    MulScalar(f32),
    /// `x^p`
    PowScalar(f32),
    /// `min(max(x, min), max)`
    Clamp { min: f32, max: f32 },
    /// `1` where `min ≤ x ≤ max`, else `0` (the gradient mask of `Clamp`)
    InRange { min: f32, max: f32 },
}

/// A binary elementwise op (operands broadcast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a − b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`
    Maximum,
    /// `min(a, b)`
    Minimum,
    /// `1` where `a == b`, else `0`
    Equal,
    /// `1` where `a > b`, else `0`
    Greater,
}

/// Kernels of this family.
pub trait ElementwiseBackend {
    /// `op(x)` for every element.
    fn unary(&self, op: UnaryOp, x: &Storage) -> Result<Storage>;

    /// `op(lhs, rhs)` with both operands broadcast to `out_shape`.
    fn binary(
        &self,
        op: BinaryOp,
        lhs: &Storage,
        lhs_shape: &Shape,
        rhs: &Storage,
        rhs_shape: &Shape,
        out_shape: &Shape,
    ) -> Result<Storage>;

    /// `x` (of `shape`) repeated along the axes where it broadcasts to `target`.
    fn broadcast_to(&self, x: &Storage, shape: &Shape, target: &Shape) -> Result<Storage>;
}

impl Tensor {
    /// Applies a unary map; `grad` gives the backward as a function of (input, output, output
    /// gradient).
    fn unary_op(
        &self,
        op: UnaryOp,
        name: &'static str,
        grad: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Tensor> {
        let storage = self.backend().unary(op, &self.storage())?;
        let out = Tensor::from_storage(storage.clone(), self.shape().clone())?;
        let input = self.detach();
        Tensor::from_op(name, storage, self.shape().clone(), &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| Ok(vec![Some(grad(&input, &out, g)?)]))
        })
    }

    /// Non-differentiable unary map (masks, signs).
    fn unary_nograd(&self, op: UnaryOp) -> Result<Tensor> {
        let storage = self.backend().unary(op, &self.storage())?;
        Tensor::from_storage(storage, self.shape().clone())
    }

    /// `-x`
    pub fn neg(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Neg, "neg", |_, _, g| g.neg())
    }

    /// `e^x`
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Exp, "exp", |_, y, g| g.mul(y))
    }

    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Log, "log", |x, _, g| g.div(x))
    }

    /// Square root.
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sqrt, "sqrt", |_, y, g| g.div(&y.mul_scalar(2.0)?))
    }

    /// Absolute value (gradient `sign(x)`, 0 at 0 as in PyTorch).
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Abs, "abs", |x, _, g| {
            g.mul(&x.unary_nograd(UnaryOp::Sign)?)
        })
    }

    /// `x + c`
    pub fn add_scalar(&self, c: f32) -> Result<Tensor> {
        self.unary_op(UnaryOp::AddScalar(c), "add_scalar", |_, _, g| Ok(g.clone()))
    }

    /// `x − c`
    pub fn sub_scalar(&self, c: f32) -> Result<Tensor> {
        self.add_scalar(-c)
    }

    /// `x · c`
    pub fn mul_scalar(&self, c: f32) -> Result<Tensor> {
        self.unary_op(UnaryOp::MulScalar(c), "mul_scalar", move |_, _, g| {
            g.mul_scalar(c)
        })
    }

    /// `x / c`
    pub fn div_scalar(&self, c: f32) -> Result<Tensor> {
        self.mul_scalar(1.0 / c)
    }

    /// `x^p` for a scalar exponent.
    pub fn pow(&self, p: f32) -> Result<Tensor> {
        self.unary_op(UnaryOp::PowScalar(p), "pow", move |x, _, g| {
            g.mul(&x.unary_nograd(UnaryOp::PowScalar(p - 1.0))?.mul_scalar(p)?)
        })
    }

    /// `x²`
    pub fn square(&self) -> Result<Tensor> {
        self.pow(2.0)
    }

    /// Limits values to `[min, max]`; the gradient passes where `min ≤ x ≤ max`.
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        self.unary_op(UnaryOp::Clamp { min, max }, "clamp", move |x, _, g| {
            g.mul(&x.unary_nograd(UnaryOp::InRange { min, max })?)
        })
    }

    fn binary_raw(
        &self,
        op: BinaryOp,
        name: &'static str,
        rhs: &Tensor,
    ) -> Result<(Storage, Shape)> {
        self.same_device(name, rhs)?;
        let out_shape = Shape::broadcast(name, self.shape(), rhs.shape())?;
        let storage = self.backend().binary(
            op,
            &self.storage(),
            self.shape(),
            &rhs.storage(),
            rhs.shape(),
            &out_shape,
        )?;
        Ok((storage, out_shape))
    }

    /// `a + b` (broadcasting).
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        let (storage, shape) = self.binary_raw(BinaryOp::Add, "add", rhs)?;
        let (ls, rs) = (self.shape().clone(), rhs.shape().clone());
        Tensor::from_op("add", storage, shape, &[self, rhs], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                Ok(vec![
                    needs[0].then(|| g.sum_to(&ls)).transpose()?,
                    needs[1].then(|| g.sum_to(&rs)).transpose()?,
                ])
            })
        })
    }

    /// `a − b` (broadcasting).
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        let (storage, shape) = self.binary_raw(BinaryOp::Sub, "sub", rhs)?;
        let (ls, rs) = (self.shape().clone(), rhs.shape().clone());
        Tensor::from_op("sub", storage, shape, &[self, rhs], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                Ok(vec![
                    needs[0].then(|| g.sum_to(&ls)).transpose()?,
                    needs[1].then(|| g.neg()?.sum_to(&rs)).transpose()?,
                ])
            })
        })
    }

    /// `a · b` (broadcasting).
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        let (storage, shape) = self.binary_raw(BinaryOp::Mul, "mul", rhs)?;
        let (a, b) = (self.detach(), rhs.detach());
        Tensor::from_op("mul", storage, shape, &[self, rhs], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                Ok(vec![
                    needs[0].then(|| g.mul(&b)?.sum_to(a.shape())).transpose()?,
                    needs[1].then(|| g.mul(&a)?.sum_to(b.shape())).transpose()?,
                ])
            })
        })
    }

    /// `a / b` (broadcasting).
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        let (storage, shape) = self.binary_raw(BinaryOp::Div, "div", rhs)?;
        let (a, b) = (self.detach(), rhs.detach());
        Tensor::from_op("div", storage, shape, &[self, rhs], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                let grad_a = needs[0].then(|| g.div(&b)?.sum_to(a.shape())).transpose()?;
                let grad_b = needs[1]
                    .then(|| g.mul(&a)?.div(&b.square()?)?.neg()?.sum_to(b.shape()))
                    .transpose()?;
                Ok(vec![grad_a, grad_b])
            })
        })
    }

    /// Elementwise maximum (broadcasting); on ties the gradient goes to `a`.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.select_binary(BinaryOp::Maximum, "maximum", rhs)
    }

    /// Elementwise minimum (broadcasting); on ties the gradient goes to `a`.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.select_binary(BinaryOp::Minimum, "minimum", rhs)
    }

    fn select_binary(&self, op: BinaryOp, name: &'static str, rhs: &Tensor) -> Result<Tensor> {
        let (storage, shape) = self.binary_raw(op, name, rhs)?;
        let (a, b) = (self.detach(), rhs.detach());
        let out = Tensor::from_storage(storage.clone(), shape.clone())?;
        Tensor::from_op(name, storage, shape, &[self, rhs], move || {
            Box::new(move |g: &Tensor, needs: &[bool]| {
                // Mask of where the output came from `a`.
                let from_a = out.eq(&a)?;
                let from_b = from_a.neg()?.add_scalar(1.0)?;
                Ok(vec![
                    needs[0]
                        .then(|| g.mul(&from_a)?.sum_to(a.shape()))
                        .transpose()?,
                    needs[1]
                        .then(|| g.mul(&from_b)?.sum_to(b.shape()))
                        .transpose()?,
                ])
            })
        })
    }

    /// `1.0` where `a == b`, else `0.0` (broadcasting, no gradient).
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        let (storage, shape) = self.binary_raw(BinaryOp::Equal, "eq", rhs)?;
        Tensor::from_storage(storage, shape)
    }

    /// `1.0` where `a > b`, else `0.0` (broadcasting, no gradient).
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        let (storage, shape) = self.binary_raw(BinaryOp::Greater, "gt", rhs)?;
        Tensor::from_storage(storage, shape)
    }

    /// This tensor repeated along broadcast axes to `shape` (`expand` + copy); its gradient
    /// sums back.
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let target = shape.into();
        let check = Shape::broadcast("broadcast_to", self.shape(), &target)?;
        if check != target {
            return Err(crate::error::Error::Broadcast {
                op: "broadcast_to",
                lhs: self.dims().to_vec(),
                rhs: target.dims().to_vec(),
            });
        }
        if &target == self.shape() {
            return Ok(self.clone());
        }
        let storage = self
            .backend()
            .broadcast_to(&self.storage(), self.shape(), &target)?;
        let input_shape = self.shape().clone();
        Tensor::from_op("broadcast_to", storage, target, &[self], move || {
            Box::new(move |g: &Tensor, _: &[bool]| Ok(vec![Some(g.sum_to(&input_shape)?)]))
        })
    }

    /// Sums this (broadcast) tensor down to `shape`: over leading extra axes and over axes
    /// where `shape` has size 1. The backward of broadcasting.
    pub fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let offset = self.rank().checked_sub(shape.rank()).ok_or_else(|| {
            crate::error::Error::shape(
                "sum_to",
                format!(
                    "cannot sum {} down to the larger rank of {shape}",
                    self.shape()
                ),
            )
        })?;
        let mut axes = Vec::new();
        for (i, &d) in self.dims().iter().enumerate() {
            if i < offset || (shape.dim(i - offset) == 1 && d != 1) {
                axes.push(i as isize);
            } else if shape.dim(i - offset) != d {
                return Err(crate::error::Error::shape(
                    "sum_to",
                    format!("{} does not broadcast from {shape}", self.shape()),
                ));
            }
        }
        self.sum(&axes, true)?.reshape_to(shape.clone())
    }
}
