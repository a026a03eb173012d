//! Column tiles of the routed convolution's experts and the expert engine that runs on them
//! (forward slot outputs, and the tokens gradient with flipped weights).

use super::*;

/// A range of one expert's columns (`i·P + p`: position `p` of its i-th assignment).
#[derive(Clone, Debug)]
pub(super) struct ColumnTile {
    pub(super) expert: usize,
    pub(super) columns: Range<usize>,
}

/// The part of a tile inside one assignment: positions `positions` of assignment `assignment`
/// (token `token`) are the tile's columns `offset..offset + positions.len()`.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) assignment: usize,
    pub(super) token: usize,
    pub(super) positions: Range<usize>,
    pub(super) offset: usize,
}

/// All experts' columns cut into tiles of at most `tile_len` columns.
pub(super) struct ColumnTiles {
    pub(super) positions: usize,
    pub(super) tiles: Vec<ColumnTile>,
}

impl ColumnTiles {
    /// Tiles whose im2col buffer (`col_rows` rows) stays within [`COL_TILE_ELEMS`] and, when
    /// there are enough columns, that give at least `min_tasks` tiles; aligned with tokens
    /// (several whole tokens, or equal parts of one), which keeps the GEMMs regular: tiles
    /// straddling token boundaries measured ~1.5× slower.
    pub(super) fn new(
        plan: &RoutingPlan,
        positions: usize,
        col_rows: usize,
        min_tasks: usize,
    ) -> Self {
        let positions = positions.max(1);
        let columns = |e| plan.assignments_of(e).len() * positions;
        let total: usize = (0..plan.experts()).map(columns).sum();
        let by_memory = (COL_TILE_ELEMS / col_rows.max(1)).max(MIN_TILE_COLUMNS);
        let by_parallelism = total.div_ceil(min_tasks.max(1)).max(MIN_TILE_COLUMNS);
        let longest = by_memory.min(by_parallelism);
        // Align tiles with tokens: whole tokens when they fit, else equal parts of one token.
        let tile_len = if longest >= positions {
            longest / positions * positions
        } else {
            positions.div_ceil(positions.div_ceil(longest))
        };
        // Units of whole tokens, each cut into tiles (one per unit unless a token is split).
        let unit = tile_len.max(positions);
        let mut tiles = Vec::new();
        for expert in 0..plan.experts() {
            let end = columns(expert);
            for unit_start in (0..end).step_by(unit) {
                let unit_end = (unit_start + unit).min(end);
                for start in (unit_start..unit_end).step_by(tile_len) {
                    let columns = start..(start + tile_len).min(unit_end);
                    tiles.push(ColumnTile { expert, columns });
                }
            }
        }
        ColumnTiles { positions, tiles }
    }

    /// The segments of `tile`, in column order.
    pub(super) fn segments(&self, plan: &RoutingPlan, tile: &ColumnTile) -> Vec<Segment> {
        let (p, Range { start, end }) = (self.positions, tile.columns.clone());
        let assignments = plan.assignments_of(tile.expert);
        (start / p..end.div_ceil(p))
            .map(|i| {
                let (first, last) = (start.max(i * p), end.min((i + 1) * p));
                let assignment = assignments[i];
                Segment {
                    assignment,
                    token: plan.token_of(assignment),
                    positions: first - i * p..last - i * p,
                    offset: first - start,
                }
            })
            .collect()
    }
}

/// The im2col matrix `[Cin/g · taps, cols]` of group `group` over a tile's segments, read
/// straight from `source` (`[T, Cin, in_pixels]`); zero where a tap falls in the padding.
pub(super) fn im2col_tile(
    conv: &Conv2dGeometry,
    source: &[f32],
    group: usize,
    segments: &[Segment],
    cols: usize,
    col: &mut [f32],
) {
    let (in_group, taps, in_pixels) = (conv.in_channels_per_group(), conv.taps(), conv.in_pixels());
    let (out_width, in_width) = (conv.out_size[1], conv.in_size[1]);
    if conv.params.padding != [0; 4] {
        col.fill(0.0);
    }
    for seg in segments {
        let x = &source[(seg.token * conv.in_channels + group * in_group) * in_pixels..];
        for (plane, rows) in x
            .chunks(in_pixels)
            .zip(col.chunks_mut(taps * cols))
            .take(in_group)
        {
            for_each_tap_row(conv, seg.positions.clone(), |r| {
                let at =
                    r.tap * cols + seg.offset + r.oh * out_width + r.ow_start - seg.positions.start;
                rows[at..at + r.len()]
                    .copy_from_slice(&plane[r.ih * in_width + r.iw_start..][..r.len()]);
            });
        }
    }
}

/// Reusable per-worker buffers.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) col: Vec<f32>,
    pub(super) block: Vec<f32>,
}

/// `out[a] = b_e + conv_e(source[token(a)])` for every assignment `a` of `plan` (shape
/// `[T·k, Cout, P]`, `conv` the per-token geometry): per (expert, tile) and group, im2col, one
/// GEMM `W_e,g · col`, and the block's pieces written to the assignments' output rows.
pub(super) fn expert_convolutions(
    conv: &Conv2dGeometry,
    source: &[f32],
    weights: &[f32],
    biases: Option<&[f32]>,
    plan: &RoutingPlan,
) -> Vec<f32> {
    if direct::usable(conv) {
        return direct_expert_convolutions(conv, source, weights, biases, plan);
    }
    let (groups, k, weight_len) = (conv.params.groups, conv.col_rows(), conv.weight_len());
    let (out_group, pixels) = (conv.out_channels_per_group(), conv.out_pixels());
    let tiles = ColumnTiles::new(plan, pixels, k, 4 * rayon::current_num_threads());
    let mut out = buffer_cache::uninit(plan.assignment_count() * conv.output_len());
    let out_ptr = SendPtr(out.as_mut_ptr());
    tiles
        .tiles
        .par_iter()
        .for_each_init(Scratch::default, |buffers, tile| {
            let ptr = out_ptr; // the whole `SendPtr`, not its raw field
            let segments = tiles.segments(plan, tile);
            let cols = tile.columns.len();
            let weight = &weights[tile.expert * weight_len..][..weight_len];
            for group in 0..groups {
                let col = scratch(&mut buffers.col, k * cols);
                im2col_tile(conv, source, group, &segments, cols, col);
                let block = scratch(&mut buffers.block, out_group * cols);
                gemm(
                    out_group,
                    cols,
                    k,
                    Operand::plain(&weight[group * out_group * k..][..out_group * k]),
                    Operand::plain(&buffers.col[..k * cols]),
                    block,
                    0.0,
                );
                for seg in &segments {
                    for (o, values) in block.chunks(cols).enumerate() {
                        let channel = group * out_group + o;
                        let b =
                            biases.map_or(0.0, |b| b[tile.expert * conv.out_channels + channel]);
                        let at = (seg.assignment * conv.out_channels + channel) * pixels
                            + seg.positions.start;
                        let len = seg.positions.len();
                        // SAFETY: `at..at + len` lies inside `out` (assignment < T·k, channel <
                        // Cout, positions ⊂ 0..P), and each (assignment, channel, position) is
                        // written by exactly one task: the tile owning that column of the one
                        // expert the assignment is routed to. `out` outlives the loop.
                        let row = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(at), len) };
                        for (y, &v) in row.iter_mut().zip(&values[seg.offset..seg.offset + len]) {
                            *y = v + b;
                        }
                    }
                }
            }
        });
    out
}

/// [`expert_convolutions`] on the direct stride-1 kernel: tasks (assignment, channel block, row
/// band) read the assignment's token in place and write its output rows.
pub(super) fn direct_expert_convolutions(
    conv: &Conv2dGeometry,
    source: &[f32],
    weights: &[f32],
    biases: Option<&[f32]>,
    plan: &RoutingPlan,
) -> Vec<f32> {
    let packed = pack_experts(conv, weights);
    let out = direct_packed_convolutions(conv, source, &packed, biases, plan);
    buffer_cache::recycle(packed);
    out
}

/// [`direct_expert_convolutions`] from the experts' packed weights (`[E, packed_len]`, see
/// [`direct::pack_weight`]).
pub(super) fn direct_packed_convolutions(
    conv: &Conv2dGeometry,
    source: &[f32],
    packed: &[f32],
    biases: Option<&[f32]>,
    plan: &RoutingPlan,
) -> Vec<f32> {
    let packed_len = direct::packed_len(conv);
    let (in_len, out_len) = (conv.input_len(), conv.output_len());
    let blocks = conv.params.groups * direct::blocks_per_group(conv);
    let bands = direct::task_bands(conv.out_size[0], plan.assignment_count() * blocks);
    // Band-major within an assignment, so the token rows in use stay in cache.
    let mut tasks = Vec::new();
    for expert in 0..plan.experts() {
        for &assignment in plan.assignments_of(expert) {
            for band in &bands {
                for block in 0..blocks {
                    tasks.push((expert, assignment, block, band.clone()));
                }
            }
        }
    }
    let mut out = buffer_cache::uninit(plan.assignment_count() * out_len);
    let out_ptr = SendPtr(out.as_mut_ptr());
    let per_group = direct::blocks_per_group(conv);
    let path = crate::backend::cpu::kernel_path();
    tasks
        .par_iter()
        .for_each(|(expert, assignment, block, rows)| {
            let ptr = out_ptr; // the whole `SendPtr`, not its raw field
            let token = plan.token_of(*assignment);
            let task = direct::BlockTask {
                path,
                group: block / per_group,
                block: block % per_group,
                rows: rows.clone(),
                x: &source[token * in_len..][..in_len],
                packed: &packed[expert * packed_len..][..packed_len],
                bias: biases.map(|b| &b[expert * conv.out_channels..][..conv.out_channels]),
            };
            // SAFETY: `direct::usable(conv)` holds; the task writes only its (block, rows) part of
            // assignment `assignment`'s output, and every (assignment, block, band) is one task.
            unsafe { task.run(conv, ptr.0.add(assignment * out_len)) };
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expert 0 has assignments 0, 2, 3 (three tokens of `positions` columns each).
    pub(super) fn plan() -> RoutingPlan {
        RoutingPlan::new(&[0.0, 1.0, 0.0, 0.0], 4, 1, 2).unwrap()
    }

    #[test]
    pub(super) fn small_tokens_share_tiles_and_large_ones_are_split() {
        // 40 positions, a memory bound of 87 columns: whole tokens, two per tile.
        let tiles = ColumnTiles::new(&plan(), 40, 3000, 1);
        let first = &tiles.tiles[0];
        assert_eq!((first.expert, first.columns.clone()), (0, 0..80));
        let segments = tiles.segments(&plan(), first);
        assert_eq!(segments.len(), 2);
        assert_eq!((segments[1].token, segments[1].offset), (2, 40));
        // 1000 positions with a 455-column memory bound: each token in 3 tiles of 334.
        let tiles = ColumnTiles::new(&plan(), 1000, 576, 1);
        let expert0: Vec<_> = tiles.tiles.iter().filter(|t| t.expert == 0).collect();
        assert_eq!(expert0.len(), 9);
        let segments = tiles.segments(&plan(), expert0[4]);
        assert_eq!(segments.len(), 1);
        assert_eq!(
            (segments[0].token, segments[0].positions.clone()),
            (2, 334..668)
        );
    }
}
