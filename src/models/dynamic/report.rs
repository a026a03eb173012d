//! FLOP figures of a dynamic network over a split: the real FLOPs per image (what ran:
//! average / min / max, the columns of the paper's table), the expected FLOPs, and the static
//! full-space count.

use super::network::{dynamic_net, RouteRecord};
use super::routes::{accumulate, route_of, Route};
use crate::error::Result;
use crate::nn::Module;

/// Per-image FLOP figures collected over an evaluation (MFLOPs).
#[derive(Clone, Debug, Default)]
pub struct FlopsSummary {
    /// Real FLOPs of each image.
    pub real: Vec<f64>,
    /// Expected FLOPs of each image.
    pub expected: Vec<f64>,
    /// Real FLOPs of the full routing space at the evaluated size (every path on).
    pub full_space: f64,
    /// Routes of the first [`ROUTE_PICTURES`] images.
    pub routes: Vec<Route>,
    /// Sum of every image's route (divide by `real.len()` for the average).
    pub route_sum: Route,
    /// Nodes per layer of the space.
    pub cells: Vec<usize>,
}

/// Images whose own route picture `routing-stats` writes.
pub const ROUTE_PICTURES: usize = 8;

impl FlopsSummary {
    /// Adds the images of one forward's record; `hw` is the forward's input size.
    pub fn add(&mut self, record: &RouteRecord, full_space: f64) -> Result<()> {
        self.real.extend(&record.real);
        self.expected
            .extend(record.expected.try_to_vec()?.into_iter().map(f64::from));
        self.full_space = self.full_space.max(full_space);
        Ok(())
    }

    /// Adds the latest forward of `model` if it is a dynamic network with input `hw`.
    pub fn add_latest(&mut self, model: &dyn Module, hw: [usize; 2]) -> Result<()> {
        let Some(net) = dynamic_net(model) else {
            return Ok(());
        };
        if let Some(record) = net.last_record() {
            let full: f64 = net.full_space_flops(hw).iter().map(|p| p.1).sum();
            self.add(&record, full)?;
            self.cells = super::cells_per_layer(net.config.layers);
            for b in 0..record.real.len() {
                let route = route_of(&record.alphas, b)?;
                accumulate(&mut self.route_sum, &route);
                if self.routes.len() < ROUTE_PICTURES {
                    self.routes.push(route);
                }
            }
        }
        Ok(())
    }

    /// `(average, min, max)` of the real FLOPs (MFLOPs).
    pub fn real_stats(&self) -> (f64, f64, f64) {
        stats(&self.real)
    }

    /// Average expected FLOPs (MFLOPs).
    pub fn expected_mean(&self) -> f64 {
        stats(&self.expected).0
    }

    /// One line in MFLOPs.
    pub fn line(&self) -> String {
        let (avg, min, max) = self.real_stats();
        format!(
            "real MFLOPs/image avg {avg:.2} min {min:.2} max {max:.2}  expected {:.2}  full space {:.2}  ({} images)",
            self.expected_mean(),
            self.full_space,
            self.real.len()
        )
    }
}

fn stats(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let sum: f64 = values.iter().sum();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (sum / values.len() as f64, min, max)
}
