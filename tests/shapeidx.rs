//! Layout ops, indexing and matrix products: PyTorch fixtures, finite differences and error
//! cases.

use moeseg::testing::{assert_close, gradcheck, Fixtures, GradcheckOptions};
use moeseg::{Result, Rng, Tensor};
use std::slice;

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

fn fixtures() -> Fixtures {
    Fixtures::load("shapeidx").unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

fn tensor(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(data.to_vec(), shape.to_vec()).unwrap()
}

/// Split pieces recombined with piece `i` scaled by `i + 1`, as the fixture script does.
fn scaled_pieces(pieces: Vec<Tensor>, axis: isize) -> Result<Tensor> {
    let scaled = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| p.mul_scalar((i + 1) as f32))
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&scaled.iter().collect::<Vec<_>>(), axis)
}

/// Asserts that `result` failed with a message containing every one of `parts`.
fn assert_error<T>(result: Result<T>, parts: &[&str]) {
    let message = match result {
        Ok(_) => panic!("expected an error mentioning {parts:?}"),
        Err(e) => e.to_string(),
    };
    for part in parts {
        assert!(
            message.contains(part),
            "`{message}` does not mention `{part}`"
        );
    }
}

const RTOL: f32 = 1e-5;
const ATOL: f32 = 1e-6;

#[test]
fn layout_ops_match_pytorch() {
    let fx = fixtures();
    let check = |case: &str, inputs: &[&str], f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
        fx.check_case(case, inputs, f, RTOL, ATOL).unwrap()
    };
    check("permute_nchw_to_nhwc", &["x"], &|t| {
        t[0].permute(&[0, 2, 3, 1])
    });
    check("permute_weird", &["x"], &|t| t[0].permute(&[3, 1, 0, 2]));
    check("transpose", &["x"], &|t| t[0].transpose(0, -1));
    check("cat_axis1", &["a", "b", "c"], &|t| {
        Tensor::cat(&[&t[0], &t[1], &t[2]], 1)
    });
    check("cat_last", &["a", "b", "c"], &|t| {
        Tensor::cat(&[&t[0], &t[1], &t[2]], -1)
    });
    check("narrow", &["x"], &|t| t[0].narrow(1, 2, 4));
    check("split", &["x"], &|t| scaled_pieces(t[0].split(3, 1)?, 1));
    check("split_sizes", &["x"], &|t| {
        scaled_pieces(t[0].split_sizes(&[2, 3, 4], -1)?, -1)
    });
    check("chunk", &["x"], &|t| scaled_pieces(t[0].chunk(3, 0)?, 0));
    check("pad_2d", &["x"], &|t| t[0].pad(&[1, 2, 0, 3], 0.5));
    check("pad_3d", &["x"], &|t| t[0].pad(&[1, 0, 2, 1, 1, 1], -1.0));
}

#[test]
fn split_and_chunk_piece_shapes_follow_pytorch() {
    let x = randn(&[5, 7], 1);
    let dims = |pieces: Vec<Tensor>| -> Vec<Vec<usize>> {
        pieces.iter().map(|p| p.dims().to_vec()).collect()
    };
    assert_eq!(
        dims(x.split(3, 1).unwrap()),
        vec![vec![5, 3], vec![5, 3], vec![5, 1]]
    );
    assert_eq!(
        dims(x.chunk(3, 0).unwrap()),
        vec![vec![2, 7], vec![2, 7], vec![1, 7]]
    );
    // torch.chunk returns fewer pieces when the axis is short: 7 in 4 chunks is 2, 2, 2, 1,
    // 5 in 4 chunks is 2, 2, 1.
    assert_eq!(x.chunk(4, 1).unwrap().len(), 4);
    assert_eq!(x.chunk(4, 0).unwrap().len(), 3);
    assert_eq!(x.unsqueeze(0).unwrap().dims(), &[1, 5, 7]);
    assert_eq!(x.unsqueeze(-1).unwrap().dims(), &[5, 7, 1]);
    assert_eq!(x.unsqueeze(1).unwrap().squeeze(1).unwrap().dims(), &[5, 7]);
    assert_eq!(x.squeeze(0).unwrap().dims(), &[5, 7]);
}

#[test]
fn indexing_ops_match_pytorch() {
    let fx = fixtures();
    let check = |case: &str, inputs: &[&str], f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
        fx.check_case(case, inputs, f, RTOL, ATOL).unwrap()
    };
    check("gather_axis0", &["x", "index"], &|t| t[0].gather(0, &t[1]));
    check("gather_axis2", &["x", "index"], &|t| t[0].gather(2, &t[1]));
    check("scatter_add_axis0", &["base", "index", "src"], &|t| {
        t[0].scatter_add(0, &t[1], &t[2])
    });
    check("scatter_add_axis2", &["base", "index", "src"], &|t| {
        t[0].scatter_add(-1, &t[1], &t[2])
    });
    check("index_select_axis0", &["x", "indices"], &|t| {
        t[0].index_select(0, &t[1])
    });
    check("index_select_axis2", &["x", "indices"], &|t| {
        t[0].index_select(2, &t[1])
    });
}

#[test]
fn topk_matches_pytorch() {
    let fx = fixtures();
    let cases = [
        ("topk_largest_last", 3, -1, true),
        ("topk_smallest_last", 3, -1, false),
        ("topk_largest_axis1", 2, 1, true),
        ("topk_smallest_axis1", 4, 1, false),
    ];
    for (case, k, axis, largest) in cases {
        let x = fx.get(&format!("{case}.x")).unwrap();
        let (values, indices) = x.topk(k, axis, largest).unwrap();
        assert!(!values.requires_grad() && !indices.requires_grad());
        let expected_values = fx.get(&format!("{case}.out")).unwrap();
        let expected_indices = fx.get(&format!("{case}.indices")).unwrap();
        assert_close(case, &values, &expected_values, 0.0, 0.0).unwrap();
        assert_close(case, &indices, &expected_indices, 0.0, 0.0).unwrap();
    }
}

#[test]
fn topk_breaks_ties_towards_the_lower_index() {
    // Checked by hand: PyTorch does not promise an order among equal values.
    let x = tensor(&[1.0, 3.0, 2.0, 3.0, 1.0, 3.0], &[1, 6]);
    let (values, indices) = x.topk(4, -1, true).unwrap();
    assert_eq!(values.to_host(), vec![3.0, 3.0, 3.0, 2.0]);
    assert_eq!(indices.to_host(), vec![1.0, 3.0, 5.0, 2.0]);
    let (values, indices) = x.topk(3, 1, false).unwrap();
    assert_eq!(values.to_host(), vec![1.0, 1.0, 2.0]);
    assert_eq!(indices.to_host(), vec![0.0, 4.0, 2.0]);
    // Along a non-last axis, with -0.0 equal to 0.0 and NaN above everything.
    let y = tensor(
        &[0.0, 5.0, f32::NAN, -0.0, 5.0, 1.0, 0.0, 2.0, 1.0],
        &[3, 3],
    );
    let (values, indices) = y.topk(2, 0, true).unwrap();
    assert_eq!(indices.to_host(), vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    assert!(values.to_host()[2].is_nan());
    let (_, indices) = y.topk(2, 0, false).unwrap();
    assert_eq!(indices.to_host(), vec![0.0, 2.0, 1.0, 1.0, 0.0, 2.0]);
}

#[test]
fn matrix_products_match_pytorch() {
    let fx = fixtures();
    let (r, a) = (1e-5, 1e-5);
    fx.check_case(
        "matmul_2d",
        &["input", "other"],
        |t| t[0].matmul(&t[1]),
        r,
        a,
    )
    .unwrap();
    fx.check_case(
        "matmul_batched",
        &["input", "other"],
        |t| t[0].matmul(&t[1]),
        r,
        a,
    )
    .unwrap();
    fx.check_case(
        "matmul_broadcast",
        &["input", "other"],
        |t| t[0].matmul(&t[1]),
        r,
        a,
    )
    .unwrap();
    fx.check_case(
        "linear_bias",
        &["input", "weight", "bias"],
        |t| t[0].linear(&t[1], Some(&t[2])),
        r,
        a,
    )
    .unwrap();
    fx.check_case(
        "linear_no_bias",
        &["input", "weight"],
        |t| t[0].linear(&t[1], None),
        r,
        a,
    )
    .unwrap();
}

#[test]
fn matmul_matches_naive_on_sizes_that_split_across_threads() {
    let (b, m, k, n) = (3, 70, 33, 90);
    let a = randn(&[b, m, k], 11);
    let w = randn(&[k, n], 12);
    let out = a.matmul(&w).unwrap().to_host();
    let (av, wv) = (a.to_host(), w.to_host());
    let mut expected = vec![0.0f32; b * m * n];
    for row in 0..b * m {
        for j in 0..n {
            expected[row * n + j] = (0..k).map(|p| av[row * k + p] * wv[p * n + j]).sum();
        }
    }
    let expected = Tensor::from_vec(expected, [b, m, n]).unwrap();
    let out = Tensor::from_vec(out, [b, m, n]).unwrap();
    assert_close("matmul", &out, &expected, 1e-4, 1e-4).unwrap();
}

#[test]
fn finite_differences_agree_with_autograd() {
    let opts = GradcheckOptions::default();
    let x = randn(&[2, 3, 4, 5], 1);
    let grad = |what: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>| {
        gradcheck(what, inputs, f, opts).unwrap()
    };
    grad("permute", slice::from_ref(&x), &|t| {
        t[0].permute(&[3, 1, 0, 2])
    });
    grad("transpose", slice::from_ref(&x), &|t| t[0].transpose(1, -1));
    let (a, b, c) = (
        randn(&[2, 2, 3], 2),
        randn(&[2, 1, 3], 3),
        randn(&[2, 4, 3], 4),
    );
    grad("cat", &[a, b, c], &|t| {
        Tensor::cat(&[&t[0], &t[1], &t[2]], 1)
    });
    grad("narrow", slice::from_ref(&x), &|t| t[0].narrow(2, 1, 2));
    let y = randn(&[3, 7], 5);
    grad("split", slice::from_ref(&y), &|t| {
        scaled_pieces(t[0].split(3, 1)?, 1)
    });
    grad("split_sizes", slice::from_ref(&y), &|t| {
        scaled_pieces(t[0].split_sizes(&[1, 2], 0)?, 0)
    });
    grad("chunk", slice::from_ref(&y), &|t| {
        scaled_pieces(t[0].chunk(2, 1)?, 1)
    });
    grad("pad", slice::from_ref(&x), &|t| {
        t[0].pad(&[1, 2, 0, 1], 0.3)
    });
    grad("pad_3d", slice::from_ref(&y), &|t| {
        t[0].pad(&[2, 0, 1, 1], -1.0)
    });
    grad("squeeze_unsqueeze", slice::from_ref(&y), &|t| {
        t[0].unsqueeze(1)?.mul(&t[0].unsqueeze(1)?)?.squeeze(1)
    });

    let x3 = randn(&[3, 4, 5], 6);
    // Repeated indices along the gathered axis, so the backward really accumulates.
    let index0 = tensor(&[2., 0., 2., 1., 2., 1., 0., 1.], &[2, 4, 1])
        .broadcast_to([2, 4, 5])
        .unwrap();
    let index2 = tensor(&[4., 0., 4., 1., 3., 3., 0.], &[1, 1, 7])
        .broadcast_to([3, 4, 7])
        .unwrap();
    grad("gather_axis0", slice::from_ref(&x3), &|t| {
        t[0].gather(0, &index0)
    });
    grad("gather_axis2", slice::from_ref(&x3), &|t| {
        t[0].gather(2, &index2)
    });
    let src = randn(&[3, 4, 7], 7);
    grad("scatter_add", &[x3.clone(), src], &|t| {
        t[0].scatter_add(2, &index2, &t[1])
    });
    let indices = tensor(&[3., 0., 3., 2.], &[4]);
    grad("index_select_axis1", slice::from_ref(&x3), &|t| {
        t[0].index_select(1, &indices)
    });
    grad("index_select_axis0", slice::from_ref(&x3), &|t| {
        t[0].index_select(0, &tensor(&[2., 0., 2.], &[3]))
    });

    let (m2, w2) = (randn(&[3, 4], 8), randn(&[4, 5], 9));
    grad("matmul_2d", &[m2, w2.clone()], &|t| t[0].matmul(&t[1]));
    let (m3, w3) = (randn(&[2, 3, 4], 10), randn(&[2, 4, 5], 11));
    grad("matmul_batched", &[m3.clone(), w3], &|t| t[0].matmul(&t[1]));
    grad("matmul_broadcast", &[m3.clone(), w2], &|t| {
        t[0].matmul(&t[1])
    });
    let (weight, bias) = (randn(&[5, 4], 12), randn(&[5], 13));
    grad("linear_bias", &[m3.clone(), weight.clone(), bias], &|t| {
        t[0].linear(&t[1], Some(&t[2]))
    });
    grad("linear_no_bias", &[m3, weight], &|t| {
        t[0].linear(&t[1], None)
    });
}

#[test]
fn layout_errors_name_the_op_and_shapes() {
    let x = randn(&[2, 3, 4], 1);
    assert_error(x.permute(&[0, 1]), &["permute", "[0, 1]", "[2, 3, 4]"]);
    assert_error(x.permute(&[0, 1, 1]), &["permute", "[2, 3, 4]"]);
    assert_error(x.transpose(0, 3), &["transpose", "axis 3", "[2, 3, 4]"]);
    let y = randn(&[2, 5, 3], 2);
    assert_error(
        Tensor::cat(&[&x, &y], 2),
        &["cat", "[2, 3, 4]", "[2, 5, 3]"],
    );
    assert_error(
        Tensor::cat(&[&x, &randn(&[2, 3], 3)], 0),
        &["cat", "[2, 3]"],
    );
    assert_error(Tensor::cat(&[], 0), &["cat"]);
    assert_error(
        x.narrow(1, 2, 2),
        &["narrow", "axis 1", "size 3", "[2, 3, 4]"],
    );
    assert_error(x.split(0, 1), &["split", "[2, 3, 4]"]);
    assert_error(
        x.split_sizes(&[1, 1], 1),
        &["split_sizes", "[1, 1]", "[2, 3, 4]"],
    );
    assert_error(x.chunk(0, 1), &["chunk", "[2, 3, 4]"]);
    assert_error(x.pad(&[1, 1, 1], 0.0), &["pad", "[1, 1, 1]", "[2, 3, 4]"]);
    assert_error(x.pad(&[1; 8], 0.0), &["pad", "[2, 3, 4]"]);
    assert_error(x.unsqueeze(4), &["unsqueeze", "axis 4", "[2, 3, 4]"]);
    assert_error(x.squeeze(-4), &["squeeze", "axis -4", "[2, 3, 4]"]);
}

#[test]
fn indexing_errors_name_the_op_value_and_axis_size() {
    let x = randn(&[2, 3, 4], 1);
    let bad = tensor(&[0., 1., 5., 2.], &[1, 1, 4])
        .broadcast_to([2, 3, 4])
        .unwrap();
    assert_error(
        x.gather(2, &bad),
        &["gather", "index 5", "axis 2", "size 4"],
    );
    let negative = tensor(&[-1.], &[1, 1, 1]).broadcast_to([2, 3, 1]).unwrap();
    assert_error(x.gather(-1, &negative), &["gather", "index -1", "size 4"]);
    let fractional = tensor(&[0.5], &[1, 1, 1]).broadcast_to([2, 3, 1]).unwrap();
    assert_error(
        x.gather(2, &fractional),
        &["gather", "0.5", "not an integer"],
    );
    assert_error(
        x.gather(2, &randn(&[2, 4, 1], 2)),
        &["gather", "[2, 4, 1]", "[2, 3, 4]"],
    );
    assert_error(
        x.gather(1, &randn(&[2, 3], 2)),
        &["gather", "[2, 3]", "[2, 3, 4]"],
    );
    let index = Tensor::zeros([2, 3, 2], &Default::default()).unwrap();
    assert_error(
        x.scatter_add(2, &index, &randn(&[2, 3, 3], 3)),
        &["scatter_add", "[2, 3, 2]", "[2, 3, 3]"],
    );
    assert_error(
        x.scatter_add(0, &bad, &randn(&[2, 3, 4], 3)),
        &["scatter_add", "index 5", "axis 0", "size 2"],
    );
    assert_error(
        x.index_select(1, &tensor(&[0., 3.], &[2])),
        &["index_select", "index 3", "axis 1", "size 3"],
    );
    assert_error(
        x.index_select(1, &tensor(&[0., 1.], &[1, 2])),
        &["index_select", "indices", "[1, 2]"],
    );
    assert_error(
        x.topk(5, -1, true),
        &["topk", "k = 5", "size 4", "[2, 3, 4]"],
    );
    assert_error(x.topk(1, 3, true), &["topk", "axis 3"]);
}

#[test]
fn product_errors_name_the_op_and_shapes() {
    let (a, b) = (randn(&[2, 3, 4], 1), randn(&[5, 4], 2));
    assert_error(a.matmul(&b), &["matmul", "[2, 3, 4]", "[5, 4]"]);
    assert_error(a.matmul(&randn(&[3, 4, 5], 3)), &["matmul", "[3, 4, 5]"]);
    assert_error(
        b.matmul(&randn(&[2, 4, 5], 3)),
        &["matmul", "[5, 4]", "[2, 4, 5]"],
    );
    assert_error(randn(&[4], 3).matmul(&b), &["matmul", "[4]"]);
    assert_error(
        a.linear(&randn(&[5, 3], 4), None),
        &["linear", "[2, 3, 4]", "[5, 3]"],
    );
    assert_error(
        a.linear(&randn(&[4], 4), None),
        &["linear", "weight", "[4]"],
    );
    assert_error(
        a.linear(&b, Some(&randn(&[4], 5))),
        &["linear", "bias", "[4]", "[5]"],
    );
}
