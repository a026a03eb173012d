//! The experts' weight gradients of the routed convolution (deterministic chunked partials).

use super::tiles::*;
use super::*;

/// `∂L/∂W_e = Σ_{a of e} w[a] · ∂L/∂y[t(a)] ⋆ im2col(tokens[t(a)])ᵀ`, `[E, weight_len]`: each
/// chunk of consecutive tiles of one expert accumulates a partial gradient, and each expert's
/// partials are added in chunk order.
pub(super) fn expert_weight_gradients(
    conv: &Conv2dGeometry,
    grad_out: &[f32],
    tokens: &[f32],
    routing: &[f32],
    plan: &RoutingPlan,
) -> Vec<f32> {
    if direct::usable(conv) {
        return direct_expert_weight_gradients(conv, grad_out, tokens, routing, plan);
    }
    let threads = rayon::current_num_threads();
    let (groups, k, weight_len) = (conv.params.groups, conv.col_rows(), conv.weight_len());
    let (out_group, pixels) = (conv.out_channels_per_group(), conv.out_pixels());
    let tiles = ColumnTiles::new(plan, pixels, k, 2 * threads);
    let max_partials = (WEIGHT_PARTIALS_ELEMS / weight_len.max(1)).clamp(1, 2 * threads);
    let per_chunk = tiles.tiles.len().div_ceil(max_partials).max(1);
    // Chunks: runs of at most `per_chunk` consecutive tiles of the same expert.
    let mut chunks: Vec<(usize, Range<usize>)> = Vec::new();
    for (i, tile) in tiles.tiles.iter().enumerate() {
        match chunks.last_mut() {
            Some((e, range)) if *e == tile.expert && range.len() < per_chunk => range.end = i + 1,
            _ => chunks.push((tile.expert, i..i + 1)),
        }
    }
    let partials: Vec<Vec<f32>> = chunks
        .par_iter()
        .map(|(_, range)| {
            let mut partial = buffer_cache::zeroed(weight_len);
            let mut buffers = Scratch::default();
            for tile in &tiles.tiles[range.clone()] {
                let segments = tiles.segments(plan, tile);
                let cols = tile.columns.len();
                for group in 0..groups {
                    let col = scratch(&mut buffers.col, k * cols);
                    im2col_tile(conv, tokens, group, &segments, cols, col);
                    // (w·∂L/∂y)[group's channels, tile columns]
                    let block = scratch(&mut buffers.block, out_group * cols);
                    for seg in &segments {
                        let w = routing[seg.assignment];
                        let len = seg.positions.len();
                        for (o, row) in block.chunks_mut(cols).enumerate() {
                            let channel = group * out_group + o;
                            let dy = &grad_out[(seg.token * conv.out_channels + channel)
                                * pixels
                                + seg.positions.start..][..len];
                            for (b, &g) in row[seg.offset..seg.offset + len].iter_mut().zip(dy) {
                                *b = w * g;
                            }
                        }
                    }
                    gemm(
                        out_group,
                        k,
                        cols,
                        Operand::plain(&buffers.block[..out_group * cols]),
                        Operand::transposed(&buffers.col[..k * cols]),
                        &mut partial[group * out_group * k..][..out_group * k],
                        1.0,
                    );
                }
            }
            partial
        })
        .collect();
    let mut grad = buffer_cache::zeroed(plan.experts() * weight_len);
    grad.par_chunks_mut(weight_len.max(1))
        .enumerate()
        .for_each(|(e, grad_e)| {
            for ((_, _), partial) in chunks.iter().zip(&partials).filter(|((c, _), _)| *c == e) {
                for (g, &p) in grad_e.iter_mut().zip(partial) {
                    *g += p;
                }
            }
        });
    grad
}

/// [`expert_weight_gradients`] on the direct stride-1 kernel: tasks (expert, channel block, run
/// of `(ci, tap)` tiles) own their entries of `∂W_e` and add `w[a] · ∂L/∂y[t(a)] ⋆ x[t(a)]`
/// over the expert's assignments in order.
pub(super) fn direct_expert_weight_gradients(
    conv: &Conv2dGeometry,
    grad_out: &[f32],
    tokens: &[f32],
    routing: &[f32],
    plan: &RoutingPlan,
) -> Vec<f32> {
    let weight_len = conv.weight_len();
    let (in_len, out_len) = (conv.input_len(), conv.output_len());
    let min_tasks = (4 * rayon::current_num_threads()).div_ceil(plan.experts().max(1));
    let per_expert = direct::grad_tasks(conv, min_tasks);
    let tasks: Vec<(usize, &direct::GradTask)> = (0..plan.experts())
        .flat_map(|e| per_expert.iter().map(move |t| (e, t)))
        .collect();
    let mut grad = buffer_cache::zeroed(plan.experts() * weight_len);
    let grad_ptr = SendPtr(grad.as_mut_ptr());
    tasks
        .par_iter()
        .for_each_init(Vec::new, |buffer, (expert, task)| {
            let ptr = grad_ptr; // the whole `SendPtr`, not its raw field
            for &assignment in plan.assignments_of(*expert) {
                let token = plan.token_of(assignment);
                let dy = &grad_out[token * out_len..][..out_len];
                let x = &tokens[token * in_len..][..in_len];
                // SAFETY: `direct::usable(conv)` holds; each task owns its entries of expert
                // `expert`'s gradient, and `grad` outlives the loop.
                unsafe {
                    let grad_e = ptr.0.add(expert * weight_len);
                    task.accumulate(conv, dy, x, routing[assignment], grad_e, buffer);
                }
            }
        });
    grad
}
