//! CPU kernels of the patch-grid family, built on two loops over the same token ↔ map
//! correspondence ([`RowWindow`]):
//! - [`gather_tokens`] (split, and reassemble's gradient = split without halo) writes every
//!   token row once: zeros, then one contiguous copy of the map row it overlaps; parallel over
//!   token planes.
//! - [`scatter_tokens`] (split's gradient, and reassemble = its halo-free case) adds every token
//!   row back onto its map row; one task per `(b, ch)` plane visits the tokens in a fixed order,
//!   so overlapping halos are summed deterministically. Without halo no two tokens overlap and
//!   the rows are plain copies.

use super::{PatchGrid, PatchGridBackend};
use crate::backend::cpu::{buffer_cache, CpuBackend, PAR_CHUNK};
use crate::error::Result;
use crate::tensor::Storage;
use rayon::prelude::*;
use std::ops::Range;

/// Where token row `i` of patch `(r, c)` lies on the map: map row `r·ph − hh + i` (if inside
/// `[0, H)`), and the columns `c·pw − hw + j` that fall inside `[0, W)`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RowWindow {
    /// Row of the map.
    map_row: usize,
    /// Columns of the map row that the token row covers.
    map_cols: Range<usize>,
    /// The same columns, as indices into the token row.
    token_cols: Range<usize>,
}

/// Per patch column `c`, the `(map_cols, token_cols)` overlap of its token rows with a map row.
fn column_spans(grid: &PatchGrid) -> Vec<(Range<usize>, Range<usize>)> {
    let [_, token_w] = grid.token_size();
    (0..grid.cols())
        .map(|c| {
            // Token column j reads map column start + j, start = c·pw − hw (may be negative).
            let start = (c * grid.patch[1]) as isize - grid.halo[1] as isize;
            let first = (-start).max(0) as usize;
            let end = (grid.width as isize - start).clamp(0, token_w as isize) as usize;
            let first = first.min(end);
            let map_first = (start + first as isize) as usize;
            (map_first..map_first + (end - first), first..end)
        })
        .collect()
}

/// The map row read by token row `i` of patch row `r`, if it lies inside the map.
fn map_row(grid: &PatchGrid, r: usize, i: usize) -> Option<usize> {
    (r * grid.patch[0] + i)
        .checked_sub(grid.halo[0])
        .filter(|&y| y < grid.height)
}

/// The window of token row `i` of patch `(r, c)`, given [`column_spans`].
fn row_window(
    grid: &PatchGrid,
    spans: &[(Range<usize>, Range<usize>)],
    r: usize,
    c: usize,
    i: usize,
) -> Option<RowWindow> {
    let (map_cols, token_cols) = spans[c].clone();
    map_row(grid, r, i).map(|map_row| RowWindow {
        map_row,
        map_cols,
        token_cols,
    })
}

/// Map `[B, C, H, W]` → tokens `[T, C, th, tw]` of `grid` (with its halo), zeros outside the map.
fn gather_tokens(map: &[f32], grid: &PatchGrid) -> Vec<f32> {
    let [token_h, token_w] = grid.token_size();
    let (channels, cols, patches) = (grid.channels, grid.cols(), grid.patches_per_image());
    let plane = grid.height * grid.width;
    let spans = column_spans(grid);
    let token_plane = token_h * token_w;
    let mut tokens = buffer_cache::uninit(grid.tokens() * channels * token_plane);
    // One task per token plane `(t, ch)`: its rows in order, indices computed once per plane.
    tokens
        .par_chunks_mut(token_plane.max(1))
        .enumerate()
        .with_min_len((PAR_CHUNK / token_plane.max(1)).max(1))
        .for_each(|(plane_index, out)| {
            let (t, ch) = (plane_index / channels, plane_index % channels);
            let (b, p) = (t / patches, t % patches);
            let (r, c) = (p / cols, p % cols);
            let source = &map[(b * channels + ch) * plane..][..plane];
            for (i, out) in out.chunks_exact_mut(token_w.max(1)).enumerate() {
                match row_window(grid, &spans, r, c, i) {
                    Some(w) => {
                        let line = &source[w.map_row * grid.width..][..grid.width];
                        out[..w.token_cols.start].fill(0.0);
                        out[w.token_cols.clone()].copy_from_slice(&line[w.map_cols]);
                        out[w.token_cols.end..].fill(0.0);
                    }
                    None => out.fill(0.0),
                }
            }
        });
    tokens
}

/// Tokens `[T, C, th, tw]` of `grid` → map `[B, C, H, W]`: every token element added onto the
/// map pixel it was read from (elements outside the map dropped). One task per plane, tokens
/// in order (patch row, patch column, token row), so the sums are deterministic. Without halo
/// the tokens tile the map exactly and the rows are copied.
fn scatter_tokens(tokens: &[f32], grid: &PatchGrid) -> Vec<f32> {
    let [token_h, token_w] = grid.token_size();
    let (channels, cols, patches) = (grid.channels, grid.cols(), grid.patches_per_image());
    let plane = grid.height * grid.width;
    let spans = column_spans(grid);
    let overlapping = grid.halo != [0, 0];
    let len = grid.batch * channels * plane;
    // Without halo every map pixel is written exactly once.
    let mut map = if overlapping {
        buffer_cache::zeroed(len)
    } else {
        buffer_cache::uninit(len)
    };
    map.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(plane_index, out)| {
            let (b, ch) = (plane_index / channels, plane_index % channels);
            for p in 0..patches {
                let token_row = |i: usize| {
                    let t = b * patches + p;
                    &tokens[((t * channels + ch) * token_h + i) * token_w..][..token_w]
                };
                for i in 0..token_h {
                    let Some(w) = row_window(grid, &spans, p / cols, p % cols, i) else {
                        continue;
                    };
                    let src = &token_row(i)[w.token_cols];
                    let dst = &mut out[w.map_row * grid.width..][w.map_cols];
                    if overlapping {
                        for (d, &s) in dst.iter_mut().zip(src) {
                            *d += s;
                        }
                    } else {
                        dst.copy_from_slice(src);
                    }
                }
            }
        });
    map
}

impl PatchGridBackend for CpuBackend {
    fn patch_split(&self, x: &Storage, grid: PatchGrid) -> Result<Storage> {
        let x = x.as_cpu("patch_split")?;
        Ok(Storage::cpu(gather_tokens(x, &grid)))
    }

    fn patch_split_backward(&self, grad_tokens: &Storage, grid: PatchGrid) -> Result<Storage> {
        let grad_tokens = grad_tokens.as_cpu("patch_split_backward")?;
        Ok(Storage::cpu(scatter_tokens(grad_tokens, &grid)))
    }

    fn patch_reassemble(&self, tokens: &Storage, grid: PatchGrid) -> Result<Storage> {
        let tokens = tokens.as_cpu("patch_reassemble")?;
        Ok(Storage::cpu(scatter_tokens(tokens, &grid.without_halo())))
    }

    fn patch_reassemble_backward(&self, grad_map: &Storage, grid: PatchGrid) -> Result<Storage> {
        let grad_map = grad_map.as_cpu("patch_reassemble_backward")?;
        Ok(Storage::cpu(gather_tokens(grad_map, &grid.without_halo())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(height: usize, width: usize, patch: [usize; 2], halo: [usize; 2]) -> PatchGrid {
        PatchGrid {
            batch: 1,
            channels: 1,
            height,
            width,
            patch,
            halo,
        }
    }

    #[test]
    fn column_spans_clip_at_both_edges() {
        // W = 5, pw = 3, hw = 1: token columns read map columns -1..4 and 2..7.
        let spans = column_spans(&grid(5, 5, [3, 3], [1, 1]));
        assert_eq!(spans, vec![(0..4, 1..5), (2..5, 0..3)]);
        // A halo wider than the map: the token row covers the whole map row.
        let spans = column_spans(&grid(2, 2, [2, 2], [3, 3]));
        assert_eq!(spans, vec![(0..2, 3..5)]);
    }

    #[test]
    fn map_rows_outside_the_map_are_skipped() {
        let g = grid(5, 5, [3, 3], [1, 1]);
        assert_eq!(map_row(&g, 0, 0), None);
        assert_eq!(map_row(&g, 0, 1), Some(0));
        assert_eq!(map_row(&g, 1, 2), Some(4));
        assert_eq!(map_row(&g, 1, 3), None);
    }
}
