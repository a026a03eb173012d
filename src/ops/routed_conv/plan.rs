//! The routing plan: the `T·k` (token, slot) assignments grouped by expert with a counting
//! sort, stable in token order, so each expert can run its convolution over exactly its tokens.

use crate::error::{Error, Result};

/// Assignments `a = t·k + j` (token `t`, slot `j`) grouped by the expert `indices[t, j]` picked
/// for them; within an expert they stay in increasing `a` (token order, then slot order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingPlan {
    slots: usize,
    /// Expert `e`'s assignments are `assignments[offsets[e]..offsets[e + 1]]`.
    offsets: Vec<usize>,
    assignments: Vec<usize>,
    /// The expert of every assignment, in assignment order.
    experts_of: Vec<usize>,
}

impl RoutingPlan {
    /// Groups the `[tokens, slots]` expert ids `indices` (exact integers in f32) by expert.
    /// Fails on a wrong length or an id that is not an integer in `0..experts`.
    pub fn new(indices: &[f32], tokens: usize, slots: usize, experts: usize) -> Result<Self> {
        let op = "dispatch_routed_conv";
        if indices.len() != tokens * slots {
            return Err(Error::shape(
                op,
                format!(
                    "{} indices for {tokens} tokens × {slots} slots",
                    indices.len()
                ),
            ));
        }
        let mut experts_of = Vec::with_capacity(indices.len());
        let mut counts = vec![0usize; experts];
        for (a, &v) in indices.iter().enumerate() {
            if !(v >= 0.0 && v < experts as f32 && v.fract() == 0.0) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "indices[{}, {}] = {v} is not an expert id in 0..{experts} (E = {experts})",
                        a / slots.max(1),
                        a % slots.max(1)
                    ),
                ));
            }
            let e = v as usize;
            counts[e] += 1;
            experts_of.push(e);
        }
        let mut offsets = Vec::with_capacity(experts + 1);
        offsets.push(0);
        for count in &counts {
            offsets.push(offsets[offsets.len() - 1] + count);
        }
        let mut next = offsets[..experts].to_vec();
        let mut assignments = vec![0; indices.len()];
        for (a, &e) in experts_of.iter().enumerate() {
            assignments[next[e]] = a;
            next[e] += 1;
        }
        Ok(RoutingPlan {
            slots,
            offsets,
            assignments,
            experts_of,
        })
    }

    /// Number of experts `E`.
    pub fn experts(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Slots per token `k`.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Number of assignments `T·k`.
    pub fn assignment_count(&self) -> usize {
        self.assignments.len()
    }

    /// Expert `e`'s assignments `t·k + j`, increasing.
    pub fn assignments_of(&self, expert: usize) -> &[usize] {
        &self.assignments[self.offsets[expert]..self.offsets[expert + 1]]
    }

    /// The expert of assignment `a`.
    pub fn expert_of(&self, assignment: usize) -> usize {
        self.experts_of[assignment]
    }

    /// The token `t` of assignment `t·k + j`.
    pub fn token_of(&self, assignment: usize) -> usize {
        assignment / self.slots.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_expert_in_token_order() {
        // 3 tokens, k = 2, E = 4: expert 2 gets nothing.
        let plan = RoutingPlan::new(&[1.0, 0.0, 0.0, 3.0, 1.0, 0.0], 3, 2, 4).unwrap();
        assert_eq!(plan.assignments_of(0), &[1, 2, 5]);
        assert_eq!(plan.assignments_of(1), &[0, 4]);
        assert!(plan.assignments_of(2).is_empty());
        assert_eq!(plan.assignments_of(3), &[3]);
        assert_eq!(plan.token_of(5), 2);
    }

    #[test]
    fn rejects_ids_outside_the_experts() {
        for bad in [4.0, -1.0, 0.5, f32::NAN] {
            let err = RoutingPlan::new(&[0.0, bad], 1, 2, 4).unwrap_err();
            assert!(err.to_string().contains("E = 4"), "{err}");
        }
        assert!(RoutingPlan::new(&[0.0], 1, 2, 4).is_err());
    }
}
