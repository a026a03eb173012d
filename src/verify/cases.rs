//! The table of `moeseg verify`: one [`Case`] per (kernel, shape), forward and backward kernels
//! alike, with odd sizes, batch 1 and > 1, and the options the networks use. Each case belongs
//! to one op family ([`FAMILIES`], the names of `kernels/<family>.cu`).

use super::Tolerance;
use crate::backend::Backend;
use crate::error::Result;
use crate::ops::activation::{Activation, ChannelLayout};
use crate::ops::elementwise::{BinaryOp, UnaryOp};
use crate::ops::index::{AxisIndexParams, TopkParams};
use crate::ops::loss::CrossEntropyLayout;
use crate::ops::optimizer::{AdamHyper, AdamMoments, SgdHyper};
use crate::ops::patch_grid::PatchGrid;
use crate::ops::shape::NarrowParams;
use crate::tensor::{Rng, Shape, Storage};

mod more;
use more::{conv, interpolate, matmul, norm, pool, routed_conv, soft_route, topk_gate};

/// How one input is drawn.
#[derive(Clone, Copy, Debug)]
pub enum Input {
    /// `len` samples of N(0, 1).
    Normal(usize),
    /// `len` samples of U[low, high).
    Uniform(usize, f32, f32),
    /// `len` integers in `0..below`, as f32.
    Integers(usize, usize),
    /// `len` class labels in `0..classes`, about one in eight replaced by `ignore`.
    Labels(usize, usize, i64),
}

impl Input {
    /// Draws the input's values.
    pub fn draw(&self, rng: &mut Rng) -> Vec<f32> {
        match *self {
            Input::Normal(len) => (0..len).map(|_| rng.normal(0.0, 1.0)).collect(),
            Input::Uniform(len, low, high) => (0..len).map(|_| rng.uniform(low, high)).collect(),
            Input::Integers(len, below) => (0..len)
                .map(|_| (rng.next_u64() % below.max(1) as u64) as f32)
                .collect(),
            Input::Labels(len, classes, ignore) => (0..len)
                .map(|_| {
                    if rng.next_u64().is_multiple_of(8) {
                        ignore as f32
                    } else {
                        (rng.next_u64() % classes as u64) as f32
                    }
                })
                .collect(),
        }
    }
}

/// The backend call of a case: inputs (uploaded to the backend) to outputs.
pub type CaseFn = Box<dyn Fn(&dyn Backend, &[Storage]) -> Result<Vec<Storage>> + Send + Sync>;

/// One verification case.
pub struct Case {
    /// The op family, the name of its kernel file `kernels/<family>.cu` (one of [`FAMILIES`]).
    pub family: &'static str,
    /// The backend method (and variant), e.g. `softmax_backward(log)`.
    pub op: String,
    /// The shapes, e.g. `[2,19,33] axis 1`.
    pub shape: String,
    pub inputs: Vec<Input>,
    pub tolerance: Tolerance,
    /// Names of the outputs, in the order `run` returns them (see [`Case::output_name`]).
    pub outputs: Vec<&'static str>,
    pub run: CaseFn,
}

impl Case {
    /// Names the outputs (for cases with more than one).
    pub fn outputs(mut self, names: &[&'static str]) -> Case {
        self.outputs = names.to_vec();
        self
    }

    /// The name of output `index`: its given name, `out` for the only output of a case without
    /// names, `out<index>` otherwise.
    pub fn output_name(&self, index: usize, count: usize) -> String {
        match self.outputs.get(index) {
            Some(name) => (*name).to_string(),
            None if count == 1 && self.outputs.is_empty() => "out".to_string(),
            None => format!("out{index}"),
        }
    }
}

fn case(
    op: impl Into<String>,
    shape: impl Into<String>,
    inputs: Vec<Input>,
    tolerance: Tolerance,
    run: impl Fn(&dyn Backend, &[Storage]) -> Result<Vec<Storage>> + Send + Sync + 'static,
) -> Case {
    Case {
        family: "",
        op: op.into(),
        shape: shape.into(),
        inputs,
        tolerance,
        outputs: Vec::new(),
        run: Box::new(run),
    }
}

/// The op families of the table, in table order; every kernel file `kernels/<family>.cu` has
/// cases.
pub const FAMILIES: [&str; 17] = [
    "elementwise",
    "reduce",
    "activation",
    "softmax",
    "loss",
    "dropout",
    "optimizer",
    "shape",
    "index",
    "patch_grid",
    "norm",
    "pool",
    "interpolate",
    "matmul",
    "conv",
    "topk_gate",
    "routed_conv",
];

/// Every case, in family order ([`FAMILIES`]).
pub fn table() -> Vec<Case> {
    let families: [fn(&mut Vec<Case>); 17] = [
        elementwise,
        reduce,
        activation,
        softmax,
        loss,
        dropout,
        optimizer,
        shape,
        index,
        patch_grid,
        norm,
        pool,
        interpolate,
        matmul,
        conv,
        topk_gate,
        routed_conv,
    ];
    let mut cases = Vec::new();
    for (family, add) in FAMILIES.into_iter().zip(families) {
        let start = cases.len();
        add(&mut cases);
        for case in &mut cases[start..] {
            case.family = family;
        }
    }
    cases
}

fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

fn elementwise(cases: &mut Vec<Case>) {
    let n = 2 * 3 * 33 * 7 + 5;
    let unary = [
        (UnaryOp::Neg, false),
        (UnaryOp::Exp, false),
        (UnaryOp::Log, true),
        (UnaryOp::Sqrt, true),
        (UnaryOp::Abs, false),
        (UnaryOp::Sign, false),
        (UnaryOp::AddScalar(0.75), false),
        (UnaryOp::MulScalar(-1.5), false),
        (UnaryOp::PowScalar(2.0), false),
        (UnaryOp::PowScalar(1.7), true),
        (
            UnaryOp::Clamp {
                min: -0.5,
                max: 0.8,
            },
            false,
        ),
        (
            UnaryOp::InRange {
                min: -0.5,
                max: 0.8,
            },
            false,
        ),
    ];
    for (op, positive) in unary {
        let input = if positive {
            Input::Uniform(n, 0.05, 3.0)
        } else {
            Input::Normal(n)
        };
        cases.push(case(
            format!("unary {op:?}"),
            format!("[{n}]"),
            vec![input],
            Tolerance::TRANSCENDENTAL,
            move |b, x| Ok(vec![b.unary(op, &x[0])?]),
        ));
    }
    let shapes: [(&[usize], &[usize], &[usize]); 4] = [
        (&[2, 3, 5, 7], &[2, 3, 5, 7], &[2, 3, 5, 7]),
        (&[2, 3, 5, 7], &[3, 1, 7], &[2, 3, 5, 7]),
        (&[5, 1], &[1, 7], &[5, 7]),
        (&[1], &[4, 9], &[4, 9]),
    ];
    let ops = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Maximum,
        BinaryOp::Minimum,
        BinaryOp::Equal,
        BinaryOp::Greater,
    ];
    for (lhs, rhs, out) in shapes {
        for op in ops {
            let (l, r, o) = (Shape::from(lhs), Shape::from(rhs), Shape::from(out));
            // Small integers make Equal hit; a positive rhs keeps Div finite.
            let (li, ri) = match op {
                BinaryOp::Equal => (Input::Integers(l.numel(), 3), Input::Integers(r.numel(), 3)),
                BinaryOp::Div => (
                    Input::Normal(l.numel()),
                    Input::Uniform(r.numel(), 0.5, 2.0),
                ),
                _ => (Input::Normal(l.numel()), Input::Normal(r.numel())),
            };
            cases.push(case(
                format!("binary {op:?}"),
                format!("{lhs:?} {rhs:?}"),
                vec![li, ri],
                Tolerance::ELEMENTWISE,
                move |b, x| Ok(vec![b.binary(op, &x[0], &l, &x[1], &r, &o)?]),
            ));
        }
    }
    let (from, to) = (Shape::from([3, 1, 7]), Shape::from([2, 3, 5, 7]));
    cases.push(case(
        "broadcast_to",
        "[3,1,7] -> [2,3,5,7]",
        vec![Input::Normal(21)],
        Tolerance::EXACT,
        move |b, x| Ok(vec![b.broadcast_to(&x[0], &from, &to)?]),
    ));
    cases.push(case("full", "[1001]", vec![], Tolerance::EXACT, |b, _| {
        Ok(vec![b.full(1001, 0.25)?])
    }));
}

fn reduce(cases: &mut Vec<Case>) {
    for (outer, size, inner) in [
        (3, 1001, 1),
        (1, 77, 1),
        (4, 17, 33),
        (2, 5, 1),
        (1, 3, 257),
    ] {
        let shape = format!("[{outer},{size},{inner}] axis 1");
        let len = outer * size * inner;
        cases.push(case(
            "sum_axis",
            &shape,
            vec![Input::Normal(len)],
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.sum_axis(&x[0], outer, size, inner)?]),
        ));
        cases.push(
            case(
                "max_axis",
                &shape,
                vec![Input::Normal(len)],
                Tolerance::EXACT,
                move |b, x| {
                    let (values, indices) = b.max_axis(&x[0], outer, size, inner)?;
                    Ok(vec![values, indices])
                },
            )
            .outputs(&["values", "indices"]),
        );
        cases.push(case(
            "max_axis_backward",
            &shape,
            vec![
                Input::Normal(outer * inner),
                Input::Integers(outer * inner, size),
            ],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.max_axis_backward(&x[0], &x[1], outer, size, inner)?]),
        ));
    }
}

fn activation(cases: &mut Vec<Case>) {
    let n = 2 * 5 * 33 + 3;
    let ops = [
        Activation::Relu,
        Activation::LeakyRelu {
            negative_slope: 0.1,
        },
        Activation::Sigmoid,
        Activation::Tanh,
        Activation::Hardswish,
        Activation::Hardsigmoid,
        Activation::Gelu,
        Activation::GeluTanh,
    ];
    for op in ops {
        // Spread over the hard-swish kinks at ±3.
        let input = Input::Uniform(n, -5.0, 5.0);
        cases.push(case(
            format!("activation_forward {op:?}"),
            format!("[{n}]"),
            vec![input],
            Tolerance::TRANSCENDENTAL,
            move |b, x| Ok(vec![b.activation_forward(op, &x[0])?]),
        ));
        cases.push(case(
            format!("activation_backward {op:?}"),
            format!("[{n}]"),
            vec![input, Input::Normal(n)],
            Tolerance::TRANSCENDENTAL,
            move |b, x| Ok(vec![b.activation_backward(op, &x[0], &x[1])?]),
        ));
    }
    for (outer, channels, inner) in [(2, 5, 33), (1, 16, 49), (3, 1, 7)] {
        let layout = ChannelLayout {
            outer,
            channels,
            inner,
        };
        let len = outer * channels * inner;
        let shape = format!("[{outer},{channels},{inner}]");
        cases.push(case(
            "prelu_forward",
            &shape,
            vec![Input::Normal(len), Input::Uniform(channels, 0.0, 0.5)],
            Tolerance::ELEMENTWISE,
            move |b, x| Ok(vec![b.prelu_forward(&x[0], &x[1], layout)?]),
        ));
        cases.push(
            case(
                "prelu_backward",
                &shape,
                vec![
                    Input::Normal(len),
                    Input::Uniform(channels, 0.0, 0.5),
                    Input::Normal(len),
                ],
                Tolerance::REDUCTION,
                move |b, x| {
                    let (gx, gw) = b.prelu_backward(&x[0], &x[1], &x[2], layout)?;
                    Ok(vec![gx, gw])
                },
            )
            .outputs(&["grad_input", "grad_weight"]),
        );
    }
}

fn softmax(cases: &mut Vec<Case>) {
    soft_route(cases);
    for (outer, size, inner) in [(2, 19, 33), (37, 21, 1), (1, 5, 1), (3, 4, 65)] {
        for log in [false, true] {
            let len = outer * size * inner;
            let shape = format!("[{outer},{size},{inner}] axis 1");
            let name = if log { "log_softmax" } else { "softmax" };
            cases.push(case(
                format!("{name}_forward"),
                &shape,
                vec![Input::Normal(len)],
                Tolerance::TRANSCENDENTAL,
                move |b, x| Ok(vec![b.softmax_forward(&x[0], outer, size, inner, log)?]),
            ));
            cases.push(case(
                format!("{name}_backward"),
                &shape,
                vec![Input::Normal(len), Input::Normal(len)],
                Tolerance::TRANSCENDENTAL,
                move |b, x| {
                    let y = b.softmax_forward(&x[0], outer, size, inner, log)?;
                    Ok(vec![b.softmax_backward(&y, &x[1], outer, size, inner, log)?])
                },
            ));
        }
    }
}

fn loss(cases: &mut Vec<Case>) {
    for (batch, classes, spatial, weighted) in
        [(2, 19, 37, false), (1, 21, 65, true), (3, 2, 5, true)]
    {
        let layout = CrossEntropyLayout {
            batch,
            classes,
            spatial,
            ignore_index: 255,
        };
        let shape = format!(
            "[{batch},{classes},{spatial}] ignore 255{}",
            if weighted { " weighted" } else { "" }
        );
        let inputs = vec![
            Input::Normal(batch * classes * spatial),
            Input::Labels(batch * spatial, classes, 255),
            Input::Uniform(classes, 0.2, 2.0),
            Input::Normal(batch * spatial),
        ];
        let weight = move |x: &[Storage]| if weighted { Some(x[2].clone()) } else { None };
        cases.push(
            case(
                "cross_entropy_forward",
                &shape,
                inputs[..3].to_vec(),
                Tolerance::TRANSCENDENTAL,
                move |b, x| {
                    let w = weight(x);
                    let f = b.cross_entropy_forward(&x[0], &x[1], w.as_ref(), layout)?;
                    Ok(vec![f.loss, f.weight, f.log_sum_exp])
                },
            )
            .outputs(&["loss", "weight", "log_sum_exp"]),
        );
        cases.push(case(
            "cross_entropy_backward",
            &shape,
            inputs,
            Tolerance::TRANSCENDENTAL,
            move |b, x| {
                let w = weight(x);
                let f = b.cross_entropy_forward(&x[0], &x[1], w.as_ref(), layout)?;
                Ok(vec![b.cross_entropy_backward(
                    &x[0],
                    &x[1],
                    w.as_ref(),
                    &f.log_sum_exp,
                    &x[3],
                    layout,
                )?])
            },
        ));
    }
}

fn dropout(cases: &mut Vec<Case>) {
    for (len, p, seed) in [(100_003, 0.3, 42), (1001, 0.5, 7), (64, 0.0, 1)] {
        cases.push(case(
            "dropout_mask",
            format!("[{len}] p {p}"),
            vec![],
            Tolerance::EXACT,
            move |b, _| Ok(vec![b.dropout_mask(len, p, seed)?]),
        ));
    }
}

fn optimizer(cases: &mut Vec<Case>) {
    let n = 3 * 3 * 17 * 5 + 1;
    for (momentum, nesterov, weight_decay, with_buffer) in [
        (0.0, false, 0.0, false),
        (0.9, false, 1e-4, false),
        (0.9, false, 1e-4, true),
        (0.9, true, 5e-4, true),
    ] {
        let hyper = SgdHyper {
            lr: 0.01,
            momentum,
            dampening: 0.0,
            weight_decay,
            nesterov,
        };
        cases.push(case(
            "sgd_update",
            format!("[{n}] momentum {momentum} nesterov {nesterov} wd {weight_decay} buffer {with_buffer}"),
            vec![Input::Normal(n), Input::Normal(n), Input::Normal(n)],
            Tolerance::ELEMENTWISE,
            move |b, x| {
                let buf = with_buffer.then(|| x[2].clone());
                let (p, buf) = b.sgd_update(hyper, &x[0], &x[1], buf.as_ref())?;
                Ok(std::iter::once(p).chain(buf).collect())
            },
        ).outputs(&["param", "momentum_buffer"]));
    }
    for (decoupled, amsgrad) in [(false, false), (true, false), (false, true)] {
        let hyper = AdamHyper {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            decoupled_weight_decay: decoupled,
            amsgrad,
            step: 3,
        };
        cases.push(
            case(
                "adam_update",
                format!("[{n}] adamw {decoupled} amsgrad {amsgrad}"),
                vec![
                    Input::Normal(n),
                    Input::Normal(n),
                    Input::Normal(n),
                    Input::Uniform(n, 0.0, 1.0),
                    Input::Uniform(n, 0.0, 1.0),
                ],
                Tolerance::TRANSCENDENTAL,
                move |b, x| {
                    let moments = AdamMoments {
                        exp_avg: x[2].clone(),
                        exp_avg_sq: x[3].clone(),
                        max_exp_avg_sq: amsgrad.then(|| x[4].clone()),
                    };
                    let (p, m) = b.adam_update(hyper, &x[0], &x[1], &moments)?;
                    Ok([p, m.exp_avg, m.exp_avg_sq]
                        .into_iter()
                        .chain(m.max_exp_avg_sq)
                        .collect())
                },
            )
            .outputs(&["param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
        );
    }
}

fn shape(cases: &mut Vec<Case>) {
    for (dims, axes) in [
        ([2usize, 3, 5, 7], [0usize, 2, 3, 1]),
        ([2, 3, 5, 7], [3, 1, 0, 2]),
        ([1, 19, 9, 11], [0, 2, 3, 1]),
    ] {
        let shape = Shape::from(dims);
        cases.push(case(
            "permute",
            format!("{dims:?} axes {axes:?}"),
            vec![Input::Normal(numel(&dims))],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.permute(&x[0], &shape, &axes)?]),
        ));
    }
    let widths = [5usize, 1, 7];
    let outer = 6;
    cases.push(case(
        "concat",
        format!("outer {outer} widths {widths:?}"),
        widths.iter().map(|w| Input::Normal(outer * w)).collect(),
        Tolerance::EXACT,
        move |b, x| {
            Ok(vec![b.concat(
                &x.iter().collect::<Vec<_>>(),
                outer,
                &widths,
            )?])
        },
    ));
    for p in [
        NarrowParams {
            outer: 2,
            size: 9,
            inner: 11,
            start: 3,
            len: 4,
        },
        NarrowParams {
            outer: 1,
            size: 5,
            inner: 1,
            start: 0,
            len: 5,
        },
    ] {
        let shape = format!(
            "[{},{},{}] start {} len {}",
            p.outer, p.size, p.inner, p.start, p.len
        );
        cases.push(case(
            "narrow",
            &shape,
            vec![Input::Normal(p.outer * p.size * p.inner)],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.narrow(&x[0], p)?]),
        ));
        cases.push(case(
            "narrow_backward",
            &shape,
            vec![Input::Normal(p.outer * p.len * p.inner)],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.narrow_backward(&x[0], p)?]),
        ));
    }
    let dims = [2usize, 3, 5, 7];
    let padding = [(0usize, 0usize), (1, 2), (0, 3), (2, 1)];
    let padded: Vec<usize> = dims
        .iter()
        .zip(&padding)
        .map(|(d, (a, b))| d + a + b)
        .collect();
    let shape = Shape::from(dims);
    let shape2 = shape.clone();
    cases.push(case(
        "pad",
        format!("{dims:?} {padding:?} value -1"),
        vec![Input::Normal(numel(&dims))],
        Tolerance::EXACT,
        move |b, x| Ok(vec![b.pad(&x[0], &shape, &padding, -1.0)?]),
    ));
    cases.push(case(
        "pad_backward",
        format!("{dims:?} {padding:?}"),
        vec![Input::Normal(numel(&padded))],
        Tolerance::EXACT,
        move |b, x| Ok(vec![b.pad_backward(&x[0], &shape2, &padding)?]),
    ));
}

fn index(cases: &mut Vec<Case>) {
    for p in [
        AxisIndexParams {
            outer: 3,
            size: 7,
            inner: 5,
            count: 4,
        },
        AxisIndexParams {
            outer: 1,
            size: 33,
            inner: 1,
            count: 50,
        },
    ] {
        let shape = format!("[{},{},{}] count {}", p.outer, p.size, p.inner, p.count);
        let (full, picked) = (p.outer * p.size * p.inner, p.outer * p.count * p.inner);
        cases.push(case(
            "gather",
            &shape,
            vec![Input::Normal(full), Input::Integers(picked, p.size)],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.gather(&x[0], &x[1], p)?]),
        ));
        cases.push(case(
            "scatter_add",
            &shape,
            vec![
                Input::Normal(full),
                Input::Integers(picked, p.size),
                Input::Normal(picked),
            ],
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.scatter_add(&x[0], &x[1], &x[2], p)?]),
        ));
        cases.push(case(
            "index_select",
            &shape,
            vec![Input::Normal(full), Input::Integers(p.count, p.size)],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.index_select(&x[0], &x[1], p)?]),
        ));
        cases.push(case(
            "index_select_backward",
            &shape,
            vec![Input::Normal(picked), Input::Integers(p.count, p.size)],
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.index_select_backward(&x[0], &x[1], p)?]),
        ));
    }
    for (outer, size, inner, k) in [(3, 11, 5, 3), (37, 8, 1, 2), (1, 4, 1, 4)] {
        for largest in [true, false] {
            let p = TopkParams {
                outer,
                size,
                inner,
                k,
                largest,
            };
            cases.push(
                case(
                    "topk",
                    format!("[{outer},{size},{inner}] k {k} largest {largest}"),
                    vec![Input::Normal(outer * size * inner)],
                    Tolerance::EXACT,
                    move |b, x| {
                        let (v, i) = b.topk(&x[0], p)?;
                        Ok(vec![v, i])
                    },
                )
                .outputs(&["values", "indices"]),
            );
        }
    }
}

fn patch_grid(cases: &mut Vec<Case>) {
    for (batch, channels, height, width, patch, halo) in [
        (2, 3, 13, 11, [5, 4], [1, 1]),
        (1, 4, 16, 16, [4, 4], [0, 0]),
        (2, 2, 9, 10, [3, 5], [2, 1]),
    ] {
        let grid = PatchGrid {
            batch,
            channels,
            height,
            width,
            patch,
            halo,
        };
        let shape = format!("[{batch},{channels},{height},{width}] patch {patch:?} halo {halo:?}");
        let (map, tokens) = (numel(&grid.map_shape()), numel(&grid.token_shape()));
        // Reassemble takes (and its gradient gives) tokens without halo.
        let patches = numel(&grid.without_halo().token_shape());
        cases.push(case(
            "patch_split",
            &shape,
            vec![Input::Normal(map)],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.patch_split(&x[0], grid)?]),
        ));
        cases.push(case(
            "patch_split_backward",
            &shape,
            vec![Input::Normal(tokens)],
            Tolerance::REDUCTION,
            move |b, x| Ok(vec![b.patch_split_backward(&x[0], grid)?]),
        ));
        cases.push(case(
            "patch_reassemble",
            &shape,
            vec![Input::Normal(patches)],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.patch_reassemble(&x[0], grid)?]),
        ));
        cases.push(case(
            "patch_reassemble_backward",
            &shape,
            vec![Input::Normal(map)],
            Tolerance::EXACT,
            move |b, x| Ok(vec![b.patch_reassemble_backward(&x[0], grid)?]),
        ));
    }
}
