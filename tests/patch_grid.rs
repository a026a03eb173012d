//! Patch-grid split / reassemble: hand-checked tokens, a reference built from pad + narrow +
//! cat, the halo property (patch-wise conv without padding == padded conv on the map),
//! finite differences and error cases.

use moeseg::ops::conv::Conv2dParams;
use moeseg::ops::patch_grid::PatchGrid;
use moeseg::testing::{assert_close, gradcheck, GradcheckOptions};
use moeseg::{Error, Rng, Tensor};

/// The elements on the host; a failed copy fails the test.
trait ToHost {
    fn to_host(&self) -> Vec<f32>;
}

impl ToHost for Tensor {
    fn to_host(&self) -> Vec<f32> {
        self.try_to_vec().unwrap()
    }
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, &mut Rng::new(seed)).unwrap()
}

/// Split by composition of existing ops: pad the map by the halo plus the bottom/right grid
/// padding, then cut each token out with `narrow` and stack them batch-major, row, column.
fn split_reference(x: &Tensor, grid: &PatchGrid) -> Tensor {
    let ([hh, hw], [padded_h, padded_w]) = (grid.halo, grid.padded_size());
    let [th, tw] = grid.token_size();
    let padded = x
        .pad(
            &[
                hw,
                hw + padded_w - grid.width,
                hh,
                hh + padded_h - grid.height,
            ],
            0.0,
        )
        .unwrap();
    let mut tokens = Vec::new();
    for b in 0..grid.batch {
        for r in 0..grid.rows() {
            for c in 0..grid.cols() {
                let token = padded
                    .narrow(0, b, 1)
                    .and_then(|t| t.narrow(2, r * grid.patch[0], th))
                    .and_then(|t| t.narrow(3, c * grid.patch[1], tw))
                    .unwrap();
                tokens.push(token);
            }
        }
    }
    Tensor::cat(&tokens.iter().collect::<Vec<_>>(), 0).unwrap()
}

/// Reassemble by composition: concatenate each image's patches along width, the rows along
/// height, the images along batch, and crop.
fn reassemble_reference(y: &Tensor, grid: &PatchGrid) -> Tensor {
    let (rows, cols) = (grid.rows(), grid.cols());
    let mut images = Vec::new();
    for b in 0..grid.batch {
        let mut patch_rows = Vec::new();
        for r in 0..rows {
            let patches: Vec<Tensor> = (0..cols)
                .map(|c| y.narrow(0, (b * rows + r) * cols + c, 1).unwrap())
                .collect();
            patch_rows.push(Tensor::cat(&patches.iter().collect::<Vec<_>>(), 3).unwrap());
        }
        images.push(Tensor::cat(&patch_rows.iter().collect::<Vec<_>>(), 2).unwrap());
    }
    Tensor::cat(&images.iter().collect::<Vec<_>>(), 0)
        .and_then(|t| t.narrow(2, 0, grid.height))
        .and_then(|t| t.narrow(3, 0, grid.width))
        .unwrap()
}

/// Grids covering: sizes that divide by g and not, halo 0 / (1, 0) / (2, 2), batch 2, g = 1,
/// explicit (non-square, larger-than-map, halo wider than the patch) patch sizes.
fn grids() -> Vec<PatchGrid> {
    let g = PatchGrid::from_grid;
    let p = PatchGrid::from_patch_size;
    vec![
        g(1, 1, 5, 5, 2, [1, 1]).unwrap(),
        g(2, 3, 6, 9, 3, [0, 0]).unwrap(),
        g(2, 3, 7, 8, 3, [1, 0]).unwrap(),
        g(1, 2, 8, 7, 4, [2, 2]).unwrap(),
        g(2, 2, 5, 6, 1, [1, 1]).unwrap(),
        g(1, 2, 5, 6, 1, [0, 0]).unwrap(),
        p(2, 2, 7, 9, [3, 4], [1, 2]).unwrap(),
        p(1, 3, 4, 5, [6, 8], [1, 1]).unwrap(),
        p(1, 1, 6, 6, [2, 1], [3, 2]).unwrap(),
    ]
}

#[test]
fn grid_sizes_follow_the_spec() {
    // H = 5, W = 7, g = 2: ph = 3, pw = 4, padded 6×8.
    let grid = PatchGrid::from_grid(2, 3, 5, 7, 2, [1, 2]).unwrap();
    assert_eq!(grid.patch, [3, 4]);
    assert_eq!((grid.rows(), grid.cols()), (2, 2));
    assert_eq!((grid.patches_per_image(), grid.tokens()), (4, 8));
    assert_eq!(grid.padded_size(), [6, 8]);
    assert_eq!(grid.token_size(), [5, 8]);
    // Divisible sizes get no padding.
    let grid = PatchGrid::from_grid(1, 1, 9, 12, 3, [0, 0]).unwrap();
    assert_eq!((grid.patch, grid.padded_size()), ([3, 4], [9, 12]));
    // H = 5, g = 4: ph = 2, so only 3 patch rows are needed.
    let grid = PatchGrid::from_grid(1, 1, 5, 5, 4, [0, 0]).unwrap();
    assert_eq!(
        (grid.patch, grid.rows(), grid.padded_size()),
        ([2, 2], 3, [6, 6])
    );
    // g = 1 is the image-level case: one token per image.
    let grid = PatchGrid::from_grid(4, 2, 5, 7, 1, [1, 1]).unwrap();
    assert_eq!(
        (grid.patch, grid.tokens(), grid.token_size()),
        ([5, 7], 4, [7, 9])
    );
    // A patch larger than the map: one patch, padded.
    let grid = PatchGrid::from_patch_size(1, 1, 3, 4, [5, 7], [0, 0]).unwrap();
    assert_eq!((grid.tokens(), grid.padded_size()), (1, [5, 7]));
}

#[test]
fn split_of_a_small_map_matches_hand_values() {
    // x = 1..=25 on a 5×5 map; g = 2 → 3×3 patches on a 6×6 padded grid; halo 1 → 5×5 tokens.
    let x = Tensor::from_vec((1..=25).map(|v| v as f32).collect(), [1, 1, 5, 5]).unwrap();
    let grid = PatchGrid::from_grid(1, 1, 5, 5, 2, [1, 1]).unwrap();
    let tokens = x.patch_split(grid).unwrap();
    assert_eq!(tokens.dims(), &[4, 1, 5, 5]);
    #[rustfmt::skip]
    let expected: [f32; 100] = [
        // (r, c) = (0, 0): map rows −1..=3, columns −1..=3.
        0., 0., 0., 0., 0.,
        0., 1., 2., 3., 4.,
        0., 6., 7., 8., 9.,
        0., 11., 12., 13., 14.,
        0., 16., 17., 18., 19.,
        // (0, 1): rows −1..=3, columns 2..=6 (5 and 6 are padding).
        0., 0., 0., 0., 0.,
        3., 4., 5., 0., 0.,
        8., 9., 10., 0., 0.,
        13., 14., 15., 0., 0.,
        18., 19., 20., 0., 0.,
        // (1, 0): rows 2..=6, columns −1..=3.
        0., 11., 12., 13., 14.,
        0., 16., 17., 18., 19.,
        0., 21., 22., 23., 24.,
        0., 0., 0., 0., 0.,
        0., 0., 0., 0., 0.,
        // (1, 1): rows 2..=6, columns 2..=6.
        13., 14., 15., 0., 0.,
        18., 19., 20., 0., 0.,
        23., 24., 25., 0., 0.,
        0., 0., 0., 0., 0.,
        0., 0., 0., 0., 0.,
    ];
    assert_eq!(tokens.to_host(), expected);

    // Split's gradient of all-ones tokens counts how many tokens read each pixel: rows and
    // columns 0–1 and 4 are read by one patch row/column, 2–3 by two.
    let leaf = x.with_requires_grad(true);
    leaf.patch_split(grid)
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .unwrap();
    let per_axis = [1., 1., 2., 2., 1.];
    let counts: Vec<f32> = (0..25).map(|p| per_axis[p / 5] * per_axis[p % 5]).collect();
    assert_eq!(leaf.grad().unwrap().to_host(), counts);
}

#[test]
fn reassemble_of_a_small_map_matches_hand_values() {
    // Four 3×3 patches filled with 1, 2, 3, 4 on a 5×5 map: the padding row/column is cropped.
    let grid = PatchGrid::from_grid(1, 7, 5, 5, 2, [1, 1]).unwrap();
    let y = Tensor::from_vec((1..=4).flat_map(|v| [v as f32; 9]).collect(), [4, 1, 3, 3]).unwrap();
    let map = y.patch_reassemble(grid).unwrap();
    assert_eq!(map.dims(), &[1, 1, 5, 5]);
    let expected: Vec<f32> = (0..25)
        .map(|p| (1 + 2 * (p / 5 / 3) + (p % 5) / 3) as f32)
        .collect();
    assert_eq!(map.to_host(), expected);
}

#[test]
fn split_and_reassemble_match_the_composition_of_pad_narrow_cat() {
    for (i, grid) in grids().into_iter().enumerate() {
        let what = format!("grid {grid:?}");
        let x = randn(&grid.map_shape(), i as u64).with_requires_grad(true);
        let x_ref = x.detach().with_requires_grad(true);
        let tokens = x.patch_split(grid).unwrap();
        let expected = split_reference(&x_ref, &grid);
        assert_eq!(tokens.to_host(), expected.to_host(), "{what}: split");
        assert_eq!(tokens.dims(), expected.dims(), "{what}: split shape");

        // Gradients against a random upstream: halo overlaps are summed in both.
        let upstream = randn(tokens.dims(), 100 + i as u64);
        for (out, leaf) in [(&tokens, &x), (&expected, &x_ref)] {
            out.mul(&upstream)
                .and_then(|t| t.sum_all())
                .and_then(|l| l.backward())
                .unwrap();
            assert!(leaf.grad().is_some());
        }
        assert_close(
            &format!("{what}: split gradient"),
            &x.grad().unwrap(),
            &x_ref.grad().unwrap(),
            1e-6,
            1e-6,
        )
        .unwrap();

        // Reassemble of expert outputs with another channel count.
        let [ph, pw] = grid.patch;
        let y = randn(&[grid.tokens(), 4, ph, pw], 200 + i as u64).with_requires_grad(true);
        let y_ref = y.detach().with_requires_grad(true);
        let map = y.patch_reassemble(grid).unwrap();
        let expected = reassemble_reference(&y_ref, &grid);
        assert_eq!(map.dims(), &[grid.batch, 4, grid.height, grid.width]);
        assert_eq!(map.to_host(), expected.to_host(), "{what}: reassemble");
        let upstream = randn(map.dims(), 300 + i as u64);
        for (out, leaf) in [(&map, &y), (&expected, &y_ref)] {
            out.mul(&upstream)
                .and_then(|t| t.sum_all())
                .and_then(|l| l.backward())
                .unwrap();
            assert!(leaf.grad().is_some());
        }
        // No sums here: the gradient is a copy with zeros in the cropped padding.
        assert_eq!(
            y.grad().unwrap().to_host(),
            y_ref.grad().unwrap().to_host(),
            "{what}: reassemble gradient"
        );
    }
}

#[test]
fn reassemble_inverts_split_without_halo() {
    for (i, grid) in grids().into_iter().enumerate() {
        let grid = grid.without_halo();
        let x = randn(&grid.map_shape(), 400 + i as u64);
        let back = x
            .patch_split(grid)
            .and_then(|t| t.patch_reassemble(grid))
            .unwrap();
        assert_eq!(back.to_host(), x.to_host(), "grid {grid:?}");
    }
}

/// `patch_split(halo) → conv2d without padding → patch_reassemble` against the padded conv on
/// the whole map: the values bit for bit (every output sums the same products in the same
/// order), the three gradients to rounding (halo overlaps are summed in another order).
fn check_patchwise_conv(grid: PatchGrid, weight_shape: [usize; 4], params: Conv2dParams) {
    let what = format!("grid {grid:?}, weight {weight_shape:?}, {params:?}");
    let seed = grid.height as u64 * 31 + grid.patch[0] as u64;
    let leaves = [
        randn(&grid.map_shape(), seed),
        randn(&weight_shape, seed + 1),
        randn(&[weight_shape[0]], seed + 2),
    ];
    let run = |patchwise: bool| {
        let [x, w, b] = leaves.clone().map(|t| t.with_requires_grad(true));
        let out = if patchwise {
            let unpadded = Conv2dParams {
                padding: [0; 4],
                ..params
            };
            x.patch_split(grid)
                .and_then(|t| t.conv2d(&w, Some(&b), unpadded))
                .and_then(|t| t.patch_reassemble(grid))
        } else {
            x.conv2d(&w, Some(&b), params)
        }
        .unwrap();
        let upstream = randn(out.dims(), seed + 3);
        out.mul(&upstream)
            .and_then(|t| t.sum_all())
            .and_then(|l| l.backward())
            .unwrap();
        let grads = [&x, &w, &b].map(|t| t.grad().unwrap());
        (out, grads)
    };
    let (out, grads) = run(true);
    let (expected, expected_grads) = run(false);
    assert_eq!(out.dims(), expected.dims(), "{what}");
    assert_eq!(out.to_host(), expected.to_host(), "{what}");
    for (name, (g, e)) in ["x", "weight", "bias"]
        .iter()
        .zip(grads.iter().zip(&expected_grads))
    {
        assert_close(&format!("{what}: grad {name}"), g, e, 1e-4, 1e-5).unwrap();
    }
}

#[test]
fn patchwise_conv_with_halo_equals_the_padded_conv() {
    // 3×3, padding 1, halo 1: divisible and non-divisible sizes, batch 2, g = 1.
    for (batch, h, w, g) in [(1, 6, 6, 3), (2, 7, 5, 3), (2, 9, 10, 4), (2, 5, 6, 1)] {
        let grid = PatchGrid::from_grid(batch, 3, h, w, g, [1, 1]).unwrap();
        check_patchwise_conv(grid, [4, 3, 3, 3], Conv2dParams::new(1, 1, 1, 1));
    }
    // Dilation 2, padding 2, halo 2.
    let grid = PatchGrid::from_grid(2, 2, 9, 7, 3, [2, 2]).unwrap();
    check_patchwise_conv(grid, [3, 2, 3, 3], Conv2dParams::new(1, 2, 2, 1));
    // A (3, 1) kernel, padding (1, 0), halo (1, 0).
    let grid = PatchGrid::from_grid(1, 2, 8, 7, 2, [1, 0]).unwrap();
    let params = Conv2dParams {
        padding: [1, 1, 0, 0],
        ..Conv2dParams::default()
    };
    check_patchwise_conv(grid, [3, 2, 3, 1], params);
    // Explicit patch size and groups.
    let grid = PatchGrid::from_patch_size(1, 4, 7, 9, [3, 4], [1, 1]).unwrap();
    check_patchwise_conv(grid, [4, 2, 3, 3], Conv2dParams::new(1, 1, 1, 2));
}

#[test]
fn gradients_agree_with_finite_differences() {
    // Both ops are linear: central differences are exact up to rounding.
    let opts = GradcheckOptions {
        eps: 1e-2,
        rtol: 1e-3,
        atol: 1e-3,
    };
    let grids = [
        PatchGrid::from_grid(1, 1, 5, 5, 2, [1, 1]).unwrap(),
        PatchGrid::from_grid(2, 2, 4, 5, 2, [1, 0]).unwrap(),
        PatchGrid::from_grid(1, 2, 5, 4, 3, [2, 2]).unwrap(),
        PatchGrid::from_patch_size(1, 1, 3, 4, [5, 2], [0, 1]).unwrap(),
    ];
    for (i, grid) in grids.into_iter().enumerate() {
        let x = randn(&grid.map_shape(), 500 + i as u64);
        gradcheck(
            &format!("patch_split {grid:?}"),
            &[x],
            |t| t[0].patch_split(grid),
            opts,
        )
        .unwrap();
        let [ph, pw] = grid.patch;
        let y = randn(&[grid.tokens(), 2, ph, pw], 600 + i as u64);
        gradcheck(
            &format!("patch_reassemble {grid:?}"),
            &[y],
            |t| t[0].patch_reassemble(grid),
            opts,
        )
        .unwrap();
    }
}

fn is_invalid(result: moeseg::Result<impl std::fmt::Debug>) -> bool {
    matches!(result, Err(Error::InvalidArgument { .. }))
}

fn is_shape_error(result: moeseg::Result<impl std::fmt::Debug>) -> bool {
    matches!(result, Err(Error::Shape { .. }))
}

#[test]
fn invalid_grids_and_shapes_are_errors() {
    assert!(is_invalid(PatchGrid::from_grid(1, 1, 5, 5, 0, [1, 1])));
    assert!(is_invalid(PatchGrid::from_patch_size(
        1,
        1,
        5,
        5,
        [0, 3],
        [0, 0]
    )));
    assert!(is_invalid(PatchGrid::from_grid(1, 1, 0, 5, 2, [0, 0])));

    let grid = PatchGrid::from_grid(2, 3, 6, 6, 2, [1, 1]).unwrap();
    // A hand-built grid with a zero patch is caught by the ops too.
    let zero_patch = PatchGrid {
        patch: [3, 0],
        ..grid
    };
    let x = randn(&grid.map_shape(), 1);
    assert!(is_invalid(
        x.patch_split(zero_patch).map(|t| t.dims().to_vec())
    ));
    // Rank ≠ 4.
    let flat = randn(&[2, 3, 36], 2);
    assert!(is_shape_error(
        flat.patch_split(grid).map(|t| t.dims().to_vec())
    ));
    assert!(is_shape_error(
        flat.patch_reassemble(grid).map(|t| t.dims().to_vec())
    ));
    // A map that is not the grid's.
    let other = randn(&[2, 3, 6, 7], 3);
    let err = other.patch_split(grid).unwrap_err().to_string();
    assert!(
        err.contains("patch_split") && err.contains("[2, 3, 6, 7]"),
        "{err}"
    );
    // Tokens of the wrong count, or with the halo still on.
    let too_few = randn(&[7, 4, 3, 3], 4);
    assert!(is_shape_error(
        too_few.patch_reassemble(grid).map(|t| t.dims().to_vec())
    ));
    let with_halo = x.patch_split(grid).unwrap();
    let err = with_halo.patch_reassemble(grid).unwrap_err().to_string();
    assert!(
        err.contains("patch_reassemble") && err.contains("[8, Cout, 3, 3]"),
        "{err}"
    );
}
