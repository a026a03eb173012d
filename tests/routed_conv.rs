//! Sparse expert dispatch: values and every gradient against a dense all-experts reference
//! built from `conv2d`, finite differences, and error cases.

use moeseg::ops::conv::Conv2dParams;
use moeseg::ops::routed_conv::RoutedConvParams;
use moeseg::testing::{assert_close, gradcheck, GradcheckOptions};
use moeseg::{Device, Rng, Tensor};

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

const RTOL: f32 = 1e-4;
/// Outputs are sums of up to 288 products of unit-scale values: two summation orders (the
/// direct kernel or im2col + GEMM against the dense reference's GEMM) differ by a few
/// f32 epsilons times Σ|terms| ≈ 230, i.e. up to ~3e-5.
const ATOL: f32 = 1e-4;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

/// One routed convolution's inputs.
struct Case {
    name: &'static str,
    tokens: Tensor,
    experts: Vec<Tensor>,
    biases: Option<Vec<Tensor>>,
    indices: Tensor,
    routing: Tensor,
    params: RoutedConvParams,
}

impl Case {
    /// Random tokens `[T, cin, size]`, E experts `[cout, cin/groups, kernel]`, and the given
    /// expert ids (`[T, k]`, row-major) with random routing weights.
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &'static str,
        tokens: [usize; 4],
        experts: usize,
        cout: usize,
        kernel: [usize; 2],
        bias: bool,
        ids: &[usize],
        params: RoutedConvParams,
    ) -> Case {
        let [t, cin, _, _] = tokens;
        let k = ids.len() / t;
        let weight = [cout, cin / params.groups, kernel[0], kernel[1]];
        Case {
            name,
            tokens: randn(&tokens, 1),
            experts: (0..experts)
                .map(|e| randn(&weight, 10 + e as u64))
                .collect(),
            biases: bias.then(|| {
                (0..experts)
                    .map(|e| randn(&[cout], 100 + e as u64))
                    .collect()
            }),
            indices: Tensor::from_vec(ids.iter().map(|&i| i as f32).collect(), [t, k]).unwrap(),
            routing: Tensor::rand_uniform([t, k], 0.1, 1.0, &mut Rng::new(7)).unwrap(),
            params,
        }
    }

    /// All differentiable inputs in order: tokens, experts, biases, routing weights.
    fn inputs(&self) -> Vec<Tensor> {
        let mut all = vec![self.tokens.clone()];
        all.extend(self.experts.iter().cloned());
        all.extend(self.biases.iter().flatten().cloned());
        all.push(self.routing.clone());
        all
    }

    /// Splits `inputs()`-ordered tensors back into (tokens, experts, biases, routing).
    fn split<'a>(
        &self,
        t: &'a [Tensor],
    ) -> (
        &'a Tensor,
        Vec<&'a Tensor>,
        Option<Vec<&'a Tensor>>,
        &'a Tensor,
    ) {
        let e = self.experts.len();
        let experts = t[1..1 + e].iter().collect();
        let biases = self
            .biases
            .as_ref()
            .map(|_| t[1 + e..1 + 2 * e].iter().collect());
        (&t[0], experts, biases, &t[t.len() - 1])
    }

    fn routed(&self, t: &[Tensor]) -> moeseg::Result<Tensor> {
        let (tokens, experts, biases, routing) = self.split(t);
        tokens.dispatch_routed_conv(
            &experts,
            biases.as_deref(),
            &self.indices,
            routing,
            self.params,
        )
    }

    /// Dense reference: every expert on every token (`conv2d`, padding 0), weighted by
    /// `C[t, e] = Σ_j w[t, j]·[indices[t, j] = e]` and summed over experts.
    fn dense(&self, t: &[Tensor]) -> moeseg::Result<Tensor> {
        let (tokens, experts, biases, routing) = self.split(t);
        let conv = Conv2dParams {
            dilation: self.params.dilation,
            groups: self.params.groups,
            ..Conv2dParams::default()
        };
        let outs = experts
            .iter()
            .enumerate()
            .map(|(e, w)| {
                tokens
                    .conv2d(w, biases.as_ref().map(|b| b[e]), conv)?
                    .unsqueeze(1)
            })
            .collect::<moeseg::Result<Vec<_>>>()?;
        let stacked = Tensor::cat(&outs.iter().collect::<Vec<_>>(), 1)?; // [T, E, Cout, oh, ow]
        let (count, k, e_count) = (
            self.indices.dims()[0],
            self.indices.dims()[1],
            experts.len(),
        );
        let ids = self.indices.to_host();
        let mut coefficients = Tensor::zeros([count, e_count], &Device::Cpu)?;
        for j in 0..k {
            let one_hot: Vec<f32> = (0..count * e_count)
                .map(|i| f32::from(ids[(i / e_count) * k + j] as usize == i % e_count))
                .collect();
            let one_hot = Tensor::from_vec(one_hot, [count, e_count])?;
            coefficients = coefficients.add(&routing.narrow(1, j, 1)?.mul(&one_hot)?)?;
        }
        stacked
            .mul(&coefficients.reshape(&[count as isize, e_count as isize, 1, 1, 1])?)?
            .sum(&[1], false)
    }
}

/// Compares values and the gradients of every input of `Σ y ⊙ R` with the dense reference, on
/// the portable im2col + GEMM kernels and on the default ones (the AVX-512F direct kernel where
/// the CPU has it). Returns the gradients of the default run.
fn check_against_dense(case: &Case) -> Vec<Tensor> {
    moeseg::backend::cpu::with_portable_kernels(|| check_against_dense_once(case));
    check_against_dense_once(case)
}

fn check_against_dense_once(case: &Case) -> Vec<Tensor> {
    let leaves = |_: ()| -> Vec<Tensor> {
        case.inputs()
            .iter()
            .map(|t| t.detach().with_requires_grad(true))
            .collect()
    };
    let (routed_in, dense_in) = (leaves(()), leaves(()));
    let routed = case.routed(&routed_in).unwrap();
    let dense = case.dense(&dense_in).unwrap();
    assert_close(
        &format!("{}: output", case.name),
        &routed,
        &dense,
        RTOL,
        ATOL,
    )
    .unwrap();
    let projection = randn(routed.dims(), 99);
    for (out, _) in [(&routed, 0), (&dense, 1)] {
        out.mul(&projection)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
    }
    let mut grads = Vec::new();
    for (i, (r, d)) in routed_in.iter().zip(&dense_in).enumerate() {
        let (gr, gd) = (r.grad().unwrap(), d.grad().unwrap());
        let what = format!("{}: gradient of input {i} {}", case.name, r.shape());
        assert_close(&what, &gr, &gd, RTOL, ATOL).unwrap();
        grads.push(gr);
    }
    grads
}

fn params(dilation: usize, groups: usize) -> RoutedConvParams {
    RoutedConvParams {
        dilation: [dilation; 2],
        groups,
    }
}

#[test]
fn single_expert_is_a_weighted_valid_conv() {
    let case = Case::new(
        "E=1 k=1 3x3 bias",
        [3, 4, 6, 7],
        1,
        5,
        [3, 3],
        true,
        &[0, 0, 0],
        params(1, 1),
    );
    check_against_dense(&case);
}

#[test]
fn matches_dense_reference_with_groups_and_dilation() {
    let ids = [2, 0, 1, 2, 0, 1, 1, 0, 2, 1];
    let case = Case::new(
        "E=3 k=2 groups 2 dilation 2 3x3 bias",
        [5, 4, 9, 8],
        3,
        6,
        [3, 3],
        true,
        &ids,
        params(2, 2),
    );
    check_against_dense(&case);
}

#[test]
fn unrouted_expert_gets_zero_weight_gradient() {
    // Expert 2 is never picked.
    let ids = [0, 1, 3, 0, 1, 3, 3, 1];
    let case = Case::new(
        "E=4 k=2 1x1 no bias",
        [4, 6, 5, 5],
        4,
        3,
        [1, 1],
        false,
        &ids,
        params(1, 1),
    );
    let grads = check_against_dense(&case);
    assert!(grads[3].to_host().iter().all(|&g| g == 0.0));
    assert!(grads[1].to_host().iter().any(|&g| g != 0.0));
}

#[test]
fn rectangular_kernel_k1_with_bias() {
    let case = Case::new(
        "E=4 k=1 (3,1) dilation 2 bias",
        [6, 3, 7, 4],
        4,
        4,
        [3, 1],
        true,
        &[3, 0, 0, 1, 3, 3],
        params(2, 1),
    );
    let grads = check_against_dense(&case);
    // Expert 2 unrouted: zero weight and bias gradients.
    assert!(grads[3].to_host().iter().all(|&g| g == 0.0));
    assert!(grads[4 + 3].to_host().iter().all(|&g| g == 0.0));
}

#[test]
fn repeated_expert_in_one_token_adds_up() {
    let case = Case::new(
        "E=3 k=2 repeated ids",
        [3, 2, 5, 5],
        3,
        2,
        [3, 3],
        true,
        &[1, 1, 0, 2, 2, 2],
        params(1, 1),
    );
    check_against_dense(&case);
}

#[test]
fn large_tokens_split_into_several_column_tiles() {
    // K = 32·9 = 288 im2col rows allow 910 columns per tile: the 32×32 outputs of a token are
    // split in two tiles (small tokens elsewhere share tiles).
    let ids: Vec<usize> = (0..16).map(|i| (i * 5 + i / 3) % 4).collect();
    let case = Case::new(
        "E=4 k=2 32→16 34x34 tokens",
        [8, 32, 34, 34],
        4,
        16,
        [3, 3],
        true,
        &ids,
        params(1, 1),
    );
    check_against_dense(&case);
}

/// Bilinear in (weights, routing) and linear in each, so central differences are exact up to
/// rounding.
fn opts() -> GradcheckOptions {
    GradcheckOptions {
        eps: 1e-2,
        rtol: 1e-3,
        atol: 1e-3,
    }
}

#[test]
fn gradients_agree_with_finite_differences() {
    let cases = [
        Case::new(
            "gradcheck E=3 k=2 3x3 bias",
            [3, 2, 4, 5],
            3,
            2,
            [3, 3],
            true,
            &[0, 2, 2, 1, 1, 0],
            params(1, 1),
        ),
        Case::new(
            "gradcheck E=2 k=2 groups 2 dilation 2",
            [2, 4, 5, 5],
            2,
            2,
            [2, 2],
            true,
            &[1, 0, 0, 1],
            params(2, 2),
        ),
        Case::new(
            "gradcheck E=3 k=1 (3,1) no bias",
            [3, 2, 4, 3],
            3,
            3,
            [3, 1],
            false,
            &[2, 0, 2],
            params(1, 1),
        ),
    ];
    for case in &cases {
        gradcheck(case.name, &case.inputs(), |t| case.routed(t), opts()).unwrap();
    }
}

#[test]
fn results_are_deterministic() {
    let ids: Vec<usize> = (0..12).map(|i| (i * 7) % 3).collect();
    let case = Case::new(
        "determinism",
        [6, 8, 12, 12],
        3,
        8,
        [3, 3],
        true,
        &ids,
        params(1, 1),
    );
    let run = || {
        let leaves: Vec<Tensor> = case
            .inputs()
            .iter()
            .map(|t| t.detach().with_requires_grad(true))
            .collect();
        let y = case.routed(&leaves).unwrap();
        y.square().unwrap().sum_all().unwrap().backward().unwrap();
        let mut all = vec![y.to_host()];
        all.extend(leaves.iter().map(|l| l.grad().unwrap().to_host()));
        all
    };
    assert_eq!(run(), run());
}

/// The error message of a failing call, checked to contain every one of `needles`.
fn expect_error(result: moeseg::Result<Tensor>, needles: &[&str]) {
    let message = result.expect_err("the call should fail").to_string();
    for needle in needles {
        assert!(message.contains(needle), "`{message}` lacks `{needle}`");
    }
}

#[test]
fn invalid_arguments_are_reported() {
    let tokens = randn(&[2, 4, 5, 5], 1);
    let w = randn(&[3, 4, 3, 3], 2);
    let b = randn(&[3], 3);
    let idx = Tensor::from_vec(vec![0.0, 1.0], [2, 1]).unwrap();
    let rw = Tensor::ones([2, 1], &Device::Cpu).unwrap();
    let p = RoutedConvParams::default();
    let run = |tokens: &Tensor,
               experts: &[&Tensor],
               biases: Option<&[&Tensor]>,
               idx: &Tensor,
               rw: &Tensor,
               p| { tokens.dispatch_routed_conv(experts, biases, idx, rw, p) };
    // Works as given.
    run(&tokens, &[&w, &w], Some(&[&b, &b]), &idx, &rw, p).unwrap();
    expect_error(run(&tokens, &[], None, &idx, &rw, p), &["E = 0"]);
    let big = Tensor::from_vec(vec![0.0, 2.0], [2, 1]).unwrap();
    expect_error(
        run(&tokens, &[&w, &w], None, &big, &rw, p),
        &["= 2", "E = 2"],
    );
    let rw3 = Tensor::ones([2, 2], &Device::Cpu).unwrap();
    expect_error(
        run(&tokens, &[&w, &w], None, &idx, &rw3, p),
        &["indices [2, 1]", "routing_weights [2, 2]"],
    );
    let idx3 = Tensor::from_vec(vec![0.0; 3], [3, 1]).unwrap();
    expect_error(
        run(
            &tokens,
            &[&w],
            None,
            &idx3,
            &Tensor::ones([3, 1], &Device::Cpu).unwrap(),
            p,
        ),
        &["indices [3, 1]", "[2, 4, 5, 5]"],
    );
    let w5 = randn(&[3, 4, 5, 6], 4);
    expect_error(
        run(&tokens, &[&w5], None, &idx, &rw, p),
        &["smaller", "[3, 4, 5, 6]"],
    );
    let dilated = RoutedConvParams {
        dilation: [3, 1],
        groups: 1,
    };
    expect_error(
        run(&tokens, &[&w], None, &idx, &rw, dilated),
        &["smaller", "[2, 4, 5, 5]"],
    );
    let grouped = RoutedConvParams {
        dilation: [1, 1],
        groups: 3,
    };
    expect_error(run(&tokens, &[&w], None, &idx, &rw, grouped), &["groups 3"]);
    let w_other = randn(&[3, 4, 1, 1], 5);
    expect_error(
        run(&tokens, &[&w, &w_other], None, &idx, &rw, p),
        &["expert 1", "[3, 4, 1, 1]"],
    );
    expect_error(
        run(&tokens, &[&w, &w], Some(&[&b]), &idx, &rw, p),
        &["1 biases", "2 experts"],
    );
    let b4 = randn(&[4], 6);
    expect_error(
        run(&tokens, &[&w, &w], Some(&[&b, &b4]), &idx, &rw, p),
        &["bias 1", "[4]"],
    );
    let flat = randn(&[4, 5, 5], 7);
    expect_error(run(&flat, &[&w], None, &idx, &rw, p), &["tokens"]);
    let zero = RoutedConvParams {
        dilation: [0, 1],
        groups: 1,
    };
    expect_error(run(&tokens, &[&w], None, &idx, &rw, zero), &["dilation"]);
}
